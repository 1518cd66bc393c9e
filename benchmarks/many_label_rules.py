"""Screening rules for many labels, replayed on complete scans: which labels could have stopped early?

    python benchmarks/many_label_rules.py runs/bench-scans-signs/*/default-*/report.json
    python benchmarks/many_label_rules.py REPORT... --first 40,60 --sample 8

A scan in which every label ran to its own early stop (no label screened) holds each label's whole
trajectory in its report: the step-mean L1 norm and attack success of every step. So the norm a label had
after a first pass of F steps (the smallest step-mean L1 among the steps up to F that reached the attack
threshold) and its final norm (the same over all steps) are both known, and any rule that stops labels
after the first pass can be replayed without running anything: its cost is F steps for every label it
stops and the full trajectory for every other, and its flags are the outlier test's on the values it
would have used.

Rules (with at least 30 labels; ``protected`` labels — more than one MAD below the first-pass median —
and a calibration sample of ``--sample`` labels at evenly spaced first-pass ranks always run to the end):

* ``worst-case``: the library's rule for a verdict without an effect size (``choose_screened`` with
  ``below_median``) on the interval [floor, first-pass norm], floor = the sample's smallest
  final/first-pass ratio × 0.9; the screened labels keep their first-pass norm in the test;
* ``predicted``: every other reached label stops and enters the test at its first-pass norm times the
  sample's median ratio; it is accepted when the flags of both tests (L1 and log) are the same in at
  least 95% of 500 draws that give every stopped label a ratio drawn from the sample's; otherwise no
  label stops (a candidate rule, not in the library);
* ``sampled`` (only for the ``l1`` and ``log`` tests): see :func:`sampled`;
* ``ranges``: the engine's rule for many labels under a verdict with an effect size (the default
  ``effect`` statistic): every other reached label gets the range [first-pass norm × the sample's smallest
  ratio × ``--margin``, × its largest ratio / ``--margin``] and stops when the effect statistic surely does not flag it
  there (``clearly_unflagged``); once the others are final the rule is checked on every range
  (``ranges_hold``) and stopped labels are resumed, smallest first, until it holds. Stopped labels enter
  the test at first-pass norm × the sample's median ratio. It keeps only the effect statistic's flags
  certain: other tests in ``--tests`` run on the estimates. With ``--draws N`` (default 200, the
  engine's ``screen_draws``) the final check bounds the median and MAD by N random completions of the
  stopped labels' norms (``drawn_spread``); ``--draws 0`` is the worst case over every range.

It prints, per report and rule: the flags of the complete scan, the rule's flags, how many labels
stopped, and the images relative to the complete scan.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from neuralcleanse.detection import DetectionReport, ReverseSettings
from neuralcleanse.detection.outlier import CONSISTENCY, mad_outlier_test
from neuralcleanse.detection.schedule import (
    calibration_sample,
    choose_screened,
    clearly_unflagged,
    drawn_spread,
    labels_to_resume,
    measured_shrink,
    protected,
    ranges_hold,
)
from neuralcleanse.detection.statistics import EFFECT_RATIO
from neuralcleanse.errors import NeuralCleanseError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stopping import best_within  # noqa: E402


def flags(
    values: dict[int, float], eligible: set[int], statistics: Sequence[str]
) -> tuple[tuple[int, ...], ...]:
    """Each statistic's flags (or ``("inconclusive",)`` when the test has no power) on ``values``."""
    labels = sorted(values)
    out = []
    for statistic in statistics:
        res = mad_outlier_test(
            [values[k] for k in labels],
            eligible=[k in eligible for k in labels],
            names=labels,
            statistic=statistic,  # type: ignore[arg-type]
        )
        out.append(tuple(res.flagged) if res.conclusive else ("inconclusive",))  # type: ignore[arg-type]
    return tuple(out)


