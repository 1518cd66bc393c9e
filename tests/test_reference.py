"""Reference norms from scans of trusted models, and scans measured against them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import neuralcleanse as nc
from neuralcleanse import DatasetSplits, DetectionReport, ModelBundle, Reference, SettingsError
from neuralcleanse.detection import LabelResult
from test_statistics import ZOO_NORMS


def _report(norms: list[float], *, flagged: list[int] | None = None) -> DetectionReport:
    rows = [
        LabelResult(k, str(k), n, 1.0, True, 10, "early_stop", 0.01, 5, 0.0, False)
        for k, n in enumerate(norms)
    ]
    return DetectionReport("clean", flagged or [], rows, 0.0, 1.0, 2.0, {}, {}, {"fingerprint": "f"}, {})


def test_one_reference_is_its_norms() -> None:
    ref = Reference.from_reports([_report([10.0, 20.0, 40.0])], paths=["a"])
    assert ref.l1_norms == pytest.approx({0: 10.0, 1: 20.0, 2: 40.0})
    assert ref.sources == [{"model": "f", "verdict": "clean", "flagged": [], "settings": {}, "path": "a"}]


def test_several_references_combine_by_geometric_median() -> None:
    ref = Reference.from_reports([_report([10.0, 20.0, 1.0]), _report([40.0, 20.0, 4.0])])
    assert ref.l1_norms[0] == pytest.approx(20.0) and ref.l1_norms[2] == pytest.approx(2.0)
    three = Reference.from_reports([_report([10.0, 5.0]), _report([1000.0, math.nan]), _report([30.0, 7.0])])
    assert three.l1_norms[0] == pytest.approx(30.0)  # the median, not pulled by the 1000
    assert three.l1_norms[1] == pytest.approx(math.sqrt(35.0))  # NaN norms are skipped
    back = Reference.from_dict(json.loads(json.dumps(three.to_dict())))
    assert back.l1_norms == pytest.approx(three.l1_norms)


def test_reference_errors() -> None:
    with pytest.raises(SettingsError, match="at least one"):
        Reference.from_reports([])
    with pytest.raises(SettingsError, match="b: its labels differ"):
        Reference.from_reports([_report([1.0, 2.0, 3.0]), _report([1.0, 2.0])], paths=["a", "b"])
    with pytest.raises(SettingsError, match="no label 5"):
        Reference.from_reports([_report([1.0, 2.0, 3.0])]).norms_for([0, 5])


# the scans of the paper's network on Fashion-MNIST (seed 0) in test_statistics, and the clean model of
# seed 1 of the fidelity benchmark as their trusted reference (benchmarks/fidelity_references.py)
FMNIST_CLEAN_S0, FMNIST_BADNETS_S0 = ZOO_NORMS["fmnist-clean"][0], ZOO_NORMS["fmnist-badnets"][0]
FMNIST_CLEAN_S1 = [52.0, 67.5, 61.1, 71.9, 56.4, 59.2, 47.7, 155.4, 40.2, 66.5]


def test_a_trusted_reference_also_needs_half_the_median_ratio() -> None:
    trusted = Reference(dict(enumerate(FMNIST_CLEAN_S1)), [{"model": "f"}])
    assert not trusted.self_made and trusted.test_options() == {"mad_floor": 0.1, "max_ratio": 0.5}
    # the bag (8) is learnt more strongly by the seed-0 model: 0.52 of the median ratio, index 3.4
    raw = nc.mad_outlier_test(FMNIST_CLEAN_S0, statistic="relative", reference=FMNIST_CLEAN_S1)
    assert raw.flagged == [8] and raw.anomaly_index[8] > 3
    shipped = nc.mad_outlier_test(
        FMNIST_CLEAN_S0, statistic="relative", reference=FMNIST_CLEAN_S1, **trusted.test_options()
    )
    assert shipped.flagged == [] and any("more than 0.5 times the median" in n for n in shipped.notes)
    infected = nc.mad_outlier_test(
        FMNIST_BADNETS_S0, statistic="relative", reference=FMNIST_CLEAN_S1, **trusted.test_options()
    )
    assert infected.flagged == [0]
    # ...and a report tested against it runs with the same options
    assert _report(FMNIST_CLEAN_S0).outlier_test(statistic="relative", reference=trusted).flagged == []


def test_scan_against_a_reference(
    badnets_model: ModelBundle,
    badnets_report: DetectionReport,
    clean_report_full: DetectionReport,
    relative_report: DetectionReport,
    tmp_path: Path,
) -> None:
    assert badnets_report.screened  # the default scan screens; a reference must not
    with pytest.raises(SettingsError, match=r"were screened .*scan --no-screening"):
        Reference.from_reports([badnets_report])
    trusted = clean_report_full
    assert not trusted.screened
    ref = Reference.from_reports([trusted])  # a clean model's scan is the trusted reference
    r = relative_report  # nc.scan(badnets_model.model, ..., reference=ref, scan_labels=RELATIVE_LABELS)
    assert r.reference is not None and r.reference.l1_norms == pytest.approx(ref.l1_norms)
    assert any("screening is off" in n for n in r.notes)
    assert not any("another draw" in n for n in r.notes)  # both drew the same way from the same images
    # same optimisation as the plain scan (the reference only changes the test), a different statistic
    full = {
        k: v
        for k, v in badnets_report.l1_norms.items()
        if k in r.l1_norms and k not in badnets_report.screened
    }
    assert {k: r.l1_norms[k] for k in full} == pytest.approx(full)
    assert r.statistic == "relative" and r.verdict == "backdoored" and r.flagged == [0]
    assert r.label(0).anomaly_index > badnets_report.label(0).anomaly_index
    assert any("reference" in n for n in r.notes) and "in the reference" in r.summary()
    # the report keeps its reference: saved, loaded and re-tested without the reference scan
    back = DetectionReport.load(r.save(tmp_path / "scan"))
    assert back.reference is not None and back.reference.l1_norms == pytest.approx(ref.l1_norms)
    assert back.outlier_test().flagged == [0]
    assert back.outlier_test(statistic="l1").flagged == badnets_report.flagged
    # the paper's statistic can still be chosen with a reference at hand
    plain = nc.NeuralCleanse(badnets_model.model, reference=ref, statistic="l1")
    assert plain.statistic == "l1"


def test_relative_statistic_without_reference_is_refused(
    badnets_model: ModelBundle, badnets_report: DetectionReport
) -> None:
    with pytest.raises(SettingsError, match="needs a reference"):
        nc.NeuralCleanse(badnets_model.model, statistic="relative")
    with pytest.raises(SettingsError, match="needs a reference"):
        badnets_report.outlier_test(statistic="relative")


def test_reference_without_a_scanned_label_fails_before_optimising(
    badnets_model: ModelBundle, mnist_sample: DatasetSplits
) -> None:
    ref = Reference({0: 10.0, 1: 20.0})
    with pytest.raises(SettingsError, match="no label 2"):
        nc.scan(badnets_model.model, mnist_sample.test, scan_labels=[0, 1, 2], reference=ref, max_steps=1)


def test_reference_scanned_with_other_settings_is_named() -> None:
    rep = _report([10.0, 20.0, 30.0])
    rep.settings.update({"mode": "batched", "batches_per_step": 8, "loss": "ce", "seed": 1})
    ref = Reference.from_reports([rep], paths=["refscan"])
    # the seed and how many labels share a pass change nothing a reference compares
    assert ref.mismatches({"mode": "sequential", "batches_per_step": 8, "loss": "ce", "seed": 2}) == []
    diff = ref.mismatches({"mode": "sequential", "batches_per_step": 31, "loss": "original"})
    assert diff == ["refscan: batches_per_step 8 vs 31, loss 'ce' vs 'original'"]


def test_reference_scanned_on_another_draw_of_the_images_is_named() -> None:
    # the same images given (--reference checks that), another --samples or --source drawn from them
    rep = _report([10.0, 20.0, 30.0])
    rep.data.update({"samples": 300, "source": None, "correct_only": True, "input_fingerprint": "all"})
    ref = Reference.from_reports([rep], paths=["refscan"])
    assert ref.draw_mismatches({"samples": 300, "source": None, "correct_only": True}) == []
    assert ref.draw_mismatches({"samples": None, "source": 2, "correct_only": True}) == [
        "refscan: samples 300 vs None, source None vs 2"
    ]
    old = Reference.from_dict({"l1_norms": {"0": 1.0}, "sources": [{"model": "m"}]})  # saved before it
    assert old.draw_mismatches({"samples": 5, "source": None, "correct_only": False}) == []


def test_a_scan_names_a_reference_that_used_other_samples(
    badnets_model: ModelBundle, mnist_sample: DatasetSplits, clean_report_full: DetectionReport
) -> None:
    ref = Reference.from_reports([clean_report_full])  # every clean image of the set (the default)
    r = nc.scan(
        badnets_model.model, mnist_sample.test, seed=0, reference=ref, scan_labels=[0, 1, 2], samples=200,
        max_steps=2,
    )  # fmt: skip
    note = next(n for n in r.notes if "another draw" in n)
    assert "samples None vs 200" in note and "--samples" in note
    assert r.data["samples"] == 200 and r.data["source"] is None and r.data["correct_only"] is True
