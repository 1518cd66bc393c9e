"""Content hashes that tie results to the model and data they were computed on."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "Fingerprints",
    "fingerprints",
    "model_fingerprint",
    "report_weights_sha256",
    "tensor_fingerprint",
    "weights_fingerprint",
]


def _raw_bytes(t: torch.Tensor) -> bytes:
    """The tensor's elements as stored, in row-major order, whatever its dtype, shape or memory format.

    Viewing as bytes needs at least one dimension (a 0-dim ``int64`` such as BatchNorm's
    ``num_batches_tracked`` cannot be viewed as ``uint8`` in place), and a non-strided or quantised
    tensor is hashed through its dense, dequantised form."""
    x = t.detach().cpu()
    if x.is_sparse or x.layout != torch.strided:
        x = x.to_dense()
    if x.is_quantized:
        x = x.dequantize()
    if x.numel() == 0:
        return b""
    x = x.contiguous().reshape(-1)
    return x.view(torch.uint8).numpy().tobytes()


@dataclass(frozen=True)
class Fingerprints:
    """A model's two fingerprints, from one pass over its tensors: ``model`` (:func:`model_fingerprint`)
    and ``weights`` (:func:`weights_fingerprint`)."""

    model: str
    weights: str


def fingerprints(model: nn.Module) -> Fingerprints:
    """Both fingerprints of ``model``, reading each tensor's bytes once."""
    named = hashlib.sha256()
    digests: list[str] = []
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):  # extra state of a module (get_extra_state) is not hashed
            named.update(f"{name}|extra|".encode())
            continue
        raw = _raw_bytes(t)
        named.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        named.update(raw)
        digests.append(hashlib.sha256(f"{tuple(t.shape)}|{t.dtype}|".encode() + raw).hexdigest())
    return Fingerprints(named.hexdigest(), hashlib.sha256("".join(sorted(digests)).encode()).hexdigest())


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the names, shapes, dtypes and bytes of the model's state dict."""
    return fingerprints(model).model


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over the model's tensors by value (shape, dtype, bytes), sorted, their names left out: the
    same weights in another file format — an exported program's ``module.`` names, a module tree built by
    ``--arch`` — give the same value, where :func:`model_fingerprint` and a file's sha256 differ."""
    return fingerprints(model).weights


def tensor_fingerprint(t: torch.Tensor) -> str:
    """sha256 over the bytes of ``t`` (as :func:`model_fingerprint` reads them)."""
    return hashlib.sha256(_raw_bytes(t)).hexdigest()


def report_weights_sha256(model_info: Mapping[str, Any]) -> str | None:
    """The sha256 of the weights a report's ``model`` record was made for: ``sha256`` (what
    :meth:`~neuralcleanse.models.loading.LoadedModel.describe` records, so every scan since the demo and
    the zoo load models as ``scan`` does) or ``weights_sha256`` (their reports before that)."""
    value = model_info.get("sha256") or model_info.get("weights_sha256")
    return str(value) if value else None
