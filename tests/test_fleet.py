"""``scan-many`` and the fleet runners: the same report as ``scan`` in every runner, failures and dead
workers that do not stop the fleet, resuming a killed run, manifests and the summary.

Tiny models (one epoch on a few hundred digits) and short scans (3 steps, 30 images) keep this file
fast; Ray is started once for the module (a local instance, as ``--ray`` starts one).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import neuralcleanse as nc
from neuralcleanse.cli import main
from neuralcleanse.detection import DetectionReport
from neuralcleanse.errors import DataError, ModelError, SettingsError
from neuralcleanse.fleet import (
    FleetJob,
    FleetSummary,
    ModelEntry,
    ModelResult,
    collect_models,
    find_models,
    read_manifest,
    run_processes,
    run_ray,
    unique_names,
)

#: short scans: enough to exercise every piece, seconds per model
SCAN = ["--samples", "30", "--max-steps", "3", "--seed", "0", "--device", "cpu"]


# ---- the world: two tiny models, their weights, a corrupt file, clean images --------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, mnist_sample: nc.DatasetSplits) -> dict[str, Path]:
    from neuralcleanse.data.dataset import DatasetSplits

    root = tmp_path_factory.mktemp("fleet")
    tiny = DatasetSplits(
        "mnist-sample", mnist_sample.train.subset(range(400)), mnist_sample.test.subset(range(100))
    )
    paths: dict[str, Path] = {}
    for name, attack, seed in (("bad", nc.BadNets(target=0, poison_rate=0.1), 0), ("clean", None, 1)):
        recipe = nc.Recipe(training=nc.TrainSettings(epochs=1, batch_size=64, seed=seed), attack=attack)
        path = nc.train_recipe(recipe, data=tiny, device="cpu").save(root / "models" / name).path
        assert path is not None
        paths[name] = path
    paths["weights"] = root / "models" / "weights.safetensors"
    paths["weights"].write_bytes((paths["clean"] / "model.safetensors").read_bytes())
    paths["corrupt"] = root / "models" / "corrupt.pt2"
    paths["corrupt"].write_bytes(b"not a model at all")
    test = mnist_sample.test.subset(range(100, 200))
    paths["data"] = root / "data.npz"
    np.savez(
        paths["data"],
        images=(test.images[:, 0].numpy() * 255).round().astype(np.uint8),
        labels=test.labels.numpy(),
    )
    # the weights file needs its architecture: a manifest gives it (its path relative to the manifest)
    paths["manifest"] = root / "manifest.csv"
    paths["manifest"].write_text("path,name,arch\nmodels/weights.safetensors,weights,mnist\n")
    # two models that cannot be scanned: a corrupt file, and weights given a 3x32x32 input they do not fit
    paths["broken"] = root / "broken.csv"
    paths["broken"].write_text(
        "path,name,arch,input_shape\nmodels/corrupt.pt2,,,\nmodels/weights.safetensors,wrong-shape,mnist,3x32x32\n"
    )
    paths["root"] = root
    return paths


Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """``neuralcleanse ARGS...`` in this process: its exit code, stdout and stderr."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _python(script: str, *args: str, **popen: Any) -> subprocess.Popen[str]:
    """``python -c SCRIPT ARGS...``: a fresh interpreter, as a user's shell starts one."""
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **popen,
    )


def _single_scan(
    world: dict[str, Path], out: Path, model: str, *args: str, threads: int = 1
) -> dict[str, Any]:
    """``scan`` of one model with ``threads`` torch threads (one: the count most fleet runs use below)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        source = [str(world[model])] + (["--arch", "mnist"] if model == "weights" else [])
        code = main(["scan", *source, "--data", str(world["data"]), *args, "--out", str(out), "--json"])
    finally:
        torch.set_num_threads(before)
    assert code == 0
    return _report(out)


@pytest.fixture(scope="module")
def references(world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Single ``scan`` runs: what every runner must reproduce."""
    root = tmp_path_factory.mktemp("references")
    return {m: _single_scan(world, root / m, m, *SCAN) for m in ("bad", "weights")}


def _report(path: Path) -> dict[str, Any]:
    d: dict[str, Any] = json.loads((path / "report.json").read_text())
    return d


def _without_timing(d: dict[str, Any]) -> dict[str, Any]:
    run = {k: v for k, v in d["run"].items() if k not in ("seconds", "images_per_second")}
    return {**d, "run": run}


def _assert_same_reports(out: Path, references: dict[str, dict[str, Any]], *, threads: int = 1) -> None:
    """Every report in ``out`` equals the single scan's: norms, flags, indices, steps, notes, data, model;
    only the seconds differ."""
    for name, reference in references.items():
        got = _report(out / name)
        assert got["run"]["threads"] == reference["run"]["threads"] == threads
        assert _without_timing(got) == _without_timing(reference), name
        assert (out / name / "report.html").is_file()


