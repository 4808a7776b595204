"""Where the ``lmforge`` commands find their state: ``$LMFORGE_HOME`` and the Dagster instance under it.

Key design choice: the CLI and ``make ui`` share one Dagster instance, ``$LMFORGE_HOME/dagster``, whose
``dagster.yaml`` is written from the environment (``pipelines/instance.py``) before Dagster reads it, and
whose storages are created under a file lock, so concurrent commands never race on a fresh instance.
"""

from __future__ import annotations

import os
from pathlib import Path


def home_of(args) -> Path:
    """``--home``, else ``$LMFORGE_HOME``, else ``~/.lmforge``."""
    from resources.store import default_home

    return Path(args.home).expanduser().resolve() if getattr(args, "home", None) else default_home()


def ensure_dagster_home(home: Path) -> Path:
    """``$LMFORGE_HOME/dagster`` with lmforge's ``dagster.yaml`` for this environment (Postgres storage,
    pool and queue limits: :mod:`pipelines.instance`); returns it and sets ``DAGSTER_HOME``."""
    from ..instance import write_instance_config

    dh = home / "dagster"
    write_instance_config(dh)
    os.environ["DAGSTER_HOME"] = str(dh)
    return dh


def open_instance(home: Path):
    """The Dagster instance under ``home``, its storages created under a lock: two runs creating sqlite
    storages at once leave a schema with two migration heads that no later run can open. A Postgres
    storage (``LMFORGE_POSTGRES_URL``) is checked first; the ``gpu`` pool gets its configured slots."""
    import dagster as dg

    from resources.store import file_lock

    from ..instance import apply_pool_limits, check_postgres

    check_postgres()  # an unreachable database fails here, in bounded time, before anything is stored
    lock = home / "locks" / "dagster-instance.lock"
    with file_lock(lock, holder="lmforge materialize", what="the Dagster instance"):
        ensure_dagster_home(home)
        instance = dg.DagsterInstance.get()
        apply_pool_limits(instance)
        instance.get_runs(limit=1)
        instance.fetch_materializations(dg.AssetKey(["lmforge"]), limit=1)
        instance.all_instigator_state()
    return instance
