"""lplr_index.sizing on its own: plan() from settings, the budget's rank, the peak models.

Sizes are held against real builds of the same settings (their ``nbytes``); the peak
models against the properties they must have (monotone in the rows and queries, the
terms each metric adds).
"""

from __future__ import annotations

import numpy as np
import pytest

from lplr_index import LPLRIndex, builder, layout, sizing
from lplr_index._inputs import open_source
from lplr_index.settings import IndexSettings

N, DIM = 3000, 24

pytestmark = pytest.mark.usefixtures("blas_single_thread")


@pytest.fixture(scope="module")
def X():
    rng = np.random.default_rng(21)
    return (rng.standard_normal((N, DIM)) * 0.85 ** np.arange(DIM)).astype(np.float32)


@pytest.mark.parametrize("bpc", [0.5, 1.0, 2.5])
def test_rank_for_budget_is_the_largest_rank_that_fits(bpc):
    s = IndexSettings(DIM, bits_per_coordinate=bpc, codec="scalar")
    bits_l = s.bits_l_used
    rank = sizing.rank_for_budget(s, N, bits_l)
    limit = bpc * N * DIM
    assert 8 * layout.file_nbytes(s, N, rank, bits_l) <= limit
    if rank < DIM:
        assert 8 * layout.file_nbytes(s, N, rank + 1, bits_l) > limit
    ids = ("id_bitmap", 64)  # a bitmap of user ids (ids below 512) counts in the budget
    with_ids = sizing.rank_for_budget(s, N, bits_l, ids=ids)
    assert with_ids <= rank and 8 * layout.file_nbytes(s, N, with_ids, bits_l, ids=ids) <= limit


def test_rank_for_budget_names_what_a_rank_1_index_needs():
    s = IndexSettings(DIM, bits_per_coordinate=0.01, codec="scalar")
    with pytest.raises(ValueError, match=r"cannot hold even a rank-1 index of 50 vectors of dimension 24 .* "
                                         r"that needs \d+\.\d{3} bits per coordinate"):
        sizing.rank_for_budget(s, 50, 4)


@pytest.mark.parametrize("settings", [
    dict(bits_per_coordinate=1, codec="scalar"),
    dict(bits_per_coordinate=3, codec="scalar", metric="cosine"),
    dict(rank=8, metric="ip"),
    dict(rank=6, codec="vq"),
], ids=["scalar-1", "scalar-3-cosine", "rank-8bit-ip", "vq-rank"])
def test_plan_without_data_is_the_build_when_exact(X, settings):
    p = sizing.plan(IndexSettings(DIM, **settings), N, 100, 10, "auto")
    built = LPLRIndex(DIM, **settings).build(X)
    assert p.exact
    assert (p.rank, p.bits_l, p.codec) == (built.rank, built.bits_l, built.codec)
    assert p.file_bytes == built.nbytes  # observed equal for every case here
    assert p.bits_per_coordinate == 8 * p.file_bytes / (N * DIM)
    assert p.fastscan == built.fastscan_ready
    assert p.search_mode == ("fastscan" if p.fastscan else "factored")
    assert p.build_peak_bytes > 0 and p.search_peak_bytes > 0


def test_plan_of_grouped_codes_from_a_budget_is_a_bound_without_data():
    s = IndexSettings(DIM, bits_per_coordinate=1)
    p = sizing.plan(s, N, 100, 10, "auto")
    assert (p.codec, p.exact, p.design, p.bits_l) == ("vq", False, None, 4)
    assert p.file_bytes == N * DIM // 8 and p.rank <= DIM


def test_plan_of_the_design_a_sample_chose_is_the_build(X):
    s = IndexSettings(DIM, bits_per_coordinate=1)
    fitted, report = builder.fit_design(s, open_source(X, "sample", dim=DIM), None, False, n_rows=N, encode=False)
    assert fitted.encoder is not None and report["chosen"]["basis"] == fitted.encoder.basis
    p = sizing.plan(s, N, 100, 10, "auto", fitted.encoder, True)
    built = LPLRIndex(DIM, bits_per_coordinate=1).build(X)
    assert p.exact and p.design == {"basis": fitted.encoder.basis, "groups": fitted.encoder.lq.groups.tolist()}
    assert p.design["groups"] == built.layout["groups"]
    assert p.file_bytes == built.nbytes and p.rank == built.rank
    twice = sizing.plan(s, 2 * N, 100, 10, "auto", fitted.encoder, False)  # the same design, more rows
    assert not twice.exact and twice.file_bytes > p.file_bytes


def test_plan_when_the_scalar_codes_won_the_sample():
    s = IndexSettings(DIM, bits_per_coordinate=7)
    p = sizing.plan(s, N, 100, 10, "auto", "scalar", True)
    assert p.design == {"basis": "scalar"} and p.bits_l == 8 and p.codec == "scalar"
    assert p.rank == sizing.rank_for_budget(s, N, 8) and p.search_mode == "factored"


def test_plan_refuses_fastscan_on_8_bit_codes_and_too_few_rows():
    with pytest.raises(ValueError, match="mode='fastscan' needs 4-bit codes, this plan has bits_l=8"):
        sizing.plan(IndexSettings(DIM, rank=8), N, 10, 10, "fastscan")
    with pytest.raises(ValueError, match="rank=8 needs at least 8 vectors to build on, got n=5"):
        sizing.plan(IndexSettings(DIM, rank=8), 5, 10, 10, "auto")
    with pytest.raises(ValueError, match="rank=8 needs at least 8 vectors"):
        sizing.plan(IndexSettings(DIM, rank=8, codec="vq"), 5, 10, 10, "auto")


def test_build_peak_grows_with_rows_and_holds_the_codes():
    small, large = (sizing.build_peak(n, 64, 16, 8, "l2") for n in (10_000, 100_000))
    assert large > small
    assert large >= 2 * 100_000 * 8  # the codes and their concatenation
    assert sizing.build_peak(10_000, 64, 16, 8, "cosine") > small  # the normalised block


def test_fastscan_search_peak_terms():
    base = sizing.fastscan_search_peak(100_000, 64, 16, 1000, 10)
    assert sizing.fastscan_search_peak(100_000, 64, 16, 2000, 10) > base  # more queries
    assert sizing.fastscan_search_peak(100_000, 64, 16, 1000, 10, factor=16) > base  # deeper re-rank
    assert sizing.fastscan_search_peak(100_000, 64, 16, 1000, 10, metric="cosine") >= base + 4 * 100_000  # norms
    assert sizing.fastscan_search_peak(100_000, 64, 16, 1000, 10, orthonormal=False) != base  # numpy re-rank


def test_factored_search_peak_terms():
    l2 = sizing.factored_search_peak(100_000, 64, 16, 4, 1000, 10, "l2")
    ip = sizing.factored_search_peak(100_000, 64, 16, 4, 1000, 10, "ip")
    assert l2 - ip == 4 * 100_000  # the rows' norms, for l2 and cosine only
    assert sizing.factored_search_peak(100_000, 64, 16, 4, 1000, 100, "l2") > l2
