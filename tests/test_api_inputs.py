"""The Python API as a researcher calls it with their own model and data: what it accepts (numpy arrays,
other float types, a network with several outputs), what it refuses in one line of its own errors, and
that it hands the model back in the modes it was in, submodule by submodule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import neuralcleanse as nc
from neuralcleanse import DataError, DatasetSplits, DetectionReport, ModelBundle, ModelError, SettingsError
from neuralcleanse.modes import copy_model

QUICK: dict[str, Any] = {"samples": 60, "max_steps": 2, "scan_labels": [0, 1]}


@pytest.fixture
def net(badnets_model: ModelBundle) -> nn.Module:
    return copy_model(badnets_model.model)


def test_submodule_modes_come_back_as_they_were(net: nn.Module, mnist_sample: DatasetSplits) -> None:
    # a model training with one part frozen in eval mode (a BatchNorm kept as it is): every call hands it
    # back so, not wholly in training mode
    test = mnist_sample.test
    frozen = next(iter(net.children()))
    net.train()
    frozen.eval()
    before = [m.training for m in net.modules()]
    nc.scan(net, test.images[:200], test.labels[:200], **QUICK)
    nc.accuracy(net, test)
    assert [m.training for m in net.modules()] == before and net.training and not frozen.training
    # the repaired copies come back in the given modes too (unlearning returned its copy in eval mode)
    trigger = nc.Trigger.square((1, 28, 28), size=4)
    repaired, _ = nc.unlearn(net, mnist_sample.train, test.sample(100, seed=0), trigger, label=0,
                             epochs=1, min_steps=1, baselines=False)  # fmt: skip
    pruned, _ = nc.prune_neurons(net, test.sample(100, seed=0), trigger, label=0, max_fraction=0.05)
    for copy in (repaired, pruned):
        assert [m.training for m in copy.modules()] == before


def test_arrays_lists_and_other_float_types_are_taken(net: nn.Module, mnist_sample: DatasetSplits) -> None:
    test = mnist_sample.test
    x, y = test.images[:200], test.labels[:200]
    for images, labels in ((x.numpy(), y.numpy()), (x.double(), y.tolist()), (x.half(), y)):
        report = nc.scan(net.eval(), images, labels, **QUICK)
        assert report.data["images"] == 60


class _Pair(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        logits = self.inner(x)
        return {"heads": (logits.mean(1, keepdim=True), logits)}


def test_an_in_memory_network_with_several_outputs_is_scanned_on_the_one_named(
    net: nn.Module, mnist_sample: DatasetSplits
) -> None:
    test = mnist_sample.test
    with pytest.raises(DataError, match="output_key= in the API"):
        nc.scan(_Pair(net.eval()), test.images[:200], test.labels[:200], **QUICK)
    report = nc.scan(_Pair(net), test.images[:200], test.labels[:200], output_key="heads.1", **QUICK)
    assert report.model["num_classes"] == 10


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"samples": "100"}, SettingsError, "samples must be at least 1, a whole number"),
        ({"samples": 2.5}, SettingsError, "samples must be at least 1, a whole number"),
        ({"samples": True}, SettingsError, "samples must be at least 1, a whole number"),
        ({"scan_labels": 3}, SettingsError, "scan_labels must be a list of labels"),
        ({"scan_labels": [1.5]}, SettingsError, "scan_labels must be a list of labels"),
        ({"source": "1"}, SettingsError, "source must be a label"),
        ({"reference": "scans/x"}, SettingsError, "reference must be a Reference"),
        ({"threshold": True}, SettingsError, "threshold must be a positive, finite anomaly index"),
        ({"correct_only": "no"}, SettingsError, "correct_only must be True or False"),
    ],
)
def test_settings_of_the_wrong_type_are_refused(
    net: nn.Module, mnist_sample: DatasetSplits, options: dict[str, Any], error: type, message: str
) -> None:
    test = mnist_sample.test
    with pytest.raises(error, match=message):
        nc.scan(net, test.images[:100], test.labels[:100], **{**QUICK, **options})


def test_inputs_that_are_not_data_or_a_model_are_refused(net: nn.Module, mnist_sample: DatasetSplits) -> None:
    x, y = mnist_sample.test.images[:100], mnist_sample.test.labels[:100]
    with pytest.raises(DataError, match="the data loader yields dicts"):
        nc.scan(net, [{"image": x, "label": y}], **QUICK)
    with pytest.raises(DataError, match="the labels are not numbers"):
        nc.scan(net, x, [str(int(k)) for k in y], **QUICK)
    with pytest.raises(ModelError, match="takes a model, not a path"):
        nc.scan("model.pt2", x, y, **QUICK)
    with pytest.raises(DataError, match=r"look channels-last, \(N, H, W, C\).*permute\(0, 3, 1, 2\)"):
        nc.scan(net, x.permute(0, 2, 3, 1), y, **QUICK)


def test_validation_and_mitigation_inputs_are_checked(
    net: nn.Module, mnist_sample: DatasetSplits, badnets_report: DetectionReport
) -> None:
    test, trigger = mnist_sample.test, badnets_report.triggers[0]
    refused: list[tuple[Any, str]] = [
        (lambda: nc.validate_trigger(net, trigger, test.images, label=0), "must be an ImageDataset"),
        (lambda: nc.validate_trigger(net, trigger, mnist_sample, label=0), r"one split .*data.test"),
        (lambda: nc.validate_trigger(net, trigger, test, label=2.7), "label must be an integer, got 2.7"),
        (lambda: nc.validate_trigger(net, badnets_report, test, label=0), "not a DetectionReport"),
        (
            lambda: nc.validate_trigger(net, trigger, test, label=0, source_labels=[1.5]),
            "source label must be",
        ),
        (lambda: nc.prune_neurons(net, test, trigger, label=0, device="cuda:3"), "device 'cuda:3'"),
        (lambda: nc.filter_inputs(net, test, trigger, label=0, device="cpu:7"), "the CPU is one device"),
    ]
    for call, message in refused:
        with pytest.raises(SettingsError, match=message):
            call()
    absent: list[Any] = [
        lambda: nc.validate_trigger(net, trigger, test, label=0, source_labels=[99]),
        lambda: nc.filter_inputs(net, test, trigger, label=0, source_labels=[7, 99]),
        lambda: nc.prune_neurons(net, test, trigger, label=0, source_labels=[99]),
        lambda: nc.unlearn(net, test, test, trigger, label=0, source_labels=[99]),
    ]
    for call in absent:  # refused before any work: the attack could not be measured
        with pytest.raises(DataError, match="no image of source label 99 to measure the attack on"):
            call()


class _FailsOnLargeBatches(nn.Module):
    """A user's model with a bug that shows only on batches larger than the first probes."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > 16:
            raise IndexError("index 16 is out of bounds for dimension 0 with size 16")
        out: torch.Tensor = self.inner(x)
        return out


