"""Pieces every command shares: logging, progress bars, common options, the scan runner and table."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import SettingsError

TRIGGER_HELP = """Trigger spec KIND:key=value,...  Default square:size=4,at=bottom-right,margin=1,pattern=white.
square: size=N or HxW; at=bottom-right|bottom-left|top-right|top-left (with margin=M), or row=R,col=C for
the top-left pixel; pattern=white|black|checkerboard|random|file:PATH; seed=S for random; alpha=A<1 blends
the square. blend:pattern=random|checkerboard|file:PATH,alpha=0.1,seed=0 mixes a whole-image pattern in.
image:mask=MASK.png,pattern=PATTERN.png draws any trigger as two images of the images' size (white in the
mask stamps the pattern)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised by the command line's handler: stopped like Ctrl-C, and said so."""


#: the width of printed results off a terminal (a pipe, a file, a CI log): wide enough that no table is
#: squeezed and no line is wrapped, so the output stays greppable
PIPE_WIDTH = 400


def output_console() -> Console:
    """Where commands print their results: stdout, wrapped to the terminal; off a terminal nothing is
    wrapped or cut (rich would otherwise assume 80 columns)."""
    console = Console(highlight=False)
    return console if console.is_terminal else Console(highlight=False, width=PIPE_WIDTH)


