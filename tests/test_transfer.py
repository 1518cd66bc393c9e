"""The transfer check: a flagged label whose trigger also moves a student distilled on clean images is set
aside as a natural feature; a planted trigger, which no clean image carries, is kept."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import neuralcleanse as nc
from neuralcleanse.detection import DetectionReport
from neuralcleanse.detection.distill import DistillSettings
from neuralcleanse.detection.transfer import (
    SATURATED,
    TRANSFER_DISTILL,
    TRANSFER_RATIO,
    TransferCheck,
    check_transfer,
)
from neuralcleanse.errors import SettingsError

#: a short distillation on the embedded sample's 1,000 test images: seconds on 2 cores
QUICK = DistillSettings(epochs=12, seed=0)


def test_a_planted_label_is_kept(
    badnets_report: DetectionReport,
    badnets_model: nc.ModelBundle,
    mnist_sample: nc.DatasetSplits,
    tmp_path: Path,
) -> None:
    assert badnets_report.flagged == [0]
    checked = check_transfer(badnets_report, badnets_model.model, mnist_sample.test.images, settings=QUICK)
    check = checked.transfer
    assert check is not None
    assert checked.verdict == "backdoored" and checked.flagged == [0]
    # the planted trigger is in no clean image: the student barely follows it, while it follows the
    # natural labels' triggers nearly always
    assert check.success[0] < 0.3
    assert check.typical >= SATURATED
    # so often that no label could stand out: on the paper's network the check is not used, and says so
    assert check.saturated and not check.usable and check.set_aside == []
    assert "cannot tell a natural feature from a planted trigger" in checked.notes[-1]
    assert check.explain().startswith("not used: the unflagged labels' triggers already move the student")
    # the rule itself, without that line, keeps the planted label by far
    rule = dataclasses.replace(check, saturation=None)
    assert rule.usable and rule.relative(0) < TRANSFER_RATIO / 3
    assert rule.set_aside == [] and "kept" in rule.explain()
    # the verdict's sentence then says that the check kept the label, with its rate
    kept = dataclasses.replace(checked, transfer=rule).summary()
    assert kept.startswith("BACKDOORED: label 0") and (
        f"the transfer check kept it: its trigger moves a student distilled on clean images "
        f"{rule.relative(0):.2f} times as often as a typical label's does" in kept
    )
    assert check.kept_clause() is None  # not used: it kept nothing by judging
    assert dataclasses.replace(checked, transfer=rule).transfer_note() is None
    # saved and loaded with the report
    loaded = DetectionReport.load(checked.save(tmp_path / "scan", images=False))
    assert loaded.transfer == check
    assert json.loads((tmp_path / "scan" / "report.json").read_text())["transfer"]["set_aside"] == []


def test_a_flagged_natural_label_is_set_aside(
    clean_report: DetectionReport, clean_model: nc.ModelBundle, mnist_sample: nc.DatasetSplits
) -> None:
    """A false alarm on the clean model (its cheapest label flagged by hand, as the Fashion-MNIST bag is by
    the norms): that label's trigger moves the student as the other labels' do, so it is set aside and
    the verdict is inconclusive, with the numbers."""
    assert clean_report.verdict == "clean"
    k = min((r for r in clean_report.labels if r.reached), key=lambda r: r.l1_norm).label
    alarm = dataclasses.replace(
        clean_report,
        verdict="backdoored",
        flagged=[k],
        labels=[dataclasses.replace(r, flagged=r.label == k) for r in clean_report.labels],
    )
    # the paper's network's students follow every label's trigger (the check is not used there by
    # default): the rule is run without that line
    checked = check_transfer(
        alarm, clean_model.model, mnist_sample.test.images, settings=QUICK, saturation=None
    )
    assert checked.transfer is not None and checked.transfer.set_aside == [k]
    assert dataclasses.replace(checked.transfer, saturation=SATURATED).set_aside == []
    assert checked.transfer.relative(k) >= TRANSFER_RATIO
    assert checked.verdict == "inconclusive" and checked.flagged == []
    assert not any(r.flagged for r in checked.labels)
    assert checked.summary().startswith(f"inconclusive: the norms flag label {k} (")
    assert "but its trigger sends" in checked.summary()
    assert "natural feature" in checked.summary()
    assert checked.summary().endswith(
        "not called clean: on the fidelity benchmark the check also set aside a "
        "planted Trojan trigger (one optimised on the model's own neurons moves a student as natural features do)"
    )
    # nothing flagged, nothing to check: the report comes back as it was
    assert (
        check_transfer(clean_report, clean_model.model, mnist_sample.test.images, settings=QUICK)
        is clean_report
    )


def _check(success: dict[int, float], flagged: list[int], agreement: float = 0.98) -> TransferCheck:
    return TransferCheck("a student", agreement, success, flagged)


def test_the_rule_on_saved_rates() -> None:
    """Students' attack success of every label's reversed trigger, saved by the fidelity benchmark's
    ``--transfer`` (rounded): Fashion-MNIST's bag (8) is set aside where the norms flag it, planted labels
    are kept, and on the paper's network, whose students follow every label's trigger, the check is not
    used: by its rule alone the Trojan square, whose reversed trigger is an adversarial patch like any
    natural label's, was set aside (docs/fidelity.md)."""
    badnets_bn_cnn_s1 = _check(
        {0: 0.04, 1: 0.22, 2: 0.42, 3: 0.36, 4: 0.1, 5: 0.31, 6: 0.33, 7: 0.05, 8: 0.38, 9: 0.32}, [0, 8]
    )
    assert badnets_bn_cnn_s1.set_aside == [8]
    assert badnets_bn_cnn_s1.relative(8) == pytest.approx(0.38 / 0.315)
    clean_resnet_s0 = _check(
        {0: 0.1, 1: 0.11, 2: 0.07, 3: 0.1, 4: 0.14, 5: 0.3, 6: 0.17, 7: 0.01, 8: 0.19, 9: 0.11}, [8]
    )
    assert clean_resnet_s0.set_aside == [8]  # a student that follows few triggers: 0.19 is still high
    two_labels_resnet_s0 = _check(
        {0: 0.08, 1: 0.04, 2: 0.05, 3: 0.09, 4: 0.08, 5: 0.2, 6: 0.12, 7: 0.02, 8: 0.3, 9: 0.0}, [2, 9]
    )
    assert two_labels_resnet_s0.set_aside == []
    trojan_square = _check(
        {0: 0.92, 1: 0.91, 2: 0.91, 3: 0.94, 4: 0.87, 5: 0.95, 6: 0.84, 7: 0.95, 8: 0.97, 9: 0.94}, [5]
    )
    assert trojan_square.saturated and trojan_square.set_aside == []  # 91% typical: not used
    assert trojan_square.unusable_reason is not None and (
        "already move the student 92% of the time (their median; label 5's 95%;"
        in trojan_square.unusable_reason
    )
    assert dataclasses.replace(trojan_square, saturation=None).set_aside == [5]  # the rule alone: lost
    # a check saved before the line existed is read with the rule it was made by
    saved = {**trojan_square.to_dict(), "set_aside": [5]}
    del saved["saturation"]
    assert TransferCheck.from_dict(saved).set_aside == [5]
    assert TransferCheck.from_dict(trojan_square.to_dict()) == trojan_square
    # the line is on the unflagged labels' median, the flagged label's own rate aside
    assert _check({0: 0.1, 1: 0.7, 2: 0.74, 3: 0.99}, [3]).set_aside == [3]
    assert _check({0: 0.1, 1: 0.76, 2: 0.8, 3: 0.99}, [3]).set_aside == []
    # a student that no trigger moves compares against the floor, not against nothing
    assert _check({0: 0.0, 1: 0.0, 2: 0.01, 3: 0.0}, [0]).set_aside == []
    # a student that imitates the model poorly says nothing
    weak = _check({0: 0.9, 1: 0.5, 2: 0.5}, [0], agreement=0.8)
    assert not weak.usable and weak.set_aside == []
    # ... and so does one whose agreement was measured on a handful of images, however high it is
    bag = _check({0: 0.9, 1: 0.5, 2: 0.5}, [0])
    assert bag.set_aside == [0]
    few = dataclasses.replace(bag, held_out=10)
    assert few.set_aside == [] and few.unusable_reason is not None
    assert "measured on only 10 held-out images (at least 50 needed" in few.unusable_reason
    assert dataclasses.replace(bag, held_out=50).set_aside == [0]
    assert TransferCheck.from_dict(few.to_dict()) == few
    # nothing unflagged to compare with: nothing is set aside
    assert _check({0: 0.9, 1: 0.9}, [0, 1]).set_aside == []


