"""Adapters for networks whose call is not quite "image batch in, class scores out": several outputs
(a tuple, a dict: logits beside features or auxiliary heads) of which the class scores are one, and
programs that run in another floating-point type than the images (float64, bfloat16, float16)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import DataError, SettingsError

__all__ = ["OutputPick", "InputCast", "parse_output", "pick_output", "describe_outputs", "FLOAT_INPUTS"]

#: input types of a program that images can be cast to (gradients flow through the cast)
FLOAT_INPUTS = (torch.float64, torch.bfloat16, torch.float16)


def parse_output(value: int | str) -> int | str:
    """``--output-key``: an index into a tuple/list of outputs (``0``), or a key of a dict of outputs."""
    if isinstance(value, int):
        return parse_output(str(value))
    text = value.strip()
    if not text:
        raise SettingsError(
            "--output-key is empty: give the index (0) or the key (logits) of the class scores"
        )
    if text.lstrip("-").isdigit() and text.startswith("-"):
        raise SettingsError(f"--output-key {text}: give the index counted from 0, not from the end")
    return int(text) if text.isdigit() else text


def describe_outputs(out: Any) -> str:
    """What a model returned that is not one tensor, for an error that says how to choose."""
    if isinstance(out, (tuple, list)):
        fields = getattr(out, "_fields", None)
        parts = ", ".join(
            f"{name}: {_shape(v)}" if fields else _shape(v)
            for name, v in zip(fields or [""] * len(out), out[:6], strict=False)
        )
        return (
            f"a {type(out).__name__} of {len(out)} outputs ({parts}), not one tensor of class scores: choose "
            "the (N, classes) one by its index, counted from 0, with --output-key (output_key= in the API)"
        )
    if isinstance(out, dict):
        parts = ", ".join(f"{k!r}: {_shape(v)}" for k, v in list(out.items())[:6])
        return (
            f"a dict of outputs ({parts}), not one tensor of class scores: choose the class scores by their "
            "key with --output-key (output_key= in the API)"
        )
    return f"{type(out).__name__}, not a tensor of class scores"


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


class OutputPick(nn.Module):
    """Holds a network with several outputs and returns the one ``key`` names (an index or a dict key)."""

    def __init__(self, module: nn.Module, key: int | str) -> None:
        super().__init__()
        self.module = module
        self.key = key

    def extra_repr(self) -> str:
        return f"output={self.key!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        picked = pick_output(self.module(x), self.key)
        if not isinstance(picked, torch.Tensor):
            raise DataError(
                f"--output-key {self.key!r}: that output is a {type(picked).__name__}, not a tensor"
            )
        return picked


def pick_output(out: Any, key: int | str) -> Any:
    """The output ``key`` names in what a network returned: an index into a tuple or list, a key of a
    dict, a field of a named tuple, or a dotted path through nested outputs (``aux.0``, ``1.logits``) when
    no output has the whole key as its name."""
    if isinstance(out, torch.Tensor):
        raise DataError(f"--output-key {key!r}: the model returns one tensor; leave --output-key out")
    step = _step(out, key)
    if step is not None:
        return step
    if isinstance(key, str) and "." in key:
        value, path = out, list[str]()
        for part in key.split("."):
            inner = _step(value, parse_output(part)) if part.strip() else None
            if inner is None:
                where = f"output {'.'.join(path)!r}" if path else "the model"
                raise DataError(f"--output-key {key!r}: {where} returns {_names(value)}, not {part!r}")
            value = inner
            path.append(part)
        return value
    raise DataError(f"--output-key {key!r}: the model returns {_names(out)}")


def _step(out: Any, key: int | str) -> Any:
    """``out[key]`` (or the named tuple's field ``key``) when there is one, else ``None``."""
    if isinstance(out, (tuple, list)):
        if isinstance(key, int):
            return out[key] if 0 <= key < len(out) else None
        fields = getattr(out, "_fields", ())
        return getattr(out, key) if key in fields else None
    if isinstance(out, dict):
        return out.get(key if key in out else str(key))
    return None


def _names(out: Any) -> str:
    """What can be chosen in ``out``, for an error."""
    if isinstance(out, (tuple, list)):
        fields = getattr(out, "_fields", ())
        named = f"; by name: {', '.join(fields)}" if fields else ""
        return f"{len(out)} outputs (indices 0-{len(out) - 1}{named})"
    if isinstance(out, dict):
        return f"the outputs {', '.join(map(repr, out))}"
    return f"a {type(out).__name__}, with no outputs to choose from"


class InputCast(nn.Module):
    """Holds a program that takes ``dtype`` images: the images are cast to it and the scores back to
    float32, so the optimisation runs in float32 around it."""

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module = module
        self.dtype = dtype

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}"

    def forward(self, x: torch.Tensor) -> Any:
        out = self.module(x.to(self.dtype))
        if isinstance(out, torch.Tensor):
            return out.float()
        if isinstance(out, (tuple, list)):
            return type(out)(v.float() if isinstance(v, torch.Tensor) else v for v in out)
        if isinstance(out, dict):
            return {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in out.items()}
        return out
