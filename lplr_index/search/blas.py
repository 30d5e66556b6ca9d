"""Exact scores from the codes with BLAS: the full scan and the re-ranker.

With scalar codes ``l = lo + c * step`` (``c`` the codes), ``x_hat = mean + l R``
and ``p = R q``: ``<x_hat, q> = <mean, q> + c . (step * p) + lo . p``; grouped
codes (:mod:`lplr_index.vq`) decode ``l`` by table lookups. The scan decodes
one block of codes at a time and scores it with one BLAS product, so the float
n x dim matrix is never formed; it serves every code width. The re-ranker
decodes only the candidate rows.
"""

from __future__ import annotations

import numpy as np

from ..packing import packed_nbytes
from .metrics import CodeView, finalize, prepare_queries
from .topk import TopK

BLOCK_ROWS = 1 << 14  # database rows decoded and scored per block
QUERY_CHUNK = 1024  # queries scored together (a score block is at most 64 MiB)
#: working set of one chunk of the re-rank (its decoded candidates): small enough to stay in
#: cache. Measured, 1 thread, 222-500 queries, cosine, 40 / 160 candidates, 2^18 / 2^20 / 2^22 /
#: 2^24 bytes: BBC 4 b/c (two-level) 10.0 / 8.3 / 8.5 / 15.4 ms and 46 / 30 / 44 / 58 ms,
#: fortunes 2 b/c (two-level) 17 / 13 / 13 / 16 and 72 / 47 / 44 / 60, Fashion-MNIST test
#: set 1 b/c 22 / 13 / 12 / 13 and 41 / 41 / 36 / 42
RERANK_BYTES = 1 << 22


def row_norms2(view: CodeView, start: int = 0, stop: int | None = None) -> np.ndarray:
    """``||x_hat_i - mean||^2`` (l2) or ``||x_hat_i||^2`` (ip, cosine) of rows ``start:stop``."""
    enc = view.encoder
    G = _gram(enc)
    stop = view.ntotal if stop is None else stop
    with_mean = view.metric != "l2" and bool(np.any(enc.mean))
    if with_mean:
        Rm = (enc.R @ enc.mean).astype(np.float32)
        mm = np.float32(enc.mean @ enc.mean)
    out = np.empty(stop - start, np.float32)
    for s in range(start, stop, BLOCK_ROWS):
        L = view.decode_latent(view.codes[s : min(s + BLOCK_ROWS, stop)])
        v = np.einsum("ij,ij->i", L if G is None else L @ G, L)
        if with_mean:
            v += 2 * (L @ Rm) + mm
        out[s - start : s - start + len(L)] = v
    return out


def _gram(enc) -> np.ndarray | None:
    """``R R^T`` (float32), or None when the rows are orthonormal (``R R^T = I``)."""
    if enc.orthonormal:
        return None
    R = enc.R.astype(np.float64)
    return (R @ R.T).astype(np.float32)


