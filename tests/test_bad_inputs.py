"""The bad-input corpus: every command and the Python API, fed broken, hostile or impossible input.

Each CLI case asserts: exactly one line on stderr, ``error: ...``, naming the problem and the file or
option; the documented exit code (1 input data/model/files, 2 usage, 3 internal); no traceback; nothing
written (no output directory, no ``.name.xxx.tmp`` leftovers, no checkpoint); and that neither training
nor trigger optimisation started (everything knowable is checked before the work).

With ``NC_BAD_INPUTS_TABLE=FILE`` every case appends what it printed to FILE as a JSON line;
``scripts/bad_inputs_table.py`` turns that into ``docs/bad_inputs.md``.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import neuralcleanse as nc
from bad_input_files import (
    Payload,
    cifar_batch,
    edit_report,
    fifo,
    gtsrb_dir,
    idx_dir,
    image_folder,
    npz,
    npz_declaring,
    npz_with_member,
    pickled_object_npz,
    png_declaring,
    ppm,
)
from neuralcleanse.cli import main
from neuralcleanse.data.convert import read_image
from neuralcleanse.data.files import load_images
from neuralcleanse.data.npz import load_npz
from neuralcleanse.detection import mad_outlier_test
from neuralcleanse.errors import DataError, NeuralCleanseError, SettingsError
from neuralcleanse.lab.zoo import parse_spec


@dataclass(frozen=True)
class Env:
    """What a case builds its command line from."""

    tmp: Path  # this case's own directory (inputs it creates and the --out it names)
    model: Path  # a small trained model directory (10 classes, 1x28x28)
    other: Path  # another model directory (other weights)
    scan: Path  # a scan report of ``model``
    weights: Path  # ``model``'s weights as a bare safetensors file (needs --arch mnist)

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    @property
    def marker(self) -> Path:
        return self.tmp / "pwned"


@dataclass(frozen=True)
class Case:
    id: str
    what: str  # the bad input, for the docs table
    build: Callable[[Env], list[str]]  # the command line (creates the bad files in env.tmp)
    message: str  # must appear in the error line
    code: int
    names: str  # the file or option the line must name ({tmp}, {model}, {scan} are filled in)


#: a well-formed validation result whose model is not the scanned one
_FOREIGN_VALIDATION = {
    "label": 0, "layer": "fc", "neurons": [1], "reversed_l1": 9.0, "reversed_attack_success": 0.99,
    "clean_activation": 0.1, "reversed_activation": 2.0, "reversed_success_top_only": 0.9,
    "model_fingerprint": "f" * 16,
}  # fmt: skip


def _scan(env: Env, *args: str, data: Path | None = None) -> list[str]:
    base = ["scan", str(env.model), "--out", str(env.out), "--max-steps", "2", "--samples", "40"]
    return base + (["--data", str(data)] if data is not None else []) + list(args)


def _report_with_validation(env: Env, text: str) -> list[str]:
    """``report`` of the scan with ``--validation`` a folder whose validation.json holds ``text``."""
    folder = _write(env.tmp / "v" / "validation.json", text).parent
    return ["report", str(env.scan), "--out", str(env.out), "--validation", str(folder)]


def _self_link(path: Path) -> Path:
    path.symlink_to(path)
    return path


def _grey(n: int, size: int = 28) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size), dtype=np.uint8)


def _grey_png(path: Path, value: int) -> Path:
    """A 28x28 grey PNG of one value."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((28, 28), value, dtype=np.uint8)).save(path)
    return path


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def _valid_npz(env: Env) -> Path:
    return npz(env.tmp / "ok.npz", images=_grey(20), labels=np.arange(20) % 10)


