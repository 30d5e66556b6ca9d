"""Partitioned search as part of the index: ``LPLRIndex(nlist=...)`` and ``search(nprobe=...)``."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from lplr_index import LPLRIndex
from lplr_index.cli import main as cli_main
from lplr_index.search import ivf
from lplr_index.settings import IndexSettings

pytestmark = pytest.mark.usefixtures("blas_single_thread")

N, DIM, NLIST = 4000, 32, 32


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(27)
    centres = rng.standard_normal((16, DIM))
    y = rng.integers(16, size=N + 40)
    X = ((centres[y] + rng.standard_normal((len(y), DIM))) * 0.9 ** np.arange(DIM)).astype(np.float32)
    return X[:N], X[N:]


def exhaustive(index: LPLRIndex) -> LPLRIndex:
    """The same snapshot without its lists: the exhaustive fast-scan search of the same codes."""
    plain = copy.copy(index)
    plain._state = dataclasses.replace(index._state, ivf_centroids=None, ivf_lists=None, nprobe=None)
    return plain


KINDS = {"vq-l2": dict(bits_per_coordinate=1), "vq-ip": dict(bits_per_coordinate=1, metric="ip"),
         "vq-cosine": dict(bits_per_coordinate=1, metric="cosine"),
         "scalar-l2": dict(rank=16, bits_l=4, codec="scalar"),
         "lstsq-l2": dict(rank=16, bits_l=4, codec="scalar", factor="lstsq")}


@pytest.fixture(scope="module", params=sorted(KINDS))
def built(request, data):
    X, _ = data
    return LPLRIndex(DIM, nlist=NLIST, **KINDS[request.param]).build(X)


def test_nprobe_nlist_equals_the_exhaustive_search(built, data):
    _, Q = data
    assert built.nlist == NLIST and 1 <= built.nprobe <= NLIST
    De, Ie = exhaustive(built).search(Q, 10, mode="fastscan")
    D, I = built.search(Q, 10, nprobe=NLIST)
    if built.factor == "orthonormal":
        np.testing.assert_array_equal(I, Ie)
        np.testing.assert_array_equal(D, De)
    else:  # the numpy re-rank of candidates whose 16-bit first-stage sums tie at the cut: a few may differ
        assert np.mean([len(np.intersect1d(a, b)) for a, b in zip(I, Ie)]) > 9
    # the default nprobe: within a few results of the exhaustive search
    _, Id = built.search(Q, 10)
    assert np.mean([len(np.intersect1d(a, b)) for a, b in zip(Id, Ie)]) / 10 > 0.8


def test_the_lists_are_the_stored_assignment(built):
    st = built._state
    assert st.ivf_lists.shape == (N,) and st.ivf_centroids.shape == (NLIST, st.encoder.rank)
    rebuilt = st._make_ivf()
    assert rebuilt.codes_match() and np.array_equal(rebuilt.assignment(), st.ivf_lists)


def test_save_load_bytes_and_mmap_answer_alike(built, data, tmp_path):
    _, Q = data
    D, I = built.search(Q, 10, nprobe=4)
    path = tmp_path / "ivf.lplr"
    assert built.save(path) == built.nbytes == len(built.to_bytes())
    for again in (LPLRIndex.load(path), LPLRIndex.load(path, mmap=True), LPLRIndex.from_bytes(built.to_bytes())):
        assert (again.nlist, again.nprobe, again.settings) == (built.nlist, built.nprobe, built.settings)
        D2, I2 = again.search(Q, 10, nprobe=4)
        np.testing.assert_array_equal(I2, I)
        np.testing.assert_array_equal(D2, D)
    parts = built.storage_breakdown()
    assert parts["coarse_centroids"] == NLIST * built.rank * 4 and parts["list_numbers"] == N * 5 // 8
    assert sum(parts.values()) == built.nbytes


def test_the_budget_counts_the_lists(data):
    X, _ = data
    plain = LPLRIndex(DIM, bits_per_coordinate=1).build(X)
    part = LPLRIndex(DIM, bits_per_coordinate=1, nlist=NLIST).build(X)
    assert part.bits_per_coordinate <= 1 and plain.bits_per_coordinate <= 1
    plan = LPLRIndex.plan(N, DIM, rank=16, bits_l=4, codec="scalar", nlist=NLIST)
    built = LPLRIndex(DIM, rank=16, bits_l=4, codec="scalar", nlist=NLIST).build(X)
    assert plan.file_bytes >= built.nbytes > LPLRIndex.plan(N, DIM, rank=16, bits_l=4, codec="scalar").file_bytes
    assert plan.file_bytes - built.nbytes < 8


def test_mutations_compose(data):
    X, Q = data
    index = LPLRIndex(DIM, bits_per_coordinate=1, nlist=NLIST).build(X[:3000])
    index.search(Q, 5)  # the lists are built: add extends a copy
    before = index._state.ivf()
    index.add(X[3000:])
    assert index._state.ivf() is not before and before.ntotal == 3000 and index._state.ivf().codes_match()
    fresh = LPLRIndex.from_bytes(index.to_bytes())  # the lists rebuilt from the stored assignment
    assert np.array_equal(fresh._state.ivf().assignment(), index._state.ivf_lists)
    for ix in (index, fresh):
        ix.remove(np.arange(0, 4000, 3))
        D, I = ix.search(Q, 10, nprobe=NLIST)
        De, Ie = exhaustive(ix).search(Q, 10)
        # the exhaustive path drops removed rows after its re-rank, the lists inside faiss's scan:
        # the same neighbours (tied distances may come in another order)
        np.testing.assert_allclose(D, De, rtol=1e-5, atol=1e-5)
        assert np.mean([len(np.intersect1d(a, b)) for a, b in zip(I, Ie)]) > 9.5
        assert not np.isin(I, np.arange(0, 4000, 3)).any()
    ok = np.arange(1, 4000, 3)
    D, I = index.search(Q, 10, allowed=ok, nprobe=2)
    assert np.isin(I[I >= 0], ok).all() and (I >= 0).all()
    index.update([1, 2], X[:2])
    assert np.array_equal(index._state.ivf_lists[[1, 2]], index._state.ivf().assign(index._state.store.codes[[1, 2]]))
    index.compact()
    assert index.ntotal == len(index._state.ivf_lists) == len(index)
    np.testing.assert_array_equal(index.search(Q, 10, nprobe=NLIST)[1], exhaustive(index).search(Q, 10)[1])
    D, I = index.search(Q, 5, rescore_with=np.concatenate([X])[index.ids])
    assert (I >= 0).all()


def test_removed_rows_are_filtered_without_work_per_row_at_each_search(data, monkeypatch):
    """An index with removed vectors hands faiss the same filter at every search of one
    snapshot (its live rows, made once; the bitmap and its parameters made once per nprobe); a
    new removal is a new snapshot, whose filter is its own; a caller's filter is never kept."""
    import faiss

    X, Q = data
    index = LPLRIndex(DIM, bits_per_coordinate=1, nlist=NLIST).build(X)
    index.remove(np.arange(0, N, 5))
    st = index._state
    assert st.live() is st.live() and not st.live().flags.writeable and st.n_live == N - N // 5
    made = []
    real = faiss.IDSelectorBitmap
    monkeypatch.setattr(faiss, "IDSelectorBitmap", lambda *a: made.append(a[0]) or real(*a))
    first = [index.search(q[None], 10, nprobe=2) for q in Q[:10]]
    assert made == [N]  # one bitmap for ten single queries
    assert index._state.ivf()._filter_params[0] is st.live()
    for (D, I), q in zip(first, Q[:10]):  # the same as a batch
        Db, Ib = index.search(q[None], 10, nprobe=2)
        np.testing.assert_array_equal(Ib, I)
    assert not np.isin(np.vstack([I for _, I in first]), np.arange(0, N, 5)).any()
    index.remove(np.arange(1, N, 5))  # a new snapshot: its own live rows
    _, I = index.search(Q, 10, nprobe=2)
    assert len(made) == 2 and not np.isin(I, np.arange(0, N, 5)).any() and not np.isin(I, np.arange(1, N, 5)).any()
    for allowed in (np.arange(2, N, 5), np.arange(3, N, 5)):  # a caller's filters: each its own bitmap
        _, I = index.search(Q, 10, nprobe=2, allowed=allowed)
        assert np.isin(I[I >= 0], allowed).all()
    assert len(made) == 4 and index._state.ivf()._filter_params[0] is index._state.live()


