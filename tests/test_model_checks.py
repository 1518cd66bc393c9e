"""Models a scan cannot use are refused in one line before any optimisation: scores without input
gradients, a wrong number of rows; and an architecture file may import the modules beside it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import neuralcleanse as nc
from neuralcleanse.errors import DataError
from neuralcleanse.models.loading import _import_class


class _Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(x.flatten(1))
        return out


class _Detached(_Small):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.detach())


class _FirstRows(_Small):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[:4]  # at most four rows, whatever the batch


IMAGES = torch.rand(30, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def test_scores_without_input_gradients_are_refused() -> None:
    with pytest.raises(DataError, match="carry no gradient with respect to its input"):
        nc.scan(_Detached(), IMAGES, max_steps=2, correct_only=False, samples=None)


def test_a_wrong_number_of_rows_is_refused() -> None:
    with pytest.raises(DataError, match=r"scores of shape \(4, 3\) for a batch of \d+ images"):
        nc.scan(_FirstRows(), IMAGES, max_steps=2, correct_only=False, samples=None)


def test_an_architecture_file_imports_its_neighbours(tmp_path: Path) -> None:
    (tmp_path / "blocks.py").write_text("from torch import nn\nWIDTH = 5\n")
    (tmp_path / "net.py").write_text(
        "from torch import nn\nimport blocks\n\nclass Net(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(blocks.WIDTH, 2)\n"
    )
    cls = _import_class(f"{tmp_path / 'net.py'}:Net")
    assert cls().fc.in_features == 5
    assert str(tmp_path) not in __import__("sys").path  # the folder is on the path only while importing


class _BrightCorner(_Small):
    """NaN scores for images whose bottom-right pixel is bright: a few clean ones, every stamped one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return torch.where((x[:, :, -1, -1] > 0.95).any(1)[:, None], torch.nan, out)


def test_nan_scores_name_the_images_and_the_first_one() -> None:
    from neuralcleanse.metrics import attack_success_rate, predict

    model = _BrightCorner()
    dim = IMAGES.clone()
    dim[:, :, -1, -1] = 0.5
    bright = dim.clone()
    bright[[11, 13], :, -1, -1] = 1.0
    with pytest.raises(
        DataError, match=r"on the clean images \(first at index 11 of 30; 2 of the 8 in its batch\)"
    ):
        predict(model, bright, what="the clean images", batch_size=8)
    data = nc.ImageDataset(dim, torch.arange(30) % 3, 3, ("a", "b", "c"), "dim")
    assert len(predict(model, dim)) == 30
    trigger = nc.Trigger.square((1, 8, 8), size=2, margin=0)
    with pytest.raises(DataError, match="on dim's images stamped with the trigger"):
        attack_success_rate(model, data, trigger, target=0)
