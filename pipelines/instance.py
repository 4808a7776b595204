"""The Dagster instance lmforge runs on: ``$LMFORGE_HOME/dagster/dagster.yaml`` written from the repo's
``dagster.yaml`` plus the deployment settings below, and a clear error when its storage cannot be reached.

Key design choices:
* Deployment settings are environment variables (or the matching ``lmforge`` flags, which set them), read
  whenever the instance config is written: every process of one deployment (CLI, webserver, daemon, run
  workers) reads one environment, and a spec never names a database or a machine's slot count.
  - ``LMFORGE_POSTGRES_URL``: run, event-log and schedule storage in Postgres (``dagster-postgres``); the
    written config refers to the variable (``postgres_url: {env: LMFORGE_POSTGRES_URL}``), so a password
    in the URL is never written to disk. Unset: SQLite under ``$LMFORGE_HOME/dagster``.
  - ``LMFORGE_GPU_SLOTS``: slots of the ``gpu`` pool (training and generation stages), default 1.
  - ``LMFORGE_MAX_CONCURRENT_RUNS``: runs the daemon's run queue starts at once, default 2.
  - ``LMFORGE_TORCH_THREADS``: torch CPU threads of each ``gpu``-pool stage; unset:
    ``max(1, cores // gpu slots)`` so that stages running side by side do not oversubscribe the cores.
* Postgres is checked with one connection of bounded timeout before Dagster opens it, so a wrong or
  unreachable URL fails in seconds with the setting named, before anything is stored.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import yaml

POSTGRES_ENV = "LMFORGE_POSTGRES_URL"
GPU_SLOTS_ENV = "LMFORGE_GPU_SLOTS"
MAX_RUNS_ENV = "LMFORGE_MAX_CONCURRENT_RUNS"
THREADS_ENV = "LMFORGE_TORCH_THREADS"
GPU_POOL = "gpu"
CONNECT_TIMEOUT_S = 10

REPO_YAML = Path(__file__).resolve().parent.parent / "dagster.yaml"


class InstanceConfigError(RuntimeError):
    """A deployment setting is malformed or names a service that does not answer."""


def _positive_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise InstanceConfigError(f"{name}={raw!r}: expected a whole number of at least 1")
    return n


def gpu_slots() -> int:
    """Slots of the ``gpu`` pool (``LMFORGE_GPU_SLOTS``, default 1)."""
    return _positive_int(GPU_SLOTS_ENV) or 1


def torch_threads(pool_slots: int | None = None, cores: int | None = None) -> int:
    """Torch CPU threads for one ``gpu``-pool stage: ``LMFORGE_TORCH_THREADS``, else the machine's cores
    divided by the stages that may run at once (the pool's slot count)."""
    explicit = _positive_int(THREADS_ENV)
    if explicit:
        return explicit
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, pool_slots or gpu_slots()))


def redact(url: str) -> str:
    """The URL with its password replaced by ``***`` (for messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def instance_config(base_text: str | None = None) -> str:
    """The ``dagster.yaml`` text for this environment: the repo's file, plus a Postgres storage block
    and the pool/queue limits when their settings are given."""
    text = base_text if base_text is not None else REPO_YAML.read_text()
    extra: dict = {}
    if postgres_url():
        extra["storage"] = {"postgres": {"postgres_url": {"env": POSTGRES_ENV}}}
    slots, runs = _positive_int(GPU_SLOTS_ENV), _positive_int(MAX_RUNS_ENV)
    if slots or runs:
        conc = (yaml.safe_load(text) or {}).get("concurrency") or {}
        if slots:
            conc.setdefault("pools", {})["default_limit"] = slots
        if runs:
            conc.setdefault("runs", {})["max_concurrent_runs"] = runs
        extra["concurrency"] = conc
    if not extra:
        return text
    lines = text.splitlines()
    for key in extra:
        lines = _drop_block(lines, key)
    note = (
        f"# Set by lmforge from the environment ({', '.join(sorted(_names(extra)))}); this file is rewritten "
        "whenever they change.\n"
    )
    return "\n".join(lines).rstrip() + "\n\n" + note + yaml.safe_dump(extra, sort_keys=False)


def _names(extra: dict) -> set[str]:
    names = {POSTGRES_ENV} if "storage" in extra else set()
    return names | {n for n in (GPU_SLOTS_ENV, MAX_RUNS_ENV) if "concurrency" in extra and os.environ.get(n)}


def _drop_block(lines: list[str], key: str) -> list[str]:
    """``lines`` without the top-level YAML block ``key:`` (its indented and blank lines)."""
    out, inside = [], False
    for line in lines:
        if line.startswith(f"{key}:"):
            inside = True
            continue
        if inside and (not line.strip() or line[0] in " \t"):
            continue
        inside = False
        out.append(line)
    return out


PG_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg2")


def postgres_url() -> str | None:
    """``LMFORGE_POSTGRES_URL`` with the psycopg2 driver named (``postgresql+psycopg2://``), which is the
    driver dagster-postgres installs: SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg 3. The
    variable is rewritten in this process so that the Dagster processes it starts read the same URL."""
    url = os.environ.get(POSTGRES_ENV, "").strip()
    if not url:
        return None
    scheme = urlsplit(url).scheme
    if scheme not in PG_SCHEMES:
        raise InstanceConfigError(
            f"{POSTGRES_ENV}={redact(url)!r}: expected a URL like postgresql://user:password@host:5432/dbname"
        )
    url = "postgresql+psycopg2" + url[len(scheme):]
    os.environ[POSTGRES_ENV] = url
    return url


def check_postgres(timeout_s: int = CONNECT_TIMEOUT_S) -> None:
    """Connect once to the Postgres of ``LMFORGE_POSTGRES_URL``; raise :class:`InstanceConfigError` naming
    the setting if it is malformed or does not answer within ``timeout_s`` seconds."""
    url = postgres_url()
    if not url:
        return
    try:
        import psycopg2
    except ImportError as e:
        raise InstanceConfigError(
            f"{POSTGRES_ENV} is set but dagster-postgres is not installed (pip install 'dagster-postgres')"
        ) from e
    try:
        psycopg2.connect("postgresql" + url[len("postgresql+psycopg2"):], connect_timeout=timeout_s).close()
    except psycopg2.Error as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InstanceConfigError(
            f"{POSTGRES_ENV}={redact(url)!r}: cannot connect to Postgres within {timeout_s} s: {first}"
        ) from e


def write_instance_config(dagster_home: Path) -> Path:
    """Write ``dagster.yaml`` under ``dagster_home`` for this environment (only when it changes)."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    dst = dagster_home / "dagster.yaml"
    text = instance_config()
    if not dst.exists() or dst.read_text() != text:
        tmp = dst.with_suffix(".yaml.tmp")
        tmp.write_text(text)
        tmp.replace(dst)
    return dst


def apply_pool_limits(instance) -> None:
    """Give the ``gpu`` pool its configured slot count: ``default_limit`` only applies to a pool the
    instance has not seen yet, so an existing pool is updated here when ``LMFORGE_GPU_SLOTS`` is set."""
    slots = _positive_int(GPU_SLOTS_ENV)
    storage = instance.event_log_storage
    if not slots or not storage.supports_global_concurrency_limits:
        return
    if GPU_POOL in storage.get_concurrency_keys():
        if storage.get_concurrency_info(GPU_POOL).slot_count == slots:
            return
    storage.set_concurrency_slots(GPU_POOL, slots)
