"""``neuralcleanse scan MODEL``: any supported model file, the user's own images.

The per-model work lives in :func:`scan_model`, which takes a :class:`ScanRequest` (the model source and
every scan option, as the command line gave them): ``scan`` runs it once, ``scan-many`` once per model
(in this process, in worker processes or as Ray tasks), so both load, check and scan a model the same way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click

from .._io import disk_error_line, run_lock
from ..detection.settings import MAX_STARTS
from ..detection.statistics import STATISTICS, get_statistic
from ..errors import CheckpointError, DataError, SettingsError
from . import app
from .common import (
    Terminated,
    check_count,
    check_seed,
    check_threshold,
    device_option,
    parse_labels,
    print_scan,
    run_scan,
    setup_logging,
    verbose_option,
)
from .loading import ModelSource, check_result_dir, default_out, model_options

if TYPE_CHECKING:
    from ..detection import DetectionReport, Reference, ReverseSettings
    from ..detection.statistics import Statistic
    from ..models.outputs import OutputKind

__all__ = ["ScanRequest", "scan_model", "scan_options"]


@dataclass(frozen=True, kw_only=True)
class ScanRequest:
    """One model's scan as the command line asked for it (option values as given, not yet checked).

    :meth:`check` refuses everything knowable without reading a file; :func:`scan_model` does the rest.
    """

    source: ModelSource
    out: Path
    split: str = "test"
    all_images: bool = False
    samples: int = 1000
    labels: str | None = None
    source_label: int | None = None
    sequential: bool = False
    exhaustive: bool = False
    no_screening: bool = False
    precision: str = "auto"
    loss: str = "ce"
    threshold: float = 2.0
    outputs: str = "auto"
    statistic: str | None = None
    references: tuple[Path, ...] = ()
    self_reference: bool = False
    natural_reference: bool = False
    transfer_check: bool | None = None  # None: the library's "auto"
    max_steps: int = 1000
    seed: int = 123
    starts: int = 1
    resume: bool = False
    force: bool = False
    html: bool = False
    device: str = "auto"

    @property
    def checkpoint(self) -> Path:
        """Where the scan's checkpoint lives while it runs: ``<out>.checkpoint``."""
        from ..detection.checkpoint import checkpoint_beside

        return checkpoint_beside(self.out)

    def check(self) -> list[int] | None:
        """The option values, before any file is read; the labels to scan (``None``: all)."""
        check_count(self.samples, "--samples")
        check_count(self.max_steps, "--max-steps")
        check_count(self.starts, "--starts", maximum=MAX_STARTS)
        check_seed(self.seed, "--seed")
        check_threshold(self.threshold, "--threshold")
        if self.statistic is not None:
            get_statistic(self.statistic)
        self.source.check()
        if self.source_label is not None and self.source_label < 0:
            raise SettingsError(f"--source must be a label (0 or more), got {self.source_label}")
        from ..detection.scan import check_source_not_scanned

        labels = parse_labels(self.labels)
        check_source_not_scanned(self.source_label, labels)
        return labels

    def settings(self) -> ReverseSettings:
        """The optimisation schedule the options ask for."""
        from ..detection import ReverseSettings

        if self.sequential and self.exhaustive:
            raise SettingsError("--sequential and --exhaustive are two reference schedules: choose one")
        overrides: dict[str, Any] = {"loss": self.loss, "seed": self.seed, "max_steps": self.max_steps}
        if self.starts != 1:
            overrides["starts"] = self.starts
        if self.precision != "auto" or not (self.sequential or self.exhaustive):
            overrides["precision"] = self.precision
        if self.no_screening:
            overrides["screening"] = False
        preset = (
            ReverseSettings.original
            if self.sequential
            else ReverseSettings.exhaustive
            if self.exhaustive
            else None
        )
        return preset(**overrides) if preset is not None else ReverseSettings(**overrides)

    def reference(self) -> Reference | None:
        """The trusted scans of ``--reference`` (read now), or ``None``."""
        from ..detection import DetectionReport, Reference

        given = [
            name
            for name, on in (
                ("--reference", bool(self.references)),
                ("--self-reference", self.self_reference),
                ("--natural-reference", self.natural_reference),
            )
            if on
        ]
        if len(given) > 1:
            raise SettingsError(f"{' and '.join(given)} are {len(given)} references: choose one")
        if self.references:
            return Reference.from_reports(
                [DetectionReport.load(p) for p in self.references], paths=[str(p) for p in self.references]
            )
        needs = self.statistic is not None and get_statistic(self.statistic).needs_reference
        if needs and not (self.self_reference or self.natural_reference):
            raise SettingsError(
                f"--statistic {self.statistic} needs --reference SCAN_DIR (a scan of a trusted model), "
                "--natural-reference or --self-reference"
            )
        return None


