"""``neuralcleanse scan-many SOURCES... --out DIR``: many models, each scanned as ``scan`` scans it.

Every model goes through :func:`~neuralcleanse.cli.scan.scan_model` (the same loading, checks and
settings as ``scan``) in this process, in worker processes (``--workers``) or as Ray tasks (``--ray``,
``--ray-address``); :mod:`neuralcleanse.fleet` does the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from ..errors import DataError, SettingsError
from . import app
from .common import (
    ProgressBar,
    check_count,
    device_option,
    format_duration,
    output_console,
    setup_logging,
    verbose_option,
)
from .loading import _KEYS, _OPTIONS, ModelSource  # the model-loading options, defined once
from .scan import ScanRequest, request_fields, scan_model, scan_options

__all__ = ["scan_many"]

#: ``scan``'s model-loading and clean-data options without its MODEL argument: here they apply to every
#: model (a manifest can set them per model)
_MODEL_OPTIONS = _OPTIONS[1:]
_MODEL_KEYS = tuple(k for k in _KEYS if k != "model")
#: the per-model values (a manifest's columns) that are ModelSource fields; the others are scan options
_SOURCE_FIELDS = frozenset(f.name for f in dataclasses.fields(ModelSource)) - {"model"}


def _model_options(f: Any) -> Any:
    for deco in reversed(_MODEL_OPTIONS):
        f = deco(f)
    return f


def _scan_job(request: ScanRequest) -> Any:
    """One model's work, in whichever process runs it: ``scan``'s, continuing from the checkpoint a
    killed attempt (a dead worker, an interrupted run resumed with ``--resume``) left behind."""
    from ..detection.checkpoint import has_checkpoint

    return scan_model(replace(request, resume=has_checkpoint(request.checkpoint)))


def _absolute(value: Any) -> Any:
    """Paths as absolute paths: Ray workers and other nodes do not share this shell's directory."""
    if isinstance(value, Path):
        return value.absolute()
    if isinstance(value, tuple):
        return tuple(_absolute(v) for v in value)
    return value


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 'es' if what.endswith('s') else 's'}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


class _Progress:
    """Models done of the total, flagged so far and the time left: a bar on a terminal, a line per
    finished model elsewhere (a log, ``nohup``, CI)."""

    def __init__(self, total: int, reused: int) -> None:
        self.total, self.reused = total, reused
        self.done = reused
        self.flagged = self.failed = 0
        self.start = time.monotonic()
        self.terminal = Console(stderr=True).is_terminal
        self.bar = ProgressBar("models", enabled=True, unit="models") if self.terminal else None

    def show(self) -> None:
        """Show the bar at once (it shows the models finished earlier; nothing else is known yet)."""
        if self.bar is not None:
            self.bar.update(completed=self.done, total=self.total, status=self.eta())

    def eta(self) -> str:
        ran, left = self.done - self.reused, self.total - self.done
        if left == 0:
            return "done"
        if ran == 0:
            return "ETA not known yet"
        return f"ETA ~{format_duration((time.monotonic() - self.start) / ran * left)}"

    def update(self, result: Any) -> None:
        self.done += 1
        self.flagged += result.backdoored
        self.failed += result.failed
        counts = f"{self.flagged} flagged" + (f", {self.failed} failed" if self.failed else "")
        elapsed = format_duration(time.monotonic() - self.start)
        if self.bar is not None:
            status = f"{counts}  {self.eta()}"
            self.bar.update(completed=self.done, total=self.total, status=status)
            return
        if result.failed:
            what = f"failed: {result.error}"
        else:
            flags = f" (labels {result.flagged})" if result.flagged else ""
            what = f"{result.verdict}{flags} in {format_duration(result.wall_seconds or 0)}"
        click.echo(
            f"scan-many: {self.done}/{self.total} models done ({counts}), elapsed {elapsed}, {self.eta()}; "
            f"{result.name}: {what}",
            err=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__()


def _print_table(summary: Any, out: Path, sort: str) -> None:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, title=f"Neural Cleanse fleet scan ({summary.seconds:.0f} s)")
    for col in ("model", "verdict", "flagged", "index", "seconds", "images", "note"):
        left = col in ("model", "verdict", "flagged", "note")
        table.add_column(col, justify="left" if left else "right", no_wrap=True)
    for r in summary.sorted(sort):
        note = (
            "error below" if r.failed else "finished earlier" if r.reused else "resumed" if r.resumed else ""
        )
        flagged = ", ".join(f"{k} ({n})" for k, n in zip(r.flagged, r.flagged_names, strict=False))
        style = "bold red" if r.backdoored else "yellow" if r.failed else None
        table.add_row(
            r.name, r.verdict, flagged or "-",
            "-" if r.anomaly_index is None else f"{r.anomaly_index:.2f}",
            "-" if r.seconds is None else f"{r.seconds:.1f}",
            "-" if r.images_processed is None else f"{r.images_processed:,}",
            note, style=style,
        )  # fmt: skip
    console = output_console()
    console.print(table)
    for r in summary.sorted(sort):
        if r.failed:
            console.print(f"failed: {r.name}: {(r.error or '').removeprefix(f'{r.model}: ')}", soft_wrap=True)
    c = summary.counts
    console.print(
        f"{_count(c['total'], 'model')}: {c['backdoored']} backdoored, {c['inconclusive']} inconclusive, "
        f"{c['clean']} clean, {c['failed']} failed; {summary.images_processed:,} images in "
        f"{summary.seconds:.0f} s; summary.json and index.html written to {out}",
        soft_wrap=True,
    )


