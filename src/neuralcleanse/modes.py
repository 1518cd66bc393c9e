"""A model used for inference inside a block and handed back as it was: the one place where a model's
train/eval mode and its parameters' ``requires_grad`` flags are saved and restored."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["frozen_eval"]


@contextlib.contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block ``model`` is in eval mode with every parameter frozen (``requires_grad=False``),
    so gradients flow to inputs only; afterwards, even after an error, its train/eval mode and each
    parameter's flag are what they were.

    Examples::

        with frozen_eval(model):
            logits = model(images)
    """
    was_training = model.training
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    model.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        model.train(was_training)
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
