"""Full vs screened schedule on the same models: same flags? how much work saved?

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/screening.py               # embedded MNIST sample
    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/screening.py --dataset fashion-mnist

Trains a BadNets model (4×4 white square bottom-right, target 0, 10% poison) and a clean model of the
same recipe (the test suite's recipe: ``--epochs`` 4, batch 64, seed 0), scans each with the full
schedule (``ReverseSettings()``) and with screening (``ReverseSettings(screening=True)``), same scan
seed, and prints flags, the norms of the flagged labels, the screened labels with their norm ranges,
images processed, seconds and the ratios.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import neuralcleanse as nc
from neuralcleanse.detection import NeuralCleanse, ReverseSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist-sample")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0, help="scan seed")
    ap.add_argument("--samples", type=int, default=1000)
    args = ap.parse_args()
    data = nc.load_dataset(args.dataset)
    print(
        f"dataset {data.name}, torch threads {torch.get_num_threads()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"CPUs allowed {len(os.sched_getaffinity(0))}"
    )
    training = nc.TrainSettings(epochs=args.epochs, batch_size=64, seed=0)
    models = {
        "badnets(0)": nc.Recipe(
            dataset=data.name, training=training, attack=nc.BadNets(target=0, poison_rate=0.1)
        ),
        "clean": nc.Recipe(dataset=data.name, training=training),
    }
    header = f"{'model':11} {'schedule':9} {'flagged':8} {'L1 flagged':>11} {'median':>7} {'screened (lower-upper)':38} {'images':>7} {'s':>6}"
    rows, ratios = [], []
    for name, recipe in models.items():
        bundle = nc.train_recipe(recipe, data=data, device="cpu")
        out = {}
        for schedule, cfg in (
            ("full", ReverseSettings(seed=args.seed)),
            ("screened", ReverseSettings(seed=args.seed, screening=True)),
        ):
            start = time.perf_counter()
            rep = NeuralCleanse(bundle.model, settings=cfg).scan(data.test, samples=args.samples)
            secs = time.perf_counter() - start
            out[schedule] = (rep, secs)
            norms = ",".join(f"{rep.label(k).l1_norm:.1f}" for k in rep.flagged) or "-"
            scr = " ".join(f"{k}:{lo:.0f}-{hi:.0f}" for k, (lo, hi) in rep.screened.items()) or "-"
            rows.append(
                f"{name:11} {schedule:9} {str(rep.flagged):8} {norms:>11} {rep.median_l1:7.1f} {scr:38} "
                f"{rep.run['images_processed']:7d} {secs:6.1f}"
            )
        (full, t_full), (fast, t_fast) = out["full"], out["screened"]
        same = full.flagged == fast.flagged
        worst = max(
            (abs(fast.label(k).l1_norm / full.label(k).l1_norm - 1) for k in full.flagged if same),
            default=0.0,
        )
        ratios.append(
            f"{name:11} screened/full: time {t_fast / t_full:.2f}, images "
            f"{fast.run['images_processed'] / full.run['images_processed']:.2f}; flags "
            f"{'identical' if same else 'DIFFER'}; flagged norms within {worst:.1%}; verdicts "
            f"{full.verdict} / {fast.verdict}"
        )
    print(header)
    print("-" * len(header))
    print("\n".join(rows))
    print()
    print("\n".join(ratios))


if __name__ == "__main__":
    main()
