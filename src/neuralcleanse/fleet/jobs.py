"""One model of a fleet: the job handed to a runner and the result it hands back.

A runner (:mod:`.local`, :mod:`.ray_runner`) knows nothing about scanning: it calls a *work* function on
each job's ``request`` through :func:`run_job`, which sets the worker's torch thread count, times the
work and turns any error into a failed :class:`ModelResult` with a one-line message, so one bad model
never stops the others. The work function saves the model's report in ``job.out`` and returns it.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .._io import disk_error_line
from ..errors import NeuralCleanseError, exception_line, first_line

__all__ = ["FleetJob", "ModelResult", "Work", "run_job", "STATUSES", "VERDICT_ORDER"]

log = logging.getLogger(__name__)

#: ``done``: the report is saved; ``failed``: the model could not be scanned (``error`` says why);
#: ``pending``: not finished yet (a summary written while the run goes on, or after it was interrupted)
STATUSES = ("done", "failed", "pending")

#: how tables order models by verdict: flagged models first, failures next, clean last
VERDICT_ORDER = {"backdoored": 0, "inconclusive": 1, "failed": 2, "pending": 3, "clean": 4}

#: what a runner calls on each job's ``request``: saves the report in ``job.out`` and returns it
#: (a :class:`~neuralcleanse.detection.DetectionReport`); must be a module-level function, so that
#: worker processes and Ray tasks can import it
Work = Callable[[Any], Any]


@dataclass(frozen=True)
class FleetJob:
    """One model to scan.

    Attributes:
        name: unique in the fleet; the name of its report directory.
        model: the model's path, for tables.
        out: its report directory.
        request: what the work function takes (picklable: it travels to worker processes and Ray tasks).
    """

    name: str
    model: str
    out: Path
    request: Any


def _num(x: Any) -> float | None:
    return round(float(x), 4) if isinstance(x, (int, float)) and math.isfinite(x) else None


@dataclass(frozen=True)
class ModelResult:
    """How one model of a fleet went: its verdict and cost, or why it failed.

    Attributes:
        status: one of :data:`STATUSES`.
        verdict: the report's verdict (``backdoored``, ``clean``, ``inconclusive``); ``failed`` or
            ``pending`` when there is no report.
        flagged: the flagged labels; ``flagged_names`` their class names.
        anomaly_index: the largest anomaly index of a flagged label, else of a label below the median.
        seconds: the scan's own time (its report's ``run.seconds``: optimisation and outlier test; a
            resumed scan counts from its resumption); ``images_processed`` likewise.
        wall_seconds: the whole job in its worker (loading, checks, scan, saving, HTML page).
        attempts: how many times the job was started (more than 1 after a worker died and it was retried;
            ``None`` on Ray, which retries a task without telling it).
        resumed: continued from a checkpoint; ``reused``: a finished report found by ``--resume`` (not run).
        worker: ``host:pid`` of the process that ran it.
    """

    name: str
    model: str
    out: str
    status: str
    verdict: str
    flagged: list[int] = field(default_factory=list)
    flagged_names: list[str] = field(default_factory=list)
    anomaly_index: float | None = None
    seconds: float | None = None
    images_processed: int | None = None
    threads: int | None = None
    wall_seconds: float | None = None
    attempts: int | None = None
    resumed: bool = False
    reused: bool = False
    worker: str | None = None
    summary: str = ""
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    @property
    def backdoored(self) -> bool:
        return self.verdict == "backdoored"

    @classmethod
    def pending(cls, job: FleetJob) -> ModelResult:
        return cls(job.name, job.model, job.out.name, "pending", "pending")

    @classmethod
    def failure(cls, job: FleetJob, error: str, **extra: Any) -> ModelResult:
        return cls(job.name, job.model, job.out.name, "failed", "failed", error=error, **extra)

    @classmethod
    def from_report(cls, job: FleetJob, report: Any, **extra: Any) -> ModelResult:
        """The result of a job whose report (a :class:`~neuralcleanse.detection.DetectionReport`) is saved."""
        flagged = [int(k) for k in report.flagged]
        if flagged:
            index = max(report.label(k).anomaly_index for k in flagged)
        else:
            index = report.outlier_test().largest_below_median
        run = report.run
        seconds = run.get("seconds")
        if isinstance(seconds, (int, float)) and isinstance(run.get("transfer_seconds"), (int, float)):
            seconds += run["transfer_seconds"]  # the transfer check's distillation is part of the scan's work
        return cls(
            job.name,
            job.model,
            job.out.name,
            "done",
            report.verdict,
            flagged=flagged,
            flagged_names=[report.label(k).name for k in flagged],
            anomaly_index=_num(index),
            seconds=_num(seconds),
            images_processed=run.get("images_processed"),
            threads=run.get("threads"),
            resumed=any(n.startswith("resumed from a checkpoint") for n in report.notes),
            summary=report.summary(),
            **extra,
        )

    def replace(self, **changes: Any) -> ModelResult:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "out": self.out,
            "status": self.status,
            "verdict": self.verdict,
            "flagged": self.flagged,
            "flagged_names": self.flagged_names,
            "anomaly_index": self.anomaly_index,
            "seconds": self.seconds,
            "images_processed": self.images_processed,
            "threads": self.threads,
            "wall_seconds": self.wall_seconds,
            "attempts": self.attempts,
            "resumed": self.resumed,
            "reused": self.reused,
            "worker": self.worker,
            "summary": self.summary,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelResult:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def _describe(exc: BaseException) -> str:
    """One line for a job's failure: the message of an input error, or the exception's type and first
    line for anything else (a bug; its traceback is logged)."""
    if isinstance(exc, NeuralCleanseError):
        return first_line(exc)
    line = disk_error_line(exc) if isinstance(exc, OSError) else None
    return line if line is not None else f"internal error ({exception_line(exc)})"


def run_job(work: Work, job: FleetJob, *, threads: int | None = None, attempt: int | None = 1) -> ModelResult:
    """Run ``work(job.request)`` with ``threads`` torch threads (``None``: leave the count alone; the
    previous count is restored afterwards) and describe the outcome. Input errors and bugs alike become
    a failed result; only ``KeyboardInterrupt``/``SystemExit`` propagate."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    extra = {"attempts": attempt, "worker": f"{socket.gethostname()}:{os.getpid()}"}
    try:
        report = work(job.request)
    except Exception as exc:  # noqa: BLE001 (one model's failure, whatever it is, is reported, not raised)
        if not isinstance(exc, (NeuralCleanseError, OSError)):
            log.info("%s: scan failed with a bug", job.name, exc_info=exc)
        wall = round(time.perf_counter() - start, 2)
        return ModelResult.failure(job, _describe(exc), wall_seconds=wall, **extra)
    finally:
        if threads is not None:
            torch.set_num_threads(before)
    wall = round(time.perf_counter() - start, 2)
    return ModelResult.from_report(job, report, wall_seconds=wall, **extra)
