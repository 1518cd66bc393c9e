"""``neuralcleanse report RESULT_DIR``: one self-contained HTML page for a scan."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import DataError
from . import app
from .common import setup_logging, verbose_option


@app.command()
@click.argument("result_dir", type=click.Path(path_type=Path))
@click.option(
    "--out", type=click.Path(path_type=Path), help="HTML file to write (default: RESULT_DIR/report.html)."
)
@click.option(
    "--validation", "validation_dir", type=click.Path(path_type=Path), help="A `validate` result to include."
)
@click.option(
    "--mitigation",
    "mitigation_dirs",
    type=click.Path(path_type=Path),
    multiple=True,
    help="`mitigate` results to include (repeatable).",
)
@verbose_option
def report(
    result_dir: Path,
    out: Path | None,
    validation_dir: Path | None,
    mitigation_dirs: tuple[Path, ...],
    verbose: int,
) -> None:
    """Write a self-contained HTML report (figures inline, no network) for a scan's result directory.

    The figures are also written as PNGs beside the page: in figures/ for report.html, in NAME_figures/
    for a page NAME.html."""
    from .._io import check_output_file, read_result
    from ..detection.report import REPORT_FILE
    from ..mitigation import MitigationResult
    from ..report import write_html_report
    from ..report.html import figures_folder, require_scan_dir
    from ..validation import ValidationResult

    setup_logging(verbose)
    require_scan_dir(result_dir)
    figures_folder(check_output_file(out if out is not None else result_dir / "report.html", option="--out"))
    validation = ValidationResult.load(validation_dir) if validation_dir else None
    mitigations = [MitigationResult.load(d) for d in mitigation_dirs]
    scan = read_result(result_dir, REPORT_FILE, what="scan report")[1]
    model = scan.get("model") if isinstance(scan, dict) else None
    scanned = model.get("fingerprint") if isinstance(model, dict) else None
    made = [(validation_dir, validation.model_fingerprint)] if validation is not None else []
    made += [(d, m.model_fingerprint) for d, m in zip(mitigation_dirs, mitigations, strict=True)]
    for where, theirs in made:
        if scanned and theirs and theirs != scanned:
            raise DataError(
                f"{where}: this result belongs to another model (fingerprint {theirs[:12]}..., the scan "
                f"{result_dir} is of {str(scanned)[:12]}...)"
            )
    path = write_html_report(result_dir, out, validation=validation, mitigations=mitigations)
    click.echo(f"report written to {path}")
