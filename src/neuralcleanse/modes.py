"""A model used inside a block and handed back as it was: the one place where a model's train/eval mode
and its parameters' ``requires_grad`` flags are saved and restored."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["frozen_eval", "requires_grad", "train_mode"]


@contextlib.contextmanager
def train_mode(model: nn.Module, mode: bool = True) -> Iterator[nn.Module]:
    """Within the block ``model`` is in training mode (``mode=False``: eval mode); afterwards, even after
    an error, in the mode it was."""
    was_training = model.training
    model.train(mode)
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def requires_grad(model: nn.Module, flag: bool) -> Iterator[nn.Module]:
    """Within the block every parameter of ``model`` has ``requires_grad=flag``; afterwards, even after an
    error, each has its own flag again."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(flag)
    try:
        yield model
    finally:
        for p, was in zip(params, flags, strict=True):
            p.requires_grad_(was)


@contextlib.contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block ``model`` is in eval mode with every parameter frozen (``requires_grad=False``),
    so gradients flow to inputs only; afterwards, even after an error, its train/eval mode and each
    parameter's flag are what they were.

    Examples::

        with frozen_eval(model):
            logits = model(images)
    """
    with train_mode(model, False), requires_grad(model, False):
        yield model
