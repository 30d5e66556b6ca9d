"""How one search runs over one snapshot: the mode, the filter and the path.

:func:`search` is what :meth:`LPLRIndex.search <lplr_index.LPLRIndex.search>` does once it
holds the current :class:`~lplr_index.snapshot.Snapshot`: it checks the arguments, turns the
``allowed`` filter and the tombstones into a mask over stored rows
(:func:`lplr_index.ids.allowed_rows`), picks the mode, runs one of the paths below on the
backends of :mod:`lplr_index.search` and maps rows to ids. Every path reads that snapshot
only (its codes, its derived structures), so a mutation committed meanwhile never shows:

- :func:`search_one`: a single query of an index re-ranked in faiss, with few numpy calls (it
  declines every other case, which the paths below take);
- :func:`exact_scan`: exact scores of the allowed rows with BLAS (``mode="factored"``, and
  every fallback of the others);
- :func:`search_fastscan`: fast-scan candidates re-ranked exactly, with the filtered
  variants :func:`refined_filtered` (most rows allowed: faiss re-ranks, the disallowed are
  dropped) and :func:`filtered_fastscan` (over-fetch, drop, re-rank), and
  :func:`search_ivf` for a partitioned snapshot;
- :func:`search_flat`: faiss's flat index of the decoded rows (``mode="reconstructed"``);
- :func:`rescore`: exact scores of the candidates against the caller's original vectors.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from numpy.typing import NDArray

from .._blocks import MAX_ABS, check_block, open_npy
from .._common import _normalize_rows
from .._threads import faiss_threads
from .._validation import check_choice, check_int
from ..ids import allowed_rows
from ..vq import TWO_LEVEL_RERANK_FACTOR
from . import blas, fastscan
from .metrics import CodeView, pad_results, prepare_queries

if TYPE_CHECKING:
    from ..settings import IndexSettings
    from ..snapshot import Snapshot

__all__ = ["SearchResult", "SEARCH_MODES", "DEFAULT_RERANK_FACTOR", "RERANK_FACTORS_TRIED", "MAX_RERANK_FACTOR", "MAX_RESULT_BYTES",
           "default_rerank_factor", "index_rerank_factor", "fastscan_ready", "search", "exact_scan", "search_fastscan", "search_ivf", "refined_filtered",
           "filtered_fastscan", "search_flat", "check_full", "rescore", "search_one"]


SEARCH_MODES = ("auto", "fastscan", "factored", "reconstructed")
#: candidates per result re-ranked after fast-scan (k' = factor * k); 4 reached exact-scan recall
#: within 0.005 at every setting tried (the script this comment named, bench_rerank.py, is not in
#: the repository's history); ``benchmarks/bench_rerank_depth.py`` measures the top-10 agreement
#: with the exact scan of the codes by depth (README, per-query cost by size)
DEFAULT_RERANK_FACTOR = 4
#: the factors a build tries (:func:`lplr_index.builder.measure_rerank_factor`), by the encoder's
#: default (:func:`default_rerank_factor`): up to it
RERANK_FACTORS_TRIED = {DEFAULT_RERANK_FACTOR: (2, 3, DEFAULT_RERANK_FACTOR),
                        TWO_LEVEL_RERANK_FACTOR: (4, 6, 8, 12, TWO_LEVEL_RERANK_FACTOR)}
#: cap on the (distances, ids) one search may return: n_queries * k * 12 bytes
MAX_RESULT_BYTES = 1 << 31
#: filtered fast-scan search: when fewer than this fraction of the stored rows
#: may be returned, the allowed rows are scanned exactly instead (measured in
#: the docstring of :func:`search_fastscan`)
FILTER_SCAN_FRACTION = 0.2
#: filtered fast-scan search fetches this many times ``k' / fraction allowed`` candidates
FILTER_OVERFETCH = 2.0
#: filtered fast-scan search with the faiss re-rank (orthonormal factor): from this fraction of
#: the rows allowed, ``k' / fraction`` candidates are re-ranked in faiss and the disallowed
#: dropped afterwards (measured in the docstring of :func:`search_fastscan`)
FILTER_REFINE_FRACTION = 0.8
#: a masked exact scan gathers the allowed rows first when at most this fraction is allowed
_GATHER_FRACTION = 0.5
#: :func:`search_one`'s check of a query: a sum of squares at most this puts every entry within
#: ``MAX_ABS`` (a quarter of its square: room for float32 rounding)
_ONE_NORM2_LIMIT = (MAX_ABS / 2) ** 2
#: the deepest ``rerank_factor`` a search takes (and a file may hold)
MAX_RERANK_FACTOR = 1 << 20


class SearchResult(NamedTuple):
    """``(distances, indices)`` of a search, each of shape (n_queries, k).

    ``distances`` is float32: squared L2 distances (ascending) for
    ``metric="l2"``, inner products or cosine similarities (descending) for
    ``"ip"`` and ``"cosine"``. ``indices`` is int64. Missing results (k larger
    than the index) are padded with ``inf`` (``-inf`` for similarities) and -1.
    """

    distances: NDArray[np.float32]
    indices: NDArray[np.int64]


def default_rerank_factor(encoder) -> int:
    """Fast-scan candidates per result when neither the caller nor the index's build
    (:attr:`Snapshot.rerank_factor <lplr_index.snapshot.Snapshot.rerank_factor>`) gives one, and
    the deepest a build tries: more when fast-scan scores the coarse half of two-level codes."""
    return TWO_LEVEL_RERANK_FACTOR if encoder.codec == "vq" and encoder.lq.two_level else DEFAULT_RERANK_FACTOR


def fastscan_ready(st: Snapshot | None, s: IndexSettings) -> bool:
    """Whether ``mode="auto"`` searches ``st`` with fast-scan (4-bit codes, orthonormal factor)."""
    return st is not None and st.encoder.lq.bits == 4 and s.factor == "orthonormal"


def index_rerank_factor(st: Snapshot) -> int:
    """The depth a search of ``st`` re-ranks when it names none: its build's measured one, or for
    files written before format version 6 the encoder's default."""
    return st.rerank_factor if st.rerank_factor is not None else default_rerank_factor(st.encoder)