def _truncated_npz(env: Env) -> Path:
    raw = _valid_npz(env).read_bytes()
    return _write(env.tmp / "cut.npz", raw[: len(raw) // 2])


def _state_dict_bytes(env: Env) -> bytes:
    return env.weights.read_bytes()


def _foreign_checkpoint(env: Env) -> None:
    from neuralcleanse.detection.checkpoint import save_checkpoint

    save_checkpoint(env.tmp / "out.checkpoint", {"model": "another model", "labels": [0]}, [])


def _nan_idx(env: Env) -> Path:
    from neuralcleanse.data import write_idx

    images = np.full((20, 28, 28), np.nan)
    write_idx(idx_dir(env.tmp / "m") / "t10k-images-idx3-ubyte", images)
    return env.tmp / "m"


def _linked_out(env: Env) -> Path:
    """An image folder with one image that is a link to a file outside it."""
    root = image_folder(env.tmp / "f", {"0": 3, "1": 3})
    (root / "0" / "link.png").symlink_to(_grey_png(env.tmp / "secret.png", 9))
    return root


def _nan_model(env: Env) -> Path:
    from safetensors.torch import load_file, save_file

    state = {
        k: torch.full_like(v, math.nan) if v.is_floating_point() else v
        for k, v in load_file(env.weights).items()
    }
    save_file(state, str(env.tmp / "nan.safetensors"))
    return env.tmp / "nan.safetensors"


def _corrupt_gzip_idx(env: Env) -> Path:
    d = idx_dir(env.tmp / "m")
    (d / "t10k-labels-idx1-ubyte").unlink()
    _write(d / "t10k-labels-idx1-ubyte.gz", b"\x1f\x8b\x08\x00junk")
    return d


def _gzip_bomb_idx(env: Env) -> Path:
    """An IDX folder whose test images are 70 MB of zeros gzip'd to about 70 kB (over 1,000 times)."""
    import gzip

    d = idx_dir(env.tmp / "m")
    (d / "t10k-images-idx3-ubyte").unlink()
    header = bytes([0, 0, 8, 3]) + struct.pack(">3I", 90_000, 28, 28)
    _write(d / "t10k-images-idx3-ubyte.gz", gzip.compress(header + bytes(90_000 * 28 * 28), mtime=0))
    return d


def _idx_linked_out(env: Env) -> Path:
    """An IDX folder whose test images file is a symbolic link to a file outside it."""
    d = idx_dir(env.tmp / "m")
    outside = env.tmp / "elsewhere"
    outside.mkdir()
    (d / "t10k-images-idx3-ubyte").rename(outside / "images")
    (d / "t10k-images-idx3-ubyte").symlink_to(outside / "images")
    return d


def _report_json(env: Env, text: str) -> list[str]:
    """``report`` of a copy of the scan whose report.json is ``text``."""
    d = edit_report(env.scan, env.tmp / "scan", lambda r: None)
    (d / "report.json").write_text(text)
    return ["report", str(d), "--out", str(env.out)]


def _forged_card(env: Env, **changes: Any) -> Path:
    """A copy of the model directory whose card says ``changes``, sealed again as a forger would."""
    import dataclasses
    import shutil

    from neuralcleanse.models.card import ModelCard

    d = env.tmp / "forged"
    shutil.copytree(env.model, d)
    card = dataclasses.replace(ModelCard.load(d / "card.json"), **changes).sealed()
    (d / "card.json").write_text(json.dumps(card.to_dict()))
    return d


def _report_linked_out(env: Env) -> Path:
    """A copy of the scan whose report.json is a link to the same file kept outside the folder."""
    d = edit_report(env.scan, env.tmp / "scan", lambda r: None)
    (d / "report.json").rename(env.tmp / "elsewhere.json")
    (d / "report.json").symlink_to(env.tmp / "elsewhere.json")
    return d


def _colour_trigger(env: Env) -> Path:
    """A copy of the scan whose label-0 trigger is for (3, 28, 28) images."""
    d = edit_report(env.scan, env.tmp / "scan", lambda r: None)
    nc.Trigger(torch.zeros(28, 28), torch.zeros(3, 28, 28), "edited").save(
        d / "triggers" / "label_0000.safetensors"
    )
    return d


def _scan_file(env: Env, model: Path, *, data: Path | None = None) -> list[str]:
    """Scan a weights file (``--arch mnist``) on ``data`` (default: a valid .npz)."""
    args = _scan(env, "--arch", "mnist", data=data or _valid_npz(env))
    return [args[0], str(model), *args[2:]]


def _spec(env: Env, text: str, name: str = "spec.toml") -> list[str]:
    spec = _write(env.tmp / name, text)
    return ["zoo", "--spec", str(spec), "--out", str(env.out)]


def _ref(env: Env, edit: Callable[[dict[str, Any]], None]) -> list[str]:
    ref = edit_report(env.scan, env.tmp / "ref", edit)
    return _scan(env, "--reference", str(ref), data=_valid_npz(env))


def _set_label0(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        d["labels"][0][key] = value

    return edit


def _checkpoint_with(env: Env, state: str) -> None:
    from neuralcleanse.detection.checkpoint import save_checkpoint

    save_checkpoint(env.tmp / "out.checkpoint", {"model": "x"}, [])
    (env.tmp / "out.checkpoint" / "state.json").write_text(state)


def _mitigate(env: Env, *args: str, model: Path | None = None, scan: Path | None = None) -> list[str]:
    return [
        "mitigate", str(model or env.model), "--report", str(scan or env.scan), "--method", "filter",
        "--out", str(env.out), *args,
    ]  # fmt: skip


def _validate(env: Env, *args: str, model: Path | None = None, scan: Path | None = None) -> list[str]:
    return [
        "validate",
        str(model or env.model),
        "--report",
        str(scan or env.scan),
        "--out",
        str(env.out),
        *args,
    ]


def _no_card(env: Env) -> Path:
    d = env.tmp / "nocard"
    d.mkdir()
    shutil.copy(env.weights, d / "model.safetensors")
    return d


def _scan_without_trigger(env: Env) -> Path:
    d = edit_report(env.scan, env.tmp / "scan", lambda r: None)
    (d / "triggers" / "label_0000.safetensors").unlink()
    return d


def _linear_arch(env: Env, forward: str, *, bias0: float = 0.0) -> list[str]:
    """A scan of a one-layer network defined in a user file whose forward is ``forward``."""
    from safetensors.torch import save_file

    code = _write(
        env.tmp / "net.py",
        "import torch\nfrom torch import nn\n\n\nclass Net(nn.Module):\n    def __init__(self):\n"
        "        super().__init__()\n        self.fc = nn.Linear(784, 10)\n\n    def forward(self, x):\n"
        f"        {forward}\n",
    )
    bias = torch.zeros(10)
    bias[0] = bias0
    save_file({"fc.weight": torch.zeros(10, 784), "fc.bias": bias}, str(env.tmp / "net.safetensors"))
    args = _scan(env, "--arch", f"{code}:Net", "--input-shape", "1x28x28", data=_valid_npz(env))
    return [args[0], str(env.tmp / "net.safetensors"), *args[2:]]


def _any_size_arch(env: Env, shape: str) -> list[str]:
    """A scan of a network defined in a user file that takes images of any size (adaptive pooling)."""
    from safetensors.torch import save_file

    code = _write(
        env.tmp / "net.py",
        "from torch import nn\n\n\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.conv = nn.Conv2d(1, 4, 3)\n        self.pool = nn.AdaptiveAvgPool2d(1)\n"
        "        self.fc = nn.Linear(4, 10)\n\n    def forward(self, x):\n"
        "        return self.fc(self.pool(self.conv(x).relu()).flatten(1))\n",
    )
    weights = {"conv.weight": torch.randn(4, 1, 3, 3), "conv.bias": torch.zeros(4)}
    save_file(
        {**weights, "fc.weight": torch.randn(10, 4), "fc.bias": torch.zeros(10)},
        str(env.tmp / "n.safetensors"),
    )
    args = _scan(env, "--arch", f"{code}:Net", "--input-shape", shape, data=_valid_npz(env))
    return [args[0], str(env.tmp / "n.safetensors"), *args[2:]]


def _broken_trigger(env: Env) -> Path:
    """A copy of the scan whose label-0 trigger file is not a safetensors file."""
    d = edit_report(env.scan, env.tmp / "scan", lambda r: None)
    _write(d / "triggers" / "label_0000.safetensors", "not a trigger")
    return d


def _model_inside_out(env: Env) -> list[str]:
    env.out.mkdir()
    inside = env.out / "w.safetensors"
    shutil.copy(env.weights, inside)
    return [*_scan_file(env, inside), "--force"]


CASES: list[Case] = [
    # ---- data: image folders -------------------------------------------------------------------------
    Case(
        "folder-empty",
        "empty image folder",
        lambda e: _scan(e, data=_write(e.tmp / "d" / ".keep", "").parent),
        "empty or unrecognised data directory",
        1,
        "{tmp}/d",
    ),
    Case(
        "folder-one-class",
        "image folder with one class",
        lambda e: _scan(e, data=image_folder(e.tmp / "d", {"3": 4})),
        "all of one class",
        1,
        "{tmp}/d",
    ),
    Case(
        "folder-corrupt-image",
        "image folder with a corrupt PNG",
        lambda e: _scan(
            e,
            data=_write(
                image_folder(e.tmp / "d", {"0": 2, "1": 2}) / "1" / "bad.png", b"\x89PNG broken"
            ).parent.parent,
        ),
        "cannot read image",
        1,
        "{tmp}/d/1/bad.png",
    ),
    Case(
        "folder-link-outside",
        "image folder holding a link to an image outside it",
        lambda e: _scan(e, data=_linked_out(e)),
        "the image leads outside",
        1,
        "{tmp}/f/0/link.png",
    ),
    Case(
        "folder-class-without-images",
        "class folder without images",
        lambda e: _scan(
            e, data=_write(image_folder(e.tmp / "d", {"0": 2}) / "1" / "notes.txt", "x").parent.parent
        ),
        "class folder has no images",
        1,
        "{tmp}/d/1",
    ),
    Case(
        "folder-decompression-bomb",
        "PNG declaring 20000x20000 pixels",
        lambda e: _scan(
            e,
            data=png_declaring(
                image_folder(e.tmp / "d", {"0": 2}) / "1" / "bomb.png", 20000, 20000
            ).parent.parent,
        ),
        "Image size (400000000 pixels) exceeds limit",
        1,
        "{tmp}/d/1/bomb.png",
    ),
    Case(
        "folder-more-classes-than-model",
        "image folder of 12 classes for a model whose card names 10",
        lambda e: _scan(e, data=image_folder(e.tmp / "d", {str(i): 1 for i in range(12)})),
        "folder '10' is not in the class names file",
        1,
        "{tmp}/d/10",
    ),
    Case(
        "folder-more-classes-than-weights",
        "image folder of 12 classes for 10-output weights (no card)",
        lambda e: _scan_file(e, e.weights, data=image_folder(e.tmp / "d", {str(i): 1 for i in range(12)})),
        "the images have 12 classes",
        1,
        "{tmp}/d",
    ),
    Case(
        "folder-unknown-class-name",
        "folder not in --class-names",
        lambda e: _scan(
            e,
            "--class-names",
            str(_write(e.tmp / "names.txt", "\n".join("abcdefghij"))),
            data=image_folder(e.tmp / "d", {"a": 1, "zzz": 1}),
        ),
        "is not in the class names file",
        1,
        "{tmp}/d/zzz",
    ),
    Case(
        "data-missing",
        "--data path that does not exist",
        lambda e: _scan(e, data=e.tmp / "nowhere"),
        "data path not found",
        1,
        "{tmp}/nowhere",
    ),
    Case(
        "data-unknown-file",
        "--data file of unknown kind",
        lambda e: _scan(e, data=_write(e.tmp / "d.txt", "x")),
        "unknown data file",
        1,
        "{tmp}/d.txt",
    ),
    Case(
        "data-device",
        "--data a character device (/dev/null)",
        lambda e: _scan(e, data=Path("/dev/null")),
        "a character device, not a regular file or a directory",
        1,
        "/dev/null",
    ),
    Case(
        "data-fifo",
        "--data a named pipe (FIFO)",
        lambda e: _scan(e, data=fifo(e.tmp / "pipe")),
        "a named pipe (FIFO), not a regular file or a directory",
        1,
        "{tmp}/pipe",
    ),
    Case(
        "npz-dates",
        ".npz whose images are dates (datetime64)",
        lambda e: _scan(
            e, data=npz(e.tmp / "d.npz", x=np.zeros((4, 28, 28), dtype="datetime64[s]"), y=np.arange(4))
        ),
        "images 'x' must be numbers (integers or floats), got datetime64[s]",
        1,
        "{tmp}/d.npz",
    ),
    # ---- data: GTSRB ---------------------------------------------------------------------------------
    Case(
        "gtsrb-no-labels",
        "GTSRB directory without GT-final_test.csv",
        lambda e: _scan(e, data=gtsrb_dir(e.tmp / "g", None)),
        "GT-final_test.csv not found",
        1,
        "{tmp}/g",
    ),
    Case(
        "gtsrb-not-csv",
        "GTSRB annotation file without its columns",
        lambda e: _scan(e, data=gtsrb_dir(e.tmp / "g", "hello\nworld\n")),
        "not a GTSRB annotation file",
        1,
        "{tmp}/g/Final_Test/Images/GT-final_test.csv",
    ),
    Case(
        "gtsrb-missing-image",
        "GTSRB annotation naming a missing image",
        lambda e: _scan(
            e,
            data=gtsrb_dir(
                e.tmp / "g",
                "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\na.ppm;8;8;0;0;7;7;1\n",
            ),
        ),
        "image listed in the annotations is missing",
        1,
        "{tmp}/g/Final_Test/Images/a.ppm",
    ),
    Case(
        "gtsrb-bad-row",
        "GTSRB annotation row with a non-numeric class",
        lambda e: _scan(
            e,
            data=gtsrb_dir(
                e.tmp / "g",
                "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\na.ppm;8;8;0;0;7;7;x\n",
                images={"a.ppm": ppm()},
            ),
        ),
        "malformed annotation row",
        1,
        "{tmp}/g/Final_Test/Images/a.ppm",
    ),
    Case(
        "gtsrb-corrupt-image",
        "GTSRB image that is not an image",
        lambda e: _scan(
            e,
            data=gtsrb_dir(
                e.tmp / "g",
                "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\na.ppm;8;8;0;0;7;7;1\n",
                images={"a.ppm": b"P6 garbage"},
            ),
        ),
        "cannot read image",
        1,
        "{tmp}/g/Final_Test/Images/a.ppm",
    ),
    Case(
        "gtsrb-path-outside",
        "GTSRB annotation naming an image outside the folder (../../../outside.ppm)",
        lambda e: _scan(
            e,
            data=gtsrb_dir(
                _write(e.tmp / "outside.ppm", ppm()).parent / "g",
                "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n../../../outside.ppm;8;8;0;0;7;7;1\n",
            ),
        ),
        "listed in GT-final_test.csv leads outside",
        1,
        "{tmp}/g/Final_Test/Images/../../../outside.ppm",
    ),
    # ---- data: CIFAR binary --------------------------------------------------------------------------
    Case(
        "cifar-empty",
        "empty CIFAR .bin batch",
        lambda e: _scan(e, data=_write(e.tmp / "test_batch.bin", b"")),
        "not a whole number",
        1,
        "{tmp}/test_batch.bin",
    ),
    Case(
        "cifar-truncated",
        "truncated CIFAR .bin batch",
        lambda e: _scan(
            e, data=_write(e.tmp / "c.bin", cifar_batch(e.tmp / "x.bin", [1, 2]).read_bytes()[:-5])
        ),
        "truncated",
        1,
        "{tmp}/c.bin",
    ),
    Case(
        "cifar-pickled",
        "CIFAR python (pickle) batch",
        lambda e: _scan(e, data=_write(e.tmp / "c" / "test_batch", b"\x80\x04junk").parent),
        "never unpickles",
        1,
        "{tmp}/c/test_batch",
    ),
    Case(
        "cifar-label-out-of-range",
        "CIFAR batch with label 50 (10 classes)",
        lambda e: _scan(e, data=cifar_batch(e.tmp / "c.bin", [1, 50])),
        "label 50 but only 10",
        1,
        "{tmp}/c.bin",
    ),
    # ---- data: .npz ----------------------------------------------------------------------------------
    Case(
        "npz-empty",
        "empty .npz file",
        lambda e: _scan(e, data=_write(e.tmp / "d.npz", b"")),
        "empty file, not an .npz",
        1,
        "{tmp}/d.npz",
    ),
    Case(
        "npz-text",
        "text file named .npz",
        lambda e: _scan(e, data=_write(e.tmp / "d.npz", "images,labels\n1,2\n")),
        "not an .npz file (not a zip archive",
        1,
        "{tmp}/d.npz",
    ),
    Case(
        "npz-truncated",
        "truncated .npz",
        lambda e: _scan(e, data=_truncated_npz(e)),
        "corrupt .npz archive",
        1,
        "{tmp}/cut.npz",
    ),
    Case(
        "npz-pickle",
        ".npz whose object array would run code when unpickled",
        lambda e: _scan(e, data=pickled_object_npz(e.tmp / "evil.npz", e.marker)),
        "need pickle",
        1,
        "{tmp}/evil.npz",
    ),
    Case(
        "npz-traversal",
        ".npz zip member named ../evil.npy",
        lambda e: _scan(e, data=npz_with_member(e.tmp / "d.npz", "../images.npy", _grey(4))),
        "'..' path",
        1,
        "{tmp}/d.npz",
    ),
    Case(
        "npz-absolute-member",
        ".npz zip member with an absolute name",
        lambda e: _scan(e, data=npz_with_member(e.tmp / "d.npz", "/tmp/images.npy", _grey(4))),
        "absolute or '..' path",
        1,
        "{tmp}/d.npz",
    ),
    Case(
        "npz-no-labels",
        ".npz without a label array",
        lambda e: _scan(e, data=npz(e.tmp / "d.npz", images=_grey(4))),
        "needs an image array",
        1,
        "{tmp}/d.npz",
    ),
    Case(
        "npz-nan-pixels",
        ".npz with NaN pixels",
        lambda e: _scan(
            e, data=npz(e.tmp / "d.npz", images=np.full((4, 28, 28), np.nan, np.float32), labels=np.arange(4))
        ),
        "NaN or infinite",
        1,
        "{tmp}/d.npz",
    ),
    Case(
        "npz-inf-pixels",
        ".npz with infinite pixels",
        lambda e: _scan(
            e, data=npz(e.tmp / "d.npz", images=np.full((4, 28, 28), np.inf, np.float32), labels=np.arange(4))
        ),
        "NaN or infinite",
        1,
        "{tmp}/d.npz",
    ),
    Case(
        "npz-huge-label",
        ".npz with a label of 2**62 for weights without a card (it used to build 2**62 class names)",
        lambda e: _scan_file(
            e, e.weights, data=npz(e.tmp / "d.npz", images=_grey(4), labels=np.array([0, 1, 2, 2**62]))
        ),
        "is not a class index",
        1,
        "{tmp}/d.npz",
    ),
    Case(
        "npz-lying-header",
        ".npz whose .npy header declares 1e9 images in a few bytes",
        lambda e: _scan(e, data=npz_declaring(e.tmp / "d.npz", (10**9, 28, 28))),
        "declares 784000000000 bytes",
        1,
        "{tmp}/d.npz",
    ),
    Case(
        "data-symlink-loop",
        "--data is a symbolic link to itself",
        lambda e: _scan(e, data=_self_link(e.tmp / "loop")),
        "leads back to itself",
        1,
        "{tmp}/loop",
    ),
    Case(
        "npz-out-of-range",
        ".npz float pixels outside [0, 1]",
        lambda e: _scan(
            e, data=npz(e.tmp / "d.npz", images=np.full((4, 28, 28), 255.0, np.float32), labels=np.arange(4))
        ),
        "must be in [0, 1]",
        1,
        "{tmp}/d.npz",
    ),
    Case(
        "npz-2d-images",
        ".npz images of shape (N, 5)",
        lambda e: _scan(e, data=npz(e.tmp / "d.npz", images=np.zeros((4, 5), np.uint8), labels=np.arange(4))),
        "must be (N,H,W)",
        1,
        "{tmp}/d.npz",
    ),
    Case(
        "npz-2-channels",
        ".npz images with 2 channels for a grey model",
        lambda e: _scan(
            e, data=npz(e.tmp / "d.npz", images=np.zeros((4, 28, 28, 2), np.uint8), labels=np.arange(4))
        ),
        "2 channels, the model takes 1",
        1,
        "{tmp}/d.npz",
    ),
    Case(
        "npz-zero-images",
        ".npz with zero images",
        lambda e: _scan(
            e, data=npz(e.tmp / "d.npz", images=np.zeros((0, 28, 28), np.uint8), labels=np.zeros(0, int))
        ),
        "no images in 'images'",
        1,
        "{tmp}/d.npz",
    ),
    Case(
        "npz-label-count",
        ".npz with 4 images and 3 labels",
        lambda e: _scan(e, data=npz(e.tmp / "d.npz", images=_grey(4), labels=np.arange(3))),
        "4 images but 3 labels",
        1,
        "{tmp}/d.npz",
    ),
    Case(
        "npz-float-labels",
        ".npz with float labels",
        lambda e: _scan(e, data=npz(e.tmp / "d.npz", images=_grey(4), labels=np.arange(4.0))),
        "1-D integer array",
        1,
        "{tmp}/d.npz",
    ),
    Case(
        "npz-label-beyond-model",
        ".npz label 11 for a 10-class model",
        lambda e: _scan(e, data=npz(e.tmp / "d.npz", images=_grey(4), labels=np.array([0, 1, 2, 11]))),
        "label 11 but only 10 classes",
        1,
        "{tmp}/d.npz",
    ),
    Case(
        "npz-1x1-images",
        ".npz of 1x1 images for a 28x28 model",
        lambda e: _scan(e, data=npz(e.tmp / "d.npz", images=_grey(4, size=1), labels=np.arange(4))),
        "images of 1x1 pixels cannot be resized to the model's 28x28 input",
        1,
        "{tmp}/d.npz",
    ),
    # ---- data: IDX -----------------------------------------------------------------------------------
    Case(
        "idx-empty",
        "empty IDX file",
        lambda e: _scan(e, data=_write(idx_dir(e.tmp / "m") / "t10k-images-idx3-ubyte", b"").parent),
        "not an IDX file",
        1,
        "{tmp}/m/t10k-images-idx3-ubyte",
    ),
    Case(
        "idx-truncated",
        "truncated IDX file",
        lambda e: _scan(
            e,
            data=_write(
                (d := idx_dir(e.tmp / "m")) / "t10k-images-idx3-ubyte",
                (d / "t10k-images-idx3-ubyte").read_bytes()[:-9],
            ).parent,
        ),
        "corrupt IDX file",
        1,
        "{tmp}/m/t10k-images-idx3-ubyte",
    ),
    Case(
        "idx-corrupt-gzip",
        "IDX .gz that is not gzip data",
        lambda e: _scan(e, data=_corrupt_gzip_idx(e)),
        "corrupt gzip",
        1,
        "{tmp}/m/t10k-labels-idx1-ubyte.gz",
    ),
    Case(
        "idx-size-overflow",
        "IDX header of 4 dimensions of 65536 (a 64-bit byte count overflows to 0) and no data",
        lambda e: _scan(
            e,
            data=_write(
                idx_dir(e.tmp / "m") / "t10k-images-idx3-ubyte", bytes([0, 0, 8, 4]) + bytes([0, 1, 0, 0]) * 4
            ).parent,
        ),
        "= 18446744073709551616 bytes of data, found 0",
        1,
        "{tmp}/m/t10k-images-idx3-ubyte",
    ),
    Case(
        "idx-nan-images",
        "IDX images of type float64 holding NaN",
        lambda e: _scan(e, data=_nan_idx(e)),
        "the images hold NaN or infinite values",
        1,
        "{tmp}/m/t10k-images-idx3-ubyte",
    ),
    Case(
        "idx-count-mismatch",
        "IDX with 20 test images and 7 labels",
        lambda e: _scan(e, data=idx_dir(e.tmp / "m", n_labels=7)),
        "20 test images but 7 labels",
        1,
        "{tmp}/m/t10k-images-idx3-ubyte",
    ),
    Case(
        "idx-no-train-split",
        "--split train on an IDX folder with only the t10k files",
        lambda e: _scan(e, "--split", "train", data=idx_dir(e.tmp / "m", splits=("test",))),
        "train-images-idx3-ubyte, train-labels-idx1-ubyte[.gz] not found in",
        1,
        "{tmp}/m (it holds only the test split)",
    ),
    Case(
        "idx-no-test-split",
        "IDX folder with only the train files (the test split by default)",
        lambda e: _scan(e, data=idx_dir(e.tmp / "m", splits=("train",))),
        "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte[.gz] not found in",
        1,
        "{tmp}/m (it holds only the train split)",
    ),
    Case(
        "idx-gzip-bomb",
        "IDX .gz of 70 kB that expands to 70 MB of zeros (a gzip bomb)",
        lambda e: _scan(e, data=_gzip_bomb_idx(e)),
        "(over 100 times: a gzip bomb?)",
        1,
        "{tmp}/m/t10k-images-idx3-ubyte.gz",
    ),
    Case(
        "idx-linked-out",
        "IDX folder whose images file is a symbolic link to a file outside it",
        lambda e: _scan(e, data=_idx_linked_out(e)),
        "an IDX file leads outside",
        1,
        "{tmp}/m/t10k-images-idx3-ubyte",
    ),
    # ---- models --------------------------------------------------------------------------------------
    Case(
        "model-missing",
        "model path that does not exist",
        lambda e: ["scan", str(e.tmp / "none.pt2"), "--out", str(e.out)],
        "not found",
        1,
        "{tmp}/none.pt2",
    ),
    Case(
        "model-card-forged-shape",
        "model directory whose re-sealed card says 1x4096x4096 images (layers of 128 GB)",
        lambda e: [*_scan(e)[:1], str(_forged_card(e, input_shape=(1, 4096, 4096))), *_scan(e)[2:]],
        "the card's input shape 1x4096x4096 and 10 classes do not fit its weights",
        1,
        "{tmp}/forged/card.json",
    ),
    Case(
        "scan-mean-empty",
        "--mean ''",
        lambda e: [*_scan_file(e, e.weights), "--mean", ""],
        "--mean must be finite numbers separated by commas, got ''",
        2,
        "--mean",
    ),
    Case(
        "scan-std-tiny",
        "--std 1e-320 (pixels divided into infinities)",
        lambda e: [*_scan_file(e, e.weights), "--std", "1e-320"],
        "std must be at least 1e-6, got [1e-320]",
        2,
        "std",
    ),
    Case(
        "model-card-forged-range",
        "model directory whose re-sealed card says input_range [5, 1]",
        lambda e: [*_scan(e)[:1], str(_forged_card(e, input_range=[5.0, 1.0])), *_scan(e)[2:]],
        "model card input_range must be [0, 1] or [0, 255], got [5.0, 1.0]",
        1,
        "{tmp}/forged/card.json",
    ),
    Case(
        "model-card-forged-dataset",
        "model directory whose re-sealed card names the data set ../../etc",
        lambda e: [*_scan(e)[:1], str(_forged_card(e, dataset="../../etc")), *_scan(e)[2:]],
        "dataset must be a data set's name, got '../../etc'",
        1,
        "{tmp}/forged/card.json",
    ),
    Case(
        "model-dir-arch-kwargs",
        "--arch-kwargs on a model directory",
        lambda e: _scan(e, "--arch-kwargs", '{"x": 1}'),
        "a model directory's card says how its network is built: drop --arch-kwargs",
        2,
        "{model}",
    ),
    Case(
        "model-fifo",
        "model file that is a named pipe (FIFO)",
        lambda e: _scan_file(e, fifo(e.tmp / "pipe.safetensors")),
        "the model file is a named pipe (FIFO), not a regular file",
        1,
        "{tmp}/pipe.safetensors",
    ),
    Case(
        "model-device",
        "model file /dev/zero (a device without end)",
        lambda e: _scan_file(e, Path("/dev/zero")),
        "the model file is a character device, not a regular file",
        1,
        "/dev/zero",
    ),
    Case(
        "class-names-fifo",
        "--class-names a named pipe (FIFO)",
        lambda e: _scan(e, "--class-names", str(fifo(e.tmp / "names.txt"))),
        "the class names file is a named pipe (FIFO), not a regular file",
        1,
        "{tmp}/names.txt",
    ),
    Case(
        "reference-report-fifo",
        "--reference a scan folder whose report.json is a named pipe (FIFO)",
        lambda e: _scan(e, "--reference", str(fifo(e.tmp / "ref" / "report.json").parent)),
        "is a named pipe (FIFO), not a regular file",
        1,
        "{tmp}/ref/report.json",
    ),
    Case(
        "model-pickle",
        "state-dict .pth whose unpickling would run code",
        lambda e: _scan_file(e, _write(e.tmp / "evil.pth", pickle.dumps({"w": Payload(e.marker)}))),
        "refused: the file holds pickled Python objects, not only tensors, and would run code if unpickled",
        1,
        "{tmp}/evil.pth",
    ),
    Case(
        "model-empty-safetensors",
        "empty .safetensors file",
        lambda e: _scan_file(e, _write(e.tmp / "m.safetensors", b"")),
        "empty file",
        1,
        "{tmp}/m.safetensors",
    ),
    Case(
        "model-truncated-safetensors",
        "truncated .safetensors file",
        lambda e: _scan_file(e, _write(e.tmp / "m.safetensors", e.weights.read_bytes()[:-100])),
        "not a valid safetensors file",
        1,
        "{tmp}/m.safetensors",
    ),
    Case(
        "model-huge-safetensors-header",
        "safetensors header declaring 2**60 bytes",
        lambda e: _scan_file(e, _write(e.tmp / "m.safetensors", struct.pack("<Q", 2**60) + b"{}")),
        "a safetensors header that declares 1,152,921,504,606,846,976 bytes in a file of 10",
        1,
        "{tmp}/m.safetensors",
    ),
    Case(
        "model-npz",
        "an .npz array file given as the model",
        lambda e: _scan_file(e, npz(e.tmp / "arrays.npz", images=np.zeros((2, 28, 28), np.uint8))),
        "a zip archive that is not a model file neuralcleanse reads (an .npz array file?)",
        1,
        "{tmp}/arrays.npz",
    ),
    Case(
        "model-text-pt2",
        "text file named .pt2",
        lambda e: _scan_file(e, _write(e.tmp / "m.pt2", "hello")),
        "not a model file",
        1,
        "{tmp}/m.pt2",
    ),
    Case(
        "model-empty-pth",
        "empty .pth file",
        lambda e: _scan_file(e, _write(e.tmp / "m.pth", b"")),
        "empty file",
        1,
        "{tmp}/m.pth",
    ),
    Case(
        "model-nan",
        "model whose outputs are NaN",
        lambda e: [
            "scan",
            str(_nan_model(e)),
            "--arch",
            "mnist",
            "--data",
            str(_valid_npz(e)),
            "--out",
            str(e.out),
            "--max-steps",
            "2",
        ],
        "NaN or infinite outputs",
        1,
        "{tmp}/nan.safetensors",
    ),
    Case(
        "model-card-names-vs-file",
        "--class-names file with 3 names for a 10-class model",
        lambda e: _scan(
            e, "--class-names", str(_write(e.tmp / "names.txt", "a\nb\nc\n")), data=_valid_npz(e)
        ),
        "3 class names for a model with 10 outputs",
        1,
        "--class-names {tmp}/names.txt",
    ),
    # ---- scan options --------------------------------------------------------------------------------
    Case(
        "scan-two-reference-schedules",
        "--sequential --exhaustive",
        lambda e: _scan(e, "--sequential", "--exhaustive"),
        "--sequential and --exhaustive are two reference schedules: choose one",
        2,
        "--sequential",
    ),
    Case(
        "scan-device-meta",
        "--device meta",
        lambda e: _scan(e, "--device", "meta"),
        "unsupported device 'meta'",
        2,
        "'meta'",
    ),
    Case(
        "scan-device-cpu-index",
        "--device cpu:5",
        lambda e: _scan(e, "--device", "cpu:5"),
        "the CPU is one device",
        2,
        "'cpu:5'",
    ),
    Case(
        "scan-two-made-references",
        "--natural-reference --self-reference",
        lambda e: _scan(e, "--natural-reference", "--self-reference"),
        "--self-reference and --natural-reference are 2 references: choose one",
        2,
        "--natural-reference",
    ),
    Case(
        "scan-transfer-check-few-images",
        "--transfer-check on 15 images",
        lambda e: _scan(
            e,
            "--transfer-check",
            data=npz(e.tmp / "few.npz", images=_grey(15), labels=np.arange(15) % 10),
        ),
        "transfer_check (--transfer-check) distils a student on the clean images and measures it on a tenth of them, "
        "so it needs at least 500 (50 held out), got 15",
        1,
        "--transfer-check",
    ),
    Case(
        "scan-threshold-nan",
        "--threshold nan",
        lambda e: _scan(e, "--threshold", "nan"),
        "--threshold must be a positive number",
        2,
        "--threshold",
    ),
    Case(
        "scan-threshold-negative",
        "--threshold -1",
        lambda e: _scan(e, "--threshold", "-1"),
        "--threshold must be a positive number",
        2,
        "--threshold",
    ),
    Case(
        "scan-threshold-inf",
        "--threshold inf",
        lambda e: _scan(e, "--threshold", "inf"),
        "--threshold must be a positive number",
        2,
        "--threshold",
    ),
    Case(
        "scan-seed-negative",
        "--seed -1",
        lambda e: _scan(e, "--seed", "-1"),
        "--seed must be a seed",
        2,
        "--seed",
    ),
    Case(
        "scan-samples-zero",
        "--samples 0",
        lambda e: _scan(e, "--samples", "0"),
        "--samples must be at least 1",
        2,
        "--samples",
    ),
    Case(
        "scan-max-steps-zero",
        "--max-steps 0",
        lambda e: _scan(e, "--max-steps", "0"),
        "--max-steps must be at least 1",
        2,
        "--max-steps",
    ),
    Case(
        "scan-starts-zero",
        "--starts 0",
        lambda e: _scan(e, "--starts", "0"),
        "--starts must be at least 1",
        2,
        "--starts",
    ),
    Case(
        "scan-starts-huge",
        "--starts 99999999999999999999",
        lambda e: _scan(e, "--starts", "99999999999999999999"),
        "--starts must be at most 100",
        2,
        "--starts",
    ),
    Case(
        "scan-labels-unknown",
        "--labels 99 on a 10-class model",
        lambda e: _scan(e, "--labels", "99", data=_valid_npz(e)),
        "label 99 is outside the model's 10 outputs",
        2,
        "--labels",
    ),
    Case(
        "scan-labels-garbage",
        "--labels 3,x",
        lambda e: _scan(e, "--labels", "3,x"),
        "'x' is not a label",
        2,
        "--labels",
    ),
    Case(
        "scan-labels-empty-range",
        "--labels 5-3",
        lambda e: _scan(e, "--labels", "5-3"),
        "'5-3' is an empty range",
        2,
        "--labels",
    ),
    Case(
        "scan-labels-huge-range",
        "--labels 0-100000000",
        lambda e: _scan(e, "--labels", "0-100000000"),
        "spans more than 100000 labels",
        2,
        "--labels",
    ),
    Case(
        "scan-input-shape-huge",
        "--input-shape 1x100000x100000",
        lambda e: _scan(e, "--input-shape", "1x100000x100000"),
        "sides up to 4096",
        2,
        "--input-shape",
    ),
    Case(
        "scan-source-unknown",
        "--source 99 on a 10-class model",
        lambda e: _scan(e, "--source", "99", data=_valid_npz(e)),
        "source label 99 is outside",
        2,
        "--source",
    ),
    Case(
        "scan-source-negative",
        "--source -1",
        lambda e: _scan(e, "--source", "-1"),
        "--source must be a label",
        2,
        "--source",
    ),
    Case(
        "scan-data-and-dataset",
        "--data and --dataset together",
        lambda e: _scan(e, "--dataset", "mnist-sample", data=_valid_npz(e)),
        "either --data or --dataset",
        2,
        "--data",
    ),
    Case(
        "scan-relative-without-reference",
        "--statistic relative without --reference",
        lambda e: _scan(e, "--statistic", "relative"),
        "needs --reference",
        2,
        "--statistic",
    ),
    Case(
        "scan-samples-not-int",
        "--samples abc",
        lambda e: _scan(e, "--samples", "abc"),
        "not a valid integer",
        2,
        "--samples",
    ),
    Case(
        "scan-arch-kwargs-json",
        "--arch-kwargs that is not JSON",
        lambda e: _scan(e, "--arch-kwargs", "{oops"),
        "--arch-kwargs is not valid JSON",
        2,
        "--arch-kwargs",
    ),
    Case(
        "scan-input-shape-2ch",
        "--input-shape 2x28x28",
        lambda e: _scan(e, "--input-shape", "2x28x28"),
        "--input-shape must be CxHxW with C 1 or 3",
        2,
        "--input-shape",
    ),
    Case(
        "scan-input-shape-1x1",
        "--input-shape 1x1x1 for a network of any input size (images would shrink to one pixel)",
        lambda e: _any_size_arch(e, "1x1x1"),
        "cannot be shrunk to the model's 1x1 input",
        1,
        "{tmp}/ok.npz",
    ),
    # ---- output paths --------------------------------------------------------------------------------
    Case(
        "scan-out-under-file",
        "scan --out under an existing file",
        lambda e: ["scan", str(e.model), "--out", str(_write(e.tmp / "f", "x") / "out")],
        "is a file, not a directory",
        2,
        "--out {tmp}/f/out",
    ),
    Case(
        "scan-out-proc",
        "scan --out in /proc (unwritable)",
        lambda e: ["scan", str(e.model), "--out", "/proc/nc-bad-input/out"],
        "cannot write in /proc",
        2,
        "--out /proc/nc-bad-input/out",
    ),
    Case(
        "scan-out-is-file",
        "scan --out naming an existing file",
        lambda e: ["scan", str(e.model), "--out", str(_write(e.out, "x"))],
        "exists and is not a directory",
        2,
        "--out {tmp}/out",
    ),
    Case(
        "scan-out-occupied",
        "scan --out a non-empty directory without --force",
        lambda e: ["scan", str(e.model), "--out", str(_write(e.out / "keep.txt", "x").parent)],
        "use --force",
        2,
        "--out {tmp}/out",
    ),
    Case(
        "train-out-under-file",
        "train --out under an existing file",
        lambda e: ["train", "--out", str(_write(e.tmp / "f", "x") / "m"), "--epochs", "1"],
        "is a file, not a directory",
        2,
        "--out {tmp}/f/m",
    ),
    Case(
        "train-out-proc",
        "train --out in /proc",
        lambda e: ["train", "--out", "/proc/nc-bad-input/m", "--epochs", "1"],
        "cannot write in /proc",
        2,
        "--out /proc/nc-bad-input/m",
    ),
    Case(
        "demo-out-file",
        "demo --out an existing file",
        lambda e: ["demo", "--out", str(_write(e.out, "x"))],
        "exists and is not a directory",
        2,
        "--out {tmp}/out",
    ),
    Case(
        "demo-out-proc",
        "demo --out in /proc",
        lambda e: ["demo", "--out", "/proc/nc-bad-input/demo"],
        "cannot write in /proc",
        2,
        "--out /proc/nc-bad-input/demo",
    ),
    Case(
        "report-out-dir",
        "report --out an existing directory",
        lambda e: ["report", str(e.scan), "--out", str(_write(e.out / "x", "x").parent)],
        "is a directory; give a file name",
        2,
        "--out {tmp}/out",
    ),
    Case(
        "report-out-under-file",
        "report --out under an existing file",
        lambda e: ["report", str(e.scan), "--out", str(_write(e.tmp / "f", "x") / "r.html")],
        "is a file, not a directory",
        2,
        "--out {tmp}/f/r.html",
    ),
    Case(
        "report-figures-of-user",
        "report --out r.html beside a folder r_figures of other files",
        lambda e: [
            "report",
            str(e.scan),
            "--out",
            str(_write(e.tmp / "r_figures" / "a.txt", "x").parent.parent / "r.html"),
        ],
        "the report's figures would replace it, and it holds a.txt",
        2,
        "{tmp}/r_figures",
    ),
    Case(
        "validate-layer-empty",
        "validate --layer ''",
        lambda e: _validate(e, "--label", "0", "--layer", ""),
        "the feature layer (--layer / layer=) is empty",
        2,
        "--layer",
    ),
    Case(
        "validate-out-under-file",
        "validate --out under an existing file",
        lambda e: [
            "validate",
            str(e.model),
            "--report",
            str(e.scan),
            "--out",
            str(_write(e.tmp / "f", "x") / "v"),
        ],
        "is a file, not a directory",
        2,
        "--out {tmp}/f/v",
    ),
    Case(
        "mitigate-out-proc",
        "mitigate --out in /proc",
        lambda e: _mitigate(e)[:-2] + ["--out", "/proc/nc-bad-input/m"],
        "cannot write in /proc",
        2,
        "--out /proc/nc-bad-input/m",
    ),
    Case(
        "zoo-out-under-file",
        "zoo --out under an existing file",
        lambda e: ["zoo", "--out", str(_write(e.tmp / "f", "x") / "z")],
        "is a file, not a directory",
        2,
        "--out {tmp}/f/z",
    ),
    Case(
        "zoo-markdown-dir",
        "zoo --markdown an existing directory",
        lambda e: ["zoo", "--out", str(e.out), "--markdown", str(_write(e.tmp / "md" / "x", "x").parent)],
        "is a directory; give a file name",
        2,
        "--markdown {tmp}/md",
    ),
    # ---- train / demo options -----------------------------------------------------------------------
    Case(
        "train-epochs-zero",
        "train --epochs 0",
        lambda e: ["train", "--out", str(e.out), "--epochs", "0"],
        "--epochs must be at least 1",
        2,
        "--epochs",
    ),
    Case(
        "train-trigger-without-attack",
        "train --trigger without --attack (it used to train a clean model silently)",
        lambda e: ["train", "--out", str(e.out), "--epochs", "1", "--trigger", "square:size=3"],
        "--trigger given without --attack: it applies to --attack badnets",
        2,
        "--trigger",
    ),
    Case(
        "train-trojan-mask-with-badnets",
        "train --attack badnets --trojan-mask",
        lambda e: [
            "train",
            "--out",
            str(e.out),
            "--epochs",
            "1",
            *("--attack", "badnets", "--target", "1"),
            *("--trojan-mask", "watermark"),
        ],  # fmt: skip
        "--trojan-mask given with --attack badnets: it applies to --attack trojan",
        2,
        "--trojan-mask",
    ),
    Case(
        "train-seed-negative",
        "train --seed -1",
        lambda e: ["train", "--out", str(e.out), "--seed", "-1"],
        "--seed must be a seed",
        2,
        "--seed",
    ),
    Case(
        "train-lr-nan",
        "train --lr nan",
        lambda e: ["train", "--out", str(e.out), "--lr", "nan"],
        "--lr must be a positive number",
        2,
        "--lr",
    ),
    Case(
        "demo-epochs-zero",
        "demo --epochs 0",
        lambda e: ["demo", "--out", str(e.out), "--epochs", "0"],
        "--epochs must be at least 1",
        2,
        "--epochs",
    ),
    # ---- resume ----------------------------------------------------------------------------------------
    Case(
        "resume-missing",
        "scan --resume without a checkpoint",
        lambda e: _scan(e, "--resume", data=_valid_npz(e)),
        "no checkpoint to resume from",
        1,
        "{tmp}/out.checkpoint",
    ),
    Case(
        "resume-garbage",
        "scan --resume from a checkpoint whose state.json is garbage",
        lambda e: _checkpoint_with(e, "{not json") or _scan(e, "--resume"),
        "corrupt checkpoint",
        1,
        "{tmp}/out.checkpoint",
    ),
    Case(
        "resume-not-a-dict",
        "scan --resume from a checkpoint whose state.json is a list",
        lambda e: _checkpoint_with(e, "[1, 2]") or _scan(e, "--resume"),
        "corrupt checkpoint",
        1,
        "{tmp}/out.checkpoint",
    ),
    Case(
        "resume-finished",
        "scan --resume where the scan is finished (report.json, no checkpoint)",
        lambda e: _write(e.out / "report.json", "{}") and _scan(e, "--resume"),
        "the scan there is finished (report.json); nothing to resume",
        2,
        "--out {tmp}/out",
    ),
    Case(
        "checkpoint-place-taken",
        "scan whose <out>.checkpoint is a folder of the user's (not a checkpoint)",
        lambda e: _write(e.tmp / "out.checkpoint" / "mine.txt", "keep me") and _scan(e),
        "exists and is not a scan checkpoint",
        1,
        "{tmp}/out.checkpoint",
    ),
    Case(
        "checkpoint-stale",
        "scan (no --resume, no --force) where an unfinished scan left its checkpoint",
        lambda e: _foreign_checkpoint(e) or _scan(e),
        "an unfinished scan's checkpoint is there: the same command with --resume continues",
        1,
        "{tmp}/out.checkpoint",
    ),
    Case(
        "resume-foreign",
        "scan --resume from another model's checkpoint",
        lambda e: _foreign_checkpoint(e) or _scan(e, "--resume"),
        "belongs to another scan",
        1,
        "{tmp}/out.checkpoint",
    ),
    # ---- references --------------------------------------------------------------------------------
    Case(
        "reference-other-task",
        "--reference scan of a 43-class model",
        lambda e: _ref(e, lambda d: d["model"].update(num_classes=43)),
        "43 outputs",
        1,
        "{tmp}/ref",
    ),
    Case(
        "reference-other-images",
        "--reference scanned on other images",
        lambda e: _ref(e, lambda d: d["data"].update(input_fingerprint="0" * 64)),
        "scanned on other images",
        1,
        "{tmp}/ref",
    ),
    Case(
        "reference-negative-norm",
        "--reference with a negative L1 norm",
        lambda e: _ref(e, _set_label0("l1_norm", -5.0)),
        "label 0: l1_norm must be a non-negative number or null, got -5.0",
        1,
        "{tmp}/ref",
    ),
    Case(
        "reference-nan-norm",
        "--reference with a NaN (null) L1 norm",
        lambda e: _ref(e, _set_label0("l1_norm", None)),
        "label 0 has no finite L1 norm",
        1,
        "{tmp}/ref",
    ),
    Case(
        "reference-missing",
        "--reference path that does not exist",
        lambda e: _scan(e, "--reference", str(e.tmp / "nope")),
        "scan report not found",
        1,
        "{tmp}/nope",
    ),
    # ---- zoo specs -----------------------------------------------------------------------------------
    Case(
        "zoo-name-own-file",
        "zoo spec model named zoo.json, the zoo's own manifest",
        lambda e: _spec(e, '[[model]]\nname = "zoo.json"\n'),
        "the name is one of the zoo's own files or folders",
        2,
        "{tmp}/spec.toml",
    ),
    Case(
        "zoo-float-epochs",
        "zoo spec with epochs = 2.5",
        lambda e: _spec(e, '[[model]]\nname = "a"\nepochs = 2.5\n'),
        "epochs must be an integer",
        2,
        "{tmp}/spec.toml",
    ),
    Case(
        "zoo-int-data-dir",
        "zoo spec with data_dir = 3",
        lambda e: _spec(e, '[[model]]\nname = "a"\ndata_dir = 3\n'),
        "data_dir must be a string",
        2,
        "{tmp}/spec.toml",
    ),
    Case(
        "zoo-unknown-key",
        "zoo spec with an unknown key",
        lambda e: _spec(e, '[[model]]\nname = "a"\ncolour = "red"\n'),
        "unknown key 'colour'",
        2,
        "{tmp}/spec.toml",
    ),
    Case(
        "zoo-bool-seed",
        "zoo spec with seed = true",
        lambda e: _spec(e, '[defaults]\nseed = true\n[[model]]\nname = "a"\n'),
        "seed must be an integer",
        2,
        "{tmp}/spec.toml",
    ),
    Case(
        "zoo-string-lr",
        'zoo spec with lr = "fast"',
        lambda e: _spec(e, '[[model]]\nname = "a"\nlr = "fast"\n'),
        "lr must be a finite number",
        2,
        "{tmp}/spec.toml",
    ),
    Case(
        "zoo-not-toml",
        "zoo spec that is not TOML",
        lambda e: _spec(e, "[[model\nname="),
        "not a valid spec file",
        2,
        "{tmp}/spec.toml",
    ),
    Case(
        "zoo-json-list",
        "zoo JSON spec that is a list",
        lambda e: _spec(e, "[1, 2]", "spec.json"),
        "a spec is a table",
        2,
        "{tmp}/spec.json",
    ),
    Case(
        "zoo-spec-missing",
        "zoo spec that does not exist",
        lambda e: ["zoo", "--spec", str(e.tmp / "no.toml"), "--out", str(e.out)],
        "zoo spec not found",
        2,
        "{tmp}/no.toml",
    ),
    Case(
        "zoo-samples-zero",
        "zoo --samples 0",
        lambda e: ["zoo", "--out", str(e.out), "--samples", "0"],
        "--samples must be at least 1",
        2,
        "--samples",
    ),
    # ---- report / validate / mitigate on broken result directories ------------------------------------
    Case(
        "report-json-nested",
        "report.json of 100,000 nested arrays",
        lambda e: _report_json(e, "[" * 100_000),
        "cannot read scan report (maximum recursion depth exceeded",
        1,
        "{tmp}/scan/report.json",
    ),
    Case(
        "report-json-huge-integer",
        "report.json with a threshold of 5,001 digits",
        lambda e: _report_json(e, '{"threshold": ' + "9" * 5001 + "}"),
        "cannot read scan report (Exceeds the limit",
        1,
        "{tmp}/scan/report.json",
    ),
    Case(
        "report-json-notes-numbers",
        "report.json whose notes are numbers",
        lambda e: [
            "report",
            str(edit_report(e.scan, e.tmp / "scan", lambda r: r.update(notes=[1, 2]))),
            "--out",
            str(e.out),
        ],
        "malformed scan report (TypeError: notes must be a list of sentences)",
        1,
        "{tmp}/scan/report.json",
    ),
    Case(
        "report-json-run-null",
        "report.json whose run record is null",
        lambda e: [
            "report",
            str(edit_report(e.scan, e.tmp / "scan", lambda r: r.update(run=None))),
            "--out",
            str(e.out),
        ],
        "malformed scan report (TypeError: run must be an object",
        1,
        "{tmp}/scan/report.json",
    ),
    Case(
        "report-json-threshold-negative",
        "report.json with a threshold of -1",
        lambda e: [
            "report",
            str(edit_report(e.scan, e.tmp / "scan", lambda r: r.update(threshold=-1))),
            "--out",
            str(e.out),
        ],
        "threshold must be a positive anomaly index, got -1",
        1,
        "{tmp}/scan/report.json",
    ),
    Case(
        "report-json-flagged-fraction",
        "report.json flagging label 0.5",
        lambda e: [
            "report",
            str(edit_report(e.scan, e.tmp / "scan", lambda r: r.update(flagged=[0.5]))),
            "--out",
            str(e.out),
        ],
        "flagged must be a list of labels, got [0.5]",
        1,
        "{tmp}/scan/report.json",
    ),
    Case(
        "report-json-negative-norm",
        "report.json whose label 0 has an L1 norm of -5",
        lambda e: [
            "report",
            str(edit_report(e.scan, e.tmp / "scan", lambda r: r["labels"][0].update(l1_norm=-5))),
            "--out",
            str(e.out),
        ],
        "label 0: l1_norm must be a non-negative number or null, got -5.0",
        1,
        "{tmp}/scan/report.json",
    ),
    Case(
        "report-json-linked-out",
        "a scan folder whose report.json is a symbolic link to a file outside it",
        lambda e: ["report", str(_report_linked_out(e)), "--out", str(e.out)],
        "its report.json leads outside",
        1,
        "{tmp}/scan/report.json",
    ),
    Case(
        "report-trigger-other-shape",
        "a scan folder whose label 0 trigger is for colour images, its other triggers for grey ones",
        lambda e: ["report", str(_colour_trigger(e)), "--out", str(e.out)],
        "a trigger for images (3, 28, 28), where the report's other triggers are for (1, 28, 28)",
        1,
        "{tmp}/scan/triggers/label_0000.safetensors",
    ),
    Case(
        "report-trigger-unreadable",
        "a scan folder whose label 0 trigger file is not a trigger file",
        lambda e: ["report", str(_broken_trigger(e)), "--out", str(e.out)],
        "not a valid trigger file",
        1,
        "{tmp}/scan/triggers/label_0000.safetensors",
    ),
    Case(
        "report-no-report-json",
        "report of a directory without report.json",
        lambda e: ["report", str(_write(e.tmp / "r" / "x", "x").parent)],
        "no report.json here (is it a scan",
        1,
        "{tmp}/r",
    ),
    Case(
        "report-fleet-folder",
        "report of a scan-many folder",
        lambda e: ["report", str(_write(e.tmp / "fleet" / "summary.json", "{}").parent)],
        "a scan-many folder, whose page is",
        1,
        "{tmp}/fleet/index.html",
    ),
    Case(
        "report-missing-dir",
        "report of a directory that does not exist",
        lambda e: ["report", str(e.tmp / "none")],
        "does not exist",
        1,
        "{tmp}/none",
    ),
    Case(
        "report-garbage-json",
        "report of a directory whose report.json is garbage",
        lambda e: ["report", str(_write(e.tmp / "r" / "report.json", "{oops").parent)],
        "cannot read scan report",
        1,
        "{tmp}/r/report.json",
    ),
    Case(
        "report-missing-trigger",
        "report of a scan missing a trigger file",
        lambda e: ["report", str(_scan_without_trigger(e))],
        "label_0000.safetensors is missing",
        1,
        "{tmp}/scan",
    ),
    Case(
        "report-validation-missing",
        "report --validation naming a missing directory",
        lambda e: ["report", str(e.scan), "--out", str(e.out), "--validation", str(e.tmp / "none")],
        "validation result not found",
        1,
        "{tmp}/none",
    ),
    Case(
        "report-validation-garbage",
        "report --validation whose validation.json is garbage",
        lambda e: _report_with_validation(e, "{"),
        "cannot read validation result",
        1,
        "{tmp}/v/validation.json",
    ),
    Case(
        "report-validation-of-another-model",
        "report --validation made for another model",
        lambda e: _report_with_validation(e, json.dumps(_FOREIGN_VALIDATION)),
        "this result belongs to another model",
        1,
        "{tmp}/v",
    ),
    Case(
        "report-mitigation-garbage",
        "report --mitigation whose mitigation.json is garbage",
        lambda e: [
            "report",
            str(e.scan),
            "--out",
            str(e.out),
            "--mitigation",
            str(_write(e.tmp / "m" / "mitigation.json", "[").parent),
        ],
        "cannot read mitigation result",
        1,
        "{tmp}/m/mitigation.json",
    ),
    Case(
        "validate-report-missing",
        "validate --report naming a missing directory",
        lambda e: _validate(e, scan=e.tmp / "none"),
        "scan report not found",
        1,
        "{tmp}/none",
    ),
    Case(
        "mitigate-unknown-method",
        "mitigate --method bogus",
        lambda e: _mitigate(e, "--method", "bogus"),
        "Invalid value for '--method'",
        2,
        "--method",
    ),
    Case(
        "train-out-occupied",
        "train --out a non-empty directory without --force",
        lambda e: ["train", "--out", str(_write(e.out / "notes.txt", "keep").parent), "--epochs", "1"],
        "use --force",
        2,
        "--out {tmp}/out",
    ),
    # ---- scan-many ----------------------------------------------------------------------------------
    Case(
        "scanmany-no-sources",
        "scan-many without models",
        lambda e: ["scan-many", "--out", str(e.out)],
        "Missing argument 'SOURCES...'",
        2,
        "SOURCES",
    ),
    Case(
        "scanmany-manifest-missing",
        "scan-many manifest that does not exist",
        lambda e: ["scan-many", str(e.tmp / "none.csv"), "--out", str(e.out)],
        "manifest not found",
        2,
        "{tmp}/none.csv",
    ),
    Case(
        "scanmany-manifest-unknown-column",
        "scan-many manifest with an unknown column",
        lambda e: [
            "scan-many",
            str(_write(e.tmp / "m.csv", f"path,colour\n{e.model},red\n")),
            "--out",
            str(e.out),
        ],
        "unknown column 'colour'",
        2,
        "{tmp}/m.csv",
    ),
    Case(
        "scanmany-manifest-bad-shape",
        "scan-many manifest row with input_shape 7x28x28",
        lambda e: [
            "scan-many",
            str(_write(e.tmp / "m.csv", f"path,input_shape\n{e.model},7x28x28\n")),
            "--out",
            str(e.out),
        ],  # fmt: skip
        "--input-shape must be CxHxW",
        2,
        "{tmp}/m.csv line 2",
    ),
    Case(
        "scanmany-manifest-missing-data",
        "scan-many manifest whose second row's data file does not exist",
        lambda e: [
            "scan-many",
            str(_write(e.tmp / "m.csv", f"path,name,data\n{e.model},a,\n{e.model},b,gone.npz\n")),
            "--out",
            str(e.out),
        ],  # fmt: skip
        "data path not found",
        1,
        "{tmp}/m.csv line 3: {tmp}/gone.npz",
    ),
    Case(
        "scanmany-data-missing",
        "scan-many --data a file that does not exist",
        lambda e: ["scan-many", str(e.model), "--data", str(e.tmp / "gone.npz"), "--out", str(e.out)],
        "data path not found",
        1,
        "{tmp}/gone.npz",
    ),
    Case(
        "scanmany-manifest-source-in-labels",
        "scan-many manifest row whose source label is among its labels",
        lambda e: [
            "scan-many",
            str(_write(e.tmp / "m.csv", f"path,labels,source\n{e.model},0-3,2\n")),
            "--out",
            str(e.out),
        ],  # fmt: skip
        "label 2 is the source label",
        2,
        "{tmp}/m.csv line 2",
    ),
    Case(
        "scanmany-manifest-source-1e308",
        "scan-many JSON manifest with source 1e308",
        lambda e: [
            "scan-many",
            str(_write(e.tmp / "m.jsonl", f'{{"path": "{e.model}", "source": 1e308}}\n')),
            "--out",
            str(e.out),
        ],  # fmt: skip
        "source must be an integer",
        2,
        "{tmp}/m.jsonl line 1",
    ),
    Case(
        "scanmany-manifest-source-huge",
        "scan-many JSON manifest with source 10^30",
        lambda e: [
            "scan-many",
            str(_write(e.tmp / "m.jsonl", f'{{"path": "{e.model}", "source": {10**30}}}\n')),
            "--out",
            str(e.out),
        ],  # fmt: skip
        "source must be a label from 0 to 999999",
        2,
        "{tmp}/m.jsonl line 1",
    ),
    Case(
        "scanmany-manifest-path-number",
        'scan-many JSON manifest with "path": 5',
        lambda e: ["scan-many", str(_write(e.tmp / "m.jsonl", '{"path": 5}\n')), "--out", str(e.out)],
        "path must be a path (text), got 5",
        2,
        "{tmp}/m.jsonl line 1",
    ),
    Case(
        "scanmany-manifest-flag-number",
        "scan-many JSON manifest with allow_torchscript 1 (not true)",
        lambda e: [
            "scan-many",
            str(_write(e.tmp / "m.jsonl", f'{{"path": "{e.model}", "allow_torchscript": 1}}\n')),
            "--out",
            str(e.out),
        ],  # fmt: skip
        "allow_torchscript must be true or false, got 1",
        2,
        "{tmp}/m.jsonl line 1",
    ),
    Case(
        "scanmany-folder-without-models",
        "scan-many of a folder without models",
        lambda e: ["scan-many", str(_write(e.tmp / "empty" / "notes.txt", "x").parent), "--out", str(e.out)],
        "no model files",
        1,
        "{tmp}/empty",
    ),
    Case(
        "scanmany-workers-zero",
        "scan-many --workers 0",
        lambda e: ["scan-many", str(e.model), "--workers", "0", "--out", str(e.out)],
        "--workers must be at least 1, got 0",
        2,
        "--workers",
    ),
    Case(
        "scanmany-ray-and-workers",
        "scan-many --ray --workers 2",
        lambda e: ["scan-many", str(e.model), "--ray", "--workers", "2", "--out", str(e.out)],
        "choose one",
        2,
        "--workers",
    ),
    Case(
        "scanmany-out-occupied",
        "scan-many --out a non-empty directory without --resume or --force",
        lambda e: ["scan-many", str(e.model), "--out", str(_write(e.out / "notes.txt", "keep").parent)],
        "--resume continues the run",
        2,
        "--out {tmp}/out",
    ),
    Case(
        "scan-unknown-option",
        "scan --bogus",
        lambda e: _scan(e, "--bogus"),
        "No such option '--bogus'",
        2,
        "--bogus",
    ),
    Case(
        "validate-no-card",
        "validate a model directory without card.json",
        lambda e: _validate(e, model=_no_card(e)),
        "without card.json is not a model directory",
        1,
        "{tmp}/nocard",
    ),
    Case(
        "validate-report-preprocessing",
        "validate with a report whose model.preprocessing was edited to nonsense",
        lambda e: _validate(
            e,
            scan=edit_report(e.scan, e.tmp / "s", lambda d: d["model"].update(preprocessing={"mean": "abc"})),
        ),
        "malformed scan report (model.preprocessing is",
        1,
        "{tmp}/s",
    ),
    Case(
        "validate-broken-report",
        "validate with a report.json missing its labels",
        lambda e: _validate(e, scan=edit_report(e.scan, e.tmp / "s", lambda d: d.pop("labels"))),
        "malformed scan report",
        1,
        "{tmp}/s/report.json",
    ),
    Case(
        "validate-top-zero",
        "validate --top 0",
        lambda e: _validate(e, "--top", "0"),
        "--top must be in (0, 1]",
        2,
        "--top",
    ),
    Case(
        "validate-label-unknown",
        "validate --label 99",
        lambda e: _validate(e, "--label", "99"),
        "label 99 is not in the report",
        2,
        "--label",
    ),
    Case(
        "mitigate-no-card",
        "mitigate a model directory without card.json",
        lambda e: _mitigate(e, model=_no_card(e)),
        "without card.json is not a model directory",
        1,
        "{tmp}/nocard",
    ),
    Case(
        "mitigate-missing-model",
        "mitigate a model directory that does not exist",
        lambda e: _mitigate(e, model=e.tmp / "none"),
        "not found",
        1,
        "{tmp}/none",
    ),
    Case(
        "mitigate-foreign-report",
        "mitigate with another model's scan report",
        lambda e: _mitigate(e, "--label", "0", model=e.other),
        "belongs to another model",
        1,
        "{scan}",
    ),
    Case(
        "mitigate-missing-trigger",
        "mitigate with a scan missing the label's trigger file",
        lambda e: _mitigate(e, "--label", "0", scan=_scan_without_trigger(e)),
        "label_0000.safetensors is missing",
        1,
        "{tmp}/scan",
    ),
    Case(
        "validate-real-trigger-missing",
        "validate --real-trigger with a trigger file that does not exist",
        lambda e: _validate(e, "--label", "0", "--real-trigger", str(e.tmp / "none.safetensors")),
        "trigger file not found",
        1,
        "{tmp}/none.safetensors",
    ),
    Case(
        "validate-real-trigger-too-large",
        "validate --real-trigger square:size=40 for 28x28 images",
        lambda e: _validate(e, "--label", "0", "--real-trigger", "square:size=40"),
        "larger than the 28x28 image",
        2,
        "--real-trigger",
    ),
    Case(
        "validate-real-trigger-empty-mask",
        "validate --real-trigger image:mask=M,pattern=P with an all-black mask image",
        lambda e: _validate(
            e,
            "--label",
            "0",
            "--real-trigger",
            f"image:mask={_grey_png(e.tmp / 'zero.png', 0)},pattern={_grey_png(e.tmp / 'p.png', 255)}",
        ),  # fmt: skip
        "the trigger's mask is empty",
        1,
        "--real-trigger",
    ),
    Case(
        "mitigate-real-sources-target",
        "mitigate --real-sources naming the target label",
        lambda e: _mitigate(e, "--label", "0", "--real-trigger", "square:size=4", "--real-sources", "0,3"),
        "label 0 is the target itself",
        2,
        "--real-sources",
    ),
    Case(
        "mitigate-fpr",
        "mitigate --fpr 1.5",
        lambda e: _mitigate(e, "--fpr", "1.5"),
        "--fpr must be in (0, 1]",
        2,
        "--fpr",
    ),
    Case(
        "scan-force-out-holds-model",
        "scan --force with an --out that holds the model file",
        _model_inside_out,
        "which this command reads",
        2,
        "{tmp}/out/w.safetensors",
    ),
    Case(
        "scan-out-working-directory",
        "scan --out . --force",
        lambda e: ["scan", str(e.model), "--out", ".", "--force", "--max-steps", "2", "--samples", "40"],
        "that is the working directory",
        2,
        "--out .",
    ),
    Case(
        "scan-source-in-labels",
        "scan --source 3 --labels 3",
        lambda e: _scan(e, "--source", "3", "--labels", "3"),
        "label 3 is the source label",
        2,
        "--labels",
    ),
    Case(
        "scan-model-raises",
        "a model whose forward raises ValueError",
        lambda e: _linear_arch(e, 'raise ValueError("forward exploded")'),
        "model failed on images of shape (1, 28, 28): ValueError: forward exploded",
        1,
        "ValueError",
    ),
    Case(
        "scan-model-complex-scores",
        "a model whose scores are complex numbers",
        lambda e: _linear_arch(e, "return self.fc(x.flatten(1)).to(torch.complex64)"),
        "model returned complex64 scores: class scores must be real floating-point numbers",
        1,
        "complex64",
    ),
    Case(
        "scan-model-integer-scores",
        "a model whose scores are integers",
        lambda e: _linear_arch(e, "return self.fc(x.flatten(1)).round().long()"),
        "model returned int64 scores: class scores must be real floating-point numbers",
        1,
        "int64",
    ),
    Case(
        "scan-model-in-place-input",
        "a model that changes its input in place",
        lambda e: _linear_arch(e, "x.mul_(1.0)\n        return self.fc(x.flatten(1))"),
        "the model fails when its input needs a gradient, which reverse-engineering a trigger does",
        1,
        "in-place",
    ),
    Case(
        "scan-model-batch-width",
        "a model that returns 5 class scores for batches of more than 16 images, 10 otherwise",
        lambda e: _linear_arch(
            e, "out = self.fc(x.flatten(1))\n        return out[:, :5] if len(x) > 16 else out"
        ),
        "the model returns 5 class scores for some batch sizes and 10 for others",
        1,
        "must not depend on its batch",
    ),
    Case(
        "scan-model-exits",
        "a model whose forward calls sys.exit(0)",
        lambda e: _linear_arch(e, "raise SystemExit(0)"),
        "called sys.exit(0) (SystemExit) before the command finished",
        1,
        "a model's forward",
    ),
    Case(
        "scan-model-one-class-right",
        "a model that predicts class 0 for every image",
        lambda e: _linear_arch(e, "return self.fc(x.flatten(1))", bias0=1.0),
        "a scan needs correctly classified images of at least 2 classes",
        1,
        "label 0",
    ),
]


@dataclass(frozen=True)
class ApiCase:
    id: str
    what: str
    call: Callable[[Env, Any], object]  # (env, clean model) -> raises
    error: type[NeuralCleanseError]
    message: str


def _images(n: int = 8) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))


class _NanNet(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((len(x), 10), math.nan)


API_CASES: list[ApiCase] = [
    ApiCase(
        "api-threshold-nan",
        "scan(threshold=nan)",
        lambda e, m: nc.scan(m, _images(), threshold=math.nan),
        SettingsError,
        "threshold must be a positive, finite",
    ),
    ApiCase(
        "api-threshold-zero",
        "NeuralCleanse(threshold=0)",
        lambda e, m: nc.NeuralCleanse(m, threshold=0),
        SettingsError,
        "threshold",
    ),
    ApiCase(
        "api-labels-fractional",
        "scan(labels=[0.0, 1.7, ...]) (fractional float labels were truncated)",
        lambda e, m: nc.scan(m, _images(4), torch.tensor([0.0, 1.7, 2.0, 3.0])),
        DataError,
        "labels must be whole numbers, got 1.7 at index 1",
    ),
    ApiCase(
        "api-seed-negative",
        "ReverseSettings(seed=-1)",
        lambda e, m: nc.ReverseSettings(seed=-1),
        SettingsError,
        "seed must be from 0",
    ),
    ApiCase(
        "api-max-steps-float",
        "ReverseSettings(max_steps=2.5)",
        lambda e, m: nc.ReverseSettings(max_steps=2.5),
        SettingsError,
        "max_steps must be an integer",
    ),  # type: ignore[arg-type]
    ApiCase(
        "api-samples-zero",
        "scan(samples=0)",
        lambda e, m: nc.scan(m, _images(), samples=0),
        SettingsError,
        "samples must be at least 1",
    ),
    ApiCase(
        "api-nan-images",
        "scan of NaN images",
        lambda e, m: nc.scan(m, torch.full((4, 1, 28, 28), math.nan)),
        DataError,
        "NaN or infinite",
    ),
    ApiCase(
        "api-nan-model",
        "scan of a model whose outputs are NaN",
        lambda e, m: nc.scan(_NanNet(), _images()),
        DataError,
        "NaN or infinite outputs",
    ),
    ApiCase(
        "api-one-class",
        "scan with images of one class",
        lambda e, m: nc.scan(m, _images(), torch.full((8,), 3)),
        DataError,
        "all of one class",
    ),
    ApiCase(
        "api-labels-beyond-model",
        "scan with label 12 on a 10-class model",
        lambda e, m: nc.scan(m, _images(2), torch.tensor([0, 12])),
        DataError,
        "labels go up to 12",
    ),
    ApiCase(
        "api-load-images-2ch",
        "load_images(input_shape=(2, 28, 28))",
        lambda e, m: load_images(image_folder(e.tmp / "d", {"0": 1, "1": 1}), input_shape=(2, 28, 28)),
        SettingsError,
        "C 1 (grey) or 3 (RGB)",
    ),
    ApiCase(
        "api-load-npz-text",
        "load_npz of a text file",
        lambda e, m: load_npz(_write(e.tmp / "x.npz", "hello")),
        DataError,
        "not an .npz file",
    ),
    ApiCase(
        "api-load-npz-pickle",
        "load_npz of an object array that would run code",
        lambda e, m: load_npz(pickled_object_npz(e.tmp / "evil.npz", e.marker)),
        DataError,
        "need pickle",
    ),
    ApiCase(
        "api-read-bomb",
        "read_image of a PNG declaring 20000x20000 pixels",
        lambda e, m: read_image(png_declaring(e.tmp / "b.png", 20000, 20000), channels=1, size=None),
        DataError,
        "400000000 pixels",
    ),
    ApiCase(
        "api-outlier-threshold-nan",
        "mad_outlier_test(threshold=nan)",
        lambda e, m: mad_outlier_test([1.0, 2.0, 3.0], threshold=math.nan),
        SettingsError,
        "threshold",
    ),
    ApiCase(
        "api-train-float-epochs",
        "TrainSettings(epochs=2.5)",
        lambda e, m: nc.TrainSettings(epochs=2.5),
        SettingsError,
        "epochs must be an integer",
    ),  # type: ignore[arg-type]
    ApiCase(
        "api-reference-negative",
        "Reference.from_reports with a negative norm",
        lambda e, m: nc.Reference.from_reports(
            [nc.DetectionReport.load(edit_report(e.scan, e.tmp / "r", _set_label0("l1_norm", -1.0)))]
        ),
        DataError,
        "label 0: l1_norm must be a non-negative number or null, got -1.0",
    ),
    ApiCase(
        "api-zoo-int-data-dir",
        "parse_spec with data_dir = 3",
        lambda e, m: parse_spec({"model": [{"name": "a", "data_dir": 3}]}),
        SettingsError,
        "data_dir must be a string",
    ),
]


# ---- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, mnist_sample: nc.DatasetSplits) -> dict[str, Any]:
    """Two small models (10 classes, trained for a second) and a short scan of the first."""
    from neuralcleanse import Recipe, TrainSettings, train_recipe
    from neuralcleanse.data.dataset import DatasetSplits

    root = tmp_path_factory.mktemp("bad-inputs")
    tiny = DatasetSplits(
        "mnist-sample", mnist_sample.train.subset(range(256)), mnist_sample.test.subset(range(100))
    )
    bundles = [
        train_recipe(Recipe(training=TrainSettings(epochs=1, batch_size=64, seed=s)), data=tiny, device="cpu")
        for s in (0, 1)
    ]
    model = bundles[0].save(root / "model").path
    other = bundles[1].save(root / "other").path
    assert model is not None and other is not None
    settings = nc.ReverseSettings(max_steps=1, batches_per_step=1, batch_size=16, seed=0)
    report = nc.NeuralCleanse(bundles[0].model, settings=settings).scan(
        tiny.test,
        samples=40,
        correct_only=False,
        model_info={"weights_sha256": bundles[0].card.weights_sha256},
    )
    scan = report.save(root / "scan")
    weights = next(model.glob("*.safetensors"))
    return {
        "root": root,
        "model": model,
        "other": other,
        "scan": scan,
        "weights": weights,
        "net": bundles[0].model,
    }


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training and trigger optimisation fail the test if they start: bad input is refused before."""

    def forbidden(*args: object, **kwargs: object) -> None:
        pytest.fail("work started on bad input (training or optimisation ran)")

    monkeypatch.setattr(sys.modules["neuralcleanse.detection.scan"], "reverse_engineer", forbidden)
    monkeypatch.setattr(sys.modules["neuralcleanse.lab.recipes"], "train_recipe", forbidden)


def _tree(*roots: Path) -> set[str]:
    return {str(p) for r in roots for p in r.rglob("*")}


def _record(case_id: str, what: str, command: str, message: str, code: int, tmp: Path, env: Env) -> None:
    table = os.environ.get("NC_BAD_INPUTS_TABLE")
    if not table:
        return
    for path, name in ((tmp, "TMP"), (env.model, "MODEL"), (env.other, "OTHER"), (env.scan, "SCAN")):
        message, command = message.replace(str(path), name), command.replace(str(path), name)
    with open(table, "a", encoding="utf-8") as fh:
        fh.write(
            json.dumps({"id": case_id, "what": what, "command": command, "message": message, "code": code})
            + "\n"
        )


def _env(world: dict[str, Any], tmp_path: Path) -> Env:
    return Env(tmp_path, world["model"], world["other"], world["scan"], world["weights"])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_cli_input(
    case: Case, world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], no_work: None
) -> None:
    env = _env(world, tmp_path)
    argv = case.build(env)
    before = _tree(tmp_path, world["root"])
    code = main(argv)
    out, err = capsys.readouterr()
    line = err.rstrip("\n")
    assert "Traceback" not in out + err
    assert err.count("\n") == 1 and line.startswith("error: "), err
    assert case.message in line, line
    names = case.names.format(tmp=tmp_path, model=env.model, scan=env.scan)
    assert names in line, (names, line)
    assert code == case.code, (code, line)
    after = _tree(tmp_path, world["root"])
    assert after == before, sorted(after ^ before)  # nothing written: no output, temp file or checkpoint
    assert not env.marker.exists()
    assert not re.search(r"/\.[^/]+\.tmp$", "\n".join(after))
    _record(case.id, case.what, "neuralcleanse " + " ".join(argv), line, code, tmp_path, env)


@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_bad_api_input(case: ApiCase, world: dict[str, Any], tmp_path: Path, no_work: None) -> None:
    env = _env(world, tmp_path)
    with pytest.raises(case.error) as info:
        case.call(env, world["net"])
    message = str(info.value)
    assert case.message in message and "\n" not in message, message
    assert not env.marker.exists()
    code = 2 if isinstance(info.value, SettingsError) else 1
    _record(case.id, case.what, "Python: " + case.what, message, code, tmp_path, env)


def test_corpus_size() -> None:
    assert len(CASES) + len(API_CASES) >= 50
    commands = {c.id.split("-")[0] for c in CASES}
    assert {"scan", "train", "zoo", "validate", "mitigate", "report", "demo", "scanmany"} <= commands


def test_a_full_disk_is_an_input_error_not_a_bug(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails for lack of space (a library's, naming no file) is exit 1, one line, no log."""
    import errno

    import neuralcleanse.cli.report as report_cli
    from neuralcleanse.fleet.jobs import _describe

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report_cli, "setup_logging", full)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    code = main(["report", str(tmp_path)])
    _, err = capsys.readouterr()
    assert (
        code == 1
        and err
        == "error: writing the results failed: No space left on device (nothing half-written is kept)\n"
    )
    assert not (tmp_path / "cache").exists()
    assert _describe(OSError(errno.ENOSPC, "No space left on device")).startswith(
        "writing the results failed"
    )


def test_internal_error_is_one_line_and_logged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug (any unexpected exception) prints one line naming the exception and the log file; -v also
    prints the traceback."""
    import neuralcleanse.cli.report as report_cli

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug\nsecond line")

    monkeypatch.setattr(report_cli, "setup_logging", broken)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    code = main(["report", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 3 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: internal error (ZeroDivisionError: a bug); full traceback in ")
    log = Path(err.rstrip("\n").rsplit("full traceback in ", 1)[1])
    assert log.parent == tmp_path / "cache" / "neuralcleanse" and "Traceback" in log.read_text()
    assert "second line" in log.read_text()
    code = main(["report", str(tmp_path), "-v"])
    err = capsys.readouterr().err
    assert (
        code == 3
        and "Traceback" in err
        and err.rstrip("\n").splitlines()[-1].startswith("error: internal error")
    )


def test_a_source_scan_of_one_label_is_allowed(world: dict[str, Any]) -> None:
    """Only the input set needs 2 classes: ``source`` may then restrict the scan to one label's images."""
    images, labels = _images(40), torch.arange(40) % 4
    report = nc.scan(
        world["net"], images, labels, source=1, scan_labels=[0, 2, 3], correct_only=False,
        max_steps=1, batches_per_step=1, batch_size=8,
    )  # fmt: skip
    assert report.data["source"] == 1 and len(report.labels) == 3


def test_the_checks_let_good_input_through(
    world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same checks pass a good scan, a same-seed repeat (identical), a reference scanned on the same
    images and a source-label scan; each leaves only its report (no checkpoint, no temporary files)."""
    data = npz(tmp_path / "ok.npz", images=_grey(60), labels=np.arange(60) % 10)
    args = ["scan", str(world["model"]), "--data", str(data), "--max-steps", "1", "--samples", "20"]
    args += ["--labels", "0-2", "--all-images", "--json"]
    for name in ("a", "b"):
        assert main([*args, "--out", str(tmp_path / name)]) == 0, capsys.readouterr().err
    first, second = (json.loads((tmp_path / n / "report.json").read_text()) for n in "ab")
    assert first["l1_norms"] == second["l1_norms"] and first["data"]["input_fingerprint"]
    ref = ["--reference", str(tmp_path / "a"), "--out", str(tmp_path / "rel")]
    assert main([*args, *ref]) == 0, capsys.readouterr().err
    assert main([*args, "--source", "4", "--out", str(tmp_path / "src")]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "ok.npz", "rel", "src"]


def test_the_docs_table_lists_every_case() -> None:
    """docs/bad_inputs.md is generated from this corpus (scripts/bad_inputs_table.py): same cases, same codes."""
    doc = (Path(__file__).parent.parent / "docs" / "bad_inputs.md").read_text(encoding="utf-8")
    rows = [line.split(" | ") for line in doc.splitlines() if line.startswith("| ") and line.endswith(" |")]
    documented = [(r[0][2:].strip("`").replace("\\|", "|"), r[-1][:-2]) for r in rows if len(r) == 3]
    expected = [(c.what, str(c.code)) for c in CASES]
    expected += [(c.what, "2" if issubclass(c.error, SettingsError) else "1") for c in API_CASES]
    assert [d for d in documented if d[1].isdigit()] == expected


def test_the_installed_command_prints_one_line(tmp_path: Path) -> None:
    """The console script itself (not only ``main()``): one line, exit code 1, nothing written."""
    import subprocess

    exe = Path(sys.executable).with_name("neuralcleanse")
    cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "neuralcleanse"])]
    done = subprocess.run(
        [*cmd, "scan", str(tmp_path / "none.pt2"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "none.pt2" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout and list(tmp_path.iterdir()) == []


def test_a_signal_while_the_command_starts_is_one_line(tmp_path: Path) -> None:
    """Ctrl-C or SIGTERM while torch is still being imported (the first second or two): the interrupted
    exit code and one line, not a traceback of the import."""
    import signal
    import subprocess
    import time

    exe = Path(sys.executable).with_name("neuralcleanse")
    cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "neuralcleanse"])]
    for sig, said in ((signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated (SIGTERM)")):
        started = subprocess.Popen(
            [*cmd, "scan", str(tmp_path / "none.pt2")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # as from a terminal: a test worker may ignore Ctrl-C, and a child inherits that
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        time.sleep(0.3)
        started.send_signal(sig)
        out, err = started.communicate(timeout=60)
        assert started.returncode == 130 and err == f"error: {said} while starting: nothing was done\n", err
        assert "Traceback" not in out + err


def test_off_a_terminal_each_log_record_is_one_line(tmp_path: Path) -> None:
    """In a pipe or CI log the user-code warning and the error are one line each, never wrapped."""
    import subprocess

    from safetensors.torch import save_file

    (tmp_path / "archs.py").write_text("X = 1\n")
    save_file({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
    arch = f"{tmp_path / 'archs.py'}:{'Long' * 12}"
    done = subprocess.run(
        [sys.executable, "-m", "neuralcleanse", "scan", str(tmp_path / "w.safetensors"), "--arch", arch],
        capture_output=True, text=True, check=False, env={**os.environ, "COLUMNS": "60"},
    )  # fmt: skip
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and len(lines) == 2, done.stderr
    assert lines[0].startswith("WARNING: importing ") and lines[0].endswith("(your choice)")
    assert lines[1].startswith("error: architecture ") and "is not an nn.Module class" in lines[1]


def _lock(folder: Path) -> list[str]:
    """Make ``folder`` unwritable for real (``chmod 500`` for a user, ``chattr +i`` for root) and return the
    command that undoes it; skip the test where neither works."""
    import shutil
    import subprocess

    if os.geteuid() != 0:
        folder.chmod(0o500)
        return ["chmod", "700", str(folder)]
    if (
        shutil.which("chattr")
        and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    ):
        return ["chattr", "-i", str(folder)]
    pytest.skip("root without chattr +i here: no way to make a folder unwritable")


def test_an_existing_out_folder_this_process_cannot_change_is_refused_before_the_scan(
    tmp_path: Path, world: dict[str, Any], capsys: pytest.CaptureFixture[str], no_work: None
) -> None:
    """An empty ``--out`` folder is replaced when the scan ends, so it must be writable: refused up front
    (a reviewer's read-only mount and immutable folder were refused only after the whole scan), with no
    checkpoint left."""
    import subprocess

    out = tmp_path / "locked"
    out.mkdir()
    undo = _lock(out)
    try:
        code = main(["scan", str(world["model"]), "--out", str(out), "--max-steps", "3"])
        _, err = capsys.readouterr()
        assert (
            code == 2
            and err.startswith(f"error: --out {out}: cannot write in {out} (")
            and err.count("\n") == 1
        )
        assert not any(tmp_path.glob("locked.checkpoint*")) and not any(out.iterdir())
    finally:
        subprocess.run(undo, check=True)


def test_a_folder_that_becomes_unwritable_during_the_scan_keeps_its_checkpoint(
    tmp_path: Path, world: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The results cannot be written when the scan ends (the folder was locked while it ran): one line that
    says the finished scan's checkpoint is kept, and --resume writes the results once it can."""
    import subprocess

    from neuralcleanse.detection import DetectionReport

    parent = tmp_path / "shared"
    parent.mkdir()
    out = parent / "scan"
    save = DetectionReport.save
    undo: list[list[str]] = []

    def locked_then_save(self: DetectionReport, *args: Any, **kwargs: Any) -> Any:
        undo.append(_lock(parent))  # for real, just before the results are written
        return save(self, *args, **kwargs)

    monkeypatch.setattr(DetectionReport, "save", locked_then_save)
    args = ["scan", str(world["model"]), "--out", str(out), "--max-steps", "3", "--labels", "0,1", "--json"]
    try:
        code = main(args)
    finally:
        for cmd in undo:
            subprocess.run(cmd, check=True)
    _, err = capsys.readouterr()
    assert code == 1 and err.count("\n") == 1 and "--resume writes them" in err, err
    assert f"checkpoint {parent / 'scan.checkpoint'} is kept" in err and not out.exists()
    monkeypatch.setattr(DetectionReport, "save", save)
    assert main([*args, "--resume"]) == 0
    assert json.loads(capsys.readouterr()[0])["verdict"] and (out / "report.json").is_file()
    assert not (parent / "scan.checkpoint").exists()
