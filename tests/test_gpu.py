"""The scan on a CUDA device: the same code path as on the CPU (skipped on machines without a GPU)."""

from __future__ import annotations

import pytest
import torch

from neuralcleanse import NeuralCleanse, ReverseSettings
from test_screening import IMAGES, TINY, planted_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def test_a_scan_on_cuda_flags_what_the_cpu_flags() -> None:
    cpu = NeuralCleanse(planted_model(), settings=TINY, threshold=1.5).scan(IMAGES, samples=None)
    gpu = NeuralCleanse(planted_model(), settings=TINY, threshold=1.5, device="cuda").scan(
        IMAGES, samples=None
    )
    assert gpu.flagged == cpu.flagged == [0] and gpu.run["device"].startswith("cuda")
    for a, b in zip(gpu.labels, cpu.labels, strict=True):
        assert a.l1_norm == pytest.approx(b.l1_norm, rel=0.05)


def test_the_default_schedule_runs_on_cuda_with_labels_in_parallel_for_its_memory() -> None:
    settings = ReverseSettings(
        **{k: getattr(TINY, k) for k in ("batch_size", "max_steps", "patience", "seed")}
    )
    report = NeuralCleanse(planted_model(), settings=settings, threshold=1.5, device="cuda").scan(
        IMAGES, samples=None
    )
    assert report.flagged == [0]
    assert report.settings["precision"] in ("bf16", "fp32") and report.settings["channels_last"]
