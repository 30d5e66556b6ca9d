"""lplr_index.search.router on its own: the paths of one search over one snapshot.

Snapshots come from files (:func:`lplr_index.layout.from_container`), so nothing reads an
index's private state; each path is held against brute force over the snapshot's decoded
rows (:meth:`Snapshot.reconstruct_rows`), computed in the test.
"""

from __future__ import annotations

import numpy as np
import pytest

from lplr_index import LPLRIndex, layout
from lplr_index.fileformat import read_container
from lplr_index.search import router

N, DIM, K = 2000, 16, 5

pytestmark = pytest.mark.usefixtures("blas_single_thread")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(31)
    X = (rng.standard_normal((N, DIM)) * np.linspace(2, 0.4, DIM)).astype(np.float32)
    Q = (rng.standard_normal((6, DIM)) * np.linspace(2, 0.4, DIM)).astype(np.float32)
    return X, Q


def snapshot_of(index: LPLRIndex):
    c = read_container(index.to_bytes())
    return layout.from_container(c.header, c.arrays, c.version, mmap=False)


@pytest.fixture(scope="module")
def snaps(data):
    X, _ = data
    out = {}
    for metric in ("l2", "ip", "cosine"):
        out[metric] = snapshot_of(LPLRIndex(DIM, bits_per_coordinate=2, codec="scalar", metric=metric).build(X))
    out["ids"] = snapshot_of(LPLRIndex(DIM, rank=8).build(X, ids=np.arange(N) * 10 + 3).remove([3, 13]))
    return out


def exact_rows(st, Q, rows, k):
    """The k best of ``rows`` (stored row numbers) by the decoded rows' exact scores."""
    Xr = st.reconstruct_rows()[rows].astype(np.float64)
    Q = Q.astype(np.float64)
    if st.metric == "cosine":
        Xr /= np.linalg.norm(Xr, axis=1, keepdims=True)
        Q = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    S = -((Q[:, None, :] - Xr[None]) ** 2).sum(-1) if st.metric == "l2" else Q @ Xr.T
    order = np.argsort(-S, axis=1, kind="stable")[:, :k]
    D = np.take_along_axis(S, order, 1)
    return (-D if st.metric == "l2" else D), np.asarray(rows)[order]


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("allowed", ["all", "few", "most"])
def test_exact_scan_is_brute_force_over_the_allowed_rows(snaps, data, metric, allowed):
    _, st = snaps[metric]
    _, Q = data
    rows = {"all": np.arange(N), "few": np.arange(0, N, 7), "most": np.flatnonzero(np.arange(N) % 5)}[allowed]
    mask = None if allowed == "all" else np.isin(np.arange(N), rows)
    D, I = router.exact_scan(st, Q, K, mask, len(rows))  # "few" gathers the rows first, "most" masks
    De, Ie = exact_rows(st, Q, rows, K)
    np.testing.assert_array_equal(I, Ie)
    np.testing.assert_allclose(D, De, rtol=1e-4, atol=1e-4)


def test_gathered_and_masked_scans_agree(snaps, data, monkeypatch):
    _, st = snaps["l2"]
    _, Q = data
    mask = np.arange(N) % 3 == 0
    got = router.exact_scan(st, Q, K, mask, int(mask.sum()))
    monkeypatch.setattr(router, "_GATHER_FRACTION", 0.0)  # never gather
    masked = router.exact_scan(st, Q, K, mask, int(mask.sum()))
    np.testing.assert_array_equal(got[1], masked[1])
    np.testing.assert_allclose(got[0], masked[0], rtol=1e-5)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_fastscan_paths_return_allowed_rows_near_the_exact_ones(snaps, data, metric):
    _, st = snaps[metric]
    _, Q = data
    kc = 20 * K  # deep enough that the first stage misses almost nothing here
    for frac in (1.0, 0.9, 0.5):  # unfiltered; faiss's re-rank of most rows; the over-fetching path
        rows = np.arange(N) if frac == 1.0 else np.flatnonzero(np.random.default_rng(3).random(N) < frac)
        mask = None if frac == 1.0 else np.isin(np.arange(N), rows)
        D, I = router.search_fastscan(st, Q, K, kc, mask, len(rows))
        assert np.isin(I, rows).all()
        _, Ie = exact_rows(st, Q, rows, K)
        found = np.mean([len(np.intersect1d(a, b)) / K for a, b in zip(I, Ie)])
        assert found >= 0.9, (frac, found)  # observed 1.0 at each


