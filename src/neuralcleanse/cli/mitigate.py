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
from .loading import ModelSource, default_out, model_options


@dataclasses.dataclass
class _Case:
    """A loaded model (any format), its scan report and the label to work on."""

    loaded: Any
    report: Any
    label: int
    reversed: Any
    real: Any
    sources: list[int] | None
    names: list[str] | None


def _open(source: ModelSource, report_path: Path, label: int | None, device: str) -> _Case:
    """The model (any format ``load_model`` reads), its scan report (checked to be of this model), the
    label, its reversed and (from a card) real trigger, and the clean images."""
    from ..detection import DetectionReport
    from ..fingerprint import model_fingerprint
    from ..models.store import trigger_path
    from ..triggers import Trigger

    model = source.model
    if not model.exists():
        raise ModelError(f"{model}: not found")
    loaded = source.load(device)
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
    real, sources = None, None
    for b in loaded.card.backdoors if loaded.card is not None else ():
        if b.target == label:
            real = Trigger.load(trigger_path(model, b))
            sources = b.source_labels
            break
    names, _ = source.names(loaded)
    return _Case(loaded, report, label, report.triggers[label], real, sources, names)


_common = [
    model_options,
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
    source: ModelSource, report_path: Path, label: int | None, layer: str | None, out: Path | None,
    force: bool, top: float, device: str, verbose: int,
) -> None:  # fmt: skip
    """Compare the reversed trigger of a flagged label with the real one (when the card knows it).

    MODEL is any model `scan` reads (a .pt2 program, weights with --arch, a model directory); the clean
    images are --data (or --dataset, or the card's data set's test split), as for `scan`.
    """
    from .._io import check_output_dir
    from ..validation import validate_trigger

    setup_logging(verbose)
    check_fraction_option(top, "--top")
    source.check()
    device = str(resolve_device(device))
    out = out or default_out("validations", source.model)
    check_output_dir(out, force=force, option="--out")
    case = _open(source, report_path, label, device)
    images, _ = source.images(case.loaded, case.names)
    result = validate_trigger(
        case.loaded.model, case.reversed, images, label=case.label, real_trigger=case.real,
        source_labels=case.sources, layer=layer, top_fraction=top, device=device,
    )  # fmt: skip
    result.save(
        out,
        reversed_trigger=case.reversed,
        real_trigger=case.real,
        example=images.images[0],
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
            f"mask IoU with the real trigger {result.mask_iou:.2f}; {100 * (result.mass_inside_real or 0):.1f}% of the "
            f"reversed mask inside it; {100 * (result.shared_top_neurons or 0):.1f}% of top neurons shared"
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
    source: ModelSource, report_path: Path, label: int | None, layer: str | None, out: Path | None,
    force: bool, method: str, as_html: bool, fpr: float, max_prune: float, fraction: float,
    stamp_fraction: float, epochs: int | None, device: str, verbose: int,
) -> None:  # fmt: skip
    """Filter inputs, prune neurons or unlearn the backdoor; print a before/after table.

    MODEL is any model `scan` reads. prune and unlearn save the repaired model in OUT in the form it came
    in: a model directory as OUT/model, a .pt2 program as OUT/model.pt2 (re-exported), weights as
    OUT/model.safetensors (load them with the same --arch); `scan` can re-check it. Clean images: filter
    and prune use --data (or the data set's test split); unlearn fine-tunes on a built-in data set's
    training split, or on a seeded, class-stratified half of --data and measures on the other half.
    """
    from .._io import atomic_directory, check_output_dir
    from ..mitigation import filter_inputs, prune_neurons, unlearn
    from ..mitigation.result import check_fraction

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
    source.check()
    model = source.model
    out = out or default_out("mitigations", model, f"-{method}")
    check_output_dir(out, force=force, option="--out")
    case = _open(source, report_path, label, device)
    kw: dict[str, Any] = {
        "label": case.label, "real_trigger": case.real, "source_labels": case.sources, "device": device,
    }  # fmt: skip
    repaired = None
    data_note = ""
    measured = ""
    if method == "unlearn":
        train, test, data_note = source.splits(case.loaded, case.names)
        measured = (
            f"{len(test)} images: the whole test split (filter and prune measure on a held-out half of it)"
            if source.data is None
            else f"{len(test)} images: the half of --data not fine-tuned on"
        )
        repaired, result = unlearn(
            case.loaded.model, train, test, case.reversed, fraction=fraction,
            stamp_fraction=stamp_fraction, epochs=epochs, **kw,
        )  # fmt: skip
    else:
        images, _ = source.images(case.loaded, case.names)
        if method == "filter":
            _, result = filter_inputs(case.loaded.model, images, case.reversed, fpr=fpr, layer=layer, **kw)
        else:
            repaired, result = prune_neurons(
                case.loaded.model, images, case.reversed, max_fraction=max_prune, layer=layer, **kw
            )
    with atomic_directory(out, force=force) as tmp:
        result.save(tmp)
        saved = None
        if repaired is not None:
            saved = _save_repaired(tmp, repaired, case, method, result)
        if as_html:
            from ..report import write_html_report

            write_html_report(report_path, tmp / "report.html", mitigations=[result])
    if method == "filter":
        measured = (
            f"{result.details['held_out_images']} held-out images (the other "
            f"{result.details['calibration_images']} set the threshold)"
        )
    elif method == "prune":
        measured = (
            f"{result.details['eval_images']} held-out images (the other "
            f"{result.details['ranking_images']} rank the neurons)"
        )
    _print(result, out, data_note, measured)
    if as_html:
        click.echo(f"HTML report written to {out / 'report.html'}")
    if saved is not None:
        click.echo(
            f"repaired model saved to {out / saved[0]} ({saved[1]}); re-check it with `neuralcleanse scan`"
        )


