"""``neuralcleanse demo``: the README's first command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from . import app
from .common import (
    check_count,
    check_seed,
    device_option,
    output_console,
    print_scan,
    run_scan,
    setup_logging,
    verbose_option,
)
from .train import train_and_save


@app.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("runs/demo"),
    show_default=True,
    help="Work directory.",
)
@click.option("--epochs", default=8, show_default=True, help="Training epochs of the two models.")
@click.option("--seed", default=0, show_default=True, help="Training seed (the scan seed is 123).")
@device_option
@click.option(
    "--force", is_flag=True, help="Retrain and rescan even if the work directory has matching results."
)
@verbose_option
def demo(out: Path, epochs: int, seed: int, device: str, force: bool, verbose: int) -> None:
    """Train a BadNets model and a clean control on the embedded MNIST sample, scan both, compare.

    Models and scans already in OUT (from an earlier demo with the same settings; a scan only for the same
    weights, by sha256) are reused and the output says so; --force rebuilds both.
    """
    from .._io import check_output_dir
    from ..data.registry import load_dataset
    from ..detection import NeuralCleanse, ReverseSettings
    from ..lab.attacks import BadNets
    from ..lab.recipes import Recipe
    from ..lab.training import TrainSettings
    from ..lab.zoo_scan import saved_report
    from ..models import load_model_dir
    from ..models.loading import load_model
    from ..report import write_html_report

    setup_logging(verbose)
    check_count(epochs, "--epochs")
    check_seed(seed, "--seed")
    # OUT is a work directory whose models are reused: it may hold files, but must be a writable directory
    check_output_dir(out, force=True, option="--out")
    for sub in ("badnets", "badnets-scan", "clean", "clean-scan"):
        check_output_dir(out / sub, force=True, option="--out")
    data = load_dataset("mnist-sample")
    console = output_console()
    training = TrainSettings(epochs=epochs, seed=seed)
    cases = {"badnets": BadNets(target=0), "clean": None}
    outcome: list[tuple[str, list[int], Any]] = []
    for name, attack in cases.items():
        model_dir, scan_dir = out / name, out / f"{name}-scan"
        recipe = Recipe(dataset=data.name, training=training, attack=attack)
        bundle = None
        if not force and (model_dir / "card.json").exists():
            bundle = load_model_dir(model_dir)
            if bundle.card.training.get("epochs") != epochs or bundle.card.seed != seed:
                bundle = None
        model_reused = bundle is not None
        if bundle is None:
            bundle = train_and_save(recipe, model_dir, device=device, force=True, bar=True)
        card = bundle.card
        planted = card.targets
        console.rule(f"[bold]{name} model")
        asr = "" if card.attack_success is None else f", attack success {100 * card.attack_success:.1f}%"
        what = f"BadNets, 4x4 white square bottom-right, target {planted}" if planted else "no backdoor"
        console.print(f"{model_dir}: {what}; clean accuracy {100 * (card.clean_accuracy or 0):.1f}%{asr}")
        # scanned as `scan` scans a model directory: with the card's declared preprocessing
        loaded = load_model(model_dir, device=device)
        detector = NeuralCleanse(loaded.model, settings=ReverseSettings(seed=123), device=device)
        # a scan already made for these weights with these settings is reused (--force rescans)
        report = None if force else saved_report(scan_dir, loaded.sha256, detector.settings)
        scan_reused = report is not None
        if report is None:
            report = run_scan(
                detector,
                data.test,
                bar=True,
                data_info={"dataset": "mnist-sample", "split": "test"},
                model_info=loaded.describe(),
            )
            report.save(scan_dir, force=True)
            write_html_report(scan_dir)
        print_scan(report, scan_dir)
        reused = [w for w, r in (("model", model_reused), ("scan", scan_reused)) if r]
        if reused:
            console.print(
                f"reused the {' and the '.join(reused)} already in {out} (same settings and weights sha256); "
                "--force rebuilds"
            )
        outcome.append((name, planted, report))
    console.rule("[bold]result")
    for name, planted, report in outcome:
        ok = sorted(report.flagged) == sorted(planted)
        console.print(
            f"{name:8s} planted {planted or 'none'}, flagged {report.flagged or 'none'}: "
            + ("[green]correct" if ok else "[red]wrong")
        )
    console.print(f"trigger images: {out}/badnets-scan/images/ (label_0000_mask.png is the reversed trigger)")
    console.print(
        f"reports to open in a browser: {out}/badnets-scan/report.html, {out}/clean-scan/report.html"
    )
