"""The partitioned fast-scan backend (:mod:`lplr_index.search.ivf`): faiss's IVF fast-scan lists
holding an index's own 4-bit codes."""

from __future__ import annotations

import numpy as np
import pytest

from lplr_index import LPLRIndex
from lplr_index.search.fastscan import FastScanScorer
from lplr_index.search.ivf import IVFScorer, default_nlist
from lplr_index.search.metrics import CodeView

pytestmark = pytest.mark.usefixtures("blas_single_thread")

N, DIM, NQ, NLIST = 3000, 48, 60, 24


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(2027)
    centres = rng.standard_normal((20, DIM))
    y = rng.integers(20, size=N + 600 + NQ)
    scale = (1.0 + np.arange(DIM)) ** -0.5
    X = ((centres[y] + rng.standard_normal((len(y), DIM))) * scale).astype(np.float32)
    X.setflags(write=False)
    return X[:N], X[N : N + 600], X[N + 600 :]


def _view(index: LPLRIndex) -> CodeView:
    return index._state.view  # the snapshot's view (until the index exposes one)


@pytest.fixture(scope="module", params=["vq-l2", "scalar-l2", "vq-ip", "vq-cosine", "twolevel-l2"])
def built(request, data):
    X, _, _ = data
    codec, metric = request.param.split("-")
    kw = {"vq": {"bits_per_coordinate": 1}, "twolevel": {"bits_per_coordinate": 4},
          "scalar": {"rank": 16, "bits_l": 4, "codec": "scalar"}}[codec]
    index = LPLRIndex(DIM, metric=metric, **kw).build(X)
    view = _view(index)
    assert (codec == "twolevel") == bool(getattr(view.encoder.lq, "two_level", False))
    return index, view, IVFScorer(view, NLIST, seed=3)


def _same_up_to_ties(D0, I0, D1, I1) -> None:
    """Equal distances, and equal ids for every distance value but the last one kept (whose tied
    rows faiss may cut in another order)."""
    np.testing.assert_array_equal(D0, D1)
    for d, a, b in zip(D0, I0, I1):
        for v in np.unique(d[d != d[-1]]):
            assert set(a[d == v]) == set(b[d == v])


def _exhaustive_first_stage(view: CodeView, ivf: IVFScorer, Q, k):
    fs = FastScanScorer(view)
    return fs.index.search(ivf._queries(Q if view.metric != "cosine" else
                                        Q / np.linalg.norm(Q, axis=1, keepdims=True)), k)


def test_all_lists_equal_the_exhaustive_fastscan(built, data):
    index, view, ivf = built
    Q = data[2]
    assert ivf.codes_match()
    D0, I0 = _exhaustive_first_stage(view, ivf, Q, 40)
    D1, I1 = ivf.first_stage(Q, 40, nprobe=NLIST)
    _same_up_to_ties(D0, I0, D1, I1)
    # and the whole search (exact re-rank of 40) returns what the index's fast-scan search returns
    n2 = index._state.norms2() if view.metric == "cosine" else None
    D, I, short = ivf.search(Q, 40, 10, nprobe=NLIST, norms2=n2)
    want = index.search(Q, 10, mode="fastscan", rerank_factor=4)
    assert not short.any()
    np.testing.assert_array_equal(I, want.indices if hasattr(want, "indices") else want[1])
    np.testing.assert_allclose(D, want[0], rtol=1e-5, atol=1e-5)


def test_codes_and_layout_equal_what_faiss_adds_itself(data):
    import faiss

    index = LPLRIndex(DIM, rank=16, bits_l=4, codec="scalar").build(data[0])
    view = _view(index)
    ivf = IVFScorer(view, NLIST, seed=1)
    ref = faiss.IndexIVFPQFastScan(ivf._quantizer, ivf.d, NLIST, ivf.M, 4, faiss.METRIC_L2, 32)
    ref.by_residual = False
    faiss.copy_array_to_vector(ivf._table, ref.pq.centroids)
    ref.is_trained = True
    ref.add(ivf._latent(np.asarray(view.codes)))  # decoded levels: faiss encodes them to the same codes
    ours, theirs = ivf._lists(), faiss.downcast_InvertedLists(ref.invlists)
    bs = ours.block_size
    for lst in range(NLIST):
        n = ours.list_size(lst)
        assert n == theirs.list_size(lst)
        if n:
            nb = -(-n // 32) * bs
            np.testing.assert_array_equal(faiss.rev_swig_ptr(ours.get_codes(lst), nb),
                                          faiss.rev_swig_ptr(theirs.get_codes(lst), nb))
            np.testing.assert_array_equal(faiss.rev_swig_ptr(ours.get_ids(lst), n),
                                          faiss.rev_swig_ptr(theirs.get_ids(lst), n))


def test_recall_rises_with_nprobe(built, data):
    index, view, ivf = built
    Q = data[2]
    n2 = index._state.norms2() if view.metric == "cosine" else None
    _, full, _ = ivf.search(Q, 40, 10, nprobe=NLIST, norms2=n2)
    recalls = []
    for nprobe in (1, 2, 4, 8, NLIST):
        _, I, _ = ivf.search(Q, 40, 10, nprobe=nprobe, norms2=n2)
        recalls.append(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, full)]))
    assert all(b >= a - 0.02 for a, b in zip(recalls, recalls[1:])), recalls
    assert recalls[0] < 0.95 and recalls[-1] == 1.0, recalls


