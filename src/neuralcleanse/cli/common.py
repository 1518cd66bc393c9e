"""Pieces every command shares: logging, progress bars, common options, the scan runner and table."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import SettingsError

TRIGGER_HELP = """Trigger spec KIND:key=value,...  Default square:size=4,at=bottom-right,margin=1,pattern=white.
square: size=N or HxW; at=bottom-right|bottom-left|top-right|top-left (with margin=M), or row=R,col=C for
the top-left pixel; pattern=white|black|checkerboard|random|file:PATH; seed=S for random; alpha=A<1 blends
the square. blend:pattern=random|checkerboard|file:PATH,alpha=0.1,seed=0 mixes a whole-image pattern in."""


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )


class ProgressBar:
    """A rich progress bar that appears on its first update (so early errors print alone)."""

    def __init__(self, label: str, *, enabled: bool) -> None:
        self._label, self._enabled = label, enabled
        self._progress: Progress | None = None
        self._task: Any = None

    def update(self, *, completed: int, total: int, status: str) -> None:
        if not self._enabled:
            return
        if self._progress is None:
            self._progress = Progress(
                TextColumn(f"[bold]{self._label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(self._label, total=total, status="")
        self._progress.update(self._task, total=total, completed=completed, status=status)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


verbose_option = click.option("-v", "--verbose", count=True, help="-v info, -vv debug logging.")
device_option = click.option(
    "--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps."
)


def run_scan(detector: Any, images: Any, *, bar: bool, **kwargs: Any) -> Any:
    """``detector.scan`` with a progress bar showing labels done, speed and the current best norms."""
    from ..detection import ScanProgress

    with ProgressBar("scanning labels", enabled=bar) as progress_bar:

        def on_progress(p: ScanProgress) -> None:
            best = " ".join(
                f"{lab}:{l1:.0f}" if l1 < float("inf") else f"{lab}:-" for lab, _s, _c, l1 in p.active[:6]
            )
            progress_bar.update(
                completed=p.done,
                total=p.total,
                status=f"{p.images / max(p.seconds, 1e-9):.0f} img/s  best L1 {best}",
            )

        return detector.scan(images, progress=on_progress, **kwargs)


def print_scan(report: Any, out: Path) -> None:
    from rich import box

    table = Table(
        box=box.SIMPLE_HEAD,
        title=f"Neural Cleanse scan ({report.settings['mode']}, {report.run['seconds']:.0f} s)",
    )
    ref = report.reference.l1_norms if report.reference is not None else None
    cols = ["label", "name", "L1 norm", *(["reference L1"] if ref else []), "attack success", "steps"]
    for col in [*cols, "anomaly index", ""]:
        table.add_column(col, justify="right" if col not in ("name", "") else "left")
    for r in sorted(report.labels, key=lambda r: (r.l1_norm != r.l1_norm, r.l1_norm)):
        flag = "FLAGGED" if r.flagged else ("" if r.reached else "not reached")
        table.add_row(
            str(r.label), r.name, f"{r.l1_norm:.2f}", *([f"{ref.get(r.label, float('nan')):.2f}"] if ref else []),
            f"{100 * r.attack_success:.1f}%", str(r.steps), f"{r.anomaly_index:.2f}", flag,
            style="bold red" if r.flagged else None,
        )  # fmt: skip
    console = Console(highlight=False)
    console.print(table)
    spread = {
        "l1": f"MAD {report.mad:.2f}",
        "log": f"MAD of log norms {report.mad:.3f}",
        "relative": f"MAD of log norm/reference ratios {report.mad:.3f}",
    }.get(report.statistic, "")
    console.print(f"median L1 {report.median_l1:.2f}, {spread}; report written to {out}")
    for note in report.notes:
        console.print(f"note: {note}")
    # a second opinion from the paper's test when another statistic decided, else from the log/relative one
    other = "l1" if report.statistic != "l1" else ("relative" if report.reference is not None else "log")
    second = report.outlier_test(statistic=other)
    if second.flagged != report.flagged:
        what = {
            "l1": "the paper's test on the L1 norms",
            "log": "the test on log L1 norms",
            "relative": "the test relative to the reference",
        }
        console.print(
            f"second opinion: {what[other]} (--statistic {other}) flags {second.flagged or 'no label'}"
        )
    console.print(("[bold red]" if report.verdict == "backdoored" else "[bold]") + report.summary())


#: no classifier this tool scans has more outputs than this; a larger --labels range is a typo
MAX_LABELS = 100_000

#: seeds feed numpy and torch generators, which take non-negative 64-bit integers
MAX_SEED = 2**63 - 1


def check_count(value: int, option: str, *, minimum: int = 1) -> None:
    """An integer option that counts something (``--samples``, ``--max-steps``, ``--epochs``)."""
    if value < minimum:
        raise SettingsError(f"{option} must be at least {minimum}, got {value}")


def check_seed(value: int, option: str) -> None:
    if not 0 <= value <= MAX_SEED:
        raise SettingsError(f"{option} must be a seed from 0 to 2**63-1, got {value}")


def check_threshold(value: float, option: str) -> None:
    """The anomaly-index threshold: a positive, finite number."""
    if not (math.isfinite(value) and value > 0):
        raise SettingsError(f"{option} must be a positive number, got {value:g}")


def check_fraction_option(value: float, option: str, *, closed_low: bool = False) -> None:
    """A fraction in (0, 1] (or [0, 1] with ``closed_low``)."""
    ok = (0.0 <= value <= 1.0) if closed_low else (0.0 < value <= 1.0)
    if not (math.isfinite(value) and ok):
        raise SettingsError(f"{option} must be in {'[' if closed_low else '('}0, 1], got {value:g}")


def parse_labels(text: str | None) -> list[int] | None:
    """``0,3,5`` or ``0-9`` or a mix; ``None`` means all labels."""
    if text is None:
        return None
    out: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        lo, dash, hi = part.partition("-")
        try:
            first, last = (int(lo), int(hi)) if dash else (int(part), int(part))
        except ValueError:
            raise SettingsError(f"--labels: {part!r} is not a label or a range like 0-9") from None
        if last < first:
            raise SettingsError(f"--labels: {part!r} is an empty range (write it low-high, e.g. 0-9)")
        if last - first >= MAX_LABELS:
            raise SettingsError(f"--labels: {part!r} spans more than {MAX_LABELS} labels")
        out.extend(range(first, last + 1))
    if not out:
        raise SettingsError("--labels is empty: give labels like 0,3,5 or 0-9")
    return out
