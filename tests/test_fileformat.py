"""The index file format is a contract: byte-identical round trips, every damaged file rejected.

Damaged files must raise :class:`IndexFileError` (a ``ValueError``) whose message names
the file; nothing a file holds may crash the process or escape as another exception.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from lplr_index import IndexFileError, LPLRIndex
from lplr_index import fileformat
from lplr_index.fileformat import (
    SUPPORTED_VERSIONS,
    container_to_bytes,
    read_container,
    write_container,
)

pytestmark = pytest.mark.usefixtures("blas_single_thread")

PREFIX = struct.Struct("<8sII")  # magic, version, header length (see fileformat.py)
PREFIX_AND_CRC = PREFIX.size + 4


# ----------------------------------------------------------------- helpers
def split_file(data: bytes):
    """(header dict, offset where the array section starts) of a valid file."""
    _, _, hlen = PREFIX.unpack(data[: PREFIX.size])
    start = PREFIX_AND_CRC + hlen
    return json.loads(data[PREFIX_AND_CRC:start]), start + (-start) % 8


def with_header(data: bytes, header: dict | bytes, version: int | None = None) -> bytes:
    """``data`` with its JSON header replaced and the header CRC recomputed (a well-formed lie).

    The format version stays that of ``data`` unless ``version`` is given.
    """
    _, array_start = split_file(data)
    if version is None:
        version = PREFIX.unpack(data[: PREFIX.size])[1]
    head = header if isinstance(header, bytes) else json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    prefix = PREFIX.pack(b"LPLRIDX\x00", version, len(head))
    crc = struct.pack("<I", zlib.crc32(prefix + head) & 0xFFFFFFFF)
    start = PREFIX_AND_CRC + len(head)
    return prefix + crc + head + b"\0" * ((-start) % 8) + data[array_start:]


def assert_rejected(path: Path, match: str | None = None) -> IndexFileError:
    """Loading ``path`` raises IndexFileError naming the file (and matching ``match``)."""
    for mmap in (False, True):
        with pytest.raises(IndexFileError) as info:
            LPLRIndex.load(path, mmap=mmap)
        message = str(info.value)
        assert str(path) in message, message
        if match is not None:
            assert re.search(match, message), message
    return info.value


@pytest.fixture(scope="module")
def saved(blas_single_thread, small_embeddings, tmp_path_factory):
    """(path, bytes, index) of a saved index over 999 vectors.

    999 rows of 6-byte codes end 2 bytes short of a multiple of 8, so the file also
    has zero padding between arrays, not only after the header.
    """
    # the scalar layout (l_lo second); the grouped layout's damage tests are in test_vq.py
    index = LPLRIndex(32, bits_per_coordinate=2, codec="scalar").build(small_embeddings[:999])
    path = tmp_path_factory.mktemp("saved") / "index.lplr"
    index.save(path)
    return path, path.read_bytes(), index


@pytest.fixture
def damaged(tmp_path):
    """``write(data) -> path`` of a file holding ``data`` in this test's folder."""

    def write(data: bytes, name: str = "damaged.lplr") -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return write


# -------------------------------------------------------------- round trips
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
def test_save_load_save_is_byte_identical(metric, mmap, small_embeddings, tmp_path):
    index = LPLRIndex(32, bits_per_coordinate=1.5, metric=metric).build(small_embeddings)
    index.add(small_embeddings[:10] * 3)  # the header also records added and clipped vectors
    first, second = tmp_path / "first.lplr", tmp_path / "second.lplr"
    index.save(first)
    loaded = LPLRIndex.load(first, mmap=mmap)
    assert loaded.save(second) == first.stat().st_size == loaded.nbytes
    assert first.read_bytes() == second.read_bytes()


def test_same_data_and_seed_give_identical_files(small_embeddings, tmp_path):
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        LPLRIndex(32, bits_per_coordinate=2, seed=seed).build(small_embeddings).save(tmp_path / f"{name}.lplr")
    a, b, c = ((tmp_path / f"{n}.lplr").read_bytes() for n in "abc")
    assert a == b
    assert a != c  # the seed matters


