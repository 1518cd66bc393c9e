"""The lab's built-in modern architectures (``bn-cnn``, ``resnet``): built, saved, loaded and trained like
the paper's networks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import neuralcleanse as nc
from neuralcleanse.features import find_feature_layer
from neuralcleanse.lab.zoo import parse_spec
from neuralcleanse.mitigation.prune import prune_neurons
from neuralcleanse.models import ARCHITECTURES, ModelCard
from neuralcleanse.models.architectures import BatchNormCNN, SmallResNet
from neuralcleanse.validation import validate_trigger

LAB = ["bn-cnn", "resnet"]
SHAPES = [(1, 28, 28), (3, 32, 32)]
BATCH = 32


def _penultimate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(model.penultimate).register_forward_hook(lambda _m, _i, o: seen.append(o))
    try:
        model(x)
    finally:
        handle.remove()
    return seen[0]


def _warmed(arch: str, shape: tuple[int, int, int], classes: int = 10) -> nn.Module:
    """A built model whose BatchNorm statistics are no longer the initial zeros and ones."""
    model = nc.build_model(arch, input_shape=shape, num_classes=classes, seed=1)
    model.train()
    with torch.no_grad():
        model(torch.rand(8, *shape, generator=torch.Generator().manual_seed(0)))
    return model.eval()


def test_the_lab_architectures_are_registered_and_accepted_by_zoo_specs() -> None:
    assert ARCHITECTURES["bn-cnn"] is BatchNormCNN and ARCHITECTURES["resnet"] is SmallResNet
    models = [
        {"name": "a", "arch": "bn-cnn"},
        {"name": "b", "arch": "resnet", "attack": "badnets", "target": 1},
    ]
    spec = parse_spec({"defaults": {"epochs": 1}, "model": models}, source="s.toml")
    assert [e.recipe.arch for e in spec.entries] == LAB


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("arch", LAB)
def test_build_forward_and_penultimate(arch: str, shape: tuple[int, int, int]) -> None:
    model = nc.build_model(arch, input_shape=shape, num_classes=7, seed=0).eval()
    x = torch.rand(3, *shape)
    assert model(x).shape == (3, 7)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model.penultimate == "fc" and isinstance(model.get_submodule("fc")[-1], nn.ReLU)
    acts = _penultimate(model, x)
    assert acts.shape == (3, 128) and bool((acts >= 0).all())
    # the library's feature layer is that module, feeding the logits
    layer = find_feature_layer(model, example=x[:2])
    assert layer.name == "fc" and layer.consumer is model.get_submodule("logits") and layer.width == 128


def test_resnet_has_residual_blocks_with_projection_shortcuts_and_is_small() -> None:
    model = nc.build_model("resnet", input_shape=(1, 28, 28), num_classes=10, seed=0)
    projections = [
        m for n, m in model.named_modules() if n.endswith("shortcut") and isinstance(m, nn.Sequential)
    ]
    assert len(projections) == 2 and all(isinstance(p[0], nn.Conv2d) for p in projections)
    assert [p[0].kernel_size for p in projections] == [(1, 1), (1, 1)]
    assert sum(p.numel() for p in model.parameters()) < 200_000


@pytest.mark.parametrize("arch", LAB)
def test_seeded_and_too_small_inputs_refused(arch: str) -> None:
    a = nc.build_model(arch, input_shape=(3, 32, 32), num_classes=10, seed=3)
    b = nc.build_model(arch, input_shape=(3, 32, 32), num_classes=10, seed=3)
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    with pytest.raises(nc.SettingsError, match="too small"):
        nc.build_model(arch, input_shape=(1, 3, 3), num_classes=10, seed=0)


@pytest.mark.parametrize("arch", LAB)
def test_model_directory_round_trip_gives_identical_outputs(arch: str, tmp_path: Path) -> None:
    shape = (3, 32, 32)
    model = _warmed(arch, shape)
    card = ModelCard(
        arch=arch, num_classes=10, class_names=[str(i) for i in range(10)], input_shape=list(shape),
        penultimate_layer="fc",
    )  # fmt: skip
    nc.save_model_dir(tmp_path / "m", model, card)
    back = nc.load_model_dir(tmp_path / "m")
    x = torch.rand(5, *shape)
    assert torch.equal(back.model(x), model(x))
    assert not back.model.training
    # the generic loader reads the directory too, and the bare weights with arch=
    loaded = nc.load_model(tmp_path / "m")
    assert torch.equal(loaded.model(x), model(x))
    bare = nc.load_model(tmp_path / "m" / "model.safetensors", arch=arch)
    assert torch.equal(bare.model(x), model(x))
    # bn-cnn's flattened width fixes its (square) input; the resnet pools adaptively and takes any size
    assert bare.input_shape == (shape if arch == "bn-cnn" else None)
    sized = nc.load_model(tmp_path / "m" / "model.safetensors", arch=arch, input_shape=shape)
    assert sized.input_shape == shape and torch.equal(sized.model(x), model(x))


def test_weights_of_another_architecture_are_one_line(tmp_path: Path) -> None:
    model = _warmed("resnet", (1, 28, 28))
    card = ModelCard(
        arch="resnet", num_classes=10, class_names=[str(i) for i in range(10)], input_shape=[1, 28, 28]
    )
    nc.save_model_dir(tmp_path / "m", model, card)
    with pytest.raises(
        nc.ModelError, match="do not fit the architecture 'bn-cnn': missing key 'features.0.weight'$"
    ):
        nc.load_model(tmp_path / "m" / "model.safetensors", arch="bn-cnn")


@pytest.fixture(scope="module")
def small_mnist() -> nc.DatasetSplits:
    full = nc.load_dataset("mnist-sample")
    return nc.DatasetSplits(
        name="mnist-small", train=full.train.subset(range(18 * BATCH + 1)), test=full.test.subset(range(300))
    )


@pytest.mark.parametrize("arch", LAB)
def test_one_short_training_learns_and_plants_the_backdoor(arch: str, small_mnist: nc.DatasetSplits) -> None:
    assert len(small_mnist.train) % BATCH == 1  # the last mini-batch holds one image: BatchNorm must cope
    recipe = nc.Recipe(
        arch=arch,
        training=nc.TrainSettings(epochs=2, batch_size=BATCH, seed=0),
        attack=nc.BadNets(target=0, poison_rate=0.1),
    )
    bundle = nc.train_recipe(recipe, data=small_mnist, device="cpu")
    assert bundle.card.arch == arch and bundle.card.penultimate_layer == "fc"
    assert bundle.card.clean_accuracy is not None and bundle.card.clean_accuracy > 0.3  # chance: 0.1
    assert not bundle.model.training
    # validation and pruning work on its penultimate layer
    trigger = bundle.triggers[0]
    result = validate_trigger(bundle.model, trigger, small_mnist.test, label=0, real_trigger=trigger)
    assert result.layer == "fc" and result.shared_top_neurons == 1.0
    before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    pruned, outcome = prune_neurons(bundle.model, small_mnist.test, trigger, label=0, max_fraction=0.1)
    assert pruned is not bundle.model and outcome.details["layer"] == "fc" and outcome.details["width"] == 128
    assert all(torch.equal(v, bundle.model.state_dict()[k]) for k, v in before.items())
