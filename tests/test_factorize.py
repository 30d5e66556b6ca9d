"""The LPLR family: paper reference values, honest bit counts, error trends, budgets, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lplr_index import (
    FactorizedMatrix,
    NaiveQuantized,
    direct_svd_quant,
    lplr,
    lplr_svd,
    naive_quant,
    rank_for_budget,
    relative_error,
)
from lplr_index.factorize import _least_squares

pytestmark = pytest.mark.usefixtures("blas_single_thread")

EPS32 = float(np.finfo(np.float32).eps)
QUANTIZERS = ["minmax", "minmax-col", "mse-col"]


def factorize(method: str, A, rank: int, bits_l: int, bits_r: int, quantizer: str = "minmax", seed=0):
    """Call one of the three factorizations with a common signature."""
    if method == "lplr":
        return lplr(A, rank, bits_l, bits_r, quantizer=quantizer, seed=seed)
    if method == "lplr_svd":
        return lplr_svd(A, rank, bits_l, bits_r, quantizer=quantizer, seed=seed)
    return direct_svd_quant(A, rank, bits_l, bits_r, quantizer=quantizer)


FACTORIZATIONS = ["lplr", "lplr_svd", "direct_svd_quant"]


@pytest.fixture(scope="module")
def decaying():
    """(256, 64) float32 matrix with singular values 0.85**i (random singular vectors)."""
    rng = np.random.default_rng(11)
    U, _ = np.linalg.qr(rng.standard_normal((256, 64)))
    V, _ = np.linalg.qr(rng.standard_normal((64, 64)))
    return ((U * 0.85 ** np.arange(64)) @ V.T).astype(np.float32)


# -------------------------------------------------- paper reference values
@pytest.fixture(scope="module")
def shepp_logan():
    phantominator = pytest.importorskip("phantominator")
    P = phantominator.shepp_logan(1000)
    return (P - P.min()) / (P.max() - P.min())  # scaled to [0, 1], float64


@pytest.mark.parametrize(
    ("bits", "reference"),
    [(1, 0.5323), (2, 0.3122), (4, 0.0286)],  # the paper's implementation
    ids=lambda v: f"{v}",
)
def test_naive_quant_matches_the_paper_on_shepp_logan(shepp_logan, bits, reference):
    error = relative_error(shepp_logan, naive_quant(shepp_logan, bits).reconstruct())
    assert error == pytest.approx(reference, abs=5e-4)  # observed 0.53229, 0.31220, 0.02860


# ----------------------------------------------------------- bit accounting
def stored_bits(C) -> int:
    """Bits of every array the compressed object holds: packed codes and float levels."""
    parts = [C.matrix] if isinstance(C, NaiveQuantized) else [C.left, C.right]
    return sum(8 * (p.packed.nbytes + p.quantizer.lo.nbytes + p.quantizer.hi.nbytes) for p in parts)


def side_floats(quantizer: str, columns: int) -> int:
    return 2 if quantizer == "minmax" else 2 * columns


@pytest.mark.parametrize("quantizer", QUANTIZERS)
@pytest.mark.parametrize(("bits_l", "bits_r"), [(3, 5), (8, 1), (2, 7)], ids=lambda b: f"{b}")
@pytest.mark.parametrize("method", FACTORIZATIONS)
def test_nbits_of_factorizations_is_what_is_stored(method, bits_l, bits_r, quantizer, rng):
    n, d, rank = 37, 23, 5  # odd sizes: no product of sizes and widths fills whole bytes
    A = rng.standard_normal((n, d)).astype(np.float32)
    C = factorize(method, A, rank, bits_l, bits_r, quantizer)
    assert isinstance(C, FactorizedMatrix) and C.rank == rank and C.shape == (n, d)
    by_hand = (
        8 * math.ceil(n * rank * bits_l / 8)
        + 8 * math.ceil(rank * d * bits_r / 8)
        + 32 * (side_floats(quantizer, rank) + side_floats(quantizer, d))
    )
    assert C.nbits == stored_bits(C) == by_hand
    assert C.bits_per_entry == C.nbits / (n * d)
    assert C.left.codes().max() < 2**bits_l and C.right.codes().max() < 2**bits_r
    np.testing.assert_array_equal(
        C.reconstruct(), C.left.quantizer.decode(C.left.codes()) @ C.right.quantizer.decode(C.right.codes())
    )


@pytest.mark.parametrize("quantizer", QUANTIZERS)
@pytest.mark.parametrize("bits", [1, 3, 8], ids=lambda b: f"bits{b}")
def test_nbits_of_naive_quant_is_what_is_stored(bits, quantizer, rng):
    n, d = 37, 23
    C = naive_quant(rng.standard_normal((n, d)), bits, quantizer=quantizer)
    by_hand = 8 * math.ceil(n * d * bits / 8) + 32 * side_floats(quantizer, d)
    assert C.nbits == stored_bits(C) == by_hand
    assert C.shape == (n, d)


# ------------------------------------------------------------ error trends
def errors(A, calls) -> list[float]:
    return [relative_error(A, call().reconstruct()) for call in calls]


def assert_strictly_falling(values):
    assert all(b < a for a, b in zip(values, values[1:])), values


@pytest.mark.parametrize("quantizer", QUANTIZERS)
@pytest.mark.parametrize("method", FACTORIZATIONS)
def test_error_falls_as_rank_grows(decaying, method, quantizer):
    ranks = [2, 4, 8, 16, 32]
    # observed (lplr, minmax): 0.87, 0.74, 0.49, 0.19, 0.038
    assert_strictly_falling(
        errors(decaying, [lambda r=r: factorize(method, decaying, r, 8, 8, quantizer) for r in ranks])
    )


@pytest.mark.parametrize("quantizer", QUANTIZERS)
@pytest.mark.parametrize("method", FACTORIZATIONS)
def test_error_falls_as_bits_grow(decaying, method, quantizer):
    widths = [1, 2, 4, 8]
    assert_strictly_falling(
        errors(decaying, [lambda b=b: factorize(method, decaying, 16, b, b, quantizer) for b in widths])
    )


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_naive_quant_error_falls_as_bits_grow(decaying, quantizer):
    assert_strictly_falling(
        errors(decaying, [lambda b=b: naive_quant(decaying, b, quantizer=quantizer) for b in range(1, 9)])
    )


@pytest.mark.parametrize("seed", range(5), ids=lambda s: f"seed{s}")
def test_lplr_on_an_exactly_low_rank_matrix(seed):
    rng = np.random.default_rng(100 + seed)
    k = 10
    A = (rng.standard_normal((500, k)) @ rng.standard_normal((k, 300))).astype(np.float32)
    # sketch size m = 2k >= k + 2: the sketch captures the whole range of A, so only
    # the 8-bit rounding of the factors is left (observed 0.010 .. 0.021 over these seeds)
    C = lplr(A, 2 * k, 8, 8, seed=seed)
    assert relative_error(A, C.reconstruct()) < 0.04


def test_lplr_svd_and_dsvd_recover_a_low_rank_matrix(rng):
    A = (rng.standard_normal((200, 6)) @ rng.standard_normal((6, 50))).astype(np.float32)
    for C in (lplr_svd(A, 6, 8, 8, seed=0), direct_svd_quant(A, 6, 8, 8)):
        # observed 0.033 (lplr_svd: one minmax range over U S G) and 0.011 (direct_svd_quant)
        assert relative_error(A, C.reconstruct()) < 0.05


def test_power_iterations_do_not_hurt(decaying):
    plain = relative_error(decaying, lplr(decaying, 8, 8, 8, seed=0).reconstruct())
    sharp = relative_error(decaying, lplr(decaying, 8, 8, 8, power_iters=2, seed=0).reconstruct())
    assert sharp < plain  # observed 0.49 -> 0.32


# ----------------------------------------------------------- rank_for_budget
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((5000, 1024, 8, 8, 1), 106),  # 5 120 000 / 48 192 = 106.2
        ((5000, 1024, 8, 8, 2), 212),  # 10 240 000 / 48 192 = 212.5
        ((5000, 1024, 8, 8, 4), 424),  # 20 480 000 / 48 192 = 424.98
        ((1000, 1000, 8, 8, 2), 125),  # 2 000 000 / 16 000 = 125 exactly
        ((1000, 1000, 8, 8, 2, 0.5), 62),  # 1 000 000 / 16 000 = 62.5
        ((60000, 784, 8, 8, 1), 96),  # 47 040 000 / 486 272 = 96.7
        ((50000, 384, 4, 8, 0.5), 47),  # 9 600 000 / 203 072 = 47.3
        ((100, 10, 4, 2, 1), 2),  # 1000 / 420 = 2.4
        ((8, 8, 1, 1, 2), 8),  # 128 / 16 = 8 exactly
        ((1, 1, 8, 8, 1), 0),  # 1 / 16: the budget cannot pay for rank 1
        ((10, 10, 1, 1, 2, 0.3), 3),  # 0.3 * 200 / 20 = 3 exactly
    ],
    ids=lambda v: repr(v).replace(" ", ""),
)
def test_rank_for_budget_by_hand(args, expected):
    # Regression (fixed bug) for the last case: cr=0.3 gives 2, because the library takes the
    # exact binary value of 0.3 (0.29999999999999998889...) and floors 2.99999...;
    # the paper's float formula and arithmetic by hand both give 3.
    assert rank_for_budget(*args) == expected


@pytest.mark.parametrize(
    ("args", "exc", "match"),
    [
        ((0, 10, 8, 8, 1), ValueError, r"n must be an integer in \[1, inf\], got 0"),
        ((10, 0, 8, 8, 1), ValueError, r"d must be an integer in \[1, inf\], got 0"),
        ((10, 10, 9, 8, 1), ValueError, r"bits_l must be an integer in \[1, 8\], got 9"),
        ((10, 10, 8, 0, 1), ValueError, r"bits_r must be an integer in \[1, 8\], got 0"),
        ((10, 10, 8, 8, 0), ValueError, "bits_nq must be a finite number > 0, got 0"),
        ((10, 10, 8, 8, float("inf")), ValueError, "bits_nq must be a finite number > 0, got inf"),
        ((10, 10, 8, 8, 1, -1), ValueError, "cr must be a finite number > 0, got -1"),
        ((10.0, 10, 8, 8, 1), TypeError, "n must be an integer"),
        ((10, 10, 8, 8, "1"), TypeError, "bits_nq must be a positive number"),
    ],
    ids=["n0", "d0", "bits_l9", "bits_r0", "bits_nq0", "bits_nq-inf", "cr-neg", "n-float", "bits_nq-str"],
)
def test_rank_for_budget_bad_arguments(args, exc, match):
    with pytest.raises(exc, match=match):
        rank_for_budget(*args)


# ------------------------------------------------------ least-squares kernel
def lstsq_reference(L, A):
    return np.linalg.lstsq(L.astype(np.float64), A.astype(np.float64), rcond=None)[0]


def ls_tolerance(L) -> float:
    """Relative error bound of the normal equations with a float32 ``L^T A``.

    ``L^T A`` is a float32 product of length n (relative error <= n eps32),
    and solving with the Gram matrix multiplies it by cond(L^T L) = cond(L)^2.
    """
    s = np.linalg.svd(L.astype(np.float64), compute_uv=False)
    s = s[s > s[0] * 1e-6]
    return (s[0] / s[-1]) ** 2 * L.shape[0] * EPS32


@pytest.mark.parametrize("block", [65536, 7], ids=["one-block", "blocks-of-7"])
def test_least_squares_matches_numpy_lstsq(rng, block):
    L = rng.standard_normal((400, 12)).astype(np.float32)
    A = rng.standard_normal((400, 30)).astype(np.float32)
    W = _least_squares(L, A, block=block)
    ref = lstsq_reference(L, A)
    assert W.dtype == np.float32 and W.shape == (12, 30)
    assert np.linalg.norm(W - ref) / np.linalg.norm(ref) < ls_tolerance(L)  # observed ~1e-7


def test_least_squares_of_a_rank_deficient_factor_is_the_minimum_norm_solution(rng):
    # duplicate columns, as 1-bit codes produce: lstsq's minimum-norm answer, no infinities
    base = rng.standard_normal((300, 5)).astype(np.float32)
    L = np.hstack([base, base[:, :2]])
    A = rng.standard_normal((300, 9)).astype(np.float32)
    W = _least_squares(L, A)
    ref = lstsq_reference(L, A)
    assert np.isfinite(W).all()
    assert np.linalg.norm(W - ref) / np.linalg.norm(ref) < ls_tolerance(L)


def test_least_squares_of_a_zero_factor_is_zero():
    W = _least_squares(np.zeros((10, 3), np.float32), np.ones((10, 4), np.float32))
    np.testing.assert_array_equal(W, 0)


# ----------------------------------------------------------------- seeds
@pytest.mark.parametrize("method", ["lplr", "lplr_svd"])
def test_same_seed_same_codes_other_seed_other_codes(decaying, method):
    a, b = factorize(method, decaying, 8, 3, 5, seed=4), factorize(method, decaying, 8, 3, 5, seed=4)
    c = factorize(method, decaying, 8, 3, 5, seed=5)
    for part in ("left", "right"):
        np.testing.assert_array_equal(getattr(a, part).packed, getattr(b, part).packed)
        np.testing.assert_array_equal(getattr(a, part).quantizer.lo, getattr(b, part).quantizer.lo)
    np.testing.assert_array_equal(a.reconstruct(), b.reconstruct())
    assert not np.array_equal(a.left.packed, c.left.packed)


def test_deterministic_methods_repeat_exactly(decaying):
    for call in (lambda: direct_svd_quant(decaying, 8, 4, 4), lambda: naive_quant(decaying, 3)):
        np.testing.assert_array_equal(call().reconstruct(), call().reconstruct())


def test_float64_int_and_non_contiguous_inputs(decaying):
    reference = lplr(decaying, 8, 4, 8, seed=0).reconstruct()
    F = np.asfortranarray(decaying)
    wide = np.zeros((256, 128), np.float32)
    wide[:, ::2] = decaying
    for A in (decaying.astype(np.float64), F, wide[:, ::2]):
        np.testing.assert_array_equal(lplr(A, 8, 4, 8, seed=0).reconstruct(), reference)
    ints = np.arange(60).reshape(6, 10)
    assert relative_error(ints, naive_quant(ints, 8).reconstruct()) < 0.01


# -------------------------------------------------------------- bad input
BAD_MATRICES = {
    "1-D": (np.ones(5), ValueError, "A must be a 2-D array"),
    "3-D": (np.ones((2, 3, 4)), ValueError, "A must be a 2-D array"),
    "nan": (np.array([[1.0, np.nan], [0.0, 1.0]]), ValueError, r"A must be finite.*nan.* row 0, column 1"),
    "inf": (np.array([[1.0, 2.0], [np.inf, 1.0]]), ValueError, r"A must be finite.*inf.* row 1, column 0"),
    "no-rows": (np.ones((0, 4)), ValueError, "A must hold at least one row and one column"),
    "no-columns": (np.ones((4, 0)), ValueError, "A must hold at least one row and one column"),
    "strings": (np.array([["1", "2"], ["3", "4"]]), TypeError, "A must hold real numbers.*<U1"),
    "object": (np.array([[1, 2], [3, 4]], dtype=object), TypeError, "A must hold real numbers.*object"),
    "complex": (np.ones((2, 2), complex), TypeError, "A must hold real numbers.*complex"),
    "bool": (np.ones((2, 2), bool), TypeError, "A must hold real numbers.*bool"),
    # Regression (fixed bug) for naive_quant: np.asarray(A) runs before validation, so a ragged
    # list raises numpy's "setting an array element with a sequence" without naming A
    "ragged-list": ([[1.0, 2.0], [3.0]], (TypeError, ValueError), r"\bA\b"),
}


def call_method(method, A, **kw):
    if method == "naive_quant":
        return naive_quant(A, kw.get("bits", 2), quantizer=kw.get("quantizer", "minmax"))
    return factorize(
        method, A, kw.get("rank", 1), kw.get("bits_l", 8), kw.get("bits_r", 8), kw.get("quantizer", "minmax")
    )


@pytest.mark.parametrize("case", BAD_MATRICES, ids=str)
@pytest.mark.parametrize("method", FACTORIZATIONS + ["naive_quant"])
def test_bad_matrix_is_rejected(method, case):
    A, exc, match = BAD_MATRICES[case]
    with pytest.raises(exc, match=match):
        call_method(method, A)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"rank": 0}, ValueError, r"rank must be an integer in \[1, 4\], got 0"),
        ({"rank": 5}, ValueError, r"rank must be an integer in \[1, 4\], got 5"),
        ({"rank": 2.0}, TypeError, "rank must be an integer, got 2.0"),
        ({"bits_l": 0}, ValueError, r"bits_l must be an integer in \[1, 8\], got 0"),
        ({"bits_l": 9}, ValueError, r"bits_l must be an integer in \[1, 8\], got 9"),
        ({"bits_r": 0}, ValueError, r"bits_r must be an integer in \[1, 8\], got 0"),
        ({"bits_r": 9}, ValueError, r"bits_r must be an integer in \[1, 8\], got 9"),
        ({"bits_r": True}, TypeError, "bits_r must be an integer, got True"),
        ({"quantizer": "nf4"}, ValueError, "quantizer must be one of 'minmax', 'minmax-col', 'mse-col', got 'nf4'"),
    ],
    ids=["rank0", "rank-too-big", "rank-float", "bits_l0", "bits_l9", "bits_r0", "bits_r9", "bits_r-bool", "quantizer"],
)
@pytest.mark.parametrize("method", FACTORIZATIONS)
def test_bad_settings_are_rejected(method, kwargs, exc, match):
    A = np.ones((6, 4), np.float32)  # min(n, d) = 4
    with pytest.raises(exc, match=match):
        call_method(method, A, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"bits": 0}, ValueError, r"bits must be an integer in \[1, 8\], got 0"),
        ({"bits": 9}, ValueError, r"bits must be an integer in \[1, 8\], got 9"),
        ({"quantizer": "x"}, ValueError, "quantizer must be one of"),
    ],
    ids=["bits0", "bits9", "quantizer"],
)
def test_naive_quant_bad_settings(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        call_method("naive_quant", np.ones((3, 3)), **kwargs)


def test_lplr_bad_seed_and_power_iters():
    A = np.ones((6, 4), np.float32)
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, inf\], got -1"):
        lplr(A, 2, 8, 8, seed=-1)
    with pytest.raises(ValueError, match=r"power_iters must be an integer in \[0, inf\], got -1"):
        lplr(A, 2, 8, 8, power_iters=-1)


def test_relative_error():
    A = np.array([[3.0, 0.0], [0.0, 4.0]])
    assert relative_error(A, np.zeros((2, 2))) == 1.0
    assert relative_error(A, A) == 0.0
    assert relative_error(A, [[3.0, 0.0], [0.0, 1.0]]) == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match=r"A_hat has shape \(1, 2\), but A has shape \(2, 2\)"):
        relative_error(A, [[1.0, 2.0]])
    with pytest.raises(ValueError, match="A is all zeros"):
        relative_error(np.zeros((2, 2)), np.zeros((2, 2)))
