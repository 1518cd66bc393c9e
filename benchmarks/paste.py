"""Is a reversed trigger the label's own feature? Paste real images of the label through its mask; shift it.

    python benchmarks/paste.py --out runs/fidelity                  # every scan of fidelity.py --no-self on disk
    python benchmarks/paste.py --out runs/fidelity --only 'fmnist-*'

A natural shortcut (Fashion-MNIST's bag: an outline that turns any garment into a bag) is a feature the
label's own clean images show, so the reversed mask marks where that feature lies, and pasting a *real*
image of the label through the mask, ``(1 - m)·x + m·x_k`` with ``x`` an image of another label and
``x_k`` one of label ``k``, should move many images to ``k`` as the optimised pattern does. A planted
trigger (a white square in a corner, a watermark) is in none of the clean images: what real images of
the target label hold under its mask is background, and pasting it moves few images. This needs no new
optimisation and no student, only forward passes of the model over the scan's triggers.

For every scan on disk (``OUT/scans-plain``, models in ``OUT/models``) it prints, for the planted labels and
the three cheapest other labels: the label's norm over the scan's median, the reversed trigger's attack
success on clean test images of other labels, and the paste's: with the mask as reversed (``paste``) and
with the mask scaled so its largest value is 1 (``paste1``). Each image of another label is paired with a
random image of label ``k`` (seeded). ``shift1``-``shift3``: the reversed trigger's attack success when mask
and pattern are moved by 1, 2 and 3 pixels (mean over the eight directions, zeros shifted in): a natural
feature might still work a little way off, a planted one only where it was planted.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from scans_on_disk import print_ranges, probe_parser, scans_on_disk

import neuralcleanse as nc
from neuralcleanse.modes import frozen_eval


def _hits(model: torch.nn.Module, images: torch.Tensor, k: int) -> float:
    with frozen_eval(model), torch.no_grad():
        hits = [model(images[i : i + 256]).argmax(1) == k for i in range(0, len(images), 256)]
    return float(torch.cat(hits).float().mean())


def shifted(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``t`` moved by ``(dy, dx)`` pixels over its last two axes, zeros shifted in."""
    out = torch.zeros_like(t)
    h, w = t.shape[-2:]
    src_y, dst_y = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    src_x, dst_x = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., dst_y, dst_x] = t[..., src_y, src_x]
    return out


def shift_success(
    model: torch.nn.Module, trigger: nc.Trigger, victims: torch.Tensor, k: int, d: int
) -> float:
    """The mean attack success of ``trigger`` moved by ``d`` pixels in each of the eight directions."""
    moves = [(dy * d, dx * d) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    return float(
        np.mean(
            [
                _hits(
                    model,
                    (1 - shifted(trigger.mask, *m)) * victims
                    + shifted(trigger.mask, *m) * shifted(trigger.pattern, *m),
                    k,
                )
                for m in moves
            ]
        )
    )


def paste_success(
    model: torch.nn.Module,
    mask: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    k: int,
    *,
    seed: int = 0,
) -> float:
    """Fraction of the images of other labels that ``model`` puts in ``k`` once a random image of label
    ``k`` is pasted through ``mask`` (``(H, W)`` in [0, 1])."""
    victims = images[labels != k]
    own = images[labels == k]
    if not len(own) or not len(victims):
        return float("nan")
    gen = torch.Generator().manual_seed(seed)
    donors = own[torch.randint(len(own), (len(victims),), generator=gen)]
    m = mask.to(images.dtype)
    return _hits(model, (1 - m) * victims + m * donors, k)


def main() -> None:
    args = probe_parser(__doc__).parse_args()
    rows = []
    print(
        f"{'model':40} {'label':>5} {'kind':8} {'/median':>7} {'ASR':>5} {'paste':>6} {'paste1':>6} {'shift1':>6} {'shift2':>6} {'shift3':>6}"
    )
    for found in scans_on_disk(args.out, args.only, args.images):
        name, bundle, report, planted = found.name, found.bundle, found.report, found.planted
        images, labels, median = found.images, found.labels, report.median_l1
        for r, kind in found.probed():
            trig = report.triggers[r.label]
            asr = _hits(bundle.model, trig.apply(images[labels != r.label]), r.label)
            soft = paste_success(bundle.model, trig.mask, images, labels, r.label)
            top = float(trig.mask.max())
            full = paste_success(
                bundle.model, trig.mask / top if top > 0 else trig.mask, images, labels, r.label
            )
            moved = [
                shift_success(bundle.model, trig, images[labels != r.label], r.label, d) for d in (1, 2, 3)
            ]
            row = {
                "model": name,
                "planted": planted,
                "label": r.label,
                "kind": kind,
                "to_median": r.l1_norm / median,
                "asr": asr,
                "paste": soft,
                "paste1": full,
                **{f"shift{d}": v for d, v in zip((1, 2, 3), moved, strict=True)},
            }
            rows.append(row)
            print(
                f"{name:40} {r.label:5d} {kind:8} {row['to_median']:7.2f} {asr:5.2f} {soft:6.2f} {full:6.2f} "
                + " ".join(f"{v:6.2f}" for v in moved)
            )
        sys.stdout.flush()
    print_ranges(rows, ("paste", "paste1", "shift1", "shift2", "shift3"), args.json)


if __name__ == "__main__":
    main()
