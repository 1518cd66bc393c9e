"""``neuralcleanse mitigate``: filter inputs, prune neurons or unlearn a backdoor a scan found."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from .._format import pct
from ..device import resolve_device
from ..errors import ModelError, SettingsError, first_line
from . import app
from .case import Case, case_options, open_case
from .common import (
    check_options_apply,
    check_seed,
    device_option,
    output_console,
    setup_logging,
    verbose_option,
)
from .loading import ModelSource, default_out

if TYPE_CHECKING:
    from ..mitigation import MitigationResult


@app.command()
@case_options
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
@click.option(
    "--max-accuracy-drop",
    default=0.1,
    show_default=True,
    help="prune: stop before a step that takes clean accuracy more than this (a fraction) below the start.",
)
@click.option(
    "--fraction",
    type=float,
    help="unlearn: fraction of the fine-tuning images used (default: 0.1 of a built-in data set's training "
    "split, as in the paper; all of --data's fine-tuning half, which is all the clean data there is).",
)
@click.option("--stamp-fraction", default=0.2, show_default=True, help="unlearn: share of it stamped.")
@click.option(
    "--allow-missing-labels",
    is_flag=True,
    help="unlearn: fine-tune even when the clean images hold no image of some of the model's labels "
    "(the model can forget them; refused without this).",
)
@click.option(
    "--epochs",
    type=int,
    help="unlearn: fine-tuning epochs (default: enough for 100 optimiser steps, at least 1).",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    help="Seed of the split into halves (filter: calibrate/measure, prune: rank/measure) and of unlearning.",
)
@device_option
@verbose_option
def mitigate(
    source: ModelSource, report_path: Path, label: int | None, layer: str | None,
    real_trigger: str | None, real_sources: str | None, out: Path | None,
    force: bool, method: str, as_html: bool, fpr: float, max_prune: float,
    max_accuracy_drop: float, fraction: float | None,
    stamp_fraction: float, allow_missing_labels: bool, epochs: int | None, seed: int, device: str,
    verbose: int,
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
    check_options_apply(method, _METHOD_OPTIONS, switch="--method")
    check_seed(seed, "--seed")
    device = str(resolve_device(device))
    for value, what in (
        (fpr, "--fpr"),
        (max_prune, "--max-prune"),
        (max_accuracy_drop, "--max-accuracy-drop"),
        (fraction, "--fraction"),
        (stamp_fraction, "--stamp-fraction"),
    ):
        if value is not None:
            check_fraction(value, what)
    if epochs is not None and epochs < 1:
        raise SettingsError(f"--epochs must be at least 1, got {epochs}")
    source.check()
    model = source.model
    out = out or default_out("mitigations", model, f"-{method}")
    check_output_dir(out, force=force, option="--out", inputs=(*source.inputs, report_path))
    case = open_case(source, report_path, label, device, real_trigger=real_trigger, real_sources=real_sources)
    kw: dict[str, Any] = {"seed": seed, "device": device}
    repaired = None
    data_note = ""
    measured = ""
    if method == "unlearn":
        train, test, data_note = case.splits(source)
        measured = (
            f"{len(test)} images: the whole test split (filter and prune measure on a held-out half of it)"
            if source.data is None
            else f"{len(test)} images: the half of --data not fine-tuned on"
        )
        repaired, result = unlearn(
            case.loaded.model, train, test, case.backdoor,
            fraction=fraction if fraction is not None else 0.1 if source.data is None else 1.0,
            stamp_fraction=stamp_fraction, epochs=epochs, allow_missing_labels=allow_missing_labels, **kw,
        )  # fmt: skip
    else:
        images = case.images(source)
        if method == "filter":
            _, result = filter_inputs(case.loaded.model, images, case.backdoor, fpr=fpr, layer=layer, **kw)
        else:
            repaired, result = prune_neurons(
                case.loaded.model, images, case.backdoor, max_fraction=max_prune,
                max_accuracy_drop=max_accuracy_drop, layer=layer, **kw,
            )  # fmt: skip
    result = case.stamped(result)
    with atomic_directory(out, force=force) as tmp:
        result.save(tmp)
        saved = None
        if repaired is not None:
            saved = _save_repaired(tmp, repaired, case, method, result)
        if as_html:
            from ..report import write_html_report

            write_html_report(report_path, tmp / "report.html", mitigations=[result])
    measured = result.details.measured_on() or measured
    _print(result, out, data_note, measured)
    if as_html:
        click.echo(f"HTML report written to {out / 'report.html'}")
    if saved is not None:
        click.echo(
            f"repaired model saved to {out / saved[0]} ({saved[1]}); re-check it with `neuralcleanse scan`"
        )


#: the options of one method each (given with another method they are an error, not silently ignored)
_METHOD_OPTIONS = {
    "fpr": ("--fpr", ("filter",)),
    "max_prune": ("--max-prune", ("prune",)),
    "max_accuracy_drop": ("--max-accuracy-drop", ("prune",)),
    "fraction": ("--fraction", ("unlearn",)),
    "stamp_fraction": ("--stamp-fraction", ("unlearn",)),
    "epochs": ("--epochs", ("unlearn",)),
    "allow_missing_labels": ("--allow-missing-labels", ("unlearn",)),
}


def _network(repaired: Any) -> Any:
    """The repaired network as the user's file held it: the declared preprocessing, fixed-batch chunking,
    the choice among its outputs (--output-key), the cast to its input type and the exported module's holder
    taken off (the file took preprocessed input and returned all its outputs)."""
    from ..models.adapt import InputCast, OutputPick
    from ..models.preprocess import FixedBatchModel, PixelModel

    net = repaired
    while True:
        if isinstance(net, (PixelModel, FixedBatchModel)):
            net = net.model
        elif isinstance(net, (OutputPick, InputCast)) or type(net).__name__ == "_EvalOnly":
            net = net.module  # _EvalOnly (models/loading.py): an exported program's module
        else:
            return net


def _input_dtype(repaired: Any) -> Any:
    """The floating-point type the repaired network's file takes (float32 unless a cast holds it)."""
    import torch

    from ..models.adapt import InputCast

    casts = [m for m in repaired.modules() if isinstance(m, InputCast)]
    return casts[0].dtype if casts else torch.float32