@app.command("scan-many")
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@_model_options
@scan_options
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Fleet directory: one report directory per model, summary.json and index.html.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue a killed run in --out: finished models are kept, unfinished ones continue from their "
    "checkpoints.",
)
@click.option("--force", is_flag=True, help="Replace the reports in a non-empty --out.")
@click.option(
    "--sort",
    type=click.Choice(["verdict", "name", "time"]),
    default="verdict",
    show_default=True,
    help="Order of the table: flagged first, by name, or the longest scans first.",
)
@click.option(
    "--workers", type=int, help="Scan in this many worker processes (default: in this process, one by one)."
)
@click.option(
    "--threads-per-worker",
    type=int,
    help="Torch threads of each worker (default with --workers: the CPU cores shared out, at most "
    "OMP_NUM_THREADS if set; without: as set).",
)
@click.option(
    "--ray", "use_ray", is_flag=True, help="One Ray task per model on a local Ray started for the run."
)
@click.option("--ray-address", help="One Ray task per model on the Ray cluster at this address (e.g. auto).")
@click.option("--cpus-per-task", type=int, help="CPUs of each Ray task, and its torch threads.  [default: 1]")
@click.option("--gpus-per-task", type=float, help="GPUs of each Ray task.  [default: 0]")
@click.option(
    "--retries",
    default=2,
    show_default=True,
    help="Times a model is retried when its worker dies (a model that fails with an error is not).",
)
@device_option
@verbose_option
def scan_many(
    sources: tuple[Path, ...],
    out: Path,
    resume: bool,
    force: bool,
    sort: str,
    workers: int | None,
    threads_per_worker: int | None,
    use_ray: bool,
    ray_address: str | None,
    cpus_per_task: int | None,
    gpus_per_task: float | None,
    retries: int,
    device: str,
    verbose: int,
    **options: Any,
) -> None:
    """Scan many models with Neural Cleanse, each exactly as `scan` would, and summarise them.

    SOURCES are model files, model directories, folders searched for them, or manifests (.csv or
    .jsonl: a path per model, with its own data and options; see docs/fleet.md). Options given here
    apply to every model; a manifest's columns override them per model. --out gets one report directory
    per model (with its report.html), summary.json and index.html (flagged models first).

    Exit code: 0 when every model was scanned (whatever the verdicts), 1 when any model failed (the
    summary says why, the others are scanned), 2 for a usage error, 130 when interrupted (--resume
    continues).
    """
    from .._io import check_output_dir, run_lock
    from ..fleet import (
        FleetSummary,
        ModelResult,
        available_cpus,
        check_task_fits,
        ray_session,
        run_in_process,
        run_processes,
        run_ray,
        worker_threads,
    )

    setup_logging(verbose)
    on_ray = use_ray or ray_address is not None
    _check_runner(on_ray, ray_address, workers, threads_per_worker, cpus_per_task, gpus_per_task, retries)
    if out.is_dir() and any(out.iterdir()) and not (resume or force):
        raise SettingsError(
            f"--out {out}: directory exists and is not empty (--resume continues the run in it, --force "
            "replaces its reports)"
        )
    check_output_dir(out, force=True, option="--out")
    with run_lock(out, option="--out"):  # one run at a time writes a fleet folder
        jobs, settings = _jobs(sources, out, options, device)
        if resume:
            _check_same_run(out, settings)
        else:
            _drop_stale_reports(out, {job.name for job in jobs})
        results, todo = _finished(jobs, resume=resume)

        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        start = time.monotonic()
        if on_ray:
            cpus = cpus_per_task or 1
            runner: dict[str, Any] = {
                "backend": "ray",
                "address": ray_address or "local instance",
                "cpus_per_task": cpus,
                "gpus_per_task": gpus_per_task or 0,
                "threads": cpus,
            }
            where = f"on Ray ({runner['address']}, {_count(cpus, 'CPU')} per task)"
        elif workers is not None:
            workers = min(workers, max(1, len(todo)))  # a worker per model at most: the others would idle
            threads = threads_per_worker or worker_threads(workers)
            runner = {"backend": "processes", "workers": workers, "threads": threads}
            where = f"in {_count(workers, 'worker process')} of {_count(threads, 'thread')}"
        else:
            import torch

            threads = threads_per_worker or torch.get_num_threads()
            runner = {"backend": "in-process", "workers": 1, "threads": threads}
            where = "in this process, one at a time"

        def summary() -> FleetSummary:
            return FleetSummary(
                [results[job.name] for job in jobs], runner, settings, started, time.monotonic() - start
            )

        progress = _Progress(len(jobs), len(jobs) - len(todo))

        def on_result(result: ModelResult) -> None:
            results[result.name] = result
            progress.update(result)
            summary().save(out)  # a look at the run while it goes on

        with contextlib.ExitStack() as stack:
            if todo and on_ray:  # connected (or started) before anything is written
                stack.enter_context(
                    ray_session(address=ray_address, num_cpus=None if ray_address else available_cpus())
                )
                check_task_fits(
                    runner["cpus_per_task"], runner["gpus_per_task"], wait=ray_address is not None
                )
            reused = len(jobs) - len(todo)
            click.echo(
                f"scan-many: {_count(len(jobs), 'model')}" + (f" ({reused} finished earlier)" if reused else "")
                + f", {where}",
                err=True,
            )  # fmt: skip
            progress.show()
            try:
                summary().save(out)
                if todo and on_ray:
                    run_ray(
                        todo, _scan_job, cpus_per_task=runner["cpus_per_task"], gpus_per_task=runner["gpus_per_task"],
                        retries=retries, wait_for_resources=ray_address is not None, on_result=on_result,
                    )  # fmt: skip
                elif todo and workers is not None:
                    run_processes(
                        todo, _scan_job, workers=workers, threads=runner["threads"], retries=retries,
                        on_result=on_result,
                    )  # fmt: skip
                elif todo:
                    run_in_process(todo, _scan_job, threads=threads_per_worker, on_result=on_result)
            finally:
                progress.close()
                final = summary()
                final.save(
                    out
                )  # also when interrupted: the models not finished are pending, --resume continues
        _print_table(final, out, sort)
        failed = final.failed
        if failed:
            raise DataError(
                f"{len(failed)} of {len(jobs)} models failed ({failed[0].name}: {failed[0].error}); "
                f"every model's outcome is in {out / 'summary.json'}"
            )


