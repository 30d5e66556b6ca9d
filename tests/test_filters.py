"""Filtered search: ``search(Q, k, allowed=...)`` against brute force over the decoded vectors.

Every filter form (an id array, a boolean mask over ids, a callable) on every
mode and metric, with removed vectors present (tombstones always apply), on an
index with default ids and one with user ids. The exact modes must return a
correct k-NN answer over the allowed live vectors; fast-scan, a candidate
generator, must return only allowed vectors, exactly ``min(k, allowed)`` of
them, with a recall threshold against the brute force.
"""

from __future__ import annotations

import numpy as np
import pytest

from lplr_index.search import router
from lplr_index import LPLRIndex, recall_at_k

METRICS = ("l2", "ip", "cosine")
MODES = ("fastscan", "factored", "reconstructed")
N, DIM, K = 3000, 32, 10

pytestmark = pytest.mark.usefixtures("blas_single_thread")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(4242)
    basis, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    X = ((rng.standard_normal((N, DIM)) * 0.9 ** np.arange(DIM)) @ basis + 0.3).astype(np.float32)
    Q = (X[rng.choice(N, 40, replace=False)] + 0.05 * rng.standard_normal((40, DIM))).astype(np.float32)
    return X, Q


@pytest.fixture(scope="module")
def indexes(data):
    """(metric, ids kind) -> a 4-bit index with 150 vectors removed; never modified afterwards."""
    X, _ = data
    rng = np.random.default_rng(7)
    user_ids = rng.choice(3 * N, N, replace=False)  # id_slots ~ 3 N: masks over ids, not rows
    out = {}
    for metric in METRICS:
        for kind in ("default", "user"):
            ids = None if kind == "default" else user_ids
            index = LPLRIndex(DIM, rank=16, bits_l=4, metric=metric).build(X, ids=ids)
            index.remove(index.ids[rng.choice(N, 150, replace=False)])
            out[metric, kind] = index
    return out


def filters(index: LPLRIndex, seed: int) -> dict:
    """name -> (allowed argument, its set of ids): each form and size of filter."""
    rng = np.random.default_rng(seed)
    ids = index.ids
    slots = index.id_slots

    def subset(frac):
        return ids[rng.random(len(ids)) < frac]

    half = np.zeros(slots, bool)
    half[subset(0.5)] = True
    third = np.zeros(slots, bool)
    third[subset(0.3)] = True
    few = subset(0.01)  # under FILTER_SCAN_FRACTION: the exact scan of the allowed rows
    three = ids[[5, 700, 2900]]  # fewer than k: padded
    tenth = subset(0.1)
    unknown = np.concatenate([subset(0.4), [3 * N + 5, 10**15]])  # ids not in the index are ignored
    return {
        "mask-half": (half, set(np.flatnonzero(half))),
        "mask-30pct": (third, set(np.flatnonzero(third))),
        "ids-1pct": (few, set(few)),
        "ids-10pct": (tenth.tolist(), set(tenth)),
        "ids-3": (three, set(three)),
        "ids-with-unknown": (unknown, set(unknown)),
        "set-of-ids": (set(tenth.tolist()), set(tenth)),
        "callable-odd": (lambda i: i % 2 == 1, {i for i in ids if i % 2 == 1}),
        "callable-numpy-bool": (lambda i: np.bool_(i % 3 == 0), {i for i in ids if i % 3 == 0}),
        "nothing": (np.array([], np.int64), set()),
    }


FILTERS = ["mask-half", "mask-30pct", "ids-1pct", "ids-10pct", "ids-3", "ids-with-unknown", "set-of-ids",
           "callable-odd", "callable-numpy-bool", "nothing"]


def record_batches(monkeypatch, owner, name: str, at: int) -> list:
    """Wrap the function or method ``owner.name`` to record the length of its positional argument
    ``at`` (the queries) at every call; returns the list of lengths."""
    sizes = []
    real = getattr(owner, name)

    def recording(*args, **kwargs):
        sizes.append(len(args[at]))
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, recording)
    return sizes