def _fleet(world: dict[str, Path], out: Path, *args: str) -> list[str]:
    return [
        "scan-many", str(world["bad"]), str(world["manifest"]), "--data", str(world["data"]), *SCAN,
        "--out", str(out), *args,
    ]  # fmt: skip


def _scan_many_as_scan(
    cli: Cli, world: dict[str, Path], references: dict[str, dict[str, Any]], tmp_path: Path, *runner: str
) -> FleetSummary:
    """``scan-many`` of the good models with a runner's options: every report as ``scan``'s."""
    out = tmp_path / "fleet"
    code, _, stderr = cli(*_fleet(world, out, *runner))
    assert code == 0, stderr
    _assert_same_reports(out, references)
    return FleetSummary.load(out)


# ---- locally ----------------------------------------------------------------------------------------
#: a progress line (stderr is not a terminal here): models done of the total, flagged so far, the time left
PROGRESS = re.compile(
    r"scan-many: (\d+)/(\d+) models done \((\d+) flagged(?:, (\d+) failed)?\), elapsed \w+, "
    r"(ETA ~\w+|ETA not known yet|done); (\S+): (.+)"
)


def test_in_process_matches_scan_and_bad_models_do_not_stop_the_others(
    world: dict[str, Path], references: dict[str, dict[str, Any]], tmp_path: Path, cli: Cli
) -> None:
    out = tmp_path / "fleet"
    threads = torch.get_num_threads()
    code, stdout, stderr = cli(
        *_fleet(world, out, "--threads-per-worker", "1", "--sort", "name"), str(world["broken"])
    )
    assert torch.get_num_threads() == threads  # the worker's thread count is restored
    # a corrupt file and a model of the wrong shape: each reported failed with its one-line error, the
    # others scanned; exit code 1
    assert code == 1
    last = stderr.rstrip("\n").splitlines()[-1]
    assert last.startswith("error: 2 of 4 models failed (corrupt: ") and "summary.json" in last
    _assert_same_reports(out, references)
    summary = json.loads((out / "summary.json").read_text())
    by_name = {m["name"]: m for m in summary["models"]}
    assert list(by_name) == ["bad", "weights", "corrupt", "wrong-shape"]  # the order given
    errors = {
        "corrupt": "not a model file",
        "wrong-shape": "weights do not fit the architecture: 'features.0.weight' has shape (16, 1, 5, 5), "
        "expected (16, 3, 5, 5)",
    }
    for name, error in errors.items():
        m = by_name[name]
        assert m["status"] == m["verdict"] == "failed" and error in m["error"] and "\n" not in m["error"]
        assert m["seconds"] is None and m["images_processed"] is None and not (out / name).exists()
    # the cost of each scanned model: its scan's seconds and images, as its report records them
    for name in ("bad", "weights"):
        m, ref = by_name[name], references[name]
        assert m["status"] == "done" and m["verdict"] == ref["verdict"] and m["flagged"] == ref["flagged"]
        assert m["seconds"] == _report(out / name)["run"]["seconds"] > 0 and m["wall_seconds"] >= m["seconds"]
        assert m["images_processed"] == ref["run"]["images_processed"] > 0
    assert (
        summary["images_processed"]
        == by_name["bad"]["images_processed"] + by_name["weights"]["images_processed"]
    )
    c = summary["counts"]
    assert (c["total"], c["done"], c["failed"], c["pending"], c["reused"]) == (4, 2, 2, 0, 0)
    assert summary["runner"] == {"backend": "in-process", "workers": 1, "threads": 1}
    # progress: a line per finished model, with models done of the total, flagged so far and the time left
    lines = [
        PROGRESS.fullmatch(line)
        for line in stderr.splitlines()
        if line.startswith("scan-many: ") and "/" in line
    ]
    assert (
        all(lines)
        and [m[1] for m in lines if m] == ["1", "2", "3", "4"]
        and {m[2] for m in lines if m} == {"4"}
    )
    seen = [m[6] for m in lines if m]
    assert seen == list(by_name)
    for match in lines:
        assert match is not None
        so_far = [by_name[n] for n in seen[: int(match[1])]]
        assert int(match[3]) == sum(m["verdict"] == "backdoored" for m in so_far)
        assert int(match[4] or 0) == sum(m["status"] == "failed" for m in so_far)
        assert (match[5] == "done") if match[1] == "4" else match[5].startswith("ETA ~")
        if by_name[match[6]]["status"] == "failed":
            assert match[7] == f"failed: {by_name[match[6]]['error']}"
    # the table, sorted by name, and the failures below it
    rows = [line.split()[0] for line in stdout.splitlines() if line.strip().split(" ")[0] in by_name]
    assert rows == ["bad", "corrupt", "weights", "wrong-shape"]
    assert (
        "failed: corrupt: not a model file" in stdout and "failed: wrong-shape: weights do not fit" in stdout
    )
    # the index links every report, flagged and failed models before clean ones
    index = (out / "index.html").read_text()
    assert 'href="bad/report.html"' in index and 'href="weights/report.html"' in index
    assert 'href="corrupt/report.html"' not in index
    flagged_first = [r.name for r in FleetSummary.load(out).sorted("verdict")]
    assert sorted(flagged_first, key=lambda n: index.index(f">{n}<")) == flagged_first