def test_a_model_failing_on_later_batches_gets_a_one_line_error(
    net: nn.Module, mnist_sample: DatasetSplits
) -> None:
    test = mnist_sample.test
    model = _FailsOnLargeBatches(net).eval()
    message = r"the model failed on a batch of \d+ images of shape \(1, 28, 28\): IndexError: index 16"
    with pytest.raises(ModelError, match=message) as caught:
        nc.scan(model, test.images[:200], test.labels[:200], **QUICK)
    assert isinstance(caught.value.__cause__, IndexError)  # the model's own error stays reachable
    with pytest.raises(ModelError, match=message):
        nc.accuracy(model, test)


def test_attack_settings_and_recipes_of_the_wrong_type_are_refused() -> None:
    for target in (2.5, "3", True, -1):
        with pytest.raises(SettingsError, match="target label must be"):
            nc.BadNets(target=target)  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match="source label must be an integer"):
        nc.BadNets(target=0, source_labels=(1.5,))  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match="attack must be an attack object"):
        nc.Recipe(attack="badnets")  # type: ignore[arg-type]


def test_a_report_missing_a_trigger_file_is_refused(badnets_report: DetectionReport, tmp_path: Path) -> None:
    badnets_report.save(tmp_path / "r", images=False)
    (tmp_path / "r" / "triggers" / "label_0003.safetensors").unlink()
    with pytest.raises(DataError, match="trigger file triggers/label_0003.safetensors is missing"):
        DetectionReport.load(tmp_path / "r")
    # an unreadable one is named first, not inside a "malformed scan report" about report.json
    (tmp_path / "r" / "triggers" / "label_0003.safetensors").write_text("not a trigger")
    with pytest.raises(DataError) as caught:
        DetectionReport.load(tmp_path / "r")
    assert str(caught.value).startswith(
        f"{tmp_path / 'r' / 'triggers' / 'label_0003.safetensors'}: not a valid"
    )


def test_train_names_the_option_of_a_bad_source_label(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from neuralcleanse.cli import main

    args = [
        "train",
        "--attack",
        "badnets",
        "--target",
        "0",
        "--source-labels",
        "a,b",
        "--out",
        str(tmp_path / "m"),
    ]
    assert main(args) == 2
    assert "--source-labels: 'a' is not a label" in capsys.readouterr().err and not (tmp_path / "m").exists()


def test_a_saved_report_keeps_its_norms_to_the_last_digit(
    badnets_report: DetectionReport, tmp_path: Path
) -> None:
    badnets_report.save(tmp_path / "r", images=False)
    loaded = DetectionReport.load(tmp_path / "r")
    assert loaded.l1_norms == badnets_report.l1_norms
    assert [r.anomaly_index for r in loaded.labels] == [r.anomaly_index for r in badnets_report.labels]


def test_a_result_file_that_is_not_an_object_is_named_so(tmp_path: Path) -> None:
    for value, kind in (([1, 2], "a list"), ("x", "a string"), (3, "a number"), (None, "null")):
        file = tmp_path / "report.json"
        file.write_text(json.dumps(value))
        with pytest.raises(
            DataError, match=f"not a scan report \\(the file holds {kind}, not a JSON object\\)"
        ):
            DetectionReport.load(tmp_path)


def test_several_backdoors_are_named_when_one_is_not_a_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from neuralcleanse.cli import main
    from neuralcleanse.lab.attacks import build_attack

    with pytest.raises(
        SettingsError, match=r"zoo, backdoor 1: expected a table \{target, trigger, ...\}, got 5"
    ):
        build_attack("multi", {"backdoors": [{"target": 1}, 5]}, where="zoo")
    assert main(["train", "--attack", "multi", "--target", "1", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "unknown attack 'multi'; train takes none, badnets, trojan" in err and "neuralcleanse zoo" in err
    assert not (tmp_path / "m").exists()
