"""Running datatrove ranks on a Ray cluster through a pool of long-lived actors, one per worker slot.

datatrove's own ``RayPipelineExecutor.run`` creates a placement group and a fresh actor process for every
task; each of them starts a Python worker, unpickles the pipeline and imports datatrove and the steps'
libraries (spaCy, py3langid, trafilatura) again, several seconds per task. For stages made of many short
tasks (dedupe's bucket ranks, a filter chain over small shards) that start-up is most of the run. Here the
ranks go to ``workers`` actors that live as long as the stage's connection to the cluster, the way the
local executor's forked workers live as long as its pool, so the start-up is paid once per worker:

* Each actor reserves what one datatrove task would (``cpus_per_task`` CPUs and ``mem_per_cpu_gb`` per
  CPU), and runs ranks one after another in its own process with datatrove's ``_run_for_rank`` (the same
  per-rank logs, stats and completion markers). Ranks go to whichever actor is free, in rank order, so at
  most ``workers`` run at once, as locally.
* Actors are created when the stage connects (as many as it will run at once) or when a run first needs
  them, and serve every later run of the stage (dedupe's four passes share them). On creation an actor
  imports the libraries the stage's steps load lazily, so an actor waiting for work (during dedupe's
  one-task passes, or while the stage prepares its input) is already warm when its first rank comes.
* A rank whose step raises stays incomplete (the caller reports it with its log); a rank whose actor died
  (killed, out of memory, node lost) is retried on a fresh actor, at most ``RETRIES`` times.
* A request no node of the cluster holds fails at once, naming the setting, instead of waiting for
  resources that do not exist (an autoscaling cluster needs one node of that size up when the stage starts).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

RETRIES = 3

# Imported by every actor when it starts: what unpickling a datatrove pipeline loads anyway.
BASE_IMPORTS = ("datatrove.pipeline.readers", "datatrove.pipeline.writers", "pyarrow.parquet")


class RankActor:
    """A Ray actor that runs datatrove ranks in its own process, one at a time."""

    def __init__(self, warm: tuple[str, ...]):
        for name in warm:
            try:
                importlib.import_module(name)
            except ImportError:
                pass  # a library this installation lacks: the step that needs it reports that itself

    def pid(self) -> int:
        return os.getpid()

    def run_rank(self, executor: Any, rank: int) -> int:
        """Run ``rank`` of ``executor``'s pipeline; raises what the pipeline raised."""
        import signal
        import threading

        # datatrove's extractor forks a helper per document and stops it with SIGTERM; the helper must not
        # inherit the Ray worker's own SIGTERM handler.
        prev = None
        if threading.current_thread() is threading.main_thread():
            prev = signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            # local_rank 1: the rank logs to its log file only, not to the worker's console
            executor._run_for_rank(rank, local_rank=1)
        finally:
            if prev is not None:
                signal.signal(signal.SIGTERM, prev)
        return rank


class RayRankPool:
    """The actors of one connection to the cluster: :meth:`start` creates them, :meth:`run` runs ranks on
    them, :meth:`close` ends them. ``warm``: the libraries the stage's steps import lazily (loaded when an
    actor starts); ``setting``: how errors name the executor setting."""

    def __init__(self, cpus_per_task: int, mem_per_cpu_gb: float, setting: str, warm: tuple[str, ...] = ()):
        self.cpus = cpus_per_task
        self.memory = int(mem_per_cpu_gb * cpus_per_task * 2**30)
        self.mem_per_cpu_gb = mem_per_cpu_gb
        self.setting = setting
        self.warm = BASE_IMPORTS + tuple(warm)
        self.actors: list[Any] = []
        self.idle: list[Any] = []  # started and not running a rank
        self.starting: dict[Any, Any] = {}  # pid() ref -> actor whose process is not known to be up yet
        self._checked = False

    def _check_fits(self) -> None:
        """Raise when no alive node has the CPUs and memory one actor reserves."""
        import ray

        from .pipeline import ExecutorError

        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        if any(r.get("CPU", 0) >= self.cpus and r.get("memory", 0) >= self.memory for r in nodes):
            return
        biggest = max(nodes, key=lambda r: (r.get("CPU", 0), r.get("memory", 0)), default={})
        raise ExecutorError(
            f"{self.setting}.cpus_per_task / mem_per_cpu_gb: each task needs {self.cpus} CPU(s) and "
            f"{self.memory / 2**30:.2f} GB ({self.cpus} x {self.mem_per_cpu_gb:g} GB), but no node of the "
            f"Ray cluster has that much (largest: {biggest.get('CPU', 0):g} CPU(s), "
            f"{biggest.get('memory', 0) / 2**30:.2f} GB of Ray memory); lower the setting or add a bigger node"
        )

    def start(self, n: int) -> None:
        """Make sure ``n`` actors exist; new ones start in the background."""
        import ray

        if not self._checked:
            self._check_fits()
            self._checked = True
        while len(self.actors) < n:
            actor = (
                ray.remote(RankActor)
                .options(num_cpus=self.cpus, memory=self.memory, max_restarts=0)
                .remote(self.warm)
            )
            self.actors.append(actor)
            self.starting[actor.pid.remote()] = actor

    def run(self, executor: Any, ranks: list[int], workers: int) -> dict[int, str]:
        """Run ``ranks`` of ``executor``, at most ``workers`` at once. Returns, per rank that did not
        complete, why (the step's error, or its actor's death after the retries)."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        self.start(workers)
        ref = ray.put(executor)
        todo = list(ranks)
        failed: dict[int, str] = {}
        deaths: dict[int, int] = {}
        respawns, last_death = 0, ""
        running: dict[Any, tuple[Any, int]] = {}  # run_rank ref -> (actor, rank)
        while todo or running:
            while todo and self.idle and len(running) < workers:
                actor, rank = self.idle.pop(0), todo.pop(0)
                running[actor.run_rank.remote(ref, rank)] = (actor, rank)
            if not running and not self.starting:  # every actor died and the respawn budget is spent
                for rank in todo:
                    failed[rank] = f"no Ray worker could be kept alive ({last_death})"
                break
            [done], _ = ray.wait([*running, *self.starting], num_returns=1)
            if done in self.starting:
                actor, rank = self.starting.pop(done), None
            else:
                actor, rank = running.pop(done)
            try:
                ray.get(done)
            except RayTaskError as e:  # the pipeline raised: the rank stays incomplete, the actor lives on
                text = str(e).strip()
                if rank is not None:
                    failed[rank] = text.splitlines()[-1] if text else type(e).__name__
            except RayActorError as e:  # the actor's process is gone (killed, out of memory, node lost)
                text = str(e).strip()
                last_death = f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"
                self._drop(actor)
                if rank is not None:
                    deaths[rank] = deaths.get(rank, 0) + 1
                    if deaths[rank] > RETRIES:
                        failed[rank] = f"its Ray worker died {deaths[rank]} times ({last_death})"
                    else:
                        todo.insert(0, rank)
                if respawns < RETRIES * workers:
                    respawns += 1
                    self.start(len(self.actors) + 1)
                continue
            self.idle.append(actor)
        return failed

    def _drop(self, actor: Any) -> None:
        import ray

        for lst in (self.actors, self.idle):
            if actor in lst:
                lst.remove(actor)
        try:
            ray.kill(actor)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def close(self) -> None:
        """End every actor of the pool (their CPUs go back to the cluster)."""
        for actor in list(self.actors):
            self._drop(actor)
        self.starting.clear()
