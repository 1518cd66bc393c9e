"""Probability outputs (a final softmax) detected or declared, and optimised on their logarithm."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import neuralcleanse as nc
from arch_corpus import BatchNormCNN, SoftmaxCNN
from neuralcleanse.models.outputs import (
    LogProbabilities,
    SigmoidLogits,
    are_probabilities,
    are_sigmoid,
    as_logits,
)

X = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _models() -> tuple[nn.Module, nn.Module]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return SoftmaxCNN().eval(), BatchNormCNN().eval()


def test_probabilities_are_detected_and_their_logarithm_is_a_valid_set_of_logits() -> None:
    soft, _ = _models()
    wrapped, note = as_logits(soft, X)
    assert note == "outputs are probabilities (detected): optimising on their logarithm"
    assert isinstance(wrapped, LogProbabilities) and wrapped.model is soft
    with torch.no_grad():
        assert torch.allclose(wrapped(X).softmax(1), soft(X), atol=1e-6)
        assert torch.equal(wrapped(X).argmax(1), soft(X).argmax(1))


def test_logits_are_left_alone() -> None:
    _, plain = _models()
    same, note = as_logits(plain, X)
    assert same is plain and note == "outputs are logits (detected): optimising on them as they are"
    assert as_logits(plain, outputs="logits") == (
        plain,
        "outputs are logits (declared): optimising on them as they are",
    )


def test_declared_probabilities_are_wrapped_and_checked_when_images_are_given() -> None:
    soft, plain = _models()
    wrapped, note = as_logits(soft, outputs="probabilities")
    assert isinstance(wrapped, LogProbabilities) and note.endswith(
        "(declared): optimising on their logarithm"
    )
    with pytest.raises(nc.SettingsError, match="declared probabilities, but on these images they are not"):
        as_logits(plain, X, outputs="probabilities")
    with pytest.raises(nc.SettingsError, match="needs a batch of images"):
        as_logits(soft)
    with pytest.raises(nc.SettingsError, match="one of logits, probabilities, sigmoid, auto"):
        as_logits(soft, X, outputs="softmax")  # type: ignore[arg-type]


def test_probabilities_declared_as_logits_are_kept_but_the_note_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    soft, plain = _models()
    with caplog.at_level("WARNING", logger="neuralcleanse.models.outputs"):
        same, note = as_logits(soft, X, outputs="logits")
    assert same is soft and note.startswith("outputs were declared logits, but on these images every row")
    assert "declare probabilities or auto" in note and note in caplog.text
    assert (
        as_logits(plain, X, outputs="logits")[1]
        == "outputs are logits (declared): optimising on them as they are"
    )


def test_zero_probabilities_stay_finite_and_gradients_reach_the_input() -> None:
    class Hard(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            p = torch.zeros(len(x), 3)
            p[:, 0] = 1.0
            return p + 0 * x.mean((1, 2, 3))[:, None]

    out = LogProbabilities(Hard())(X)
    assert torch.isfinite(out).all() and out[0, 0] == 0 and out[0, 1] < -80
    soft, _ = _models()
    x = X.clone().requires_grad_(True)
    F.cross_entropy(LogProbabilities(soft)(x), torch.zeros(len(x), dtype=torch.int64)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_the_detection_rule() -> None:
    assert are_probabilities(torch.tensor([[0.2, 0.8], [1.0, 0.0]]))
    assert not are_probabilities(torch.tensor([[0.2, 0.7]]))  # does not sum to 1
    assert not are_probabilities(torch.tensor([[1.5, -0.5]]))  # sums to 1, but negative
    assert not are_probabilities(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(nc.DataError):
        are_probabilities(torch.zeros(3))


class _Sigmoid(nn.Module):
    """A multi-label head: one sigmoid per class."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(x))


def test_sigmoid_outputs_are_detected_and_optimised_on_their_logit() -> None:
    _, plain = _models()
    sig = _Sigmoid(plain).eval()
    wrapped, note = as_logits(sig, X)
    assert note == "outputs are one sigmoid probability per class (detected): optimising on their logit"
    assert isinstance(wrapped, SigmoidLogits) and not wrapped.training
    with torch.no_grad():
        assert torch.allclose(wrapped(X), plain(X), atol=1e-4)  # the scores before the sigmoid
    assert are_sigmoid(torch.tensor([[0.2, 0.7]])) and not are_sigmoid(torch.tensor([[0.2, 0.8]]))
    assert not are_sigmoid(torch.tensor([[0.2, 1.7]]))
    assert isinstance(as_logits(sig, X, outputs="sigmoid")[0], SigmoidLogits)
    with pytest.raises(nc.SettingsError, match="declared sigmoid, but on these images some are outside"):
        as_logits(plain, X, outputs="sigmoid")


def test_a_sigmoid_head_model_is_scanned_as_its_logits(
    badnets_model: nc.ModelBundle, mnist_sample: nc.DatasetSplits, badnets_report: nc.DetectionReport
) -> None:
    """Cross-entropy on raw sigmoid outputs barely moves (an outsider's model ended "inconclusive, rerun
    with more steps"); on their logit the scan is the plain model's (the session's scan of it, same
    images and seed; each label's optimisation is its own): same flag, same norms."""
    report = nc.scan(
        _Sigmoid(badnets_model.model).eval(), mnist_sample.test, scan_labels=[0, 1, 2, 3], seed=0,
        transfer_check=False,  # not what this tests (tests/test_transfer.py)
    )  # fmt: skip
    assert report.flagged == [0] and badnets_report.flagged == [0] and report.verdict == "backdoored"
    assert any("one sigmoid probability per class (detected)" in n for n in report.notes)
    same = [k for k in report.l1_norms if k not in report.screened and k not in badnets_report.screened]
    assert 0 in same and len(same) >= 3
    for k in same:
        plain = badnets_report.label(k).l1_norm
        assert abs(report.label(k).l1_norm - plain) <= 0.05 * plain


def test_optimising_on_log_probabilities_gives_stronger_gradients() -> None:
    """What the wrapper is for: cross-entropy on raw probabilities is nearly flat."""
    soft, _ = _models()
    target = torch.full((len(X),), 3)

    def grad_norm(model: nn.Module) -> float:
        x = X.clone().requires_grad_(True)
        F.cross_entropy(model(x), target).backward()
        assert x.grad is not None
        return float(x.grad.norm())

    assert grad_norm(LogProbabilities(soft)) > 3 * grad_norm(soft)
