"""``neuralcleanse zoo``: build (and optionally scan) many clean and infected models from a spec."""

from __future__ import annotations

import logging
import math
from functools import partial
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ..errors import CheckpointError, NeuralCleanseError, SettingsError
from . import app
from .common import check_count, check_seed, device_option, run_scan, setup_logging, verbose_option
from .train import train_and_save

log = logging.getLogger(__name__)


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
    from ..data.registry import load_dataset
    from ..models import load_model_dir
    from ..zoo import (
        SHIPPED_SPECS,
        attach_controls,
        check_against_data,
        default_spec_path,
        load_spec,
        read_manifest_digests,
        summarise,
        write_manifest,
    )

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
    cache: dict[tuple[str, str | None], Any] = {}

    def data_for(name: str, root: str | None) -> Any:
        if (name, root) not in cache:
            cache[(name, root)] = load_dataset(name, root=root)
        return cache[(name, root)]

    check_against_data(spec, data_for)
    out.mkdir(parents=True, exist_ok=True)
    digests = read_manifest_digests(out)
    for e in spec.entries:  # refuse stale models before building anything
        if (out / e.name / "card.json").exists() and digests.get(e.name) != e.digest and not force:
            raise SettingsError(
                f"{out / e.name} was built from a different spec entry {e.name!r}; use --force to rebuild it"
            )
    console = Console(highlight=False)
    rows = []
    for i, e in enumerate(spec.entries):
        model_dir = out / e.name
        if (model_dir / "card.json").exists() and digests.get(e.name) == e.digest:
            bundle, status = load_model_dir(model_dir), "kept"
        else:
            console.print(f"[{i + 1}/{len(spec.entries)}] building {e.name} ({e.attack_name})")
            bundle = train_and_save(
                e.recipe,
                model_dir,
                device=device,
                force=True,
                bar=True,
                data=data_for(e.recipe.dataset, e.recipe.data_dir),
            )
            status = "built"
        rows.append(summarise(e, bundle.card, status))
        digests[e.name] = e.digest
        write_manifest(out, type(spec)(spec.entries[: i + 1], spec.source), rows)
    attach_controls(rows, spec)
    if do_scan:
        reports: dict[str, Any] = {}
        for row, e in zip(rows, spec.entries, strict=True):
            row.scan, reports[e.name] = _scan_model(
                out, e, data_for(e.recipe.dataset, e.recipe.data_dir), samples, scan_seed, device
            )
            write_manifest(out, spec, rows)
        for row, e in zip(rows, spec.entries, strict=True):
            refs = full_spec.references_for(e)
            row.scan.update(_against_references(out, reports, e.name, refs, row.targets))
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
            "flagged",
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


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}%"