@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
def test_loaded_index_is_the_same_index(saved, mmap, small_embeddings):
    path, _, index = saved
    loaded = LPLRIndex.load(path, mmap=mmap)
    for attr in ("dim", "rank", "bits_l", "bits_r", "metric", "quantizer", "seed", "encoder",
                 "ntotal", "n_clipped", "budget", "nbytes", "bits_per_coordinate", "refine_iters"):
        assert getattr(loaded, attr) == getattr(index, attr), attr
    assert loaded.fit_error == pytest.approx(index.fit_error, rel=1e-6)  # stored with 7 digits
    np.testing.assert_array_equal(loaded.reconstruct(), index.reconstruct())
    Q = small_embeddings[900:] + 0.01
    for mode in ("factored", "reconstructed"):
        expected, got = index.search(Q, 10, mode=mode), loaded.search(Q, 10, mode=mode)
        np.testing.assert_array_equal(got.indices, expected.indices)
        np.testing.assert_array_equal(got.distances, expected.distances)


def test_add_after_mmap_load(saved, small_embeddings, tmp_path):
    path, data, index = saved
    copy = tmp_path / "copy.lplr"
    copy.write_bytes(data)
    loaded = LPLRIndex.load(copy, mmap=True)
    loaded.add(small_embeddings[999:])
    reference = LPLRIndex.load(path).add(small_embeddings[999:])
    assert loaded.ntotal == 1000
    np.testing.assert_array_equal(loaded.reconstruct(), reference.reconstruct())
    loaded.save(copy)  # over the file it was mapped from
    assert copy.read_bytes() != data
    np.testing.assert_array_equal(LPLRIndex.load(copy).reconstruct(), reference.reconstruct())
    assert path.read_bytes() == data


def test_path_may_be_a_string(saved, tmp_path):
    path, data, index = saved
    target = str(tmp_path / "as-string.lplr")
    index.save(target)
    assert Path(target).read_bytes() == data
    assert LPLRIndex.load(target).ntotal == index.ntotal