def test_bad_settings_are_refused(badnets_report: DetectionReport, badnets_model: nc.ModelBundle) -> None:
    # None is "no" (as the benchmark scripts pass it), not a setting to refuse
    assert (
        nc.NeuralCleanse(badnets_model.model, self_reference=None, transfer_check=None).transfer_check is None
    )  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match='transfer_check must be True, False, "auto" or DistillSettings'):
        nc.NeuralCleanse(badnets_model.model, transfer_check="yes")  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match="transfer ratio must be a positive number"):
        check_transfer(badnets_report, badnets_model.model, torch.zeros(20, 1, 28, 28), ratio=-1)
    for bad in (0, 1.5, True):
        with pytest.raises(SettingsError, match="transfer saturation must be a rate in"):
            check_transfer(badnets_report, badnets_model.model, torch.zeros(20, 1, 28, 28), saturation=bad)


def test_too_few_images_are_refused_before_the_scan(
    badnets_model: nc.ModelBundle, mnist_sample: nc.DatasetSplits
) -> None:
    with pytest.raises(nc.DataError, match=r"needs at least 500 \(50 held out\), got 15"):
        nc.scan(badnets_model.model, mnist_sample.test.images[:15], transfer_check=True)
    # below 500 its student would be measured on fewer than 50 held-out images and the check not used
    with pytest.raises(nc.DataError, match=r"needs at least 500 \(50 held out\), got 499"):
        nc.scan(badnets_model.model, mnist_sample.test.images[:499], transfer_check=True)


