"""When can a label stop? The early-stop rule replayed on full trajectories.

    python benchmarks/stopping.py                                  # 10-label nets on the MNIST sample
    python benchmarks/stopping.py --zoo runs/zoo-signs --max-steps 300

A label's trajectory (its masks, patterns, λ and attack success step by step) depends only on
``(seed, label, step)`` and the schedule; the early-stop rule only decides where the trajectory is cut.
So one scan per model with early stopping off (``early_stop=False``, no screening, ``--max-steps``
steps per label, the default's step length and precision) contains the result of every early-stop rule:
a rule's norm for a label is the smallest step-mean L1 among the steps that reached the attack threshold
up to the step where the rule stops it, and its cost is the number of steps until then.

It prints three tables over all models. For each early-stop rule (``patience`` steps without an
improvement of more than ``min_gain`` of the best norm, after λ has moved up and down): the images spent
relative to the default rule (patience 25, any improvement counts), how many models keep the flags of
the paper's test and of the log statistic, and the largest change of a flagged label's norm. The same for
the screened schedule replayed with the library's own rule (``--first`` steps of first pass, ``--shrink``
as the assumed floor) against no screening. And, per model, the final norm over the first pass's best
norm, for the labels above and below the median: what a shrink factor has to cover. It is a study of the
default; the long scans are cached under ``--cache``.

With ``--reports REPORT...`` it replays the early-stop rules on complete scans of the default instead
(no long scans): a rule with a patience no longer than the scan's own stops every label on the same
trajectory, no later than the scan did, so the recorded history up to the scan's stop is enough. Labels
the scan screened or stopped at the step limit keep their outcome; the reference is the scan's own
rule replayed (``python benchmarks/stopping.py --reports runs/bench-scans-signs/*/default-d60ca4ad*/report.json``).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neuralcleanse.detection import DetectionReport, NeuralCleanse, ReverseSettings
from neuralcleanse.detection.outlier import mad_outlier_test
from neuralcleanse.detection.schedule import choose_screened, labels_to_resume

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scan_speed import Subject, add_subject_options, subjects  # noqa: E402

RULES = [
    (25, 0.0),
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


def best_within(history: list[list[float]], steps: int, cfg: ReverseSettings) -> float:
    """The best norm of a trajectory's first ``steps`` steps (NaN: the threshold not reached yet)."""
    reached = [row[3] for row in history[:steps] if row[2] >= cfg.attack_threshold]
    return min(reached) if reached else math.nan


def screened_run(
    histories: dict[int, list[list[float]]],
    full: dict[int, Replay],
    *,
    first: int,
    shrink: float,
    threshold: float,
    cfg: ReverseSettings,
) -> tuple[dict[int, float], dict[int, int], list[int]]:
    """The engine's screened schedule replayed on trajectories whose unscreened outcome is ``full``: a
    first pass of ``first`` steps, the screening rule, the others to their early stop, the rule checked
    again on the final norms (resumed labels run to the end). Returns every label's norm and steps, and
    the labels left screened."""

    def reached() -> set[int]:  # as the engine: the labels whose trigger has reached the threshold so far
        return {k for k, v in norms.items() if math.isfinite(v)}

    undecided = [k for k in histories if full[k].steps > first]
    norms = {k: full[k].norm for k in histories}
    norms.update({k: best_within(histories[k], first, cfg) for k in undecided})
    rule = {"shrink": shrink, "threshold": threshold}
    eligible = reached()
    chosen = choose_screened(norms, [k for k in undecided if k in eligible], eligible=eligible, **rule)
    norms.update({k: full[k].norm for k in histories if k not in chosen})
    while again := labels_to_resume(norms, chosen, eligible=reached(), **rule):
        chosen = [k for k in chosen if k not in again]
        norms.update({k: full[k].norm for k in again})
    steps = {k: first if k in chosen else full[k].steps for k in histories}
    return norms, steps, chosen


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


def judge(norms: dict[int, float]) -> tuple[list[int], list[int]]:
    """Flags of the paper's test and of the log statistic (labels never reached: not flaggable)."""
    labels = sorted(norms)
    values = [norms[k] for k in labels]
    eligible = [math.isfinite(v) for v in values]
    l1, log = (
        sorted(mad_outlier_test(values, eligible=eligible, names=labels, statistic=st).flagged)
        for st in ("l1", "log")
    )
    return l1, log


@dataclass
class Outcome:
    model: str
    images: int
    flags: tuple[list[int], list[int]]
    drift: float  # largest relative change of a flagged label's norm against the reference outcome


def compare(
    name: str,
    norms: dict[int, float],
    steps: dict[int, int],
    base: tuple[dict[int, float], tuple[list[int], list[int]]],
    per_step: int,
) -> Outcome:
    """A replayed outcome against the reference's norms and flags (``base``)."""
    flags, (base_norms, base_flags) = judge(norms), base
    flagged = {*flags[0], *flags[1], *base_flags[0], *base_flags[1]}
    drift = max((abs(norms[k] / base_norms[k] - 1) for k in flagged), default=0.0)
    return Outcome(name, sum(steps.values()) * per_step, flags, drift)


