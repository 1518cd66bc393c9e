from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from neuralcleanse import ModelBundle, ModelError, SettingsError, build_model, load_model_dir, save_model_dir
from neuralcleanse.models import GTSRBNet, MNISTNet
from neuralcleanse.models.card import ModelCard


@pytest.mark.parametrize(
    ("arch", "shape", "classes", "convs"), [("mnist", (1, 28, 28), 10, 2), ("gtsrb", (3, 32, 32), 43, 6)]
)
def test_paper_architectures(arch: str, shape: tuple[int, int, int], classes: int, convs: int) -> None:
    model = build_model(arch, input_shape=shape, num_classes=classes, seed=0)
    assert model(torch.zeros(2, *shape)).shape == (2, classes)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == convs
    assert sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == 2
    # the penultimate layer is addressable by name and gives the 512 dense activations
    layer = model.get_submodule(model.penultimate)
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
    model(torch.zeros(1, *shape))
    handle.remove()
    assert seen[0].shape == (1, 512)


def test_mnist_net_matches_the_paper_layer_sizes() -> None:
    model = MNISTNet(in_channels=1, image_size=(28, 28), num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(16, (5, 5)), (32, (5, 5))]
    g = GTSRBNet(in_channels=3, image_size=(32, 32), num_classes=43)
    assert [c.out_channels for c in g.modules() if isinstance(c, torch.nn.Conv2d)] == [
        32,
        32,
        64,
        64,
        128,
        128,
    ]


def test_seeded_init_does_not_touch_global_rng() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = build_model("mnist", input_shape=(1, 28, 28), num_classes=10, seed=4)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = build_model("mnist", input_shape=(1, 28, 28), num_classes=10, seed=4)
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_unknown_arch() -> None:
    with pytest.raises(
        SettingsError, match="unknown architecture 'vgg16'; known: mnist, gtsrb, bn-cnn, resnet$"
    ):
        build_model("vgg16", input_shape=(1, 28, 28), num_classes=10, seed=0)


def test_model_directory_round_trip(badnets_model: ModelBundle, tmp_path: Path) -> None:
    saved = badnets_model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "card.json",
        "model.safetensors",
        "triggers",
    ]
    back = load_model_dir(tmp_path / "m")
    assert not back.model.training and not any(p.requires_grad for p in back.model.parameters())
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(back.model(x), badnets_model.model(x))
    assert back.card == saved.card and back.card.targets == [0] and back.card.infected
    assert torch.equal(back.triggers[0].mask, badnets_model.triggers[0].mask)
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["backdoors"][0]["target"] == 0 and card["attack_success"] > 0.9


def test_refuses_non_empty_directory_and_leaves_it_alone(clean_model: ModelBundle, tmp_path: Path) -> None:
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SettingsError, match="pass force=True"):
        clean_model.save(out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    clean_model.save(out, force=True)
    assert not (out / "keep.txt").exists() and (out / "card.json").exists()


def test_failed_save_leaves_no_directory(
    clean_model: ModelBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import neuralcleanse.models.store as store

    def boom(*_a: object, **_k: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(store, "atomic_write_json", boom)
    with pytest.raises(OSError):
        save_model_dir(tmp_path / "m", clean_model.model, clean_model.card)
    assert list(tmp_path.iterdir()) == []


def test_tampered_or_mismatched_weights(clean_model: ModelBundle, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    clean_model.save(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="sha256"):
        load_model_dir(tmp_path / "m")
    # a state dict for another architecture: the first mismatching key is named
    other = build_model("mnist", input_shape=(1, 28, 28), num_classes=5, seed=0)
    save_file(other.state_dict(), str(weights))
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    card["weights_sha256"] = None
    _write_sealed(tmp_path / "m" / "card.json", card)
    with pytest.raises(ModelError, match=r"'logits.weight' has shape \(5, 512\)"):
        load_model_dir(tmp_path / "m")
    weights.write_bytes(b"")
    with pytest.raises(ModelError, match="not a valid safetensors"):
        load_model_dir(tmp_path / "m")


def _write_sealed(path: Path, card: dict[str, Any]) -> None:
    """Write an edited card with a matching digest (what a careful forger would do)."""
    sealed = ModelCard.from_dict({**card, "format_version": 1}).sealed()
    path.write_text(json.dumps(sealed.to_dict()))


def test_card_errors(clean_model: ModelBundle, tmp_path: Path) -> None:
    clean_model.save(tmp_path / "m")
    path = tmp_path / "m" / "card.json"
    card = json.loads(path.read_text())
    assert card["format_version"] == 2 and card["card_sha256"] == ModelCard.from_dict(card).digest()
    for mutate, message, seal in [
        (lambda c: c.pop("arch"), "missing card key 'arch'", False),
        (lambda c: c.update(format_version=99), "format version 99", False),
        (lambda c: c.update(colour="red"), "unknown card key 'colour'", False),
        (lambda c: c.update(arch="vgg"), "unknown architecture 'vgg'", True),
        (lambda c: c.update(seed=7), "does not match its card_sha256", False),
        (lambda c: c.update(num_classes="10"), "card field 'num_classes' has the wrong type", False),
        (lambda c: c.update(input_shape=[1, 28.5, 28]), "card field 'input_shape' has the wrong type", False),
        (
            lambda c: c.update(clean_accuracy=float("nan")),
            "card field 'clean_accuracy' has the wrong type",
            False,
        ),
        (lambda c: c.update(training=[]), "card field 'training' has the wrong type", False),
        (lambda c: c.update(backdoors={}), "'backdoors' must be a list", False),
        (lambda c: c.update(input_shape=[1, 0, 28]), "input_shape must be", False),
    ]:
        broken = json.loads(json.dumps(card))
        mutate(broken)
        if seal:
            _write_sealed(path, broken)
        else:
            path.write_text(json.dumps(broken))
        with pytest.raises(ModelError, match=message):
            load_model_dir(tmp_path / "m")
    path.write_text("{not json")
    with pytest.raises(ModelError, match="cannot read model card"):
        load_model_dir(tmp_path / "m")
