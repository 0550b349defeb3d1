"""Where a study's units run: in this process (`local`) or as Ray tasks (`ray`).

An executor is built with the unit bodies it runs (`units`: an object with `train(job)` and `eval(job)`,
ftgen.units.Units in a study, stand-ins in tests). It takes units (`submit(kind, job)` -> handle, kind
"train" or "eval") and hands back finished ones (`next_done()` -> (handle, result, error)); it calls
`on_start(kind, job)` when a unit starts. Workers only compute and return; the driver alone writes the
results store. In worker processes the units object is installed once per process, so its model cache
lasts as long as the process.

`local` with `workers: 1` runs units one at a time in this process, evaluation before training: each
trained model is evaluated on all its cells right after its training (and stays loaded for them),
before the next run trains. With `workers: N` it runs N units at once in worker processes (spawned,
and killed with the study: a killed study leaves no orphan writing a run directory).
`ray`: each training run and each evaluation cell is one Ray task with its CPU / GPU needs
(`ray:` in the study config). Trained models are written under the study's output directory, so
on a multi-node cluster that directory must be on a filesystem every node sees.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, Protocol

from ftgen.config import StudyConfig
from ftgen.errors import UserError


class UnitBodies(Protocol):
    def train(self, job: Any) -> dict: ...

    def eval(self, job: Any) -> dict: ...


def run_unit(units: UnitBodies, kind: str, job: Any) -> dict:
    return units.train(job) if kind == "train" else units.eval(job)


def _nothing(kind: str, job: Any) -> None:
    pass


class LocalExecutor:
    """Units one at a time in this process; evaluation first (a trained model's cells before the next run)."""

    on_start: Callable[[str, Any], None] = staticmethod(_nothing)

    def __init__(self, units: UnitBodies) -> None:
        self.units = units
        self._queue: list[tuple[int, str, Any]] = []
        self._ids = itertools.count()

    def submit(self, kind: str, job: Any) -> int:
        handle = next(self._ids)
        self._queue.append((handle, kind, job))
        return handle

    def pending(self) -> int:
        return len(self._queue)

    def next_done(self) -> tuple[int, dict | None, BaseException | None]:
        i = next((i for i, item in enumerate(self._queue) if item[1] == "eval"), 0)
        handle, kind, job = self._queue.pop(i)
        self.on_start(kind, job)
        try:
            return handle, run_unit(self.units, kind, job), None
        except Exception as e:  # the study goes on; the unit is recorded as failed
            return handle, None, e

    def shutdown(self) -> None:
        self._queue.clear()


class _Process:
    """The unit bodies installed in this worker process (pool or Ray): one model cache per process."""

    units: UnitBodies | None = None


def _run_in_worker(kind: str, job: Any, units: UnitBodies | None = None) -> dict:
    if _Process.units is None:
        _Process.units = units
    return run_unit(_Process.units, kind, job)


def _init_worker(parent: int, units: UnitBodies) -> None:
    """In each pool process: die with the parent (Linux), no progress bars (the driver logs each unit)."""
    import ctypes
    import os
    import signal
    import sys

    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the line above: no signal will come
            os._exit(1)
    from ftgen import progress

    progress.set_quiet(True)  # the driver logs each unit; N processes' bars would interleave
    _Process.units = units


class PoolExecutor:
    """N local worker processes; units run in submission order as workers free up."""

    on_start: Callable[[str, Any], None] = staticmethod(_nothing)

    def __init__(self, workers: int, units: UnitBodies) -> None:
        import multiprocessing
        import os
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(os.getpid(), units),
        )
        self._futures: dict = {}
        self._ids = itertools.count()

    def submit(self, kind: str, job: Any) -> int:
        handle = next(self._ids)
        self.on_start(kind, job)  # queued in the pool counts as running: the pool does not say when it starts
        self._futures[self.pool.submit(_run_in_worker, kind, job)] = handle
        return handle

    def pending(self) -> int:
        return len(self._futures)

    def next_done(self) -> tuple[int, dict | None, BaseException | None]:
        from concurrent.futures import FIRST_COMPLETED, wait

        done, _ = wait(list(self._futures), return_when=FIRST_COMPLETED)
        future = next(iter(done))
        handle = self._futures.pop(future)
        try:
            return handle, future.result(), None
        except Exception as e:
            return handle, None, e

    def shutdown(self) -> None:
        for f in self._futures:
            f.cancel()
        self._futures.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """Each unit one Ray task with its CPU / GPU needs; a Ray worker process keeps its units (and model cache)."""

    on_start: Callable[[str, Any], None] = staticmethod(_nothing)

    def __init__(self, cfg: StudyConfig, units: UnitBodies) -> None:
        try:
            import ray
        except ImportError:
            raise UserError("executor 'ray' needs Ray: pip install 'ftgen[ray]'") from None
        self.ray = ray
        self.opts = cfg.ray
        self._started = not ray.is_initialized()
        if self._started:
            ray.init(
                address=self.opts.address,
                num_cpus=self.opts.num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        self._units = ray.put(units)
        self._refs: dict = {}
        self._ids = itertools.count()

    def submit(self, kind: str, job: Any) -> int:
        cpus, gpus = (
            (self.opts.train_cpus, self.opts.train_gpus)
            if kind == "train"
            else (self.opts.eval_cpus, self.opts.eval_gpus)
        )
        remote = self.ray.remote(_run_in_worker).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
        handle = next(self._ids)
        self.on_start(kind, job)  # Ray does not say when a task starts: `running` = handed to the cluster
        self._refs[remote.remote(kind, job, self._units)] = handle
        return handle

    def pending(self) -> int:
        return len(self._refs)

    def next_done(self) -> tuple[int, dict | None, BaseException | None]:
        ready, _ = self.ray.wait(list(self._refs), num_returns=1)
        ref = ready[0]
        handle = self._refs.pop(ref)
        try:
            return handle, self.ray.get(ref), None
        except Exception as e:  # RayTaskError wraps the worker's exception as .cause
            return handle, None, e

    def shutdown(self) -> None:
        for ref in self._refs:
            self.ray.cancel(ref, force=True)
        self._refs.clear()
        if self._started:
            self.ray.shutdown()


def make_executor(cfg: StudyConfig, units: UnitBodies):
    """The executor the study config names, running `units`."""
    if cfg.executor == "ray":
        return RayExecutor(cfg, units)
    return PoolExecutor(cfg.workers, units) if cfg.workers > 1 else LocalExecutor(units)
