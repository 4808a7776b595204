"""Fixtures shared by the test suite, the benchmarks and the experiments; not part of the installed product
(``pyproject.toml`` packages only ``assets``, ``ops``, ``pipelines`` and ``resources``)."""
