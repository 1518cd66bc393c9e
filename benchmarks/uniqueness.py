"""Is a label's smallest trigger one thing or many? Its masks from several random starts, compared.

    python benchmarks/uniqueness.py --out runs/fidelity                   # every scan of fidelity.py --no-self on disk
    python benchmarks/uniqueness.py --out runs/fidelity --only 'fmnist-*' --table

A planted trigger is one particular pattern at one particular place: every random start of the
optimisation that finds a small trigger for its target label finds that one, so their masks overlap. A
natural shortcut of the task (Fashion-MNIST's bag: a handle-like stroke in a corner, an outline) can be
drawn in many places and ways that cost about the same, and different starts find different ones. This
probe runs, for the planted labels and every label at most ``--ratio`` times the scan's median norm (and
the cheapest label in any case), the scan's own extra starts 2 and 3 (``--starts 3``'s seeds, every label
to the end, no screening), and prints the three masks' pairwise overlap (the mass two masks share,
``sum(min(a, b))``, over the smaller mask's mass) and the three norms.

Results are cached per model in ``OUT/uniqueness/NAME.json``; ``--table`` only prints what is cached.
"""

from __future__ import annotations

import argparse
import fnmatch
import itertools
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

import neuralcleanse as nc
from neuralcleanse.detection import DetectionReport, NeuralCleanse, ReverseSettings
from neuralcleanse.detection.starts import start_seed


def overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """The mass two masks share over the smaller mask's mass (1: one lies inside the other)."""
    small = float(torch.minimum(a.sum(), b.sum()))
    return float(torch.minimum(a, b).sum()) / small if small > 0 else 0.0


def probe(out: Path, name: str, *, ratio: float, starts: int, scan_seed: int, samples: int) -> dict:
    report = DetectionReport.load(out / "scans-plain" / name)
    bundle = nc.load_model_dir(out / "models" / name)
    data = nc.load_dataset(bundle.card.dataset)
    planted = sorted({b.target for b in bundle.card.backdoors})
    median = report.median_l1
    ranked = sorted((r for r in report.labels if r.reached), key=lambda r: r.l1_norm)
    labels = sorted(
        set(planted) | {r.label for r in ranked if r.l1_norm <= ratio * median} | {ranked[0].label}
    )
    masks = {k: [report.triggers[k].mask] for k in labels}
    norms = {k: [report.label(k).l1_norm] for k in labels}
    t = time.perf_counter()
    for s in range(2, starts + 1):
        again = ReverseSettings(seed=start_seed(scan_seed, s), screening=False)
        extra = NeuralCleanse(bundle.model, settings=again).scan(
            data.test, samples=samples, scan_labels=labels
        )
        for k in labels:
            masks[k].append(extra.triggers[k].mask)
            norms[k].append(extra.label(k).l1_norm)
    np.savez_compressed(
        out / "uniqueness" / f"{name}.npz",
        **{f"{k}_{i}": m.numpy() for k in labels for i, m in enumerate(masks[k])},
    )
    rows = []
    for k in labels:
        pairs = [overlap(a, b) for a, b in itertools.combinations(masks[k], 2)]
        rows.append(
            {
                "label": k,
                "kind": "planted" if k in planted else "natural",
                "to_median": report.label(k).l1_norm / median,
                "norms": norms[k],
                "overlaps": pairs,
            }
        )
    group = (
        "clean"
        if not planted
        else ("source" if any(b.source_labels for b in bundle.card.backdoors) else "infected")
    )
    return {
        "model": name,
        "group": group,
        "planted": planted,
        "seconds": time.perf_counter() - t,
        "labels": rows,
    }


def table(results: list[dict], *, band: float) -> str:
    lines = [
        f"{'model':42} {'label':>5} {'kind':8} {'/median':>7} {'norms':>20} {'overlaps':>16} {'median':>6}"
    ]
    for res in results:
        for r in res["labels"]:
            norms = " ".join(f"{n:6.1f}" for n in r["norms"])
            ovs = " ".join(f"{o:.2f}" for o in r["overlaps"])
            lines.append(
                f"{res['model']:42} {r['label']:5d} {r['kind']:8} {r['to_median']:7.2f} {norms:>20} {ovs:>16} "
                f"{float(np.median(r['overlaps'])):6.2f}"
            )
    lines.append("")
    lines.append(f"median pairwise overlap of the labels at most {band:g} of the median norm:")
    for kind in ("planted", "natural"):
        vals = sorted(
            float(np.median(r["overlaps"]))
            for res in results
            for r in res["labels"]
            if r["kind"] == kind
            and r["to_median"] <= band
            and (kind == "natural" or res["group"] != "source")
        )
        if vals:
            lines.append(
                f"  {kind:8} {len(vals):3d} labels  min {vals[0]:.2f}  median {np.median(vals):.2f}  max {vals[-1]:.2f}"
                f"  ({', '.join(f'{v:.2f}' for v in vals[:12])}{' ...' if len(vals) > 12 else ''})"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/fidelity"))
    ap.add_argument("--only", default="*", help="a glob over the scans' names")
    ap.add_argument("--ratio", type=float, default=0.45, help="probe labels up to this ratio to the median")
    ap.add_argument("--starts", type=int, default=3)
    ap.add_argument("--scan-seed", type=int, default=123)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--table", action="store_true", help="only print what is cached")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("neuralcleanse").setLevel(logging.WARNING)
    cache = args.out / "uniqueness"
    cache.mkdir(parents=True, exist_ok=True)
    results = []
    for scan in sorted((args.out / "scans-plain").iterdir()):
        name = scan.name
        if not fnmatch.fnmatch(name, args.only):
            continue
        path = cache / f"{name}.json"
        if not path.exists():
            if args.table or not (scan / "report.json").exists():
                continue
            res = probe(
                args.out,
                name,
                ratio=args.ratio,
                starts=args.starts,
                scan_seed=args.scan_seed,
                samples=args.samples,
            )
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(res, indent=1))
            tmp.replace(path)
            logging.info("%s: %.0f s", name, res["seconds"])
        results.append(json.loads(path.read_text()))
    print(table(results, band=0.3))


if __name__ == "__main__":
    main()