def test_added_rows_go_to_their_lists(data):
    X, X2, Q = data
    index = LPLRIndex(DIM, bits_per_coordinate=1).build(X)
    ivf = IVFScorer(_view(index), NLIST, seed=3)
    before = ivf.first_stage(Q, 20, nprobe=4)
    index.add(X2[:333])
    index.add(X2[333:])  # two appends: lists grow from partly filled blocks
    view = _view(index)
    grown = ivf.extended(view)
    assert grown.ntotal == N + 600 and ivf.ntotal == N
    assert grown.codes_match()
    # the old scorer is unchanged
    again = ivf.first_stage(Q, 20, nprobe=4)
    np.testing.assert_array_equal(before[0], again[0])
    # the same lists as a scorer built at once over all rows with the same centroids
    fresh = IVFScorer(view, NLIST, centroids=ivf.centroids)
    for a, b in zip(grown.list_order(), fresh.list_order()):
        np.testing.assert_array_equal(a, b)
    D0, I0 = _exhaustive_first_stage(view, grown, Q, 30)
    _same_up_to_ties(D0, I0, *grown.first_stage(Q, 30, nprobe=NLIST))
    # new rows are found
    _, I, _ = grown.search(X2[:20], 40, 1, nprobe=2)
    assert np.mean(I[:, 0] == N + np.arange(20)) > 0.5


