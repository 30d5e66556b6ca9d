"""The LPLR family of matrix compressors (Saha, Srivastava & Pilanci, NeurIPS 2023).

Each function returns a :class:`CompressedMatrix` that holds real bit-packed
codes plus the floats needed to decode them, reports in ``nbits`` exactly how
many bits it stores, and rebuilds the float matrix with ``reconstruct()``.

All linear algebra runs in float32 BLAS; only n x m, m x d and (for the SVD
variants) d x d or n x n Gram matrices of the smaller side are formed.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from numpy.typing import NDArray

from ._validation import (
    check_bits,
    check_choice,
    check_int,
    check_matrix,
    check_positive_float,
    check_seed,
    float_dtype_of,
)
from ._threads import one_blas_thread
from .packing import _pack, _unpack
from .quantize import SCHEMES, Quantizer, _fit
from .sketch import _gaussian, sketch_columns

__all__ = [
    "CompressedMatrix",
    "QuantizedMatrix",
    "FactorizedMatrix",
    "lplr",
    "lplr_svd",
    "direct_svd_quant",
    "naive_quant",
    "rank_for_budget",
    "relative_error",
]


@dataclass(frozen=True, eq=False)
class QuantizedMatrix:
    """A matrix stored as densely packed codes plus its quantizer's levels.

    Attributes
    ----------
    packed : ndarray of shape (ceil(n * d * bits / 8),), uint8
        Row-major codes, bit-packed (see :mod:`lplr_index.packing`).
    shape : tuple of int
        ``(n, d)`` of the matrix.
    quantizer : Quantizer
    """

    packed: NDArray[np.uint8]
    shape: tuple
    quantizer: Quantizer

    @classmethod
    def encode(cls, X: np.ndarray, bits: int, scheme: str, seed: int = 0) -> "QuantizedMatrix":
        q = _fit(X, bits, scheme, seed)
        return cls(_pack(q.encode(X).reshape(-1), bits), X.shape, q)

    @property
    def bits(self) -> int:
        return self.quantizer.bits

    @property
    def nbits(self) -> int:
        """Bits stored: the packed bytes plus the quantizer's float32 levels."""
        return 8 * self.packed.nbytes + self.quantizer.nbits

    def codes(self) -> NDArray[np.uint8]:
        """Unpacked codes, shape ``self.shape``, uint8."""
        n, d = self.shape
        return _unpack(self.packed, self.bits, n * d).reshape(n, d)

    def reconstruct(self) -> NDArray[np.float32]:
        """Decoded matrix of shape ``self.shape``, float32."""
        return self.quantizer.decode(self.codes())