def _check_checkpoint_place(request: ScanRequest) -> None:
    """``<out>.checkpoint`` is the scan's while it runs: a checkpoint there is continued (``resume``) or,
    with ``force``, started over; anything else there is not the scan's to overwrite or delete."""
    from ..detection.checkpoint import has_checkpoint, remove_checkpoint

    place = request.checkpoint
    if not (place.exists() or place.is_symlink()):
        return
    if not has_checkpoint(place) or place.is_symlink():
        raise CheckpointError(
            f"{place}: exists and is not a scan checkpoint; a scan keeps its checkpoint there while it runs: "
            "move it away, or choose another output path"
        )
    if request.resume:
        return
    if not request.force:
        raise CheckpointError(
            f"{place}: an unfinished scan's checkpoint is there: the same command with --resume continues "
            "that scan, --force starts over"
        )
    remove_checkpoint(place)


def scan_model(request: ScanRequest, *, bar: bool | None = None) -> DetectionReport:
    """Load the model, check it against the images, scan it, save the report (and with ``html`` its
    page) in ``request.out``, and return the report.

    ``bar``: progress on stderr (a bar on a terminal when true, plain lines elsewhere); ``None`` runs
    without progress (``scan-many``'s workers). The checkpoint ``<out>.checkpoint`` is kept until the
    report is saved, so a killed scan resumes with ``resume``.
    """
    from ..detection import NeuralCleanse
    from ..detection.checkpoint import has_checkpoint, remove_checkpoint

    wanted = request.check()
    _check_checkpoint_place(request)
    settings = request.settings()
    reference = request.reference()
    source, device = request.source, request.device
    loaded = source.load(device)
    names, names_from = source.names(loaded)
    # labels and class names are checked before the data is read, when the input shape is known
    n_outputs = _probe_outputs(loaded, device)
    if n_outputs is not None:
        _check_labels(n_outputs, wanted, request.source_label, names, names_from)
    images, data_info = source.images(loaded, names, split=request.split)
    detector = NeuralCleanse(
        loaded.model,
        settings=settings,
        threshold=request.threshold,
        statistic=cast("Statistic | None", request.statistic),  # check() checked the name
        reference=reference,
        outputs=cast("OutputKind", request.outputs),
        device=device,
        self_reference=request.self_reference,
        natural_reference=request.natural_reference,
        transfer_check="auto" if request.transfer_check is None else request.transfer_check,
    )
    _check_task(detector, source.model, images, data_info, wanted, request.source_label, names, names_from)
    # a doubted input range is warned about now, before the optimisation, and noted with the report
    model_info, fit = loaded.scan_info(images.images, images.labels, device=detector.device)
    options: dict[str, Any] = {
        "samples": request.samples,
        "scan_labels": wanted,
        "source": request.source_label,
        "correct_only": not request.all_images,
        "class_names": names,
        "checkpoint": request.checkpoint,
        "resume": request.resume,
        "keep_checkpoint": True,
        "extra_notes": [*loaded.notes, *([fit] if fit else [])],
        "data_info": data_info,
        "model_info": model_info,
    }
    report: DetectionReport
    try:
        if bar is None:
            report = detector.scan(images, **options)
        else:
            report = run_scan(detector, images, bar=bar, **options)
    except DataError as exc:  # what the model did ("model produced NaN ...") names the model file
        if not str(exc).startswith("model "):
            raise
        raise type(exc)(f"{source.model}: {exc}") from None
    try:
        report.save(request.out, force=request.force)
    except (OSError, SettingsError) as exc:  # the folder became unwritable during the scan: say what is kept
        why = (
            str(exc) if isinstance(exc, SettingsError) else disk_error_line(exc)
        )  # None: a bug, not the disk
        if why is None or not has_checkpoint(request.checkpoint):
            raise
        raise DataError(
            f"{why}: the results could not be written to {request.out}; the finished scan's checkpoint "
            f"{request.checkpoint} is kept: once the folder can be written, the same command with --resume "
            "writes them"
        ) from None
    remove_checkpoint(request.checkpoint)
    if request.html:
        from ..report import write_html_report

        write_html_report(request.out)
    return report


