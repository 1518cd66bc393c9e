"""The result of a fleet scan: every model's verdict and cost, saved as ``summary.json`` and ``index.html``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._io import atomic_write_bytes, atomic_write_json, format_version, read_result
from ..errors import DataError, SettingsError
from .jobs import VERDICT_ORDER, ModelResult

__all__ = ["FleetSummary", "SUMMARY_FILE", "INDEX_FILE", "SORT_KEYS", "SUMMARY_FORMAT_VERSION"]

SUMMARY_FILE = "summary.json"
INDEX_FILE = "index.html"
SUMMARY_FORMAT_VERSION = 1

#: ``verdict``: flagged first (largest anomaly index first), then inconclusive, failed, pending, clean;
#: ``name``: alphabetical; ``time``: the longest scans first
SORT_KEYS = ("verdict", "name", "time")


def _sort_key(by: str) -> Any:
    if by == "verdict":
        return lambda r: (VERDICT_ORDER.get(r.verdict, 9), -(r.anomaly_index or 0.0), r.name)
    if by == "name":
        return lambda r: r.name
    if by == "time":
        return lambda r: (-(r.seconds if r.seconds is not None else r.wall_seconds or 0.0), r.name)
    raise SettingsError(f"unknown sort key {by!r}; use {', '.join(SORT_KEYS)}")


@dataclass(frozen=True)
class FleetSummary:
    """Every model of a fleet scan and how the run went.

    Attributes:
        models: one :class:`ModelResult` per model, in the order they were given.
        runner: where the models ran (``backend``: ``in-process``, ``processes`` or ``ray``; workers,
            threads, CPUs and GPUs per task, the Ray address).
        settings: the scan options every model shared.
        started: when the run started (ISO 8601, local time).
        seconds: the run's wall time so far.
    """

    models: list[ModelResult]
    runner: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    started: str = ""
    seconds: float = 0.0
    format_version: int = SUMMARY_FORMAT_VERSION

    @property
    def counts(self) -> dict[str, int]:
        """How many models in all, per status and per verdict, and how many were reused."""
        out = {"total": len(self.models)}
        for key in ("done", "failed", "pending"):
            out[key] = sum(r.status == key for r in self.models)
        for key in ("backdoored", "inconclusive", "clean"):
            out[key] = sum(r.verdict == key for r in self.models)
        out["reused"] = sum(r.reused for r in self.models)
        return out

    @property
    def failed(self) -> list[ModelResult]:
        return [r for r in self.models if r.failed]

    @property
    def images_processed(self) -> int:
        return sum(r.images_processed or 0 for r in self.models)

    def sorted(self, by: str = "verdict") -> list[ModelResult]:
        """The models in the order of a :data:`SORT_KEYS` key."""
        return sorted(self.models, key=_sort_key(by))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "counts": self.counts,
            "started": self.started,
            "seconds": round(self.seconds, 2),
            "images_processed": self.images_processed,
            "scan_seconds": round(sum(r.seconds or 0.0 for r in self.models), 2),
            "runner": self.runner,
            "settings": self.settings,
            "models": [r.to_dict() for r in self.models],
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``summary.json`` and ``index.html`` (linking every model's ``report.html``, flagged
        models first) in the fleet's directory; each file appears complete or not at all."""
        from .index import render_index

        root = Path(path)
        atomic_write_json(root / SUMMARY_FILE, self.to_dict())
        atomic_write_bytes(root / INDEX_FILE, render_index(self).encode("utf-8"))
        return root

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FleetSummary:
        """Read ``summary.json`` (or the directory holding it)."""
        file, d = read_result(path, SUMMARY_FILE, what="fleet summary")
        if format_version(d) != SUMMARY_FORMAT_VERSION:
            raise DataError(f"{file}: not a fleet summary of format {SUMMARY_FORMAT_VERSION}")
        try:
            return cls(
                models=[ModelResult.from_dict(m) for m in d["models"]],
                runner=dict(d.get("runner", {})),
                settings=dict(d.get("settings", {})),
                started=str(d.get("started", "")),
                seconds=float(d.get("seconds", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{file}: malformed fleet summary ({type(exc).__name__}: {exc})") from None
