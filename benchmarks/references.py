"""The relative test with trusted references, replayed on the fidelity benchmark's scans.

    python benchmarks/references.py --out runs/fidelity

A user who has trusted models of the same task scans them too and passes their reports with
``--reference``; the relative statistic then tests each label's L1 norm against the same label's norm in
them. The fidelity benchmark (``benchmarks/fidelity.py``) trains clean controls of every dataset and
architecture for three seeds, so every model it scanned has trusted models of its task at hand: the clean
models of the *other* seeds (a model is never its own reference). This script judges every scan under
``OUT/scans-plain`` with

* one reference (each other seed's clean model in turn: two trials per model), and
* two references (both other seeds: the geometric median of their norms, as ``Reference.from_reports``),

for several ways of running the relative test:

* ``relative``: the MAD test on log(L1 / reference), what ``--reference`` runs today;
* ``rel floor``: the same with the MAD of the log ratios floored at 0.1;
* ``rel floor+0.5``: the floor, and a flagged label's ratio must also be at most half the median ratio
  (what the self-made reference runs);
* ``rel+effect``: labels flagged by both ``rel floor+0.5`` and the default ``effect`` statistic.

It prints the exact-label detection rate on infected models (small and large triggers), the false-alarm
rate on clean models and the inconclusive rate, overall and per dataset and architecture, over trials.

Nothing is scanned: the norms are the benchmark's cached default scans. Labels those scans screened keep
the value the scan used (an upper value, or an estimate with 30 labels or more), which a real reference
scan (screening off) would not; the table says how many such labels entered.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from neuralcleanse.detection import DetectionReport, mad_outlier_test

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity import GROUPS  # noqa: E402

METHODS: dict[str, dict[str, float]] = {
    "relative": {},
    "rel floor": {"mad_floor": 0.1},
    "rel floor+0.5": {"mad_floor": 0.1, "max_ratio": 0.5},
}
BOTH = "rel+effect"


@dataclass
class Scan:
    name: str
    dataset: str
    arch: str
    seed: int
    group: str
    planted: list[int]
    report: DetectionReport

    @property
    def task(self) -> tuple[str, str]:
        return self.dataset, self.arch


def group(card: dict) -> str:
    """As ``fidelity.group``, from the model card (the planted triggers' recorded L1 over the image)."""
    backdoors = card.get("backdoors") or []
    if not backdoors:
        return "clean"
    if any(b.get("source_labels") for b in backdoors):
        return "source"
    pixels = math.prod(card["input_shape"][1:])
    return "large" if max(b["l1_norm"] for b in backdoors) / pixels > 0.10 else "small"


def load(out: Path) -> list[Scan]:
    scans = []
    for path in sorted((out / "scans-plain").glob("*/report.json")):
        card_path = out / "models" / path.parent.name / "card.json"
        if not card_path.exists():
            continue
        card = json.loads(card_path.read_text())
        scans.append(
            Scan(
                name=path.parent.name,
                dataset=card["dataset"],
                arch=card["arch"],
                seed=int(card["seed"]),
                group=group(card),
                planted=sorted({b["target"] for b in card.get("backdoors") or []}),
                report=DetectionReport.load(path.parent),
            )
        )
    return scans


def reference_norms(refs: list[Scan], labels: list[int]) -> list[float]:
    """Each label's geometric median over the reference scans (as ``Reference.from_reports``)."""
    out = []
    for k in labels:
        logs = [math.log(max(v, 1e-6)) for r in refs if math.isfinite(v := r.report.label(k).l1_norm)]
        out.append(math.exp(statistics.median(logs)) if logs else math.nan)
    return out


def judge(scan: Scan, refs: list[Scan]) -> dict[str, tuple[str, list[int]]]:
    rep = scan.report
    labels = [r.label for r in rep.labels]
    reference = reference_norms(refs, labels)
    out: dict[str, tuple[str, list[int]]] = {}
    for name, options in METHODS.items():
        res = mad_outlier_test(
            [r.l1_norm for r in rep.labels],
            threshold=rep.threshold,
            eligible=[r.reached for r in rep.labels],
            names=labels,
            statistic="relative",
            reference=reference,
            **options,
        )
        verdict = "inconclusive" if not res.conclusive else ("backdoored" if res.flagged else "clean")
        out[name] = (verdict, sorted(res.flagged))
    effect = rep.outlier_test(statistic="effect")
    both = sorted(set(out["rel floor+0.5"][1]) & set(effect.flagged))
    out[BOTH] = (("backdoored" if both else "clean"), both)
    out["effect"] = (
        "inconclusive" if not effect.conclusive else ("backdoored" if effect.flagged else "clean"),
        sorted(effect.flagged),
    )
    return out


def outcome(scan: Scan, verdict: str, flagged: list[int]) -> str:
    if verdict == "inconclusive":
        return "inconclusive"
    if scan.group == "clean":
        return "false alarm" if flagged else "correct"
    return "exact" if flagged == scan.planted else ("other" if flagged else "missed")


def trials(scans: list[Scan], n_refs: int) -> list[tuple[Scan, list[Scan]]]:
    """(model, its references): the clean models of the same task and another seed."""
    clean = defaultdict(list)
    for s in scans:
        if s.group == "clean":
            clean[s.task].append(s)
    out = []
    for s in scans:
        others = sorted((c for c in clean[s.task] if c.seed != s.seed), key=lambda c: c.seed)
        if len(others) < n_refs:
            continue
        if n_refs == 1:
            out += [(s, [c]) for c in others]
        else:
            out.append((s, others[:n_refs]))
    return out


def table(scans: list[Scan], n_refs: int) -> list[str]:
    pairs = trials(scans, n_refs)
    judged = [(s, refs, judge(s, refs)) for s, refs in pairs]
    screened = sum(len(r.report.screened) for _, refs in pairs for r in refs)
    lines = [
        f"{n_refs} reference{'s' if n_refs > 1 else ''}: {len(pairs)} trials over "
        f"{len({s.name for s, _ in pairs})} models ({screened} screened reference labels entered)",
        "",
    ]
    header = f"{'method':14} {'scope':22} {'exact (small)':>15} {'exact (large)':>15} {'false alarm':>13} {'inconclusive':>13}"
    lines += [header, "-" * len(header)]
    scopes = [
        "all",
        *sorted({s.dataset for s in scans}),
        *(f"arch {a}" for a in sorted({s.arch for s in scans})),
    ]
    for method in [*METHODS, BOTH, "effect"]:
        for scope in scopes:
            part = [(s, o) for s, _, o in judged if scope in ("all", s.dataset, f"arch {s.arch}")]

            def rate(groups: tuple[str, ...], what: str, part: list = part, method: str = method) -> str:
                sel = [(s, o) for s, o in part if s.group in groups]
                if not sel:
                    return "-"
                k = sum(outcome(s, *o[method]) == what for s, o in sel)
                return f"{100 * k / len(sel):.0f} ({k}/{len(sel)})"

            lines.append(
                f"{method:14} {scope:22} {rate(('small',), 'exact'):>15} {rate(('large',), 'exact'):>15} "
                f"{rate(('clean',), 'false alarm'):>13} {rate(GROUPS, 'inconclusive'):>13}"
            )
        lines.append("")
    alarms = [
        f"  {s.name} vs {'+'.join(r.name for r in refs)}: {', '.join(f'{m} {o[m][1]}' for m in [*METHODS, BOTH] if o[m][1])}"
        for s, refs, o in judged
        if s.group == "clean" and any(o[m][1] for m in [*METHODS, BOTH])
    ]
    return [*lines, "false alarms on clean models:", *(alarms or ["  none"]), ""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/fidelity"), help="the fidelity benchmark's --out")
    p.add_argument("--refs", default="1,2", help="numbers of reference models per trial")
    args = p.parse_args()
    scans = load(args.out)
    if not scans:
        raise SystemExit(
            f"error: no scans under {args.out / 'scans-plain'}; run benchmarks/fidelity.py first"
        )
    for n in (int(x) for x in args.refs.split(",")):
        print("\n".join(table(scans, n)))


if __name__ == "__main__":
    main()
