"""A pytest plugin that lists where a test's computation accumulates into a CPU float tensor through repeated
indices (``index_put_(accumulate=True)``, the backward of ``x[idx]``): torch runs that with atomic adds from every
thread once the values have >= 32768 elements, so the sum's order, and the result's bits, follow thread timing.

``PYTHONPATH=. python -m pytest -p experiments.index_put_audit TESTS...`` writes
``$LMFORGE_AUDIT_OUT`` (default ``index_put_audit.json``): one record per accumulating ``index_put_`` call (test,
shape, number of values, whether an index repeats). Every op of the audited tests goes through Python, so they
run several times slower.
"""

from __future__ import annotations

import json
import os

import pytest

HITS: list[dict] = []


def _mode(name: str):
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    ops = {
        torch.ops.aten.index_put_.default,
        torch.ops.aten.index_put.default,
        torch.ops.aten._index_put_impl_.default,
    }

    class Audit(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in ops:
                target, indices, values = args[0], args[1], args[2]
                acc = args[3] if len(args) > 3 else kwargs.get("accumulate", False)
                if acc and target.is_floating_point():
                    dup = any(
                        i is not None and i.dtype != torch.bool and i.numel() != torch.unique(i).numel()
                        for i in indices
                    )
                    HITS.append(
                        {
                            "test": name,
                            "shape": list(target.shape),
                            "values": values.numel(),
                            "repeated_index": bool(dup),
                        }
                    )
            return func(*args, **kwargs)

    return Audit()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    with _mode(item.nodeid):
        yield


def pytest_sessionfinish(session):
    with open(os.environ.get("LMFORGE_AUDIT_OUT", "index_put_audit.json"), "w") as f:
        json.dump(HITS, f, indent=1)