# ------------------------------------------------------------- truncation
#: cut points: every length up to 30 bytes (inside the prefix and the start of the header),
#: then fractions of the file (inside the header and each array), then one byte short
CUTS = [pytest.param(n, id=f"first-{n}-bytes") for n in range(30)] + [
    pytest.param(f, id=f"first-{f:.0%}") for f in (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
] + [pytest.param(-1, id="all-but-the-last-byte")]


@pytest.mark.parametrize("cut", CUTS)
def test_truncated_file_is_rejected(saved, damaged, cut):
    _, data, _ = saved
    end = cut if isinstance(cut, int) else int(len(data) * cut)
    assert_rejected(damaged(data[:end]), "truncated|not an lplr-index file|damaged")


def test_trailing_bytes_are_rejected(saved, damaged):
    assert_rejected(damaged(saved[1] + b"\0"), "unexpected bytes after the last array")


# -------------------------------------------------------------- bit flips
def flip(data: bytes, pos: int, bit: int | None = None) -> bytes:
    out = bytearray(data)
    out[pos] ^= 1 << (pos % 8 if bit is None else bit)
    return bytes(out)


@pytest.mark.parametrize("pos", range(PREFIX_AND_CRC), ids=lambda p: f"byte{p}")
def test_bit_flip_in_the_prefix_is_rejected(saved, damaged, pos):
    assert_rejected(damaged(flip(saved[1], pos)), "damaged|truncated|not an lplr-index file")


REGION_POINTS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


@pytest.mark.parametrize("where", REGION_POINTS, ids=lambda f: f"at{f:.0%}")
def test_bit_flip_in_the_header_json_is_rejected(saved, damaged, where):
    _, data, _ = saved
    _, hlen = PREFIX.unpack(data[: PREFIX.size])[1:]
    pos = PREFIX_AND_CRC + min(int(where * hlen), hlen - 1)
    assert_rejected(damaged(flip(data, pos)), "damaged: the header checksum does not match")


@pytest.mark.parametrize("where", REGION_POINTS, ids=lambda f: f"at{f:.0%}")
@pytest.mark.parametrize("bit", [0, 7], ids=["low-bit", "high-bit"])
def test_bit_flip_in_the_payload_is_rejected(saved, damaged, where, bit):
    _, data, _ = saved
    header, start = split_file(data)
    # only bytes that belong to an array (padding is tested below)
    owned = [start + e["offset"] + i for e in header["arrays"]
             for i in range(int(np.prod(e["shape"])) * np.dtype(e["dtype"]).itemsize)]
    pos = owned[min(int(where * len(owned)), len(owned) - 1)]
    assert_rejected(damaged(flip(data, pos, bit)), "damaged: checksum mismatch in array")


@pytest.mark.parametrize("array", range(6), ids=["l_codes", "l_lo", "l_hi", "r_codes", "r_lo", "r_hi"])
def test_bit_flip_in_each_array_names_it(saved, damaged, array):
    _, data, _ = saved
    header, start = split_file(data)
    entry = header["arrays"][array]
    assert_rejected(damaged(flip(data, start + entry["offset"])), f"checksum mismatch in array '{entry['name']}'")


def test_bit_flip_in_the_alignment_padding_is_rejected(saved, damaged):
    # Regression (fixed bug): the zero bytes that align the array section (after the header
    # and between arrays) are covered by no checksum and never checked, so a flipped
    # bit there loads silently; every other single-bit flip is caught.
    _, data, _ = saved
    header, start = split_file(data)
    _, _, hlen = PREFIX.unpack(data[: PREFIX.size])
    padding = list(range(PREFIX_AND_CRC + hlen, start))
    owned_end = 0
    for e in header["arrays"]:
        padding += range(start + owned_end, start + e["offset"])
        owned_end = e["offset"] + int(np.prod(e["shape"])) * np.dtype(e["dtype"]).itemsize
    assert padding, "the fixture file should have padding bytes"
    loaded_silently = []
    for pos in padding:
        path = damaged(flip(data, pos))
        try:
            LPLRIndex.load(path)
        except IndexFileError:
            continue
        loaded_silently.append(pos)
    assert not loaded_silently, f"flipped padding bytes at {loaded_silently} of {len(data)} loaded without error"


# ---------------------------------------------- foreign, random and odd files
@pytest.mark.parametrize("size", [1, 7, 8, 19, 20, 64, 1000, 10000], ids=lambda s: f"{s}B")
@pytest.mark.parametrize("seed", range(3), ids=lambda s: f"seed{s}")
def test_random_bytes_are_rejected(damaged, seed, size):
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    assert_rejected(damaged(data))


@pytest.mark.parametrize("size", [0, 4, 12, 100, 5000], ids=lambda s: f"{s}B")
@pytest.mark.parametrize("seed", range(3), ids=lambda s: f"seed{s}")
def test_magic_followed_by_random_bytes_is_rejected(damaged, seed, size):
    rng = np.random.default_rng(100 + seed)
    data = b"LPLRIDX\x00" + rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    assert_rejected(damaged(data), "truncated|damaged|newer")


@pytest.mark.parametrize("hlen", [0, 2, 100], ids=lambda h: f"hlen{h}")
def test_valid_prefix_and_random_header_is_rejected(saved, damaged, hlen):
    rng = np.random.default_rng(hlen)
    head = rng.integers(0, 256, hlen, dtype=np.uint8).tobytes()
    assert_rejected(damaged(with_header(saved[1], head)), "damaged")


def test_empty_file(damaged):
    assert_rejected(damaged(b""), "truncated")


def test_directory(tmp_path):
    folder = tmp_path / "folder.lplr"
    folder.mkdir()
    assert_rejected(folder, "directory")


def test_missing_file(tmp_path):
    assert_rejected(tmp_path / "missing.lplr", "no such file")


def test_numpy_file_is_not_an_index(tmp_path):
    path = tmp_path / "embeddings.npy"
    np.save(path, np.ones((10, 4), np.float32))
    assert_rejected(path, "not an lplr-index file")


def test_text_file_is_not_an_index(damaged):
    assert_rejected(damaged(b"dim=32\nrank=4\n", "notes.txt"), "not an lplr-index file")


# ----------------------------------------------------------- versions
def test_newer_format_version_says_so(saved, damaged):
    # as fileformat.py describes: the version sits at bytes 8..11 and the CRC at 16..19
    # covers bytes 0..15 followed by the header, so a patched version needs a new CRC
    _, data, _ = saved
    header, _ = split_file(data)
    newer = max(SUPPORTED_VERSIONS) + 1
    error = assert_rejected(damaged(with_header(data, header, version=newer)), "newer")
    assert f"version {newer}" in str(error) and "upgrade" in str(error)


def test_format_version_zero_is_damage(saved, damaged):
    header, _ = split_file(saved[1])
    assert_rejected(damaged(with_header(saved[1], header, version=0)), "damaged")


def test_rewritten_header_with_the_same_content_loads(saved, damaged):
    # the helper above only re-encodes the header: the unmodified header must still load
    header, _ = split_file(saved[1])
    path = damaged(with_header(saved[1], header))
    assert path.read_bytes() == saved[1]
    assert LPLRIndex.load(path).ntotal == 999


# ------------------------------------------- malformed headers with valid CRCs
def mutate(path_in_header, value):
    """A header mutation: set ``header[path...] = value`` (``...`` = delete)."""

    def apply(header):
        *parents, last = path_in_header
        node = header
        for key in parents:
            node = node[key]
        if value is Ellipsis:
            del node[last]
        else:
            node[last] = value
        return header

    return apply


MALFORMED_HEADERS = {
    "not-json": b"\xff\xfe not json",
    "json-list": b"[1, 2]",
    "json-string": b'"lplr"',
    "nan-literal": b'{"arrays": [], "x": NaN}',
    "no-arrays": mutate(["arrays"], ...),
    "arrays-not-list": mutate(["arrays"], {}),
    "array-entry-string": mutate(["arrays", 0], "l_codes"),
    "array-missing-name": mutate(["arrays", 1, "name"], ...),
    "array-duplicate-name": mutate(["arrays", 1, "name"], "l_codes"),
    "array-dtype-complex": mutate(["arrays", 0, "dtype"], "<c16"),
    "array-dtype-f8": mutate(["arrays", 1, "dtype"], "<f8"),
    "array-shape-negative": mutate(["arrays", 0, "shape"], [-1, 6]),
    "array-shape-float": mutate(["arrays", 0, "shape"], [999.0, 6]),
    "array-shape-huge": mutate(["arrays", 0, "shape"], [2**39, 2**39, 2**39]),
    "array-offset-overlap": mutate(["arrays", 1, "offset"], 0),
    "array-offset-negative": mutate(["arrays", 1, "offset"], -8),
    "array-crc-not-hex": mutate(["arrays", 0, "crc32"], "zzzzzzzz"),
    "format-name": mutate(["format"], "faiss"),
    "no-settings": mutate(["settings"], ...),
    "settings-list": mutate(["settings"], []),
    "dim-negative": mutate(["settings", "dim"], -1),
    "dim-string": mutate(["settings", "dim"], "32"),
    "dim-other": mutate(["settings", "dim"], 31),
    "rank-zero": mutate(["settings", "rank"], 0),
    "rank-other": mutate(["settings", "rank"], 13),
    "metric-unknown": mutate(["settings", "metric"], "hamming"),
    "quantizer-null": mutate(["settings", "quantizer"], None),
    "seed-negative": mutate(["settings", "seed"], -1),
    "bits_r-other": mutate(["settings", "bits_r"], 4),
    "bits_l_used-9": mutate(["bits_l_used"], 9),
    "encoder-unknown": mutate(["encoder"], "lsh"),
    "fit_error-text": mutate(["fit_error"], "small"),
    "ntotal-zero": mutate(["ntotal"], 0),
    "ntotal-other": mutate(["ntotal"], 998),
    "ntotal-bool": mutate(["ntotal"], True),
    "n_build-too-big": mutate(["n_build"], 5000),
    "n_clipped-negative": mutate(["n_clipped"], -1),
    # Regression (fixed bug): the three cases below escape as RecursionError, ValueError from
    # numpy's reshape (np.prod of the shape wraps around int64 to 0, which matches a
    # CRC of "00000000") and OverflowError, instead of IndexFileError
    "deeply-nested-json": b"[" * 100_000 + b"]" * 100_000,
    "array-shape-overflows-int64": lambda h: mutate(["arrays", 0], dict(
        h["arrays"][0], shape=[2**32, 2**32], crc32="00000000"))(h),
    "dim-beyond-int64": mutate(["settings", "dim"], 2**70),
}


@pytest.mark.parametrize("case", MALFORMED_HEADERS, ids=str)
def test_malformed_header_with_a_valid_checksum_is_rejected(saved, damaged, case):
    _, data, _ = saved
    change = MALFORMED_HEADERS[case]
    header = change if isinstance(change, bytes) else change(split_file(data)[0])
    path = damaged(with_header(data, header))
    try:
        assert_rejected(path)
    except AssertionError:
        raise
    except Exception as exc:  # any other exception escaping load() is the failure looked for
        pytest.fail(f"{type(exc).__name__} escaped instead of IndexFileError: {exc}")


def test_non_finite_quantizer_levels_are_rejected(saved, damaged):
    _, data, _ = saved
    header, start = split_file(data)
    entry = header["arrays"][1]  # l_lo, float32
    lo = start + entry["offset"]
    payload = bytearray(data)
    payload[lo : lo + 4] = np.float32(np.nan).tobytes()
    nbytes = int(np.prod(entry["shape"])) * 4
    entry["crc32"] = f"{zlib.crc32(bytes(payload[lo : lo + nbytes])) & 0xFFFFFFFF:08x}"
    assert_rejected(damaged(with_header(bytes(payload), header)), "quantizer levels of L are not finite")


# ------------------------------------------------------------ atomic save
class FailingFile:
    """Wraps a file object; its second write raises ``exc`` (a full disk, a Ctrl-C)."""

    def __init__(self, f, exc):
        self._f, self._exc, self._writes = f, exc, 0

    def write(self, b):
        self._writes += 1
        if self._writes == 2:
            raise self._exc
        return self._f.write(b)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


def failing(exc):
    def fail(*args, **kwargs):
        raise exc

    return fail


def fail_writes(monkeypatch, exc):
    real = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda *a, **k: FailingFile(real(*a, **k), exc))


