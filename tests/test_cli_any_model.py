"""``validate`` and ``mitigate`` on any model file `scan` reads: a BatchNorm CNN shipped as a ``.pt2``
program and as safetensors + ``--arch file.py:Class``, scanned, validated, filtered, pruned and unlearned
through the command line; the repaired model is saved in its input's format, loads back and scans."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import neuralcleanse as nc
from arch_corpus import BatchNormCNN
from neuralcleanse.cli import main

CORPUS_FILE = Path(__file__).with_name("arch_corpus.py").resolve()
ARCH = f"{CORPUS_FILE}:BatchNormCNN"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("any-model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BatchNormCNN()
        model.train()
        with torch.no_grad():  # BatchNorm statistics that are not the defaults, as after training
            model(torch.rand(16, 3, 32, 32))
    model.eval()
    images = torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = model(images).argmax(1)  # every image "correctly classified"
    assert len(labels.unique()) >= 2
    np.savez(root / "clean.npz", x=images.numpy(), y=labels.numpy())
    batch = ({0: torch.export.Dim("batch")},)
    torch.export.save(torch.export.export(model, (images[:2],), dynamic_shapes=batch), root / "net.pt2")
    bounded = ({0: torch.export.Dim("batch", min=1, max=4096)},)  # a batch range of the exporter's own
    program = torch.export.export(model, (images[:2],), dynamic_shapes=bounded)
    torch.export.save(program, root / "net-bounded.pt2")
    save_file(model.state_dict(), root / "net.safetensors")
    torch.jit.save(torch.jit.trace(model, images[:2]), root / "net.ts")  # type: ignore[no-untyped-call]
    return {"pt2": root / "net.pt2", "pt2-bounded": root / "net-bounded.pt2", "safetensors": root / "net.safetensors",
            "ts": root / "net.ts", "data": root / "clean.npz", "root": root}  # fmt: skip


def _load_args(files: dict[str, Path], fmt: str) -> list[str]:
    extra = ["--arch", ARCH, "--input-shape", "3x32x32"] if fmt == "safetensors" else []
    extra += ["--allow-torchscript"] if fmt == "ts" else []
    return [str(files[fmt]), "--data", str(files["data"]), *extra]


def _scan(capsys: pytest.CaptureFixture[str], files: dict[str, Path], fmt: str) -> Path:
    out = files["root"] / f"scan-{fmt}"
    if not (out / "report.json").exists():
        code, _, err = run(
            capsys, "scan", *_load_args(files, fmt), "--labels", "0-1", "--max-steps", "1",
            "--out", str(out), "--device", "cpu",
        )  # fmt: skip
        assert code == 0, err
    return out


@pytest.mark.parametrize("fmt", ["pt2", "pt2-bounded", "safetensors"])
def test_validate_and_mitigate_any_model_file(
    fmt: str, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    report = _scan(capsys, files, fmt)
    args = [*_load_args(files, fmt), "--report", str(report), "--label", "0", "--device", "cpu"]
    out = files["root"] / f"validation-{fmt}"
    code, stdout, err = run(capsys, "validate", *args, "--out", str(out))
    assert code == 0, err
    assert (out / "validation.json").is_file() and f"written to {out}" in stdout.replace("\n", "")

    saved = {"pt2": "model.pt2", "pt2-bounded": "model.pt2", "safetensors": "model.safetensors"}[fmt]
    for method, extra in [
        ("filter", []),
        ("prune", []),
        # the few images hold two of the ten labels: unlearning is refused without the opt-in
        (
            "unlearn",
            ["--fraction", "1", "--stamp-fraction", "0.5", "--epochs", "1", "--allow-missing-labels"],
        ),
    ]:
        out = files["root"] / f"{method}-{fmt}"
        code, stdout, err = run(capsys, "mitigate", *args, "--method", method, "--out", str(out), *extra)
        assert code == 0, f"{method}: {err}"
        assert (out / "mitigation.json").is_file()
        if method == "filter":
            assert "repaired model" not in stdout and not (out / saved).exists()
            continue
        line = next(x for x in stdout.splitlines() if x.startswith("repaired model saved to "))
        assert line.startswith(f"repaired model saved to {out / saved} (")
        if method == "unlearn":
            assert "clean images: " in stdout and "measured (seeded halves)" in stdout
            assert "no image of 8 of the model's 10 labels" in stdout
        # the repaired model loads back in the same way and scans
        kwargs = {"arch": ARCH, "input_shape": (3, 32, 32)} if fmt == "safetensors" else {}
        loaded = nc.load_model(out / saved, **kwargs)  # type: ignore[arg-type]
        assert loaded.format == ("safetensors" if fmt == "safetensors" else "export")
        if fmt != "safetensors":
            assert loaded.static_batch is None  # the input program had a dynamic batch
        again = nc.scan(
            loaded, torch.rand(8, 3, 32, 32), scan_labels=[0], max_steps=1, batch_size=4, batches_per_step=1
        )
        assert [r.label for r in again.labels] == [0]


def test_the_same_weights_in_another_file_format_are_the_scanned_model(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A scan of the exported program validates the same weights saved as safetensors with --arch (the
    names differ: the program's carry a ``module.`` prefix); other weights are still another model."""
    report = _scan(capsys, files, "pt2")
    args = [*_load_args(files, "safetensors"), "--report", str(report), "--label", "0", "--device", "cpu"]
    code, _, err = run(capsys, "validate", *args, "--out", str(tmp_path / "v"))
    assert code == 0, err
    state = load_file(files["safetensors"])
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key] + 1e-3
    save_file(state, tmp_path / "other.safetensors")
    args[0] = str(tmp_path / "other.safetensors")
    code, _, err = run(capsys, "validate", *args, "--out", str(tmp_path / "o"))
    assert code == 1 and "this scan report belongs to another model" in err