def _check_runner(
    on_ray: bool,
    ray_address: str | None,
    workers: int | None,
    threads_per_worker: int | None,
    cpus_per_task: int | None,
    gpus_per_task: float | None,
    retries: int,
) -> None:
    """The runner's options: values, combinations, and Ray being installed when asked for."""
    from ..fleet import import_ray

    for value, option in ((workers, "--workers"), (threads_per_worker, "--threads-per-worker"),
                          (cpus_per_task, "--cpus-per-task")):  # fmt: skip
        if value is not None:
            check_count(value, option)
    if gpus_per_task is not None and not gpus_per_task >= 0:
        raise SettingsError(f"--gpus-per-task must be 0 or more, got {gpus_per_task:g}")
    check_count(retries, "--retries", minimum=0)
    if on_ray and workers is not None:
        raise SettingsError(
            "--workers runs local worker processes, --ray/--ray-address one Ray task per model: choose one"
        )
    if on_ray and threads_per_worker is not None:
        raise SettingsError(
            "--threads-per-worker is for --workers: a Ray task's threads are its --cpus-per-task"
        )
    if not on_ray and (cpus_per_task is not None or gpus_per_task is not None):
        raise SettingsError("--cpus-per-task and --gpus-per-task are for --ray or --ray-address")
    if on_ray:
        import_ray("--ray-address" if ray_address else "--ray")


