"""The fidelity benchmark's scans on disk, with what the probes of ``docs/fidelity.md`` need of each:
the model, its scan, a seeded draw of clean test images, and the labels to look at (the planted ones and
the cheapest others). Shared by ``transfer.py``, ``paste.py`` and ``saliency.py``."""

from __future__ import annotations

import argparse
import fnmatch
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import neuralcleanse as nc
from neuralcleanse.detection import DetectionReport
from neuralcleanse.detection.report import LabelResult


@dataclass(frozen=True)
class ScanOnDisk:
    name: str
    bundle: nc.ModelBundle
    report: DetectionReport
    images: torch.Tensor  # a seeded draw of the data set's clean test images
    labels: torch.Tensor
    planted: list[int]

    def probed(self, natural: int = 3) -> list[tuple[LabelResult, str]]:
        """The planted labels, then the ``natural`` cheapest labels that were not planted (and reached the
        attack threshold), each with its kind."""
        others = sorted(
            (r for r in self.report.labels if r.label not in self.planted and r.reached),
            key=lambda r: r.l1_norm,
        )
        return [
            *((self.report.label(k), "planted") for k in self.planted),
            *((r, "natural") for r in others[:natural]),
        ]


def probe_parser(doc: str, *, images: str = "clean test images") -> argparse.ArgumentParser:
    """The probes' common options: ``--out``, ``--only``, ``--images`` and ``--json``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/fidelity"))
    ap.add_argument("--only", default="*", help="a glob over the scans' names")
    ap.add_argument("--images", type=int, default=2000, help=images)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    return ap


def print_ranges(rows: list[dict[str, Any]], keys: tuple[str, ...], json_path: Path | None) -> None:
    """Each measure's median and range by kind, over the labels at most 0.45 of the median (where the bag
    and many planted triggers sit); the rows also to ``json_path`` if given."""
    for kind in ("planted", "natural"):
        for key in keys:
            part = [r[key] for r in rows if r["kind"] == kind and r["to_median"] <= 0.45]
            if part:
                print(
                    f"{kind} (<= 0.45 of the median): {key} median {np.median(part):.2f}, "
                    f"range {min(part):.2f}-{max(part):.2f} ({len(part)} labels)"
                )
    if json_path:
        json_path.write_text(json.dumps(rows, indent=1))


def scans_on_disk(out: Path, only: str, images: int) -> Iterator[ScanOnDisk]:
    """Every scan of ``fidelity.py --no-self`` under ``out`` whose name matches the glob ``only``."""
    datasets: dict[str, nc.DatasetSplits] = {}
    for scan in sorted((out / "scans-plain").iterdir()):
        if not fnmatch.fnmatch(scan.name, only) or not (scan / "report.json").exists():
            continue
        bundle = nc.load_model_dir(out / "models" / scan.name)
        data = datasets.setdefault(bundle.card.dataset, nc.load_dataset(bundle.card.dataset))
        pick = torch.randperm(len(data.test.images), generator=torch.Generator().manual_seed(0))[:images]
        planted = sorted({b.target for b in bundle.card.backdoors})
        yield ScanOnDisk(
            scan.name,
            bundle,
            DetectionReport.load(scan),
            data.test.images[pick],
            data.test.labels[pick],
            planted,
        )