def allowed_live_rows(index: LPLRIndex, allowed_ids: set) -> np.ndarray:
    """Rows the search may return, computed independently of the index's filter code."""
    live = set(index.live_ids.tolist())
    return np.array([r for r, i in enumerate(index.ids.tolist()) if i in allowed_ids and i in live], np.int64)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["default", "user"])
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("name", FILTERS)
def test_filtered_search_against_brute_force(indexes, data, metric, kind, mode, name, knn_checker, brute_knn):
    index = indexes[metric, kind]
    _, Q = data
    allowed, allowed_ids = filters(index, seed=len(name))[name]
    rows = allowed_live_rows(index, allowed_ids)
    D, I = index.search(Q, K, mode=mode, allowed=allowed)
    kk = min(K, len(rows))
    fill = np.inf if metric == "l2" else -np.inf
    # padding: exactly k - kk missing results per query
    assert (I[:, kk:] == -1).all() and (D[:, kk:] == fill).all()
    assert (I[:, :kk] >= 0).all()
    if kk == 0:
        return
    sub_ids = index.ids[rows]
    assert np.isin(I[:, :kk], sub_ids).all(), "a disallowed or removed id was returned"
    # positions of the returned ids among the allowed rows
    pos = _positions(sub_ids, I[:, :kk])
    Xr = index.reconstruct()[rows]
    if mode == "fastscan":
        truth = brute_knn(Xr, Q, kk, metric)
        # observed 1.000 on every case here (the over-fetch finds the allowed neighbours)
        assert recall_at_k(pos, truth, kk) >= 0.97
        D_true = brute_force_distances(Xr, Q, pos, metric)
        np.testing.assert_allclose(D[:, :kk], D_true, rtol=1e-4, atol=1e-4)
    else:
        knn_checker(Xr, Q, D[:, :kk], pos, metric)


def brute_force_distances(Xr, Q, pos, metric):
    Xr, Q = Xr.astype(np.float64), Q.astype(np.float64)
    if metric == "cosine":
        Xr = Xr / np.linalg.norm(Xr, axis=1, keepdims=True)
        Q = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    V = Xr[pos]  # (nq, kk, dim)
    if metric == "l2":
        return ((V - Q[:, None, :]) ** 2).sum(-1)
    return np.einsum("qkd,qd->qk", V, Q)


@pytest.mark.parametrize("metric", METRICS)
def test_fastscan_falls_back_to_the_exact_scan_when_few_candidates_survive(indexes, data, metric, monkeypatch,
                                                                             knn_checker):
    """Allowed rows far from the queries: over-fetched fast-scan candidates miss them all."""
    index = indexes[metric, "default"]
    _, Q = data
    # no over-fetch at all: most candidates are dropped, so most queries need the fallback
    monkeypatch.setattr(router, "FILTER_OVERFETCH", 1e-9)
    monkeypatch.setattr(router, "FILTER_SCAN_FRACTION", 0.0)
    calls = record_batches(monkeypatch, router, "exact_scan", 1)
    live = index.live_ids
    allowed = live[live % 10 == 0]  # 10 %: about 4 of the 40 candidates survive
    D, I = index.search(Q, K, mode="fastscan", allowed=allowed)
    assert calls and 0 < calls[0] <= len(Q)  # the short queries only went to the exact scan
    rows = np.flatnonzero(np.isin(index.ids, allowed))
    assert np.isin(I, index.ids[rows]).all() and (I >= 0).all()
    Xr = index.reconstruct()[rows]
    De, Ie = index.search(Q, K, mode="factored", allowed=allowed)
    assert recall_at_k(I, Ie, K) >= 0.97  # observed 1.0
    knn_checker(Xr, Q, De, _positions(index.ids[rows], Ie), metric)


def test_filtered_fastscan_takes_large_batches_in_query_chunks(indexes, data, monkeypatch):
    # the over-fetched candidates of one chunk of queries stay under SEARCH_CHUNK_BYTES
    from lplr_index.search import fastscan

    index = indexes["l2", "default"]
    _, Q = data
    live = index.live_ids
    allowed = live[live % 2 == 0]
    want = index.search(Q, K, mode="fastscan", allowed=allowed)
    sizes = record_batches(monkeypatch, fastscan.FastScanScorer, "candidates", 1)
    kf = int(np.ceil(router.FILTER_OVERFETCH * index.rerank_factor * K / (len(allowed) / index.ntotal)))
    monkeypatch.setattr(fastscan, "SEARCH_CHUNK_BYTES", 16 * kf * 9)  # 9 queries per chunk
    got = index.search(Q, K, mode="fastscan", allowed=allowed)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)  # products round by batch size
    assert (got[1] == want[1]).mean() > 0.99  # observed 1.0
    assert max(sizes) == 9 and sum(sizes) == len(Q)


