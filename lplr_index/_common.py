"""Helpers shared by the codes, the training and the search layers: the bottom floor.

Row normalisation, the padding rule of results and recall k@k. Nothing here imports
another module of the library but :mod:`lplr_index._validation`, so every layer may
import it; :mod:`lplr_index.evaluation` (the user-facing metrics) re-exports
:func:`recall_at_k` and :data:`METRICS` from here and is imported by no library module
below the command line (``tests/test_layers.py`` checks the import graph).
"""

from __future__ import annotations

import numpy as np

from ._validation import check_int

METRICS = ("l2", "ip", "cosine")


def _normalize_rows(X: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1).astype(X.dtype)


def _pad(D: np.ndarray, I: np.ndarray, k: int, metric: str):
    """Pad (D, I) to k columns with the worst distance and -1."""
    nq, have = I.shape
    D = np.ascontiguousarray(D, np.float32)
    I = np.ascontiguousarray(I, np.int64)
    if have < k:
        fill = np.inf if metric == "l2" else -np.inf
        D = np.hstack([D, np.full((nq, k - have), fill, np.float32)])
        I = np.hstack([I, np.full((nq, k - have), -1, np.int64)])
    return D, I


def _check_ids(I, name):
    I = np.asarray(I)
    if I.ndim != 2 or I.dtype.kind not in "iu":
        raise ValueError(
            f"{name} must be a 2-D integer array of neighbour ids (n_queries, k), "
            f"got shape {I.shape} and dtype {I.dtype}"
        )
    return I


def recall_at_k(I, I_true, k: int | None = None, k_true: int | None = None) -> float:
    """Recall ``k_true@k``: share of the true ``k_true`` nearest neighbours found in the top ``k``.

    ``recall_at_k(I, gt, 10)`` is 10@10 (the neighbour-set recall); ``k_true=1``
    gives faiss's 1-recall@k. Ids of -1 (padding) never count, neither as
    found nor as true neighbours to find.

    Parameters
    ----------
    I : array-like of shape (n_queries, >= k), int
        Retrieved ids, best first.
    I_true : array-like of shape (n_queries, >= k_true), int
        Exact neighbour ids, best first.
    k : int, default=None
        Retrieved columns used; all when None.
    k_true : int, default=None
        True neighbours that count; ``k`` when None.

    Returns
    -------
    float in [0, 1]

    Examples
    --------
    >>> recall_at_k([[1, 2, 3]], [[3, 4, 1]], k=3)
    0.6666666666666666
    """
    I = _check_ids(I, "I")
    I_true = _check_ids(I_true, "I_true")
    if I.shape[0] != I_true.shape[0]:
        raise ValueError(f"I has {I.shape[0]} queries, but I_true has {I_true.shape[0]}")
    k = I.shape[1] if k is None else check_int(k, "k", low=1, high=I.shape[1])
    k_true = k if k_true is None else k_true
    k_true = check_int(k_true, "k_true", low=1, high=I_true.shape[1])
    J = I_true[:, :k_true]
    found = _hits(I[:, :k], J)
    valid = int((J >= 0).sum())  # padded true ids (k_true > n) are not neighbours to find
    return float(found.sum() / valid) if valid else 1.0


def _hits(I: np.ndarray, J: np.ndarray) -> np.ndarray:
    """Per query, how many ids of J (ignoring negative ids) appear in I.

    Memory O(n_queries * (k_I + k_J)): each (query, id) pair becomes one int64 key,
    ``query * M + id + 1``, and membership is one sorted ``np.isin`` (an all-pairs
    comparison would need n_queries * k_I * k_J booleans: 8 GB at k = 2,000).
    """
    n = I.shape[0]
    out = np.zeros(n, np.int64)
    if n == 0 or I.shape[1] == 0 or J.shape[1] == 0:
        return out
    I = np.maximum(I.astype(np.int64, copy=False), -1)  # any negative id is padding
    J = J.astype(np.int64, copy=False)
    M = int(max(I.max(), J.max())) + 2  # keys of one query: 0 (padding) .. M - 1
    step = max(1, (1 << 62) // M)  # queries per chunk whose keys fit in int64
    for s in range(0, n, step):
        e = min(n, s + step)
        offset = np.arange(e - s, dtype=np.int64)[:, None] * M
        found = np.isin(J[s:e] + 1 + offset, I[s:e] + 1 + offset) & (J[s:e] >= 0)
        out[s:e] = found.sum(axis=1)
    return out
