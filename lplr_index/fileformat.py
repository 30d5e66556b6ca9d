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

The container layout is the same in every format version (1 to 6); the version
tells the index which settings and arrays its header and table hold (2 added the
mean; 3 the codec setting, the grouped codes' arrays and int32 arrays; 4 a third
column of ``vq_groups``, the code levels of a class, and two-level codebooks; 5 the
``nlist`` setting, the header's default ``nprobe``, and a partitioned index's coarse
centroids and packed list numbers, ``ivf_centroids`` and ``ivf_lists``; 6 the header's
``rerank_factor``, the fast-scan candidates per result its build measured). A reader
accepts :data:`SUPPORTED_VERSIONS`; a writer writes the version its caller asks
for (:data:`FORMAT_VERSION` by default).

Reading checks, in order: the magic (foreign file), the size of the prefix
(truncated), the header CRC (damaged), the version (written by a newer
library), the header's structure, the file length (truncated or trailing
bytes), the zero padding and each array's CRC (damaged payload). Every failure
raises :class:`IndexFileError` naming the file and what is wrong.

Files are read through one open file descriptor (header, arrays, checks and the
memory map alike), so a reader racing a writer that atomically replaces the
file sees the old or the new file, never a mix of both. Files are written to a
temporary file in the target's folder, fsynced, renamed over the target, and
the folder is fsynced: a crash or a power loss leaves the old file or the new
one. Temporary files are named ``.{name}.lplr-tmp.{pid}.{random}`` and are
held under an exclusive ``flock`` while written; the next save to the same
path removes those left by killed saves (see :data:`STALE_TEMP_AGE_S`).
"""

from __future__ import annotations

import errno
import io
import json
import mmap as _mmap
import os
import secrets
import stat
import struct
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, Union

import numpy as np

try:  # POSIX; elsewhere temporary files are not locked and stale ones go by age alone
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "SUPPORTED_VERSIONS",
    "STALE_TEMP_AGE_S",
    "IndexFileError",
    "Container",
    "write_container",
    "read_container",
    "container_to_bytes",
    "container_nbytes",
    "check_output_path",
    "source_name",
]

MAGIC = b"LPLRIDX\x00"
#: version written by default
FORMAT_VERSION = 6
#: versions this library reads
SUPPORTED_VERSIONS = (1, 2, 3, 4, 5, 6)
#: a temporary file of a killed save is removed by the next save to the same path
#: once it is not locked by a live writer and either its writer process is gone
#: (same machine) or it is older than this many seconds (15 minutes)
STALE_TEMP_AGE_S = 15 * 60
#: bytes written (and checksummed) per step: large arrays are never copied whole
CHUNK_BYTES = 1 << 24

_PREFIX = struct.Struct("<8sII")  # magic, version, header length
_CRC = struct.Struct("<I")
_ALIGN = 8
_MAX_HEADER = 1 << 24
_DTYPES = {"<f4": np.float32, "|u1": np.uint8, "<f8": np.float64, "<i8": np.int64, "<i4": np.int32}
_TMP_TAG = ".lplr-tmp."
#: characters of the target's name kept in a temporary file's name (which stays under 255)
_TMP_NAME_CHARS = 200

Source = Union[str, os.PathLike, BinaryIO, bytes, bytearray, memoryview]
Target = Union[str, os.PathLike, BinaryIO]


class IndexFileError(ValueError):
    """An index file is missing, foreign, damaged, truncated, too new or unreadable."""


class Container(NamedTuple):
    """What :func:`read_container` returns.

    Attributes
    ----------
    header : dict
        The JSON header, its ``"arrays"`` table removed.
    arrays : dict of str to ndarray
        Read-only arrays in table order (views of the memory map with ``mmap=True``).
    version : int
        The file's format version, one of :data:`SUPPORTED_VERSIONS`.
    """

    header: dict
    arrays: dict[str, np.ndarray]
    version: int


def _pad(n: int) -> int:
    return (-n) % _ALIGN


def _layout(arrays: Mapping[str, np.ndarray]) -> tuple[list[dict], int]:
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


def container_nbytes(header: dict, arrays: Mapping[str, np.ndarray]) -> int:
    """Exact size in bytes of the file :func:`write_container` would write.

    Needs only the arrays' shapes and dtypes (CRCs print with a fixed width);
    the size does not depend on the format version.

    Parameters
    ----------
    header : dict
        JSON-serialisable settings (without an ``"arrays"`` key).
    arrays : mapping of str to ndarray (or objects with ``shape``, ``dtype`` and ``nbytes``)

    Returns
    -------
    int
    """
    table, data = _layout(arrays)
    for entry in table:
        entry["crc32"] = "00000000"
    start = _PREFIX.size + _CRC.size + len(_header_bytes(header, table))
    return start + _pad(start) + data


# ------------------------------------------------------------------ writing
def _byte_chunks(arr: np.ndarray) -> Iterator[memoryview]:
    """The bytes of ``arr`` in C order, in pieces of about :data:`CHUNK_BYTES`.

    A C-contiguous array (a memory map included) is sliced without copying; any
    other array is copied one block of rows at a time.
    """
    if arr.nbytes == 0:
        return
    if arr.flags.c_contiguous:
        flat = memoryview(arr.reshape(-1).view(np.uint8))
        for s in range(0, len(flat), CHUNK_BYTES):
            yield flat[s : s + CHUNK_BYTES]
        return
    if arr.ndim == 0:
        yield memoryview(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))
        return
    row_bytes = max(1, arr.nbytes // arr.shape[0])
    rows = max(1, CHUNK_BYTES // row_bytes)
    for s in range(0, arr.shape[0], rows):
        yield memoryview(np.ascontiguousarray(arr[s : s + rows]).reshape(-1).view(np.uint8))


def _crc(arr: np.ndarray) -> int:
    crc = 0
    for chunk in _byte_chunks(arr):
        crc = zlib.crc32(chunk, crc)
    return crc & 0xFFFFFFFF


def _check_version(version: Any) -> int:
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or int(version) not in SUPPORTED_VERSIONS:
        raise ValueError(f"version must be one of {SUPPORTED_VERSIONS}, got {version!r}")
    return int(version)


def _prepare(header: dict, arrays: Mapping[str, np.ndarray], version: Any) -> tuple[bytes, list, int]:
    """(prefix + CRC + header + padding, [(gap, array)], total size) of a container."""
    version = _check_version(version)
    if not isinstance(header, dict):
        raise TypeError(f"header must be a dict, got {type(header).__name__}")
    if "arrays" in header:
        raise ValueError("header must not hold an 'arrays' key: the container writes the array table")
    arrays = {name: np.asarray(arr) for name, arr in arrays.items()}
    for name, arr in arrays.items():
        if not isinstance(name, str):
            raise TypeError(f"array names must be str, got {name!r}")
        if arr.dtype.str not in _DTYPES:
            raise TypeError(
                f"array {name!r} has dtype {arr.dtype.str}; the format stores "
                f"{', '.join(_DTYPES)} only"
            )
    table, data = _layout(arrays)
    for entry, arr in zip(table, arrays.values()):
        entry["crc32"] = f"{_crc(arr):08x}"
    head = _header_bytes(header, table)
    if len(head) > _MAX_HEADER:
        raise ValueError(f"the header takes {len(head)} bytes, more than the format's {_MAX_HEADER}")
    prefix = _PREFIX.pack(MAGIC, version, len(head))
    start = _PREFIX.size + _CRC.size + len(head)
    lead = prefix + _CRC.pack(zlib.crc32(prefix + head) & 0xFFFFFFFF) + head + b"\0" * _pad(start)
    pieces, written = [], 0
    for entry, arr in zip(table, arrays.values()):
        pieces.append((entry["offset"] - written, arr))
        written = entry["offset"] + arr.nbytes
    return lead, pieces, len(lead) + data


def _pieces(lead: bytes, pieces: list) -> Iterator[bytes | memoryview]:
    yield lead
    for gap, arr in pieces:
        if gap:
            yield b"\0" * gap
        yield from _byte_chunks(arr)


def _write_all(f: Any, lead: bytes, pieces: list, total: int, progress: Callable | None) -> int:
    done = 0
    for piece in _pieces(lead, pieces):
        f.write(piece)
        done += len(piece)
        if progress is not None:
            progress(done, total)
    return done


def container_to_bytes(
    header: dict, arrays: Mapping[str, np.ndarray], *, version: int = FORMAT_VERSION
) -> bytes:
    """The container :func:`write_container` would write, as bytes.

    Parameters
    ----------
    header : dict
        JSON-serialisable settings (without an ``"arrays"`` key).
    arrays : mapping of str to ndarray
        Arrays of dtype float32, float64, int64 or uint8 (little-endian).
    version : int, default=FORMAT_VERSION
        Format version to write, one of :data:`SUPPORTED_VERSIONS`.

    Returns
    -------
    bytes
        Byte-identical to the file written by ``write_container(path, header, arrays)``;
        :func:`read_container` reads it back.

    Examples
    --------
    >>> import numpy as np
    >>> data = container_to_bytes({"a": 1}, {"x": np.arange(3, dtype=np.float32)})
    >>> c = read_container(data)
    >>> c.header, c.arrays["x"].tolist(), c.version
    ({'a': 1}, [0.0, 1.0, 2.0], 6)
    """
    lead, pieces, total = _prepare(header, arrays, version)
    out = b"".join(_pieces(lead, pieces))
    if len(out) != total:  # pragma: no cover - internal consistency
        raise RuntimeError(f"container is {len(out)} bytes, expected {total}")
    return out


def _user_folder(path: Path) -> str:
    folder = str(path.parent) if str(path.parent) not in ("", ".") else "."
    return folder if folder.endswith(os.sep) else folder + os.sep


def check_output_path(path: str | os.PathLike, *, force: bool = False) -> Path:
    """Check that an index can be saved at ``path``, before any expensive work.

    The folder must exist, be a folder and be writable; ``path`` itself must not
    be a folder or another non-regular file (a FIFO, a device), nor, unless
    ``force``, an existing file this process may not write (a read-only file:
    the atomic rename into a writable folder could replace it, where
    ``open(path, "wb")`` would refuse). A symlink is followed: the file it
    points to is what a save replaces.

    Parameters
    ----------
    path : str or path-like
        Where the index will be saved.
    force : bool, default=False
        Accept an existing file this process may not write (it is replaced).

    Returns
    -------
    pathlib.Path
        The file a save replaces: ``path``, or the target of the symlink ``path``.

    Raises
    ------
    FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError
        (all ``OSError``) with a message naming ``path`` as given: a missing folder,
        a parent that is a file, ``path`` a folder (or ending with a separator),
        ``path`` a FIFO or device, a folder this process cannot write, a file it
        may not write (without ``force``).
    TypeError
        ``path`` is not a str or path-like.

    Examples
    --------
    >>> check_output_path("nosuch/emb.lplr")
    Traceback (most recent call last):
    FileNotFoundError: cannot save to nosuch/emb.lplr: folder nosuch/ does not exist
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or path-like, got {type(path).__name__}")
    user = Path(path)
    shown = os.fspath(path)
    if shown == "":
        raise FileNotFoundError("output path is empty: give a file name")
    if shown.endswith(os.sep):
        raise IsADirectoryError(f"output path {shown} ends with {os.sep!r}: it names a folder, not an index file")
    dest = Path(os.path.realpath(user)) if os.path.islink(user) else user
    try:
        st = os.stat(dest)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            raise NotADirectoryError(
                f"cannot save to {shown}: {_user_folder(user)} is not a folder"
            ) from None
        raise type(exc)(exc.errno, f"cannot save to {shown}: {exc.strerror}") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(f"output path {shown} is a directory, not an index file")
        if not stat.S_ISREG(st.st_mode):
            raise FileExistsError(
                f"output path {shown} exists and is not a regular file ({_kind(st.st_mode)}); "
                "an index can only replace a regular file"
            )
    folder = dest.parent if str(dest.parent) else Path(".")
    where = _user_folder(user) if dest is user else f"{_user_folder(dest)} (where the link {shown} points)"
    if not os.path.exists(folder):
        raise FileNotFoundError(f"cannot save to {shown}: folder {where} does not exist")
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"cannot save to {shown}: {where} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot save to {shown}: folder {where} is not writable")
    if st is not None and not force and not os.access(dest, os.W_OK):
        what = "the file" if dest is user else f"the file {os.fspath(dest)} (where the link {shown} points)"
        raise PermissionError(
            errno.EACCES,
            f"cannot save to {shown}: {what} is read-only for this process (mode {stat.S_IMODE(st.st_mode):#o}); "
            "pass force=True to replace it",
        )
    return dest


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _tmp_prefix(dest: Path) -> str:
    """Start of the names of ``dest``'s temporary files: ``.{name}.lplr-tmp.``."""
    return f".{dest.name[:_TMP_NAME_CHARS]}{_TMP_TAG}"


