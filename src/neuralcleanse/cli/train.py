"""``neuralcleanse train``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from ..data.registry import DATASETS
from ..errors import SettingsError
from . import app
from .common import (
    TRIGGER_HELP,
    ProgressBar,
    check_count,
    check_options_apply,
    check_seed,
    device_option,
    format_duration,
    output_console,
    parse_labels,
    setup_logging,
    verbose_option,
)


@app.command()
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Model directory to write.")
@click.option(
    "--dataset",
    default="mnist-sample",
    show_default=True,
    help=f"Built-in dataset: {', '.join(DATASETS)}.",
)
@click.option("--data-dir", type=click.Path(path_type=Path), help="Directory holding the dataset's files.")
@click.option(
    "--arch",
    default="mnist",
    show_default=True,
    help="mnist (2 conv + 2 dense) or gtsrb (6 conv + 2 dense), the paper's networks; bn-cnn (4 conv with "
    "BatchNorm + 2 dense) or resnet (a small ResNet: 3 residual blocks with BatchNorm, 2 dense).",
)
@click.option(
    "--attack",
    default="none",
    show_default=True,
    help="none, badnets or trojan (several backdoors per model: use `neuralcleanse zoo`).",
)
@click.option("--target", type=int, help="Target label of the attack.")
@click.option("--trigger", default="square:size=4,at=bottom-right,margin=1,pattern=white", help=TRIGGER_HELP)
@click.option(
    "--poison-rate",
    default=0.1,
    show_default=True,
    help="Fraction of training images stamped and relabelled.",
)
@click.option(
    "--source-labels", help="BadNets: only images of these labels (e.g. 7 or 3,5) carry the backdoor."
)
@click.option(
    "--trojan-mask",
    type=click.Choice(["square", "watermark"]),
    default="square",
    show_default=True,
    help="Trojan: the trigger's mask (about 7% of the image).",
)
@click.option("--epochs", default=10, show_default=True, help="Training epochs.")
@click.option("--batch-size", default=64, show_default=True, help="Mini-batch size.")
@click.option("--lr", default=1e-3, show_default=True, help="Adam learning rate.")
@click.option(
    "--shift",
    default=0,
    show_default=True,
    help="Augment: translate each training image by up to this many pixels (0: off).",
)
@click.option(
    "--seed", default=0, show_default=True, help="Seed for initialisation, shuffling and poisoning."
)
@device_option
@click.option("--force", is_flag=True, help="Replace a non-empty output directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@verbose_option
def train(
    out: Path,
    dataset: str,
    data_dir: Path | None,
    arch: str,
    attack: str,
    target: int | None,
    trigger: str,
    poison_rate: float,
    source_labels: str | None,
    trojan_mask: str,
    epochs: int,
    batch_size: int,
    lr: float,
    shift: int,
    seed: int,
    device: str,
    force: bool,
    as_json: bool,
    verbose: int,
) -> None:
    """Train a clean or a backdoored model and save it as a model directory (safetensors + card.json)."""
    from .._io import check_output_dir
    from ..lab.attacks import build_attack
    from ..lab.recipes import Recipe
    from ..lab.training import TrainSettings

    setup_logging(verbose)
    check_count(epochs, "--epochs")
    check_count(batch_size, "--batch-size")
    check_count(shift, "--shift", minimum=0)
    check_seed(seed, "--seed")
    if not (math.isfinite(lr) and lr > 0):
        raise SettingsError(f"--lr must be a positive number, got {lr:g}")
    check_output_dir(out, force=force, option="--out")  # fail before training, not after
    if attack not in _TRAIN_ATTACKS:
        hint = " (several backdoors per model: use `neuralcleanse zoo`)" if attack == "multi" else ""
        raise SettingsError(
            f"--attack: unknown attack {attack!r}; train takes {', '.join(_TRAIN_ATTACKS)}{hint}"
        )
    check_options_apply(attack, _ATTACK_OPTIONS, switch="--attack", none="none")
    bad = None
    if attack != "none":
        if target is None:
            raise SettingsError(f"--attack {attack} needs --target LABEL")
        params: dict[str, Any] = {"target": target, "poison_rate": poison_rate}
        if attack == "badnets":
            params["trigger"] = trigger
            if source_labels:
                params["source_labels"] = parse_labels(source_labels, option="--source-labels")
        elif attack == "trojan":
            params["mask"] = trojan_mask
        bad = build_attack(attack, params, where="--attack")
    elif target is not None:
        raise SettingsError("--target given without --attack")
    recipe = Recipe(
        dataset=dataset,
        arch=arch,
        data_dir=str(data_dir) if data_dir else None,
        training=TrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, shift=shift, seed=seed),
        attack=bad,
    )
    bundle = train_and_save(recipe, out, device=device, force=force, bar=not as_json)
    card = bundle.card
    summary: dict[str, Any] = {
        "out": str(out),
        "dataset": card.dataset,
        "arch": card.arch,
        "attack": card.attack or "none",
        "target": card.targets,
        "clean_accuracy": card.clean_accuracy,
        "attack_success": card.attack_success,
        "seconds": card.training.get("seconds"),
    }
    if as_json:
        click.echo(json.dumps(summary))
        return
    table = Table(show_header=False, box=None)
    for key, value in summary.items():
        if isinstance(value, float) and key != "seconds":
            value = f"{100 * value:.2f}%"
        table.add_row(key.replace("_", " "), "-" if value is None else str(value))
    output_console().print(table)


def train_and_save(recipe: Any, out: Path, *, device: str, force: bool, bar: bool, data: Any = None) -> Any:
    """Train a recipe with a progress bar and save it as a model directory."""
    from ..lab.recipes import train_recipe
    from ..lab.training import TrainProgress

    batch_size = recipe.training.batch_size
    with ProgressBar(f"training {out.name}", enabled=bar, unit="batches") as progress_bar:

        def on_batch(p: TrainProgress) -> None:
            done, total = (p.epoch - 1) * p.batches + p.batch, p.epochs * p.batches
            elapsed = progress_bar.elapsed
            left = elapsed / max(done, 1) * (total - done)
            status = f"epoch {p.epoch}/{p.epochs} loss {p.loss:.3f}  ETA {format_duration(left)}"
            line = (
                f"epoch {p.epoch}/{p.epochs}, batch {p.batch}/{p.batches} ({done}/{total} batches), "
                f"loss {p.loss:.3f}, {done * batch_size / max(elapsed, 1e-9):.0f} img/s, "
                f"elapsed {format_duration(elapsed)}, ETA {format_duration(left)}"
            )
            progress_bar.update(total=total, completed=done, status=status, line=line)

        bundle = train_recipe(recipe, device=device, data=data, progress=on_batch)
    return bundle.save(out, force=force)


#: the attack options and the attacks each applies to (an option given for another attack is an error;
#: before, ``train --trigger ...`` without ``--attack`` trained a clean model and said nothing)
_TRAIN_ATTACKS = ("none", "badnets", "trojan")
_ATTACK_OPTIONS = {
    "trigger": ("--trigger", ("badnets",)),
    "source_labels": ("--source-labels", ("badnets",)),
    "trojan_mask": ("--trojan-mask", ("trojan",)),
    "poison_rate": ("--poison-rate", ("badnets", "trojan")),
}
