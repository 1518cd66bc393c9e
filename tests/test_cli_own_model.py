"""``neuralcleanse scan MODEL.pt2 --data FOLDER``: a user's exported model and image folder, end to end."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import neuralcleanse as nc
from neuralcleanse.cli import main
from neuralcleanse.data.files import load_images
from neuralcleanse.models.loading import load_model


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def user_files(
    tmp_path_factory: pytest.TempPathFactory, badnets_model: nc.ModelBundle, mnist_sample: nc.DatasetSplits
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("user")
    model = badnets_model.model
    # the user's program expects normalised input and was exported with a fixed batch of 64
    mean, std = 0.1307, 0.3081

    class Normalised(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x * std + mean)

    torch.export.save(
        torch.export.export(Normalised().eval(), (torch.rand(64, 1, 28, 28),)), root / "bad.pt2"
    )
    save_file(model.state_dict(), root / "bad.safetensors")
    test = mnist_sample.test
    for label in range(10):
        d = root / "images" / str(label)
        d.mkdir(parents=True)
        for i in torch.nonzero(test.labels == label).flatten()[:40].tolist():
            Image.fromarray((test.images[i, 0] * 255).round().byte().numpy()).save(d / f"{i:04d}.png")
    return {
        "pt2": root / "bad.pt2",
        "safetensors": root / "bad.safetensors",
        "images": root / "images",
        "root": root,
    }


def test_scan_exported_model_on_an_image_folder_matches_the_api(
    user_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "scan"
    norm = ["--mean", "0.1307", "--std", "0.3081"]
    code, stdout, stderr = run(
        capsys, "scan", str(user_files["pt2"]), "--data", str(user_files["images"]), *norm, "--seed", "1",
        "--labels", "0-5", "--out", str(out), "--json",
    )  # fmt: skip
    assert code == 0, stderr
    d = json.loads(stdout)
    assert d["verdict"] == "backdoored" and d["flagged"] == [0] and d["anomaly_index"]["0"] > 2
    # the printed summary carries the notes: here, that the verdict is over labels 0-5 only
    assert any("only 6 of the model's 10 labels were scanned" in n for n in d["notes"])
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["format"] == "export" and report["model"]["static_batch"] == 64
    assert any("fixed batch size of 64" in n for n in report["notes"])
    assert any("classified correctly" in n for n in report["notes"])


def test_python_api_gives_the_cli_report(
    user_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    short = ["--labels", "0,5", "--max-steps", "15", "--seed", "3", "--samples", "200"]
    code, stdout, stderr = run(
        capsys, "scan", str(user_files["pt2"]), "--data", str(user_files["images"]), "--mean", "0.1307",
        "--std", "0.3081", *short, "--out", str(tmp_path / "s"), "--json",
    )  # fmt: skip
    assert code == 0, stderr
    loaded = load_model(user_files["pt2"], preprocessing=nc.Preprocessing(mean=(0.1307,), std=(0.3081,)))
    images = load_images(user_files["images"], input_shape=loaded.input_shape)
    api = nc.scan(loaded, images, scan_labels=[0, 5], max_steps=15, seed=3, samples=200)
    assert {str(k): v for k, v in api.l1_norms.items()} == json.loads(stdout)["l1_norms"]


def test_scan_weights_with_a_builtin_architecture(
    user_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, stderr = run(
        capsys, "scan", str(user_files["safetensors"]), "--arch", "mnist", "--data", str(user_files["images"]),
        "--out", str(tmp_path / "s"), "--labels", "0,1,2", "--max-steps", "3", "--json",
    )  # fmt: skip
    assert code == 0, stderr
    assert set(json.loads(stdout)["l1_norms"]) == {"0", "1", "2"}


class _Payload:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.target), "w"))


def test_cli_refuses_hostile_and_broken_inputs(
    user_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"w": _Payload(marker)}))
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    cases = [
        ([str(evil), "--arch", "mnist", "--data", str(user_files["images"])], "refused"),
        ([str(user_files["safetensors"]), "--data", str(user_files["images"])], "name the architecture"),
        ([str(user_files["pt2"]), "--data", str(empty_dir)], "empty or unrecognised"),
        ([str(user_files["pt2"]), "--data", str(tmp_path / "nowhere")], "data path not found"),
        (
            [str(user_files["pt2"]), "--data", str(user_files["images"]), "--mean", "a,b"],
            "--mean must be numbers",
        ),
        (
            [str(user_files["pt2"]), "--data", str(user_files["images"]), "--mean", "0.1,0.2"],
            "mean has 2 values",
        ),
        (
            [str(user_files["pt2"]), "--data", str(user_files["images"]), "--input-shape", "3x28x28"],
            "not the given",
        ),
    ]
    for args, message in cases:
        out = tmp_path / "out"
        code, _, stderr = run(capsys, "scan", *args, "--out", str(out), "--max-steps", "2")
        assert code != 0 and stderr.startswith("error: ") and message in stderr, (args, stderr)
        assert stderr.count("\n") == 1 and not out.exists()
    assert not marker.exists()