def test_a_label_without_a_rate_is_saved_as_null() -> None:
    """A label whose trigger had no image of another label to be stamped on has no rate: the report's
    JSON holds null (it has no NaN), and it reads back as NaN, left out of the median."""
    check = _check({0: 0.1, 1: math.nan, 2: 0.5, 3: 0.4}, [0])
    saved = json.loads(json.dumps(check.to_dict(), allow_nan=False))
    assert saved["success"]["1"] is None
    back = TransferCheck.from_dict(saved)
    assert math.isnan(back.success[1]) and back.baseline(0) == pytest.approx(0.45)


def test_distillation_needs_images_to_train_on() -> None:
    with pytest.raises(SettingsError, match="max_images must be at least 20, got 5"):
        DistillSettings(max_images=5)
    with pytest.raises(SettingsError, match="per_class must be a non-negative integer, got -1"):
        DistillSettings(per_class=-1)


def test_the_checks_student_learns_from_more_images_when_the_task_has_more_classes() -> None:
    """2,000 images, or 200 a class: 2,000 for 10 classes (as measured there), 8,600 for the 43-label
    sign task, whose students of 36 images a class agreed with their models on under half the images."""
    from neuralcleanse.detection.distill import distil_student

    assert [TRANSFER_DISTILL.image_cap(k) for k in (2, 10, 43)] == [2000, 2000, 8600]
    assert DistillSettings(max_images=20).image_cap(43) == 20  # per_class 0: the cap as given
    # the student of a 3-class model on 100 images, capped at 10 a class: 30 images, 10 held out
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    cfg = DistillSettings(max_images=20, per_class=10, epochs=1)
    student = distil_student(model, torch.rand(100, 1, 4, 4), settings=cfg)
    assert (student.images, student.held_out) == (20, 10)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.update(success=[0.1, 0.2]), "success must be an object"),
        (lambda t: t.update(flagged=[99]), "flagged label 99 has no rate"),
        (lambda t: t.update(notes="a note"), "notes lists"),
        (lambda t: t["success"].update({"0": 0.99}), "is not what its rates give"),
    ],
)
def test_a_malformed_check_in_a_saved_report_is_refused(
    badnets_report: DetectionReport, tmp_path: Path, edit: Any, message: str
) -> None:
    rates = {r.label: 0.5 for r in badnets_report.labels} | {0: 0.02}
    report = dataclasses.replace(badnets_report, transfer=_check(rates, [0]))
    folder = report.save(tmp_path / "scan", images=False)
    assert DetectionReport.load(folder).transfer == report.transfer
    saved = json.loads((folder / "report.json").read_text())
    edit(saved["transfer"])
    (folder / "report.json").write_text(json.dumps(saved))
    with pytest.raises(nc.DataError, match=f"malformed scan report .*{message}"):
        DetectionReport.load(folder)


def test_bad_inputs_to_the_check_are_named(
    badnets_report: DetectionReport, badnets_model: nc.ModelBundle, clean_model: nc.ModelBundle
) -> None:
    images = torch.rand(40, 1, 28, 28)
    model = badnets_model.model
    with pytest.raises(nc.DataError, match="needs float images in \\[0, 1\\], got a torch.uint8 tensor"):
        check_transfer(badnets_report, model, (images * 255).to(torch.uint8))
    with pytest.raises(nc.DataError, match="needs images in \\[0, 1\\], got values from"):
        check_transfer(badnets_report, model, images * 255)
    with pytest.raises(
        nc.DataError, match="needs the scan's images, \\(N, 1, 28, 28\\), got shape \\(40, 3, 32, 32\\)"
    ):
        check_transfer(badnets_report, model, torch.rand(40, 3, 32, 32))
    with pytest.raises(nc.DataError, match="a scan of another model"):
        check_transfer(badnets_report, clean_model.model, images)
    with pytest.raises(nc.ModelError, match="takes a model, not a path"):
        check_transfer(badnets_report, "model.pt2", images)  # type: ignore[arg-type]


