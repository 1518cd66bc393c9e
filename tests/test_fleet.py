"""``scan-many`` and the fleet runners: the same report as ``scan`` in every runner, failures and dead
workers that do not stop the fleet, resuming a killed run, manifests and the summary.

Tiny models (one epoch on a few hundred digits) and short scans (3 steps, 30 images) keep this file
fast; Ray is started once for the module (a local instance, as ``--ray`` starts one).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import neuralcleanse as nc
from neuralcleanse.cli import main
from neuralcleanse.detection import DetectionReport
from neuralcleanse.errors import ModelError, SettingsError
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
    paths["root"] = root
    return paths


def _scan_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _single_scan(world: dict[str, Path], out: Path, model: str, *args: str) -> dict[str, Any]:
    """``scan`` of one model with one torch thread (the thread count fleet workers use below)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
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


def _assert_same_reports(out: Path, references: dict[str, dict[str, Any]]) -> None:
    """Every report in ``out`` equals the single scan's: norms, flags, indices, steps, notes, data, model;
    only the seconds differ."""
    for name, reference in references.items():
        got = _report(out / name)
        assert got["run"]["threads"] == reference["run"]["threads"] == 1
        assert _without_timing(got) == _without_timing(reference), name
        assert (out / name / "report.html").is_file()


def _fleet(world: dict[str, Path], out: Path, *args: str) -> list[str]:
    return [
        "scan-many", str(world["bad"]), str(world["manifest"]), "--data", str(world["data"]), *SCAN,
        "--out", str(out), *args,
    ]  # fmt: skip


