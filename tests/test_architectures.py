"""Every architecture of the corpus (``tests/arch_corpus.py``) through every way a user ships it.

Each model is saved as a ``torch.export`` program with a dynamic batch, one with a fixed batch, a
safetensors state dict loaded with ``arch="tests/arch_corpus.py:Class"``, and a TorchScript archive; each
file is loaded with :func:`neuralcleanse.load_model`, scanned briefly (two labels, two steps, 12 images),
its report saved and read back; then validation and the three mitigations run, finding the feature layer
themselves (an exported program's final linear is lifted back into a module when it is loaded), or, for
TorchScript, refuse in one line. One BatchNorm model is trained with a planted BadNets trigger and
scanned properly: the planted label is flagged and validation and mitigation measurably work on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import neuralcleanse as nc
from arch_corpus import CORPUS, BatchNormCNN
from neuralcleanse.detection import DetectionReport
from neuralcleanse.lab.attacks import BadNets
from neuralcleanse.mitigation import filter_inputs, prune_neurons, unlearn
from neuralcleanse.models.preprocess import Preprocessing
from neuralcleanse.validation import validate_trigger

CORPUS_FILE = Path(__file__).with_name("arch_corpus.py").resolve()
FORMATS = ("pt2-dynamic", "pt2-static", "safetensors", "torchscript")
STATIC_BATCH = 4
#: feature layer found automatically on the modules (the input of the classifier that runs last)
FEATURE_LAYER = {
    "batchnorm_cnn": "input of head",
    "resnet18": "input of fc",
    "mobilenet": "input of classifier.4",
    "vit": "input of head",  # declared first: found by the forward pass, not by declaration order
    "groupnorm_silu": "input of out",
    "softmax": "input of dense",
    "odd_buffers": "input of fc",
    "channels_last": "input of head",
    "pixels_255": "input of fc",
    "wide100": "input of classifier",
}
#: how little the scans do: enough to run every code path, not to find anything
QUICK = {"max_steps": 2, "batch_size": 8, "batches_per_step": 1}


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(v, state[k]) for k, v in now.items())


def build(name: str, seed: int = 0) -> nn.Module:
    """The corpus model, seeded, with BatchNorm statistics that are not the defaults (as after training)."""
    cls, shape, _ = CORPUS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls()
        model.train()
        with torch.no_grad():
            for _ in range(2):
                model(torch.rand(8, *shape) * (255.0 if name == "pixels_255" else 1.0))
    model.eval()
    if name == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    return model


def save(model: nn.Module, name: str, fmt: str, root: Path) -> Path:
    """Save ``model`` as a user would in format ``fmt``."""
    _, shape, _ = CORPUS[name]
    gen = torch.Generator().manual_seed(1)
    example = torch.rand(STATIC_BATCH, *shape, generator=gen) * (255.0 if name == "pixels_255" else 1.0)
    if name == "channels_last":
        example = example.contiguous(memory_format=torch.channels_last)
    path = root / f"{name}-{fmt}"
    if fmt.startswith("pt2"):
        dynamic = ({0: torch.export.Dim("batch")},) if fmt == "pt2-dynamic" else None
        torch.export.save(torch.export.export(model, (example,), dynamic_shapes=dynamic), path)
    elif fmt == "torchscript":
        # the transformer's fast path makes trace's re-run check report a different graph
        torch.jit.save(torch.jit.trace(model, example, check_trace=name != "vit"), path)
    else:  # safetensors wants contiguous tensors: a channels-last model is saved as users must save it
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def load(path: Path, name: str, fmt: str) -> nc.LoadedModel:
    cls, shape, _ = CORPUS[name]
    pre = Preprocessing(scale=255.0) if name == "pixels_255" else None
    if fmt == "safetensors":
        return nc.load_model(path, arch=f"{CORPUS_FILE}:{cls.__name__}", input_shape=shape, preprocessing=pre)
    return nc.load_model(path, allow_torchscript=fmt == "torchscript", preprocessing=pre)


def dataset(name: str, n: int = 24, seed: int = 2) -> nc.ImageDataset:
    """Random images in [0, 1] with labels spread over the first three classes."""
    _, shape, classes = CORPUS[name]
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, *shape, generator=gen)
    labels = torch.arange(n) % 3
    return nc.ImageDataset(images, labels, classes, tuple(str(i) for i in range(classes)), f"random-{name}")


@dataclass
class Case:
    name: str
    fmt: str
    original: nn.Module
    loaded: nc.LoadedModel


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Case]:
    """Built lazily: each model is built once and saved in each format on first use."""
    return {}


def _case(files: dict[tuple[str, str], Case], name: str, fmt: str, root: Path) -> Case:
    if (name, fmt) not in files:
        original = next((c.original for (n, _), c in files.items() if n == name), None) or build(name)
        path = save(original, name, fmt, root)
        files[(name, fmt)] = Case(name, fmt, original, load(path, name, fmt))
    return files[(name, fmt)]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("corpus")


CASES = [pytest.param(name, fmt, id=f"{name}-{fmt}") for name in CORPUS for fmt in FORMATS]


@pytest.mark.parametrize(("name", "fmt"), CASES)
def test_loaded_model_matches_the_original(
    files: dict[tuple[str, str], Case], root: Path, name: str, fmt: str
) -> None:
    case = _case(files, name, fmt, root)
    x = dataset(name, n=7).images  # 7: not a multiple of the fixed batch
    scale = 255.0 if name == "pixels_255" else 1.0
    with torch.no_grad():
        expected = case.original(x * scale)
        got = case.loaded.model(x)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert case.loaded.static_batch == (STATIC_BATCH if fmt == "pt2-static" else None)


@pytest.mark.parametrize(("name", "fmt"), CASES)
def test_scan_validate_mitigate(
    files: dict[tuple[str, str], Case], root: Path, tmp_path: Path, name: str, fmt: str
) -> None:
    case = _case(files, name, fmt, root)
    model = case.loaded.model
    data = dataset(name)
    before, hooks = _state(model), _hooks(model)  # an exported program's module has hooks of its own
    report = nc.scan(case.loaded, data.images[:12], scan_labels=[0, 1], samples=None, seed=0, **QUICK)
    assert [r.label for r in report.labels] == [0, 1] and all(r.steps == 2 for r in report.labels)
    assert report.model["num_classes"] == CORPUS[name][2] and report.verdict in ("clean", "inconclusive")
    softmax_note = "outputs are probabilities (detected): optimising on their logarithm"
    assert (softmax_note in report.notes) == (name == "softmax"), report.notes
    report.save(tmp_path / "scan")
    back = DetectionReport.load(tmp_path / "scan")
    assert back.to_dict() == report.to_dict() and sorted(back.triggers) == [0, 1]
    trigger = back.triggers[0]

    if fmt == "torchscript":  # compiled code: hooks never fire inside it, so it is refused in one line
        for run in (
            lambda: validate_trigger(model, trigger, data, label=0, samples=16),
            lambda: filter_inputs(model, data, trigger, label=0),
            lambda: prune_neurons(model, data, trigger, label=0),
            lambda: unlearn(model, data, data, trigger, label=0, epochs=1, baselines=False),
        ):
            with pytest.raises(nc.ModelError) as err:
                run()
            message = str(err.value)
            assert "a TorchScript module" in message and "--arch" in message and "\n" not in message
        assert _same(model, before) and _hooks(model) == hooks
        return

    layer = FEATURE_LAYER[name].replace("of ", "of model.") if name == "pixels_255" else FEATURE_LAYER[name]
    if fmt.startswith("pt2"):  # the program's final linear, lifted back into a module (models/export.py)
        inner = re.sub(r"^input of (model\.)?", "", layer)
        wrappers = ("model." if name == "pixels_255" else "") + ("model." if fmt == "pt2-static" else "")
        layer = f"input of {wrappers}module.{inner}"
    v = validate_trigger(model, trigger, data, label=0, samples=16)  # pixels_255: inside the PixelModel
    assert v.layer == layer and v.images == 16 and len(v.neurons) >= 1
    _, filtered = filter_inputs(model, data, trigger, label=0)
    assert filtered.details["layer"] == layer
    pruned, p = prune_neurons(model, data, trigger, label=0, max_fraction=0.1)
    assert p.details["layer"] == layer and pruned is not model
    repaired, u = unlearn(
        model, data, data, trigger, label=0, fraction=1.0, epochs=1, baselines=False, batch_size=8,
        allow_missing_labels=True,  # the corpus's images are of a few labels
    )  # fmt: skip
    assert repaired is not model and not repaired.training
    # the user's model: weights, buffers (BatchNorm statistics), mode and hooks as they were
    assert (
        _same(model, before) and not model.training and _hooks(model) == hooks and _hooks(pruned) <= hooks
    )  # a copy of a program drops its input-check hooks
    norms = [k for k in before if k.endswith("running_mean")]
    if norms:  # frozen by default: fine-tuning trained the weights but left the statistics alone
        after = repaired.state_dict()
        assert all(torch.equal(after[k], before[k]) for k in norms)
        assert any(not torch.equal(after[k], before[k]) for k in before if k.endswith("weight"))
        if fmt == "safetensors":  # an exported program's batch norm is an inference-mode operator
            assert u.details["batchnorm"] == "frozen" and any("BatchNorm" in n for n in u.notes)


def test_unlearning_can_update_batchnorm_statistics_in_a_copy(
    files: dict[tuple[str, str], Case], root: Path
) -> None:
    case = _case(files, "resnet18", "safetensors", root)
    model, data = case.loaded.model, dataset("resnet18", n=25)  # 25 % 8 == 1: a batch of one is avoided
    before = _state(model)
    trigger = nc.Trigger.square((3, 32, 32), size=4)
    repaired, r = unlearn(
        model,
        data,
        data,
        trigger,
        label=0,
        fraction=1.0,
        epochs=1,
        baselines=False,
        batch_size=8,
        batchnorm="update",
        allow_missing_labels=True,
    )
    after = repaired.state_dict()
    changed = [k for k in before if k.endswith("running_mean") and not torch.equal(after[k], before[k])]
    assert changed and _same(model, before) and r.details["batchnorm"] == "update"
    assert r.details["train_images"] == 24
    with pytest.raises(nc.SettingsError, match="batchnorm must be"):
        unlearn(model, data, data, trigger, label=0, batchnorm="train")  # type: ignore[arg-type]


def test_a_named_layer_feeds_the_first_linear_layer_that_runs_after_it(
    files: dict[tuple[str, str], Case], root: Path
) -> None:
    trigger = nc.Trigger.square((3, 32, 32), size=4)
    mobile = _case(files, "mobilenet", "safetensors", root).loaded.model
    v = validate_trigger(mobile, trigger, dataset("mobilenet"), label=0, layer="classifier.2", samples=8)
    assert v.layer == "classifier.2" and max(v.neurons) < 48  # the Hardswish before classifier.4 (48 wide)
    vit = _case(files, "vit", "safetensors", root).loaded.model
    with pytest.raises(nc.SettingsError, match="layer 'norm' gives 544 features but its consumer takes 32"):
        validate_trigger(vit, trigger, dataset("vit"), label=0, layer="norm", samples=8)  # all 17 tokens
    with pytest.raises(nc.SettingsError, match="layer 'nope' does not exist"):
        validate_trigger(vit, trigger, dataset("vit"), label=0, layer="nope")
    # in an exported program the layer the source names is gone: the error says why, and what to name
    exported = _case(files, "mobilenet", "pt2-dynamic", root).loaded.model
    with pytest.raises(
        nc.SettingsError, match="layer 'classifier.2' is not a module of the exported program"
    ):
        validate_trigger(exported, trigger, dataset("mobilenet"), label=0, layer="classifier.2", samples=8)
    assert _hooks(vit) == 0 and _hooks(mobile) == 0


# ---- one model trained with a planted backdoor, scanned properly ---------------------------------------


@pytest.fixture(scope="module")
def trained(mnist_sample: nc.DatasetSplits) -> tuple[nn.Module, nc.Trigger]:
    """The BatchNorm CNN trained on the MNIST sample with a BadNets trigger toward label 0 (two epochs)."""
    poisoned, trigger = BadNets(target=0, poison_rate=0.1).poison(mnist_sample.train, seed=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BatchNormCNN(in_channels=1, width=8)
    nc.train_classifier(model, poisoned.dataset, nc.TrainSettings(epochs=2, batch_size=64, seed=0))
    model.eval()
    assert nc.accuracy(model, mnist_sample.test) > 0.85
    assert nc.attack_success_rate(model, mnist_sample.test, trigger, target=0) > 0.9
    return model, trigger


#: a short schedule (40 steps of 2 mini-batches, patience 2, 99% attack success) on five labels:
#: seconds, not minutes; unconverged, so the mitigation margins below hold for this schedule only
SHORT = {
    "samples": 100,
    "max_steps": 40,
    "batches_per_step": 2,
    "attack_threshold": 0.99,
    "patience": 2,
    "early_stop_patience": 6,
}


def test_planted_backdoor_is_found_validated_and_removed(
    trained: tuple[nn.Module, nc.Trigger], mnist_sample: nc.DatasetSplits, tmp_path: Path
) -> None:
    model, real = trained
    path = tmp_path / "m.safetensors"
    save_file(model.state_dict(), path)
    loaded = nc.load_model(
        path,
        arch=f"{CORPUS_FILE}:BatchNormCNN",
        arch_kwargs={"in_channels": 1, "width": 8},
        input_shape=(1, 28, 28),
    )
    report = nc.scan(loaded, mnist_sample.test, scan_labels=[0, 2, 4, 6, 8], seed=0, **SHORT)
    norms = {r.label: r.l1_norm for r in report.labels}
    # too short a schedule for the outlier test to be sure, but the planted label stands out by far
    assert min(norms, key=norms.__getitem__) == 0 and norms[0] < 0.6 * sorted(norms.values())[2], norms
    rev = report.triggers[0]
    net = loaded.model
    before = _state(net)
    v = validate_trigger(net, rev, mnist_sample.test, label=0, real_trigger=real, samples=300)
    assert v.layer == "input of head" and v.reversed_attack_success > 0.9
    assert v.reversed_activation > v.clean_activation
    _, f = filter_inputs(net, mnist_sample.test, rev, label=0, real_trigger=real)
    assert f.before.attack_success > 0.9 and f.after.attack_success < f.before.attack_success - 0.3
    pruned, p = prune_neurons(net, mnist_sample.test, rev, label=0, real_trigger=real, max_fraction=0.5)
    assert p.after.attack_success < p.before.attack_success - 0.3
    repaired, u = unlearn(
        net, mnist_sample.train, mnist_sample.test, rev, label=0, real_trigger=real, baselines=False
    )
    assert u.before.real_attack_success is not None and u.before.real_attack_success > 0.9
    assert u.after.real_attack_success is not None and u.after.real_attack_success < 0.2
    assert u.after.clean_accuracy > u.before.clean_accuracy - 0.05
    assert _same(net, before) and repaired is not net and pruned is not net