def replay(
    name: str,
    report: DetectionReport,
    first_steps: int,
    sample_size: int,
    seed: int,
    statistics: Sequence[str],
    margin: float,
    screen_draws: int,
) -> list[str]:
    cfg = ReverseSettings.from_dict(report.settings)
    rows = {r.label: r for r in report.labels}
    first = {k: best_within(r.history, first_steps, cfg) for k, r in rows.items()}
    final = {k: best_within(r.history, len(r.history), cfg) for k, r in rows.items()}
    steps = {k: r.steps for k, r in rows.items()}
    reached = {k for k in rows if math.isfinite(first[k])}
    done_early = {k for k in rows if steps[k] <= first_steps}
    guard = set(protected(first, sorted(reached), threshold=2.0))
    pool = sorted(k for k in reached if k not in guard and k not in done_early)
    sample = calibration_sample(first, pool, sample_size)
    ratios = np.array([final[k] / first[k] for k in sample])
    candidates = [k for k in pool if k not in sample]
    eligible = {k for k in rows if math.isfinite(final[k])}
    reference = flags({k: v for k, v in final.items() if math.isfinite(v)}, eligible, statistics)
    total = sum(steps.values())
    out = []

    def line(rule: str, stopped: Sequence[int], values: dict[int, float]) -> str:
        images = total - sum(steps[k] - first_steps for k in stopped)
        got = flags(values, eligible, statistics)
        return (
            f"{name[-28:]:28s} {first_steps:5d} {rule:11s} {len(stopped):4d}/{len(rows):<4d}"
            f" {images / total:7.2f}  {'same' if got == reference else 'DIFFER':6s} "
            + ", ".join(
                f"{n} {list(a)} -> {list(b)}" for n, a, b in zip(statistics, reference, got, strict=True)
            )
        )

    complete = {k: v for k, v in final.items() if math.isfinite(v)}
    # worst-case intervals with the measured floor (the library's rule, decided on first-pass values)
    floor = measured_shrink({k: first[k] for k in sample}, {k: final[k] for k in sample}, margin=0.9)
    at_decision = {**complete, **{k: first[k] for k in candidates}}
    rule = {"shrink": floor, "threshold": 2.0, "below_median": True}
    chosen = choose_screened(at_decision, candidates, eligible=eligible, **rule)
    # the engine's check once the others have finished: labels the rule no longer allows run on
    resumed = labels_to_resume(
        {**complete, **{k: first[k] for k in chosen}}, chosen, eligible=eligible, **rule
    )
    chosen = [k for k in chosen if k not in resumed]
    out.append(
        line("worst-case", chosen, {**complete, **{k: first[k] for k in chosen}}) + f" (floor {floor:.2f})"
    )
    # predicted values, accepted when the flags are stable under the sample's spread of ratios
    predicted = {**complete, **{k: first[k] * float(np.median(ratios)) for k in candidates}}
    expected = flags(predicted, eligible, statistics)
    rng = np.random.default_rng(seed)
    draws = 500
    stable = 0
    for _ in range(draws):
        drawn = rng.choice(ratios, size=len(candidates))
        values = {**complete, **{k: first[k] * r for k, r in zip(candidates, drawn, strict=True)}}
        stable += flags(values, eligible, statistics) == expected
    stopped = candidates if stable >= 0.95 * draws else []
    used = predicted if stopped else complete
    out.append(
        line("predicted", stopped, used)
        + f" (stable {stable}/{draws}, ratios {ratios.min():.2f}-{ratios.max():.2f})"
    )
    out.append(sampled(first, final, reached, eligible, reference, sample_size, seed, statistics, line))
    # measured ranges, decided on the effect statistic alone (the engine's many-label rule)
    lo_r, hi_r = float(ratios.min()) * margin, min(1.0, float(ratios.max()) / margin)
    mid = float(np.median(ratios))

    def span(k: int) -> tuple[float, float]:
        return first[k] * lo_r, min(first[k], first[k] * hi_r)

    at_decision = {k: span(k) if k in candidates else (final[k], final[k]) for k in rows}
    chosen = clearly_unflagged(at_decision, candidates, threshold=2.0, max_ratio=EFFECT_RATIO)
    chosen.sort(key=lambda k: -first[k])
    while chosen:
        ranges = {k: (final[k], final[k]) for k in rows} | {k: span(k) for k in chosen}
        spread = (
            drawn_spread(
                {k: final[k] for k in rows if k not in chosen},
                {k: first[k] for k in chosen},
                list(ratios),
                margin=margin,
                draws=screen_draws,
                seed=cfg.seed,
            )
            if screen_draws
            else None
        )
        if ranges_hold(
            ranges, chosen, threshold=2.0, max_ratio=EFFECT_RATIO, eligible=eligible, spread=spread
        ):
            break
        chosen.pop()
    values = {k: v for k, v in final.items() if math.isfinite(v)} | {k: first[k] * mid for k in chosen}
    below = sum(final[k] < span(k)[0] for k in chosen)
    above = sum(final[k] > span(k)[1] for k in chosen)
    worst = min((final[k] / span(k)[0] for k in chosen), default=math.nan)
    median = float(np.median([v for v in final.values() if math.isfinite(v)]))
    closest = min((final[k] / median for k in chosen), default=math.nan)
    out.append(
        line("ranges", chosen, values)
        + f" (ratios {lo_r:.2f}-{hi_r:.2f}, estimate {mid:.2f}; final norm below/above its range: {below}/{above},"
        f" at worst {worst:.2f} of its lower end; the smallest final norm stopped: {closest:.2f} of the median)"
    )
    return out


