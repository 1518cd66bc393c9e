"""Which verdict is right most often: every statistic on the same scans of many models, over seeds.

    python benchmarks/fidelity.py --out runs/fidelity                       # default zoo, seeds 0-2
    python benchmarks/fidelity.py --out runs/fidelity --archs mnist,bn-cnn,resnet
    python benchmarks/fidelity.py --out runs/fidelity --spec signs --seeds 0
    python benchmarks/fidelity.py --out runs/fidelity --table                # only print the table

For every model of a zoo spec (``default``: the paper's attacks on the MNIST sample and Fashion-MNIST,
clean controls included, its reference models left out as the seeds give other clean models; ``signs``: the 43-label task), every training
seed of ``--seeds`` and every architecture of ``--archs`` (``spec``: the spec's own), it trains the
model (cached under ``OUT/models``), scans it once with a self-made reference (a student distilled from
the model on the clean images, every label to the end; cached under ``OUT/scans``), and then judges the
same norms with every method:

* ``paper``: the MAD test on the L1 norms (Wang et al. 2019), threshold 2;
* ``log``: the same test on log norms;
* ``log<R`` (R = 0.25, 0.3, 0.4): the log test, and a flagged label's norm must also be at most R times
  the median norm (an effect size: how many times cheaper the label is than a typical one);
* ``effect``: the default verdict: ``log<0.3``, or up to 0.45 of the median for a label whose reversed
  trigger is compact (``neuralcleanse.detection.shape``; from the ninth session; before it ``effect``
  was ``log<0.3``);
* ``default``: what a default scan says since the twenty-fourth session: ``effect``, and the transfer
  check below on a weak verdict of a task of at most 20 classes (``transfer_check="auto"``; needs
  ``--transfer`` or a cached check there, else ``n/a``);
* ``transfer`` (with ``--transfer``): ``effect``, then the flagged labels checked on a student distilled
  from the model on 2,000 clean test images (``scan --transfer-check``: a flagged label whose trigger
  moves the student as often as the unflagged labels' triggers do is set aside; nothing left flagged
  is ``inconclusive``); the checks are cached under ``OUT/transfer``; with ``--transfer-train`` the
  student may also learn from training images, up to the check's cap of 200 a class (cached under
  ``OUT/transfer-train``: the 43-label sign set has only 40 test images a class);
* ``log+transfer``, ``log<0.4+transfer`` (with ``--transfer``): the same check of the labels ``log`` and
  ``log<0.4`` flag (one cached check per model measures every label, so it judges any statistic's);
* ``self-raw``: the relative test against the distilled student, as ``--reference`` runs it;
* ``self-floor``: the same with the MAD of the log ratios floored at 0.1;
* ``self``: what ``scan --self-reference`` runs (``Reference.test_options``): the floor, and a flagged
  label must also be at most half as expensive as in the student, relative to the median ratio;
* ``self+log``: labels flagged by both ``self`` and ``log``.

Models are grouped as ``clean`` (no backdoor), ``small`` (every trigger ≤ 10% of the image: what the
paper's method can in principle see), ``large`` (a trigger > 10%, blended ones included) and
``source`` (source-specific backdoors, which a scan over all labels is not meant to see). Per method and
group it prints the exact-label detection rate (flagged labels = planted labels), the false-alarm rate on
clean models (any label flagged), and the inconclusive rate, overall, per dataset and per architecture.

``--no-self`` scans without the student (the default scan, screening on; under ``OUT/scans-plain``), about
a third of the cost, for the methods that need no reference; the ``self`` methods show ``n/a``.

Kill it at any time: a rerun skips every model and scan already on disk.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

import neuralcleanse as nc
from neuralcleanse.detection import (
    DetectionReport,
    NeuralCleanse,
    OutlierResult,
    ReverseSettings,
    mad_outlier_test,
)
from neuralcleanse.detection.distill import DistillSettings
from neuralcleanse.detection.transfer import (
    SATURATED,
    TRANSFER_DISTILL,
    TRANSFER_RATIO,
    TransferCheck,
    auto_check,
    check_transfer,
)
from neuralcleanse.lab.zoo import ZooEntry, default_spec_path, load_spec

METHODS = (
    "paper",
    "log",
    "log<0.25",
    "log<0.3",
    "log<0.4",
    "effect",
    "default",
    "transfer",
    "log+transfer",
    "log<0.4+transfer",
    "self-raw",
    "self-floor",
    "self",
    "self+log",
)
GROUPS = ("small", "large", "source", "clean")


@dataclass(frozen=True)
class Case:
    name: str
    entry: ZooEntry
    arch: str
    seed: int

    @property
    def recipe(self) -> nc.Recipe:
        r = self.entry.recipe
        return replace(r, arch=self.arch, training=replace(r.training, seed=self.seed))


def cases(args: argparse.Namespace) -> list[Case]:
    path = default_spec_path(args.spec) if args.spec in ("default", "signs") else Path(args.spec)
    spec = load_spec(path)
    out = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for arch in args.archs.split(","):
            for e in spec.entries:
                if e.is_reference or (args.only and e.name not in args.only.split(",")):
                    continue  # a spec's reference models are clean controls of other seeds: the seeds are
                a = e.recipe.arch if arch == "spec" else arch
                out.append(Case(f"{e.name}-{a}-s{seed}", e, a, seed))
    return out


def group(bundle: nc.ModelBundle) -> str:
    backdoors = bundle.card.backdoors
    if not backdoors:
        return "clean"
    if any(b.source_labels for b in backdoors):
        return "source"
    area = max(float(t.mask.mean()) for t in bundle.triggers)
    return "large" if area > 0.10 else "small"


def model_dir(case: Case, args: argparse.Namespace, data: nc.DatasetSplits) -> Path:
    path = args.out / "models" / case.name
    if not (path / "card.json").exists():
        t = time.perf_counter()
        nc.train_recipe(case.recipe, data=data, device=args.device, out=path, force=True)
        logging.info("%s: trained in %.0f s", case.name, time.perf_counter() - t)
    return path


def scan_path(case: Case, args: argparse.Namespace) -> Path:
    return args.out / ("scans-plain" if args.no_self else "scans") / case.name


def scan_dir(case: Case, args: argparse.Namespace, bundle: nc.ModelBundle, data: nc.DatasetSplits) -> Path:
    path = scan_path(case, args)
    if not (path / "report.json").exists():
        detector = NeuralCleanse(
            bundle.model,
            settings=ReverseSettings(seed=args.scan_seed),
            self_reference=None if args.no_self else DistillSettings(seed=case.seed),
            device=args.device,
        )
        report = detector.scan(data.test, samples=args.samples)
        report.save(path, force=True, images=False)
        logging.info("%s: scanned in %.0f s", case.name, report.run["seconds"])
    return path


def judge(report: DetectionReport) -> dict[str, tuple[str, list[int]]]:
    """Each method's verdict and flagged labels on one scan's norms."""
    out: dict[str, tuple[str, list[int]]] = {}
    unsettled = report.unsettled is not None
    tests = {
        "paper": report.outlier_test(statistic="l1"),
        "log": report.outlier_test(statistic="log"),
        **{f"log<{r:g}": _on_norms(report, "log", {"max_ratio": r}) for r in (0.25, 0.3, 0.4)},
        "effect": report.outlier_test(statistic="effect"),
    }
    if report.reference is not None:
        tests |= {
            "self": report.outlier_test(statistic="relative"),
            "self-raw": _on_norms(report, "relative", {}),
            "self-floor": _on_norms(report, "relative", {"mad_floor": 0.1}),
        }
    for name, res in tests.items():
        verdict = (
            "inconclusive" if unsettled or not res.conclusive else ("backdoored" if res.flagged else "clean")
        )
        out[name] = (verdict, sorted(res.flagged))
    if "self" in tests:
        both = sorted(set(tests["self"].flagged) & set(tests["log"].flagged))
        out["self+log"] = ("inconclusive" if unsettled else ("backdoored" if both else "clean"), both)
    return out


def _on_norms(report: DetectionReport, statistic: str, options: dict[str, float]) -> OutlierResult:
    """A test on the report's norms with other test options than the shipped ones (``relative``: against
    the report's student)."""
    labels = [r.label for r in report.labels]
    return mad_outlier_test(
        [r.l1_norm for r in report.labels],
        threshold=report.threshold,
        eligible=[r.reached for r in report.labels],
        names=labels,
        statistic=statistic,  # type: ignore[arg-type]
        reference=report.reference.norms_for(labels)
        if report.reference and statistic == "relative"
        else None,
        **options,
    )


