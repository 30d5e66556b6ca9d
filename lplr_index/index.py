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
import os
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from ._blocks import ArraySource, LocalExecutor, check_block
from ._validation import check_bits, check_choice, check_int, check_positive_float
from ._version import __version__
from .codes import CodeStore
from .fileformat import (
    IndexFileError,
    check_output_path,
    container_nbytes,
    container_to_bytes,
    read_container,
    write_container,
)
from .packing import _unpack, packed_nbytes
from .quantize import Quantizer
from .search import blas, fastscan
from .search.metrics import CodeView, pad_results
from .settings import IndexSettings
from .train import FACTORS, Encoder, fit

__all__ = ["LPLRIndex", "SearchResult", "SEARCH_MODES", "DEFAULT_RERANK_FACTOR", "MAX_RESULT_BYTES"]

SEARCH_MODES = ("auto", "fastscan", "factored", "reconstructed")
#: candidates per result re-ranked after fast-scan (k' = factor * k); measured in
#: benchmarks/bench_rerank.py: 4 reaches exact-scan recall within 0.005 at every setting tried
DEFAULT_RERANK_FACTOR = 4
#: cap on the (distances, ids) one search may return: n_queries * k * 12 bytes
MAX_RESULT_BYTES = 1 << 31
#: index layout written by this library (container format version)
LAYOUT_VERSION = 2
_ARRAYS_V1 = ("l_codes", "l_lo", "l_hi", "r_codes", "r_lo", "r_hi")
_ARRAYS_V2 = _ARRAYS_V1 + ("mean",)


class SearchResult(NamedTuple):
    """``(distances, indices)`` of a search, each of shape (n_queries, k).

    ``distances`` is float32: squared L2 distances (ascending) for
    ``metric="l2"``, inner products or cosine similarities (descending) for
    ``"ip"`` and ``"cosine"``. ``indices`` is int64. Missing results (k larger
    than the index) are padded with ``inf`` (``-inf`` for similarities) and -1.
    """

    distances: NDArray[np.float32]
    indices: NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class _State:
    """Everything a built index holds; replaced whole by every mutation."""

    encoder: Encoder
    store: CodeStore
    n_build: int
    n_clipped: int
    fit_error: float
    metric: str
    version: int = LAYOUT_VERSION

    @property
    def view(self) -> CodeView:
        """The search backends' view of this state (made once)."""
        view = self.__dict__.get("_view")
        if view is None:
            view = CodeView(self.encoder, self.store.codes, self.metric)
            object.__setattr__(self, "_view", view)
        return view