def test_list_order_layout_needs_no_ids(built, data):
    """Rows written in list order plus the list sizes rebuild the same lists (ids = positions)."""
    index, view, ivf = built
    Q = data[2]
    order, sizes = ivf.list_order()
    assert sorted(order.tolist()) == list(range(N)) and sizes.sum() == N
    moved = CodeView(view.encoder, np.asarray(view.codes)[order], view.metric)
    again = IVFScorer.from_list_order(moved, ivf.centroids, sizes)
    assert again.codes_match()
    D0, I0 = ivf.first_stage(Q, 25, nprobe=3)
    D1, I1 = again.first_stage(Q, 25, nprobe=3)
    _same_up_to_ties(D0, I0, D1, np.where(I1 >= 0, order[np.maximum(I1, 0)], -1))
    # or the rows stay where they are and each row's list number is stored
    lists = ivf.assignment()
    assert np.array_equal(np.bincount(lists, minlength=NLIST), sizes)
    same = IVFScorer.from_assignment(view, ivf.centroids, lists)
    for a, b in zip(same.list_order(), ivf.list_order()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(same.first_stage(Q, 25, nprobe=3)[0], D0)
    s = ivf.storage()
    assert s["ids_bits_per_row"] == 64 and s["permutation_bits_per_row"] == np.ceil(np.log2(N))
    assert s["assignment_bits_per_row"] == np.ceil(np.log2(NLIST))


def test_filter_is_applied_in_the_scan(built, data):
    index, view, ivf = built
    Q = data[2]
    allowed = np.random.default_rng(5).random(N) < 0.3
    D, I = ivf.first_stage(Q, 20, nprobe=NLIST, allowed=allowed)
    assert allowed[I[I >= 0]].all()
    rows = np.flatnonzero(allowed)
    sub = CodeView(view.encoder, np.asarray(view.codes)[rows], view.metric)
    D0, I0 = _exhaustive_first_stage(sub, ivf, Q, 20)
    _same_up_to_ties(D0, rows[I0], D, I)
    _, I2, _ = ivf.search(Q, 20, 5, nprobe=4, allowed=allowed,
                          norms2=index._state.norms2() if view.metric == "cosine" else None)
    assert allowed[I2[I2 >= 0]].all()


def test_few_rows_probed_pad_with_minus_one(data):
    index = LPLRIndex(DIM, bits_per_coordinate=1).build(data[0][:400])
    ivf = IVFScorer(_view(index), 10, seed=0)
    D, I, short = ivf.search(data[2][:5], 200, 200, nprobe=1)
    assert short.all() and (I == -1).any()
    assert np.isinf(D[I == -1]).all() and (I[I >= 0] < 400).all()


def test_bad_arguments_are_named(built, data):
    index, view, ivf = built
    Q = data[2]
    with pytest.raises(ValueError, match="nlist"):
        IVFScorer(view, 0)
    with pytest.raises(ValueError, match="nlist"):
        IVFScorer(CodeView(view.encoder, np.asarray(view.codes)[:10], view.metric), 20)
    with pytest.raises(TypeError, match="view"):
        IVFScorer(np.zeros((3, 3)), 4)
    with pytest.raises(ValueError, match="centroids"):
        IVFScorer(view, 4, centroids=np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="train_rows"):
        IVFScorer(view, 4, train_rows=2)
    with pytest.raises(ValueError, match="nprobe"):
        ivf.search(Q, 20, 10, nprobe=0)
    with pytest.raises(ValueError, match="nprobe"):
        ivf.first_stage(Q, 20, nprobe=NLIST + 1)
    with pytest.raises(ValueError, match="kc"):
        ivf.search(Q, 5, 10, nprobe=2)
    with pytest.raises(ValueError, match="queries"):
        ivf.search(Q[:, :5], 20, 10, nprobe=2)
    with pytest.raises(ValueError, match="allowed"):
        ivf.first_stage(Q, 20, nprobe=2, allowed=np.ones(7, bool))
    with pytest.raises(ValueError, match="sizes"):
        IVFScorer.from_list_order(view, ivf.centroids, np.ones(NLIST, np.int64))
    with pytest.raises(ValueError, match="lists"):
        IVFScorer.from_assignment(view, ivf.centroids, np.full(N, NLIST))
    eight = LPLRIndex(DIM, rank=8, bits_l=8, codec="scalar").build(data[0][:500])
    with pytest.raises(ValueError, match="4-bit"):
        IVFScorer(_view(eight), 4)
    assert default_nlist(1_000_000) == 1024 and default_nlist(10**7) == 4096 and default_nlist(200_000) == 512
    assert default_nlist(50) == 1 and default_nlist(65_536) == 256 and default_nlist(10**4) == 128


def test_lists_apportioned_to_coarse_cells():
    from lplr_index.search.ivf import _apportion

    rng = np.random.default_rng(0)
    for _ in range(200):
        counts = rng.integers(0, 50, rng.integers(1, 40))
        if counts.sum() == 0:
            continue
        total = int(rng.integers(max(1, np.count_nonzero(counts)), counts.sum() + 1))
        share = _apportion(counts, total)
        assert share.sum() == total and (share <= counts).all() and ((share >= 1) == (counts > 0)).all()
    np.testing.assert_array_equal(_apportion(np.array([10, 30, 0, 60]), 10), [1, 3, 0, 6])
    with pytest.raises(ValueError, match="cannot split 5 lists over 4 rows"):
        _apportion(np.array([1, 3]), 5)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_nearest_centroids_are_faiss_flat_search(metric):
    import faiss

    from lplr_index.search import ivf

    rng = np.random.default_rng(1)
    L, C = rng.standard_normal((3000, 24), np.float32), rng.standard_normal((300, 24), np.float32)
    flat = faiss.IndexFlatIP(24) if metric == "ip" else faiss.IndexFlatL2(24)
    flat.add(C)
    want = flat.search(L, 1)[1][:, 0]
    np.testing.assert_array_equal(ivf.nearest_centroids(L, C, metric), want)
    old = ivf._ASSIGN_SCORES
    try:  # several blocks of rows
        ivf._ASSIGN_SCORES = 7 * 300
        np.testing.assert_array_equal(ivf.nearest_centroids(L, C, metric), want)
    finally:
        ivf._ASSIGN_SCORES = old


def test_two_level_training_is_seeded_and_close_to_one_kmeans(monkeypatch):
    # from TWO_LEVEL_MIN_NLIST lists the centroids come from two levels of k-means: as many,
    # the same for a seed, and a quantization error near one k-means's
    from lplr_index.search import ivf

    rng = np.random.default_rng(2)
    centres = rng.standard_normal((40, 16)).astype(np.float32) * 4
    L = (centres[rng.integers(0, 40, 20000)] + rng.standard_normal((20000, 16))).astype(np.float32)

    def error(C):
        a = ivf.nearest_centroids(L, C, "l2")
        return float(np.mean(np.sum((L - C[a]) ** 2, axis=1)))

    flat = ivf.train_centroids(L, 256, seed=0, niter=10)
    monkeypatch.setattr(ivf, "TWO_LEVEL_MIN_NLIST", 256)
    two = ivf.train_centroids(L, 256, seed=0, niter=10)
    assert two.shape == flat.shape == (256, 16) and two.dtype == np.float32 and np.isfinite(two).all()
    np.testing.assert_array_equal(two, ivf.train_centroids(L, 256, seed=0, niter=10))
    assert not np.array_equal(two, ivf.train_centroids(L, 256, seed=1, niter=10))
    assert error(two) <= 1.1 * error(flat), (error(two), error(flat))


def test_grouped_assignment_finds_nearly_every_nearest_centroid(monkeypatch):
    # many lists: a row's list is the nearest member of the three groups of centroids nearest it,
    # the nearest centroid for nearly every row, and exactly it when every group is probed
    from lplr_index.search import ivf

    rng = np.random.default_rng(4)
    centres = rng.standard_normal((40, 16)).astype(np.float32) * 4
    L = (centres[rng.integers(0, 40, 20000)] + rng.standard_normal((20000, 16))).astype(np.float32)
    C = ivf.train_centroids(L, 256, seed=0, niter=10)
    groups = ivf.CentroidGroups(C)
    assert len(groups.centres) == 32 and sorted(groups.order) == list(range(256))
    exact = ivf.nearest_centroids(L, C, "l2")
    got = groups.nearest(L)
    assert got.dtype == np.int64 and np.mean(got == exact) >= 0.97, np.mean(got == exact)
    dist = lambda a: np.sum((L - C[a]) ** 2, axis=1)  # noqa: E731
    missed = got != exact
    assert (dist(got)[missed] >= dist(exact)[missed]).all()
    # each row's list is the nearest member of its probed groups
    near = ivf.nearest_k(L, groups.centres, ivf.GROUPS_PROBED)
    member = np.empty(256, np.int64)
    for g in range(32):
        member[groups.order[groups.bounds[g] : groups.bounds[g + 1]]] = g
    for i in np.flatnonzero(missed)[:50]:
        allowed = np.flatnonzero(np.isin(member, near[i]))
        assert got[i] == allowed[np.argmin(np.sum((C[allowed] - L[i]) ** 2, axis=1))]
    np.testing.assert_array_equal(groups.nearest(L, probe=32), exact)
    np.testing.assert_array_equal(ivf.CentroidGroups(C).nearest(L), got)  # the centroids decide
    monkeypatch.setattr(ivf, "_GROUPED_ROWS", 777)  # several blocks of rows
    np.testing.assert_array_equal(groups.nearest(L), got)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_scorer_assigns_by_groups_from_many_lists(data, metric, monkeypatch):
    from lplr_index.search import ivf

    X, _, _ = data
    view = _view(LPLRIndex(DIM, bits_per_coordinate=1, metric=metric).build(X))
    few = IVFScorer(view, NLIST, seed=3)
    assert few._centroid_groups() is None
    # trained in two levels, still assigned to every centroid (the two thresholds are apart)
    monkeypatch.setattr(ivf, "TWO_LEVEL_MIN_NLIST", NLIST)
    two = IVFScorer(view, NLIST, seed=3)
    assert not np.array_equal(two.centroids, few.centroids) and two._centroid_groups() is None
    np.testing.assert_array_equal(two.assignment(), ivf.nearest_centroids(
        two._latent(np.asarray(view.codes)), two.centroids, metric))
    monkeypatch.setattr(ivf, "GROUPED_MIN_NLIST", NLIST)
    scorer = IVFScorer(view, NLIST, centroids=few.centroids)
    exact = ivf.nearest_centroids(scorer._latent(np.asarray(view.codes)), scorer.centroids, metric)
    if metric == "ip":  # inner products: every centroid scored
        assert scorer._centroid_groups() is None
        np.testing.assert_array_equal(scorer.assignment(), exact)
    else:
        assert scorer._centroid_groups() is scorer._centroid_groups()  # made once
        np.testing.assert_array_equal(scorer.assignment(), scorer._groups.nearest(
            scorer._latent(np.asarray(view.codes))))
        assert np.mean(scorer.assignment() == exact) >= 0.95
    assert scorer.codes_match()


def test_rows_go_in_list_order_stably(built):
    # the list numbers are sorted as 16-bit integers where they fit (radix sort), else as int32
    import copy

    _, _, scorer = built
    rng = np.random.default_rng(5)
    lists = rng.integers(0, NLIST, 5000)
    np.testing.assert_array_equal(scorer._by_list(lists), np.argsort(lists, kind="stable"))
    wide = copy.copy(scorer)
    wide.nlist = 1 << 20
    lists = rng.integers(0, 1 << 20, 5000)
    np.testing.assert_array_equal(wide._by_list(lists), np.argsort(lists, kind="stable"))


def _packer(M: int):
    import faiss

    quantizer = faiss.IndexFlatL2(M)
    index = faiss.IndexIVFPQFastScan(quantizer, M, 4, M, 4, faiss.METRIC_L2, 32)
    return (quantizer, index), faiss.downcast_InvertedLists(index.invlists).packer


def _faiss_blocks(packer, flat: np.ndarray) -> np.ndarray:
    import faiss

    out = np.empty((len(flat) // 32, int(packer.block_size)), np.uint8)
    for b in range(len(out)):
        packer.pack_all(faiss.swig_ptr(flat[b * 32 :]), faiss.swig_ptr(out[b]))
    return out


@pytest.mark.parametrize("M", [1, 3, 24, 95, 613])
def test_block_layout_is_faiss_packers(M, monkeypatch):
    """numpy's packing equals faiss's pack_all block by block, and unpacking gives the codes back,
    across chunk boundaries; the path through the packer (another faiss's layout) agrees too."""
    from lplr_index.search import ivf

    keep, packer = _packer(M)
    cs = (M + 1) // 2
    monkeypatch.setattr(ivf.BlockLayout, "CHUNK_BLOCKS", 2)  # several chunks of blocks
    flat = np.random.default_rng(M).integers(0, 256, (32 * 5, cs), dtype=np.uint8)
    if M % 2:
        flat[:, -1] &= 15  # the padded sub-quantizer's nibble is zero (fastscan.flat_codes)
    want = _faiss_blocks(packer, flat)
    layout = ivf.BlockLayout.from_packer(packer)
    assert layout.packer is None and layout.block_size == int(packer.block_size)
    np.testing.assert_array_equal(layout.pack(flat), want)
    np.testing.assert_array_equal(layout.unpack(want), flat)
    through = ivf.BlockLayout(cs, packer)
    np.testing.assert_array_equal(through.pack(flat), want)
    np.testing.assert_array_equal(through.unpack(want), flat)
    assert layout.pack(flat[:0]).shape == (0, layout.block_size)


def test_block_layout_falls_back_to_the_packer_when_faiss_differs(monkeypatch, data):
    """A layout that does not reproduce the packer's (here: a wrong code order) is not used: every
    block goes through faiss's packer, and the lists still hold the right codes."""
    from lplr_index.search import ivf

    monkeypatch.setattr(ivf.BlockLayout, "PERM0", np.arange(16))
    monkeypatch.setattr(ivf, "_LAYOUTS", {})
    keep, packer = _packer(24)
    assert ivf.BlockLayout.from_packer(packer).packer is not None
    index = LPLRIndex(DIM, bits_per_coordinate=1).build(data[0])
    scorer = IVFScorer(_view(index), NLIST, seed=3)
    assert scorer.codes_match()
    assert ivf.BlockLayout.from_packer(scorer._lists().packer).packer is not None


def _loaded(ivf: IVFScorer, view: CodeView) -> IVFScorer:
    """A scorer made as a loaded index makes it: the stored centroids and list numbers."""
    return IVFScorer.from_assignment(view, ivf.centroids, ivf.assignment())


def test_one_level_rerank_reads_the_codes_in_place(built, data):
    """Built, loaded (lists filled as probed) or extended, a scorer of one-level codes re-ranks
    from the view's own code rows (no flat copy, none counted); two-level codes keep their byte
    a group, copied (filled with their lists when loaded)."""
    import faiss

    index, view, ivf = built
    in_place = not ivf._two_level and hasattr(faiss, "MaybeOwnedVectorUInt8")  # (faiss >= 1.11 in Python)
    lazy = _loaded(ivf, view)
    grown = ivf.extended(CodeView(view.encoder, np.concatenate([view.codes, view.codes[:50]]), view.metric))
    for scorer in (ivf, lazy, grown):
        assert scorer._exact_is_view() == in_place and (scorer.exact is not None) == scorer.refines
        if in_place and scorer.refines:
            assert int(scorer.exact.codes.c_ptr) == scorer.view.codes.ctypes.data
            assert scorer.exact.ntotal == scorer.ntotal and scorer._exact_nbytes() == 0
    assert ivf._exact_is_view() == in_place and ivf.exact.ntotal == N  # the original unchanged
    # the results of a flat copy: codes faiss cannot read in place (Fortran order) are copied
    n2 = index._state.norms2() if view.metric == "cosine" else None
    for scorer in (ivf, lazy, grown):
        codes = np.asarray(scorer.view.codes)
        twin = IVFScorer.from_assignment(CodeView(view.encoder, np.asfortranarray(codes), view.metric),
                                         scorer.centroids, scorer.assignment())
        assert twin.exact is None or not twin._exact_is_view()
        norms = None if n2 is None else np.concatenate([n2, n2[:50]])[: len(codes)]
        got, want = (s.search(data[2], 40, 10, nprobe=3, norms2=norms) for s in (scorer, twin))
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], rtol=1e-6, atol=1e-6)


def test_loaded_lists_fill_when_first_probed(built, data, monkeypatch):
    """A loaded scorer fills only the lists a search probes (all of them once few rows wait), and
    answers every search as the scorer filled at once does: first stage and both stages."""
    from lplr_index.search import ivf as ivf_module

    index, view, ivf = built
    Q = data[2]
    monkeypatch.setattr(ivf_module, "_FILL_REST_FRACTION", 0.0)
    monkeypatch.setattr(ivf_module, "_clock", lambda: 0.0)  # coarse searches free: no rent-or-buy fill
    lazy = _loaded(ivf, view)
    assert lazy._pending is not None and lazy._pending.unfilled.all() == (np.bincount(
        ivf.assignment(), minlength=NLIST) > 0).all()
    if lazy.exact is not None:
        assert int(lazy.exact.ntotal) == N
    n2 = index._state.norms2() if view.metric == "cosine" else None
    D0, I0, s0 = ivf.search(Q[:1], 40, 10, nprobe=2, norms2=n2)
    D1, I1, s1 = lazy.search(Q[:1], 40, 10, nprobe=2, norms2=n2)
    np.testing.assert_array_equal(I0, I1)
    np.testing.assert_array_equal(D0, D1)
    probed = ivf._quantizer.search(ivf._queries(Q[:1] if view.metric != "cosine" else
                                                Q[:1] / np.linalg.norm(Q[:1])), 2)[1].ravel()
    assert set(np.flatnonzero(~lazy._pending.unfilled)) == set(probed.tolist())
    for nprobe in (1, 3, 8):
        np.testing.assert_array_equal(ivf.first_stage(Q, 25, nprobe=nprobe)[1],
                                      lazy.first_stage(Q, 25, nprobe=nprobe)[1])
        a, b = ivf.search(Q, 40, 10, nprobe=nprobe, norms2=n2), lazy.search(Q, 40, 10, nprobe=nprobe, norms2=n2)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    lazy.search(Q[:1], 40, 10, nprobe=NLIST, norms2=n2)  # every list probed: all filled
    assert lazy._pending is None and lazy.codes_match()


def test_loaded_lists_fill_the_rest_when_few_rows_wait(built, data):
    index, view, ivf = built
    lazy = _loaded(ivf, view)
    sizes = np.bincount(ivf.assignment(), minlength=NLIST)
    small = np.argsort(sizes)
    # everything but the smallest lists holding at most 1/16 of the rows: the rest follows
    waiting = small[np.cumsum(sizes[small]) <= N / 16]
    lazy._fill_lists(np.setdiff1d(np.arange(NLIST), waiting[:-1]))
    assert lazy._pending is None
    lazy = _loaded(ivf, view)
    lazy._fill_lists(small[-2:])
    assert lazy._pending is not None and lazy._pending.unfilled.sum() == NLIST - 2


def test_loaded_lists_fill_the_rest_once_second_coarse_searches_cost_as_much(built, data, monkeypatch):
    """Queries that keep probing the same few lists: each search runs a second coarse search
    while lists wait (_probe); once those, summed, cost what filling the rest is estimated to
    (the rows waiting at the rate measured so far), the rest is filled, and the results never
    change. A clock that ticks once a call makes each coarse search and each fill cost 1."""
    from lplr_index.search import ivf as ivf_module

    index, view, ivf = built
    ticks = iter(range(10**9))
    monkeypatch.setattr(ivf_module, "_clock", lambda: float(next(ticks)))
    monkeypatch.setattr(ivf_module, "_FILL_REST_FRACTION", 0.0)
    lazy = _loaded(ivf, view)
    n2 = index._state.norms2() if view.metric == "cosine" else None
    q = data[2][:1]
    want = ivf.search(q, 40, 10, nprobe=1, norms2=n2)
    got = lazy.search(q, 40, 10, nprobe=1, norms2=n2)
    pending = lazy._pending
    assert pending is not None and pending.filled > 0 and pending.probe_s == 1.0 and pending.fill_s == 1.0
    # the rest: its rows at 1 / (rows filled) each, filled at the search whose coarse searches
    # (1 each) reach that; the first search, with no rate measured yet, never does
    last = max(2, int(np.ceil(pending.waiting / pending.filled)))
    for _ in range(2, last + 1):
        assert lazy._pending is not None
        got = lazy.search(q, 40, 10, nprobe=1, norms2=n2)
        for x, y in zip(got, want):
            np.testing.assert_array_equal(x, y)
    assert lazy._pending is None and lazy.codes_match()


def test_loaded_scorer_reads_and_grows_like_a_filled_one(built, data):
    index, view, ivf = built
    lazy = _loaded(ivf, view)
    for a, b in zip(lazy.list_order(), ivf.list_order()):  # read before any list is filled
        np.testing.assert_array_equal(a, b)
    assert lazy.storage() == ivf.storage() and lazy.nbytes() == ivf.nbytes()
    assert lazy._pending is not None
    lazy.first_stage(data[2][:2], 10, nprobe=1)
    grown_view = CodeView(view.encoder, np.concatenate([np.asarray(view.codes)] * 2), view.metric)
    grown = lazy.extended(grown_view)  # copies of filled lists: the scorer fills them all first
    assert lazy._pending is None and grown._pending is None
    assert grown.codes_match() and grown.ntotal == 2 * N
    want = ivf.extended(grown_view)
    for a, b in zip(grown.list_order(), want.list_order()):
        np.testing.assert_array_equal(a, b)


def test_loaded_scorer_searched_from_many_threads(built, data):
    """Concurrent searches of a loaded scorer, each filling the lists it probes, answer as one
    thread does."""
    from concurrent.futures import ThreadPoolExecutor

    index, view, ivf = built
    Q = data[2]
    n2 = index._state.norms2() if view.metric == "cosine" else None
    lazy = _loaded(ivf, view)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: lazy.search(Q[i : i + 1], 40, 10, nprobe=2, norms2=n2)[1], range(len(Q))))
    np.testing.assert_array_equal(np.vstack(got), ivf.search(Q, 40, 10, nprobe=2, norms2=n2)[1])


