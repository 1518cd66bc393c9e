"""How fast a scan is, against the references it must match: the same models scanned in every mode.

    python benchmarks/scan_speed.py                                   # 10-label nets on the MNIST sample
    python benchmarks/scan_speed.py --archs mnist,bn-cnn,resnet --clean
    python benchmarks/scan_speed.py --zoo runs/zoo-signs --modes default,exhaustive   # the 43-label sign zoo

Modes (``ReverseSettings``):

* ``default``: today's default — steps of 2 × 32 images at a 98% attack threshold, bf16 where the
  CPU/GPU has it, channels-last, screening (with a floor measured on a sample from 30 labels on);
* ``previous``: the default before it — steps of 4 × 32 images, 99% over one step, screening with the
  assumed floor only;
* ``exhaustive``: the full schedule in fp32, steps of 8 × 32, every label to the end (the default before
  the fast schedule: the reference it must agree with);
* ``sequential``: the original code's schedule, one label at a time, steps of 31 × 32;
* ``loop``: a per-label loop in the style of the PyTorch toolkits: one label at a time, batches of 256,
  an "epoch" over the scan's images per step (4 batches of 256 for 1,000 images), at most 80 epochs,
  the original's λ schedule and early stop, fp32.

``MODE+name=value`` changes settings of a mode, to measure a candidate default against the others
(e.g. ``default+early_stop_patience=15``).

Without ``--zoo`` it trains a BadNets model (4×4 white square bottom-right, target 0, 10% poison) of
each architecture in ``--archs`` on ``--dataset`` (and with ``--clean`` a clean control of the same
recipe); with ``--zoo DIR`` it scans every model directory of a zoo. Each model's peak
forward+backward images/s is measured first, in fp32 and in the default's mode, at batches of 32-512;
"% peak" is the scan's images/s (set-up included) over the best of them.

Scan reports are cached under ``--cache`` per model and settings (the references take long; a report
cached under another mode name with the same settings is found); a cached one is marked ``*`` and its
seconds are from the run that made it (``--fresh`` re-runs everything).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import neuralcleanse as nc
from neuralcleanse.detection import DetectionReport, NeuralCleanse, ReverseSettings
from neuralcleanse.device import native_bf16

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peak_modes import step_rate  # noqa: E402

MODES = ("default", "previous", "exhaustive", "sequential", "loop")


def settings_for(mode: str, *, seed: int, samples: int) -> ReverseSettings:
    """A mode's settings; ``MODE+name=value+...`` changes settings of a mode (a candidate default)."""
    base, *changes = mode.split("+")
    settings = _base_settings(base, seed=seed, samples=samples)
    for change in changes:
        name, _, text = change.partition("=")
        if name not in {f.name for f in dataclasses.fields(ReverseSettings)}:
            raise SystemExit(f"{mode!r}: ReverseSettings has no setting {name!r}")
        settings = dataclasses.replace(settings, **{name: ast.literal_eval(text)})
    return settings


def _base_settings(mode: str, *, seed: int, samples: int) -> ReverseSettings:
    if mode == "default":
        return ReverseSettings(seed=seed)
    if mode == "previous":
        return ReverseSettings(seed=seed, batches_per_step=4, attack_threshold=0.99, screen_sample=0)
    if mode == "exhaustive":
        return ReverseSettings.exhaustive(seed=seed)
    if mode == "sequential":
        return ReverseSettings.original(seed=seed)
    if mode == "loop":
        return ReverseSettings.exhaustive(
            seed=seed,
            batch_size=256,
            batches_per_step=math.ceil(samples / 256),
            max_steps=80,
            parallel_labels=1,
        )
    raise SystemExit(f"unknown mode {mode!r}; use {', '.join(MODES)}")


@dataclass
class Subject:
    name: str
    bundle: nc.ModelBundle
    data: nc.DatasetSplits
    planted: list[int]


def trained(
    data: nc.DatasetSplits, arch: str, attack: nc.BadNets | None, args: argparse.Namespace
) -> Subject:
    kind = "badnets" if attack else "clean"
    name = f"{data.name}-{arch}-{kind}-e{args.epochs}-s{args.seed}"
    path = args.models / name
    if path.exists():
        bundle = nc.load_model_dir(path)
    else:
        recipe = nc.Recipe(
            dataset=data.name,
            arch=arch,
            training=nc.TrainSettings(epochs=args.epochs, seed=args.seed),
            attack=attack,
        )
        bundle = nc.train_recipe(recipe, data=data, device="cpu").save(path)
    return Subject(f"{arch}-{kind}", bundle, data, [0] if attack else [])


