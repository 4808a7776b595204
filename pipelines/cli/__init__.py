"""``lmforge``: the few things the Dagster UI does not do well in a terminal.

Key design choice: the CLI is thin. ``validate`` and ``plan`` only compile the spec; ``materialize`` runs
the spec's assets *through Dagster* on the same instance as ``make ui`` (``$LMFORGE_HOME/dagster``), so
every CLI run, its metadata and lineage show up in the UI; ``report`` prints the stored report artifact;
``sql`` queries the DuckDB catalog; ``runs`` lists recent runs with the failed stage and its message.
Run bookkeeping (dead runs, pool slots, failure summaries) lives in ``pipelines/runs.py``. The commands are
grouped by what they touch: ``specs.py`` (compile only), ``store.py`` (stored artifacts and the catalog),
``run.py`` (Dagster runs), ``home.py`` (``$LMFORGE_HOME`` and the Dagster instance); this module is the
argument parser.
"""

from __future__ import annotations

import argparse
import os
import sys

from .home import ensure_dagster_home, home_of, open_instance
from .run import cmd_materialize, cmd_runs, cmd_ui, materialize
from .specs import cmd_code, cmd_kinds, cmd_plan, cmd_validate
from .store import cmd_catalog, cmd_report, cmd_sql, cmd_verify

__all__ = ["ensure_dagster_home", "main", "materialize", "open_instance"]


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    p = argparse.ArgumentParser(prog="lmforge", description=__doc__.split("\n")[0])
    p.add_argument("--home", help="LMFORGE_HOME (default: $LMFORGE_HOME or ~/.lmforge)")
    p.add_argument("--postgres", metavar="URL", help="Dagster run, event-log and schedule storage in Postgres "
                   "(sets LMFORGE_POSTGRES_URL; default: SQLite under $LMFORGE_HOME/dagster)")
    p.add_argument("--gpu-slots", type=int, metavar="N", help="slots of the gpu pool: training stages that "
                   "may run at once (sets LMFORGE_GPU_SLOTS; default 1)")
    p.add_argument("--max-concurrent-runs", type=int, metavar="N", help="runs the daemon's queue starts at "
                   "once (sets LMFORGE_MAX_CONCURRENT_RUNS; default 2)")
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="check specs; exit 0 or print every error")
    v.add_argument("specs", nargs="+")
    v.set_defaults(fn=cmd_validate)
    pl = sub.add_parser("plan", help="one line per stage: name, kind, version, stored or to compute")
    pl.add_argument("spec")
    pl.set_defaults(fn=cmd_plan)
    m = sub.add_parser("materialize", help="materialize a spec (or --stages a,b+) through Dagster")
    m.add_argument("spec")
    m.add_argument("--stages", help="comma list; 'x+' adds descendants, '+x' adds ancestors")
    m.set_defaults(fn=cmd_materialize)
    r = sub.add_parser("report", help="print the stored report card of a spec")
    r.add_argument("spec")
    r.add_argument("--json", action="store_true")
    r.set_defaults(fn=cmd_report)
    q = sub.add_parser("sql", help="query the DuckDB catalog")
    q.add_argument("query")
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_sql)
    c = sub.add_parser("catalog", help="rebuild the DuckDB catalog from the stored manifests")
    c.add_argument("action", choices=["rebuild"])
    c.set_defaults(fn=cmd_catalog)
    ve = sub.add_parser("verify", help="check stored artifacts' file hashes (all, or a spec's); "
                        "damaged ones are moved aside and recomputed by the next materialize")
    ve.add_argument("spec", nargs="?")
    ve.set_defaults(fn=cmd_verify)
    rn = sub.add_parser("runs", help="recent runs: id, status, start time, the failed stage and its message")
    rn.add_argument("--limit", type=int, default=20)
    rn.add_argument("--json", action="store_true")
    rn.set_defaults(fn=cmd_runs)
    k = sub.add_parser("kinds", help="list stage kinds and their fields")
    k.add_argument("kind", nargs="*")
    k.set_defaults(fn=cmd_kinds)
    cv = sub.add_parser("code", help="the code each kind's version covers: modules and their hashes")
    cv.add_argument("kind", nargs="*")
    cv.set_defaults(fn=cmd_code)
    u = sub.add_parser("ui", help="start the Dagster UI (dagster dev) on the lmforge instance")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=3000)
    u.set_defaults(fn=cmd_ui)
    args = p.parse_args(argv)
    from ..instance import GPU_SLOTS_ENV, MAX_RUNS_ENV, POSTGRES_ENV, InstanceConfigError
    from ..spec import SpecError

    if args.home:  # every command, validate and plan included, reads and writes this home (e.g. hash caches)
        os.environ["LMFORGE_HOME"] = str(home_of(args))
    for value, env in ((args.postgres, POSTGRES_ENV), (args.gpu_slots, GPU_SLOTS_ENV),
                       (args.max_concurrent_runs, MAX_RUNS_ENV)):
        if value is not None:
            os.environ[env] = str(value)
    try:
        return int(args.fn(args) or 0)
    except SpecError as e:
        for issue in e.issues:
            print(f"error  {issue}", file=sys.stderr)
        return 1
    except InstanceConfigError as e:
        print(f"error  {e}", file=sys.stderr)
        return 1
