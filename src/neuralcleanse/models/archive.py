"""Inspect a zip-based model file before any library loader opens it.

``.pt2`` programs, ``torch.save`` state dicts and TorchScript archives are zip files. A loader that
trusts the archive can be made to run native code (an AOTInductor ``.so`` inside a ``.pt2`` is loaded by
``torch.export.load``), to write outside a directory (member names with ``..``), or to exhaust memory (a
zip bomb). Every archive is therefore read here first, with Python's :mod:`zipfile`, and checked:

* member names: relative, no ``..``, ``.``, empty or backslash components, no NUL, no duplicates, all
  under the one root folder torch writes;
* no symbolic links, no encrypted members, no shared libraries (by name or by ELF/Mach-O/PE magic), no
  AOTInductor, ExecuTorch, MTIA or external-weights folders;
* sizes: member count, total uncompressed size and the compression ratio of large members are capped;
* an allow-list per format (:func:`allowed_members`): only the members a plain ``torch.export.save`` or
  ``torch.save`` writes are accepted.

A file that passes is **re-packed** (:meth:`ZipArchive.repack`): a fresh archive holding only the
accepted members is what the torch loader sees, so whatever else the original file hides (data before
the first member, a second central directory, local headers that disagree with it) never reaches it.
Every refusal is a one-line :class:`~neuralcleanse.errors.ModelError` naming the member.
"""

from __future__ import annotations

import io
import re
import stat
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath

from ..errors import ModelError

__all__ = ["ZipLimits", "ZipArchive", "open_archive", "archive_kind", "allowed_members"]