#: id -> (how to break the save, the exception save raises)
FAILURES = {
    "rename": (lambda mp: mp.setattr(os, "replace", failing(OSError(5, "Input/output error"))), OSError),
    "fsync": (lambda mp: mp.setattr(os, "fsync", failing(OSError(5, "Input/output error"))), OSError),
    "disk-full": (lambda mp: fail_writes(mp, OSError(28, "No space left on device")), OSError),
    "ctrl-c": (lambda mp: fail_writes(mp, KeyboardInterrupt()), KeyboardInterrupt),
}


@pytest.mark.parametrize("existing", [True, False], ids=["over-an-existing-file", "new-file"])
@pytest.mark.parametrize("failure", FAILURES, ids=str)
def test_failed_save_leaves_the_target_untouched(saved, tmp_path, monkeypatch, failure, existing):
    _, data, index = saved
    target = tmp_path / "index.lplr"
    old = b"an older index"
    if existing:
        target.write_bytes(old)
    breaker, exc = FAILURES[failure]
    breaker(monkeypatch)
    with pytest.raises(exc):
        index.save(target)
    monkeypatch.undo()
    # no temporary file left behind, the old file (if any) unchanged
    assert sorted(p.name for p in tmp_path.iterdir()) == (["index.lplr"] if existing else [])
    if existing:
        assert target.read_bytes() == old
    index.save(target)  # and the next save works
    assert target.read_bytes() == data