def _remove_stale_temps(dest: Path, now: float | None = None) -> list[Path]:
    """Remove temporary files of killed saves to ``dest``; return what was removed.

    A temporary file is removed when no live writer holds its lock (a
    non-blocking ``flock`` succeeds) and its writer process is gone from this
    machine or the file is older than :data:`STALE_TEMP_AGE_S`.
    """
    folder = dest.parent if str(dest.parent) else Path(".")
    prefix = _tmp_prefix(dest)
    now = time.time() if now is None else now
    removed = []
    try:
        names = [n for n in os.listdir(folder) if n.startswith(prefix)]
    except OSError:
        return removed
    for name in names:
        tmp = folder / name
        try:
            fd = os.open(tmp, os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC | _O_BINARY)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                continue
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # a live writer holds it
            old = now - st.st_mtime > STALE_TEMP_AGE_S
            if old or (fcntl is not None and not _pid_alive(name[len(prefix):])):
                # still the file we locked (not a new one under the same name)?
                if os.stat(tmp, follow_symlinks=False).st_ino == st.st_ino:
                    os.unlink(tmp)
                    removed.append(tmp)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


def _pid_alive(tail: str) -> bool:
    """Whether the process named in a temporary file's name (``{pid}.{random}``) runs here."""
    pid = tail.split(".", 1)[0]
    if not pid.isdigit():
        return True  # unknown: rely on the age
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_CLOEXEC)
    except OSError:  # folders cannot be opened everywhere (Windows)
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def write_container(
    target: Target,
    header: dict,
    arrays: Mapping[str, np.ndarray],
    *,
    version: int = FORMAT_VERSION,
    progress: Callable[[int, int], Any] | None = None,
    force: bool = False,
) -> int:
    """Write ``header`` and ``arrays`` as a container; return its size in bytes.

    To a path, the write is atomic: the output path is checked first
    (:func:`check_output_path`), then the container is written to a temporary
    file ``.{name}.lplr-tmp.{pid}.{random}`` in the target's folder (held under
    an exclusive ``flock``), fsynced, renamed over the target, and the folder is
    fsynced. A crash leaves the old file (or none), never a half-written one; on
    any exception (Ctrl-C included) the temporary file is removed. Temporary
    files of earlier killed saves to the same path are removed first (see
    :data:`STALE_TEMP_AGE_S`). An existing target keeps its permission bits; a
    new file gets ``0o666`` minus the umask. A target this process may not
    write is refused unless ``force``. If the target is a symlink, the file it
    points to is replaced and the link stays. A target with other hard links is
    replaced by a new file: the other names keep the old content.

    To a file object, the bytes are written sequentially at its current
    position (no temporary file, no rename); the object is flushed, not closed.

    Parameters
    ----------
    target : str, path-like or writable binary file object
    header : dict
        JSON-serialisable settings (without an ``"arrays"`` key).
    arrays : mapping of str to ndarray
        Arrays of dtype float32, float64, int64 or uint8 (little-endian), in the
        order they are stored. Large and memory-mapped arrays are written in
        chunks of :data:`CHUNK_BYTES`, never copied whole.
    version : int, default=FORMAT_VERSION
        Format version written in the prefix, one of :data:`SUPPORTED_VERSIONS`.
    progress : callable ``progress(bytes_done, bytes_total)``, optional
        Called after each chunk is written.
    force : bool, default=False
        Replace a target path this process may not write (see :func:`check_output_path`).

    Returns
    -------
    int
        Bytes written, equal to :func:`container_nbytes`.

    Raises
    ------
    OSError
        The output path cannot be written, or writing it fails (a full disk, a
        file size limit): the message names ``target`` as given, the type and
        ``errno`` are the system's.
    TypeError, ValueError
        A bad ``target``, ``version``, header or array dtype.
    """
    if isinstance(target, (str, os.PathLike)):
        dest = check_output_path(target, force=force)
        lead, pieces, total = _prepare(header, arrays, version)
        return _write_path(target, dest, lead, pieces, total, progress)
    if isinstance(target, io.TextIOBase):
        raise TypeError("target is a text-mode file object; open it in binary mode ('wb')")
    if not callable(getattr(target, "write", None)):
        raise TypeError(
            f"target must be a path or a writable binary file object, got {type(target).__name__}"
        )
    lead, pieces, total = _prepare(header, arrays, version)
    done = _write_all(target, lead, pieces, total, progress)
    flush = getattr(target, "flush", None)
    if callable(flush):
        flush()
    return done


