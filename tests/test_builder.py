"""lplr_index.builder and the snapshot successors on their own: rows to codes, codes to the
next snapshot.

Each step is called directly with settings and a source, and held against what it must
equal: the encoder applied to the whole array, a recomputation of the derived structures
on the new snapshot, the snapshot it came from left unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest

from lplr_index import builder, layout, sizing
from lplr_index._inputs import open_source
from lplr_index.codes import CodeStore
from lplr_index.packing import packed_nbytes
from lplr_index.search import blas
from lplr_index.settings import IndexSettings
from lplr_index.snapshot import Snapshot

N, DIM = 2000, 16

pytestmark = pytest.mark.usefixtures("blas_single_thread")


@pytest.fixture(scope="module")
def X():
    rng = np.random.default_rng(41)
    return (rng.standard_normal((N, DIM)) * np.linspace(2, 0.3, DIM)).astype(np.float32)


def source(X):
    return open_source(X, "X", dim=DIM)


@pytest.fixture(scope="module")
def scalar(X):
    """(settings, snapshot) of the scalar codes of X, made by the builder's steps."""
    s = IndexSettings(DIM, bits_per_coordinate=2, codec="scalar")
    rank = sizing.rank_for_budget(s, N, s.bits_l_used)
    fit = builder.fit_scalar(s, source(X), rank, s.bits_l_used, False)
    assert fit.encoder.rank == rank and fit.codes.shape == (N, packed_nbytes(rank, s.bits_l_used))
    return s, Snapshot(fit.encoder, CodeStore(fit.codes), N, 0, fit.error, s.metric, layout.fresh_version(s))


def test_encode_rows_is_the_encoder_on_the_whole_array(X, scalar):
    _, st = scalar
    blocks = [X[:300], X[300:1100], X[1100:]]
    packed, clipped = builder.encode_rows(st.encoder, open_source(blocks, "X", dim=DIM), False, "add")
    whole, whole_clipped = st.encoder.encode(X)
    np.testing.assert_array_equal(packed, whole)
    np.testing.assert_array_equal(packed, st.store.codes)  # the build's own codes
    assert clipped == whole_clipped  # (mse-col clips the tails of the build data too)
    _, far = builder.encode_rows(st.encoder, source(X[:10] * 100), False, "add")
    assert far > 0  # outside the learned range: clipped and counted


def test_fit_design_reports_the_design_it_chose(X):
    s = IndexSettings(DIM, bits_per_coordinate=1)
    fit, report = builder.fit_design(s, source(X), None, False)
    enc = fit.encoder
    assert report["chosen"] == {"basis": enc.basis, "groups": enc.lq.groups.tolist()}
    assert report["candidates"] and {"basis", "sample_recall"} <= set(report["candidates"][0])
    assert fit.codes.shape[0] == N
    assert 8 * layout.file_nbytes(s, N, 1, 4, vq=(enc.basis, enc.lq.groups)) <= 1 * N * DIM  # within the budget


def test_fit_design_names_a_budget_too_small(X):
    s = IndexSettings(DIM, bits_per_coordinate=0.01)
    with pytest.raises(ValueError, match="cannot hold even a rank-1 index of 2000 vectors of dimension 16"):
        builder.fit_design(s, source(X), None, False)


def test_measured_adds_lists_only_when_asked(X, scalar):
    s, st = scalar
    same, report = builder.measured(s, st, source(X))
    assert same.nlist is None and report["nprobe"] == {} and same.store is st.store
    assert same.rerank_factor == min(report["rerank_factor"])  # this data: the shallowest keeps them all
    lists = IndexSettings(DIM, bits_per_coordinate=2, codec="scalar", nlist=8)
    part, report = builder.measured(lists, st, source(X))
    assert part is not st and st.nlist is None and st.rerank_factor is None  # new snapshots; the old one unchanged
    assert part.nlist == 8 and part.ivf_lists.shape == (N,) and part.ivf_lists.max() < 8
    report = report["nprobe"]
    assert 1 <= part.nprobe <= 8 and part.nprobe in report and all(0 <= r <= 1 for r in report.values())
    np.testing.assert_array_equal(part.lists_of(st.store.codes[:50]), part.ivf_lists[:50])  # nearest lists


def test_partitioned_needs_4_bit_codes(X):
    s = IndexSettings(DIM, rank=4)  # 8-bit scalar codes
    fit = builder.fit_scalar(s, source(X[:500]), 4, 8, False)
    st = Snapshot(fit.encoder, CodeStore(fit.codes), 500, 0, fit.error, s.metric, 5)
    lists = IndexSettings(DIM, bits_per_coordinate=1, nlist=2)  # (settings alone never give 8-bit codes lists)
    with pytest.raises(ValueError, match="nlist=2 .* needs 4-bit codes, the build chose 8-bit codes"):
        builder.measured(lists, st, source(X[:500]))


def test_without_self_drops_the_querys_own_row():
    I = np.array([[4, 7, 1, 9], [2, 3, 5, 6]])
    np.testing.assert_array_equal(builder._without_self(I, np.array([7, 8]), 3), [[4, 1, 9], [2, 3, 5]])


# ------------------------------------------------------------ the snapshots of mutations
def test_appended_extends_what_searches_built(X, scalar):
    _, st = scalar
    st = st.replaced()  # a fresh snapshot of the same codes: its own derived structures
    st.norms2()
    packed, clipped = st.encoder.encode(X[:30] + 0.5)
    new = st.appended(packed, clipped, np.concatenate([np.arange(N), [10**6 + i for i in range(30)]]))
    assert (new.n, st.n) == (N + 30, N) and new.ids[-1] == 10**6 + 29 and st.ids is None
    np.testing.assert_array_equal(new.store.codes[N:], packed)
    np.testing.assert_array_equal(new.built("norms2"), blas.row_norms2(new.view))  # extended = recomputed
    assert new.built("fastscan") is None  # never built for st: built on first use


def test_updated_and_compacted_leave_the_old_snapshot_alone(X, scalar):
    _, st = scalar
    st = st.replaced(removed=np.isin(np.arange(N), [0, 5, N - 1]))
    st.norms2()
    rows = np.array([2, 7])
    packed, _ = st.encoder.encode(X[[100, 200]])
    old_codes = np.array(st.store.codes)
    up = st.updated(rows, packed, 0)
    np.testing.assert_array_equal(up.store.codes[rows], packed)
    np.testing.assert_array_equal(st.store.codes, old_codes)
    np.testing.assert_array_equal(up.built("norms2"), blas.row_norms2(up.view))
    small = up.compacted()
    keep = np.setdiff1d(np.arange(N), [0, 5, N - 1])
    assert small.n == N - 3 and small.removed is None and up.n == N
    np.testing.assert_array_equal(small.ids, keep)  # the ids of the rows kept (default ids with holes)
    np.testing.assert_array_equal(small.store.codes, up.store.codes[keep])
    np.testing.assert_array_equal(small.built("norms2"), blas.row_norms2(small.view))