def test_save_into_a_missing_folder_fails_cleanly(saved, tmp_path):
    _, _, index = saved
    with pytest.raises(OSError):
        index.save(tmp_path / "no" / "such" / "folder" / "index.lplr")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------- non-regular files and OS errors on load
def test_fifo_is_refused_at_once(tmp_path):
    # Regression: loading a FIFO hung forever in open(), waiting for a writer
    fifo = tmp_path / "pipe.lplr"
    os.mkfifo(fifo)

    def hung(signum, frame):
        raise TimeoutError("load blocked on a FIFO")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(5)
    try:
        assert_rejected(fifo, "FIFO")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_path_that_becomes_a_fifo_after_the_check_is_refused_without_blocking(tmp_path, monkeypatch):
    # the check by name and the open are two steps: open with O_NONBLOCK, then fstat the descriptor
    fifo = tmp_path / "pipe.lplr"
    os.mkfifo(fifo)
    regular = os.stat(__file__)
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: regular if str(p) == str(fifo) else real_stat(p, *a, **k))
    signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError("blocked")))
    signal.alarm(5)
    try:
        with pytest.raises(IndexFileError, match=f"{re.escape(str(fifo))}: is a FIFO"):
            read_container(fifo)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


def test_device_is_refused():
    assert_rejected(Path("/dev/null"), "character device, not a regular file")


