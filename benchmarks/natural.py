"""The natural reference (``scan --natural-reference``) against the default verdict, on built models.

    python benchmarks/natural.py --models runs/zoo --cache runs/scans-natural
    python benchmarks/natural.py --models runs/fidelity/models --only '*-s1' --cache runs/fidelity/scans-natural

Every model directory under ``--models`` (a zoo or the fidelity benchmark's ``OUT/models``; reference
entries of a zoo are left out) is scanned once with ``natural_reference=True`` (the default schedule
without screening, then every label again with its pattern fixed to its mean clean image; scan seed 123,
1,000 test images; cached). The same norms are then judged by the paper's test (``l1``), the default
``effect`` statistic, the natural reference's relative test (``natural``), and the two combinations
(``effect|natural``: a label either flags; ``effect&natural``: both). Per model it prints the planted
labels, each method's flags and outcome, the planted labels' free/mean-pattern ratio over the median
ratio, and the smallest such ratio of a label that was not planted; then the rates per method, grouped
as ``fidelity.py`` groups them (small triggers, large triggers, source-specific, clean).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import math
import statistics
from pathlib import Path

from fidelity import group  # benchmarks/fidelity.py: clean, small, large, source
from starts import outcome  # benchmarks/starts.py: exact, correct, false alarm, other, missed

import neuralcleanse as nc
from neuralcleanse.detection import DetectionReport, NeuralCleanse, ReverseSettings

METHODS = ("l1", "effect", "natural", "effect|natural", "effect&natural")


def natural_scan(cache: Path, model_dir: Path, samples: int) -> DetectionReport:
    path = cache / model_dir.name
    if not (path / "report.json").exists():
        bundle = nc.load_model_dir(model_dir)
        data = nc.load_dataset(bundle.card.dataset)
        detector = NeuralCleanse(bundle.model, settings=ReverseSettings(seed=123), natural_reference=True)
        report = detector.scan(data.test, samples=samples)
        report.save(path, force=True, images=False)
        logging.info("%s: scanned in %.0f s", model_dir.name, report.run["seconds"])
    return DetectionReport.load(path)


def flags(report: DetectionReport) -> dict[str, list[int]]:
    paper = report.outlier_test(statistic="l1").flagged
    effect = report.outlier_test(statistic="effect").flagged
    natural = report.outlier_test().flagged  # the relative test against the natural reference
    return {
        "l1": paper,
        "effect": effect,
        "natural": natural,
        "effect|natural": sorted(set(effect) | set(natural)),
        "effect&natural": sorted(set(effect) & set(natural)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=Path("runs/zoo"))
    ap.add_argument("--cache", type=Path, default=Path("runs/scans-natural"))
    ap.add_argument("--only", default="*")
    ap.add_argument("--samples", type=int, default=1000)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger(__name__).setLevel(logging.INFO)
    dirs = sorted(
        p
        for p in args.models.iterdir()
        if (p / "card.json").exists() and fnmatch.fnmatch(p.name, args.only) and "-reference-" not in p.name
    )
    head = f"{'model':40s} {'group':6s} {'planted':8s} " + " ".join(f"{m:>15s}" for m in METHODS)
    print(head + "   planted ratio  natural min\n" + "-" * (len(head) + 27))
    tally: dict[tuple[str, str], list[str]] = {}
    for d in dirs:
        bundle = nc.load_model_dir(d)
        card = bundle.card
        report = natural_scan(args.cache, d, args.samples)
        planted = sorted(card.targets)
        got = flags(report)
        ref = report.reference
        assert ref is not None
        ratios = {r.label: r.l1_norm / ref.l1_norms[r.label] for r in report.labels}
        med = statistics.median(ratios.values())
        rel = {k: v / med for k, v in ratios.items()}
        planted_rel = ",".join(f"{rel[k]:.2f}" for k in planted) or "-"
        natural_min = min((v for k, v in rel.items() if k not in planted), default=math.nan)
        g = group(bundle)
        cells = []
        for m in METHODS:
            o = outcome(got[m], planted)
            tally.setdefault((m, g), []).append(o)
            cells.append(f"{str(got[m]):>7s} {o[:7]:>7s}")
        print(
            f"{d.name:40s} {g:6s} {str(planted):8s} "
            + " ".join(cells)
            + f"   {planted_rel:>13s}  {natural_min:.2f}"
        )
    print()
    print(f"{'method':16s} {'exact (small)':>14s} {'exact (large)':>14s} {'false alarm':>12s}")
    for m in METHODS:
        row = []
        for g, good in (("small", "exact"), ("large", "exact"), ("clean", "false alarm")):
            outs = tally.get((m, g), [])
            row.append(f"{sum(o == good for o in outs)}/{len(outs)}")
        print(f"{m:16s} {row[0]:>14s} {row[1]:>14s} {row[2]:>12s}")
    print(json.dumps({"models": len(dirs)}))


if __name__ == "__main__":
    main()
