"""Do reversed triggers transfer to a student? A probe for telling planted triggers from natural ones.

    python benchmarks/transfer.py --out runs/fidelity                  # every default-zoo scan on disk
    python benchmarks/transfer.py --out runs/fidelity --only 'mnist-*-s0'

A student distilled from the model on clean images (``detection.distill``, the model's own
architecture, freshly initialised) learns the task's classes and their natural shortcuts, never a
planted trigger. So a reversed trigger of a natural shortcut (the Fashion-MNIST bag drawn in a few
strokes) should also move the student towards its label, and a reversed planted trigger should not.
Unlike the self-made reference (``scan --self-reference``), this needs no scan of the student: only
the triggers the model's scan already has, stamped on clean images and shown to the student.

For every scan of ``fidelity.py --no-self`` on disk (``OUT/scans-plain``, models in ``OUT/models``) it
distils a student on the scan's dataset's clean test images, then prints, for the planted labels and
the three cheapest other labels: the label's norm over the scan's median, the trigger's attack success
on the model (from the scan) and on the student (the same clean images of other labels, stamped), and
their ratio.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import torch
from scans_on_disk import probe_parser, scans_on_disk

import neuralcleanse as nc
from neuralcleanse.detection.distill import DistillSettings, distil_student
from neuralcleanse.modes import frozen_eval


def attack_success(
    model: torch.nn.Module, trigger: nc.Trigger, images: torch.Tensor, labels: torch.Tensor, k: int
) -> float:
    """Fraction of the images of other labels that ``model`` puts in ``k`` once stamped."""
    victims = images[labels != k]
    with frozen_eval(model), torch.no_grad():
        hits = [
            model(trigger.apply(victims[i : i + 256])).argmax(1) == k for i in range(0, len(victims), 256)
        ]
    return float(torch.cat(hits).float().mean())


def relative_transfer(rows: list[dict[str, object]]) -> None:
    """Each row's student attack success over the median of its model's other natural labels' (``relative``):
    students of some networks take up every trigger less, so a label is compared with its own model's."""
    for r in rows:
        others = [
            o["asr_student"]
            for o in rows
            if o["model"] == r["model"] and o["kind"] == "natural" and o is not r
        ]
        r["relative"] = float(r["asr_student"]) / max(float(np.median(others)), 0.01) if others else math.nan  # type: ignore[arg-type]


def main() -> None:
    ap = probe_parser(__doc__, images="clean test images for the student")
    ap.add_argument(
        "--natural", type=int, default=3, help="how many of the cheapest unplanted labels to probe"
    )
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    print(
        f"{'model':38} {'planted':9} {'label':>5} {'kind':8} {'/median':>7} {'ASR model':>9} {'ASR student':>11} {'ratio':>6}"
    )
    for found in scans_on_disk(args.out, args.only, args.images):
        name, bundle, report, planted = found.name, found.bundle, found.report, found.planted
        images, labels, median = found.images, found.labels, report.median_l1
        student = distil_student(bundle.model, images, settings=DistillSettings(seed=bundle.card.seed))
        student_model = student.model
        for r, kind in found.probed(args.natural):
            trig = report.triggers[r.label]
            on_model = attack_success(bundle.model, trig, images, labels, r.label)
            on_student = attack_success(student_model, trig, images, labels, r.label)
            ratio = on_student / on_model if on_model > 0 else math.nan
            rows.append(
                {
                    "model": name,
                    "planted": planted,
                    "label": r.label,
                    "kind": kind,
                    "to_median": r.l1_norm / median,
                    "asr_model": on_model,
                    "asr_student": on_student,
                }
            )
            print(
                f"{name:38} {planted!s:9} {r.label:5d} {kind:8} {r.l1_norm / median:7.2f} {on_model:9.2f} {on_student:11.2f} {ratio:6.2f}"
            )
        sys.stdout.flush()
    relative_transfer(rows)
    for kind in ("planted", "natural"):
        for key in ("asr_student", "relative"):
            part = [r[key] for r in rows if r["kind"] == kind]
            if part:
                print(
                    f"{kind}: {key} median {np.median(part):.2f}, range {min(part):.2f}-{max(part):.2f} ({len(part)} labels)"
                )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