def _cells(r: Any, scanned: bool) -> list[str]:
    cells = [
        r.name,
        r.dataset,
        r.attack,
        r.trigger if len(r.trigger) <= 48 else r.trigger[:45] + "...",
        _pct(r.trigger_area),
        ",".join(map(str, r.targets)) or "-",
        _pct(r.clean_accuracy),
        "-" if r.accuracy_drop is None else f"{-100 * r.accuracy_drop:+.1f}",
        _pct(r.attack_success),
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


def _indices_of(report: Any, test: Any, labels: list[int]) -> list[float]:
    """The anomaly indices of ``labels`` in ``test``, an outlier test re-run on ``report``'s norms."""
    return [test.anomaly_index[report.labels.index(report.label(k))] for k in labels]


def _outcome(planted: list[int], found: set[int]) -> str:
    if not planted:
        return "correct (clean)" if not found else "false alarm"
    if set(planted) <= found:
        return "detected" + (" + false alarm" if found - set(planted) else "")
    return "partly detected" if set(planted) & found else "missed"


def _against_references(
    out: Path, reports: dict[str, Any], name: str, refs: list[str], targets: list[int]
) -> dict[str, Any]:
    """The relative test of ``name``'s scan against the scans of its reference models (read from
    OUT/scans when this run did not scan them); empty when there are none to compare with."""
    from ..detection import Reference
    from ..models.card import ModelCard

    have = []
    for ref in refs:
        if ref not in reports and (out / ref / "card.json").exists():
            saved = _saved_report(out / "scans" / ref, ModelCard.load(out / ref / "card.json").weights_sha256)
            if saved is not None:
                reports[ref] = saved
        if ref in reports:
            have.append(ref)
        else:
            log.info("%s: reference %s has not been scanned; left out", name, ref)
    if not have:
        return {}
    report = reports[name]
    try:
        reference = Reference.from_reports([reports[r] for r in have], paths=have)
        reference.check_task(
            num_classes=int(report.model.get("num_classes", len(report.labels))),
            images=report.data.get("input_fingerprint"),
        )
        test = report.outlier_test(statistic="relative", reference=reference)
    except NeuralCleanseError as exc:  # the zoo is built and scanned: report, do not fail at the end
        log.warning("%s: no test against the references (%s)", name, exc)
        return {}
    return {
        "references": have,
        "relative_flagged": test.flagged,
        # how many times smaller than in the references each flagged label's and target's trigger is
        "relative_ratio": {
            str(k): round(report.label(k).l1_norm / reference.l1_norms[k], 4)
            for k in sorted({*test.flagged, *targets})
        },
        "relative_target_index": _indices_of(report, test, targets),
        "relative_outcome": _outcome(targets, set(test.flagged)),
    }


def _saved_report(report_dir: Path, weights_sha256: str | None, settings: Any = None) -> Any:
    """The scan report saved in ``report_dir`` if it was made for these weights (and with these
    settings, when given), else None."""
    from ..detection import DetectionReport, ReverseSettings

    if not (report_dir / "report.json").exists():
        return None
    report = DetectionReport.load(report_dir)
    # a report made for other weights is stale (a `scan` CLI report records "sha256")
    if weights_sha256 not in (report.model.get("weights_sha256"), report.model.get("sha256")):
        return None
    recorded = {k: v for k, v in report.settings.items() if k != "mode"}
    if settings is not None and ReverseSettings.from_dict(recorded) != settings:
        log.info("%s: scanned with other settings; scanning again", report_dir)
        return None
    return report


def _scan_model(
    out: Path, entry: Any, data: Any, samples: int, seed: int, device: str
) -> tuple[dict[str, Any], Any]:
    """Scan one zoo model (kept if already scanned with the same weights); returns the summary and the
    report of the normal (not source-label) scan."""
    from ..detection import NeuralCleanse, ReverseSettings
    from ..detection.checkpoint import has_checkpoint, remove_checkpoint
    from ..models import load_model_dir

    bundle = load_model_dir(out / entry.name)
    card = bundle.card
    result: dict[str, Any] = {}
    main_report: Any = None
    sources = sorted({s for b in card.backdoors for s in (b.source_labels or [])})
    plans: list[tuple[str, int | None]] = [("scans", None)] + [("source-scans", s) for s in sources[:1]]
    for folder, source in plans:
        report_dir = out / folder / entry.name
        # a reference model's norms are compared label by label: none may be screened
        settings = ReverseSettings(seed=seed, screening=not entry.is_reference)
        detector = NeuralCleanse(bundle.model, settings=settings, device=device)
        report = _saved_report(report_dir, card.weights_sha256, detector.settings)
        if report is None:
            ckpt = report_dir.with_name(report_dir.name + ".checkpoint")
            scan = partial(
                run_scan,
                detector,
                data.test,
                bar=True,
                samples=samples,
                source=source,
                checkpoint=ckpt,
                keep_checkpoint=True,
                data_info={"dataset": card.dataset, "split": "test"},
                model_info={
                    "path": str(out / entry.name),
                    "arch": card.arch,
                    "weights_sha256": card.weights_sha256,
                },
            )
            try:  # a scan killed part-way continues where it stopped
                report = scan(resume=has_checkpoint(ckpt))
            except CheckpointError as exc:
                log.warning("%s; scanning %s from the start", exc, entry.name)
                remove_checkpoint(ckpt)
                report = scan(resume=False)
            report.save(report_dir, force=True)
            remove_checkpoint(ckpt)
        if source is None:
            main_report = report
            targets = card.targets
            log_test = report.outlier_test(statistic="log")
            result.update(
                log_flagged=log_test.flagged,
                log_target_index=_indices_of(report, log_test, targets),
            )
            result.update(
                verdict=report.verdict,
                flagged=report.flagged,
                median=report.median,
                target_index=[report.label(t).anomaly_index for t in targets],
                target_l1=[report.label(t).l1_norm for t in targets],
                seconds=report.run.get("seconds"),
            )
        else:
            result["source_flagged"] = report.flagged
    result["outcome"] = _outcome(
        card.targets, set(result["flagged"]) | set(result.get("source_flagged") or [])
    )
    return result, main_report
