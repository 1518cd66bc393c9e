"""The natural reference: each label's trigger with its pattern fixed to its mean clean image."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import neuralcleanse as nc
from neuralcleanse.detection import NeuralCleanse, ReverseSettings
from neuralcleanse.detection.natural import mean_patterns
from neuralcleanse.errors import SettingsError


def test_mean_patterns_are_each_labels_mean_image() -> None:
    images = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    classes = torch.tensor([0, 0, 1, 1, 1, 2])
    patterns, missing = mean_patterns(images, classes, [0, 1, 3])
    assert torch.allclose(patterns[0], images[:2].mean(0)) and torch.allclose(
        patterns[1], images[2:5].mean(0)
    )
    assert missing == [3] and torch.allclose(patterns[3], images.mean(0))  # no image of 3: all images


def test_natural_reference_settings_are_checked() -> None:
    model = nn.Linear(2, 2)
    assert NeuralCleanse(model, natural_reference=True).statistic == "relative"
    assert not NeuralCleanse(model, natural_reference=True).settings.screening
    with pytest.raises(SettingsError, match="give one reference"):
        NeuralCleanse(model, natural_reference=True, self_reference=True)
    with pytest.raises(SettingsError, match="give one reference"):
        NeuralCleanse(model, natural_reference=True, reference=nc.Reference({0: 1.0, 1: 1.0}))
    with pytest.raises(SettingsError, match="the effect statistic does not"):
        NeuralCleanse(model, natural_reference=True, statistic="effect")


def test_natural_reference_flags_the_planted_label(
    badnets_model: nc.ModelBundle, mnist_sample: nc.DatasetSplits
) -> None:
    detector = NeuralCleanse(badnets_model.model, settings=ReverseSettings(seed=0), natural_reference=True)
    report = detector.scan(mnist_sample.test, samples=300, scan_labels=[0, 1, 2, 3])
    assert report.verdict == "backdoored" and report.flagged == [0]
    ref = report.reference
    assert ref is not None and ref.natural and not ref.trusted and ref.where() == "its mean image's trigger"
    ratios = {k: report.label(k).l1_norm / ref.l1_norms[k] for k in report.l1_norms}
    # the white square is cheap only with a free pattern; the other labels' mean images cost about the same
    assert ratios[0] < 0.5 * sorted(ratios.values())[1]
    assert any(
        n.startswith("natural reference: every label was optimised a second time") for n in report.notes
    )
    assert "its mean image's trigger" in report.summary() or "mean clean image" in report.summary()
    assert report.outlier_test(statistic="l1").statistic == "l1"  # the paper's test from the same norms


def test_validate_and_mitigate_refuse_images_of_another_task(mnist_sample: nc.DatasetSplits) -> None:
    # the check validate and mitigate run on their images (scan refuses the same data in _check_task)
    from types import SimpleNamespace

    from torch import nn

    from neuralcleanse.cli.case import Case
    from neuralcleanse.errors import DataError

    def loaded(outputs: int) -> SimpleNamespace:
        return SimpleNamespace(path="m.pt2", model=nn.Sequential(nn.Flatten(), nn.Linear(784, outputs)))

    case = Case(loaded(8), SimpleNamespace(model={"num_classes": 8}), None, None)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="the images have 10 classes, the model m.pt2 has 8 outputs"):
        case.check_images(mnist_sample.test, SimpleNamespace(data="data/x"))  # type: ignore[arg-type]
    Case(loaded(10), SimpleNamespace(model={"num_classes": 10}), None, None).check_images(  # type: ignore[arg-type]
        mnist_sample.test,
        SimpleNamespace(data="data/x"),  # type: ignore[arg-type]
    )
    # the model as loaded now gives another number of scores than the scanned one (another --output-key)
    wrong = Case(loaded(12), SimpleNamespace(model={"num_classes": 10}), None, None)  # type: ignore[arg-type]
    with pytest.raises(
        DataError, match="m.pt2: the model gives 12 scores per image, the scan report's model 10"
    ):
        wrong.check_images(mnist_sample.test, SimpleNamespace(data="data/x"))  # type: ignore[arg-type]
