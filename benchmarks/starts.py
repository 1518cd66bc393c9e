"""More random starts (``ReverseSettings.starts``): which verdicts change, and what they cost.

    python benchmarks/starts.py --out runs/fidelity --only '*-resnet-s0' --starts 3

For every model of ``fidelity.py --no-self`` on disk (``OUT/models``, its default scan in
``OUT/scans-plain``, scan seed 123) it scans the model again with ``starts=N`` (the default schedule
otherwise; cached under ``OUT/scans-starts-N``) and prints, for both scans, the ``effect`` verdict's
flags, the planted labels' and the cheapest natural label's norm over the median, the images
processed, and each candidate label's norm from every start. The first start of the ``starts`` scan is
the default scan itself, so the two differ only by the candidates' extra starts.
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
from pathlib import Path

import neuralcleanse as nc
from neuralcleanse.detection import DetectionReport, NeuralCleanse, ReverseSettings


def starts_scan(out: Path, name: str, starts: int, bundle: nc.ModelBundle, samples: int) -> DetectionReport:
    path = out / f"scans-starts-{starts}" / name
    if not (path / "report.json").exists():
        data = nc.load_dataset(bundle.card.dataset)
        settings = ReverseSettings(seed=123, starts=starts)
        report = NeuralCleanse(bundle.model, settings=settings).scan(data.test, samples=samples)
        report.save(path, force=True, images=False)
        logging.info("%s: %d starts scanned in %.0f s", name, starts, report.run["seconds"])
    return DetectionReport.load(path)


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
    totals = {1: 0, args.starts: 0}
    for name in names:
        bundle = nc.load_model_dir(args.out / "models" / name)
        planted = sorted({b.target for b in bundle.card.backdoors})
        for n, report in (
            (1, DetectionReport.load(args.out / "scans-plain" / name)),
            (args.starts, starts_scan(args.out, name, args.starts, bundle, args.samples)),
        ):
            median = report.median_l1
            ratio = {r.label: r.l1_norm / median for r in report.labels}
            natural = min(v for k, v in ratio.items() if k not in planted)
            shown = ",".join(f"{ratio[k]:.2f}" for k in planted) or "-"
            flags = sorted(report.outlier_test(statistic="effect").flagged)  # whatever the scan's statistic
            images = report.run["images_processed"]
            totals[n] += images
            print(
                f"{name:40s} {str(planted):8s} {n:6d} {str(flags):10s} {outcome(flags, planted):12s} "
                f"{shown:11s} {natural:10.2f} {images:8d}"
            )
            for note in report.notes:
                if "random starts" in note or "needed more than one start" in note:
                    print(" " * 41 + note)
        print(flush=True)
    print(f"images, {args.starts} starts over 1: {totals[args.starts] / max(totals[1], 1):.2f}")


if __name__ == "__main__":
    main()
