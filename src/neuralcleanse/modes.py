"""A model used inside a block and handed back as it was: the one place where a model's train/eval mode
and its parameters' ``requires_grad`` flags are saved and restored."""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from typing import TypeVar

from torch import nn

__all__ = ["copy_model", "frozen_eval", "requires_grad", "train_mode"]

M = TypeVar("M", bound=nn.Module)


def copy_model(model: M) -> M:
    """A deep copy of ``model``. Copying an exported program's module makes torch's pytree warn that its
    own ``LeafSpec`` check is deprecated (a FutureWarning about torch's code, not the user's): silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*LeafSpec")
        return copy.deepcopy(model)


@contextlib.contextmanager
def train_mode(model: nn.Module, mode: bool = True) -> Iterator[nn.Module]:
    """Within the block ``model`` is in training mode (``mode=False``: eval mode); afterwards, even after
    an error, every submodule is in the mode it was (a model in training with a frozen BatchNorm part in
    eval mode comes back so)."""
    modules = list(model.modules())
    flags = [m.training for m in modules]
    model.train(mode)
    try:
        yield model
    finally:
        for m, was in zip(modules, flags, strict=True):
            m.training = was


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
