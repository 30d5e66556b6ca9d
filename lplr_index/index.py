"""LPLRIndex: a compressed k-nearest-neighbour index over LPLR-factorized vectors.

The database ``X`` (n x dim) is stored as ``X ~ L R``: one row of ``rank``
low-bit codes per vector (``L``) and one shared ``rank x dim`` factor (``R``).
Building sketches ``Y = X S`` with a Gaussian ``S`` regenerated from the seed,
quantizes ``L = Q(Y)``, fits ``R`` by least squares and quantizes it. Adding
vectors encodes them the same way, with the stored quantizer of ``L``.

Search scores queries against the codes directly: with ``p = R q`` the inner
product is ``<x_hat, q> = L_i . p``, so a query costs O(n rank) instead of
O(n dim), and the float n x dim matrix is never formed.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import faiss
import numpy as np
from numpy.typing import NDArray

from . import __version__
from ._validation import (
    check_bits,
    check_choice,
    check_int,
    check_matrix,
    check_positive_float,
    check_seed,
)
from .evaluation import METRICS, _normalize_rows, _pad
from .factorize import _fit_index_factors, encoder_matrix
from .fileformat import IndexFileError, container_nbytes, read_container, write_container
from .packing import _pack, _unpack, packed_nbytes
from .quantize import SCHEMES, Quantizer, _fit

__all__ = ["LPLRIndex", "SearchResult"]

SEARCH_MODES = ("factored", "reconstructed")
_BLOCK_ROWS = 1 << 14  # database rows decoded and scored per block
_QUERY_CHUNK = 1024  # queries scored together (a score block is at most 64 MiB)


class SearchResult(NamedTuple):
    """``(distances, indices)`` of a search, each of shape (n_queries, k).

    ``distances`` is float32: squared L2 distances (ascending) for
    ``metric="l2"``, inner products or cosine similarities (descending) for
    ``"ip"`` and ``"cosine"``. ``indices`` is int64. Missing results (k larger
    than the index) are padded with ``inf`` (``-inf`` for similarities) and -1.
    """

    distances: NDArray[np.float32]
    indices: NDArray[np.int64]


class LPLRIndex:
    """Compressed k-NN index: LPLR codes per vector, one shared low-precision factor.

    The constructor only stores and validates settings; :meth:`build` does the work.

    Parameters
    ----------
    dim : int
        Dimension of the vectors, >= 1.
    bits_per_coordinate : float, default=None
        Storage budget: everything the index stores (codes, shared factor,
        quantizer levels, file header) divided by ``n * dim`` at build time.
        The largest rank whose saved file fits the budget is used. Give this
        or ``rank``, not both.
    rank : int, default=None
        Explicit rank (sketch size) instead of a budget, 1 to ``dim``.
    bits_l : int, default=None
        Bits of each per-vector code, 1 to 8. None picks it: with a budget,
        ``min(8, max(4, ceil(2 * bits_per_coordinate)))``, which keeps the rank
        near ``dim / 4 .. dim / 2`` (at 0.5-2 bits per coordinate, 4-bit codes at
        twice the rank beat the paper's 8-bit codes in our measurements; see
        the README); with an explicit rank, 8 (the paper's setting).
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
        on the build data is kept, so 0 gives plain LPLR and more never gives
        a worse fit. Each round costs about one more LPLR fit.
    seed : int, default=0
        Seed of the Gaussian sketch (and of the quantizer's row sample).

    Attributes
    ----------
    ntotal : int
        Vectors stored.
    rank : int
        Rank after :meth:`build` (chosen from the budget, or as given).
    encoder : str
        How vectors are encoded, set by build: ``"sketch"`` (``Q(x S)``, plain
        LPLR) or ``"pinv"`` (``Q(x R^+)``, after refinement).
    fit_error : float
        Relative Frobenius error of the build data's reconstruction.
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
    ):
        self.dim = check_int(dim, "dim", low=1)
        if (bits_per_coordinate is None) == (rank is None):
            raise ValueError(
                "give exactly one of bits_per_coordinate (a storage budget) or rank, got "
                f"bits_per_coordinate={bits_per_coordinate!r} and rank={rank!r}"
            )
        self.budget = (
            None
            if bits_per_coordinate is None
            else check_positive_float(bits_per_coordinate, "bits_per_coordinate")
        )
        self._rank = None if rank is None else check_int(rank, "rank", low=1, high=self.dim)
        self._bits_l_setting = None if bits_l is None else check_bits(bits_l, "bits_l")
        self.bits_l = self._auto_bits_l() if bits_l is None else self._bits_l_setting
        self.refine_iters = check_int(refine_iters, "refine_iters", low=0, high=100)
        self.bits_r = check_bits(bits_r, "bits_r")
        self.metric = check_choice(metric, "metric", METRICS)
        self.quantizer = check_choice(quantizer, "quantizer", SCHEMES)
        seed = check_seed(seed)
        if seed is None:
            raise ValueError("seed must be an integer >= 0 (the sketch is regenerated from it), got None")
        self.seed = seed
        self._codes: np.ndarray | None = None  # (ntotal, row_bytes) uint8, packed L codes
        self._lq: Quantizer | None = None
        self._rcodes: np.ndarray | None = None  # (rank, packed) uint8
        self._rq: Quantizer | None = None
        self.n_clipped = 0
        self.encoder = "sketch"
        self.fit_error = float("nan")
        self._clear_cache()

    def _auto_bits_l(self) -> int:
        if self.budget is None:
            return 8
        return int(min(8, max(4, math.ceil(2 * self.budget))))

    # ------------------------------------------------------------------ state
    def _clear_cache(self):
        self._R = None  # decoded shared factor, (rank, dim) float32
        self._T = None  # encoder matrix, (dim, rank) float32
        self._norms2 = None  # ||x_hat_i||^2, (ntotal,) float32
        self._flat = None  # faiss flat index over the reconstruction

    @property
    def is_built(self) -> bool:
        return self._codes is not None

    def _require_built(self, what: str):
        if not self.is_built:
            raise RuntimeError(f"{what}: this index is empty; call build(X) first")

    @property
    def rank(self) -> int | None:
        """Rank of the factorization (None before build with a budget)."""
        return self._rank

    @property
    def ntotal(self) -> int:
        return 0 if self._codes is None else int(self._codes.shape[0])

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        budget = "" if self.budget is None else f"bits_per_coordinate={self.budget:g}, "
        state = (
            f"ntotal={self.ntotal}, measured_bits_per_coordinate={self.bits_per_coordinate:.4f}"
            if self.is_built and self.ntotal
            else "not built"
        )
        return (
            f"LPLRIndex(dim={self.dim}, {budget}rank={self._rank}, bits_l={self.bits_l}, "
            f"bits_r={self.bits_r}, metric={self.metric!r}, quantizer={self.quantizer!r}, "
            f"seed={self.seed}; {state})"
        )

    # ------------------------------------------------------------- accounting
    def _nparams(self, rank: int) -> tuple[int, int]:
        """Floats of quantizer levels for L and R."""
        per_col = self.quantizer != "minmax"
        return (2 * rank if per_col else 2), (2 * self.dim if per_col else 2)

    def _arrays_meta(self, n: int, rank: int) -> dict[str, np.ndarray]:
        """Zero-size stand-ins with the shapes/dtypes of the stored arrays."""
        nl, nr = self._nparams(rank)
        shapes = {
            "l_codes": ((n, packed_nbytes(rank, self.bits_l)), np.uint8),
            "l_lo": ((nl // 2,), np.float32),
            "l_hi": ((nl // 2,), np.float32),
            "r_codes": ((rank, packed_nbytes(self.dim, self.bits_r)), np.uint8),
            "r_lo": ((nr // 2,), np.float32),
            "r_hi": ((nr // 2,), np.float32),
        }
        return {k: np.lib.stride_tricks.as_strided(np.zeros(1, dt), shape=s, strides=(0,) * len(s))
                for k, (s, dt) in shapes.items()}

    def _file_nbytes(self, n: int, rank: int, *, planned: bool = False) -> int:
        """Exact file size for n vectors at ``rank``: of the current state, or
        (``planned``) of a fresh build, with the widest header values it can have."""
        if planned:
            header = self._header(n, rank, n, 0, encoder="sketch", fit_error=0.0)
        else:
            header = self._header(n, rank, self._n_build, self.n_clipped)
        return container_nbytes(header, self._arrays_meta(n, rank))

    @property
    def nbytes(self) -> int:
        """Size in bytes of the file :meth:`save` writes (everything stored)."""
        self._require_built("nbytes")
        return self._file_nbytes(self.ntotal, self._rank)

    @property
    def bits_per_coordinate(self) -> float:
        """Measured storage: ``8 * nbytes / (ntotal * dim)``, the whole file counted."""
        self._require_built("bits_per_coordinate")
        return 8 * self.nbytes / (self.ntotal * self.dim)

    def storage_breakdown(self) -> dict[str, int]:
        """Bytes stored, by part: per-vector codes, shared factor, quantizer levels, header."""
        self._require_built("storage_breakdown")
        codes = self._codes.nbytes
        factor = self._rcodes.nbytes
        levels = 4 * sum(self._nparams(self._rank))
        return {
            "codes": codes,
            "shared_factor": factor,
            "quantizer_levels": levels,
            "header_and_padding": self.nbytes - codes - factor - levels,
        }

    def _rank_for_budget(self, n: int) -> int:
        """Largest rank whose file fits ``budget * n * dim`` bits."""
        limit = self.budget * n * self.dim
        hi = min(self.dim, n)
        # storage grows with rank: binary search the largest fitting rank
        lo_ok, best = 1, 0
        while lo_ok <= hi:
            mid = (lo_ok + hi) // 2
            if 8 * self._file_nbytes(n, mid, planned=True) <= limit:
                best, lo_ok = mid, mid + 1
            else:
                hi = mid - 1
        if best == 0:
            need = 8 * self._file_nbytes(n, 1, planned=True) / (n * self.dim)
            raise ValueError(
                f"bits_per_coordinate={self.budget:g} cannot hold even a rank-1 index of {n} "
                f"vectors of dimension {self.dim} with bits_l={self.bits_l}, bits_r={self.bits_r}: "
                f"that needs {need:.3f} bits per coordinate (add more vectors, lower bits_r, or "
                f"raise the budget)"
            )
        return best

    # ------------------------------------------------------------ encode/fit
    def _prepare(self, X, name: str) -> np.ndarray:
        X = check_matrix(X, name, dim=self.dim)
        return _normalize_rows(X) if self.metric == "cosine" else X

    def _encoder_matrix(self) -> np.ndarray:
        if self._T is None:
            self._T = encoder_matrix(self.encoder, self._shared_factor(), self.seed)
        return self._T

    def build(self, X) -> "LPLRIndex":
        """Learn the shared factor from ``X`` and store ``X``'s codes, replacing any content.

        Parameters
        ----------
        X : array-like of shape (n, dim)
            Database vectors (float32; float64 and integer inputs are converted).

        Returns
        -------
        self : LPLRIndex
        """
        X = self._prepare(X, "X")
        n = X.shape[0]
        if self.budget is not None:
            rank = self._rank_for_budget(n)
        else:
            rank = self._rank
            if rank > n:
                raise ValueError(f"rank={rank} needs at least {rank} vectors to build on, got X with {n}")
        self._rank = rank
        fit = _fit_index_factors(
            X, rank, self.bits_l, self.bits_r, self.quantizer, self.seed, self.refine_iters
        )
        self._lq, self._rq = fit.lq, fit.rq
        self._rcodes = _pack(fit.rcodes, self.bits_r)
        self._codes = _pack(fit.codes, self.bits_l)
        self.encoder = fit.encoder
        self.fit_error = fit.error
        self._n_build = n
        self.n_clipped = 0
        self._clear_cache()
        return self

    def add(self, X) -> "LPLRIndex":
        """Encode more vectors with the learned sketch and quantizer; no refit.

        New ids continue from ``len(self)``. Each vector gets the codes it would
        have got had it been in the build set, except that the quantizer range
        and the shared factor were learned without it: entries of its sketch
        outside the learned range are clipped to the end levels and counted in
        :attr:`n_clipped`. Building on the concatenation instead refits both.

        Parameters
        ----------
        X : array-like of shape (n_new, dim)

        Returns
        -------
        self : LPLRIndex
        """
        self._require_built("add")
        X = self._prepare(X, "X")
        Y = X @ self._encoder_matrix()
        codes, clipped = self._lq.encode(Y, return_clipped=True)
        new = _pack(codes, self.bits_l)
        old = self._codes
        self._codes = np.concatenate([np.asarray(old), new], axis=0)
        self.n_clipped += clipped
        if self._norms2 is not None:
            self._norms2 = np.concatenate([self._norms2, self._row_norms2(new)])
        self._flat = None
        return self

    # ---------------------------------------------------------------- decode
    def _shared_factor(self) -> np.ndarray:
        if self._R is None:
            self._R = self._rq.decode(_unpack(self._rcodes, self.bits_r, self.dim))
        return self._R

    def _decode_rows(self, packed: np.ndarray) -> np.ndarray:
        """Float L rows (decoded codes) of packed code rows."""
        return self._lq.decode(_unpack(np.asarray(packed), self.bits_l, self._rank))

    def _row_norms2(self, packed: np.ndarray) -> np.ndarray:
        """``||l_i R||^2`` per row, via the rank x rank Gram matrix of R."""
        R = self._shared_factor()
        G = (R.astype(np.float64) @ R.T.astype(np.float64)).astype(np.float32)
        out = np.empty(packed.shape[0], np.float32)
        for s in range(0, packed.shape[0], _BLOCK_ROWS):
            Lb = self._decode_rows(packed[s : s + _BLOCK_ROWS])
            out[s : s + len(Lb)] = np.einsum("ij,ij->i", Lb @ G, Lb)
        return out

    def _norms(self) -> np.ndarray:
        if self._norms2 is None:
            self._norms2 = self._row_norms2(self._codes)
        return self._norms2

    def reconstruct(self, ids=None) -> NDArray[np.float32]:
        """Decoded vectors ``L[ids] R`` (for ``"cosine"``, of the unit-normalised inputs).

        Parameters
        ----------
        ids : array-like of int, default=None
            Vector ids; all vectors when None.

        Returns
        -------
        ndarray of shape (len(ids), dim), float32
        """
        self._require_built("reconstruct")
        if ids is None:
            rows = self._codes
        else:
            ids = np.asarray(ids)
            if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
                raise ValueError(f"ids must be a 1-D array of integer ids, got shape {ids.shape}, dtype {ids.dtype}")
            if ids.size and (ids.min() < 0 or ids.max() >= self.ntotal):
                bad = ids[(ids < 0) | (ids >= self.ntotal)][0]
                raise IndexError(f"ids must be in [0, {self.ntotal - 1}], got {bad}")
            rows = self._codes[ids.astype(np.int64)]
        R = self._shared_factor()
        out = np.empty((rows.shape[0], self.dim), np.float32)
        for s in range(0, rows.shape[0], _BLOCK_ROWS):
            out[s : s + _BLOCK_ROWS] = self._decode_rows(rows[s : s + _BLOCK_ROWS]) @ R
        return out

    # ---------------------------------------------------------------- search
    def search(self, Q, k: int, *, mode: str = "factored") -> SearchResult:
        """The ``k`` nearest stored vectors of each query.

        Parameters
        ----------
        Q : array-like of shape (n_queries, dim)
            Queries, full precision.
        k : int
            Neighbours per query, >= 1; results past ``len(self)`` are padded.
        mode : {"factored", "reconstructed"}, default="factored"
            ``"factored"`` scores ``L (R q)`` from the codes in blocks, never
            forming the float n x dim matrix; ``"reconstructed"`` decodes all
            vectors once (cached until the next ``add``) into a faiss flat index.
            Both return the same neighbours up to float rounding.

        Returns
        -------
        SearchResult
            ``(distances, indices)``, float32 and int64, shape (n_queries, k).
        """
        k = check_int(k, "k", low=1)
        mode = check_choice(mode, "mode", SEARCH_MODES)
        self._require_built("search")
        Q = self._prepare(Q, "queries")
        kk = min(k, self.ntotal)
        if mode == "reconstructed":
            D, I = self._search_flat(Q, kk)
        else:
            D, I = self._search_factored(Q, kk)
        return SearchResult(*_pad(D, I, k, self.metric))

    def _search_flat(self, Q, k):
        if self._flat is None:
            Xr = self.reconstruct()
            if self.metric == "cosine":
                Xr = _normalize_rows(Xr)
            flat = faiss.IndexFlatL2(self.dim) if self.metric == "l2" else faiss.IndexFlatIP(self.dim)
            flat.add(Xr)
            self._flat = flat
        return self._flat.search(Q, k)

    def _search_factored(self, Q, k):
        """Blockwise maximum inner product over augmented code rows.

        With ``l = lo + c * step`` (c the codes) and ``p = R q``:
        ``<x_hat, q> = c . (step * p) + lo . p``. For l2 the score to maximise is
        ``2 <x_hat, q> - ||x_hat||^2``, for cosine ``<x_hat, q> / ||x_hat||``;
        both are inner products of ``[c, extra]`` rows with augmented queries.
        """
        R = self._shared_factor()
        P = R @ Q.T  # (rank, nq)
        nq, m = len(Q), self._rank
        width = _decoded_width(self.bits_l, m)  # >= m; padding codes decode to 0
        extra = 0 if self.metric == "ip" else 1
        Zq = np.zeros((nq, width + extra), np.float32)
        # per-column levels, or one level pair for the whole matrix ("minmax")
        step = np.broadcast_to(self._lq.step, (m,))
        lo = np.broadcast_to(self._lq.lo, (m,))
        Zq[:, :m] = (step[:, None] * P).T
        const = (lo @ P).astype(np.float32)  # (nq,)
        if self.metric == "l2":
            Zq[:, :m] *= 2
            Zq[:, width] = -1
            shift = 2 * const
        elif self.metric == "ip":
            shift = const
        else:
            Zq[:, width] = const
            shift = np.zeros_like(const)
        norms = self._norms() if self.metric != "ip" else None
        buf = np.empty((min(_BLOCK_ROWS, self.ntotal), width + extra), np.float32)
        tops = [_TopK(len(Zq[q : q + _QUERY_CHUNK]), k) for q in range(0, nq, _QUERY_CHUNK)]
        for s in range(0, self.ntotal, _BLOCK_ROWS):
            packed = np.asarray(self._codes[s : s + _BLOCK_ROWS])
            C = buf[: len(packed)]
            _decode_codes_into(packed, self.bits_l, m, C[:, :width])
            if self.metric == "l2":
                C[:, width] = norms[s : s + len(C)]
            elif self.metric == "cosine":
                inv = 1.0 / np.sqrt(np.maximum(norms[s : s + len(C)], 1e-30))
                C[:, :width] *= inv[:, None]
                C[:, width] = inv
            for j, top in enumerate(tops):
                q = j * _QUERY_CHUNK
                top.add(Zq[q : q + _QUERY_CHUNK] @ C.T, s)
        best_D = np.vstack([t.D for t in tops])
        best_I = np.vstack([t.I for t in tops])
        best_D = best_D + shift[:, None]
        if self.metric == "l2":
            qn = np.einsum("ij,ij->i", Q, Q)
            best_D = np.maximum(qn[:, None] - best_D, 0)
        return best_D.astype(np.float32), best_I

    # ----------------------------------------------------------- persistence
    def _header(self, n, rank, n_build, n_clipped, *, encoder=None, fit_error=None) -> dict:
        encoder = self.encoder if encoder is None else encoder
        fit_error = self.fit_error if fit_error is None else fit_error
        return {
            "format": "lplr-index",
            "library_version": __version__,
            "settings": {
                "dim": self.dim,
                "bits_per_coordinate": self.budget,
                "rank": rank,
                "bits_l": self._bits_l_setting,
                "bits_r": self.bits_r,
                "metric": self.metric,
                "quantizer": self.quantizer,
                "refine_iters": self.refine_iters,
                "seed": self.seed,
            },
            "bits_l_used": self.bits_l,
            "encoder": encoder,
            # fixed width, so the header size (and the budget) does not depend on the value
            "fit_error": f"{fit_error:.6e}",
            "ntotal": n,
            "n_build": n_build,
            "n_clipped": n_clipped,
        }

    def save(self, path: str | os.PathLike) -> int:
        """Write the index to ``path`` atomically (temporary file, then rename).

        The same data, settings and seed give a byte-identical file on the same
        machine with the same number of BLAS threads (float sums are split
        across threads, so other thread counts can round the last bits apart).

        Returns
        -------
        int
            Bytes written, equal to :attr:`nbytes`.
        """
        self._require_built("save")
        arrays = {
            "l_codes": np.asarray(self._codes),
            "l_lo": self._lq.lo,
            "l_hi": self._lq.hi,
            "r_codes": self._rcodes,
            "r_lo": self._rq.lo,
            "r_hi": self._rq.hi,
        }
        header = self._header(self.ntotal, self._rank, self._n_build, self.n_clipped)
        return write_container(path, header, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, *, mmap: bool = False) -> "LPLRIndex":
        """Read an index written by :meth:`save`.

        Parameters
        ----------
        path : str or path-like
        mmap : bool, default=False
            Map the per-vector codes read-only from the file instead of reading
            them (the file is still read once to verify its checksums).

        Raises
        ------
        IndexFileError
            The file is missing, not an index, truncated, damaged, or from a
            newer format version; the message names the file.
        """
        header, arrays, _version = read_container(path, mmap=mmap)
        try:
            if header.get("format") != "lplr-index":
                raise ValueError(f"format is {header.get('format')!r}, expected 'lplr-index'")
            s = header["settings"]
            index = cls(
                s["dim"],
                bits_per_coordinate=s["bits_per_coordinate"],
                rank=None if s["bits_per_coordinate"] is not None else s["rank"],
                bits_l=s["bits_l"],
                bits_r=s["bits_r"],
                metric=s["metric"],
                quantizer=s["quantizer"],
                refine_iters=s["refine_iters"],
                seed=s["seed"],
            )
            index.bits_l = check_bits(header["bits_l_used"], "bits_l_used")
            index.encoder = check_choice(header["encoder"], "encoder", ("sketch", "pinv"))
            index.fit_error = float(header["fit_error"])
            rank = check_int(s["rank"], "rank", low=1, high=index.dim)
            n = check_int(header["ntotal"], "ntotal", low=1)
            index._rank = rank
            index._n_build = check_int(header["n_build"], "n_build", low=1, high=n)
            index.n_clipped = check_int(header["n_clipped"], "n_clipped", low=0)
            expected = index._arrays_meta(n, rank)
            if set(arrays) != set(expected):
                raise ValueError(f"arrays {sorted(arrays)} differ from the expected {sorted(expected)}")
            for name, meta in expected.items():
                if arrays[name].shape != meta.shape or arrays[name].dtype != meta.dtype:
                    raise ValueError(
                        f"array {name!r} has shape {arrays[name].shape} and dtype {arrays[name].dtype}, "
                        f"expected {meta.shape} and {meta.dtype}"
                    )
            for part in ("l", "r"):
                lo, hi = arrays[f"{part}_lo"], arrays[f"{part}_hi"]
                if not (np.isfinite(lo).all() and np.isfinite(hi).all() and (hi >= lo).all()):
                    raise ValueError(f"quantizer levels of {part.upper()} are not finite and ordered")
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise IndexFileError(f"{path}: damaged or inconsistent header ({exc})") from None
        index._lq = Quantizer(index.quantizer, index.bits_l, np.array(arrays["l_lo"]), np.array(arrays["l_hi"]))
        index._rq = Quantizer(index.quantizer, index.bits_r, np.array(arrays["r_lo"]), np.array(arrays["r_hi"]))
        index._rcodes = np.array(arrays["r_codes"])
        index._codes = arrays["l_codes"] if mmap else np.array(arrays["l_codes"])
        return index


def _decoded_width(bits: int, m: int) -> int:
    """Columns of a decoded code block: whole bytes for 1/2/4-bit codes, else m."""
    if bits in (1, 2, 4):
        return packed_nbytes(m, bits) * (8 // bits)
    return m


def _decode_codes_into(packed: np.ndarray, bits: int, m: int, out: np.ndarray) -> None:
    """Write the codes of packed rows as float32 into ``out`` (rows, _decoded_width)."""
    if bits == 8:
        out[...] = packed
    elif bits in (1, 2, 4):
        # code j of byte b sits in column b * per + j: one strided cast per position
        per = 8 // bits
        mask = np.uint8((1 << bits) - 1)
        tmp = np.empty_like(packed)
        for j in range(per):
            np.right_shift(packed, np.uint8(j * bits), out=tmp)
            np.bitwise_and(tmp, mask, out=tmp)
            out[:, j::per] = tmp
    else:
        out[...] = _unpack(packed, bits, m)


class _TopK:
    """Running k largest scores per query over blocks of database rows.

    Scores come as dense (n_queries, block) matrices from one BLAS product.
    Once k results are held, only the scores above each query's current k-th
    best are gathered (one vectorized comparison), so selecting costs about
    one pass over the scores instead of a heap operation per score. Earlier
    (lower) ids win ties, as in a stable sort.
    """

    def __init__(self, nq: int, k: int):
        self.k = k
        self.D = np.full((nq, k), -np.inf, np.float32)
        self.I = np.full((nq, k), -1, np.int64)
        self.seen = 0

    def add(self, S: np.ndarray, start: int) -> None:
        if self.seen < self.k:
            # seed the threshold from a small prefix: exact top-k by sorting it
            c0 = min(S.shape[1], max(4 * self.k, 256))
            head = S[:, :c0]
            order = np.argsort(-head, axis=1, kind="stable")[:, : self.k]
            self._merge(np.take_along_axis(head, order, 1), order + start)
            self.seen += c0
            S, start = S[:, c0:], start + c0
            if S.shape[1] == 0:
                return
        self.seen += S.shape[1]
        qi, cols = np.nonzero(S > self.D[:, -1:])
        if len(qi) == 0:
            return
        counts = np.bincount(qi, minlength=S.shape[0])
        width = int(counts.max())
        pos = np.arange(len(qi)) - np.repeat(np.cumsum(counts) - counts, counts)
        CD = np.full((S.shape[0], width), -np.inf, np.float32)
        CI = np.full((S.shape[0], width), -1, np.int64)
        CD[qi, pos] = S[qi, cols]
        CI[qi, pos] = cols + start
        self._merge(CD, CI)

    def _merge(self, D: np.ndarray, I: np.ndarray) -> None:
        D = np.hstack([self.D, D])
        I = np.hstack([self.I, I])
        order = np.argsort(-D, axis=1, kind="stable")[:, : self.k]
        self.D = np.take_along_axis(D, order, 1)
        self.I = np.take_along_axis(I, order, 1)