# ---- locally ----------------------------------------------------------------------------------------
def test_in_process_matches_scan_and_a_bad_model_does_not_stop_the_others(
    world: dict[str, Path],
    references: dict[str, dict[str, Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "fleet"
    threads = torch.get_num_threads()
    args = [*_fleet(world, out, "--threads-per-worker", "1", "--sort", "name"), str(world["corrupt"])]
    code, stdout, stderr = _scan_cli(capsys, *args)
    assert torch.get_num_threads() == threads  # the worker's thread count is restored
    # one corrupt model: reported failed with its one-line error, the others scanned; exit code 1
    assert code == 1
    last = stderr.rstrip("\n").splitlines()[-1]
    assert last.startswith("error: 1 of 3 models failed (corrupt: ") and "summary.json" in last
    _assert_same_reports(out, references)
    summary = json.loads((out / "summary.json").read_text())
    by_name = {m["name"]: m for m in summary["models"]}
    assert [m["name"] for m in summary["models"]] == ["bad", "weights", "corrupt"]  # the order given
    assert by_name["corrupt"]["status"] == "failed" and "not a model file" in by_name["corrupt"]["error"]
    assert "\n" not in by_name["corrupt"]["error"]
    for name in ("bad", "weights"):
        m, ref = by_name[name], references[name]
        assert m["status"] == "done" and m["verdict"] == ref["verdict"] and m["flagged"] == ref["flagged"]
        assert m["seconds"] == _report(out / name)["run"]["seconds"]
        assert m["images_processed"] == ref["run"]["images_processed"] > 0
    assert summary["counts"]["total"] == 3 and summary["counts"]["failed"] == 1
    assert summary["runner"] == {"backend": "in-process", "workers": 1, "threads": 1}
    # progress: a line per finished model (stderr is not a terminal here), with the count and flags
    assert "scan-many: 1/3 models done (" in stderr and "scan-many: 3/3 models done" in stderr
    # the table, sorted by name, and the failure below it
    rows = [line.split()[0] for line in stdout.splitlines() if line.strip().split(" ")[0] in by_name]
    assert rows == ["bad", "corrupt", "weights"]
    assert "failed: corrupt: not a model file" in stdout
    # the index links every report, flagged and failed models before clean ones
    index = (out / "index.html").read_text()
    assert 'href="bad/report.html"' in index and 'href="weights/report.html"' in index
    flagged_first = [r.name for r in FleetSummary.load(out).sorted("verdict")]
    assert sorted(flagged_first, key=lambda n: index.index(f">{n}<")) == flagged_first


def test_worker_processes_match_scan(
    world: dict[str, Path],
    references: dict[str, dict[str, Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "fleet"
    code, _, stderr = _scan_cli(capsys, *_fleet(world, out, "--workers", "2", "--threads-per-worker", "1"))
    assert code == 0, stderr
    _assert_same_reports(out, references)
    summary = FleetSummary.load(out)
    assert summary.runner == {"backend": "processes", "workers": 2, "threads": 1}
    assert {r.worker for r in summary.models} != {None} and all(r.attempts == 1 for r in summary.models)


# ---- dead workers -----------------------------------------------------------------------------------
def die(request: tuple[Path, Path, bool]) -> DetectionReport:
    """A job that kills its own worker process (as the OOM killer or a lost node would): on its first
    attempt (the marker then holds the killed worker's pid), or on every attempt. Module level: worker
    processes and Ray tasks import it."""
    marker, report, always = request
    if always or not marker.exists():
        marker.write_text(str(os.getpid()))
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
        FleetJob("once", "m1", tmp_path / "once", (tmp_path / "marker", report, False)),
        FleetJob("always", "m2", tmp_path / "always", (tmp_path / "marker-always", report, True)),
    ]


def _check_dying(results: list[ModelResult], marker: Path, *, failure: str) -> None:
    once, always = results
    assert once.status == "done" and once.worker is not None
    assert once.worker.rsplit(":", 1)[1] != marker.read_text()  # finished by another process than the killed
    assert always.status == "failed" and failure in (always.error or ""), always.error


def test_a_killed_worker_process_is_retried(world: dict[str, Path], tmp_path: Path) -> None:
    results = run_processes(_dying_jobs(tmp_path, world), die, workers=2, threads=1, retries=1)
    _check_dying(results, tmp_path / "marker", failure="worker process died (exit code -9; 2 attempts)")
    assert results[0].attempts == 2 and results[1].attempts == 2


# ---- a killed driver resumes --------------------------------------------------------------------------
def test_a_killed_run_resumes(
    world: dict[str, Path],
    references: dict[str, dict[str, Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The run is interrupted in its second model after two steps (checkpointed at every step here);
    --resume keeps the first model's report and continues the second from its checkpoint, to the report
    a single uninterrupted scan gives."""
    from neuralcleanse.detection import NeuralCleanse

    scan_module = sys.modules["neuralcleanse.detection.scan"]  # the module (the package exports a function)
    original = scan_module.reverse_engineer
    calls = [0]

    def killed_in_second_model(*args: Any, on_step: Any, **kwargs: Any) -> Any:
        calls[0] += 1

        def step(snap: Any) -> None:
            on_step(snap)  # the scan's own bookkeeping: progress and checkpoints
            if calls[0] == 2 and snap.active and snap.active[0].step == 2:
                raise KeyboardInterrupt

        return original(*args, on_step=step, **kwargs)

    monkeypatch.setattr(scan_module, "reverse_engineer", killed_in_second_model)
    monkeypatch.setitem(NeuralCleanse.scan.__kwdefaults__, "checkpoint_every", 0.0)
    out = tmp_path / "fleet"
    fleet = _fleet(world, out, "--threads-per-worker", "1")
    code, _, stderr = _scan_cli(capsys, *fleet)
    assert code == 130 and stderr.rstrip("\n").splitlines()[-1] in ("error: interrupted", "error: aborted")
    summary = FleetSummary.load(out)
    assert [r.status for r in summary.models] == ["done", "pending"]
    assert (out / "weights.checkpoint" / "state.json").is_file() and not (out / "weights").exists()
    first = (out / "bad" / "report.json").read_text()
    monkeypatch.setattr(scan_module, "reverse_engineer", original)

    code, _, stderr = _scan_cli(capsys, *fleet)  # without --resume the run's folder is not overwritten
    assert code == 2 and "--resume continues the run" in stderr
    code, stdout, stderr = _scan_cli(capsys, *fleet, "--resume")
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
    ray_instance: Any,
    world: dict[str, Path],
    references: dict[str, dict[str, Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "fleet"
    code, _, stderr = _scan_cli(capsys, *_fleet(world, out, "--ray", "--cpus-per-task", "1"))
    assert code == 0, stderr
    _assert_same_reports(out, references)
    summary = FleetSummary.load(out)
    assert summary.runner["backend"] == "ray" and summary.runner["threads"] == 1
    assert all(r.worker and r.worker.rsplit(":", 1)[1] != str(os.getpid()) for r in summary.models)
    assert ray_instance.is_initialized()  # a Ray the caller started is left running


def test_ray_retries_a_killed_worker(ray_instance: Any, world: dict[str, Path], tmp_path: Path) -> None:
    results = run_ray(_dying_jobs(tmp_path, world), die, retries=1)
    _check_dying(results, tmp_path / "marker", failure="Ray task failed (")


def test_a_task_no_ray_node_can_hold_is_refused(
    ray_instance: Any, world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ray would wait forever for a node with 4 CPUs: refused in one line before anything is written."""
    out = tmp_path / "o"
    code, _, stderr = _scan_cli(
        capsys, "scan-many", str(world["bad"]), "--ray", "--cpus-per-task", "4", "--out", str(out)
    )
    assert code == 2 and stderr.count("\n") == 1 and "no Ray node has 4 CPUs" in stderr, stderr
    assert "the largest have 2 CPUs" in stderr and not out.exists()


def test_ray_missing_is_one_line(
    world: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    code, _, stderr = _scan_cli(capsys, "scan-many", str(world["bad"]), "--ray", "--out", str(tmp_path / "o"))
    assert code == 2 and stderr.count("\n") == 1
    assert stderr == "error: --ray needs Ray, which is not installed: pip install 'neuralcleanse[ray]'\n"
    assert not (tmp_path / "o").exists()


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
        '{"path": "d.pt2", "labels": [0, 3], "reference": ["r"]}\n'
    )
    c, d = read_manifest(jsonl)
    assert c.options == {"input_shape": "3x32x32", "mean": "0.5,0.25,0.0", "arch_kwargs": '{"classes": 43}'}
    assert d.options == {"labels": "0,3", "references": (tmp_path / "r",)}
    bad = [
        ("path,colour\na.pt2,red\n", "unknown column 'colour'"),
        ("name\nx\n", "no path column"),
        ("path,source\na.pt2,two\n", "line 2: source must be an integer"),
        ("path,input_range\na.pt2,0-9\n", "line 2: input_range must be one of 0-1, 0-255"),
        ("path\n", "lists no models"),
    ]
    for text, message in bad:
        csv.write_text(text)
        with pytest.raises(SettingsError, match=message):
            read_manifest(csv)
    jsonl.write_text('{"path": "a.pt2"}\n[1]\n')
    with pytest.raises(SettingsError, match="line 2: not a JSON object"):
        read_manifest(jsonl)
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
    with pytest.raises(ModelError, match="no model files"):
        collect_models([tmp_path / "scans"])
    with pytest.raises(ModelError, match="model file not found"):
        collect_models([tmp_path / "none.pt2"])
    (tmp_path / "m.csv").write_text("path\na/model.pt2\nnone.pt2\n")
    with pytest.raises(ModelError, match=r"m.csv line 3: .*none.pt2: model file not found"):
        collect_models([tmp_path / "m.csv"])


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
