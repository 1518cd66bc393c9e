"""``neuralcleanse zoo``: build (and optionally scan) many clean and infected models from a spec."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from .._format import pct
from ..errors import SettingsError
from . import app
from .common import (
    check_count,
    check_seed,
    device_option,
    output_console,
    run_scan,
    setup_logging,
    verbose_option,
)
from .train import train_and_save


@app.command()
@click.option(
    "--spec",
    "spec_path",
    type=click.Path(path_type=Path),
    help="Zoo spec (TOML or .json), or a shipped spec by name: default (every attack on the MNIST sample "
    "and Fashion-MNIST), signs (the 43-class colour task).",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Zoo directory.")
@click.option("--only", help="Comma-separated model names to build (default: all).")
@click.option("--scan", "do_scan", is_flag=True, help="Scan every model too (reports under OUT/scans/).")
@click.option("--samples", default=1000, show_default=True, help="Clean test images per scan.")
@click.option("--scan-seed", default=123, show_default=True, help="Seed of the scans.")
@click.option("--force", is_flag=True, help="Rebuild models whose spec entry changed.")
@click.option("--markdown", type=click.Path(path_type=Path), help="Also write the summary table here.")
@device_option
@verbose_option
def zoo(
    spec_path: Path | None,
    out: Path,
    only: str | None,
    do_scan: bool,
    samples: int,
    scan_seed: int,
    force: bool,
    markdown: Path | None,
    device: str,
    verbose: int,
) -> None:
    """Build a labelled zoo of models from a spec, skipping models already built.

    Every entry is checked against its dataset before anything is trained. Each model is a normal model
    directory OUT/NAME with its ground-truth card; OUT/zoo.json and the printed table summarise clean
    accuracy, attack success and (with --scan) what Neural Cleanse flagged.
    """
    from .._io import check_output_dir, check_output_file
    from ..lab.zoo import (
        SHIPPED_SPECS,
        build_zoo,
        dataset_cache,
        default_spec_path,
        load_spec,
        write_manifest,
    )
    from ..lab.zoo_scan import scan_zoo

    setup_logging(verbose)
    check_count(samples, "--samples")
    check_seed(scan_seed, "--scan-seed")
    check_output_dir(out, force=True, option="--out")  # a zoo directory is reused: only its place is checked
    if markdown is not None:
        check_output_file(markdown, option="--markdown")

    if spec_path is None or (str(spec_path) in SHIPPED_SPECS and not spec_path.exists()):
        spec_path = default_spec_path(str(spec_path or "default"))
    spec = full_spec = load_spec(spec_path)
    if only:
        wanted = [n.strip() for n in only.split(",") if n.strip()]
        missing = [n for n in wanted if n not in spec.names()]
        if missing:
            raise SettingsError(f"--only: no model named {missing[0]!r} in {spec.source}")
        spec = type(spec)([e for e in spec.entries if e.name in wanted], spec.source)
    data_for = dataset_cache()
    console = output_console()

    def announce(i: int, e: Any) -> None:
        console.print(f"[{i + 1}/{len(spec.entries)}] building {e.name} ({e.attack_name})")

    def train(recipe: Any, model_dir: Path, data: Any) -> Any:
        return train_and_save(recipe, model_dir, device=device, force=True, bar=True, data=data)

    rows = build_zoo(out, spec, data_for, train=train, force=force, announce=announce)
    if do_scan:
        scan_zoo(
            out,
            spec,
            rows,
            data_for,
            samples=samples,
            seed=scan_seed,
            device=device,
            references=full_spec,
            run=partial(run_scan, bar=True),
            saved=lambda: write_manifest(out, spec, rows),
        )
    write_manifest(out, spec, rows)
    table_rows = [_cells(r, do_scan) for r in rows]
    header = _header(do_scan)
    table = Table(title=f"model zoo {out}")
    for col in header:
        table.add_column(col)
    for cells in table_rows:
        table.add_row(*cells)
    console.print(table)
    if markdown is not None:
        from .._io import atomic_write_bytes

        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in cells) + " |" for cells in table_rows]
        atomic_write_bytes(markdown, ("\n".join(lines) + "\n").encode())
        console.print(f"summary table written to {markdown}")


def _header(scanned: bool) -> list[str]:
    cols = ["model", "dataset", "attack", "trigger", "area", "target", "clean acc", "Δ acc", "ASR"]
    if scanned:
        cols += [
            "verdict (effect): flagged",
            "index(target)",
            "L1(target)/median",
            "detected",
            "log test: flagged",
            "index(target)",
            "vs references: flagged (L1 / reference L1)",
            "index(target)",
            "detected",
        ]
    return cols


def _cells(r: Any, scanned: bool) -> list[str]:
    cells = [
        r.name,
        r.dataset,
        r.attack,
        r.trigger if len(r.trigger) <= 48 else r.trigger[:45] + "...",
        pct(r.trigger_area),
        ",".join(map(str, r.targets)) or "-",
        pct(r.clean_accuracy),
        "-" if r.accuracy_drop is None else f"{-100 * r.accuracy_drop:+.1f}",
        pct(r.attack_success),
    ]
    if scanned:
        s = r.scan
        flagged = ",".join(map(str, s.get("flagged", []))) or "none"
        if s.get("source_flagged") is not None:
            flagged += f" (source scan: {','.join(map(str, s['source_flagged'])) or 'none'})"
        idx = s.get("target_index")
        l1 = s.get("target_l1")
        cells += [
            flagged,
            _indices(idx),
            "-" if not l1 else ", ".join(f"{v:.1f}" for v in l1) + f" / {s.get('median', math.nan):.1f}",
            s.get("outcome", "-"),
            ",".join(map(str, s.get("log_flagged", []))) or "none",
            _indices(s.get("log_target_index")),
        ]
        if "relative_flagged" in s:
            ratio = s.get("relative_ratio", {})
            cells += [
                ", ".join(f"{k} (×{ratio[str(k)]:.2f})" for k in s["relative_flagged"]) or "none",
                _indices(s["relative_target_index"]),
                s["relative_outcome"],
            ]
        else:
            cells += ["-", "-", "-"]
    return cells


def _indices(values: list[float] | None) -> str:
    return "-" if not values else ", ".join(f"{v:.2f}" for v in values)
