"""Uniform quantizers: levels, end points, rounding, error bounds, per-column schemes, side info."""

from __future__ import annotations

import numpy as np
import pytest

from lplr_index import Quantizer, dequantize, fit_quantizer, quantize

pytestmark = pytest.mark.usefixtures("blas_single_thread")

EPS32 = float(np.finfo(np.float32).eps)
WIDTHS = list(range(1, 9))
SCHEMES = ["minmax", "minmax-col", "mse-col"]


def bits_id(b):
    return f"bits{b}"


def rounding_slack(q: Quantizer) -> np.ndarray:
    """Float32 slack on top of the exact ``step / 2`` bound.

    Encoding computes ``(x - lo) * (levels - 1) / width`` and decoding
    ``lo + code * step`` in float32: each is exact to a few ulps of the
    largest magnitude involved, ``max(|lo|, |hi|, width)``.
    """
    mag = np.maximum(np.maximum(np.abs(q.lo), np.abs(q.hi)), q.hi - q.lo).astype(np.float64)
    return 4 * EPS32 * mag


@pytest.fixture(params=["normal", "uniform", "student-t", "shifted"])
def matrix(request):
    """(300, 6) float32 matrices of several shapes of distribution, columns on different scales."""
    rng = np.random.default_rng(7)
    shape = (300, 6)
    scales = np.geomspace(0.01, 100, shape[1])
    draw = {
        "normal": lambda: rng.standard_normal(shape),
        "uniform": lambda: rng.uniform(-1, 3, shape),
        "student-t": lambda: rng.standard_t(2, shape),
        "shifted": lambda: 1000 + rng.standard_normal(shape),
    }[request.param]
    return (draw() * scales).astype(np.float32)


# ----------------------------------------------------------------- levels
@pytest.mark.parametrize("bits", WIDTHS, ids=bits_id)
def test_minmax_has_2_to_the_bits_evenly_spaced_levels(bits):
    lo, hi = -1.25, 3.5
    X = np.linspace(lo, hi, 4097, dtype=np.float32).reshape(-1, 1)  # hits every level
    codes, q = quantize(X, bits, "minmax")
    assert q.levels == 2**bits
    assert np.array_equal(np.unique(codes), np.arange(2**bits))
    decoded = np.unique(dequantize(codes, q))
    assert decoded.size == 2**bits
    expected = lo + np.arange(2**bits) * (hi - lo) / (2**bits - 1)
    np.testing.assert_allclose(decoded, expected, rtol=0, atol=4 * EPS32 * hi)


@pytest.mark.parametrize("bits", WIDTHS, ids=bits_id)
def test_minmax_end_points_get_the_end_codes(bits, matrix):
    codes, q = quantize(matrix, bits, "minmax")
    assert q.lo.shape == q.hi.shape == (1,)
    assert q.lo[0] == matrix.min() and q.hi[0] == matrix.max()
    assert (codes[matrix == matrix.min()] == 0).all()
    assert (codes[matrix == matrix.max()] == 2**bits - 1).all()


@pytest.mark.parametrize("bits", WIDTHS, ids=bits_id)
def test_minmax_end_points_decode_exactly(bits, matrix):
    # Regression (fixed bug): the top level decodes as lo + (2**bits - 1) * step in float32,
    # which misses max(X) by one ulp for about half of all ranges (e.g. [0.1, 0.7] at
    # 5 bits decodes 0.7 as 0.70000005), so the levels do not include the maximum.
    decoded = dequantize(*quantize(matrix, bits, "minmax"))
    assert decoded[matrix == matrix.min()][0] == matrix.min()
    assert decoded[matrix == matrix.max()][0] == matrix.max()


@pytest.mark.parametrize("scheme", ["minmax-col", "mse-col"])
@pytest.mark.parametrize("bits", [1, 3, 8], ids=bits_id)
def test_per_column_end_codes(bits, scheme, matrix):
    codes, q = quantize(matrix, bits, scheme)
    assert q.lo.shape == q.hi.shape == (matrix.shape[1],)
    rows_min, rows_max = matrix.argmin(axis=0), matrix.argmax(axis=0)
    cols = np.arange(matrix.shape[1])
    assert (codes[rows_min, cols] == 0).all()
    assert (codes[rows_max, cols] == 2**bits - 1).all()
    if scheme == "minmax-col":
        np.testing.assert_array_equal(q.lo, matrix.min(axis=0))
        np.testing.assert_array_equal(q.hi, matrix.max(axis=0))