def test_torchscript_is_refused_in_one_line(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    report = _scan(capsys, files, "ts")
    args = [*_load_args(files, "ts"), "--report", str(report), "--label", "0", "--device", "cpu"]
    for command in (["validate"], ["mitigate", "--method", "prune"]):
        out = files["root"] / f"ts-{command[-1]}"
        code, stdout, err = run(capsys, *command, *args, "--out", str(out))
        # the library's refusal is the one error line (after the loader's warning that the file runs code)
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert code == 1 and len(errors) == 1 and err.endswith(errors[0] + "\n"), err
        assert "TorchScript module" in errors[0] and "Traceback" not in err and not out.exists()
    # without the opt-in the file is not even loaded
    code, _, err = run(
        capsys, "validate", str(files["ts"]), "--data", str(files["data"]), "--report", str(report)
    )
    assert code == 1 and "refused: a TorchScript archive runs code" in err and err.count("\n") == 1


def test_layers_of_an_exported_program_by_their_own_names(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    report = _scan(capsys, files, "pt2")
    args = [*_load_args(files, "pt2"), "--report", str(report), "--label", "0", "--device", "cpu"]
    # the name the model was written with, without the prefix the loader's wrapper adds
    out = files["root"] / "validation-fc"
    code, _, err = run(capsys, "validate", *args, "--layer", "fc.0", "--out", str(out))
    assert code == 0 and "Warning" not in err, err
    assert (out / "validation.json").is_file()
    # a convolution was inlined by torch.export: one line that names the layers that can be read
    out = files["root"] / "validation-conv"
    code, _, err = run(capsys, "validate", *args, "--layer", "features.0.0", "--out", str(out))
    assert code == 2 and err.count("\n") == 1 and "inlined in the exported program" in err, err
    assert "fc.0" in err and "head" in err and not out.exists()
    # pruning copies the program: torch's own FutureWarning about its pytree is not shown
    out = files["root"] / "prune-quiet"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        code, _, err = run(capsys, "mitigate", *args, "--method", "prune", "--out", str(out))
    assert code == 0, err
    shown = [str(w.message) for w in seen] + [r.getMessage() for r in caplog.records]
    assert not [s for s in shown if "LeafSpec" in s], shown
