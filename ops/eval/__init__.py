"""Evaluation library: metrics with uncertainty, budget-forced decoding, decontamination audit, report card.

Imports no Dagster; torch/transformers are imported inside the functions that need them.
"""