class CompressedMatrix:
    """Common interface of compressed matrices: ``reconstruct()``, ``nbits``, ``shape``."""

    method: str
    shape: tuple

    @property
    def nbits(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def reconstruct(self) -> NDArray[np.float32]:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def bits_per_entry(self) -> float:
        """``nbits / (n * d)``: everything stored, per entry of the original matrix."""
        return self.nbits / (self.shape[0] * self.shape[1])

    def __repr__(self) -> str:
        n, d = self.shape
        extra = f", rank={self.rank}" if hasattr(self, "rank") else ""
        return (
            f"{type(self).__name__}(method={self.method!r}, shape=({n}, {d}){extra}, "
            f"nbits={self.nbits}, bits_per_entry={self.bits_per_entry:.4g})"
        )


class NaiveQuantized(CompressedMatrix):
    """A matrix quantized entry by entry (the paper's "NQ")."""

    method = "naive_quant"

    def __init__(self, matrix: QuantizedMatrix):
        self.matrix = matrix
        self.shape = matrix.shape

    @property
    def nbits(self) -> int:
        return self.matrix.nbits

    def reconstruct(self) -> NDArray[np.float32]:
        return self.matrix.reconstruct()


class FactorizedMatrix(CompressedMatrix):
    """A low-rank, low-precision factorization ``A ~ L R``.

    Attributes
    ----------
    left : QuantizedMatrix
        ``L``, shape (n, rank), ``bits_l``-bit codes.
    right : QuantizedMatrix
        ``R``, shape (rank, d), ``bits_r``-bit codes.
    method : str
        ``"lplr"``, ``"lplr_svd"`` or ``"direct_svd_quant"``.
    """

    def __init__(self, left: QuantizedMatrix, right: QuantizedMatrix, method: str):
        self.left = left
        self.right = right
        self.method = method
        self.shape = (left.shape[0], right.shape[1])

    @property
    def rank(self) -> int:
        return self.left.shape[1]

    @property
    def nbits(self) -> int:
        return self.left.nbits + self.right.nbits

    def reconstruct(self) -> NDArray[np.float32]:
        return self.left.reconstruct() @ self.right.reconstruct()


def _validate(A, rank, bits_l, bits_r, quantizer):
    A = check_matrix(A, "A")
    n, d = A.shape
    rank = check_int(rank, "rank", low=1, high=min(n, d))
    return (
        A,
        rank,
        check_bits(bits_l, "bits_l"),
        check_bits(bits_r, "bits_r"),
        check_choice(quantizer, "quantizer", SCHEMES),
    )


def _least_squares(L: np.ndarray, A: np.ndarray, *, block: int = 65536) -> np.ndarray:
    """``argmin_W ||L W - A||_F`` through the normal equations, in O(n m (m + d)).

    The m x m Gram matrix ``L^T L`` comes from one float32 BLAS product and is
    inverted through its float64 eigendecomposition, dropping eigenvalues
    below ``1e-12`` of the largest: a rank-deficient L (duplicate columns at
    1 bit) gets the minimum-norm solution instead of infinities. When L is
    ill-conditioned (cond(L^T L) > 1e6, where float32 round-off in the Gram
    would show), the Gram is recomputed in float64 over row blocks. ``L^T A``
    is computed as ``(A^T L)^T``, which OpenBLAS runs several times faster.
    Checked against ``numpy.linalg.lstsq`` in the tests; on sketches of real
    embeddings (cond(L) 15-90) the reconstruction error matches it to 7 digits.
    """
    m = L.shape[1]
    G = (L.T @ L).astype(np.float64)
    w, V = _eigh(G)
    if w[-1] > 0 and w[0] < w[-1] * 1e-6:
        G = np.zeros((m, m), np.float64)
        for start in range(0, L.shape[0], block):
            Lb = L[start : start + block].astype(np.float64)
            G += Lb.T @ Lb
        w, V = _eigh(G)
    B = (A.T @ L).T.astype(np.float64)
    return _solve_eigh(w, V, B)


def _eigh(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``numpy.linalg.eigh`` of a small Gram matrix on one BLAS thread (see lplr_index._threads)."""
    with one_blas_thread():
        return np.linalg.eigh(G)


def _solve_eigh(w: np.ndarray, V: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``G^+ B`` (float32) from the eigendecomposition ``G = V diag(w) V^T`` of a Gram matrix.

    Eigenvalues below ``1e-12`` of the largest are dropped, so a rank-deficient
    factor gets the minimum-norm least-squares solution.
    """
    keep = w > w[-1] * 1e-12 if w[-1] > 0 else np.zeros_like(w, bool)
    V = V[:, keep]
    W = V @ ((V.T @ B) / w[keep][:, None])
    return W.astype(np.float32)


def _solve_normal(G: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Least squares from its sums: ``argmin_W ||L W - A||`` given ``G = L^T L`` and ``B = L^T A`` (float64)."""
    w, V = _eigh(G)
    return _solve_eigh(w, V, B)


def _refit(Y, A, bits_l, bits_r, quantizer, seed, method):
    """Quantize the sketch, least-squares fit the right factor, quantize it."""
    left = QuantizedMatrix.encode(Y, bits_l, quantizer, seed or 0)
    W = _least_squares(left.reconstruct(), A)
    right = QuantizedMatrix.encode(W, bits_r, quantizer, seed or 0)
    return FactorizedMatrix(left, right, method)


def lplr(
    A,
    rank: int,
    bits_l: int,
    bits_r: int,
    *,
    quantizer: str = "minmax",
    power_iters: int = 0,
    seed: int | None = None,
) -> FactorizedMatrix:
    """LPLR: randomized low-rank, low-precision factorization ``A ~ L R``.

    Sketch ``Y = A S`` with a Gaussian ``S`` (d x rank, entries N(0, 1/rank)),
    quantize ``L = Q_{bits_l}(Y)``, solve ``W = argmin ||L W - A||_F`` by least
    squares, and quantize ``R = Q_{bits_r}(W)``. Cost O(n d rank).

    Parameters
    ----------
    A : array-like of shape (n, d)
        Finite real matrix; computed in float32.
    rank : int
        Sketch size ``m``, 1 to min(n, d).
    bits_l, bits_r : int
        Code widths of L and R, 1 to 8.
    quantizer : {"minmax", "minmax-col", "mse-col"}, default="minmax"
        ``"minmax"`` is the paper's quantizer; see :mod:`lplr_index.quantize`.
    power_iters : int, default=0
        Power iterations on the sketch (sharper subspace, 2 more passes over A each).
    seed : int or None, default=None
        Seed of the Gaussian sketch.

    Returns
    -------
    FactorizedMatrix

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((300, 8)) @ rng.standard_normal((8, 100))
    >>> C = lplr(A, rank=20, bits_l=8, bits_r=8, seed=0)
    >>> C.rank, C.nbits < 300 * 100 * 8, relative_error(A, C.reconstruct()) < 0.02
    (20, True, True)
    """
    A, rank, bits_l, bits_r, quantizer = _validate(A, rank, bits_l, bits_r, quantizer)
    power_iters = check_int(power_iters, "power_iters", low=0)
    seed = check_seed(seed)
    Y = sketch_columns(A, rank, power_iters=power_iters, seed=seed)
    return _refit(Y, A, bits_l, bits_r, quantizer, seed, "lplr")


def _top_singular(A: np.ndarray, rank: int):
    """Top ``rank`` singular triplets via the Gram matrix of the smaller side."""
    n, d = A.shape
    if d <= n:
        G = (A.T @ A).astype(np.float64)
        w, V = _eigh(G)
        order = np.argsort(w)[::-1][:rank]
        V = V[:, order].astype(np.float32)
        US = A @ V  # U_m Sigma_m
        sigma = np.linalg.norm(US, axis=0)
        U = US / np.where(sigma > 0, sigma, 1)
    else:
        G = (A @ A.T).astype(np.float64)
        w, U = _eigh(G)
        order = np.argsort(w)[::-1][:rank]
        U = U[:, order].astype(np.float32)
        SV = U.T @ A  # Sigma_m V_m^T
        sigma = np.linalg.norm(SV, axis=1)
        V = (SV / np.where(sigma > 0, sigma, 1)[:, None]).T
    return U.astype(np.float32), sigma.astype(np.float32), np.ascontiguousarray(V, np.float32)


def lplr_svd(
    A,
    rank: int,
    bits_l: int,
    bits_r: int,
    *,
    quantizer: str = "minmax",
    seed: int | None = None,
) -> FactorizedMatrix:
    """LPLR-SVD: LPLR with the sketch replaced by the top singular subspace.

    ``Y = U_m Sigma_m G`` with ``G`` an m x m Gaussian (entries N(0, 1/m)), then
    the same quantize / least squares / quantize steps as :func:`lplr`. The
    exact top-``rank`` SVD comes from the Gram matrix of the smaller side
    (d x d when n >= d), so it costs O(n d min(n, d)).

    Parameters
    ----------
    A : array-like of shape (n, d)
    rank : int
        1 to min(n, d).
    bits_l, bits_r : int
        1 to 8.
    quantizer : {"minmax", "minmax-col", "mse-col"}, default="minmax"
    seed : int or None, default=None
        Seed of the m x m Gaussian mixing matrix.

    Returns
    -------
    FactorizedMatrix
    """
    A, rank, bits_l, bits_r, quantizer = _validate(A, rank, bits_l, bits_r, quantizer)
    seed = check_seed(seed)
    U, sigma, _ = _top_singular(A, rank)
    Y = (U * sigma) @ _gaussian(rank, rank, seed)
    return _refit(np.ascontiguousarray(Y), A, bits_l, bits_r, quantizer, seed, "lplr_svd")


def direct_svd_quant(
    A, rank: int, bits_l: int, bits_r: int, *, quantizer: str = "minmax"
) -> FactorizedMatrix:
    """Direct SVD quantization (the paper's "DSVD"): ``L = Q(U_m)``, ``R = Q(Sigma_m V_m^T)``.

    No refit: both factors of the truncated SVD are quantized as they are.

    Parameters
    ----------
    A : array-like of shape (n, d)
    rank : int
        1 to min(n, d).
    bits_l, bits_r : int
        1 to 8.
    quantizer : {"minmax", "minmax-col", "mse-col"}, default="minmax"

    Returns
    -------
    FactorizedMatrix
    """
    A, rank, bits_l, bits_r, quantizer = _validate(A, rank, bits_l, bits_r, quantizer)
    U, sigma, V = _top_singular(A, rank)
    left = QuantizedMatrix.encode(np.ascontiguousarray(U), bits_l, quantizer)
    right = QuantizedMatrix.encode(np.ascontiguousarray(sigma[:, None] * V.T), bits_r, quantizer)
    return FactorizedMatrix(left, right, "direct_svd_quant")


def naive_quant(A, bits: int, *, quantizer: str = "minmax") -> NaiveQuantized:
    """Naive quantization (the paper's "NQ"): every entry to ``bits`` bits.

    float64 input is quantized in float64 (so ties round exactly as in the
    paper's code); anything else in float32.

    Parameters
    ----------
    A : array-like of shape (n, d)
    bits : int
        1 to 8.
    quantizer : {"minmax", "minmax-col", "mse-col"}, default="minmax"

    Returns
    -------
    NaiveQuantized

    Examples
    --------
    >>> import numpy as np
    >>> C = naive_quant(np.array([[0.0, 0.4], [0.6, 1.0]]), bits=1)
    >>> C.reconstruct(), C.nbits  # one byte of codes + two float32 levels
    (array([[0., 0.],
           [1., 1.]], dtype=float32), 72)
    """
    A = check_matrix(A, "A", dtype=float_dtype_of(A))
    bits = check_bits(bits, "bits")
    quantizer = check_choice(quantizer, "quantizer", SCHEMES)
    return NaiveQuantized(QuantizedMatrix.encode(A, bits, quantizer))


def rank_for_budget(n: int, d: int, bits_l: int, bits_r: int, bits_nq: float, cr: float = 1.0) -> int:
    """Rank that gives a factorization the bit budget of naive quantization.

    ``m = floor(cr * n * d * bits_nq / (n * bits_l + d * bits_r))``, the paper's
    rule ("apples to apples" at ``cr = 1``), computed in exact arithmetic. It
    counts codes only, not the handful of floats of side information.

    Parameters
    ----------
    n, d : int
        Shape of the matrix, >= 1.
    bits_l, bits_r : int
        Code widths of the factors, 1 to 8.
    bits_nq : float
        Bits per entry of the naive quantization to match, > 0.
    cr : float, default=1.0
        Compression ratio relative to that budget, > 0.

    Returns
    -------
    int
        May be 0 when the budget cannot pay for even one rank.

    Examples
    --------
    >>> [rank_for_budget(5000, 1024, 8, 8, b) for b in (1, 2, 4)]
    [106, 212, 424]
    """
    n = check_int(n, "n", low=1)
    d = check_int(d, "d", low=1)
    bits_l = check_bits(bits_l, "bits_l")
    bits_r = check_bits(bits_r, "bits_r")
    bits_nq = check_positive_float(bits_nq, "bits_nq")
    cr = check_positive_float(cr, "cr")
    # decimal strings, so that cr=0.3 means 3/10 and not the binary float below it
    num = Fraction(repr(cr)) * n * d * Fraction(repr(bits_nq))
    return int(num // (n * bits_l + d * bits_r))


def relative_error(A, A_hat) -> float:
    """Relative Frobenius error ``||A - A_hat||_F / ||A||_F``, computed in float64.

    Parameters
    ----------
    A, A_hat : array-like of shape (n, d)

    Returns
    -------
    float
    """
    A = check_matrix(A, "A", dtype=np.float64)
    A_hat = check_matrix(A_hat, "A_hat", dtype=np.float64)
    if A.shape != A_hat.shape:
        raise ValueError(f"A_hat has shape {A_hat.shape}, but A has shape {A.shape}")
    norm = np.linalg.norm(A)
    if norm == 0:
        raise ValueError("A is all zeros: the relative error is undefined")
    return float(np.linalg.norm(A - A_hat) / norm)
