"""Scan time against the number of labels: 20-, 50-, 100- and 200-label sign models, full vs screened.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/many_labels.py            # the real run (hours)
    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/many_labels.py --quick    # 20 and 50 labels, tiny

For each label count N it builds the generated sign task with N classes (``traffic-signs-N``: the 43
GTSRB-like signs, then numbered signs), trains the paper's GTSRB network with a BadNets backdoor
(4×4 white square bottom-right, target 0, 10% poison), scans it with the full schedule and with
screening (same seed), and prints seconds, images processed, the ratio to the smallest N, the flagged
labels and the planted target.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import neuralcleanse as nc
from neuralcleanse.data.signs import load_traffic_signs
from neuralcleanse.detection import NeuralCleanse, ReverseSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", type=int, nargs="+", default=[20, 50, 100, 200])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--train-per-class", type=int, default=150)
    ap.add_argument("--test-per-class", type=int, default=40)
    ap.add_argument("--samples", type=int, default=1000, help="clean images a scan uses")
    ap.add_argument("--max-steps", type=int, default=1000)
    ap.add_argument("--batches-per-step", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--quick", action="store_true", help="20 and 50 labels, 3 epochs, small sets, 25 short steps"
    )
    args = ap.parse_args()
    if args.quick:
        args.labels, args.epochs, args.train_per_class, args.test_per_class = [20, 50], 3, 60, 10
        args.samples, args.max_steps, args.batches_per_step = 200, 25, 2
    print(
        f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"CPUs allowed {len(os.sched_getaffinity(0))}; epochs {args.epochs}, {args.train_per_class}/"
        f"{args.test_per_class} images per class, scan samples {args.samples}, max steps {args.max_steps} of "
        f"{args.batches_per_step} x 32 images"
    )
    header = f"{'labels':>6} {'schedule':9} {'seconds':>8} {'images':>9} {'x first':>8} {'screened':>8} {'flagged':20} planted"
    rows: list[str] = []
    first: dict[str, float] = {}
    for n in args.labels:
        data = load_traffic_signs(
            train_per_class=args.train_per_class, test_per_class=args.test_per_class, classes=n
        )
        recipe = nc.Recipe(
            dataset=data.name,
            arch="gtsrb",
            training=nc.TrainSettings(epochs=args.epochs, seed=args.seed),
            attack=nc.BadNets(target=0, poison_rate=0.1),
        )
        bundle = nc.train_recipe(recipe, data=data, device="cpu")
        for schedule in ("full", "screened"):
            cfg = ReverseSettings(
                seed=args.seed,
                max_steps=args.max_steps,
                batches_per_step=args.batches_per_step,
                screening=schedule == "screened",
            )
            start = time.perf_counter()
            rep = NeuralCleanse(bundle.model, settings=cfg).scan(data.test, samples=args.samples)
            secs = time.perf_counter() - start
            first.setdefault(schedule, secs)
            flagged = (
                str(rep.flagged) if len(rep.flagged) <= 6 else f"{rep.flagged[:6]}+{len(rep.flagged) - 6}"
            )
            rows.append(
                f"{n:6d} {schedule:9} {secs:8.1f} {rep.run['images_processed']:9d} "
                f"{secs / first[schedule]:8.2f} {len(rep.screened):8d} {flagged:20} 0"
            )
            print(rows[-1], flush=True)
    print()
    print(header)
    print("-" * len(header))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
