"""Argument checks shared by the public functions.

Every error names the argument, what is allowed and what was given. Public
functions validate here, then call private unvalidated kernels.
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import numpy as np

MAX_BITS = 8


def check_matrix(
    X: Any,
    name: str = "X",
    *,
    dim: int | None = None,
    dim_what: str = "this index holds",
    dtype: type = np.float32,
    allow_empty: bool = False,
) -> np.ndarray:
    """Return ``X`` as a C-contiguous 2-D finite floating array of ``dtype``.

    float64, integer and non-contiguous inputs are converted; complex, object,
    string and boolean inputs, wrong shapes and NaN/inf are rejected.
    """
    if isinstance(X, np.ndarray):
        arr = X
    else:
        try:
            arr = np.asarray(X)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{name} must be a 2-D array of numbers, got {type(X).__name__} "
                f"that numpy cannot convert ({exc})"
            ) from None
    if arr.dtype.kind not in "fiu":
        raise TypeError(
            f"{name} must hold real numbers (float or integer dtype), got dtype {arr.dtype}"
        )
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array of shape (n_vectors, n_dimensions), "
            f"got an array with {arr.ndim} dimension(s) of shape {arr.shape}"
        )
    if not allow_empty and (arr.shape[0] == 0 or arr.shape[1] == 0):
        raise ValueError(f"{name} must hold at least one row and one column, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(
            f"{name} has {arr.shape[1]} dimensions, but {dim_what} {dim}-dimensional vectors"
        )
    out = np.ascontiguousarray(arr, dtype=dtype)
    if out.dtype.kind == "f" and not _all_finite(out):
        bad = np.argwhere(~np.isfinite(out))[0]
        raise ValueError(
            f"{name} must be finite, got a non-finite value ({out[tuple(bad)]}) at row {bad[0]}, "
            f"column {bad[1]}"
        )
    return out


def float_dtype_of(X: Any) -> type:
    """float64 for float64 arrays (kept for exact reproduction), float32 for anything else."""
    return np.float64 if getattr(X, "dtype", None) == np.float64 else np.float32


def _all_finite(X: np.ndarray, rows: int = 8192) -> bool:
    """``np.isfinite(X).all()`` in row blocks (no n x d boolean temporary)."""
    return all(np.isfinite(X[s : s + rows]).all() for s in range(0, X.shape[0], rows))


def check_int(value: Any, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` as int if it is an integer in ``[low, high]``."""
    if type(value) is int and (low is None or value >= low) and (high is None or value <= high):
        return value  # the common case, without the ABC check (1-2 us a call, several a search)
    lo = "-inf" if low is None else low
    hi = "inf" if high is None else high
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        allowed = "" if low is None and high is None else f" (allowed: integers in [{lo}, {hi}])"
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__}){allowed}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value}")
    return value


def check_bits(value: Any, name: str) -> int:
    """Bit widths of codes: integers 1..8."""
    return check_int(value, name, low=1, high=MAX_BITS)


def check_positive_float(value: Any, name: str, *, high: float | None = None) -> float:
    """Return ``value`` as a finite float > 0 (and <= ``high`` when given)."""
    allowed = "> 0" if high is None else f"> 0 and <= {high:g}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number ({allowed}), got {value!r} ({type(value).__name__})")
    try:
        value = float(value)
    except OverflowError:  # an integer beyond float range
        raise ValueError(f"{name} must be a finite number {allowed}, got an integer of "
                         f"{len(str(abs(value)))} digits") from None
    if not np.isfinite(value) or value <= 0 or (high is not None and value > high):
        raise ValueError(f"{name} must be a finite number {allowed}, got {value}")
    return value


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_seed(seed: Any, name: str = "seed") -> int | None:
    """Seeds are None or non-negative integers."""
    if seed is None:
        return None
    return check_int(seed, name, low=0)