def test_search_parameters_are_made_once_per_nprobe(built, data, monkeypatch):
    """Unfiltered searches share faiss's parameters per (nprobe, re-rank) and answer as before;
    filtered ones get their own; the cache stays bounded."""
    from lplr_index.search import ivf as ivf_module

    index, view, ivf = built
    Q = data[2]
    n2 = index._state.norms2() if view.metric == "cosine" else None
    fresh = IVFScorer(view, NLIST, centroids=ivf.centroids)
    first = fresh.search(Q, 40, 10, nprobe=3, norms2=n2)
    cached = dict(fresh._param_cache)
    assert len(cached) == 1 and next(iter(cached))[0] == 3
    again = fresh.search(Q, 40, 10, nprobe=3, norms2=n2)
    assert dict(fresh._param_cache) == cached  # the same objects
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    allowed = np.zeros(N, bool)
    allowed[::3] = True
    _, I, _ = fresh.search(Q, 40, 10, nprobe=3, norms2=n2, allowed=allowed)
    assert allowed[I[I >= 0]].all() and len(fresh._param_cache) == 1
    _, I, _ = fresh.search(Q, 40, 10, nprobe=3, norms2=n2)
    np.testing.assert_array_equal(I, first[1])  # the filter did not stick to the shared parameters
    monkeypatch.setattr(ivf_module, "_PARAMS_CACHED", 4)
    for p in range(1, 10):
        fresh.first_stage(Q[:2], 5, nprobe=p)
    assert len(fresh._param_cache) <= 4


