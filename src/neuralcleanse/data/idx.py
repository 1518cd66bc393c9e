"""Reader for the IDX format of MNIST and Fashion-MNIST (gzip'd or plain, detected from the bytes)."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .._io import refuse_special
from ..errors import DataError

__all__ = ["read_idx", "write_idx"]

_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
#: the most dimensions an IDX file of images or labels has (count, height, width, channels), with room
_MAX_DIMS = 8
_CODES = {np.dtype(v).newbyteorder("=").str: k for k, v in _DTYPES.items()}


#: gzip'd IDX data may expand to at most this many times its compressed size (MNIST-like files expand
#: 2-6 times; a file of zeros over 1,000 times: a gzip bomb), or to this many bytes, whichever is more
_MAX_RATIO = 100
_SMALL = 64 << 20


def _read_bytes(path: Path) -> bytes:
    refuse_special(path, what="an IDX file")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if raw[:2] == b"\x1f\x8b":
        return _gunzip(path, raw)
    return raw


def _gunzip(path: Path, raw: bytes) -> bytes:
    """``raw``'s gzip members decompressed a block at a time, refused once they expand past the limit
    (before the memory is taken, unlike ``gzip.decompress``)."""
    limit = max(_SMALL, _MAX_RATIO * len(raw))
    out = bytearray()
    data = raw
    try:
        while data:
            member = zlib.decompressobj(wbits=31)
            while not member.eof:
                chunk = member.decompress(data, 1 << 20)  # with no input left, what is still pending
                data = member.unconsumed_tail
                if not chunk and not data:
                    raise DataError(f"{path}: corrupt gzip data (truncated)")
                out += chunk
                if len(out) > limit:
                    raise DataError(
                        f"{path}: gzip data of {len(raw)} bytes expands to more than {limit} bytes (over "
                        f"{_MAX_RATIO} times: a gzip bomb?)"
                    )
            data = member.unused_data.lstrip(b"\x00")  # concatenated members; zero padding ends them
    except zlib.error as exc:
        raise DataError(f"{path}: corrupt gzip data ({exc})") from None
    return bytes(out)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file into a numpy array of its declared type and shape.

    Raises:
        DataError: missing file, bad magic number, unknown type code, or a size that does not match
            the header.
    """
    p = Path(path)
    data = _read_bytes(p)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{p}: not an IDX file (bad magic number)")
    code, ndim = data[2], data[3]
    if code not in _DTYPES:
        raise DataError(f"{p}: corrupt IDX header (unknown type code 0x{code:02x})")
    if ndim == 0 or len(data) < 4 + 4 * ndim:
        raise DataError(f"{p}: corrupt IDX header (truncated dimensions)")
    if ndim > _MAX_DIMS:
        raise DataError(
            f"{p}: corrupt IDX header ({ndim} dimensions; images and labels have at most {_MAX_DIMS})"
        )
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = _DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize  # Python integers: no overflow to a small number
    body = data[4 + 4 * ndim :]
    if len(body) != expected:
        raise DataError(
            f"{p}: corrupt IDX file (header says {dims} = {expected} bytes of data, found {len(body)})"
        )
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike[str], array: np.ndarray, *, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file (gzip'd if ``compress`` or the name ends in ``.gz``)."""
    p = Path(path)
    arr = np.asarray(array)
    code = _CODES.get(arr.dtype.newbyteorder("=").str)
    if code is None:
        raise DataError(f"IDX cannot store dtype {arr.dtype}")
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + arr.astype(_DTYPES[code]).tobytes()
    if compress if compress is not None else p.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    p.write_bytes(payload)
