"""The outlier statistics' one home: the registry, its one-line errors, and every renderer going through it."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

import neuralcleanse as nc
from neuralcleanse import DataError, SettingsError
from neuralcleanse.cli import app
from neuralcleanse.cli.common import print_scan
from neuralcleanse.detection import STATISTICS, DetectionReport, OutlierStatistic, get_statistic
from neuralcleanse.detection.report import LabelResult
from neuralcleanse.detection.shape import COMPACT_SHARE, window_share
from neuralcleanse.detection.statistics import PAPER
from neuralcleanse.detection.transfer import TransferCheck
from neuralcleanse.report import write_html_report

UNKNOWN = "unknown outlier statistic 'l2'; use l1, log, effect, relative"
NO_REFERENCE = "the relative statistic needs a reference (scans of trusted models)"

NORMS = [5.0, 55.0, 58.0, 61.0, 57.0, 63.0, 59.0, 60.0, 56.0, 62.0]  # label 0: a planted trigger
TRUSTED = nc.Reference({k: 60.0 - k for k in range(10)}, [{"model": "r", "verdict": "clean", "flagged": []}])
TINY = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))


def _report(
    statistic: str,
    reference: nc.Reference | None = None,
    norms: Sequence[float] = NORMS,
    patches: Sequence[int] = (),
) -> DetectionReport:
    """A report as a scan would write it with ``statistic``, from made-up norms; the labels of ``patches``
    get a compact trigger (a 3x3 square), the others a random mask."""
    gen = torch.Generator().manual_seed(0)
    patch = torch.zeros(8, 8)
    patch[5:8, 5:8] = 1.0
    rows = [LabelResult(k, f"class {k}", n, 0.99, True, 50, "early_stop", 1e-3, 40, 0.0, False)
            for k, n in enumerate(norms)]  # fmt: skip
    base = DetectionReport(
        "clean", [], rows, 0.0, 1.0, 2.0, {"loss": "ce", "mode": "batched", "seed": 1}, {"images": 100},
        {"fingerprint": "ab" * 32}, {"seconds": 1.0}, statistic=statistic, reference=reference,
        triggers={k: nc.Trigger(patch if k in patches else torch.rand(8, 8, generator=gen),
                                torch.rand(3, 8, 8, generator=gen), "reversed") for k in range(len(norms))},
    )  # fmt: skip
    test = base.outlier_test()
    rows = [dataclasses.replace(r, anomaly_index=i, flagged=r.label in test.flagged)
            for r, i in zip(rows, test.anomaly_index, strict=True)]  # fmt: skip
    verdict = "inconclusive" if not test.conclusive else ("backdoored" if test.flagged else "clean")
    return dataclasses.replace(
        base, verdict=verdict, flagged=test.flagged, labels=rows, median=test.median, mad=test.mad
    )


def test_unknown_name_is_one_line_and_the_same_everywhere(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as direct:
        get_statistic("l2")
    assert str(direct.value) == UNKNOWN
    report = _report("l1")
    for refuse in (
        lambda: nc.mad_outlier_test([1.0, 2.0, 3.0], statistic="l2"),  # type: ignore[arg-type]
        lambda: nc.NeuralCleanse(TINY, statistic="l2"),  # type: ignore[arg-type]
        lambda: report.outlier_test(statistic="l2"),
        lambda: dataclasses.replace(report, statistic="l2"),
    ):
        with pytest.raises(SettingsError) as caught:
            refuse()
        assert str(caught.value) == UNKNOWN
    # a report file naming an unknown statistic is refused when read, in one line
    report.save(tmp_path / "scan", images=False)
    data = json.loads((tmp_path / "scan" / "report.json").read_text())
    (tmp_path / "scan" / "report.json").write_text(json.dumps({**data, "statistic": "l2"}))
    with pytest.raises(DataError, match="malformed scan report .*unknown outlier statistic 'l2'"):
        DetectionReport.load(tmp_path / "scan")


def test_a_missing_reference_is_refused_with_one_message() -> None:
    report = _report("l1")
    for refuse in (
        lambda: nc.mad_outlier_test(NORMS, statistic="relative"),
        lambda: nc.NeuralCleanse(TINY, statistic="relative"),
        lambda: report.outlier_test(statistic="relative"),
        lambda: get_statistic("relative").check(reference=False),
    ):
        with pytest.raises(SettingsError) as caught:
            refuse()
        assert str(caught.value) == NO_REFERENCE
    # reference norms a statistic would not use are refused by the test itself (a scan may hold a
    # reference and still run the paper's test)
    with pytest.raises(SettingsError, match="only used by the relative statistic, not 'l1'"):
        nc.mad_outlier_test(NORMS, reference=NORMS)
    assert nc.NeuralCleanse(TINY, statistic="l1", reference=TRUSTED).statistic == "l1"


def test_the_registry_is_keyed_by_name_and_the_command_line_offers_it() -> None:
    assert list(STATISTICS) == ["l1", "log", "effect", "relative"]
    assert all(s.name == k and get_statistic(k) is s for k, s in STATISTICS.items())
    assert [s.name for s in STATISTICS.values() if s.paper] == [PAPER.name] == ["l1"]
    assert all(s.description and "\n" not in s.description for s in STATISTICS.values())
    option = next(p for p in app.commands["scan"].params if p.name == "statistic")
    assert list(option.type.choices) == list(STATISTICS)  # type: ignore[attr-defined]
    # screening is turned off for a statistic it would not be safe for, with a note naming the safe ones
    detector = nc.NeuralCleanse(TINY, reference=TRUSTED)
    assert not detector.settings.screening
    assert detector._notes == ["screening is off: it is only safe for the L1, log and effect-size statistics"]


@pytest.mark.parametrize("name", list(STATISTICS))
def test_every_statistic_renders_in_the_cli_and_the_page(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stat = STATISTICS[name]
    report = _report(name, TRUSTED if stat.needs_reference else None)
    assert report.verdict == "backdoored" and report.flagged == [0]
    print_scan(report, tmp_path / "scan")
    out = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert f"median L1 {report.median_l1:.2f}, {stat.spread(report.mad)}" in out
    assert report.summary().startswith("BACKDOORED: label 0 (class 0)") and report.summary() in out
    assert stat.versus(report, report.label(0)) in report.summary()
    # the paper's test beside any other statistic's verdict
    assert ("beside it: the paper's test" in out) == (not stat.paper)
    report.save(tmp_path / "scan")
    page = write_html_report(tmp_path / "scan").read_text(encoding="utf-8")
    assert "<b>Backdoored.</b>" in page and f"than {stat.cheaper_than} — the signature" in page
    assert stat.explain(report) in page
    assert ("Beside it, the paper&#x27;s test" in page) == (not stat.paper)


#: L1 norms of four zoo models (seed 0, the default scan; runs/zoo): Fashion-MNIST's clean model, whose
#: bag (label 8) is a natural shortcut, and three backdoored models
ZOO_NORMS = {
    "fmnist-clean": ([64.5, 52.2, 68.4, 71.5, 67.5, 76.3, 54.5, 151.2, 23.5, 86.2], []),
    "fmnist-badnets": ([11.8, 47.8, 62.0, 56.7, 81.5, 83.8, 47.1, 164.8, 24.7, 83.6], [0]),
    "mnist-trojan-square": ([84.9, 178.8, 66.4, 74.7, 100.8, 23.7, 76.4, 84.4, 67.9, 86.4], [5]),
    "fmnist-two-labels": ([42.0, 37.8, 4.6, 41.1, 54.1, 52.9, 38.3, 101.1, 15.4, 6.6], [2, 9]),
}


@pytest.mark.parametrize("name", list(ZOO_NORMS))
def test_the_effect_size_keeps_planted_labels_and_drops_natural_shortcuts(name: str) -> None:
    norms, planted = ZOO_NORMS[name]
    effect = nc.mad_outlier_test(norms, statistic="effect")
    assert effect.flagged == planted
    log = nc.mad_outlier_test(norms, statistic="log")
    dropped = sorted(set(log.flagged) - set(planted))  # the log test flags the bag too, where it is small
    assert set(planted) <= set(log.flagged)
    assert all(norms[k] > 0.3 * math.exp(effect.median) for k in dropped)  # the median of the logs
    assert any(
        f"labels {dropped} are outliers but more than 0.3 times the median" in n for n in effect.notes
    ) == bool(dropped)
    # the paper's test: a false alarm on the bag, no power on two of the backdoored models
    paper = nc.mad_outlier_test(norms)
    assert (paper.flagged, paper.conclusive) == {
        "fmnist-clean": ([8], True),
        "fmnist-badnets": ([], False),
        "mnist-trojan-square": ([5], True),
        "fmnist-two-labels": ([], False),
    }[name]


#: two scans of the fidelity benchmark (``benchmarks/trigger_shape.py``): each label's L1 norm and the
#: share of its reversed mask inside the best window of 35% of the image side, and the planted labels
BENCHMARK_SHAPES = {
    "mnist-trojan-square-mnist-s1": (
        [79.01, 140.09, 77.61, 66.18, 106.54, 22.37, 77.69, 56.53, 71.48, 71.06],
        [0.45, 0.28, 0.33, 0.32, 0.46, 0.82, 0.36, 0.46, 0.33, 0.34],
        [5],
    ),
    "fmnist-clean-mnist-s0": (
        [64.48, 52.18, 68.37, 71.46, 67.46, 76.35, 54.46, 151.16, 23.47, 86.19],
        [0.41, 0.48, 0.23, 0.28, 0.37, 0.41, 0.22, 0.29, 0.39, 0.34],
        [],
    ),
}


@pytest.mark.parametrize("name", list(BENCHMARK_SHAPES))
def test_a_compact_trigger_may_be_flagged_up_to_a_larger_share_of_the_median(name: str) -> None:
    norms, shares, planted = BENCHMARK_SHAPES[name]
    compact = [s >= COMPACT_SHARE for s in shares]
    # by norms alone the planted Trojan square (0.30 of the median) and the bag (0.35) look alike
    assert nc.mad_outlier_test(norms, statistic="effect").flagged == []
    shaped = nc.mad_outlier_test(norms, statistic="effect", compact=compact)
    assert shaped.flagged == planted
    assert any("with a compact trigger" in n and "flagged" in n for n in shaped.notes) == bool(planted)
    # the shape decides: the bag would be flagged if its trigger were a patch, the square not beyond 0.45
    everything = nc.mad_outlier_test(norms, statistic="effect", compact=[True] * len(norms))
    assert everything.flagged == (planted or [8])
    assert nc.mad_outlier_test(norms, statistic="effect", compact=compact, compact_ratio=0.3).flagged == []
    with pytest.raises(SettingsError, match="9 compactness flags for 10 labels"):
        nc.mad_outlier_test(norms, statistic="effect", compact=compact[:9])


def test_the_report_measures_compactness_on_its_triggers_but_not_on_screened_ones() -> None:
    norms = BENCHMARK_SHAPES["mnist-trojan-square-mnist-s1"][0]
    assert _report("effect", norms=norms).flagged == []
    report = _report("effect", norms=norms, patches=[5])
    assert report.flagged == [5] and report.outlier_test().flagged == [5]
    assert "0.45 times it" in report.outlier_statistic.explain(report)
    assert "(0.30 of it, flagged for its compact trigger)" in report.summary()
    assert report.outlier_test(statistic="log").flagged == [5, 7]  # no effect size: 7 at 0.76 of the median
    screened = dataclasses.replace(
        report,
        labels=[dataclasses.replace(r, stop_reason="screened") if r.label == 5 else r for r in report.labels],
    )
    assert screened.outlier_test().flagged == []  # a screened label's mask is its first pass's: not judged


@pytest.mark.parametrize(
    ("name", "summary", "strength"),
    [
        ("fmnist-clean", "clean: no label is both more than 2 MADs of log norms below the median and at most "
         "0.3 of it (0.45 with a compact trigger); the cheapest, label 8 (class 8), needs 0.35 of the median "
         "L1 67.9", "weak"),
        ("fmnist-badnets", "BACKDOORED: label 0 (class 0) with anomaly index", "weak"),  # 0.20 of the median
        ("mnist-trojan-square", "BACKDOORED: label 5 (class 5) with anomaly index", "weak"),
        ("far-below", "BACKDOORED: label 0 (class 0) with anomaly index", "strong"),  # 0.08
        ("even", "clean: no label is both", "strong"),  # the cheapest 0.89 of the median
        ("spread", "clean: no label is both", "weak"),  # the cheapest 0.77
    ],
)  # fmt: skip
def test_the_default_verdict_says_how_strong_its_evidence_is(
    name: str, summary: str, strength: str, tmp_path: Path
) -> None:
    made = {
        "far-below": [6.0] + [60.0 + 4 * k for k in range(1, 10)],
        "even": [70.0 + 2 * k for k in range(10)],
        "spread": [60.0 + 4 * k for k in range(10)],
    }
    norms = [*ZOO_NORMS[name][0]] if name in ZOO_NORMS else made[name]
    report = _report("effect", norms=norms)
    text = report.summary()
    assert text.startswith(summary) and f"; {strength} evidence: on the fidelity benchmark" in text
    ratio = min(norms) / report.median_l1 if report.verdict == "clean" else None
    if report.verdict == "backdoored":
        row = report.label(report.flagged[0])
        assert f"({row.l1_norm / report.median_l1:.2f} of it)" in text
    else:
        assert ratio is not None and f"{ratio:.2f} of the median" in text
        assert "anomaly index above" not in text  # not the sentence of a test without an effect size
    report.save(tmp_path / "scan")
    page = write_html_report(tmp_path / "scan").read_text(encoding="utf-8")
    assert f"<i>{strength.capitalize()} evidence: on the fidelity benchmark" in page
    assert _report("l1", norms=norms).outlier_statistic.strength(report) is None  # the paper's test: silent
    if report.verdict == "clean" and strength == "weak":  # a next step, unless the scan took it already
        assert "scan again with more random starts (--starts 3" in text
        report.settings["starts"] = 3
        assert "--starts" not in report.summary() and "look at label" in report.summary()
    if report.verdict == "backdoored" and strength == "weak":  # the check that tells natural features apart
        assert "; scan with --transfer-check (transfer_check=True)" in text
        checked = dataclasses.replace(report, transfer=TransferCheck("s", 0.95, {0: 0.1}, [0]))
        assert "--transfer-check" not in checked.summary() and "validate the trigger" in checked.summary()


def test_checks_and_sentences_live_in_one_module() -> None:
    """No other module words or checks a statistic by its name: each asks its entry in the registry."""
    src = Path(nc.__file__).parent

    def holders(text: str) -> list[str]:
        return sorted(
            p.relative_to(src).as_posix() for p in src.rglob("*.py") if text in p.read_text("utf-8")
        )

    for text in (
        "unknown outlier statistic",
        "needs a reference (scans",
        "the paper's test (MAD",
        "MAD of log",
    ):
        assert holders(text) == ["detection/statistics.py"], text
    for text in ("statistic == ", "statistic != ", "statistic in ("):
        assert holders(text) == [], text


class _SquareRoot(OutlierStatistic):
    """A statistic made up for the test: the MAD test on the norms' square roots."""

    __slots__ = ()
    name = "sqrt"  # type: ignore[assignment]
    title = "square-root"
    description = "the MAD test on the square roots of the L1 norms"
    test_name = "the test on square roots"

    def values(self, norms: np.ndarray, reference: np.ndarray | None) -> np.ndarray:
        return np.sqrt(norms)

    def median_l1(self, median: float, norms: Sequence[float]) -> float:
        return median**2

    def explain(self, report: DetectionReport) -> str:
        return f"Outlier test on the square roots of the L1 norms (MAD {report.mad:.2f})."


