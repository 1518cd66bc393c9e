"""Loading models as users receive them: every format round-trips, gradients reach the input, and no file
gets to run code on load."""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import neuralcleanse as nc
from neuralcleanse.detection import DetectionReport
from neuralcleanse.errors import ModelError, SettingsError
from neuralcleanse.models.loading import load_model, sniff_format
from neuralcleanse.models.preprocess import FixedBatchModel, Preprocessing


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 10 * 10, 5)).eval()


X = torch.rand(7, 1, 12, 12)


def _export(
    model: nn.Module, path: Path, *, static: bool, batch: int = 4, shape: tuple[int, ...] = (1, 12, 12)
) -> Path:
    example = (torch.rand(batch, *shape),)
    dyn = None if static else ({0: torch.export.Dim("batch")},)
    torch.export.save(torch.export.export(model, example, dynamic_shapes=dyn), path)
    return path


def _grad(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    model(x)[:, 1].sum().backward()
    assert x.grad is not None
    return x.grad


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("formats")
    m = _tiny()
    torch.jit.save(torch.jit.trace(m, X), root / "m.ts")
    torch.save(m.state_dict(), root / "m.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in m.state_dict().items()}}, root / "wrapped.pth")
    save_file(m.state_dict(), root / "m.safetensors")
    (root / "arch.py").write_text(
        "from torch import nn\n"
        "class Tiny(nn.Sequential):\n"
        "    def __init__(self, classes=5):\n"
        "        super().__init__(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(400, classes))\n"
    )
    return {
        "dynamic": _export(m, root / "dyn.pt2", static=False),
        "static": _export(m, root / "static.pt2", static=True, batch=4),
        "torchscript": root / "m.ts",
        "state": root / "m.pth",
        "wrapped": root / "wrapped.pth",
        "safetensors": root / "m.safetensors",
        "arch": root / "arch.py",
    }


@pytest.mark.parametrize(
    ("key", "fmt", "arch"),
    [
        ("dynamic", "export", None),
        ("static", "export", None),
        ("torchscript", "torchscript", None),
        ("state", "state-dict", "ARCH"),
        ("wrapped", "state-dict", "ARCH"),
        ("safetensors", "safetensors", "ARCH"),
    ],
)
def test_every_format_round_trips_with_input_gradients(
    files: dict[str, Path], key: str, fmt: str, arch: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    ref = _tiny()
    spec = f"{files['arch']}:Tiny" if arch else None
    loaded = load_model(files[key], arch=spec, allow_torchscript=fmt == "torchscript")
    assert loaded.format == fmt == sniff_format(files[key])
    with torch.no_grad():
        assert torch.allclose(loaded.model(X), ref(X), atol=1e-5)  # 7 images: chunked for the static export
    assert torch.allclose(_grad(loaded.model, X), _grad(ref, X), atol=1e-5)
    assert not any(p.requires_grad for p in loaded.model.parameters())
    loaded.model.eval()  # must not raise, even around an exported program
    if key == "static":
        assert loaded.static_batch == 4 and isinstance(loaded.model, FixedBatchModel)
        assert loaded.model.vectorised  # its chunks ran as one vmapped call, as the outputs above checked
    if key in ("dynamic", "static"):
        assert loaded.input_shape == (1, 12, 12)
    if fmt == "torchscript":
        assert "TorchScript" in caplog.text and "trust" in caplog.text


def test_torchscript_needs_an_explicit_opt_in(files: dict[str, Path], tmp_path: Path) -> None:
    renamed = tmp_path / "model.pt2"  # the format is read from the content, not the name
    renamed.write_bytes(files["torchscript"].read_bytes())
    for path in (files["torchscript"], renamed):
        with pytest.raises(ModelError, match="refused: a TorchScript archive runs code.*--allow-torchscript"):
            load_model(path)


def test_module_path_architecture(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(files["arch"].parent)
    loaded = load_model(files["safetensors"], arch="arch:Tiny", arch_kwargs={"classes": 5})
    with torch.no_grad():
        assert torch.allclose(loaded.model(X), _tiny()(X), atol=1e-5)


def test_builtin_architecture_from_weights(badnets_model: nc.ModelBundle, tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(badnets_model.model.state_dict(), path)
    loaded = load_model(path, arch="mnist")
    assert loaded.input_shape == (1, 28, 28)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), badnets_model.model(x))


def test_model_directory_keeps_its_card(badnets_model: nc.ModelBundle, tmp_path: Path) -> None:
    badnets_model.save(tmp_path / "dir")
    loaded = load_model(tmp_path / "dir")
    assert (
        loaded.format == "model-dir"
        and loaded.card is not None
        and loaded.class_names == [str(i) for i in range(10)]
    )


def test_model_directory_refuses_a_shape_or_arch_its_card_contradicts(
    badnets_model: nc.ModelBundle, tmp_path: Path
) -> None:
    badnets_model.save(tmp_path / "dir")
    assert load_model(tmp_path / "dir", input_shape=(1, 28, 28), arch="mnist").input_shape == (1, 28, 28)
    with pytest.raises(SettingsError, match=r"card says it takes \(1, 28, 28\), not \(3, 32, 32\)"):
        load_model(tmp_path / "dir", input_shape=(3, 32, 32))
    with pytest.raises(SettingsError, match="card says its network is 'mnist', not 'gtsrb'"):
        load_model(tmp_path / "dir", arch="gtsrb")


class _Normalised(nn.Module):
    """A network that expects BGR, 0-255, mean/std-normalised input; built around a pixel-space model."""

    def __init__(self, inner: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("m", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("s", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = (x * self.s + self.m).flip(1) / 255.0
        return self.inner(rgb)


def test_declared_preprocessing_reaches_the_network(tmp_path: Path) -> None:
    torch.manual_seed(1)
    inner = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval()
    mean, std = [120.0, 110.0, 100.0], [60.0, 55.0, 50.0]
    net = _Normalised(inner, mean, std).eval()
    path = _export(net, tmp_path / "n.pt2", static=False, shape=(3, 8, 8))
    pre = Preprocessing(scale=255.0, mean=tuple(mean), std=tuple(std), channel_order="bgr")
    loaded = load_model(path, preprocessing=pre)
    x = torch.rand(5, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), inner(x), atol=1e-4)
    undeclared = load_model(path)
    with torch.no_grad():
        assert not torch.allclose(undeclared.model(x), inner(x), atol=1e-2)


def test_static_batch_export_is_scanned_like_the_original(
    badnets_model: nc.ModelBundle, tmp_path: Path, mnist_sample: nc.DatasetSplits
) -> None:
    path = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(badnets_model.model, (torch.rand(6, 1, 28, 28),)), path)
    loaded = load_model(path)
    assert loaded.static_batch == 6
    settings = {"seed": 5, "max_steps": 12}
    a = nc.scan(loaded.model, mnist_sample.test, samples=200, scan_labels=[0, 3], **settings)
    b = nc.scan(badnets_model.model, mnist_sample.test, samples=200, scan_labels=[0, 3], **settings)
    for k in (0, 3):
        # chunking changes the float summation order, so a few steps drift by ~1e-4
        assert a.label(k).l1_norm == pytest.approx(b.label(k).l1_norm, rel=2e-3)
        assert a.label(k).steps == b.label(k).steps


class _ReadsAScalar(nn.Module):
    """A fixed-batch model vmap cannot run: it reads a value out of its input (``.item()``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert len(x) == 2
        return x.flatten(1)[:, :3] * float(x.mean().item() > -1)


def test_a_fixed_batch_model_vmap_cannot_run_is_run_chunk_by_chunk() -> None:
    model = FixedBatchModel(_ReadsAScalar(), 2)
    x = torch.rand(5, 1, 4, 4)
    assert torch.equal(model(x), x.flatten(1)[:, :3]) and model.vectorised is False
    assert model(x[:0]).shape == (0, 3)  # an empty batch runs one padded chunk


def test_a_hook_on_a_fixed_batch_model_sees_each_chunk_as_a_plain_tensor() -> None:
    """Hooks added by the caller (features read for validation, pruned neurons) run outside vmap: a hooked
    call goes chunk by chunk, and the vectorised call is tried once the hook is gone."""
    inner = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    model = FixedBatchModel(inner, 2)
    seen: list[tuple[int, ...]] = []
    handle = inner[1].register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape)))
    x = torch.rand(5, 1, 4, 4)
    with torch.no_grad():
        out = model(x)
        handle.remove()
        assert seen == [(2, 3)] * 3 and model.vectorised is None
        assert torch.allclose(model(x), out, atol=1e-6) and model.vectorised is True


# ---- bad and hostile files ------------------------------------------------------------------------------
class _Payload:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.target), "w"))


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    if how == "pickle":
        path.write_bytes(pickle.dumps({"weight": _Payload(marker)}))
    else:
        torch.save({"weight": _Payload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(ModelError, match="refused") as err:
        load_model(path, arch="mnist")
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def _rewrite_program(src: Path, dst: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    """Copy an export archive, passing its program JSON (or, with ``edit`` taking names, any member) through ``edit``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            data = edit(info.filename, data)
            zout.writestr(info, data)
    return dst


def _edit_json(fn):  # type: ignore[no-untyped-def]
    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("models/model.json"):
            tree = json.loads(data)
            fn(tree)
            return json.dumps(tree).encode()
        return data

    return edit


def _set_target(tree: dict) -> None:  # type: ignore[type-arg]
    tree["graph_module"]["graph"]["nodes"][0]["target"] = "torch.load"


def _set_expr(tree: dict) -> None:  # type: ignore[type-arg]
    sizes = tree["graph_module"]["graph"]["tensor_values"]
    first = next(iter(sizes.values()))
    first["sizes"][0] = {"as_expr": {"expr_str": "__import__('os').system('touch pwned')", "hint": None}}


def _set_guard(tree: dict) -> None:  # type: ignore[type-arg]
    tree["guards_code"] = ["__import__('os').system('touch pwned')"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set_target, "not an aten/prims operator"),
        (_set_expr, "shape expression"),
        (_set_guard, "guard code"),
    ],
)
def test_hostile_exported_programs_are_refused(
    files: dict[str, Path], tmp_path: Path, edit, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    bad = _rewrite_program(files["dynamic"], tmp_path / "bad.pt2", _edit_json(edit))
    with pytest.raises(ModelError, match=message) as err:
        load_model(bad)
    assert str(bad) in str(err.value)
    assert not (tmp_path / "pwned").exists()


def test_pickled_payload_inside_an_export_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = io.BytesIO()
    torch.save(_Payload(marker), evil)

    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("model_weights_config.json"):
            cfg = json.loads(data)
            first = next(iter(cfg["config"].values()))
            first["use_pickle"] = True
            return json.dumps(cfg).encode()
        if name.endswith("weights/weight_0"):
            return evil.getvalue()
        return data

    bad = _rewrite_program(files["dynamic"], tmp_path / "bad.pt2", edit)
    with pytest.raises(ModelError):
        load_model(bad)
    assert not marker.exists()


def test_truncated_empty_and_unknown_files(files: dict[str, Path], tmp_path: Path) -> None:
    cut = tmp_path / "cut.pt2"
    cut.write_bytes(files["dynamic"].read_bytes()[:3000])
    empty = tmp_path / "empty.pt2"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello world, not a model")
    half_st = tmp_path / "half.safetensors"
    half_st.write_bytes(files["safetensors"].read_bytes()[:200])
    for path, message in [
        (cut, "corrupt"),
        (empty, "empty file"),
        (junk, "not a model file"),
        (half_st, "safetensors"),
        (tmp_path / "missing.pt2", "not found"),
    ]:
        with pytest.raises(ModelError, match=message) as err:
            load_model(path, arch="mnist")
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_state_dict_that_does_not_fit_names_the_first_key(files: dict[str, Path]) -> None:
    with pytest.raises(ModelError, match="features.0.weight"):
        load_model(files["safetensors"], arch="mnist")
    with pytest.raises(SettingsError, match="name the architecture"):
        load_model(files["safetensors"])
    with pytest.raises(SettingsError, match="import failed|not found"):
        load_model(files["safetensors"], arch="no_such_module_xyz:Net")


def test_integer_weights_are_refused_half_precision_is_read(
    badnets_model: nc.ModelBundle, tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    state = badnets_model.model.state_dict()
    save_file({k: (v * 100).to(torch.int32) for k, v in state.items()}, tmp_path / "int.safetensors")
    with pytest.raises(ModelError, match=r"holds int32 values where the architecture has float32"):
        load_model(tmp_path / "int.safetensors", arch="mnist")
    save_file({k: v.half() for k, v in state.items()}, tmp_path / "half.safetensors")
    loaded = load_model(tmp_path / "half.safetensors", arch="mnist")
    images = torch.rand(4, 1, 28, 28)
    assert torch.allclose(loaded.model(images), badnets_model.model(images), atol=0.05)


def test_model_whose_output_is_not_class_scores(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3)).eval()  # (N, 2, 10, 10), not (N, classes)
    path = _export(net, tmp_path / "conv.pt2", static=False)
    loaded = load_model(path)
    with pytest.raises(nc.DataError, match=r"must be \(N, classes\)"):
        nc.scan(loaded.model, X, samples=None)


class _ChannelsLast(nn.Module):
    """A program taking (N, H, W, C) images, as a Keras-minded exporter might write it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(200, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x.permute(0, 3, 1, 2))
        return out


@pytest.mark.parametrize(
    ("net", "shape", "message"),
    [
        (
            _ChannelsLast(),
            (12, 12, 1),
            r"takes channels-last images \(N, H, W, C\).*export the model with a permute",
        ),
        (nn.Sequential(nn.Conv2d(4, 2, 3), nn.Flatten(), nn.Linear(200, 10)), (4, 12, 12), "has 4 channels"),
    ],
)
def test_a_program_without_a_channels_first_image_input_is_a_model_error(
    tmp_path: Path, net: nn.Module, shape: tuple[int, ...], message: str
) -> None:
    """A channels-last program was refused as if the user had given a bad --input-shape (exit 2)."""
    path = _export(net.eval(), tmp_path / "m.pt2", static=False, shape=shape)
    with pytest.raises(nc.ModelError, match=message):
        load_model(path)


class _TwoOutputs(nn.Module):
    """Class scores beside features, as a tuple or a dict (a network with an auxiliary output)."""

    def __init__(self, *, as_dict: bool) -> None:
        super().__init__()
        self.as_dict = as_dict
        self.body = _tiny()[:3]
        self.fc = nn.Linear(4 * 10 * 10, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | dict[str, torch.Tensor]:
        z = self.body(x)
        return {"logits": self.fc(z), "features": z} if self.as_dict else (self.fc(z), z)


@pytest.mark.parametrize(("as_dict", "key", "wrong"), [(False, "0", "2"), (True, "logits", "scores")])
def test_several_outputs_are_named_and_one_is_chosen_with_output(
    tmp_path: Path, as_dict: bool, key: str, wrong: str
) -> None:
    net = _TwoOutputs(as_dict=as_dict).eval()
    path = _export(net, tmp_path / "two.pt2", static=False)
    with pytest.raises(
        nc.DataError, match=r"returns a (tuple of 2 outputs|dict of outputs).*--output-key"
    ) as err:
        nc.scan(load_model(path).model, X, samples=None, max_steps=1)
    assert "(7, 5)" in str(err.value) and "(7, 400)" in str(err.value)  # each output's shape
    loaded = load_model(path, output_key=key)
    scores = net(X)["logits"] if as_dict else net(X)[0]  # type: ignore[index,call-overload]
    assert torch.allclose(loaded.model(X), scores, atol=1e-5)
    assert torch.isfinite(_grad(loaded.model, X)).all() and any("--output-key" in n for n in loaded.notes)
    other = load_model(path, output_key=wrong)  # an index or key the model does not have
    with pytest.raises(
        nc.DataError, match=f"--output-key {wrong if not as_dict else repr(wrong)}: the model"
    ):
        nc.scan(other.model, X, samples=None, max_steps=1)


class _NamedOutputs(nn.Module):
    """Class scores in a named tuple, and features nested in a dict beside them."""

    Out = collections.namedtuple("Out", "features logits")

    def __init__(self, *, nested: bool) -> None:
        super().__init__()
        self.nested = nested
        self.net = _TwoOutputs(as_dict=False)

    def forward(self, x: torch.Tensor) -> Any:
        logits, z = self.net(x)
        return {"heads": (z, {"cls": logits})} if self.nested else self.Out(z, logits)


def test_outputs_are_chosen_by_field_name_and_by_path() -> None:
    from neuralcleanse.models.adapt import OutputPick, describe_outputs, parse_output

    named, nested = _NamedOutputs(nested=False).eval(), _NamedOutputs(nested=True).eval()
    scores = named.net(X)[0]
    assert "features: (7, 400), logits: (7, 5)" in describe_outputs(named(X))
    for net, key in ((named, "logits"), (named, "1"), (nested, "heads.1.cls")):
        assert torch.allclose(OutputPick(net, parse_output(key))(X), scores)
    for net, key, message in (
        (
            named,
            "scores",
            r"'scores': the model returns 2 outputs \(indices 0-1; by name: features, logits\)",
        ),
        (nested, "heads.2", r"'heads.2': output 'heads' returns 2 outputs \(indices 0-1\), not '2'"),
        (nested, "heads.0.x", r"'heads.0.x': output 'heads.0' returns a Tensor, with no outputs .*, not 'x'"),
        (nested, "heads", r"'heads': that output is a tuple, not a tensor"),
    ):
        with pytest.raises(nc.DataError, match=message):
            OutputPick(net, parse_output(key))(X)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_a_program_in_another_float_type_gets_cast_images(tmp_path: Path, dtype: torch.dtype) -> None:
    net = _tiny().to(dtype)
    path = tmp_path / "p.pt2"
    dyn = ({0: torch.export.Dim("batch")},)
    torch.export.save(
        torch.export.export(net, (torch.rand(4, 1, 12, 12, dtype=dtype),), dynamic_shapes=dyn), path
    )
    loaded = load_model(path)
    out = loaded.model(X)
    assert out.dtype == torch.float32 and any(str(dtype).removeprefix("torch.") in n for n in loaded.notes)
    # float16 is emulated on most CPUs: the note says to expect a slow scan
    assert any("several times slower" in n for n in loaded.notes) == (dtype == torch.float16)
    assert torch.allclose(out, net(X.to(dtype)).float(), atol=1e-2)
    assert torch.isfinite(_grad(loaded.model, X)).all()
    as_int = tmp_path / "u8.pt2"  # integer pixels: no gradient reaches them
    torch.export.save(
        torch.export.export(
            _Scaled(net), (torch.zeros(4, 1, 12, 12, dtype=torch.uint8),), dynamic_shapes=dyn
        ),
        as_int,
    )
    with pytest.raises(nc.ModelError, match=r"takes uint8 images.*floating-point input"):
        load_model(as_int)


class _Scaled(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = next(self.net.parameters()).dtype
        out: torch.Tensor = self.net(x.to(dtype) / 255)
        return out


def test_a_repaired_program_keeps_its_outputs_and_input_type(tmp_path: Path) -> None:
    from neuralcleanse.cli import main

    net = _TwoOutputs(as_dict=False).to(torch.bfloat16).eval()
    path = tmp_path / "two.pt2"
    example = (torch.rand(4, 1, 12, 12, dtype=torch.bfloat16),)
    torch.export.save(
        torch.export.export(net, example, dynamic_shapes=({0: torch.export.Dim("batch")},)), path
    )
    data = tmp_path / "d.npz"
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(data, x=rng.integers(0, 256, (60, 12, 12), dtype=np.uint8), y=np.arange(60) % 5)
    common = ["--data", str(data), "--output-key", "0", "--device", "cpu"]
    assert main(["scan", str(path), *common, "--out", str(tmp_path / "s"), "--max-steps", "20"]) == 0
    # validate and mitigate take the scan's --output-key from its report; another one is refused
    report = ["--data", str(data), "--device", "cpu", "--report", str(tmp_path / "s"), "--label", "1"]
    wrong = ["validate", str(path), *report, "--output-key", "1", "--out", str(tmp_path / "v")]
    assert main(wrong) == 1 and not (tmp_path / "v").exists()
    args = [str(path), *report, "--method", "prune"]
    assert main(["mitigate", *args, "--out", str(tmp_path / "m")]) == 0
    notes = json.loads((tmp_path / "m" / "mitigation.json").read_text())["notes"]
    assert any("runs in bfloat16: images are cast to it" in n for n in notes)  # the loader's note too
    program = torch.export.load(tmp_path / "m" / "model.pt2")
    out = program.module()(example[0])
    assert isinstance(out, tuple) and len(out) == 2 and out[0].dtype == torch.bfloat16


def test_a_wrong_input_range_is_noticed_on_the_clean_images(
    badnets_model: nc.ModelBundle, mnist_sample: nc.DatasetSplits, tmp_path: Path
) -> None:
    path = badnets_model.save(tmp_path / "m").path
    assert path is not None
    test = mnist_sample.test
    right = load_model(path)  # the card's 0-1
    assert right.range_note(test.images, test.labels, device=torch.device("cpu")) is None
    wrong = load_model(path, preprocessing=Preprocessing(scale=255.0))
    note = wrong.range_note(test.images, test.labels, device=torch.device("cpu"))
    assert note is not None and "better with input range 0-1 than with the declared 0-255" in note
    # the argmax alone would not have told: the model is still right on most images fed 0-255
    assert float((nc.metrics.predict(wrong.model, test.images) == test.labels).float().mean()) > 0.5


def test_the_api_scan_checks_a_loaded_models_input_range(
    badnets_model: nc.ModelBundle, mnist_sample: nc.DatasetSplits, tmp_path: Path
) -> None:
    # nc.scan on a LoadedModel runs the same check as the command line, records it with the model, and
    # notes it; a short scan is enough to see that (its verdict is not what is tested here)
    path = badnets_model.save(tmp_path / "m").path
    assert path is not None
    test = mnist_sample.test
    wrong = load_model(path, preprocessing=Preprocessing(scale=255.0))
    report = nc.scan(
        wrong, test.images[:300], test.labels[:300], samples=100, max_steps=2, scan_labels=[0, 1]
    )
    doubt = report.model.get("input_range_doubt")
    assert doubt and "better with input range 0-1 than with the declared 0-255" in doubt
    assert doubt in report.notes and report.model["path"] == str(path)
    right = nc.scan(
        load_model(path), test.images[:300], test.labels[:300], samples=100, max_steps=2, scan_labels=[0, 1]
    )
    assert "input_range_doubt" not in right.model


def test_a_doubted_input_range_makes_the_evidence_weak(badnets_report: DetectionReport) -> None:
    assert badnets_report.verdict == "backdoored"
    # the planted label made cheaper than any natural label came on the fidelity benchmark: strong evidence
    rows = [
        dataclasses.replace(r, l1_norm=r.l1_norm / 3) if r.label == 0 else r for r in badnets_report.labels
    ]
    strong = dataclasses.replace(badnets_report, labels=rows)
    assert "strong evidence" in strong.summary()
    doubted = dataclasses.replace(strong, model={**strong.model, "input_range_doubt": "x"})
    summary = doubted.summary()
    assert summary.startswith("BACKDOORED: label 0") and "strong evidence" not in summary
    assert "weak evidence: the model fits the clean images far better with the other input range" in summary


def test_a_wrong_input_range_is_noticed_behind_a_softmax_too(
    badnets_model: nc.ModelBundle, mnist_sample: nc.DatasetSplits
) -> None:
    from neuralcleanse.models.loading import LoadedModel

    softmax = nn.Sequential(badnets_model.model, nn.Softmax(dim=1)).eval()
    test, cpu = mnist_sample.test, torch.device("cpu")
    for scale, noticed in ((1.0, False), (255.0, True)):
        pre = Preprocessing(scale=scale)
        loaded = LoadedModel(pre.wrap(softmax, channels=1).eval(), softmax, "export", Path("m.pt2"), "0", pre)
        note = loaded.range_note(test.images, test.labels, device=cpu)
        assert (note is not None) == noticed, note
        assert not softmax.training  # the check leaves the network in eval mode


def test_a_program_torch_cannot_rebuild_is_one_line_naming_why(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # a namedtuple output registered where the file was written, unknown here: torch logs a traceback of
    # its own and raises "check the warnings above"; we say what it said, in one line, and print nothing else
    import subprocess
    import sys

    script = f"""
import collections, torch
Out = collections.namedtuple("Out", "logits features")
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__(); self.fc = torch.nn.Linear(144, 5)
    def forward(self, x):
        z = x.flatten(1); return Out(self.fc(z), z)
torch.utils._pytree._register_namedtuple(Out, serialized_type_name="probe.Out")
torch.export.save(torch.export.export(Net().eval(), (torch.rand(2, 1, 12, 12),)), {str(tmp_path / "nt.pt2")!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    capfd.readouterr()
    with pytest.raises(
        ModelError, match=r"cannot load exported program \(NotImplementedError: .*namedtuple"
    ) as err:
        load_model(tmp_path / "nt.pt2")
    assert "\n" not in str(err.value) and "warnings above" not in str(err.value)
    out, errors = capfd.readouterr()
    assert "Traceback" not in errors and "Traceback" not in out
