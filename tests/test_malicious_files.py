"""Model files built the way an attacker would: none may run code, write outside its place, or reach a
torch loader before it is inspected.

Native code is a real shared library (gcc) whose constructor creates a marker file; each test first shows
that the attack is real where that is cheap (torch's own loader runs the library, in a subprocess), then
that neuralcleanse refuses the file with one line, the marker is never created and nothing is written.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from neuralcleanse import ModelBundle, ModelError, SettingsError
from neuralcleanse.cli import main
from neuralcleanse.models.archive import ZipLimits, open_archive
from neuralcleanse.models.card import ModelCard
from neuralcleanse.models.loading import load_model

_EVIL_C = textwrap.dedent(
    """
    #include <stdio.h>
    #include <stdlib.h>
    __attribute__((constructor)) static void run_on_load(void) {
      const char *p = getenv("NC_MARKER");
      FILE *f = fopen(p ? p : "/tmp/nc_marker", "w");
      if (f) { fputs("native code ran\\n", f); fclose(f); }
    }
    """
)
_AOTI_METADATA = json.dumps(
    {"AOTI_DEVICE_KEY": "cpu", "AOTI_PLATFORM": "linux", "AOTI_MACHINE": "x86_64", "AOTI_CPU_ISA": "",
     "AOTI_COMPUTE_CAPABILITY": ""}
)  # fmt: skip


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 26 * 26, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shared library whose constructor writes the file named by $NC_MARKER (an ELF stand-in without
    gcc: the refusal does not depend on what the library does)."""
    root = tmp_path_factory.mktemp("lib")
    so = root / "evil.wrapper.so"
    if shutil.which("gcc"):
        (root / "evil.c").write_text(_EVIL_C)
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(so), str(root / "evil.c")], check=True)
    else:
        so.write_bytes(b"\x7fELF" + bytes(60))
    return so


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ordinary torch.export.save program (dynamic batch, BatchNorm)."""
    path = tmp_path_factory.mktemp("plain") / "plain.pt2"
    torch.manual_seed(0)
    x = torch.rand(2, 1, 28, 28)
    program = torch.export.export(_Net().eval(), (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "clean.npz"
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), labels=np.arange(20) % 10)
    return path


def _rewrite(src: Path, dst: Path, extra: dict[str, bytes], *, drop: str | None = None) -> Path:
    """Copy the archive ``src`` to ``dst`` with ``extra`` members (full names) added."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if drop is None or drop not in info.filename:
                zout.writestr(info, zin.read(info))
        for name, blob in extra.items():
            zout.writestr(name, blob)
    return dst