#: the options of a scan's settings, shared by ``scan`` and ``scan-many`` (which applies them to every
#: model); each command adds its own output, resume and display options
_SCAN_OPTIONS: list[Callable[[Any], Any]] = [
    click.option(
        "--split",
        type=click.Choice(["test", "train"]),
        default="test",
        show_default=True,
        help="Split of --data (IDX, CIFAR, GTSRB; an image folder or .npz has one) or of the built-in --dataset.",
    ),
    click.option("--all-images", is_flag=True, help="Also use images the model misclassifies."),
    click.option(
        "--samples", default=1000, show_default=True, help="Clean images used (seeded, class-stratified)."
    ),
    click.option("--labels", "labels_text", help="Labels to scan, e.g. 0,3,5 or 0-9 (default: all)."),
    click.option(
        "--source",
        "source_label",
        type=int,
        help="Source-label-specific scan: only images of this label are used.",
    ),
    click.option(
        "--sequential",
        is_flag=True,
        help="One label at a time with the original code's schedule (reference).",
    ),
    click.option(
        "--exhaustive",
        is_flag=True,
        help="Run every label to the end of the full schedule in fp32 (no screening; the reference the "
        "fast default is measured against, see docs/detection.md).",
    ),
    click.option(
        "--no-screening",
        is_flag=True,
        help="Run every label to the end (the fast default otherwise stops labels whose trigger is "
        "clearly large); for scans of trusted models used as --reference.",
    ),
    click.option(
        "--precision",
        type=click.Choice(["auto", "fp32", "bf16"]),
        default="auto",
        show_default=True,
        help="Arithmetic of the model's passes: auto is bf16 where the device computes it natively.",
    ),
    click.option(
        "--loss",
        type=click.Choice(["ce", "original"]),
        default="ce",
        show_default=True,
        help="ce, or the original code's linear-probability term.",
    ),
    click.option(
        "--threshold",
        default=2.0,
        show_default=True,
        help="Anomaly index above which a small-norm label is flagged.",
    ),
    click.option(
        "--outputs",
        type=click.Choice(["auto", "logits", "probabilities", "sigmoid"]),
        default="auto",
        show_default=True,
        help="What the model returns: probabilities (a final softmax) are optimised on their logarithm, "
        "sigmoid outputs (one per class) on their logit; auto detects both on the clean images.",
    ),
    click.option(
        "--statistic",
        type=click.Choice(list(STATISTICS)),
        help="Outlier test on the L1 norms (l1: the paper's, always shown beside the verdict), on their "
        "logs (log: how many times smaller), on their logs with an effect size (effect, the default: a "
        "flagged trigger at most 0.3 times the median, 0.45 if it is compact), or on each norm over the same label's norm in "
        "--reference scans (relative, the default with --reference).",
    ),
    click.option(
        "--reference",
        "references",
        multiple=True,
        type=click.Path(path_type=Path),
        help="Scan report of a trusted model of the same task (repeatable): each label is compared with "
        "itself there, which cancels the task's natural shortcuts.",
    ),
    click.option(
        "--self-reference",
        is_flag=True,
        help="No trusted model at hand: distil a student from the model on the clean images and compare "
        "each label with itself in the student (relative statistic; about twice the scan's time).",
    ),
    click.option(
        "--natural-reference",
        is_flag=True,
        help="No trusted model at hand: optimise every label again with its pattern fixed to its mean clean "
        "image and compare each label with that (relative statistic; about twice the scan's time; "
        "docs/fidelity.md).",
    ),
    click.option(
        "--transfer-check/--no-transfer-check",
        default=None,
        help="When labels are flagged, distil a student from the model on the clean images and set aside a "
        "flagged label whose trigger also moves the student, as natural features' triggers do (the verdict "
        "is then inconclusive if none is left; docs/fidelity.md). Default: only a weak verdict of the default "
        "statistic, on a task of at most 20 classes with at least 500 clean images.",
    ),
    click.option("--max-steps", default=1000, show_default=True, help="Cap on optimisation steps per label."),
    click.option(
        "--seed", default=123, show_default=True, help="Seed of the initial triggers, data order and sample."
    ),
    click.option(
        "--starts",
        default=1,
        show_default=True,
        help="Random starts for every label at most 0.6 of the median norm after the scan; the smallest "
        "trigger is kept (the optimisation can miss a planted trigger from one start: docs/fidelity.md).",
    ),
]

