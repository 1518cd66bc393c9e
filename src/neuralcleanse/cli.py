"""The ``neuralcleanse`` command line. The only place that parses arguments; no library code imports it."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import NeuralCleanseError, SettingsError

TRIGGER_HELP = """Trigger spec KIND:key=value,...  Default square:size=4,at=bottom-right,margin=1,pattern=white.
square: size=N or HxW; at=bottom-right|bottom-left|top-right|top-left (with margin=M), or row=R,col=C for
the top-left pixel; pattern=white|black|checkerboard|random|file:PATH; seed=S for random; alpha=A<1 blends
the square. blend:pattern=random|checkerboard|file:PATH,alpha=0.1,seed=0 mixes a whole-image pattern in."""


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )


class _Bar:
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

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


verbose_option = click.option("-v", "--verbose", count=True, help="-v info, -vv debug logging.")
device_option = click.option(
    "--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="neuralcleanse")
def app() -> None:
    """Find, explain and remove backdoors in image classifiers (Neural Cleanse, IEEE S&P 2019)."""


@app.command()
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Model directory to write.")
@click.option(
    "--dataset", default="mnist-sample", show_default=True, help="mnist-sample, fashion-mnist or mnist."
)
@click.option("--data-dir", type=click.Path(path_type=Path), help="Directory holding the dataset's files.")
@click.option(
    "--arch", default="mnist", show_default=True, help="mnist (2 conv + 2 dense) or gtsrb (6 conv + 2 dense)."
)
@click.option("--attack", default="none", show_default=True, help="none or badnets.")
@click.option("--target", type=int, help="Target label of the attack.")
@click.option("--trigger", default="square:size=4,at=bottom-right,margin=1,pattern=white", help=TRIGGER_HELP)
@click.option(
    "--poison-rate",
    default=0.1,
    show_default=True,
    help="Fraction of training images stamped and relabelled.",
)
@click.option("--epochs", default=10, show_default=True, help="Training epochs.")
@click.option("--batch-size", default=64, show_default=True, help="Mini-batch size.")
@click.option("--lr", default=1e-3, show_default=True, help="Adam learning rate.")
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
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: str,
    force: bool,
    as_json: bool,
    verbose: int,
) -> None:
    """Train a clean or a backdoored model and save it as a model directory (safetensors + card.json)."""
    from ._io import check_output_dir
    from .attacks import BadNets
    from .recipes import Recipe, train_recipe
    from .training import TrainProgress, TrainSettings

    _setup_logging(verbose)
    check_output_dir(out, force=force)  # fail before training, not after
    if attack not in ("none", "badnets"):
        raise SettingsError(f"unknown attack {attack!r}; known: none, badnets")
    bad = None
    if attack == "badnets":
        if target is None:
            raise SettingsError("--attack badnets needs --target LABEL")
        bad = BadNets(target=target, trigger=trigger, poison_rate=poison_rate)
    elif target is not None:
        raise SettingsError("--target given without --attack")
    recipe = Recipe(
        dataset=dataset,
        arch=arch,
        data_dir=str(data_dir) if data_dir else None,
        training=TrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed),
        attack=bad,
    )
    with _Bar("training", enabled=not as_json) as bar:

        def on_batch(p: TrainProgress) -> None:
            done = (p.epoch - 1) * p.batches + p.batch
            status = f"epoch {p.epoch}/{p.epochs} loss {p.loss:.3f}"
            bar.update(total=p.epochs * p.batches, completed=done, status=status)

        bundle = train_recipe(recipe, device=device, progress=on_batch)
    bundle = bundle.save(out, force=force)
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
    Console(highlight=False).print(table)


def _parse_labels(text: str | None) -> list[int] | None:
    """``0,3,5`` or ``0-9`` or a mix; ``None`` means all labels."""
    if text is None:
        return None
    out: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        lo, dash, hi = part.partition("-")
        try:
            out.extend(range(int(lo), int(hi) + 1) if dash else [int(part)])
        except ValueError:
            raise SettingsError(f"--labels: {part!r} is not a label or a range like 0-9") from None
    if not out:
        raise SettingsError("--labels is empty: give labels like 0,3,5 or 0-9")
    return out


@app.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option(
    "--dataset", help="Clean images from this dataset's test split (default: the model card's dataset)."
)
@click.option("--data-dir", type=click.Path(path_type=Path), help="Directory holding the dataset's files.")
@click.option(
    "--samples", default=1000, show_default=True, help="Clean images used (seeded, class-stratified)."
)
@click.option("--labels", "labels_text", help="Labels to scan, e.g. 0,3,5 or 0-9 (default: all).")
@click.option("--source", type=int, help="Source-label-specific scan: only images of this label are used.")
@click.option(
    "--sequential", is_flag=True, help="One label at a time with the original code's schedule (reference)."
)
@click.option(
    "--loss",
    type=click.Choice(["ce", "original"]),
    default="ce",
    show_default=True,
    help="ce, or the original code's linear-probability term.",
)
@click.option(
    "--threshold",
    default=2.0,
    show_default=True,
    help="Anomaly index above which a small-norm label is flagged.",
)
@click.option("--max-steps", default=1000, show_default=True, help="Cap on optimisation steps per label.")
@click.option(
    "--seed", default=123, show_default=True, help="Seed of the initial triggers, data order and sample."
)
@click.option(
    "--out", type=click.Path(path_type=Path), help="Report directory (default: scans/<model dir name>)."
)
@click.option("--resume", is_flag=True, help="Continue a killed scan from its checkpoint (<out>.checkpoint).")
@click.option("--force", is_flag=True, help="Replace a non-empty report directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the report's summary as JSON.")
@device_option
@verbose_option
def scan(
    model_dir: Path,
    dataset: str | None,
    data_dir: Path | None,
    samples: int,
    labels_text: str | None,
    source: int | None,
    sequential: bool,
    loss: str,
    threshold: float,
    max_steps: int,
    seed: int,
    out: Path | None,
    resume: bool,
    force: bool,
    as_json: bool,
    device: str,
    verbose: int,
) -> None:
    """Reverse-engineer every label's trigger of MODEL_DIR and flag the outliers (Neural Cleanse)."""
    from ._io import check_output_dir
    from .data.registry import load_dataset
    from .detection import NeuralCleanse, ReverseSettings, ScanProgress
    from .detection.checkpoint import remove_checkpoint
    from .errors import DataError
    from .models import load_model_dir

    _setup_logging(verbose)
    out = out or Path("scans") / model_dir.resolve().name
    ckpt = out.with_name(out.name + ".checkpoint")
    check_output_dir(out, force=force)
    if samples < 1:
        raise SettingsError(f"--samples must be at least 1, got {samples}")
    wanted = _parse_labels(labels_text)
    bundle = load_model_dir(model_dir)
    card = bundle.card
    name = dataset or card.dataset
    if name is None:
        raise SettingsError("the model card names no dataset: pass --dataset")
    test = load_dataset(name, root=data_dir).test
    if list(test.input_shape) != list(card.input_shape):
        raise DataError(
            f"dataset {name!r} has images {test.input_shape}, the model card expects {tuple(card.input_shape)}"
        )
    if test.num_classes != card.num_classes:
        raise DataError(f"dataset {name!r} has {test.num_classes} classes, the model card {card.num_classes}")
    overrides: dict[str, Any] = {"loss": loss, "seed": seed, "max_steps": max_steps}
    settings = ReverseSettings.original(**overrides) if sequential else ReverseSettings(**overrides)
    detector = NeuralCleanse(bundle.model, settings=settings, threshold=threshold, device=device)
    with _Bar("scanning labels", enabled=not as_json) as bar:

        def on_progress(p: ScanProgress) -> None:
            best = " ".join(
                f"{lab}:{l1:.0f}" if l1 < float("inf") else f"{lab}:-" for lab, _s, _c, l1 in p.active[:6]
            )
            bar.update(
                completed=p.done,
                total=p.total,
                status=f"{p.images / max(p.seconds, 1e-9):.0f} img/s  best L1 {best}",
            )

        report = detector.scan(
            test,
            samples=samples,
            scan_labels=wanted,
            source=source,
            checkpoint=ckpt,
            resume=resume,
            keep_checkpoint=True,
            progress=on_progress,
            data_info={"dataset": name, "split": "test"},
            model_info={"path": str(model_dir), "arch": card.arch, "weights_sha256": card.weights_sha256},
        )
    report.save(out, force=force)
    remove_checkpoint(ckpt)
    if as_json:
        d = report.to_dict()
        click.echo(
            json.dumps(
                {
                    k: d[k]
                    for k in ("verdict", "flagged", "summary", "anomaly_index", "l1_norms", "attack_success")
                }
                | {"out": str(out)}
            )
        )
        return
    _print_scan(report, out)


