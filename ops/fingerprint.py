"""Stable hashing of configs into versions.

Key design choice (after marin's executor): a version is a hash of a *canonical* JSON form, and anything
without a stable identity (functions, arbitrary objects, NaN) is refused at hashing time instead of
being hashed by ``repr`` -- a version that changes between processes would silently defeat the cache.
"""

from __future__ import annotations

import hashlib
import json
import math
from enum import Enum
from pathlib import PurePath
from typing import Any


class UnhashableValue(TypeError):
    pass


def canonical(value: Any, path: str = "$") -> Any:
    """Convert to plain JSON types deterministically, or raise :class:`UnhashableValue` naming the path."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise UnhashableValue(f"{path}: non-finite float {value!r} has no stable identity")
        # 1e6 and 1000000.0 are the same config
        return int(value) if value.is_integer() and abs(value) < 2**53 else repr(value)
    if isinstance(value, Enum):
        return canonical(value.value, path)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, dict):
        out = {}
        for k in sorted(value, key=str):
            if not isinstance(k, str):
                raise UnhashableValue(f"{path}: non-string key {k!r}")
            out[k] = canonical(value[k], f"{path}.{k}")
        return out
    if isinstance(value, list | tuple):
        return [canonical(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "model_dump"):  # pydantic model
        return canonical(value.model_dump(mode="python", by_alias=False), path)
    raise UnhashableValue(
        f"{path}: value of type {type(value).__name__} has no stable identity; "
        "use plain data (numbers, strings, lists, mappings)"
    )


def stable_hash(value: Any, n: int = 16) -> str:
    blob = json.dumps(canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]
