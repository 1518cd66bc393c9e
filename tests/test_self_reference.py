"""The self-made reference (a student distilled from the scanned model) and unsettled verdicts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import neuralcleanse as nc
from neuralcleanse.cli import main
from neuralcleanse.detection import NeuralCleanse, ReverseSettings
from neuralcleanse.detection.distill import DistillSettings, Student, _fresh_copy, distil_student
from neuralcleanse.detection.engine import LabelState, new_label_state
from neuralcleanse.detection.report import unreachable_labels, unsettled_reason
from neuralcleanse.errors import SettingsError
from neuralcleanse.metrics import attack_success_rate
from neuralcleanse.models.architectures import build_model

#: a short distillation: the embedded sample's 1,000 test images, seconds on 2 cores
QUICK = DistillSettings(epochs=12, seed=0)


def test_the_student_imitates_the_model_but_not_its_backdoor(
    badnets_model: nc.ModelBundle, mnist_sample: nc.DatasetSplits
) -> None:
    teacher = badnets_model.model
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    flags, mode = [p.requires_grad for p in teacher.parameters()], teacher.training
    student: Student = distil_student(teacher, mnist_sample.test.images, settings=QUICK)
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert [p.requires_grad for p in teacher.parameters()] == flags and teacher.training == mode
    assert student.agreement >= 0.9
    assert student.arch.startswith("same as the model")
    real = badnets_model.triggers[0]
    teacher_asr = attack_success_rate(badnets_model.model, mnist_sample.test, real, target=0)
    student_asr = attack_success_rate(student.model, mnist_sample.test, real, target=0)
    assert teacher_asr > 0.9
    assert student_asr < 0.3, f"the student learnt the planted trigger: ASR {student_asr:.2f}"


def test_fresh_copy_reinitialises_or_refuses() -> None:
    model = build_model("mnist", input_shape=(1, 28, 28), num_classes=10, seed=0)
    copy = _fresh_copy(model, seed=1)
    assert copy is not None
    assert type(copy) is type(model)
    pairs = list(zip(model.parameters(), copy.parameters(), strict=True))
    assert all(a.shape == b.shape for a, b in pairs)
    assert not any(torch.equal(a, b) for a, b in pairs if a.ndim > 1)

    class Scaled(nn.Module):  # a layer with weights and no reset_parameters
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.scale

    assert _fresh_copy(nn.Sequential(model, Scaled()), seed=1) is None


def test_a_model_that_cannot_be_copied_gets_the_fallback_student(mnist_sample: nc.DatasetSplits) -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = build_model("mnist", input_shape=(1, 28, 28), num_classes=10, seed=0)
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.net(x) * self.scale
            return out

    s = distil_student(Scaled(), mnist_sample.test.images[:200], settings=DistillSettings(epochs=1))
    assert s.arch == "bn-cnn"


def test_distill_settings_are_checked() -> None:
    with pytest.raises(SettingsError, match="epochs"):
        DistillSettings(epochs=0)
    with pytest.raises(SettingsError, match="unknown student architecture"):
        DistillSettings(arch="vgg")
    with pytest.raises(SettingsError, match="mixup"):
        DistillSettings(mixup=1.5)
    with pytest.raises(SettingsError, match="give one reference"):
        NeuralCleanse(nn.Linear(2, 2), self_reference=True, reference=nc.Reference({0: 1.0, 1: 1.0}))
    for statistic in ("l1", "log"):  # a student only the relative statistic would use: refused, not wasted
        with pytest.raises(SettingsError, match=f"the {statistic} statistic does not, so the student"):
            NeuralCleanse(nn.Linear(2, 2), self_reference=True, statistic=statistic)


def test_self_reference_settings(badnets_model: nc.ModelBundle) -> None:
    # the end-to-end scan is the CLI test below (one distillation and two scans in the suite, not two)
    detector = NeuralCleanse(badnets_model.model, self_reference=QUICK, settings=ReverseSettings(seed=0))
    assert detector.statistic == "relative" and not detector.settings.screening


def _state(label: int, *, reached: bool, stop: str) -> LabelState:
    s = new_label_state(label, (1, 4, 4), seed=0)
    if reached:
        s.best_mask = torch.zeros(4, 4)
        s.best_reg = 1.0
    s.done, s.stop_reason = True, stop
    return s


def _unsettled(rows: list[LabelState], flagged: list[int], cfg: ReverseSettings) -> str | None:
    return unsettled_reason(rows, flagged, max_steps=cfg.max_steps, attack_threshold=cfg.attack_threshold)


def test_labels_stopped_by_the_step_limit_leave_the_verdict_unsettled() -> None:
    cfg = ReverseSettings(max_steps=50)
    settled = [_state(k, reached=True, stop="early_stop") for k in range(10)]
    assert _unsettled(settled, [0], cfg) is None
    capped = settled[:9] + [_state(9, reached=True, stop="max_steps")]
    reason = _unsettled(capped, [0], cfg)
    assert reason is not None and "[9]" in reason and "50 steps" in reason
    # a flagged label that was still shrinking stays flagged: its norm can only fall
    only_flagged_capped = [_state(0, reached=True, stop="max_steps"), *settled[1:]]
    assert _unsettled(only_flagged_capped, [0], cfg) is None
    screened = settled[:8] + [_state(k, reached=True, stop="screened") for k in (8, 9)]
    assert _unsettled(screened, [], cfg) is None
    unreached = [_state(k, reached=k < 4, stop="early_stop") for k in range(10)]
    reason = _unsettled(unreached, [], cfg)
    assert reason is not None and "only 4 of 10 labels" in reason
    assert _unsettled([_state(k, reached=k < 5, stop="early_stop") for k in range(10)], [], cfg) is None
    # a label stopped by the limit that no trigger reaches (an output the task never uses: its trigger
    # sends 0% of the images there) does not unsettle the others' verdict; one that almost works does
    unused = settled[:9] + [_state(9, reached=False, stop="max_steps")]
    success = {k: 1.0 for k in range(9)}
    assert unreachable_labels(unused, success | {9: 0.0}) == [9]
    assert (
        unsettled_reason(unused, [0], max_steps=50, attack_threshold=0.99, success=success | {9: 0.0}) is None
    )
    almost = unsettled_reason(unused, [0], max_steps=50, attack_threshold=0.99, success=success | {9: 0.9})
    assert almost is not None and "[9]" in almost
    assert _unsettled(unused, [0], cfg) is not None  # without the measured success: unsettled, as before


def test_a_three_step_scan_of_an_untrained_network_is_inconclusive(mnist_sample: nc.DatasetSplits) -> None:
    model = build_model("resnet", input_shape=(1, 28, 28), num_classes=10, seed=3)
    report = nc.scan(model, mnist_sample.test, correct_only=False, samples=200, max_steps=3, seed=0)
    assert report.verdict == "inconclusive"
    assert not math.isnan(report.median)
    reasons = [n for n in report.notes if "step limit" in n or "attack success; the others" in n]
    assert reasons, report.notes
    assert report.unsettled is not None
    assert report.summary() == f"inconclusive: {report.unsettled}"
    # nothing flagged, in the JSON's rows either
    assert report.flagged == [] and not any(r.flagged for r in report.labels)


# Norms of two scans of benchmarks/fidelity.py (seed 0, the paper's network on the MNIST sample), each
# with its distilled student's norms: a clean model and a model with a 14x14 checkerboard trigger for 6.
CLEAN = [91.7, 150.9, 66.7, 78.7, 90.0, 77.1, 86.4, 88.0, 70.9, 89.1]
CLEAN_STUDENT = [82.5, 153.5, 75.9, 72.3, 89.5, 70.8, 81.0, 87.6, 62.4, 89.1]
LARGE = [90.9, 179.5, 58.9, 69.1, 110.0, 80.2, 39.8, 107.8, 64.9, 103.8]
LARGE_STUDENT = [88.9, 182.2, 60.8, 63.3, 108.3, 76.9, 56.8, 101.2, 60.9, 102.2]


def test_the_mad_floor_keeps_a_close_student_from_flagging_a_clean_label() -> None:
    # the student matches the clean model within 12%: the MAD of the log ratios is 0.074, and label 2,
    # 12% cheaper than in the student, gets index 2.22 without the floor (and the paper's test flags it)
    raw = nc.mad_outlier_test(CLEAN, statistic="relative", reference=CLEAN_STUDENT)
    assert raw.flagged == [2] and raw.mad == pytest.approx(0.074, abs=1e-3)
    assert nc.mad_outlier_test(CLEAN).flagged == [2]
    floored = nc.mad_outlier_test(CLEAN, statistic="relative", reference=CLEAN_STUDENT, mad_floor=0.1)
    assert floored.flagged == [] and floored.mad == raw.mad
    assert floored.anomaly_index[2] == pytest.approx(raw.anomaly_index[2] * raw.mad / 0.1)
    assert any("below its floor" in n for n in floored.notes)
    # the large trigger (0.70 of the student's norm) stays flagged; the paper's test misses it
    large = nc.mad_outlier_test(LARGE, statistic="relative", reference=LARGE_STUDENT, mad_floor=0.1)
    assert large.flagged == [6] and large.anomaly_index[6] > 3
    assert nc.mad_outlier_test(LARGE).flagged == []
    # a self-made reference carries the floor, and so does a reference of trusted models (docs/fidelity.md)
    own = nc.Reference(dict(enumerate(CLEAN_STUDENT)), [{"model": "distilled student"}])
    trusted = nc.Reference(dict(enumerate(CLEAN_STUDENT)), [{"model": "f"}])
    assert own.self_made and own.mad_floor == 0.1 and not trusted.self_made and trusted.mad_floor == 0.1


def test_cli_self_reference_prints_the_paper_test_beside_it(
    badnets_model: nc.ModelBundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = badnets_model.save(tmp_path / "bad").path
    out = tmp_path / "scan"
    code = main(
        ["scan", str(model), "--self-reference", "--samples", "300", "--seed", "0", "--out", str(out),
         "--device", "cpu", "--html", "--labels", "0,1,2,3"]
    )  # fmt: skip
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    report = nc.DetectionReport.load(out)
    assert report.statistic == "relative" and report.reference is not None and report.reference.self_made
    assert report.verdict == "backdoored" and report.flagged == [0]
    source = report.reference.sources[0]
    assert source["model"] == "distilled student" and source["agreement"] >= 0.9
    # the planted label is several times cheaper than in the student; the others are not
    ratios = {k: report.label(k).l1_norm / report.reference.l1_norms[k] for k in report.l1_norms}
    assert ratios[0] < 0.5
    assert sorted(ratios.values())[1] > ratios[0] * 1.5
    assert any("distilled from this model" in n for n in report.notes)
    # the paper's test can be recomputed from the same norms
    assert report.outlier_test(statistic="l1").statistic == "l1"
    assert "beside it: the paper's test (MAD of the L1 norms)" in stdout
    assert "in the distilled student" in report.summary()
    page = (out / "report.html").read_text()
    assert "a student distilled from this model" in page and "Beside it, the paper&#x27;s test" in page
    code = main(
        ["scan", str(model), "--self-reference", "--reference", str(out), "--out", str(tmp_path / "x")]
    )
    assert code == 2 and "choose one" in capsys.readouterr().err


# Fashion-MNIST (seed 0): the students learn the natural "bag" (8) shortcut less well than their models
FASHION_CLEAN = [70.2, 46.6, 75.8, 79.0, 75.2, 76.4, 54.5, 118.4, 23.9, 91.0]
FASHION_CLEAN_STUDENT = [92.9, 50.6, 81.6, 80.3, 84.2, 88.2, 62.4, 139.4, 38.4, 83.9]
FASHION_BADNETS = [11.4, 52.5, 73.7, 63.3, 80.3, 88.0, 52.1, 130.8, 30.8, 90.2]  # planted: 0
FASHION_BADNETS_STUDENT = [41.6, 50.1, 77.5, 63.3, 88.8, 73.5, 56.6, 145.2, 47.4, 102.6]


def test_a_flag_against_the_student_needs_half_the_median_ratio() -> None:
    own = nc.Reference(dict(enumerate(FASHION_CLEAN_STUDENT)), [{"model": "distilled student"}])
    assert own.test_options() == {"mad_floor": 0.1, "max_ratio": 0.5}
    floor_only = nc.mad_outlier_test(
        FASHION_CLEAN, statistic="relative", reference=FASHION_CLEAN_STUDENT, mad_floor=0.1
    )
    assert floor_only.flagged == [8]  # bag: 0.62 of the student's norm, the median ratio 0.88
    shipped = nc.mad_outlier_test(
        FASHION_CLEAN, statistic="relative", reference=FASHION_CLEAN_STUDENT, **own.test_options()
    )
    assert shipped.flagged == [] and any("more than 0.5 times the median" in n for n in shipped.notes)
    infected = nc.mad_outlier_test(
        FASHION_BADNETS, statistic="relative", reference=FASHION_BADNETS_STUDENT, **own.test_options()
    )
    assert infected.flagged == [0]  # 0.27 of the student's norm; bag (0.65) is left out again
    # the paper's test flags the bag on the clean model and misses nothing else here
    assert nc.mad_outlier_test(FASHION_CLEAN).flagged == [8]
    with pytest.raises(SettingsError, match="max_ratio"):
        nc.mad_outlier_test(FASHION_CLEAN, max_ratio=0.0)
    with pytest.raises(SettingsError, match="mad_floor"):
        nc.mad_outlier_test(FASHION_CLEAN, mad_floor=math.nan)


def test_a_source_specific_scan_with_a_self_made_reference(
    badnets_model: nc.ModelBundle, mnist_sample: nc.DatasetSplits
) -> None:
    r = nc.scan(
        badnets_model.model, mnist_sample.test, source=3, scan_labels=[0, 1, 2],
        self_reference=DistillSettings(epochs=1), seed=0, max_steps=8,
    )  # fmt: skip
    assert r.reference is not None and r.reference.self_made
    assert sorted(r.reference.l1_norms) == [0, 1, 2] and r.data["class_counts"][3] == r.data["images"]
