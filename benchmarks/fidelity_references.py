"""The relative test with trusted references, replayed on the fidelity benchmark's scans.

    python benchmarks/fidelity_references.py --out runs/fidelity

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
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import neuralcleanse as nc
from neuralcleanse.detection import DetectionReport, mad_outlier_test

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity import group, outcome, rates  # noqa: E402

METHODS: dict[str, dict[str, float]] = {
    "relative": {},
    "rel floor": {"mad_floor": 0.1},
    "rel floor+0.5": {"mad_floor": 0.1, "max_ratio": 0.5},
}
BOTH = "rel+effect"


def load(out: Path) -> list[dict[str, Any]]:
    """Every scan under ``OUT/scans-plain`` whose model is on disk, as a row of ``fidelity.py``'s tables
    (without ``methods``), with its report under ``"report"``."""
    rows = []
    for path in sorted((out / "scans-plain").glob("*/report.json")):
        model = out / "models" / path.parent.name
        if not (model / "card.json").exists():
            continue
        bundle = nc.load_model_dir(model)
        rows.append(
            {
                "name": path.parent.name,
                "dataset": bundle.card.dataset,
                "arch": bundle.card.arch,
                "seed": bundle.card.seed,
                "group": group(bundle),
                "planted": sorted({b.target for b in bundle.card.backdoors}),
                "report": DetectionReport.load(path.parent),
            }
        )
    return rows


def reference_norms(refs: list[dict[str, Any]], labels: list[int]) -> list[float]:
    """Each label's geometric median over the reference scans (as ``Reference.from_reports``)."""
    out = []
    for k in labels:
        logs = [math.log(max(v, 1e-6)) for r in refs if math.isfinite(v := r["report"].label(k).l1_norm)]
        out.append(math.exp(statistics.median(logs)) if logs else math.nan)
    return out


def judge(rep: DetectionReport, refs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each method's verdict and flags on ``rep``'s norms against ``refs`` (``fidelity.py``'s format)."""
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
    return {m: {"verdict": v, "flagged": f} for m, (v, f) in out.items()}


def trials(rows: list[dict[str, Any]], n_refs: int) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """(model, its references): the clean models of the same task and another seed."""
    clean = defaultdict(list)
    for r in rows:
        if r["group"] == "clean":
            clean[r["dataset"], r["arch"]].append(r)
    out = []
    for r in rows:
        others = sorted(
            (c for c in clean[r["dataset"], r["arch"]] if c["seed"] != r["seed"]), key=lambda c: c["seed"]
        )
        if len(others) < n_refs:
            continue
        if n_refs == 1:
            out += [(r, [c]) for c in others]
        else:
            out.append((r, others[:n_refs]))
    return out


def table(rows: list[dict[str, Any]], n_refs: int) -> list[str]:
    pairs = trials(rows, n_refs)
    judged = [({**r, "methods": judge(r["report"], refs)}, refs) for r, refs in pairs]
    screened = sum(len(ref["report"].screened) for _, refs in pairs for ref in refs)
    lines = [
        f"{n_refs} reference{'s' if n_refs > 1 else ''}: {len(pairs)} trials over "
        f"{len({r['name'] for r, _ in pairs})} models ({screened} screened reference labels entered)",
        "",
    ]
    header = f"{'method':14} {'scope':22} {'exact (small)':>15} {'exact (large)':>15} {'false alarm':>13} {'inconclusive':>13}"
    lines += [header, "-" * len(header)]
    scopes = [
        "all",
        *sorted({r["dataset"] for r in rows}),
        *(f"arch {a}" for a in sorted({r["arch"] for r in rows})),
    ]
    for method in [*METHODS, BOTH, "effect"]:
        for scope in scopes:
            part = [r for r, _ in judged if scope in ("all", r["dataset"], f"arch {r['arch']}")]
            lines.append(f"{method:14} {scope:22} {rates(part, method)}")
        lines.append("")
    alarms = [
        f"  {r['name']} vs {'+'.join(ref['name'] for ref in refs)}: "
        + ", ".join(
            f"{m} {r['methods'][m]['flagged']}" for m in [*METHODS, BOTH] if r["methods"][m]["flagged"]
        )
        for r, refs in judged
        if r["group"] == "clean" and any(outcome(r, m) == "false alarm" for m in [*METHODS, BOTH])
    ]
    return [*lines, "false alarms on clean models:", *(alarms or ["  none"]), ""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/fidelity"), help="the fidelity benchmark's --out")
    p.add_argument("--refs", default="1,2", help="numbers of reference models per trial")
    args = p.parse_args()
    rows = load(args.out)
    if not rows:
        raise SystemExit(
            f"error: no scans under {args.out / 'scans-plain'}; run benchmarks/fidelity.py first"
        )
    for n in (int(x) for x in args.refs.split(",")):
        print("\n".join(table(rows, n)))


if __name__ == "__main__":
    main()
