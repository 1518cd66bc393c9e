"""The second-to-last layer: finding it, reading its activations, and masking its neurons.

Trigger validation, the input filter and neuron pruning all work on the activations that feed the final
classifier (the paper's "second-to-last layer"). The layer is either named by the user (a
``get_submodule`` path, whose output is read) or found automatically: a model that declares
``penultimate`` (the paper's architectures do) names it; otherwise the input of the linear layer that runs
last is used. Hooks are always removed, also after an error.

Exported programs inline every layer into one graph; the loader lifts their linear layers back into
modules (:mod:`neuralcleanse.models.export`), so they are handled like any module. TorchScript modules
(compiled code) and Keras models (Keras calls its own layers) cannot be hooked: they are refused in one
line that says what to load instead.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import DataError, ModelError, SettingsError, first_line
from .modes import frozen_eval

log = logging.getLogger(__name__)

__all__ = [
    "FeatureLayer",
    "find_feature_layer",
    "feature_activations",
    "neuron_mask",
    "opaque_kind",
    "refuse_opaque",
    "tap",
    "top_neurons",
]


@dataclass(frozen=True)
class FeatureLayer:
    """Where the features are read: the output of ``module`` (``name``), feeding the linear ``consumer``
    (``consumer_name``, a ``get_submodule`` path, so the same layer can be found in a copy of the model)."""

    name: str
    module: nn.Module
    consumer: nn.Linear
    read_input_of_consumer: bool = False
    consumer_name: str = ""

    @property
    def width(self) -> int:
        return int(self.consumer.in_features)

    def in_copy(self, model: nn.Module) -> FeatureLayer:
        """The same layer in ``model``, a copy (``copy.deepcopy``) of the model this layer was found in."""
        consumer = model.get_submodule(self.consumer_name)
        if not isinstance(consumer, nn.Linear):
            raise SettingsError(f"layer {self.consumer_name!r} is not a linear layer in the copied model")
        module = consumer if self.read_input_of_consumer else model.get_submodule(self.name)
        return FeatureLayer(self.name, module, consumer, self.read_input_of_consumer, self.consumer_name)


def _linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def opaque_kind(model: nn.Module) -> str | None:
    """``"an exported program (.pt2)"``, ``"a TorchScript module"`` or ``"a Keras model"`` if ``model``
    runs one whose layers Python hooks cannot reach (compiled into a graph, or called by Keras) and that
    cannot be trained as a module; ``None`` for an ordinary module. Exported programs whose final linear
    layer was lifted back into a module on loading (:mod:`neuralcleanse.models.export`) are ordinary."""
    from .models.keras import KerasClassifier

    for m in model.modules():
        if isinstance(m, KerasClassifier):
            return "a Keras model"
        if isinstance(m, torch.jit.ScriptModule):
            return "a TorchScript module"
        if isinstance(m, torch.fx.GraphModule):
            called = {n.target for n in m.graph.nodes if n.op == "call_module"}
            if not called - {"_guards_fn"}:  # every layer inlined as operators: torch.export's module()
                return "an exported program (.pt2)"
    return None


def refuse_opaque(model: nn.Module, what: str, *, programs: bool = False) -> None:
    """One-line :class:`ModelError` if ``model`` is an exported program, TorchScript or Keras (see
    :func:`opaque_kind`); ``what`` starts the sentence ("unlearning fine-tunes the weights, and the model is").
    ``programs``: exported programs are accepted (their weights are parameters an optimiser can reach;
    only their layers are out of hooks' reach)."""
    kind = opaque_kind(model)
    if programs and kind == "an exported program (.pt2)":
        return
    if kind == "a Keras model":
        raise ModelError(
            f"{what} {kind}: Keras calls its layers itself, where PyTorch hooks and optimisers cannot reach "
            "them; scanning works, validation and mitigation need a PyTorch model (export it with "
            "torch.export, or its weights with the architecture in PyTorch + --arch)"
        )
    if kind == "an exported program (.pt2)":
        raise ModelError(
            f"{what} {kind}: its layers are compiled into one graph that hooks cannot reach, and it has no "
            "linear classifier that could be lifted out of it; load the weights with their architecture "
            "instead (safetensors or a state dict + --arch / arch=), or unlearn (--method unlearn), which "
            "needs no layer"
        )
    if kind is not None:
        raise ModelError(
            f"{what} {kind}: its layers are compiled into one graph that hooks cannot reach; load the "
            "weights with their architecture instead (safetensors or a state dict + --arch / arch=)"
        )


def _call_order(model: nn.Module, example: torch.Tensor, watch: list[tuple[str, nn.Module]]) -> list[str]:
    """Names in ``watch`` in the order their forward finishes on ``example`` (eval mode, no gradients)."""
    order: list[str] = []
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    if first is not None:
        example = example.to(first.device)
    handles = [m.register_forward_hook(lambda _m, _i, _o, n=n: order.append(n)) for n, m in watch]
    try:
        with frozen_eval(model), torch.no_grad():
            model(example)
    except Exception as exc:
        line = first_line(exc, limit=160)
        raise DataError(f"model failed on images of shape {tuple(example.shape[1:])}: {line}") from None
    finally:
        for h in handles:
            h.remove()
    return order


def find_feature_layer(
    model: nn.Module, name: str | None = None, *, example: torch.Tensor | None = None
) -> FeatureLayer:
    """The penultimate feature layer of ``model`` (see the module docstring); one-line errors.

    With ``example`` images (a couple suffice) the layers are ordered by a forward pass rather than by the
    order the model declares them: the consumer is then the linear layer that runs last (or, for a named
    layer, the first linear layer that runs after it), which is right also for models that declare their
    head before their body (a ViT's ``head`` before its ``encoder``).
    """
    refuse_opaque(model, "validation and mitigation read the layer before the classifier, and the model is")
    if example is not None and len(example) == 0:
        example = None
    linears = _linears(model)
    if not linears:
        raise SettingsError(
            "the model has no linear layer (nn.Linear): validation, the filter and pruning read the features "
            "that feed a linear classifier (the paper's second-to-last layer), which this model does not have "
            "(a convolution or another operation makes its scores); unlearning (--method unlearn) needs no layer"
        )
    names = [n for n, _ in model.named_modules()]
    if name is None:
        for prefix, m in model.named_modules():
            declared = getattr(m, "penultimate", None)
            if isinstance(declared, str):
                name = f"{prefix}.{declared}" if prefix else declared
                break
    if name is None:
        if example is not None:
            order = _call_order(model, example, list(linears))
            if not order:
                raise SettingsError(
                    "no linear layer runs in the model's forward pass: name the feature layer (--layer / layer=)"
                )
            last_name = order[-1]
        else:
            last_name = linears[-1][0]
        last = model.get_submodule(last_name)
        assert isinstance(last, nn.Linear)
        return FeatureLayer(
            f"input of {last_name}", last, last, read_input_of_consumer=True, consumer_name=last_name
        )
    if not name.strip():  # "" is the model itself to get_submodule
        raise SettingsError(
            "the feature layer (--layer / layer=) is empty: name a layer (a path such as features.3) or "
            "leave it out for the penultimate layer"
        )
    try:
        name = _resolve_layer_name(names, name)
    except LookupError:
        raise SettingsError(_not_run(model, name, linears, missing=True)) from None
    module = model.get_submodule(name)
    inside = [n for n, _ in linears if n.startswith(name + ".") or n == name]
    if example is not None:
        order = _call_order(
            model, example, [(name, module)] + [(n, m) for n, m in linears if n not in inside]
        )
        after = order[order.index(name) + 1 :] if name in order else []
        if name not in order:
            raise SettingsError(_not_run(model, name, linears))
    else:
        after = [n for n, _ in linears if names.index(n) > names.index(name) and n not in inside]
    if not after:
        raise SettingsError(f"layer {name!r}: no linear layer follows it; name an earlier layer")
    consumer = model.get_submodule(after[0])
    assert isinstance(consumer, nn.Linear)
    return FeatureLayer(name, module, consumer, consumer_name=after[0])


def _resolve_layer_name(names: list[str], name: str) -> str:
    """``name`` if the model has a module of that name, else the one module whose path ends with it (a
    wrapper adds a prefix: an exported program is held as ``module``); one-line errors otherwise."""
    if name in names:
        return name
    matches = [n for n in names if n.endswith("." + name)]
    if len(matches) == 1:
        log.info("layer %r is %r in the loaded model", name, matches[0])
        return matches[0]
    if matches:
        raise SettingsError(f"layer {name!r} is ambiguous: name one of {', '.join(matches[:6])}")
    raise LookupError(name)


def _not_run(
    model: nn.Module, name: str, linears: list[tuple[str, nn.Linear]], *, missing: bool = False
) -> str:
    """The error for a named layer that is not a module (``missing``) or whose forward never runs: inside
    an exported program (its layers are inlined into one graph, only the linear layers lifted back into
    modules run as such) or unused."""
    for prefix, m in model.named_modules():
        if isinstance(m, torch.fx.GraphModule) and (
            missing or name.startswith(prefix + "." if prefix else "")
        ):
            runnable = [n for n, _ in linears if n.startswith(prefix + "." if prefix else "")]
            return (
                f"layer {name!r} is {'not a module of' if missing else 'inlined in'} the exported program "
                f"({'its layers are inlined into one graph' if missing else 'hooks cannot read it there'}); "
                f"name one of its linear layers ({', '.join(runnable[:6])}), or leave --layer out to use the "
                "input of the last one"
            )
    if missing:
        return f"layer {name!r} does not exist in the model"
    return f"layer {name!r} does not run in the model's forward pass; name another layer"


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
    rows: list[torch.Tensor] = []
    with frozen_eval(model), tap(layer, sink):
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            model(batch.to(device))
            # a fixed-batch program runs padded chunks: keep the rows of the real images only
            rows.append(torch.cat([s.cpu() for s in sink])[: len(batch)])
            sink.clear()
    if not rows:
        raise DataError("no images to read activations from")
    out = torch.cat(rows)
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


#: the fewest neurons a "top fraction" holds: the paper's 1% of its 512-neuron layer. On a narrow layer (64
#: neurons) 1% is one neuron, too few to carry a backdoor or to filter on.
MIN_TOP_NEURONS = 5


def top_neurons(
    clean: torch.Tensor, stamped: torch.Tensor, fraction: float, *, minimum: int = MIN_TOP_NEURONS
) -> torch.Tensor:
    """Indices of the ``fraction`` of neurons (at least ``minimum``, or all of a narrower layer) whose mean
    activation rises most from ``clean`` to ``stamped`` inputs, largest gap first."""
    if not 0 < fraction <= 1:
        raise SettingsError(f"neuron fraction must be in (0, 1], got {fraction}")
    width = clean.shape[1]
    k = min(width, max(minimum, 1, round(fraction * width)))
    gap = stamped.mean(0) - clean.mean(0)
    return torch.argsort(gap, descending=True)[:k]
