"""The file layout of an index: a snapshot's arrays and header, and back.

:mod:`lplr_index.fileformat` is the container (magic, version, JSON header, checksummed
arrays); this module decides what goes in it. :func:`container` turns a
:class:`~lplr_index.snapshot.Snapshot` and the settings into the header and the arrays a
file stores; :func:`from_container` reads them back into settings and a snapshot,
checking every array's shape, dtype, padding bits and levels (a damaged or edited file
raises ValueError, which the loader reports with the file's name). The same accounting
gives the exact size of a file without writing it (:func:`arrays_meta`,
:func:`file_nbytes`, :func:`storage_breakdown`), which :mod:`lplr_index.sizing` uses to
fit a budget.

Format versions: 1 (uncentred scalar codes), 2 (a mean), 3 (grouped codes, the ``codec``
setting), 4 (code levels per group class), 5 (:data:`IVF_LAYOUT_VERSION`: partitioned
search, the ``nlist`` setting with the coarse centroids and every row's list), 6
(:data:`RERANK_LAYOUT_VERSION`: the header's ``rerank_factor``, measured by the build).
"""

from __future__ import annotations

import numpy as np

from ._validation import check_bits, check_choice, check_int
from ._version import __version__
from .codes import CodeStore
from .fileformat import container_nbytes
from .ids import check_unique, id_bitmap, ids_layout
from .packing import _pack, _unpack, packed_nbytes
from .quantize import Quantizer
from .search import ivf as ivf_search
from .settings import MAX_NLIST, IndexSettings
from .snapshot import LAYOUT_VERSION, Snapshot, _frozen
from .train import Encoder
from .search.router import DEFAULT_RERANK_FACTOR, MAX_RERANK_FACTOR
from .vq import TWO_LEVEL_RERANK_FACTOR, GroupedQuantizer, VQEncoder, _as_groups, book_size, check_groups, groups_from_file

__all__ = ["IVF_LAYOUT_VERSION", "RERANK_LAYOUT_VERSION", "AUTO_NLIST_MIN_ROWS", "fresh_version", "nlist_for",
           "widest_rerank_factor", "header", "arrays_meta",
           "file_nbytes", "nbytes_of", "storage_breakdown", "container", "from_container"]

#: the first version whose files may have the ``nlist`` setting (partitioned search)
IVF_LAYOUT_VERSION = 5
#: the version every build writes: the header holds the ``rerank_factor`` the build measured
RERANK_LAYOUT_VERSION = 6
#: ``nlist="auto"``: no partition below this many rows, :func:`lplr_index.search.ivf.default_nlist`
#: from it on (measured in the README's "Partitioned search", 1 b/c: the lists lost on 35,892
#: MiniLM text embeddings, 0.038 recall at 0.88x the q/s, and paid on 60,000 image features,
#: 2.5x the q/s for 0.002 recall; on synthetic mixtures they paid from 20,000 rows)
AUTO_NLIST_MIN_ROWS = 50_000
_ARRAYS_V1 = ("l_codes", "l_lo", "l_hi", "r_codes", "r_lo", "r_hi")
_ARRAYS_V2 = _ARRAYS_V1 + ("mean",)
#: arrays stored only when needed, in either layout: the user ids, as "ids" (int64,
#: one per stored row) or, when they increase from row to row and the bitmap is
#: smaller, as "id_bitmap" (bit i set when id i is stored: the ids of default-id
#: indexes with holes after compact()); "removed" (the tombstone bitmap, one bit
#: per stored row) when some rows are removed. Bitmaps are little-endian in bit order.
_OPTIONAL_ARRAYS = ("ids", "id_bitmap", "removed")
#: largest magnitude a stored level, mean entry or decoded coordinate may have (builds stay far below)
_MAX_LEVEL = 1e17


def fresh_version(s: IndexSettings) -> int:
    """The format version of an index built with the settings ``s`` (all of them: the latest)."""
    return RERANK_LAYOUT_VERSION


