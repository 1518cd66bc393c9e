"""Models that return probabilities (a final softmax, the Keras habit; or a sigmoid per class) instead of
logits.

Trigger reverse engineering minimises cross-entropy on the model's outputs, which must be logits: on
probabilities, ``log_softmax(p)`` is nearly flat (every ``p`` is in ``[0, 1]``) and the optimisation
barely moves. The logarithm of the probabilities is a valid set of logits for the same distribution
(``softmax(log p) = p``), so such a model is wrapped to return ``log(clamp(p, min=tiny))``. A sigmoid head
(one independent probability per class, a multi-label habit) is wrapped to return ``logit(p)``: the scores
before its sigmoid, whose arg-max is the model's prediction.

The kind of outputs is either declared (``"logits"``, ``"probabilities"``, ``"sigmoid"``) or detected
(``"auto"``) on a batch of clean images: probabilities when every output is non-negative and every row
sums to 1 within a tolerance; sigmoid outputs when every output is in ``[0, 1]`` but the rows do not all
sum to 1. Logits almost never pass either test by accident (every score of every image would have to lie
in ``[0, 1]``). The decision is returned as a sentence for the report.

Examples::

    >>> wrapped, note = as_logits(model, images[:32], outputs="auto")
    >>> note
    'outputs are probabilities (detected): optimising on their logarithm'
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import nn

from ..errors import DataError, SettingsError
from ..modes import frozen_eval

__all__ = ["OutputKind", "LogProbabilities", "SigmoidLogits", "are_probabilities", "are_sigmoid", "as_logits"]

log = logging.getLogger(__name__)

OutputKind = Literal["logits", "probabilities", "sigmoid", "auto"]
OUTPUT_KINDS: tuple[str, ...] = ("logits", "probabilities", "sigmoid", "auto")

#: smallest probability whose logarithm is taken (float32's smallest normal number: log ≈ -87.3)
TINY = float(torch.finfo(torch.float32).tiny)


class _ScoreTransform(nn.Module):
    """A model whose outputs pass through ``transform``, with one clamping constant (``bound``).
    ``train()``/``eval()`` and parameters pass through to the wrapped model (``self.model``)."""

    bound_name = "bound"

    def __init__(self, model: nn.Module, bound: float) -> None:
        super().__init__()
        self.model = model
        self.bound = float(bound)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model.__class__.__name__}, {self.bound_name}={self.bound:g})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(self.model(x))

    def transform(self, scores: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class LogProbabilities(_ScoreTransform):
    """Wraps a model that returns probabilities so that it returns their logarithm (valid logits).

    Shape:
        input: whatever the model takes; output: ``(N, classes)`` log-probabilities, ``≥ log(tiny)``.
    """

    bound_name = "tiny"

    def __init__(self, model: nn.Module, *, tiny: float = TINY) -> None:
        super().__init__(model, tiny)

    @property
    def tiny(self) -> float:
        return self.bound

    def transform(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.log(scores.clamp(min=self.bound))


class SigmoidLogits(_ScoreTransform):
    """Wraps a model with a sigmoid per class so that it returns ``logit(p)``, the scores before the sigmoid
    (``p`` clamped to ``[eps, 1 - eps]``)."""

    bound_name = "eps"

    def __init__(self, model: nn.Module, *, eps: float = 1e-7) -> None:
        super().__init__(model, eps)

    def transform(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.logit(scores, eps=self.bound)


def are_sigmoid(outputs: torch.Tensor, *, atol: float = 1e-3) -> bool:
    """Whether every entry of ``outputs`` ``(N, classes)`` is in ``[0, 1]`` (within ``atol``) while the rows
    are not all probability vectors (see :func:`are_probabilities`): one sigmoid per class."""
    out = outputs.detach().double()
    if not torch.isfinite(out).all() or are_probabilities(outputs, atol=atol):
        return False
    return bool(((out >= -atol) & (out <= 1 + atol)).all())


def are_probabilities(outputs: torch.Tensor, *, atol: float = 1e-3) -> bool:
    """Whether every row of ``outputs`` ``(N, classes)`` is a probability vector: all entries ``≥ -atol``
    and each row's sum within ``atol`` of 1."""
    if outputs.ndim != 2 or outputs.shape[0] == 0:
        raise DataError(f"model outputs must be (N, classes) with N ≥ 1, got shape {tuple(outputs.shape)}")
    out = outputs.detach().double()
    if not torch.isfinite(out).all():
        return False
    return bool((out >= -atol).all() and ((out.sum(1) - 1).abs() <= atol).all())


@torch.no_grad()
def _outputs(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with frozen_eval(model):
        out = model(images)
    if not isinstance(out, torch.Tensor):
        from .adapt import describe_outputs

        raise DataError(f"the model returns {describe_outputs(out)}")
    return out


def as_logits(
    model: nn.Module, images: torch.Tensor | None = None, *, outputs: OutputKind = "auto", atol: float = 1e-3
) -> tuple[nn.Module, str]:
    """``model`` itself if its outputs are logits, else wrapped in :class:`LogProbabilities` or
    :class:`SigmoidLogits`; and a note.

    Args:
        model: maps the images to class scores.
        images: a batch of clean images the model takes (needed for ``"auto"``; a few dozen suffice).
        outputs: ``"logits"``, ``"probabilities"``, ``"sigmoid"`` (declared) or ``"auto"`` (detected on
            ``images``, see :func:`are_probabilities` and :func:`are_sigmoid`). Declared probabilities and
            sigmoid outputs are checked on ``images`` when given.
        atol: tolerance of the detection.

    Returns:
        the model to optimise on, and a sentence for the report saying which outputs were used and whether
        that was declared or detected.
    """
    if outputs not in OUTPUT_KINDS:
        raise SettingsError(f"model outputs must be one of {', '.join(OUTPUT_KINDS)}, got {outputs!r}")
    if outputs == "auto":
        if images is None or len(images) == 0:
            raise SettingsError("detecting whether the outputs are probabilities needs a batch of images")
        scores = _outputs(model, images)
        kind = (
            "probabilities"
            if are_probabilities(scores, atol=atol)
            else "sigmoid"
            if are_sigmoid(scores, atol=atol)
            else "logits"
        )
        how = "detected"
    else:
        kind = outputs
        how = "declared"
        if images is not None and len(images) > 0:
            scores = _outputs(model, images)
            found = are_probabilities(scores, atol=atol)
            if kind == "probabilities" and not found:
                raise SettingsError(
                    "the model's outputs were declared probabilities, but on these images they are not "
                    "(negative scores, or rows that do not sum to 1): declare logits or auto"
                )
            if kind == "sigmoid" and not (found or are_sigmoid(scores, atol=atol)):
                raise SettingsError(
                    "the model's outputs were declared sigmoid, but on these images some are outside [0, 1]: "
                    "declare logits or auto"
                )
            if kind == "logits" and found:
                note = (
                    "outputs were declared logits, but on these images every row is a probability vector "
                    "(a final softmax?): optimising on them as they are, which is weak for probabilities; "
                    "declare probabilities or auto"
                )
                log.warning(note)
                return model, note
    wrapped: nn.Module
    if kind == "probabilities":
        wrapped, note = (
            LogProbabilities(model),
            f"outputs are probabilities ({how}): optimising on their logarithm",
        )
    elif kind == "sigmoid":
        wrapped, note = (
            SigmoidLogits(model),
            f"outputs are one sigmoid probability per class ({how}): optimising on their logit",
        )
    else:
        return model, f"outputs are logits ({how}): optimising on them as they are"
    wrapped.training = model.training  # a new module starts in training mode: match the model's
    return wrapped, note