#: method -> the statistic whose flagged labels the transfer check judges (``transfer``: the default's)
TRANSFER_BASES = {"transfer": "effect", "log+transfer": "log", "log<0.4+transfer": "log<0.4"}


def check_path(case: Case, args: argparse.Namespace) -> Path:
    """Where a model's transfer check is cached."""
    return args.out / ("transfer-train" if args.transfer_train else "transfer") / f"{case.name}.json"


def transfer_check(
    case: Case,
    args: argparse.Namespace,
    report: DetectionReport,
    bundle: nc.ModelBundle,
    data: nc.DatasetSplits,
    flagged: list[int],
) -> TransferCheck:
    """``scan --transfer-check``'s check of the model (cached under ``OUT/transfer``; every label the scan
    reached is measured, so one check judges any statistic's flagged labels). ``flagged``: the labels to
    check when it is not cached yet."""
    path = check_path(case, args)
    if path.exists():  # judged with today's ratio and saturation line, whatever they were when it was cached
        cached = TransferCheck.from_dict(json.loads(path.read_text()))
        return replace(cached, ratio=TRANSFER_RATIO, saturation=SATURATED)
    rows = [replace(r, flagged=r.label in flagged) for r in report.labels]
    asked = replace(report, verdict="backdoored", flagged=flagged, labels=rows)
    gen = torch.Generator().manual_seed(case.seed)
    cap = TRANSFER_DISTILL.image_cap(data.test.num_classes) if args.transfer_train else 2000
    images = data.test.images[torch.randperm(len(data.test), generator=gen)[:cap]]
    if len(images) < cap:  # --transfer-train: then training images, up to the student's cap
        more = data.train.images[torch.randperm(len(data.train), generator=gen)[: cap - len(images)]]
        images = torch.cat([images, more])
    checked = check_transfer(asked, bundle.model, images, device=args.device)
    assert checked.transfer is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(checked.transfer.to_dict(), indent=1))
    return checked.transfer