#: the names under which the commands receive the options of :data:`_SCAN_OPTIONS`
SCAN_OPTION_NAMES = (
    "split", "all_images", "samples", "labels_text", "source_label", "sequential", "exhaustive",
    "no_screening", "precision", "loss", "threshold", "outputs", "statistic", "references", "self_reference",
    "natural_reference", "transfer_check", "max_steps", "seed", "starts",
)  # fmt: skip


def scan_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add the scan-settings options (``--samples``, ``--max-steps``, ``--seed``...) to a command."""
    for deco in reversed(_SCAN_OPTIONS):
        f = deco(f)
    return f


def request_fields(options: dict[str, Any]) -> dict[str, Any]:
    """:class:`ScanRequest` keyword arguments from the values of :data:`_SCAN_OPTIONS`."""
    fields = {k: options[k] for k in SCAN_OPTION_NAMES}
    fields["labels"] = fields.pop("labels_text")
    return fields


@app.command()
@model_options
@scan_options
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Report directory (default: scans/<folder>-<model name>-<hash of its path>).",
)
@click.option("--resume", is_flag=True, help="Continue a killed scan from its checkpoint (<out>.checkpoint).")
@click.option("--force", is_flag=True, help="Replace a non-empty report directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the report's summary as JSON.")
@click.option(
    "--html", "as_html", is_flag=True, help="Also write a self-contained HTML report (OUT/report.html)."
)
@device_option
@verbose_option
def scan(
    source: ModelSource,
    out: Path | None,
    resume: bool,
    force: bool,
    as_json: bool,
    as_html: bool,
    device: str,
    verbose: int,
    **options: Any,
) -> None:
    """Reverse-engineer every label's trigger of MODEL and flag the outliers (Neural Cleanse).

    MODEL is a torch.export program (.pt2), a safetensors or torch.save state dict (with --arch), a
    TorchScript archive (only with --allow-torchscript: it runs code embedded in the file) or a
    neuralcleanse model directory. Nothing in the file is unpickled or executed.
    """
    from ..detection.checkpoint import has_checkpoint

    setup_logging(verbose)
    model = source.model
    out_given = out is not None
    request = ScanRequest(
        source=source,
        out=out or default_out("scans", model),
        resume=resume,
        force=force,
        html=as_html,
        device=device,
        **request_fields(options),
    )
    # everything knowable is checked before the model is loaded and long before any optimisation
    request.check()
    if resume and (request.out / "report.json").is_file() and not has_checkpoint(request.checkpoint):
        raise SettingsError(
            f"--out {request.out}: the scan there is finished (report.json); nothing to resume (--force scans "
            "again)"
        )
    check_result_dir(
        request.out,
        model,
        force=force,
        explicit=out_given,
        inputs=(*source.inputs, *request.references),
    )
    if resume and not has_checkpoint(request.checkpoint):
        raise CheckpointError(f"{request.checkpoint}: no checkpoint to resume from (--resume)")
    try:
        with run_lock(request.out, option="--out"):
            report = scan_model(request, bar=not as_json)
    except (KeyboardInterrupt, click.exceptions.Abort) as exc:
        how = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        if has_checkpoint(request.checkpoint):
            what = f"the checkpoint {request.checkpoint} is kept; the same command with --resume continues the scan"
        else:
            what = (
                "before the first checkpoint (written 30 s into the scan and whenever a label finishes): "
                "nothing is kept, the same command starts again"
            )
        raise click.exceptions.Abort(f"{how}: {what}") from None
    out = request.out
    page = out / "report.html"
    if as_json:
        d = report.to_dict()
        keys = ("verdict", "flagged", "summary", "anomaly_index", "l1_norms", "attack_success", "notes")
        extra = {"paper_test": _paper_test_json(report), "out": str(out)}
        extra |= {"html": str(page)} if as_html else {}
        click.echo(json.dumps({k: d[k] for k in keys} | extra))
        return
    print_scan(report, out)
    if as_html:
        click.echo(f"HTML report written to {page}")


def _paper_test_json(report: Any) -> dict[str, Any]:
    """The paper's test beside the verdict, as the text output shows it: its sentence, flagged labels
    and anomaly indices (null where a label was left out)."""
    from ..detection.statistics import PAPER

    res = report.outlier_test(statistic=PAPER.name)
    index = {
        str(r.label): (round(v, 6) if math.isfinite(v) else None)
        for r, v in zip(report.labels, res.anomaly_index, strict=True)
    }
    return {"summary": report.paper_test(), "flagged": res.flagged, "anomaly_index": index}


def _probe_outputs(loaded: Any, device: str) -> int | None:
    """The model's number of outputs from a forward pass on blank images of its declared input shape;
    None when the shape is unknown or the model fails on blank images (the real images decide later)."""
    import torch

    from ..detection.scan import infer_num_classes
    from ..device import resolve_device

    if loaded.input_shape is None:
        return None
    try:
        blank = torch.full((2, *loaded.input_shape), 0.5)
        return infer_num_classes(loaded.model, blank, device=resolve_device(device))
    except (DataError, RuntimeError, ValueError, TypeError):
        return None


def _check_labels(
    classes: int, wanted: list[int] | None, source: int | None, names: Any, names_from: str
) -> None:
    """``--labels``, ``--source`` and the class names against the model's number of outputs."""
    if names is not None and len(names) != classes:
        raise DataError(f"{names_from}: {len(names)} class names for a model with {classes} outputs")
    bad = [k for k in wanted or [] if not 0 <= k < classes]
    if bad:
        raise SettingsError(
            f"--labels: label {bad[0]} is outside the model's {classes} outputs (0-{classes - 1})"
        )
    if source is not None and source >= classes:
        raise SettingsError(
            f"--source: source label {source} is outside the model's {classes} outputs (0-{classes - 1})"
        )


def _check_task(
    detector: Any,
    model: Path,
    images: Any,
    data_info: dict[str, Any],
    wanted: list[int] | None,
    source: int | None,
    names: Any,
    names_from: str,
) -> None:
    """Before optimising: the model runs on the images and gives finite scores, and the data's labels,
    ``--labels``, ``--source`` and the class names fit its outputs."""
    from ..detection.scan import infer_num_classes

    where = data_info.get("path") or data_info.get("dataset") or "the images"
    try:
        classes = infer_num_classes(detector.model, images.images, device=detector.device)
    except DataError as exc:
        raise DataError(f"{model}: {exc}") from None
    if images.num_classes > classes or (len(images) and int(images.labels.max()) >= classes):
        raise DataError(
            f"{where}: the images have {images.num_classes} classes, the model {model} has {classes} outputs"
        )
    _check_labels(classes, wanted, source, names, names_from)