def add_subject_options(p: argparse.ArgumentParser) -> None:
    """The options :func:`subjects` reads: which models to train (or which zoo to read) and how to scan."""
    p.add_argument("--dataset", default="mnist-sample")
    p.add_argument("--archs", default="mnist,bn-cnn,resnet")
    p.add_argument("--clean", action="store_true", help="also a clean control of every architecture")
    p.add_argument("--zoo", type=Path, help="scan the model directories of this zoo instead of training")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scan-seed", type=int, default=123)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--models", type=Path, default=Path("runs/bench-models"))
    p.add_argument("--only", help="with --zoo: only these model directories (comma-separated names)")


def subjects(args: argparse.Namespace) -> list[Subject]:
    if args.zoo is None:
        data = nc.load_dataset(args.dataset)
        out = []
        for arch in args.archs.split(","):
            out.append(trained(data, arch, nc.BadNets(target=0), args))
            if args.clean:
                out.append(trained(data, arch, None, args))
        return out
    found = []
    datasets: dict[str, nc.DatasetSplits] = {}
    for card in sorted(args.zoo.glob("*/card.json")):
        if args.only and card.parent.name not in args.only.split(","):
            continue
        bundle = nc.load_model_dir(card.parent)
        name = bundle.card.dataset
        data = datasets.setdefault(name, nc.load_dataset(name))
        planted = sorted({b.target for b in bundle.card.backdoors})
        found.append(Subject(card.parent.name, bundle, data, planted))
    if not found:
        raise SystemExit(f"{args.zoo}: no model directories")
    return found


def peak(model: torch.nn.Module, shape: tuple[int, int, int], seconds: float) -> tuple[float, str]:
    """The best forward+backward images/s over batch sizes, in fp32 and in the default's fast mode."""
    fast = native_bf16(torch.device("cpu"))
    best, where = 0.0, ""
    for batch in (32, 64, 128, 256, 512):
        for bf16 in sorted({False, fast}):
            rate = step_rate(model, shape, batch=batch, bf16=bf16, channels_last=bf16, seconds=seconds)
            if rate > best:
                best, where = rate, f"{'bf16+cl' if bf16 else 'fp32'} @{batch}"
    return best, where


def effective(settings: ReverseSettings, labels: int) -> dict[str, object]:
    """The settings that decide a scan of ``labels`` labels: without the screening settings that do not
    apply to it (all of them without screening; the few-label or the many-label ones)."""
    d = settings.for_device("cpu").to_dict()
    many = settings.screen_sample and labels >= settings.screen_sample_from
    unused = (
        [k for k in d if k.startswith("screen_")]  # no screening: none of them
        if not settings.screening
        else ["screen_steps", "screen_shrink"]
        if many
        else ["screen_steps_many", "screen_sample", "screen_sample_from", "screen_margin", "screen_draws"]
    )
    for name in unused:
        d.pop(name)
    return d


def cached(folder: Path, settings: ReverseSettings, samples: int, labels: int) -> DetectionReport | None:
    """A report under ``folder`` scanned with the same effective settings and samples, whatever mode name
    it was cached under: a mode's meaning changes when the default does."""
    want = effective(settings, labels)
    for found in sorted(folder.glob(f"*-n{samples}/report.json")):
        stored = json.loads(found.read_text())["settings"]
        if effective(ReverseSettings.from_dict(stored), labels) == want:
            return DetectionReport.load(found.parent)
    return None