def nlist_for(s: IndexSettings, n: int) -> int | None:
    """The lists a build of ``n`` rows makes (None: exhaustive); an integer setting as given."""
    nlist = s.nlist
    if nlist == "auto":
        return None if n < AUTO_NLIST_MIN_ROWS else ivf_search.default_nlist(n)
    return nlist


def widest_rerank_factor(vq: tuple[str, np.ndarray] | None = None) -> int:
    """The widest ``rerank_factor`` a build may write, for the size of a file not yet built: the
    deepest it tries (:data:`~lplr_index.search.router.RERANK_FACTORS_TRIED`), one digit unless the
    grouped codes ``vq = (basis, groups)`` are two-level."""
    two = vq is not None and bool((_as_groups(vq[1])[:, 2] > 1).any())
    return TWO_LEVEL_RERANK_FACTOR if two else DEFAULT_RERANK_FACTOR


def header(s: IndexSettings, n, rank, bits_l, n_build, n_clipped, kind, fit_error, version: int = LAYOUT_VERSION,
           nprobe: int | None = None, rerank_factor: int | None = None) -> dict:
    """The JSON header of a file: the settings (those its ``version`` has) and the build's facts."""
    settings = s.to_header(rank=rank)
    if version < 3:  # written before the codec setting: always the scalar codes
        settings.pop("codec")
    if version < IVF_LAYOUT_VERSION:  # written before partitioned search
        settings.pop("nlist", None)
    elif version >= RERANK_LAYOUT_VERSION:  # every index: null when exhaustive
        settings.setdefault("nlist", None)
    out = {
        "format": "lplr-index",
        "library_version": __version__,
        "settings": settings,
        "bits_l_used": bits_l,
        "encoder": kind,
        # fixed width, so the header size (and the budget) does not depend on the value
        "fit_error": f"{fit_error:.6e}",
        "ntotal": n,
        "n_build": n_build,
        "n_clipped": n_clipped,
    }
    if version >= IVF_LAYOUT_VERSION:  # the lists a search scans by default (null: exhaustive)
        out["nprobe"] = nprobe
    if version >= RERANK_LAYOUT_VERSION:  # fast-scan candidates per result (null: the encoder's default)
        out["rerank_factor"] = rerank_factor
    return out


