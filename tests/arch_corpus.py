"""Architectures users actually ship, in plain PyTorch and kept tiny, for the architecture tests.

Every class builds with its defaults (so ``tests/arch_corpus.py:ClassName`` works as ``arch=`` for a
weights-only file) and takes pixels in ``[0, 1]`` unless its docstring says otherwise. Widths are narrow
so that a forward/backward pass costs milliseconds on a CPU; the layouts are the real ones.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "BatchNormCNN",
    "ResNet18",
    "MobileNetSmall",
    "TinyViT",
    "GroupNormSiLU",
    "SoftmaxCNN",
    "OddBuffers",
    "ChannelsLastCNN",
    "Pixels255",
    "Wide100",
    "CORPUS",
]


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


class BatchNormCNN(nn.Module):
    """conv-BN-ReLU ×2 → pool → conv-BN-ReLU → global pool → dense-BN1d-ReLU → classes."""

    def __init__(
        self, *, in_channels: int = 3, num_classes: int = 10, width: int = 16, hidden: int = 32
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn(in_channels, width),
            _conv_bn(width, width),
            nn.MaxPool2d(2),
            _conv_bn(width, 2 * width),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.fc = nn.Sequential(nn.Linear(8 * width, hidden), nn.BatchNorm1d(hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.fc(self.features(x)))
        return out


class BasicBlock(nn.Module):
    """ResNet's two 3×3 convs with BatchNorm; a 1×1 conv + BN shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32×32 colour input (the CIFAR layout: 3×3 stem, no max pool), four stages of two
    BasicBlocks each; ``width`` is the first stage's channels (64 in the original, 8 here)."""

    def __init__(self, *, num_classes: int = 10, width: int = 8, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        layers: list[nn.Module] = []
        c = width
        for i, mult in enumerate((1, 2, 4, 8)):
            c_out = width * mult
            for j in range(2):
                layers.append(BasicBlock(c, c_out, 2 if (j == 0 and i > 0) else 1))
                c = c_out
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.pool(self.layers(self.stem(x))).flatten(1))
        return out


class _DepthwiseSeparable(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.depthwise = nn.Sequential(
            nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False), nn.BatchNorm2d(c_in), nn.ReLU6()
        )
        self.pointwise = nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.Hardswish()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.pointwise(self.depthwise(x))
        return out


class MobileNetSmall(nn.Module):
    """MobileNet-style: strided stem, depthwise separable blocks (ReLU6, Hardswish), global pool, a
    Hardswish dense layer, dropout, classifier."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6()
        )
        self.blocks = nn.Sequential(
            _DepthwiseSeparable(8, 16, 1), _DepthwiseSeparable(16, 24, 2), _DepthwiseSeparable(24, 32, 2)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32, 48), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(48, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.pool(self.blocks(self.stem(x))))
        return out


class TinyViT(nn.Module):
    """Vision Transformer: patch embedding (a strided conv), class token, learned positions,
    ``nn.TransformerEncoder`` (pre-LayerNorm, GELU), final LayerNorm, linear head on the class token.

    The head is declared *before* the encoder on purpose: the last ``nn.Linear`` in registration order is
    then inside the encoder, so the feature layer cannot be found by declaration order alone."""

    def __init__(
        self, *, num_classes: int = 10, image_size: int = 32, patch: int = 8, dim: int = 32, depth: int = 2
    ) -> None:
        super().__init__()
        self.head = nn.Linear(dim, num_classes)
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        n = (image_size // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim,
            nhead=4,
            dim_feedforward=2 * dim,
            dropout=0.1,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], 1) + self.pos
        out: torch.Tensor = self.head(self.norm(self.encoder(tokens))[:, 0])
        return out


class GroupNormSiLU(nn.Module):
    """conv-GroupNorm-SiLU ×3 (two strided), global pool, classifier."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, 1, 1), nn.GroupNorm(4, 16), nn.SiLU(),
            nn.Conv2d(16, 32, 3, 2, 1), nn.GroupNorm(8, 32), nn.SiLU(),
            nn.Conv2d(32, 32, 3, 2, 1), nn.GroupNorm(8, 32), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.out = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(self.body(x))
        return out


class SoftmaxCNN(nn.Module):
    """A Keras habit: the network ends in softmax and returns probabilities, not logits."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 32), nn.ReLU(),
        )  # fmt: skip
        self.dense = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.dense(self.body(x)), dim=1)


class OddBuffers(nn.Module):
    """Buffers of every dtype a state dict meets: a 0-dim int64 counter, a boolean channel mask, a
    float64 per-channel scale (and BatchNorm's own 0-dim ``num_batches_tracked``)."""

    steps: torch.Tensor
    keep: torch.Tensor
    gain: torch.Tensor

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.register_buffer("steps", torch.tensor(1234, dtype=torch.int64))
        self.register_buffer("keep", torch.tensor([True] * 12 + [False] * 4))
        self.register_buffer("gain", torch.linspace(0.5, 1.5, 16, dtype=torch.float64))
        self.conv = nn.Conv2d(in_channels, 16, 3, 2, 1)
        self.bn = nn.BatchNorm2d(16)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.conv(x)))
        scale = (self.gain.to(h.dtype) * self.keep.to(h.dtype)).view(1, -1, 1, 1)
        out: torch.Tensor = self.fc(self.pool(h * scale).flatten(1))
        return out


class ChannelsLastCNN(BatchNormCNN):
    """The BatchNorm CNN, to be converted to ``torch.channels_last`` (weights and inputs) before export."""


class Pixels255(nn.Module):
    """Takes pixels in ``[0, 255]`` and normalises inside (ImageNet mean/std): declare
    ``Preprocessing(scale=255)`` when loading it."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, *, num_classes: int = 10) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255)
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.body((x - self.mean) / self.std))
        return out


class Wide100(nn.Module):
    """100 classes on 64×64 colour input (CIFAR-100 / Tiny-ImageNet sized)."""

    def __init__(self, *, num_classes: int = 100) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(3, 16, 2), _conv_bn(16, 32, 2), _conv_bn(32, 32, 2),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )  # fmt: skip
        self.embed = nn.Sequential(nn.Linear(128, 64), nn.ReLU())
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.embed(self.body(x)))
        return out


#: name → (class, input shape (C, H, W), number of classes)
CORPUS: dict[str, tuple[type[nn.Module], tuple[int, int, int], int]] = {
    "batchnorm_cnn": (BatchNormCNN, (3, 32, 32), 10),
    "resnet18": (ResNet18, (3, 32, 32), 10),
    "mobilenet": (MobileNetSmall, (3, 32, 32), 10),
    "vit": (TinyViT, (3, 32, 32), 10),
    "groupnorm_silu": (GroupNormSiLU, (3, 32, 32), 10),
    "softmax": (SoftmaxCNN, (3, 32, 32), 10),
    "odd_buffers": (OddBuffers, (3, 32, 32), 10),
    "channels_last": (ChannelsLastCNN, (3, 32, 32), 10),
    "pixels_255": (Pixels255, (3, 32, 32), 10),
    "wide100": (Wide100, (3, 64, 64), 100),
}