def search(st: Snapshot, s: IndexSettings, Q, k: int, *, mode: str = "auto", rerank_factor: int | None = None,
           rescore_with=None, allowed=None, n_threads: int | None = None, nprobe: int | None = None) -> SearchResult:
    """:meth:`LPLRIndex.search <lplr_index.LPLRIndex.search>` over the snapshot ``st`` of an index
    with the settings ``s`` (the arguments as documented there, checked here)."""
    if (type(k) is int and k >= 1 and (mode == "auto" or mode == "fastscan") and rescore_with is None
            and allowed is None and n_threads is None
            and (rerank_factor is None or type(rerank_factor) is int and 1 <= rerank_factor <= MAX_RERANK_FACTOR)):
        got = search_one(st, s, Q, k, nprobe, rerank_factor)  # (every argument the general path checks, checked)
        if got is not None:
            return got
    k = check_int(k, "k", low=1)
    mode = check_choice(mode, "mode", SEARCH_MODES)
    factor = None if rerank_factor is None else check_int(rerank_factor, "rerank_factor", low=1, high=MAX_RERANK_FACTOR)
    if n_threads is not None:
        n_threads = check_int(n_threads, "n_threads", low=1, high=4096)
    if nprobe is not None:
        if s.nlist is None:
            raise ValueError(f"nprobe={nprobe!r}: this index has no partition (nlist=None): "
                             "build it with nlist=... to search lists")
        nprobe = check_int(nprobe, "nprobe", low=1, high=st.nlist or None)
    Q = check_block(Q, "queries", 0, s.dim)
    if Q.ndim != 2 or Q.shape[0] == 0:
        raise ValueError(f"queries must hold at least one row, got shape {Q.shape}")
    if len(Q) * k * 12 > MAX_RESULT_BYTES:
        raise ValueError(
            f"k={k} for {len(Q)} queries asks for {len(Q) * k * 12 / 2**30:.1f} GiB of results, above "
            f"the {MAX_RESULT_BYTES / 2**30:.0f} GiB one search may return (this index holds "
            f"{st.n_live} vectors: use k <= {st.n_live}, or fewer queries per call)"
        )
    full = None if rescore_with is None else check_full(st, rescore_with, s.dim)
    if factor is None:  # the build's measured depth; rescoring with the vectors: the encoder's default
        factor = index_rerank_factor(st) if full is None else default_rerank_factor(st.encoder)
    if mode == "auto":
        mode = "fastscan" if fastscan_ready(st, s) or st.nlist is not None else "factored"
    if mode == "fastscan" and st.encoder.lq.bits != 4:
        raise ValueError(
            f"mode='fastscan' needs 4-bit codes, this index has {st.encoder.lq.bits}-bit codes "
            "(use mode='factored' or 'auto')"
        )
    mask = allowed_rows(st, allowed)
    n_ok = st.n if mask is None else st.n_live if mask is st.live() else int(np.count_nonzero(mask))
    kk = min(k, n_ok)
    if kk == 0:
        return SearchResult(*pad_results(np.zeros((len(Q), 0)), np.zeros((len(Q), 0)), k, st.metric))
    kc = min(n_ok, max(kk, factor * kk)) if (mode == "fastscan" or full is not None) else kk
    with faiss_threads(n_threads):
        if mode == "fastscan":
            D, I = search_fastscan(st, Q, kc if full is not None else kk, kc, mask, n_ok, nprobe)
        elif mode == "reconstructed":
            D, I = search_flat(st, Q, kc, mask)
        else:
            D, I = exact_scan(st, Q, kc, mask, n_ok)
    if full is not None:
        D, I = rescore(full, Q, I, kk, st.metric)
    if st.ids is not None:
        I = np.where(I >= 0, st.ids[np.maximum(I, 0)], -1)
    return SearchResult(*pad_results(D, I, k, st.metric))