class LPLRIndex:
    """Compressed k-NN index: LPLR codes per vector, one shared low-precision factor.

    The constructor only stores and validates settings; :meth:`build` does the work.

    Parameters
    ----------
    dim : int
        Dimension of the vectors, >= 1.
    bits_per_coordinate : float, default=None
        Storage budget: everything the index stores (codes, shared factor,
        quantizer levels, mean, file header) divided by ``n * dim`` at build
        time. The largest rank whose saved file fits the budget is used. Give
        this or ``rank``, not both.
    rank : int, default=None
        Explicit rank (sketch size) instead of a budget, 1 to ``dim``.
    bits_l : int, default=None
        Bits of each per-vector code, 1 to 8. None picks it: with a budget,
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

    Attributes
    ----------
    ntotal : int
        Vectors stored.
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
        )
        self._state: _State | None = None
        self._cache: dict[str, Any] = {}

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
    def is_built(self) -> bool:
        return self._state is not None

    def _require_built(self, what: str) -> _State:
        if self._state is None:
            raise RuntimeError(f"{what}: this index is empty; call build(X) first")
        return self._state

    @property
    def ntotal(self) -> int:
        return 0 if self._state is None else self._state.store.n

    def __len__(self) -> int:
        return self.ntotal

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
            f"ntotal={self.ntotal}, measured_bits_per_coordinate={self.bits_per_coordinate:.4f}"
            if self.is_built
            else "not built"
        )
        return (
            f"LPLRIndex(dim={s.dim}, {budget}rank={self.rank}, bits_l={self.bits_l}, "
            f"bits_r={s.bits_r}, metric={s.metric!r}, quantizer={s.quantizer!r}, "
            f"factor={s.factor!r}, seed={s.seed}; {state})"
        )

    # ------------------------------------------------------------- accounting
    def _arrays_meta(self, n: int, rank: int, bits_l: int, version: int = LAYOUT_VERSION) -> dict[str, np.ndarray]:
        """Zero-size stand-ins with the shapes/dtypes of the stored arrays."""
        per_col = self.quantizer != "minmax"
        nl, nr = (rank if per_col else 1), (self.dim if per_col else 1)
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
        return {k: np.lib.stride_tricks.as_strided(np.zeros(1, dt), shape=s, strides=(0,) * len(s))
                for k, (s, dt) in shapes.items()}

    def _file_nbytes(self, n: int, rank: int, bits_l: int, *, state: _State | None = None) -> int:
        """Exact file size for n vectors at ``rank``: of ``state``, or of a fresh
        build with the widest header values it can have."""
        if state is None:
            header = self._header(n, rank, bits_l, n, 0, "sketch", 0.0)
            version = LAYOUT_VERSION
        else:
            header = self._header(n, rank, bits_l, state.n_build, state.n_clipped, state.encoder.kind,
                                  state.fit_error)
            version = state.version
        return container_nbytes(header, self._arrays_meta(n, rank, bits_l, version))

    @property
    def nbytes(self) -> int:
        """Size in bytes of the file :meth:`save` writes (everything stored)."""
        st = self._require_built("nbytes")
        return self._file_nbytes(st.store.n, st.encoder.rank, st.encoder.lq.bits, state=st)

    @property
    def bits_per_coordinate(self) -> float:
        """Measured storage: ``8 * nbytes / (ntotal * dim)``, the whole file counted."""
        self._require_built("bits_per_coordinate")
        return 8 * self.nbytes / (self.ntotal * self.dim)

    def storage_breakdown(self) -> dict[str, int]:
        """Bytes stored, by part: per-vector codes, shared factor, quantizer levels, mean, header."""
        st = self._require_built("storage_breakdown")
        enc = st.encoder
        parts = {
            "codes": st.store.nbytes,
            "shared_factor": int(enc.rcodes.shape[0] * packed_nbytes(self.dim, self.bits_r)),
            "quantizer_levels": 4 * (enc.lq.lo.size * 2 + enc.rq.lo.size * 2),
            "mean": 4 * self.dim if st.version >= 2 else 0,
        }
        parts["header_and_padding"] = self.nbytes - sum(parts.values())
        return parts

    def _rank_for_budget(self, n: int, bits_l: int) -> int:
        """Largest rank whose file fits ``budget * n * dim`` bits."""
        limit = self.budget * n * self.dim
        lo, hi, best = 1, min(self.dim, n), 0
        while lo <= hi:  # storage grows with rank: binary search
            mid = (lo + hi) // 2
            if 8 * self._file_nbytes(n, mid, bits_l) <= limit:
                best, lo = mid, mid + 1
            else:
                hi = mid - 1
        if best == 0:
            need = 8 * self._file_nbytes(n, 1, bits_l) / (n * self.dim)
            raise ValueError(
                f"bits_per_coordinate={self.budget:g} cannot hold even a rank-1 index of {n} "
                f"vectors of dimension {self.dim} with bits_l={bits_l}, bits_r={self.bits_r}: "
                f"that needs {need:.3f} bits per coordinate (add more vectors, lower bits_r, or "
                f"raise the budget)"
            )
        return best

    # ------------------------------------------------------------ build / add
    def _source(self, X, name: str) -> ArraySource:
        if isinstance(X, (str, os.PathLike)):
            X = _open_npy(X, name)
        return ArraySource(X, name, dim=self.dim)

    def build(self, X, *, progress: bool | None = None) -> "LPLRIndex":
        """Learn the shared factor from ``X`` and store ``X``'s codes, replacing any content.

        The fit makes ``2 + refine_iters`` passes over ``X`` in blocks of
        :data:`lplr_index._blocks.BLOCK_ROWS` rows (one per LPLR/refinement round
        and one to encode), plus random access to a seeded sample of rows, so a
        memory-mapped ``X`` is never read whole into memory. If anything fails
        (bad input, out of memory, Ctrl-C), the index is left as it was.

        Parameters
        ----------
        X : array-like of shape (n, dim), a memory-mapped array, or a path to a ``.npy`` file
            Database vectors (float32; float64 and integer inputs are converted
            block by block). Entries must be finite and at most 1e15 in magnitude.
        progress : bool, default=None
            Show a progress bar on stderr; None shows it when stderr is a terminal
            and ``X`` has at least 10^5 rows.

        Returns
        -------
        self : LPLRIndex
        """
        source = self._source(X, "X")
        n = source.n
        s = self._settings
        bits_l = s.bits_l_used
        if s.bits_per_coordinate is not None:
            rank = self._rank_for_budget(n, bits_l)
        else:
            rank = s.rank
            if rank > n:
                raise ValueError(f"rank={rank} needs at least {rank} vectors to build on, got X with {n}")
        bar = _progress_bar(progress, n, (2 + s.refine_iters) * n, "build")
        try:
            executor = LocalExecutor(source, progress=None if bar is None else bar.update)
            result = fit(
                executor, rank, bits_l, s.bits_r, s.quantizer, s.seed, s.refine_iters,
                factor=s.factor, normalize=s.metric == "cosine",
            )
        finally:
            if bar is not None:
                bar.close()
        self._commit(_State(result.encoder, CodeStore(result.codes), n, 0, result.error, s.metric))
        return self

    def add(self, X, *, progress: bool | None = None) -> "LPLRIndex":
        """Encode more vectors with the learned encoder and quantizer; no refit.

        New ids continue from ``len(self)``. Entries of a new vector's latent
        coordinates outside the quantizer range learned at build time are
        clipped to the end levels and counted in :attr:`n_clipped`. Appending
        costs O(new rows) (the code buffer grows geometrically). If anything
        fails, the index is left as it was.

        Parameters
        ----------
        X : array-like of shape (n_new, dim), a memory-mapped array, or a path to a ``.npy`` file
        progress : bool, default=None
            As in :meth:`build`.

        Returns
        -------
        self : LPLRIndex
        """
        st = self._require_built("add")
        source = self._source(X, "X")
        bar = _progress_bar(progress, source.n, source.n, "add")
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
        store = st.store.appended(np.concatenate(blocks))
        self._commit(dataclasses.replace(st, store=store, n_clipped=st.n_clipped + clipped), extend=True)
        return self

    def _commit(self, state: _State, *, extend: bool = False) -> None:
        """Make ``state`` current; caches are extended (after add) or dropped."""
        old = self._cache
        self._state = state
        self._cache = {}
        if extend:
            if "norms2" in old:
                self._cache["norms2"] = np.concatenate(
                    [old["norms2"], blas.row_norms2(state.view, len(old["norms2"]))])
            if "fastscan" in old:
                fs = old["fastscan"]
                fs.extend(state.view)
                self._cache["fastscan"] = fs

    # ---------------------------------------------------------------- decode
    def reconstruct(self, ids=None) -> NDArray[np.float32]:
        """Decoded vectors ``mean + L[ids] R`` (for ``"cosine"``, of the unit-normalised inputs).

        Parameters
        ----------
        ids : array-like of int, default=None
            Vector ids; all vectors when None.

        Returns
        -------
        ndarray of shape (len(ids), dim), float32
        """
        st = self._require_built("reconstruct")
        codes = st.store.codes
        if ids is None:
            rows = codes
        else:
            ids = np.asarray(ids)
            if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
                raise ValueError(f"ids must be a 1-D array of integer ids, got shape {ids.shape}, dtype {ids.dtype}")
            if ids.size and (ids.min() < 0 or ids.max() >= self.ntotal):
                bad = ids[(ids < 0) | (ids >= self.ntotal)][0]
                raise IndexError(f"ids must be in [0, {self.ntotal - 1}], got {bad}")
            rows = codes[ids.astype(np.int64)]
        enc = st.encoder
        out = np.empty((rows.shape[0], self.dim), np.float32)
        for s in range(0, rows.shape[0], blas.BLOCK_ROWS):
            out[s : s + blas.BLOCK_ROWS] = st.view.decode_latent(rows[s : s + blas.BLOCK_ROWS]) @ enc.R + enc.mean
        return out

    # ---------------------------------------------------------------- search
    @property
    def fastscan_ready(self) -> bool:
        """Whether ``mode="auto"`` searches with fast-scan (4-bit codes, orthonormal factor)."""
        st = self._state
        return st is not None and st.encoder.lq.bits == 4 and self.factor == "orthonormal"

    def search(self, Q, k: int, *, mode: str = "auto", rerank_factor: int | None = None,
               rescore_with=None, n_threads: int | None = None) -> SearchResult:
        """The ``k`` nearest stored vectors of each query.

        Parameters
        ----------
        Q : array-like of shape (n_queries, dim)
            Queries, full precision (finite, entries at most 1e15 in magnitude).
        k : int
            Neighbours per query, >= 1; results past ``len(self)`` are padded.
            ``n_queries * k * 12`` bytes of results may not exceed
            :data:`MAX_RESULT_BYTES` (2 GiB).
        mode : {"auto", "fastscan", "factored", "reconstructed"}, default="auto"
            ``"fastscan"``: faiss's fast-scan kernels score the 4-bit codes and
            ``rerank_factor * k`` candidates are re-scored exactly from their
            codes; ``"factored"``: exact scores of every vector from the codes,
            block by block with BLAS (any code width; the float n x dim matrix is
            never formed); ``"reconstructed"``: decode all vectors once (cached
            until the next ``add``) into a faiss flat index. ``"auto"`` is
            ``"fastscan"`` when :attr:`fastscan_ready`, else ``"factored"``.
        rerank_factor : int, default=None
            Fast-scan candidates per result (:data:`DEFAULT_RERANK_FACTOR` when None).
        rescore_with : array-like of shape (ntotal, dim), or a path to a ``.npy`` file, default=None
            The original float vectors in id order (memory-mapped is fine): the
            candidates (``rerank_factor * k`` of them, in every mode) are re-scored
            exactly against them and the distances returned are the exact ones.
        n_threads : int, default=None
            faiss threads for this call (restored afterwards); None leaves
            faiss's setting (``faiss.omp_set_num_threads``) as it is.

        Returns
        -------
        SearchResult
            ``(distances, indices)``, float32 and int64, shape (n_queries, k).
        """
        st = self._require_built("search")
        k = check_int(k, "k", low=1)
        mode = check_choice(mode, "mode", SEARCH_MODES)
        factor = DEFAULT_RERANK_FACTOR if rerank_factor is None else check_int(
            rerank_factor, "rerank_factor", low=1, high=1 << 20)
        if n_threads is not None:
            n_threads = check_int(n_threads, "n_threads", low=1, high=4096)
        Q = check_block(Q, "queries", 0, self.dim)
        if Q.ndim != 2 or Q.shape[0] == 0:
            raise ValueError(f"queries must hold at least one row, got shape {Q.shape}")
        if len(Q) * k * 12 > MAX_RESULT_BYTES:
            raise ValueError(
                f"k={k} for {len(Q)} queries asks for {len(Q) * k * 12 / 2**30:.1f} GiB of results, above "
                f"the {MAX_RESULT_BYTES / 2**30:.0f} GiB one search may return (this index holds "
                f"{self.ntotal} vectors: use k <= {self.ntotal}, or fewer queries per call)"
            )
        full = None if rescore_with is None else self._check_full(rescore_with)
        if mode == "auto":
            mode = "fastscan" if self.fastscan_ready else "factored"
        if mode == "fastscan" and st.encoder.lq.bits != 4:
            raise ValueError(
                f"mode='fastscan' needs 4-bit codes, this index has {st.encoder.lq.bits}-bit codes "
                "(use mode='factored' or 'auto')"
            )
        kk = min(k, self.ntotal)
        kc = min(self.ntotal, max(kk, factor * kk)) if (mode == "fastscan" or full is not None) else kk
        with _faiss_threads(n_threads):
            if mode == "fastscan":
                ids = self._fastscan().candidates(Q, kc)
                D, I = blas.rerank(st.view, Q, ids, kc if full is not None else kk)
                short = (ids < 0).any(axis=1)
                if short.any():
                    # fast-scan dropped rows (its 16-bit sums saturate on extreme level
                    # spreads): those queries get the exact scan instead
                    D[short], I[short] = blas.scan(
                        st.view, Q[short], D.shape[1], norms2=self._norms2() if self.metric != "ip" else None)
            elif mode == "reconstructed":
                D, I = self._search_flat(Q, kc)
            else:
                D, I = blas.scan(st.view, Q, kc, norms2=self._norms2() if self.metric != "ip" else None)
        if full is not None:
            D, I = _rescore(full, Q, I, kk, self.metric)
        return SearchResult(*pad_results(D, I, k, self.metric))

    def _check_full(self, X):
        if isinstance(X, (str, os.PathLike)):
            X = _open_npy(X, "rescore_with")
        if getattr(X, "ndim", None) != 2 or X.shape != (self.ntotal, self.dim):
            raise ValueError(
                f"rescore_with must hold the {self.ntotal} original vectors of dimension {self.dim} "
                f"in id order, shape ({self.ntotal}, {self.dim}), got shape {getattr(X, 'shape', None)}"
            )
        return X

    def _norms2(self) -> np.ndarray:
        if "norms2" not in self._cache:
            self._cache["norms2"] = blas.row_norms2(self._state.view)
        return self._cache["norms2"]

    def _fastscan(self) -> fastscan.FastScanScorer:
        if "fastscan" not in self._cache:
            self._cache["fastscan"] = fastscan.FastScanScorer(self._state.view)
        return self._cache["fastscan"]

    def _search_flat(self, Q, k):
        import faiss

        if "flat" not in self._cache:
            Xr = self.reconstruct()
            if self.metric == "cosine":
                Xr = _normalize(Xr)
            flat = faiss.IndexFlatL2(self.dim) if self.metric == "l2" else faiss.IndexFlatIP(self.dim)
            flat.add(Xr)
            self._cache["flat"] = flat
        if self.metric == "cosine":
            Q = _normalize(Q)
        return self._cache["flat"].search(Q, k)

    # ----------------------------------------------------------- persistence
    def _header(self, n, rank, bits_l, n_build, n_clipped, kind, fit_error) -> dict:
        return {
            "format": "lplr-index",
            "library_version": __version__,
            "settings": self._settings.to_header(rank=rank),
            "bits_l_used": bits_l,
            "encoder": kind,
            # fixed width, so the header size (and the budget) does not depend on the value
            "fit_error": f"{fit_error:.6e}",
            "ntotal": n,
            "n_build": n_build,
            "n_clipped": n_clipped,
        }

    def _container(self):
        st = self._require_built("save")
        enc = st.encoder
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
        header = self._header(st.store.n, enc.rank, enc.lq.bits, st.n_build, st.n_clipped, enc.kind, st.fit_error)
        return header, arrays, st.version

    def save(self, path, *, progress: bool | None = None) -> int:
        """Write the index to ``path`` (a path, atomically, or a writable binary file object).

        A path gets a temporary file in its folder, renamed over it when
        complete (see :func:`lplr_index.fileformat.write_container`). Builds with
        the same data, settings and seed give a byte-identical file on the same
        machine with the same number of BLAS threads.

        Returns
        -------
        int
            Bytes written, equal to :attr:`nbytes`.
        """
        header, arrays, version = self._container()
        total = sum(a.nbytes for a in arrays.values())
        bar = _progress_bar(progress, total, total, "save", threshold=1 << 28, unit="bytes")
        try:
            cb = None if bar is None else (lambda done, _total: bar.update(done - bar.done))
            return write_container(path, header, arrays, version=version, progress=cb)
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
        name = getattr(source, "name", None) if not isinstance(source, (str, os.PathLike)) else os.fspath(source)
        name = "<bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else name
        try:
            return cls._from_container(c.header, c.arrays, c.version, mmap)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError, IndexError) as exc:
            raise IndexFileError(f"{name}: damaged or inconsistent content ({exc})") from None

    @classmethod
    def _from_container(cls, header, arrays, version, mmap):
        if not isinstance(header, dict) or header.get("format") != "lplr-index":
            raise ValueError(f"format is {header.get('format') if isinstance(header, dict) else header!r}, "
                             "expected 'lplr-index'")
        settings = dict(header["settings"])
        if version < 2:
            settings.setdefault("factor", "lstsq")  # version 1 had only the paper's factor, uncentred
        s = IndexSettings.from_header(settings)
        index = cls(**dataclasses.asdict(s))
        rank = check_int(header["settings"]["rank"], "rank", low=1, high=s.dim)
        bits_l = check_bits(header["bits_l_used"], "bits_l_used")
        if s.bits_l is not None and bits_l != s.bits_l:
            raise ValueError(f"bits_l_used={bits_l} differs from the setting bits_l={s.bits_l}")
        kind = check_choice(header["encoder"], "encoder", ("sketch", "pinv"))
        fit_error = float(header["fit_error"])
        if not (fit_error >= 0 or np.isnan(fit_error)):
            raise ValueError(f"fit_error must be >= 0, got {fit_error}")
        n = check_int(header["ntotal"], "ntotal", low=1)
        n_build = check_int(header["n_build"], "n_build", low=1, high=n)
        n_clipped = check_int(header["n_clipped"], "n_clipped", low=0)
        expected = index._arrays_meta(n, rank, bits_l, version)
        if set(arrays) != set(expected):
            raise ValueError(f"arrays {sorted(arrays)} differ from the expected {sorted(expected)}")
        for key, meta in expected.items():
            if arrays[key].shape != meta.shape or arrays[key].dtype != meta.dtype:
                raise ValueError(f"array {key!r} has shape {arrays[key].shape} and dtype {arrays[key].dtype}, "
                                 f"expected {meta.shape} and {meta.dtype}")
        lq = _checked_quantizer(s.quantizer, bits_l, arrays["l_lo"], arrays["l_hi"], "L")
        rq = _checked_quantizer(s.quantizer, s.bits_r, arrays["r_lo"], arrays["r_hi"], "R")
        _check_padding_bits(arrays["r_codes"], s.bits_r, s.dim, "r_codes")
        _check_padding_bits(arrays["l_codes"], bits_l, rank, "l_codes")
        rcodes = _unpack(np.array(arrays["r_codes"]), s.bits_r, s.dim)
        mean = np.array(arrays["mean"]) if version >= 2 else np.zeros(s.dim, np.float32)
        if not (np.isfinite(mean).all() and np.abs(mean).max(initial=0) <= _MAX_LEVEL):
            raise ValueError(f"mean must be finite with entries of magnitude <= {_MAX_LEVEL:g}")
        if s.factor == "orthonormal" and (mean.any() and version < 2):
            raise ValueError("a version-1 file cannot hold a centred index")
        encoder = Encoder(mean, lq, rcodes, rq, kind, s.seed, s.metric == "cosine")
        bound = _level_bound(lq) * _level_bound(rq) * rank + float(np.abs(mean).max(initial=0))
        if not bound <= _MAX_LEVEL:
            raise ValueError(f"decoded vectors could reach magnitude {bound:.3g}, above {_MAX_LEVEL:g}: "
                             "levels no build produces")
        codes = arrays["l_codes"] if mmap else np.array(arrays["l_codes"])
        index._state = _State(encoder, CodeStore(codes), n_build, n_clipped, fit_error, s.metric, version)
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


def _pack_rows(codes: np.ndarray, bits: int) -> np.ndarray:
    from .packing import _pack

    return _pack(codes, bits)


def _normalize(X: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1).astype(X.dtype)


def _open_npy(path, name: str) -> np.ndarray:
    """A ``.npy`` file, memory-mapped (never unpickled)."""
    try:
        return np.load(os.fspath(path), mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(2, f"{name}: no such file", os.fspath(path)) from None
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{name}: {os.fspath(path)} is not a readable NumPy .npy file ({exc})") from None


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
    """Set faiss's OpenMP threads for a block and restore them (no-op for None)."""

    def __init__(self, n: int | None):
        self.n = n

    def __enter__(self):
        if self.n is not None:
            import faiss

            self.old = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(self.n)

    def __exit__(self, *exc):
        if self.n is not None:
            import faiss

            faiss.omp_set_num_threads(self.old)


def _progress_bar(progress, n_rows: int, total: int, desc: str, *, threshold: int = 100_000, unit: str = "rows"):
    """A :class:`~lplr_index._progress.Progress` bar, or None when not shown."""
    from ._progress import Progress

    if progress is False or (progress is None and n_rows < threshold):
        return None
    bar = Progress(total, desc, unit=unit, enabled=None if progress is None else bool(progress))
    return bar if bar.enabled else None
