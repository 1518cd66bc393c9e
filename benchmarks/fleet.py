"""How ``scan-many`` scales on this machine: the same fleet of models with 1 and 2 worker processes.

    python benchmarks/fleet.py                 # 8 models, 1 and 2 worker processes
    python benchmarks/fleet.py --models 12 --runners workers1,workers2,ray2   # and a local Ray

Trains (once; cached under ``--cache``) a fleet of small models with the library's recipes — the
paper's ``mnist`` network on the embedded MNIST sample, a few epochs each, with different seeds and
attacks (clean controls, BadNets with several targets and triggers, a blended trigger) — then runs
``neuralcleanse scan-many`` on all of them, as a user would (a fresh process per run), with each runner:

* ``workers1``: ``--workers 1`` (one process, all the machine's cores as its torch threads);
* ``workers2``: ``--workers 2`` (two processes, the cores shared out: one thread each on 2 cores);
* ``workers1-1thread``: one process of one thread (what one of ``workers2``'s workers does alone);
* ``ray2``: ``--ray`` (a local Ray instance started for the run, one CPU and thread per task).

``--zoo DIR`` scans the first ``--models`` model directories of a zoo built by ``neuralcleanse zoo --out
DIR`` instead (the default zoo's 8-epoch models); ``--dry-run`` prints the models and commands without
training or scanning anything.

It prints each run's wall time, the sum of the models' scan seconds, images through the models per
second, the verdicts, and the ratio of the 1-worker wall time to the others' — measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import neuralcleanse as nc

#: (name, attack) of the fleet, in order; ``--models`` takes the first N (repeating with new seeds)
FLEET: list[tuple[str, nc.BadNets | None]] = [
    ("clean", None),
    ("badnets-t0", nc.BadNets(target=0, poison_rate=0.1)),
    ("clean", None),
    ("badnets-t3-topleft", nc.BadNets(target=3, poison_rate=0.1, trigger="square:size=4,at=top-left")),
    ("clean", None),
    ("badnets-t7-checker", nc.BadNets(target=7, poison_rate=0.1, trigger="square:size=5,pattern=checkerboard")),
    ("blend-t5", nc.BadNets(target=5, poison_rate=0.1, trigger="blend:pattern=random,alpha=0.1,seed=0")),
    ("badnets-t9-random", nc.BadNets(target=9, poison_rate=0.1, trigger="square:size=4,pattern=random,seed=3")),
]  # fmt: skip

RUNNERS = {
    "workers1": ["--workers", "1"],
    "workers2": ["--workers", "2"],
    "workers1-1thread": ["--workers", "1", "--threads-per-worker", "1"],
    "inprocess": [],
    "ray2": ["--ray", "--cpus-per-task", "1"],
}


def fleet_path(cache: Path, i: int, epochs: int) -> Path:
    """Where the fleet's model ``i`` is cached (its seed is ``i``)."""
    return cache / f"{i:02d}-{FLEET[i % len(FLEET)][0]}-e{epochs}-s{i}"


def train_fleet(count: int, epochs: int, cache: Path) -> list[Path]:
    """``count`` model directories (trained once, then read from ``cache``)."""
    data = nc.load_dataset("mnist-sample")
    paths = []
    for i in range(count):
        attack = FLEET[i % len(FLEET)][1]
        path = fleet_path(cache, i, epochs)
        if not (path / "card.json").is_file():
            recipe = nc.Recipe(training=nc.TrainSettings(epochs=epochs, seed=i), attack=attack)
            start = time.perf_counter()
            bundle = nc.train_recipe(recipe, data=data, device="cpu").save(path)
            card = bundle.card
            acc = "" if card.clean_accuracy is None else f"clean accuracy {100 * card.clean_accuracy:.1f}%"
            asr = "" if card.attack_success is None else f", attack success {100 * card.attack_success:.0f}%"
            print(f"trained {path.name}: {acc}{asr} ({time.perf_counter() - start:.0f} s)", flush=True)
        paths.append(path)
    return paths


def zoo_models(zoo: Path, count: int) -> list[Path]:
    """The first ``count`` model directories of a built zoo (by name; its scans folder is not a model)."""
    found = sorted(p for p in zoo.iterdir() if (p / "card.json").is_file()) if zoo.is_dir() else []
    if len(found) < count:
        raise SystemExit(
            f"{zoo}: {len(found)} model directories, {count} wanted (neuralcleanse zoo --out {zoo})"
        )
    return found[:count]


