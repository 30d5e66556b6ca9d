"""Fuzz the index loader with mutated index files; the engine of ``tests/test_fuzz.py``.

Every case takes one small index file saved with the public API and mutates it with a
seeded generator (the case is reproducible from ``(seed, case)`` alone):

``bitflip``, ``truncate``, ``insert``, ``delete``, ``overwrite``
    raw byte damage (caught by the checksums or the structure checks);
``header-value``, ``table-edit``
    a value of the JSON header (settings, counts, fit error) or of its array table
    (shape, offset, dtype, name, crc) rewritten, the header CRC recomputed;
``array-values``
    entries of one array set to huge finite values, NaN, inf, subnormals, random
    bytes, all-ones codes (padding bits set), quantizer levels swapped (unordered),
    the CRCs recomputed;
``array-shape``, ``array-dtype``, ``array-set``
    an array resized, retyped, dropped, renamed or added, the CRCs recomputed;
``consistent-dims``
    a header count (dim, rank, ntotal, ...) changed together with every array axis of
    that length, so the arrays agree with the lie;
``version-swap``
    the same content written as the other supported format version;
``combo``
    two or three of the checksum-valid edits above.

Each mutated file is loaded (read, memory-mapped, or from bytes, in turn) in a worker
process under a memory limit (``RLIMIT_AS``, 2 GiB) and a timeout, many cases per
worker; a worker that dies or hangs is re-run case by case to name the culprit. A case
passes when loading raises an ``IndexFileError`` (or another ``ValueError``) naming the
file, or when the loaded index answers searches correctly: shape ``(n_queries, k)``,
float32 / int64, ids among the live ids (``0 .. ntotal - 1`` without user ids) and
distinct, ``-1`` only as trailing padding past ``len(index)`` results with ``inf`` (l2)
or ``-inf`` (ip, cosine) distances, finite distances sorted best first, and cosine
similarities within ``[-1 - 1e-3, 1 + 1e-3]``; it must also save and load back as an
index that answers the same. A ``header-value`` edit that deletes a key of the settings
must be rejected: every key a format version wrote is required (a default would change
the index silently, as a deleted ``metric`` once made a cosine file load as l2).

Usage::

    python tests/fuzz_long.py --cases 10000 [--seed 0] [--workers 2]
    python tests/fuzz_long.py --seed 0 --case 1234 --keep case.lplr   # one reproducer
"""

from __future__ import annotations

import argparse
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: index settings of the base files: one per metric (grouped codes), one of the scalar
#: codes, one rank-8 8-bit minmax index, one of grouped codes on the top principal
#: directions, and one ip index with user ids and removed vectors
BASES = {
    "l2": dict(bits_per_coordinate=2, metric="l2"),
    "ip": dict(bits_per_coordinate=2, metric="ip"),
    "cosine": dict(bits_per_coordinate=2, metric="cosine"),
    "scalar-l2": dict(bits_per_coordinate=2, metric="l2", codec="scalar"),
    "vq-rank6": dict(rank=6, codec="vq", metric="cosine"),
    "rank8-minmax": dict(rank=8, bits_l=8, quantizer="minmax", refine_iters=0),
    "ids-removed": dict(rank=6, bits_l=4, metric="ip"),
}
DIM, N_BASE = 32, 300
MEMORY_LIMIT = 2 << 30
BATCH_TIMEOUT_S = 120.0
CASE_TIMEOUT_S = 30.0
COSINE_SLACK = 1e-3

RAW_KINDS = ("bitflip", "truncate", "insert", "delete", "overwrite")
VALID_KINDS = (
    "header-value", "table-edit", "array-values", "array-shape", "array-dtype",
    "array-set", "consistent-dims", "version-swap", "combo",
)
#: relative frequency of each kind: checksum-valid edits are the interesting ones
KIND_WEIGHTS = {**{k: 1.0 for k in RAW_KINDS}, **{k: 2.0 for k in VALID_KINDS}, "array-values": 4.0}
KINDS = tuple(KIND_WEIGHTS)

_PREFIX = struct.Struct("<8sII")


