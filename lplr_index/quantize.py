"""Uniform scalar quantizers: float matrices to integer codes and back.

A quantizer maps each entry to one of ``2**bits`` evenly spaced levels
``lo + k * (hi - lo) / (2**bits - 1)``, ``k = 0 .. 2**bits - 1``, that include
both end points, rounding to the nearest level (ties round up, as in the
paper's code). Schemes differ in how the range ``[lo, hi]`` is chosen:

``"minmax"``
    The paper's quantizer, exactly: one range for the whole matrix,
    ``[min(X), max(X)]``. Two floats of side information. Nothing is ever
    clipped, but one outlier stretches the range for every entry, so at 1-2
    bits most entries collapse onto one or two levels. Use it to reproduce the
    paper.
``"minmax-col"``
    One ``[min, max]`` range per column (2 floats per column). Better when
    columns have different scales (sketches of embeddings, raw embedding
    coordinates); still wastes levels on outlying entries within a column.
``"mse-col"``
    One range per column, clipped to minimise the mean squared error of that
    column (searched over ranges ``mean +- c * std`` intersected with
    ``[min, max]``, including the unclipped range itself, on a row sample).
    Entries outside are clipped to the end levels. Best at 1-4 bits, where the
    levels saved from outliers buy more than the clipping costs; at 8 bits it
    is equal to ``"minmax-col"`` within noise.

Side information is stored as float32 and counted in :attr:`Quantizer.nbits`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from ._validation import check_bits, check_choice, check_matrix, float_dtype_of

__all__ = ["SCHEMES", "Quantizer", "fit_quantizer", "quantize", "dequantize"]

SCHEMES = ("minmax", "minmax-col", "mse-col")

#: entries per block in encode/decode (float temporaries of about 1 MiB stay in cache)
_BLOCK_ELEMENTS = 1 << 18
#: rows sampled to choose the clipping range of ``"mse-col"``
_MSE_SAMPLE_ROWS = 4096
#: candidate half-widths, in standard deviations, tried by ``"mse-col"``
_MSE_GRID = np.geomspace(0.25, 12.0, 40)


@dataclass(frozen=True, eq=False)
class Quantizer:
    """A fitted uniform quantizer: the levels of each column (or of the matrix).

    Attributes
    ----------
    scheme : str
        One of :data:`SCHEMES`.
    bits : int
        Code width, 1 to 8; ``2**bits`` levels.
    lo, hi : ndarray of shape (1,) or (n_columns,), float32
        Lowest and highest level, for the whole matrix (``"minmax"``) or per column.
    """

    scheme: str
    bits: int
    lo: NDArray[np.float32] = field(repr=False)
    hi: NDArray[np.float32] = field(repr=False)

    @property
    def levels(self) -> int:
        """Number of levels, ``2**bits``."""
        return 1 << self.bits

    @property
    def step(self) -> NDArray[np.float32]:
        """Distance between adjacent levels, per column (or shape (1,))."""
        return ((self.hi.astype(np.float64) - self.lo) / (self.levels - 1)).astype(np.float32)

    @property
    def nbits(self) -> int:
        """Bits of side information stored: 32 per float."""
        return 32 * (self.lo.size + self.hi.size)

    def encode(self, X: np.ndarray, *, return_clipped: bool = False):
        """Codes of ``X`` (rounded to the nearest level, clipped to the range).

        Parameters
        ----------
        X : ndarray of shape (n, n_columns), float32 or float64
        return_clipped : bool, default=False
            Also return how many entries fell outside ``[lo - step/2, hi + step/2]``
            and were clipped to an end level.

        Returns
        -------
        codes : ndarray of shape (n, n_columns), uint8
        n_clipped : int
            Only when ``return_clipped`` is true.
        """
        X = np.asarray(X)
        dtype = np.float64 if X.dtype == np.float64 else np.float32
        width = self.hi.astype(np.float64) - self.lo
        safe = np.where(width > 0, width, 1.0)
        inv = np.where(width > 0, (self.levels - 1) / safe, 0.0)
        if np.abs(inv).max(initial=0) > 1e36:
            dtype = np.float64  # ranges narrower than ~1e-36 overflow float32's 1 / width
        inv = inv.astype(dtype)
        lo = self.lo.astype(dtype)
        top = self.levels - 1
        codes = np.empty(X.shape, np.uint8)
        n_clipped = 0
        # row blocks keep the float temporaries in cache
        rows = max(1, _BLOCK_ELEMENTS // max(1, X.shape[-1]))
        for s in range(0, X.shape[0], rows):
            t = X[s : s + rows].astype(dtype, copy=False) - lo
            with np.errstate(over="ignore"):  # far outside the range: +-inf, clipped below
                t *= inv
            t += dtype(0.5)
            np.floor(t, out=t)
            if return_clipped:
                n_clipped += int(np.count_nonzero(t < 0) + np.count_nonzero(t > top))
            np.clip(t, 0, top, out=t)
            codes[s : s + rows] = t
        return (codes, n_clipped) if return_clipped else codes

    def decode(self, codes: np.ndarray) -> NDArray[np.float32]:
        """Float values of ``codes``, float32.

        Computed as ``(1 - t) * lo + t * hi`` with ``t = code / (2**bits - 1)``,
        so the end codes decode to exactly ``lo`` and ``hi``.
        """
        out = np.empty(codes.shape, np.float32)
        rows = max(1, _BLOCK_ELEMENTS // max(1, codes.shape[-1])) if codes.ndim > 1 else len(codes)
        for s in range(0, max(len(codes), 1), rows):
            t = codes[s : s + rows].astype(np.float32)
            t *= np.float32(1.0 / (self.levels - 1))
            o = out[s : s + rows]
            np.multiply(t, self.hi, out=o)
            t -= np.float32(1.0)
            t *= self.lo
            o -= t
        return out

    def state(self) -> dict:
        """Arrays and settings needed to rebuild this quantizer."""
        return {"scheme": self.scheme, "bits": self.bits, "lo": self.lo, "hi": self.hi}


def fit_quantizer(X: np.ndarray, bits: int, scheme: str = "minmax", *, seed: int = 0) -> Quantizer:
    """Choose the levels of a ``bits``-bit quantizer for ``X``.

    Parameters
    ----------
    X : array-like of shape (n, n_columns)
        Finite values.
    bits : int
        Code width, 1 to 8.
    scheme : {"minmax", "minmax-col", "mse-col"}, default="minmax"
        See the module docstring.
    seed : int, default=0
        Seed of the row sample used by ``"mse-col"``.

    Returns
    -------
    quantizer : Quantizer

    Examples
    --------
    >>> import numpy as np
    >>> q = fit_quantizer(np.array([[0.0, 0.1], [0.8, 1.0]]), bits=2)
    >>> q.decode(q.encode(np.array([[0.0, 0.1], [0.8, 1.0]])))
    array([[0.       , 0.       ],
           [0.6666667, 1.       ]], dtype=float32)
    """
    bits = check_bits(bits, "bits")
    scheme = check_choice(scheme, "quantizer", SCHEMES)
    X = check_matrix(X, "X", dtype=float_dtype_of(X))
    return _fit(X, bits, scheme, seed)


def _fit(X: np.ndarray, bits: int, scheme: str, seed: int = 0) -> Quantizer:
    """Unvalidated kernel of :func:`fit_quantizer`."""
    if scheme == "minmax":
        lo = np.array([X.min()], np.float32)
        hi = np.array([X.max()], np.float32)
    else:
        lo = X.min(axis=0).astype(np.float32)
        hi = X.max(axis=0).astype(np.float32)
        if scheme == "mse-col":
            lo, hi = _mse_ranges(X, bits, lo, hi, seed)
    return Quantizer(scheme, bits, lo, hi)


def _mse_ranges(X, bits, lo, hi, seed):
    """Per-column range ``mean +- c * std`` (clamped to [min, max]) of least MSE."""
    if X.shape[0] > _MSE_SAMPLE_ROWS:
        rows = np.random.default_rng(seed).choice(X.shape[0], _MSE_SAMPLE_ROWS, replace=False)
        sample = X[np.sort(rows)].astype(np.float32)
    else:
        sample = X.astype(np.float32)
    mean = sample.mean(axis=0)
    std = sample.std(axis=0)
    best_lo, best_hi = lo.copy(), hi.copy()
    best_err = _column_mse(sample, bits, lo, hi)
    for c in _MSE_GRID:
        c_lo = np.maximum(lo, mean - c * std).astype(np.float32)
        c_hi = np.minimum(hi, mean + c * std).astype(np.float32)
        err = _column_mse(sample, bits, c_lo, c_hi)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_lo = np.where(better, c_lo, best_lo)
        best_hi = np.where(better, c_hi, best_hi)
    return best_lo.astype(np.float32), best_hi.astype(np.float32)


def _column_mse(sample, bits, lo, hi):
    q = Quantizer("mse-col", bits, lo, hi)
    diff = q.decode(q.encode(sample)) - sample
    return np.einsum("ij,ij->j", diff, diff)


def quantize(X: np.ndarray, bits: int, scheme: str = "minmax", *, seed: int = 0):
    """Fit a quantizer to ``X`` and encode ``X`` with it.

    Parameters
    ----------
    X : array-like of shape (n, n_columns)
    bits : int
        Code width, 1 to 8.
    scheme : {"minmax", "minmax-col", "mse-col"}, default="minmax"
    seed : int, default=0
        Seed of the row sample used by ``"mse-col"``.

    Returns
    -------
    codes : ndarray of shape (n, n_columns), uint8
    quantizer : Quantizer
        Decodes the codes with :func:`dequantize`.
    """
    X = check_matrix(X, "X", dtype=float_dtype_of(X))
    q = fit_quantizer(X, bits, scheme, seed=seed)
    return q.encode(X), q


def dequantize(codes: np.ndarray, quantizer: Quantizer) -> NDArray[np.float32]:
    """Float32 values of ``codes`` under ``quantizer``."""
    return quantizer.decode(np.asarray(codes, dtype=np.uint8))
