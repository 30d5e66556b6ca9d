"""Streaming top-k over blocks of scores, and merging of partial results."""

from __future__ import annotations

import numpy as np


class TopK:
    """Running k largest scores per query over blocks of database rows.

    Scores come as dense (n_queries, block) matrices from one BLAS product.
    Once k results are held, only the scores above each query's current k-th
    best are gathered (one vectorized comparison), so selecting costs about
    one pass over the scores instead of a heap operation per score. Earlier
    (lower) ids win ties, as in a stable sort. ``ids`` maps block columns to
    returned ids (default: the row number).
    """

    def __init__(self, nq: int, k: int):
        self.k = k
        self.D = np.full((nq, k), -np.inf, np.float32)
        self.I = np.full((nq, k), -1, np.int64)
        self.seen = 0

    def add(self, S: np.ndarray, start: int, ids: np.ndarray | None = None) -> None:
        """Offer scores ``S`` (nq, cols) of rows ``start .. start + cols`` (or of ``ids``)."""
        if ids is None:
            ids = np.arange(start, start + S.shape[1], dtype=np.int64)
        if self.seen < self.k:
            # seed the threshold from a small prefix: exact top-k by sorting it
            c0 = min(S.shape[1], max(4 * self.k, 256))
            head = S[:, :c0]
            order = np.argsort(-head, axis=1, kind="stable")[:, : self.k]
            self._merge(np.take_along_axis(head, order, 1), ids[order])
            self.seen += c0
            S, ids = S[:, c0:], ids[c0:]
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
        CI[qi, pos] = ids[cols]
        self._merge(CD, CI)

    def _merge(self, D: np.ndarray, I: np.ndarray) -> None:
        D = np.hstack([self.D, D])
        I = np.hstack([self.I, I])
        order = np.argsort(-D, axis=1, kind="stable")[:, : self.k]
        self.D = np.take_along_axis(D, order, 1)
        self.I = np.take_along_axis(I, order, 1)


def merge_results(parts, k: int, metric: str):
    """Merge per-shard ``(D, I)`` results (each best first) into the global top k.

    Parts are taken in shard order; among equal distances the earlier part
    (then the earlier column) wins, so the merge is deterministic.
    """
    D = np.hstack([p[0] for p in parts])
    I = np.hstack([p[1] for p in parts])
    key = D if metric == "l2" else -D
    key = np.where(I >= 0, key, np.inf)
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)