def scan(subject: Subject, mode: str, args: argparse.Namespace) -> tuple[DetectionReport, bool]:
    folder = args.cache / subject.bundle.card.weights_sha256[:12]
    settings = settings_for(mode, seed=args.scan_seed, samples=args.samples)
    report = None if args.fresh else cached(folder, settings, args.samples, subject.data.num_classes)
    if report is not None:
        return report, True
    digest = hashlib.sha256(json.dumps(settings.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    path = folder / f"{mode.split('+')[0]}-{digest}-s{args.scan_seed}-n{args.samples}"
    # the optimisation is what is timed: no transfer check's distillation (the default runs one on weak
    # verdicts of <= 20 classes, ``transfer_check="auto"``)
    detector = NeuralCleanse(subject.bundle.model, settings=settings, device="cpu", transfer_check=False)
    report = detector.scan(subject.data.test, samples=args.samples)
    report.save(path, force=True, images=False)
    return report, False


def flagged_norms(report: DetectionReport) -> str:
    return ",".join(f"{report.label(k).l1_norm:.1f}" for k in report.flagged) or "-"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_subject_options(p)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--peak-seconds", type=float, default=1.0)
    p.add_argument("--cache", type=Path, default=Path("runs/bench-scans"))
    p.add_argument("--fresh", action="store_true", help="ignore cached scan reports")
    args = p.parse_args()
    modes = args.modes.split(",")
    for mode in modes:
        settings_for(mode, seed=0, samples=args.samples)  # unknown modes fail before anything runs
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPUs {os.cpu_count()}, "
        f"bf16 native: {native_bf16(torch.device('cpu'))}, load average at start {os.getloadavg()[0]:.1f}"
    )
    header = (
        f"{'model':24s} {'mode':10s} {'time s':>8s} {'images':>9s} {'img/s':>6s} {'%peak':>5s} "
        f"{'screened':>8s} {'flagged':10s} {'L1 flagged':12s} {'median':>6s}  planted"
    )
    rows, ratios = [], []
    table: dict[str, tuple[list[int], dict[str, DetectionReport]]] = {}
    for subject in subjects(args):
        shape = subject.data.input_shape
        best, where = peak(subject.bundle.model, shape, args.peak_seconds)
        print(f"\n{subject.name}: peak {best:.0f} images/s ({where})", flush=True)
        reports: dict[str, DetectionReport] = {}
        for mode in modes:
            start = time.perf_counter()
            report, cached = scan(subject, mode, args)
            reports[mode] = report
            run = report.run
            row = (
                f"{subject.name:24s} {mode + ('*' if cached else ''):10s} {run['seconds']:8.1f} "
                f"{run['images_processed']:9d} {run['images_per_second']:6.0f} "
                f"{100 * run['images_per_second'] / best:4.0f}% {len(report.screened):8d} "
                f"{str(report.flagged):10s} {flagged_norms(report):12s} {report.median_l1:6.1f}  {subject.planted}"
            )
            rows.append(row)
            print(row, f"({time.perf_counter() - start:.0f} s)", flush=True)
        table[subject.name] = (subject.planted, reports)
        fast = reports.get("default")
        if fast is None:
            continue
        for mode, ref in reports.items():
            if mode == "default":
                continue
            same = ref.flagged == fast.flagged
            diffs = [
                abs(fast.label(k).l1_norm / ref.label(k).l1_norm - 1)
                for k in fast.flagged
                if k in ref.flagged
            ]
            ratios.append(
                f"{subject.name:24s} default vs {mode:10s}: {ref.run['seconds'] / fast.run['seconds']:5.1f}x faster, "
                f"{ref.run['images_processed'] / fast.run['images_processed']:4.1f}x fewer images, "
                f"{fast.run['images_per_second'] / ref.run['images_per_second']:4.2f}x the images/s; flags "
                f"{'SAME' if same else 'DIFFER'} ({fast.flagged} / {ref.flagged}), verdicts "
                f"{fast.verdict} / {ref.verdict}"
                + (f", flagged L1 within {100 * max(diffs):.0f}%" if diffs else "")
            )
    print(f"\n{header}\n{'-' * len(header)}")
    print("\n".join(rows))
    print()
    print("\n".join(ratios))
    if len(table) > 1:
        print()
        print_summary(table, modes)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


def print_summary(table: dict[str, tuple[list[int], dict[str, DetectionReport]]], modes: list[str]) -> None:
    """One line per model (each mode's flags and flagged norms), then per mode against the exhaustive
    schedule (or the last mode): models with the same flags, images, norm drift of the labels both flag,
    and the mean attack success of the reversed triggers (on the scan's images)."""
    ref = "exhaustive" if "exhaustive" in modes else modes[-1]
    names = {m: m if len(m) <= 16 else f"mode {i + 1}" for i, m in enumerate(modes)}
    for m in modes:
        if names[m] != m:
            print(f"{names[m]}: {m}")
    print(f"{'model':28s} {'planted':8s} " + " ".join(f"{names[m]:18s}" for m in modes))
    for name, (planted, reports) in table.items():
        cells = [f"{str(r.flagged)} {flagged_norms(r)}" for r in reports.values()]
        print(f"{name:28s} {str(planted):8s} " + " ".join(f"{c:18s}" for c in cells))
    print(
        f"\nagainst {ref}: {'mode':18s} {'same flags':>10s} {'images':>7s} {'norm drift':>16s} {'mean ASR':>8s}"
    )
    for m in modes:
        same, images, drift, asr = 0, [0, 0], [], []
        for _, reports in table.values():
            r, base = reports[m], reports[ref]
            same += r.flagged == base.flagged
            images[0] += base.run["images_processed"]
            images[1] += r.run["images_processed"]
            drift += [r.label(k).l1_norm / base.label(k).l1_norm - 1 for k in r.flagged if k in base.flagged]
            asr += [row.attack_success for row in r.labels]
        span = f"{100 * min(drift):+.0f}% to {100 * max(drift):+.0f}%" if drift else "-"
        print(
            f"{'':9s}{names[m]:18s} {same:4d}/{len(table):<5d} {images[0] / images[1]:6.2f}x {span:>16s} "
            f"{100 * sum(asr) / len(asr):7.1f}%"
        )


if __name__ == "__main__":
    main()