def transfer_verdicts(
    case: Case,
    args: argparse.Namespace,
    report: DetectionReport,
    bundle: nc.ModelBundle,
    data: nc.DatasetSplits,
    methods: dict[str, tuple[str, list[int]]],
) -> dict[str, tuple[str, list[int]]]:
    """Each of :data:`TRANSFER_BASES`' verdicts after the transfer check of its flagged labels: those whose
    trigger moves the student as the unflagged labels' do are set aside; nothing left is inconclusive."""
    if report.statistic != "effect":
        raise SystemExit(f"{case.name}: --transfer needs scans judged by effect, not {report.statistic}")
    asked = [methods[base] for base in TRANSFER_BASES.values()]
    wanted = sorted({k for verdict, flagged in asked if verdict == "backdoored" for k in flagged})
    check = transfer_check(case, args, report, bundle, data, wanted) if wanted else None
    out = {}
    for method, base in TRANSFER_BASES.items():
        verdict, flagged = methods[base]
        if verdict != "backdoored" or check is None:
            out[method] = (verdict, flagged)
            continue
        judged = replace(check, flagged=flagged)
        out[method] = ("backdoored" if judged.kept else "inconclusive", judged.kept)
    return out


def default_verdict(
    report: DetectionReport,
    methods: dict[str, tuple[str, list[int]]],
    check: Callable[[list[int]], TransferCheck] | None,
    *,
    images: int,
    classes: int,
) -> tuple[str, list[int]] | None:
    """What a default scan says (``transfer_check="auto"``): ``effect``'s verdict, checked on a student
    where :func:`~neuralcleanse.detection.transfer.auto_check` runs the check (a weak verdict, at most 20
    classes; ``check`` gives the model's check of some flagged labels); None when that check is needed and
    ``check`` is None (not cached, no ``--transfer``)."""
    verdict, flagged = methods["effect"]
    if verdict != "backdoored":
        return verdict, flagged
    rows = [replace(r, flagged=r.label in flagged) for r in report.labels]
    judged = replace(report, verdict=verdict, flagged=flagged, labels=rows, transfer=None)
    run, _ = auto_check(judged, images=images, classes=classes)
    if not run:
        return verdict, flagged
    if check is None:
        return None
    kept = replace(check(flagged), flagged=flagged).kept
    return ("backdoored" if kept else "inconclusive", kept)


