"""Random sketches of a matrix's column space.

The sketch is a pure function of ``(d, m, seed)``, so an index stores the seed,
not the d x m matrix, and regenerates the same sketch to encode new vectors.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from ._validation import check_int, check_seed

__all__ = ["gaussian_sketch", "sketch_columns"]


def gaussian_sketch(d: int, m: int, seed: int | None = None) -> NDArray[np.float32]:
    """Gaussian sketching matrix with i.i.d. N(0, 1/m) entries.

    Parameters
    ----------
    d : int
        Rows (the dimension of the sketched vectors).
    m : int
        Columns (the sketch size, the rank of the factorization).
    seed : int or None, default=None
        Same seed, same matrix, on every platform (numpy's PCG64).

    Returns
    -------
    S : ndarray of shape (d, m), float32

    Examples
    --------
    >>> S = gaussian_sketch(1000, 50, seed=0)
    >>> S.shape, S.dtype, bool(abs((S ** 2).sum(axis=0).mean() - 1000 / 50) < 0.5)
    ((1000, 50), dtype('float32'), True)
    """
    d = check_int(d, "d", low=1)
    m = check_int(m, "m", low=1)
    seed = check_seed(seed)
    return _gaussian(d, m, seed)


def _gaussian(d: int, m: int, seed: int | None) -> NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    S = rng.standard_normal((d, m), dtype=np.float32)
    S *= np.float32(1.0 / np.sqrt(m))
    return S


def sketch_columns(
    A: NDArray[np.float32], m: int, *, power_iters: int = 0, seed: int | None = None
) -> NDArray[np.float32]:
    """``A S`` with a Gaussian ``S``, optionally refined by power iterations.

    With ``power_iters = q`` the result spans the column space of
    ``(A A^T)^q A S``, re-orthonormalised (QR) after every product so that
    float32 round-off does not collapse it onto the top singular vector. Only
    n x m and d x m intermediates are formed.

    Parameters
    ----------
    A : ndarray of shape (n, d), float32
    m : int
        Sketch size.
    power_iters : int, default=0
    seed : int or None, default=None

    Returns
    -------
    Y : ndarray of shape (n, m), float32
    """
    Y = A @ _gaussian(A.shape[1], m, seed)
    for _ in range(power_iters):
        Y, _r = np.linalg.qr(Y)
        Z, _r = np.linalg.qr(A.T @ Y)
        Y = A @ Z
    return np.ascontiguousarray(Y, dtype=np.float32)
