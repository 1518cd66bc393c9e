"""Content hashes that tie results to the model and data they were computed on."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

__all__ = ["model_fingerprint", "tensor_fingerprint"]


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the names, shapes, dtypes and bytes of the model's state dict."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        x = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(x.shape)}|{x.dtype}|".encode())
        h.update(x.view(torch.uint8).numpy().tobytes() if x.numel() else b"")
    return h.hexdigest()


def tensor_fingerprint(t: torch.Tensor) -> str:
    x = t.detach().cpu().contiguous()
    return hashlib.sha256(x.view(torch.uint8).numpy().tobytes()).hexdigest()