def test_small_allowed_sets_scan_the_allowed_rows_exactly(indexes, data, monkeypatch):
    index = indexes["l2", "default"]
    _, Q = data

    def no_fastscan(self):
        raise AssertionError("fast-scan used for a filter under FILTER_SCAN_FRACTION")

    from lplr_index.snapshot import Snapshot

    monkeypatch.setattr(Snapshot, "fastscan", no_fastscan)  # what a search reads
    allowed = index.live_ids[:: 50]  # 2 % of the rows
    _, I = index.search(Q, K, mode="fastscan", allowed=allowed)
    _, Ie = index.search(Q, K, mode="factored", allowed=allowed)
    np.testing.assert_array_equal(I, Ie)


@pytest.mark.parametrize("kind", ["default", "user"])
def test_mask_of_all_true_equals_no_filter_and_tombstones_still_apply(indexes, data, kind):
    index = indexes["ip", kind]
    _, Q = data
    removed = np.setdiff1d(index.ids, index.live_ids)
    for mode in MODES:
        D0, I0 = index.search(Q, K, mode=mode)
        D1, I1 = index.search(Q, K, mode=mode, allowed=np.ones(index.id_slots, bool))
        D2, I2 = index.search(Q, K, mode=mode, allowed=removed)  # only removed ids: nothing
        np.testing.assert_array_equal(I0, I1)
        np.testing.assert_array_equal(D0, D1)
        assert not np.isin(I0, removed).any()
        assert (I2 == -1).all() and (D2 == -np.inf).all()


def test_filter_with_rescoring(indexes, data):
    index = indexes["l2", "user"]
    X, Q = data
    allowed = index.live_ids[index.live_ids % 4 == 1]
    D, I = index.search(Q, K, allowed=allowed, rescore_with=X)
    rows = np.flatnonzero(np.isin(index.ids, allowed))
    exact = ((X[rows][None, :, :].astype(np.float64) - Q[:, None, :]) ** 2).sum(-1)
    best = np.sort(exact, axis=1)[:, :K]
    assert np.isin(I, allowed).all()
    # rescored distances are the exact ones of the returned ids
    np.testing.assert_allclose(D, np.take_along_axis(exact, _positions(index.ids[rows], I), 1), rtol=1e-4, atol=1e-4)
    assert np.mean(np.abs(D - best) < 1e-3) >= 0.9  # observed 1.0: the exact allowed top k


def _positions(ids: np.ndarray, I: np.ndarray) -> np.ndarray:
    order = np.argsort(ids)
    return order[np.searchsorted(ids[order], I)]


# -------------------------------------------------------------- bad filters
@pytest.mark.parametrize(
    ("allowed", "exc", "match"),
    [
        (np.ones(5, bool), ValueError, r"allowed, a boolean mask over ids, must have shape \(3000,\).*got shape \(5,\)"),
        (np.ones((3000, 1), bool), ValueError, r"must have shape \(3000,\).*got shape \(3000, 1\)"),
        (np.array([0.5, 1.0]), TypeError, "allowed must be an array of ids .* got an array of dtype float64"),
        (np.array(["a"]), TypeError, "allowed must be an array of ids .* got an array of dtype <U1"),
        (np.array([-1, 3]), ValueError, r"allowed must be in \[0, 2\*\*63 - 1\] .* got -1"),
        ({1, "a"}, TypeError, "allowed must be an array of ids, a boolean mask over ids or a callable"),
        (lambda i: 1, TypeError, r"allowed\(id\) must return a bool, got int \(1\) for id 0"),
        (lambda i: None, TypeError, r"allowed\(id\) must return a bool, got NoneType"),
    ],
    ids=["mask-too-short", "mask-2-D", "float-ids", "strings", "negative-id", "set-with-a-string", "callable-int",
         "callable-none"],
)
def test_bad_filters(data, allowed, exc, match):
    X, Q = data
    index = LPLRIndex(DIM, rank=8, bits_l=4).build(X)
    with pytest.raises(exc, match=match):
        index.search(Q, 3, allowed=allowed)


def test_callable_that_raises_propagates(data):
    X, Q = data
    index = LPLRIndex(DIM, rank=8, bits_l=4).build(X[:100])

    def boom(i):
        raise RuntimeError(f"lookup of {i} failed")

    with pytest.raises(RuntimeError, match="lookup of 0 failed"):
        index.search(Q, 3, allowed=boom)


