"""Device selection: CPU always works; ``auto`` picks CUDA or MPS when present."""

from __future__ import annotations

import torch

from .errors import SettingsError

__all__ = ["resolve_device", "native_bf16"]


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
    if dev.type not in ("cpu", "cuda", "mps"):
        raise SettingsError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    if dev.type == "cpu" and dev.index not in (None, 0):
        raise SettingsError(f"unknown device {name!r}: the CPU is one device; use cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= max(torch.cuda.device_count(), 1):
        raise SettingsError(
            f"device {name!r} requested but this machine has {torch.cuda.device_count()} GPUs"
        )
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError(f"device {name!r} requested but CUDA is not available on this machine")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise SettingsError(f"device {name!r} requested but MPS is not available on this machine")
    return dev


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (so bf16 autocast is faster than fp32, not slower):
    a CPU with AVX512-BF16 or AMX tiles, a CUDA GPU that supports bf16."""
    if device.type == "cpu":
        # torch.cpu's private probes (present since torch 2.1); a torch without them gets fp32
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return False
