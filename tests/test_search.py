"""The search engine: fast-scan candidates re-ranked exactly, the BLAS scan, thread control."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from lplr_index import LPLRIndex, neighbour_overlap, recall_at_k
from lplr_index.search import blas, fastscan
from lplr_index.search.topk import merge_results

#: whether this faiss reads codes in place (``MaybeOwnedVector``, faiss >= 1.11 in Python); without, they are copied
VIEWS = hasattr(faiss, "MaybeOwnedVectorUInt8")

METRICS = ("l2", "ip", "cosine")

pytestmark = pytest.mark.usefixtures("blas_single_thread")


@pytest.fixture(scope="module")
def built(embeddings):
    """One 4-bit (fast-scan) index per metric at 1 and 2 bits per coordinate."""
    return {
        (metric, b): LPLRIndex(64, bits_per_coordinate=b, metric=metric).build(embeddings)
        for metric in METRICS
        for b in (1, 2)
    }


@pytest.mark.parametrize("b", [1, 2])
@pytest.mark.parametrize("metric", METRICS)
def test_fastscan_with_default_rerank_equals_the_exact_scan_of_the_codes(built, queries, metric, b, knn_checker):
    index = built[metric, b]
    assert index.fastscan_ready and index.bits_l == 4
    Df, If = index.search(queries, 10)  # auto = fastscan
    De, Ie = index.search(queries, 10, mode="factored")
    if index._state.encoder.lq.two_level:
        # fast-scan ranks by the coarse codes: 16 k candidates come close, more reach the exact scan
        assert recall_at_k(If, Ie, 10) >= 0.9  # observed 0.92-1.000
        Df, If = index.search(queries, 10, rerank_factor=64)
        assert recall_at_k(If, Ie, 10) >= 0.995
    else:
        # the target: recall against exact scoring of the same codes within 0.005
        assert recall_at_k(If, Ie, 10) >= 0.995  # observed 1.000 at every setting here
    # distances are the exact ones of the returned ids (queries whose top 10 is the exact scan's: a
    # depth the build measured may miss one of a thousand neighbours)
    full = np.array([set(a) == set(b) for a, b in zip(If.tolist(), Ie.tolist())])
    assert full.mean() >= 0.98
    Xr = index.reconstruct()
    knn_checker(Xr, queries[full], Df[full], If[full], metric, tol=1e-3 * (1 + np.abs(De).max()))


@pytest.mark.parametrize("metric", METRICS)
def test_rerank_factor_one_is_the_raw_first_stage(built, queries, metric):
    index = built[metric, 1]
    _, I1 = index.search(queries, 10, rerank_factor=1)
    _, Ie = index.search(queries, 10, mode="factored")
    # the 8-bit lookup tables alone lose a little; re-ranking more recovers it
    assert 0.85 < recall_at_k(I1, Ie, 10) <= 1.0  # observed 0.92-0.99 (cosine lowest)
    _, I8 = index.search(queries, 10, rerank_factor=8)
    assert recall_at_k(I8, Ie, 10) >= recall_at_k(I1, Ie, 10)


def test_faiss_holds_exactly_our_codes(built):
    for index in built.values():
        assert index._fastscan().codes_match(rows=5000)


@pytest.mark.parametrize("codec", ["scalar", "two-level"])
def test_fastscan_takes_the_packed_codes_of_an_odd_count_without_touching_them(embeddings, codec, tmp_path,
                                                                            monkeypatch):
    # faiss is given the packed coarse codes directly: with an odd count the last byte's
    # high nibble (padding, or a two-level index's first fine code) is cleared in a copy
    from lplr_index import vq

    if codec == "two-level":
        monkeypatch.setattr(vq, "CANDIDATE_SIZES", (vq.CANDIDATE_SIZES[-1],))
        index = LPLRIndex(64, bits_per_coordinate=2.03, codec="vq").build(embeddings[:3000])
        lq = index._state.encoder.lq
        assert lq.two_level and lq.n_coarse % 2 == 1
        codes = index._state.view.unpack(index._state.store.codes[:200])
        assert codes[:, lq.n_coarse].any()  # a fine code shares the last coarse code's byte
    else:
        index = LPLRIndex(64, rank=15, bits_l=4, codec="scalar").build(embeddings[:3000])
    index.save(tmp_path / "a.lplr")
    loaded = LPLRIndex.load(tmp_path / "a.lplr", mmap=True)  # read-only codes
    before = np.array(loaded._state.store.codes)
    assert loaded._fastscan().codes_match(rows=3000)
    np.testing.assert_array_equal(np.array(loaded._state.store.codes), before)
    D, I = loaded.search(embeddings[:30], 10, rerank_factor=300)
    De, Ie = loaded.search(embeddings[:30], 10, mode="factored")
    assert recall_at_k(I, Ie, 10) >= 0.99


@pytest.mark.parametrize("codec", ["vq", "scalar"])
@pytest.mark.parametrize("metric", METRICS)
def test_both_stages_share_the_query_projection(embeddings, queries, metric, codec):
    # the search projects the queries once (blas.latent) for the first stage and the re-rank:
    # candidates and scores are those of each stage projecting on its own
    index = LPLRIndex(64, bits_per_coordinate=1, metric=metric, codec=codec).build(embeddings[:3000])
    view, scorer = index._state.view, index._fastscan()
    Q = queries[:30]
    Qp = fastscan.prepare_queries(view, Q)
    p = blas.latent(view, Qp)
    own = scorer.candidates(Q, 40)
    np.testing.assert_array_equal(scorer.candidates(Q, 40, p), own)
    np.testing.assert_array_equal(blas.exact_scores(view, Qp, own, p), blas.exact_scores(view, Qp, own))
    for a, b in zip(blas.rerank(view, Q, own, 10, p=p), blas.rerank(view, Q, own, 10)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(blas.rerank(view, Q, own, 10, p=p, chunk=7), blas.rerank(view, Q, own, 10)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("layout", ["one-level", "two-level", "scalar"])
@pytest.mark.parametrize("metric", METRICS)
def test_faiss_rerank_gives_the_numpy_rerankers_results(embeddings, queries, metric, layout, monkeypatch):
    # the orthonormal factor: faiss re-scores the candidates (IndexRefine over a flat IndexPQ
    # of the whole codes; cosine from the distance and the rows' norms); the same ids and
    # distances as the numpy re-ranker
    from lplr_index import vq

    if layout == "two-level":
        monkeypatch.setattr(vq, "CANDIDATE_SIZES", (vq.CANDIDATE_SIZES[-1],))
        kw = dict(bits_per_coordinate=2.03, codec="vq")
    elif layout == "one-level":
        kw = dict(bits_per_coordinate=1, codec="vq")
    else:
        kw = dict(bits_per_coordinate=1, codec="scalar")
    index = LPLRIndex(64, metric=metric, **kw).build(embeddings[:3000])
    enc, scorer, view = index._state.encoder, index._fastscan(), index._state.view
    assert scorer.refines and (enc.codec == "vq" and enc.lq.two_level) == (layout == "two-level")
    Q = queries[:40]
    norms2 = blas.row_norms2(view) if metric == "cosine" else None
    for kc, keep in ((40, 10), (160, 160), (7, 1)):
        D, I, short = scorer.search(Q, kc, keep, norms2)
        De, Ie = blas.rerank(view, Q, scorer.candidates(Q, kc), keep)
        tol = 1e-5 * float(np.abs(De).max())
        np.testing.assert_allclose(D, De, rtol=1e-5, atol=tol)
        # the same ids, but where two distances tie to float rounding (faiss and numpy round
        # apart) and at the last kept place (its tie may be the next candidate)
        tie = np.zeros(I.shape, bool)
        tie[:, -1] = True
        close = np.abs(np.diff(De, axis=1)) <= tol
        tie[:, 1:] |= close
        tie[:, :-1] |= close
        assert not ((I != Ie) & ~tie).any()
        assert (I == Ie).mean() > 0.9  # observed 1.0
        assert D.dtype == np.float32 and I.dtype == np.int64 and not short.any()
    # faiss's flat copy (one byte per coarse code of two-level codes; one-level codes are read
    # where they lie, no copy) and the projection R^T (float32; faiss's copy only once a batch
    # is large: fastscan.SMALL_PRODUCT)
    flat = enc.lq.n_coarse if layout == "two-level" else 0 if VIEWS else view.codes.shape[1]
    assert scorer._exact_is_view() == (VIEWS and layout != "two-level")
    assert scorer.project.matrix.shape == (64, enc.rank) and scorer.project.width == scorer.index.d
    assert scorer.index.implem == 0 and scorer.project._lt is None
    assert scorer.nbytes() == scorer.index.codes.size() + 3000 * flat + 4 * enc.rank * 64


@pytest.mark.parametrize("M, dsub, paired", [(6, 1, True), (92, 1, True), (5, 1, False), (6, 2, False)])
def test_one_coordinate_codes_rerank_through_paired_eight_bit_tables(M, dsub, paired):
    # an even count of one-coordinate codes: M / 2 sub-quantizers of 256 paired entries, the
    # same bytes decoding to the same values as the 4-bit table (and scoring the same distances)
    from types import SimpleNamespace

    rng = np.random.default_rng(M + dsub)
    table = rng.standard_normal((M, 16, dsub)).astype(np.float32)
    enc = SimpleNamespace(codec="scalar", lq=SimpleNamespace(two_level=False))
    d = M * dsub
    got = fastscan.exact_index(enc, table.ravel(), M, d, faiss.METRIC_L2)
    want = faiss.IndexPQ(d, M, 4)
    faiss.copy_array_to_vector(table.ravel(), want.pq.centroids)
    want.is_trained = True
    assert (got.pq.M, got.pq.nbits) == ((M // 2, 8) if paired else (M, 4))
    assert got.code_size == want.code_size == (M + 1) // 2
    codes = rng.integers(0, 256, (50, (M + 1) // 2), dtype=np.uint8)
    codes[:, -1] &= 0x0F if M % 2 else 0xFF  # (an odd count's padding nibble is zero)
    np.testing.assert_array_equal(got.sa_decode(codes), want.sa_decode(codes))
    got.add_sa_codes(codes)
    want.add_sa_codes(codes)
    q = rng.standard_normal((3, d)).astype(np.float32)
    Dg, Ig = got.search(q, 10)
    Dw, Iw = want.search(q, 10)
    np.testing.assert_array_equal(Ig, Iw)
    np.testing.assert_allclose(Dg, Dw, rtol=1e-5)


def test_a_faiss_without_views_copies_the_rerank_codes(embeddings, queries, monkeypatch):
    """faiss before 1.10 has no ``MaybeOwnedVector``: the re-rank's flat codes are then copied, as
    before, with the same results."""
    index = LPLRIndex(64, bits_per_coordinate=1, codec="vq").build(embeddings[:2000])
    viewing = index._fastscan()
    monkeypatch.delattr(faiss, "MaybeOwnedVectorUInt8", raising=False)
    copying = fastscan.FastScanScorer(index._state.view)
    assert viewing._exact_is_view() == VIEWS and not copying._exact_is_view()
    assert copying.exact.ntotal == 2000 and copying._exact_nbytes() == index._state.view.codes.nbytes
    Q = queries[:20]
    for a, b in zip(viewing.search(Q, 20, 10), copying.search(Q, 20, 10)):
        np.testing.assert_array_equal(a, b)


def test_faiss_search_is_faiss_wrapped_search(embeddings, queries):
    """The scorers' call into faiss without its Python wrapper returns what the wrapper does,
    converts what it must, and refuses queries of another width (it would read past them)."""
    index = LPLRIndex(64, bits_per_coordinate=1).build(embeddings[:2000])
    scorer = index._fastscan()
    P = scorer.project(np.ascontiguousarray(queries[:20] - scorer.view.encoder.mean, np.float32))
    for target in (scorer.index, scorer._refined()):
        want = target.search(P, 15)
        for given in (P, np.asfortranarray(P), P.astype(np.float64)):
            got = fastscan.faiss_search(target, given, 15)
            np.testing.assert_array_equal(got[1], want[1])
            np.testing.assert_array_equal(got[0], want[0])
    with pytest.raises(ValueError, match=r"shape \(n, %d\)" % scorer.index.d):
        fastscan.faiss_search(scorer.index, P[:, :-1], 5)


@pytest.mark.parametrize("metric", METRICS)
def test_row_dots_without_vecdot_gives_the_same_search(built, queries, metric, monkeypatch):
    """The queries' offsets come from numpy's ``vecdot`` where it exists (numpy >= 2.0) and from
    ``einsum`` before: the same dot products of every row (a broadcast row too), the same results."""
    from lplr_index.search import metrics

    A = queries[:7].astype(np.float32)
    want = (A.astype(np.float64) * A).sum(1)
    np.testing.assert_allclose(metrics.row_dots(A, A), want, rtol=1e-5)
    np.testing.assert_allclose(metrics.row_dots(A, A[0]), A.astype(np.float64) @ A[0], rtol=1e-5)
    index = built[metric, 1]
    got = index.search(queries[:50], 10)
    monkeypatch.setattr(metrics, "_vecdot", None)
    np.testing.assert_allclose(metrics.row_dots(A, A), want, rtol=1e-5)
    np.testing.assert_allclose(metrics.row_dots(A, A[0]), A.astype(np.float64) @ A[0], rtol=1e-5)
    again = index.search(queries[:50], 10)
    np.testing.assert_array_equal(again[1], got[1])
    np.testing.assert_allclose(again[0], got[0], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not VIEWS, reason="this faiss has no MaybeOwnedVector in Python (the codes are copied)")
def test_one_level_rerank_reads_the_codes_in_place(embeddings, queries, tmp_path):
    """faiss's re-rank of one-level codes reads the index's own code rows (no third copy): before
    and after ``add`` (each scorer its own snapshot's rows), memory-mapped, and for an odd count
    of codes, whose last byte's high nibble it never reads; the results are those of a flat
    copy of the codes (the way before)."""
    from lplr_index.search.metrics import CodeView

    X, Q = embeddings[:3000], queries[:30]
    for kw in (dict(bits_per_coordinate=1, codec="vq"), dict(rank=15, bits_l=4, codec="scalar")):
        index = LPLRIndex(64, **kw).build(X[:2000])
        scorer, view = index._fastscan(), index._state.view
        assert scorer._exact_is_view() and int(scorer.exact.codes.c_ptr) == view.codes.ctypes.data
        copy = faiss.clone_index(scorer._exact_index())
        copy.add_sa_codes(scorer._exact_codes(np.asarray(view.codes)))
        P = scorer.project(np.ascontiguousarray(Q - view.encoder.mean, np.float32))
        want = faiss.IndexRefine(scorer.index, copy).search(P, 20)
        got = scorer._refined().search(P, 20)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
        assert scorer.nbytes() == scorer.index.codes.size() + scorer.project.nbytes()
        before = index.search(Q, 10)
        index.add(X[2000:])  # the next snapshot's scorer views its own rows; this one keeps its own
        new = index._fastscan()
        assert new is not scorer and new._exact_is_view() and new.exact.ntotal == 3000
        assert int(new.exact.codes.c_ptr) == index._state.view.codes.ctypes.data
        np.testing.assert_array_equal(scorer._refined().search(P, 20)[1], want[1])
        path = tmp_path / f"{index.rank}.lplr"
        index.save(path)
        mapped = LPLRIndex.load(path, mmap=True)
        assert mapped._fastscan()._exact_is_view()
        np.testing.assert_array_equal(mapped.search(Q, 10)[1], index.search(Q, 10)[1])
        assert (index.search(Q, 10)[1][:, 0] >= 0).all() and before[1].shape == (30, 10)
    # an odd count: the last byte's high nibble (padding) is never read by the re-rank
    assert scorer._args[1] == 15  # an odd count of 4-bit codes
    odd = np.array(view.codes)
    odd[:, -1] |= 0xF0
    twin = fastscan.FastScanScorer(CodeView(view.encoder, odd, view.metric))
    assert twin._exact_is_view()
    np.testing.assert_array_equal(twin._refined().search(P, 20)[1], want[1])


@pytest.mark.parametrize("layout", ["one-level", "two-level", "scalar"])
def test_small_and_large_batches_project_alike(embeddings, queries, layout, monkeypatch):
    # numpy projects small batches, faiss large ones (fastscan.SMALL_PRODUCT): the same
    # padded sub-vectors as the latent rows laid out, and the same results one query at a time
    from lplr_index import vq

    if layout == "two-level":
        monkeypatch.setattr(vq, "CANDIDATE_SIZES", (vq.CANDIDATE_SIZES[-1],))
        kw = dict(bits_per_coordinate=2.03, codec="vq")
    else:
        kw = dict(bits_per_coordinate=1, codec="scalar" if layout == "scalar" else "vq")
    index = LPLRIndex(64, **kw).build(embeddings[:3000])
    scorer, view = index._fastscan(), index._state.view
    Q = np.vstack([queries] * 8)
    Qc = np.ascontiguousarray(Q - view.encoder.mean, np.float32)
    want = view.encoder.lq.pad(blas.latent(view, Q)) if view.encoder.codec == "vq" else blas.latent(view, Q)
    project = scorer.project
    assert len(Q) * project.matrix.size >= fastscan.SMALL_PRODUCT > project.matrix.size
    assert project._lt is None
    np.testing.assert_allclose(project(Qc[:1]), want[:1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(project(Qc), want, rtol=1e-5, atol=1e-5)
    assert project._lt is not None  # the large batch made faiss's copy
    D, I = index.search(queries[:20], 10)
    for i in range(20):
        d1, i1 = index.search(queries[i : i + 1], 10)
        np.testing.assert_allclose(d1[0], D[i], rtol=1e-5, atol=1e-5)
        assert (i1[0] == I[i]).mean() >= 0.9  # ties at float rounding aside (observed 1.0)


def test_other_factors_and_cosine_without_norms_rerank_in_numpy(embeddings, queries):
    # without orthonormal rows the latent distance is not the exact one: the numpy re-ranker
    # scores the candidates and no flat copy is made; cosine without the rows' norms too
    index = LPLRIndex(64, rank=12, factor="lstsq", refine_iters=0, bits_l=4).build(embeddings[:2000])
    cos = LPLRIndex(64, bits_per_coordinate=1, metric="cosine").build(embeddings[:2000])
    assert not index._fastscan().refines and index._fastscan().exact is None
    assert index._fastscan().nbytes() == index._fastscan().index.codes.size()
    Q = queries[:20]
    for idx in (index, cos):
        scorer = idx._fastscan()
        D, I, _ = scorer.search(Q, 40, 10)
        De, Ie = blas.rerank(idx._state.view, Q, scorer.candidates(Q, 40), 10)
        np.testing.assert_array_equal(I, Ie)
        np.testing.assert_array_equal(D, De)


def test_faiss_rerank_follows_added_rows(embeddings, queries):
    # rows added after the first search reach both faiss copies (the IndexRefine is remade)
    index = LPLRIndex(64, bits_per_coordinate=1).build(embeddings[:2000])
    index.search(queries[:5], 10)
    index.add(embeddings[2000:3000])
    fresh = LPLRIndex.from_bytes(index.to_bytes())
    assert index._fastscan().exact.ntotal == 3000
    for a, b in zip(index.search(queries, 10), fresh.search(queries, 10)):
        np.testing.assert_array_equal(a, b)
    _, I = index.search(embeddings[2500:2520], 1)
    assert (I[:, 0] >= 2000).mean() > 0.8  # the added rows are found (observed 1.0)


@pytest.mark.parametrize("metric", METRICS)
def test_large_batches_are_searched_in_chunks_with_the_same_results(embeddings, queries, metric, monkeypatch):
    # the candidates of one chunk of queries stay under SEARCH_CHUNK_BYTES (a batch of many
    # queries with a deep re-rank would otherwise hold n_queries x rerank_factor x k of them)
    index = LPLRIndex(64, bits_per_coordinate=1, metric=metric).build(embeddings[:2000])
    want = index.search(queries, 10)
    monkeypatch.setattr(fastscan, "SEARCH_CHUNK_BYTES", 16 * 10 * index.rerank_factor * 7)  # 7 queries per chunk
    calls = []
    real = fastscan.faiss_search

    def counting(index, P, *a, **kw):
        if isinstance(index, faiss.IndexRefine):
            calls.append(len(P))
        return real(index, P, *a, **kw)

    monkeypatch.setattr(fastscan, "faiss_search", counting)
    got = index.search(queries, 10)
    # the projection's product rounds by batch size: distances in their last bits
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    assert (got[1] == want[1]).mean() > 0.99  # observed 1.0
    assert calls and max(calls) == 7 and sum(calls) == len(queries)


def test_queries_fast_scan_leaves_short_get_the_exact_scan(embeddings, queries, monkeypatch):
    # where faiss's first stage returns fewer than the asked candidates (its 16-bit sums
    # saturate on extreme level spreads, seen on edited files), those queries are scanned exactly
    index = LPLRIndex(64, bits_per_coordinate=1).build(embeddings[:2000])
    scorer = index._fastscan()
    real = scorer.search

    def losing(Q, kc, keep, norms2=None):
        D, I, short = real(Q, kc, keep, norms2)
        short = short.copy()
        short[::3] = True
        D[::3], I[::3] = np.inf, -1
        return D, I, short

    monkeypatch.setattr(scorer, "search", losing)
    D, I = index.search(queries[:30], 10)
    De, Ie = index.search(queries[:30], 10, mode="factored")
    np.testing.assert_array_equal(I[::3], Ie[::3])
    np.testing.assert_allclose(D[::3], De[::3], rtol=1e-5)
    assert (I >= 0).all()


def test_l2_latent_ranking_is_exact_with_the_orthonormal_factor(built, queries):
    # the first stage ranks by ||p - l||^2, which equals ||q - x_hat||^2 minus a per-query
    # constant when R R^T = I; the stored 8-bit factor is orthonormal up to rounding
    index = built["l2", 1]
    assert not index._state.encoder.lq.two_level  # (two-level codes: fast-scan ranks by the coarse codes)
    view = index._state.view
    ids = index._fastscan().candidates(queries[:20], 40)
    exact = blas.exact_scores(view, queries[:20], ids)  # 2<q',x'> - |x'|^2, larger is better
    order = np.argsort(-exact, axis=1, kind="stable")
    assert neighbour_overlap(np.take_along_axis(ids, order, 1)[:, :10], ids[:, :10]) > 0.8


def test_eight_bit_codes_use_the_exact_scan(small_embeddings):
    index = LPLRIndex(32, bits_per_coordinate=4, codec="scalar").build(small_embeddings)
    assert index.bits_l == 8 and not index.fastscan_ready
    D1, I1 = index.search(small_embeddings[:5], 3)
    D2, I2 = index.search(small_embeddings[:5], 3, mode="factored")
    np.testing.assert_array_equal(I1, I2)
    with pytest.raises(ValueError, match="mode='fastscan' needs 4-bit codes, this index has 8-bit codes"):
        index.search(small_embeddings[:5], 3, mode="fastscan")


def test_lstsq_factor_is_searched_exactly_by_default(small_embeddings):
    index = LPLRIndex(32, bits_per_coordinate=1, factor="lstsq").build(small_embeddings)
    assert index.bits_l == 4 and not index.fastscan_ready
    # fast-scan can still be asked for: an approximate first stage, re-ranked exactly
    _, I = index.search(small_embeddings[:50], 5, mode="fastscan", rerank_factor=20)
    _, Ie = index.search(small_embeddings[:50], 5)
    assert recall_at_k(I, Ie, 5) > 0.95  # observed 1.0


def test_add_extends_the_fastscan_index(embeddings, queries):
    index = LPLRIndex(64, bits_per_coordinate=1).build(embeddings[:3000])
    index.search(queries[:2], 1)  # builds the fast-scan index
    index.add(embeddings[3000:])
    assert index._fastscan().ntotal == 5000 == index.ntotal
    D, I = index.search(queries, 10)
    _, Ie = index.search(queries, 10, mode="factored")
    assert recall_at_k(I, Ie, 10) >= 0.995
    assert (I >= 3000).any()


def test_single_query_does_not_decode_the_database(built, queries, monkeypatch):
    index = built["l2", 1]
    index.search(queries[:1], 10)

    def boom(*args, **kwargs):
        raise AssertionError("full decode")

    monkeypatch.setattr(blas, "scan", boom)
    monkeypatch.setattr(blas, "row_norms2", boom)
    D, I = index.search(queries[:1], 10)
    assert I.shape == (1, 10) and (I >= 0).all()


@pytest.mark.parametrize("n_threads", [1, 2])
def test_n_threads_is_restored(built, queries, n_threads):
    before = faiss.omp_get_max_threads()
    built["l2", 1].search(queries, 5, n_threads=n_threads)
    assert faiss.omp_get_max_threads() == before


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("mode", ["auto", "factored", "reconstructed"])
def test_rescore_with_the_original_vectors(built, embeddings, queries, metric, mode, brute_knn):
    index = built[metric, 1]
    D, I = index.search(queries, 10, rescore_with=embeddings, mode=mode)
    I_true = brute_knn(embeddings, queries, 10, metric)
    r_codes = recall_at_k(index.search(queries, 10, mode=mode).indices, I_true, 10)
    r_rescored = recall_at_k(I, I_true, 10)
    assert r_rescored > r_codes + 0.1  # observed 0.63 -> 0.95 at 1 bit per coordinate
    # distances are the exact ones of the returned ids against the originals
    X = embeddings[I].astype(np.float64)
    q = queries.astype(np.float64)[:, None, :]
    if metric == "cosine":
        X = X / np.linalg.norm(X, axis=2, keepdims=True)
        q = q / np.linalg.norm(q, axis=2, keepdims=True)
    exact = ((X - q) ** 2).sum(2) if metric == "l2" else (X * q).sum(2)
    np.testing.assert_allclose(D, exact, rtol=1e-4, atol=1e-4)


def test_rescore_with_a_memory_mapped_file(built, embeddings, queries, tmp_path):
    path = tmp_path / "full.npy"
    np.save(path, embeddings)
    index = built["l2", 1]
    a = index.search(queries, 5, rescore_with=path)
    b = index.search(queries, 5, rescore_with=np.load(path, mmap_mode="r"))
    np.testing.assert_array_equal(a.indices, b.indices)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(rescore_with=np.zeros((10, 64), np.float32)), ValueError,
         r"rescore_with must hold the 5000 original vectors of dimension 64 in id order, shape \(5000, 64\), got shape \(10, 64\)"),
        (dict(rerank_factor=0), ValueError, r"rerank_factor must be an integer in \[1, 1048576\], got 0"),
        (dict(n_threads=0), ValueError, r"n_threads must be an integer in \[1, 4096\], got 0"),
        (dict(k=10**9), ValueError, r"k=1000000000 for 200 queries asks for .* GiB of results.*use k <= 5000"),
    ],
    ids=["rescore-shape", "rerank-factor", "threads", "huge-k"],
)
def test_bad_search_arguments(built, queries, kwargs, exc, match):
    kwargs = dict(kwargs)
    k = kwargs.pop("k", 5)
    with pytest.raises(exc, match=match):
        built["l2", 1].search(queries, k, **kwargs)


def test_huge_queries_are_refused_by_name(built):
    with pytest.raises(ValueError, match="queries must be finite with entries of magnitude <= 1e.15.*row 0, column 3"):
        Q = np.zeros((1, 64), np.float32)
        Q[0, 3] = 1e30
        built["l2", 1].search(Q, 5)


def test_merge_results_is_the_global_top_k():
    rng = np.random.default_rng(0)
    S = rng.standard_normal((4, 100)).astype(np.float32)
    parts = []
    for lo in range(0, 100, 30):
        part = S[:, lo : lo + 30]
        order = np.argsort(part, axis=1)[:, :5]
        parts.append((np.take_along_axis(part, order, 1), order + lo))
    D, I = merge_results(parts, 5, "l2")
    np.testing.assert_array_equal(I, np.argsort(S, axis=1)[:, :5])


def test_fastscan_refuses_eight_bit_codes(small_embeddings):
    index = LPLRIndex(32, rank=4, bits_l=8).build(small_embeddings)
    with pytest.raises(ValueError, match="fast-scan search needs 4-bit codes, this index has 8-bit codes"):
        fastscan.FastScanScorer(index._state.view)


def spy_on_search_one(monkeypatch) -> list[bool]:
    """Whether each search since took :func:`router.search_one`'s way (appended in turn)."""
    from lplr_index.search import router

    taken = []
    real = router.search_one

    def spy(*args):
        got = real(*args)
        taken.append(got is not None)
        return got

    monkeypatch.setattr(router, "search_one", spy)
    return taken


@pytest.mark.parametrize("layout", ["one-level", "two-level", "scalar", "lists", "ids"])
@pytest.mark.parametrize("metric", METRICS)
def test_a_single_query_takes_the_lean_path_with_the_batchs_results(embeddings, queries, metric, layout,
                                                                    monkeypatch):
    """One query of an index re-ranked in faiss goes :func:`router.search_one`'s way (few numpy
    calls) and gets what the same query gets in a batch (the general path): the same ids, the
    same distances within float32 rounding, float64 queries alike."""
    from lplr_index import vq

    kw = dict(bits_per_coordinate=1, codec="vq")
    if layout == "two-level":
        monkeypatch.setattr(vq, "CANDIDATE_SIZES", (vq.CANDIDATE_SIZES[-1],))
        kw = dict(bits_per_coordinate=2.03, codec="vq")
    elif layout == "scalar":
        kw = dict(bits_per_coordinate=1, codec="scalar")
    elif layout == "lists":
        kw["nlist"] = 16
    X = embeddings[:3000]
    index = LPLRIndex(64, metric=metric, **kw)
    index.build(X, ids=np.arange(3000) * 7 + 5) if layout == "ids" else index.build(X)
    taken = spy_on_search_one(monkeypatch)
    Q = queries[:30]
    for k in (1, 10):
        Db, Ib = index.search(Q, k)  # the general path (a batch)
        assert taken == [False]
        taken.clear()
        for i, q in enumerate(Q):
            for given in (q[None], q[None].astype(np.float64)):
                D, I = index.search(given, k)
                assert taken.pop() and D.dtype == np.float32 and I.dtype == np.int64 and D.shape == I.shape == (1, k)
                np.testing.assert_array_equal(I[0], Ib[i])
                np.testing.assert_allclose(D[0], Db[i], rtol=1e-5, atol=1e-5 * (1 + np.abs(Db).max()))
    for depth in (1, 3):  # a depth the caller names: the lean path too, the batch's results
        taken.clear()
        Db, Ib = index.search(Q, 10, rerank_factor=depth)
        got = [index.search(q[None], 10, rerank_factor=depth) for q in Q]
        assert taken == [False] + [True] * len(Q)
        np.testing.assert_array_equal(np.vstack([I for _, I in got]), Ib)
        np.testing.assert_allclose(np.vstack([D for D, _ in got]), Db, rtol=1e-5, atol=1e-5 * (1 + np.abs(Db).max()))
    if layout == "lists":
        for nprobe in (1, 16):
            taken.clear()
            got = [index.search(q[None], 10, nprobe=nprobe)[1][0] for q in Q]
            assert all(taken) and len(taken) == len(Q)
            np.testing.assert_array_equal(np.array(got), index.search(Q, 10, nprobe=nprobe)[1])


def test_single_queries_outside_the_lean_path_take_the_general_one(embeddings, queries, monkeypatch):
    """The lean path declines (and the general path answers, or names the error) every case it
    does not handle: many removed vectors, k above the rows, a filter, threads, a bad depth, a
    bad or non-finite query, entries past its sum-of-squares check, a bad nprobe."""
    from lplr_index._blocks import MAX_ABS

    taken = spy_on_search_one(monkeypatch)
    X = embeddings[:2000]
    q = queries[:1]
    index = LPLRIndex(64, bits_per_coordinate=1).build(X)
    assert index.search(q, 10)[1].shape == (1, 10) and taken == [True]
    for kwargs in (dict(allowed=np.arange(100)), dict(n_threads=1), dict(mode="factored")):
        taken.clear()
        index.search(q, 10, **kwargs)
        assert not any(taken)
    for depth in (0, 2.0, True, 1 << 21, "2"):  # the general path names it
        taken.clear()
        with pytest.raises((ValueError, TypeError), match="rerank_factor"):
            index.search(q, 10, rerank_factor=depth)
        assert not any(taken)
    assert index.search(q, 2500)[1][0, -1] == -1 and taken[-1] is False  # k above the rows: padded
    big = np.full((1, 64), 0.9 * MAX_ABS, np.float32)  # within MAX_ABS, past the lean check
    assert index.search(big, 3)[1].shape == (1, 3) and taken[-1] is False
    for bad, match in ((np.full((1, 64), np.nan, np.float32), "finite"), (np.full((1, 64), 2 * MAX_ABS), "magnitude"),
                       (np.full((1, 64), np.inf), "finite"), (q[:, :10], "dimensions"), (q[0], "2-D")):
        with pytest.raises(ValueError, match=match):
            index.search(bad, 10)
    with pytest.raises(ValueError, match="nprobe"):
        index.search(q, 10, nprobe=2)
    with pytest.raises(ValueError, match="k"):
        index.search(q, 0)
    lists = LPLRIndex(64, bits_per_coordinate=1, nlist=8).build(X)
    taken.clear()  # one list holds fewer rows than 400 candidates: declined, widened by the general path
    np.testing.assert_array_equal(lists.search(q, 200, nprobe=1)[1], lists.search(queries[:2], 200, nprobe=1)[1][:1])
    assert taken == [False, False]
    for nprobe in (0, 9, 2.0):
        with pytest.raises((ValueError, TypeError), match="nprobe"):
            lists.search(q, 10, nprobe=nprobe)
    index.remove(np.arange(1000, 2000))  # half the rows removed: the general path's own way
    taken.clear()
    assert not np.isin(index.search(q, 10)[1], np.arange(1000, 2000)).any() and taken == [False]


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("nlist", [None, 8])
def test_single_queries_of_an_index_with_removed_vectors_take_the_lean_path(embeddings, queries, nlist, metric,
                                                                            monkeypatch):
    """Removed vectors are dropped by the lean path as by the general one (inside faiss's scan of
    the lists; from the exhaustive search's over-fetched candidates): the batch's results."""
    index = LPLRIndex(64, bits_per_coordinate=1, nlist=nlist, metric=metric).build(embeddings[:3000])
    Q = queries[:40]
    gone = np.unique(np.concatenate([index.search(Q, 3)[1][:, :2].ravel(), np.arange(0, 3000, 50)]))
    index.remove(gone)  # the nearest two of every query among them
    taken = spy_on_search_one(monkeypatch)
    D, I = index.search(Q, 10)
    assert taken == [False]
    taken.clear()
    for i, q in enumerate(Q):
        d, j = index.search(q[None], 10)
        np.testing.assert_array_equal(j[0], I[i])
        np.testing.assert_allclose(d[0], D[i], rtol=1e-5, atol=1e-5 * (1 + np.abs(D).max()))
    assert all(taken) and len(taken) == len(Q) and not np.isin(I, gone).any()
