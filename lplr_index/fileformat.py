"""The lplr-index file format: a versioned, self-describing binary container.

Layout (all integers little-endian)::

    offset  size  field
    0       8     magic  b"LPLRIDX\\0"
    8       4     format version (uint32)
    12      4     header length H in bytes (uint32)
    16      4     CRC-32 of bytes 0..15 followed by the header
    20      H     header: UTF-8 JSON, sorted keys, no whitespace
    20+H    ...   zero padding to a multiple of 8, then the arrays, each
                  starting at a multiple of 8 bytes, in header order

The header holds every setting plus an ``"arrays"`` table: for each array its
``name``, ``dtype`` (numpy string, little-endian), ``shape``, ``offset``
(relative to the start of the array section) and ``crc32`` (8 hex digits). The file ends
exactly where the last array ends. Nothing is pickled; a reader needs only
``json`` and ``zlib``.

Reading checks, in order: the magic (foreign file), the size of the prefix
(truncated), the header CRC (damaged), the version (written by a newer
library), the header's structure, the file length (truncated or trailing
bytes), and each array's CRC (damaged payload). Every failure raises
:class:`IndexFileError` naming the file and what is wrong.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MAGIC", "FORMAT_VERSION", "IndexFileError", "write_container", "read_container", "container_nbytes"]

MAGIC = b"LPLRIDX\x00"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sII")  # magic, version, header length
_CRC = struct.Struct("<I")
_ALIGN = 8
_MAX_HEADER = 1 << 24
_DTYPES = {"<f4": np.float32, "|u1": np.uint8, "<f8": np.float64, "<i8": np.int64}


class IndexFileError(ValueError):
    """An index file is missing, foreign, damaged, truncated or too new."""


def _pad(n: int) -> int:
    return (-n) % _ALIGN


def _layout(arrays: dict[str, np.ndarray]) -> tuple[list[dict], int]:
    """Array table (without CRCs) and the size of the array section."""
    table, offset = [], 0
    for name, arr in arrays.items():
        offset += _pad(offset)
        table.append(
            {"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape), "offset": offset}
        )
        offset += arr.nbytes
    return table, offset


def _header_bytes(header: dict, table: list[dict]) -> bytes:
    doc = dict(header)
    doc["arrays"] = table
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def container_nbytes(header: dict, arrays: dict[str, np.ndarray]) -> int:
    """Exact size in bytes of the file :func:`write_container` would write.

    Needs only the arrays' shapes and dtypes (CRCs print with a fixed width).
    """
    table, data = _layout(arrays)
    for entry in table:
        entry["crc32"] = "00000000"
    start = _PREFIX.size + _CRC.size + len(_header_bytes(header, table))
    return start + _pad(start) + data


def _crc(arr: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(arr)).cast("B")) & 0xFFFFFFFF


def write_container(path: str | os.PathLike, header: dict, arrays: dict[str, np.ndarray]) -> int:
    """Write ``header`` and ``arrays`` to ``path`` atomically; return the file size.

    The file is written to a temporary file in the same folder, flushed to
    disk, then renamed over ``path``: a crash leaves the old file (or none),
    never a half-written one.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(2, "no such folder to save the index in", str(folder))
    table, _ = _layout(arrays)
    for entry, arr in zip(table, arrays.values()):
        entry["crc32"] = f"{_crc(arr):08x}"
    head = _header_bytes(header, table)
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(head))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(prefix)
            f.write(_CRC.pack(zlib.crc32(prefix + head) & 0xFFFFFFFF))
            f.write(head)
            pos = _PREFIX.size + _CRC.size + len(head)
            f.write(b"\0" * _pad(pos))
            written = 0
            for entry, arr in zip(table, arrays.values()):
                f.write(b"\0" * (entry["offset"] - written))
                f.write(memoryview(np.ascontiguousarray(arr)).cast("B"))
                written = entry["offset"] + arr.nbytes
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return size