def sampled(
    first: dict[int, float],
    final: dict[int, float],
    reached: set[int],
    eligible: set[int],
    reference: tuple[tuple[int, ...], ...],
    sample_size: int,
    seed: int,
    statistics: Sequence[str],
    line: Callable[[str, Sequence[int], dict[int, float]], str],
) -> str:
    """The ``sampled`` rule: each test's median and MAD estimated on a rank-stratified sample of labels
    run to the end; the labels that could be flagged under the measured floor (and the protected ones)
    run to the end too, the others stop after the first pass and stay out of the statistic. The sample
    doubles until 95% of 200 bootstrap draws of it give the same flags (or it holds every label)."""
    if any(s not in ("l1", "log") for s in statistics):
        return f"{'':28s} sampled: only for the l1 and log tests"
    rng = np.random.default_rng(seed)
    ordered = sorted(reached)
    guard = set(protected(first, ordered, threshold=2.0))
    size, trace = sample_size, []
    while True:
        sample = calibration_sample(first, ordered, size)
        floor = measured_shrink({k: first[k] for k in sample}, {k: final[k] for k in sample}, margin=0.9)
        got, runs, stable = [], set(sample) | guard, []
        for statistic in statistics:
            t = np.log if statistic == "log" else np.asarray
            basis = t(np.array([final[k] for k in sample], dtype=float))
            runs |= {k for k in ordered if t(floor * first[k]) <= _flag_line(basis)}

            def flagged(line_at: float, runs: set[int] = runs, t: Callable = t) -> tuple[int, ...]:
                return tuple(sorted(k for k in runs if k in eligible and t(final[k]) < line_at))

            got.append(flagged(_flag_line(basis)))
            draws = [flagged(_flag_line(rng.choice(basis, len(basis)))) for _ in range(200)]
            stable.append(sum(d == got[-1] for d in draws))
        trace.append(f"{len(sample)}: {' '.join(str(list(g)) for g in got)} ({'/'.join(map(str, stable))})")
        if min(stable) >= 190 or len(sample) >= len(ordered):
            break
        size *= 2
    stopped = [k for k in ordered if k not in runs]
    values = {**final, **{k: math.nan for k in stopped}}
    verdict = "same" if tuple(got) == reference else "DIFFER"
    return (
        f"{line('sampled', stopped, values)}  -> {verdict} on the estimate; sample sizes {' | '.join(trace)}"
    )


def _flag_line(values: np.ndarray, threshold: float = 2.0) -> float:
    """The value below which the MAD test flags a label, for this basis of the statistic."""
    med = float(np.median(values))
    return med - threshold * CONSISTENCY * float(np.median(np.abs(values - med)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", type=Path, nargs="+", help="report.json files (or their directories)")
    ap.add_argument("--first", default="40,60", help="first-pass lengths in steps")
    ap.add_argument("--sample", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--margin", type=float, default=0.9, help="the ranges rule's margin (screen_margin)")
    ap.add_argument("--tests", default="l1,log", help="the statistics whose flags a rule must keep")
    ap.add_argument("--draws", type=int, default=200, help="the ranges rule's screen_draws (0: worst case)")
    args = ap.parse_args()
    if args.draws < 0:
        ap.error(f"--draws must be at least 0, got {args.draws}")
    statistics = args.tests.split(",")
    print(
        f"{'model':28s} {'first':>5s} {'rule':11s} {'stopped':>9s} {'images':>7s}  flags (complete scan -> rule)"
    )
    for path in args.reports:
        try:
            report = DetectionReport.load(path.parent if path.name == "report.json" else path)
        except NeuralCleanseError as exc:
            raise SystemExit(f"error: {exc}") from None
        if report.screened:
            print(f"{path}: some labels were screened; a complete scan is needed")
            continue
        for first_steps in (int(f) for f in args.first.split(",")):
            name = path.parent.parent.name if path.name == "report.json" else path.parent.name
            print(
                "\n".join(
                    replay(
                        name, report, first_steps, args.sample, args.seed, statistics, args.margin, args.draws
                    )
                )
            )


if __name__ == "__main__":
    main()
