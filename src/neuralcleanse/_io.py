"""Atomic file and directory writes: a result is either complete or absent, never half written."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import DataError, NeuralCleanseError, SettingsError, first_line

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_directory",
    "read_json",
    "read_result",
    "format_version",
    "check_output_dir",
    "check_output_file",
    "check_writable_parent",
    "inside",
    "refuse_special",
    "special_kind",
    "mode_kind",
]

#: what a path that is neither a regular file nor a directory is, by its stat mode
_SPECIAL = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
)


def special_kind(path: str | os.PathLike[str]) -> str | None:
    """What ``path`` is when it exists and is neither a regular file nor a directory (``None`` otherwise:
    a missing or unreadable path is left to the caller's own message). Only ``stat``: a FIFO is never
    opened (opening one blocks until a writer comes), a device never read (``/dev/zero`` has no end)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return mode_kind(mode)


def mode_kind(mode: int) -> str | None:
    """What a ``stat`` mode says a path is when it is neither a regular file nor a directory (``None``
    when it is one of them): :func:`special_kind` for a mode already read."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return next((kind for test, kind in _SPECIAL if test(mode)), "a special file")


def refuse_special(
    path: str | os.PathLike[str], *, what: str, error: type[NeuralCleanseError] = DataError
) -> None:
    """A one-line ``error`` when ``path`` (``what`` it should be) is a device, a FIFO or a socket."""
    kind = special_kind(path)
    if kind is not None:
        raise error(f"{path}: {what} is {kind}, not a regular file")


def inside(root: str | os.PathLike[str], path: str | os.PathLike[str], *, what: str) -> Path:
    """``path`` when it lies inside ``root`` once symbolic links are followed (what a file names, a link
    in a folder); otherwise a one-line :class:`DataError`: a data folder, a scan folder or an annotation
    file may not make the tool read files elsewhere (``..``, an absolute path, a link out)."""
    p = Path(path)
    try:
        real, base = p.resolve(), Path(root).resolve()
    except (OSError, RuntimeError) as exc:  # a link loop
        raise DataError(f"{p}: {what} cannot be resolved ({exc})") from None
    if not real.is_relative_to(base):
        raise DataError(f"{p}: {what} leads outside {root} (to {real}): refused")
    return p


#: what a disk, not the code, makes fail (a full disk, a quota, a read-only or failing file system)
DISK_ERRORS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG, errno.EACCES, errno.EPERM}
)


def disk_error_line(exc: OSError) -> str | None:
    """The one line for an error the disk caused, not the code: a file that cannot be read or written
    (named), or a write that failed for lack of space, quota or access (by a library that names no file);
    None for any other (a bug). The command line and the fleet's failures say it alike."""
    if exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or type(exc).__name__}"
    if exc.errno in DISK_ERRORS:
        return f"writing the results failed: {exc.strerror} (nothing half-written is kept)"
    return None


@contextlib.contextmanager
def run_lock(path: str | os.PathLike[str], *, option: str) -> Iterator[None]:
    """Within the block this process is the only neuralcleanse run writing the result ``path``: an
    exclusive lock on ``.NAME.lock`` beside it (removed at the end); a second run is refused at once with
    a one-line :class:`SettingsError` naming ``option``, instead of doing its work and then failing or
    doing the first one's again. Where no lock can be taken (no such folder yet, no ``fcntl``) it runs
    without one."""
    out = Path(path)
    lock = out.parent / f".{out.name}.lock"
    try:
        import fcntl

        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SettingsError(
                f"{option} {out}: another neuralcleanse run is writing it now; wait for that one to end, or "
                f"choose another {option}"
            ) from None
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                lock.unlink()
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; results are meant to be shared
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:  # a full disk: say which file it was
            raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from exc
        raise


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON (NaN/inf are refused: callers encode them explicitly)."""
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: str | os.PathLike[str], *, what: str, error: type[NeuralCleanseError] = DataError) -> Any:
    """The JSON value in the file at ``path``, or a one-line ``error`` naming the file and ``what`` it
    should hold (``{path}: {what} not found``, ``{path}: cannot read {what} (...)``)."""
    file = Path(path)
    refuse_special(file, what=what, error=error)
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{file}: {what} not found") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError: bad JSON, or an integer of more digits than Python converts; RecursionError: nesting
        raise error(f"{file}: cannot read {what} ({first_line(exc, limit=200)})") from None


def read_result(path: str | os.PathLike[str], file_name: str, *, what: str) -> tuple[Path, Any]:
    """Where a saved result is and its JSON value: ``path`` is the JSON file itself or the directory that
    holds it as ``file_name``; read with :func:`read_json` (one-line :class:`DataError`). Every result is a
    JSON object: any other value is refused naming what the file holds."""
    p = Path(path)
    # a result folder's file may not be a link out of it (its trigger files may not either)
    file = inside(p, p / file_name, what=f"its {file_name}") if p.is_dir() else p
    value = read_json(file, what=what)
    if not isinstance(value, dict):
        kind = {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
            type(value), "a number"
        )
        raise DataError(f"{file}: not a {what} (the file holds {kind}, not a JSON object)")
    return file, value


def format_version(value: Any) -> Any:
    """The ``format_version`` a result's JSON records (``None`` if it is not an object or records none)."""
    return value.get("format_version") if isinstance(value, dict) else None