def read_container(path: str | os.PathLike, *, mmap: bool = False, verify: bool = True):
    """Read a container written by :func:`write_container`.

    Parameters
    ----------
    path : str or path-like
    mmap : bool, default=False
        Map the arrays read-only from the file instead of reading them into memory.
    verify : bool, default=True
        Check every array's CRC-32 (reads the whole file once).

    Returns
    -------
    header : dict
        The JSON header, its ``"arrays"`` table removed.
    arrays : dict of str to ndarray

    Raises
    ------
    IndexFileError
        Naming the file and what is wrong with it.
    """
    path = Path(path)
    name = str(path)

    def fail(msg: str) -> IndexFileError:
        return IndexFileError(f"{name}: {msg}")

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(_PREFIX.size + _CRC.size)
            if len(prefix) >= 8 and prefix[:8] != MAGIC:
                raise fail("not an lplr-index file (wrong magic bytes)")
            if len(prefix) < _PREFIX.size + _CRC.size:
                raise fail(f"truncated: {size} bytes, too short to hold the file prefix")
            magic, version, hlen = _PREFIX.unpack(prefix[: _PREFIX.size])
            (hcrc,) = _CRC.unpack(prefix[_PREFIX.size :])
            if hlen > min(_MAX_HEADER, size):
                raise fail(
                    f"damaged or truncated: header length {hlen} does not fit in a {size}-byte file"
                )
            head = f.read(hlen)
    except FileNotFoundError:
        raise IndexFileError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise IndexFileError(f"{name}: is a directory, not an index file") from None
    if len(head) < hlen:
        raise fail(f"truncated: the header needs {hlen} bytes, the file ends after {len(head)}")
    if zlib.crc32(prefix[: _PREFIX.size] + head) & 0xFFFFFFFF != hcrc:
        raise fail("damaged: the header checksum does not match")
    if version > FORMAT_VERSION:
        raise fail(
            f"written in format version {version} by a newer lplr-index; this library reads "
            f"version {FORMAT_VERSION}: upgrade lplr-index to load it"
        )
    if version < 1:
        raise fail(f"damaged: format version {version} does not exist")
    try:
        header = json.loads(head.decode("utf-8"))
        table = header.pop("arrays")
        entries = _check_table(table)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, OverflowError) as exc:
        raise fail(f"damaged: malformed header ({type(exc).__name__}: {str(exc)[:200]})") from None
    start = _PREFIX.size + _CRC.size + hlen
    start += _pad(start)
    end = start + max((off + nbytes for _, _, _, off, nbytes, _ in entries), default=0)
    if size < end:
        raise fail(f"truncated: {size} bytes, but the header describes {end}")
    if size > end:
        raise fail(f"damaged: {size - end} unexpected bytes after the last array")
    ends = sorted((off, off + nbytes) for _, _, _, off, nbytes, _ in entries)
    for (_, end_a), (start_b, _) in zip(ends, ends[1:]):
        if start_b < end_a:
            raise fail("damaged: arrays overlap in the header's table")
    arrays: dict[str, np.ndarray] = {}
    if mmap:
        raw = np.memmap(path, dtype=np.uint8, mode="r")
    else:
        with open(path, "rb") as f:
            raw = np.frombuffer(f.read(), dtype=np.uint8)
        if raw.size != size:
            raise fail("changed while being read")
    # alignment padding is covered by no checksum: it must be all zeros
    gaps, pos = [(_PREFIX.size + _CRC.size + hlen, start)], start
    for lo, hi in ends:
        gaps.append((pos, start + lo))
        pos = start + hi
    for lo, hi in gaps:
        if hi > lo and np.any(np.asarray(raw[lo:hi])):
            raise fail(f"damaged: non-zero padding bytes at offset {lo}")
    for aname, dtype, shape, off, nbytes, crc in entries:
        view = raw[start + off : start + off + nbytes]
        if verify and zlib.crc32(memoryview(view)) & 0xFFFFFFFF != crc:
            raise fail(f"damaged: checksum mismatch in array {aname!r}")
        arrays[aname] = view.view(dtype).reshape(shape)
    return header, arrays


def _check_table(table: Any) -> list[tuple]:
    if not isinstance(table, list):
        raise TypeError("'arrays' is not a list")
    out, names = [], set()
    for e in table:
        name, dt, shape, off, crc = e["name"], e["dtype"], e["shape"], e["offset"], e["crc32"]
        if not isinstance(name, str) or name in names:
            raise ValueError(f"bad or repeated array name {name!r}")
        if dt not in _DTYPES:
            raise ValueError(f"array {name!r} has unsupported dtype {dt!r}")
        if not isinstance(shape, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 1 << 40 for s in shape
        ):
            raise ValueError(f"array {name!r} has a bad shape {shape!r}")
        if not isinstance(off, int) or isinstance(off, bool) or not 0 <= off < 1 << 48:
            raise ValueError(f"array {name!r} has a bad offset {off!r}")
        if not isinstance(crc, str) or len(crc) != 8:
            raise ValueError(f"array {name!r} has a bad checksum {crc!r}")
        crc = int(crc, 16)
        dtype = np.dtype(_DTYPES[dt])
        nbytes = dtype.itemsize
        for s in shape:  # Python ints: no wrap-around
            nbytes *= s
        if nbytes >= 1 << 48:
            raise ValueError(f"array {name!r} of shape {shape} is impossibly large")
        names.add(name)
        out.append((name, dtype, tuple(shape), off, nbytes, crc))
    return out
