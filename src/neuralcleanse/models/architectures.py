"""The built-in architectures, built by name: the paper's two small networks (Wang et al. 2019, Table VI)
and two modern ones with BatchNorm for the attack lab (``bn-cnn``, a residual ``resnet``).

Every built-in network is ``features`` → ``fc`` (dense + ReLU, the penultimate layer) → ``logits``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..errors import SettingsError

__all__ = ["ARCHITECTURES", "MNISTNet", "GTSRBNet", "BatchNormCNN", "SmallResNet", "build_model"]

#: what a built-in network's weights say about its input: channels, (height, width) if the weights fix it
#: (``None`` for networks that pool adaptively and take any size), and the number of classes
WeightsShape = tuple[int, tuple[int, int] | None, int]


class _BuiltinNet(nn.Module):
    """``features`` → ``fc`` (dense + ReLU, the penultimate layer) → ``logits``.

    ``penultimate`` names the submodule whose output is the second-to-last layer's activation, the layer
    that trigger validation, the input filter and neuron pruning work on.
    """

    penultimate: str = "fc"
    features: nn.Module
    fc: nn.Sequential
    logits: nn.Linear

    def __init__(
        self, *, in_channels: int, image_size: tuple[int, int], num_classes: int, hidden: int = 512
    ) -> None:
        """The signature every built-in shares (:func:`build_model` calls it); subclasses build
        ``features`` and then call :meth:`_head`."""
        super().__init__()

    def _head(self, flat: int, hidden: int, num_classes: int) -> None:
        if num_classes < 2:
            raise SettingsError(f"a classifier needs at least 2 classes, got {num_classes}")
        if hidden < 1:
            raise SettingsError(f"the hidden layer needs at least 1 unit, got {hidden}")
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(inplace=True))
        self.logits = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.logits(self.fc(self.features(x)))
        return out

    @classmethod
    def weights_shape(cls, state: Mapping[str, torch.Tensor]) -> WeightsShape:
        """Input channels, image size (if the weights fix it) and classes; ``KeyError`` for a missing key."""
        raise NotImplementedError


def _conv_stack(
    in_channels: int, plan: Sequence[int | str], kernel: int, *, batchnorm: bool
) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = in_channels
    for item in plan:
        if item == "pool":
            layers.append(nn.MaxPool2d(2))
        else:
            assert isinstance(item, int)
            layers.append(nn.Conv2d(c, item, kernel, padding=kernel // 2, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm2d(item))
            layers.append(nn.ReLU(inplace=True))
            c = item
    return nn.Sequential(*layers)


class _ConvStackNet(_BuiltinNet):
    """A plain conv stack (``plan``: channel counts and ``"pool"``) flattened into ``fc``."""

    plan: tuple[int | str, ...] = ()
    kernel: int = 3
    batchnorm: bool = False

    def __init__(
        self, *, in_channels: int, image_size: tuple[int, int], num_classes: int, hidden: int = 512
    ) -> None:
        super().__init__(
            in_channels=in_channels, image_size=image_size, num_classes=num_classes, hidden=hidden
        )
        self.features = _conv_stack(in_channels, self.plan, self.kernel, batchnorm=self.batchnorm)
        h, w = image_size[0] >> self.pools(), image_size[1] >> self.pools()
        if h < 1 or w < 1:
            raise SettingsError(f"input {image_size} is too small for {self.pools()} pooling layers")
        self._head(self.channels() * h * w, hidden, num_classes)

    @classmethod
    def pools(cls) -> int:
        return sum(1 for p in cls.plan if p == "pool")

    @classmethod
    def channels(cls) -> int:
        return [p for p in cls.plan if isinstance(p, int)][-1]

    @classmethod
    def weights_shape(cls, state: Mapping[str, torch.Tensor]) -> WeightsShape:
        """The image is taken to be square (the flattened width fixes only its area)."""
        conv, fc, logits = state["features.0.weight"], state["fc.1.weight"], state["logits.weight"]
        side = math.isqrt(max(int(fc.shape[1]) // cls.channels(), 1)) << cls.pools()
        return int(conv.shape[1]), (side, side), int(logits.shape[0])


class MNISTNet(_ConvStackNet):
    """MNIST: conv 16@5×5 → pool → conv 32@5×5 → pool → dense 512 → classes (2 conv + 2 dense)."""

    plan = (16, "pool", 32, "pool")
    kernel = 5


class GTSRBNet(_ConvStackNet):
    """GTSRB: conv 32,32 → pool → 64,64 → pool → 128,128 → pool (3×3) → dense 512 → classes (6 conv + 2 dense)."""

    plan = (32, 32, "pool", 64, 64, "pool", 128, 128, "pool")
    kernel = 3


class BatchNormCNN(_ConvStackNet):
    """``bn-cnn``: (conv 3×3-BN-ReLU) 16,16 → pool → 32,32 → pool → dense 128 + ReLU → classes.

    Any input of at least 4×4 pixels (two 2×2 poolings). The penultimate layer has no BatchNorm, so
    training works with mini-batches of any size, one image included.
    """

    plan = (16, 16, "pool", 32, 32, "pool")
    kernel = 3
    batchnorm = True

    def __init__(
        self, *, in_channels: int, image_size: tuple[int, int], num_classes: int, hidden: int = 128
    ) -> None:
        super().__init__(
            in_channels=in_channels, image_size=image_size, num_classes=num_classes, hidden=hidden
        )


class _BasicBlock(nn.Module):
    """ResNet's basic block: conv-BN-ReLU, conv-BN, plus the input (a 1×1 conv-BN projection when the
    width or the resolution changes), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, *, momentum: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out, momentum=momentum)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, momentum=momentum)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out, momentum=momentum)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(_BuiltinNet):
    """``resnet``: a small ResNet (He et al. 2016, the CIFAR layout at reduced depth).

    Stem conv 3×3 16-BN-ReLU → three stages of one basic block each, widths 16/32/64 and strides 1/2/2
    (1×1 conv-BN projection shortcuts where the shape changes) → adaptive average pool to 2×2 → dense 128
    + ReLU (``fc``, the penultimate layer) → classes. 8 conv + 2 dense layers, about 110k parameters; any
    input of at least 4×4 pixels (the weights do not depend on the image size).

    Two choices for short trainings (a few epochs of Adam at a constant rate, as the attack lab does),
    measured on the 4,000-image MNIST sample: the 2×2 pool (rather than a global one) keeps a little
    layout and learns faster (training accuracy 68% against 49% after one epoch, 98% against 97% after
    four); the BatchNorm running statistics use momentum 0.3 (PyTorch's default is 0.1), so that at
    evaluation they are closer to the final weights' (4 epochs: test accuracy 95.0% against 90.5% with
    0.1; statistics recomputed with the final weights: 96.9%).
    """

    widths: tuple[int, ...] = (16, 32, 64)
    strides: tuple[int, ...] = (1, 2, 2)
    pooled: int = 2
    bn_momentum: float = 0.3
    min_side: int = 4

    def __init__(
        self, *, in_channels: int, image_size: tuple[int, int], num_classes: int, hidden: int = 128
    ) -> None:
        super().__init__(
            in_channels=in_channels, image_size=image_size, num_classes=num_classes, hidden=hidden
        )
        if min(image_size) < self.min_side:
            raise SettingsError(
                f"input {image_size} is too small for the resnet (at least {self.min_side}×{self.min_side})"
            )
        stem = nn.Sequential(
            nn.Conv2d(in_channels, self.widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(self.widths[0], momentum=self.bn_momentum),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        c = self.widths[0]
        for width, stride in zip(self.widths, self.strides, strict=True):
            blocks.append(_BasicBlock(c, width, stride, momentum=self.bn_momentum))
            c = width
        self.features = nn.Sequential(stem, *blocks, nn.AdaptiveAvgPool2d(self.pooled))
        self._head(c * self.pooled**2, hidden, num_classes)

    @classmethod
    def weights_shape(cls, state: Mapping[str, torch.Tensor]) -> WeightsShape:
        """The weights do not fix the image size (the network pools adaptively): ``None``."""
        return int(state["features.0.0.weight"].shape[1]), None, int(state["logits.weight"].shape[0])


ARCHITECTURES: dict[str, type[_BuiltinNet]] = {
    "mnist": MNISTNet,
    "gtsrb": GTSRBNet,
    "bn-cnn": BatchNormCNN,
    "resnet": SmallResNet,
}


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
