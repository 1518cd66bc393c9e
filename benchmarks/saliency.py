"""Does the label's own evidence lie under its reversed mask? Saliency and occlusion of the label's images.

    python benchmarks/saliency.py --out runs/fidelity                  # every scan of fidelity.py --no-self on disk
    python benchmarks/saliency.py --out runs/fidelity --only 'fmnist-*'

A natural shortcut (Fashion-MNIST's bag: a handle-like stroke that turns any garment into a bag) is made
of a feature the network uses to recognise the label's own images, so on those images the network is
sensitive where the reversed mask lies. A planted trigger is in none of the clean images: on the target
label's own images the network looks at the object, not at the trigger's pixels. Both measures compare
the label's own images with the images of the other labels (each judged on its own label), so that a
mask over the object, salient for every label, scores about 1:

* ``grad``: the mask-weighted share of the input gradient of the image's own log-probability, over its
  mean over the pixels (``sum(w·|g|) / mean(|g|)``, ``w = m / sum(m)``), on the label's images, divided by
  the same on the other labels' images;
* ``occl``: the drop of the own log-probability when the mask's pixels are blanked (``(1 - m)·x``), on
  the label's images, divided by the same on the others'.

It prints, for the planted labels and the three cheapest other labels of every scan on disk, the label's
norm over the scan's median and both ratios, then the ranges by kind for the labels at most 0.45 of the
median (where the bag and many planted triggers sit). No new optimisation: gradients of the model over
the scan's triggers.
"""

from __future__ import annotations

import sys

import torch
from scans_on_disk import print_ranges, probe_parser, scans_on_disk
from torch.nn import functional as F

from neuralcleanse.metrics import predict
from neuralcleanse.modes import frozen_eval


def _own_logp(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(model(x).float(), 1).gather(1, y[:, None])[:, 0]


def saliency_share(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> float:
    """Mean over ``images`` of the mask-weighted input-gradient magnitude of each image's own
    log-probability over its mean over the pixels (1: the mask sits on average saliency)."""
    w = mask / mask.sum().clamp_min(1e-12)
    shares = []
    with frozen_eval(model), torch.enable_grad():
        for i in range(0, len(images), 256):
            x = images[i : i + 256].clone().requires_grad_(True)
            (g,) = torch.autograd.grad(_own_logp(model, x, labels[i : i + 256]).sum(), [x])
            s = g.abs().sum(1)  # N, H, W
            shares.append((s * w).sum((1, 2)) / s.mean((1, 2)).clamp_min(1e-12))
    return float(torch.cat(shares).mean())


def occlusion_drop(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> float:
    """Mean drop of each image's own log-probability when the mask's pixels are blanked."""
    drops = []
    with frozen_eval(model), torch.no_grad():
        for i in range(0, len(images), 256):
            x, y = images[i : i + 256], labels[i : i + 256]
            drops.append(_own_logp(model, x, y) - _own_logp(model, (1 - mask) * x, y))
    return float(torch.cat(drops).mean())


def main() -> None:
    args = probe_parser(__doc__).parse_args()
    rows = []
    print(f"{'model':44} {'label':>5} {'kind':8} {'/median':>7} {'grad':>6} {'occl':>7}")
    for found in scans_on_disk(args.out, args.only, args.images):
        model, report, images, labels = found.bundle.model, found.report, found.images, found.labels
        correct = predict(model, images) == labels  # each image is judged on its own label
        images, labels = images[correct], labels[correct]
        for r, kind in found.probed():
            mask = report.triggers[r.label].mask.to(images.dtype)
            own, other = labels == r.label, labels != r.label
            grad = saliency_share(model, images[own], labels[own], mask) / saliency_share(
                model, images[other], labels[other], mask
            )
            d_own = occlusion_drop(model, images[own], labels[own], mask)
            d_other = occlusion_drop(model, images[other], labels[other], mask)
            occl = d_own / d_other if abs(d_other) > 1e-6 else float("nan")
            row = {
                "model": found.name,
                "planted": found.planted,
                "label": r.label,
                "kind": kind,
                "to_median": r.l1_norm / report.median_l1,
                "grad": grad,
                "occl": occl,
                "drop_own": d_own,
                "drop_other": d_other,
            }
            rows.append(row)
            print(f"{found.name:44} {r.label:5d} {kind:8} {row['to_median']:7.2f} {grad:6.2f} {occl:7.2f}")
        sys.stdout.flush()
    print_ranges(rows, ("grad", "occl"), args.json)


if __name__ == "__main__":
    main()