def test_settings_and_errors(data):
    X, Q = data
    assert IndexSettings(8, bits_per_coordinate=1, nlist="auto").nlist == "auto"
    with pytest.raises(ValueError, match="nlist must be None, 'auto' or an integer"):
        LPLRIndex(8, bits_per_coordinate=1, nlist="many")
    with pytest.raises(ValueError, match=r"nlist must be an integer in \[1, 1048576\]"):
        LPLRIndex(8, bits_per_coordinate=1, nlist=0)
    with pytest.raises(ValueError, match="needs 4-bit codes"):
        LPLRIndex(8, rank=4, nlist=4)  # the paper's 8-bit codes
    with pytest.raises(ValueError, match="nlist=64 lists need at least 64 vectors"):
        LPLRIndex(DIM, bits_per_coordinate=2, nlist=64).build(X[:50])
    plain = LPLRIndex(DIM, bits_per_coordinate=1).build(X[:500])
    with pytest.raises(ValueError, match="nprobe=2: this index has no partition"):
        plain.search(Q, 3, nprobe=2)
    auto = LPLRIndex(DIM, bits_per_coordinate=1, nlist="auto").build(X[:500])  # below the crossover
    assert auto.nlist is None and auto.nprobe is None and auto._state.version == 6
    np.testing.assert_array_equal(auto.search(Q, 5, nprobe=3)[1], plain.search(Q, 5)[1])
    again = LPLRIndex.from_bytes(auto.to_bytes())
    assert again.settings.nlist == "auto" and again.nlist is None
    index = LPLRIndex(DIM, bits_per_coordinate=1, nlist=8).build(X[:500])
    with pytest.raises(ValueError, match=r"nprobe must be an integer in \[1, 8\]"):
        index.search(Q, 3, nprobe=9)
    from lplr_index import distributed  # a shard of all the rows holds the lists and answers alike

    st = index._state
    parts = (st.encoder, st.store.codes, st.metric, 0, {})
    shard = distributed.Shard(*parts, centroids=st.ivf_centroids, lists=st.ivf_lists, nprobe=index.nprobe)
    for got, want in zip(shard.search(Q, 3, "fastscan", None, 8), index.search(Q, 3, nprobe=8)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match=r"nprobe must be an integer in \[1, 8\]"):
        distributed.Shard(*parts, centroids=st.ivf_centroids, lists=st.ivf_lists, nprobe=9)
    with pytest.raises(ValueError, match=r"lists must hold one list number in \[0, 8\) per row \(500\)"):
        distributed.Shard(*parts, centroids=st.ivf_centroids, lists=np.full(500, 8))