def search_one(st: Snapshot, s: IndexSettings, Q, k: int, nprobe, rerank_factor: int | None = None
               ) -> SearchResult | None:
    """:func:`search` of a single query in the common case, or None for any other (which
    :func:`search` then takes whole, checks and errors included): one row of the index's
    dimension (a float array), an index of 4-bit codes searched with fast-scan and re-ranked in
    faiss (orthonormal factor), ``k`` at most the live rows, no ``rescore_with``, ``allowed`` or
    ``n_threads``, and faiss finding every candidate; ``rerank_factor`` (checked by the caller)
    or the index's measured depth. Removed
    vectors are dropped as the general path drops them: inside faiss's scan of the lists (the
    snapshot's filter, :meth:`lplr_index.search.ivf.IVFScorer._params`), or from the exhaustive
    search's ``kc / fraction live`` candidates (:func:`refined_filtered`; from
    :data:`FILTER_REFINE_FRACTION` of the rows live).

    The same search with a fraction of the general path's numpy calls, its names bound once a
    snapshot (:meth:`lplr_index.search.fastscan.RefiningScorer.one`): after the previous query's
    scan each call costs 5-30 times its warm time. l2 and ip: the same ids, in the same order; the
    distances may differ from the general path's in the last bit (the query's squared norms are
    faiss's sums, not numpy's; each query's offset is one constant, so the order is faiss's
    either way). Cosine: the unit query's last bit may differ too, and each candidate's score
    divides by its own norm, so candidates whose cosines agree to about 1e-7 may swap. The
    query's check is one faiss sum of squares (l2: of the centred query): within
    :data:`_ONE_NORM2_LIMIT` every entry is within :data:`MAX_ABS`; anything else (non-finite,
    large) goes the general way, which names it.

    Measured (1 thread, 4 x 300 single queries, each timed in turn with the previous code's
    search and faiss's ``PQ{M}x4fs`` at the same bits, in one process): 10^4 x 384 at 1 b/c,
    81.1 us before, 58.6 us now, PQ fast-scan 33.9 us; 10^5 x 384, 359 / 313 / 272 us; 10^6
    rows in 1,024 lists, nprobe 1, 93.7 / 65.1 us.
    """
    if type(Q) is not np.ndarray or Q.shape != (1, s.dim) or Q.dtype.kind != "f":
        return None
    lane = st.derived("search_one", lambda: _one_lane(st, s))
    if lane is False or k > lane.n_live:
        return None
    if lane.nlist is None:
        if nprobe is not None:
            return None
    elif nprobe is None:
        nprobe = st.nprobe
    elif type(nprobe) is not int or not 1 <= nprobe <= lane.nlist:
        return None
    Q = np.ascontiguousarray(Q, np.float32)
    kc = min(lane.n_live, (lane.factor if rerank_factor is None else rerank_factor) * k)
    if lane.nlist is not None:  # the snapshot's filter inside faiss's scan of the lists
        params, refs = lane.scorer._params(nprobe, lane.live, refine=True)
        got = lane.run(Q, kc, k, params, nprobe)
        del refs  # the filter's bitmap and selector, alive until faiss has searched
    elif lane.live is None:
        got = lane.run(Q, kc, k)
    else:  # refined_filtered's candidates, the removed dropped
        kd = refine_depth(st.n, kc, lane.fraction)
        got = lane.run(Q, kd, kd)
        if got is not None:
            ok = lane.live[got[1][0]]
            if np.count_nonzero(ok) < k:
                return None
            got = got[0][:, ok][:, :k], got[1][:, ok][:, :k]
    if got is None:
        return None
    D, I = got
    return SearchResult(D, I if st.ids is None else st.ids[I])