# --------------------------------------------------------------- rounding
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("bits", WIDTHS, ids=bits_id)
def test_round_to_nearest_with_ties_up(bits, dtype):
    top = 2**bits - 1
    # range [0, top]: step 1, so every value below is exact in binary floating point
    q = Quantizer("minmax", bits, np.array([0.0], np.float32), np.array([float(top)], np.float32))
    k = np.arange(top, dtype=dtype)
    X = np.concatenate([k + 0.5, k + 0.25, k + 0.75, k]).reshape(-1, 1).astype(dtype)
    expected = np.concatenate([k + 1, k, k + 1, k]).reshape(-1, 1)
    np.testing.assert_array_equal(q.encode(X), expected)
    # the same through fitting: a matrix spanning [0, top] gets exactly these levels
    X_fit = np.vstack([X, [[0.0], [float(top)]]]).astype(dtype)
    codes, _ = quantize(X_fit, bits)
    np.testing.assert_array_equal(codes[:-2], expected)


@pytest.mark.parametrize("scheme", ["minmax", "minmax-col"])
@pytest.mark.parametrize("bits", WIDTHS, ids=bits_id)
def test_error_is_at_most_half_a_step(bits, scheme, matrix):
    codes, q = quantize(matrix, bits, scheme)
    err = np.abs(dequantize(codes, q).astype(np.float64) - matrix)
    bound = q.step.astype(np.float64) / 2 + rounding_slack(q)
    assert (err <= bound).all(), f"worst excess {np.max(err - bound)}"


@pytest.mark.parametrize("bits", WIDTHS, ids=bits_id)
def test_mse_col_clips_outside_its_range_and_rounds_inside(bits, matrix):
    codes, q = quantize(matrix, bits, "mse-col")
    assert (q.lo >= matrix.min(axis=0)).all() and (q.hi <= matrix.max(axis=0)).all()
    decoded = dequantize(codes, q).astype(np.float64)
    half = q.step.astype(np.float64) / 2 + rounding_slack(q)
    inside = (matrix >= q.lo - half) & (matrix <= q.hi + half)
    err = np.abs(decoded - matrix)
    assert (err <= half)[inside].all()
    # outside: clipped to the end levels, never wrapped around
    below = np.broadcast_to(matrix < q.lo - half, matrix.shape)
    above = np.broadcast_to(matrix > q.hi + half, matrix.shape)
    assert (codes[below] == 0).all() and (codes[above] == 2**bits - 1).all()
    _, n_clipped = q.encode(matrix, return_clipped=True)
    assert n_clipped == below.sum() + above.sum()


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bits", [1, 4, 8], ids=bits_id)
def test_constant_matrix_decodes_exactly(bits, scheme):
    X = np.full((5, 3), -2.75, np.float32)
    codes, q = quantize(X, bits, scheme)
    assert (codes == 0).all()
    np.testing.assert_array_equal(dequantize(codes, q), X)
    assert q.encode(X, return_clipped=True)[1] == 0


@pytest.mark.parametrize("scheme", ["minmax-col", "mse-col"])
def test_constant_column_among_others(scheme, rng):
    X = rng.standard_normal((50, 3)).astype(np.float32)
    X[:, 1] = 4.5
    decoded = dequantize(*quantize(X, 2, scheme))
    np.testing.assert_array_equal(decoded[:, 1], 4.5)


@pytest.mark.parametrize("scheme", ["minmax-col", "mse-col"])
def test_columns_are_quantized_independently(scheme, rng):
    X = rng.standard_normal((200, 4)).astype(np.float32)
    Y = X.copy()
    Y[:, 0] *= 1000  # only column 0 changes
    cx, _ = quantize(X, 3, scheme)
    cy, _ = quantize(Y, 3, scheme)
    np.testing.assert_array_equal(cx[:, 1:], cy[:, 1:])


def test_float64_input_is_encoded_in_float64():
    # 0.5 + 1e-12 rounds up in float64 but would be a tie (0.5) in float32
    q = Quantizer("minmax", 1, np.array([0.0], np.float32), np.array([1.0], np.float32))
    X = np.array([[0.5 - 1e-12]])
    assert q.encode(X)[0, 0] == 0
    assert q.encode(X.astype(np.float32))[0, 0] == 1


# ------------------------------------------------- mse-col against minmax-col
def column_mse(X, scheme, bits):
    return ((dequantize(*quantize(X, bits, scheme)).astype(np.float64) - X) ** 2).mean(axis=0)