def fleet_command(models: list[Path], runner: str, out: Path, scan_args: list[str]) -> list[str]:
    exe = Path(sys.executable).with_name("neuralcleanse")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "neuralcleanse"]
    return [*cmd, "scan-many", *map(str, models), "--out", str(out), "--force", *scan_args, *RUNNERS[runner]]


def run_fleet(
    models: list[Path], runner: str, out: Path, scan_args: list[str]
) -> tuple[float, dict[str, Any]]:
    """One ``scan-many`` run in a fresh process: its wall time and its summary."""
    cmd = fleet_command(models, runner, out, scan_args)
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    start = time.perf_counter()
    # its progress lines go to this script's stderr; its table is left out (the summary has it all)
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"scan-many with {runner} failed (exit code {done.returncode})")
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return wall, summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=int, default=8, help="fleet size (at least 8 for the issue's figure)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--samples", type=int, default=300, help="clean images per scan")
    p.add_argument(
        "--max-steps",
        type=int,
        default=1000,
        help="cap on steps per label (the scan default; a lower cap leaves labels unsettled and verdicts inconclusive)",
    )
    p.add_argument("--runners", default="workers1,workers2", help=f"any of {', '.join(RUNNERS)}")
    p.add_argument("--cache", type=Path, default=Path("runs/fleet-bench/models"))
    p.add_argument("--out", type=Path, default=Path("runs/fleet-bench/scans"))
    p.add_argument("--zoo", type=Path, help="scan the models of a zoo built by `neuralcleanse zoo --out DIR`")
    p.add_argument("--dry-run", action="store_true", help="print the models and commands; run nothing")
    args = p.parse_args()
    runners = args.runners.split(",")
    unknown = [r for r in runners if r not in RUNNERS]
    if unknown:
        raise SystemExit(f"unknown runner {unknown[0]!r}; use {', '.join(RUNNERS)}")
    scan_args = ["--samples", str(args.samples), "--max-steps", str(args.max_steps), "--device", "cpu"]
    if args.dry_run:
        if args.zoo:
            models = zoo_models(args.zoo, args.models)
        else:
            models = [fleet_path(args.cache, i, args.epochs) for i in range(args.models)]
        for m in models:
            print(f"model {m}{'' if (m / 'card.json').is_file() else ' (to be trained)'}")
        for runner in runners:
            print(" ".join(fleet_command(models, runner, args.out / runner, scan_args)))
        return
    print(
        f"torch {torch.__version__}, CPUs {os.cpu_count()}, load average at start {os.getloadavg()[0]:.1f}; "
        f"{args.models} models, scans of {args.samples} images, --max-steps {args.max_steps}",
        flush=True,
    )
    models = (
        zoo_models(args.zoo, args.models) if args.zoo else train_fleet(args.models, args.epochs, args.cache)
    )
    results: dict[str, tuple[float, dict[str, Any]]] = {}
    for runner in runners:
        print(f"scan-many with {runner} ...", flush=True)
        results[runner] = run_fleet(models, runner, args.out / runner, scan_args)
        print(f"  {results[runner][0]:.0f} s", flush=True)

    header = f"{'runner':16s} {'threads':>7s} {'wall s':>7s} {'scan s (sum)':>12s} {'images/s':>9s}  verdicts"
    print(f"\n{header}\n{'-' * len(header)}")
    verdicts = {}
    for runner, (wall, s) in results.items():
        verdicts[runner] = [(m["name"], m["verdict"], m["flagged"]) for m in s["models"]]
        c = s["counts"]
        print(
            f"{runner:16s} {s['runner'].get('threads', '-')!s:>7s} {wall:7.0f} {s['scan_seconds']:12.0f} "
            f"{s['images_processed'] / wall:9.0f}  {c['backdoored']} backdoored, {c['clean']} clean, "
            f"{c['inconclusive']} inconclusive, {c['failed']} failed"
        )
    if "workers1" in results:
        base, summary = results["workers1"]
        print()
        for runner, (wall, _) in results.items():
            if runner != "workers1":
                same = "same verdicts" if verdicts[runner] == verdicts["workers1"] else "VERDICTS DIFFER"
                print(
                    f"{runner} vs workers1: {base / wall:.2f}x faster (wall time, measured in this run); {same}"
                )
        print("\nper model (workers1):")
        for m in summary["models"]:
            print(
                f"  {m['name']:28s} {m['verdict']:13s} flagged {m['flagged']!s:8s} scan {m['seconds']:6.1f} s"
            )
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