@pytest.fixture
def preassigning(monkeypatch):
    """Every batch of 2+ queries takes the batched coarse search (:meth:`IVFScorer._coarse`)."""
    from lplr_index.search import ivf as ivf_module

    monkeypatch.setattr(ivf_module, "PREASSIGN_MIN_NLIST", 1)
    monkeypatch.setattr(ivf_module, "PREASSIGN_MIN_QUERIES", 2)
    return monkeypatch


def test_batched_coarse_search_is_faiss_coarse_search(built, data, preassigning):
    """The product-and-heap coarse search finds faiss's nearest lists, in faiss's order, in
    chunks of any size."""
    from lplr_index.search import ivf as ivf_module

    index, view, ivf = built
    P = ivf._queries(data[2] if view.metric != "cosine" else data[2] / np.linalg.norm(data[2], axis=1,
                                                                                         keepdims=True))
    for nprobe in (1, 3, NLIST):
        want = ivf._quantizer.search(P, nprobe)[1]
        for chunk in (1 << 26, 4 * NLIST * 7):  # one chunk; chunks of 7 queries
            preassigning.setattr(ivf_module, "_COARSE_CHUNK_BYTES", chunk)
            got = ivf._coarse(P, nprobe)[1]
            assert (got == want).mean() > 0.99 and (np.sort(got, 1) == np.sort(want, 1)).mean() > 0.99


