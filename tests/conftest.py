"""Shared, seeded fixtures: the embedded sample and tiny models trained in seconds."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import torch
from filelock import FileLock

import neuralcleanse as nc
from neuralcleanse import (
    BadNets,
    DatasetSplits,
    DetectionReport,
    ModelBundle,
    Recipe,
    TrainSettings,
    load_dataset,
    train_recipe,
)

#: at most this many test processes (pytest-xdist's ``-n auto``): each trains its own session models
MAX_WORKERS = 4


def _cores() -> int:
    """The cores this process may run on (its affinity, not every core of the host)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    return max(1, min(MAX_WORKERS, _cores()))


def _share_the_cores() -> None:
    """Under pytest-xdist, each test process takes its share of the cores: two processes of two threads
    each on two cores wait on each other far longer than they compute."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, _cores() // workers))


_share_the_cores()

T = TypeVar("T")


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """A directory every test process of this run sees (``None`` without pytest-xdist)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return None
    return tmp_path_factory.getbasetemp().parent / "session-fixtures"


def built_once(shared: Path | None, name: str, build: Callable[[], T]) -> T:
    """``build()``, run by the first test process that needs it and read back by the others.

    pytest-xdist gives each process its own session fixtures, so each would train and scan the same
    seeded models again. The value is pickled into this run's own temporary directory by this test
    session and read back only from there: no file from outside is unpickled.
    """
    if shared is None:
        return build()
    shared.mkdir(parents=True, exist_ok=True)
    path = shared / f"{name}.pickle"
    with FileLock(f"{path}.lock"):
        if path.exists():
            value: T = pickle.loads(path.read_bytes())
            return value
        value = build()
        path.write_bytes(pickle.dumps(value))
        return value


#: few epochs on the embedded sample: seconds on 2 CPU cores, still > 93% clean accuracy
FAST = TrainSettings(epochs=4, batch_size=64, seed=0)

#: the labels the relative scan covers
RELATIVE_LABELS = [0, 1, 2, 3, 4, 5]


@pytest.fixture(scope="session")
def mnist_sample() -> DatasetSplits:
    return load_dataset("mnist-sample")


@pytest.fixture(scope="session")
def clean_model(mnist_sample: DatasetSplits, shared_dir: Path | None) -> ModelBundle:
    return built_once(
        shared_dir,
        "clean_model",
        lambda: train_recipe(Recipe(training=FAST), data=mnist_sample, device="cpu"),
    )


@pytest.fixture(scope="session")
def badnets_model(mnist_sample: DatasetSplits, shared_dir: Path | None) -> ModelBundle:
    recipe = Recipe(training=FAST, attack=BadNets(target=0, poison_rate=0.1))
    return built_once(
        shared_dir, "badnets_model", lambda: train_recipe(recipe, data=mnist_sample, device="cpu")
    )


@pytest.fixture(scope="session")
def badnets_report(
    badnets_model: ModelBundle, mnist_sample: DatasetSplits, shared_dir: Path | None
) -> DetectionReport:
    return built_once(
        shared_dir, "badnets_report", lambda: nc.scan(badnets_model.model, mnist_sample.test, seed=0)
    )


@pytest.fixture(scope="session")
def clean_report(
    clean_model: ModelBundle, mnist_sample: DatasetSplits, shared_dir: Path | None
) -> DetectionReport:
    return built_once(
        shared_dir, "clean_report", lambda: nc.scan(clean_model.model, mnist_sample.test, seed=0)
    )


@pytest.fixture(scope="session")
def clean_report_full(
    clean_model: ModelBundle, mnist_sample: DatasetSplits, shared_dir: Path | None
) -> DetectionReport:
    """The clean model scanned with every label to the end: a scan that can serve as a reference."""
    return built_once(
        shared_dir,
        "clean_report_full",
        lambda: nc.scan(clean_model.model, mnist_sample.test, seed=0, screening=False),
    )


@pytest.fixture(scope="session")
def relative_report(
    badnets_model: ModelBundle,
    mnist_sample: DatasetSplits,
    clean_report_full: DetectionReport,
    shared_dir: Path | None,
) -> DetectionReport:
    """The BadNets model scanned against the clean model's full scan as a trusted reference, on six
    labels (each label's optimisation is its own: the others would only add time)."""
    reference = nc.Reference.from_reports([clean_report_full])
    return built_once(
        shared_dir,
        "relative_report",
        lambda: nc.scan(
            badnets_model.model, mnist_sample.test, seed=0, reference=reference, scan_labels=RELATIVE_LABELS
        ),
    )