def arrays_meta(s: IndexSettings, n: int, rank: int, bits_l: int, version: int = LAYOUT_VERSION, *,
                ids: tuple[str, int] | None = None, removed: bool = False,
                vq: tuple[str, np.ndarray] | None = None, ivf: int | None = None) -> dict[str, np.ndarray]:
    """Zero-size stand-ins with the shapes/dtypes of the stored arrays.

    ``ivf``: the coarse lists of a partitioned index (version 5): its centroids
    (``nlist x rank`` float32, latent) and every row's list in ``ceil(log2 nlist)`` bits.

    ``ids``: the layout of the user ids (:func:`ids_layout`), or None;
    ``removed``: the tombstone bitmap is stored; ``vq``: ``(basis, groups)``
    of grouped codes (:mod:`lplr_index.vq`; ``rank`` and ``bits_l`` unused).
    """
    per_col = s.quantizer != "minmax"
    nl, nr = (rank if per_col else 1), (s.dim if per_col else 1)
    if vq is not None:
        basis, groups = vq[0], _as_groups(vq[1])
        M, K = int((groups[:, 1] * groups[:, 2]).sum()), int((groups[:, 0] * groups[:, 1]).sum())
        shapes = {
            "l_codes": ((n, packed_nbytes(M, 4)), np.uint8),
            # version 3 stored (group size, count): one code level per class
            "vq_groups": ((len(groups), 3 if version >= 4 else 2), np.int32),
            "vq_codebooks": ((sum(book_size(g, lv) for g, _, lv in groups.tolist()),), np.float32),
        }
        if basis == "pca":
            shapes["r_codes"] = ((K, packed_nbytes(s.dim, s.bits_r)), np.uint8)
            shapes["r_lo"] = ((nr,), np.float32)
            shapes["r_hi"] = ((nr,), np.float32)
        else:
            shapes["vq_dirs"] = ((K,), np.int32)
    else:
        shapes = {
            "l_codes": ((n, packed_nbytes(rank, bits_l)), np.uint8),
            "l_lo": ((nl,), np.float32),
            "l_hi": ((nl,), np.float32),
            "r_codes": ((rank, packed_nbytes(s.dim, s.bits_r)), np.uint8),
            "r_lo": ((nr,), np.float32),
            "r_hi": ((nr,), np.float32),
        }
    if version >= 2:
        shapes["mean"] = ((s.dim,), np.float32)
    if ids is not None:
        shapes[ids[0]] = ((ids[1],), np.int64 if ids[0] == "ids" else np.uint8)
    if removed:
        shapes["removed"] = ((packed_nbytes(n, 1),), np.uint8)
    if ivf is not None and version >= IVF_LAYOUT_VERSION:
        latent = K if vq is not None else rank
        shapes["ivf_centroids"] = ((ivf, latent), np.float32)
        shapes["ivf_lists"] = ((packed_nbytes(n, ivf_search.list_bits(ivf)),), np.uint8)
    return {k: np.lib.stride_tricks.as_strided(np.zeros(1, dt), shape=shape, strides=(0,) * len(shape))
            for k, (shape, dt) in shapes.items()}


def file_nbytes(s: IndexSettings, n: int, rank: int, bits_l: int, *, state: Snapshot | None = None,
                ids: tuple[str, int] | None = None, vq: tuple[str, np.ndarray] | None = None) -> int:
    """Exact file size for n vectors at ``rank`` (or of grouped codes ``vq``, see
    :func:`arrays_meta`): of ``state``, or of a fresh build (with user ids
    saved as ``ids``, see :func:`~lplr_index.ids.ids_layout`) with the widest header values it can have."""
    if state is None:
        # the orthonormal factor always ends with the pinv encoder; otherwise the longer name
        kind = ("pinv" if s.factor == "orthonormal" else "sketch") if vq is None else vq[0]
        rank = rank if vq is None else max(1, int((vq[1][:, 0] * vq[1][:, 1]).sum()))
        version, nlist = fresh_version(s), nlist_for(s, n)
        nlist = None if nlist is None else min(nlist, n)
        head = header(s, n, rank, bits_l, n, 0, kind, 0.0, version=version, nprobe=nlist,
                      rerank_factor=widest_rerank_factor(vq))
        meta = arrays_meta(s, n, rank, bits_l, version, ids=ids, vq=vq, ivf=nlist)
    else:
        enc = state.encoder
        head = header(s, n, rank, bits_l, state.n_build, state.n_clipped, enc.kind, state.fit_error,
                      version=state.version, nprobe=state.nprobe, rerank_factor=state.rerank_factor)
        meta = arrays_meta(s, n, rank, bits_l, state.version, ids=state.ids_layout,
                           removed=state.removed is not None, vq=vq_layout(enc), ivf=state.nlist)
    return container_nbytes(head, meta)


def nbytes_of(s: IndexSettings, st: Snapshot) -> int:
    """Size in bytes of the file of the snapshot ``st``."""
    return file_nbytes(s, st.store.n, st.encoder.rank, st.encoder.lq.bits, state=st)


