"""Models that return probabilities (a final softmax, the Keras habit) instead of logits.

Trigger reverse engineering minimises cross-entropy on the model's outputs, which must be logits: on
probabilities, ``log_softmax(p)`` is nearly flat (every ``p`` is in ``[0, 1]``) and the optimisation
barely moves. The logarithm of the probabilities is a valid set of logits for the same distribution
(``softmax(log p) = p``), so such a model is wrapped to return ``log(clamp(p, min=tiny))``.

Whether a model's outputs are probabilities is either declared (``"logits"``, ``"probabilities"``) or
detected (``"auto"``) on a batch of clean images: every output non-negative and every row summing to 1
within a tolerance. Logits almost never pass that test by accident (it needs every score ``≥ 0`` and
their sum exactly 1 on every image). The decision is returned as a sentence for the report.

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

__all__ = ["OutputKind", "LogProbabilities", "are_probabilities", "as_logits"]

log = logging.getLogger(__name__)

OutputKind = Literal["logits", "probabilities", "auto"]
OUTPUT_KINDS: tuple[str, ...] = ("logits", "probabilities", "auto")

#: smallest probability whose logarithm is taken (float32's smallest normal number: log ≈ -87.3)
TINY = float(torch.finfo(torch.float32).tiny)


class LogProbabilities(nn.Module):
    """Wraps a model that returns probabilities so that it returns their logarithm (valid logits).

    ``train()``/``eval()`` and parameters pass through to the wrapped model (``self.model``).

    Shape:
        input: whatever the model takes; output: ``(N, classes)`` log-probabilities, ``≥ log(tiny)``.
    """

    def __init__(self, model: nn.Module, *, tiny: float = TINY) -> None:
        super().__init__()
        self.model = model
        self.tiny = float(tiny)

    def __repr__(self) -> str:
        return f"LogProbabilities({self.model.__class__.__name__}, tiny={self.tiny:g})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p: torch.Tensor = self.model(x)
        return torch.log(p.clamp(min=self.tiny))


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
        raise DataError(f"model output must be a tensor of class scores, got {type(out).__name__}")
    return out


def as_logits(
    model: nn.Module, images: torch.Tensor | None = None, *, outputs: OutputKind = "auto", atol: float = 1e-3
) -> tuple[nn.Module, str]:
    """``model`` itself if its outputs are logits, else wrapped in :class:`LogProbabilities`; and a note.

    Args:
        model: maps the images to class scores.
        images: a batch of clean images the model takes (needed for ``"auto"``; a few dozen suffice).
        outputs: ``"logits"``, ``"probabilities"`` (declared) or ``"auto"`` (detected on ``images``, see
            :func:`are_probabilities`). Declared probabilities are checked on ``images`` when given.
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
        probabilities = are_probabilities(_outputs(model, images), atol=atol)
        how = "detected"
    else:
        probabilities = outputs == "probabilities"
        how = "declared"
        if images is not None and len(images) > 0:
            found = are_probabilities(_outputs(model, images), atol=atol)
            if probabilities and not found:
                raise SettingsError(
                    "the model's outputs were declared probabilities, but on these images they are not "
                    "(negative scores, or rows that do not sum to 1): declare logits or auto"
                )
            if not probabilities and found:
                note = (
                    "outputs were declared logits, but on these images every row is a probability vector "
                    "(a final softmax?): optimising on them as they are, which is weak for probabilities; "
                    "declare probabilities or auto"
                )
                log.warning(note)
                return model, note
    if probabilities:
        wrapped = LogProbabilities(model)
        wrapped.training = model.training  # a new module starts in training mode: match the model's
        return wrapped, f"outputs are probabilities ({how}): optimising on their logarithm"
    return model, f"outputs are logits ({how}): optimising on them as they are"
