"""Checkpoints of a scan in progress: every label's full state, so a killed scan resumes exactly."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write_bytes, atomic_write_json
from ..errors import CheckpointError, first_line
from .engine import LabelState

__all__ = [
    "CHECKPOINT_SUFFIX",
    "checkpoint_beside",
    "save_checkpoint",
    "load_checkpoint",
    "remove_checkpoint",
    "has_checkpoint",
    "checkpoint_threads",
    "checkpoint_seconds",
]

_STATE = "state.json"
#: a scan writing the report directory ``NAME`` keeps its checkpoint beside it as ``NAME.checkpoint``
CHECKPOINT_SUFFIX = ".checkpoint"


def checkpoint_beside(report_dir: Path) -> Path:
    """Where the scan writing ``report_dir`` keeps its checkpoint while it runs."""
    return report_dir.with_name(report_dir.name + CHECKPOINT_SUFFIX)


_TENSORS = "tensors.safetensors"


def save_checkpoint(
    path: str | os.PathLike[str],
    identity: dict[str, Any],
    states: Sequence[LabelState],
    *,
    seconds: float | None = None,
) -> None:
    """Write the states of all started labels; ``identity`` says which scan they belong to, ``seconds``
    how long the scan has run so far (over all its runs, when it was resumed)."""
    from safetensors.torch import save

    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {f"{s.label}/{name}": t for s in states for name, t in s.tensors().items()}
    # tensors first, then the JSON that refers to them: a crash in between leaves the old JSON,
    # whose labels are a subset of the new tensors file
    atomic_write_bytes(d / _TENSORS, save(tensors))
    import torch

    state = {
        "identity": identity,
        "labels": [s.scalars() for s in states],
        "threads": torch.get_num_threads(),
    }
    if seconds is not None:
        state["seconds"] = round(seconds, 2)
    atomic_write_json(d / _STATE, state)


def _recorded(state: Path, key: str, kinds: tuple[type, ...]) -> Any:
    """The number ``state.json`` records under ``key`` (``None``: not recorded, or unreadable;
    :func:`load_checkpoint` says why)."""
    try:
        value = json.loads(state.read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, kinds) and not isinstance(value, bool) else None


def checkpoint_threads(path: str | os.PathLike[str]) -> int | None:
    """The torch thread count of the run that wrote the checkpoint (``None``: not recorded, or unreadable)."""
    threads: int | None = _recorded(Path(path) / _STATE, "threads", (int,))
    return threads


def checkpoint_seconds(path: str | os.PathLike[str]) -> float:
    """How long the scan that wrote the checkpoint had run when it last saved, the longest of its passes'
    checkpoints (the folder and the extra passes' folders inside it); 0 when not recorded."""
    d = Path(path)
    found = [
        _recorded(state, "seconds", (int, float)) for state in [d / _STATE, *sorted(d.glob(f"*/{_STATE}"))]
    ]
    return max((float(s) for s in found if s is not None and 0 <= s < 1e9), default=0.0)


def load_checkpoint(path: str | os.PathLike[str], identity: dict[str, Any]) -> list[LabelState]:
    """Read a checkpoint; refuses one written for another model, data set or settings."""
    from safetensors import SafetensorError, safe_open

    d = Path(path)
    try:
        state = json.loads((d / _STATE).read_text(encoding="utf-8"))
        with safe_open(str(d / _TENSORS), framework="pt") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (not a dict)
    except FileNotFoundError:
        raise CheckpointError(f"{d}: no checkpoint to resume from") from None
    except (OSError, ValueError, SafetensorError) as exc:
        raise CheckpointError(f"{d}: corrupt checkpoint ({first_line(exc)})") from None
    if not isinstance(state, dict) or not isinstance(state.get("identity"), dict):
        raise CheckpointError(f"{d}: corrupt checkpoint ({_STATE} is not a scan checkpoint)")
    saved = state["identity"]
    for key, value in identity.items():
        if saved.get(key) != value:
            raise CheckpointError(
                f"{d}: checkpoint belongs to another scan ({key} differs); resume it with the settings it was made with, or start over (--force)"
            )
    out = []
    try:
        for scalars in state["labels"]:
            prefix = f"{scalars['label']}/"
            mine = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            lost = sorted(set(LabelState._TENSORS) - set(mine))
            if lost or scalars["label"] not in identity.get("labels", [scalars["label"]]):
                what = (
                    f"tensor {prefix}{lost[0]} missing" if lost else f"label {scalars['label']} not scanned"
                )
                raise CheckpointError(f"{d}: corrupt checkpoint ({what})")
            restored = LabelState.restore(scalars, mine)
            if restored.stop_reason != "nan" and (bad := _not_finite(mine)):
                # a scan writes NaN only for a label it stopped on NaN outputs (and says so)
                raise CheckpointError(f"{d}: corrupt checkpoint (tensor {prefix}{bad} holds NaN or infinity)")
            out.append(restored)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as exc:
        raise CheckpointError(f"{d}: corrupt checkpoint ({type(exc).__name__}: {exc})") from None
    _check_tensors(d, tensors)
    return out


def _not_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first tensor holding a NaN or an infinity, if any."""
    return next((k for k, t in sorted(tensors.items()) if not bool(torch.isfinite(t).all())), None)


def _check_tensors(d: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Every label's optimiser state of one image: masks H×W and patterns C×H×W, of the shape most of the
    checkpoint's tensors have. A checkpoint edited or damaged otherwise is refused here, not halfway
    through the resumed scan."""
    from collections import Counter

    def image(key: str, t: torch.Tensor) -> tuple[int, ...]:  # (C, H, W) of a pattern, (H, W) of a mask
        return tuple(t.shape) if key.endswith("pattern") else (-1, *t.shape)

    shapes = {key: image(key, t) for key, t in tensors.items()}
    common = Counter(s[1:] for s in shapes.values()).most_common(1)
    channels = Counter(s[0] for s in shapes.values() if s[0] != -1).most_common(1)
    for key, shape in sorted(shapes.items()):
        if len(shape) != 3 or shape[1:] != common[0][0] or (shape[0] != -1 and shape[0] != channels[0][0]):
            raise CheckpointError(
                f"{d}: corrupt checkpoint (tensor {key} has shape {tuple(tensors[key].shape)})"
            )


def has_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a checkpoint (which :func:`load_checkpoint` may still refuse)."""
    return (Path(path) / _STATE).is_file()


def remove_checkpoint(path: str | os.PathLike[str]) -> None:
    shutil.rmtree(path, ignore_errors=True)
