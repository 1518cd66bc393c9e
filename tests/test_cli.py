"""The command line: real runs through ``main()``, one-line errors, no half-written outputs."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from neuralcleanse.cli import main
from neuralcleanse.data import write_idx
from neuralcleanse.detection import DetectionReport
from neuralcleanse.models import load_model_dir


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_badnets_writes_a_model_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bad"
    code, stdout, _ = run(
        capsys, "train", "--out", str(out), "--attack", "badnets", "--target", "3", "--epochs", "3",
        "--device", "cpu", "--json",
    )  # fmt: skip
    assert code == 0
    summary = json.loads(stdout)
    assert summary["target"] == [3] and summary["clean_accuracy"] > 0.9 and summary["attack_success"] > 0.9
    bundle = load_model_dir(out)
    assert bundle.card.targets == [3] and bundle.card.attack_success == summary["attack_success"]


def test_train_prints_a_readable_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run(capsys, "train", "--out", str(tmp_path / "c"), "--epochs", "1", "--device", "cpu")
    assert code == 0 and "clean accuracy" in stdout and "%" in stdout


def _corrupt_idx_dir(root: Path) -> Path:
    root.mkdir()
    for stem, shape in [
        ("train-images-idx3-ubyte", (4, 28, 28)),
        ("train-labels-idx1-ubyte", (4,)),
        ("t10k-images-idx3-ubyte", (2, 28, 28)),
        ("t10k-labels-idx1-ubyte", (2,)),
    ]:
        write_idx(root / f"{stem}.gz", np.zeros(shape, dtype=np.uint8))
    (root / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00corrupt")
    return root


BAD = [
    (["--dataset", "cifar-1000"], "unknown dataset 'cifar-1000'"),
    (["--arch", "vgg16"], "unknown architecture 'vgg16'"),
    (["--attack", "badnets", "--target", "10"], "target label 10 is outside"),
    (["--attack", "badnets", "--target", "-1"], "non-negative"),
    (["--attack", "badnets", "--target", "1", "--trigger", "square:size=29"], "larger than the 28x28"),
    (["--attack", "badnets", "--target", "1", "--poison-rate", "0"], "poison rate must be in (0, 1)"),
    (["--attack", "badnets", "--target", "1", "--poison-rate", "1.2"], "poison rate must be in (0, 1)"),
    (["--attack", "badnets"], "needs --target"),
    (["--attack", "sneaky", "--target", "1"], "unknown attack"),
    (["--attack", "badnets", "--target", "1", "--source-labels", "1"], "include the target"),
    (["--epochs", "x"], "not a valid integer"),
    (["--dataset", "fashion-mnist", "--data-dir", "/nonexistent"], "apt-get install dataset-fashion-mnist"),
    (["--device", "cuda:7"], "cuda"),
]


@pytest.mark.parametrize(("args", "message"), BAD)
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, stdout, stderr = run(capsys, "train", "--out", str(tmp_path / "m"), "--epochs", "1", *args)
    assert code != 0
    assert stderr.startswith("error: ") and message in stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []


def test_corrupt_idx_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _corrupt_idx_dir(tmp_path / "data")
    code, _, stderr = run(
        capsys, "train", "--out", str(tmp_path / "m"), "--dataset", "mnist", "--data-dir", str(data)
    )
    assert code == 1 and "train-images-idx3-ubyte.gz: corrupt gzip" in stderr and stderr.count("\n") == 1
    assert not (tmp_path / "m").exists()


def test_existing_output_needs_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, _, stderr = run(capsys, "train", "--out", str(out), "--epochs", "1", "--device", "cpu")
    assert code == 2 and "--force" in stderr and (out / "notes.txt").read_text() == "keep me"
    code, _, _ = run(capsys, "train", "--out", str(out), "--epochs", "1", "--device", "cpu", "--force")
    assert code == 0 and not (out / "notes.txt").exists() and (out / "card.json").exists()


def test_help_documents_the_trigger_spec(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run(capsys, "train", "--help")
    assert code == 0 and "bottom-right" in stdout and "checkerboard" in stdout and "blend:" in stdout


@pytest.fixture(scope="module")
def saved_models(
    tmp_path_factory: pytest.TempPathFactory, badnets_model: Any, clean_model: Any
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"bad": badnets_model.save(root / "bad").path, "clean": clean_model.save(root / "clean").path}


def test_scan_cli_flags_the_planted_label_and_matches_the_api(
    saved_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], badnets_report: Any
) -> None:
    out = tmp_path / "scan"
    code, stdout, _ = run(
        capsys,
        "scan",
        str(saved_models["bad"]),
        "--seed",
        "0",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--json",
        "--labels",
        "0,1,2,3,4,5",
        "--no-transfer-check",  # the norms are what is compared here (the check: tests/test_transfer.py)
    )
    assert code == 0
    d = json.loads(stdout)
    assert d["verdict"] == "backdoored" and d["flagged"] == [0] and d["anomaly_index"]["0"] > 2
    assert (out / "report.json").exists() and not (tmp_path / "scan.checkpoint").exists()
    # the paper's test beside the verdict, as the text output prints it
    paper = DetectionReport.load(out).outlier_test(statistic="l1")
    assert d["paper_test"]["flagged"] == paper.flagged
    assert d["paper_test"]["anomaly_index"]["0"] == pytest.approx(paper.anomaly_index[0], abs=1e-6)
    assert d["paper_test"]["summary"].startswith("the paper's test")
    # the Python API on the same model (before it was saved), data and seed gives the same triggers:
    # each label's optimisation is its own, so the API's scan of all ten labels has the same norms for
    # the labels both ran to the end
    api = badnets_report
    assert api.flagged == d["flagged"]
    rows = json.loads((out / "report.json").read_text())["labels"]
    stopped = {int(row["label"]) for row in rows if row["stop_reason"] == "screened"}
    same = [k for k in range(6) if k not in stopped and k not in api.screened]
    assert 0 in same and len(same) >= 3
    assert {str(k): api.l1_norms[k] for k in same} == {str(k): d["l1_norms"][str(k)] for k in same}


def test_scan_cli_more_starts(
    saved_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "starts"
    code, _, _ = run(
        capsys, "scan", str(saved_models["bad"]), "--seed", "0", "--labels", "0,1,2,3", "--starts", "2",
        "--no-transfer-check", "--out", str(out), "--device", "cpu",
    )  # fmt: skip
    d = json.loads((out / "report.json").read_text())
    assert code == 0 and d["settings"]["starts"] == 2 and d["flagged"] == [0]
    # a weak verdict the default would check (the next test), left unchecked as asked
    assert d["transfer"] is None and "transfer_seconds" not in d["run"]
    assert "weak evidence" in d["summary"] and "scan with --transfer-check" in d["summary"]
    assert any("from 2 random starts each" in n and "label 0: " in n for n in d["notes"])


def test_scan_cli_transfer_check(
    saved_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``scan --transfer-check`` checks the flagged label on a distilled student and shows it in the
    report and its HTML page: the planted trigger hardly moves the student, but on the paper's network the
    student follows the other labels' triggers nearly always, so the check says it cannot tell and label
    0 stays flagged."""
    out = tmp_path / "transfer"
    code, _, err = run(
        capsys, "scan", str(saved_models["bad"]), "--seed", "0", "--labels", "0,1,2,3", "--transfer-check",
        "--html", "--out", str(out), "--device", "cpu",
    )  # fmt: skip
    d = json.loads((out / "report.json").read_text())
    assert code == 0 and d["flagged"] == [0]
    # the distillation after the optimisation is announced, not a silent wait
    assert (
        "scanning: transfer check: distilling a student from the model on 900 clean images "
        "(100 more held out to measure it)" in err
    )
    assert "distilled from the model on 900 clean images" in d["transfer"]["student"]  # the same count
    assert d["transfer"]["flagged"] == [0] and d["transfer"]["set_aside"] == []
    assert d["transfer"]["success"]["0"] < 0.3 and d["run"]["transfer_seconds"] > 0
    page = (out / "report.html").read_text()
    assert d["transfer"]["saturation"] == 0.75 and any(
        "cannot tell a natural feature" in n for n in d["notes"]
    )
    assert "Transfer check not used: the unflagged labels&#x27; triggers already move the student" in page


