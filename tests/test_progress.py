"""Long runs are never silent: progress estimates, and plain progress lines when stderr is not a terminal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from arch_corpus import BatchNormCNN
from neuralcleanse.cli import main
from neuralcleanse.cli.common import PROGRESS_INTERVAL_ENV, ProgressBar, ScanProgressText, format_duration
from neuralcleanse.detection import ScanProgress


def _progress(**changes: object) -> ScanProgress:
    base: dict[str, object] = {
        "done": 2,
        "total": 5,
        # labels 2 and 3 running (steps 10 and 70), 4 pending; 0 and 1 stopped after 40 and 60 steps
        "active": ((2, 10, 0.1, 5.0), (3, 70, 0.1, 4.0)),
        "images": 18 * 256,
        "seconds": 9.0,
        "finished": ((0, 40, "early_stop"), (1, 60, "max_steps")),
        "max_steps": 60,
        "images_per_step": 256,
    }
    return ScanProgress(**(base | changes))  # type: ignore[arg-type]


def test_estimated_total_and_eta_are_exact() -> None:
    p = _progress(active=((2, 10, 0.1, 5.0), (3, 55, 0.1, 4.0)))
    assert p.steps_done == 40 + 60 + 10 + 55
    assert p.typical_steps() == 50.0  # mean of the finished labels
    # label 2: the typical 50; label 3 past it: as the finished label that ran longer (60); label 4: 50
    assert p.estimated_steps() == 40 + 60 + 50 + 60 + 50
    later = _progress(active=((2, 10, 0.1, 5.0), (3, 60, 0.1, 4.0)), max_steps=100)
    assert later.estimated_steps() == 40 + 60 + 50 + 61 + 50  # past every finished label: one more step
    assert p.max_total_steps() == 40 + 60 + 3 * 60
    assert p.steps_per_second() == pytest.approx(2.0)  # 18 label-steps in 9 s
    left, bound = p.eta() or (0.0, None)
    assert left == pytest.approx((260 - 165) / 2.0) and bound == pytest.approx((280 - 165) / 2.0)
    fast = p.eta(steps_per_second=4.0)
    assert fast is not None and list(fast) == [pytest.approx(95 / 4.0), pytest.approx(115 / 4.0)]


def test_before_any_label_stops_only_the_cap_is_known() -> None:
    p = _progress(done=0, finished=(), active=((0, 3, 0.0, float("inf")),), images=3 * 256, seconds=3.0)
    assert p.typical_steps() == 60.0 and p.estimated_steps() == 60 + 4 * 60
    _, total, _, line = ScanProgressText()(p)
    assert total == 300.0
    assert "0/5 labels done, steps 3 of at most 300 (no label has stopped yet)" in line
    assert "ETA not known yet" in line  # the speed is measured from the first step on


def test_line_says_estimate_and_bound() -> None:
    text = ScanProgressText()
    text(_progress(active=((2, 10, 0.1, 5.0), (3, 55, 0.1, 4.0)), images=10 * 256, seconds=5.0))
    _, _, status, line = text(_progress(active=((2, 10, 0.1, 5.0), (3, 55, 0.1, 4.0))))
    assert line.startswith("2/5 labels done, steps 165/~260 (estimate from 2 finished labels; at most 280), ")
    # 8 label-steps (2048 images) in the 4 s since the first step: 2 steps/s, 512 img/s
    assert (
        "512 img/s, elapsed 9s, ETA ~48s (estimate; at most 58s if every label runs to --max-steps)" in line
    )
    assert "ETA ~48s" in status


def test_a_stage_after_the_optimisation_is_said_as_it_is() -> None:
    import dataclasses

    p = dataclasses.replace(_progress(), stage="transfer check: distilling a student")
    done, total, status, line = ScanProgressText()(p)
    assert done == total == p.steps_done and status == line == "transfer check: distilling a student"


def test_durations() -> None:
    assert [format_duration(s) for s in (0.4, 59, 61, 3599, 3600, 7385)] == [
        "0s", "59s", "1m01s", "59m59s", "1h00m", "2h03m",
    ]  # fmt: skip


def test_plain_lines_at_most_every_interval(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = [100.0]
    monkeypatch.setattr("neuralcleanse.cli.common.time.monotonic", lambda: clock[0])
    monkeypatch.setenv(PROGRESS_INTERVAL_ENV, "30")
    with ProgressBar("work", enabled=True) as bar:  # capsys: stderr is not a terminal
        for t in (1, 29, 31, 45, 62):
            clock[0] = 100.0 + t
            bar.update(completed=t, total=100, status="s", line=f"at {t}", now=t == 45)
    # a new stage (now=True) is said at once, and the interval counts from it
    assert capsys.readouterr().err.splitlines() == ["work: at 31", "work: at 45"]


# ---- a real scan through the command line ----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("progress")
    torch.manual_seed(0)
    model = BatchNormCNN().eval()
    batch = ({0: torch.export.Dim("batch")},)
    torch.export.save(
        torch.export.export(model, (torch.rand(2, 3, 32, 32),), dynamic_shapes=batch), root / "m.pt2"
    )
    images = np.random.default_rng(0).random((24, 3, 32, 32), dtype=np.float32)
    np.savez(root / "d.npz", x=images, y=np.arange(24) % 3)
    return {"model": root / "m.pt2", "data": root / "d.npz", "root": root}


def _scan(
    tiny: dict[str, Path], out: str, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, str, str]:
    code = main([
        "scan", str(tiny["model"]), "--data", str(tiny["data"]), "--all-images", "--labels", "0-1",
        "--max-steps", "2", "--out", str(tiny["root"] / out), "--device", "cpu", *extra,
    ])  # fmt: skip
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_scan_writes_progress_lines_when_stderr_is_not_a_terminal(
    tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(PROGRESS_INTERVAL_ENV, "0")
    code, _, err = _scan(tiny, "every", capsys)
    assert code == 0, err
    lines = [line.removeprefix("scanning: ") for line in err.splitlines() if line.startswith("scanning: ")]
    assert len(lines) == 2 and all("labels done, steps " in line and "ETA " in line for line in lines)
    assert lines[0].startswith(
        "0/2 labels done, steps 2 of at most 4 (no label has stopped yet), measuring speed"
    )
    assert lines[1].startswith("2/2 labels done, steps 4/~4 (estimate from 2 finished labels; at most 4), ")
    assert " img/s, " in lines[1]


def test_a_short_scan_stays_quiet(tiny: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _scan(tiny, "quiet", capsys, "--html")
    assert code == 0 and "scanning: " not in err
    # labels stopped by the cap: the stop column says so and a warning names them
    assert "stop" in out and "max steps" in out
    # off a terminal nothing is wrapped or cut at 80 columns: each message is one greppable line
    capped = [line for line in out.splitlines() if line.startswith("warning: labels [0, 1] hit the cap")]
    assert (
        len(capped) == 1
        and "(--max-steps) before stopping early: their L1 norm is an upper bound" in capped[0]
    )
    assert any(  # two labels: no outlier test, so no median (it printed "median L1 nan")
        line.startswith("no median: fewer than 3 labels have a finite norm; report written to ")
        and line.endswith(str(tiny["root"] / "quiet"))
        for line in out.splitlines()
    )
    assert f"HTML report written to {tiny['root'] / 'quiet' / 'report.html'}" in out


def test_a_bad_interval_is_one_line(
    tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(PROGRESS_INTERVAL_ENV, "soon")
    code, _, err = _scan(tiny, "bad", capsys)
    assert code == 2 and err == f"error: {PROGRESS_INTERVAL_ENV} must be a number of seconds, got 'soon'\n"
