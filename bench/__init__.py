"""Benchmarks: each module exposes ``run(out_dir) -> dict`` of figures measured against a peer in the same run."""
