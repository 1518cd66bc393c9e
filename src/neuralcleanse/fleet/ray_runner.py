"""Running a fleet on Ray: one task per model, on a local instance started for the run or a cluster.

Ray is an optional dependency (``pip install 'neuralcleanse[ray]'``). Each task asks for
``cpus_per_task`` CPUs (and ``gpus_per_task`` GPUs) and runs torch with as many threads as it has CPUs,
so a model's report is the one ``scan`` gives with that thread count. A task whose worker dies (killed,
out of memory, a lost node) is retried by Ray up to ``retries`` times; a model that fails with an error
is not retried (its failure is the task's result). The work function, the jobs and the package must be
importable on every node, and the jobs' paths readable there (``docs/fleet.md``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from ..errors import NeuralCleanseError, SettingsError, exception_line
from .jobs import FleetJob, ModelResult, Work, run_job

__all__ = ["run_ray", "import_ray", "ray_session", "check_task_fits", "RAY_INSTALL_HINT"]

log = logging.getLogger(__name__)

RAY_INSTALL_HINT = "pip install 'neuralcleanse[ray]'"


def import_ray(option: str = "Ray") -> ModuleType:
    """The ``ray`` module, or a one-line :class:`SettingsError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise SettingsError(f"{option} needs Ray, which is not installed: {RAY_INSTALL_HINT}") from None
    return ray


@contextmanager
def ray_session(
    *, address: str | None = None, num_cpus: int | None = None, num_gpus: float | None = None
) -> Iterator[ModuleType]:
    """Ray, connected for the duration: to the cluster at ``address``, or to a local instance started
    with ``num_cpus``/``num_gpus`` (no dashboard, workers' output kept out of this terminal) and shut
    down afterwards. A process that already has Ray initialised keeps its connection as it is. One-line
    errors when Ray cannot connect (:class:`SettingsError`) or start (:class:`NeuralCleanseError`)."""
    ray = import_ray("--ray-address" if address else "--ray")
    if ray.is_initialized():
        yield ray
        return
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            # "local": a new instance even when `ray start` left a cluster on this machine
            ray.init(
                address="local",
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                include_dashboard=False,
                log_to_driver=False,
            )
    except Exception as exc:  # noqa: BLE001 (Ray raises many kinds; each is one line here)
        why = exception_line(exc)
        if address:
            raise SettingsError(
                f"--ray-address {address}: cannot connect to a Ray cluster there ({why})"
            ) from None
        raise NeuralCleanseError(f"--ray: a local Ray instance could not start ({why})") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def check_task_fits(cpus: int, gpus: float = 0, *, wait: bool = False) -> None:
    """Some live node of the Ray this process is connected to has ``cpus`` CPUs and ``gpus`` GPUs for a
    task (else Ray would wait for one forever): one-line :class:`SettingsError`, or with ``wait`` a
    warning (an autoscaling cluster may add such a node)."""
    ray = import_ray()
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
        return
    most_cpus = max((int(r.get("CPU", 0)) for r in nodes), default=0)
    most_gpus = max((r.get("GPU", 0) for r in nodes), default=0)
    message = (
        f"no Ray node has {cpus} CPUs and {gpus:g} GPUs for a task (--cpus-per-task, --gpus-per-task); "
        f"the largest have {most_cpus} CPUs, {most_gpus:g} GPUs"
    )
    if not wait:
        raise SettingsError(message)
    log.warning("%s: the tasks wait until the cluster has such a node", message)


def _task(work: Work, job: FleetJob, threads: int) -> ModelResult:
    """A Ray task: one model (Ray retries the task without telling it: the attempt is not counted)."""
    return run_job(work, job, threads=threads, attempt=None)


def run_ray(
    jobs: Sequence[FleetJob],
    work: Work,
    *,
    cpus_per_task: int = 1,
    gpus_per_task: float = 0,
    retries: int = 2,
    wait_for_resources: bool = False,
    on_result: Callable[[ModelResult], None] | None = None,
) -> list[ModelResult]:
    """Run the jobs as Ray tasks on the Ray this process is connected to (:func:`ray_session`); results
    in the order of ``jobs``. Tasks are all submitted at once; Ray starts as many as the cluster's
    resources hold. A task that no node can hold is refused (:class:`SettingsError`), or with
    ``wait_for_resources`` (an autoscaling cluster may add such a node) only warned about."""
    if cpus_per_task < 1:
        raise SettingsError(f"cpus_per_task must be at least 1, got {cpus_per_task}")
    if gpus_per_task < 0:
        raise SettingsError(f"gpus_per_task must be 0 or more, got {gpus_per_task}")
    if retries < 0:
        raise SettingsError(f"retries must be 0 or more, got {retries}")
    ray = import_ray()
    check_task_fits(cpus_per_task, gpus_per_task, wait=wait_for_resources)
    task = ray.remote(_task).options(
        num_cpus=cpus_per_task, num_gpus=gpus_per_task, max_retries=retries, retry_exceptions=False
    )
    pending: dict[Any, FleetJob] = {task.remote(work, job, cpus_per_task): job for job in jobs}
    results: dict[str, ModelResult] = {}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                try:
                    result: ModelResult = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the worker died more often than retried
                    why = exception_line(exc)
                    result = ModelResult.failure(job, f"Ray task failed ({why})", attempts=retries + 1)
                results[job.name] = result
                if on_result is not None:
                    on_result(result)
    except BaseException:
        for ref in pending:  # interrupted: the cluster stops the rest
            ray.cancel(ref, force=True)
        raise
    return [results[job.name] for job in jobs]