def test_same_answers_as_faiss_id_map_with_removals_and_a_selector(indexes, data):
    """A faiss script's steps (IndexIDMap2 over the same decoded vectors, remove_ids,
    an IDSelectorBatch filter) give the same neighbours as the index."""
    import faiss

    index = indexes["l2", "user"]
    _, Q = data
    Xr = index.reconstruct()
    ref = faiss.IndexIDMap2(faiss.IndexFlatL2(DIM))
    ref.add_with_ids(Xr, index.ids)
    removed = np.setdiff1d(index.ids, index.live_ids)
    ref.remove_ids(removed)
    allowed = index.live_ids[index.live_ids % 3 == 0]
    params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
    Df, If = ref.search(Q, K, params=params)
    for mode in MODES:
        D, I = index.search(Q, K, mode=mode, allowed=allowed)
        # observed: identical ids in every mode; distances to float32 rounding
        assert (I == If).mean() >= 0.99, mode
        np.testing.assert_allclose(D, Df, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("metric", METRICS)
def test_mostly_allowed_filters_rerank_in_faiss(indexes, data, metric, monkeypatch, brute_knn):
    # removed vectors alone (or a filter allowing most rows): faiss's exact re-rank, not numpy's
    from lplr_index.search import blas

    index = indexes[metric, "user"]
    _, Q = data
    allowed = index.live_ids[index.live_ids % 10 != 3]  # about 0.86 of the rows
    assert len(allowed) / index.ntotal >= router.FILTER_REFINE_FRACTION
    want = {name: index.search(Q, K, mode="fastscan", allowed=a) for name, a in (("tombstones", None),
                                                                                 ("filter", allowed))}

    def no_numpy_rerank(*a, **kw):
        raise AssertionError("the numpy re-ranker ran")

    monkeypatch.setattr(blas, "rerank", no_numpy_rerank)
    for name, a in (("tombstones", None), ("filter", allowed)):
        D, I = index.search(Q, K, mode="fastscan", allowed=a)
        np.testing.assert_array_equal(I, want[name][1])
        ok = index.live_ids if a is None else allowed
        rows = np.flatnonzero(np.isin(index.ids, ok))
        assert np.isin(I, index.ids[rows]).all() and (I >= 0).all()
        Xr = index.reconstruct()[rows]
        pos = _positions(index.ids[rows], I)
        assert recall_at_k(pos, brute_knn(Xr, Q, K, metric), K) >= 0.97  # observed 1.0
        np.testing.assert_allclose(D, brute_force_distances(Xr, Q, pos, metric), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("metric", METRICS)
def test_mostly_allowed_filter_missing_the_near_rows_falls_back(indexes, data, metric, monkeypatch):
    # 0.98 of the rows allowed, but not the queries' nearest ones: faiss's candidates hold
    # too few allowed rows, so those queries take the over-fetching path, whose answer it is
    index = indexes[metric, "default"]
    Q = data[1][:4]
    _, near = index.search(Q, 8 * K, mode="factored")
    allowed = np.setdiff1d(index.live_ids, near[:, : 6 * K])
    assert len(allowed) / index.ntotal >= router.FILTER_REFINE_FRACTION
    calls = record_batches(monkeypatch, router, "filtered_fastscan", 1)
    D, I = index.search(Q, K, mode="fastscan", allowed=allowed)
    assert sum(calls) == len(Q)  # every query's 40-odd candidates were all among its 60 nearest
    monkeypatch.setattr(router, "FILTER_REFINE_FRACTION", 2.0)  # the over-fetching path alone
    D2, I2 = index.search(Q, K, mode="fastscan", allowed=allowed)
    np.testing.assert_array_equal(I, I2)
    np.testing.assert_array_equal(D, D2)
    assert np.isin(I, allowed).all()


def test_mostly_allowed_filters_take_large_batches_in_query_chunks(indexes, data, monkeypatch):
    # faiss's candidates (k' / fraction per query) of one chunk stay under SEARCH_CHUNK_BYTES,
    # and the chunks' answers are the whole batch's
    from lplr_index.search import fastscan

    index = indexes["cosine", "default"]
    _, Q = data
    want = index.search(Q, K, mode="fastscan")  # removed vectors only: the faiss re-rank path
    sizes = record_batches(monkeypatch, router, "refined_filtered", 1)  # (snapshot, queries, ...)
    kd = int(np.ceil(index.rerank_factor * K / (len(index) / index.ntotal)))
    monkeypatch.setattr(fastscan, "SEARCH_CHUNK_BYTES", 16 * kd * 9)  # 9 queries per chunk
    got = index.search(Q, K, mode="fastscan")
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    assert (got[1] == want[1]).mean() > 0.99  # observed 1.0
    assert max(sizes) == 9 and sum(sizes) == len(Q)
