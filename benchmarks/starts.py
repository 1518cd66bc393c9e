"""More random starts (``ReverseSettings.starts``): which verdicts change, and what they cost.

    python benchmarks/starts.py --out runs/fidelity --only '*-resnet-s0' --starts 3

For every model of ``fidelity.py --no-self`` on disk (``OUT/models``, its default scan in
``OUT/scans-plain``, scan seed 123) it scans the model again with ``starts=N`` (the default schedule
otherwise; cached under ``OUT/scans-starts-N``) and prints, for both scans, the ``effect`` verdict's
flags, the planted labels' and the cheapest natural label's norm over the median, the images
processed, and each candidate label's norm from every start. The first start of the ``starts`` scan is
the default scan itself, so the two differ only by the candidates' extra starts.

A third row per model (``aware``) is computed from the two scans without optimising anything: more starts
only for the labels the default verdict did *not* flag that are at most ``start_ratio`` of the median (a
flagged label's extra starts can only lower its norm: it stays flagged), each taking its smallest trigger
from the ``starts`` scan; its images are the default scan's plus those labels' extra starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import logging
from pathlib import Path

import neuralcleanse as nc
from neuralcleanse.detection import DetectionReport, NeuralCleanse, ReverseSettings

START_RATIO = ReverseSettings().start_ratio


def starts_scan(out: Path, name: str, starts: int, bundle: nc.ModelBundle, samples: int) -> DetectionReport:
    path = out / f"scans-starts-{starts}" / name
    if not (path / "report.json").exists():
        data = nc.load_dataset(bundle.card.dataset)
        settings = ReverseSettings(seed=123, starts=starts)
        report = NeuralCleanse(bundle.model, settings=settings).scan(data.test, samples=samples)
        report.save(path, force=True, images=False)
        logging.info("%s: %d starts scanned in %.0f s", name, starts, report.run["seconds"])
    return DetectionReport.load(path)


def verdict_aware(default: DetectionReport, more: DetectionReport) -> tuple[DetectionReport, list[int]]:
    """The default scan with more starts only for its unflagged labels at most START_RATIO of the median."""
    flagged = set(default.outlier_test(statistic="effect").flagged)
    median = default.median_l1
    redo = [r.label for r in default.labels
            if r.label not in flagged and not r.screened and r.l1_norm <= START_RATIO * median]  # fmt: skip
    rows = {r.label: r for r in more.labels}
    labels = [rows[r.label] if r.label in redo else r for r in default.labels]
    triggers = {k: more.triggers[k] if k in redo else t for k, t in default.triggers.items()}
    run = {**default.run, "images_processed": default.run["images_processed"]
           + sum(rows[k].images_seen - r.images_seen for r in default.labels for k in [r.label] if k in redo)}  # fmt: skip
    return dataclasses.replace(default, labels=labels, triggers=triggers, run=run), redo


def outcome(flags: list[int], planted: list[int]) -> str:
    if flags == planted:
        return "exact" if planted else "correct"
    if not planted:
        return "false alarm"
    return "other" if flags else "missed"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/fidelity"))
    ap.add_argument("--only", default="*")
    ap.add_argument("--starts", type=int, default=3)
    ap.add_argument("--samples", type=int, default=1000)
    args = ap.parse_args()
    if args.starts < 2:
        ap.error("--starts must be at least 2 (1 is the default scan)")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger(__name__).setLevel(logging.INFO)
    names = sorted(
        p.name
        for p in (args.out / "scans-plain").glob("*")
        if (p / "report.json").exists() and fnmatch.fnmatch(p.name, args.only)
    )
    head = f"{'model':40s} {'planted':8s} {'starts':>6s} {'flags':10s} {'outcome':12s} planted/med natural/med   images"
    print(head + "\n" + "-" * len(head))
    totals: dict[int | str, int] = {1: 0, args.starts: 0, "aware": 0}
    changed: dict[int | str, int] = {args.starts: 0, "aware": 0}
    for name in names:
        bundle = nc.load_model_dir(args.out / "models" / name)
        planted = sorted({b.target for b in bundle.card.backdoors})
        default = DetectionReport.load(args.out / "scans-plain" / name)
        more = starts_scan(args.out, name, args.starts, bundle, args.samples)
        aware, redo = verdict_aware(default, more)
        first = sorted(default.outlier_test(statistic="effect").flagged)
        n: int | str
        for n, report in ((1, default), (args.starts, more), ("aware", aware)):
            median = report.median_l1
            ratio = {r.label: r.l1_norm / median for r in report.labels}
            natural = min(v for k, v in ratio.items() if k not in planted)
            shown = ",".join(f"{ratio[k]:.2f}" for k in planted) or "-"
            flags = sorted(report.outlier_test(statistic="effect").flagged)  # whatever the scan's statistic
            images = report.run["images_processed"]
            totals[n] += images
            if n != 1 and flags != first:
                changed[n] += 1
            print(
                f"{name:40s} {str(planted):8s} {n!s:>6s} {str(flags):10s} {outcome(flags, planted):12s} "
                f"{shown:11s} {natural:10.2f} {images:8d}"
            )
            if n == args.starts:
                for note in report.notes:
                    if "random starts" in note or "needed more than one start" in note:
                        print(" " * 41 + note)
            elif n == "aware":
                print(" " * 41 + f"more starts for the unflagged labels {redo} only")
        print(flush=True)
    for n in (args.starts, "aware"):
        print(f"{n} starts: images over the default scan's {totals[n] / max(totals[1], 1):.2f}, "
              f"flags changed on {changed[n]} of {len(names)} models")  # fmt: skip


if __name__ == "__main__":
    main()
