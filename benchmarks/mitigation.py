"""Validation and the three mitigations on infected zoo models, in one table.

    neuralcleanse zoo --out runs/zoo --scan                  # builds and scans the models first
    python benchmarks/mitigation.py --zoo runs/zoo --models mnist-badnets,fmnist-badnets,mnist-trojan-square

For every model: the flagged label of its scan (the real target when the scan missed it), validation of the
reversed trigger against the real one, then the input filter (5% false positives), neuron pruning (up to
30%) and unlearning (10% of the training data, 20% stamped, 1 epoch), each with clean accuracy and attack
success of the real trigger before and after. Prints a markdown table (and writes it with --markdown).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import neuralcleanse as nc
from neuralcleanse.detection import DetectionReport
from neuralcleanse.mitigation import filter_inputs, prune_neurons, unlearn
from neuralcleanse.validation import validate_trigger


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", type=Path, default=Path("runs/zoo"))
    p.add_argument(
        "--models", default="mnist-badnets,fmnist-badnets,mnist-trojan-square,mnist-trojan-watermark"
    )
    p.add_argument("--markdown", type=Path)
    args = p.parse_args()
    header = (
        "| model | label (flagged) | IoU / shared top-1% neurons | filter FNR @ FPR | prune: fraction, acc, ASR "
        "| unlearn: acc, ASR | clean fine-tune: ASR |"
    )
    lines = [header, "|" + "---|" * 7]
    datasets: dict[str, nc.DatasetSplits] = {}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        bundle = nc.load_model_dir(args.zoo / name)
        card = bundle.card
        report = DetectionReport.load(args.zoo / "scans" / name)
        ds = card.dataset or "mnist-sample"
        data = datasets.setdefault(ds, nc.load_dataset(ds.split("/")[0]))
        target = card.targets[0]
        label = target if target in report.flagged else (report.flagged[0] if report.flagged else target)
        real = bundle.triggers[card.targets.index(target)]
        rev = report.triggers[label]
        kw = {"label": label, "real_trigger": real}
        start = time.perf_counter()
        v = validate_trigger(bundle.model, rev, data.test, **kw)
        _, f = filter_inputs(bundle.model, data.test, rev, **kw)
        _, pr = prune_neurons(
            bundle.model, data.test, rev, max_accuracy_drop=None, **kw
        )  # as the paper: no budget
        _, u = unlearn(bundle.model, data.train, data.test, rev, **kw)
        seconds = time.perf_counter() - start
        base = u.details["baselines"]["clean fine-tuning"]
        row = (
            f"| {name} | {label} ({'yes' if label in report.flagged else 'no'}) "
            f"| {v.mask_iou:.2f} / {100 * (v.shared_top_neurons or 0):.0f}% "
            f"| {pct(f.details['fnr']['real'])} @ {pct(f.details['fpr_measured'])} "
            f"| {pct(pr.details['fraction_pruned'])}, {pct(pr.before.clean_accuracy)}→{pct(pr.after.clean_accuracy)}, "
            f"{pct(pr.before.real_attack_success)}→{pct(pr.after.real_attack_success)} "
            f"| {pct(u.before.clean_accuracy)}→{pct(u.after.clean_accuracy)}, "
            f"{pct(u.before.real_attack_success)}→{pct(u.after.real_attack_success)} "
            f"| {pct(base['real_attack_success'])} |"
        )
        lines.append(row)
        print(row, f"({seconds:.0f} s)", flush=True)
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