def _jobs(
    sources: tuple[Path, ...], out: Path, options: dict[str, Any], device: str
) -> tuple[list[Any], dict[str, Any]]:
    """A job per model, its scan request made of the command line's options and its manifest row's
    over them, every option checked before any model is read; and the shared options, for the summary."""
    from ..fleet import FleetJob, collect_models, unique_names

    base = {k: _absolute(options.pop(k)) for k in _MODEL_KEYS}
    base["data"] = base.pop("data_path")
    fields = {k: _absolute(v) for k, v in request_fields(options).items()}
    shared: dict[str, Any] = {"html": True, "force": True, "device": device}
    # the options every model shares are checked once (their errors name only the option)
    template = ScanRequest(source=ModelSource(model=Path("."), **base), out=out, **fields, **shared)
    template.check()
    template.source.check_data_files()
    template.settings()
    template.reference()
    entries = collect_models(sources)
    jobs = []
    for entry, name in zip(entries, unique_names(entries), strict=True):
        own = {k: v for k, v in entry.options.items() if k in _SOURCE_FIELDS}
        source = ModelSource(model=entry.path, **{**base, **own})
        scan_fields = {**fields, **{k: v for k, v in entry.options.items() if k not in _SOURCE_FIELDS}}
        request = ScanRequest(source=source, out=out.absolute() / name, **scan_fields, **shared)
        if entry.options:  # a manifest row's own values: errors name its file and line
            try:
                request.check()
                source.check_data_files()
                if "references" in entry.options:
                    request.reference()
            except (SettingsError, DataError) as exc:
                raise type(exc)(f"{entry.origin}: {exc}") from None
        jobs.append(FleetJob(name, str(entry.path), request.out, request))
    return jobs, {k: _jsonable(v) for k, v in {**base, **fields, "device": device}.items()}


#: settings that do not change a scan's outcome: a run may be continued with others
_FREE_SETTINGS = frozenset({"device"})


def _check_same_run(out: Path, settings: dict[str, Any]) -> None:
    """``--resume`` keeps the reports of the run in ``out``: its settings (as its summary recorded them)
    must be this run's, or the summary would describe reports made otherwise."""
    from .._io import read_result
    from ..fleet.summary import SUMMARY_FILE

    if not (out / SUMMARY_FILE).is_file():
        return
    earlier = read_result(out, SUMMARY_FILE, what="fleet summary")[1].get("settings")
    if not isinstance(earlier, dict):
        return
    for key in sorted((set(earlier) | set(settings)) - _FREE_SETTINGS):
        if earlier.get(key) != settings.get(key):
            raise SettingsError(
                f"--out {out}: its run scanned with {key} = {earlier.get(key)!r}, this one with "
                f"{settings.get(key)!r}: --resume continues a run with the same settings (--force replaces "
                "its reports)"
            )