#: id -> OSError raised by open() or by a read
OS_ERRORS = {
    "permission-denied": (os, "open", PermissionError(13, "Permission denied"), "permission denied"),
    "too-many-links": (os, "open", OSError(40, "Too many levels of symbolic links"), "symbolic links"),
    "io-error-in-header": (os, "pread", OSError(5, "Input/output error"), "Input/output error"),
}


@pytest.mark.parametrize("case", OS_ERRORS, ids=str)
def test_os_errors_on_load_are_index_file_errors_naming_the_file(saved, tmp_path, monkeypatch, case):
    path, data, _ = saved
    copy = tmp_path / "copy.lplr"
    copy.write_bytes(data)
    module, name, exc, words = OS_ERRORS[case]

    def broken(*args, **kwargs):
        raise exc

    monkeypatch.setattr(module, name, broken)
    with pytest.raises(IndexFileError) as info:
        read_container(copy)
    assert str(copy) in str(info.value) and words in str(info.value), str(info.value)


def test_io_error_while_reading_the_arrays(saved, tmp_path, monkeypatch):
    path, data, _ = saved
    copy = tmp_path / "copy.lplr"
    copy.write_bytes(data)

    class BrokenFile(io.FileIO):
        def readinto(self, buffer):
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(io, "FileIO", BrokenFile)
    with pytest.raises(IndexFileError, match=f"{re.escape(str(copy))}: cannot read the file: Input/output error"):
        LPLRIndex.load(copy)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(saved, tmp_path):
    copy = tmp_path / "copy.lplr"
    copy.write_bytes(saved[1])
    copy.chmod(0)
    assert_rejected(copy, "permission denied")


@pytest.mark.parametrize("content", [b"hello\n", b"LPLRX", b"x" * 19, b"PK\x03\x04", b"\x93NUMPY"], ids=repr)
def test_short_foreign_file_is_not_called_truncated(damaged, content):
    # Regression: a file shorter than the 20-byte prefix was "truncated" whatever it held
    assert_rejected(damaged(content), "not an lplr-index file")


@pytest.mark.parametrize("n", [1, 4, 8, 12, 19], ids=lambda n: f"{n}B")
def test_start_of_a_real_file_is_truncated(saved, damaged, n):
    assert_rejected(damaged(saved[1][:n]), "truncated")


# ------------------------------------------------ file objects and bytes
@pytest.fixture(scope="module")
def container(saved):
    """Container read back from the saved index file."""
    return read_container(saved[0])


def test_bytes_round_trip_is_byte_identical_to_the_file(saved, container):
    _, data, _ = saved
    assert container_to_bytes(container.header, container.arrays, version=container.version) == data
    for source in (data, bytearray(data), memoryview(data)):
        again = read_container(source)
        assert again.header == container.header and again.version == container.version
        for name, arr in container.arrays.items():
            np.testing.assert_array_equal(again.arrays[name], arr)
            assert again.arrays[name].dtype == arr.dtype and not again.arrays[name].flags.writeable