def _scan(args: list[str], tmp: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run ``neuralcleanse scan`` in-process; returns the exit code and stderr."""
    code = main(["scan", *args, "--out", str(tmp / "out"), "--max-steps", "2", "--samples", "10"])
    err = capsys.readouterr().err
    return code, err


def _assert_refused(code: int, err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _torch_loads_it(path: Path, marker: Path) -> bool:
    """Whether torch's own ``torch.export.load`` runs the file's native code (in a subprocess)."""
    code = f"import torch\ntry:\n    torch.export.load({str(path)!r})\nexcept Exception:\n    pass\n"
    subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "NC_MARKER": str(marker)}, capture_output=True
    )
    return marker.exists()


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the shared library")
def test_aoti_package_is_refused_before_torch_sees_it(
    lib: Path, tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch.export.pt2_archive._package import package_pt2

    meta = tmp_path / "evil.wrapper_metadata.json"
    meta.write_text(_AOTI_METADATA)
    evil = tmp_path / "evil.pt2"
    package_pt2(str(evil), aoti_files={"model": [str(lib), str(meta)]})  # the AOTInductor package layout
    control = tmp_path / "control-marker"
    assert _torch_loads_it(evil, control), "the package should run its library under torch.export.load"

    marker = tmp_path / "marker"
    monkeypatch.setenv("NC_MARKER", str(marker))
    code, err = _scan([str(evil), "--data", str(data)], tmp_path, capsys)
    _assert_refused(code, err, str(evil), "data/aotinductor/model/evil.wrapper", "AOTInductor")
    assert not marker.exists()
    assert not (tmp_path / "out").exists() and not list(Path(tmp_path).glob(".out*"))


def test_aoti_members_added_to_a_plain_program(
    lib: Path, plain: Path, tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    assert load_model(plain).format == "export"  # the program itself is fine
    evil = _rewrite(
        plain,
        tmp_path / "evil.pt2",
        {"plain/data/aotinductor/model/x.wrapper.so": lib.read_bytes(),
         "plain/data/aotinductor/model/x.wrapper_metadata.json": _AOTI_METADATA.encode()},
    )  # fmt: skip
    if shutil.which("gcc"):
        assert _torch_loads_it(evil, tmp_path / "control-marker")
    marker = tmp_path / "marker"
    monkeypatch.setenv("NC_MARKER", str(marker))
    code, err = _scan([str(evil), "--data", str(data)], tmp_path, capsys)
    _assert_refused(code, err, "plain/data/aotinductor/model/x.wrapper.so", "refused")
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("member", "blob", "message"),
    [
        ("plain/data/aotinductor/model/../../../../X", b"x", "a '..' component"),
        ("plain/../escape.txt", b"x", "a '..' component"),
        ("/etc/evil", b"x", "absolute path"),
        ("plain/extra/notes.txt", b"\x7fELF\x02\x01\x01" + bytes(57), "native code"),
        ("plain/extra/helper.so", b"not elf", "shared library"),
        ("plain/extra/model.cpp", b'extern "C" int f() { return 0; }', "source code"),
        ("plain/extra/hook.py", b"import os", "source code"),
        ("plain/data/constants/custom_obj_0", b"\x80\x04N.", "pickled Python object"),
        ("plain/data/executorch/model.pte", b"x", "ExecuTorch"),
        ("plain/unexpected.bin", b"x", "shared library or binary"),
        ("plain/notes/readme.md", b"x", "not part of a plain torch.export program"),
        ("other/archive_format", b"pt2", "root folders"),
    ],
)
def test_hostile_members_are_refused_by_name(
    plain: Path, tmp_path: Path, member: str, blob: bytes, message: str
) -> None:
    evil = _rewrite(plain, tmp_path / "evil.pt2", {member: blob})
    with pytest.raises(ModelError, match=message) as info:
        load_model(evil)
    assert str(evil) in str(info.value)
    assert not (tmp_path.parent / "X").exists() and not (tmp_path / "escape.txt").exists()


def test_symlink_and_duplicate_members(plain: Path, tmp_path: Path) -> None:
    link = zipfile.ZipInfo("plain/extra/link")
    link.external_attr = (0o120777 << 16) | 0
    evil = tmp_path / "link.pt2"
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(evil, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info))
        zout.writestr(link, "/etc/passwd")
    with pytest.raises(ModelError, match="symbolic link"):
        load_model(evil)
    dup = tmp_path / "dup.pt2"
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(dup, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info))
        with pytest.warns(UserWarning, match="Duplicate name"):
            zout.writestr("plain/models/model.json", b"{}")
    with pytest.raises(ModelError, match="appears twice"):
        load_model(dup)


def test_zip_bomb_is_refused_without_inflating_it(plain: Path, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.pt2"
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(bomb, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info))
        zout.writestr("plain/data/weights/weight_99", bytes(64 << 20), compress_type=zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 2 << 20  # 64 MiB of zeros in well under 2 MiB
    with pytest.raises(ModelError, match=r"weight_99.*compressed \d+:1 \(a zip bomb\)"):
        load_model(bomb)
    with pytest.raises(ModelError, match="more than 65,536 bytes uncompressed"):  # the total cap, made small
        open_archive(plain.read_bytes(), "plain.pt2", limits=ZipLimits(max_total_bytes=1 << 16))
    with pytest.raises(ModelError, match="archive members"):
        open_archive(plain.read_bytes(), "plain.pt2", limits=ZipLimits(max_members=3))


class _Marker:
    """Unpickling this creates a marker file (what a hostile pickle does, harmlessly)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (self.path, "pickle ran"))  # type: ignore[return-value]


