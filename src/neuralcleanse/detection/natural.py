"""The natural reference: each label's smallest trigger when its pattern must be the label's own average
clean image.

A planted trigger is a feature the clean images of its label do not show (a white square, a watermark),
so the label's free trigger is far cheaper than any trigger drawn with the label's own average image; a
natural shortcut (Fashion-MNIST's bag outline) is a feature of the label's images, so its average image
reaches the label about as cheaply as a free pattern does. Each label's free norm over its norm with the
mean pattern, tested like ``--reference`` (:class:`~neuralcleanse.detection.reference.Reference`), cancels
the shortcuts without a trusted model. Measured in ``docs/fidelity.md`` ("The natural reference").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["NATURAL", "mean_patterns", "natural_note"]

#: the ``model`` of a natural reference's source entry
NATURAL = "label mean images"


def mean_patterns(
    images: torch.Tensor, classes: torch.Tensor, labels: Sequence[int]
) -> tuple[dict[int, torch.Tensor], list[int]]:
    """Each label's mean image over ``images`` of that class (``classes``: their true labels, or the
    model's predictions when the labels are unknown), and the labels without any image, which get the
    mean of all images."""
    overall = images.float().mean(0)
    patterns: dict[int, torch.Tensor] = {}
    missing: list[int] = []
    for k in labels:
        own = images[classes == k]
        if len(own):
            patterns[k] = own.float().mean(0)
        else:
            patterns[k] = overall
            missing.append(k)
    return patterns, missing


def natural_note(*, known: bool, missing: Sequence[int]) -> str:
    """The report's sentence on how the natural reference was made."""
    whose = "their true labels" if known else "the model's predictions (the images have no labels)"
    note = (
        "natural reference: every label was optimised a second time with its pattern fixed to the mean of "
        f"its clean images (grouped by {whose}); each label's norm is divided by that norm"
    )
    if missing:
        note += f"; labels {list(missing)} have no image and used the mean of all images (a weak reference)"
    return note