def _drop_stale_reports(out: Path, names: set[str]) -> None:
    """``--force`` replaces a run's reports: the report directories (and checkpoints) of models the run in
    ``out`` listed in its summary and this one does not are removed, so the folder holds this run alone.
    Only directories the summary names and that hold a report or a checkpoint are touched."""
    from ..detection.checkpoint import checkpoint_beside, has_checkpoint, remove_checkpoint
    from ..errors import NeuralCleanseError
    from ..fleet.summary import SUMMARY_FILE, FleetSummary

    try:
        earlier = [r.name for r in FleetSummary.load(out / SUMMARY_FILE).models]
    except (OSError, NeuralCleanseError):
        return  # no summary there (or not one of ours): nothing is known to be the run's
    for name in sorted(set(earlier) - names):
        folder = out / name
        if folder.parent != out or not name or name.startswith("."):
            continue  # a name a summary of ours never holds
        checkpoint = checkpoint_beside(folder)
        if has_checkpoint(checkpoint):
            remove_checkpoint(checkpoint)
        if folder.is_dir() and not folder.is_symlink() and (folder / "report.json").is_file():
            shutil.rmtree(folder)
            click.echo(
                f"scan-many: removed {folder}: the report of a model this run does not list (--force)",
                err=True,
            )


def _weights_sha256(model: Path) -> str | None:
    """The sha256 a scan records for the weights of ``model`` as it is now (a model directory: its
    card's), or None if it cannot be read (the scan will say why)."""
    import hashlib

    from .._io import special_kind
    from ..errors import NeuralCleanseError
    from ..models.card import ModelCard

    if special_kind(model) is not None:
        return None  # a FIFO would block, a device never end: the scan refuses it
    try:
        if model.is_dir():
            return ModelCard.load(model / "card.json").weights_sha256 or None
        digest = hashlib.sha256()
        with model.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    except (OSError, NeuralCleanseError):
        return None


def _finished(jobs: list[Any], *, resume: bool) -> tuple[dict[str, Any], list[Any]]:
    """Every job's result so far (``pending``, or with ``resume`` the finished report found in its
    directory) and the jobs still to run. Without ``resume``, a previous run's checkpoints are removed
    (``--force``: every model is scanned again)."""
    from ..detection import DetectionReport
    from ..detection.checkpoint import has_checkpoint, remove_checkpoint
    from ..fingerprint import report_weights_sha256
    from ..fleet import ModelResult

    results = {job.name: ModelResult.pending(job) for job in jobs}
    todo = []
    for job in jobs:
        if not (resume and (job.out / "report.json").is_file()):  # reports are saved whole or not at all
            if not resume and has_checkpoint(job.request.checkpoint):  # what is not one, the scan refuses
                remove_checkpoint(job.request.checkpoint)
            todo.append(job)
            continue
        report = DetectionReport.load(job.out)
        recorded = report.model.get("path")
        if recorded is not None and Path(recorded).resolve() != Path(job.model).resolve():
            raise SettingsError(
                f"--out {job.out} holds the scan of another model ({recorded}); --resume needs the same models"
            )
        scanned, now = report_weights_sha256(report.model), _weights_sha256(Path(job.model))
        if scanned and now and scanned != now:
            raise SettingsError(
                f"--out {job.out} holds the scan of an earlier version of {job.model} (weights sha256 "
                f"{scanned[:12]}..., the file now {now[:12]}...): --force scans every model again"
            )
        if not (job.out / "report.html").is_file():  # the run was killed between the report and its page
            from ..report import write_html_report

            write_html_report(job.out)
        results[job.name] = ModelResult.from_report(job, report, reused=True)
    return results, todo
