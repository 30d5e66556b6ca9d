"""Bit packing is lossless: exact round trips, the documented layout, exact sizes, clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lplr_index import pack_bits, unpack_bits
from lplr_index.packing import packed_nbytes

WIDTHS = list(range(1, 9))
#: 0 .. 5 bytes' worth of 8-bit codes: every remainder of m * bits mod 8 occurs for every width
LENGTHS = list(range(0, 41))


def random_codes(rng, shape, bits):
    return rng.integers(0, 1 << bits, size=shape, dtype=np.uint8)


def reference_pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """The layout of packing.py's docstring, written out bit by bit for one row."""
    stream = [(int(c) >> b) & 1 for c in codes for b in range(bits)]  # LSB first
    out = np.zeros(math.ceil(len(stream) / 8), np.uint8)
    for t, bit in enumerate(stream):
        out[t // 8] |= bit << (t % 8)
    return out


@pytest.mark.parametrize("m", LENGTHS, ids=lambda m: f"len{m}")
@pytest.mark.parametrize("bits", WIDTHS, ids=lambda b: f"bits{b}")
def test_round_trip_is_exact(rng, bits, m):
    codes = random_codes(rng, m, bits)
    packed = pack_bits(codes, bits)
    assert packed.dtype == np.uint8
    assert packed.shape == (math.ceil(m * bits / 8),) == (packed_nbytes(m, bits),)
    np.testing.assert_array_equal(unpack_bits(packed, bits, m), codes)
    np.testing.assert_array_equal(packed, reference_pack(codes, bits))


@pytest.mark.parametrize("bits", WIDTHS, ids=lambda b: f"bits{b}")
def test_all_ones_and_all_zeros_round_trip(bits):
    m = 13  # 13 * bits is never a multiple of 8 for bits < 8: the last byte is partly used
    for value in (0, (1 << bits) - 1):
        codes = np.full(m, value, np.uint8)
        packed = pack_bits(codes, bits)
        np.testing.assert_array_equal(unpack_bits(packed, bits, m), codes)
    # the unused high bits of the last byte are zero
    used = (m * bits) % 8 or 8
    assert int(pack_bits(np.full(m, (1 << bits) - 1, np.uint8), bits)[-1]) == (1 << used) - 1


@pytest.mark.parametrize("m", [1, 7, 13, 64], ids=lambda m: f"len{m}")
@pytest.mark.parametrize("bits", WIDTHS, ids=lambda b: f"bits{b}")
def test_rows_are_packed_independently(rng, bits, m):
    codes = random_codes(rng, (5, m), bits)
    packed = pack_bits(codes, bits)
    assert packed.shape == (5, math.ceil(m * bits / 8))
    for row, packed_row in zip(codes, packed):
        np.testing.assert_array_equal(packed_row, pack_bits(row, bits))
    np.testing.assert_array_equal(unpack_bits(packed, bits, m), codes)


@pytest.mark.parametrize("bits", WIDTHS, ids=lambda b: f"bits{b}")
def test_three_dimensional_and_non_contiguous_codes(rng, bits):
    codes = random_codes(rng, (2, 3, 22), bits)
    packed = pack_bits(codes, bits)
    assert packed.shape == (2, 3, math.ceil(22 * bits / 8))
    np.testing.assert_array_equal(unpack_bits(packed, bits, 22), codes)
    strided = codes[:, :, ::2]  # non-contiguous view
    np.testing.assert_array_equal(unpack_bits(pack_bits(strided, bits), bits, 11), strided)


@pytest.mark.parametrize("m", [0, 5], ids=lambda m: f"len{m}")
@pytest.mark.parametrize("bits", WIDTHS, ids=lambda b: f"bits{b}")
def test_zero_rows_round_trip(bits, m):
    # Regression (fixed bug): for bits in {1, 2, 4} packing or unpacking a (0, m) block
    # raises "cannot reshape array of size 0" instead of returning an empty block.
    codes = np.zeros((0, m), np.uint8)
    packed = pack_bits(codes, bits)
    assert packed.shape == (0, packed_nbytes(m, bits))
    assert unpack_bits(packed, bits, m).shape == (0, m)


@pytest.mark.parametrize("bits", range(1, 8), ids=lambda b: f"bits{b}")
def test_code_too_large_is_rejected(bits):
    codes = np.array([0, 1 << bits, 1], np.uint8)
    with pytest.raises(ValueError, match=rf"codes must be < 2\*\*bits = {1 << bits} for bits={bits}"):
        pack_bits(codes, bits)


@pytest.mark.parametrize("dtype", [np.int64, np.uint16, np.int8, np.float32, bool], ids=str)
def test_wrong_dtype_is_rejected(dtype):
    with pytest.raises(TypeError, match="codes must have dtype uint8"):
        pack_bits(np.zeros(4, dtype), 2)
    with pytest.raises(TypeError, match="packed must have dtype uint8"):
        unpack_bits(np.zeros(1, dtype), 2, 4)


@pytest.mark.parametrize(
    ("nbytes", "bits", "count"),
    [(3, 3, 5), (1, 3, 5), (0, 1, 1), (2, 8, 1), (1, 1, 0)],
    ids=["too-many", "too-few", "none", "8bit-extra", "count0-one-byte"],
)
def test_wrong_byte_count_is_rejected(nbytes, bits, count):
    need = math.ceil(count * bits / 8)
    with pytest.raises(ValueError, match=rf"packed must hold .* = {need} bytes per row, got {nbytes}"):
        unpack_bits(np.zeros(nbytes, np.uint8), bits, count)


@pytest.mark.parametrize("bits", [0, 9, -1], ids=lambda b: f"bits{b}")
def test_bit_width_out_of_range_is_rejected(bits):
    with pytest.raises(ValueError, match=r"bits must be an integer in \[1, 8\]"):
        pack_bits(np.zeros(4, np.uint8), bits)
    with pytest.raises(ValueError, match=r"bits must be an integer in \[1, 8\]"):
        unpack_bits(np.zeros(4, np.uint8), bits, 4)


def test_other_bad_arguments():
    with pytest.raises(TypeError, match="bits must be an integer"):
        pack_bits(np.zeros(4, np.uint8), 2.0)
    with pytest.raises(ValueError, match="codes must have at least one dimension"):
        pack_bits(np.uint8(1), 2)
    with pytest.raises(ValueError, match=r"count must be an integer in \[0, inf\]"):
        unpack_bits(np.zeros(0, np.uint8), 2, -1)
    with pytest.raises(ValueError, match="packed must hold"):
        unpack_bits(np.uint8(1), 8, 1)
