"""Do planted labels' reversed triggers move few penultimate neurons, and natural labels' many? (ABS's
"compromised neurons", Liu et al. 2019, read off the scans' own triggers; measured, not used.)

For every label of every saved scan: the reversed trigger is stamped on 400 clean test images of other
labels, and the mean rise of each penultimate neuron is taken; ``conc`` is the share of the total rise
held by the top 1/32 of the neurons. Prints the labels at or below 0.8 of their scan's median norm,
planted (P) and natural (.), sorted by that ratio, beside the log index and the trigger's attack success.

    python benchmarks/concentration.py --pair runs/fidelity/models:runs/fidelity/scans-plain \\
        --pair runs/zoo:runs/scans-natural
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch
from safetensors.torch import load_file

import neuralcleanse as nc
from neuralcleanse.features import feature_activations, find_feature_layer


def label_rows(model_dir: Path, scan_dir: Path, cache: dict[str, nc.ImageDataset]) -> list[dict[str, object]]:
    card = json.loads((model_dir / "card.json").read_text())
    planted = {b["target"] for b in card.get("backdoors", [])}
    if card["dataset"] not in cache:
        cache[card["dataset"]] = nc.load_dataset(card["dataset"]).test
    test = cache[card["dataset"]]
    model = nc.load_model_dir(model_dir).model.eval()
    norms = {
        int(k): float(v) for k, v in json.loads((scan_dir / "report.json").read_text())["l1_norms"].items()
    }
    median = statistics.median(norms.values())
    logs = {k: math.log(v) for k, v in norms.items()}
    log_median = statistics.median(logs.values())
    log_mad = 1.4826 * statistics.median(abs(v - log_median) for v in logs.values())
    x, y = test.images[:400], test.labels[:400]
    layer = find_feature_layer(model, example=x[:2])
    clean = feature_activations(model, layer, x)
    rows: list[dict[str, object]] = []
    for k in sorted(norms):
        trigger = load_file(str(scan_dir / "triggers" / f"label_{k:04d}.safetensors"))
        others = y != k
        stamped = (1 - trigger["mask"]) * x[others] + trigger["mask"] * trigger["pattern"]
        rise = (feature_activations(model, layer, stamped).mean(0) - clean[others].mean(0)).clamp(min=0)
        top = max(1, rise.numel() // 32)
        with torch.no_grad():
            success = float((model(stamped).argmax(1) == k).float().mean())
        rows.append({
            "model": scan_dir.name, "label": k, "planted": k in planted, "ratio": norms[k] / median,
            "index": (log_median - logs[k]) / log_mad if log_mad > 0 else 0.0, "asr": success,
            "conc": float(rise.topk(top).values.sum() / rise.sum().clamp(min=1e-9)),
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pair", action="append", required=True, help="MODELS_DIR:SCANS_DIR (same names)")
    args = parser.parse_args()
    torch.manual_seed(0)
    cache: dict[str, nc.ImageDataset] = {}
    rows: list[dict[str, object]] = []
    for pair in args.pair:
        models, scans = (Path(p) for p in pair.split(":"))
        for scan_dir in sorted(p for p in scans.iterdir() if (p / "report.json").is_file()):
            rows += label_rows(models / scan_dir.name, scan_dir, cache)
    print(f"{'model':40s} label kind ratio index   asr  conc")
    for r in sorted((r for r in rows if float(r["ratio"]) <= 0.8), key=lambda r: float(r["ratio"])):  # type: ignore[arg-type]
        print(f"{r['model']!s:40s} {r['label']!s:>5} {'P' if r['planted'] else '.':>4} {r['ratio']:5.2f} "
              f"{r['index']:5.2f} {r['asr']:5.2f} {r['conc']:5.2f}")  # fmt: skip
    for lo, hi in ((0.0, 0.3), (0.3, 0.6), (0.6, 0.8)):
        for kind in (True, False):
            vals = [float(r["conc"]) for r in rows if r["planted"] == kind and lo < float(r["ratio"]) <= hi]  # type: ignore[arg-type]
            if vals:
                print(f"ratio {lo}-{hi} {'planted' if kind else 'natural'}: {len(vals)} labels, "
                      f"conc {min(vals):.2f}-{max(vals):.2f} (median {statistics.median(vals):.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
