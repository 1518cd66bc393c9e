"""When can a label stop? The early-stop rule replayed on full trajectories.

    python benchmarks/stopping.py                                  # 10-label nets on the MNIST sample
    python benchmarks/stopping.py --zoo runs/zoo-signs --max-steps 300

A label's trajectory (its masks, patterns, λ and attack success step by step) depends only on
``(seed, label, step)`` and the schedule; the early-stop rule only decides where the trajectory is cut.
So one scan per model with early stopping off (``early_stop=False``, no screening, ``--max-steps``
steps per label, the default's step length and precision) contains the result of every early-stop rule:
a rule's norm for a label is the smallest step-mean L1 among the steps that reached the attack threshold
up to the step where the rule stops it, and its cost is the number of steps until then.

For each rule (``patience`` steps without an improvement of more than ``min_gain`` of the best norm,
after λ has moved up and down) this prints, over all models: the images spent relative to the default
rule (patience 25, any improvement counts), the flags of the paper's test and of the log statistic
compared with the default rule's, and the largest change of a flagged label's norm. It is a study of the
default; the long scans are cached under ``--cache``.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from neuralcleanse.detection import DetectionReport, NeuralCleanse, ReverseSettings
from neuralcleanse.detection.outlier import mad_outlier_test

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scan_speed import Subject, subjects  # noqa: E402

DEFAULT_RULE = (25, 0.0)
RULES = [
    DEFAULT_RULE,
    (20, 0.0),
    (15, 0.0),
    (10, 0.0),
    (25, 0.01),
    (15, 0.01),
    (10, 0.01),
    (15, 0.02),
    (10, 0.02),
]


@dataclass(frozen=True)
class Replay:
    norm: float  # NaN: never reached the attack threshold
    steps: int


def replay(history: list[list[float]], *, patience: int, min_gain: float, cfg: ReverseSettings) -> Replay:
    """Where the rule stops a trajectory recorded without early stopping (``history`` rows are
    ``[step, cost after the step, attack success, step-mean L1, loss]``), mirroring the engine's
    bookkeeping: best norm, early-stop counter, and the up/down flags read from the cost changes."""
    best, early_best, counter = math.inf, math.inf, 0
    up = down = False
    previous_cost = 0.0
    for step, cost, asr, reg, _ in history:
        if asr >= cfg.attack_threshold and reg < best:
            best = reg
        if best < math.inf:
            counter = counter + 1 if best >= (1 - min_gain) * early_best else 0
        early_best = min(best, early_best)
        if up and down and counter >= patience:
            return Replay(best if best < math.inf else math.nan, int(step))
        if previous_cost == 0 and cost > 0:
            up = down = False  # λ set for the first time: the flags start afresh
        elif cost > previous_cost > 0:
            up = True
        elif 0 < cost < previous_cost:
            down = True
        previous_cost = cost
    return Replay(best if best < math.inf else math.nan, int(history[-1][0]))


def long_scan(subject: Subject, args: argparse.Namespace) -> DetectionReport:
    path = args.cache / subject.bundle.card.weights_sha256[:12] / f"long{args.max_steps}-s{args.scan_seed}"
    if path.exists():
        return DetectionReport.load(path)
    settings = ReverseSettings(
        seed=args.scan_seed, early_stop=False, screening=False, max_steps=args.max_steps
    )
    report = NeuralCleanse(subject.bundle.model, settings=settings, device="cpu").scan(
        subject.data.test, samples=args.samples
    )
    report.save(path, force=True, images=False)
    return report


def judge(norms: list[float], labels: list[int], statistic: str) -> list[int]:
    finite = [v if math.isfinite(v) else math.nan for v in norms]
    eligible = [math.isfinite(v) for v in norms]
    return sorted(mad_outlier_test(finite, eligible=eligible, names=labels, statistic=statistic).flagged)  # type: ignore[arg-type]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist-sample")
    p.add_argument("--archs", default="mnist,bn-cnn,resnet")
    p.add_argument("--clean", action="store_true")
    p.add_argument("--zoo", type=Path)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scan-seed", type=int, default=123)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--max-steps", type=int, default=400)
    p.add_argument("--models", type=Path, default=Path("runs/bench-models"))
    p.add_argument("--cache", type=Path, default=Path("runs/stopping"))
    args = p.parse_args()

    cfg = ReverseSettings()
    per_step = cfg.batch_size * cfg.batches_per_step
    rows: dict[tuple[int, float], list[tuple[str, int, list[int], list[int], float, int]]] = {
        r: [] for r in RULES
    }
    for subject in subjects(args):
        report = long_scan(subject, args)
        labels = [r.label for r in report.labels]
        base: dict[str, list[int]] = {}
        base_norms: dict[int, float] = {}
        for rule in RULES:
            out = [replay(r.history, patience=rule[0], min_gain=rule[1], cfg=cfg) for r in report.labels]
            norms = [o.norm for o in out]
            flags = {st: judge(norms, labels, st) for st in ("l1", "log")}
            if rule == DEFAULT_RULE:
                base, base_norms = flags, dict(zip(labels, norms, strict=True))
            flagged = sorted(set(flags["l1"]) | set(flags["log"]) | set(base["l1"]) | set(base["log"]))
            drift = max(
                (abs(n / base_norms[k] - 1) for k, n in zip(labels, norms, strict=True) if k in flagged),
                default=0.0,
            )
            capped = sum(o.steps >= args.max_steps for o in out)
            rows[rule].append(
                (subject.name, sum(o.steps for o in out) * per_step, flags["l1"], flags["log"], drift, capped)
            )
    print(
        f"{'rule':<22} {'images':>10} {'vs default':>10}  {'l1 flags same':>13}  {'log flags same':>14}  {'max drift':>9}  capped"
    )
    total_base = sum(r[1] for r in rows[DEFAULT_RULE])
    for rule, per_model in rows.items():
        images = sum(r[1] for r in per_model)
        same_l1 = sum(r[2] == b[2] for r, b in zip(per_model, rows[DEFAULT_RULE], strict=True))
        same_log = sum(r[3] == b[3] for r, b in zip(per_model, rows[DEFAULT_RULE], strict=True))
        drift = max(r[4] for r in per_model)
        name = f"patience {rule[0]}, gain >{rule[1]:.0%}"
        print(
            f"{name:<22} {images:>10} {images / total_base:>9.2f}x  {same_l1:>6}/{len(per_model):<6}  "
            f"{same_log:>7}/{len(per_model):<6}  {drift:>8.1%}  {sum(r[5] for r in per_model)}"
        )
    print("\nper model (default rule: flags l1 / log; images):")
    for r in rows[DEFAULT_RULE]:
        print(f"  {r[0]:<28} {str(r[2]):<10} {str(r[3]):<10} {r[1]}")
    for rule in RULES[1:]:
        for r, b in zip(rows[rule], rows[DEFAULT_RULE], strict=True):
            if r[2] != b[2] or r[3] != b[3]:
                print(f"  differs: {r[0]} with patience {rule[0]}, gain >{rule[1]:.0%}: {r[2]} / {r[3]}")


if __name__ == "__main__":
    main()