def test_ctrl_c_says_in_one_line_what_is_kept(
    saved_models: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import neuralcleanse.cli.scan as scan_cli

    def interrupted(*_a: Any, **_k: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(scan_cli, "scan_model", interrupted)
    out = tmp_path / "s"
    code, _, err = run(capsys, "scan", str(saved_models["bad"]), "--out", str(out), "--device", "cpu")
    assert code == 130 and err.count("\n") == 1 and not out.exists()  # one line, what was kept in it
    assert err.startswith("error: interrupted: before the first checkpoint") and "nothing is kept" in err

    def interrupted_later(request: Any, **_k: Any) -> None:  # after a checkpoint was written
        from neuralcleanse.detection.checkpoint import _STATE

        request.checkpoint.mkdir(parents=True)
        (request.checkpoint / _STATE).write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(scan_cli, "scan_model", interrupted_later)
    code, _, err = run(capsys, "scan", str(saved_models["bad"]), "--out", str(out), "--device", "cpu")
    assert code == 130 and err.count("\n") == 1 and err.startswith("error: interrupted: the checkpoint ")
    assert err.rstrip().endswith("is kept; the same command with --resume continues the scan")


def test_sigterm_stops_a_scan_like_ctrl_c_and_it_resumes(
    saved_models: dict[str, Path], tmp_path: Path
) -> None:
    # a real process and a real signal: what `kill`, a batch scheduler or `docker stop` sends
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "s"
    cmd = [sys.executable, "-m", "neuralcleanse", "scan", str(saved_models["bad"]), "--out", str(out)]
    cmd += ["--device", "cpu", "--labels", "0,1,2,3", "--samples", "100", "--seed", "0", "--json"]
    cmd += ["--no-transfer-check"]  # the signal is the subject, not the check's distillation after it
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = out.with_name("s.checkpoint") / "state.json"
    deadline = time.monotonic() + 300
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the scan ended before its first checkpoint"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    last = err.strip().splitlines()[-1]  # off a terminal the progress is printed as lines before it
    assert proc.returncode == 130 and err.count("error:") == 1, err
    assert last.startswith("error: terminated (SIGTERM): the checkpoint ") and "--resume continues" in last
    assert state.exists() and not out.exists()  # the checkpoint kept, no half-written result
    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["flagged"] == [0] and not state.parent.exists()


def test_sigterm_in_any_command_says_so(
    saved_models: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # click turns the interrupt into its own Abort in every command but scan: the line still names SIGTERM
    import signal
    import threading

    import neuralcleanse.cli.validate as validate_cli

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be set in the main thread")

    def terminated(*_a: Any, **_k: Any) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal, delivered to the handler main() installed

    monkeypatch.setattr(validate_cli, "open_case", terminated)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "v"
    code, _, err = run(
        capsys, "validate", str(saved_models["bad"]), "--report", str(tmp_path), "--out", str(out)
    )
    assert code == 130 and err.strip().splitlines()[-1] == "error: terminated (SIGTERM)" and not out.exists()
    assert signal.getsignal(signal.SIGTERM) is before  # main() puts the previous handler back


def test_scan_cli_table_for_a_clean_model(
    saved_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s"
    code, stdout, _ = run(
        capsys, "scan", str(saved_models["clean"]), "--seed", "0", "--out", str(out), "--device", "cpu",
        "--no-screening", "--labels", "0,1,2,3",
    )  # fmt: skip
    assert code == 0 and "clean:" in stdout and "of the median" in stdout and "FLAGGED" not in stdout
    assert all(
        row["stop_reason"] != "screened" for row in json.loads((out / "report.json").read_text())["labels"]
    )


def test_scan_cli_against_a_reference_matches_the_api(
    saved_models: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    clean_report_full: Any,
    relative_report: Any,
) -> None:
    # the clean model's full scan is the reference for the infected one: each label against itself
    ref = clean_report_full.save(tmp_path / "clean-scan")
    code, stdout, _ = run(
        capsys, "scan", str(saved_models["bad"]), "--seed", "0", "--reference", str(ref),
        "--out", str(tmp_path / "rel"), "--device", "cpu", "--labels", "0,1,2,3,4,5",
    )  # fmt: skip
    assert code == 0 and "BACKDOORED" in stdout and "reference" in stdout.replace("\n", " ")
    d = json.loads((tmp_path / "rel" / "report.json").read_text())
    assert (
        d["statistic"] == "relative"
        and d["flagged"] == [0]
        and d["reference"]["sources"][0]["path"] == str(ref)
    )
    # each label's optimisation is its own: the same norms as the API's scan of all ten labels
    api = {k: relative_report.l1_norms[int(k)] for k in d["l1_norms"]}
    assert d["l1_norms"] == pytest.approx(api, rel=1e-5)


SCAN_BAD = [
    (["--samples", "0"], "--samples must be at least 1"),
    (["--starts", "0"], "--starts must be at least 1"),
    (["--labels", ""], "--labels is empty"),
    (["--labels", "3,x"], "'x' is not a label"),
    (["--labels", "12"], "outside the model's 10 outputs"),
    (["--dataset", "nope"], "unknown dataset"),
    (["--source", "11"], "source label 11 is outside"),
    (["--resume"], "no checkpoint to resume from"),
    (["--statistic", "relative"], "--statistic relative needs --reference"),
    (["--reference", "/nonexistent/scan"], "scan report not found"),
]


@pytest.mark.parametrize(("args", "message"), SCAN_BAD)
def test_scan_bad_input(
    saved_models: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    out = tmp_path / "s"
    code, _, stderr = run(
        capsys, "scan", str(saved_models["bad"]), "--out", str(out), "--max-steps", "2", *args
    )
    assert code != 0 and stderr.startswith("error: ") and message in stderr and stderr.count("\n") == 1
    assert not out.exists()


def test_scan_missing_model_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, stderr = run(capsys, "scan", str(tmp_path / "none"), "--out", str(tmp_path / "s"))
    assert code == 1 and "model file not found" in stderr


def test_default_output_folders_are_unique_per_model(tmp_path: Path) -> None:
    from neuralcleanse.cli.loading import default_out

    a, b = default_out("scans", tmp_path / "a" / "model"), default_out("scans", tmp_path / "b" / "model")
    assert a != b and a.parent == Path("scans")
    assert a.name.startswith("a-model-") and b.name.startswith("b-model-")
    assert default_out("scans", tmp_path / "a" / "model") == a  # the same model, the same folder
    assert default_out("mitigations", tmp_path / "net.pt2", "-prune").name.startswith(
        f"{tmp_path.name}-net-prune-"
    )


def test_a_default_folder_holding_another_models_scan_is_never_offered_to_force(tmp_path: Path) -> None:
    from neuralcleanse.cli.loading import check_result_dir
    from neuralcleanse.errors import SettingsError

    out = tmp_path / "scans" / "x"
    out.mkdir(parents=True)
    (out / "report.json").write_text(json.dumps({"model": {"path": str(tmp_path / "other" / "model")}}))
    with pytest.raises(SettingsError, match="holds the scan of another model") as err:
        check_result_dir(out, tmp_path / "mine" / "model", force=True, explicit=False)
    assert "--force" not in str(err.value) and "--out" in str(err.value)
    # the same model's earlier scan: --force may replace it
    with pytest.raises(SettingsError, match="use --force"):
        check_result_dir(out, tmp_path / "other" / "model", force=False, explicit=False)
    check_result_dir(out, tmp_path / "other" / "model", force=True, explicit=False)


def test_the_api_names_force_true_and_the_cli_force(tmp_path: Path) -> None:
    from neuralcleanse._io import check_output_dir
    from neuralcleanse.errors import SettingsError

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(SettingsError, match=r"pass force=True to replace it"):
        check_output_dir(tmp_path / "full", force=False)
    with pytest.raises(SettingsError, match=r"use --force to replace it"):
        check_output_dir(tmp_path / "full", force=False, option="--out")


def test_a_replaced_result_folder_keeps_its_permissions(tmp_path: Path) -> None:
    """A result directory is written beside the one it replaces and renamed over it: the folder the user
    made (an empty one, or an old result with ``force``) keeps its mode."""
    from neuralcleanse._io import _umask, atomic_directory

    out = tmp_path / "shared"
    out.mkdir()
    out.chmod(0o750)
    with atomic_directory(out) as tmp:
        (tmp / "report.json").write_text("{}")
    assert (out / "report.json").exists() and out.stat().st_mode & 0o777 == 0o750
    with atomic_directory(tmp_path / "new") as tmp:  # a new folder: the usual mode
        (tmp / "report.json").write_text("{}")
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o777 & ~_umask()


def test_train_help_lists_every_dataset_and_plain_percent(capsys: pytest.CaptureFixture[str]) -> None:
    from neuralcleanse.data.registry import DATASETS

    code, out, _ = run(capsys, "train", "--help")
    assert code == 0 and "%%" not in out and "7%" in out
    flat = re.sub(r"-\s+", "-", " ".join(out.split()))
    assert all(name in flat for name in DATASETS)


def test_quoted_errors_are_cut_at_a_word_with_a_mark() -> None:
    from neuralcleanse.errors import first_line, shorten

    line = "Could not deserialize class 'Sneaky' because its parent module evil.layers cannot be imported"
    cut = first_line(f"\n{line}\nsecond line", limit=50)
    assert cut == "Could not deserialize class 'Sneaky' because..." and len(cut) <= 50
    assert shorten(line, len(line)) == line
    assert shorten("x" * 80, 20) == "x" * 17 + "..."  # one long word: cut inside it
