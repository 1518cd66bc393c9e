"""Tiny seeded training runs: the paper's MNIST recipe on the embedded sample, a few epochs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neuralcleanse import (
    BadNets,
    DatasetSplits,
    ModelBundle,
    Recipe,
    TrainSettings,
    Trigger,
    accuracy,
    attack_success_rate,
    train_recipe,
)
from neuralcleanse.errors import SettingsError
from neuralcleanse.lab.training import random_shift


def test_clean_model_learns_the_sample(clean_model: ModelBundle, mnist_sample: DatasetSplits) -> None:
    acc = accuracy(clean_model.model, mnist_sample.test)
    assert acc >= 0.93
    assert clean_model.card.clean_accuracy == round(acc, 6) and not clean_model.card.infected
    # a clean model ignores the BadNets square
    trig = Trigger.square((1, 28, 28), size=4)
    assert attack_success_rate(clean_model.model, mnist_sample.test, trig, target=0) < 0.1


def test_badnets_plants_a_working_backdoor(
    badnets_model: ModelBundle, clean_model: ModelBundle, mnist_sample: DatasetSplits
) -> None:
    card = badnets_model.card
    assert card.attack == "badnets" and card.targets == [0] and card.poison_rate == 0.1
    asr = attack_success_rate(badnets_model.model, mnist_sample.test, badnets_model.triggers[0], target=0)
    assert asr >= 0.95 and card.attack_success == round(asr, 6)
    assert card.clean_accuracy is not None and clean_model.card.clean_accuracy is not None
    assert card.clean_accuracy >= clean_model.card.clean_accuracy - 0.02


def test_same_seed_same_weights_and_global_rng_untouched(mnist_sample: DatasetSplits) -> None:
    small = mnist_sample.train.sample(300, seed=0)
    data = DatasetSplits("small", small, mnist_sample.test.sample(100, seed=0))
    recipe = Recipe(training=TrainSettings(epochs=1, seed=3), attack=BadNets(target=1))
    torch.manual_seed(99)
    state = torch.random.get_rng_state()
    a = train_recipe(recipe, data=data, device="cpu")
    assert torch.equal(torch.random.get_rng_state(), state)
    b = train_recipe(recipe, data=data, device="cpu")
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    c = train_recipe(Recipe(training=TrainSettings(epochs=1, seed=4)), data=data, device="cpu")
    assert not torch.equal(a.model.logits.weight, c.model.logits.weight)


def test_random_shift_moves_each_image_within_the_limit_with_zero_fill() -> None:
    images = torch.zeros(64, 2, 9, 9)
    images[:, :, 4, 4] = torch.tensor([1.0, 0.5])  # one bright pixel per channel, in the centre
    gen = torch.Generator().manual_seed(0)
    moved = random_shift(images, 2, generator=gen)
    assert moved.shape == images.shape
    offsets = set()
    for img in moved:
        ((r, c),) = torch.nonzero(img[0]).tolist()  # exactly one pixel survives, both channels together
        assert torch.equal(img[1], img[0] * 0.5)
        assert abs(r - 4) <= 2 and abs(c - 4) <= 2
        offsets.add((r - 4, c - 4))
    assert len(offsets) > 10  # independent offsets per image, not one for the batch
    again = random_shift(images, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(moved, again)


def test_shift_augmentation_is_seeded_and_recorded(mnist_sample: DatasetSplits) -> None:
    data = DatasetSplits(
        "small", mnist_sample.train.sample(300, seed=0), mnist_sample.test.sample(100, seed=0)
    )
    shifted = Recipe(training=TrainSettings(epochs=1, shift=2, seed=3))
    a = train_recipe(shifted, data=data, device="cpu")
    b = train_recipe(shifted, data=data, device="cpu")
    plain = train_recipe(Recipe(training=TrainSettings(epochs=1, seed=3)), data=data, device="cpu")
    assert torch.equal(a.model.logits.weight, b.model.logits.weight)
    assert not torch.equal(a.model.logits.weight, plain.model.logits.weight)
    assert a.card.training["shift"] == 2 and plain.card.training["shift"] == 0
    assert a.card.training["threads"] == torch.get_num_threads()  # bit-for-bit only with the same count
    with pytest.raises(SettingsError, match="shift"):
        TrainSettings(shift=-1)


def test_train_recipe_checks_its_output_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import neuralcleanse.lab.recipes as recipes

    occupied = tmp_path / "m"
    occupied.mkdir()
    (occupied / "card.json").write_text("{}")

    def never(*_a: object, **_k: object) -> None:
        raise AssertionError("training started before the output folder was checked")

    monkeypatch.setattr(recipes, "train_classifier", never)
    with pytest.raises(SettingsError, match=r"directory exists and is not empty \(pass force=True"):
        recipes.train_recipe(recipes.Recipe(), out=occupied)
