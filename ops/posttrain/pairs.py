"""Preference pairs from their three sources: pairs artifacts (``pairs.parquet``), samples paired
correct-vs-incorrect (``rollouts.parquet`` of an RL or rejection-sampling stage) and a user Parquet file.

Key design choice: a user file is checked column by column (:func:`pairs_file_problems`) before anything is
read, so a wrong file is refused with every problem named; pairs are returned in a fixed order (pairs
artifacts, then samples, then the user file) so a seeded split is reproducible.
"""

from __future__ import annotations

from pathlib import Path

from ops.posttrain.rm import Pair, pairs_from_rollouts, pairs_from_table


def pairs_file_problems(path: Path) -> list[str]:
    """What makes ``path`` unusable as a pairs file (missing, unreadable, a missing or non-string
    ``prompt``/``chosen``/``rejected`` column); empty when it is usable."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        return [f"{path}: file not found"]
    try:
        schema = pq.read_schema(path)
    except Exception as e:  # noqa: BLE001
        return [f"{path}: not a readable Parquet file ({e})"]
    out = []
    for col in ("prompt", "chosen", "rejected"):
        if col not in schema.names:
            out.append(f"{path}: missing column {col!r} (has {schema.names})")
        elif schema.field(col).type not in (pa.string(), pa.large_string()):
            out.append(f"{path}: column {col!r} has type {schema.field(col).type}, expected string")
    return out


def read_rollout_rows(dirs: list[Path]) -> list[dict]:
    """The rows of ``rollouts.parquet`` in each artifact directory, in order."""
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for d in dirs:
        rows += pq.read_table(d / "rollouts.parquet").to_pylist()
    return rows


def collect_pairs(
    pair_dirs: list[Path],
    sample_dirs: list[Path],
    max_per_prompt: int,
    seed: int,
    user_file: Path | None = None,
) -> list[Pair]:
    """Every pair of the pairs artifacts, then up to ``max_per_prompt`` correct-vs-incorrect pairs per prompt
    from the samples, then the rows of ``user_file`` (rows without an id get ``user-<row>``)."""
    import pyarrow.parquet as pq

    pairs = []
    for d in pair_dirs:
        pairs += pairs_from_table(pq.read_table(d / "pairs.parquet").to_pylist())
    if sample_dirs:
        pairs += pairs_from_rollouts(read_rollout_rows(sample_dirs), max_per_prompt, seed)
    if user_file is not None:
        pairs += pairs_from_table(
            [
                {**r, "id": r.get("id") or f"user-{i}"}
                for i, r in enumerate(pq.read_table(user_file).to_pylist())
            ]
        )
    return pairs


def identical_pairs(pairs: list[Pair]) -> list[Pair]:
    """The pairs whose chosen and rejected responses are the same text (after the stop token is stripped):
    they carry no preference (the preference term of every DPO loss is flat on them)."""
    return [p for p in pairs if p.chosen.strip() == p.rejected.strip()]
