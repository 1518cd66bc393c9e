"""``neuralcleanse validate`` and ``neuralcleanse mitigate``: after a scan flags a label."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ..device import resolve_device
from ..errors import DataError, ModelError, SettingsError
from . import app
from .common import check_fraction_option, device_option, setup_logging, verbose_option


@dataclasses.dataclass
class _Case:
    """A model directory, its scan report and the label to work on."""

    loaded: Any
    report: Any
    label: int
    reversed: Any
    real: Any
    sources: list[int] | None
    data: Any


def _open(
    model: Path, report_path: Path, label: int | None, dataset: str | None, data_dir: Path | None, device: str
) -> _Case:
    from ..data.registry import load_dataset
    from ..detection import DetectionReport
    from ..fingerprint import model_fingerprint
    from ..models.loading import load_model
    from ..triggers import Trigger

    if not (model / "card.json").is_file():
        what = "not found" if not model.exists() else "is not a neuralcleanse model directory (no card.json)"
        raise ModelError(f"{model}: {what}; validate and mitigate work on a model directory")
    loaded = load_model(model, device=device)
    report = DetectionReport.load(report_path)
    recorded = {str(report.model.get(k)) for k in ("sha256", "weights_sha256") if report.model.get(k)}
    same = loaded.sha256 in recorded or report.model.get("fingerprint") == model_fingerprint(loaded.model)
    if not same:
        theirs = next(iter(recorded), "unknown")
        raise DataError(
            f"{report_path}: this scan report belongs to another model (weights sha256 {theirs[:12]}..., "
            f"{model} has {loaded.sha256[:12]}...)"
        )
    if label is None:
        if not report.flagged:
            raise SettingsError(f"{report_path}: the scan flagged no label; name one with --label")
        label = min(report.flagged, key=lambda k: report.label(k).l1_norm)
    if label not in report.triggers:
        known = sorted(r.label for r in report.labels)
        if label in known:
            raise DataError(f"{report_path}: trigger file triggers/label_{label:04d}.safetensors is missing")
        span = f"labels {known[0]}-{known[-1]}" if known else "no labels"
        raise SettingsError(f"--label: label {label} is not in the report {report_path} ({span})")
    card = loaded.card
    assert card is not None  # a model directory always has its card
    real, sources = None, None
    for b in card.backdoors:
        if b.target == label:
            real = Trigger.load(model / b.trigger_file)
            sources = b.source_labels
            break
    name = dataset or card.dataset
    if name is None:
        raise SettingsError(f"{model}: the card names no dataset; pass --dataset")
    data = load_dataset(name.split("/")[0], root=data_dir)
    return _Case(loaded, report, label, report.triggers[label], real, sources, data)


_common = [
    click.argument("model", type=click.Path(path_type=Path)),
    click.option(
        "--report",
        "report_path",
        type=click.Path(path_type=Path),
        required=True,
        help="The scan's report directory.",
    ),
    click.option(
        "--label", type=int, help="Label to work on (default: the flagged label with the smallest L1)."
    ),
    click.option("--layer", help="Feature layer (a get_submodule path; default: the penultimate layer)."),
    click.option("--dataset", help="Dataset for clean images (default: the model card's)."),
    click.option("--data-dir", type=click.Path(path_type=Path), help="Where the dataset's files are."),
    click.option("--out", type=click.Path(path_type=Path), help="Result directory."),
    click.option("--force", is_flag=True, help="Replace a non-empty result directory."),
]


def _options(f: Any) -> Any:
    for deco in reversed(_common):
        f = deco(f)
    return f


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


@app.command()
@_options
@click.option("--top", default=0.01, show_default=True, help="Fraction of feature neurons compared.")
@device_option
@verbose_option
def validate(
    model: Path, report_path: Path, label: int | None, layer: str | None, dataset: str | None,
    data_dir: Path | None, out: Path | None, force: bool, top: float, device: str, verbose: int,
) -> None:  # fmt: skip
    """Compare the reversed trigger of a flagged label with the real one (when the card knows it)."""
    from .._io import check_output_dir
    from ..validation import validate_trigger

    setup_logging(verbose)
    check_fraction_option(top, "--top")
    device = str(resolve_device(device))
    out = out or Path("validations") / model.resolve().name
    check_output_dir(out, force=force, option="--out")
    case = _open(model, report_path, label, dataset, data_dir, device)
    result = validate_trigger(
        case.loaded.model, case.reversed, case.data.test, label=case.label, real_trigger=case.real,
        source_labels=case.sources, layer=layer, top_fraction=top, device=device,
    )  # fmt: skip
    result.save(
        out,
        reversed_trigger=case.reversed,
        real_trigger=case.real,
        example=case.data.test.images[0],
        force=force,
    )
    table = Table(
        title=f"label {case.label}: reversed vs real trigger ({result.layer}, top {len(result.neurons)} neurons)"
    )
    for col in ("", "reversed", "real"):
        table.add_column(col, justify="right")
    rows = [
        ("L1 norm", f"{result.reversed_l1:.1f}", "-" if result.real_l1 is None else f"{result.real_l1:.1f}"),
        ("attack success", _pct(result.reversed_attack_success), _pct(result.real_attack_success)),
        (f"top-neuron activation (clean {result.clean_activation:.2f})", f"{result.reversed_activation:.2f}",
         "-" if result.real_activation is None else f"{result.real_activation:.2f}"),
        ("success with only the top neurons", _pct(result.reversed_success_top_only), _pct(result.real_success_top_only)),
    ]  # fmt: skip
    for r in rows:
        table.add_row(*r)
    console = Console(highlight=False)
    console.print(table)
    if result.mask_iou is not None:
        console.print(
            f"mask IoU with the real trigger {result.mask_iou:.2f}; {100 * (result.mass_inside_real or 0):.0f}% of the "
            f"reversed mask inside it; {100 * (result.shared_top_neurons or 0):.0f}% of top neurons shared"
        )
    console.print(f"written to {out}")


@app.command()
@_options
@click.option(
    "--method", type=click.Choice(["filter", "prune", "unlearn"]), required=True, help="Mitigation."
)
@click.option(
    "--html", "as_html", is_flag=True, help="Also write an HTML report of the scan and this result."
)
@click.option("--fpr", default=0.05, show_default=True, help="filter: false-positive rate of the threshold.")
@click.option(
    "--max-prune", default=0.3, show_default=True, help="prune: largest fraction of neurons pruned."
)
@click.option("--fraction", default=0.1, show_default=True, help="unlearn: fraction of training data used.")
@click.option("--stamp-fraction", default=0.2, show_default=True, help="unlearn: share of it stamped.")
@click.option(
    "--epochs",
    type=int,
    help="unlearn: fine-tuning epochs (default: enough for 100 optimiser steps, at least 1).",
)
@device_option
@verbose_option
def mitigate(
    model: Path, report_path: Path, label: int | None, layer: str | None, dataset: str | None,
    data_dir: Path | None, out: Path | None, force: bool, method: str, as_html: bool, fpr: float, max_prune: float,
    fraction: float, stamp_fraction: float, epochs: int | None, device: str, verbose: int,
) -> None:  # fmt: skip
    """Filter inputs, prune neurons or unlearn the backdoor; print a before/after table.

    prune and unlearn write the repaired model as a model directory (OUT/model) that `scan` can re-check.
    """
    from .._io import atomic_directory, check_output_dir
    from ..mitigation import filter_inputs, prune_neurons, unlearn
    from ..mitigation.result import check_fraction
    from ..models.preprocess import PixelModel
    from ..models.store import save_model_dir
    from ..triggers import Trigger

    setup_logging(verbose)
    device = str(resolve_device(device))
    for value, what in (
        (fpr, "--fpr"),
        (max_prune, "--max-prune"),
        (fraction, "--fraction"),
        (stamp_fraction, "--stamp-fraction"),
    ):
        check_fraction(value, what)
    if epochs is not None and epochs < 1:
        raise SettingsError(f"--epochs must be at least 1, got {epochs}")
    out = out or Path("mitigations") / f"{model.resolve().name}-{method}"
    check_output_dir(out, force=force, option="--out")
    case = _open(model, report_path, label, dataset, data_dir, device)
    kw: dict[str, Any] = {
        "label": case.label, "real_trigger": case.real, "source_labels": case.sources, "device": device,
    }  # fmt: skip
    repaired = None
    if method == "filter":
        _, result = filter_inputs(
            case.loaded.model, case.data.test, case.reversed, fpr=fpr, layer=layer, **kw
        )
    elif method == "prune":
        repaired, result = prune_neurons(
            case.loaded.model, case.data.test, case.reversed, max_fraction=max_prune, layer=layer, **kw
        )
    else:
        repaired, result = unlearn(
            case.loaded.model, case.data.train, case.data.test, case.reversed, fraction=fraction,
            stamp_fraction=stamp_fraction, epochs=epochs, **kw,
        )  # fmt: skip
    with atomic_directory(out, force=force) as tmp:
        result.save(tmp)
        if repaired is not None:
            network = repaired.model if isinstance(repaired, PixelModel) else repaired
            card = dataclasses.replace(
                case.loaded.card,
                clean_accuracy=round(result.after.clean_accuracy, 6),
                attack_details={**case.loaded.card.attack_details, "mitigated": {"method": method, "label": case.label, "from": str(model), "summary": result.summary()}},
            )  # fmt: skip
            bundle_triggers = tuple(Trigger.load(model / b.trigger_file) for b in card.backdoors)
            save_model_dir(tmp / "model", network, card, bundle_triggers)
        if as_html:
            from ..report import write_html_report

            write_html_report(report_path, tmp / "report.html", mitigations=[result])
    _print(result, out, repaired is not None)


def _print(result: Any, out: Path, saved: bool) -> None:
    table = Table(title=f"{result.method} (label {result.label})")
    for col in ("", "before", "after"):
        table.add_column(col, justify="right")
    b, a = result.before, result.after
    table.add_row("clean accuracy", _pct(b.clean_accuracy), _pct(a.clean_accuracy))
    table.add_row("attack success (reversed trigger)", _pct(b.attack_success), _pct(a.attack_success))
    if b.real_attack_success is not None:
        table.add_row(
            "attack success (real trigger)", _pct(b.real_attack_success), _pct(a.real_attack_success)
        )
    console = Console(highlight=False)
    console.print(table)
    d = result.details
    if result.method == "filter":
        fnr = ", ".join(f"{k} trigger {100 * v:.1f}%" for k, v in d["fnr"].items())
        console.print(
            f"false positives {100 * d['fpr_measured']:.1f}% (target {100 * d['fpr_target']:.0f}%); false negatives: {fnr}"
        )
    elif result.method == "prune":
        console.print(f"pruned {d['fraction_pruned']:.1%} of {d['width']} neurons ({d['stopped']})")
        for p in d["curve"]:
            console.print(
                f"  {p['fraction']:6.1%}  clean {_pct(p['clean_accuracy'])}  attack {_pct(p['attack_success'])}"
            )
    else:
        for name, m in d["baselines"].items():
            console.print(f"baseline {name}: clean {_pct(m['clean_accuracy'])}, attack {_pct(m['attack_success'])}"
                          + (f", real {_pct(m['real_attack_success'])}" if m.get("real_attack_success") is not None else ""))  # fmt: skip
    for note in result.notes:
        console.print(f"note: {note}")
    console.print(
        f"result written to {out / 'mitigation.json'}"
        + (f"; repaired model in {out / 'model'}" if saved else "")
    )
