"""How compact a reversed trigger is: the share of its mask's mass inside the best small square window.

A planted patch (BadNets, a Trojan square, a small pattern) is recovered as a mask concentrated in one
place; a natural shortcut of a task (Fashion-MNIST's bag: an outline that turns any garment into a bag)
is recovered as a mask spread over the object. TABOR (Guo et al., 2019) penalises scattered masks during
the optimisation for this reason; here compactness is measured after it, on the reversed trigger, and the
default verdict (:class:`~neuralcleanse.detection.statistics.EffectStatistic`) lets a label whose
trigger is compact be flagged up to a larger fraction of the median norm. Both constants were read off
the fidelity benchmark's seed-0 scans and checked on seeds 1-2 (``docs/fidelity.md``).

Examples::

    >>> import numpy as np
    >>> patch = np.zeros((28, 28)); patch[23:27, 23:27] = 1
    >>> window_share(patch)
    1.0
    >>> outline = np.zeros((28, 28)); outline[2, :] = outline[-3, :] = outline[:, 2] = outline[:, -3] = 1
    >>> round(window_share(outline), 2)
    0.18
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np
import torch

__all__ = ["COMPACT_SHARE", "COMPACT_SIDE", "compact_labels", "window_share"]

#: the window's side, as a fraction of the image's height
COMPACT_SIDE = 0.35
#: a trigger is compact when at least this share of its mask's mass lies inside one such window
COMPACT_SHARE = 0.6


def window_share(mask: np.ndarray | torch.Tensor, *, side: float = COMPACT_SIDE) -> float:
    """The largest share of the ``(H, W)`` mask's mass inside a square window of ``side`` × H pixels
    (0 for an empty mask)."""
    m = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask, dtype=np.float64)
    h, w = m.shape[-2], m.shape[-1]
    m = m.reshape(h, w)
    total = float(m.sum())
    if not total > 0:
        return 0.0
    k = min(max(2, round(side * h)), h, w)
    c = np.pad(m, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    sums = c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]
    return float(sums.max()) / total


def compact_labels(
    masks: Mapping[int, np.ndarray | torch.Tensor], labels: Sequence[int], *, skip: Collection[int] = ()
) -> list[bool]:
    """For each of ``labels``, whether its mask is compact (:data:`COMPACT_SHARE`); labels without a
    mask, or in ``skip`` (screened labels, whose mask is the first pass's), are not."""
    return [k in masks and k not in skip and window_share(masks[k]) >= COMPACT_SHARE for k in labels]
