"""The re-rank depth a build measures (:func:`lplr_index.builder.measure_rerank_factor`): stored in
format version 6, the depth a search uses when it names none."""

from __future__ import annotations

import numpy as np
import pytest

from lplr_index import IndexFileError, LPLRIndex
from lplr_index.builder import measure_rerank_factor
from lplr_index.fileformat import read_container
from lplr_index.search.router import DEFAULT_RERANK_FACTOR, RERANK_FACTORS_TRIED

pytestmark = pytest.mark.usefixtures("blas_single_thread")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    basis, _ = np.linalg.qr(rng.standard_normal((48, 48)))
    X = ((rng.standard_normal((3000, 48)) * 0.9 ** np.arange(48)) @ basis).astype(np.float32)
    return X, (X[:40] + 0.05 * rng.standard_normal((40, 48))).astype(np.float32)


def test_the_smallest_factor_keeping_the_default_agreement_is_chosen(data):
    X, Q = data
    index = LPLRIndex(48, bits_per_coordinate=1, seed=0).build(X)
    st = index._state
    _, exact = index.search(Q, 10, mode="factored")
    rng = np.random.default_rng(0)
    others = np.array([rng.choice(np.setdiff1d(np.arange(len(X)), e), 30, replace=False) for e in exact])
    # the exact top 10 first: every factor finds them all, the smallest is chosen
    cand = np.concatenate([exact, others], axis=1)
    factor, report = measure_rerank_factor(st, Q, lambda kc: cand[:, :kc])
    assert factor == 2 and report == {2: 1.0, 3: 1.0, 4: 1.0}
    # one neighbour of one query ranked 25th by fast-scan: 3 candidates a result needed
    late = cand.copy()
    late[0, [9, 24]] = late[0, [24, 9]]
    factor, report = measure_rerank_factor(st, Q, lambda kc: late[:, :kc])
    assert factor == 3 and report == {2: pytest.approx(1 - 0.1 / len(Q)), 3: 1.0, 4: 1.0}
    # ranked 35th: the default itself; missing candidates (-1) never count
    late[0, [24, 34]] = late[0, [34, 24]]
    late[1, 30:] = -1
    factor, report = measure_rerank_factor(st, Q, lambda kc: late[:, :kc])
    assert factor == DEFAULT_RERANK_FACTOR and report[DEFAULT_RERANK_FACTOR] == 1.0 > report[3]
    # agreement is with the default depth's results, not the exact scan: a neighbour no depth finds
    # costs nothing
    late[0, 34] = -1
    factor, report = measure_rerank_factor(st, Q, lambda kc: late[:, :kc])
    assert factor == 3 and report[3] == report[4] == 1.0


@pytest.mark.parametrize("kw", [dict(bits_per_coordinate=1), dict(bits_per_coordinate=1, metric="cosine"),
                                dict(bits_per_coordinate=4), dict(bits_per_coordinate=1, nlist=16)])
def test_a_build_measures_the_depth_its_searches_use(data, kw, tmp_path):
    X, Q = data
    index = LPLRIndex(48, seed=0, **kw).build(X)
    two = index.layout.get("groups") is not None and any(g[2] == 2 for g in index.layout["groups"])
    tried = RERANK_FACTORS_TRIED[16 if two else DEFAULT_RERANK_FACTOR]
    assert sorted(index.rerank_report) == list(tried)
    assert index.rerank_factor in tried
    assert index.rerank_report[index.rerank_factor] == index.rerank_report[tried[-1]] == 1.0
    assert all(0 <= a <= 1 for a in index.rerank_report.values())
    D, I = index.search(Q, 10)
    D2, I2 = index.search(Q, 10, rerank_factor=index.rerank_factor)
    np.testing.assert_array_equal(I, I2)
    np.testing.assert_array_equal(D, D2)
    # stored: the file says it, a load searches with it
    index.save(tmp_path / "ix.lplr")
    c = read_container(tmp_path / "ix.lplr")
    assert c.version == 6 and c.header["rerank_factor"] == index.rerank_factor
    again = LPLRIndex.load(tmp_path / "ix.lplr")
    assert again.rerank_factor == index.rerank_factor
    np.testing.assert_array_equal(again.search(Q, 10)[1], I)
    assert LPLRIndex.load(index.to_bytes()).rerank_factor == index.rerank_factor
    # kept by mutations
    again.add(X[:10])
    again.remove([3])
    again.compact()
    assert again.rerank_factor == index.rerank_factor


def test_without_fast_scan_the_default_depth_is_stored(data, tmp_path):
    X, _ = data
    index = LPLRIndex(48, rank=12, bits_l=8, codec="scalar").build(X)
    assert index.rerank_report == {} and index.rerank_factor == DEFAULT_RERANK_FACTOR
    index.save(tmp_path / "ix.lplr")
    assert read_container(tmp_path / "ix.lplr").header["rerank_factor"] == DEFAULT_RERANK_FACTOR


def test_rescoring_with_the_vectors_keeps_the_default_depth(data, monkeypatch):
    from lplr_index.search import router

    X, Q = data
    index = LPLRIndex(48, bits_per_coordinate=1, seed=0).build(X)
    assert index.rerank_factor < DEFAULT_RERANK_FACTOR  # this data: 2
    seen = []
    real = router.search_fastscan
    monkeypatch.setattr(router, "search_fastscan", lambda st, Q, keep, kc, *a: seen.append(kc) or real(st, Q, keep, kc, *a))
    index.search(Q, 10)
    index.search(Q, 10, rescore_with=X)
    assert seen == [10 * index.rerank_factor, 10 * DEFAULT_RERANK_FACTOR]


def test_a_damaged_depth_names_the_file(data, tmp_path):
    from lplr_index.fileformat import container_to_bytes

    X, _ = data
    index = LPLRIndex(48, bits_per_coordinate=1).build(X)
    c = read_container(index.to_bytes())
    with pytest.raises(IndexFileError, match="rerank_factor"):
        LPLRIndex.load(container_to_bytes(dict(c.header, rerank_factor=0), c.arrays, version=6))
