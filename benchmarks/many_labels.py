"""Scan time against the number of labels: 20-, 50-, 100- and 200-label sign models of one recipe.

    python benchmarks/many_labels.py                  # the default schedule (an hour or more on 2 cores)
    python benchmarks/many_labels.py --exhaustive     # also the full schedule in fp32 (many hours)
    python benchmarks/many_labels.py --quick          # 20 and 50 labels, tiny: a check that it runs

For each label count N it builds the generated sign task with N classes (``traffic-signs-N``: the 43
GTSRB-like signs, then numbered signs), trains the paper's GTSRB network with a BadNets backdoor
(4×4 white square bottom-right, target 0, 10% poison), scans it with the default schedule (and with
``--exhaustive`` the full one, same seed), and prints seconds, images processed, the ratio to the
smallest N, how many labels screening stopped early (and how many of them entered the test below the
median), the flagged labels and the planted target.
Trained models are kept under ``--models`` and reused.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

import neuralcleanse as nc
from neuralcleanse.data.signs import load_traffic_signs
from neuralcleanse.detection import DetectionReport, NeuralCleanse, ReverseSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", type=int, nargs="+", default=[20, 50, 100, 200])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--train-per-class", type=int, default=150)
    ap.add_argument("--test-per-class", type=int, default=40)
    ap.add_argument("--samples", type=int, default=1000, help="clean images a scan uses")
    ap.add_argument("--max-steps", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--exhaustive", action="store_true", help="also scan with the full schedule in fp32")
    ap.add_argument("--models", type=Path, default=Path("runs/bench-models"))
    ap.add_argument(
        "--scans", type=Path, default=Path("runs/bench-many-labels"), help="finished scans, reused on a rerun"
    )
    ap.add_argument(
        "--quick", action="store_true", help="20 and 50 labels, 3 epochs, small sets, 25 short steps"
    )
    args = ap.parse_args()
    if args.quick:
        args.labels, args.epochs, args.train_per_class, args.test_per_class = [20, 50], 3, 60, 10
        args.samples, args.max_steps = 200, 25
    print(
        f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"CPUs allowed {len(os.sched_getaffinity(0))}; epochs {args.epochs}, {args.train_per_class}/"
        f"{args.test_per_class} images per class, scan samples {args.samples}, max steps {args.max_steps}"
    )
    header = (
        f"{'labels':>6} {'schedule':9} {'seconds':>8} {'images':>9} {'x first':>8} {'img x1st':>8} {'img/label':>9} "
        f"{'screened':>8} {'below med':>9} {'flagged':20} planted  L1 planted / median  verdict"
    )
    rows: list[str] = []
    first: dict[str, float] = {}
    first_images: dict[str, int] = {}
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
        path = args.models / f"{data.name}-gtsrb-badnets-e{args.epochs}-{args.train_per_class}pc-s{args.seed}"
        if path.exists():
            bundle = nc.load_model_dir(path)
        else:
            bundle = nc.train_recipe(recipe, data=data, device="cpu").save(path)
        schedules = {"default": ReverseSettings(seed=args.seed, max_steps=args.max_steps)}
        if args.exhaustive:
            schedules["exhaustive"] = ReverseSettings.exhaustive(seed=args.seed, max_steps=args.max_steps)
        for schedule, cfg in schedules.items():
            saved = args.scans / f"{path.name}-{schedule}-n{args.samples}-m{args.max_steps}"
            if (saved / "report.json").exists():
                rep = DetectionReport.load(saved)
                secs = float(rep.run["seconds"])
            else:
                start = time.perf_counter()
                rep = NeuralCleanse(bundle.model, settings=cfg).scan(data.test, samples=args.samples)
                secs = time.perf_counter() - start
                rep.save(saved, force=True, images=False)
            images = rep.run["images_processed"]
            first.setdefault(schedule, secs)
            first_images.setdefault(schedule, images)
            flagged = (
                str(rep.flagged) if len(rep.flagged) <= 6 else f"{rep.flagged[:6]}+{len(rep.flagged) - 6}"
            )
            below = sum(rep.label(k).l1_norm < rep.median_l1 for k in rep.screened)  # the value in the test
            rows.append(
                f"{n:6d} {schedule:9} {secs:8.1f} {images:9d} {secs / first[schedule]:8.2f} {images / first_images[schedule]:8.2f} {images / n:9.0f} "
                f"{len(rep.screened):8d} {below:9d} {flagged:20} 0        "
                f"{rep.label(0).l1_norm:7.1f} / {rep.median_l1:6.1f}    {rep.verdict}"
            )
            print(rows[-1], flush=True)
    print()
    print(header)
    print("-" * len(header))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
