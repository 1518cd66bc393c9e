"""Is the planted trigger cheaper than the natural labels at all? The paper's premise, per model.

Neural Cleanse can only single out a planted label if its trigger needs much less change than the
natural labels do. For every infected model with a saved scan, this prints the planted trigger's own L1
norm (from the model card: what the attack stamped) and the norm the scan found for the target label,
each over the scan's median norm, and whether the default verdict (`effect`) and the paper's test named
the label. A planted trigger at or above the median is one the scan can only find as a smaller
sub-trigger, if at all.

    python benchmarks/premise.py --pair runs/fidelity/models:runs/fidelity/scans-plain \\
        --pair runs/zoo:runs/scans-natural
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import neuralcleanse as nc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pair", action="append", required=True, help="MODELS_DIR:SCANS_DIR (same names)")
    args = parser.parse_args()
    print(f"{'model':40s} {'trigger':40s} target real/med found/med effect paper")
    for pair in args.pair:
        models, scans = (Path(p) for p in pair.split(":"))
        for scan_dir in sorted(p for p in scans.iterdir() if (p / "report.json").is_file()):
            card = json.loads((models / scan_dir.name / "card.json").read_text())
            report = nc.DetectionReport.load(scan_dir)
            median = statistics.median(report.l1_norms.values())
            effect = report.outlier_test(statistic="effect").flagged
            paper = report.outlier_test(statistic="l1").flagged
            for b in card.get("backdoors", []):
                if b.get("source_labels"):
                    continue  # source-specific: the norm over all sources is not its trigger's
                k = int(b["target"])
                print(f"{scan_dir.name:40s} {b['spec'][:40]:40s} {k:6d} {b['l1_norm'] / median:8.2f} "
                      f"{report.l1_norms[k] / median:9.2f} {'yes' if k in effect else 'no':>6} "
                      f"{'yes' if k in paper else 'no':>5}")  # fmt: skip


if __name__ == "__main__":
    main()
