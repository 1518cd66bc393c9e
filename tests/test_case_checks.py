"""Validation and mitigation on what an outsider brings (helper-23's probe): a network whose classifier is
not a linear layer, exported or not; a model scanned behind a declared preprocessing; what
``nc.load_model`` returns handed to the API; a hand-edited report; pruning without images of the label."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import neuralcleanse as nc
from neuralcleanse import DataError, DatasetSplits, DetectionReport, ModelBundle, SettingsError
from neuralcleanse.cli import main


class _LinearAsConv(nn.Module):
    """A linear layer's work done by a 1×1 convolution (a convolutional head)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.conv = nn.Conv2d(linear.in_features, linear.out_features, 1)
        with torch.no_grad():
            self.conv.weight.copy_(linear.weight[:, :, None, None])
            self.conv.bias.copy_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x[..., None, None]).flatten(1)
        return out


def _without_linear(model: nn.Module) -> nn.Module:
    net = copy.deepcopy(model)
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, _LinearAsConv(child))
    return net.eval()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def conv_head(
    tmp_path_factory: pytest.TempPathFactory, badnets_model: ModelBundle, mnist_sample: DatasetSplits
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("conv-head")
    net = _without_linear(badnets_model.model)
    assert not any(isinstance(m, nn.Linear) for m in net.modules())
    test = mnist_sample.test
    x = test.images[:2]
    assert torch.allclose(net(x), badnets_model.model.eval()(x), atol=1e-5)  # the same function
    program = torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, root / "conv.pt2")
    np.savez(root / "clean.npz", x=test.images[:300].numpy(), y=test.labels[:300].numpy())
    return {"pt2": root / "conv.pt2", "data": root / "clean.npz", "root": root}


def test_a_network_without_a_linear_layer_is_unlearned_and_told_what_else_it_cannot_do(
    conv_head: dict[str, Path], badnets_model: ModelBundle, capsys: pytest.CaptureFixture[str]
) -> None:
    root, model, data = conv_head["root"], str(conv_head["pt2"]), str(conv_head["data"])
    code, _, err = run(
        capsys, "scan", model, "--data", data, "--labels", "0,1", "--max-steps", "3", "--samples", "60",
        "--out", str(root / "scan"),
    )  # fmt: skip
    assert code == 0, err
    case = ["--data", data, "--report", str(root / "scan"), "--label", "0"]
    code, _, err = run(capsys, "validate", model, *case, "--out", str(root / "v"))
    assert code == 1 and "no linear classifier that could be lifted out of it" in err
    assert "--method unlearn" in err and not (root / "v").exists()
    code, out, err = run(
        capsys, "mitigate", model, *case, "--method", "unlearn", "--epochs", "1", "--out", str(root / "u")
    )
    assert code == 0, err
    assert (root / "u" / "mitigation.json").is_file() and (root / "u" / "model.pt2").is_file()
    # the same network in memory: the feature layer's absence is said without pointing to --layer
    net = _without_linear(badnets_model.model)
    report = DetectionReport.load(root / "scan")
    test = nc.load_images(conv_head["data"])
    for layer in (None, "fc"):
        with pytest.raises(SettingsError, match=r"no linear layer \(nn.Linear\).*unlearning") as caught:
            nc.validate_trigger(net, report.triggers[0], test, label=0, layer=layer)
        assert "--layer" not in str(caught.value)