def _print_scan(report: Any, out: Path) -> None:
    from rich import box

    table = Table(
        box=box.SIMPLE_HEAD,
        title=f"Neural Cleanse scan ({report.settings['mode']}, {report.run['seconds']:.0f} s)",
    )
    for col in ("label", "name", "L1 norm", "attack success", "steps", "anomaly index", ""):
        table.add_column(col, justify="right" if col not in ("name", "") else "left")
    for r in sorted(report.labels, key=lambda r: (r.l1_norm != r.l1_norm, r.l1_norm)):
        flag = "FLAGGED" if r.flagged else ("" if r.reached else "not reached")
        table.add_row(
            str(r.label), r.name, f"{r.l1_norm:.2f}", f"{100 * r.attack_success:.1f}%", str(r.steps),
            f"{r.anomaly_index:.2f}", flag, style="bold red" if r.flagged else None,
        )  # fmt: skip
    console = Console(highlight=False)
    console.print(table)
    console.print(f"median L1 {report.median:.2f}, MAD {report.mad:.2f}; report written to {out}")
    for note in report.notes:
        console.print(f"note: {note}")
    console.print(("[bold red]" if report.verdict == "backdoored" else "[bold]") + report.summary())


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one line on stderr and a non-zero exit code, never a traceback."""
    try:
        app.main(args=argv, prog_name="neuralcleanse", standalone_mode=False)
    except NeuralCleanseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # click >= 8.2: bare command shows its help
            click.echo(exc.format_message(), err=True)
            return 2
        print(f"error: {exc.format_message()}", file=sys.stderr)
        return 2
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        print("error: aborted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