def storage_breakdown(s: IndexSettings, st: Snapshot) -> dict[str, int]:
    """Bytes stored, by part: per-vector codes, shared factor, quantizer levels, mean,
    user ids, tombstones, (version 5) the coarse centroids and list numbers, header."""
    enc = st.encoder
    if enc.codec == "vq":
        factor = (enc.rcodes.shape[0] * packed_nbytes(s.dim, s.bits_r) + 8 * enc.rq.lo.size
                  if enc.basis == "pca" else 4 * enc.dirs.size)
        levels = 4 * enc.lq.codebooks.size + 4 * len(enc.lq.groups) * (3 if st.version >= 4 else 2)
    else:
        factor = enc.rcodes.shape[0] * packed_nbytes(s.dim, s.bits_r)
        levels = 4 * (enc.lq.lo.size * 2 + enc.rq.lo.size * 2)
    parts = {
        "codes": st.store.nbytes,
        "shared_factor": int(factor),
        "quantizer_levels": int(levels),
        "mean": 4 * s.dim if st.version >= 2 else 0,
        "ids": 0 if st.ids is None else (8 * st.n if st.ids_layout[0] == "ids" else st.ids_layout[1]),
        "removed": 0 if st.removed is None else packed_nbytes(st.n, 1),
    }
    if st.nlist is not None:  # partitioned search: coarse centroids, list numbers
        parts["coarse_centroids"] = int(st.ivf_centroids.nbytes)
        parts["list_numbers"] = packed_nbytes(st.n, ivf_search.list_bits(st.nlist))
    parts["header_and_padding"] = nbytes_of(s, st) - sum(parts.values())
    return parts


def container(s: IndexSettings, st: Snapshot) -> tuple[dict, dict[str, np.ndarray], int]:
    """``(header, arrays, version)`` of the file of the snapshot ``st``."""
    enc = st.encoder
    if enc.codec == "vq":
        groups = enc.lq.groups if st.version >= 4 else np.ascontiguousarray(enc.lq.groups[:, :2])
        arrays = {"l_codes": st.store.codes, "vq_groups": groups, "vq_codebooks": enc.lq.codebooks}
        if enc.basis == "pca":
            arrays.update(r_codes=_pack(enc.rcodes, s.bits_r), r_lo=enc.rq.lo, r_hi=enc.rq.hi)
        else:
            arrays["vq_dirs"] = enc.dirs
    else:
        arrays = {
            "l_codes": st.store.codes,
            "l_lo": enc.lq.lo,
            "l_hi": enc.lq.hi,
            "r_codes": _pack(enc.rcodes, s.bits_r),
            "r_lo": enc.rq.lo,
            "r_hi": enc.rq.hi,
        }
    if st.version >= 2:
        arrays["mean"] = enc.mean
    if st.ids is not None:
        name = st.ids_layout[0]
        arrays[name] = st.ids if name == "ids" else id_bitmap(st.ids)
    if st.removed is not None:
        arrays["removed"] = np.packbits(st.removed, bitorder="little")
    if st.nlist is not None:
        arrays["ivf_centroids"] = st.ivf_centroids
        arrays["ivf_lists"] = ivf_search.pack_lists(st.ivf_lists, st.nlist)
    head = header(s, st.store.n, enc.rank, enc.lq.bits, st.n_build, st.n_clipped, enc.kind, st.fit_error,
                  version=st.version, nprobe=st.nprobe, rerank_factor=st.rerank_factor)
    return head, arrays, st.version


