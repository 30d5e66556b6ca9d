"""lplr_index.layout on its own: a snapshot's header and arrays, their sizes, and back.

Snapshots come from files (:func:`layout.from_container` of an index's bytes), so no
index's private state is read; every size is checked against the bytes actually written.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lplr_index import LPLRIndex, layout
from lplr_index.fileformat import container_to_bytes, read_container
from lplr_index.packing import packed_nbytes
from lplr_index.search import ivf
from lplr_index.settings import IndexSettings

N, DIM = 2000, 32

pytestmark = pytest.mark.usefixtures("blas_single_thread")

CASES = {
    "vq": dict(bits_per_coordinate=1),
    "vq-user-ids-removed": dict(bits_per_coordinate=2, metric="cosine"),
    "scalar": dict(bits_per_coordinate=1, codec="scalar"),
    "scalar-minmax-8bit": dict(rank=6, quantizer="minmax", metric="ip"),
    "lists": dict(bits_per_coordinate=1, nlist=4),
}


@pytest.fixture(scope="module")
def X():
    rng = np.random.default_rng(11)
    return (rng.standard_normal((N, DIM)) * np.linspace(2, 0.3, DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def files(X):
    out = {}
    for name, kw in CASES.items():
        index = LPLRIndex(DIM, **kw)
        if name == "vq-user-ids-removed":
            index.build(X, ids=np.arange(N) * 3 + 1).remove([1, 4])
        else:
            index.build(X)
        out[name] = index.to_bytes()
    return out


def parts(data: bytes):
    c = read_container(data)
    return (c.header, c.arrays, c.version)


@pytest.mark.parametrize("name", CASES)
def test_from_container_then_container_gives_the_same_bytes(files, name):
    s, st = layout.from_container(*parts(files[name]), mmap=False)
    header, arrays, version = layout.container(s, st)
    assert container_to_bytes(header, arrays, version=version) == files[name]


@pytest.mark.parametrize("name", CASES)
def test_sizes_are_the_files(files, name):
    s, st = layout.from_container(*parts(files[name]), mmap=False)
    size = len(files[name])
    assert layout.nbytes_of(s, st) == size
    assert layout.file_nbytes(s, st.n, st.encoder.rank, st.encoder.lq.bits, state=st) == size
    breakdown = layout.storage_breakdown(s, st)
    assert sum(breakdown.values()) == size and min(breakdown.values()) >= 0
    assert breakdown["codes"] == st.store.codes.nbytes
    assert ("coarse_centroids" in breakdown) == (name == "lists")


def test_from_container_reads_ids_tombstones_and_lists(files):
    s, st = layout.from_container(*parts(files["vq-user-ids-removed"]), mmap=False)
    assert s.metric == "cosine" and st.n == N and st.n_removed == 2
    np.testing.assert_array_equal(st.ids, np.arange(N) * 3 + 1)
    assert st.removed[:2].all() and not st.removed[2:].any()
    assert not st.ids.flags.writeable and not st.removed.flags.writeable
    s, st = layout.from_container(*parts(files["lists"]), mmap=False)
    assert st.nlist == 4 and st.ivf_lists.shape == (N,) and 1 <= st.nprobe <= 4
    assert st.ivf_lists.max() < 4


def test_fresh_build_sizes_equal_the_built_files(files):
    # a fresh build's size (no state) is what the build writes: the scalar codes' widest header
    s = IndexSettings(DIM, bits_per_coordinate=1, codec="scalar")
    _, st = layout.from_container(*parts(files["scalar"]), mmap=False)
    assert layout.file_nbytes(s, N, st.encoder.rank, 4) == len(files["scalar"])


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6])
def test_header_holds_the_settings_its_version_has(version):
    s = IndexSettings(DIM, bits_per_coordinate=1, nlist="auto")
    h = layout.header(s, 10, 4, 4, 10, 0, "pinv", 0.125, version=version, nprobe=None)
    assert h["format"] == "lplr-index" and h["ntotal"] == 10 and h["fit_error"] == "1.250000e-01"
    assert ("codec" in h["settings"]) == (version >= 3)
    assert ("nlist" in h["settings"]) == (version >= 5)
    assert ("nprobe" in h) == (version >= 5)
    assert ("rerank_factor" in h) == (version >= 6)


@pytest.mark.parametrize("quantizer, per_column", [("mse-col", True), ("minmax", False)])
def test_arrays_meta_shapes_of_scalar_codes(quantizer, per_column):
    s = IndexSettings(DIM, rank=5, bits_l=3, bits_r=6, quantizer=quantizer)
    meta = layout.arrays_meta(s, 100, 5, 3, 5, ids=("ids", 100), removed=True, ivf=8)
    assert meta["l_codes"].shape == (100, packed_nbytes(5, 3))
    assert meta["r_codes"].shape == (5, packed_nbytes(DIM, 6))
    assert meta["l_lo"].shape == ((5,) if per_column else (1,))
    assert meta["r_hi"].shape == ((DIM,) if per_column else (1,))
    assert meta["ids"].dtype == np.int64 and meta["ids"].shape == (100,)
    assert meta["removed"].shape == (packed_nbytes(100, 1),)
    assert meta["ivf_centroids"].shape == (8, 5) and meta["ivf_lists"].shape == (packed_nbytes(100, 3),)
    assert meta["mean"].shape == (DIM,)
    assert all(a.strides == (0,) * a.ndim for a in meta.values())  # stand-ins: nothing allocated
    assert "mean" not in layout.arrays_meta(s, 100, 5, 3, 1)  # version 1: uncentred


def test_arrays_meta_shapes_of_grouped_codes():
    s = IndexSettings(DIM, bits_per_coordinate=1)
    groups = np.array([[1, 2, 2], [4, 3, 1]], np.int32)  # 2 two-level singles, 3 groups of 4
    meta = layout.arrays_meta(s, 50, 0, 4, 4, vq=("rotation", groups))
    assert meta["l_codes"].shape == (50, packed_nbytes(2 * 2 + 3, 4))
    assert meta["vq_dirs"].shape == (2 + 12,) and meta["vq_groups"].shape == (2, 3)
    assert "r_codes" not in meta
    assert layout.arrays_meta(s, 50, 0, 4, 3, vq=("pca", groups))["vq_groups"].shape == (2, 2)


def test_nlist_for_and_fresh_version():
    auto = IndexSettings(DIM, bits_per_coordinate=1, nlist="auto")
    assert layout.nlist_for(auto, layout.AUTO_NLIST_MIN_ROWS - 1) is None
    assert layout.nlist_for(auto, 10**5) == ivf.default_nlist(10**5)
    assert layout.nlist_for(IndexSettings(DIM, bits_per_coordinate=1, nlist=7), 10) == 7
    assert layout.fresh_version(auto) == layout.RERANK_LAYOUT_VERSION == 6  # every build: the latest
    assert layout.fresh_version(IndexSettings(DIM, bits_per_coordinate=1)) == 6


def edited(data: bytes, **arrays):
    header, old, version = parts(data)
    new = dict(old)
    for key, value in arrays.items():
        if value is None:
            new.pop(key)
        else:
            new[key] = value
    return header, new, version


def test_from_container_refuses_what_no_build_writes(files):
    data = files["scalar"]
    header, arrays, version = parts(data)
    codes = np.array(arrays["l_codes"])
    rank = header["settings"]["rank"]
    if (rank * 4) % 8:  # set an unused padding bit
        codes[0, -1] |= 0x80
        with pytest.raises(ValueError, match="l_codes has non-zero padding bits"):
            layout.from_container(*edited(data, l_codes=codes), mmap=False)
    with pytest.raises(ValueError, match=r"array 'l_codes' has shape"):
        layout.from_container(*edited(data, l_codes=codes[:-1]), mmap=False)
    with pytest.raises(ValueError, match="differ from the expected"):
        layout.from_container(*edited(data, mean=None), mmap=False)
    lo = np.array(arrays["l_lo"])
    lo[0] = np.nan
    with pytest.raises(ValueError, match="quantizer levels of L are not finite and ordered"):
        layout.from_container(*edited(data, l_lo=lo), mmap=False)
    with pytest.raises(ValueError, match="expected 'lplr-index'"):
        layout.from_container(dict(header, format="other"), arrays, version, mmap=False)
    with pytest.raises(ValueError, match="does not go with codec='scalar'"):
        layout.from_container(dict(header, encoder="pca"), arrays, version, mmap=False)


def test_checked_quantizer_and_padding_bits():
    q = layout.checked_quantizer("mse-col", 4, [0, -1], [1, 1], "L")
    assert q.lo.dtype == np.float32 and q.bits == 4
    with pytest.raises(ValueError, match="not finite and ordered"):
        layout.checked_quantizer("mse-col", 4, [2.0], [1.0], "R")
    with pytest.raises(ValueError, match="exceed 1e"):
        layout.checked_quantizer("mse-col", 4, [-1e18], [1.0], "R")
    layout.check_padding_bits(np.array([[0xFF, 0x07]], np.uint8), 1, 11, "x")
    with pytest.raises(ValueError, match="x has non-zero padding bits: its rows do not hold 11 codes of 1 bits"):
        layout.check_padding_bits(np.array([[0xFF, 0x0F]], np.uint8), 1, 11, "x")


def test_vq_layout_of_each_codec(files):
    s, st = layout.from_container(*parts(files["vq"]), mmap=False)
    basis, groups = layout.vq_layout(st.encoder)
    assert basis == st.encoder.basis and groups is st.encoder.lq.groups
    _, st = layout.from_container(*parts(files["scalar"]), mmap=False)
    assert layout.vq_layout(st.encoder) is None
    assert dataclasses.asdict(s)["codec"] == "auto"
