"""Do per-source triggers tell a planted backdoor from a natural shortcut? A measurement for issue 17.

    python benchmarks/symmetry.py --zoo runs/zoo --only fmnist-clean,fmnist-badnets,mnist-clean
    python benchmarks/symmetry.py --zoo runs/zoo --candidates 3 --per-class 100

For every model it takes the default scan (cached like ``scan_speed.py``'s, under ``--cache``) and its
``--candidates`` labels with the smallest triggers, and reverse-engineers two more families of triggers
with the default schedule (no screening), each on ``--per-class`` test images of one class:

* *into* the candidate t from every other class s (``s→t``, images of class s only): a planted trigger
  works from every class, so every source needs about the same small trigger; a natural shortcut is
  easy from a few similar classes only (the paper's "universality" of a backdoor);
* *out of* the candidate t into every other label (``t→s``, images of class t only): K-Arm's symmetric
  check (Shen et al., ICML 2021): two similar classes are easy to reach from each other, a planted
  target is easy to reach but not easy to leave.

It prints per candidate the scan's norm, the median of the ``s→t`` norms and of the ``t→s`` norms and
their ratio (*asymmetry*: out / in), and then, per asymmetry threshold, how many planted labels and how
many natural candidates (candidates of a clean model, or not planted in an infected one) are above it.
The raw norms are written to ``--out`` as JSON. It measures a signal; nothing in the library uses it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from neuralcleanse.detection import ReverseSettings
from neuralcleanse.detection.engine import reverse_engineer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scan_speed import Subject, add_subject_options, scan, subjects  # noqa: E402

THRESHOLDS = (1.5, 2.0, 2.5, 3.0, 3.5, 4.0)


def norms_from(subject: Subject, labels: list[int], classes: list[int], per_class: int, seed: int) -> dict:
    """``{(image class, label): L1 norm}`` of the smallest trigger sending images of each class in
    ``classes`` to each of ``labels`` (NaN: the attack threshold was never reached)."""
    cfg = ReverseSettings(seed=seed, screening=False)
    out: dict[tuple[int, int], float] = {}
    for c in classes:
        images = subject.data.test.sample(per_class, seed=seed, classes=[c]).images
        wanted = [k for k in labels if k != c]
        for state in reverse_engineer(subject.bundle.model, images, wanted, cfg):
            mask = state.best_mask
            out[(c, state.label)] = float(mask.sum()) if mask is not None else math.nan
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_subject_options(p)
    p.add_argument("--candidates", type=int, default=3, help="labels with the smallest triggers to check")
    p.add_argument("--per-class", type=int, default=100, help="test images of each class per trigger")
    p.add_argument("--cache", type=Path, default=Path("runs/bench-scans-zoo"))
    p.add_argument("--fresh", action="store_true", help="ignore cached scan reports")
    p.add_argument("--out", type=Path, default=Path("runs/symmetry.json"))
    args = p.parse_args()
    saved = json.loads(args.out.read_text()) if args.out.exists() else {}
    planted_asym: list[float] = []
    natural_asym: list[float] = []
    for subject in subjects(args):
        report, _ = scan(subject, "default", args)
        reached = {r.label: r.l1_norm for r in report.labels if r.reached}
        cands = sorted(reached, key=reached.__getitem__)[: args.candidates]
        n = subject.data.num_classes
        key = f"{subject.name}|{args.per_class}|{args.scan_seed}|{','.join(map(str, cands))}"
        if key not in saved:
            start = time.perf_counter()
            into = norms_from(subject, cands, list(range(n)), args.per_class, args.scan_seed)
            out_of = {(t, s): v for t in cands for (_, s), v in _out_of(subject, t, n, args).items()}
            saved[key] = {
                "into": {f"{s},{t}": v for (s, t), v in into.items()},
                "out_of": {f"{t},{s}": v for (t, s), v in out_of.items()},
                "seconds": round(time.perf_counter() - start, 1),
            }
            args.out.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.out.with_suffix(".tmp")
            tmp.write_text(json.dumps(saved, indent=1))
            tmp.replace(args.out)
        rec = saved[key]
        print(
            f"\n{subject.name}: planted {subject.planted}, flagged {report.flagged} (paper's test), "
            f"median {report.median_l1:.1f}; {rec['seconds']:.0f} s for the per-class triggers"
        )
        print(
            f"  {'label':>5} {'scan L1':>8} {'in: min':>8} {'median':>7} {'out: median':>12} {'asymmetry':>10}"
        )
        for t in cands:
            into_t = np.array([rec["into"][f"{s},{t}"] for s in range(n) if s != t])
            out_t = np.array([rec["out_of"][f"{t},{s}"] for s in range(n) if s != t])
            asym = float(np.nanmedian(out_t) / np.nanmedian(into_t))
            (planted_asym if t in subject.planted else natural_asym).append(asym)
            mark = "planted" if t in subject.planted else ""
            print(
                f"  {t:5d} {reached[t]:8.1f} {np.nanmin(into_t):8.1f} {np.nanmedian(into_t):7.1f} "
                f"{np.nanmedian(out_t):12.1f} {asym:10.2f}  {mark}"
            )
    print(
        f"\nasymmetry above a threshold: {len(planted_asym)} planted labels, {len(natural_asym)} natural candidates"
    )
    print(f"{'threshold':>9} {'planted':>8} {'natural':>8}")
    for th in THRESHOLDS:
        print(
            f"{th:9.1f} {sum(a > th for a in planted_asym):5d}/{len(planted_asym):<2d} "
            f"{sum(a > th for a in natural_asym):5d}/{len(natural_asym):<2d}"
        )


def _out_of(subject: Subject, t: int, n: int, args: argparse.Namespace) -> dict[tuple[int, int], float]:
    return norms_from(subject, list(range(n)), [t], args.per_class, args.scan_seed)


if __name__ == "__main__":
    main()