_MiB = 1 << 20
_NATIVE_SUFFIXES = (".so", ".dll", ".dylib", ".pyd", ".o", ".a", ".exe", ".bin")
# source code a compiler or interpreter would turn into native code: never part of a plain program
_SOURCE_SUFFIXES = (".c", ".cc", ".cpp", ".cxx", ".cu", ".h", ".hpp", ".py", ".pyc", ".sh", ".ptx", ".cubin")
_NATIVE_MAGIC = (b"\x7fELF", b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe", b"\xca\xfe\xba\xbe")
# raw tensor storages hold arbitrary bytes: a 2-byte magic (PE's "MZ") is only looked for in other members
_STORAGE = re.compile(r"(data/weights/weight_\d+|data/constants/tensor_\d+|data/\d+|constants/\d+)\Z")
_FORBIDDEN_DIRS = {
    "data/aotinductor/": "an AOTInductor package (compiled native code that torch would load and run)",
    "data/executorch/": "an ExecuTorch program",
    "data/mtia": "an MTIA program",
    "xl_model_weights/": "weights stored outside the program",
}
_ID = r"[A-Za-z_][A-Za-z0-9_.-]{0,99}"
_EXPORT_MEMBERS = re.compile(
    rf"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    rf"|models/{_ID}\.json|data/weights/{_ID}_weights_config\.json|data/weights/weight_\d+"
    rf"|data/constants/{_ID}_constants_config\.json|data/constants/tensor_\d+"
    rf"|data/sample_inputs/{_ID}\.pt|extra/{_ID})\Z"
)
_STATE_DICT_MEMBERS = re.compile(
    r"(data\.pkl|byteorder|version|\.format_version|\.storage_alignment|\.data/version"
    r"|\.data/serialization_id|data/\d+)\Z"
)
# TorchScript runs its embedded code anyway (loaded only on the user's explicit opt-in): any member whose
# name passed the checks above is accepted; native code and unsafe names are still refused
_TORCHSCRIPT_MEMBERS = re.compile(r".+\Z", re.DOTALL)


@dataclass(frozen=True)
class ZipLimits:
    """What an archive may declare before it is refused as a zip bomb or a resource attack.

    Attributes:
        max_members: number of members.
        max_total_bytes: sum of the members' uncompressed sizes.
        max_ratio: uncompressed/compressed size of a member larger than ``ratio_from_bytes``
            (torch writes members uncompressed; a ratio of 100 is already far from any real model).
    """

    max_members: int = 100_000
    max_total_bytes: int = 16 << 30
    max_ratio: float = 100.0
    ratio_from_bytes: int = 1 * _MiB


@dataclass(frozen=True, eq=False)
class ZipArchive:
    """A checked archive: ``members`` maps names relative to ``root`` to their zip entries."""

    source: str
    root: str
    members: dict[str, zipfile.ZipInfo]
    _zip: zipfile.ZipFile

    def read(self, name: str) -> bytes:
        """A member's bytes (at most its declared size: :mod:`zipfile` stops there and checks the CRC)."""
        try:
            return self._zip.read(self.members[name])
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise ModelError(
                f"{self.source}: corrupt archive member {self.full_name(name)} ({exc})"
            ) from None

    def check_members(self, kind: str) -> None:
        """Refuse every member outside the allow-list of ``kind`` (see :func:`allowed_members`)."""
        pattern = allowed_members(kind)
        for name in self.members:
            if name.startswith(("data/constants/custom_obj_", "data/constants/opaque_obj_")):
                raise ModelError(
                    f"{self.source}: refused: member {self.full_name(name)} is a pickled Python object, "
                    "which would run code if loaded"
                )
            if not pattern.match(name):
                raise ModelError(
                    f"{self.source}: refused: member {self.full_name(name)} is not part of a plain "
                    f"{_KIND_NAMES[kind]} archive"
                )

    def full_name(self, name: str) -> str:
        return f"{self.root}/{name}" if self.root else name

    def repack(self) -> bytes:
        """A fresh, uncompressed archive with only this archive's (checked) members, same root name."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as out:
            for name in self.members:
                info = zipfile.ZipInfo(self.full_name(name), date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                out.writestr(info, self.read(name))
        return buf.getvalue()


_KIND_NAMES = {
    "export": "torch.export program",
    "state-dict": "torch.save",
    "torchscript": "TorchScript",
    "keras": "Keras (.keras)",
}
# a .keras file: the model's JSON config, metadata, weights (HDF5 or npz) and the layers' assets
_KERAS_MEMBERS = re.compile(
    rf"(config\.json|metadata\.json|model\.weights\.(h5|npz)|assets/(?:{_ID}/)*{_ID})\Z"
)


def allowed_members(kind: str) -> re.Pattern[str]:
    """The member names (relative to the archive's root folder) a plain archive of ``kind`` holds."""
    patterns = {
        "export": _EXPORT_MEMBERS,
        "state-dict": _STATE_DICT_MEMBERS,
        "torchscript": _TORCHSCRIPT_MEMBERS,
        "keras": _KERAS_MEMBERS,
    }
    return patterns[kind]


def _check_name(name: str, source: str) -> None:
    def bad(why: str) -> ModelError:
        return ModelError(f"{source}: refused: archive member {name[:120]!r} {why}")

    if "\x00" in name or "\\" in name:
        raise bad("has a NUL or backslash in its name")
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        raise bad("has an absolute path")
    parts = name.rstrip("/").split("/")
    if any(p == ".." for p in parts):
        raise bad("points outside the archive (a '..' component)")
    if any(p in ("", ".") for p in parts):
        raise bad("has an empty or '.' path component")


def open_archive(data: bytes, source: str, *, limits: ZipLimits | None = None) -> ZipArchive:
    """Open and check the zip archive in ``data`` (the bytes of ``source``); see the module docstring.

    torch archives keep every member under one root folder (``ZipArchive.root``); a Keras ``.keras``
    file (``config.json`` and ``metadata.json`` at the top) has none (``root == ""``).
    """
    lim = limits or ZipLimits()
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ModelError(f"{source}: truncated or corrupt archive ({exc})") from None
    if not infos:
        raise ModelError(f"{source}: empty archive")
    if len(infos) > lim.max_members:
        raise ModelError(f"{source}: refused: {len(infos)} archive members (limit {lim.max_members})")
    total = 0
    seen: set[str] = set()
    roots: set[str] = set()
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename
        _check_name(name, source)
        if name in seen:
            raise ModelError(f"{source}: refused: archive member {name!r} appears twice")
        seen.add(name)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise ModelError(f"{source}: refused: archive member {name!r} is a symbolic link")
        if info.flag_bits & 0x1:
            raise ModelError(f"{source}: refused: archive member {name!r} is encrypted")
        total += info.file_size
        if total > lim.max_total_bytes:
            raise ModelError(
                f"{source}: refused: members declare more than {lim.max_total_bytes:,} bytes uncompressed "
                f"(at {name!r}): a zip bomb or not a model"
            )
        if info.file_size >= lim.ratio_from_bytes and info.file_size > lim.max_ratio * max(
            info.compress_size, 1
        ):
            raise ModelError(
                f"{source}: refused: archive member {name!r} is compressed "
                f"{info.file_size / max(info.compress_size, 1):.0f}:1 (a zip bomb)"
            )
        if info.is_dir():
            continue
        root, _, rel = name.partition("/")
        roots.add(root if rel else "")
        members[name] = info
    if {"config.json", "metadata.json"} <= set(members):  # a .keras file: no root folder
        archive = ZipArchive(source, "", members, zf)
    else:
        if "" in roots:
            top = next(n for n in members if "/" not in n)
            kind = " (an .npz array file?)" if top.endswith(".npy") else ""
            raise ModelError(
                f"{source}: a zip archive that is not a model file neuralcleanse reads{kind}: torch keeps "
                f"every member under one root folder, and {top!r} is not"
            )
        if len(roots) != 1:
            raise ModelError(
                f"{source}: refused: archive members under {len(roots)} root folders, expected one"
            )
        root = roots.pop()
        archive = ZipArchive(source, root, {n[len(root) + 1 :]: i for n, i in members.items()}, zf)
    _refuse_native_code(archive)
    return archive


def _refuse_native_code(archive: ZipArchive) -> None:
    for name, info in archive.members.items():
        full = archive.full_name(name)
        for folder, what in _FORBIDDEN_DIRS.items():
            if name.startswith(folder):
                raise ModelError(f"{archive.source}: refused: member {full} belongs to {what}")
        if PurePosixPath(name).suffix.lower() in _NATIVE_SUFFIXES or ".so." in PurePosixPath(name).name:
            raise ModelError(f"{archive.source}: refused: member {full} is a shared library or binary")
        # TorchScript's own code/ folder is TorchScript (refused without --allow-torchscript)
        if PurePosixPath(name).suffix.lower() in _SOURCE_SUFFIXES and not name.startswith("code/"):
            raise ModelError(
                f"{archive.source}: refused: member {full} is source code (compiled or run by loaders)"
            )
        if info.file_size >= 4:
            with archive._zip.open(info) as fh:
                head = fh.read(4)
            if head.startswith(_NATIVE_MAGIC) or (head.startswith(b"MZ") and not _STORAGE.match(name)):
                raise ModelError(
                    f"{archive.source}: refused: member {full} is native code (executable header)"
                )


def archive_kind(archive: ZipArchive) -> str:
    """``export``, ``torchscript``, ``state-dict`` or ``keras`` from the member names; a ModelError otherwise."""
    names = archive.members
    if not archive.root:
        return "keras"
    if "archive_format" in names:
        return "export"
    if "constants.pkl" in names and any(n.startswith("code/") for n in names):
        return "torchscript"
    if "data.pkl" in names:
        return "state-dict"
    raise ModelError(
        f"{archive.source}: a zip archive that is neither a torch.export program, TorchScript nor torch.save"
    )