def _dynamic_batch(program: Any) -> bool:
    """Whether an exported program's (first) input has a symbolic batch size."""
    import torch

    name = program.graph_signature.user_inputs[0]
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == name)
    return isinstance(node.meta["val"].shape[0], torch.SymInt)


def _save_repaired(
    tmp: Path, repaired: Any, case: Case, method: str, result: MitigationResult
) -> tuple[str, str]:
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
        example = torch.zeros(
            batch, *shape, device=next(network.parameters()).device, dtype=_input_dtype(repaired)
        )
        # AUTO: the batch keeps the range the input program gave it (a program exported with a bounded
        # batch, e.g. at most 4096, refuses an unbounded one)
        dynamic = None if loaded.static_batch else ({0: torch.export.Dim.AUTO},)
        try:
            program = torch.export.export(network, (example,), dynamic_shapes=dynamic)
        except Exception as exc:  # noqa: BLE001 (torch raises many kinds; one line for the user)
            raise ModelError(
                f"the repaired model cannot be re-exported with torch.export ({first_line(exc, limit=160)})"
            ) from None
        if not loaded.static_batch and not _dynamic_batch(program):
            raise ModelError(
                "the repaired model cannot be re-exported with torch.export with a dynamic batch (the input "
                "program had one)"
            )
        torch.export.save(program, tmp / "model.pt2")
        what = "a torch.export program, " + (
            f"fixed batch {batch}" if loaded.static_batch else "dynamic batch"
        )
        return "model.pt2", what
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    save_file(state, tmp / "model.safetensors")
    return "model.safetensors", f"a safetensors state dict; load it with --arch {loaded.arch}"


def _print(result: MitigationResult, out: Path, data_note: str, measured: str) -> None:
    table = Table(title=f"{result.method} (label {result.label})")
    for col in ("", "before", "after"):
        table.add_column(col, justify="right")
    for what, before, after in result.rows():
        table.add_row(what, pct(before, 2), pct(after, 2))
    console = output_console()
    console.print(table)
    console.print(f"measured on {measured}")
    details = result.details
    for line in details.lines():
        console.print(line)
    extra = details.table()
    if extra is not None:
        curve = Table(title=extra.title)
        for col in extra.columns:
            curve.add_column(col, justify="right")
        for row in extra.rows:
            curve.add_row(*row)
        console.print(curve)
    for note in result.notes:
        console.print(f"note: {note}")
    if data_note:
        console.print(f"clean images: {data_note}")
    console.print(f"result written to {out / 'mitigation.json'}")
