"""Thin Dagster wrappers: one module per family of stage kinds (config -> op call -> artifact, metadata, checks).

Each module registers its kinds with :func:`assets.registry.register`; ``pipelines/factory.py`` builds the
Dagster assets from a compiled spec.
"""