def test_batched_search_answers_as_faiss_coarse_search_does(built, data, preassigning):
    """A batch searched with the batched coarse search and the re-score from decoded codes gets
    the results of faiss's coarse search and IndexRefine: both stages, with a filter, and on a
    loaded scorer whose lists fill as they are probed."""
    from lplr_index.search import ivf as ivf_module

    index, view, ivf = built
    Q = data[2]
    n2 = index._state.norms2() if view.metric == "cosine" else None
    allowed = np.random.default_rng(0).random(N) < 0.7
    lazy = _loaded(ivf, view)
    got = {}
    for name, on in (("faiss", False), ("batched", True)):
        preassigning.setattr(ivf_module, "PREASSIGN_MIN_QUERIES", 2 if on else 1 << 30)
        got[name] = [ivf.search(Q, 40, 10, nprobe=p, norms2=n2, allowed=a) for p in (1, 3) for a in (None, allowed)]
        got[name].append(ivf.first_stage(Q, 25, nprobe=2))
        if on:
            got["lazy"] = [lazy.search(Q, 40, 10, nprobe=p, norms2=n2, allowed=a) for p in (1, 3)
                           for a in (None, allowed)] + [lazy.first_stage(Q, 25, nprobe=2)]
            assert ivf._scores is not None or ivf._two_level
            assert ivf._preassigns(len(Q), 1) == (not ivf._two_level)  # two-level: faiss's path
    for other in ("batched", "lazy"):
        for want, have in zip(got["faiss"], got[other]):
            assert (want[1] == have[1]).mean() > 0.99  # ids: ties between exact scores may swap
            np.testing.assert_allclose(want[0], have[0], rtol=1e-4, atol=1e-4)
            if len(want) == 3:
                np.testing.assert_array_equal(want[2], have[2])  # the same queries short
    np.testing.assert_array_equal(got["lazy"][0][1], got["batched"][0][1])  # the very same path