def test_a_new_statistic_is_one_entry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(STATISTICS, "sqrt", _SquareRoot())
    test = nc.mad_outlier_test(NORMS, statistic="sqrt")  # type: ignore[arg-type]
    roots = np.sqrt(NORMS)
    assert test.median == pytest.approx(float(np.median(roots))) and test.flagged == [0]
    assert test.ceiling == pytest.approx(test.median / test.mad)  # an empty trigger's root is 0 too
    assert nc.NeuralCleanse(TINY, statistic="sqrt").statistic == "sqrt"  # type: ignore[arg-type]
    report = _report("sqrt")
    assert report.summary().startswith("BACKDOORED: label 0 (class 0)")
    assert report.median_l1 == pytest.approx(float(np.median(NORMS)), rel=1e-4)  # the roots' median, squared
    print_scan(report, tmp_path / "scan")
    assert "beside it: the paper's test" in capsys.readouterr().out
    report.save(tmp_path / "scan")
    page = write_html_report(tmp_path / "scan").read_text(encoding="utf-8")
    assert "Outlier test on the square roots" in page and math.isfinite(report.ceiling)


def test_window_share_tells_a_patch_from_an_outline() -> None:
    patch = np.zeros((28, 28))
    patch[23:27, 23:27] = 1.0
    outline = np.zeros((28, 28))
    outline[2, :] = outline[-3, :] = outline[:, 2] = outline[:, -3] = 1.0
    assert window_share(patch) == 1.0 and window_share(torch.tensor(patch).unsqueeze(0)) == 1.0
    assert window_share(outline) < 0.2 < COMPACT_SHARE
    assert window_share(np.zeros((8, 8))) == 0.0 and window_share(np.ones((2, 2))) == 1.0