def record(case: Case, args: argparse.Namespace, loaders: dict[str, Callable[[], nc.DatasetSplits]]) -> dict:
    data = loaders[case.entry.recipe.dataset]()
    bundle = nc.load_model_dir(model_dir(case, args, data))
    report = DetectionReport.load(scan_dir(case, args, bundle, data))
    planted = sorted({b.target for b in bundle.card.backdoors})
    methods = judge(report)
    if args.transfer:
        methods |= transfer_verdicts(case, args, report, bundle, data, methods)
    checker = None
    if args.transfer or check_path(case, args).exists():
        checker = partial(transfer_check, case, args, report, bundle, data)
    if report.statistic == "effect" and (
        default := default_verdict(
            report, methods, checker, images=min(2000, len(data.test)), classes=data.test.num_classes
        )
    ):
        methods["default"] = default
    source = report.reference.sources[0] if report.reference else {}
    return {
        "name": case.name,
        "spec_entry": case.entry.name,
        "dataset": case.entry.recipe.dataset,
        "arch": case.arch,
        "seed": case.seed,
        "group": group(bundle),
        "planted": planted,
        "agreement": source.get("agreement"),
        "seconds": report.run.get("seconds"),
        "methods": {m: {"verdict": v, "flagged": f} for m, (v, f) in methods.items()},
        "to_median": {str(r.label): round(r.l1_norm / report.median_l1, 4) for r in report.labels},
        # the planted trigger's own norm (what the attack stamped) over the median: the paper's premise
        "planted_to_median": {
            str(b.target): round(b.l1_norm / report.median_l1, 4) for b in bundle.card.backdoors if b.l1_norm
        },
        "ratios": {
            str(r.label): round(r.l1_norm / report.reference.l1_norms[r.label], 3)
            for r in report.labels
            if report.reference is not None
        },
    }


def ratio_table(rows: list[dict]) -> list[str]:
    """How cheap planted and natural labels are: each label's L1 norm over the scan's median, the
    planted labels' per group, and per model the cheapest label that is not planted (what the effect
    size and the summary's strength of evidence are read from)."""

    def spread(values: list[float]) -> str:
        if not values:
            return "-"
        v = np.array(values)
        return f"{len(v):4d}  min {v.min():.2f}  5% {np.percentile(v, 5):.2f}  median {np.median(v):.2f}  max {v.max():.2f}"

    lines = ["L1 norm / median of the scan:"]
    for grp in GROUPS:
        part = [r for r in rows if r["group"] == grp and "to_median" in r]
        planted = [r["to_median"][str(k)] for r in part for k in r["planted"] if str(k) in r["to_median"]]
        natural = [
            min((v for k, v in r["to_median"].items() if int(k) not in r["planted"]), default=np.nan)
            for r in part
        ]
        if grp != "clean":
            lines.append(f"  {grp:6} planted labels          {spread(planted)}")
        lines.append(f"  {grp:6} cheapest natural label  {spread([v for v in natural if np.isfinite(v)])}")
    return [*lines, ""]


#: a planted trigger at most this share of the scan's median norm is one the paper's premise covers
PREMISE = 0.5


def premise_scope(row: dict) -> str | None:
    """ "holds" when every planted trigger of an infected model costs at most ``PREMISE`` of the scan's
    median norm, "fails" when one costs more, None for clean models and rows recorded without it."""
    values = list(row.get("planted_to_median", {}).values())
    if row["group"] == "clean" or not values:
        return None
    return "holds" if max(values) <= PREMISE else "fails"


