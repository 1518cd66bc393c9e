"""The HTML report: produced for 10 and for hundreds of labels, every flagged label in it, nothing external,
every image inline, one-line errors for broken result directories and no half-written file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import neuralcleanse as nc
from neuralcleanse.cli import main
from neuralcleanse.detection import DetectionReport, mad_outlier_test
from neuralcleanse.detection.report import LabelResult
from neuralcleanse.errors import SettingsError
from neuralcleanse.mitigation import Measure, MitigationResult
from neuralcleanse.report import write_html_report


def _report(n: int, flagged_norms: dict[int, float], seed: int = 0) -> DetectionReport:
    """A report as a scan would write it, with made-up norms (the renderer is what is under test)."""
    gen = torch.Generator().manual_seed(seed)
    norms = (55 + 10 * torch.rand(n, generator=gen)).tolist()  # no natural outliers
    for k, v in flagged_norms.items():
        norms[k] = v
    out = mad_outlier_test(norms, threshold=2.0)
    rows = [
        LabelResult(
            label=k,
            name=f"class {k}",
            l1_norm=norms[k],
            attack_success=0.99,
            reached=True,
            steps=50,
            stop_reason="early_stop",
            final_cost=1e-3,
            best_step=40,
            anomaly_index=out.anomaly_index[k],
            flagged=k in out.flagged,
        )  # fmt: skip
        for k in range(n)
    ]
    triggers = {
        k: nc.Trigger(torch.rand(8, 8, generator=gen), torch.rand(3, 8, 8, generator=gen), "reversed")
        for k in range(n)
    }
    return DetectionReport(
        verdict="backdoored" if out.flagged else "clean", flagged=out.flagged, labels=rows, median=out.median,
        mad=out.mad, threshold=2.0, settings={"loss": "ce", "mode": "batched", "seed": 1}, data={"images": 100},
        model={"fingerprint": "ab" * 32}, run={"seconds": 1.0}, triggers=triggers, example=torch.rand(3, 8, 8),
    )  # fmt: skip


def _check_self_contained(page: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "external reference"
    assert "http://" not in page and "https://" not in page
    srcs = re.findall(r"""<img[^>]*\ssrc="([^"]*)\"""", page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<link" not in page and "<script src" not in page


@pytest.mark.parametrize(("labels", "flags"), [(10, {3: 5.0}), (300, {7: 4.0, 123: 6.0, 250: 3.0})])
def test_report_for_few_and_many_labels(tmp_path: Path, labels: int, flags: dict[int, float]) -> None:
    report = _report(labels, flags)
    assert sorted(report.flagged) == sorted(flags)
    report.save(tmp_path / "scan")
    path = write_html_report(tmp_path / "scan")
    page = path.read_text(encoding="utf-8")
    _check_self_contained(page)
    assert "Backdoored." in page
    for k in flags:
        assert f"label <b>{k}</b>" in page  # in the verdict sentence
        assert f"<b>label {k} (class {k})</b>" in page  # in the gallery
    assert page.count("<tr") >= labels  # every label in the table
    assert (tmp_path / "scan" / "figures" / "l1_norms.png").stat().st_size > 1000


def test_clean_report_and_mitigation_sections(tmp_path: Path) -> None:
    report = _report(10, {})
    assert report.verdict == "clean"
    report.save(tmp_path / "scan")
    curve = [{"fraction": f / 10, "neurons": f, "clean_accuracy": 0.97 - f / 100, "attack_success": 1 - f / 5,
              "real_attack_success": 1 - f / 5} for f in range(5)]  # fmt: skip
    prune = MitigationResult("prune", 3, Measure(0.97, 1.0, 1.0), Measure(0.93, 0.2, 0.2),
                             {"curve": curve, "fraction_pruned": 0.4, "width": 10, "stopped": "x"},
                             ["pruning stopped <here> & there"])  # fmt: skip
    path = write_html_report(tmp_path / "scan", tmp_path / "out.html", mitigations=[prune])
    page = path.read_text(encoding="utf-8")
    _check_self_contained(page)
    assert "Clean." in page and "Mitigation: prune" in page
    assert "<li>pruning stopped &lt;here&gt; &amp; there</li>" in page  # the result's notes, escaped
    assert sorted(f.name for f in (tmp_path / "out_figures").iterdir()) == [
        "l1_norms.png",
        "pruning_label_3.png",
    ]
    # a second page in the same folder keeps its own figures; rewriting one drops its stale figures
    write_html_report(tmp_path / "scan", tmp_path / "other.html")
    assert (tmp_path / "out_figures" / "pruning_label_3.png").is_file()
    assert [f.name for f in (tmp_path / "other_figures").iterdir()] == ["l1_norms.png"]
    write_html_report(tmp_path / "scan", tmp_path / "out.html")
    assert [f.name for f in (tmp_path / "out_figures").iterdir()] == ["l1_norms.png"]
    # a folder of that name with the user's other files in it is not replaced
    (tmp_path / "mine_figures").mkdir()
    (tmp_path / "mine_figures" / "notes.txt").write_text("keep me")
    with pytest.raises(SettingsError, match="mine_figures: the report's figures would replace it"):
        write_html_report(tmp_path / "scan", tmp_path / "mine.html")
    assert (tmp_path / "mine_figures" / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "mine.html").exists()


def test_broken_result_directories_give_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _report(10, {3: 5.0})
    report.save(tmp_path / "scan")
    (tmp_path / "scan" / "triggers" / "label_0004.safetensors").unlink()
    assert main(["report", str(tmp_path / "scan")]) != 0
    err = capsys.readouterr().err
    assert "label_0004.safetensors is missing" in err and err.count("\n") == 1
    assert not (tmp_path / "scan" / "report.html").exists()

    data = json.loads((tmp_path / "scan" / "report.json").read_text())
    data["format_version"] = 0
    (tmp_path / "scan" / "report.json").write_text(json.dumps(data))
    assert main(["report", str(tmp_path / "scan")]) != 0
    assert "unsupported report format version 0" in capsys.readouterr().err

    assert main(["report", str(tmp_path / "nothing")]) != 0
    assert "no report.json here" in capsys.readouterr().err
    assert not list(tmp_path.glob("**/report.html"))


def test_a_scan_folder_linking_outside_itself_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a scan folder is read by report, validate and mitigate: a picture or trigger file that is a link to
    # a file elsewhere would carry that file's bytes into the page (or the work)
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG not the scan's")
    for linked in ("images/example.png", "triggers/label_0003.safetensors"):
        scan = tmp_path / f"scan-{linked.split('/')[0]}"
        _report(10, {3: 5.0}).save(scan)
        (scan / linked).unlink()
        (scan / linked).symlink_to(secret)
        assert main(["report", str(scan)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"leads outside {scan}" in err, err
        assert not (scan / "report.html").exists()
    inner = tmp_path / "scan-ok"  # a link inside the folder is fine
    _report(10, {3: 5.0}).save(inner)
    (inner / "images" / "copy.png").write_bytes((inner / "images" / "example.png").read_bytes())
    (inner / "images" / "example.png").unlink()
    (inner / "images" / "example.png").symlink_to(inner / "images" / "copy.png")
    assert main(["report", str(inner)]) == 0


def test_report_relative_to_a_reference(tmp_path: Path) -> None:
    import dataclasses

    from neuralcleanse.detection import Reference

    base = _report(10, {3: 20.0})  # label 3 small in this model ...
    spread = {k: 0.9 + 0.2 * ((7 * k) % 10) / 9 for k in range(10)}  # the trusted model's norms, within ±10%
    ref = Reference(
        {r.label: r.l1_norm * spread[r.label] for r in base.labels}, [{"model": "r", "verdict": "clean"}]
    )
    test = base.outlier_test(statistic="relative", reference=ref)  # ... and as small in the trusted one
    rows = [
        dataclasses.replace(r, anomaly_index=i, flagged=False)
        for r, i in zip(base.labels, test.anomaly_index, strict=True)
    ]
    report = dataclasses.replace(
        base, verdict="clean", flagged=[], labels=rows, median=test.median, mad=test.mad,
        statistic="relative", reference=ref,
    )  # fmt: skip
    assert base.flagged == [3] and test.flagged == []
    report.save(tmp_path / "scan")
    page = write_html_report(tmp_path / "scan").read_text(encoding="utf-8")
    _check_self_contained(page)
    assert "Clean." in page and "relative to 1 reference scan of trusted models" in page
    assert "reference L1</th>" in page
    assert DetectionReport.load(tmp_path / "scan").reference.l1_norms == pytest.approx(ref.l1_norms)  # type: ignore[union-attr]
