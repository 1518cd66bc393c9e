"""The paper's small architectures (Wang et al. 2019, Table VI), built by name."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..errors import SettingsError

__all__ = ["ARCHITECTURES", "MNISTNet", "GTSRBNet", "build_model"]


def _conv_stack(in_channels: int, plan: Sequence[int | str], kernel: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = in_channels
    for item in plan:
        if item == "pool":
            layers.append(nn.MaxPool2d(2))
        else:
            assert isinstance(item, int)
            layers += [nn.Conv2d(c, item, kernel, padding=kernel // 2), nn.ReLU(inplace=True)]
            c = item
    return nn.Sequential(*layers)


class _PaperNet(nn.Module):
    """Conv feature stack → ``fc`` (dense + ReLU, the penultimate layer) → ``logits``.

    ``penultimate`` names the submodule whose output is the second-to-last layer's activation, the layer
    that trigger validation, the input filter and neuron pruning work on.
    """

    penultimate: str = "fc"
    plan: tuple[int | str, ...] = ()
    kernel: int = 3

    def __init__(
        self, *, in_channels: int, image_size: tuple[int, int], num_classes: int, hidden: int = 512
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise SettingsError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.features = _conv_stack(in_channels, self.plan, self.kernel)
        pools = sum(1 for p in self.plan if p == "pool")
        h, w = image_size[0] >> pools, image_size[1] >> pools
        if h < 1 or w < 1:
            raise SettingsError(f"input {image_size} is too small for {pools} pooling layers")
        channels = [p for p in self.plan if isinstance(p, int)][-1]
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(channels * h * w, hidden), nn.ReLU(inplace=True))
        self.logits = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.logits(self.fc(self.features(x)))
        return out


class MNISTNet(_PaperNet):
    """MNIST: conv 16@5×5 → pool → conv 32@5×5 → pool → dense 512 → classes (2 conv + 2 dense)."""

    plan = (16, "pool", 32, "pool")
    kernel = 5


class GTSRBNet(_PaperNet):
    """GTSRB: conv 32,32 → pool → 64,64 → pool → 128,128 → pool (3×3) → dense 512 → classes (6 conv + 2 dense)."""

    plan = (32, 32, "pool", 64, 64, "pool", 128, 128, "pool")
    kernel = 3


ARCHITECTURES: dict[str, Callable[..., _PaperNet]] = {"mnist": MNISTNet, "gtsrb": GTSRBNet}


def build_model(arch: str, *, input_shape: tuple[int, int, int], num_classes: int, seed: int) -> nn.Module:
    """Build a freshly initialised model; ``seed`` fixes the initial weights without touching global RNG state."""
    try:
        cls = ARCHITECTURES[arch]
    except KeyError:
        raise SettingsError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(
            in_channels=input_shape[0], image_size=(input_shape[1], input_shape[2]), num_classes=num_classes
        )