def table(title: str, results: dict[str, list[Outcome]], reference: str) -> None:
    print(f"\n{title}")
    print(
        f"{'schedule':<28} {'images':>10} {'vs ref':>7}  {'l1 flags same':>13}  {'log flags same':>14}  {'max drift':>9}"
    )
    base = results[reference]
    total = sum(o.images for o in base)
    for name, outcomes in results.items():
        same = [sum(o.flags[i] == b.flags[i] for o, b in zip(outcomes, base, strict=True)) for i in (0, 1)]
        print(
            f"{name:<28} {sum(o.images for o in outcomes):>10} {sum(o.images for o in outcomes) / total:>6.2f}x  "
            f"{same[0]:>6}/{len(base):<6}  {same[1]:>7}/{len(base):<6}  {max(o.drift for o in outcomes):>8.1%}"
        )
        for o, b in zip(outcomes, base, strict=True):
            if o.flags != b.flags:
                print(
                    f"    differs on {o.model}: {o.flags[0]} / {o.flags[1]} (reference {b.flags[0]} / {b.flags[1]})"
                )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_subject_options(p)
    p.add_argument("--max-steps", type=int, default=400)
    p.add_argument("--cache", type=Path, default=Path("runs/stopping"))
    p.add_argument("--first", default="20,30,40,60", help="first-pass lengths to replay screening with")
    p.add_argument("--shrink", default="0.7,0.8,0.85,0.9", help="screening shrink factors to replay")
    p.add_argument("--reports", nargs="+", type=Path, help="replay the rules on these complete scans")
    args = p.parse_args()
    if args.reports:
        replay_reports(args.reports)
        return

    cfg = ReverseSettings()
    per_step = cfg.batch_size * cfg.batches_per_step
    rules: dict[str, list[Outcome]] = {}
    screening: dict[str, list[Outcome]] = {}
    ratios: list[str] = []
    firsts = [int(v) for v in args.first.split(",")]
    for subject in subjects(args):
        report = long_scan(subject, args)
        histories = {r.label: r.history for r in report.labels}
        full = {
            k: replay(h, patience=cfg.early_stop_patience, min_gain=0.0, cfg=cfg)
            for k, h in histories.items()
        }
        base_norms = {k: o.norm for k, o in full.items()}
        base = (base_norms, judge(base_norms))
        capped = [k for k, o in full.items() if o.steps >= args.max_steps]
        if capped:
            print(f"{subject.name}: labels {capped} ran to --max-steps {args.max_steps} without stopping")
        for patience, gain in RULES:
            out = {k: replay(h, patience=patience, min_gain=gain, cfg=cfg) for k, h in histories.items()}
            outcome = compare(
                subject.name,
                {k: o.norm for k, o in out.items()},
                {k: o.steps for k, o in out.items()},
                base,
                per_step,
            )
            rules.setdefault(f"patience {patience}, gain >{gain:.0%}", []).append(outcome)
        screening.setdefault("no screening", []).append(
            compare(subject.name, base_norms, {k: o.steps for k, o in full.items()}, base, per_step)
        )
        for first in firsts:
            for shrink in (float(v) for v in args.shrink.split(",")):
                norms, steps, _ = screened_run(
                    histories, full, first=first, shrink=shrink, threshold=2.0, cfg=cfg
                )
                outcome = compare(subject.name, norms, steps, base, per_step)
                screening.setdefault(f"first {first}, shrink {shrink:g}", []).append(outcome)
        median = float(np.nanmedian(list(base_norms.values())))
        for first in firsts:
            ratio = {k: base_norms[k] / best_within(h, first, cfg) for k, h in histories.items()}
            above = [r for k, r in ratio.items() if base_norms[k] > median]
            below = [r for k, r in ratio.items() if base_norms[k] <= median]
            ratios.append(
                f"  {subject.name:<28} {first:>5}  {np.nanmin(above):>9.2f} {np.nanmedian(above):>9.2f}"
                f"  {np.nanmin(below):>9.2f} {np.nanmedian(below):>9.2f}"
            )
    table("early-stop rules (reference: the default rule, patience 25)", rules, "patience 25, gain >0%")
    table(
        "screening replayed (reference: no screening, every label to its early stop)",
        screening,
        "no screening",
    )
    print("\nfinal norm / best norm after the first pass (labels above and below the median final norm):")
    print(
        f"  {'model':<28} {'first':>5}  {'above min':>9} {'above med':>9}  {'below min':>9} {'below med':>9}"
    )
    print("\n".join(ratios))


def replay_reports(paths: list[Path]) -> None:
    """The early-stop rules replayed on complete scans (``--reports``)."""
    rules: dict[str, list[Outcome]] = {}
    for path in paths:
        report = DetectionReport.load(path.parent if path.name == "report.json" else path)
        cfg = ReverseSettings.from_dict(report.settings)
        per_step = cfg.batch_size * cfg.batches_per_step
        kept = {r.label: Replay(r.l1_norm, r.steps) for r in report.labels if r.stop_reason != "early_stop"}
        histories = {r.label: r.history for r in report.labels if r.stop_reason == "early_stop"}
        own = {
            **kept,
            **{
                k: replay(h, patience=cfg.early_stop_patience, min_gain=0.0, cfg=cfg)
                for k, h in histories.items()
            },
        }
        base_norms = {k: o.norm for k, o in own.items()}
        base = (base_norms, judge(base_norms))
        for patience, gain in RULES:
            if patience > cfg.early_stop_patience:
                continue
            out = {
                **kept,
                **{k: replay(h, patience=patience, min_gain=gain, cfg=cfg) for k, h in histories.items()},
            }
            outcome = compare(
                path.parent.parent.name if path.name == "report.json" else path.name,
                {k: o.norm for k, o in out.items()},
                {k: o.steps for k, o in out.items()},
                base,
                per_step,
            )
            rules.setdefault(f"patience {patience}, gain >{gain:.0%}", []).append(outcome)
    table(
        f"early-stop rules on {len(paths)} complete scans (reference: each scan's own rule)",
        rules,
        "patience 25, gain >0%",
    )


if __name__ == "__main__":
    main()
