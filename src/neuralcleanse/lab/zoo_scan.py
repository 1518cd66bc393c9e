"""The zoo's evaluation: every model scanned as ``scan`` scans it (with its card's declared
preprocessing), the verdict set against the planted labels, and the relative test against the zoo's
reference models.

Reports are kept under ``OUT/scans/NAME`` (and ``OUT/source-scans/NAME`` for a source-label scan of a
model with source-specific backdoors); a report already there for the same weights and settings is reused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

from ..data.dataset import DatasetSplits, ImageDataset
from ..detection import DetectionReport, NeuralCleanse, OutlierResult, Reference, ReverseSettings
from ..detection.checkpoint import checkpoint_beside, has_checkpoint, remove_checkpoint
from ..errors import CheckpointError, NeuralCleanseError
from ..fingerprint import report_weights_sha256
from ..models.card import ModelCard
from ..models.loading import load_model
from .zoo import ZooEntry, ZooRow, ZooSpec

__all__ = [
    "ScanRunner",
    "against_references",
    "outcome",
    "saved_report",
    "scan_entry",
    "scan_zoo",
    "target_indices",
]

log = logging.getLogger(__name__)

#: runs a scan: ``run(detector, images, **options)`` → the report (``detector.scan`` by default; the CLI
#: passes one that shows progress)
ScanRunner = Callable[..., DetectionReport]


def _plain_scan(detector: NeuralCleanse, images: ImageDataset, **options: Any) -> DetectionReport:
    return detector.scan(images, **options)


def outcome(planted: Iterable[int], found: set[int]) -> str:
    """What a scan's flagged labels ``found`` say about a model with the ``planted`` target labels:
    ``correct (clean)``, ``false alarm``, ``detected`` (``+ false alarm``), ``partly detected``, ``missed``."""
    planted = set(planted)
    if not planted:
        return "correct (clean)" if not found else "false alarm"
    if planted <= found:
        return "detected" + (" + false alarm" if found - planted else "")
    return "partly detected" if planted & found else "missed"


def target_indices(report: DetectionReport, test: OutlierResult, labels: list[int]) -> list[float]:
    """The anomaly indices of ``labels`` in ``test``, an outlier test re-run on ``report``'s norms."""
    return [test.anomaly_index[report.labels.index(report.label(k))] for k in labels]


def saved_report(
    report_dir: Path, weights_sha256: str | None, settings: ReverseSettings | None = None
) -> DetectionReport | None:
    """The scan report saved in ``report_dir`` if it was made for these weights (and with these
    settings, when given), else None."""
    if not (report_dir / "report.json").exists():
        return None
    report = DetectionReport.load(report_dir)
    if report_weights_sha256(report.model) != weights_sha256:  # made for other weights: stale
        return None
    recorded = {k: v for k, v in report.settings.items() if k != "mode"}
    if settings is not None and ReverseSettings.from_dict(recorded) != settings:
        log.info("%s: scanned with other settings; scanning again", report_dir)
        return None
    return report


def against_references(
    out: Path, reports: dict[str, DetectionReport], name: str, refs: list[str], targets: list[int]
) -> dict[str, Any]:
    """The relative test of ``name``'s scan against the scans of its reference models (read from
    OUT/scans when this run did not scan them); empty when there are none to compare with."""
    have = []
    for ref in refs:
        if ref not in reports and (out / ref / "card.json").exists():
            saved = saved_report(out / "scans" / ref, ModelCard.load(out / ref / "card.json").weights_sha256)
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
        "relative_target_index": target_indices(report, test, targets),
        "relative_outcome": outcome(targets, set(test.flagged)),
    }


def scan_entry(
    out: Path,
    entry: ZooEntry,
    data: DatasetSplits,
    *,
    samples: int,
    seed: int,
    device: str,
    run: ScanRunner = _plain_scan,
) -> tuple[dict[str, Any], DetectionReport]:
    """Scan one zoo model (kept if already scanned with the same weights); returns the summary and the
    report of the normal (not source-label) scan."""
    loaded = load_model(out / entry.name, device=device)
    card = loaded.card
    assert card is not None  # a zoo model is a model directory
    result: dict[str, Any] = {}
    main_report: DetectionReport | None = None
    sources = sorted({s for b in card.backdoors for s in (b.source_labels or [])})
    plans: list[tuple[str, int | None]] = [("scans", None)] + [("source-scans", s) for s in sources[:1]]
    for folder, source in plans:
        report_dir = out / folder / entry.name
        # a reference model's norms are compared label by label: none may be screened
        settings = ReverseSettings(seed=seed, screening=not entry.is_reference)
        detector = NeuralCleanse(loaded.model, settings=settings, device=device)
        report = saved_report(report_dir, loaded.sha256, detector.settings)
        if report is None:
            ckpt = checkpoint_beside(report_dir)
            scan = partial(
                run,
                detector,
                data.test,
                samples=samples,
                source=source,
                checkpoint=ckpt,
                keep_checkpoint=True,
                data_info={"dataset": card.dataset, "split": "test"},
                model_info=loaded.describe(),
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
                log_target_index=target_indices(report, log_test, targets),
            )
            result.update(
                verdict=report.verdict,
                flagged=report.flagged,
                median=report.median_l1,
                target_index=[report.label(t).anomaly_index for t in targets],
                target_l1=[report.label(t).l1_norm for t in targets],
                seconds=report.run.get("seconds"),
            )
        else:
            result["source_flagged"] = report.flagged
    result["outcome"] = outcome(
        card.targets, set(result["flagged"]) | set(result.get("source_flagged") or [])
    )
    assert main_report is not None
    return result, main_report


def scan_zoo(
    out: Path,
    spec: ZooSpec,
    rows: list[ZooRow],
    data_for: Callable[[str, str | None], DatasetSplits],
    *,
    samples: int,
    seed: int,
    device: str,
    references: ZooSpec | None = None,
    run: ScanRunner = _plain_scan,
    saved: Callable[[], None] | None = None,
) -> None:
    """Scan every model of ``spec`` (one row each, in order) and fill in each row's ``scan`` summary,
    then test each scan against its reference models (those of ``references``, the full spec when only
    part of it is built; default ``spec``).

    ``saved`` is called after each model's scan (the CLI writes the manifest, so a killed run keeps
    what is done)."""
    reports: dict[str, DetectionReport] = {}
    for row, e in zip(rows, spec.entries, strict=True):
        data = data_for(e.recipe.dataset, e.recipe.data_dir)
        row.scan, reports[e.name] = scan_entry(
            out, e, data, samples=samples, seed=seed, device=device, run=run
        )
        if saved is not None:
            saved()
    full = references or spec
    for row, e in zip(rows, spec.entries, strict=True):
        row.scan.update(against_references(out, reports, e.name, full.references_for(e), row.targets))
