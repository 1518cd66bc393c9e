"""Device selection: CPU always works; ``auto`` picks CUDA or MPS when present."""

from __future__ import annotations

import torch

from .errors import SettingsError

__all__ = ["resolve_device"]


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` → cuda, then mps, then cpu; an explicit name must be available."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise SettingsError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError(f"device {name!r} requested but CUDA is not available on this machine")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise SettingsError(f"device {name!r} requested but MPS is not available on this machine")
    return dev
