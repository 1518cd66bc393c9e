"""Labels in parallel chosen from the model's measured memory per image, under an explicit small budget."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import neuralcleanse as nc
from arch_corpus import BatchNormCNN, ResNet18
from neuralcleanse.detection.engine import reverse_engineer
from neuralcleanse.detection.memory import available_bytes, measure_bytes_per_image, plan_parallel_labels

MiB = 2**20


def _frozen(model: nn.Module) -> nn.Module:
    return model.eval().requires_grad_(False)


def test_a_resnet_at_a_larger_input_gets_fewer_parallel_labels_than_a_tiny_model() -> None:
    torch.manual_seed(0)
    resnet, tiny = _frozen(ResNet18()), _frozen(BatchNormCNN(width=4, hidden=8))
    big = plan_parallel_labels(resnet, (3, 128, 128), requested=16, batch_size=8, memory_limit=256 * MiB)
    small = plan_parallel_labels(tiny, (3, 16, 16), requested=16, batch_size=8, memory_limit=256 * MiB)
    assert small.labels == 16 and small.note is None
    assert 1 <= big.labels < small.labels
    assert big.labels * 8 * big.bytes_per_image <= 256 * MiB < (big.labels + 1) * 8 * big.bytes_per_image
    assert big.note is not None and f"lowered from 16 to {big.labels}" in big.note
    # measured, not guessed: 16× the pixels costs about 16× the memory for the same network
    ratio = measure_bytes_per_image(resnet, (3, 128, 128)) / measure_bytes_per_image(resnet, (3, 32, 32))
    assert 10 < ratio < 20


def test_too_large_for_the_budget_is_one_clear_line() -> None:
    resnet = _frozen(ResNet18())
    with pytest.raises(nc.ModelError, match="too large for cpu: one image needs about") as err:
        plan_parallel_labels(resnet, (3, 64, 64), requested=4, batch_size=8, memory_limit=100_000)
    assert "\n" not in str(err.value)
    with pytest.raises(nc.SettingsError, match="lower the batch size to") as err2:
        plan_parallel_labels(resnet, (3, 64, 64), requested=4, batch_size=32, memory_limit=20 * MiB)
    assert "\n" not in str(err2.value)


def test_the_default_budget_is_read_from_the_machine() -> None:
    free = available_bytes("cpu")
    assert free is None or free > 0
    plan = plan_parallel_labels(_frozen(BatchNormCNN()), (3, 32, 32), requested=4, batch_size=8)
    assert plan.labels == 4 and (plan.budget is None or plan.budget > 0)


def test_the_engine_scales_down_says_so_and_gets_the_same_triggers() -> None:
    torch.manual_seed(0)
    model = _frozen(BatchNormCNN(width=4, hidden=8))
    images = torch.rand(16, 3, 16, 16)
    cfg = nc.ReverseSettings(max_steps=2, batch_size=4, batches_per_step=1, seed=0)
    notes: list[str] = []
    free = reverse_engineer(model, images, [0, 1, 2], cfg, on_note=notes.append)
    assert notes == []
    per_image = measure_bytes_per_image(model, (3, 16, 16))
    limit = 16 * 3 * 16 * 16 * 4 + 4 * 2 * (per_image + 4 * 3 * 16 * 16 * 4)  # data + two labels of 4 images
    capped = reverse_engineer(model, images, [0, 1, 2], cfg, on_note=notes.append, memory_limit=limit)
    assert len(notes) == 1 and "lowered from 3 to 2" in notes[0]
    for a, b in zip(free, capped, strict=True):
        assert torch.equal(a.mask(), b.mask()) and a.history == b.history
