"""The second-to-last layer: finding it, reading its activations, and masking its neurons.

Trigger validation, the input filter and neuron pruning all work on the activations that feed the final
classifier (the paper's "second-to-last layer"). The layer is either named by the user (a
``get_submodule`` path, whose output is read) or found automatically: a model that declares
``penultimate`` (the paper's architectures do) names it; otherwise the input of the model's last linear
layer is used. Hooks are always removed, also after an error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import DataError, SettingsError

__all__ = ["FeatureLayer", "find_feature_layer", "feature_activations", "neuron_mask", "tap"]


@dataclass(frozen=True)
class FeatureLayer:
    """Where the features are read: the output of ``module`` (``name``), feeding the linear ``consumer``."""

    name: str
    module: nn.Module
    consumer: nn.Linear
    read_input_of_consumer: bool = False

    @property
    def width(self) -> int:
        return int(self.consumer.in_features)


def _linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def find_feature_layer(model: nn.Module, name: str | None = None) -> FeatureLayer:
    """The penultimate feature layer of ``model`` (see the module docstring); one-line errors."""
    linears = _linears(model)
    if not linears:
        raise SettingsError("the model has no linear layer: name the feature layer to use (--layer)")
    if name is None:
        for prefix, m in model.named_modules():
            declared = getattr(m, "penultimate", None)
            if isinstance(declared, str):
                name = f"{prefix}.{declared}" if prefix else declared
                break
    if name is None:
        last_name, last = linears[-1]
        return FeatureLayer(f"input of {last_name}", last, last, read_input_of_consumer=True)
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise SettingsError(f"layer {name!r} does not exist in the model") from None
    names = [n for n, _ in model.named_modules()]
    after = [m for n, m in linears if names.index(n) > names.index(name) and not n.startswith(name + ".")]
    if not after:
        raise SettingsError(f"layer {name!r}: no linear layer follows it; name an earlier layer")
    return FeatureLayer(name, module, after[0])


@contextmanager
def tap(layer: FeatureLayer, sink: list[torch.Tensor]) -> Iterator[None]:
    """Within the block, every forward pass appends the ``(N, width)`` features to ``sink`` (gradients flow)."""
    if layer.read_input_of_consumer:
        handle = layer.consumer.register_forward_pre_hook(lambda _m, args: sink.append(args[0].flatten(1)))
    else:
        handle = layer.module.register_forward_hook(lambda _m, _i, out: sink.append(out.flatten(1)))
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def feature_activations(
    model: nn.Module,
    layer: FeatureLayer,
    images: torch.Tensor,
    *,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Activations ``(N, width)`` of the feature layer for ``images`` (model in eval mode, restored after)."""
    sink: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        with tap(layer, sink):
            for start in range(0, len(images), batch_size):
                model(images[start : start + batch_size].to(device))
    finally:
        model.train(was_training)
    if not sink:
        raise DataError("no images to read activations from")
    out = torch.cat([s.cpu() for s in sink])
    if out.shape[1] != layer.width:
        raise SettingsError(
            f"layer {layer.name!r} gives {out.shape[1]} features but its consumer takes {layer.width}"
        )
    return out


@contextmanager
def neuron_mask(layer: FeatureLayer, keep: torch.Tensor, fill: torch.Tensor | None = None) -> Iterator[None]:
    """Within the block, feature neurons where ``keep`` is 0 are switched off: their activation is replaced
    by ``fill`` (a ``(width,)`` tensor, e.g. their clean mean) or by ``0``; weights untouched. ``keep`` is a
    float ``(width,)`` tensor."""

    def pre(_m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        k = keep.to(x.device, x.dtype)
        out = x.flatten(1) * k
        if fill is not None:
            out = out + fill.to(x.device, x.dtype) * (1 - k)
        return (out.view(x.shape), *args[1:])

    handle = layer.consumer.register_forward_pre_hook(pre)
    try:
        yield
    finally:
        handle.remove()
