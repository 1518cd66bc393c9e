"""The batched full schedule vs the sequential original, and the outlier statistics against references.

    python benchmarks/references.py                          # embedded MNIST sample
    python benchmarks/references.py --dataset fashion-mnist  # full Fashion-MNIST (Debian's package)

(Before the fast default this was ``scan_speed.py``; its "batched" mode is ``ReverseSettings.exhaustive()``,
the default of that time. ``scan_speed.py`` now compares the fast default with every reference.)

Trains a BadNets model (4×4 white square, bottom-right, target 0, 10% poison) and a clean model of the
same recipe, then scans each in the batched default mode and in the sequential reference mode (the
original code's schedule, one label at a time) and prints a table: time, images processed, images/s
against the model's measured peak forward+backward throughput, flagged labels, the anomaly index of
the target, and whether the two modes agree. "ceil" is the largest index the paper's L1 test could give
any label (median / MAD; below 2 the test cannot flag anything), and the last columns re-run the outlier
test on the same norms with the log statistic (``--statistic log``).

It also trains clean models of the same recipe with other seeds (``--reference-seeds``, default 1,2),
scans them, and re-runs the outlier test of every scan above against them (``--reference``: each
label's L1 norm divided by its norm in those trusted models, ``statistic="relative"``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import neuralcleanse as nc
from neuralcleanse.detection import NeuralCleanse, ReverseSettings


def throughput(model: torch.nn.Module, shape: tuple[int, int, int], classes: int) -> dict[int, float]:
    """Images/s of forward + backward to the input (weights frozen), per batch size."""
    model.eval().requires_grad_(False)
    rates = {}
    for bs in (32, 64, 128, 256, 512):
        x = torch.rand(bs, *shape)
        y = torch.randint(0, classes, (bs,))
        w = torch.zeros(shape, requires_grad=True)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < 1.5:
            loss = torch.nn.functional.cross_entropy(model(x + w), y)
            torch.autograd.grad(loss, [w])
            n += bs
        rates[bs] = n / (time.perf_counter() - start)
    return rates


def get_model(
    data: nc.DatasetSplits, args: argparse.Namespace, attack: nc.BadNets | None, seed: int | None = None
) -> nc.ModelBundle:
    seed = args.seed if seed is None else seed
    shift = f"-shift{args.shift}" if args.shift else ""
    name = f"{data.name}-{args.arch}-{'badnets' if attack else 'clean'}-e{args.epochs}{shift}-s{seed}"
    path = args.cache / name
    if path.exists():
        return nc.load_model_dir(path)
    recipe = nc.Recipe(
        dataset=data.name,
        arch=args.arch,
        training=nc.TrainSettings(epochs=args.epochs, shift=args.shift, seed=seed),
        attack=attack,
    )
    bundle = nc.train_recipe(recipe, data=data, device="cpu")
    return bundle.save(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist-sample")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--arch", default="mnist")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument(
        "--shift", type=int, default=0, help="training augmentation: random shifts of up to N pixels"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scan-seed", type=int, default=123)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--cache", type=Path, default=Path("runs/bench-models"))
    p.add_argument("--skip-sequential", action="store_true")
    p.add_argument(
        "--reference-seeds",
        default="1,2",
        help="seeds of the clean reference models (comma-separated; empty: no reference test)",
    )
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    data = nc.load_dataset(args.dataset, root=args.data_dir)
    print(
        f"dataset {data.name}: {len(data.train)} train / {len(data.test)} test, torch threads {torch.get_num_threads()}"
    )

    models = {
        "badnets(target 0)": get_model(data, args, nc.BadNets(target=0)),
        "clean": get_model(data, args, None),
    }
    for label, b in models.items():
        print(f"  {label:18s} clean acc {b.card.clean_accuracy:.4f}  ASR {b.card.attack_success}")
    rates = throughput(models["clean"].model, data.input_shape, data.num_classes)
    peak_bs = max(rates, key=rates.__getitem__)
    peak = rates[peak_bs]
    print(
        "forward+backward (input gradient) images/s by batch size: "
        + ", ".join(f"{bs}: {r:.0f}" for bs, r in rates.items())
    )
    print(f"peak {peak:.0f} images/s at batch {peak_bs}\n")

    modes = {"batched": ReverseSettings.exhaustive(seed=args.scan_seed)}
    if not args.skip_sequential:
        modes["sequential"] = ReverseSettings.original(seed=args.scan_seed)
    header = (
        f"{'model':18s} {'mode':10s} {'time s':>8s} {'images':>9s} {'img/s':>7s} {'% peak':>6s}  {'flagged':10s}"
        f" {'idx(0)':>6s} {'L1(0)':>6s} {'median':>6s} {'ceil':>5s} | {'log: flagged':12s} {'idx(0)':>6s}"
    )
    print(header)
    print("-" * len(header))
    results: dict[tuple[str, str], nc.DetectionReport] = {}
    for label, bundle in models.items():
        for mode, settings in modes.items():
            report = NeuralCleanse(bundle.model, settings=settings, device="cpu").scan(
                data.test, samples=args.samples
            )
            results[(label, mode)] = report
            run = report.run
            log = report.outlier_test(statistic="log")
            print(
                f"{label:18s} {mode:10s} {run['seconds']:8.1f} {run['images_processed']:9d} {run['images_per_second']:7.0f}"
                f" {100 * run['images_per_second'] / peak:5.0f}%  {str(report.flagged):10s}"
                f" {report.label(0).anomaly_index:6.2f} {report.label(0).l1_norm:6.1f} {report.median_l1:6.1f}"
                f" {report.ceiling:5.2f} | {str(log.flagged):12s} {log.anomaly_index[0]:6.2f}"
            )
    if not args.skip_sequential:
        print()
        for label in models:
            b, s = results[(label, "batched")], results[(label, "sequential")]
            ratio = s.run["seconds"] / b.run["seconds"]
            work = s.run["images_processed"] / b.run["images_processed"]
            agree = "agree" if b.flagged == s.flagged and b.verdict == s.verdict else "DISAGREE"
            log_agree = b.outlier_test(statistic="log").flagged == s.outlier_test(statistic="log").flagged
            print(
                f"{label:18s} batched is {ratio:.1f}x faster than sequential "
                f"({work:.1f}x fewer images, {b.run['images_per_second'] / s.run['images_per_second']:.2f}x the images/s); "
                f"verdicts {agree}: {b.verdict} / {s.verdict}; log test {'agrees' if log_agree else 'DISAGREES'}"
            )

    seeds = [int(v) for v in args.reference_seeds.split(",") if v.strip()]
    if seeds:
        print(
            f"\nreference: clean models of the same recipe, seeds {seeds}, scanned in the same mode (seed {args.scan_seed})"
        )
        references = {}
        for mode, settings in modes.items():
            refs = []
            for seed in seeds:
                ref_model = get_model(data, args, None, seed=seed)
                ref = NeuralCleanse(ref_model.model, settings=settings, device="cpu").scan(
                    data.test, samples=args.samples
                )
                refs.append(ref)
                print(
                    f"  clean seed {seed} ({mode}): clean acc {ref_model.card.clean_accuracy:.4f}; the paper's test "
                    f"flags {ref.flagged or 'nothing'}; L1 {[round(r.l1_norm, 1) for r in ref.labels]}"
                )
            references[mode] = nc.Reference.from_reports(refs)
        print(
            f"{'model':18s} {'mode':10s} {'paper: flagged':14s} {'idx(0)':>6s} | {'relative: flagged':17s} {'idx(0)':>6s}  verdict"
        )
        for (label, mode), report in results.items():
            rel = report.outlier_test(statistic="relative", reference=references[mode])
            truth = [0] if label.startswith("badnets") else []
            print(
                f"{label:18s} {mode:10s} {str(report.flagged):14s} {report.label(0).anomaly_index:6.2f} |"
                f" {str(rel.flagged):17s} {rel.anomaly_index[0]:6.2f}  "
                f"{'correct' if rel.flagged == truth else 'WRONG'} (paper's test: "
                f"{'correct' if report.flagged == truth else 'WRONG'})"
            )


if __name__ == "__main__":
    main()
