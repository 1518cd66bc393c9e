"""Running a fleet on this machine: in this process, one model at a time, or in worker processes.

Worker processes are started with ``spawn`` (a clean interpreter: no threads or CUDA state inherited
from this one), each with a fixed torch thread count, and take one model at a time. A worker that dies
(killed, out of memory) is replaced and its model retried up to ``retries`` times; a model that fails
with an error is not retried (the same input would fail again).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.context import SpawnContext, SpawnProcess

from ..errors import SettingsError
from .jobs import FleetJob, ModelResult, Work, run_job

__all__ = ["run_in_process", "run_processes", "available_cpus"]

log = logging.getLogger(__name__)

OnResult = Callable[[ModelResult], None]


def available_cpus() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_threads(workers: int) -> int:
    """Torch threads of each of ``workers`` worker processes: the CPU cores shared out, at most
    ``OMP_NUM_THREADS`` when it is set to a positive count (the user's per-process limit)."""
    share = max(1, available_cpus() // workers)
    limit = os.environ.get("OMP_NUM_THREADS", "").strip()
    return min(share, int(limit)) if limit.isdigit() and int(limit) > 0 else share


def run_in_process(
    jobs: Sequence[FleetJob],
    work: Work,
    *,
    threads: int | None = None,
    on_result: OnResult | None = None,
) -> list[ModelResult]:
    """Run the jobs here, one after the other, with ``threads`` torch threads (``None``: as set)."""
    results = []
    for job in jobs:
        result = run_job(work, job, threads=threads)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


#: a worker's exit code when its parent is gone (killed with SIGKILL: nothing stopped the worker)
ORPHANED = 75


def _exit_with_parent() -> None:
    """End this worker as soon as the process that started it is gone, also mid-model: a driver killed
    with SIGKILL cannot stop its workers, and a worker that finished its model then would write a report
    the driver's summary never records (the model's checkpoint stays, so ``--resume`` continues it)."""
    import threading

    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(ORPHANED)

    threading.Thread(target=watch, name="neuralcleanse-parent-watch", daemon=True).start()


def _serve(conn: multiprocessing.connection.Connection, threads: int) -> None:
    """A worker process: run the jobs it is sent until it is sent ``None``. Ctrl-C is the parent's to
    handle (it stops the workers), so the worker ignores it; it ends with its parent."""
    import signal

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    torch.set_num_threads(threads)
    while True:
        try:
            message = conn.recv()
        except (EOFError, KeyboardInterrupt):  # the parent went away or was interrupted
            return
        if message is None:
            return
        work, job, attempt = message
        conn.send(run_job(work, job, threads=threads, attempt=attempt))


class _Worker:
    """A worker process and the job it is running."""

    def __init__(self, ctx: SpawnContext, threads: int) -> None:
        self.conn, child = ctx.Pipe()
        self.process: SpawnProcess = ctx.Process(target=_serve, args=(child, threads), daemon=True)
        self.process.start()
        child.close()
        self.job: tuple[FleetJob, int] | None = None

    def send(self, work: Work, job: FleetJob, attempt: int) -> None:
        self.job = (job, attempt)
        self.conn.send((work, job, attempt))

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()


def run_processes(
    jobs: Sequence[FleetJob],
    work: Work,
    *,
    workers: int,
    threads: int,
    retries: int = 2,
    on_result: OnResult | None = None,
) -> list[ModelResult]:
    """Run the jobs in ``workers`` processes of ``threads`` torch threads each, one model per worker at
    a time; results in the order of ``jobs``. A model whose worker died is retried on a new worker up to
    ``retries`` times, then reported failed."""
    if workers < 1 or threads < 1:
        raise SettingsError(f"workers and threads must be at least 1, got {workers} and {threads}")
    if retries < 0:
        raise SettingsError(f"retries must be 0 or more, got {retries}")
    ctx = multiprocessing.get_context("spawn")
    queue: deque[tuple[FleetJob, int]] = deque((job, 1) for job in jobs)
    results: dict[str, ModelResult] = {}
    pool: list[_Worker] = []

    def finish(result: ModelResult) -> None:
        results[result.name] = result
        if on_result is not None:
            on_result(result)

    try:
        while queue or any(w.job is not None for w in pool):
            idle = [w for w in pool if w.job is None]
            while queue and (idle or len(pool) < workers):
                worker = idle.pop() if idle else _Worker(ctx, threads)
                if worker not in pool:
                    pool.append(worker)
                job, attempt = queue.popleft()
                worker.send(work, job, attempt)
            busy = [w for w in pool if w.job is not None]
            ready = multiprocessing.connection.wait(
                [w.conn for w in busy] + [w.process.sentinel for w in busy]
            )
            for worker in busy:
                if worker.conn not in ready and worker.process.sentinel not in ready:
                    continue
                assert worker.job is not None
                job, attempt = worker.job
                try:
                    result: ModelResult | None = worker.conn.recv() if worker.conn.poll() else None
                except (EOFError, OSError):
                    result = None
                if result is not None:
                    worker.job = None
                    finish(result)
                    continue
                # the worker died with the model: a new worker takes it, or it has failed
                worker.process.join(timeout=5)  # reap it, to say how it ended
                code = worker.process.exitcode
                worker.kill()
                pool.remove(worker)
                if attempt <= retries:
                    log.warning("%s: worker died (exit code %s); retrying", job.name, code)
                    queue.appendleft((job, attempt + 1))
                else:
                    tries = f"{attempt} attempt{'s' * (attempt > 1)}"
                    error = f"worker process died (exit code {code}; {tries})"
                    finish(ModelResult.failure(job, error, attempts=attempt))
        for worker in pool:
            worker.stop()
    except BaseException:
        for worker in pool:
            worker.kill()
        raise
    return [results[job.name] for job in jobs]