def test_list_numbers_pack_round_trip():
    rng = np.random.default_rng(0)
    for nlist in (1, 2, 3, 1000, 1 << 20):
        lists = rng.integers(nlist, size=70_001)
        packed = ivf.pack_lists(lists, nlist)
        assert len(packed) == -(-len(lists) * ivf.list_bits(nlist) // 8)
        np.testing.assert_array_equal(ivf.unpack_lists(packed, nlist, len(lists)), lists)


def test_command_line(data, tmp_path, capsys):
    X, Q = data
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "q.npy", Q)
    out = tmp_path / "ix.lplr"
    assert cli_main(["build", str(tmp_path / "x.npy"), "-o", str(out), "-b", "1", "--nlist", "16", "--json"]) == 0
    assert '"nlist": 16' in capsys.readouterr().out
    assert cli_main(["search", str(out), str(tmp_path / "q.npy"), "--nprobe", "16", "-o", str(tmp_path / "r.npz")]) == 0
    r = np.load(tmp_path / "r.npz")
    np.testing.assert_array_equal(r["indices"], LPLRIndex.load(out).search(Q, 10, nprobe=16)[1])
    assert cli_main(["info", str(out), "--json"]) == 0
    assert '"nprobe"' in capsys.readouterr().out


def test_a_high_budget_with_lists_keeps_grouped_codes(data):
    """From 6 bits per coordinate codec="auto" also tries the 8-bit scalar codes; with lists it
    must not (they need 4-bit codes): the build used to fail while setting up that rival."""
    X, _ = data
    index = LPLRIndex(X.shape[1], bits_per_coordinate=6, nlist=8).build(X)
    assert index.codec == "vq" and index.nlist == 8


