"""Property tests (hypothesis): bit packing, quantizers and the search contract.

Deterministic: ``derandomize=True`` draws the same examples on every run, and no example
database is written. Each property runs a bounded number of examples (a few seconds in all).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lplr_index import LPLRIndex
from lplr_index.packing import pack_bits, packed_nbytes, unpack_bits
from lplr_index.quantize import SCHEMES, fit_quantizer

pytestmark = pytest.mark.usefixtures("blas_single_thread")

EPS32 = float(np.finfo(np.float32).eps)
PROPERTY = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# ------------------------------------------------------------------ packing
@st.composite
def code_rows(draw):
    """(codes of shape (rows, m) or (m,), bits): any width 1..8, any lengths."""
    bits = draw(st.integers(1, 8))
    m = draw(st.integers(1, 70))
    shape = draw(st.sampled_from([(m,), (draw(st.integers(0, 6)), m)]))
    codes = draw(hnp.arrays(np.uint8, shape, elements=st.integers(0, (1 << bits) - 1)))
    return codes, bits


@settings(PROPERTY, max_examples=300)
@given(code_rows())
def test_pack_unpack_round_trip(case):
    codes, bits = case
    m = codes.shape[-1]
    packed = pack_bits(codes, bits)
    assert packed.dtype == np.uint8
    assert packed.shape == codes.shape[:-1] + (packed_nbytes(m, bits),)
    np.testing.assert_array_equal(unpack_bits(packed, bits, m), codes)
    # the unused high bits of each row's last byte are zero
    used = (m * bits) % 8
    if used and packed.size:
        assert not (packed[..., -1] >> used).any()


@settings(PROPERTY, max_examples=100)
@given(code_rows(), st.integers(0, 70))
def test_unpack_takes_any_count_that_fits_the_row_bytes(case, count):
    # a row of ceil(m * bits / 8) bytes holds the first `count` codes for every count with
    # the same byte width; any other count is refused, naming both widths
    codes, bits = case
    packed = pack_bits(codes, bits)
    if packed_nbytes(count, bits) == packed.shape[-1]:
        np.testing.assert_array_equal(unpack_bits(packed, bits, count), codes[..., :count])
    else:
        with pytest.raises(ValueError, match=rf"= {packed_nbytes(count, bits)} bytes per row, got {packed.shape[-1]}"):
            unpack_bits(packed, bits, count)


# --------------------------------------------------------------- quantizers
@st.composite
def matrices(draw):
    """(n, c) float32 matrices, finite, with entries up to 1e6 in size (constant columns included)."""
    n = draw(st.integers(1, 40))
    c = draw(st.integers(1, 6))
    scale = float(np.float32(draw(st.sampled_from([1e-3, 1.0, 1e3, 1e6]))))
    elements = st.floats(-scale, scale, width=32, allow_nan=False, allow_infinity=False, allow_subnormal=False)
    return draw(hnp.arrays(np.float32, (n, c), elements=elements))


@settings(PROPERTY, max_examples=150)
@given(matrices(), st.integers(1, 8), st.sampled_from(SCHEMES))
# a range narrower than (levels - 1) / float32 max: 15 / 1.2e-38 overflows float32 (found by
# test_quantizer_is_monotone's overflow warning; codes came out 0, 15, 15 for lo, mid, hi)
@example(np.array([[1.2e-38], [2.4e-38], [1.8e-38]], np.float32), 4, "minmax")
def test_quantizer_encode_decode(X, bits, scheme):
    q = fit_quantizer(X, bits, scheme, seed=0)
    top = (1 << bits) - 1
    codes = q.encode(X)
    assert codes.dtype == np.uint8 and codes.shape == X.shape
    assert codes.max() <= top
    lo = np.broadcast_to(q.lo, X.shape[1:])
    hi = np.broadcast_to(q.hi, X.shape[1:])
    assert (lo <= hi).all()
    # the end codes decode to exactly lo and hi
    np.testing.assert_array_equal(q.decode(np.zeros((1,) + X.shape[1:], np.uint8))[0], lo)
    np.testing.assert_array_equal(q.decode(np.full((1,) + X.shape[1:], top, np.uint8))[0], hi)
    # inside the range the error is at most half a step (plus float32 rounding)
    step = (hi.astype(np.float64) - lo) / top
    inside = (X >= lo) & (X <= hi)
    err = np.abs(q.decode(codes).astype(np.float64) - X)
    bound = step / 2 * (1 + 1e-5) + 4 * EPS32 * (np.abs(lo) + np.abs(hi))
    bad = inside & (err > bound)
    assert not bad.any(), f"errors {err[bad][:3]} above half a step {np.broadcast_to(bound, X.shape)[bad][:3]}"
    # minmax schemes clip nothing
    if scheme != "mse-col":
        assert inside.all()


@settings(PROPERTY, max_examples=100)
@given(matrices(), st.integers(1, 8), st.sampled_from(SCHEMES))
def test_quantizer_is_monotone(X, bits, scheme):
    q = fit_quantizer(X, bits, scheme, seed=0)
    order = np.argsort(X, axis=0, kind="stable")
    codes = np.take_along_axis(q.encode(X).astype(int), order, axis=0)
    assert (np.diff(codes, axis=0) >= 0).all()
    # values far outside the range go to the end codes (a column of one value has one level)
    outside = np.vstack([np.full(X.shape[1], -1e30, np.float32), np.full(X.shape[1], 1e30, np.float32)])
    spread = np.broadcast_to(q.hi > q.lo, X.shape[1:])
    expected = np.array([[0] * X.shape[1], [(1 << bits) - 1] * X.shape[1]]) * spread
    np.testing.assert_array_equal(q.encode(outside), expected)


# ---------------------------------------------------------- search contract
@st.composite
def search_cases(draw):
    d = draw(st.integers(2, 12))
    rank = draw(st.integers(1, d))
    n = draw(st.integers(rank, 40))
    return dict(
        n=n, d=d, rank=rank,
        bits_l=draw(st.integers(1, 8)),
        metric=draw(st.sampled_from(["l2", "ip", "cosine"])),
        nq=draw(st.integers(1, 4)),
        k=draw(st.integers(1, n + 5)),
        duplicates=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31)),
    )


@settings(PROPERTY, max_examples=60)
@given(search_cases())
def test_search_contract(knn_checker, case):
    rng = np.random.default_rng(case["seed"])
    n, d, k, nq, metric = case["n"], case["d"], case["k"], case["nq"], case["metric"]
    X = rng.standard_normal((n, d)).astype(np.float32)
    if case["duplicates"]:  # exact ties between stored vectors
        X[n // 2 :] = X[: n - n // 2]
    index = LPLRIndex(d, rank=case["rank"], bits_l=case["bits_l"], metric=metric).build(X)
    Q = rng.standard_normal((nq, d)).astype(np.float32)
    stored = index.reconstruct()
    for mode in (None, "factored", "reconstructed"):  # None: the default (fast scan where it applies)
        D, I = index.search(Q, k) if mode is None else index.search(Q, k, mode=mode)
        check_contract(knn_checker, stored, Q, D, I, k, n, metric)


def check_contract(knn_checker, stored, Q, D, I, k, n, metric):
    nq, d = Q.shape
    assert D.shape == (nq, k) and I.shape == (nq, k)
    assert D.dtype == np.float32 and I.dtype == np.int64
    real = min(k, n)
    # padded past ntotal with -1 and inf (l2) or -inf (similarities)
    assert (I[:, real:] == -1).all()
    assert (D[:, real:] == (np.inf if metric == "l2" else -np.inf)).all()
    # real results: distinct ids in range, finite, best first, and a true k-NN answer
    # over the vectors the index stores (its reconstruction)
    assert ((I[:, :real] >= 0) & (I[:, :real] < n)).all()
    assert np.isfinite(D[:, :real]).all()
    if metric == "cosine":
        assert (np.abs(D[:, :real]) <= 1 + 1e-3).all()
    scale = float(np.abs(stored).max() + np.abs(Q).max() + 1.0)
    tol = 16 * d * EPS32 * scale**2
    knn_checker(stored, Q, D[:, :real], I[:, :real], metric, tol=tol)


# ------------------------------------------------- a single query: the lean path and the general one
@st.composite
def single_query_cases(draw):
    d = draw(st.integers(2, 12))
    n = draw(st.integers(d + 8, 60))
    return dict(
        n=n, d=d, rank=draw(st.integers(1, d)),
        metric=draw(st.sampled_from(["l2", "ip", "cosine"])),
        nlist=draw(st.sampled_from([None, 2, 4])),
        removed=draw(st.sampled_from([0.0, 0.05, 0.3])),
        k=draw(st.integers(1, n + 3)),
        seed=draw(st.integers(0, 2**31)),
    )


@settings(PROPERTY, max_examples=40)
@given(single_query_cases())
def test_single_queries_keep_the_search_contract_and_the_batchs_answer(case):
    """Each query alone (the lean path wherever it applies: 4-bit codes re-ranked in faiss, few
    removed rows, k at most the live ones) answers what it answers in a batch (the general
    path), and keeps the search contract: removed rows never returned, padding past the live
    rows, each distance the exact one of its row's stored vector (fast-scan's candidates are
    approximate: the rows themselves need not be the exact k nearest)."""
    rng = np.random.default_rng(case["seed"])
    n, d, k, metric = case["n"], case["d"], case["k"], case["metric"]
    X = rng.standard_normal((n, d)).astype(np.float32)
    index = LPLRIndex(d, rank=case["rank"], bits_l=4, metric=metric, nlist=case["nlist"]).build(X)
    gone = np.arange(0, n, max(1, round(1 / case["removed"]))) if case["removed"] else np.zeros(0, np.int64)
    if len(gone):
        index.remove(gone)
    Q = rng.standard_normal((3, d)).astype(np.float32)
    Db, Ib = index.search(Q, k)
    live = np.setdiff1d(np.arange(n), gone)
    stored = index.reconstruct()
    for i, q in enumerate(Q):
        D, I = index.search(q[None], k)
        real = min(k, len(live))
        assert D.shape == I.shape == (1, k) and (I[0, real:] == -1).all() and not np.isin(I, gone).any()
        if metric == "cosine":  # ties within float rounding may swap; the distances agree
            np.testing.assert_allclose(D[0, :real], Db[i, :real], rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(I[0], Ib[i])
            np.testing.assert_allclose(D[0], Db[i], rtol=1e-5, atol=1e-5 * (1 + np.abs(Db[np.isfinite(Db)]).max()))
        X_hat = stored[I[0, :real]].astype(np.float64)
        q64 = q.astype(np.float64)
        if metric == "l2":
            exact = ((X_hat - q64) ** 2).sum(1)
        elif metric == "ip":
            exact = X_hat @ q64
        else:
            exact = X_hat @ q64 / np.maximum(np.linalg.norm(X_hat, axis=1) * np.linalg.norm(q64), 1e-30)
        scale = float(np.abs(stored).max() + np.abs(q).max() + 1.0)
        np.testing.assert_allclose(D[0, :real], exact, atol=16 * d * EPS32 * scale**2)