def _write_path(user: Any, dest: Path, lead: bytes, pieces: list, total: int, progress) -> int:
    folder = dest.parent if str(dest.parent) else Path(".")
    _remove_stale_temps(dest)
    try:
        mode = stat.S_IMODE(os.stat(dest).st_mode)
    except FileNotFoundError:
        mode = None
    tmp = folder / f"{_tmp_prefix(dest)}{os.getpid()}.{secrets.token_hex(4)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC | _O_BINARY, 0o666)
    except OSError as exc:
        raise type(exc)(exc.errno, f"cannot save to {os.fspath(user)}: {exc.strerror}") from None
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if mode is not None:  # the target's bits, whatever the umask
            if hasattr(os, "fchmod"):
                os.fchmod(fd, mode)
            else:  # pragma: no cover - Windows
                os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            fd = -1  # owned by f now
            size = _write_all(f, lead, pieces, total, progress)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, dest)  # still locked: a cleaner never sees it unlocked
        _fsync_folder(folder)
    except BaseException as exc:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):  # a full disk, a file size limit (EFBIG): name the user's path
            raise _named(exc, f"cannot save to {os.fspath(user)}") from None
        raise
    return size


def _named(exc: OSError, what: str) -> OSError:
    """``exc`` again (same type and errno), its message led by ``what``."""
    if exc.errno is None:
        return type(exc)(f"{what}: {exc}")
    try:
        return type(exc)(exc.errno, f"{what}: {exc.strerror}")
    except TypeError:  # pragma: no cover - an OSError subclass with another signature
        return OSError(exc.errno, f"{what}: {exc.strerror}")