def _where(out: Path, option: str | None) -> str:
    return f"{option} {out}" if option else f"output path {out}"


def check_writable_parent(path: str | os.PathLike[str], *, option: str | None = None) -> Path:
    """Check that ``path`` can be created: its nearest existing ancestor is a directory in which a file
    can be written (probed with a temporary file that is removed at once). One-line
    :class:`SettingsError` naming ``option`` (or the path) otherwise."""
    out = Path(path)
    where = _where(out, option)
    ancestor = out.parent if str(out.parent) else Path(".")
    while not ancestor.exists():
        if ancestor.is_symlink():
            raise SettingsError(f"{where}: {ancestor} is a dangling symbolic link")
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise SettingsError(f"{where}: {ancestor} is a file, not a directory")
    _probe_write(ancestor, where)
    return out


def check_output_dir(
    path: str | os.PathLike[str],
    *,
    force: bool,
    option: str | None = None,
    inputs: Sequence[str | os.PathLike[str] | None] = (),
) -> Path:
    """Check, before any work, that a result directory can be written at ``path``: not a file, empty
    (or ``force``: it will be replaced), and its parent writable. A result directory is replaced as a
    whole, so it may not be the working directory or one that contains it, nor hold any of ``inputs``
    (the files the command reads: the model, its data) — not even with ``force``. One-line
    :class:`SettingsError` naming ``option`` (or the path) otherwise."""
    out = Path(path)
    where = _where(out, option)
    here = Path.cwd().resolve()
    target = out.resolve()
    if target == here or target in here.parents or target == Path.home().resolve():
        raise SettingsError(
            f"{where}: that is the working directory, a folder above it or your home; a result directory is "
            "replaced as a whole: name a new folder"
        )
    for given in inputs:
        if given is not None and Path(given).resolve().is_relative_to(target):
            raise SettingsError(
                f"{where} holds {given}, which this command reads; a result directory is replaced as a "
                "whole: name another folder"
            )
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise SettingsError(f"{where} exists and is not a directory")
        if not force and any(out.iterdir()):
            how = "use --force" if option else "pass force=True"
            raise SettingsError(f"{where}: directory exists and is not empty ({how} to replace it)")
        if os.path.ismount(out):
            raise SettingsError(
                f"{where} is a mount point; a result directory is replaced as a whole: name a folder inside it"
            )
        _probe_write(out, where)  # it is replaced, so it must be one this process may change
    return check_writable_parent(out, option=option)


def _probe_write(folder: Path, where: str) -> None:
    """One-line :class:`SettingsError` unless a file can be written in ``folder`` (probed with a
    temporary file that is removed at once)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".neuralcleanse-write-test-", dir=folder)
    except OSError as exc:
        raise SettingsError(f"{where}: cannot write in {folder} ({exc.strerror or exc})") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def check_output_file(path: str | os.PathLike[str], *, option: str | None = None) -> Path:
    """Check, before any work, that a file can be written at ``path`` (not a directory, parent writable)."""
    out = Path(path)
    if out.is_dir():
        raise SettingsError(f"{_where(out, option)} is a directory; give a file name")
    return check_writable_parent(out, option=option)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], *, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``path``; on success it replaces ``path``.

    On any error the temporary directory is removed and ``path`` is left as it was.
    """
    out = check_output_dir(path, force=force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        if out.exists():
            os.chmod(tmp, stat.S_IMODE(out.stat().st_mode))  # the folder it replaces keeps its permissions
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
