"""LPLRIndex: a compressed k-nearest-neighbour index over LPLR-factorized vectors.

The database ``X`` (n x dim) is stored as ``X ~ mean + L R``: one row of
``rank`` low-bit codes per vector (``L``) and one shared ``rank x dim`` factor
(``R``). Building runs LPLR with alternating refinement as passes over row
blocks (:mod:`lplr_index.train`); by default the shared factor is then an
orthonormal, randomly rotated basis of the LPLR subspace, so that 4-bit codes
are searched by faiss's fast-scan kernels and re-ranked exactly
(:mod:`lplr_index.search`).

:class:`LPLRIndex` holds the settings (:mod:`lplr_index.settings`), the current
:class:`~lplr_index.snapshot.Snapshot` (the frozen encoder, the code store, ids,
tombstones and the search structures made for them) and a writer lock; every method
checks its arguments and delegates to one part, each a module of its own:

- :mod:`lplr_index.ids`: user ids, id slots, tombstones, a search filter's allowed rows;
- :mod:`lplr_index.builder`: rows to codes (the design choice and fit, encoding, the
  coarse lists of a partitioned index);
- :mod:`lplr_index.snapshot`: the successor snapshot of each mutation;
- :mod:`lplr_index.sizing`: :meth:`LPLRIndex.plan` and the peak-memory models;
- :mod:`lplr_index.layout`: a snapshot's file arrays and header, and back
  (:mod:`lplr_index.fileformat` is the container);
- :mod:`lplr_index.search.router`: a search's mode, filter and path over one snapshot.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import threading
import weakref
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
from numpy.typing import NDArray

from . import builder, layout, sizing
from ._inputs import open_source
from ._progress import progress_bar
from ._validation import check_choice, check_int
from .codes import CodeStore
from .fileformat import IndexFileError, container_to_bytes, read_container, source_name, write_container
from .ids import appended_ids, as_ids, built_ids, check_unique, column_ids, ids_layout, tombstoned
from .search import fastscan, router
from .search.router import DEFAULT_RERANK_FACTOR, MAX_RESULT_BYTES, SEARCH_MODES, SearchResult
from .settings import IndexSettings
from .sizing import IndexPlan
from .snapshot import DERIVED, Snapshot, UnknownIdError, _frozen
from .vq import TWO_LEVEL_RERANK_FACTOR

# defined by the parts, importable from here as before (the command line, tests and users import them so)
from .builder import SCALAR_RIVAL_MIN_BITS  # noqa: F401
from .layout import AUTO_NLIST_MIN_ROWS, IVF_LAYOUT_VERSION  # noqa: F401
from .search.router import default_rerank_factor  # noqa: F401

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

    @property
    def rerank_factor(self) -> int | None:
        """Fast-scan candidates per result a search re-ranks when it names none: measured at build
        time (the smallest depth that keeps the default's agreement with the exact scan of the
        codes, :func:`lplr_index.builder.measure_rerank_factor`; ``rerank_report`` holds what was
        measured), or for files written before format version 6 the encoder's default (4, or 16
        for two-level codes); None before a build."""
        st = self._state
        if st is None:
            return None
        return router.index_rerank_factor(st)

    @property
    def is_built(self) -> bool:
        return self._state is not None

    def _require_built(self, what: str) -> Snapshot:
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
    @property
    def nbytes(self) -> int:
        """Size in bytes of the file :meth:`save` writes (everything stored)."""
        return layout.nbytes_of(self._settings, self._require_built("nbytes"))

    @property
    def bits_per_coordinate(self) -> float:
        """Measured storage: ``8 * nbytes / (ntotal * dim)``, the whole file counted
        (user ids and the tombstone bitmap included; ``inf`` when no row is stored)."""
        st = self._require_built("bits_per_coordinate")  # one snapshot: a mutation may commit meanwhile
        return 8 * layout.nbytes_of(self._settings, st) / (st.n * self.dim) if st.n else float("inf")

    def storage_breakdown(self) -> dict[str, int]:
        """Bytes stored, by part: per-vector codes, shared factor, quantizer levels, mean,
        user ids, tombstones, (version 5) the coarse centroids and list numbers, header."""
        return layout.storage_breakdown(self._settings, self._require_built("storage_breakdown"))

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
        chosen, exact = None, True
        if s.codec_used == "vq" and s.bits_per_coordinate is not None and sample is not None:
            source = index._source(sample, "sample")
            if source.n > n:
                raise ValueError(f"sample holds {source.n} rows, more than the n={n} to build on")
            fitted, index.build_report = builder.fit_design(s, source, None, False, n_rows=n, encode=False)
            # no encoder: codec="auto" at 6+ bits per coordinate, the scalar 8-bit codes won on the sample
            chosen = "scalar" if fitted.encoder is None else fitted.encoder
            exact = source.n == n
        return sizing.plan(s, n, n_queries, k, mode, chosen, exact)

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
        n = source.n
        ids = built_ids(column_ids(source, ids), n)
        s = self._settings
        bits_l = s.bits_l_used
        if s.rank is not None and s.rank > n:
            raise ValueError(f"rank={s.rank} needs at least {s.rank} vectors to build on, got X with {n}")
        nlist = layout.nlist_for(s, n)
        if nlist is not None and nlist > n:
            raise ValueError(f"nlist={nlist} lists need at least {nlist} vectors to train the coarse quantizer, "
                             f"got X with {n} (use a smaller nlist or nlist='auto')")
        if s.codec_used == "vq":
            result, self.build_report = builder.fit_design(s, source, ids, progress)
            if result.encoder is not None:
                # the full-scale check of a two-level design built fast-scan's copy of the codes: kept
                st = Snapshot(result.encoder, CodeStore(result.codes), n, 0, result.error, s.metric,
                              layout.fresh_version(s), ids=_frozen(ids)).seeded(fastscan=result.scorer)
                self._commit(self._measured(st, source))
                return self
            # codec="auto" at 6+ bits per coordinate: the scalar 8-bit codes won on the sample
            bits_l = dataclasses.replace(s, codec="scalar").bits_l_used
        if s.bits_per_coordinate is not None:
            rank = sizing.rank_for_budget(s, n, bits_l, ids=ids_layout(ids))
        else:
            rank = s.rank
        result = builder.fit_scalar(s, source, rank, bits_l, progress)
        st = Snapshot(result.encoder, CodeStore(result.codes), n, 0, result.error, s.metric,
                      layout.fresh_version(s), ids=_frozen(ids))
        self._commit(self._measured(st, source))
        return self

    def _measured(self, st: Snapshot, source) -> Snapshot:
        """``st`` with its coarse lists when the settings ask for them and its measured re-rank
        depth (:func:`lplr_index.builder.measured`)."""
        st, report = builder.measured(self._settings, st, source)
        if st.nlist is not None:
            self.nprobe_report = report["nprobe"]
        self.rerank_report = report["rerank_factor"]
        return st

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
        new_ids = appended_ids(st, column_ids(source, ids), source.n)
        packed, clipped = builder.encode_rows(st.encoder, source, progress, "add")
        self._commit(st.appended(packed, clipped, new_ids))
        return self

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
        removed = tombstoned(st, ids)
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
        if st.removed is not None:
            self._commit(st.compacted())
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
        ids = as_ids(ids, "ids")
        source = self._source(X, "X")
        if len(ids) != source.n:
            raise ValueError(f"ids must hold one id per vector of X, {source.n}, got {len(ids)} ids")
        check_unique(ids, "ids")
        rows = st.rows_of(ids, "ids")
        packed, clipped = builder.encode_rows(st.encoder, source, progress, "update")
        self._commit(st.updated(rows, packed, clipped))
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
        return st.reconstruct_rows(None if ids is None else st.rows_of(as_ids(ids, "ids"), "ids"))

    # ---------------------------------------------------------------- search
    @property
    def fastscan_ready(self) -> bool:
        """Whether ``mode="auto"`` searches with fast-scan (4-bit codes, orthonormal factor)."""
        return router.fastscan_ready(self._state, self._settings)

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
            Fast-scan candidates per result; None: :attr:`rerank_factor`, the depth
            the build measured (at most :data:`DEFAULT_RERANK_FACTOR`, or
            :data:`TWO_LEVEL_RERANK_FACTOR` when groups have coarse and fine codes:
            fast-scan scores the coarse ones); with ``rescore_with``, those defaults.
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
        return router.search(self._require_built("search"), self._settings, Q, k, mode=mode,
                             rerank_factor=rerank_factor, rescore_with=rescore_with, allowed=allowed,
                             n_threads=n_threads, nprobe=nprobe)

    # the current snapshot's search structures (for tests and tools; a search reads its own snapshot's)
    def _norms2(self) -> np.ndarray:
        return self._require_built("_norms2").norms2()

    def _fastscan(self) -> fastscan.FastScanScorer:
        return self._require_built("_fastscan").fastscan()

    # ----------------------------------------------------------- persistence
    def _container(self):
        return layout.container(self._settings, self._require_built("save"))

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
        bar = progress_bar(progress, total, total, "save", threshold=1 << 28, unit="bytes")
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
        s, st = layout.from_container(header, arrays, version, mmap)
        index = cls(**dataclasses.asdict(s))
        index._state = st
        return index