def test_file_object_round_trip_is_byte_identical_to_the_file(saved, container, tmp_path):
    _, data, _ = saved
    buf = io.BytesIO(b"xyz")
    buf.seek(3)  # written at the current position
    assert write_container(buf, container.header, container.arrays, version=container.version) == len(data)
    assert buf.getvalue() == b"xyz" + data
    buf.seek(3)  # read from the current position to the end
    assert read_container(buf).header == container.header
    path = tmp_path / "stream.lplr"
    with open(path, "wb") as f:
        write_container(f, container.header, container.arrays, version=container.version)
    assert path.read_bytes() == data
    with open(path, "rb") as f:
        loaded = read_container(f, mmap=True)  # mmap is ignored for file objects
    np.testing.assert_array_equal(loaded.arrays["l_codes"], container.arrays["l_codes"])


def test_damaged_bytes_and_file_objects_are_named_in_errors(saved, tmp_path):
    _, data, _ = saved
    bad = flip(data, len(data) - 1)
    with pytest.raises(IndexFileError, match=r"^<bytes>: damaged: checksum mismatch"):
        read_container(bad)
    with pytest.raises(IndexFileError, match=r"^<BytesIO>: damaged: checksum mismatch"):
        read_container(io.BytesIO(bad))
    path = tmp_path / "bad.lplr"
    path.write_bytes(bad)
    with open(path, "rb") as f, pytest.raises(IndexFileError, match=f"^{re.escape(str(path))}: damaged"):
        read_container(f)
    with pytest.raises(IndexFileError, match=r"^<bytes>: not an lplr-index file"):
        read_container(b"hello\n")


def test_text_mode_and_other_objects_are_type_errors(saved, container, tmp_path):
    with open(tmp_path / "t.txt", "w") as f, pytest.raises(TypeError, match="binary mode"):
        write_container(f, container.header, container.arrays)
    with open(saved[0], encoding="latin-1") as f, pytest.raises(TypeError, match="binary mode"):
        read_container(f)
    with pytest.raises(TypeError, match="source must be a path, a readable binary file object or bytes, got int"):
        read_container(3)
    with pytest.raises(TypeError, match="got list"):
        write_container([], container.header, container.arrays)


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_each_supported_version_is_written_and_read(container, version):
    data = container_to_bytes(container.header, container.arrays, version=version)
    assert struct.unpack("<I", data[8:12]) == (version,)
    assert read_container(data).version == version


@pytest.mark.parametrize("version", [0, 7, 1.0, True, "2"], ids=repr)
def test_unsupported_version_is_refused_on_write(container, tmp_path, version):
    with pytest.raises(ValueError, match=r"version must be one of \(1, 2, 3, 4, 5, 6\), got"):
        write_container(tmp_path / "x.lplr", container.header, container.arrays, version=version)
    assert list(tmp_path.iterdir()) == []


def test_bad_arrays_and_header_are_refused_on_write(tmp_path):
    with pytest.raises(TypeError, match=r"array 'x' has dtype <i2"):
        container_to_bytes({}, {"x": np.zeros(3, np.int16)})
    with pytest.raises(TypeError, match=r"array 'x' has dtype >f4"):
        container_to_bytes({}, {"x": np.zeros(3, ">f4")})
    with pytest.raises(ValueError, match="must not hold an 'arrays' key"):
        container_to_bytes({"arrays": []}, {})


