"""Can a reversed trigger's shape, or its distance to the next label, tell a planted trigger from a natural
shortcut where the norms cannot? Replayed on the fidelity benchmark's scans.

    python benchmarks/trigger_shape.py --out runs/fidelity

The default verdict (``effect``) misses planted triggers whose reversed norm is 0.3-0.6 of the median and
would false-alarm on natural shortcuts (Fashion-MNIST's bag) if its line were moved there. This script
takes every label of every benchmark scan that the log test flags (index above 2) at no more than 0.6 of
the median, and prints for each, planted or natural:

* ``ratio``: its L1 norm over the scan's median; ``index``: its log-test anomaly index;
* ``window``: the share of its mask's mass inside the best square window of 35% of the image side
  (``neuralcleanse.detection.shape.window_share``: a patch trigger concentrates there; an outline or a
  texture does not);
* ``spread``: the mass-weighted distance of the mask from its centre of mass, over the image side;
* ``gap``: its norm over the next-larger label's (how isolated it sits at the bottom).

Then how many planted and natural labels of the 0.3-0.6 band each feature would separate at its best
single threshold, and the exact detections and false alarms of the default's rule (a compact trigger may
be flagged up to a larger fraction of the median) over a grid of that fraction and the window share, on
seed 0 and on seeds 1-2. Nothing is scanned: the masks are the scans' saved triggers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from neuralcleanse.detection import mad_outlier_test
from neuralcleanse.detection.shape import window_share

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity_references import load  # noqa: E402

FEATURES = ("window", "spread", "gap")


def spread(mask: np.ndarray) -> float:
    """The mass-weighted root-mean-square distance from the mask's centre of mass, over the image height."""
    total = float(mask.sum())
    if total <= 0:
        return 0.0
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
    cy, cx = (mask * yy).sum() / total, (mask * xx).sum() / total
    return float(np.sqrt((mask * ((yy - cy) ** 2 + (xx - cx) ** 2)).sum() / total)) / mask.shape[0]


def candidates(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The labels of one scan that the log test flags at no more than 0.6 of the median, with features."""
    rep = row["report"]
    labels = [r.label for r in rep.labels]
    norms = {r.label: r.l1_norm for r in rep.labels}
    res = mad_outlier_test([norms[k] for k in labels], names=labels, statistic="log")
    median = float(np.median(list(norms.values())))
    out = []
    for k in res.flagged:
        if norms[k] > 0.6 * median or k not in rep.triggers:
            continue
        mask = np.asarray(rep.triggers[k].mask, dtype=np.float64).reshape(rep.triggers[k].mask.shape[-2:])
        larger = sorted(v for j, v in norms.items() if j != k and v >= norms[k])
        out.append(
            {
                "model": row["name"],
                "label": k,
                "planted": k in row["planted"],
                "ratio": norms[k] / median,
                "index": res.anomaly_index[labels.index(k)],
                "window": window_share(mask),
                "spread": spread(mask),
                "gap": norms[k] / larger[0] if larger else 0.0,
            }
        )
    return out


def best_split(planted: list[float], natural: list[float]) -> tuple[float, int, int]:
    """The threshold on one feature that separates most labels (planted on one side, natural on the
    other, either orientation): (threshold, planted on the planted side, natural on the planted side)."""
    best = (np.nan, 0, len(natural), -1)
    for t in sorted({*planted, *natural}):
        for sign in (1, -1):
            p = sum(sign * v <= sign * t for v in planted)
            n = sum(sign * v <= sign * t for v in natural)
            if p - n > best[3]:
                best = (t, p, n, p - n)
    return best[0], best[1], best[2]


def rule_table(rows: list[dict[str, Any]]) -> list[str]:
    """Exact detections of small triggers and false alarms of the rule "log index > 2 and at most 0.3 of
    the median, or at most R of it with a window share of at least W", for a grid of R and W, on seed 0
    (where the default's R and W were chosen) and on seeds 1-2 (out of sample)."""
    found = {row["name"]: {c["label"]: (c["ratio"], c["window"]) for c in candidates(row)} for row in rows}

    def score(ratio: float, share: float, seeds: tuple[int, ...]) -> str:
        exact = alarms = small = clean = 0
        for row in rows:
            if row["seed"] not in seeds or row["group"] not in ("small", "clean"):
                continue
            flagged = sorted(
                k for k, (r, w) in found[row["name"]].items() if r <= 0.3 or (r <= ratio and w >= share)
            )
            if row["group"] == "clean":
                clean, alarms = clean + 1, alarms + bool(flagged)
            else:
                small, exact = small + 1, exact + (flagged == row["planted"])
        return f"{exact:3d}/{small:<3d} {alarms}/{clean}"

    lines = ["", "exact (small triggers) and false alarms (clean models): seed 0 | seeds 1-2"]
    lines.append(f"  {'R':>5} {'W':>5}  {'seed 0':>12}  {'seeds 1-2':>12}")
    lines.append(
        f"  {'0.3':>5} {'-':>5}  {score(0.3, 2.0, (0,)):>12}  {score(0.3, 2.0, (1, 2)):>12}   (log<0.3)"
    )
    for ratio in (0.4, 0.45, 0.5):
        for share in (0.5, 0.55, 0.6, 0.65, 0.7):
            lines.append(
                f"  {ratio:5.2f} {share:5.2f}  {score(ratio, share, (0,)):>12}  {score(ratio, share, (1, 2)):>12}"
            )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/fidelity"))
    args = ap.parse_args()
    scans = load(args.out)
    if not scans:
        ap.error(
            f"no scans with their models under {args.out} (run benchmarks/fidelity.py --out {args.out} first)"
        )
    rows = [c for row in scans for c in candidates(row)]
    print(
        f"{'model':42} {'label':>5} {'kind':8} {'ratio':>6} {'index':>6} {'window':>7} {'spread':>7} {'gap':>6}"
    )
    for c in sorted(rows, key=lambda c: (not c["planted"], c["ratio"])):
        print(
            f"{c['model']:42} {c['label']:5d} {'planted' if c['planted'] else 'natural':8} {c['ratio']:6.2f} "
            f"{c['index']:6.1f} {c['window']:7.2f} {c['spread']:7.2f} {c['gap']:6.2f}"
        )
    band = [c for c in rows if 0.3 <= c["ratio"] <= 0.6]
    planted = [c for c in band if c["planted"]]
    natural = [c for c in band if not c["planted"]]
    print(f"\nthe 0.3-0.6 band: {len(planted)} planted labels, {len(natural)} natural ones")
    for f in FEATURES:
        t, p, n = best_split([c[f] for c in planted], [c[f] for c in natural])
        print(
            f"  {f:7} best single threshold {t:.2f}: {p} of {len(planted)} planted, {n} of {len(natural)} natural"
        )
    print("\n".join(rule_table(scans)))


if __name__ == "__main__":
    main()