def test_pickle_in_a_program_is_refused_naming_the_member(
    plain: Path, tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "marker"
    buf = io.BytesIO()
    torch.save({"x": _Marker(marker)}, buf)
    evil = _rewrite(plain, tmp_path / "evil.pt2", {"plain/data/sample_inputs/model.pt": buf.getvalue()},
                    drop="sample_inputs")  # fmt: skip
    code, err = _scan([str(evil), "--data", str(data)], tmp_path, capsys)
    _assert_refused(code, err, "plain/data/sample_inputs/model.pt", "pickled Python objects")
    assert "weights_only" not in err  # not torch's advice to unpickle it
    assert not marker.exists()


@pytest.mark.parametrize("zipped", [True, False])
def test_pickled_state_dict_never_runs(tmp_path: Path, zipped: bool) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "weights.pth"
    torch.save({"w": torch.ones(2), "x": _Marker(marker)}, path, _use_new_zipfile_serialization=zipped)
    for arch in ("mnist", None):  # without --arch too: refused for what it is, not "holds only weights"
        with pytest.raises(ModelError, match="would run code if unpickled"):
            load_model(path, arch=arch)
    assert not marker.exists()
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=zipped)
    with pytest.raises(SettingsError, match=r"holds only weights \(state-dict, 1 tensors\)"):
        load_model(path)


def test_torchscript_renamed_pt2_needs_the_opt_in(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "model.pt2"  # a TorchScript archive under an export's name
    torch.jit.save(torch.jit.trace(_Net().eval(), torch.rand(1, 1, 28, 28)), script)

    def never(*_a: object, **_k: object) -> None:
        raise AssertionError("torch.jit.load was called without the opt-in")

    monkeypatch.setattr(torch.jit, "load", never)
    code, err = _scan([str(script), "--data", str(data)], tmp_path, capsys)
    _assert_refused(code, err, str(script), "TorchScript", "--allow-torchscript")
    assert not (tmp_path / "out").exists()


def _forge_card(model_dir: Path, edit: dict[str, object]) -> None:
    """Edit a model directory's card the way a careful forger would: digest recomputed."""
    path = model_dir / "card.json"
    card = json.loads(path.read_text())
    for b in card["backdoors"]:
        b.update(edit)
    card["format_version"] = 1  # read without its digest, then sealed again
    try:
        sealed = ModelCard.from_dict(card).sealed().to_dict()
    except ModelError:
        sealed = {**card, "format_version": 2}
        sealed["card_sha256"] = None
    path.write_text(json.dumps(sealed))


@pytest.mark.parametrize(
    "trigger_file", ["../../x/t.safetensors", "/tmp/abs/t.safetensors", "triggers/../../t.safetensors"]
)
def test_card_paths_stay_inside_the_model_directory(
    badnets_model: ModelBundle, badnets_report: object, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    trigger_file: str,
) -> None:  # fmt: skip
    model = tmp_path / "zoo" / "m"
    badnets_model.save(model)
    _forge_card(model, {"trigger_file": trigger_file})
    scan_dir = tmp_path / "scan"
    badnets_report.save(scan_dir)  # type: ignore[attr-defined]
    out = tmp_path / "zoo" / "OUT"
    code = main(["mitigate", str(model), "--report", str(scan_dir), "--method", "prune", "--out", str(out)])
    err = capsys.readouterr().err
    _assert_refused(code, err, "trigger_file", "relative path inside the model directory")
    assert not out.exists()
    assert not (tmp_path / "x").exists() and not (tmp_path / "zoo" / "x").exists()
    assert not Path("/tmp/abs").exists()
    assert sorted(p.name for p in (tmp_path / "zoo").iterdir()) == ["m"]


def test_symlinked_trigger_file_and_edited_card(badnets_model: ModelBundle, tmp_path: Path) -> None:
    from neuralcleanse import load_model_dir

    model = tmp_path / "m"
    badnets_model.save(model)
    trigger = model / badnets_model.card.backdoors[0].trigger_file
    outside = tmp_path / "outside.safetensors"
    shutil.copy(trigger, outside)
    trigger.unlink()
    trigger.symlink_to(outside)
    with pytest.raises(ModelError, match="points outside the model directory"):
        load_model_dir(model)
    trigger.unlink()
    shutil.copy(outside, trigger)
    load_model_dir(model)  # restored: loads
    card = json.loads((model / "card.json").read_text())
    card["backdoors"][0]["target"] = 3  # edited, digest not recomputed
    (model / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="does not match its card_sha256"):
        load_model_dir(model)
