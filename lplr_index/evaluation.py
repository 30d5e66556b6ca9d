"""Evaluation helpers: exact ground truth, recall, neighbour overlap, k-NN voting.

Tests, pipelines, benchmarks and the command line all call these, so every
number in the project is computed one way. faiss and scikit-learn are imported
inside the functions that use them, so that ``import lplr_index`` stays fast.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

# the helpers every layer shares live at the bottom (_common); this module, for users, re-exports
# recall_at_k and METRICS and is imported by no library module below the command line
from ._common import METRICS, _check_ids, _hits, _normalize_rows, _pad, recall_at_k  # noqa: F401
from ._validation import check_choice, check_int, check_matrix

__all__ = [
    "METRICS",
    "exact_knn",
    "recall_at_k",
    "neighbour_overlap",
    "knn_vote",
    "accuracy",
    "weighted_f1",
    "RateDistortion",
    "rate_distortion",
]

#: cap on the (distances, ids) one call may return: n_queries * k * 12 bytes (the
#: index's ``MAX_RESULT_BYTES``); a larger k than the database is then refused, not padded
MAX_RESULT_BYTES = 1 << 31
#: queries per faiss call (and per progress-bar step) in :func:`exact_knn`
_QUERY_BLOCK = 4096


def exact_knn(xb, xq, k: int, metric: str = "l2", *, progress: bool | None = False):
    """Exact k nearest neighbours by brute force (faiss flat index).

    Parameters
    ----------
    xb : array-like of shape (n, d)
        Database vectors.
    xq : array-like of shape (n_queries, d)
        Queries.
    k : int
        Neighbours per query, >= 1. Columns past ``n`` are padded.
    metric : {"l2", "ip", "cosine"}, default="l2"
        ``"l2"`` returns squared Euclidean distances, ascending; ``"ip"`` inner
        products and ``"cosine"`` cosine similarities, descending.
    progress : bool or None, default=False
        Show a progress bar over the queries on stderr; None shows it when
        stderr is a terminal.

    Returns
    -------
    distances : ndarray of shape (n_queries, k), float32
        Padded with ``inf`` (``"l2"``) or ``-inf`` (similarities).
    indices : ndarray of shape (n_queries, k), int64
        Padded with -1.

    Raises
    ------
    ValueError
        k above the number of database vectors when the padded result
        (``n_queries * k * 12`` bytes) would exceed :data:`MAX_RESULT_BYTES`.

    Examples
    --------
    >>> import numpy as np
    >>> D, I = exact_knn(np.eye(3), np.array([[0.9, 0.1, 0.0]]), k=2)
    >>> I
    array([[0, 1]])
    """
    metric = check_choice(metric, "metric", METRICS)
    xb = check_matrix(xb, "xb")
    xq = check_matrix(xq, "xq", dim=xb.shape[1], dim_what="the database xb holds")
    k = check_int(k, "k", low=1)
    n, nq = xb.shape[0], xq.shape[0]
    if k > n and nq * k * 12 > MAX_RESULT_BYTES:
        raise ValueError(
            f"k={k} for {nq} queries asks for {nq * k * 12 / 2**30:.1f} GiB of results, above the "
            f"{MAX_RESULT_BYTES / 2**30:.0f} GiB one call may return, and the database xb holds only "
            f"{n} vectors: use k <= {n}"
        )
    if metric == "cosine":
        xb, xq = _normalize_rows(xb), _normalize_rows(xq)
    import faiss  # ~0.13 s: imported on first use, not with the package

    from ._progress import Progress

    faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    found = min(k, n)
    D = np.empty((nq, found), np.float32)
    I = np.empty((nq, found), np.int64)
    with Progress(nq, "exact search", unit="queries", enabled=progress) as bar:
        for s in range(0, nq, _QUERY_BLOCK):
            e = min(nq, s + _QUERY_BLOCK)
            D[s:e], I[s:e] = faiss.knn(xq[s:e], xb, found, metric=faiss_metric)
            bar.update(e - s)
    return _pad(D, I, k, metric)


def neighbour_overlap(I, I_true) -> float:
    """Mean Jaccard similarity of retrieved and exact neighbour sets.

    Parameters
    ----------
    I, I_true : array-like of shape (n_queries, k), int
        -1 entries (padding) are ignored.

    Returns
    -------
    float in [0, 1]
    """
    I = _check_ids(I, "I")
    I_true = _check_ids(I_true, "I_true")
    if I.shape[0] != I_true.shape[0]:
        raise ValueError(f"I has {I.shape[0]} queries, but I_true has {I_true.shape[0]}")
    inter = _hits(I, I_true)
    size_a = (I >= 0).sum(axis=1)
    size_b = (I_true >= 0).sum(axis=1)
    union = size_a + size_b - inter
    return float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))


def knn_vote(I, y_train, tie_break: str = "nearest") -> NDArray:
    """Majority vote of the neighbours' labels (k-NN classification).

    Parameters
    ----------
    I : array-like of shape (n_queries, k), int
        Neighbour ids, best first; -1 (padding) casts no vote.
    y_train : array-like of shape (n_train,)
        Labels of the database vectors.
    tie_break : {"nearest", "lowest"}, default="nearest"
        Among labels with the most votes, ``"nearest"`` picks the one whose
        voter ranks first (for k=3 with three different labels: the nearest
        neighbour's); ``"lowest"`` picks the smallest label, as the paper's code
        (``scipy.stats.mode``) does.

    Returns
    -------
    y_pred : ndarray of shape (n_queries,)
        Same dtype as ``y_train``.

    Examples
    --------
    >>> knn_vote([[0, 1, 2], [2, 1, 0]], [5, 7, 9])
    array([5, 9])
    >>> knn_vote([[2, 1, 0]], [5, 7, 9], tie_break="lowest")
    array([5])
    """
    I = _check_ids(I, "I")
    tie_break = check_choice(tie_break, "tie_break", ("nearest", "lowest"))
    y_train = np.asarray(y_train)
    if y_train.ndim != 1:
        raise ValueError(f"y_train must be 1-D, got shape {y_train.shape}")
    if I.size and I.max() >= len(y_train):
        raise ValueError(f"I holds id {int(I.max())}, but y_train has only {len(y_train)} labels")
    if I.shape[1] == 0 or (I < 0).all(axis=1).any():
        raise ValueError("every query needs at least one neighbour id >= 0 to vote")
    classes, codes = np.unique(y_train, return_inverse=True)
    votes = np.where(I >= 0, codes[np.maximum(I, 0)], -1)
    n_cls = len(classes)
    counts = np.zeros((I.shape[0], n_cls), np.int64)
    rows = np.repeat(np.arange(I.shape[0]), I.shape[1])
    valid = votes.ravel() >= 0
    np.add.at(counts, (rows[valid], votes.ravel()[valid]), 1)
    if tie_break == "lowest":
        return classes[np.argmax(counts, axis=1)]
    top = counts.max(axis=1, keepdims=True)
    # rank of the first voter of each class; the best-ranked tied class wins
    first = np.full((I.shape[0], n_cls), I.shape[1], np.int64)
    for j in range(I.shape[1] - 1, -1, -1):
        ok = votes[:, j] >= 0
        first[np.flatnonzero(ok), votes[ok, j]] = j
    first = np.where(counts == top, first, I.shape[1] + 1)
    return classes[np.argmin(first, axis=1)]


def accuracy(y_true, y_pred) -> float:
    """Share of correct predictions (scikit-learn's ``accuracy_score``).

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
        True and predicted labels.

    Returns
    -------
    float in [0, 1]

    Examples
    --------
    >>> accuracy([1, 2, 3, 4], [1, 2, 0, 4])
    0.75
    """
    from sklearn.metrics import accuracy_score  # scikit-learn takes ~0.8 s to import: only when used

    return float(accuracy_score(y_true, y_pred))


def weighted_f1(y_true, y_pred) -> float:
    """F1 averaged over classes weighted by support (scikit-learn's ``f1_score``).

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
        True and predicted labels.

    Returns
    -------
    float in [0, 1]
        Classes never predicted count with F1 = 0 (``zero_division=0``).

    Examples
    --------
    >>> weighted_f1([0, 0, 1, 1], [0, 0, 1, 1])
    1.0
    """
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, average="weighted", zero_division=0))


# ------------------------------------------------------------ rate-distortion
class RateDistortion(NamedTuple):
    """How a compressed matrix's error compares with the Gaussian rate-distortion reference.

    Attributes
    ----------
    bits_per_coordinate : float
        The rate the reference is given (``b``: ``b * dim`` bits per vector).
    mse : float
        The compressed matrix's squared error per vector, ``||X - X_hat||_F^2 / n``.
    reference_mse : float
        The least squared error per vector of ANY code of ``b * dim`` bits per vector
        on Gaussian data with ``X``'s covariance (reverse water-filling on the
        covariance eigenvalues after removing the mean; the mean is free).
    ratio : float
        ``mse / reference_mse`` (1 is ideal; lower is better).
    equivalent_bits : float
        Bits per coordinate at which the reference reaches ``mse``: an ideal coder
        would need that many bits for the same error.
    relative_error, reference_relative_error : float
        ``sqrt(n * mse) / ||X||_F`` and the same for the reference.
    floor_ratio : float
        The ratio the index's code options reach at best on Gaussian data with ``X``'s
        covariance, all ``b * dim`` bits spent on codes
        (:func:`lplr_index.vq.gaussian_floor`, over ``reference_mse``): 4-bit k-means
        codes of groups of 1-8 directions and two-level codes of 256 centroids, the
        codes fast-scan can score, have a fixed rate, so even their best mix stays
        above the reference (measured on five data sets: 1.2-1.3 at 0.5 bit, 1.4-1.5
        at 1 bit, 1.8 at 2 bits, 3.2-3.9 at 4 bits).
    """

    bits_per_coordinate: float
    mse: float
    reference_mse: float
    ratio: float
    equivalent_bits: float
    relative_error: float
    reference_relative_error: float
    floor_ratio: float = float("nan")


def _water_fill(eig: np.ndarray, bits: float) -> float:
    """Least total distortion of ``bits`` bits on independent Gaussians of variances ``eig``."""
    eig = np.sort(np.maximum(np.asarray(eig, np.float64), 0))[::-1]
    eig = eig[eig > eig[0] * 1e-15] if eig.size and eig[0] > 0 else eig[:0]
    if bits <= 0 or eig.size == 0:
        return float(eig.sum())
    # rate(theta) = sum over eig > theta of 0.5 log2(eig / theta), decreasing in theta;
    # bisect on log(theta)
    log_eig = np.log(eig)
    lo, hi = log_eig[-1] - 2 * np.log(2) * bits - 1, log_eig[0]
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        rate = (log_eig - mid).clip(min=0).sum() / (2 * np.log(2))
        lo, hi = (mid, hi) if rate > bits else (lo, mid)
    theta = np.exp(hi)
    return float(np.minimum(eig, theta).sum())


def _bits_for(eig: np.ndarray, distortion: float) -> float:
    """Inverse of :func:`_water_fill`: bits at which the reference reaches ``distortion``."""
    total = _water_fill(eig, 0.0)
    if distortion >= total:
        return 0.0
    lo, hi = 0.0, 64.0 * len(eig)
    if _water_fill(eig, hi) > distortion:
        return float("inf")
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _water_fill(eig, mid) > distortion else (lo, mid)
    return hi


def rate_distortion(X, X_hat, bits_per_coordinate: float, *, block: int = 65536) -> RateDistortion:
    """Compare a compressed matrix with the Gaussian rate-distortion reference.

    Parameters
    ----------
    X : array-like of shape (n, dim)
        The original vectors (in memory or memory-mapped; read in row blocks).
    X_hat : array-like of shape (n, dim), or an object with ``reconstruct(ids)``
        The decoded vectors, or an index built from ``X`` in the same row order
        (its ``reconstruct`` is called block by block).
    bits_per_coordinate : float
        The rate of the compressed matrix, everything stored counted (for an
        index: ``index.bits_per_coordinate``).

    Returns
    -------
    RateDistortion

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).standard_normal((4000, 8)) * [4, 2, 1, 1, .5, .5, .1, .1]
    >>> r = rate_distortion(X, np.zeros_like(X) + X.mean(0), 1.0)
    >>> round(r.ratio, 1) > 1, r.reference_mse < r.mse
    (True, True)
    """
    b = float(bits_per_coordinate)
    if not np.isfinite(b) or b < 0:
        raise ValueError(f"bits_per_coordinate must be a finite number >= 0, got {bits_per_coordinate}")
    n, d = np.shape(X)[0], np.shape(X)[1]
    if n < 2:
        raise ValueError(f"X must hold at least 2 vectors to estimate a covariance, got {n}")
    index_like = hasattr(X_hat, "reconstruct") and not isinstance(X_hat, np.ndarray)
    if not index_like and tuple(np.shape(X_hat)) != (n, d):
        raise ValueError(f"X_hat must have the shape of X {(n, d)}, got {tuple(np.shape(X_hat))}")
    s1 = np.zeros(d)
    s2 = np.zeros((d, d))
    err = 0.0
    for s in range(0, n, block):
        xb = check_matrix(np.asarray(X[s : s + block]), "X").astype(np.float64)
        if index_like:
            hb = X_hat.reconstruct(np.arange(s, s + len(xb))).astype(np.float64)
        else:
            hb = np.asarray(X_hat[s : s + block], np.float64)
        s1 += xb.sum(0)
        s2 += xb.T @ xb
        err += float(((xb - hb) ** 2).sum())
    mean = s1 / n
    cov = (s2 - n * np.outer(mean, mean)) / n
    from ._threads import one_blas_thread

    with one_blas_thread():  # d x d: small
        eig = np.linalg.eigvalsh(cov)
    ref = _water_fill(eig, b * d)
    mse = err / n
    norm2 = float(np.trace(s2))
    from .vq import gaussian_floor  # the codes' model: imported when used

    floor = gaussian_floor(eig, b * d)
    return RateDistortion(
        bits_per_coordinate=b,
        mse=mse,
        reference_mse=ref,
        ratio=mse / ref if ref > 0 else float("inf"),
        equivalent_bits=_bits_for(eig, mse) / d,
        relative_error=float(np.sqrt(err / norm2)) if norm2 > 0 else 0.0,
        reference_relative_error=float(np.sqrt(n * ref / norm2)) if norm2 > 0 else 0.0,
        floor_ratio=floor / ref if ref > 0 else float("inf"),
    )