def _decoded_width(bits: int, m: int) -> int:
    """Columns of a decoded code block: whole bytes for 1/2/4-bit codes, else m."""
    if bits in (1, 2, 4):
        return packed_nbytes(m, bits) * (8 // bits)
    return m


def _decode_codes_into(packed: np.ndarray, bits: int, m: int, out: np.ndarray) -> None:
    """Write the integer codes of packed rows as float32 into ``out`` (rows, _decoded_width)."""
    from ..packing import _unpack

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


def scan(view: CodeView, Q: np.ndarray, k: int, *, norms2: np.ndarray | None = None,
         row_mask: np.ndarray | None = None):
    """Exact k best of every (allowed) row for each query.

    Parameters
    ----------
    view : CodeView
    Q : ndarray of shape (nq, dim), float32
        Raw queries (normalised here for cosine).
    k : int
        At most ``view.ntotal``.
    norms2 : ndarray of shape (ntotal,), float32, optional
        :func:`row_norms2` of all rows (computed here when None; l2 and cosine need it).
    row_mask : ndarray of shape (ntotal,), bool, optional
        Rows that may be returned; others are skipped.

    Returns
    -------
    D, I : ndarray of shape (nq, k), float32 and int64
        Distances as the index returns them; -1 / inf where fewer rows are allowed.
    """
    enc = view.encoder
    Q = prepare_queries(view, Q)
    metric = view.metric
    Qs = Q - enc.mean if metric == "l2" else Q
    P = enc.R @ Qs.T  # (rank, nq)
    nq, m, bits = len(Q), enc.rank, enc.lq.bits
    scalar = enc.codec == "scalar"  # integer codes scored directly; grouped codes are decoded
    width = _decoded_width(bits, m) if scalar else m  # >= m; padding codes decode to 0
    extra = 0 if metric == "ip" else 1
    Zq = np.zeros((nq, width + extra), np.float32)
    if scalar:
        # per-column levels, or one level pair for the whole matrix ("minmax")
        step = np.broadcast_to(enc.lq.step, (m,))
        lo = np.broadcast_to(enc.lq.lo, (m,))
        Zq[:, :m] = (step[:, None] * P).T
        const = (lo @ P).astype(np.float32)  # (nq,)
    else:
        Zq[:, :m] = P.T
        const = np.zeros(nq, np.float32)
    if metric != "l2":
        const = const + (Q @ enc.mean).astype(np.float32)
    if metric == "l2":
        Zq[:, :m] *= 2
        Zq[:, width] = -1
        shift = 2 * const
    elif metric == "ip":
        shift = const
    else:
        Zq[:, width] = const
        shift = np.zeros_like(const)
    if metric != "ip" and norms2 is None:
        norms2 = row_norms2(view)
    n = view.ntotal
    buf = np.empty((min(BLOCK_ROWS, n), width + extra), np.float32)
    tops = [TopK(len(Zq[q : q + QUERY_CHUNK]), k) for q in range(0, nq, QUERY_CHUNK)]
    for s in range(0, n, BLOCK_ROWS):
        packed = np.asarray(view.codes[s : s + BLOCK_ROWS])
        C = buf[: len(packed)]
        if scalar:
            _decode_codes_into(packed, bits, m, C[:, :width])
        else:
            C[:, :width] = view.decode_latent(packed)
        if metric == "l2":
            C[:, width] = norms2[s : s + len(C)]
        elif metric == "cosine":
            inv = 1.0 / np.sqrt(np.maximum(norms2[s : s + len(C)], 1e-30))
            C[:, :width] *= inv[:, None]
            C[:, width] = inv
        mask = None if row_mask is None else row_mask[s : s + len(C)]
        if mask is not None and not mask.any():
            continue
        for j, top in enumerate(tops):
            q = j * QUERY_CHUNK
            S = Zq[q : q + QUERY_CHUNK] @ C.T
            if mask is not None:
                S[:, ~mask] = -np.inf
            top.add(S, s)
    S = np.vstack([t.D for t in tops]) + shift[:, None]
    I = np.vstack([t.I for t in tops])
    I = np.where(np.isfinite(np.vstack([t.D for t in tops])), I, -1)
    return finalize(view, Q, S, I)


def latent(view: CodeView, Q: np.ndarray) -> np.ndarray:
    """Latent coordinates of prepared queries as the exact scores use them (nq, rank) float32:
    ``(Q - mean) R^T`` (l2), ``Q R^T`` (ip, cosine)."""
    enc = view.encoder
    return (Q - enc.mean if view.metric == "l2" else Q) @ enc.RT


def exact_scores(view: CodeView, Q: np.ndarray, ids: np.ndarray, p: np.ndarray | None = None) -> np.ndarray:
    """Scores (larger is better) of candidate rows ``ids`` (nq, c) for prepared queries ``Q``.

    Decodes only those rows. Ids of -1 score ``-inf``. ``p``: :func:`latent` of ``Q`` when
    already computed.
    """
    enc = view.encoder
    valid = ids >= 0
    if p is None:
        p = latent(view, Q)
    L = view.decode_latent(view.codes[np.where(valid, ids, 0).ravel()])  # (nq*c, m)
    L = L.reshape(ids.shape + (enc.rank,))
    G = _gram(enc)
    lGl = np.einsum("qcm,qcm->qc", L if G is None else L @ G, L)
    if view.metric == "l2":
        S = 2 * np.einsum("qcm,qm->qc", L, p) - lGl
    else:
        S = np.einsum("qcm,qm->qc", L, p) + (Q @ enc.mean)[:, None]
        if view.metric == "cosine":
            Rm = enc.R @ enc.mean
            n2 = lGl + 2 * (L @ Rm) + enc.mean @ enc.mean
            S = S / np.sqrt(np.maximum(n2, 1e-30))
    return np.where(valid, S, -np.inf).astype(np.float32)


def rerank_chunk(enc, candidates: int) -> int:
    """Queries re-ranked together: their decoded float32 candidates about
    :data:`RERANK_BYTES`, 1 to 256 queries."""
    return chunk_for(candidates * 4 * enc.rank)


def chunk_for(per_query_bytes: int) -> int:
    """Queries per re-rank chunk for a working set of ``per_query_bytes`` a query."""
    return int(min(256, max(1, RERANK_BYTES // max(per_query_bytes, 1))))


def rerank(view: CodeView, Q: np.ndarray, ids: np.ndarray, k: int, *, chunk: int | None = None,
           p: np.ndarray | None = None):
    """Re-score candidate ids exactly from their codes and keep the k best.

    Parameters
    ----------
    Q : ndarray of shape (nq, dim), float32
        Raw queries.
    ids : ndarray of shape (nq, c), int64
        Candidates (-1 for none), c >= k.
    chunk : int, optional
        Queries scored together; None: :func:`rerank_chunk`.
    p : ndarray of shape (nq, rank), optional
        :func:`latent` of the prepared queries, when already computed.

    Returns
    -------
    D, I : ndarray of shape (nq, k)
    """
    Q = prepare_queries(view, Q)
    if p is None:
        p = latent(view, Q)
    nq = len(Q)
    if chunk is None:
        chunk = rerank_chunk(view.encoder, ids.shape[1])
    if nq <= chunk:
        S = exact_scores(view, Q, ids, p)
    else:
        S = np.empty(ids.shape, np.float32)
        for s in range(0, nq, chunk):  # bounds the (chunk, c, rank) decode
            S[s : s + chunk] = exact_scores(view, Q[s : s + chunk], ids[s : s + chunk], p[s : s + chunk])
    return select(view, Q, S, ids, k)


def select(view: CodeView, Q: np.ndarray, S: np.ndarray, ids: np.ndarray, k: int):
    """Keep the k best of scored candidates (ties: the earlier column) and finalize."""
    order = np.argsort(-S, axis=1, kind="stable")[:, :k]
    rows = np.arange(len(S))[:, None]  # (take_along_axis: 10 us more per call, a single query's re-rank)
    S, I = S[rows, order], ids[rows, order]
    I = np.where(np.isfinite(S), I, -1)
    return finalize(view, Q, S, I)