def test_short_queries_probe_more_lists_before_the_exact_scan(data, monkeypatch):
    # lists of fewer rows than the candidates a query needs: those queries search again with
    # SHORT_NPROBE_GROWTH times more lists; only queries still short get the exact scan
    from lplr_index.search import router

    X, Q = data
    index = LPLRIndex(DIM, bits_per_coordinate=1, nlist=128, seed=0).build(X)
    kc = index.rerank_factor * 10  # the depth the build measured
    _, _, short = index._state.ivf().search(Q, kc, 10, nprobe=1)
    _, _, still = index._state.ivf().search(Q, kc, 10, nprobe=ivf.SHORT_NPROBE_GROWTH)
    assert short.any() and not still.any()
    scanned = []
    real = router.exact_scan
    monkeypatch.setattr(router, "exact_scan", lambda st, q, *a: scanned.append(len(q)) or real(st, q, *a))
    D, I = index.search(Q, 10, nprobe=1)
    assert not scanned and (I >= 0).all()
    D4, I4 = index.search(Q[short], 10, nprobe=ivf.SHORT_NPROBE_GROWTH)
    np.testing.assert_array_equal(I[short], I4)
    np.testing.assert_array_equal(D[short], D4)
    D1, I1 = index.search(Q[~short], 10, nprobe=1)
    np.testing.assert_array_equal(I[~short], I1)
    # a filter that leaves fewer allowed rows than needed in every list: the exact scan at last
    allowed = np.zeros(N, bool)
    allowed[: N // 4 + 1] = True
    D, I = index.search(Q, 10, nprobe=1, allowed=allowed)
    assert allowed[I[I >= 0]].all()


def test_default_nprobe_bounds_the_recall_lost(built, data):
    """The build's nprobe report is each tried nprobe's agreement with every list's top 10 on its
    100 build rows; the chosen nprobe is the smallest power of two within 1 %, and on those rows
    its recall 10@10 (exact neighbours found here by brute force) is within 0.01 of every list's."""
    from lplr_index import builder
    from lplr_index.train import sample_rows

    X, _ = data
    report = built.nprobe_report
    assert report[NLIST] == 1.0 and all(0.0 <= a <= 1.0 for a in report.values())
    chosen = built.nprobe
    assert report[chosen] >= 1 - builder.NPROBE_TOLERANCE
    assert all(report[p] < 1 - builder.NPROBE_TOLERANCE for p in report if p < chosen)
    assert chosen == NLIST or chosen & (chosen - 1) == 0
    s = built.settings
    rows = np.sort(np.random.default_rng(s.seed).choice(sample_rows(N, s.seed), 100, replace=False))
    Q = X[rows]
    if s.metric == "cosine":
        Xn, Qn = (A / np.linalg.norm(A, axis=1, keepdims=True) for A in (X, Q))
        score = Qn @ Xn.T
    elif s.metric == "ip":
        score = Q @ X.T
    else:
        score = -((Q ** 2).sum(1)[:, None] - 2 * Q @ X.T + (X ** 2).sum(1)[None, :])
    score[np.arange(100), rows] = -np.inf  # each row's own row is not its neighbour
    truth = np.argsort(-score, axis=1, kind="stable")[:, :10]

    def recall(nprobe):
        _, I = built.search(Q, 11, nprobe=nprobe)
        got = builder._without_self(I, rows, 10)
        return np.mean([len(np.intersect1d(g, t)) for g, t in zip(got, truth)]) / 10

    assert recall(chosen) >= recall(NLIST) - builder.NPROBE_TOLERANCE - 1e-9
