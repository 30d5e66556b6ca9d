"""LPLRIndex: a compressed k-nearest-neighbour index over LPLR-factorized vectors.

The database ``X`` (n x dim) is stored as ``X ~ mean + L R``: one row of
``rank`` low-bit codes per vector (``L``) and one shared ``rank x dim`` factor
(``R``). Building runs LPLR with alternating refinement as passes over row
blocks (:mod:`lplr_index.train`); by default the shared factor is then an
orthonormal, randomly rotated basis of the LPLR subspace, so that 4-bit codes
are searched by faiss's fast-scan kernels and re-ranked exactly
(:mod:`lplr_index.search`).

The index composes four parts: the settings (:mod:`lplr_index.settings`), the
frozen encoder (:class:`lplr_index.train.Encoder`), the code store
(:mod:`lplr_index.codes`) and the search backends.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple

import numpy as np
from numpy.typing import NDArray

from ._blocks import ArraySource, LocalExecutor, check_block, open_npy
from ._inputs import open_source
from ._common import _normalize_rows as _normalize
from ._validation import check_bits, check_choice, check_int
from ._version import __version__
from .codes import CodeStore
from .fileformat import (
    IndexFileError,
    container_nbytes,
    container_to_bytes,
    read_container,
    source_name,
    write_container,
)
from .packing import _unpack, packed_nbytes
from .quantize import Quantizer
from .search import blas, fastscan
from .search import ivf as ivf_search
from .search.metrics import CodeView, pad_results, prepare_queries
from .settings import MAX_NLIST, IndexSettings
from .snapshot import DERIVED, LAYOUT_VERSION, Snapshot, UnknownIdError, _frozen, _ids_layout
from .train import SAMPLE_ROWS, Encoder, fit
from .vq import (TWO_LEVEL_RERANK_FACTOR, GroupedQuantizer, VQEncoder, _as_groups, book_size, check_groups, fit_vq,
                 groups_from_file, two_level_tried)
from .vq import NoRoom as _NoRoom

__all__ = [
    "LPLRIndex",
    "SearchResult",
    "IndexPlan",
    "UnknownIdError",
    "SEARCH_MODES",
    "DEFAULT_RERANK_FACTOR",
    "TWO_LEVEL_RERANK_FACTOR",
    "MAX_RESULT_BYTES",
]

SEARCH_MODES = ("auto", "fastscan", "factored", "reconstructed")
#: candidates per result re-ranked after fast-scan (k' = factor * k); measured in
#: benchmarks/bench_rerank.py: 4 reaches exact-scan recall within 0.005 at every setting tried
DEFAULT_RERANK_FACTOR = 4
#: cap on the (distances, ids) one search may return: n_queries * k * 12 bytes
MAX_RESULT_BYTES = 1 << 31


def default_rerank_factor(encoder) -> int:
    """Fast-scan candidates per result when the caller gives none: more when fast-scan
    scores the coarse half of two-level codes."""
    return TWO_LEVEL_RERANK_FACTOR if encoder.codec == "vq" and encoder.lq.two_level else DEFAULT_RERANK_FACTOR


_ARRAYS_V1 = ("l_codes", "l_lo", "l_hi", "r_codes", "r_lo", "r_hi")
_ARRAYS_V2 = _ARRAYS_V1 + ("mean",)
#: arrays stored only when needed, in either layout: the user ids, as "ids" (int64,
#: one per stored row) or, when they increase from row to row and the bitmap is
#: smaller, as "id_bitmap" (bit i set when id i is stored: the ids of default-id
#: indexes with holes after compact()); "removed" (the tombstone bitmap, one bit
#: per stored row) when some rows are removed. Bitmaps are little-endian in bit order.
_OPTIONAL_ARRAYS = ("ids", "id_bitmap", "removed")
#: ``codec="auto"`` fits the scalar 8-bit codes on the sample beside the grouped designs from
#: this budget (bits per coordinate) on. Measured, sample recall 10@10 of the best grouped
#: design against the scalar codes: at 4 bits Fashion-MNIST 0.987 / 0.958, BBC 0.941 / 0.881,
#: fortunes 0.940 / 0.786, BBC sentences 0.952 / 0.829; at 6 bits the three text sets 0.969 /
#: 0.951, 0.977 / 0.938, 0.980 / 0.961; at 8 bits the scalar codes win all three (0.982 /
#: 0.987, 0.985 / 0.990, 0.990 / 0.995). Below this budget their fit only costs time (7 s of
#: a 31 s Fashion-MNIST build at 4 bits)
SCALAR_RIVAL_MIN_BITS = 6.0
#: filtered fast-scan search: when fewer than this fraction of the stored rows
#: may be returned, the allowed rows are scanned exactly instead (measured in
#: the docstring of :meth:`LPLRIndex._search_fastscan`)
FILTER_SCAN_FRACTION = 0.2
#: filtered fast-scan search fetches this many times ``k' / fraction allowed`` candidates
FILTER_OVERFETCH = 2.0
#: filtered fast-scan search with the faiss re-rank (orthonormal factor): from this fraction of
#: the rows allowed, ``k' / fraction`` candidates are re-ranked in faiss and the disallowed
#: dropped afterwards (measured in the docstring of :meth:`LPLRIndex._search_fastscan`)
FILTER_REFINE_FRACTION = 0.8
#: a masked exact scan gathers the allowed rows first when at most this fraction is allowed
_GATHER_FRACTION = 0.5
#: ``nlist="auto"``: no partition below this many rows, :func:`lplr_index.search.ivf.default_nlist`
#: from it on (measured in the README's "Partitioned search")
AUTO_NLIST_MIN_ROWS = 20_000
#: the build measures the default ``nprobe`` on this many of its rows as queries (seeded)
NPROBE_QUERIES = 100
#: the default ``nprobe``: the smallest power of two whose recall 10@10 on those queries is within
#: this of the exhaustive first stage's (``nprobe = nlist``)
NPROBE_TOLERANCE = 0.01
#: the version of a file whose index has the ``nlist`` setting (partitioned search)
IVF_LAYOUT_VERSION = 5


class SearchResult(NamedTuple):
    """``(distances, indices)`` of a search, each of shape (n_queries, k).

    ``distances`` is float32: squared L2 distances (ascending) for
    ``metric="l2"``, inner products or cosine similarities (descending) for
    ``"ip"`` and ``"cosine"``. ``indices`` is int64. Missing results (k larger
    than the index) are padded with ``inf`` (``-inf`` for similarities) and -1.
    """

    distances: NDArray[np.float32]
    indices: NDArray[np.int64]


@dataclass(frozen=True)
class IndexPlan:
    """What :meth:`LPLRIndex.plan` predicts for a build: without data, or from a sample of it.

    Attributes
    ----------
    n, dim : int
        Vectors and their dimension.
    rank, bits_l : int
        Rank and code width a build chooses (from the budget, or as given). With
        grouped codes from a budget (``codec="vq"``) the data decide the rank: with
        ``sample``, the rank of the design the sample chose (:attr:`design`); without,
        an upper bound (``min(dim, 8 x`` the 4-bit codes the budget holds: groups of 8
        directions per code). Grouped codes are 4-bit.
    file_bytes : int
        Size of the saved file, equal to :attr:`LPLRIndex.nbytes` after the build
        (exactly for ``factor="orthonormal"`` or ``refine_iters=0``; otherwise at
        most a few bytes more, the encoder's name in the header). With grouped codes
        from a budget and a ``sample``: the exact size of the file of the design the
        sample chose (the build's when :attr:`exact`); without a sample: the budget
        itself, an upper bound, not a prediction (:attr:`exact` is False).
    bits_per_coordinate : float
        ``8 * file_bytes / (n * dim)``.
    build_peak_bytes : int
        Peak of the memory :meth:`LPLRIndex.build` allocates (as :mod:`tracemalloc`
        counts it) for a float32, C-contiguous ``X`` already in memory (``X`` not
        counted): the row sample, the buffers of one canonical block and the codes.
    search_peak_bytes : int
        Peak of the memory the first :meth:`LPLRIndex.search` of ``n_queries``
        queries for ``k`` neighbours allocates (tracemalloc; the index itself not
        counted, the caches it builds counted), for vectors stored in random order,
        without filter or rescoring.
    n_queries, k : int
        The query batch and k of ``search_peak_bytes``.
    search_mode : {"fastscan", "factored"}
        The mode of that search.
    fastscan : bool
        Whether ``mode="auto"`` searches with fast-scan (4-bit codes, orthonormal factor).
    fastscan_bytes : int
        What faiss holds for fast-scan: its copy of the codes in block layout, and
        with an orthonormal factor the flat codes its re-rank scores and the
        projection ``R`` (float32); allocated by the first fast-scan search
        outside Python's allocator (so not in ``search_peak_bytes``); 0 when
        fast-scan is not used.
    codec : {"vq", "scalar"}
        The codes a build makes (``codec="auto"`` at 6+ bits per coordinate may
        also build the scalar 8-bit codes: the data decide; with ``sample``, the
        sample decided).
    exact : bool
        Whether ``file_bytes``, ``rank`` and :attr:`design` are what the build will
        give: True for the scalar codes, grouped codes with a rank, and grouped codes
        from a budget planned with a ``sample`` holding all ``n`` rows (in the order
        the build gets them: the design choice is the build's). False for grouped
        codes from a budget without a sample (``file_bytes`` the budget, ``rank`` an
        upper bound, the peaks estimates from the largest layout the budget allows)
        or with a sample of fewer rows (the design the sample chose, sized exactly
        for ``n`` rows; the build chooses from all rows' spectrum, most often alike).
    design : dict or None
        With grouped codes from a budget and a ``sample``: the design the sample chose,
        ``{"basis": "pca" | "rotation", "groups": [[group size, groups, levels], ...]}``
        (as :attr:`LPLRIndex.layout` reports it after the build), or
        ``{"basis": "scalar"}`` when the scalar 8-bit codes won; otherwise None.
    """

    n: int
    dim: int
    rank: int
    bits_l: int
    file_bytes: int
    bits_per_coordinate: float
    build_peak_bytes: int
    search_peak_bytes: int
    n_queries: int
    k: int
    search_mode: str
    fastscan: bool
    fastscan_bytes: int
    codec: str = "scalar"
    exact: bool = True
    design: dict | None = None


#: the committed state of an index (its name before :mod:`lplr_index.snapshot`)
_State = Snapshot
#: indexes alive, whose writer lock a forked child re-creates (see :func:`_after_fork_in_child`)
_INDEXES: "weakref.WeakSet[LPLRIndex]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A mutation another thread of the parent was running at the fork never happened in the
    child (its snapshot was not swapped in): the child gets a free writer lock. And GNU
    OpenMP cannot run a parallel region on the forking thread of a child whose parent ran
    one on more than one thread (it waits for the parent's threads forever): if faiss is
    loaded, that thread of the child runs faiss on one thread (other threads of the child
    are not affected; ``n_threads=`` or ``faiss.omp_set_num_threads`` there hang again)."""
    for index in list(_INDEXES):
        index._write_lock, index._writer = threading.Lock(), None
    faiss = sys.modules.get("faiss")
    if faiss is not None:
        faiss.omp_set_num_threads(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _mutating(what: str):
    """A method of :class:`LPLRIndex` that mutates it: run under the writer lock
    (:meth:`LPLRIndex._mutation`), so mutations of one index run one at a time, each
    reading the snapshot the last one committed; searches never wait for it."""
    def wrap(method):
        @functools.wraps(method)
        def mutation(self, *args, **kwargs):
            with self._mutation(what):
                return method(self, *args, **kwargs)
        return mutation
    return wrap


class LPLRIndex:
    """Compressed k-NN index: low-precision codes per vector, one shared low-precision factor.

    Every vector is stored as ``mean + L R``: a row of 4-bit (or 8-bit) codes
    ``L`` and a shared ``rank x dim`` factor ``R``. The default codes
    (``codec="vq"``, :mod:`lplr_index.vq`) spend the bits where the variance
    is: the principal directions (or, when storing them costs too much,
    directions of a seeded rotation), the strongest directions with 8-bit
    codes (a coarse and a fine 4-bit code, alone or in pairs), others with
    their own 4-bit code and groups of 2, 4 or 8 weaker ones sharing one, the
    design chosen at build time by its recall on a sample. ``codec="scalar"`` is the
    paper's LPLR: one ``bits_l``-bit code per direction of a sketched subspace.

    The constructor only stores and validates settings; :meth:`build` does the work.

    Parameters
    ----------
    dim : int
        Dimension of the vectors, 1 to ``2**31 - 1``.
    bits_per_coordinate : float, default=None
        Storage budget: everything the index stores (codes, shared factor,
        quantizer levels, mean, file header) divided by ``n * dim`` at build
        time, > 0 and at most 10^6. Grouped codes fill it with the design of
        best sample recall; the scalar codes take the largest rank whose saved
        file fits. Give this or ``rank``, not both.
    rank : int, default=None
        Explicit rank (sketch size) instead of a budget, 1 to ``dim``.
    bits_l : int, default=None
        Bits of each scalar per-vector code, 1 to 8. None picks it: grouped
        codes are 4-bit; scalar ones with a budget
        ``min(8, max(4, ceil(2 * bits_per_coordinate)))`` (4-bit codes up to 2
        bits per coordinate: these are searched by fast-scan); with an explicit
        rank, 8 (the paper's setting).
    bits_r : int, default=8
        Bits of each entry of the shared factor, 1 to 8.
    metric : {"l2", "ip", "cosine"}, default="l2"
        ``"cosine"`` normalises database vectors and queries to unit length.
    quantizer : {"mse-col", "minmax-col", "minmax"}, default="mse-col"
        Quantizer of both factors (see :mod:`lplr_index.quantize`); ``"minmax"``
        is the paper's.
    refine_iters : int, default=2
        Alternating refinement rounds after the LPLR fit: each re-encodes the
        vectors as quantized least-squares coefficients on the shared factor
        and refits the factor; the round with the least reconstruction error
        on the build data is kept. Each round is one more pass over the data.
    seed : int, default=0
        Seed of the Gaussian sketch, the rotation and the row sample.
    factor : {"orthonormal", "lstsq"}, default="orthonormal"
        ``"orthonormal"``: vectors are centred and the shared factor is an
        orthonormal, randomly rotated basis of the LPLR subspace, so 4-bit codes
        are searched by fast-scan with exact ranking. ``"lstsq"``: the paper's
        least-squares factor, uncentred (use it, with ``bits_l=8``,
        ``quantizer="minmax"`` and ``refine_iters=0``, to reproduce the paper).
        Scalar codes only.
    codec : {"auto", "vq", "scalar"}, default="auto"
        ``"auto"``: grouped codes with a budget (at 6 bits per coordinate and
        more, :data:`SCALAR_RIVAL_MIN_BITS`, the scalar 8-bit codes are also
        fitted on the sample and built when their recall there is higher),
        scalar codes with a rank or a
        ``bits_l`` other than 4 or ``factor="lstsq"``. ``"vq"`` with a rank:
        one 4-bit code on each of the top ``rank`` principal directions.
        :attr:`codec` tells which codes a built index holds.
    nlist : int, "auto" or None, default=None
        Partitioned search: :meth:`build` trains ``nlist`` coarse k-means
        centroids on a seeded sample of the codes' latent rows and stores each
        row's list (:mod:`lplr_index.search.ivf`); :meth:`search` scans the
        ``nprobe`` nearest lists. ``"auto"``: no partition below
        :data:`AUTO_NLIST_MIN_ROWS` rows, else
        :func:`~lplr_index.search.ivf.default_nlist`. The centroids and the
        list numbers (``ceil(log2 nlist)`` bits a row) count in the budget.
        Needs 4-bit codes. Saved as format version 5.

    Ids and deletions: every vector has an int64 id, its row number by default
    (0, 1, ... in the order added; these cost nothing), or the user's own ids
    given to :meth:`build` / :meth:`add` (stored as one int64 array, or as a
    bitmap over ``0 .. max id`` when they increase row by row and that is
    smaller; counted in :attr:`nbytes` and :attr:`bits_per_coordinate`).
    :meth:`search` returns ids.
    :meth:`remove` marks vectors as removed (a tombstone bitmap, saved with the
    index); searches never return them; :meth:`compact` drops their rows.
    :meth:`update` re-encodes vectors under the same ids. ``len(index)`` counts
    live vectors, :attr:`ntotal` the stored rows (removed ones included until
    :meth:`compact`). Every mutation either completes or leaves the index
    exactly as it was.

    Threads: any number of threads may search while another mutates; a search
    reads the snapshot committed when it began (:mod:`lplr_index.snapshot`) and
    never waits, and mutations run one at a time (see the README's "Threads and
    processes").

    Attributes
    ----------
    ntotal : int
        Rows stored, removed vectors included until :meth:`compact`
        (``len(index)`` counts the live vectors).
    ids : ndarray of shape (ntotal,), int64
        The id of each stored row, in row order (the row order of ``rescore_with``).
    n_removed : int
        Removed vectors still stored (0 after :meth:`compact`).
    rank : int
        Rank after :meth:`build` (chosen from the budget, or as given).
    encoder : str
        How vectors are encoded: ``"sketch"`` (``Q(x S)``, plain LPLR) or
        ``"pinv"`` (``Q(x R^+)``).
    fit_error : float
        Relative Frobenius error ``||X - X_hat|| / ||X||`` of the build data.
    n_clipped : int
        Code entries of vectors encoded by :meth:`add` that fell outside the
        quantizer range learned at build time and were clipped to its end
        levels (never wrapped).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((2000, 32)).astype("float32")
    >>> index = LPLRIndex(32, bits_per_coordinate=2).build(X)
    >>> D, I = index.search(X[:3], k=4)
    >>> I.shape, I.dtype, index.bits_per_coordinate <= 2
    ((3, 4), dtype('int64'), True)
    """

    def __init__(
        self,
        dim: int,
        *,
        bits_per_coordinate: float | None = None,
        rank: int | None = None,
        bits_l: int | None = None,
        bits_r: int = 8,
        metric: str = "l2",
        quantizer: str = "mse-col",
        refine_iters: int = 2,
        seed: int = 0,
        factor: str = "orthonormal",
        codec: str = "auto",
        nlist: int | str | None = None,
    ):
        self._settings = IndexSettings(
            dim,
            bits_per_coordinate=bits_per_coordinate,
            rank=rank,
            bits_l=bits_l,
            bits_r=bits_r,
            metric=metric,
            quantizer=quantizer,
            refine_iters=refine_iters,
            seed=seed,
            factor=factor,
            codec=codec,
            nlist=nlist,
        )
        #: the current snapshot (:mod:`lplr_index.snapshot`): a search reads it once; a mutation
        #: builds the next one and swaps it in whole, under the writer lock
        self._state: Snapshot | None = None
        self._write_lock = threading.Lock()
        self._writer: int | None = None  # the thread running a mutation, while one runs
        _INDEXES.add(self)

    # pickled without its lock (and without the snapshot's search structures: rebuilt on use)
    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_write_lock", "_writer")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._write_lock, self._writer = threading.Lock(), None
        _INDEXES.add(self)

    @contextmanager
    def _mutation(self, what: str) -> Iterator[None]:
        """Run one mutation: mutations of this index run one at a time (searches never wait);
        one called from inside another on the same thread (its input's iterator, say) raises
        instead of waiting for itself."""
        if self._writer == threading.get_ident():
            raise RuntimeError(f"{what}: called while another mutation of this index runs on the same thread "
                               "(from its input's iterator or a progress callback?): mutations run one at a time")
        with self._write_lock:
            self._writer = threading.get_ident()
            try:
                yield
            finally:
                self._writer = None

    # ------------------------------------------------------------- settings
    @property
    def settings(self) -> IndexSettings:
        """The validated settings (frozen)."""
        return self._settings

    dim = property(lambda self: self._settings.dim, doc="Dimension of the vectors.")
    budget = property(lambda self: self._settings.bits_per_coordinate, doc="Budget in bits per coordinate, or None.")
    bits_r = property(lambda self: self._settings.bits_r)
    metric = property(lambda self: self._settings.metric)
    quantizer = property(lambda self: self._settings.quantizer)
    refine_iters = property(lambda self: self._settings.refine_iters)
    seed = property(lambda self: self._settings.seed)
    factor = property(lambda self: self._settings.factor)

    @property
    def layout(self) -> dict[str, Any]:
        """How the built index codes a vector: the codec, the basis (``encoder``), the
        rank and, for grouped codes, ``groups``: ``[group size, groups, levels]`` per class
        (levels: 4-bit codes per group, 1, or 2 for a coarse and a fine code)."""
        enc = self._require_built("layout").encoder
        out = {"codec": enc.codec, "encoder": enc.kind, "rank": enc.rank, "codes_per_vector": enc.n_codes,
               "bits_per_code": enc.lq.bits}
        if enc.codec == "vq":
            out["groups"] = enc.lq.groups.tolist()
        return out

    @property
    def codec(self) -> str:
        """The codes stored, ``"vq"`` or ``"scalar"``: the built index's (``codec="auto"``
        decides at :meth:`build`), before that the settings' choice."""
        st = self._state
        return st.encoder.codec if st is not None else self._settings.codec_used

    @property
    def bits_l(self) -> int:
        """Bits of each per-vector code (as built, or as the settings will choose)."""
        if self._state is not None:
            return self._state.encoder.lq.bits
        return self._settings.bits_l_used

    @property
    def rank(self) -> int | None:
        """Rank of the factorization (None before build with a budget)."""
        if self._state is not None:
            return self._state.encoder.rank
        return self._settings.rank

    @property
    def nlist(self) -> int | None:
        """Coarse lists of the built index (None: exhaustive search; before build, None)."""
        return None if self._state is None else self._state.nlist

    @property
    def nprobe(self) -> int | None:
        """The lists a search scans by default (measured at build time), None when exhaustive."""
        return None if self._state is None else self._state.nprobe

    def _fresh_version(self) -> int:
        """The format version of an index built with these settings."""
        return IVF_LAYOUT_VERSION if self._settings.nlist is not None else LAYOUT_VERSION

    def _nlist_for(self, n: int) -> int | None:
        """The lists a build of ``n`` rows makes (None: exhaustive); an integer setting as given."""
        nlist = self._settings.nlist
        if nlist == "auto":
            return None if n < AUTO_NLIST_MIN_ROWS else ivf_search.default_nlist(n)
        return nlist

    @property
    def is_built(self) -> bool:
        return self._state is not None

    def _require_built(self, what: str) -> _State:
        if self._state is None:
            raise RuntimeError(f"{what}: this index is empty; call build(X) first")
        return self._state

    @property
    def ntotal(self) -> int:
        """Rows stored, removed vectors included until :meth:`compact`."""
        return 0 if self._state is None else self._state.store.n

    def __len__(self) -> int:
        """Live vectors: :attr:`ntotal` minus :attr:`n_removed`."""
        return 0 if self._state is None else self._state.n_live

    @property
    def n_removed(self) -> int:
        """Removed vectors whose rows are still stored (0 after :meth:`compact`)."""
        return 0 if self._state is None else self._state.n_removed

    @property
    def has_user_ids(self) -> bool:
        """Whether the ids are stored (user ids) rather than the row numbers."""
        return self._state is not None and self._state.ids is not None

    @property
    def ids(self) -> NDArray[np.int64]:
        """The id of each stored row, shape (ntotal,), int64, read-only (removed rows included)."""
        ids = self._require_built("ids").row_ids.view()
        ids.setflags(write=False)
        return ids

    @property
    def live_ids(self) -> NDArray[np.int64]:
        """The ids of the live vectors, in stored row order, shape (len(self),), int64."""
        st = self._require_built("live_ids")
        return st.row_ids if st.removed is None else st.row_ids[~st.removed]

    @property
    def id_slots(self) -> int:
        """Length of a boolean ``allowed`` mask: the largest stored id + 1 (:attr:`ntotal` for default ids)."""
        return self._require_built("id_slots").id_slots

    @property
    def encoder(self) -> str:
        return "sketch" if self._state is None else self._state.encoder.kind

    @property
    def fit_error(self) -> float:
        return float("nan") if self._state is None else self._state.fit_error

    @property
    def n_clipped(self) -> int:
        return 0 if self._state is None else self._state.n_clipped

    def __repr__(self) -> str:
        s = self._settings
        budget = "" if s.bits_per_coordinate is None else f"bits_per_coordinate={s.bits_per_coordinate:g}, "
        state = (
            f"ntotal={self.ntotal}, n_removed={self.n_removed}, "
            f"measured_bits_per_coordinate={self.bits_per_coordinate:.4f}"
            if self.is_built
            else "not built"
        )
        return (
            f"LPLRIndex(dim={s.dim}, {budget}rank={self.rank}, bits_l={self.bits_l}, "
            f"bits_r={s.bits_r}, metric={s.metric!r}, quantizer={s.quantizer!r}, "
            f"factor={s.factor!r}, codec={self.codec!r}, seed={s.seed}; {state})"
        )

    # ------------------------------------------------------------- accounting
    def _arrays_meta(self, n: int, rank: int, bits_l: int, version: int = LAYOUT_VERSION, *,
                     ids: tuple[str, int] | None = None, removed: bool = False,
                     vq: tuple[str, np.ndarray] | None = None, ivf: int | None = None) -> dict[str, np.ndarray]:
        """Zero-size stand-ins with the shapes/dtypes of the stored arrays.

        ``ivf``: the coarse lists of a partitioned index (version 5): its centroids
        (``nlist x rank`` float32, latent) and every row's list in ``ceil(log2 nlist)`` bits.

        ``ids``: the layout of the user ids (:func:`_ids_layout`), or None;
        ``removed``: the tombstone bitmap is stored; ``vq``: ``(basis, groups)``
        of grouped codes (:mod:`lplr_index.vq`; ``rank`` and ``bits_l`` unused).
        """
        per_col = self.quantizer != "minmax"
        nl, nr = (rank if per_col else 1), (self.dim if per_col else 1)
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
                shapes["r_codes"] = ((K, packed_nbytes(self.dim, self.bits_r)), np.uint8)
                shapes["r_lo"] = ((nr,), np.float32)
                shapes["r_hi"] = ((nr,), np.float32)
            else:
                shapes["vq_dirs"] = ((K,), np.int32)
        else:
            shapes = {
                "l_codes": ((n, packed_nbytes(rank, bits_l)), np.uint8),
                "l_lo": ((nl,), np.float32),
                "l_hi": ((nl,), np.float32),
                "r_codes": ((rank, packed_nbytes(self.dim, self.bits_r)), np.uint8),
                "r_lo": ((nr,), np.float32),
                "r_hi": ((nr,), np.float32),
            }
        if version >= 2:
            shapes["mean"] = ((self.dim,), np.float32)
        if ids is not None:
            shapes[ids[0]] = ((ids[1],), np.int64 if ids[0] == "ids" else np.uint8)
        if removed:
            shapes["removed"] = ((packed_nbytes(n, 1),), np.uint8)
        if ivf is not None and version >= IVF_LAYOUT_VERSION:
            latent = K if vq is not None else rank
            shapes["ivf_centroids"] = ((ivf, latent), np.float32)
            shapes["ivf_lists"] = ((packed_nbytes(n, ivf_search.list_bits(ivf)),), np.uint8)
        return {k: np.lib.stride_tricks.as_strided(np.zeros(1, dt), shape=s, strides=(0,) * len(s))
                for k, (s, dt) in shapes.items()}

    def _file_nbytes(self, n: int, rank: int, bits_l: int, *, state: _State | None = None,
                     ids: tuple[str, int] | None = None, vq: tuple[str, np.ndarray] | None = None) -> int:
        """Exact file size for n vectors at ``rank`` (or of grouped codes ``vq``, see
        :meth:`_arrays_meta`): of ``state``, or of a fresh build (with user ids
        saved as ``ids``, see :func:`_ids_layout`) with the widest header values it can have."""
        if state is None:
            kind = "sketch" if vq is None else vq[0]
            rank = rank if vq is None else max(1, int((vq[1][:, 0] * vq[1][:, 1]).sum()))
            version, nlist = self._fresh_version(), self._nlist_for(n)
            nlist = None if nlist is None else min(nlist, n)
            header = self._header(n, rank, bits_l, n, 0, kind, 0.0, version=version, nprobe=nlist)
            meta = self._arrays_meta(n, rank, bits_l, version, ids=ids, vq=vq, ivf=nlist)
        else:
            enc = state.encoder
            header = self._header(n, rank, bits_l, state.n_build, state.n_clipped, enc.kind,
                                  state.fit_error, version=state.version, nprobe=state.nprobe)
            meta = self._arrays_meta(n, rank, bits_l, state.version, ids=state.ids_layout,
                                     removed=state.removed is not None, vq=_vq_layout(enc), ivf=state.nlist)
        return container_nbytes(header, meta)

    @property
    def nbytes(self) -> int:
        """Size in bytes of the file :meth:`save` writes (everything stored)."""
        return self._nbytes_of(self._require_built("nbytes"))

    def _nbytes_of(self, st: Snapshot) -> int:
        return self._file_nbytes(st.store.n, st.encoder.rank, st.encoder.lq.bits, state=st)

    @property
    def bits_per_coordinate(self) -> float:
        """Measured storage: ``8 * nbytes / (ntotal * dim)``, the whole file counted
        (user ids and the tombstone bitmap included; ``inf`` when no row is stored)."""
        st = self._require_built("bits_per_coordinate")  # one snapshot: a mutation may commit meanwhile
        return 8 * self._nbytes_of(st) / (st.n * self.dim) if st.n else float("inf")

    def storage_breakdown(self) -> dict[str, int]:
        """Bytes stored, by part: per-vector codes, shared factor, quantizer levels, mean,
        user ids, tombstones, (version 5) the coarse centroids and list numbers, header."""
        st = self._require_built("storage_breakdown")
        enc = st.encoder
        if enc.codec == "vq":
            factor = (enc.rcodes.shape[0] * packed_nbytes(self.dim, self.bits_r) + 8 * enc.rq.lo.size
                      if enc.basis == "pca" else 4 * enc.dirs.size)
            levels = 4 * enc.lq.codebooks.size + 4 * len(enc.lq.groups) * (3 if st.version >= 4 else 2)
        else:
            factor = enc.rcodes.shape[0] * packed_nbytes(self.dim, self.bits_r)
            levels = 4 * (enc.lq.lo.size * 2 + enc.rq.lo.size * 2)
        parts = {
            "codes": st.store.nbytes,
            "shared_factor": int(factor),
            "quantizer_levels": int(levels),
            "mean": 4 * self.dim if st.version >= 2 else 0,
            "ids": 0 if st.ids is None else (8 * st.n if st.ids_layout[0] == "ids" else st.ids_layout[1]),
            "removed": 0 if st.removed is None else packed_nbytes(st.n, 1),
        }
        if st.version >= IVF_LAYOUT_VERSION:  # partitioned search: coarse centroids, list numbers
            nlist = st.nlist
            parts["coarse_centroids"] = 0 if nlist is None else int(st.ivf_centroids.nbytes)
            parts["list_numbers"] = 0 if nlist is None else packed_nbytes(st.n, ivf_search.list_bits(nlist))
        parts["header_and_padding"] = self._nbytes_of(st) - sum(parts.values())
        return parts

    def _rank_for_budget(self, n: int, bits_l: int, *, ids: tuple[str, int] | None = None) -> int:
        """Largest rank whose file (with user ids saved as ``ids``) fits ``budget * n * dim`` bits."""
        limit = self.budget * n * self.dim
        lo, hi, best = 1, min(self.dim, n), 0
        while lo <= hi:  # storage grows with rank: binary search
            mid = (lo + hi) // 2
            if 8 * self._file_nbytes(n, mid, bits_l, ids=ids) <= limit:
                best, lo = mid, mid + 1
            else:
                hi = mid - 1
        if best == 0:
            need = 8 * self._file_nbytes(n, 1, bits_l, ids=ids) / (n * self.dim)
            with_ids = " and their user ids" if ids is not None else ""
            raise ValueError(
                f"bits_per_coordinate={self.budget:g} cannot hold even a rank-1 index of {n} "
                f"vectors of dimension {self.dim}{with_ids} with bits_l={bits_l}, bits_r={self.bits_r}: "
                f"that needs {need:.3f} bits per coordinate (add more vectors, lower bits_r, or "
                f"raise the budget)"
            )
        return best

    # ---------------------------------------------------------------- sizing
    @classmethod
    def plan(cls, n: int, dim: int, *, bits_per_coordinate: float | None = None, rank: int | None = None,
             n_queries: int = 1000, k: int = 10, mode: str = "auto", sample=None, **settings) -> IndexPlan:
        """Layout, file size and peak memory of a build and a search, without data or from a sample.

        Uses the index's own storage accounting, so ``file_bytes`` is what the
        build's :attr:`nbytes` will be; the peak memories follow a model of the
        build's and the search's buffers, calibrated with :mod:`tracemalloc`.
        Grouped codes from a budget (the default) need the data to choose their
        design: without ``sample`` the plan gives the budget as ``file_bytes`` (an
        upper bound, ``exact=False``) and estimates; with ``sample`` it runs the
        build's design choice on it and gives the exact file size of the chosen
        design (:attr:`IndexPlan.design`), the build's own when the sample holds
        all ``n`` rows.

        Parameters
        ----------
        n : int
            Vectors to build on, >= 1.
        dim : int
            Their dimension.
        bits_per_coordinate, rank : float or int
            As in :class:`LPLRIndex` (exactly one of them).
        n_queries : int, default=1000
            Queries per :meth:`search` call for ``search_peak_bytes``.
        k : int, default=10
            Neighbours per query for ``search_peak_bytes``.
        mode : {"auto", "fastscan", "factored"}, default="auto"
            Search mode for ``search_peak_bytes``.
        sample : array-like of shape (m, dim), a path to a ``.npy`` file, or an iterable of row blocks, default=None
            Rows of the data (any input :meth:`build` takes), ``m <= n``: grouped
            codes from a budget choose their design on them as the build does (the
            covariance and the seeded sample of these rows, the designs sized for
            ``n`` rows), which costs what that part of a build costs, without the
            encoding pass. All ``n`` rows give the build's choice (``exact=True``); a
            smaller sample gives the choice its spectrum leads to. Other settings are
            exact without data and ignore it.
        **settings
            The other constructor arguments (``bits_l``, ``bits_r``, ``metric``,
            ``quantizer``, ``refine_iters``, ``seed``, ``factor``).

        Returns
        -------
        IndexPlan

        Notes
        -----
        Measured against tracemalloc on builds and first searches of 50,000 to
        200,000 random-order vectors of 32 to 256 dimensions (ranks 16 to 64):
        the build peak within 2 %; the fast-scan search peak bounded, at most
        14 % over; the factored search peak within 7 % (it holds the candidates
        above each query's running k-th score, whose count depends on the data:
        the same shapes measured 277 and 310 MiB on two data sets). With a budget
        and grouped codes the search peak allows for two-level codes (a 4 times
        deeper re-rank) wherever the build may choose them.

        Examples
        --------
        >>> p = LPLRIndex.plan(100_000, 384, bits_per_coordinate=1, codec="scalar")
        >>> p.rank, p.bits_l, p.fastscan, p.bits_per_coordinate <= 1, p.exact
        (94, 4, True, True, True)
        >>> p = LPLRIndex.plan(100_000, 384, bits_per_coordinate=1)  # grouped codes: the data decide
        >>> p.codec, p.exact, p.bits_l, p.file_bytes == 100_000 * 384 // 8  # the budget: an upper bound
        ('vq', False, 4, True)
        >>> X = np.random.default_rng(0).standard_normal((3000, 32)).astype("float32")
        >>> p = LPLRIndex.plan(3000, 32, bits_per_coordinate=1, sample=X)  # the data: the build's design
        >>> p.exact, p.file_bytes == LPLRIndex(32, bits_per_coordinate=1).build(X).nbytes
        (True, True)
        """
        n = check_int(n, "n", low=1)
        n_queries = check_int(n_queries, "n_queries", low=1)
        k = check_int(k, "k", low=1)
        mode = check_choice(mode, "mode", ("auto", "fastscan", "factored"))
        index = cls(dim, bits_per_coordinate=bits_per_coordinate, rank=rank, **settings)
        s = index.settings
        bits_l = s.bits_l_used
        design, exact = None, True
        if s.codec_used == "vq" and s.bits_per_coordinate is not None and sample is not None:
            source = index._source(sample, "sample")
            if source.n > n:
                raise ValueError(f"sample holds {source.n} rows, more than the n={n} to build on")
            fitted = index._fit_vq(source, None, False, n_rows=n, encode=False)
            exact = source.n == n
            if fitted.encoder is not None:
                return index._plan_vq(n, n_queries, k, mode, fitted.encoder, exact)
            # codec="auto" at 6+ bits per coordinate: the scalar 8-bit codes won on the sample
            design, bits_l = {"basis": "scalar"}, dataclasses.replace(s, codec="scalar").bits_l_used
        elif s.codec_used == "vq":
            return index._plan_vq(n, n_queries, k, mode)
        if s.bits_per_coordinate is not None:
            rank = index._rank_for_budget(n, bits_l)
        else:
            rank = s.rank
            if rank > n:
                raise ValueError(f"rank={rank} needs at least {rank} vectors to build on, got n={n}")
        # the orthonormal factor always ends with the pinv encoder; lstsq without
        # refinement keeps the sketch; otherwise the data decides: the longer name
        kind = "pinv" if s.factor == "orthonormal" else "sketch"
        version, nlist = index._fresh_version(), index._nlist_for(n)
        nlist = None if nlist is None else min(nlist, n)
        header = index._header(n, rank, bits_l, n, 0, kind, 0.0, version=version, nprobe=nlist)
        file_bytes = container_nbytes(header, index._arrays_meta(n, rank, bits_l, version, ivf=nlist))
        fast = bits_l == 4 and s.factor == "orthonormal"
        if mode == "fastscan" and bits_l != 4:
            raise ValueError(f"mode='fastscan' needs 4-bit codes, this plan has bits_l={bits_l}")
        search_mode = ("fastscan" if fast else "factored") if mode == "auto" else mode
        k_eff = min(k, n)
        row_bytes = packed_nbytes(rank, bits_l)
        if search_mode == "fastscan":
            orthonormal = s.factor == "orthonormal"
            search = _fastscan_search_peak(n, s.dim, rank, n_queries, k_eff, orthonormal, metric=s.metric)
            # fast-scan's blocks, and for faiss's re-rank (an orthonormal factor) the flat codes and
            # the projection R (rank x dim float32)
            fs_bytes = (-(-n // 32) * 32 + (n if orthonormal else 0)) * ((rank + 1) // 2) + (
                4 * rank * s.dim if orthonormal else 0)
        else:
            search = _factored_search_peak(n, dim, rank, bits_l, n_queries, k_eff, s.metric)
            fs_bytes = 0
        return IndexPlan(
            n=n, dim=s.dim, rank=rank, bits_l=bits_l, file_bytes=file_bytes,
            bits_per_coordinate=8 * file_bytes / (n * s.dim),
            build_peak_bytes=_build_peak(n, s.dim, rank, row_bytes, s.metric),
            search_peak_bytes=search, n_queries=n_queries, k=k, search_mode=search_mode,
            fastscan=fast, fastscan_bytes=fs_bytes, exact=exact, design=design,
        )

    def _plan_vq(self, n: int, n_queries: int, k: int, mode: str, encoder: VQEncoder | None = None,
                 exact: bool = True) -> IndexPlan:
        """:meth:`plan` of grouped codes: exact with a rank or the ``encoder`` a sample chose,
        bounds and estimates with a budget alone."""
        s, dim = self._settings, self.dim
        if encoder is not None:
            return self._plan_design(n, n_queries, k, mode, encoder, exact)
        if s.rank is not None:
            if s.rank > n:
                raise ValueError(f"rank={s.rank} needs at least {s.rank} vectors to build on, got n={n}")
            rank = n_codes = s.rank
            file_bytes = self._file_nbytes(n, rank, 4, vq=("pca", np.array([[1, rank, 1]], np.int32)))
        else:
            fixed = self._file_nbytes(n, 1, 4, vq=("rotation", np.zeros((0, 3), np.int32)))
            file_bytes = int(s.bits_per_coordinate * n * dim // 8)
            n_codes = int(2 * (file_bytes - fixed) // n)  # 4-bit codes a vector can hold at most
            if n_codes < 1:
                raise ValueError(
                    f"bits_per_coordinate={s.bits_per_coordinate:g} cannot hold even a rank-1 index of {n} vectors "
                    f"of dimension {dim} (one 4-bit code per vector): that needs "
                    f"{8 * (fixed + -(-n // 2)) / (n * dim):.3f} bits per coordinate")
            rank = min(dim, 8 * n_codes)  # at most: groups of 8 directions per code
        # the latent width the search decodes: between n_codes (one code per direction) and
        # 8 n_codes (groups of 8); estimated as 3 n_codes
        width = min(dim, 3 * n_codes) if s.rank is None else rank
        search_mode = "fastscan" if mode in ("auto", "fastscan") else "factored"
        k_eff = min(k, n)
        if search_mode == "fastscan":
            # the re-rank depth is the design's: 4 k candidates, 16 k for two-level codes
            two = s.rank is None and two_level_tried(s.bits_per_coordinate, n)
            depth = TWO_LEVEL_RERANK_FACTOR if two else DEFAULT_RERANK_FACTOR
            search = _fastscan_search_peak(n, dim, width, n_queries, k_eff, True, depth, s.metric, two)
            # fast-scan's blocks (at most n_codes coarse codes), and for faiss's re-rank the flat
            # codes (as many bytes again, or one byte per coarse code of two-level codes: a bound)
            # and the projection R (rank x dim float32; rank a bound)
            flat = n * (n_codes if two else (n_codes + 1) // 2) + 4 * rank * dim
            fs_bytes = -(-n // 32) * 32 * ((n_codes + 1) // 2) + flat
        else:
            search = _factored_search_peak(n, dim, width, 8, n_queries, k_eff, s.metric)
            fs_bytes = 0
        # measured (tracemalloc): the sample's copies while the designs are compared dominate,
        # about 7 float32 copies of it (29 bytes per sampled coordinate)
        build = int(29 * min(n, SAMPLE_ROWS) * dim + 48 * dim * dim + 2 * n * packed_nbytes(n_codes, 4))
        return IndexPlan(
            n=n, dim=dim, rank=rank, bits_l=4, file_bytes=file_bytes, bits_per_coordinate=8 * file_bytes / (n * dim),
            build_peak_bytes=build, search_peak_bytes=search, n_queries=n_queries, k=k, search_mode=search_mode,
            fastscan=True, fastscan_bytes=fs_bytes, codec="vq", exact=s.rank is not None,
        )

    def _plan_design(self, n: int, n_queries: int, k: int, mode: str, enc: VQEncoder, exact: bool) -> IndexPlan:
        """:meth:`plan` of the grouped codes of ``enc`` (a design chosen on a sample) for ``n`` rows:
        the file exactly; faiss's fast-scan bytes exactly (its blocks of the ``M`` coarse codes, the
        flat codes its re-rank scores, ``M`` bytes a row for two-level codes, and ``R``); the peaks
        from the models with this design's latent width and re-rank depth."""
        s, dim = self._settings, self.dim
        groups, rank, M, two = enc.lq.groups, enc.rank, enc.lq.n_coarse, enc.lq.two_level
        file_bytes = self._file_nbytes(n, rank, 4, vq=(enc.basis, groups))
        search_mode = "fastscan" if mode in ("auto", "fastscan") else "factored"
        k_eff = min(k, n)
        if search_mode == "fastscan":
            depth = TWO_LEVEL_RERANK_FACTOR if two else DEFAULT_RERANK_FACTOR
            search = _fastscan_search_peak(n, dim, rank, n_queries, k_eff, True, depth, s.metric, two)
            fs_bytes = -(-n // 32) * 32 * ((M + 1) // 2) + n * (M if two else (M + 1) // 2) + 4 * rank * dim
        else:
            search = _factored_search_peak(n, dim, rank, 8, n_queries, k_eff, s.metric)
            fs_bytes = 0
        build = int(29 * min(n, SAMPLE_ROWS) * dim + 48 * dim * dim + 2 * n * packed_nbytes(enc.n_codes, 4))
        return IndexPlan(
            n=n, dim=dim, rank=rank, bits_l=4, file_bytes=file_bytes, bits_per_coordinate=8 * file_bytes / (n * dim),
            build_peak_bytes=build, search_peak_bytes=search, n_queries=n_queries, k=k, search_mode=search_mode,
            fastscan=True, fastscan_bytes=fs_bytes, codec="vq", exact=exact,
            design={"basis": enc.basis, "groups": groups.tolist()},
        )

    # ------------------------------------------------------------ build / add
    def _source(self, X, name: str, spool_dir=None, column=None, id_column=None):
        """The rows of an input of build/add/update (see :func:`lplr_index._inputs.open_source`);
        a one-shot iterator is spooled to ``spool_dir`` (``tempfile.gettempdir()`` when None)."""
        return open_source(X, name, dim=self.dim, spool_dir=spool_dir, column=column, id_column=id_column)

    @_mutating("build")
    def build(self, X, *, ids=None, column: str | None = None, id_column: str | None = None,
              progress: bool | None = None, spool_dir=None) -> "LPLRIndex":
        """Learn the shared factor from ``X`` and store ``X``'s codes, replacing any content.

        Grouped codes (``codec="vq"``) make two passes over ``X`` in blocks of
        :data:`lplr_index._blocks.BLOCK_ROWS` rows (the covariance, then the
        encoding); the scalar codes make ``2 + refine_iters`` (one per
        LPLR/refinement round and one to encode; ``codec="auto"`` at 6+ bits per
        coordinate may make both). Designs are fitted and compared on a seeded
        sample of rows read by random access, so a memory-mapped ``X`` is never
        read whole into memory. If anything fails
        (bad input, out of memory, Ctrl-C), the index is left as it was.

        Parameters
        ----------
        X : array-like of shape (n, dim), a memory-mapped array, a path to a ``.npy`` file, or an iterable of row blocks
            Database vectors (float32; float64 and integer inputs are converted
            block by block). Entries must be finite and at most 1e15 in magnitude.
            Arrays, memory maps and ``.npy`` paths are read block by block, with
            random access for the seeded sample. A list or tuple of 2-D blocks of
            any sizes is read in order without stacking. A one-shot iterator (a
            generator) is written once to a temporary ``.npy`` in ``spool_dir``
            (``n * dim * 4`` bytes of disk), memory-mapped, and removed afterwards,
            also when the build fails. Any other iterable is read once per pass
            (plus one pass to count rows and one for the sample) and must yield
            the same rows every time; a different row count raises ValueError.
            The same rows give the same index whatever the blocks.
            Parquet and Arrow (needs ``pip install "lplr-index[parquet]"``): a
            path to a Parquet file, a folder or glob of Parquet files, a
            ``pyarrow.Table``, ``RecordBatch``, ``Dataset`` or
            ``RecordBatchReader``, or a pandas DataFrame, with ``column``
            naming the vector column; read one record batch at a time, the
            index byte for byte the one the same rows as ``.npy`` give (see
            :mod:`lplr_index.parquet`).
        ids : array-like of shape (n,), int, default=None
            User ids of the vectors: distinct integers in ``[0, 2**63 - 1]``.
            None gives the default ids ``0 .. n - 1``, which are not stored (ids
            equal to them are not stored either). User ids are stored as one
            int64 array (8 bytes a vector; increasing ids as a bitmap over
            ``0 .. max id`` when that is smaller), counted in the budget.
        column : str, default=None
            The vector column of Parquet or Arrow ``X``: a list or fixed-size list
            of floats (float16/32/64) or integers, or binary raw float32 vectors;
            None takes the only column of vectors.
        id_column : str, default=None
            A column of integer user ids of Parquet or Arrow ``X`` (instead of
            ``ids``), read in the same row order.
        progress : bool, default=None
            Show a progress bar on stderr; None shows it when stderr is a terminal
            and ``X`` has at least 10^5 rows.
        spool_dir : str or path-like, default=None
            Folder of the temporary file a one-shot iterator is spooled to
            (``tempfile.gettempdir()`` when None).

        Returns
        -------
        self : LPLRIndex
        """
        source = self._source(X, "X", spool_dir=spool_dir, column=column, id_column=id_column)
        ids = _column_ids(source, ids)
        n = source.n
        if ids is not None:
            ids = _as_ids(ids, "ids")
            if len(ids) != n:
                raise ValueError(f"ids must hold one id per vector of X, {n}, got {len(ids)} ids")
            _check_unique(ids, "ids")
            if np.array_equal(ids, np.arange(n)):
                ids = None
        s = self._settings
        bits_l = s.bits_l_used
        if s.rank is not None and s.rank > n:
            raise ValueError(f"rank={s.rank} needs at least {s.rank} vectors to build on, got X with {n}")
        nlist = self._nlist_for(n)
        if nlist is not None and nlist > n:
            raise ValueError(f"nlist={nlist} lists need at least {nlist} vectors to train the coarse quantizer, "
                             f"got X with {n} (use a smaller nlist or nlist='auto')")
        if s.codec_used == "vq":
            result = self._fit_vq(source, ids, progress)
            if result.encoder is not None:
                # the full-scale check of a two-level design built fast-scan's copy of the codes: kept
                st = Snapshot(result.encoder, CodeStore(result.codes), n, 0, result.error, s.metric,
                              self._fresh_version(), ids=_frozen(ids)).seeded(fastscan=result.scorer)
                self._commit(self._partitioned(st, source))
                return self
            # codec="auto" at 6+ bits per coordinate: the scalar 8-bit codes won on the sample
            bits_l = dataclasses.replace(s, codec="scalar").bits_l_used
        if s.bits_per_coordinate is not None:
            rank = self._rank_for_budget(n, bits_l, ids=_ids_layout(ids))
        else:
            rank = s.rank
        bar = _progress_bar(progress, n, (2 + s.refine_iters) * n, f"build ({2 + s.refine_iters} passes)")
        try:
            executor = LocalExecutor(source, progress=None if bar is None else bar.update)
            result = fit(
                executor, rank, bits_l, s.bits_r, s.quantizer, s.seed, s.refine_iters,
                factor=s.factor, normalize=s.metric == "cosine",
            )
        finally:
            if bar is not None:
                bar.close()
        st = Snapshot(result.encoder, CodeStore(result.codes), n, 0, result.error, s.metric, self._fresh_version(),
                      ids=_frozen(ids))
        self._commit(self._partitioned(st, source))
        return self

    def _partitioned(self, st: Snapshot, source) -> Snapshot:
        """``st`` with its coarse lists (``nlist`` set, and the rows enough for ``"auto"``): faiss
        k-means on a seeded sample of the codes' latent rows, every row assigned to its nearest
        centroid, and the default ``nprobe`` measured (:meth:`_measure_nprobe`)."""
        nlist = self._nlist_for(st.n)
        if nlist is None:
            return st
        if st.encoder.lq.bits != 4:
            raise ValueError(f"nlist={self._settings.nlist!r} (partitioned search) needs 4-bit codes, the build "
                             f"chose {st.encoder.lq.bits}-bit codes (codec={self._settings.codec!r}): use "
                             "codec='vq' or nlist=None")
        if nlist > st.n:
            raise ValueError(f"nlist={nlist} lists need at least {nlist} vectors to train the coarse quantizer, "
                             f"got {st.n} (use a smaller nlist or nlist='auto')")
        scorer = ivf_search.IVFScorer(st.view, nlist, seed=self.seed)
        nprobe, self.nprobe_report = self._measure_nprobe(st, scorer, source)
        centroids = ivf_search.latent_centroids(st.encoder, scorer.centroids)
        return st.replaced(keep=("fastscan", "norms2"), derived={"ivf": scorer},
                           ivf_centroids=_frozen(centroids), ivf_lists=_frozen(scorer.assignment()), nprobe=nprobe)

    def _measure_nprobe(self, st: Snapshot, scorer, source) -> tuple[int, dict[int, float]]:
        """The default ``nprobe``: on :data:`NPROBE_QUERIES` seeded rows of the build data as queries
        (each one's own row left out of its neighbours), the smallest power of two whose recall
        10@10 against the exact neighbours (one pass over the data) is within
        :data:`NPROBE_TOLERANCE` of the exhaustive first stage's (``nprobe = nlist``), re-ranked
        as a search does. Returns it and ``{nprobe: recall}`` of every nprobe tried."""
        n, nlist = st.n, scorer.nlist
        k = min(10, n - 1)
        if k < 1 or nlist == 1:
            return nlist, {}
        rows = np.sort(np.random.default_rng(self.seed).choice(n, min(NPROBE_QUERIES, n), replace=False))
        Q = np.asarray(source.take(rows), np.float32)
        truth = _exact_neighbours(source, Q, rows, k, self.metric)
        norms2 = st.norms2() if self.metric == "cosine" else None
        kc = min(n, default_rerank_factor(st.encoder) * (k + 1))

        def recall(nprobe):
            _, I, _ = scorer.search(Q, kc, k + 1, nprobe=nprobe, norms2=norms2)
            got = _without_self(I, rows, k)
            return np.mean([len(np.intersect1d(g[g >= 0], t)) for g, t in zip(got, truth)]) / k

        return ivf_search.choose_nprobe(recall, nlist, NPROBE_TOLERANCE)

    def _fit_vq(self, source: ArraySource, ids, progress, *, n_rows: int | None = None, encode: bool = True):
        """Grouped codes (:func:`lplr_index.vq.fit_vq`): two passes. With ``codec="auto"`` and
        a budget at which the scalar codes would be 8-bit, those are fitted on the sample too
        and, when their recall there is higher, the result has no encoder (build them instead);
        from :data:`SCALAR_RIVAL_MIN_BITS` only. ``n_rows`` and ``encode``: :meth:`plan`'s
        design choice on a sample of ``n_rows`` rows, without the encoding pass (see ``fit_vq``)."""
        s, n = self._settings, source.n if n_rows is None else n_rows
        layout = _ids_layout(ids)
        rival = None
        scalar = dataclasses.replace(s, codec="scalar", nlist=None)
        # the 8-bit scalar codes are no rival of a partitioned index: its lists need 4-bit codes
        if (s.codec == "auto" and s.nlist is None and s.bits_per_coordinate is not None and scalar.bits_l_used == 8
                and s.bits_per_coordinate >= SCALAR_RIVAL_MIN_BITS):
            try:
                rank = self._rank_for_budget(n, 8, ids=layout)
            except ValueError:
                rank = None
            if rank is not None:
                def rival(raw):
                    from .train import fit_array

                    fitted = fit_array(raw, min(rank, len(raw)), 8, s.bits_r, s.quantizer, s.seed, s.refine_iters,
                                       factor=s.factor, normalize=s.metric == "cosine").encoder
                    L = fitted.lq.decode(fitted.lq.encode(fitted.prepare(raw) @ fitted.T))
                    return L @ fitted.R + fitted.mean

        def file_bits(basis, groups):
            return 8 * self._file_nbytes(n, 1, 4, ids=layout, vq=(basis, groups))

        budget = None if s.bits_per_coordinate is None else s.bits_per_coordinate * n * self.dim
        bar = _progress_bar(progress, n, 2 * n, "build (2 passes)")
        passes = []

        def on_pass(name):  # a two-level design that fails its full-scale check: encoded twice
            passes.append(name)
            if bar is not None and len(passes) > 2:
                bar.total += n
                bar.desc = f"build ({len(passes)} passes)"

        try:
            executor = LocalExecutor(source, progress=None if bar is None else bar.update)
            try:
                result = fit_vq(executor, budget, file_bits, bits_r=s.bits_r, scheme=s.quantizer, seed=s.seed,
                                metric=s.metric, rank=s.rank, rival=rival, on_pass=on_pass,
                                first_stage=fastscan.first_stage_recall, n_rows=n_rows, encode=encode)
            except _NoRoom:
                need = file_bits("rotation", np.array([[1, 1, 1]], np.int32)) / (n * self.dim)
                with_ids = " and their user ids" if ids is not None else ""
                raise ValueError(
                    f"bits_per_coordinate={s.bits_per_coordinate:g} cannot hold even a rank-1 index of {n} "
                    f"vectors of dimension {self.dim}{with_ids} (one 4-bit code per vector): that needs "
                    f"{need:.3f} bits per coordinate (add more vectors or raise the budget)") from None
        finally:
            if bar is not None:
                bar.close()
        chosen = ({"basis": result.encoder.basis, "groups": result.encoder.lq.groups.tolist()}
                  if result.encoder is not None else {"basis": "scalar"})
        self.build_report = {"chosen": chosen,
                             "candidates": [dict(zip(("basis", "sizes", "groups", "sample_recall", "sample_error",
                                                      "model_ratio"), c)) for c in result.candidates],
                             "not_fitted": [dict(zip(("basis", "sizes", "groups", "model_ratio"), c))
                                            for c in result.not_fitted],
                             "full_check": result.full_check}
        return result

    def _encode(self, st: _State, source: ArraySource, progress, desc: str) -> tuple[np.ndarray, int]:
        """Packed codes of every row of ``source`` and the count of clipped entries."""
        bar = _progress_bar(progress, source.n, source.n, desc)
        try:
            blocks, clipped = [], 0
            for _, block in source.blocks():
                packed, c = st.encoder.encode(block)
                blocks.append(packed)
                clipped += c
                if bar is not None:
                    bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()
        return np.concatenate(blocks), clipped

    @_mutating("add")
    def add(self, X, *, ids=None, column: str | None = None, id_column: str | None = None,
            progress: bool | None = None, spool_dir=None) -> "LPLRIndex":
        """Encode more vectors with the learned encoder and quantizer; no refit.

        Entries of a new vector's latent coordinates outside the quantizer
        range learned at build time are clipped to the end levels and counted
        in :attr:`n_clipped`. Appending costs O(new rows) (the code buffer
        grows geometrically). If anything fails, the index is left as it was.

        Parameters
        ----------
        X : array-like of shape (n_new, dim), a memory-mapped array, a path to a ``.npy`` file, or an iterable of row blocks
            As in :meth:`build` (one pass).
        ids : array-like of shape (n_new,), int, default=None
            User ids of the new vectors: distinct integers in ``[0, 2**63 - 1]``
            that no stored row has (removed ones included until :meth:`compact`).
            None continues after the largest stored id (with default ids: from
            :attr:`ntotal`, so default ids stay row numbers). When an index with
            default ids is given ids other than ``ntotal, ntotal + 1, ...``, its
            ids become stored ones: ``0 .. ntotal - 1`` for the rows it had,
            ``ids`` for the new rows (8 bytes a vector from then on).
        column, id_column, progress, spool_dir
            As in :meth:`build`.

        Returns
        -------
        self : LPLRIndex
        """
        st = self._require_built("add")
        source = self._source(X, "X", spool_dir=spool_dir, column=column, id_column=id_column)
        ids = _column_ids(source, ids)
        new_ids = None
        if ids is not None:
            ids = _as_ids(ids, "ids")
            if len(ids) != source.n:
                raise ValueError(f"ids must hold one id per vector of X, {source.n}, got {len(ids)} ids")
            _check_unique(ids, "ids")
            taken = (ids < st.n) if st.ids is None else np.isin(ids, st.ids)
            if taken.any():
                bad = int(ids[taken][0])
                gone = self._is_removed_id(st, bad)
                why = (" (it was removed but its row is still stored: call compact() before reusing it)"
                       if gone else "")
                raise ValueError(f"ids: id {bad} is already in the index{why}; ids must be new and unique")
            if st.ids is not None or not np.array_equal(ids, np.arange(st.n, st.n + len(ids))):
                new_ids = np.concatenate([st.row_ids, ids])
        elif st.ids is not None:
            start = st.id_slots
            if start > np.iinfo(np.int64).max - source.n:
                raise ValueError(f"ids: the next ids after {start - 1} overflow int64; pass ids explicitly")
            new_ids = np.concatenate([st.ids, np.arange(start, start + source.n, dtype=np.int64)])
        packed, clipped = self._encode(st, source, progress, "add")
        removed = st.removed
        if removed is not None:
            removed = _frozen(np.concatenate([removed, np.zeros(source.n, bool)]))
        lists, ivf_lists = None, st.ivf_lists
        if st.nlist is not None:  # new rows go to their nearest lists (no retraining)
            lists = self._assign(st, packed)
            ivf_lists = _frozen(np.concatenate([st.ivf_lists, lists]))
        state = dataclasses.replace(st, store=st.store.appended(packed), n_clipped=st.n_clipped + clipped,
                                    ids=_frozen(new_ids) if new_ids is not None else st.ids, removed=removed,
                                    ivf_lists=ivf_lists)
        # the search structures a search built for the last snapshot, extended for this one: new
        # arrays and copies of faiss's indexes (searches still running on the last one see no change)
        norms2, scorer, part = st.built("norms2"), st.built("fastscan"), st.built("ivf")
        if norms2 is not None:
            norms2 = np.concatenate([norms2, blas.row_norms2(state.view, len(norms2))])
        self._commit(state.seeded(norms2=norms2, fastscan=None if scorer is None else scorer.extended(state.view),
                                  ivf=None if part is None else part.extended(state.view, lists)))
        return self

    @staticmethod
    def _assign(st: Snapshot, packed: np.ndarray) -> np.ndarray:
        """The nearest list of each packed code row of a partitioned snapshot (its stored centroids)."""
        scorer = st.built("ivf")
        if scorer is None:
            scorer = ivf_search.IVFScorer(st.view, st.nlist, centroids=ivf_search.padded_centroids(
                st.encoder, st.ivf_centroids), _add_rows=False)
        return scorer.assign(packed)

    @staticmethod
    def _is_removed_id(st: _State, id_: int) -> bool:
        if st.removed is None:
            return False
        row = id_ if st.ids is None else int(np.flatnonzero(st.ids == id_)[0])
        return bool(st.removed[row])

    @_mutating("remove")
    def remove(self, ids) -> "LPLRIndex":
        """Mark vectors as removed: searches never return them again.

        Their rows stay stored (a tombstone bit each, saved with the index)
        until :meth:`compact`; their ids cannot be added again until then.
        O(ntotal / 8) bytes copied per call: remove many ids in one call.

        Parameters
        ----------
        ids : int or array-like of shape (m,), int
            Ids of live vectors, distinct.

        Returns
        -------
        self : LPLRIndex

        Raises
        ------
        UnknownIdError
            An id that no live vector has (never added, or already removed); the
            message names it. Nothing is removed then.

        Examples
        --------
        >>> import numpy as np
        >>> X = np.random.default_rng(0).standard_normal((1000, 16)).astype("float32")
        >>> index = LPLRIndex(16, rank=8).build(X, ids=np.arange(1000) + 5000)
        >>> _ = index.remove([5000, 5001])
        >>> len(index), index.ntotal
        (998, 1000)
        >>> D, I = index.search(X[:1], 3, allowed=np.arange(5000, 5100))
        >>> bool(np.isin(I, np.arange(5002, 5100)).all())
        True
        >>> len(index.compact()), index.ntotal
        (998, 998)
        """
        st = self._require_built("remove")
        ids = _as_ids(ids, "ids")
        _check_unique(ids, "ids")
        rows = st.rows_of(ids, "ids")
        removed = np.zeros(st.n, bool) if st.removed is None else st.removed.copy()
        removed[rows] = True
        self._commit(st.replaced(removed=_frozen(removed), keep=DERIVED))  # the codes did not change
        return self

    @_mutating("compact")
    def compact(self) -> "LPLRIndex":
        """Drop the rows of removed vectors (codes, ids and tombstones), keeping every id.

        With default ids, the ids of the rows kept become stored ids when
        rows before the last one were removed (row numbers change, ids do
        not). The fast-scan structure is rebuilt at the next search. Rows of a
        ``rescore_with`` array must then follow the new row order (:attr:`ids`).

        Returns
        -------
        self : LPLRIndex
        """
        st = self._require_built("compact")
        if st.removed is None:
            return self
        keep = np.flatnonzero(~st.removed)
        if st.ids is not None:
            ids = st.ids[keep]
        elif np.array_equal(keep, np.arange(len(keep))):
            ids = None
        else:
            ids = keep.astype(np.int64)
        # n_build (the rows of the fit) is capped at the rows kept, as a file requires
        state = dataclasses.replace(st, store=st.store.taken(keep), ids=_frozen(ids), removed=None,
                                    n_build=min(st.n_build, max(len(keep), 1)),
                                    ivf_lists=None if st.ivf_lists is None else _frozen(st.ivf_lists[keep]))
        norms2 = st.built("norms2")
        self._commit(state.seeded(norms2=None if norms2 is None else norms2[keep]))
        return self

    @_mutating("update")
    def update(self, ids, X, *, progress: bool | None = None) -> "LPLRIndex":
        """Re-encode the vectors with ids ``ids`` from new values ``X``, keeping their ids and rows.

        Like :meth:`add`, with the learned encoder (no refit). O(ntotal) bytes
        copied per call (the old codes are never changed in place): update many
        vectors in one call. The fast-scan structure is rebuilt at the next search.

        Parameters
        ----------
        ids : int or array-like of shape (m,), int
            Ids of live vectors, distinct.
        X : array-like of shape (m, dim)
            Their new values.
        progress : bool, default=None
            As in :meth:`build`.

        Returns
        -------
        self : LPLRIndex

        Raises
        ------
        UnknownIdError
            An id that no live vector has; nothing is changed then.
        """
        st = self._require_built("update")
        ids = _as_ids(ids, "ids")
        source = self._source(X, "X")
        if len(ids) != source.n:
            raise ValueError(f"ids must hold one id per vector of X, {source.n}, got {len(ids)} ids")
        _check_unique(ids, "ids")
        rows = st.rows_of(ids, "ids")
        packed, clipped = self._encode(st, source, progress, "update")
        ivf_lists = st.ivf_lists
        if st.nlist is not None:  # the new codes go to their nearest lists; the lists are rebuilt
            ivf_lists = st.ivf_lists.copy()
            ivf_lists[rows] = self._assign(st, packed)
            ivf_lists = _frozen(ivf_lists)
        state = st.replaced(store=st.store.replaced(rows, packed), n_clipped=st.n_clipped + clipped,
                            ivf_lists=ivf_lists)
        norms2 = st.built("norms2")
        if norms2 is not None:
            norms2 = norms2.copy()
            norms2[rows] = blas.row_norms2(CodeView(st.encoder, packed, st.metric))
        self._commit(state.seeded(norms2=norms2))
        return self

    def _commit(self, state: Snapshot) -> None:
        """Make ``state`` the current snapshot: one assignment, so a search sees the last snapshot
        or this one, whole. Called under the writer lock (:meth:`_mutation`), last."""
        self._state = state

    # ---------------------------------------------------------------- decode
    def reconstruct(self, ids=None) -> NDArray[np.float32]:
        """Decoded vectors ``mean + L R`` (for ``"cosine"``, of the unit-normalised inputs).

        Parameters
        ----------
        ids : int or array-like of int, default=None
            Ids of live vectors; None: every stored row in row order (removed
            rows included until :meth:`compact`; :attr:`ids` names them).

        Returns
        -------
        ndarray of shape (len(ids), dim), float32

        Raises
        ------
        UnknownIdError
            An id that no live vector has.
        """
        st = self._require_built("reconstruct")
        return st.reconstruct_rows(None if ids is None else st.rows_of(_as_ids(ids, "ids"), "ids"))

    # ---------------------------------------------------------------- search
    @property
    def fastscan_ready(self) -> bool:
        """Whether ``mode="auto"`` searches with fast-scan (4-bit codes, orthonormal factor)."""
        return self._fastscan_ready(self._state)

    def _fastscan_ready(self, st: Snapshot | None) -> bool:
        return st is not None and st.encoder.lq.bits == 4 and self.factor == "orthonormal"

    def search(self, Q, k: int, *, mode: str = "auto", rerank_factor: int | None = None,
               rescore_with=None, allowed=None, n_threads: int | None = None,
               nprobe: int | None = None) -> SearchResult:
        """The ``k`` nearest live (and allowed) vectors of each query.

        Parameters
        ----------
        Q : array-like of shape (n_queries, dim)
            Queries, full precision (finite, entries at most 1e15 in magnitude).
        k : int
            Neighbours per query, >= 1; results past the number of live
            (allowed) vectors are padded with id -1.
            ``n_queries * k * 12`` bytes of results may not exceed
            :data:`MAX_RESULT_BYTES` (2 GiB).
        mode : {"auto", "fastscan", "factored", "reconstructed"}, default="auto"
            ``"fastscan"``: faiss's fast-scan kernels score the 4-bit codes and
            ``rerank_factor * k`` candidates are re-scored exactly from their
            codes; ``"factored"``: exact scores of every vector from the codes,
            block by block with BLAS (any code width; the float n x dim matrix is
            never formed); ``"reconstructed"``: decode all vectors once (cached
            until the next ``add``, ``update`` or ``compact``) into a faiss flat
            index. ``"auto"`` is ``"fastscan"`` when :attr:`fastscan_ready`, else
            ``"factored"``.
        rerank_factor : int, default=None
            Fast-scan candidates per result; None: :data:`DEFAULT_RERANK_FACTOR`,
            or :data:`TWO_LEVEL_RERANK_FACTOR` when groups have coarse and fine
            codes (fast-scan scores the coarse ones).
        rescore_with : array-like of shape (ntotal, dim), or a path to a ``.npy`` file, default=None
            The original float vectors, one row per stored row in row order
            (memory-mapped is fine): with default ids and no :meth:`compact`,
            row i is the vector of id i; with user ids, the order in which the
            vectors were added (:attr:`ids` gives each row's id). Rows of removed
            vectors are never read. The candidates (``rerank_factor * k`` of
            them, in every mode) are re-scored exactly against them and the
            distances returned are the exact ones.
        allowed : array-like of int, array-like of bool, or callable, default=None
            Only these vectors may be returned (removed ones never are):
            an array (or set) of ids (ids not in the index are ignored), a boolean mask
            over ids of length :attr:`id_slots` (``mask[id]``), or a callable
            ``id -> bool`` called once per live id before the search. The result
            holds the k best allowed vectors in every mode: fast-scan fetches
            more candidates and drops the others, and scans the allowed rows
            exactly when few survive or when under :data:`FILTER_SCAN_FRACTION`
            of the rows are allowed.
        n_threads : int, default=None
            faiss threads for this call (restored afterwards), set for the
            calling thread only: searches running on other threads keep theirs
            (OpenMP keeps the setting per thread). None leaves the calling
            thread's setting (``faiss.omp_set_num_threads``) as it is.
        nprobe : int, default=None
            A partitioned index (``nlist``): the coarse lists fast-scan scans, 1 to
            :attr:`nlist` (``nlist`` scans every row, as the exhaustive search);
            None: :attr:`nprobe`, measured at build time. Queries whose scanned
            lists hold fewer candidates than they need get the exact scan.
            The exact modes ignore it; an index without the ``nlist`` setting refuses it.

        Returns
        -------
        SearchResult
            ``(distances, indices)``, float32 and int64 (ids), shape (n_queries, k).
        """
        st = self._require_built("search")
        k = check_int(k, "k", low=1)
        mode = check_choice(mode, "mode", SEARCH_MODES)
        factor = default_rerank_factor(st.encoder) if rerank_factor is None else check_int(
            rerank_factor, "rerank_factor", low=1, high=1 << 20)
        if n_threads is not None:
            n_threads = check_int(n_threads, "n_threads", low=1, high=4096)
        if nprobe is not None:
            if self._settings.nlist is None:
                raise ValueError(f"nprobe={nprobe!r}: this index has no partition (nlist=None): "
                                 "build it with nlist=... to search lists")
            nprobe = check_int(nprobe, "nprobe", low=1, high=st.nlist or None)
        Q = check_block(Q, "queries", 0, self.dim)
        if Q.ndim != 2 or Q.shape[0] == 0:
            raise ValueError(f"queries must hold at least one row, got shape {Q.shape}")
        if len(Q) * k * 12 > MAX_RESULT_BYTES:
            raise ValueError(
                f"k={k} for {len(Q)} queries asks for {len(Q) * k * 12 / 2**30:.1f} GiB of results, above "
                f"the {MAX_RESULT_BYTES / 2**30:.0f} GiB one search may return (this index holds "
                f"{st.n_live} vectors: use k <= {st.n_live}, or fewer queries per call)"
            )
        full = None if rescore_with is None else self._check_full(st, rescore_with)
        if mode == "auto":
            mode = "fastscan" if self._fastscan_ready(st) or st.nlist is not None else "factored"
        if mode == "fastscan" and st.encoder.lq.bits != 4:
            raise ValueError(
                f"mode='fastscan' needs 4-bit codes, this index has {st.encoder.lq.bits}-bit codes "
                "(use mode='factored' or 'auto')"
            )
        mask = _allowed_rows(st, allowed)
        n_ok = st.n if mask is None else int(np.count_nonzero(mask))
        kk = min(k, n_ok)
        if kk == 0:
            return SearchResult(*pad_results(np.zeros((len(Q), 0)), np.zeros((len(Q), 0)), k, self.metric))
        kc = min(n_ok, max(kk, factor * kk)) if (mode == "fastscan" or full is not None) else kk
        with _faiss_threads(n_threads):
            if mode == "fastscan":
                D, I = self._search_fastscan(st, Q, kc if full is not None else kk, kc, mask, n_ok, nprobe)
            elif mode == "reconstructed":
                D, I = self._search_flat(st, Q, kc, mask)
            else:
                D, I = self._scan(st, Q, kc, mask, n_ok)
        if full is not None:
            D, I = _rescore(full, Q, I, kk, self.metric)
        if st.ids is not None:
            I = np.where(I >= 0, st.ids[np.maximum(I, 0)], -1)
        return SearchResult(*pad_results(D, I, k, self.metric))

    def _scan(self, st: _State, Q, k: int, mask, n_ok: int):
        """Exact k best rows of the allowed rows (``mask``; all when None) with BLAS."""
        norms2 = st.norms2() if self.metric != "ip" else None
        if mask is None or n_ok > _GATHER_FRACTION * st.n:
            return blas.scan(st.view, Q, k, norms2=norms2, row_mask=mask)
        # few rows allowed: gather their codes and scan only them
        rows = np.flatnonzero(mask)
        sub = CodeView(st.encoder, np.asarray(st.store.codes[rows]), st.metric)
        D, I = blas.scan(sub, Q, k, norms2=None if norms2 is None else norms2[rows])
        return D, np.where(I >= 0, rows[np.maximum(I, 0)], -1)

    def _search_fastscan(self, st: _State, Q, keep: int, kc: int, mask, n_ok: int, nprobe: int | None = None):
        """Fast-scan candidates (``kc`` per query), re-ranked exactly; the ``keep`` best rows.

        With a filter, ``FILTER_OVERFETCH * kc / fraction allowed`` candidates are
        fetched and the disallowed ones dropped; queries left with fewer than
        ``keep`` allowed candidates, and every query when under
        :data:`FILTER_SCAN_FRACTION` of the rows are allowed, get the exact
        scan of the allowed rows instead. The threshold, measured on 100,000 x 128
        vectors (rank 32, 4-bit codes, 100 queries, k=10, one thread, best of 7):
        the over-fetching fast-scan took 34, 25, 19, 21 and 20 ms at f = 0.05,
        0.1, 0.15, 0.2 and 0.3 of the rows allowed, the exact scan of the
        gathered allowed rows 7.5, 12, 15, 23 and 30 ms: they cross at about 0.2.

        From :data:`FILTER_REFINE_FRACTION` of the rows allowed (removed vectors alone,
        say), with the orthonormal factor, faiss re-ranks ``kc / fraction`` candidates and
        the disallowed are dropped afterwards (:meth:`_refined_filtered`): the numpy
        re-ranker would otherwise serve every search of an index with removed vectors.
        Measured (one thread, random filters, k=10, the same recall within 0.0005):
        fortunes 13,931 x 384, 1,000 queries, 2 b/c, allowed 0.999 / 0.9 / 0.5 / 0.3:
        67 / 73 / 101 / 154 ms against the numpy re-ranker's 142 / 137 / 153 / 197 ms
        (unfiltered 68 ms); Fashion-MNIST 60,000 x 1,280, 2,000 queries, 2 b/c: 1,405 /
        1,492 / 1,648 ms against 1,510 / 1,626 / 1,516 ms at 0.999 / 0.9 / 0.5, and 0.5
        b/c 301 / 297 / 339 / 455 ms against 318 / 311 / 373 / 368 ms. faiss's re-rank
        wins at 0.9 and above everywhere measured and loses at 0.5 on Fashion-MNIST's 2
        b/c codes (its over-fetched candidates cost more than the numpy re-ranker's
        fixed ``kc``): the threshold sits between, at 0.8.

        A partitioned snapshot searches its lists instead (:meth:`_search_ivf`).
        """
        if st.nlist is not None:
            return self._search_ivf(st, Q, keep, kc, mask, n_ok, st.nprobe if nprobe is None else nprobe)
        if mask is None:
            D, I, short = st.fastscan().search(Q, kc, keep, st.norms2() if self.metric == "cosine" else None)
            if short.any():
                # fast-scan dropped rows (its 16-bit sums saturate on extreme level
                # spreads; seen on edited files): those queries get the exact scan
                D[short], I[short] = self._scan(st, Q[short], keep, None, n_ok)
            return D, I
        frac = n_ok / st.n
        if frac < FILTER_SCAN_FRACTION:
            return self._scan(st, Q, keep, mask, n_ok)
        kf = int(min(st.n, max(kc, np.ceil(FILTER_OVERFETCH * kc / frac))))

        def overfetch(q):
            return fastscan.in_query_chunks(lambda c: self._filtered_fastscan(st, c, keep, kc, kf, mask, n_ok), q, kf)

        if frac >= FILTER_REFINE_FRACTION and st.fastscan().refines:
            kd = int(min(st.n, max(kc, np.ceil(kc / frac))))  # about kc of them allowed
            return fastscan.in_query_chunks(lambda q: self._refined_filtered(st, q, keep, kd, mask, overfetch), Q, kd)
        return overfetch(Q)

    def _search_ivf(self, st: Snapshot, Q, keep: int, kc: int, mask, n_ok: int, nprobe: int):
        """The partitioned fast-scan search: ``kc`` candidates from the ``nprobe`` nearest lists
        (a filter, removed vectors included, applied inside faiss's scan), re-ranked exactly; the
        ``keep`` best. Queries whose probed lists held fewer than ``kc`` (allowed) candidates get
        the exact scan of the allowed rows, as does every query when under
        :data:`FILTER_SCAN_FRACTION` of the rows are allowed (as the exhaustive path does)."""
        if mask is not None and n_ok / st.n < FILTER_SCAN_FRACTION:
            return self._scan(st, Q, keep, mask, n_ok)
        scorer = st.ivf()
        norms2 = st.norms2() if self.metric == "cosine" else None
        D, I, short = fastscan.in_query_chunks(
            lambda q: scorer.search(q, kc, keep, nprobe=nprobe, norms2=norms2, allowed=mask), Q, kc)
        if short.any():
            D[short], I[short] = self._scan(st, Q[short], keep, mask, n_ok)
        return D, I

    def _refined_filtered(self, st: Snapshot, Q, keep: int, kd: int, mask, overfetch):
        """:meth:`_search_fastscan` with a filter that allows most rows (removed vectors, say),
        for one chunk of queries: faiss's fast-scan and exact re-rank of ``kd`` candidates,
        the disallowed dropped afterwards; queries left with fewer than ``keep`` allowed
        candidates get ``overfetch`` (:meth:`_filtered_fastscan` in query chunks)."""
        D, I, short = st.fastscan().search(Q, kd, kd, st.norms2() if self.metric == "cosine" else None)
        ok = (I >= 0) & mask[np.maximum(I, 0)]
        first = np.argsort(~ok, axis=1, kind="stable")[:, :keep]  # allowed first, in distance order
        D, I = np.take_along_axis(D, first, 1), np.take_along_axis(I, first, 1)
        redo = short | (np.count_nonzero(ok, axis=1) < keep)
        if redo.any():
            D[redo], I[redo] = overfetch(Q[redo])
        return D, I

    def _filtered_fastscan(self, st: _State, Q, keep: int, kc: int, kf: int, mask, n_ok: int):
        """:meth:`_search_fastscan` with a filter, for one chunk of queries: ``kf`` candidates
        fetched, the allowed ones re-ranked."""
        p = blas.latent(st.view, prepare_queries(st.view, Q))
        cand = st.fastscan().candidates(Q, kf, p)
        cand = np.where((cand >= 0) & mask[np.maximum(cand, 0)], cand, -1)
        first = np.argsort(cand < 0, axis=1, kind="stable")[:, :kc]  # allowed first, in rank order
        D, I = blas.rerank(st.view, Q, np.take_along_axis(cand, first, 1), keep, p=p)
        short = (I < 0).any(axis=1)
        if short.any():
            D2, I2 = self._scan(st, Q[short], keep, mask, n_ok)
            D[short], I[short] = D2, I2
        return D, I

    def _check_full(self, st: Snapshot, X):
        if isinstance(X, (str, os.PathLike)):
            X = _open_npy(X, "rescore_with")
        if getattr(X, "ndim", None) != 2 or X.shape != (st.n, self.dim):
            raise ValueError(
                f"rescore_with must hold the {st.n} original vectors of dimension {self.dim} "
                f"in id order, shape ({st.n}, {self.dim}), got shape {getattr(X, 'shape', None)} "
                f"(one row per stored row, in row order: row i holds the vector of id index.ids[i])"
            )
        return X

    # the current snapshot's search structures (for tests and tools; a search reads its own snapshot's)
    def _norms2(self) -> np.ndarray:
        return self._require_built("_norms2").norms2()

    def _fastscan(self) -> fastscan.FastScanScorer:
        return self._require_built("_fastscan").fastscan()

    def _search_flat(self, st: Snapshot, Q, k, mask=None):
        import faiss

        flat = st.flat()
        if self.metric == "cosine":
            Q = _normalize(Q)
        if mask is None:
            return flat.search(Q, k)
        bits = np.packbits(mask, bitorder="little")  # alive until the search returns
        params = faiss.SearchParameters(sel=faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits)))
        return flat.search(Q, k, params=params)

    # ----------------------------------------------------------- persistence
    def _header(self, n, rank, bits_l, n_build, n_clipped, kind, fit_error, version: int = LAYOUT_VERSION,
                nprobe: int | None = None) -> dict:
        settings = self._settings.to_header(rank=rank)
        if version < 3:  # written before the codec setting: always the scalar codes
            settings.pop("codec")
        if version < IVF_LAYOUT_VERSION:  # written before partitioned search
            settings.pop("nlist", None)
        header = {
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
            header["nprobe"] = nprobe
        return header

    def _container(self):
        st = self._require_built("save")
        enc = st.encoder
        if enc.codec == "vq":
            groups = enc.lq.groups if st.version >= 4 else np.ascontiguousarray(enc.lq.groups[:, :2])
            arrays = {"l_codes": st.store.codes, "vq_groups": groups, "vq_codebooks": enc.lq.codebooks}
            if enc.basis == "pca":
                arrays.update(r_codes=_pack_rows(enc.rcodes, self.bits_r), r_lo=enc.rq.lo, r_hi=enc.rq.hi)
            else:
                arrays["vq_dirs"] = enc.dirs
        else:
            arrays = {
                "l_codes": st.store.codes,
                "l_lo": enc.lq.lo,
                "l_hi": enc.lq.hi,
                "r_codes": _pack_rows(enc.rcodes, self.bits_r),
                "r_lo": enc.rq.lo,
                "r_hi": enc.rq.hi,
            }
        if st.version >= 2:
            arrays["mean"] = enc.mean
        if st.ids is not None:
            name = st.ids_layout[0]
            arrays[name] = st.ids if name == "ids" else _id_bitmap(st.ids)
        if st.removed is not None:
            arrays["removed"] = np.packbits(st.removed, bitorder="little")
        if st.nlist is not None:
            arrays["ivf_centroids"] = st.ivf_centroids
            arrays["ivf_lists"] = ivf_search.pack_lists(st.ivf_lists, st.nlist)
        header = self._header(st.store.n, enc.rank, enc.lq.bits, st.n_build, st.n_clipped, enc.kind, st.fit_error,
                              version=st.version, nprobe=st.nprobe)
        return header, arrays, st.version

    def save(self, path, *, progress: bool | None = None, force: bool = False) -> int:
        """Write the index to ``path`` (a path, atomically, or a writable binary file object).

        A path gets a temporary file in its folder, renamed over it when
        complete (see :func:`lplr_index.fileformat.write_container`): an existing
        file keeps its permission bits, a symlink's target is replaced, and a file
        with other hard links becomes a new file (the other names keep the old
        index). Builds with the same data, settings and seed give a byte-identical
        file on the same machine with the same number of BLAS threads.

        Parameters
        ----------
        path : str, path-like or writable binary file object
        progress : bool, default=None
            Show a progress bar on stderr (None: for large indexes on a terminal).
        force : bool, default=False
            Replace an existing file this process may not write (read-only): without
            it such a target raises ``PermissionError``, as ``open(path, "wb")`` would.

        Returns
        -------
        int
            Bytes written, equal to :attr:`nbytes`.

        Raises
        ------
        OSError
            The path cannot be written, or writing fails (a full disk, a file size
            limit); the message names ``path``.
        """
        header, arrays, version = self._container()
        total = sum(a.nbytes for a in arrays.values())
        bar = _progress_bar(progress, total, total, "save", threshold=1 << 28, unit="bytes")
        try:
            cb = None if bar is None else (lambda done, _total: bar.update(done - bar.done))
            return write_container(path, header, arrays, version=version, progress=cb, force=force)
        finally:
            if bar is not None:
                bar.close()

    def to_bytes(self) -> bytes:
        """The bytes :meth:`save` would write (for object stores and caches)."""
        header, arrays, version = self._container()
        return container_to_bytes(header, arrays, version=version)

    @classmethod
    def from_bytes(cls, data) -> "LPLRIndex":
        """An index from :meth:`to_bytes` output (bytes, bytearray or memoryview); same checks as :meth:`load`."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, bytearray or memoryview, got {type(data).__name__}")
        return cls.load(data)

    @classmethod
    def load(cls, source, *, mmap: bool = False) -> "LPLRIndex":
        """Read an index written by :meth:`save` (any format version).

        Parameters
        ----------
        source : str, path-like, readable binary file object, or bytes
        mmap : bool, default=False
            Map the per-vector codes read-only from the file instead of reading
            them (paths only; the file is still read once to verify its checksums).

        Raises
        ------
        IndexFileError
            The file is missing, not an index, truncated, damaged, inconsistent,
            or from a newer format version; the message names the file.
        """
        c = read_container(source, mmap=mmap)
        name = source_name(source)
        try:
            return cls._from_container(c.header, c.arrays, c.version, mmap)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError, IndexError) as exc:
            raise IndexFileError(f"{name}: damaged or inconsistent content ({exc})") from None

    @classmethod
    def _from_container(cls, header, arrays, version, mmap):
        if not isinstance(header, dict) or header.get("format") != "lplr-index":
            raise ValueError(f"format is {header.get('format') if isinstance(header, dict) else header!r}, "
                             "expected 'lplr-index'")
        # every key the file's version wrote, of its type; defaults only for settings it did not have
        s = IndexSettings.from_header(header["settings"], version=version)
        index = cls(**dataclasses.asdict(s))
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
        ids_layout = next(((k, arrays[k].shape[0]) for k in ("ids", "id_bitmap")
                           if k in arrays and arrays[k].ndim == 1), None)
        vq_layout = None
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
            vq_layout = (kind, groups)
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
            elif s.nlist is None or isinstance(s.nlist, int) or nprobe is not None:
                raise ValueError(f"nlist={s.nlist!r} and nprobe={nprobe!r} without ivf_centroids")
        expected = index._arrays_meta(n, rank, bits_l, version, ids=ids_layout, removed="removed" in arrays,
                                      vq=vq_layout, ivf=nlist)
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
            _check_padding_bits(arrays["l_codes"], 4, lq.n_codes, "l_codes")
            rq = rcodes = dirs = None
            if kind == "pca":
                rq = _checked_quantizer(s.quantizer, s.bits_r, arrays["r_lo"], arrays["r_hi"], "R")
                _check_padding_bits(arrays["r_codes"], s.bits_r, s.dim, "r_codes")
                rcodes = _unpack(np.array(arrays["r_codes"]), s.bits_r, s.dim)
            else:
                dirs = np.array(arrays["vq_dirs"])
                if dirs.size and (dirs.min() < 0 or dirs.max() >= s.dim or len(np.unique(dirs)) != dirs.size):
                    raise ValueError(f"vq_dirs must hold distinct directions in [0, {s.dim - 1}]")
            encoder = VQEncoder(mean, lq, kind, rcodes, rq, dirs, s.seed, s.metric == "cosine", s.dim)
            # orthonormal rows: a decoded vector is at most the norm of its latent row away from the mean
            bound = float(np.abs(books).max(initial=0)) * np.sqrt(rank) + float(np.abs(mean).max(initial=0))
        else:
            lq = _checked_quantizer(s.quantizer, bits_l, arrays["l_lo"], arrays["l_hi"], "L")
            rq = _checked_quantizer(s.quantizer, s.bits_r, arrays["r_lo"], arrays["r_hi"], "R")
            _check_padding_bits(arrays["r_codes"], s.bits_r, s.dim, "r_codes")
            _check_padding_bits(arrays["l_codes"], bits_l, rank, "l_codes")
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
            _check_unique(ids, "ids")
        if "id_bitmap" in arrays:
            bitmap = np.array(arrays["id_bitmap"])
            ids = np.flatnonzero(np.unpackbits(bitmap, bitorder="little")).astype(np.int64)
            if len(ids) != n or (bitmap.size and bitmap[-1] == 0):
                raise ValueError(f"id_bitmap must set exactly ntotal={n} bits and end in a non-zero byte, it sets "
                                 f"{len(ids)} bits in {bitmap.size} bytes")
            if _ids_layout(ids) != ("id_bitmap", bitmap.size):
                raise ValueError("id_bitmap holds ids this library saves as an int64 array")
        if "removed" in arrays:
            _check_padding_bits(arrays["removed"][None, :], 1, n, "removed")
            removed = np.unpackbits(np.array(arrays["removed"]), count=n, bitorder="little").astype(bool)
        centroids = lists = None
        if nlist is not None:
            centroids = np.array(arrays["ivf_centroids"])
            if not (np.isfinite(centroids).all() and np.abs(centroids).max(initial=0) <= _MAX_LEVEL):
                raise ValueError(f"ivf_centroids must be finite with entries of magnitude <= {_MAX_LEVEL:g}")
            b = ivf_search.list_bits(nlist)
            _check_padding_bits(arrays["ivf_lists"][None, :], 1, n * b, "ivf_lists")
            lists = ivf_search.unpack_lists(arrays["ivf_lists"], nlist, n)
            if lists.size and lists.max() >= nlist:
                raise ValueError(f"ivf_lists holds list {lists.max()}, the index has {nlist} lists")
        codes = arrays["l_codes"] if mmap else np.array(arrays["l_codes"])
        index._state = _State(encoder, CodeStore(codes), n_build, n_clipped, fit_error, s.metric, version,
                              ids=_frozen(ids), removed=_frozen(removed), ivf_centroids=_frozen(centroids),
                              ivf_lists=_frozen(lists), nprobe=nprobe)
        return index


#: largest magnitude a stored level, mean entry or decoded coordinate may have (builds stay far below)
_MAX_LEVEL = 1e17


def _level_bound(q: Quantizer) -> float:
    return float(max(np.abs(q.lo).max(initial=0), np.abs(q.hi).max(initial=0)))


def _checked_quantizer(scheme, bits, lo, hi, part) -> Quantizer:
    lo, hi = np.array(lo), np.array(hi)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all() and (hi >= lo).all()):
        raise ValueError(f"quantizer levels of {part} are not finite and ordered")
    if max(np.abs(lo).max(initial=0), np.abs(hi).max(initial=0)) > _MAX_LEVEL:
        raise ValueError(f"quantizer levels of {part} exceed {_MAX_LEVEL:g} in magnitude")
    return Quantizer(scheme, bits, lo.astype(np.float32), hi.astype(np.float32))


def _check_padding_bits(packed: np.ndarray, bits: int, count: int, name: str) -> None:
    """The unused high bits of each packed row's last byte must be zero."""
    used = (count * bits) % 8
    if used and packed.shape[0] and packed.shape[1]:
        last = np.asarray(packed[:, -1])
        if np.any(last >> np.uint8(used)):
            raise ValueError(f"{name} has non-zero padding bits: its rows do not hold {count} codes of {bits} bits")


# ----------------------------------------------------------- memory model
# Peak bytes of a build and a first search, as tracemalloc counts them. Each
# term is a buffer of the code it models; the fitted constants come from
# tracemalloc measurements of 84 first searches, twice (n = 50,000 to 200,000,
# dim 64 and 128, ranks 16 to 48, 4- and 8-bit codes, every metric, 100 to
# 1,000 queries, k = 10 to 100; random-order data).

def _build_peak(n: int, dim: int, rank: int, row_bytes: int, metric: str) -> int:
    """:func:`lplr_index.train.fit` on float32 rows in memory.

    The sample and its centred copy stay alive through the fit; each pass holds
    one canonical block's buffers (the centred block, its float64 transpose,
    the latent block and its codes: 12 bytes per entry of ``B x (dim + rank)``,
    plus the normalised block for cosine while encoding); the encoding pass
    also holds the codes so far, and their concatenation doubles them.
    """
    from ._blocks import BLOCK_ROWS

    S, B = min(n, SAMPLE_ROWS), min(n, BLOCK_ROWS)
    sample = 2 * S * dim * 4
    block = 12 * B * (dim + rank) + (4 * B * dim if metric == "cosine" else 0)
    codes = n * row_bytes
    small = 8 * (dim * rank * 6 + rank * rank * 4)  # sketch, factors, Gram sums
    return int(sample + max(block + codes, 2 * codes) + small)


def _fastscan_search_peak(n: int, dim: int, rank: int, nq: int, k: int, orthonormal: bool = True,
                          factor: float = DEFAULT_RERANK_FACTOR, metric: str = "l2", two_level: bool = False) -> int:
    """First fast-scan search: the larger of building faiss's copies and the search.

    Building hands faiss the packed codes 65,536 rows at a time (a contiguous copy
    of their first ``rank`` codes; for two-level codes also their unpacked codes and
    the re-rank's bytes; faiss's own memory is outside tracemalloc's view and counted
    in ``fastscan_bytes``). ``factor * k`` candidates per query. Where faiss re-ranks
    (an orthonormal factor, :class:`fastscan.FastScanScorer`) the search holds the
    queries' latent rows, faiss's (nq, factor k) scores and ids and the results: a
    non-negative least-squares fit to 14 measured l2 and ip shapes, raised 2.5 % to
    bound them all (over by 1-5 % on 10 of them, 32-56 % on two, more on batches of 1-10
    queries, where building faiss's copy is the peak and is over-estimated); cosine
    first computes the rows' norms (kept: 4 bytes a row) from decoded blocks, about 13.4
    bytes per decoded entry (five measured shapes: over by 1-12 %, 62 % on one with
    2,000 queries). Otherwise (another factor) it re-ranks up to 256 queries at a time
    (:func:`blas.rerank_chunk`), decoding their candidates (about 8 bytes per candidate
    code with the Gram product): a least-squares fit to measured shapes, raised to bound
    them all.
    """
    block = min(n, 1 << 16)
    build = block * ((rank + 1) // 2) + (block * 3 * rank if two_level else 0)
    kc = min(n, int(factor * k))
    if orthonormal:
        search = 1.025 * (16.83 * nq * kc + (0.80 + 3.33 * (metric != "ip")) * nq * dim + 3.69 * nq * rank + 17e3)
        if metric == "cosine":  # the rows' norms (kept), computed first from decoded blocks
            search = 4 * n + max(search, 13.4 * min(n, blas.BLOCK_ROWS) * rank)
    else:
        chunk = min(nq, blas.chunk_for(4 * kc * rank))
        search = 7.988 * chunk * kc * rank + 9.21 * nq * kc + 0.93e6
    return int(max(build, search))


def _factored_search_peak(n: int, dim: int, rank: int, bits_l: int, nq: int, k: int, metric: str) -> int:
    """First factored search: the BLAS scan over the first canonical block.

    Held: the row norms (l2, cosine), the query projections, the decoded block
    (``B x (width + 1)`` floats), the (chunk, B) scores and their comparison
    (about 5 bytes a score); then the streaming top-k gathers every score above
    each query's running k-th best: in the first block about ``k / c0`` of the
    ``B - c0`` scores after the ``c0`` that seed the threshold (random order;
    about 42 bytes a hit), into a buffer as wide as the largest count per query
    (the fraction is Beta-distributed: the largest of ``nq`` is about
    ``1 + sqrt(2 ln nq / k)`` times the mean; about 17 bytes a slot).
    """
    from .search.blas import QUERY_CHUNK, _decoded_width

    B = min(n, blas.BLOCK_ROWS)
    nqc = min(nq, QUERY_CHUNK)
    w = _decoded_width(bits_l, rank)
    c0 = min(B, max(4 * k, 256))
    mean_hits = (B - c0) * min(1.0, k / c0)
    widest = mean_hits * (1 + np.sqrt(2 * np.log(max(nqc, 2)) / k))
    held = (n * 4 if metric != "ip" else 0) + nq * (w + 1) * 4 + B * (w + 1) * 4 + nq * dim * 4
    scan = 5.259 * nqc * B + 41.63 * nqc * mean_hits + 17.23 * nqc * widest - 9.35e4
    return int(held + max(scan, 4.0 * nqc * B))


def _id_bitmap(ids: np.ndarray) -> np.ndarray:
    """Presence bits of increasing ``ids`` over ``0 .. ids[-1]``, packed little-endian."""
    bits = np.zeros(int(ids[-1]) + 1, bool)
    bits[ids] = True
    return np.packbits(bits, bitorder="little")


def _column_ids(source, ids):
    """``ids``, or the ids of a Parquet/Arrow source's ``id_column`` (not both)."""
    if getattr(source, "id_column", None) is None:
        return ids
    if ids is not None:
        raise ValueError(f"give ids or id_column, not both (id_column={source.id_column!r} was given)")
    return source.read_ids()


def _as_ids(ids, name: str) -> np.ndarray:
    """Ids as a 1-D int64 array of values >= 0 (a single int gives one id)."""
    try:
        arr = np.asarray(ids)
    except (TypeError, ValueError) as exc:  # ragged nested lists
        raise ValueError(f"{name} must be a 1-D array of integer ids, got {type(ids).__name__} that numpy "
                         f"cannot convert ({exc})") from None
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise ValueError(f"{name} must be a 1-D array of integer ids, got shape {arr.shape}, dtype {arr.dtype}")
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} must be in [0, 2**63 - 1], got {arr.max()}")
    arr = arr.astype(np.int64)
    if arr.min() < 0:
        raise ValueError(f"{name} must be in [0, 2**63 - 1] (-1 marks a missing result), got {arr.min()}")
    return arr


def _check_unique(ids: np.ndarray, name: str) -> None:
    s = np.sort(ids)
    dup = s[1:][s[1:] == s[:-1]]
    if dup.size:
        raise ValueError(f"{name} holds id {dup[0]} more than once; ids must be unique")


def _allowed_rows(st: _State, allowed) -> np.ndarray | None:
    """The stored rows a search may return: live and allowed; None when all are."""
    live = None if st.removed is None else ~st.removed
    if allowed is None:
        return live
    if callable(allowed):
        ids = st.row_ids
        mask = np.zeros(st.n, bool)
        for row in (range(st.n) if live is None else np.flatnonzero(live)):
            ok = allowed(int(ids[row]))
            if not isinstance(ok, (bool, np.bool_)):
                raise TypeError(f"allowed(id) must return a bool, got {type(ok).__name__} ({ok!r}) for id {ids[row]}")
            mask[row] = ok
        return None if mask.all() else mask
    try:
        if isinstance(allowed, (set, frozenset, range)):
            allowed = np.fromiter(allowed, np.int64, count=len(allowed))
        arr = np.asarray(allowed)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"allowed must be an array of ids, a boolean mask over ids or a callable "
                        f"id -> bool, got {type(allowed).__name__} ({exc})") from None
    if arr.dtype == bool:
        if arr.ndim != 1 or len(arr) != st.id_slots:
            raise ValueError(
                f"allowed, a boolean mask over ids, must have shape ({st.id_slots},): one entry per id "
                f"0 .. {st.id_slots - 1} (index.id_slots), got shape {arr.shape}"
            )
        mask = arr.copy() if st.ids is None else arr[st.ids]
    elif arr.dtype.kind in "iu" or arr.size == 0:
        ids = _as_ids(arr, "allowed")
        if st.ids is None:
            mask = np.zeros(st.n, bool)
            mask[ids[ids < st.n]] = True
        else:
            mask = np.isin(st.ids, ids)
    else:
        raise TypeError(f"allowed must be an array of ids (integers), a boolean mask over ids or a "
                        f"callable id -> bool, got an array of dtype {arr.dtype}")
    if live is not None:
        mask &= live
    return None if mask.all() else mask


def _pack_rows(codes: np.ndarray, bits: int) -> np.ndarray:
    from .packing import _pack

    return _pack(codes, bits)




def _open_npy(path, name: str) -> np.ndarray:
    """A ``.npy`` file, memory-mapped (never unpickled)."""
    return open_npy(path, name)


def _rescore(full, Q: np.ndarray, I: np.ndarray, k: int, metric: str):
    """Exact scores of candidate ids against the original vectors; keep the k best."""
    valid = I >= 0
    flat = np.where(valid, I, 0).ravel()
    order = np.argsort(flat, kind="stable")  # read the rows in file order
    rows = np.empty((flat.size, Q.shape[1]), np.float32)
    rows[order] = check_block(np.asarray(full[flat[order]]), "rescore_with", 0, Q.shape[1])
    X = rows.reshape(I.shape + (Q.shape[1],))
    if metric == "cosine":
        X = _normalize(X.reshape(-1, Q.shape[1])).reshape(X.shape)
        Q = _normalize(Q)
    if metric == "l2":
        S = -np.einsum("qcd,qcd->qc", X - Q[:, None, :], X - Q[:, None, :])
    else:
        S = np.einsum("qcd,qd->qc", X, Q)
    S = np.where(valid, S, -np.inf)
    order = np.argsort(-S, axis=1, kind="stable")[:, :k]
    S = np.take_along_axis(S, order, 1)
    I = np.where(np.isfinite(S), np.take_along_axis(I, order, 1), -1)
    D = -S if metric == "l2" else S
    D = np.where(I >= 0, D, np.inf if metric == "l2" else -np.inf)
    return D.astype(np.float32), I


class _faiss_threads:
    """Set faiss's OpenMP threads for a block on the calling thread and restore them (no-op for None).

    OpenMP keeps this setting (its ``nthreads-var``) per thread: ``omp_set_num_threads``
    changes what the calling thread's later parallel regions use, not another thread's
    (GNU OpenMP, which faiss's wheels bundle, gives a thread that never set it the
    process's initial value). So a search with ``n_threads`` never changes what a search
    running on another thread uses, and needs no lock. Whether the runtime loaded does
    keep it per thread is checked once (:func:`_omp_setting_per_thread`); where it would
    not, the calls that set it run one at a time under a process-wide lock (searches
    without ``n_threads`` then run with whatever setting is current).
    """

    def __init__(self, n: int | None):
        self.n = n
        self.locked = False

    def __enter__(self):
        if self.n is not None:
            import faiss

            if not _omp_setting_per_thread():
                _OMP_LOCK.acquire()
                self.locked = True
            self.old = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(self.n)

    def __exit__(self, *exc):
        if self.n is not None:
            import faiss

            faiss.omp_set_num_threads(self.old)
            if self.locked:
                self.locked = False
                _OMP_LOCK.release()


#: serialises searches with ``n_threads`` where the OpenMP setting is process-wide
_OMP_LOCK = threading.Lock()
_OMP_PER_THREAD: list[bool] = []


def _omp_setting_per_thread() -> bool:
    """Whether the OpenMP runtime faiss uses keeps ``omp_set_num_threads`` per thread: a new
    thread sets another value, and this thread's must not change (checked once)."""
    if not _OMP_PER_THREAD:
        import faiss

        with _OMP_LOCK:
            if not _OMP_PER_THREAD:
                mine = faiss.omp_get_max_threads()
                probe = threading.Thread(target=faiss.omp_set_num_threads, args=(mine + 1,))
                probe.start()
                probe.join()
                after = faiss.omp_get_max_threads()
                if after != mine:  # a process-wide setting: put it back
                    faiss.omp_set_num_threads(mine)
                _OMP_PER_THREAD.append(after == mine)
    return _OMP_PER_THREAD[0]


def _progress_bar(progress, n_rows: int, total: int, desc: str, *, threshold: int = 100_000, unit: str = "rows"):
    """A :class:`~lplr_index._progress.Progress` bar, or None when not shown."""
    from ._progress import Progress

    if progress is False or (progress is None and n_rows < threshold):
        return None
    bar = Progress(total, desc, unit=unit, enabled=None if progress is None else bool(progress))
    return bar if bar.enabled else None


def _vq_layout(enc) -> tuple[str, np.ndarray] | None:
    """``(basis, groups)`` of a grouped-code encoder, None for scalar codes."""
    return (enc.basis, enc.lq.groups) if enc.codec == "vq" else None


def _exact_neighbours(source, Q: np.ndarray, rows: np.ndarray, k: int, metric: str) -> list[np.ndarray]:
    """The ``k`` exact nearest rows of ``source`` of each query, its own row (``rows``) left out:
    one pass over the blocks (the default ``nprobe``'s measurement)."""
    if metric == "cosine":
        Q = _normalize(Q)
    depth = k + 1
    best_s = np.full((len(Q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(Q), 0), np.int64)
    for start, block in source.blocks():
        B = np.asarray(block, np.float32)
        if metric == "cosine":
            B = _normalize(B)
        S = Q @ B.T
        if metric == "l2":
            S = 2 * S - np.einsum("ij,ij->i", B, B)[None, :]
        S = np.concatenate([best_s, S], axis=1)
        I = np.concatenate([best_i, np.broadcast_to(np.arange(start, start + len(B), dtype=np.int64), (len(Q), len(B)))],
                           axis=1)
        top = np.argpartition(-S, depth - 1, axis=1)[:, :depth] if S.shape[1] > depth else np.arange(S.shape[1])[None]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(S, top, 1), axis=1, kind="stable"), 1)
        best_s, best_i = np.take_along_axis(S, top, 1), np.take_along_axis(I, top, 1)
    return list(_without_self(best_i, rows, k))


def _without_self(I: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` ids of each row of ``I`` but the query's own row."""
    out = np.full((len(I), k), -1, np.int64)
    for q, (ids, own) in enumerate(zip(I, rows)):
        kept = ids[ids != own][:k]
        out[q, : len(kept)] = kept
    return out
