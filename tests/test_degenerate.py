"""Degenerate data build at every budget with every codec and answer where the data allow it.

Zero variance in some or all directions (all-zero vectors, constant or repeated rows, a
shard of padding), few distinct rows, fewer rows than dimensions, one row, and tiny or
huge scales within the accepted range (entries up to 1e15). Such data build wherever
ordinary data of the same shape build (the budget's floor depends on the shape alone);
all-equal vectors tie, so any order of their ids is right; a few distinct rows, coded at
a rank that spans them, are told apart exactly.

Property tests (hypothesis) are deterministic: ``derandomize=True``, no example database,
a bounded number of examples.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lplr_index import LPLRIndex
from lplr_index.evaluation import _normalize_rows as _normalize

pytestmark = pytest.mark.usefixtures("blas_single_thread")

PROPERTY = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
CODECS = ("auto", "vq", "scalar")
METRICS = ("l2", "ip", "cosine")
#: budgets from below any floor to the few thousand bits a one-row index needs (hypothesis
#: shrinks towards the first entry of each list: the common cases come first)
BUDGETS = (8, 2, 4, 1, 64, 512, 4096, 0.5)
NO_ROOM = "cannot hold even a rank-1 index"


def ordinary(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng([seed, 99]).standard_normal((n, d)).astype(np.float32)


def check_answers(index: LPLRIndex, Q: np.ndarray, k: int):
    """The search contract on any data: shapes, distinct valid ids, finite distances best first."""
    D, I = index.search(Q, k)
    assert D.shape == I.shape == (len(Q), k) and D.dtype == np.float32 and I.dtype == np.int64
    assert np.isfinite(D).all(), D
    assert ((I >= 0) & (I < index.ntotal)).all(), I
    assert all(len(set(row)) == k for row in I.tolist()), I
    order = np.diff(D, axis=1)
    assert ((order >= -1e-5 * (1 + np.abs(D[:, 1:]))) if index.metric == "l2"
            else (order <= 1e-5 * (1 + np.abs(D[:, 1:])))).all(), D
    return D, I


def build_or_floor(X: np.ndarray, **kw) -> LPLRIndex | None:
    """The index of ``X``, or None where the budget is below the floor of the shape: the
    budget is below what the message says a rank-1 index needs, and ordinary data of the
    same shape (two rows or more: one row is always degenerate) do not build either."""
    try:
        return LPLRIndex(X.shape[1], **kw).build(X)
    except ValueError as exc:
        assert NO_ROOM in str(exc), exc
        need = float(re.search(r"that needs ([0-9.]+) bits per coordinate", str(exc)).group(1))
        assert kw["bits_per_coordinate"] < need, exc  # 0.8.0: "bits_per_coordinate=2 ... needs 0.732"
        if len(X) > 1:
            with pytest.raises(ValueError) as ref:
                LPLRIndex(X.shape[1], **kw).build(ordinary(*X.shape))
            assert str(ref.value) == str(exc)
        return None


# ------------------------------------------------------------ the cases
@pytest.mark.parametrize("codec", ["auto", "scalar"])
@pytest.mark.parametrize("case", ["zeros", "constant-rows", "one-repeated-row", "scaled-1e-40"])
def test_constant_data_builds_at_ordinary_budgets(case, codec):
    # Regression (0.8.0): grouped codes found no direction with variance to code and
    # reported that bits_per_coordinate=2 "cannot hold" an index needing 0.73
    row = ordinary(1, 16)[0]
    X = {"zeros": np.zeros((2000, 16), np.float32),
         "constant-rows": np.full((2000, 16), 3.5, np.float32),
         "one-repeated-row": np.tile(row, (2000, 1)),
         "scaled-1e-40": (ordinary(2000, 16) * np.float32(1e-40)).astype(np.float32)}[case]
    index = LPLRIndex(16, bits_per_coordinate=2, codec=codec).build(X)
    assert index.bits_per_coordinate <= 2
    D, I = check_answers(index, X[:4], 10)
    if case != "scaled-1e-40":
        np.testing.assert_allclose(index.reconstruct(I[0]), X[I[0]], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(D, 0, atol=1e-4)  # every row equals the query: all tie at 0


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("metric", METRICS)
def test_all_equal_rows_tie_and_any_ids_are_right(metric, codec):
    X = np.tile(np.linspace(-1, 2, 8, dtype=np.float32), (300, 1))
    index = LPLRIndex(8, bits_per_coordinate=8, metric=metric, codec=codec).build(X)
    D, _ = check_answers(index, np.vstack([X[:1], ordinary(2, 8)]), 20)
    np.testing.assert_allclose(D, D[:, :1].repeat(20, axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(index.reconstruct(), _normalize(X) if metric == "cosine" else X, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("codec", CODECS)
def test_all_zero_vectors_under_cosine_build_and_search(codec):
    # zero vectors have no direction: all of them, or half of the rows (padding)
    half = np.zeros((200, 8), np.float32)
    half[::2] = ordinary(100, 8)
    for X in (np.zeros((200, 8), np.float32), half):
        index = LPLRIndex(8, bits_per_coordinate=8, metric="cosine", codec=codec).build(X)
        check_answers(index, ordinary(3, 8), 5)


# ------------------------------------------------------------------ properties
KINDS = ("zeros", "repeated", "constant", "few-rows", "zero-columns", "rank-one")


@st.composite
def degenerate_data(draw, kinds=KINDS):
    """(X, kind, distinct rows, label of each row): data with zero-variance directions."""
    n = draw(st.sampled_from([300, 40, 7, 2, 1]))  # fewer rows than dimensions, one row
    d = draw(st.sampled_from([16, 5, 1]))
    kind = draw(st.sampled_from(kinds))
    scale = draw(st.sampled_from([1.0, 1e-40, 1e-20, 1e-5, 1e5, 1e14]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    labels = np.zeros(n, np.int64)
    if kind == "zeros":
        X = np.zeros((n, d))
    elif kind == "constant":
        X = np.full((n, d), float(draw(st.sampled_from([-3.0, 0.5, 7.0]))))
    elif kind == "repeated":
        X = np.tile(rng.standard_normal(d), (n, 1))
    elif kind == "few-rows":  # a handful of distinct rows, each repeated
        m = min(n, draw(st.integers(2, 4)))
        labels = np.arange(n) % m
        X = rng.integers(-3, 4, (m, d)).astype(np.float64)[labels]
    elif kind == "zero-columns":
        X = rng.standard_normal((n, d)) * (rng.random(d) < 0.5)
    else:
        X = np.outer(rng.standard_normal(n), rng.standard_normal(d))
    X = (X * scale).astype(np.float32)
    distinct = len(np.unique(X, axis=0))
    if kind == "few-rows":
        labels = np.unique(X, axis=0, return_inverse=True)[1].reshape(-1)
    return X, kind, distinct, labels


SETTINGS = st.one_of(st.builds(lambda b: {"bits_per_coordinate": b}, st.sampled_from(BUDGETS)),
                     st.builds(lambda r: {"rank": r}, st.integers(1, 16)))
METRIC, CODEC = st.sampled_from(METRICS), st.sampled_from(CODECS)


@PROPERTY
@given(degenerate_data(), SETTINGS, METRIC, CODEC)
def test_degenerate_data_build_wherever_ordinary_data_do(data, kw, metric, codec):
    X, kind, distinct, _ = data
    n, d = X.shape
    if "rank" in kw:
        kw = {"rank": min(kw["rank"], d, n)}
    index = build_or_floor(X, metric=metric, codec=codec, **kw)
    event("below the shape's floor" if index is None else f"built {index.codec}")
    if index is None:
        return
    assert index.ntotal == n
    if "bits_per_coordinate" in kw:
        assert index.bits_per_coordinate <= kw["bits_per_coordinate"]
    k = min(n, 5)
    D, I = check_answers(index, X[: min(n, 3)], k)
    R = index.reconstruct()
    assert R.shape == X.shape and np.isfinite(R).all()
    if distinct == 1:  # every vector is the same: it is stored exactly and all tie
        np.testing.assert_allclose(R, _normalize(X) if metric == "cosine" else X, rtol=1e-5, atol=1e-30)
        np.testing.assert_allclose(D, D[:, :1].repeat(k, axis=1), rtol=1e-5, atol=1e-30)
    again = LPLRIndex.from_bytes(index.to_bytes())
    D2, I2 = again.search(X[: min(n, 3)], k)
    np.testing.assert_array_equal(I2, I)
    np.testing.assert_array_equal(D2, D)
    index.add(X[:2])  # the learned codes take more of the same rows
    check_answers(index, X[:1], min(index.ntotal, 5))


@PROPERTY
@given(degenerate_data(kinds=("few-rows",)), st.sampled_from(["l2", "cosine"]), st.sampled_from(CODECS),
       st.integers(0, 2))
def test_few_distinct_rows_are_told_apart_at_a_rank_that_spans_them(data, metric, codec, extra):
    # m distinct rows span m - 1 centred directions: a rank of at least that codes them exactly
    # (4 or 8 bits per direction hold m <= 4 values), so each row's copies come first
    X, _, m, labels = data
    n, d = X.shape
    if m < 2 or np.abs(X).max() < 1e-15:  # one row; or squared distances underflow float32: all tie
        event("skipped: one distinct row or underflowing distances")
        return
    if metric == "cosine":  # rows on one ray from the origin are equal under cosine
        U = X.astype(np.float64) / np.maximum(np.linalg.norm(X.astype(np.float64), axis=1, keepdims=True), 1e-300)
        if len(np.unique(np.round(U, 6), axis=0)) < m or (np.abs(X).sum(1) == 0).any():
            event("skipped: rows equal under cosine")
            return
    rank = min(d, n, m - 1 + extra)
    if rank < min(d, m - 1):
        event("skipped: fewer rows than the rank needs")
        return
    event("checked")
    index = LPLRIndex(d, rank=rank, metric=metric, codec=codec).build(X)
    first = np.array([np.flatnonzero(labels == j)[0] for j in range(m)])
    copies = np.bincount(labels)
    for j, row in enumerate(first):
        _, I = index.search(X[row : row + 1], int(copies[j]))
        assert (labels[I[0]] == j).all(), (j, labels[I[0]])


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("metric", METRICS)
def test_one_row_and_fewer_rows_than_dimensions(metric, codec):
    # one row has no variance and no neighbour: the design check on the sample is skipped
    for X in (np.arange(16, dtype=np.float32)[None], np.zeros((1, 16), np.float32), ordinary(5, 16),
              np.zeros((5, 16), np.float32)):
        index = LPLRIndex(16, bits_per_coordinate=4096, metric=metric, codec=codec).build(X)
        D, I = check_answers(index, X, len(X))
        if len(X) == 1:
            assert I.tolist() == [[0]]
        rank = LPLRIndex(16, rank=1, metric=metric, codec=codec).build(X)
        check_answers(rank, X, len(X))