def _network(repaired: Any) -> Any:
    """The repaired network as the user's file held it: the declared preprocessing, fixed-batch chunking
    and the exported module's holder taken off (the file took preprocessed input)."""
    from ..models.preprocess import FixedBatchModel, PixelModel

    net = repaired
    while True:
        if isinstance(net, (PixelModel, FixedBatchModel)):
            net = net.model
        elif type(net).__name__ == "_EvalOnly":  # models/loading.py: an exported program's module
            net = net.module
        else:
            return net


def _save_repaired(tmp: Path, repaired: Any, case: _Case, method: str, result: Any) -> tuple[str, str]:
    """Save the repaired model in its input's format; ``(file name in OUT, what it is)``."""
    from ..models.store import save_model_dir, trigger_path
    from ..triggers import Trigger

    loaded = case.loaded
    network = _network(repaired)
    if loaded.format == "model-dir":
        card = dataclasses.replace(
            loaded.card,
            clean_accuracy=round(result.after.clean_accuracy, 6),
            attack_details={**loaded.card.attack_details, "mitigated": {"method": method, "label": case.label, "from": str(loaded.path), "summary": result.summary()}},
        )  # fmt: skip
        triggers = tuple(Trigger.load(trigger_path(loaded.path, b)) for b in card.backdoors)
        save_model_dir(tmp / "model", network, card, triggers)
        return "model", "a model directory"
    if loaded.format == "export":
        import torch

        shape = loaded.input_shape
        if shape is None:
            raise ModelError(f"{loaded.path}: the program does not say its input shape; cannot re-export it")
        batch = loaded.static_batch or 2
        example = torch.zeros(batch, *shape, device=next(network.parameters()).device)
        dynamic = None if loaded.static_batch else ({0: torch.export.Dim("batch")},)
        try:
            program = torch.export.export(network, (example,), dynamic_shapes=dynamic)
        except Exception as exc:  # noqa: BLE001 (torch raises many kinds; one line for the user)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise ModelError(
                f"the repaired model cannot be re-exported with torch.export ({first})"
            ) from None
        torch.export.save(program, tmp / "model.pt2")
        what = "a torch.export program, " + (
            f"fixed batch {batch}" if loaded.static_batch else "dynamic batch"
        )
        return "model.pt2", what
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    save_file(state, tmp / "model.safetensors")
    return "model.safetensors", f"a safetensors state dict; load it with --arch {loaded.arch}"


def _print(result: Any, out: Path, data_note: str, measured: str) -> None:
    table = Table(title=f"{result.method} (label {result.label})", caption=f"measured on {measured}")
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
    if data_note:
        console.print(f"clean images: {data_note}")
    console.print(f"result written to {out / 'mitigation.json'}")
