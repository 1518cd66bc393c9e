"""How many labels fit in memory at once: measured on the model, not guessed from image counts.

Reverse engineering stacks ``K`` labels × ``B`` images into one forward/backward pass. What that pass
keeps alive is dominated by the tensors autograd saves for the backward pass, which grow with the number
of images and with the model (a ResNet-50 at 224×224 saves about a hundred megabytes per image, a small
CNN at 28×28 a few hundred kilobytes). :func:`measure_bytes_per_image` runs the model once on a small
probe batch and counts them (on CUDA: the allocator's peak); :func:`plan_parallel_labels` caps ``K`` so
that ``K·B`` images stay within a budget (a fraction of the memory available on the device), and says
so in a note when it lowers ``K``. A model for which even one mini-batch does not fit gets a one-line
error before anything is optimised, instead of an allocator crash in the middle of a scan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError, SettingsError
from ..metrics import model_failures

__all__ = ["MemoryPlan", "available_bytes", "measure_bytes_per_image", "plan_parallel_labels"]

#: share of the available memory a scan may use for its forward/backward passes
DEFAULT_FRACTION = 0.5
#: per image, besides the model: the clean image, the stamped image, its gradient and one temporary
_IMAGE_COPIES = 4


def _mib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def available_bytes(device: torch.device | str) -> int | None:
    """Memory free for this process on ``device``: CUDA's free memory, or ``MemAvailable`` from
    ``/proc/meminfo`` for the CPU; ``None`` where it cannot be read (then no cap is applied)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free)
    if dev.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
    return None


def measure_bytes_per_image(
    model: nn.Module, image_shape: tuple[int, int, int], *, device: torch.device | str = "cpu", probe: int = 2
) -> int:
    """Bytes one image adds to a forward + backward pass of ``model`` (input gradients only, as in a scan).

    On CUDA the allocator's peak over the pass is used; elsewhere the tensors autograd saves for the
    backward pass are counted (each storage once, the model's own parameters and buffers excluded), with
    the largest output of any operation as a floor for models whose graph hides them (TorchScript). The
    model is run in the mode it is in; its parameters' gradient flags are left alone.
    """
    dev = torch.device(device)
    x = torch.rand(probe, *image_shape, device=dev, requires_grad=True)
    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in own and ptr not in seen:
            seen[ptr] = storage.nbytes()
        return t

    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    try:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            start = torch.cuda.memory_allocated(dev)
        with model_failures(x):
            with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
                out = model(x)
            if not isinstance(out, torch.Tensor):
                raise ModelError(f"the model returned {type(out).__name__}, not a tensor of class scores")
            out.float().logsumexp(-1).sum().backward()  # type: ignore[no-untyped-call]
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            measured = torch.cuda.max_memory_allocated(dev) - start
        else:
            measured = max(sum(seen.values()), out.nelement() * out.element_size())
    except torch.OutOfMemoryError:
        raise ModelError(
            f"the model does not fit on {dev}: a forward/backward pass of {probe} images of shape "
            f"{tuple(image_shape)} ran out of memory"
        ) from None
    finally:
        x.grad = None
    return max(1, -(-int(measured) // probe))


@dataclass(frozen=True)
class MemoryPlan:
    """How many labels share a forward pass, and why.

    Attributes:
        labels: labels optimised in parallel.
        requested: what the settings asked for (``ReverseSettings.labels_in_parallel``).
        bytes_per_image: measured cost of one image in a forward/backward pass (model and stamping).
        budget: bytes the passes may use (``None``: unknown, nothing capped).
        note: a sentence for the report when ``labels < requested``.
    """

    labels: int
    requested: int
    bytes_per_image: int
    budget: int | None
    note: str | None = None


def plan_parallel_labels(
    model: nn.Module,
    image_shape: tuple[int, int, int],
    *,
    requested: int,
    batch_size: int,
    n_images: int = 0,
    device: torch.device | str = "cpu",
    memory_limit: int | None = None,
    fraction: float = DEFAULT_FRACTION,
) -> MemoryPlan:
    """Cap ``requested`` labels in parallel so that ``labels × batch_size`` images fit the budget.

    Args:
        model: the model as the scan runs it (eval mode, parameters frozen).
        image_shape: ``(C, H, W)`` of the images.
        requested: labels the settings would run together.
        batch_size: images per label in one pass.
        n_images: images held on the device for the whole scan (subtracted from the budget).
        memory_limit: the budget in bytes; default ``fraction`` of :func:`available_bytes`.
        fraction: share of the available memory used when ``memory_limit`` is not given.

    Raises:
        ModelError: not even one image fits.
        SettingsError: one image fits but not one label's mini-batch of ``batch_size`` images.
    """
    if requested < 1 or batch_size < 1:
        raise SettingsError(f"labels and batch size must be at least 1, got {requested} and {batch_size}")
    if not 0 < fraction <= 1:
        raise SettingsError(f"memory fraction must be in (0, 1], got {fraction}")
    dev = torch.device(device)
    image_bytes = 4 * image_shape[0] * image_shape[1] * image_shape[2]
    per_image = measure_bytes_per_image(model, image_shape, device=dev) + _IMAGE_COPIES * image_bytes
    if memory_limit is None:
        free = available_bytes(dev)
        if free is None:
            return MemoryPlan(requested, requested, per_image, None)
        budget = int(free * fraction)
        where = f"{fraction:.0%} of the {_mib(free)} available on {dev}"
    else:
        if memory_limit < 1:
            raise SettingsError(f"memory limit must be a positive number of bytes, got {memory_limit}")
        budget = int(memory_limit)
        where = f"the memory limit on {dev}"
    room = budget - n_images * image_bytes
    fits = max(0, room // per_image)
    if fits < 1:
        raise ModelError(
            f"the model is too large for {dev}: one image needs about {_mib(per_image)} in a forward/backward "
            f"pass, and the budget is {_mib(budget)} ({where}); use a device with more memory"
        )
    if fits < batch_size:
        raise SettingsError(
            f"a mini-batch of {batch_size} images needs about {_mib(batch_size * per_image)} on {dev}, more "
            f"than the budget of {_mib(budget)} ({where}); lower the batch size to {fits} or less "
            "(--batch-size, ReverseSettings.batch_size)"
        )
    labels = min(requested, fits // batch_size)
    note = None
    if labels < requested:
        note = (
            f"labels optimised in parallel lowered from {requested} to {labels} to fit memory: about "
            f"{_mib(per_image)} per image (measured), budget {_mib(budget)} ({where}); results do not "
            "depend on it, only speed"
        )
    return MemoryPlan(labels, requested, per_image, budget, note)