def test_validation_runs_the_model_behind_the_scans_preprocessing(
    conv_head: dict[str, Path], badnets_model: ModelBundle, mnist_sample: DatasetSplits, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    class Normalised(nn.Module):  # a program that expects normalised images
        def __init__(self) -> None:
            super().__init__()
            self.net = badnets_model.model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.net(x * 0.3081 + 0.1307)
            return out

    x = mnist_sample.test.images[:2]
    program = torch.export.export(Normalised().eval(), (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "norm.pt2")
    model, data = str(tmp_path / "norm.pt2"), str(conv_head["data"])
    code, _, err = run(
        capsys, "scan", model, "--data", data, "--mean", "0.1307", "--std", "0.3081", "--labels", "0,1",
        "--max-steps", "3", "--samples", "60", "--out", str(tmp_path / "scan"),
    )  # fmt: skip
    assert code == 0, err
    case = ["--data", data, "--report", str(tmp_path / "scan"), "--label", "0"]
    # the preprocessing left out: the scan's is used, and said
    code, _, err = run(capsys, "validate", model, *case, "--out", str(tmp_path / "v"))
    assert code == 0, err
    notes = json.loads((tmp_path / "v" / "validation.json").read_text())["notes"]
    assert any("the scan's preprocessing (input range 0-1, mean 0.1307, std 0.3081" in n for n in notes)
    # one value for every channel is the same declaration as the scan's
    code, _, err = run(
        capsys, "validate", model, *case, "--mean", "0.1307", "--std", "0.3081", "--out", str(tmp_path / "v2")
    )
    assert code == 0, err
    # another preprocessing is refused before any work
    code, _, err = run(capsys, "mitigate", model, *case, "--method", "prune", "--out", str(tmp_path / "p"))
    assert code == 0, err
    code, _, err = run(
        capsys, "mitigate", model, *case, "--method", "prune", "--mean", "0.5", "--out", str(tmp_path / "p2")
    )
    assert code == 2 and "the scan ran the model with input range 0-1, mean 0.1307, std 0.3081" in err
    assert "this run with input range 0-1, mean 0.5" in err and not (tmp_path / "p2").exists()


def test_the_api_takes_what_load_model_returns(
    conv_head: dict[str, Path], badnets_model: ModelBundle, badnets_report: DetectionReport, tmp_path: Path
) -> None:
    program = torch.export.export(
        badnets_model.model.eval(),
        (torch.rand(2, 1, 28, 28),),
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    torch.export.save(program, tmp_path / "m.pt2")
    loaded = nc.load_model(tmp_path / "m.pt2")
    test = nc.load_images(conv_head["data"])
    trigger = badnets_report.triggers[0]
    result = nc.validate_trigger(loaded, trigger, test, label=0, samples=100)
    assert result.reversed_attack_success > 0.5
    _, pruned = nc.prune_neurons(loaded, test, trigger, label=0)
    assert pruned.after.attack_success < pruned.before.attack_success
    report = nc.scan(badnets_model, test, scan_labels=[0, 1], max_steps=2, samples=60)  # a trained bundle
    assert [r.label for r in report.labels] == [0, 1]
    for call in (nc.validate_trigger, nc.filter_inputs, nc.prune_neurons):
        with pytest.raises(nc.ModelError, match="takes a model, not a path"):
            call(str(tmp_path / "m.pt2"), test, trigger, label=0)  # type: ignore[operator]


def test_a_report_flagging_a_label_it_did_not_scan_is_refused(
    badnets_report: DetectionReport, tmp_path: Path
) -> None:
    badnets_report.save(tmp_path / "r", images=False)
    file = tmp_path / "r" / "report.json"
    d = json.loads(file.read_text())
    d["flagged"] = [99]
    file.write_text(json.dumps(d))
    with pytest.raises(DataError, match="malformed scan report .flagged label 99 was not scanned"):
        DetectionReport.load(tmp_path / "r")


def test_pruning_says_when_the_label_it_guards_has_no_images(
    badnets_model: ModelBundle, badnets_report: DetectionReport, mnist_sample: DatasetSplits
) -> None:
    test = mnist_sample.test.subset(range(300))
    without = test.subset(torch.nonzero(test.labels != 0).flatten())
    _, result = nc.prune_neurons(badnets_model.model, without, badnets_report.triggers[0], label=0)
    said = f"no clean image of label 0 among the {len(without) - len(without) // 2} images pruning was measured on"
    assert any(n.startswith(said) and "could not run" in n for n in result.notes), result.notes
    _, result = nc.prune_neurons(badnets_model.model, test, badnets_report.triggers[0], label=0)
    assert not any("could not run" in n for n in result.notes)


def test_a_real_trigger_that_does_not_work_is_said_to_be_doubtful(
    badnets_model: ModelBundle, badnets_report: DetectionReport, mnist_sample: DatasetSplits
) -> None:
    test = mnist_sample.test.subset(range(400))
    reversed_trigger = badnets_report.triggers[0]
    right = nc.Trigger.from_spec("square:size=4,at=bottom-right,margin=1,pattern=white", (1, 28, 28))
    wrong = nc.Trigger.from_spec("square:size=4,at=top-left,margin=1,pattern=white", (1, 28, 28))
    doubt = "probably not the backdoor's trigger"
    for real, doubted in ((right, False), (wrong, True)):
        v = nc.validate_trigger(badnets_model.model, reversed_trigger, test, label=0, real_trigger=real)
        assert (v.real_attack_success or 0) < 0.5 if doubted else (v.real_attack_success or 0) > 0.9
        assert any(doubt in n for n in v.notes) == doubted
        _, m = nc.filter_inputs(badnets_model.model, test, reversed_trigger, label=0, real_trigger=real)
        assert any(doubt in n for n in m.notes) == doubted
