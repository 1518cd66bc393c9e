from __future__ import annotations

import pytest
import torch

from neuralcleanse import BadNets, ImageDataset, SettingsError, Trigger, poison_dataset


def _tiny(n: int = 100, classes: int = 4) -> ImageDataset:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, 8, 8, generator=gen) * 0.5
    labels = torch.arange(n) % classes
    return ImageDataset(images, labels, classes, tuple("abcd"[:classes]), "tiny")


def test_poisoning_changes_exactly_the_chosen_images() -> None:
    data = _tiny()
    trig = Trigger.square((1, 8, 8), size=2)
    result = poison_dataset(data, trig, target=2, rate=0.2, seed=5)
    idx = result.indices
    assert len(idx) == 20 and result.rate == pytest.approx(0.2)
    # drawn only from images that were not already the target
    assert (data.labels[idx] != 2).all()
    # chosen ones are stamped and relabelled; the others are untouched
    assert (result.dataset.labels[idx] == 2).all()
    assert torch.equal(result.dataset.images[idx], trig.apply(data.images[idx]))
    others = torch.ones(len(data), dtype=torch.bool)
    others[idx] = False
    assert torch.equal(result.dataset.images[others], data.images[others])
    assert torch.equal(result.dataset.labels[others], data.labels[others])
    # stamped pixels are exactly the trigger's: bottom-right 2x2 at margin 1 is white
    assert (result.dataset.images[idx][:, 0, 5:7, 5:7] == 1.0).all()
    assert (result.dataset.images[idx][:, 0, :5, :] == data.images[idx][:, 0, :5, :]).all()
    # the input dataset is not modified
    assert float(data.images.max()) <= 0.5


def test_poisoning_is_seeded() -> None:
    data = _tiny()
    trig = Trigger.square((1, 8, 8), size=2)
    a = poison_dataset(data, trig, target=0, rate=0.1, seed=1).indices
    b = poison_dataset(data, trig, target=0, rate=0.1, seed=1).indices
    c = poison_dataset(data, trig, target=0, rate=0.1, seed=2).indices
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_source_specific_poisoning_uses_only_source_images() -> None:
    data = _tiny()
    trig = Trigger.square((1, 8, 8), size=2)
    result = poison_dataset(data, trig, target=0, rate=0.1, seed=0, source_labels=[3])
    assert (data.labels[result.indices] == 3).all()


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.1, 1.5])
def test_rate_outside_open_interval(rate: float) -> None:
    with pytest.raises(SettingsError, match=r"\(0, 1\)"):
        poison_dataset(_tiny(), Trigger.square((1, 8, 8), size=2), target=0, rate=rate, seed=0)


def test_impossible_poisoning_requests() -> None:
    trig = Trigger.square((1, 8, 8), size=2)
    with pytest.raises(SettingsError, match="only 25 are eligible"):
        poison_dataset(_tiny(), trig, target=0, rate=0.5, seed=0, source_labels=[1])
    with pytest.raises(
        SettingsError, match="relabels all 25 eligible images .every image of the source labels"
    ):
        poison_dataset(_tiny(), trig, target=0, rate=0.25, seed=0, source_labels=[1])  # no clean 1 left
    with pytest.raises(SettingsError, match="poisons no image"):
        poison_dataset(_tiny(), trig, target=0, rate=0.001, seed=0)
    with pytest.raises(SettingsError, match="outside"):
        poison_dataset(_tiny(), trig, target=7, rate=0.1, seed=0)
    with pytest.raises(SettingsError, match="trigger is for images"):
        poison_dataset(_tiny(), Trigger.square((1, 9, 9), size=2), target=0, rate=0.1, seed=0)


def test_badnets_checks_before_training() -> None:
    with pytest.raises(SettingsError, match="outside"):
        BadNets(target=12).check(10, (1, 28, 28))
    with pytest.raises(SettingsError, match="larger than"):
        BadNets(target=1, trigger="square:size=30").check(10, (1, 28, 28))