def test_a_fleet_counts_the_check_in_a_models_seconds(
    badnets_report: DetectionReport, tmp_path: Path
) -> None:
    from neuralcleanse.fleet.jobs import FleetJob, ModelResult

    job = FleetJob("m", "m.pt2", tmp_path / "m", None)
    timed = dataclasses.replace(
        badnets_report, run={**badnets_report.run, "seconds": 20.0, "transfer_seconds": 30.5}
    )
    assert ModelResult.from_report(job, timed).seconds == pytest.approx(50.5)
    run = {k: v for k, v in badnets_report.run.items() if k != "transfer_seconds"}
    plain = dataclasses.replace(badnets_report, run={**run, "seconds": 20.0})
    assert ModelResult.from_report(job, plain).seconds == pytest.approx(20.0)


def test_by_default_a_scan_checks_a_weak_verdict_where_the_check_was_measured(
    badnets_report: DetectionReport,
) -> None:
    """``transfer_check="auto"``: the shared fixture is a default scan whose BadNets label sits above the
    strong-evidence line, so its student was distilled (on the paper's network it follows every trigger,
    and the check says it is not used); other reports, changed by hand, show when it is not run."""
    from neuralcleanse.detection.statistics import NATURAL_FLOOR
    from neuralcleanse.detection.transfer import AUTO_MAX_CLASSES, AUTO_MIN_IMAGES, auto_check

    ratio = badnets_report.label(0).l1_norm / badnets_report.median_l1
    assert badnets_report.verdict == "backdoored" and ratio >= NATURAL_FLOOR
    check = badnets_report.transfer
    assert check is not None and check.saturated and badnets_report.flagged == [0]
    assert badnets_report.run["transfer_seconds"] > 0
    assert "--transfer-check" not in badnets_report.summary()  # it ran: no advice to run it
    unchecked = dataclasses.replace(badnets_report, transfer=None)
    assert auto_check(unchecked, images=1000, classes=10) == (True, None)
    assert auto_check(badnets_report, images=1000, classes=10) == (False, None)  # already checked
    # many classes or few images: not run, and the report says why
    run, why = auto_check(unchecked, images=1000, classes=AUTO_MAX_CLASSES + 1)
    assert not run and why is not None and f"a model of {AUTO_MAX_CLASSES + 1} classes" in why
    run, why = auto_check(unchecked, images=AUTO_MIN_IMAGES - 1, classes=10)
    assert not run and why is not None and f"{AUTO_MIN_IMAGES - 1} clean images" in why
    # a scan of some labels (--labels): the unflagged labels' median would rest on few labels
    assert len(unchecked.labels) == 10
    part = dataclasses.replace(unchecked, labels=unchecked.labels[:4])
    run, why = auto_check(part, images=1000, classes=10)
    assert not run and why is not None and "a scan of 4 of the model's 10 labels" in why
    # strong evidence (the flagged label far under the line) and a clean verdict need no check
    cheap = [dataclasses.replace(r, l1_norm=r.l1_norm / 4) if r.label == 0 else r for r in unchecked.labels]
    assert auto_check(dataclasses.replace(unchecked, labels=cheap), images=1000, classes=10) == (False, None)
    clean = dataclasses.replace(unchecked, verdict="clean", flagged=[])
    assert auto_check(clean, images=1000, classes=10) == (False, None)
    # nor a verdict of a statistic the check was not measured with
    paper = dataclasses.replace(unchecked, statistic="l1")
    assert auto_check(paper, images=1000, classes=10) == (False, None)


def test_the_check_can_be_turned_off_or_forced(
    badnets_report: DetectionReport, badnets_model: nc.ModelBundle
) -> None:
    unchecked = dataclasses.replace(badnets_report, transfer=None)
    wanted = {
        setting: nc.NeuralCleanse(badnets_model.model, transfer_check=setting)._transfer_wanted(
            unchecked, images=100, classes=10
        )
        for setting in ("auto", False, True)
    }
    # 100 images are too few for the default, so it says why; True runs it anyway, False never
    assert wanted[False] == (False, None) and wanted[True] == (True, None)
    assert not wanted["auto"][0] and "100 clean images" in str(wanted["auto"][1])
    assert "scan with --transfer-check" in unchecked.summary()
