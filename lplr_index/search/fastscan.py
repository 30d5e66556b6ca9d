"""4-bit codes through faiss's fast-scan kernels, re-ranked exactly.

The per-vector codes of an index with 4-bit codes are a product quantizer of
its latent space: with scalar codes latent coordinate j is one sub-quantizer
with 16 centroids, the 16 levels of column j; with grouped codes
(:mod:`lplr_index.vq`) each group of g coordinates is one, its class's 16 x g
codebook zero-padded to the widest group (padding adds nothing to a distance);
groups with coarse and fine codes give fast-scan their coarse codes only, and
the re-rank scores the whole code. faiss's ``IndexPQFastScan`` scores such codes with
SIMD lookup tables (codes packed in blocks of 32 vectors; per-query tables
rounded to 8 bits; sums in 16 bits), 10-30 times faster per query than a BLAS
scan and without decoding anything.

The first stage returns ``rerank_factor * k`` candidates ranked by the latent
distance ``||p - l||^2`` with ``p = (q - mean) R^+`` (l2 and cosine) or by the
latent inner product ``l . p`` with ``p = q R^T`` (ip, exact up to the
per-query constant ``<q, mean>``). With an orthonormal shared factor (the
index's default, ``factor="orthonormal"``) the latent distance ranks exactly
like the distance to the decoded vector; otherwise it is an approximation.
Cosine similarity ``<q, x_hat> / ||x_hat||`` cannot be split over codes; the
distance of the unit query to ``x_hat`` ranks near neighbours almost alike
(measured: an inner-product first stage, which favours long ``x_hat``, lost
a fifth of the neighbours at 1 bit per coordinate), and the re-ranker computes
the exact cosine. Either way the candidates are re-scored exactly from their codes
(below), so the 8-bit table rounding only matters when a true neighbour falls
outside the candidates.

With an orthonormal shared factor (the index's default) the re-rank runs in
faiss too: an ``IndexRefine`` re-scores the candidates from a flat ``IndexPQ``
of the whole codes (4-bit, or 8-bit ``16 c + f`` per group for two-level
codes), whose per-query tables are the exact latent distances or products:
the same scores as the numpy re-ranker up to float rounding, with no decoding
in Python. Cosine, whose norms do not split over codes, gets the distance from
faiss and divides by the rows' norms (:func:`lplr_index.search.blas.row_norms2`,
4 bytes a row, computed at its first search). It costs a second copy of the
codes in faiss's memory (:meth:`FastScanScorer.nbytes`); measured, 1 thread,
batches of 222-500 queries, whole search: fortunes 2 b/c (two-level, 160
candidates) 83 -> 40 ms, BBC 4 b/c (two-level) 49 -> 12 ms, fortunes 0.5 b/c
16.6 -> 13.0 ms (l2); cosine fortunes 2 b/c 81 -> 48 ms, BBC 4 b/c 53 -> 20 ms.
Other factors and filtered searches re-rank with
:func:`lplr_index.search.blas.rerank`.

The packed codes are handed to faiss as they are (through an ``IndexPQ`` converted
to fast-scan's block layout), never decoded and re-encoded. faiss is imported here
only, when a fast-scan index is first built.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from .._common import recall_at_k
from ..packing import _unpack
from ..vq import KSUB
from . import blas
from .metrics import CodeView, prepare_queries, row_dots

#: code rows handed to faiss per block when building (each block's copy is released before the next)
_ADD_ROWS = 1 << 16
#: working set of one query chunk of a fast-scan search (:func:`in_query_chunks`): its candidates'
#: scores and ids (about 16 bytes each); a larger batch is searched in chunks, so the candidates
#: (``rerank_factor`` times the results, which the index caps) never take more
SEARCH_CHUNK_BYTES = 1 << 28


def in_query_chunks(search, Q: np.ndarray, depth: int):
    """``search(Q)`` of a batch whose queries hold ``depth`` candidates each, over chunks of
    queries whose candidates stay under :data:`SEARCH_CHUNK_BYTES`; the arrays it returns
    concatenated."""
    chunk = max(1, SEARCH_CHUNK_BYTES // (16 * int(depth)))
    if len(Q) <= chunk:
        return search(Q)
    parts = [search(Q[s : s + chunk]) for s in range(0, len(Q), chunk)]
    return tuple(np.concatenate(a) for a in zip(*parts))


def faiss_search(index, P: np.ndarray, k: int, params=None) -> tuple[np.ndarray, np.ndarray]:
    """``index.search(P, k, params=params)`` without faiss's Python wrapper (its checks and
    conversions; ``P`` is float32, C-contiguous, ``(n, index.d)``, as the scorers lay the
    queries out). Measured (10^6 x 384, 1 b/c, 1,024 lists, single queries through the whole
    search, both ways alternating in one process, 1 thread): 128.0 against 132.4 us at nprobe 1,
    177.3 against 185.4 us at nprobe 8."""
    import faiss

    P = np.ascontiguousarray(P, np.float32)  # (as given, when it is)
    if P.ndim != 2 or P.shape[1] != index.d:
        raise ValueError(f"queries for faiss must have shape (n, {index.d}), got {P.shape}")
    n = len(P)
    D, I = np.empty((n, k), np.float32), np.empty((n, k), np.int64)
    index.search_c(n, faiss.swig_ptr(P), k, faiss.swig_ptr(D), faiss.swig_ptr(I), params)
    return D, I


def supported(view: CodeView) -> bool:
    """Fast-scan needs 4-bit codes (scalar per column, or grouped)."""
    return view.encoder.lq.bits == 4


# ------------------------------------------- what the flat and the IVF fast-scan backends share
def pq_table(enc) -> np.ndarray:
    """The fast-scan product quantizer's centroids ``(M, 16, dsub)``, float32 contiguous: grouped
    codes' coarse centroids (groups of g latent coordinates zero-padded to the widest group), or
    each scalar column's 16 levels."""
    if enc.codec == "vq":
        table = enc.lq.table()
    else:
        m = enc.rank
        table = (np.broadcast_to(enc.lq.lo, (m,))[:, None] + (
            np.arange(16, dtype=np.float32)[None, :] * np.broadcast_to(enc.lq.step, (m,))[:, None]
        ))[:, :, None]
    return np.ascontiguousarray(table, np.float32)