def setup_logging(verbose: int) -> None:
    """Log records on stderr: rich lines on a terminal; elsewhere (a CI log, a pipe) one plain line per
    record, never wrapped, so a log stays greppable. Python warnings (a library's FutureWarning) become
    one-line log records too, instead of two lines with the warned-about source line."""
    progress_interval()  # a bad $NEURALCLEANSE_PROGRESS_INTERVAL fails before any work
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    console = Console(stderr=True)
    handler: logging.Handler
    if console.is_terminal:
        handler = RichHandler(console=console, show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_OneLine("%(levelname)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    warnings.showwarning = _log_warning


class _OneLine(logging.Formatter):
    """A record's message on one line (a message with a newline keeps its first line and says so)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        head, _, rest = text.partition("\n")
        return head + (" [...]" if rest.strip() else "")


def _log_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, *_: Any, **__: Any
) -> None:
    """``warnings.showwarning`` for the command line: one log line naming the warning's kind and origin."""
    where = Path(filename).name
    text = str(message).strip().splitlines()[0] if str(message).strip() else ""
    logging.getLogger("py.warnings").warning("%s (%s:%d): %s", category.__name__, where, lineno, text)


#: seconds between plain progress lines when stderr is not a terminal; the environment variable
#: overrides it (tests set it to 0 to see every line)
PROGRESS_INTERVAL = 30.0
PROGRESS_INTERVAL_ENV = "NEURALCLEANSE_PROGRESS_INTERVAL"


def progress_interval() -> float:
    """Seconds between plain progress lines: ``$NEURALCLEANSE_PROGRESS_INTERVAL`` or 30."""
    text = os.environ.get(PROGRESS_INTERVAL_ENV, "").strip()
    if not text:
        return PROGRESS_INTERVAL
    try:
        value = float(text)
    except ValueError:
        raise SettingsError(f"{PROGRESS_INTERVAL_ENV} must be a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise SettingsError(f"{PROGRESS_INTERVAL_ENV} must be 0 or more seconds, got {text!r}")
    return value


def format_duration(seconds: float) -> str:
    """``45s``, ``4m05s``, ``2h03m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class ProgressBar:
    """Progress of a long task on stderr.

    On a terminal: a rich bar (when ``enabled``) that appears on its first update, so early errors print
    alone. Anywhere else (a CI log, ``nohup``, a pipe): a plain line at most every
    :func:`progress_interval` seconds, the first one after that interval, so short runs stay quiet.
    """

    def __init__(self, label: str, *, enabled: bool, unit: str = "", approximate: bool = False) -> None:
        self._label, self._unit, self._approximate = label, unit, approximate
        self._console = Console(stderr=True)
        terminal = self._console.is_terminal
        self._bar = enabled and terminal
        self._lines = not terminal
        self._interval = progress_interval() if self._lines else 0.0
        self._start = self._last = time.monotonic()
        self._progress: Progress | None = None
        self._task: Any = None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def update(
        self, *, completed: float, total: float, status: str, line: str | None = None, now: bool = False
    ) -> None:
        """Move the bar; ``line`` (default ``status``) is what a plain progress line says (``now``: printed
        at once, not at the next interval: a new stage of the work)."""
        if self._lines:
            t = time.monotonic()
            if now or t - self._last >= self._interval:
                self._last = t
                click.echo(f"{self._label}: {line or status}", err=True)
            return
        if not self._bar:
            return
        if self._progress is None:
            count = "{task.completed:.0f}/" + ("~" if self._approximate else "") + "{task.total:.0f}"
            self._progress = Progress(
                TextColumn(f"[bold]{self._label}"),
                BarColumn(),
                TextColumn(count + (f" {self._unit}" if self._unit else "")),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                console=self._console,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(self._label, total=total, status="")
        self._progress.update(self._task, total=max(total, completed), completed=completed, status=status)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


class ScanProgressText:
    """Words for a scan's :class:`~neuralcleanse.detection.ScanProgress`: steps done over an estimated
    total, labels done, speed and time left. The speed is measured from the first optimisation step (the
    set-up before it is not optimisation), so the time left does not count it."""

    def __init__(self) -> None:
        self._first: tuple[float, int] | None = None  # (seconds, images) at the first step

    def __call__(self, p: Any) -> tuple[float, float, str, str]:
        """``(steps done, estimated total, bar status, plain line)``."""
        if p.stage:  # the optimisation is over
            return float(p.steps_done), float(p.steps_done), p.stage, p.stage
        if self._first is None:
            self._first = (p.seconds, p.images)
        seconds, images = p.seconds - self._first[0], p.images - self._first[1]
        rate = images / seconds if seconds > 0 and images > 0 else None
        per_second = rate / p.images_per_step if rate is not None and p.images_per_step else None
        eta = p.eta(steps_per_second=per_second) if per_second is not None else None
        done, estimate, bound = p.steps_done, p.estimated_steps(), p.max_total_steps()
        speed = f"{rate:.0f} img/s" if rate is not None else "measuring speed"
        stopped = sum(1 for _, _, reason in p.finished if reason != "nan")
        if stopped:
            steps = (
                f"steps {done}/~{estimate:.0f} (estimate from {stopped} finished label{'s' * (stopped > 1)}"
            )
            steps += f"; at most {bound})" if bound is not None else ")"
            if eta is None:
                eta_text = "ETA not known yet"
            else:
                cap = (
                    ""
                    if eta[1] is None
                    else f"; at most {format_duration(eta[1])} if every label runs to --max-steps"
                )
                eta_text = f"ETA ~{format_duration(eta[0])} (estimate{cap})"
            short = "" if eta is None else f"ETA ~{format_duration(eta[0])} (estimate)"
        else:  # nothing has stopped yet: only the cap is known, and labels usually stop well before it
            steps = f"steps {done} of at most {estimate:.0f} (no label has stopped yet)"
            if eta is None:
                eta_text = "ETA not known yet"
            else:
                eta_text = f"ETA at most {format_duration(eta[1] if eta[1] is not None else eta[0])} (labels usually stop early; an estimate follows when one has)"
            short = (
                ""
                if eta is None
                else f"ETA at most {format_duration(eta[1] if eta[1] is not None else eta[0])}"
            )
        line = f"{p.done}/{p.total} labels done, {steps}, {speed}, elapsed {format_duration(p.seconds)}, {eta_text}"
        status = f"labels {p.done}/{p.total}  {speed}  {short}"
        return float(done), estimate, status, line


verbose_option = click.option("-v", "--verbose", count=True, help="-v info, -vv debug logging.")
device_option = click.option(
    "--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps."
)


def run_scan(detector: Any, images: Any, *, bar: bool, **kwargs: Any) -> Any:
    """``detector.scan`` with progress: optimisation steps done over an estimated total, labels done,
    speed and an estimated time left (a bar on a terminal, plain lines otherwise)."""
    from ..detection import ScanProgress

    with ProgressBar("scanning", enabled=bar, unit="steps", approximate=True) as progress_bar:
        text = ScanProgressText()

        def on_progress(p: ScanProgress) -> None:
            done, estimate, status, line = text(p)
            progress_bar.update(completed=done, total=estimate, status=status, line=line, now=bool(p.stage))

        return detector.scan(images, progress=on_progress, **kwargs)


def print_scan(report: Any, out: Path) -> None:
    from rich import box

    from ..detection.report import unreachable_labels

    table = Table(
        box=box.SIMPLE_HEAD,
        title=f"Neural Cleanse scan ({report.settings['mode']}, {report.run['seconds']:.0f} s"
        + (
            f" + {report.run['transfer_seconds']:.0f} s transfer check)"
            if "transfer_seconds" in report.run
            else ")"
        ),
    )
    ref = report.reference.l1_norms if report.reference is not None else None
    cols = ["label", "name", "L1 norm", *(["reference L1"] if ref else []), "attack success", "steps", "stop"]
    for col in [*cols, "anomaly index", ""]:
        left = col in ("name", "stop", "")
        table.add_column(col, justify="left" if left else "right", no_wrap=col == "stop")
    threshold = float(report.settings.get("attack_threshold", 0.99))
    for r in sorted(report.labels, key=lambda r: (r.l1_norm != r.l1_norm, r.l1_norm)):
        # "reached" is the optimisation's: the threshold held over its last steps, which a trigger
        # that works at the end of a too-short run has not shown yet
        unreached = "not reached" if not r.attack_success >= threshold else "too few steps"
        flag = "FLAGGED" if r.flagged else ("" if r.reached else unreached)
        table.add_row(
            str(r.label), r.name, f"{r.l1_norm:.2f}", *([f"{ref.get(r.label, float('nan')):.2f}"] if ref else []),
            f"{100 * r.attack_success:.1f}%", str(r.steps), r.stop, f"{r.anomaly_index:.2f}", flag,
            style="bold red" if r.flagged else None,
        )  # fmt: skip
    console = output_console()
    console.print(table)
    stat = report.outlier_statistic
    if math.isfinite(report.median_l1):
        console.print(f"median L1 {report.median_l1:.2f}, {stat.spread(report.mad)}; report written to {out}")
    else:
        console.print(f"no median: fewer than 3 labels have a finite norm; report written to {out}")
    for note in report.notes:
        console.print(f"note: {note}")
    unreachable = unreachable_labels(report.labels, {r.label: r.attack_success for r in report.labels})
    capped = [r.label for r in report.labels if r.capped and r.label not in unreachable]  # those: a note
    if capped:
        cap = report.settings.get("max_steps", "--max-steps")
        console.print(
            f"warning: labels {capped} hit the cap of {cap} steps (--max-steps) before stopping early: their "
            "L1 norm is an upper bound (rescan with a larger --max-steps for the smallest trigger)"
        )
    # the paper's test beside a verdict of another statistic; a second opinion from the log/relative one
    # beside the paper's test when it differs
    other = stat.companion(reference=report.reference is not None)
    if other.paper:
        console.print(f"beside it: {report.paper_test()}")
    elif (second := report.outlier_test(statistic=other.name)).flagged != report.flagged:
        console.print(
            f"second opinion: {other.test_name} (--statistic {other.name}) flags {second.flagged or 'no label'}"
        )
    console.print(("[bold red]" if report.verdict == "backdoored" else "[bold]") + report.summary())


#: no classifier this tool scans has more outputs than this; a larger --labels range is a typo
MAX_LABELS = 100_000

#: seeds feed numpy and torch generators, which take non-negative 64-bit integers
MAX_SEED = 2**63 - 1


def check_options_apply(
    choice: str, options: Mapping[str, tuple[str, tuple[str, ...]]], *, switch: str, none: str | None = None
) -> None:
    """One line when an option that applies only to some values of ``switch`` (``--attack``, ``--method``)
    is given on the command line with another value. ``options`` maps a parameter name to its option and
    the values it applies to; ``none`` is the value that means the switch was not used."""
    from click.core import ParameterSource

    if choice not in {*(v for _, values in options.values() for v in values), none}:
        return  # an unknown value: its own check names it
    ctx = click.get_current_context()
    for name, (option, values) in options.items():
        if choice not in values and ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE:
            needs = " or ".join(f"{switch} {v}" for v in values)
            given = f"without {switch}" if choice == none else f"with {switch} {choice}"
            raise SettingsError(f"{option} given {given}: it applies to {needs}")


def check_count(value: int, option: str, *, minimum: int = 1, maximum: int | None = None) -> None:
    """An integer option that counts something (``--samples``, ``--max-steps``, ``--epochs``)."""
    if value < minimum:
        raise SettingsError(f"{option} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{option} must be at most {maximum}, got {value}")


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


def parse_labels(text: str | None, *, option: str = "--labels") -> list[int] | None:
    """``0,3,5`` or ``0-9`` or a mix; ``None`` means all labels. Errors name ``option``."""
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
            raise SettingsError(f"{option}: {part!r} is not a label or a range like 0-9") from None
        if last < first:
            raise SettingsError(f"{option}: {part!r} is an empty range (write it low-high, e.g. 0-9)")
        if last - first >= MAX_LABELS:
            raise SettingsError(f"{option}: {part!r} spans more than {MAX_LABELS} labels")
        out.extend(range(first, last + 1))
    if not out:
        raise SettingsError(f"{option} is empty: give labels like 0,3,5 or 0-9")
    return out