def test_worker_processes_match_scan(
    world: dict[str, Path], references: dict[str, dict[str, Any]], tmp_path: Path, cli: Cli
) -> None:
    summary = _scan_many_as_scan(
        cli, world, references, tmp_path, "--workers", "2", "--threads-per-worker", "1"
    )
    assert summary.runner == {"backend": "processes", "workers": 2, "threads": 1}
    assert {r.worker for r in summary.models} != {None} and all(r.attempts == 1 for r in summary.models)


# ---- dead workers -----------------------------------------------------------------------------------
def die(request: tuple[Path, Path, bool]) -> DetectionReport:
    """A job that kills its own worker process (as the OOM killer or a lost node would) on its first
    attempt, or on every attempt; each attempt adds its worker's pid to the marker file. Module level:
    worker processes and Ray tasks import it."""
    marker, report, always = request
    first = not marker.exists()
    with marker.open("a") as fh:
        fh.write(f"{os.getpid()}\n")
    if always or first:
        os.kill(os.getpid(), signal.SIGKILL)
    return DetectionReport.load(report)


def _dying_jobs(tmp_path: Path, world: dict[str, Path]) -> list[FleetJob]:
    """A job that dies once, and one that always dies; alive, they return a short scan's report."""
    report = tmp_path / "report"
    model = nc.load_model_dir(world["bad"]).model
    images = torch.rand(20, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    nc.scan(model, images, torch.arange(20) % 10, correct_only=False, samples=None, scan_labels=[0, 1, 2],
            max_steps=1, batches_per_step=1, batch_size=8).save(report)  # fmt: skip
    return [
        FleetJob(name, f"m-{name}", tmp_path / name, (tmp_path / f"{name}.pids", report, name == "always"))
        for name in ("once", "always")
    ]


def _check_dying(results: list[ModelResult], tmp_path: Path, *, failure: str) -> None:
    """With one retry: the job that died once was finished by a second worker, the one that always dies
    was tried twice (by two workers) and is reported failed; the summary says so."""
    once, always = results
    killed, finished = (tmp_path / "once.pids").read_text().split()
    assert once.status == "done" and once.worker is not None and once.worker.rsplit(":", 1)[1] == finished
    assert killed != finished
    assert len(set((tmp_path / "always.pids").read_text().split())) == 2
    assert always.status == "failed" and failure in (always.error or ""), always.error
    FleetSummary(results).save(tmp_path)
    summary = FleetSummary.load(tmp_path)
    assert [r.status for r in summary.models] == ["done", "failed"]
    assert (
        summary.counts["done"] == 1
        and summary.models[0].verdict == DetectionReport.load(tmp_path / "report").verdict
    )


def test_a_killed_worker_process_is_retried(world: dict[str, Path], tmp_path: Path) -> None:
    results = run_processes(_dying_jobs(tmp_path, world), die, workers=2, threads=1, retries=1)
    _check_dying(results, tmp_path, failure="worker process died (exit code -9; 2 attempts)")
    assert results[0].attempts == 2 and results[1].attempts == 2


# ---- a killed driver resumes --------------------------------------------------------------------------
def _stopping_in_second_model(monkeypatch: pytest.MonkeyPatch, stop: Callable[[], None]) -> None:
    """Make the fleet's second scan call ``stop`` after its second step, once that step's checkpoint is
    saved (a checkpoint at every step)."""
    from neuralcleanse.detection import NeuralCleanse

    scan_module = sys.modules["neuralcleanse.detection.scan"]  # the module (the package exports a function)
    original = scan_module.reverse_engineer
    calls = [0]

    def stopping(*args: Any, on_step: Any, **kwargs: Any) -> Any:
        calls[0] += 1

        def step(snap: Any) -> None:
            on_step(snap)  # the scan's own bookkeeping: progress and checkpoints
            if calls[0] == 2 and snap.active and snap.active[0].step == 2:
                stop()

        return original(*args, on_step=step, **kwargs)

    monkeypatch.setattr(scan_module, "reverse_engineer", stopping)
    defaults = NeuralCleanse.scan.__kwdefaults__
    assert defaults is not None
    monkeypatch.setitem(defaults, "checkpoint_every", 0.0)


#: a ``scan-many`` driver that pauses in its second model (argv[1]: a file it writes when it does), to
#: be killed there with SIGKILL: no handler, no ``finally`` runs
PAUSING_DRIVER = f"""
import sys, time
from pathlib import Path
import pytest
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_fleet import _stopping_in_second_model
from neuralcleanse.cli import main

def pause():
    Path(sys.argv[1]).write_text("paused")
    time.sleep(600)

_stopping_in_second_model(pytest.MonkeyPatch(), pause)
sys.exit(main(sys.argv[2:]))
"""


def _check_resumes(cli: Cli, fleet: list[str], references: dict[str, dict[str, Any]]) -> None:
    """The run in ``--out`` was stopped in its second model: its first model's report is kept, the second
    has a checkpoint and no report. ``--resume`` keeps the first and continues the second from its
    checkpoint, to the report a single uninterrupted scan gives."""
    out = Path(fleet[fleet.index("--out") + 1])
    assert [r.status for r in FleetSummary.load(out).models] == ["done", "pending"]
    assert (out / "weights.checkpoint" / "state.json").is_file() and not (out / "weights").exists()
    first = (out / "bad" / "report.json").read_text()
    code, _, stderr = cli(*fleet)  # without --resume the run's folder is not overwritten
    assert code == 2 and "--resume continues the run" in stderr
    code, _, stderr = cli(*fleet, "--resume")
    assert code == 0, stderr
    assert "2 models (1 finished earlier)" in stderr
    bad, weights = FleetSummary.load(out).models
    assert bad.reused and not bad.resumed and (out / "bad" / "report.json").read_text() == first
    assert weights.resumed and not weights.reused and not (out / "weights.checkpoint").exists()
    got, reference = _report(out / "weights"), references["weights"]
    assert got["flagged"] == reference["flagged"] and got["verdict"] == reference["verdict"]
    for a, b in zip(got["labels"], reference["labels"], strict=True):
        assert a["steps"] == b["steps"] and a["l1_norm"] == pytest.approx(b["l1_norm"], rel=1e-6)
    assert any(n.startswith("resumed from a checkpoint") for n in got["notes"])


def test_an_interrupted_run_resumes(
    world: dict[str, Path],
    references: dict[str, dict[str, Any]],
    tmp_path: Path,
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C in the second model: exit code 130, the summary saved with that model pending."""

    def interrupt() -> None:
        raise KeyboardInterrupt

    _stopping_in_second_model(monkeypatch, interrupt)
    fleet = _fleet(world, tmp_path / "fleet", "--threads-per-worker", "1")
    code, _, stderr = cli(*fleet)
    assert code == 130 and stderr.rstrip("\n").splitlines()[-1] in ("error: interrupted", "error: aborted")
    monkeypatch.undo()
    _check_resumes(cli, fleet, references)


def test_a_killed_driver_resumes(
    world: dict[str, Path], references: dict[str, dict[str, Any]], tmp_path: Path, cli: Cli
) -> None:
    """``kill -9`` of the ``scan-many`` process in its second model: nothing of it runs after the signal
    (the summary is the one saved when the first model finished), and --resume continues."""
    fleet = _fleet(world, tmp_path / "fleet", "--threads-per-worker", "1")
    paused = tmp_path / "paused"
    driver = _python(PAUSING_DRIVER, str(paused), *fleet)
    try:
        deadline = time.monotonic() + 300
        while not paused.exists():
            assert driver.poll() is None, driver.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the driver did not reach its second model in 5 minutes"
            time.sleep(0.1)
        os.kill(driver.pid, signal.SIGKILL)
        assert driver.wait(timeout=60) == -signal.SIGKILL
    finally:
        if driver.poll() is None:
            driver.kill()
        driver.communicate()
    _check_resumes(cli, fleet, references)


def test_resume_keeps_only_reports_of_the_same_settings_and_weights(
    world: dict[str, Path], tmp_path: Path, cli: Cli
) -> None:
    """--resume reuses a finished report only if the run's settings and the model's weights are those
    it was made with: otherwise the summary would describe a scan that was not run."""
    import shutil

    model = tmp_path / "models" / "m"
    shutil.copytree(world["bad"], model)
    out = tmp_path / "fleet"
    fleet = [
        "scan-many",
        str(model),
        "--data",
        str(world["data"]),
        *SCAN,
        "--labels",
        "0,1",
        "--out",
        str(out),
    ]
    code, _, stderr = cli(*fleet)
    assert code == 0, stderr
    first = (out / "m" / "report.json").read_text()
    code, _, stderr = cli(*fleet, "--resume", "--seed", "7")
    assert code == 2 and "its run scanned with seed = 0, this one with 7" in stderr
    shutil.rmtree(model)
    shutil.copytree(world["clean"], model)  # another model in the same place
    code, _, stderr = cli(*fleet, "--resume")
    assert code == 2 and "holds the scan of an earlier version of" in stderr and "--force" in stderr
    assert (out / "m" / "report.json").read_text() == first  # nothing replaced by a refused run
    # --force replaces the run: the report of a model it no longer lists goes, nothing else of the folder
    shutil.copytree(world["clean"], tmp_path / "models" / "n")
    (out / "notes.txt").write_text("keep")
    (out / "mine").mkdir()
    fleet[1] = str(tmp_path / "models" / "n")
    code, _, stderr = cli(*fleet, "--force")
    assert code == 0 and "removed" in stderr and not (out / "m").exists(), stderr
    assert (out / "n" / "report.json").is_file() and (out / "notes.txt").read_text() == "keep"
    assert (out / "mine").is_dir()


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux: /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _is_worker(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return b"multiprocessing" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")  # a zombie is dead, only not yet reaped
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the worker through /proc")
def test_workers_end_with_a_driver_killed_with_sigkill(world: dict[str, Path], tmp_path: Path) -> None:
    """``kill -9`` of ``scan-many --workers``: its worker stops mid-model instead of finishing it and
    writing a report the summary never records."""
    out = tmp_path / "fleet"
    long_scan = ["--samples", "30", "--seed", "0", "--device", "cpu"]
    args = ["scan-many", str(world["bad"]), "--data", str(world["data"]), *long_scan, "--workers", "1"]
    driver = _python("import sys; from neuralcleanse.cli import main; sys.exit(main(sys.argv[1:]))",
                     *args, "--threads-per-worker", "1", "--out", str(out))  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (workers := [w for w in _children(driver.pid) if _is_worker(w)]):
            assert driver.poll() is None, driver.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no worker process started in 2 minutes"
            time.sleep(0.2)
        time.sleep(4)  # into its model
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=60)
        deadline = time.monotonic() + 30
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers), "a worker outlived its killed driver"
    finally:
        if driver.poll() is None:
            driver.kill()
        driver.communicate()
        for w in _children(driver.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(w, signal.SIGKILL)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else None
    if summary is not None:  # what the driver last recorded is still true: no report came after it
        assert [m["status"] for m in summary["models"]] == ["done" if (out / "bad").exists() else "pending"]


# ---- Ray ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_instance() -> Any:
    """One local Ray instance for the module (``--ray`` and ``run_ray`` use a Ray this process already
    has). Its workers import this file's job functions, so the tests folder is on their path."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'neuralcleanse[ray]')")
    tests = str(Path(__file__).parent)
    env = {
        "RAY_AUTH_MODE": "disabled",
        "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as exc:  # noqa: BLE001 (any failure to start is a reason to skip, stated)
        pytest.skip(f"a local Ray instance could not start: {type(exc).__name__}: {exc}")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield ray
    ray.shutdown()


def test_ray_matches_scan(
    ray_instance: Any, world: dict[str, Path], references: dict[str, dict[str, Any]], tmp_path: Path, cli: Cli
) -> None:
    summary = _scan_many_as_scan(cli, world, references, tmp_path, "--ray", "--cpus-per-task", "1")
    assert summary.runner["backend"] == "ray" and summary.runner["threads"] == 1
    assert all(r.worker and r.worker.rsplit(":", 1)[1] != str(os.getpid()) for r in summary.models)
    assert ray_instance.is_initialized()  # a Ray the caller started is left running


def test_ray_retries_a_killed_worker(ray_instance: Any, world: dict[str, Path], tmp_path: Path) -> None:
    """Ray's task retries (max_retries): the worker process really dies, Ray runs the task again."""
    results = run_ray(_dying_jobs(tmp_path, world), die, retries=1)
    _check_dying(results, tmp_path, failure="Ray task failed (")


def test_a_task_no_ray_node_can_hold_is_refused(
    ray_instance: Any, world: dict[str, Path], tmp_path: Path, cli: Cli
) -> None:
    """Ray would wait forever for a node with 4 CPUs: refused in one line before anything is written."""
    out = tmp_path / "o"
    code, _, stderr = cli("scan-many", str(world["bad"]), "--ray", "--cpus-per-task", "4", "--out", str(out))
    assert code == 2 and stderr.count("\n") == 1 and "no Ray node has 4 CPUs" in stderr, stderr
    assert "the largest have 2 CPUs" in stderr and not out.exists()


def _command(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``neuralcleanse ARGS...`` run as a user runs it, in a new process."""
    exe = Path(sys.executable).with_name("neuralcleanse")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "neuralcleanse"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.run(
        [*cmd, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_ray_started_for_the_run_matches_scan(
    world: dict[str, Path], references: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """``--ray`` in a process without Ray: a local instance started for the run, shut down after it."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'neuralcleanse[ray]')")
    out = tmp_path / "fleet"
    done = _command(*_fleet(world, out, "--ray", "--cpus-per-task", "1"))
    if done.returncode != 0 and "a local Ray instance could not start" in done.stderr:
        pytest.skip(done.stderr.strip().splitlines()[-1])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 models, on Ray (local instance, 1 CPU per task)" in done.stderr
    _assert_same_reports(out, references)
    assert FleetSummary.load(out).runner["address"] == "local instance"


def test_ray_address_uses_a_running_cluster_with_the_tasks_cpus_as_threads(
    ray_instance: Any, world: dict[str, Path], tmp_path: Path
) -> None:
    """``--ray-address`` of the module's Ray (a cluster this process started): tasks of 2 CPUs scan with
    2 threads, as ``scan`` with 2 threads does; the cluster is left running."""
    address = ray_instance.get_runtime_context().gcs_address
    references = {"bad": _single_scan(world, tmp_path / "ref", "bad", *SCAN, threads=2)}
    out = tmp_path / "fleet"
    done = _command(
        "scan-many", str(world["bad"]), "--data", str(world["data"]), *SCAN, "--out", str(out),
        "--ray-address", address, "--cpus-per-task", "2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_reports(out, references, threads=2)
    summary = FleetSummary.load(out)
    assert summary.runner == {
        "backend": "ray", "address": address, "cpus_per_task": 2, "gpus_per_task": 0, "threads": 2
    }  # fmt: skip
    assert ray_instance.is_initialized() and ray_instance.cluster_resources().get("CPU") == 2


#: ``neuralcleanse`` in an interpreter where Ray is not installed (its import fails as a missing module's
#: does); argv[1]: a JSON list of command lines, whose exit codes it prints
WITHOUT_RAY = """
import json, sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "ray":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
from neuralcleanse.cli import main
print(json.dumps([main(args) for args in json.loads(sys.argv[1])]))
"""


def test_ray_missing_is_one_line(world: dict[str, Path], tmp_path: Path) -> None:
    runs = [
        ["scan-many", str(world["bad"]), "--ray", "--out", str(tmp_path / "a")],
        ["scan-many", str(world["bad"]), "--ray-address", "auto", "--out", str(tmp_path / "b")],
    ]
    stdout, stderr = _python(WITHOUT_RAY, json.dumps(runs)).communicate(timeout=300)
    assert json.loads(stdout.splitlines()[-1]) == [2, 2], stderr
    hint = "needs Ray, which is not installed: pip install 'neuralcleanse[ray]'"
    assert stderr == f"error: --ray {hint}\nerror: --ray-address {hint}\n"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ---- sources, manifests, names, the summary ----------------------------------------------------------
def test_manifests_csv_and_jsonl(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    csv = tmp_path / "m" / "models.csv"
    csv.write_text(
        "path,name,Input-Shape,mean,allow_torchscript,source,reference,data\n"
        "a.pt2,,,,,,,\n"
        "/abs/b.safetensors,bee,1x28x28,0.5,yes,3,r1;r2,imgs/\n"
    )
    a, b = read_manifest(csv)
    assert a.path == tmp_path / "m" / "a.pt2" and a.options == {} and a.origin == f"{csv} line 2"
    assert b.path == Path("/abs/b.safetensors") and b.name == "bee"
    assert b.options == {
        "input_shape": "1x28x28", "mean": "0.5", "allow_torchscript": True, "source_label": 3,
        "references": (tmp_path / "m" / "r1", tmp_path / "m" / "r2"), "data": tmp_path / "m" / "imgs",
    }  # fmt: skip
    jsonl = tmp_path / "models.jsonl"
    jsonl.write_text(
        '{"path": "c.pt2", "input_shape": [3, 32, 32], "mean": [0.5, 0.25, 0], "arch_kwargs": {"classes": 43}}\n'
        "\n"
        '{"path": "d.pt2", "labels": [0, 3], "reference": ["r"], "output_key": 0}\n'
    )
    c, d = read_manifest(jsonl)
    assert c.options == {"input_shape": "3x32x32", "mean": "0.5,0.25,0.0", "arch_kwargs": '{"classes": 43}'}
    # an architecture's file is relative to the manifest's folder too (it was to the working directory)
    csv.write_text("path,arch\na.pt,../arch/net.py:Net\nb.pt,mnist\nc.pt,pkg.nets:Net\nd.pt,/abs/n.py:N\n")
    assert [e.options["arch"] for e in read_manifest(csv)] == [
        f"{tmp_path / 'm' / '..' / 'arch' / 'net.py'}:Net",
        "mnist",
        "pkg.nets:Net",
        "/abs/n.py:N",
    ]
    assert d.options == {"labels": "0,3", "references": (tmp_path / "r",), "output_key": "0"}
    # a JSON number that is a whole number is an index, as 0 is
    jsonl.write_text('{"path": "e.pt2", "output_key": 0.0}\n{"path": "f.pt2", "output_key": "logits"}\n')
    assert [e.options["output_key"] for e in read_manifest(jsonl)] == ["0", "logits"]
    refused = [
        (csv, "path,colour\na.pt2,red\n", "unknown column 'colour'"),
        (csv, "name\nx\n", "no path column"),
        (csv, "path,source\na.pt2,two\n", "line 2: source must be an integer"),
        (csv, "path,input_range\na.pt2,0-9\n", "line 2: input_range must be one of 0-1, 0-255"),
        (csv, "path\n", "lists no models"),
        (csv, "path,Path\na.pt2,b.pt2\n", "column 'path' appears twice"),
        (jsonl, '{"path": "a.pt2"}\n[1]\n', "line 2: not a JSON object"),
        (jsonl, '{"path": "a.pt2", "colour": 1}\n', "line 1: unknown column 'colour'"),
        (jsonl, '{"path": "a.pt2", "Input-Shape": "1x28x28", "input_shape": [1, 28, 28]}\n',
         "line 1: column 'input_shape' appears twice"),
        (jsonl, '{"path": "a.pt2", "mean": []}\n', r"line 1: mean must be numbers like 0.5,0.5,0.5 .*, got \[\]"),
        (jsonl, '{"path": "a.pt2", "labels": [1.5]}\n', r"line 1: labels must be labels like 0,3,5 .*, got \[1.5\]"),
        (jsonl, '{"path": "a.pt2", "input_shape": [1, true, 28]}\n', "line 1: input_shape must be CxHxW"),
        (jsonl, '{"path": "a.pt2", "output_key": 1.5}\n', "line 1: output_key must be an integer, got '1.5'"),
        (jsonl, '{"path": "a.pt2", "output_key": -1}\n', "line 1: --output-key -1: give the index counted from 0"),
    ]  # fmt: skip
    for manifest, text, message in refused:
        manifest.write_text(text)
        with pytest.raises(SettingsError, match=message):
            read_manifest(manifest)
    with pytest.raises(SettingsError, match="manifest not found"):
        read_manifest(tmp_path / "none.jsonl")


def test_folders_are_searched_and_names_are_unique(tmp_path: Path) -> None:
    for rel in ("a/model.pt2", "b/model.pt2", "b/notes.txt", "c/card.json", "c/model.safetensors",
                "scans/s/report.json", "scans/s/triggers/label_0000.safetensors", ".hidden/x.pt2",
                "d/x.safetensors"):  # fmt: skip
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    found = find_models(tmp_path)
    assert found == [
        tmp_path / "a/model.pt2",
        tmp_path / "b/model.pt2",
        tmp_path / "c",
        tmp_path / "d/x.safetensors",
    ]
    entries = collect_models([tmp_path, tmp_path / "a" / "model.pt2"])  # listed twice: scanned once
    assert [e.path for e in entries] == found
    assert unique_names(entries) == ["a-model", "b-model", "c", "x"]
    twins = [ModelEntry(tmp_path / "a/model.pt2", {"arch": "x"}), ModelEntry(tmp_path / "a/model.pt2")]
    first, second = unique_names(twins)
    assert first.startswith("a-model-") and second.startswith("a-model-") and first != second
    with pytest.raises(SettingsError, match="two models are named 'm'"):
        unique_names([ModelEntry(tmp_path / "x", name="m"), ModelEntry(tmp_path / "y", name="m")])
    with pytest.raises(SettingsError, match="name '../up' must be"):
        unique_names([ModelEntry(tmp_path / "x", name="../up")])
    for taken in ("x.checkpoint", "summary.json", "INDEX.html"):  # the fleet folder's own files
        with pytest.raises(SettingsError, match=f"name '{re.escape(taken)}' is the fleet's own"):
            unique_names([ModelEntry(tmp_path / "x", name=taken)])
    (tmp_path / "e" / "x.checkpoint").mkdir(parents=True)  # a model folder of that name gets another
    assert unique_names([ModelEntry(tmp_path / "e" / "x.checkpoint")]) == ["x_checkpoint"]
    with pytest.raises(ModelError, match="no model files"):
        collect_models([tmp_path / "scans"])
    with pytest.raises(ModelError, match="model file not found"):
        collect_models([tmp_path / "none.pt2"])
    (tmp_path / "m.csv").write_text("path\na/model.pt2\nnone.pt2\n")
    with pytest.raises(ModelError, match=r"m.csv line 3: .*none.pt2: model file not found"):
        collect_models([tmp_path / "m.csv"])
    # an architecture file is checked before any scan starts, relative to the manifest
    (tmp_path / "m.csv").write_text("path,arch\na/model.pt2,nets/net.py:Net\n")
    with pytest.raises(SettingsError, match=r"m.csv line 2: architecture file .*nets/net.py not found"):
        collect_models([tmp_path / "m.csv"])
    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "net.py").write_text("")
    assert collect_models([tmp_path / "m.csv"])[0].options["arch"] == f"{tmp_path / 'nets' / 'net.py'}:Net"


def test_summary_sorts_and_round_trips(tmp_path: Path) -> None:
    def result(name: str, verdict: str, seconds: float | None, index: float | None = None) -> ModelResult:
        status = "failed" if verdict == "failed" else "done"
        return ModelResult(name, f"/m/{name}", name, status, verdict, seconds=seconds, anomaly_index=index)

    models = [
        result("a", "clean", 3.0),
        result("b", "backdoored", 1.0, 2.5),
        result("c", "failed", None),
        result("d", "backdoored", 2.0, 4.0),
        result("e", "inconclusive", 9.0),
    ]
    summary = FleetSummary(models, {"backend": "in-process"}, {"samples": 30}, "now", 12.0)
    assert [r.name for r in summary.sorted("verdict")] == ["d", "b", "e", "c", "a"]
    assert [r.name for r in summary.sorted("name")] == ["a", "b", "c", "d", "e"]
    assert [r.name for r in summary.sorted("time")] == ["e", "a", "d", "b", "c"]
    summary.save(tmp_path)
    back = FleetSummary.load(tmp_path)
    assert back.models == models and back.runner == summary.runner and back.counts["backdoored"] == 2
    index = (tmp_path / "index.html").read_text()
    assert index.index(">d<") < index.index(">e<") < index.index(">a<")
    assert 'href="c/report.html"' not in index  # a failed model has no report to link
    with pytest.raises(DataError, match="none: fleet summary not found"):
        FleetSummary.load(tmp_path / "none")
    (tmp_path / "summary.json").write_text('{"format_version": 1')
    with pytest.raises(DataError, match=r"summary.json: cannot read fleet summary \(Expecting"):
        FleetSummary.load(tmp_path)


def test_worker_threads_share_the_cores_within_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    from neuralcleanse.fleet import available_cpus, worker_threads

    cores = available_cpus()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert worker_threads(1) == cores and worker_threads(cores * 4) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's per-process limit holds for each worker
    assert worker_threads(1) == 1
    for ignored in ("0", "two", ""):
        monkeypatch.setenv("OMP_NUM_THREADS", ignored)
        assert worker_threads(1) == cores


def test_one_run_at_a_time_writes_an_output(world: dict[str, Path], tmp_path: Path, cli: Cli) -> None:
    """A second run writing the same --out while the first runs is refused at once (not after its work)."""
    from neuralcleanse._io import run_lock

    scan_out, fleet_out = tmp_path / "scan", tmp_path / "fleet"
    with run_lock(scan_out, option="--out"), run_lock(fleet_out, option="--out"):  # the first runs
        code, _, err = cli(
            "scan", str(world["bad"]), "--data", str(world["data"]), *SCAN, "--out", str(scan_out)
        )
        assert code == 2 and f"--out {scan_out}: another neuralcleanse run is writing it now" in err
        code, _, err = cli(*_fleet(world, fleet_out))
        assert code == 2 and f"--out {fleet_out}: another neuralcleanse run is writing it now" in err
        assert not scan_out.exists() and not (fleet_out.exists() and any(fleet_out.iterdir()))
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".lock")]  # no lock left behind
    code, _, err = cli("scan", str(world["bad"]), "--data", str(world["data"]), *SCAN, "--out", str(scan_out))
    assert code == 0, err
