"""Dense bit packing of integer codes of width 1..8 bits.

Codes are packed least-significant bit first: code ``j`` of a row occupies bits
``j*bits .. (j+1)*bits - 1`` of that row's bit stream, and bit ``t`` of the
stream lives in byte ``t // 8`` at position ``t % 8``. A row of ``m`` codes
therefore takes ``ceil(m * bits / 8)`` bytes, the unused high bits of the last
byte being zero.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from ._validation import check_bits, check_int

__all__ = ["pack_bits", "unpack_bits", "packed_nbytes"]


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes needed to hold ``count`` codes of ``bits`` bits."""
    return (count * bits + 7) // 8


def pack_bits(codes: NDArray[np.uint8], bits: int) -> NDArray[np.uint8]:
    """Pack codes of ``bits`` bits densely along the last axis.

    Parameters
    ----------
    codes : ndarray of shape (..., m), uint8
        Codes, each in ``[0, 2**bits)``.
    bits : int
        Width of one code, 1 to 8.

    Returns
    -------
    packed : ndarray of shape (..., ceil(m * bits / 8)), uint8

    Examples
    --------
    >>> import numpy as np
    >>> packed = pack_bits(np.array([1, 0, 3, 2], dtype=np.uint8), 2)
    >>> packed, unpack_bits(packed, 2, 4)
    (array([177], dtype=uint8), array([1, 0, 3, 2], dtype=uint8))
    """
    bits = check_bits(bits, "bits")
    codes = np.asarray(codes)
    if codes.dtype != np.uint8:
        raise TypeError(f"codes must have dtype uint8, got {codes.dtype}")
    if codes.ndim == 0:
        raise ValueError("codes must have at least one dimension, got a scalar")
    if bits < 8 and codes.size and int(codes.max()) >= (1 << bits):
        raise ValueError(
            f"codes must be < 2**bits = {1 << bits} for bits={bits}, got a code {int(codes.max())}"
        )
    return _pack(codes, bits)


def unpack_bits(packed: NDArray[np.uint8], bits: int, count: int) -> NDArray[np.uint8]:
    """Inverse of :func:`pack_bits`: the first ``count`` codes of each row.

    Parameters
    ----------
    packed : ndarray of shape (..., nbytes), uint8
    bits : int
        Width of one code, 1 to 8.
    count : int
        Codes per row, ``m``; ``nbytes`` must equal ``ceil(m * bits / 8)``.

    Returns
    -------
    codes : ndarray of shape (..., count), uint8
    """
    bits = check_bits(bits, "bits")
    count = check_int(count, "count", low=0)
    packed = np.asarray(packed)
    if packed.dtype != np.uint8:
        raise TypeError(f"packed must have dtype uint8, got {packed.dtype}")
    need = packed_nbytes(count, bits)
    if packed.ndim == 0 or packed.shape[-1] != need:
        got = "a scalar" if packed.ndim == 0 else f"{packed.shape[-1]} bytes per row"
        raise ValueError(
            f"packed must hold ceil({count} * {bits} / 8) = {need} bytes per row, got {got}"
        )
    return _unpack(packed, bits, count)


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unvalidated kernel of :func:`pack_bits`."""
    if bits == 8:
        return np.ascontiguousarray(codes)
    m = codes.shape[-1]
    lead = codes.shape[:-1]
    if 8 % bits == 0:
        per = 8 // bits
        pad = (-m) % per
        if pad:
            codes = np.concatenate([codes, np.zeros(lead + (pad,), np.uint8)], axis=-1)
        grouped = codes.reshape(lead + ((m + pad) // per, per))
        out = np.zeros(grouped.shape[:-1], np.uint8)
        for j in range(per):
            out |= grouped[..., j] << np.uint8(j * bits)
        return out
    # general width: expand to bits, keep the low `bits`, repack
    expanded = np.unpackbits(codes[..., None], axis=-1, bitorder="little")[..., :bits]
    return np.packbits(expanded.reshape(lead + (m * bits,)), axis=-1, bitorder="little")


@lru_cache(maxsize=None)
def _byte_table(bits: int) -> np.ndarray:
    """``(256, 8 // bits)`` uint8: the codes of ``bits`` bits held in each byte value, low bits first."""
    v = np.arange(256)[:, None] >> (bits * np.arange(8 // bits))[None, :]
    table = (v & ((1 << bits) - 1)).astype(np.uint8)
    table.flags.writeable = False
    return table


def _unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Unvalidated kernel of :func:`unpack_bits`."""
    if bits == 8:
        return np.ascontiguousarray(packed[..., :count])
    lead = packed.shape[:-1]
    if 8 % bits == 0:
        # one lookup of each byte's codes in a 256-row table (np.take: 2.5x faster than the
        # shift-and-mask per position for the 40 candidate rows of a single-query re-rank,
        # 5x for 10,000 rows; fancy indexing ``table[packed]`` is slower than both)
        out = np.take(_byte_table(bits), packed, axis=0).reshape(lead + (packed.shape[-1] * (8 // bits),))
        return out if out.shape[-1] == count else np.ascontiguousarray(out[..., :count])
    stream = np.unpackbits(packed, axis=-1, count=count * bits, bitorder="little")
    stream = stream.reshape(lead + (count, bits))
    widened = np.zeros(lead + (count, 8), np.uint8)
    widened[..., :bits] = stream
    return np.packbits(widened, axis=-1, bitorder="little")[..., 0]