def flat_codes(packed: np.ndarray, M: int) -> np.ndarray:
    """faiss's flat codes of packed rows: the first ``M`` codes (the coarse ones come first), whose
    nibble order (low nibble = even code) is faiss's; an odd ``M`` leaves a high nibble to clear."""
    if M % 2 == 0:
        return np.ascontiguousarray(packed[:, : M // 2])
    out = np.array(packed[:, : (M + 1) // 2])  # a copy: the view's codes stay as they are
    out[:, -1] &= np.uint8(0x0F)
    return out


def exact_index(enc, table: np.ndarray, M: int, d: int, metric):
    """An empty flat ``IndexPQ`` whose tables score the whole codes: fast-scan's 4-bit ``table``
    (flat), or for two-level codes 8 bits per group (centroid ``16 c + f``; one-level groups use
    their 16 first entries), zero-padded to the same sub-vectors.

    One-level codes of one coordinate each (an even ``M``, ``d == M``) are scored as ``M / 2``
    8-bit sub-quantizers of two coordinates, each code byte's two codes paired
    (:class:`ByteDecoder`'s table): the same bytes and values, read by faiss's 8-bit decoder
    instead of its generic one, for a table of ``M / 2 x 256`` entries instead of ``M x 16``.
    Measured (1 thread, single queries, the re-rank's time over fast-scan's alone, 20,000 rows
    of 92 random codes): 4.7 -> 4.0 us for 20 candidates, 11.3 -> 5.9 for 60, 30.0 -> 13.3 for
    160. Whole searches, old and new tables alternating in blocks in one process (two runs):
    ``k`` = 100 (200 candidates) 1.37-1.42x faster single queries and 1.39-1.62x batches at
    10^4 x 384, 1 b/c; 1.30-1.50x single queries at 10^6 in 1,024 lists, nprobe 1 (its batches
    re-score in numpy: :meth:`lplr_index.search.ivf.IVFScorer._rescore`). At ``k`` = 10 (20
    candidates) within the machine's noise (0.98-1.05x single queries, 0.99-1.15x batches,
    10^4 to 10^6 rows). Wider sub-vectors lose at 20 candidates (2 coordinates: 5.0 against 7.3
    us at 96 codes; 8: 3.1 against 28.1 at 50), and an odd ``M`` cannot pair: both keep the
    4-bit table."""
    import faiss

    if not (enc.codec == "vq" and enc.lq.two_level):
        if M % 2 == 0 and d == M:
            table, M, nbits = ByteDecoder(table, M).table.ravel(), M // 2, 8
        else:
            table, nbits = table, 4
    else:
        lq = enc.lq
        T = np.zeros((M, KSUB * KSUB, lq.dsub), np.float32)
        for cl in lq.classes():
            T[cl.c0 : cl.c0 + cl.count, : len(cl.centroids), : cl.g] = cl.centroids
        table, nbits = T.ravel(), 8
    pq = faiss.IndexPQ(d, M, nbits, metric)
    faiss.copy_array_to_vector(table, pq.pq.centroids)
    pq.is_trained = True
    return pq


class ByteDecoder:
    """4-bit codes decoded to fast-scan's sub-vectors with one table lookup per code byte
    (``np.take``): each byte's 256 values give its two sub-vectors side by side. An odd ``M``
    ends with a zero sub-quantizer, so the last byte's high nibble decodes to zeros (whatever it
    holds). Decodes what :func:`exact_index`'s ``sa_decode`` does (one-level codes), value for
    value, plus that zero sub-vector (:attr:`width`).

    Measured (20,000 rows of 92 4-bit codes, 1 b/c at 384-d, 1 thread, median of 9): faiss's
    ``sa_decode`` 7.3 ms, its 8-bit ``sa_decode`` of the same paired table 2.3 ms, this 1.1 ms.
    The row numbers are built as ``intp``: ``np.take`` converts narrower ones itself, which took
    3.3 against 0.96 ms for the 920,000 lookups (20,000 random rows of 46 bytes; 0.95 ms more to
    build them as ``intp``).

    Parameters
    ----------
    table : array-like of shape (M, 16, dsub) or its flat form
        The fast-scan table (:func:`pq_table`).
    M : int
        Codes a row.

    Attributes
    ----------
    table : ndarray of shape (ceil(M / 2) * 256, 2 * dsub), float32
    offsets : ndarray of shape (ceil(M / 2),), intp
        Each code byte's first row in ``table``.
    width : int
        Columns of a decoded row: ``M * dsub``, one ``dsub`` more for an odd ``M``.
    """

    def __init__(self, table, M: int):
        t = np.asarray(table, np.float32).reshape(M, KSUB, -1)
        if M % 2:
            t = np.concatenate([t, np.zeros((1,) + t.shape[1:], np.float32)])
        v = np.arange(KSUB * KSUB)
        T = np.concatenate([t[0::2][:, v % KSUB], t[1::2][:, v // KSUB]], axis=2)
        n_bytes, _, w = T.shape
        self.table = np.ascontiguousarray(T.reshape(n_bytes * KSUB * KSUB, w))
        self.offsets = np.arange(n_bytes, dtype=np.intp) * (KSUB * KSUB)
        self.width = n_bytes * w

    def decode(self, packed: np.ndarray) -> np.ndarray:
        """Decoded rows ``(len(packed), width)`` float32 of packed code rows (uint8, at least
        ``ceil(M / 2)`` bytes: the rest is not read)."""
        rows = packed[:, : len(self.offsets)].astype(np.intp)
        rows += self.offsets
        return np.take(self.table, rows, axis=0).reshape(len(rows), self.width)

    @property
    def nbytes(self) -> int:
        return int(self.table.nbytes + self.offsets.nbytes)


def decoder_nbytes(M: int, dsub: int) -> int:
    """:attr:`ByteDecoder.nbytes` of ``M`` codes of ``dsub`` coordinates."""
    n_bytes = (M + 1) // 2
    return 4 * KSUB * KSUB * n_bytes * 2 * dsub + np.dtype(np.intp).itemsize * n_bytes


def flat_view(index, codes) -> bool:
    """Make the flat faiss ``index`` (an ``IndexFlatCodes``) read ``codes`` where they lie, no
    copy: a view (faiss's ``MaybeOwnedVector``, as faiss's own memory-mapped loading makes), which
    ``codes`` must outlive and never be written through. True when it could: uint8 rows of
    exactly the index's ``code_size`` bytes, C-contiguous (memory-mapped is fine); False leaves
    the index as it was, as does a faiss whose Python module has no views
    (``MaybeOwnedVectorUInt8``: faiss 1.11 on; 1.10 has none, its flat codes are copied).
    Nothing may be added to the index afterwards (faiss refuses to grow a view)."""
    import faiss

    view_type = getattr(faiss, "MaybeOwnedVectorUInt8", None)
    if (view_type is None or not isinstance(codes, np.ndarray) or codes.dtype != np.uint8 or codes.ndim != 2
            or codes.shape[1] != int(index.code_size) or not codes.flags.c_contiguous):
        return False
    held = view_type()
    if codes.size:
        ptr = faiss.swig_ptr(codes)
        held.is_owned, held.view_data, held.view_size, held.c_ptr, held.c_size = False, ptr, codes.size, ptr, codes.size
    index.codes = held
    index.ntotal = len(codes)
    return True


def exact_codes(enc, packed: np.ndarray, M: int) -> np.ndarray:
    """:func:`exact_index`'s codes of packed rows."""
    if not (enc.codec == "vq" and enc.lq.two_level):
        return flat_codes(packed, M)
    lq = enc.lq
    codes = _unpack(packed, 4, lq.n_codes)
    out = np.empty((len(codes), lq.n_coarse), np.uint8)
    for cl in lq.classes():
        out[:, cl.c0 : cl.c0 + cl.count] = cl.index(codes)
    return out


#: multiply-adds under which OpenBLAS runs a product on one thread (its
#: ``GEMM_MULTITHREAD_THRESHOLD`` 4 x ``SMP_THRESHOLD_MIN`` 65,536): a batch whose projection
#: is smaller is projected by numpy, a larger one by faiss (:class:`Projection`)
SMALL_PRODUCT = 1 << 18


def pad_positions(enc) -> tuple[np.ndarray, np.ndarray] | None:
    """Grouped codes: where each latent coordinate sits in fast-scan's padded sub-vector layout
    ``(padded columns, latent columns)``; None where the layout is the latent row itself (scalar
    codes, or groups all of one size)."""
    if enc.codec != "vq":
        return None
    row = enc.lq.pad(np.arange(1, enc.rank + 1, dtype=np.float32)[None, :])[0]
    if len(row) == enc.rank and np.array_equal(row, np.arange(1, enc.rank + 1)):
        return None
    pos = np.flatnonzero(row)
    return pos, row[pos].astype(np.int64) - 1


class Projection:
    """Queries to fast-scan's sub-vector layout: centred queries (l2, cosine) or queries (ip)
    times ``R^T`` (``dim x rank``), then zero-padded to faiss's sub-vectors where groups of
    several sizes share them (a scatter; the padding is not multiplied: a layout of groups of
    1 and 8 coordinates is up to 8 times wider than the rank).

    Small batches (under :data:`SMALL_PRODUCT` multiply-adds: single queries and a few) are
    projected by numpy, on one BLAS thread: faiss's ``LinearTransform`` costs more per call
    from Python (measured, 1 thread, faiss's OpenBLAS on this CPU's kernels,
    :mod:`lplr_index._faiss`: 1 x 384 -> 88, 5.8 against 3.1 us; 8 queries 19.3 against 7.3;
    64 queries 46 against 38; on its generic kernels, 64 queries took 177 against 50). Larger
    batches are projected by faiss, on faiss's OpenMP threads: numpy's BLAS
    threads, still spinning after its product while faiss's threads scan, made 2-thread
    searches slower than 1-thread ones on this 2-core machine (fortunes, 0.5 b/c, 1,000
    queries, numpy BLAS and faiss at 2 threads: 27.0 ms with numpy's projection, 14.1 ms with
    faiss's; both at 1 thread 21.7 / 21.3 ms). The faiss transform is made at the first large
    batch, under a lock, and never changed.
    """

    def __init__(self, enc):
        self.matrix = np.ascontiguousarray(enc.RT, np.float32)  # (dim, rank)
        self._enc = enc
        self._pinv = None  # R^+ of a factor whose rows are not orthonormal (:meth:`least_squares`)
        self._pad = pad_positions(enc)
        self.width = enc.rank if self._pad is None else int(enc.lq.n_coarse * enc.lq.dsub)
        self._lt = None
        self._lock = threading.Lock()

    def __call__(self, Qc: np.ndarray) -> np.ndarray:
        """``Qc`` (float32, C-contiguous, centred where the metric is) projected: ``(nq, width)``."""
        return self.lay_out(Qc @ self.matrix if len(Qc) * self.matrix.size < SMALL_PRODUCT
                            else self._faiss().apply(Qc))

    def lay_out(self, Z: np.ndarray) -> np.ndarray:
        """Latent rows ``(n, rank)`` as faiss's sub-vectors ``(n, width)``, float32 contiguous."""
        if self._pad is None:
            return np.ascontiguousarray(Z, np.float32)
        out = np.zeros((len(Z), self.width), np.float32)
        out[:, self._pad[0]] = Z[:, self._pad[1]]
        return out

    def after_fork(self) -> None:
        """A new lock in a forked child (one another thread of the parent held stays held)."""
        self._lock = threading.Lock()

    def least_squares(self) -> np.ndarray:
        """``R^+`` (dim x rank): least-squares latent coordinates of a (centred) query; ``R^T``
        for orthonormal rows."""
        pinv = self._pinv
        if pinv is None:  # built, then published: two racing searches may both build it, alike
            enc = self._enc
            pinv = enc.RT if enc.orthonormal else np.linalg.pinv(enc.R.astype(np.float64)).astype(np.float32)
            self._pinv = pinv
        return pinv

    def _faiss(self):
        lt = self._lt
        if lt is None:
            import faiss

            with self._lock:
                lt = self._lt
                if lt is None:
                    d, w = self.matrix.shape
                    lt = faiss.LinearTransform(d, w, False)
                    faiss.copy_array_to_vector(np.ascontiguousarray(self.matrix.T).ravel(), lt.A)
                    lt.is_trained = True
                    self._lt = lt
        return lt

    def nbytes(self) -> int:
        """Bytes held: the matrix, and faiss's copy once made."""
        return self.matrix.nbytes * (1 if self._lt is None else 2)


def projection_nbytes(dim: int, rank: int, n_queries: int) -> int:
    """:meth:`Projection.nbytes` after a first search of ``n_queries`` queries: the
    ``dim x rank`` float32 matrix, twice once faiss projects the batch."""
    return 4 * dim * rank * (2 if n_queries * dim * rank >= SMALL_PRODUCT else 1)


def query_offsets(view: CodeView, Q: np.ndarray, Qc: np.ndarray, P: np.ndarray) -> np.ndarray:
    """What turns faiss's re-rank scores of prepared queries ``Q`` into the index's, ``(nq, 1)``
    float32: ip, the inner product with the mean (faiss scores ``<p, z>``); l2,
    ``||q - mean||^2 - ||p||^2``, the part of the centred query ``Qc`` outside R's row space
    (faiss scores ``||p - z||^2``, and ``||q - x_hat||^2 = ||q - mean||^2 - ||p||^2 +
    ||p - z||^2`` with R's rows orthonormal); cosine, ``||q||^2 - (||q - mean||^2 - ||p||^2)``
    (:func:`finish_refined`). Computed before the scan, on warm caches."""
    if view.metric == "ip":  # row by row, not numpy's BLAS threads (see Projection)
        return row_dots(Q, view.encoder.mean)[:, None]
    off = row_dots(Qc, Qc)
    off -= row_dots(P, P)
    if view.metric == "cosine":
        off = row_dots(Q, Q) - off
    return off[:, None]


def finish_refined(view: CodeView, Q: np.ndarray, off: np.ndarray, Dr: np.ndarray, cand: np.ndarray, keep: int,
                   norms2: np.ndarray | None):
    """``(D, I, short)`` from faiss's re-rank of the candidates (``Dr``: the latent distances
    or inner products of the projected queries to the ``cand`` rows' whole codes, sorted;
    ``off``: :func:`query_offsets`; faiss puts the -1 past the rows found last, which marks a
    query short). Shared by the exhaustive and the partitioned fast-scan
    searches.

    After a scan of more codes than the CPU's caches hold, every Python and numpy call here
    runs on cold caches (measured at 10^5 x 384, 1 b/c, one query: 40 us for the 12 calls this
    function made before, about as much as faiss's re-rank), so l2 and ip make few: the
    results are views of faiss's arrays, shifted in place."""
    short = cand[:, -1] < 0
    if view.metric != "cosine":
        D, I = Dr[:, :keep], cand[:, :keep]
        D += off
        if view.metric == "l2":
            np.maximum(D, 0, out=D)
        if np.count_nonzero(short):  # faiss scores the missing with -+FLT_MAX, the index with -+inf
            D[I < 0] = np.inf if view.metric == "l2" else -np.inf
        return D, I, short
    # cosine: ||q - x_hat||^2 as for l2, so <q, x_hat> = (||q||^2 + ||x_hat||^2 - ||q - x_hat||^2) / 2,
    # over ||x_hat||; every candidate scored, the keep best kept (faiss sorted them by distance)
    n2 = np.asarray(norms2)[np.maximum(cand, 0)]
    with np.errstate(over="ignore"):  # a missing candidate's FLT_MAX may overflow: scored -inf below
        S = np.where(cand >= 0, cosines(off, n2, Dr), -np.inf)
    D, I = blas.select(view, Q, S, cand, keep)
    return D, I, short


def cosines(off, n2, Dr):
    """Each candidate's cosine with its query from faiss's latent distance ``Dr``, the row's squared
    norm ``n2`` and the query's cosine offset ``off`` (:func:`query_offsets`):
    ``<q, x_hat> / ||x_hat||``, ``<q, x_hat> = (off + ||x_hat||^2 - Dr) / 2``."""
    return 0.5 * (off + n2 - Dr) / np.sqrt(np.maximum(n2, 1e-30))


class RefiningScorer:
    """What the exhaustive (:class:`FastScanScorer`) and the partitioned
    (:class:`lplr_index.search.ivf.IVFScorer`) fast-scan scorers share: faiss's exact re-rank of
    their candidates, an ``IndexRefine`` over their fast-scan ``index`` and the flat codes
    ``exact`` (made once, under a lock, by the first search that needs it), fed the queries
    their ``project`` lays out."""

    def _lazy(self) -> None:
        """What searches build on first use: the IndexRefine (:meth:`_refined`)."""
        self._lock = threading.Lock()
        self._refine = None

    def after_fork(self) -> None:
        """New locks in a forked child (one another thread of the parent held stays held)."""
        self._lock = threading.Lock()
        self.project.after_fork()

    def _refined(self):
        """The ``IndexRefine`` over the fast-scan index and the flat codes (made once)."""
        got = self._refine
        if got is None:
            import faiss

            with self._lock:
                got = self._refine
                if got is None:
                    got = faiss.IndexRefine(self.index, self.exact)  # holds neither: self does
                    got.k_factor = 1.0
                    self._refine = got
        return got

    def _exact_is_view(self) -> bool:
        """Whether :attr:`exact` reads the view's codes where they lie (:meth:`_extend_exact`)."""
        return self.exact is not None and not getattr(self.exact.codes, "is_owned", True)  # (older faiss: no views)

    def _extend_exact(self, view: CodeView, start: int) -> None:
        """The re-rank's flat codes of ``view``'s rows, whose first ``start`` :attr:`exact`
        already holds: one-level codes are faiss's 4-bit flat codes as packed, so :attr:`exact`
        reads ``view.codes`` in place (:func:`flat_view`; a view is never grown: each new view
        gets its own); two-level codes (a byte per group) are converted and copied, ``start``
        onwards.

        The copy was a third copy of the codes in memory (beside the index's own and
        fast-scan's blocks): 46 MB at 10^6 x 384 and 1 b/c, 4.6 GB at 10^8."""
        if self.exact is None or self._exact_is_view() or self.exact.ntotal == 0:  # no copy to grow
            viewed = self._viewed_exact(view)
            if viewed is not None:
                self.exact = viewed
                return
            self.exact, start = self._exact_index(), 0  # a copy of every row
        for s in range(start, view.ntotal, _ADD_ROWS):
            self.exact.add_sa_codes(self._exact_codes(np.asarray(view.codes[s : s + _ADD_ROWS])))

    def _viewed_exact(self, view: CodeView):
        """A flat index (:meth:`_exact_index`) reading ``view``'s codes where they lie
        (:func:`flat_view`), or None: two-level codes, or codes faiss cannot read in place."""
        if self._two_level:
            return None
        exact = self._exact_index()
        return exact if flat_view(exact, view.codes) else None

    def _exact_copy(self):
        """:attr:`exact` for a copy of this scorer (:meth:`extended`): a copy of owned flat
        codes; None for a view (the copy views its own codes)."""
        import faiss

        return None if self.exact is None or self._exact_is_view() else faiss.clone_index(self.exact)

    def _exact_nbytes(self) -> int:
        """Bytes of flat codes :attr:`exact` holds itself (a view: none)."""
        return 0 if self.exact is None or self._exact_is_view() else int(self.exact.codes.size())

    def _search_refined(self, Q: np.ndarray, kc: int, keep: int, norms2: np.ndarray | None, scan=None):
        """Both stages for prepared queries ``Q`` (:func:`finish_refined`'s ``(D, I, short)``):
        ``scan(P, kc)`` gives the ``kc`` candidates of the projected queries ``P`` re-scored
        exactly and sorted, as faiss's ``IndexRefine`` does (the default; the partitioned
        search passes its own, with its lists and filter)."""
        view = self.view
        # (q - mean) R^T (l2, cosine) or q R^T (ip), centred in float32 as the re-ranker does,
        # in faiss's padded sub-vectors
        Qc = np.ascontiguousarray(Q if view.metric == "ip" else Q - view.encoder.mean, np.float32)
        P = self.project(Qc)
        off = query_offsets(view, Q, Qc, P)
        del Qc
        # every candidate re-scored and sorted (k = kc): the -1 past the rows found show short queries
        Dr, cand = faiss_search(self._refined(), P, int(kc)) if scan is None else scan(P, int(kc))
        return finish_refined(view, Q, off, Dr, cand, keep, norms2)

    def one(self, limit2: float, norms2: np.ndarray | None = None):
        """:meth:`_search_refined` of single queries, with the fewest numpy ufuncs and every name
        it reads bound once (made once a snapshot, :func:`lplr_index.search.router.search_one`):
        ``run(q, kc, keep, params=None, nprobe=0)`` for a float32, C-contiguous ``(1, dim)`` query
        gives ``(D, I)`` of its ``keep`` best of ``kc`` candidates, or None when ``q`` fails the
        check or faiss found fewer than ``kc`` (the caller then takes the general path, which
        names a bad query and handles short ones). ``params``: faiss's search parameters (a
        partitioned scorer's lists and filter, :meth:`lplr_index.search.ivf.IVFScorer._params`),
        whose lists it fills first where they wait. Cosine needs ``norms2``
        (:func:`lplr_index.search.blas.row_norms2`).

        The check: the query's sum of squares (ip, cosine) at most ``limit2``, which keeps every
        entry within ``sqrt(limit2)``; for l2 the centred query's, at most that bound less the
        mean's largest entry squared (``|q_i| <= ||q - mean|| + |mean_i|``), a sum it needs anyway.
        NaN and inf fail both.

        A query that follows another's scan finds the CPU's caches holding the scanned codes,
        not numpy's machinery: each ufunc then costs 5-30 times its warm time (measured after a
        scan of 10^5 x 94 codes: a subtraction 12 us, a 1 x 384 product 20, the query check's
        two reductions 15-35 us, against about 1 us warm). So the query's norms come from
        faiss (``fvec_norm_L2sqr``, a Python float each), not numpy, the offset is added to
        faiss's own distance array, and the names are bound once: the layers of calls and
        lookups around the same work cost 11-16 us a query at 10^4-10^5 (1 thread, blocks of
        300 single queries: a bare function 47.9 against 59.2 us at 10^4 x 384, 1 b/c, and
        229.3 against 245.5 us at 10^5); bound here, whole single-query searches took 1.04-1.15x
        less time than through the scorer's methods before (old and new code alternating in
        blocks in one process, two runs: 10^4 and 10^5 x 384 at 1 b/c, 10^4 at 2 b/c, cosine,
        10^4 with 0.1 % removed, 10^6 in 1,024 lists at nprobe 1)."""
        import faiss

        view = self.view
        metric = view.metric
        ref = self._refined()
        R, lay_out = self.project.matrix, (None if self.project._pad is None else self.project.lay_out)
        mean = np.ascontiguousarray(view.encoder.mean, np.float32)
        d = len(mean)
        sp, norm2, inner = faiss.swig_ptr, faiss.fvec_norm_L2sqr, faiss.fvec_inner_product
        probe = getattr(self, "_probe", None)  # a partitioned scorer fills the lists it probes first
        empty, f32, i64 = np.empty, np.float32, np.int64
        room = math.sqrt(limit2) - float(np.abs(mean).max(initial=0.0))
        bound = room * room if room > 0 else -1.0
        mp = sp(mean)

        def scan(P, kc, params, nprobe):
            if probe is not None and self._pending is not None:
                probe(P, nprobe)
            D, I = empty((1, kc), f32), empty((1, kc), i64)
            ref.search_c(1, sp(P), kc, sp(D), sp(I), params)
            return D, I

        def run(q, kc, keep, params=None, nprobe=0):
            if metric == "ip":
                if not norm2(sp(q), d) <= limit2:
                    return None
                Z = q @ R
                off = inner(sp(q), mp, d)
            else:
                if metric == "cosine":  # the unit query (a zero one stays zero, as prepare_queries leaves it)
                    qq = norm2(sp(q), d)
                    if not qq <= limit2:
                        return None
                    if qq > 0:
                        q = q / f32(math.sqrt(qq))
                qc = q - mean
                qq = norm2(sp(qc), d)
                if not qq <= (bound if metric == "l2" else limit2):
                    return None
                Z = qc @ R
                off = qq - norm2(sp(Z), Z.shape[1])
            D, I = scan(Z if lay_out is None else lay_out(Z), kc, params, nprobe)
            if I[0, -1] < 0:
                return None
            if metric == "cosine":  # as finish_refined: <q, x_hat> / ||x_hat||, the keep best
                S = cosines(norm2(sp(q), d) - off, norms2[I[0]], D[0])
                order = np.argsort(-S, kind="stable")[:keep]
                return np.clip(S[order], -1.0, 1.0)[None], I[:, order]
            D = D[:, :keep]
            D += off
            if metric == "l2" and D[0, 0] < 0:  # (ascending: the first is the least)
                np.maximum(D, 0, out=D)
            return D, I[:, :keep]

        return run


class FastScanScorer(RefiningScorer):
    """A faiss ``IndexPQFastScan`` over the codes of a :class:`CodeView`.

    Holds its own copy of the codes in faiss's packed block layout (the same
    size as the codes) and, where :attr:`refines`, the flat codes the exact
    second stage scores: the view's own rows, read in place, or for two-level
    codes a copy of a byte a group (:meth:`_extend_exact`, :meth:`nbytes`).
    Rows appended to the view later are added to a copy: :meth:`extended`.

    Thread safety: once constructed (or returned by :meth:`extended`) a scorer is
    never changed but for what it builds lazily, under its own lock and published
    whole: the IndexRefine and faiss's copy of the projection. Its faiss index runs
    faiss's default kernels (``implem`` 0: 12, heap, to 20 results; 13, reservoir,
    beyond), which nothing changes.

    The kernels: faiss's query-blocked ones (14 / 15) were measured against its defaults
    (1 thread, alternating rounds, faiss 1.15.1): slower in every case tried, single
    queries and batches of 1,000, 10 to 160 results. Fashion-MNIST 1 b/c (305
    sub-quantizers), 40 results: 1,000 queries 376 against 420 ms, one query 0.52 against
    0.68 ms; 10^5 x 384 synthetic at 4 b/c (190), 160 results: 464 against 535 ms and 0.59
    against 0.77 ms; at 1 b/c (94), 40 results, one query 0.27 against 0.36 ms.
    """

    def __init__(self, view: CodeView):
        import faiss

        if not supported(view):
            raise ValueError(
                f"fast-scan search needs 4-bit codes, this index has {view.encoder.lq.bits}-bit codes"
            )
        enc = view.encoder
        metric = faiss.METRIC_INNER_PRODUCT if view.metric == "ip" else faiss.METRIC_L2
        table = pq_table(enc)
        M, _, dsub = table.shape
        self._table = table.ravel()
        self._args = (M * dsub, M, 4, metric)
        self.index = None
        #: whether the re-rank runs in faiss (:meth:`search`): orthonormal rows, where the latent
        #: distance (product) is the exact score (cosine: with the rows' norms)
        self.refines = enc.orthonormal
        self._two_level = enc.codec == "vq" and enc.lq.two_level
        self.exact = None  # the flat IndexPQ of the whole codes the re-rank scores (_extend_exact)
        self.project = Projection(enc)  # queries to the sub-vector layout
        self._lazy()
        self.view = view
        self.ntotal = 0
        self.extend(view)

    def _packed(self, packed: np.ndarray) -> np.ndarray:
        """faiss's codes of packed rows (:func:`flat_codes`)."""
        return flat_codes(packed, self._args[1])

    def _append(self, packed: np.ndarray) -> None:
        """Add packed code rows without decoding them: an ``IndexPQ`` given the codes,
        converted to fast-scan's block layout and merged in."""
        import faiss

        pq = faiss.IndexPQ(*self._args)
        faiss.copy_array_to_vector(self._table, pq.pq.centroids)
        pq.is_trained = True
        pq.add_sa_codes(self._packed(packed))
        index = faiss.IndexPQFastScan(pq, 32)
        index.orig_codes = None  # a debugging pointer into pq's codes, freed below
        del pq
        if self.index is None:
            self.index = index
        else:
            self.index.merge_from(index)

    def _exact_index(self):
        """An empty flat ``IndexPQ`` scoring the whole codes (:func:`exact_index`)."""
        d, M, _, metric = self._args
        return exact_index(self.view.encoder, self._table, M, d, metric)

    def _exact_codes(self, packed: np.ndarray) -> np.ndarray:
        """:meth:`_exact_index`'s codes of packed rows."""
        return exact_codes(self.view.encoder, packed, self._args[1])

    def nbytes(self) -> int:
        """Bytes faiss holds for the search: fast-scan's blocks of the codes and, where it
        re-ranks, a flat copy of two-level codes (one-level codes are read in place) and the
        projection ``R`` (float32, made at the first search)."""
        held = int(self.index.codes.size()) + self._exact_nbytes()
        return held + (self.project.nbytes() if self.refines else 0)

    def extend(self, view: CodeView) -> None:
        """Add the rows of ``view`` past those already held, in place: only while this scorer
        is not shared (being made); a shared one is extended by :meth:`extended`."""
        self.view = view
        for s in range(self.ntotal, view.ntotal, _ADD_ROWS):
            self._append(np.asarray(view.codes[s : s + _ADD_ROWS]))
        if self.index is None:  # no rows yet
            self._append(np.zeros((0, view.codes.shape[1]), np.uint8))
        if self.refines:
            self._extend_exact(view, self.ntotal)
        self.ntotal = view.ntotal

    def extended(self, view: CodeView) -> "FastScanScorer":
        """A scorer of ``view``, whose first :attr:`ntotal` rows are this scorer's (after
        ``add``): a copy of faiss's indexes (``faiss.clone_index``, a copy of their blocks,
        nothing re-encoded) with the new rows added, so searches still running on this
        scorer never see its indexes change. The projection and the tables are shared
        (never changed)."""
        import faiss

        new = object.__new__(FastScanScorer)
        new.__dict__.update(self.__dict__)
        new._lazy()
        new.index = faiss.clone_index(self.index)
        new.exact = self._exact_copy()
        new.index.orig_codes = None
        new.extend(view)
        return new

    def codes_match(self, rows: int = 1024) -> bool:
        """Whether faiss holds exactly the view's codes (the coarse ones) for the first ``rows`` rows:
        its reconstruction is the table entries of those codes."""
        n = min(rows, self.ntotal)
        M = self._args[1]
        table = self._table.reshape(M, 16, -1)
        codes = _unpack(self._packed(np.asarray(self.view.codes[:n])), 4, M)
        want = table[np.arange(M)[None, :], codes].reshape(n, -1)
        return bool(np.array_equal(self.index.reconstruct_n(0, n), want))

    def candidates(self, Q: np.ndarray, kprime: int, p: np.ndarray | None = None) -> np.ndarray:
        """Ids (nq, kprime) of the first stage, best first; -1 where fewer exist.

        ``p``: the re-ranker's latent coordinates of the queries
        (:func:`lplr_index.search.blas.latent`), reused where they are this stage's
        (ip; l2 with orthonormal rows).
        """
        view = self.view
        enc = view.encoder
        if p is not None and (view.metric == "ip" or (view.metric == "l2" and enc.orthonormal)):
            P = p
        elif view.metric == "ip":
            P = prepare_queries(view, Q) @ enc.RT
        else:
            P = (prepare_queries(view, Q) - enc.mean) @ self.project.least_squares()
        _, I = faiss_search(self.index, self.project.lay_out(P), int(kprime))
        return I

    def search(self, Q: np.ndarray, kc: int, keep: int, norms2: np.ndarray | None = None):
        """Both stages: ``kc`` candidates per query re-scored exactly, the ``keep`` best.

        Returns ``(D, I, short)``: distances and row ids (nq, keep) as the index returns
        them (-1 past the rows found), and per query whether fast-scan found fewer than
        ``kc`` rows (its 16-bit sums saturate on extreme level spreads). ``norms2``:
        :func:`lplr_index.search.blas.row_norms2` of every row, which cosine's re-rank in
        faiss needs (without them cosine re-ranks in numpy).
        """
        return in_query_chunks(lambda q: self._search(q, kc, keep, norms2), Q, kc)

    def _search(self, Q: np.ndarray, kc: int, keep: int, norms2: np.ndarray | None):
        """:meth:`search` of one chunk of queries."""
        view = self.view
        Q = prepare_queries(view, Q)
        if not self.refines or (view.metric == "cosine" and norms2 is None):
            p = blas.latent(view, Q)  # both stages' query projection
            cand = self.candidates(Q, kc, p)
            D, I = blas.rerank(view, Q, cand, keep, p=p)
            return D, I, (cand < 0).any(axis=1)
        return self._search_refined(Q, kc, keep, norms2)


def first_stage_recall(encoder, codes: np.ndarray, metric: str, Q: np.ndarray, rows: np.ndarray,
                       nearest: np.ndarray, *, k: int, factor: int, multiple: int, chunk: int = 64
                       ) -> tuple[tuple[float, float], FastScanScorer]:
    """Recall k@k of the search of the codes at the re-rank depth ``factor * k``, and ``multiple``
    times deeper, among all rows.

    Rows ``rows`` of the codes query them (``Q``, their prepared vectors); ``nearest``
    holds their exact neighbours (at least ``k + 1`` per row, best first); each query
    row is left out of its own results and neighbours. Returns the two recalls and the
    scorer (to keep for the index's searches).
    """
    view = CodeView(encoder, codes, metric)
    scorer = FastScanScorer(view)
    n = view.ntotal
    kk = min(k + 1, n)  # one more: the query row finds itself
    depth, deep = min(n, factor * k + 1), min(n, multiple * factor * k + 1)
    own = np.asarray(rows)
    found = ([], [])  # the k best of the default depth, and of the deep one
    for s in range(0, len(Q), chunk):  # bounds the (chunk x deep) candidates
        q = Q[s : s + chunk]
        cand = scorer.candidates(q, deep)
        for got, c in zip(found, (cand[:, :depth], cand)):
            got.append(_others(blas.rerank(view, q, c, kk)[1], own[s : s + chunk], k))
    truth = _others(nearest, own, k)
    shallow, deeper = (recall_at_k(np.vstack(got), truth, k) for got in found)
    return (shallow, deeper), scorer


def _others(I: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` ids of each row of ``I`` other than that row's ``own`` id."""
    return np.stack([r[r != o][:k] for r, o in zip(I, own)])
