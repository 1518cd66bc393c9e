"""``neuralcleanse validate``: is the reversed trigger of a flagged label the real one?"""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from ..device import resolve_device
from . import app
from .case import case_options, open_case
from .common import check_fraction_option, device_option, output_console, setup_logging, verbose_option
from .loading import ModelSource, default_out


@app.command()
@case_options
@click.option("--top", default=0.01, show_default=True, help="Fraction of feature neurons compared.")
@device_option
@verbose_option
def validate(
    source: ModelSource, report_path: Path, label: int | None, layer: str | None,
    real_trigger: str | None, real_sources: str | None, out: Path | None,
    force: bool, top: float, device: str, verbose: int,
) -> None:  # fmt: skip
    """Compare the reversed trigger of a flagged label with the real one (a card's, or --real-trigger).

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
    check_output_dir(out, force=force, option="--out", inputs=(*source.inputs, report_path))
    case = open_case(source, report_path, label, device, real_trigger=real_trigger, real_sources=real_sources)
    images = case.images(source)
    result = case.stamped(
        validate_trigger(
            case.loaded.model, case.backdoor, images, layer=layer, top_fraction=top, device=device
        )
    )
    b = case.backdoor
    result.save(
        out,
        reversed_trigger=b.reversed_trigger,
        real_trigger=b.real_trigger,
        example=images.images[0],
        force=force,
    )
    table = Table(
        title=f"label {case.label}: reversed vs real trigger ({result.layer}, top {len(result.neurons)} neurons)"
    )
    for col in ("", "reversed", "real"):
        table.add_column(col, justify="right")
    for row in result.rows():
        table.add_row(*row)
    console = output_console()
    console.print(table)
    for line in result.lines():
        console.print(line)
    for note in result.notes:
        console.print(f"note: {note}")
    console.print(f"written to {out}")
