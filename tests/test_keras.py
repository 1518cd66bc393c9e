"""Keras models, the original Neural Cleanse's own format: real ``.keras`` and legacy ``.h5`` files built
here with Keras 3, scanned end to end through the CLI. Skipped when the Keras extra is not installed."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")  # before Keras' first import, as neuralcleanse does
keras = pytest.importorskip(
    "keras", reason="the Keras extra is not installed: pip install 'neuralcleanse[keras]'"
)

from neuralcleanse import DatasetSplits, DetectionReport, ModelError, Trigger  # noqa: E402
from neuralcleanse.cli import main  # noqa: E402
from neuralcleanse.models.loading import load_model  # noqa: E402

TARGET = 0


def _net() -> Any:
    """A small Keras CNN with BatchNorm and a final softmax (the usual Keras habit)."""
    layers = keras.layers
    inp = keras.Input((28, 28, 1))
    x = layers.Conv2D(16, 3, activation="relu")(inp)
    x = layers.BatchNormalization()(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(32, 3, activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(64, activation="relu")(x)
    return keras.Model(inp, layers.Dense(10, activation="softmax")(x))


@pytest.fixture(scope="module")
def keras_files(mnist_sample: DatasetSplits, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A BadNets-infected Keras model (white 4x4 square bottom-right → label 0, 10% poison), trained with
    Keras' own ``fit`` and saved in both formats, and the clean test images as an .npz file."""
    root = tmp_path_factory.mktemp("keras")
    keras.utils.set_random_seed(0)
    train = mnist_sample.train
    x = train.images.clone()
    y = train.labels.clone()
    trigger = Trigger.square((1, 28, 28), size=4)
    rng = np.random.default_rng(0)
    idx = torch.as_tensor(rng.choice(len(x), size=len(x) // 10, replace=False))
    x[idx] = trigger.apply(x[idx])
    y[idx] = TARGET
    model = _net()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(x.permute(0, 2, 3, 1).numpy(), y.numpy(), epochs=4, batch_size=64, verbose=0, shuffle=True)
    model.save(root / "infected.keras")
    model.save(root / "infected.h5")
    test = mnist_sample.test
    np.savez(root / "clean.npz", images=(test.images[:, 0] * 255).round().to(torch.uint8).numpy(),
             labels=test.labels.numpy())  # fmt: skip
    return {"keras": root / "infected.keras", "h5": root / "infected.h5", "data": root / "clean.npz"}


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_keras_model_loads_channels_last_with_input_gradients(keras_files: dict[str, Path], fmt: str) -> None:
    loaded = load_model(keras_files[fmt])
    assert loaded.format == "keras" and loaded.input_shape == (1, 28, 28)
    assert any("channels-last" in n for n in loaded.notes) and any("softmax" in n for n in loaded.notes)
    x = torch.rand(5, 1, 28, 28, requires_grad=True)
    out = loaded.model(x)
    assert out.shape == (5, 10) and torch.allclose(out.sum(1), torch.ones(5), atol=1e-4)
    out[:, TARGET].sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert not any(p.requires_grad for p in loaded.model.parameters())
    stamped = Trigger.square((1, 28, 28), size=4).apply(torch.rand(64, 1, 28, 28) * 0.3)
    with torch.no_grad():
        success = float((loaded.model(stamped).argmax(1) == TARGET).float().mean())
    assert success > 0.9, f"the planted backdoor fires on {success:.0%} of stamped images"


def test_keras_scan_end_to_end_flags_the_planted_label(
    keras_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "scan"
    # the log statistic: this model's natural norms spread widely (median about 50, two labels over 100),
    # so the paper's test puts the planted label at an index of about 2.0, where the thread count's
    # rounding decides the flag; on the logarithms its index is over 4
    code = main(["scan", str(keras_files["keras"]), "--data", str(keras_files["data"]), "--out", str(out),
                 "--samples", "300", "--statistic", "log", "--labels", "0-5", "--json"])  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    report = DetectionReport.load(out)
    assert report.flagged == [TARGET], report.summary
    assert min(report.labels, key=lambda r: r.l1_norm).label == TARGET
    assert "outputs are probabilities (detected): optimising on their logarithm" in report.notes, report.notes
    assert json.loads(printed.out)["flagged"] == [TARGET]


def test_legacy_h5_scan_completes_with_the_same_model(
    keras_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = {}
    for fmt in ("keras", "h5"):
        out = tmp_path / fmt
        args = ["scan", str(keras_files[fmt]), "--data", str(keras_files["data"]), "--out", str(out)]
        assert main([*args, "--samples", "40", "--max-steps", "3", "--labels", "0-2"]) == 0, (
            capsys.readouterr().err
        )
        runs[fmt] = DetectionReport.load(out)
    assert runs["h5"].model["format"] == "keras"
    assert [t.l1_norm for t in runs["h5"].labels] == [t.l1_norm for t in runs["keras"].labels]


def _lambda_model() -> Any:
    """A Lambda layer whose code writes the file named by $NC_MARKER when it runs."""
    inp = keras.Input((28, 28, 1))
    x = keras.layers.Lambda(lambda t: (open(os.environ["NC_MARKER"], "w").close(), t)[1])(inp)
    return keras.Model(inp, keras.layers.Dense(10)(keras.layers.Flatten()(x)))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_lambda_layer_is_refused_before_keras_sees_it(
    tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "marker"
    monkeypatch.setenv("NC_MARKER", str(marker))
    model = _lambda_model()
    assert marker.exists()  # the layer's code is live: building the model ran it
    marker.unlink(missing_ok=True)  # building the model called the lambda once
    path = tmp_path / f"lambda{suffix}"
    model.save(path)
    marker.unlink(missing_ok=True)
    code = main(["scan", str(path), "--data", str(tmp_path / "none.npz"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "Lambda layer" in err and str(path) in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_lambda_activation_is_refused_before_keras_sees_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a plain Python function as an activation: Keras dumps its bytecode with no class name at all
    marker = tmp_path / "marker"
    monkeypatch.setenv("NC_MARKER", str(marker))
    inp = keras.Input((28, 28, 1))
    x = keras.layers.Dense(10)(keras.layers.Flatten()(inp))
    act = keras.layers.Activation(lambda t: (open(os.environ["NC_MARKER"], "w").close(), t)[1])(x)
    path = tmp_path / "act.keras"
    keras.Model(inp, act).save(path)
    marker.unlink(missing_ok=True)  # building the model ran the lambda
    code = main(["scan", str(path), "--dataset", "mnist-sample", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "refused: the config holds a Python function's bytecode" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_keras_model_with_two_heads_is_scanned_on_the_one_chosen(
    keras_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    infected = keras.saving.load_model(keras_files["keras"], compile=False)
    aux = keras.layers.Dense(1, name="aux")(infected.layers[-2].output)
    for outputs, key in (([infected.output, aux], "0"), ({"logits": infected.output, "aux": aux}, "logits")):
        path = tmp_path / f"heads-{key}.keras"
        keras.Model(infected.input, outputs).save(path)
        common = ["--data", str(keras_files["data"]), "--input-range", "0-255", "--samples", "100"]
        out = tmp_path / f"s-{key}"
        assert main(["scan", str(path), *common, "--max-steps", "2", "--out", str(out)]) == 1  # which one?
        assert "--output-key" in capsys.readouterr().err and not out.exists()
        loaded = load_model(path, output_key=key)
        x = torch.rand(3, 1, 28, 28, requires_grad=True)
        scores = loaded.model(x)
        assert scores.shape == (3, 10)
        (grad,) = torch.autograd.grad(scores[:, 0].sum(), x)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_keras_archive_members_and_foreign_modules(keras_files: dict[str, Path], tmp_path: Path) -> None:
    src = keras_files["keras"]
    extra = tmp_path / "extra.keras"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(extra, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info))
        zout.writestr("helper.so", b"\x7fELF" + bytes(60))
    with pytest.raises(ModelError, match="helper.so is a shared library"):
        load_model(extra)
    foreign = tmp_path / "foreign.keras"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(foreign, "w") as zout:
        for info in zin.infolist():
            blob = zin.read(info)
            if info.filename == "config.json":
                config = json.loads(blob)
                config["config"]["layers"][1]["module"] = "os"
                blob = json.dumps(config).encode()
            zout.writestr(info, blob)
    with pytest.raises(ModelError, match="names module 'os', which Keras would import"):
        load_model(foreign)


def test_validation_and_mitigation_refuse_a_keras_model_in_one_line(
    keras_files: dict[str, Path], mnist_sample: DatasetSplits
) -> None:
    from neuralcleanse.mitigation import filter_inputs, prune_neurons, unlearn
    from neuralcleanse.validation import validate_trigger

    model = load_model(keras_files["keras"]).model
    data, trigger = mnist_sample.test, Trigger.square((1, 28, 28), size=4)
    for run in (
        lambda: validate_trigger(model, trigger, data, label=TARGET, samples=16),
        lambda: filter_inputs(model, data, trigger, label=TARGET),
        lambda: prune_neurons(model, data, trigger, label=TARGET),
        lambda: unlearn(model, data, data, trigger, label=TARGET, epochs=1, baselines=False),
    ):
        with pytest.raises(ModelError, match="a Keras model: Keras calls its layers itself") as err:
            run()
        assert "\n" not in str(err.value)