# -------------------------------------------------------------------- base files
def build_bases(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Save one small index per entry of :data:`BASES` in ``folder``; return their paths."""
    from lplr_index import LPLRIndex

    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    X = ((rng.standard_normal((N_BASE, DIM)) * 0.9 ** np.arange(DIM)) @ basis).astype(np.float32)
    out = {}
    for name, settings in BASES.items():
        path = Path(folder) / f"base-{name}.lplr"
        if name == "ids-removed":
            ids = rng.choice(2**40, N_BASE, replace=False) * 1000 + 7  # sparse, large user ids
            index = LPLRIndex(DIM, **settings).build(X, ids=ids)
            index.remove(ids[::10])
        else:
            index = LPLRIndex(DIM, **settings).build(X)
        index.save(path)
        out[name] = path
    return out


# --------------------------------------------------------------------- mutations
def split(data: bytes) -> tuple[int, dict, int]:
    """(version, full JSON header with its table, start of the array section) of a valid file."""
    _, version, hlen = _PREFIX.unpack(data[: _PREFIX.size])
    start = _PREFIX.size + 4 + hlen
    return version, json.loads(data[_PREFIX.size + 4 : start]), start + (-start) % 8


def with_header(data: bytes, doc: dict | bytes, version: int | None = None) -> bytes:
    """``data`` with its header (table included) replaced and the header CRC recomputed."""
    old_version, _, array_start = split(data)
    head = doc if isinstance(doc, bytes) else json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    prefix = _PREFIX.pack(b"LPLRIDX\x00", old_version if version is None else version, len(head))
    crc = struct.pack("<I", zlib.crc32(prefix + head) & 0xFFFFFFFF)
    start = len(prefix) + 4 + len(head)
    return prefix + crc + head + b"\0" * ((-start) % 8) + data[array_start:]


def decode(data: bytes):
    """(header without table, dict of writable arrays, version) of a valid file."""
    from lplr_index.fileformat import read_container

    c = read_container(data)
    return c.header, {k: np.array(v) for k, v in c.arrays.items()}, c.version


def encode(header: dict, arrays: dict, version: int) -> bytes:
    """A container with valid checksums (NaN allowed in the header via a raw rewrite)."""
    from lplr_index.fileformat import container_to_bytes

    try:
        return container_to_bytes(header, arrays, version=version)
    except ValueError:  # NaN/inf in the header: write a placeholder, then the raw JSON
        data = container_to_bytes({}, arrays, version=version)
        _, doc, _ = split(data)
        doc = dict(header, arrays=doc["arrays"])
        return with_header(data, json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())


def leaves(node, path=()):
    """Every (path, value) of a JSON document, containers included."""
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaves(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from leaves(v, path + (i,))


def set_at(doc, path, value):
    node = doc
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value


_DELETE = object()
STRINGS = ["", "x", "l2", "ip", "cosine", "hamming", "minmax", "minmax-col", "mse-col", "sketch",
           "pinv", "lplr-index", "nan", "inf", "-inf", "1e400", "0", "-1", "\u0000", "é" * 3, "a" * 5000]
NUMBERS = [0, 1, -1, 2, 7, 8, 9, 31, 32, 33, 255, 256, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1,
           2**63, 2**64, -(2**63), 10**30, 10**400, 0.5, 1e308, -1e308, 1e-320, float("nan"),
           float("inf"), -0.0]


def new_value(rng, old):
    """A replacement for a JSON value ``old``: near it, extreme, or of another type."""
    pick = rng.integers(10)
    if isinstance(old, bool) or old is None:
        return [True, False, None, 0, 1, "true", []][rng.integers(7)]
    if isinstance(old, (int, float)) and pick < 6:
        x = old
        near = [x + 1, x - 1, 2 * x, x // 2 if isinstance(x, int) else x / 2, -x, x * 1000, float(x), x + 0.5]
        return near[rng.integers(len(near))] if pick < 3 else NUMBERS[rng.integers(len(NUMBERS))]
    if isinstance(old, str) and pick < 6:
        return STRINGS[rng.integers(len(STRINGS))]
    if isinstance(old, list) and pick < 7 and old:
        edits = [old[:-1], old + [old[-1]], old[::-1], [], [old], old * 2]
        return edits[rng.integers(len(edits))]
    if isinstance(old, dict) and pick < 7 and old:
        keys = sorted(old)
        out = dict(old)
        if rng.integers(2):
            del out[keys[rng.integers(len(keys))]]
        else:
            out["extra"] = 1
        return out
    others = [0, -1, 2**40, 1.5, "3", "", None, True, [], {}, [1, 2], _DELETE]
    return others[rng.integers(len(others))]


def _float_arrays(arrays):
    return [k for k, v in arrays.items() if v.dtype.kind == "f" and v.size]


def m_header_value(rng, data, tableless: bool = True):
    version, doc, _ = split(data)
    spots = [(p, v) for p, v in leaves(doc) if p and (p[0] != "arrays") == tableless]
    path, old = spots[rng.integers(len(spots))]
    value = new_value(rng, old)
    set_at(doc, path, value)
    head = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return with_header(data, head), f"{'/'.join(map(str, path))}: {old!r:.40} -> {value if value is not _DELETE else 'deleted'!r:.40}"


def m_table_edit(rng, data):
    return m_header_value(rng, data, tableless=False)


FLOAT_VALUES = [np.nan, np.inf, -np.inf, 1e19, -1e19, 3.3e38, -3.3e38, 1e30, 1e10, 1e6, -1e6, 1e4, 0.0, -0.0,
                1e-45, 1e-39]


def m_array_values(rng, data):
    header, arrays, version = decode(data)
    names = sorted(arrays)
    name = names[rng.integers(len(names))]
    a = arrays[name]
    if a.size == 0:
        return encode(header, arrays, version), f"{name}: empty, unchanged"
    flat = a.reshape(-1)
    pick = rng.integers(4)
    where = {0: slice(0, 1), 1: slice(a.size - 1, a.size), 2: rng.integers(0, a.size, max(1, a.size // 10)), 3: slice(None)}[pick]
    what = {0: "first", 1: "last", 2: "10% of entries", 3: "all"}[pick]
    if a.dtype.kind == "f" and rng.integers(6) == 0:  # every float array at once (L and R together)
        value = float(10 ** rng.uniform(3, 38))
        for other in _float_arrays(arrays):
            arrays[other].reshape(-1)[where if arrays[other].size == a.size else slice(None)] = (
                -value if other.endswith("_lo") else value)
        return encode(header, arrays, version), f"every float array: {what} = +-{value:.3g}"
    if a.dtype.kind == "f":
        los = [n for n in names if n.endswith("_lo") and n[:-3] + "_hi" in arrays]
        if los and rng.integers(5) == 0:
            lo = los[rng.integers(len(los))]
            hi = lo[:-3] + "_hi"
            if arrays[lo].shape == arrays[hi].shape:
                arrays[lo], arrays[hi] = arrays[hi].copy(), arrays[lo].copy()
                return encode(header, arrays, version), f"{lo}/{hi} swapped (levels unordered)"
        value = FLOAT_VALUES[rng.integers(len(FLOAT_VALUES))]
        if rng.integers(4) == 0:
            value = float(10 ** rng.uniform(3, 38)) * (1 if rng.integers(2) else -1)
        flat[where] = value
        desc = f"{name}: {what} = {value!r}"
    elif a.dtype == np.uint8:
        mode = rng.integers(3)
        if mode == 0:
            flat[where] = 0xFF
            desc = f"{name}: {what} = 0xff"
        elif mode == 1:
            flat[where] = 0
            desc = f"{name}: {what} = 0"
        else:
            flat[where] = rng.integers(0, 256, np.size(flat[where]), dtype=np.uint8)
            desc = f"{name}: {what} = random bytes"
    else:
        big = [2**62, -(2**63), 10**12] if a.dtype == np.int64 else [2**31 - 1, -(2**31), 10**6]
        value = [-1, *big, 0, int(flat[0]) if flat.size else 0, 8][rng.integers(6)]
        flat[where] = value
        desc = f"{name}: {what} = {value}"
    return encode(header, arrays, version), desc


def _resized(rng, a: np.ndarray, shape: tuple) -> np.ndarray:
    out = np.zeros(shape, a.dtype)
    src = a.reshape(-1)
    n = min(src.size, out.size)
    out.reshape(-1)[:n] = src[:n]
    if out.size > n and rng.integers(2):
        extra = out.reshape(-1)[n:]
        if a.dtype.kind == "f":
            extra[:] = rng.standard_normal(extra.size)
        else:
            extra[:] = rng.integers(0, 256, extra.size)
    return out


def m_array_shape(rng, data):
    header, arrays, version = decode(data)
    names = sorted(arrays)
    name = names[rng.integers(len(names))]
    a = arrays[name]
    shape = list(a.shape)
    pick = rng.integers(5)
    if pick == 0 and shape:
        axis = rng.integers(len(shape))
        shape[axis] = int(max(0, shape[axis] + rng.integers(-3, 4)))
    elif pick == 1 and shape:
        axis = rng.integers(len(shape))
        shape[axis] = [0, 1, 2 * shape[axis]][rng.integers(3)]
    elif pick == 2:
        shape = shape[::-1]
    elif pick == 3:
        shape = [int(np.prod(shape))]
    else:
        shape = shape + [1]
    arrays[name] = _resized(rng, a, tuple(shape))
    return encode(header, arrays, version), f"{name}: shape {a.shape} -> {tuple(shape)}"


def m_array_dtype(rng, data):
    header, arrays, version = decode(data)
    names = sorted(arrays)
    name = names[rng.integers(len(names))]
    old = arrays[name].dtype.str
    others = [d for d in ("<f4", "<f8", "|u1", "<i8", "<i4") if d != old]
    new = others[rng.integers(len(others))]
    with np.errstate(all="ignore"):
        arrays[name] = arrays[name].astype(new)
    return encode(header, arrays, version), f"{name}: dtype {old} -> {new}"


def m_array_set(rng, data):
    header, arrays, version = decode(data)
    names = sorted(arrays)
    name = names[rng.integers(len(names))]
    pick = rng.integers(3)
    if pick == 0:
        del arrays[name]
        return encode(header, arrays, version), f"{name}: dropped"
    if pick == 1:
        arrays[name + "_x"] = arrays.pop(name)
        return encode(header, arrays, version), f"{name}: renamed"
    arrays["extra"] = rng.standard_normal(5).astype(np.float32)
    return encode(header, arrays, version), "extra array added"


def m_consistent_dims(rng, data):
    header, arrays, version = decode(data)
    spots = [(p, v) for p, v in leaves(header) if p and isinstance(v, int) and not isinstance(v, bool) and v > 1]
    path, old = spots[rng.integers(len(spots))]
    new = int([old - 1, old + 1, old // 2, 2 * old, 1, old + 8][rng.integers(6)])
    set_at(header, path, new)
    changed = []
    for name, a in list(arrays.items()):
        if old in a.shape:
            shape = tuple(new if s == old else s for s in a.shape)
            arrays[name] = _resized(rng, a, shape)
            changed.append(name)
    return encode(header, arrays, version), f"{'/'.join(map(str, path))}: {old} -> {new} with {changed or 'no arrays'}"


def m_version_swap(rng, data):
    from lplr_index.fileformat import SUPPORTED_VERSIONS

    header, arrays, version = decode(data)
    others = [v for v in SUPPORTED_VERSIONS if v != version]
    new = others[rng.integers(len(others))]
    return encode(header, arrays, new), f"version {version} -> {new}"


def m_combo(rng, data):
    descs = []
    for _ in range(int(rng.integers(2, 4))):
        kind = VALID_KINDS[rng.integers(len(VALID_KINDS) - 1)]  # not combo itself
        try:
            data, desc = MUTATORS[kind](rng, data)
        except Exception as exc:  # an earlier edit made the file unreadable for decode()
            descs.append(f"{kind}: skipped ({type(exc).__name__})")
            continue
        descs.append(f"{kind}: {desc}")
    return data, "; ".join(descs)


def m_bitflip(rng, data):
    out = bytearray(data)
    spots = rng.integers(0, len(out) * 8, int(rng.integers(1, 4)))
    for s in spots:
        out[s // 8] ^= 1 << (s % 8)
    return bytes(out), f"bits {sorted(int(s) for s in spots)} flipped"


def m_truncate(rng, data):
    n = int(rng.integers(0, len(data)))
    return data[:n], f"cut to {n} of {len(data)} bytes"


def m_insert(rng, data):
    pos, n = int(rng.integers(0, len(data) + 1)), int(rng.integers(1, 17))
    return data[:pos] + rng.integers(0, 256, n, dtype=np.uint8).tobytes() + data[pos:], f"{n} bytes inserted at {pos}"


def m_delete(rng, data):
    pos, n = int(rng.integers(0, len(data))), int(rng.integers(1, 17))
    return data[:pos] + data[pos + n :], f"{n} bytes deleted at {pos}"


def m_overwrite(rng, data):
    pos, n = int(rng.integers(0, len(data))), int(rng.integers(1, 17))
    out = bytearray(data)
    out[pos : pos + n] = rng.integers(0, 256, len(out[pos : pos + n]), dtype=np.uint8).tobytes()
    return bytes(out), f"{n} bytes overwritten at {pos}"


MUTATORS = {
    "bitflip": m_bitflip, "truncate": m_truncate, "insert": m_insert, "delete": m_delete,
    "overwrite": m_overwrite, "header-value": m_header_value, "table-edit": m_table_edit,
    "array-values": m_array_values, "array-shape": m_array_shape, "array-dtype": m_array_dtype,
    "array-set": m_array_set, "consistent-dims": m_consistent_dims, "version-swap": m_version_swap,
    "combo": m_combo,
}


def make_case(bases: dict[str, bytes], seed: int, case: int) -> tuple[str, str, bytes, str]:
    """(base name, mutation kind, mutated bytes, description) of case ``case``; seeded."""
    rng = np.random.default_rng([seed, case])
    names = sorted(bases)
    base = names[rng.integers(len(names))]
    weights = np.array([KIND_WEIGHTS[k] for k in KINDS])
    kind = KINDS[rng.choice(len(KINDS), p=weights / weights.sum())]
    for _ in range(20):  # an edit that changes nothing (a value replaced by itself) is drawn again
        data, desc = MUTATORS[kind](rng, bases[base])
        if data != bases[base]:
            break
    return base, kind, data, desc


# ------------------------------------------------------------------------ worker
#: search modes tried besides the default (which is the fast-scan path when the index has one)
MODES = ("factored", "reconstructed")


def check_search(index, rng) -> str | None:
    """None if ``index`` answers searches correctly (default mode and :data:`MODES`), else what is wrong."""
    import inspect

    modes = [None]
    if "mode" in inspect.signature(index.search).parameters:
        modes += list(MODES)
    Q = rng.standard_normal((3, index.dim)).astype(np.float32)
    for mode in modes:
        problem = _check_search_mode(index, Q, mode)
        if problem:
            return f"mode={mode or 'default'}, {problem}"
    return None


def _check_search_mode(index, Q, mode) -> str | None:
    n, live, metric = index.ntotal, len(index), index.metric
    # the ids a search may return: the live ids (user ids, removed ones left out), or 0..ntotal-1
    live_ids = np.asarray(index.live_ids) if hasattr(index, "live_ids") else np.arange(n)
    for k in sorted({1, 10, min(live, 10**6) + 3}):
        D, I = index.search(Q, k) if mode is None else index.search(Q, k, mode=mode)
        D, I = np.asarray(D), np.asarray(I)
        if D.shape != (3, k) or I.shape != (3, k):
            return f"k={k}: shapes {D.shape} {I.shape}, expected (3, {k})"
        if D.dtype != np.float32 or I.dtype != np.int64:
            return f"k={k}: dtypes {D.dtype} {I.dtype}, expected float32 int64"
        real = I != -1
        unknown = real & ~np.isin(I, live_ids)
        if unknown.any():
            return f"k={k}: ids neither live ids nor -1: {I[unknown][:5].tolist()}"
        want = min(k, live)
        if (real.sum(1) != want).any():
            return f"k={k}: {real.sum(1).tolist()} results per query, expected {want} (ntotal {n}, len {live})"
        if (real[:, :want] != True).any():  # noqa: E712 - padding only at the end
            return f"k={k}: padding -1 before real results"
        pad = np.inf if metric == "l2" else -np.inf
        if not (D[~real] == pad).all():
            return f"k={k}: padding distances {np.unique(D[~real])[:5].tolist()}, expected {pad}"
        Dr = D[:, :want]
        if not np.isfinite(Dr).all():
            return f"k={k}: non-finite distances {Dr[~np.isfinite(Dr)][:5].tolist()}"
        for row in I[:, :want]:
            if len(set(row.tolist())) != want:
                return f"k={k}: repeated ids in a row"
        step = np.diff(Dr.astype(np.float64), axis=1)
        if (step < 0).any() if metric == "l2" else (step > 0).any():
            return f"k={k}: distances not sorted best first"
        if metric == "cosine" and (np.abs(Dr) > 1 + COSINE_SLACK).any():
            return f"k={k}: cosine similarities outside [-1, 1]: {Dr[np.abs(Dr) > 1 + COSINE_SLACK][:5].tolist()}"
    return None


#: how case ``c`` is loaded: ``LOADERS[c % 3]``
LOADERS = ("read", "mmap", "bytes")


def run_case(path: str, how: str) -> tuple[str, str]:
    """(outcome, detail) of loading ``path`` by ``how`` (one of :data:`LOADERS`).

    The outcome is "rejected", "loaded" or a failure class. Errors must name the
    file (``<bytes>`` for ``LPLRIndex.from_bytes``).
    """
    from lplr_index import LPLRIndex

    name = path
    try:
        if how == "bytes" and hasattr(LPLRIndex, "from_bytes"):
            name = "<bytes>"
            with open(path, "rb") as f:
                index = LPLRIndex.from_bytes(f.read())
        else:
            index = LPLRIndex.load(path, mmap=how == "mmap")
    except ValueError as exc:
        message = str(exc)
        if name not in message:
            return "error-without-file-name", f"{type(exc).__name__}: {message[:300]}"
        return "rejected", message[message.index(name) + len(name) :][:120]
    except BaseException as exc:  # noqa: BLE001 - what escapes is the finding
        return f"load-raised-{type(exc).__name__}", str(exc)[:300]
    try:
        problem = check_search(index, np.random.default_rng(0))
    except BaseException as exc:  # noqa: BLE001
        return f"search-raised-{type(exc).__name__}", str(exc)[:300]
    if problem:
        return "bad-search", problem
    # what loads can be saved, and loads back as the same index
    again = path + ".resaved"
    try:
        index.save(again)
        twin = LPLRIndex.load(again)
        Q = np.random.default_rng(1).standard_normal((2, index.dim)).astype(np.float32)
        for a, b in zip(index.search(Q, 5), twin.search(Q, 5)):
            if not np.array_equal(np.asarray(a), np.asarray(b)):
                return "resave-differs", "the re-saved index answers differently"
    except BaseException as exc:  # noqa: BLE001
        return f"resave-raised-{type(exc).__name__}", str(exc)[:300]
    finally:
        if os.path.exists(again):
            os.unlink(again)
    return "loaded", ""


def worker() -> None:
    """Read ``[case, path, how]`` lines from stdin; print one JSON result line per case."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    for line in sys.stdin:
        case, path, how = json.loads(line)
        outcome, detail = run_case(path, how)
        print(json.dumps([case, outcome, detail]), flush=True)


def _spawn(lines: list[str], timeout: float) -> tuple[dict, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    try:
        proc = subprocess.run([sys.executable, __file__, "--worker"], input="".join(lines), env=env,
                              capture_output=True, text=True, timeout=timeout)
        out, tail = proc.stdout, proc.stderr[-500:]
        if proc.returncode:
            tail = f"worker exited with {proc.returncode}: {tail}"
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        tail = f"timeout after {timeout:.0f} s"
    done = {}
    for line in out.splitlines():
        case, outcome, detail = json.loads(line)
        done[case] = (outcome, detail)
    return done, tail


#: descriptions of header edits that delete a settings key (see :func:`judged`)
_SETTING_DELETED = re.compile(r"settings/(\w+): .* -> 'deleted'")


def judged(kind: str, desc: str, outcome: str) -> str:
    """The outcome of a case given what its mutation did: a loaded file that lost a settings
    key (a ``header-value`` edit) is the failure ``loaded-without-a-setting``."""
    if outcome == "loaded" and kind == "header-value" and _SETTING_DELETED.fullmatch(desc):
        return "loaded-without-a-setting"
    return outcome


def run_batch(items: list[tuple[int, str, bool]]) -> dict[int, tuple[str, str]]:
    """Outcomes of ``(case, path, how)`` items, in worker processes; culprits named."""
    lines = [json.dumps([c, p, m]) + "\n" for c, p, m in items]
    done, tail = _spawn(lines, BATCH_TIMEOUT_S)
    for (case, _, _), line in zip(items, lines):
        if case not in done:  # the worker died or hung: this case alone
            one, why = _spawn([line], CASE_TIMEOUT_S)
            done[case] = one.get(case, ("worker-died-or-hung", why))
    return done


def fuzz(cases: int, seed: int = 0, *, start: int = 0, batch: int = 100, workers: int = 1,
         folder: Path | None = None, log=None) -> dict:
    """Run ``cases`` cases (``start`` .. ``start + cases - 1``); return a summary dict.

    The summary has ``counts`` (kind -> outcome -> count), ``failures`` (outcome ->
    list of (case, base, kind, description, detail)) and ``seconds``.
    """
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lplr-fuzz-", dir=folder) as tmp:
        tmp = Path(tmp)
        bases = {k: p.read_bytes() for k, p in build_bases(tmp, seed).items()}
        meta, batches = {}, []
        for lo in range(start, start + cases, batch):
            items = []
            for case in range(lo, min(lo + batch, start + cases)):
                base, kind, data, desc = make_case(bases, seed, case)
                path = tmp / f"case-{case}.lplr"
                path.write_bytes(data)
                meta[case] = (base, kind, desc)
                items.append((case, str(path), LOADERS[case % 3]))
            batches.append(items)
        counts: dict = defaultdict(Counter)
        failures: dict = defaultdict(list)

        def one(items):
            out = run_batch(items)
            for case, _, _ in items:
                (tmp / f"case-{case}.lplr").unlink()
            return out

        finished = 0
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for out in pool.map(one, batches):
                for case, (outcome, detail) in sorted(out.items()):
                    base, kind, desc = meta[case]
                    outcome = judged(kind, desc, outcome)
                    counts[kind][outcome] += 1
                    if outcome not in ("rejected", "loaded"):
                        failures[outcome].append((case, base, kind, desc, detail))
                finished += len(out)
                if log:
                    log(f"{finished}/{cases} cases, {sum(len(v) for v in failures.values())} failures, "
                        f"{time.monotonic() - t0:.0f} s")
    return {"counts": {k: dict(v) for k, v in counts.items()}, "failures": dict(failures),
            "seconds": time.monotonic() - t0, "seed": seed, "cases": cases}


def summary_text(result: dict, per_class: int = 1) -> str:
    """A readable summary: outcomes per mutation kind, then each failure class with reproducers."""
    lines = [f"{result['cases']} cases (seed {result['seed']}) in {result['seconds']:.1f} s"]
    for kind in sorted(result["counts"]):
        c = result["counts"][kind]
        lines.append(f"  {kind:16s} " + ", ".join(f"{o} {n}" for o, n in sorted(c.items())))
    if not result["failures"]:
        lines.append("no failures")
    for outcome, cases in sorted(result["failures"].items()):
        kinds = Counter(k for _, _, k, _, _ in cases)
        lines.append(f"FAILURE {outcome}: {len(cases)} cases ({dict(kinds)})")
        for case, base, kind, desc, detail in cases[:per_class]:
            lines.append(f"  case {case} [{base}, {kind}] {desc}\n    -> {detail}\n"
                         f"    reproduce: python tests/fuzz_long.py --seed {result['seed']} --case {case} --keep case.lplr")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10000, help="number of cases (default 10000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="first case number")
    parser.add_argument("--batch", type=int, default=200, help="cases per worker process")
    parser.add_argument("--workers", type=int, default=1, help="worker processes at once")
    parser.add_argument("--case", type=int, help="run this one case and print it")
    parser.add_argument("--keep", help="with --case: write the mutated file here")
    parser.add_argument("--per-class", type=int, default=3, help="reproducers printed per failure class")
    parser.add_argument("--json", help="also write the summary as JSON here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker()
        return 0
    if args.case is not None:
        with tempfile.TemporaryDirectory() as tmp:
            bases = {k: p.read_bytes() for k, p in build_bases(Path(tmp), args.seed).items()}
            base, kind, data, desc = make_case(bases, args.seed, args.case)
            path = Path(args.keep) if args.keep else Path(tmp) / "case.lplr"
            path.write_bytes(data)
            how = LOADERS[args.case % 3]
            (outcome, detail), = run_batch([(args.case, str(path), how)]).values()
            outcome = judged(kind, desc, outcome)
            print(f"case {args.case} [{base}, {kind}] {desc}\n  loaded by {how} -> {outcome}: {detail}")
            return 0 if outcome in ("rejected", "loaded") else 1
    result = fuzz(args.cases, args.seed, start=args.start, batch=args.batch, workers=args.workers,
                  log=lambda s: print(s, file=sys.stderr, flush=True))
    print(summary_text(result, args.per_class))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