def outcome(row: dict, method: str) -> str:
    if method not in row["methods"]:
        return "n/a"
    verdict, flagged = row["methods"][method]["verdict"], row["methods"][method]["flagged"]
    if verdict == "inconclusive":
        return "inconclusive"
    if row["group"] == "clean":
        return "false alarm" if flagged else "correct"
    return "exact" if flagged == row["planted"] else ("other" if flagged else "missed")


def rate(rows: list[dict], method: str, groups: tuple[str, ...], what: str) -> str:
    """How often ``method``'s outcome is ``what`` on the models of ``groups``: "percent (count/models)"."""
    sel = [r for r in rows if r["group"] in groups and method in r["methods"]]
    if not sel:
        return "-"
    k = sum(outcome(r, method) == what for r in sel)
    return f"{100 * k / len(sel):.0f} ({k}/{len(sel)})"


def rates(rows: list[dict], method: str) -> str:
    """The table's four columns: exact (small), exact (large), false alarm, inconclusive."""
    return (
        f"{rate(rows, method, ('small',), 'exact'):>15} {rate(rows, method, ('large',), 'exact'):>15} "
        f"{rate(rows, method, ('clean',), 'false alarm'):>13} {rate(rows, method, GROUPS, 'inconclusive'):>13}"
    )


def table(rows: list[dict]) -> str:
    lines = [f"{len(rows)} models; rates in % (count/models)", ""]
    datasets = sorted({r["dataset"] for r in rows})
    archs = sorted({r["arch"] for r in rows}) if len({r["arch"] for r in rows}) > 1 else []
    header = f"{'method':16} {'scope':22} {'exact (small)':>15} {'exact (large)':>15} {'false alarm':>13} {'inconclusive':>13}"
    lines += [header, "-" * len(header)]
    premise = [f"premise {p}" for p in ("holds", "fails") if any(premise_scope(r) == p for r in rows)]
    for method in METHODS:
        for scope in ["all", *datasets, *(f"arch {a}" for a in archs), *premise]:
            part = [
                r
                for r in rows
                if scope in ("all", r["dataset"], f"arch {r['arch']}", f"premise {premise_scope(r)}")
            ]
            lines.append(f"{method:16} {scope:22} {rates(part, method)}")
        lines.append("")
    lines += ratio_table(rows)
    lines.append(f"per model (method outcomes: {' / '.join(METHODS)}):")
    for r in rows:
        outs = " / ".join(outcome(r, m) for m in METHODS)
        lines.append(f"  {r['name']:42} {r['group']:6} planted {r['planted']!s:8} {outs}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/fidelity"))
    p.add_argument("--spec", default="default", help="default, signs, or a zoo spec file")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument(
        "--archs", default="spec", help="comma-separated: spec (the spec's own), mnist, bn-cnn, resnet..."
    )
    p.add_argument("--only", default="", help="comma-separated spec entry names")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--scan-seed", type=int, default=123)
    p.add_argument("--device", default="cpu")
    p.add_argument("--table", action="store_true", help="only tabulate what is on disk")
    p.add_argument(
        "--no-self", action="store_true", help="scan without the self-made reference (its methods: n/a)"
    )
    p.add_argument(
        "--transfer", action="store_true", help="also judge with the transfer check (method: transfer)"
    )
    p.add_argument(
        "--transfer-train",
        action="store_true",
        help="with --transfer: the check's student may also learn from training images, up to its cap",
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    for noisy in ("neuralcleanse",):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cache: dict[str, nc.DatasetSplits] = {}
    loaders = {
        name: (lambda name=name: cache.setdefault(name, nc.load_dataset(name)))
        for name in ("mnist-sample", "fashion-mnist", "traffic-signs")
    }
    rows: list[dict] = []
    for case in cases(args):
        done = (scan_path(case, args) / "report.json").exists()
        if args.table and not done:
            continue
        try:
            rows.append(record(case, args, loaders))  # trains and scans what is not on disk yet
        except KeyboardInterrupt:
            break
        if not done:
            logging.info("%s: %s", case.name, " / ".join(outcome(rows[-1], m) for m in METHODS))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"results{'-plain' if args.no_self else ''}.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows)
    )
    print(table(rows))


if __name__ == "__main__":
    main()