def from_container(header, arrays, version: int, mmap: bool) -> tuple[IndexSettings, Snapshot]:
    """The settings and the snapshot of a file's ``header`` and ``arrays`` (format ``version``;
    ``mmap``: the per-vector codes stay the file's mapped array); anything no build writes
    raises (ValueError mostly; also KeyError, TypeError and the like, which the loader
    reports as damaged content)."""
    if not isinstance(header, dict) or header.get("format") != "lplr-index":
        raise ValueError(f"format is {header.get('format') if isinstance(header, dict) else header!r}, "
                         "expected 'lplr-index'")
    # every key the file's version wrote, of its type; defaults only for settings it did not have
    s = IndexSettings.from_header(header["settings"], version=version)
    rank = check_int(header["settings"]["rank"], "rank", low=1, high=s.dim)
    bits_l = check_bits(header["bits_l_used"], "bits_l_used")
    if s.bits_l is not None and bits_l != s.bits_l:
        raise ValueError(f"bits_l_used={bits_l} differs from the setting bits_l={s.bits_l}")
    kind = check_choice(header["encoder"], "encoder", ("sketch", "pinv", "pca", "rotation"))
    vq = kind in ("pca", "rotation")  # codec="auto" may have built either
    if s.codec != "auto" and vq != (s.codec == "vq"):
        raise ValueError(f"encoder {kind!r} does not go with codec={s.codec!r}")
    fit_error = float(header["fit_error"])
    if not (fit_error >= 0 or np.isnan(fit_error)):
        raise ValueError(f"fit_error must be >= 0, got {fit_error}")
    n = check_int(header["ntotal"], "ntotal", low=0)  # compact() may leave no row
    n_build = check_int(header["n_build"], "n_build", low=1, high=max(n, 1))
    n_clipped = check_int(header["n_clipped"], "n_clipped", low=0)
    if "ids" in arrays and "id_bitmap" in arrays:
        raise ValueError("the file holds both ids and id_bitmap")
    stored_ids = next(((k, arrays[k].shape[0]) for k in ("ids", "id_bitmap")
                       if k in arrays and arrays[k].ndim == 1), None)
    grouped = None
    if vq:
        if bits_l != 4:
            raise ValueError(f"grouped codes are 4-bit, bits_l_used={bits_l}")
        groups, books = arrays.get("vq_groups"), arrays.get("vq_codebooks")
        if groups is None or books is None or groups.dtype != np.int32 or books.dtype != np.float32:
            raise ValueError("grouped codes need the int32 array vq_groups and the float32 array vq_codebooks")
        groups, books = np.array(groups), np.array(books)
        if version < 4:  # (group size, count): one code level per class
            groups = groups_from_file(groups, 2, f"a version-{version} file")
        check_groups(groups, books, s.dim)
        if int((groups[:, 0] * groups[:, 1]).sum()) != rank:
            raise ValueError(f"vq_groups cover {int((groups[:, 0] * groups[:, 1]).sum())} latent coordinates, "
                             f"the header says rank={rank}")
        grouped = (kind, groups)
    nlist = nprobe = None
    if version >= IVF_LAYOUT_VERSION:
        nprobe = header["nprobe"]
        if "ivf_centroids" in arrays:
            cent = arrays["ivf_centroids"]
            nlist = check_int(cent.shape[0] if cent.ndim == 2 else -1, "ivf_centroids rows", low=1,
                              high=MAX_NLIST)
            if isinstance(s.nlist, int) and nlist != s.nlist:
                raise ValueError(f"ivf_centroids holds {nlist} lists, the settings say nlist={s.nlist}")
            nprobe = check_int(nprobe, "nprobe", low=1, high=nlist)
        elif isinstance(s.nlist, int) or nprobe is not None or (s.nlist is None and version < RERANK_LAYOUT_VERSION):
            # (version 5 wrote lists-less files only for nlist="auto"; 6 writes null for every exhaustive index)
            raise ValueError(f"nlist={s.nlist!r} and nprobe={nprobe!r} without ivf_centroids")
    rerank_factor = None
    if version >= RERANK_LAYOUT_VERSION and header["rerank_factor"] is not None:
        rerank_factor = check_int(header["rerank_factor"], "rerank_factor", low=1, high=MAX_RERANK_FACTOR)
    expected = arrays_meta(s, n, rank, bits_l, version, ids=stored_ids, removed="removed" in arrays,
                           vq=grouped, ivf=nlist)
    if set(arrays) != set(expected):
        raise ValueError(f"arrays {sorted(arrays)} differ from the expected {sorted(expected)}")
    for key, meta in expected.items():
        if arrays[key].shape != meta.shape or arrays[key].dtype != meta.dtype:
            raise ValueError(f"array {key!r} has shape {arrays[key].shape} and dtype {arrays[key].dtype}, "
                             f"expected {meta.shape} and {meta.dtype}")
    mean = np.array(arrays["mean"]) if version >= 2 else np.zeros(s.dim, np.float32)
    if not (np.isfinite(mean).all() and np.abs(mean).max(initial=0) <= _MAX_LEVEL):
        raise ValueError(f"mean must be finite with entries of magnitude <= {_MAX_LEVEL:g}")
    if vq:
        lq = GroupedQuantizer(groups, books)
        check_padding_bits(arrays["l_codes"], 4, lq.n_codes, "l_codes")
        rq = rcodes = dirs = None
        if kind == "pca":
            rq = checked_quantizer(s.quantizer, s.bits_r, arrays["r_lo"], arrays["r_hi"], "R")
            check_padding_bits(arrays["r_codes"], s.bits_r, s.dim, "r_codes")
            rcodes = _unpack(np.array(arrays["r_codes"]), s.bits_r, s.dim)
        else:
            dirs = np.array(arrays["vq_dirs"])
            if dirs.size and (dirs.min() < 0 or dirs.max() >= s.dim or len(np.unique(dirs)) != dirs.size):
                raise ValueError(f"vq_dirs must hold distinct directions in [0, {s.dim - 1}]")
        encoder = VQEncoder(mean, lq, kind, rcodes, rq, dirs, s.seed, s.metric == "cosine", s.dim)
        # orthonormal rows: a decoded vector is at most the norm of its latent row away from the mean
        bound = float(np.abs(books).max(initial=0)) * np.sqrt(rank) + float(np.abs(mean).max(initial=0))
    else:
        lq = checked_quantizer(s.quantizer, bits_l, arrays["l_lo"], arrays["l_hi"], "L")
        rq = checked_quantizer(s.quantizer, s.bits_r, arrays["r_lo"], arrays["r_hi"], "R")
        check_padding_bits(arrays["r_codes"], s.bits_r, s.dim, "r_codes")
        check_padding_bits(arrays["l_codes"], bits_l, rank, "l_codes")
        rcodes = _unpack(np.array(arrays["r_codes"]), s.bits_r, s.dim)
        if s.factor == "orthonormal" and (mean.any() and version < 2):
            raise ValueError("a version-1 file cannot hold a centred index")
        encoder = Encoder(mean, lq, rcodes, rq, kind, s.seed, s.metric == "cosine", s.factor == "orthonormal")
        bound = _level_bound(lq) * _level_bound(rq) * rank + float(np.abs(mean).max(initial=0))
    if not bound <= _MAX_LEVEL:
        raise ValueError(f"decoded vectors could reach magnitude {bound:.3g}, above {_MAX_LEVEL:g}: "
                         "levels no build produces")
    ids = removed = None
    if "ids" in arrays:
        ids = np.array(arrays["ids"])
        if len(ids) != n:
            raise ValueError(f"ids must hold ntotal={n} ids, the file holds {len(ids)}")
        if ids.size and ids.min() < 0:
            raise ValueError(f"ids must be >= 0, the file holds id {ids.min()}")
        check_unique(ids, "ids")
    if "id_bitmap" in arrays:
        bitmap = np.array(arrays["id_bitmap"])
        ids = np.flatnonzero(np.unpackbits(bitmap, bitorder="little")).astype(np.int64)
        if len(ids) != n or (bitmap.size and bitmap[-1] == 0):
            raise ValueError(f"id_bitmap must set exactly ntotal={n} bits and end in a non-zero byte, it sets "
                             f"{len(ids)} bits in {bitmap.size} bytes")
        if ids_layout(ids) != ("id_bitmap", bitmap.size):
            raise ValueError("id_bitmap holds ids this library saves as an int64 array")
    if "removed" in arrays:
        check_padding_bits(arrays["removed"][None, :], 1, n, "removed")
        removed = np.unpackbits(np.array(arrays["removed"]), count=n, bitorder="little").astype(bool)
    centroids = lists = None
    if nlist is not None:
        centroids, lists = read_partition(arrays["ivf_centroids"], arrays["ivf_lists"], nlist, n)
    codes = arrays["l_codes"] if mmap else np.array(arrays["l_codes"])
    st = Snapshot(encoder, CodeStore(codes), n_build, n_clipped, fit_error, s.metric, version,
                  ids=_frozen(ids), removed=_frozen(removed), ivf_centroids=_frozen(centroids),
                  ivf_lists=_frozen(lists), nprobe=nprobe, rerank_factor=rerank_factor)
    return s, st