def test_search_flat_excludes_the_disallowed_rows(snaps, data):
    _, st = snaps["ip"]
    _, Q = data
    mask = np.arange(N) >= N // 2
    D, I = router.search_flat(st, Q, K, mask)
    assert (I >= N // 2).all()
    De, Ie = exact_rows(st, Q, np.flatnonzero(mask), K)
    np.testing.assert_array_equal(I, Ie)
    np.testing.assert_allclose(D, De, rtol=1e-4, atol=1e-4)


def test_search_maps_rows_to_ids_and_skips_removed_rows(snaps, data):
    s, st = snaps["ids"]
    _, Q = data
    got = router.search(st, s, Q, K, mode="factored")
    _, rows = exact_rows(st, Q, np.arange(2, N), K)  # rows 0 and 1 (ids 3, 13) removed
    np.testing.assert_array_equal(got.indices, rows * 10 + 3)
    assert got.distances.dtype == np.float32 and got.indices.dtype == np.int64
    only = router.search(st, s, Q, K, mode="factored", allowed=[23, 43, 3])  # 3 is removed
    assert set(np.unique(only.indices)) == {-1, 23, 43} and (only.indices[:, 2:] == -1).all()
    assert np.isinf(only.distances[:, 2:]).all()
    none = router.search(st, s, Q, K, allowed=[])
    assert (none.indices == -1).all()


def test_rescore_takes_the_k_best_by_the_original_vectors(data):
    X, Q = data
    I = np.array([[5, 9, 2, -1], [0, 1, 3, 4]] * 3)[: len(Q)]
    for metric in ("l2", "ip", "cosine"):
        D, got = router.rescore(X, Q, I, 2, metric)
        for q in range(len(Q)):
            cand = I[q][I[q] >= 0]
            x, y = X[cand].astype(np.float64), Q[q].astype(np.float64)
            if metric == "cosine":
                x, y = x / np.linalg.norm(x, axis=1, keepdims=True), y / np.linalg.norm(y)
            s = -((x - y) ** 2).sum(1) if metric == "l2" else x @ y
            best = np.argsort(-s, kind="stable")[:2]
            np.testing.assert_array_equal(got[q], cand[best])
            np.testing.assert_allclose(D[q], -s[best] if metric == "l2" else s[best], rtol=1e-4, atol=1e-4)


def test_search_checks_its_arguments(snaps, data):
    s, st = snaps["l2"]
    X, Q = data
    with pytest.raises(ValueError, match="mode='fastscan' needs 4-bit codes, this index has 8-bit codes"):
        s8, st8 = snaps["ids"]  # rank=8: 8-bit codes
        router.search(st8, s8, Q, K, mode="fastscan")
    with pytest.raises(ValueError, match="this index has no partition"):
        router.search(st, s, Q, K, nprobe=2)
    with pytest.raises(ValueError, match=r"above the 2 GiB one search may return"):
        router.search(st, s, Q, router.MAX_RESULT_BYTES // 12, mode="factored")
    with pytest.raises(ValueError, match=r"rescore_with must hold the 2000 original vectors of dimension 16"):
        router.search(st, s, Q, K, rescore_with=X[:10])
    with pytest.raises(ValueError, match="mode must be one of"):
        router.search(st, s, Q, K, mode="exact")


def test_defaults_of_the_snapshot(snaps):
    s, st = snaps["l2"]
    assert router.default_rerank_factor(st.encoder) == router.DEFAULT_RERANK_FACTOR
    assert router.fastscan_ready(st, s) == (st.encoder.lq.bits == 4)
    assert not router.fastscan_ready(None, s)
