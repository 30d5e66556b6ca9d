"""Shared fixtures of the core-library tests: seeded data and a few checking helpers.

Every random draw happens inside a fixture (never at import time) with its own
``numpy.random.default_rng(seed)``; nothing touches numpy's global RNG. Session
fixtures hand out read-only arrays so that no test can change another's data.
"""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from lplr_index import LPLRIndex

EPS32 = float(np.finfo(np.float32).eps)

#: shape of the index test data: enough vectors for stable recall, small enough to be fast
N_VECTORS, DIM = 5000, 64
N_QUERIES = 200


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def decaying_matrix(rng: np.random.Generator, n: int, d: int, decay: float) -> np.ndarray:
    """Float32 (n, d) matrix whose singular values fall like ``decay ** i``, randomly rotated."""
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return ((rng.standard_normal((n, d)) * decay ** np.arange(d)) @ basis).astype(np.float32)


# ---------------------------------------------------------------- threads
@pytest.fixture(scope="module")
def blas_single_thread():
    """One BLAS thread for a test module, restored afterwards.

    On a busy 2-core machine OpenBLAS's worker threads fight the other processes
    for the cores and small LAPACK calls (eigh of a 64 x 64 Gram matrix) become
    10-20 times slower; one thread keeps the suite fast and does not change what
    is tested. Test modules opt in with ``pytestmark``.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        yield


# ------------------------------------------------------------------- data
@pytest.fixture(scope="session")
def embeddings() -> np.ndarray:
    """(5000, 64) float32 database with a decaying spectrum (like real embeddings)."""
    return _frozen(decaying_matrix(np.random.default_rng(20231), N_VECTORS, DIM, 0.9))


@pytest.fixture(scope="session")
def queries(embeddings) -> np.ndarray:
    """(200, 64) float32 queries: database points plus small noise (10% of a typical coordinate)."""
    rng = np.random.default_rng(20232)
    rows = rng.choice(len(embeddings), N_QUERIES, replace=False)
    noise = 0.1 * embeddings.std() * rng.standard_normal((N_QUERIES, DIM))
    return _frozen((embeddings[rows] + noise).astype(np.float32))


@pytest.fixture(scope="session")
def small_embeddings() -> np.ndarray:
    """(1000, 32) float32 database for tests that build many indexes or write files."""
    return _frozen(decaying_matrix(np.random.default_rng(20233), 1000, 32, 0.9))


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh seeded generator per test."""
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def index_factory(embeddings):
    """``get(metric, bits_per_coordinate)``: an index built once per setting on ``embeddings``.

    The indexes are shared between tests: callers must not ``add`` to them.
    """
    cache: dict[tuple, LPLRIndex] = {}

    def get(metric: str, bits_per_coordinate: float) -> LPLRIndex:
        key = (metric, bits_per_coordinate)
        if key not in cache:
            cache[key] = LPLRIndex(
                DIM, bits_per_coordinate=bits_per_coordinate, metric=metric
            ).build(embeddings)
        return cache[key]

    return get


# ---------------------------------------------------------------- helpers
def brute_force_scores(xb, xq, metric: str) -> np.ndarray:
    """Float64 (n_queries, n) matrix of what ``metric`` ranks by.

    Squared L2 distances (smaller is better) for ``"l2"``, inner products or
    cosine similarities (larger is better) for ``"ip"`` and ``"cosine"``.
    """
    xb = np.asarray(xb, np.float64)
    xq = np.asarray(xq, np.float64)
    if metric == "cosine":
        xb = xb / np.maximum(np.linalg.norm(xb, axis=1, keepdims=True), 1e-300)
        xq = xq / np.maximum(np.linalg.norm(xq, axis=1, keepdims=True), 1e-300)
    if metric == "l2":
        return (xq**2).sum(1)[:, None] - 2 * xq @ xb.T + (xb**2).sum(1)[None, :]
    return xq @ xb.T


def brute_force_knn(xb, xq, k: int, metric: str) -> np.ndarray:
    """Ids of the exact k nearest neighbours, best first (numpy, float64)."""
    S = brute_force_scores(xb, xq, metric)
    order = np.argsort(S if metric == "l2" else -S, axis=1, kind="stable")
    return order[:, :k]


def score_tolerance(xb, xq, metric: str) -> np.ndarray:
    """Per-query absolute tolerance of float32 scores, shape (n_queries, 1).

    A float32 dot product of length ``d`` is exact to ``d * eps32 * |x| |q|``
    (Higham's gamma_d bound); a squared L2 distance computed as
    ``|q|^2 - 2 <x, q> + |x|^2`` to ``d * eps32 * (|q| + |x|)^2``.
    """
    xb = np.asarray(xb, np.float64)
    xq = np.asarray(xq, np.float64)
    d = xb.shape[1]
    if metric == "cosine":
        nb, nq = 1.0, np.ones((len(xq), 1))
    else:
        nb = np.linalg.norm(xb, axis=1).max()
        nq = np.linalg.norm(xq, axis=1, keepdims=True)
    scale = (nq + nb) ** 2 if metric == "l2" else nq * nb
    return d * EPS32 * scale


def check_knn_result(xb, xq, D, I, metric: str, *, tol=None) -> None:
    """Assert that ``(D, I)`` is *a* correct k-NN answer on ``xb`` (tie-aware).

    Any set of k ids whose scores reach the k-th best score (within ``tol``)
    is accepted, in any order among ties; the reported scores must match the
    true scores of the returned ids; ids are distinct. Rows must not be padded.
    """
    D = np.asarray(D, np.float64)
    I = np.asarray(I)
    k = I.shape[1]
    assert (I >= 0).all() and (I < len(xb)).all(), "ids out of range"
    assert all(len(set(row)) == k for row in I.tolist()), "repeated ids in a row"
    S = brute_force_scores(xb, xq, metric)
    if tol is None:
        tol = score_tolerance(xb, xq, metric)
    sign = 1.0 if metric == "l2" else -1.0  # sign * score: smaller is better
    got = sign * np.take_along_axis(S, I, axis=1)
    kth = np.sort(sign * S, axis=1)[:, k - 1 : k]
    bad = np.abs(sign * D - got) > tol
    assert not bad.any(), f"reported scores differ from the true ones at {np.argwhere(bad)[:5]}"
    bad = got > kth + tol
    assert not bad.any(), f"returned ids not among the k best at {np.argwhere(bad)[:5]}"
    bad = np.diff(sign * D, axis=1) < -tol
    assert not bad.any(), f"results not sorted best first at {np.argwhere(bad)[:5]}"


@pytest.fixture(scope="session")
def knn_checker():
    """:func:`check_knn_result`, as a fixture (tests import nothing from conftest)."""
    return check_knn_result


@pytest.fixture(scope="session")
def brute_knn():
    """:func:`brute_force_knn`, as a fixture."""
    return brute_force_knn


def pytest_configure(config):
    """Register the ``fuzz`` marker: long fuzz and kill runs, selected with ``pytest -m fuzz``."""
    config.addinivalue_line(
        "markers", "fuzz: long fuzz and kill runs (>= 10,000 mutated files); run with -m fuzz"
    )
