"""The declarative layer: pipeline specs (``*.yaml``), the compiler (``spec.py``) and the Dagster
``Definitions`` (``definitions.py``). Imports go one way: pipelines -> assets -> ops."""