def test_centroid_transform_is_counted(built, data, preassigning):
    index, view, ivf = built
    fresh = IVFScorer(view, NLIST, seed=3)
    before = fresh.nbytes()
    fresh.search(data[2], 40, 10, nprobe=2, norms2=index._state.norms2() if view.metric == "cosine" else None)
    if fresh._two_level:  # faiss's coarse search and re-rank: nothing more held
        assert fresh._scores is None and fresh._decoder is None and fresh.nbytes() == before
    else:
        assert fresh.nbytes() - before == 4 * NLIST * (fresh.d + 1) + fresh._decoder.nbytes


def _decodes_as_faiss(view: CodeView, ivf: IVFScorer) -> None:
    from lplr_index.search.fastscan import ByteDecoder, decoder_nbytes

    dec = ByteDecoder(ivf._table, ivf.M)
    packed = np.asarray(view.codes[:500])
    want = ivf._exact_index().sa_decode(ivf._exact_codes(packed))
    got = dec.decode(packed)
    assert got.shape == (500, dec.width) and got.dtype == np.float32
    np.testing.assert_array_equal(got[:, : ivf.d], want)  # the very values
    assert not got[:, ivf.d :].any() and dec.width - ivf.d == (ivf.M % 2) * ivf.dsub
    assert dec.nbytes == decoder_nbytes(ivf.M, ivf.dsub)