def read_partition(centroids, packed, nlist: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A file's coarse lists, checked: its ``ivf_centroids`` (a copy; ``nlist`` rows, finite, of
    magnitude at most the levels' bound) and every one of its ``n`` rows' list, unpacked from
    ``ivf_lists`` (``ceil(log2 nlist)`` bits a row, padding bits zero, each below ``nlist``).
    Index files (:func:`snapshot_of`) and shard files (:mod:`lplr_index.distributed`) both
    store them so."""
    centroids = np.array(centroids)
    if centroids.ndim != 2 or len(centroids) != nlist:
        raise ValueError(f"ivf_centroids of shape {centroids.shape}, the header says nlist={nlist}")
    if not (np.isfinite(centroids).all() and np.abs(centroids).max(initial=0) <= _MAX_LEVEL):
        raise ValueError(f"ivf_centroids must be finite with entries of magnitude <= {_MAX_LEVEL:g}")
    b = ivf_search.list_bits(nlist)
    if packed.dtype != np.uint8 or packed.shape != (packed_nbytes(n, b),):
        raise ValueError(f"ivf_lists of shape {packed.shape} and dtype {packed.dtype}, expected uint8 "
                         f"({packed_nbytes(n, b)},) for {n} rows of {b}-bit list numbers")
    check_padding_bits(packed[None, :], 1, n * b, "ivf_lists")
    lists = ivf_search.unpack_lists(packed, nlist, n)
    if lists.size and lists.max() >= nlist:
        raise ValueError(f"ivf_lists holds list {lists.max()}, the index has {nlist} lists")
    return centroids, lists


def _level_bound(q: Quantizer) -> float:
    return float(max(np.abs(q.lo).max(initial=0), np.abs(q.hi).max(initial=0)))


def checked_quantizer(scheme, bits, lo, hi, part) -> Quantizer:
    lo, hi = np.array(lo), np.array(hi)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all() and (hi >= lo).all()):
        raise ValueError(f"quantizer levels of {part} are not finite and ordered")
    if max(np.abs(lo).max(initial=0), np.abs(hi).max(initial=0)) > _MAX_LEVEL:
        raise ValueError(f"quantizer levels of {part} exceed {_MAX_LEVEL:g} in magnitude")
    return Quantizer(scheme, bits, lo.astype(np.float32), hi.astype(np.float32))


def check_padding_bits(packed: np.ndarray, bits: int, count: int, name: str) -> None:
    """The unused high bits of each packed row's last byte must be zero."""
    used = (count * bits) % 8
    if used and packed.shape[0] and packed.shape[1]:
        last = np.asarray(packed[:, -1])
        if np.any(last >> np.uint8(used)):
            raise ValueError(f"{name} has non-zero padding bits: its rows do not hold {count} codes of {bits} bits")


def vq_layout(enc) -> tuple[str, np.ndarray] | None:
    """``(basis, groups)`` of a grouped-code encoder, None for scalar codes."""
    return (enc.basis, enc.lq.groups) if enc.codec == "vq" else None