class _Lane(NamedTuple):
    """What :func:`search_one` needs of a snapshot, made once (:func:`_one_lane`)."""

    scorer: object  # FastScanScorer or IVFScorer
    factor: int  # the re-rank depth (index_rerank_factor)
    nlist: int | None
    n_live: int
    live: np.ndarray | None  # the snapshot's live rows (Snapshot.live), None: nothing removed
    fraction: float  # of the rows live
    run: object  # the scorer's single-query function (RefiningScorer.one)


def _one_lane(st: Snapshot, s: IndexSettings):
    """:class:`_Lane` of a snapshot, or False where its single queries take the general path:
    codes fast-scan does not re-rank in faiss, or so many rows removed that the general path
    takes another way (:func:`search_fastscan`, :func:`search_ivf`)."""
    if st.encoder.lq.bits != 4 or st.n == 0:
        return False
    if st.nlist is None and not fastscan_ready(st, s):
        return False
    if st.nlist is not None and st.nprobe is None:  # no default nprobe: the general path decides
        return False
    fraction = st.n_live / st.n
    if fraction < (FILTER_SCAN_FRACTION if st.nlist is not None else FILTER_REFINE_FRACTION):
        return False
    scorer = st.fastscan() if st.nlist is None else st.ivf()
    if not scorer.refines:
        return False
    norms2 = st.norms2() if st.metric == "cosine" else None
    return _Lane(scorer, index_rerank_factor(st), st.nlist, st.n_live, st.live(), fraction,
                 scorer.one(_ONE_NORM2_LIMIT, norms2))


def exact_scan(st: Snapshot, Q, k: int, mask, n_ok: int):
    """Exact k best rows of the allowed rows (``mask``; all when None) with BLAS."""
    norms2 = st.norms2() if st.metric != "ip" else None
    if mask is None or n_ok > _GATHER_FRACTION * st.n:
        return blas.scan(st.view, Q, k, norms2=norms2, row_mask=mask)
    # few rows allowed: gather their codes and scan only them
    rows = np.flatnonzero(mask)
    sub = CodeView(st.encoder, np.asarray(st.store.codes[rows]), st.metric)
    D, I = blas.scan(sub, Q, k, norms2=None if norms2 is None else norms2[rows])
    return D, np.where(I >= 0, rows[np.maximum(I, 0)], -1)