def test_byte_decoder_decodes_as_faiss_sa_decode(built, preassigning):
    """The re-score's table lookups give faiss's ``sa_decode`` of the whole codes, in every
    one-level design (two-level codes keep faiss's path), in the bytes the plan counts."""
    _, view, ivf = built
    assert ivf._preassigns(10**4, 1) == (not ivf._two_level)
    if not ivf._two_level:
        _decodes_as_faiss(view, ivf)


def test_byte_decoder_of_an_odd_code_count(data):
    """An odd count of 4-bit codes: the last byte's high nibble (whatever it holds) decodes to one
    zero sub-vector more, and the re-score pads the queries to match."""
    X, _, Q = data
    index = LPLRIndex(DIM, rank=15, bits_l=4, codec="scalar").build(X)
    view = _view(index)
    ivf = IVFScorer(view, NLIST, seed=3)
    assert ivf.M == 15
    _decodes_as_faiss(view, ivf)
    P = ivf._queries(Q)
    cand = ivf.first_stage(Q, 12, nprobe=3)[1]
    Dr, I = ivf._rescore(P, cand)
    Z = ivf._exact_index().sa_decode(ivf._exact_codes(np.asarray(view.codes)))
    want = ((Z[np.maximum(cand, 0)] - P[:, None]) ** 2).sum(-1)
    want[cand < 0] = np.inf
    np.testing.assert_allclose(np.sort(want, 1), Dr, rtol=1e-5, atol=1e-5)


def test_plan_counts_the_centroid_transform_of_large_batches():
    from lplr_index.search.fastscan import decoder_nbytes
    from lplr_index.search.ivf import PREASSIGN_MIN_NLIST, PREASSIGN_MIN_QUERIES, predicted_nbytes

    args = (10**6, PREASSIGN_MIN_NLIST, 92, 92, 0, 4 * 384 * 92)  # re-ranks: a projection
    assert predicted_nbytes(*args, PREASSIGN_MIN_QUERIES) - predicted_nbytes(*args) == (
        4 * PREASSIGN_MIN_NLIST * 93 + decoder_nbytes(92, 1))
    assert predicted_nbytes(*args, PREASSIGN_MIN_QUERIES - 1) == predicted_nbytes(*args)
    assert predicted_nbytes(*args, PREASSIGN_MIN_QUERIES, True) == predicted_nbytes(*args)  # two-level: faiss's path
    no_rerank = (10**6, PREASSIGN_MIN_NLIST, 92, 92, 0, 0)  # no projection: the transform, no decoding table
    assert predicted_nbytes(*no_rerank, PREASSIGN_MIN_QUERIES) - predicted_nbytes(*no_rerank) == (
        4 * PREASSIGN_MIN_NLIST * 93)
    small = (10**6, PREASSIGN_MIN_NLIST // 2, 92, 92, 0, 4 * 384 * 92)
    assert predicted_nbytes(*small, 10**4) == predicted_nbytes(*small)