# ------------------------------------------------------------------ reading
class _Reader:
    """Random access to the bytes of one source: a file descriptor or a buffer."""

    def __init__(self, name: str, size: int, fd: int | None = None, buf: np.ndarray | None = None):
        self.name, self.size, self.fd, self.buf = name, size, fd, buf

    def pread(self, offset: int, n: int) -> bytes:
        if self.buf is not None:
            return self.buf[offset : offset + n].tobytes()
        out, pos = [], offset
        while n > 0:
            if hasattr(os, "pread"):
                piece = os.pread(self.fd, n, pos)
            else:  # pragma: no cover - Windows
                os.lseek(self.fd, pos, os.SEEK_SET)
                piece = os.read(self.fd, n)
            if not piece:
                break
            out.append(piece)
            pos += len(piece)
            n -= len(piece)
        return b"".join(out)

    def whole(self, use_mmap: bool) -> np.ndarray:
        """All bytes of the source as a read-only uint8 array."""
        if self.buf is not None:
            return self.buf
        if use_mmap:
            mm = _mmap.mmap(self.fd, self.size, access=_mmap.ACCESS_READ)
            return np.frombuffer(mm, dtype=np.uint8)
        raw = np.empty(self.size, np.uint8)
        view, pos = memoryview(raw), 0
        with io.FileIO(self.fd, "rb", closefd=False) as f:
            f.seek(0)
            while pos < self.size:
                got = f.readinto(view[pos:])
                if not got:
                    raise IndexFileError(f"{self.name}: changed while being read (it shrank)")
                pos += got
            if f.read(1):
                raise IndexFileError(f"{self.name}: changed while being read (it grew)")
        raw.setflags(write=False)
        return raw