@pytest.fixture
def heavy_tailed():
    """(2000, 16) Student-t (2 degrees of freedom): a few huge outliers per column."""
    return np.random.default_rng(3).standard_t(2, size=(2000, 16)).astype(np.float32)


@pytest.mark.parametrize("bits", WIDTHS, ids=bits_id)
def test_mse_col_never_worse_than_minmax_col_when_it_sees_every_row(bits, heavy_tailed):
    # with at most 4096 rows mse-col scores every row and its candidates include
    # the min-max range itself, so per column it can only be better or equal
    mse = column_mse(heavy_tailed, "mse-col", bits)
    minmax = column_mse(heavy_tailed, "minmax-col", bits)
    assert (mse <= minmax * (1 + 1e-5)).all()


@pytest.mark.parametrize(
    ("bits", "max_ratio"),
    [(1, 0.05), (2, 0.2)],  # observed MSE ratios mse-col / minmax-col: 0.0082 and 0.041
    ids=bits_id,
)
def test_mse_col_beats_minmax_col_at_low_bits_on_heavy_tails(bits, max_ratio, heavy_tailed):
    ratio = column_mse(heavy_tailed, "mse-col", bits).sum() / column_mse(
        heavy_tailed, "minmax-col", bits
    ).sum()
    assert ratio < max_ratio


@pytest.fixture
def heavy_tailed_tall():
    """(6000, 16) Student-t: more rows than the 4096 that mse-col samples to fit its ranges."""
    return np.random.default_rng(4).standard_t(2, size=(6000, 16)).astype(np.float32)


def test_mse_col_is_close_to_minmax_col_at_8_bits_on_a_row_sample(heavy_tailed_tall):
    # fitted on a row sample, mse-col is no longer guaranteed to be better, but at
    # 8 bits clipping buys nothing and the two agree closely (observed ratio 1.0019)
    X = heavy_tailed_tall
    ratio = column_mse(X, "mse-col", 8).sum() / column_mse(X, "minmax-col", 8).sum()
    assert abs(ratio - 1) < 0.01


def test_mse_col_row_sample_is_seeded(heavy_tailed_tall):
    a = fit_quantizer(heavy_tailed_tall, 2, "mse-col", seed=1)
    b = fit_quantizer(heavy_tailed_tall, 2, "mse-col", seed=1)
    np.testing.assert_array_equal(a.lo, b.lo)
    np.testing.assert_array_equal(a.hi, b.hi)


# -------------------------------------------------------------- side info
@pytest.mark.parametrize(
    ("scheme", "floats"), [("minmax", 2), ("minmax-col", 2 * 7), ("mse-col", 2 * 7)]
)
def test_nbits_counts_32_bits_per_stored_float(scheme, floats, rng):
    q = fit_quantizer(rng.standard_normal((20, 7)), 3, scheme)
    assert q.nbits == 32 * floats
    assert q.lo.dtype == q.hi.dtype == np.float32
    assert q.nbits == 8 * (q.lo.nbytes + q.hi.nbytes)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"bits": 0}, ValueError, r"bits must be an integer in \[1, 8\], got 0"),
        ({"bits": 9}, ValueError, r"bits must be an integer in \[1, 8\], got 9"),
        ({"bits": 2.5}, TypeError, "bits must be an integer"),
        ({"scheme": "lloyd"}, ValueError, "quantizer must be one of 'minmax', 'minmax-col', 'mse-col', got 'lloyd'"),
        ({"X": np.array([[1.0, np.nan]])}, ValueError, "X must be finite"),
        ({"X": np.array([[1.0, -np.inf]])}, ValueError, "X must be finite"),
        ({"X": np.zeros(3)}, ValueError, "X must be a 2-D array"),
        ({"X": np.zeros((0, 3))}, ValueError, "X must hold at least one row"),
        ({"X": np.array([["a"]])}, TypeError, "X must hold real numbers"),
    ],
    ids=["bits0", "bits9", "bits-float", "scheme", "nan", "inf", "1-D", "empty", "strings"],
)
def test_bad_arguments(kwargs, exc, match):
    args = {"X": np.ones((3, 2)), "bits": 2, "scheme": "minmax"} | kwargs
    with pytest.raises(exc, match=match):
        fit_quantizer(args["X"], args["bits"], args["scheme"])
    with pytest.raises(exc, match=match):
        quantize(args["X"], args["bits"], args["scheme"])