def search_fastscan(st: Snapshot, Q, keep: int, kc: int, mask, n_ok: int, nprobe: int | None = None):
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
    the disallowed are dropped afterwards (:func:`refined_filtered`): the numpy
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

    A partitioned snapshot searches its lists instead (:func:`search_ivf`).
    """
    if st.nlist is not None:
        return search_ivf(st, Q, keep, kc, mask, n_ok, st.nprobe if nprobe is None else nprobe)
    if mask is None:
        D, I, short = st.fastscan().search(Q, kc, keep, st.norms2() if st.metric == "cosine" else None)
        if np.count_nonzero(short):
            # fast-scan dropped rows (its 16-bit sums saturate on extreme level
            # spreads; seen on edited files): those queries get the exact scan
            D[short], I[short] = exact_scan(st, Q[short], keep, None, n_ok)
        return D, I
    frac = n_ok / st.n
    if frac < FILTER_SCAN_FRACTION:
        return exact_scan(st, Q, keep, mask, n_ok)
    kf = int(min(st.n, max(kc, np.ceil(FILTER_OVERFETCH * kc / frac))))

    def overfetch(q):
        return fastscan.in_query_chunks(lambda c: filtered_fastscan(st, c, keep, kc, kf, mask, n_ok), q, kf)

    if frac >= FILTER_REFINE_FRACTION and st.fastscan().refines:
        kd = refine_depth(st.n, kc, frac)  # about kc of them allowed
        return fastscan.in_query_chunks(lambda q: refined_filtered(st, q, keep, kd, mask, overfetch), Q, kd)
    return overfetch(Q)


def search_ivf(st: Snapshot, Q, keep: int, kc: int, mask, n_ok: int, nprobe: int):
    """The partitioned fast-scan search: ``kc`` candidates from the ``nprobe`` nearest lists
    (a filter, removed vectors included, applied inside faiss's scan), re-ranked exactly; the
    ``keep`` best. Queries whose probed lists held fewer than ``kc`` (allowed) candidates
    probe more lists (:meth:`lplr_index.search.ivf.IVFScorer.search_widening`); those still
    short get the exact scan of the allowed rows, as does every query when under
    :data:`FILTER_SCAN_FRACTION` of the rows are allowed (as the exhaustive path does)."""
    if mask is not None and n_ok / st.n < FILTER_SCAN_FRACTION:
        return exact_scan(st, Q, keep, mask, n_ok)
    norms2 = st.norms2() if st.metric == "cosine" else None
    D, I, short = st.ivf().search_widening(Q, kc, keep, nprobe=nprobe, norms2=norms2, allowed=mask)
    if np.count_nonzero(short):
        D[short], I[short] = exact_scan(st, Q[short], keep, mask, n_ok)
    return D, I


def refine_depth(n: int, kc: int, fraction: float) -> int:
    """Candidates faiss re-ranks for ``kc`` allowed ones when ``fraction`` of the ``n`` rows are
    allowed (:func:`refined_filtered`): ``kc / fraction``, within ``[kc, n]``."""
    return int(min(n, max(kc, math.ceil(kc / fraction))))


def refined_filtered(st: Snapshot, Q, keep: int, kd: int, mask, overfetch):
    """:func:`search_fastscan` with a filter that allows most rows (removed vectors, say),
    for one chunk of queries: faiss's fast-scan and exact re-rank of ``kd`` candidates,
    the disallowed dropped afterwards; queries left with fewer than ``keep`` allowed
    candidates get ``overfetch`` (:func:`filtered_fastscan` in query chunks)."""
    D, I, short = st.fastscan().search(Q, kd, kd, st.norms2() if st.metric == "cosine" else None)
    ok = (I >= 0) & mask[np.maximum(I, 0)]
    first = np.argsort(~ok, axis=1, kind="stable")[:, :keep]  # allowed first, in distance order
    D, I = np.take_along_axis(D, first, 1), np.take_along_axis(I, first, 1)
    redo = short | (np.count_nonzero(ok, axis=1) < keep)
    if redo.any():
        D[redo], I[redo] = overfetch(Q[redo])
    return D, I


def filtered_fastscan(st: Snapshot, Q, keep: int, kc: int, kf: int, mask, n_ok: int):
    """:func:`search_fastscan` with a filter, for one chunk of queries: ``kf`` candidates
    fetched, the allowed ones re-ranked."""
    p = blas.latent(st.view, prepare_queries(st.view, Q))
    cand = st.fastscan().candidates(Q, kf, p)
    cand = np.where((cand >= 0) & mask[np.maximum(cand, 0)], cand, -1)
    first = np.argsort(cand < 0, axis=1, kind="stable")[:, :kc]  # allowed first, in rank order
    D, I = blas.rerank(st.view, Q, np.take_along_axis(cand, first, 1), keep, p=p)
    short = (I < 0).any(axis=1)
    if short.any():
        D2, I2 = exact_scan(st, Q[short], keep, mask, n_ok)
        D[short], I[short] = D2, I2
    return D, I


def check_full(st: Snapshot, X, dim: int):
    """``rescore_with`` checked: one row of ``dim`` floats per stored row (a path: a ``.npy``, mapped)."""
    if isinstance(X, (str, os.PathLike)):
        X = open_npy(X, "rescore_with")
    if getattr(X, "ndim", None) != 2 or X.shape != (st.n, dim):
        raise ValueError(
            f"rescore_with must hold the {st.n} original vectors of dimension {dim} "
            f"in id order, shape ({st.n}, {dim}), got shape {getattr(X, 'shape', None)} "
            f"(one row per stored row, in row order: row i holds the vector of id index.ids[i])"
        )
    return X


def search_flat(st: Snapshot, Q, k: int, mask=None):
    """The ``k`` best allowed rows (``mask``; all when None) in faiss's flat index of the decoded rows."""
    import faiss

    flat = st.flat()
    if st.metric == "cosine":
        Q = _normalize_rows(Q)
    if mask is None:
        return flat.search(Q, k)
    bits = np.packbits(mask, bitorder="little")  # alive until the search returns
    params = faiss.SearchParameters(sel=faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits)))
    return flat.search(Q, k, params=params)


def rescore(full, Q: np.ndarray, I: np.ndarray, k: int, metric: str):
    """Exact scores of candidate ids against the original vectors; keep the k best."""
    valid = I >= 0
    flat = np.where(valid, I, 0).ravel()
    order = np.argsort(flat, kind="stable")  # read the rows in file order
    rows = np.empty((flat.size, Q.shape[1]), np.float32)
    rows[order] = check_block(np.asarray(full[flat[order]]), "rescore_with", 0, Q.shape[1])
    X = rows.reshape(I.shape + (Q.shape[1],))
    if metric == "cosine":
        X = _normalize_rows(X.reshape(-1, Q.shape[1])).reshape(X.shape)
        Q = _normalize_rows(Q)
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