def test_large_and_strided_arrays_are_written_in_chunks_without_a_whole_copy(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    arrays = {
        "mapped": np.lib.format.open_memmap(tmp_path / "m.npy", mode="w+", dtype=np.float32, shape=(1000, 9)),
        "fortran": np.asfortranarray(rng.standard_normal((50, 7))),
        "strided": rng.integers(0, 256, (200, 10), dtype=np.uint8)[:, ::3],
        "scalar": np.float64(2.5) * np.ones(()),
        "empty": np.zeros((0, 4), np.uint8),
    }
    arrays["mapped"][:] = rng.standard_normal((1000, 9))
    expected = container_to_bytes({"k": "v"}, {n: np.array(a, order="C") for n, a in arrays.items()})
    monkeypatch.setattr(fileformat, "CHUNK_BYTES", 256)
    copied = []
    real = np.ascontiguousarray
    monkeypatch.setattr(fileformat.np, "ascontiguousarray", lambda a, *x, **k: copied.append(a.nbytes) or real(a, *x, **k))
    progress = []
    size = write_container(tmp_path / "c.lplr", {"k": "v"}, arrays, progress=lambda d, t: progress.append((d, t)))
    monkeypatch.undo()
    assert (tmp_path / "c.lplr").read_bytes() == expected and size == len(expected)
    assert max(copied) <= 256 + 8 * 7  # only blocks of rows of the non-contiguous arrays are copied
    assert progress[-1] == (size, size) and len(progress) > 36000 // 256
    assert all(b[0] > a[0] for a, b in zip(progress, progress[1:]))
    back = read_container(tmp_path / "c.lplr")
    for name, arr in arrays.items():
        np.testing.assert_array_equal(back.arrays[name], arr)


@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
def test_read_arrays_are_read_only(saved, mmap):
    for arr in read_container(saved[0], mmap=mmap).arrays.values():
        assert not arr.flags.writeable


# ------------------------------------ the index through bytes and file objects
def test_index_to_bytes_and_file_objects_match_the_file(saved, tmp_path):
    path, data, index = saved
    assert index.to_bytes() == data
    buf = io.BytesIO()
    assert index.save(buf) == len(data)
    assert buf.getvalue() == data
    with open(tmp_path / "via-object.lplr", "wb") as f:
        index.save(f)
    assert (tmp_path / "via-object.lplr").read_bytes() == data
    Q = np.random.default_rng(0).standard_normal((5, index.dim)).astype(np.float32)
    expected = index.search(Q, 7)
    buf.seek(0)
    with open(path, "rb") as f:
        copies = [LPLRIndex.from_bytes(data), LPLRIndex.from_bytes(bytearray(data)), LPLRIndex.load(buf),
                  LPLRIndex.load(f), LPLRIndex.load(memoryview(data))]
    for copy in copies:
        assert copy.to_bytes() == data
        for got, want in zip(copy.search(Q, 7), expected):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("how", ["bytes", "bytesio", "file-object"])
def test_index_from_damaged_bytes_or_objects_names_the_source(saved, tmp_path, how):
    _, data, _ = saved
    bad = flip(data, len(data) - 1)
    if how == "bytes":
        source, load = bad, LPLRIndex.from_bytes
    elif how == "bytesio":
        source, load = io.BytesIO(bad), LPLRIndex.load
    else:
        (tmp_path / "bad.lplr").write_bytes(bad)
        source, load = open(tmp_path / "bad.lplr", "rb"), LPLRIndex.load
    try:
        with pytest.raises(IndexFileError) as info:
            load(source)
    finally:
        if how == "file-object":
            source.close()
    assert str(info.value).startswith(f"{fileformat.source_name(source)}: damaged"), str(info.value)


def test_index_from_bytes_refuses_other_types(saved):
    with pytest.raises(TypeError, match="got str"):
        LPLRIndex.from_bytes(str(saved[0]))


@pytest.mark.parametrize("how", ["bytes", "bytesio"])
def test_inconsistent_content_from_bytes_or_objects_names_the_source(saved, how):
    # content checks (after the container checks) name the source the same way
    _, data, _ = saved
    header, _ = split_file(data)
    bad = with_header(data, mutate(["ntotal"], 998)(header))
    source = bad if how == "bytes" else io.BytesIO(bad)
    with pytest.raises(IndexFileError) as info:
        LPLRIndex.load(source)
    assert str(info.value).startswith(f"{fileformat.source_name(source)}: "), str(info.value)