def source_name(source: Any) -> str:
    """How error messages name a ``source`` of :func:`read_container`.

    The path as given for a path, the file name of a file object opened on a path,
    ``"<bytes>"`` for bytes-like objects, ``"<TypeName>"`` for other file objects.

    Examples
    --------
    >>> import io
    >>> source_name("emb.lplr"), source_name(b"..."), source_name(io.BytesIO())
    ('emb.lplr', '<bytes>', '<BytesIO>')
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(source, (str, os.PathLike)):
        return os.fsdecode(os.fspath(source))
    name = getattr(source, "name", None)
    if isinstance(name, (str, bytes, os.PathLike)):
        return os.fsdecode(name)
    return f"<{type(source).__name__}>"


def read_container(source: Source, *, mmap: bool = False, verify: bool = True) -> Container:
    """Read a container written by :func:`write_container`.

    Parameters
    ----------
    source : str, path-like, readable binary file object, bytes, bytearray or memoryview
        A path is opened once: the header, the arrays, the checks and the memory
        map all use that one file descriptor, so a concurrent atomic replace of
        the file gives the old or the new content. A FIFO, a device or a folder is
        refused at once (never blocks). A file object is read from its current
        position to its end. A bytes-like object is used in place (the arrays are
        read-only views of it; do not change a bytearray while they are in use).
    mmap : bool, default=False
        For a path, map the arrays read-only from the file instead of reading them
        into memory. Ignored for file objects and bytes (their content is in memory).
    verify : bool, default=True
        Check every array's CRC-32 (reads the whole file once).

    Returns
    -------
    Container
        ``(header, arrays, version)``: the JSON header without its ``"arrays"`` table,
        a dict of read-only arrays, and the format version.

    Raises
    ------
    IndexFileError
        Naming the file (or ``<bytes>`` / the file object's name) and what is
        wrong with it: missing, unreadable (permission denied, I/O error), not a
        regular file, not an lplr-index file, truncated, damaged, or written by a
        newer library.
    TypeError
        ``source`` is none of the accepted types (or a text-mode file object).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        buf = np.frombuffer(source, dtype=np.uint8)
        buf.setflags(write=False)
        return _parse(_Reader(source_name(source), buf.size, buf=buf), mmap=False, verify=verify)
    if isinstance(source, (str, os.PathLike)):
        return _read_path(source, mmap=mmap, verify=verify)
    if isinstance(source, io.TextIOBase):
        raise TypeError("source is a text-mode file object; open it in binary mode ('rb')")
    if not callable(getattr(source, "read", None)):
        raise TypeError(
            "source must be a path, a readable binary file object or bytes, "
            f"got {type(source).__name__}"
        )
    name = source_name(source)
    try:
        data = source.read()
    except OSError as exc:
        raise IndexFileError(f"{name}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"source.read() returned {type(data).__name__}, not bytes: open it in binary mode")
    buf = np.frombuffer(data, dtype=np.uint8)
    buf.setflags(write=False)
    return _parse(_Reader(name, buf.size, buf=buf), mmap=False, verify=verify)


def _read_path(path: str | os.PathLike, *, mmap: bool, verify: bool) -> Container:
    name = source_name(path)
    try:
        # refuse FIFOs and devices before opening them (opening can block or act)
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(name, st.st_mode)
        # O_NONBLOCK: should the path have become a FIFO since, open does not hang
        fd = os.open(path, os.O_RDONLY | _O_NONBLOCK | _O_CLOEXEC | _O_BINARY)
    except FileNotFoundError:
        raise IndexFileError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise IndexFileError(f"{name}: is a directory, not an index file") from None
    except PermissionError:
        raise IndexFileError(f"{name}: cannot open the file: permission denied") from None
    except OSError as exc:
        raise IndexFileError(f"{name}: cannot open the file: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(name, st.st_mode)
        return _parse(_Reader(name, st.st_size, fd=fd), mmap=mmap, verify=verify)
    except OSError as exc:
        raise IndexFileError(f"{name}: cannot read the file: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _not_regular(name: str, mode: int) -> IndexFileError:
    if stat.S_ISDIR(mode):
        return IndexFileError(f"{name}: is a directory, not an index file")
    return IndexFileError(f"{name}: is {_kind(mode)}, not a regular file; an index is a regular file")


def _parse(src: _Reader, *, mmap: bool, verify: bool) -> Container:
    name, size = src.name, src.size

    def fail(msg: str) -> IndexFileError:
        return IndexFileError(f"{name}: {msg}")

    prefix = src.pread(0, _PREFIX.size + _CRC.size)
    present = min(len(prefix), len(MAGIC))
    if prefix[:present] != MAGIC[:present]:
        raise fail("not an lplr-index file (wrong magic bytes)")
    if len(prefix) < _PREFIX.size + _CRC.size:
        raise fail(f"truncated: {size} bytes, too short to hold the file prefix")
    _, version, hlen = _PREFIX.unpack(prefix[: _PREFIX.size])
    (hcrc,) = _CRC.unpack(prefix[_PREFIX.size :])
    if hlen > min(_MAX_HEADER, size):
        raise fail(f"damaged or truncated: header length {hlen} does not fit in a {size}-byte file")
    head = src.pread(len(prefix), hlen)
    if len(head) < hlen:
        raise fail(f"truncated: the header needs {hlen} bytes, the file ends after {len(head)}")
    if zlib.crc32(prefix[: _PREFIX.size] + head) & 0xFFFFFFFF != hcrc:
        raise fail("damaged: the header checksum does not match")
    if version > max(SUPPORTED_VERSIONS):
        raise fail(
            f"written in format version {version} by a newer lplr-index; this library reads "
            f"versions {', '.join(map(str, SUPPORTED_VERSIONS))}: upgrade lplr-index to load it"
        )
    if version not in SUPPORTED_VERSIONS:
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
    raw = src.whole(mmap)
    if raw.size != size:
        raise fail("changed while being read")
    # alignment padding is covered by no checksum: it must be all zeros
    gaps, pos = [(_PREFIX.size + _CRC.size + hlen, start)], start
    for lo, hi in ends:
        gaps.append((pos, start + lo))
        pos = start + hi
    for lo, hi in gaps:
        if hi > lo and np.any(raw[lo:hi]):
            raise fail(f"damaged: non-zero padding bytes at offset {lo}")
    arrays: dict[str, np.ndarray] = {}
    for aname, dtype, shape, off, nbytes, crc in entries:
        view = raw[start + off : start + off + nbytes]
        if verify:
            got = 0
            for s in range(0, nbytes, CHUNK_BYTES):
                got = zlib.crc32(memoryview(view[s : s + CHUNK_BYTES]), got)
            if got & 0xFFFFFFFF != crc:
                raise fail(f"damaged: checksum mismatch in array {aname!r}")
        arrays[aname] = view.view(dtype).reshape(shape)
    return Container(header, arrays, int(version))


def _check_table(table: Any) -> list[tuple]:
    if not isinstance(table, list):
        raise TypeError("'arrays' is not a list")
    out, names = [], set()
    for e in table:
        name, dt, shape, off, crc = e["name"], e["dtype"], e["shape"], e["offset"], e["crc32"]
        if not isinstance(name, str) or name in names:
            raise ValueError(f"bad or repeated array name {name!r}")
        if not isinstance(dt, str) or dt not in _DTYPES:
            raise ValueError(f"array {name!r} has unsupported dtype {dt!r}")
        if not isinstance(shape, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 1 << 40 for s in shape
        ):
            raise ValueError(f"array {name!r} has a bad shape {shape!r}")
        if not isinstance(off, int) or isinstance(off, bool) or not 0 <= off < 1 << 48 or off % _ALIGN:
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
