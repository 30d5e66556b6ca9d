"""Grouped codes (lplr_index.vq): the quantizer, the rate allocation, the index with codec="vq"."""

from __future__ import annotations

import numpy as np
import pytest

from lplr_index import LPLRIndex, exact_knn, recall_at_k
from lplr_index.evaluation import rate_distortion
from lplr_index.fileformat import IndexFileError, container_to_bytes, read_container
from lplr_index import vq as vq_module
from lplr_index.vq import KMEANS_DISTORTION, GroupedQuantizer, allocate, book_size

pytestmark = pytest.mark.usefixtures("blas_single_thread")


def quantizer(seed=0, groups=((1, 5, 1), (2, 3, 2), (8, 2, 1), (1, 2, 2), (4, 1, 2))):
    """Classes of one and of two code levels, interleaved."""
    rng = np.random.default_rng(seed)
    groups = np.array(groups, np.int32)
    books = rng.standard_normal(sum(book_size(g, lv) for g, _, lv in groups.tolist())).astype(np.float32)
    return GroupedQuantizer(groups, books), rng


def flat_data(n=4000, dim=64, seed=0):
    """Sentence-embedding-like rows: unit vectors around 200 centres (the same for every
    seed), a flat spectrum."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((200, dim))
    X = centres[rng.integers(0, 200, n)] + 0.5 * rng.standard_normal((n, dim))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32)


# ------------------------------------------------------------------ quantizer
def test_codes_are_the_nearest_centroids_of_each_group():
    q, rng = quantizer()
    Z = rng.standard_normal((500, q.rank)).astype(np.float32)
    codes = q.encode(Z)
    assert codes.shape == (500, q.n_codes) and codes.dtype == np.uint8 and codes.max() < 16
    assert q.n_codes == 5 + 3 * 2 + 2 + 2 * 2 + 2 and q.n_coarse == 5 + 3 + 2 + 2 + 1
    Zh = q.decode(codes)
    for cl in q.classes():
        g, count = cl.g, cl.count
        C = cl.centroids  # 16 or 256 of them
        assert C.shape == (16 ** cl.levels, g)
        V = Z[:, cl.z0 : cl.z0 + g * count].reshape(500, count, g)
        full = codes[:, cl.c0 : cl.c0 + count].astype(int)
        if cl.levels == 2:
            full = 16 * full + codes[:, cl.f0 : cl.f0 + count]
            np.testing.assert_array_equal(C[full], cl.C[full // 16] + cl.fine[full // 16, full % 16])
        best = ((V[:, :, None, :] - C[None, None]) ** 2).sum(-1).min(-1)
        got = ((V - C[full]) ** 2).sum(-1)
        np.testing.assert_allclose(got, best, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(Zh[:, cl.z0 : cl.z0 + g * count], C[full].reshape(500, -1))


def test_padded_layout_keeps_every_distance():
    q, rng = quantizer(1)
    Z = rng.standard_normal((50, q.rank)).astype(np.float32)
    P = rng.standard_normal((7, q.rank)).astype(np.float32)
    d_latent = ((P[:, None, :] - Z[None]) ** 2).sum(-1)
    d_padded = ((q.pad(P)[:, None, :] - q.pad(Z)[None]) ** 2).sum(-1)
    np.testing.assert_allclose(d_padded, d_latent, rtol=1e-5)
    T = q.table()
    assert T.shape == (q.n_coarse, 16, q.dsub)
    codes = q.encode(Z)
    # faiss's view: the coarse codes (the first n_coarse) of the padded coarse centroids
    decoded = T[np.arange(q.n_coarse)[None, :], codes[:, : q.n_coarse]].reshape(50, -1)
    np.testing.assert_array_equal(decoded, q.pad(q.decode(codes, coarse=True)))
    one, _ = quantizer(1, groups=((1, 5, 1), (2, 3, 1)))
    codes = one.encode(Z[:, : one.rank])
    np.testing.assert_array_equal(one.decode(codes, coarse=True), one.decode(codes))  # one level: the same


# ---------------------------------------------------------------- allocation
@pytest.mark.parametrize("bits", [4, 37, 100, 256, 1000])
@pytest.mark.parametrize("sizes", vq_module.CANDIDATE_SIZES)
def test_allocation_spends_at_most_the_bits_and_follows_the_variance(bits, sizes):
    var = 0.93 ** np.arange(96)
    classes = allocate(var, bits, sizes)
    spent = sum(4 * lv * len(d) // g for (g, lv), d in classes)
    widest = max(8 * o[0] if isinstance(o, tuple) else 4 * o for o in sizes)
    most = 8 * 96 if isinstance(sizes[0], tuple) else 4 * 96
    assert spent <= bits and spent >= min(bits, most) - widest  # nothing left worth a code
    rate = np.zeros(96)
    for (g, lv), d in classes:
        assert len(d) % g == 0
        rate[d] = 4 * lv / g
    assert (np.diff(rate) <= 0).all()  # a stronger direction never gets fewer bits
    assert set(KMEANS_DISTORTION) >= {o if isinstance(o, tuple) else (o, 1) for o in sizes}


def test_two_level_codes_go_to_the_strongest_directions_of_a_steep_spectrum():
    var = 0.9 ** np.arange(96)
    classes = dict(allocate(var, 4 * 96, vq_module.CANDIDATE_SIZES[-1]))
    assert (1, 2) in classes and classes[(1, 2)][0] == 0  # the strongest: 256 levels
    assert max(len(d) for d in classes.values()) < 96  # rates differ across the spectrum


def test_allocation_drops_directions_without_variance():
    classes = allocate(np.array([4.0, 2.0, 0.0, 0.0]), 64, (1, 2))
    assert sorted(int(j) for _, d in classes for j in d) == [0, 1]


# ---------------------------------------------------------------------- index
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("budget", [0.5, 1, 2])
def test_fastscan_with_rerank_finds_the_exact_scan_of_the_codes(metric, budget):
    X = flat_data()
    Q = X[:100] + 0.02
    index = LPLRIndex(64, bits_per_coordinate=budget, metric=metric).build(X)
    assert index.codec == "vq" and index.fastscan_ready and index.bits_l == 4
    assert index.bits_per_coordinate <= budget
    D_fast, I_fast = index.search(Q, 10)
    D_exact, I_exact = index.search(Q, 10, mode="factored")
    D_flat, _ = index.search(Q, 10, mode="reconstructed")
    # few codes per vector make many exact ties (ids may differ among them): compare distances;
    # a neighbour the first stage missed would show as a worse distance
    missed = ~np.isclose(D_fast, D_exact, rtol=1e-4, atol=1e-5)
    assert missed.mean() <= 0.01  # observed 0 in every case
    np.testing.assert_allclose(D_flat, D_exact, rtol=1e-3, atol=1e-4)
    # the factored distances are those of the decoded vectors
    Xr = index.reconstruct()
    if metric == "l2":
        ref = ((Q[:, None, :] - Xr[I_exact]) ** 2).sum(-1)
    else:
        Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True) if metric == "cosine" else Q
        Xn = Xr / np.linalg.norm(Xr, axis=1, keepdims=True) if metric == "cosine" else Xr
        ref = np.einsum("qd,qkd->qk", Qn, Xn[I_exact])
    np.testing.assert_allclose(D_exact, ref, rtol=1e-3, atol=1e-3)


def test_grouped_codes_beat_the_scalar_codes_on_a_flat_spectrum():
    X, Q = flat_data(6000, 64, 0), flat_data(200, 64, 1)
    _, gt = exact_knn(X, Q, 10)
    for budget in (0.5, 1.0):
        vq = LPLRIndex(64, bits_per_coordinate=budget).build(X)
        sc = LPLRIndex(64, bits_per_coordinate=budget, codec="scalar").build(X)
        r_vq = recall_at_k(vq.search(Q, 10)[1], gt, 10)
        r_sc = recall_at_k(sc.search(Q, 10)[1], gt, 10)
        # observed: 0.5 b/c 0.445 vs 0.264, 1 b/c 0.554 vs 0.504; RD ratio 1.40 vs 1.69, 1.55 vs 2.74
        assert r_vq > r_sc + 0.03, (budget, r_vq, r_sc)
        rd_vq = rate_distortion(X, vq, vq.bits_per_coordinate).ratio
        rd_sc = rate_distortion(X, sc, sc.bits_per_coordinate).ratio
        assert rd_vq < rd_sc, (budget, rd_vq, rd_sc)


def test_small_sets_use_the_free_rotation_and_large_ones_may_store_the_principal_basis():
    X = flat_data(600, 128)
    index = LPLRIndex(128, bits_per_coordinate=1).build(X)
    assert index.encoder == "rotation"  # storing a 128-column 8-bit basis for 600 vectors costs too much
    report = index.build_report
    assert report["chosen"]["basis"] == "rotation"
    assert {c["basis"] for c in report["candidates"]} >= {"rotation"}
    assert all(0 <= c["sample_recall"] <= 1 for c in report["candidates"])
    assert index.storage_breakdown()["shared_factor"] == 4 * index.rank  # the kept directions' indices
    again = LPLRIndex.from_bytes(index.to_bytes())
    np.testing.assert_array_equal(again.search(X[:20], 5)[1], index.search(X[:20], 5)[1])


def test_designs_far_above_the_least_model_error_are_not_fitted(monkeypatch):
    # a steep spectrum in a random basis: the Haar rotation's directions all carry the
    # average variance, so its designs model (and measure) several times the principal ones' error
    rng = np.random.default_rng(3)
    basis, _ = np.linalg.qr(rng.standard_normal((64, 64)))
    X = ((rng.standard_normal((5000, 64)) * 0.8 ** np.arange(64)) @ basis).astype(np.float32)
    pruned = LPLRIndex(64, bits_per_coordinate=1).build(X)
    limit = vq_module.DESIGN_ERROR_RATIO
    monkeypatch.setattr(vq_module, "DESIGN_ERROR_RATIO", float("inf"))
    every = LPLRIndex(64, bits_per_coordinate=1).build(X)
    kept = {(c["basis"], str(c["sizes"])) for c in pruned.build_report["candidates"]}
    fitted = {(c["basis"], str(c["sizes"])): c["sample_error"] for c in every.build_report["candidates"]}
    assert kept < set(fitted) and {b for b, _ in set(fitted) - kept} == {"rotation"}
    # the report names what was left out and why: its model error over the least
    left_out = pruned.build_report["not_fitted"]
    assert {(c["basis"], str(c["sizes"])) for c in left_out} == set(fitted) - kept
    assert all(c["model_ratio"] > limit for c in left_out)
    assert all(1 <= c["model_ratio"] <= limit for c in pruned.build_report["candidates"])
    assert min(c["model_ratio"] for c in pruned.build_report["candidates"]) == 1
    assert every.build_report["not_fitted"] == []
    least = min(fitted.values())
    # the measured errors agree with the model's verdict: every design left out measured over
    # twice the least error (observed 3.5-19 times), and the choice is the same
    assert all(fitted[key] > 2 * least for key in set(fitted) - kept)
    assert pruned.build_report["chosen"] == every.build_report["chosen"]
    assert pruned.to_bytes() == every.to_bytes()


def test_a_single_design_left_by_the_model_is_still_measured_against_the_scalar_rival():
    # at high rates on a steep spectrum the model leaves only the two-level design: its recall
    # on the sample is still measured (not assumed), so the scalar codes fitted from 6 bits can win
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((32, 32)))
    X = ((rng.standard_normal((6000, 32)) * 0.7 ** np.arange(32)) @ basis).astype(np.float32)
    alone = LPLRIndex(32, bits_per_coordinate=4).build(X).build_report["candidates"]
    assert len(alone) == 1 and 0.5 < alone[0]["sample_recall"] < 1  # observed 0.982
    for budget in (6, 8):
        report = LPLRIndex(32, bits_per_coordinate=budget).build(X).build_report
        recall = {c["basis"]: c["sample_recall"] for c in report["candidates"]}
        assert len(recall) == 2 and all(r < 1 for r in recall.values())
        # observed: the scalar codes win at both (0.982 against 0.979, 0.986 against 0.983)
        assert report["chosen"]["basis"] == ("scalar" if recall["scalar"] > recall["pca"] else "pca")


def test_a_two_level_design_with_no_alternative_is_not_checked_on_all_rows():
    # more rows than the sample, but the model left no one-level design to fall back on
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((32, 32)))
    X = ((rng.standard_normal((20_000, 32)) * 0.7 ** np.arange(32)) @ basis).astype(np.float32)
    report = LPLRIndex(32, bits_per_coordinate=4).build(X).build_report
    assert [c["basis"] for c in report["candidates"]] == ["pca"]
    assert any(lv == 2 for _, _, lv in report["chosen"]["groups"]) and report["full_check"] is None


def test_model_error_counts_dropped_directions_and_code_distortion():
    var = np.array([4.0, 2.0, 1.0, 0.5, 0.25])
    classes = [((1, 1), np.array([0, 1])), ((2, 1), np.array([2, 3]))]
    want = 4 * KMEANS_DISTORTION[1, 1] + 2 * KMEANS_DISTORTION[1, 1] + 1.5 * KMEANS_DISTORTION[2, 1] + 0.25
    assert vq_module.model_error(var, classes) == pytest.approx(want)
    assert vq_module.model_error(var, []) == pytest.approx(var.sum())


def test_rank_gives_one_code_on_each_top_principal_direction():
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((3000, 32)) * 0.8 ** np.arange(32)).astype(np.float32)
    index = LPLRIndex(32, rank=6, codec="vq").build(X)
    enc = index._state.encoder  # white-box: the layout
    assert index.codec == "vq" and index.encoder == "pca" and index.rank == 6
    assert enc.lq.groups.tolist() == [[1, 6, 1]]
    assert index.fit_error < 0.45  # the top 6 of 32 directions with 0.8^j scales keep most of the energy


def test_builds_are_deterministic_whatever_the_blocks(tmp_path):
    X = flat_data(3000, 48)
    a = LPLRIndex(48, bits_per_coordinate=1, metric="cosine").build(X).to_bytes()
    b = LPLRIndex(48, bits_per_coordinate=1, metric="cosine").build([X[:7], X[7:2000], X[2000:]]).to_bytes()
    np.save(tmp_path / "x.npy", X)
    c = LPLRIndex(48, bits_per_coordinate=1, metric="cosine").build(str(tmp_path / "x.npy")).to_bytes()
    assert a == b == c


def test_added_vectors_get_the_codes_of_the_build():
    X = flat_data(3000, 48)
    index = LPLRIndex(48, bits_per_coordinate=2).build(X)
    codes = np.array(index._state.store.codes[:100])
    index.add(X[:100])
    np.testing.assert_array_equal(np.array(index._state.store.codes[3000:]), codes)
    assert index.n_clipped == 0
    _, I = index.search(X[:5], 2, mode="factored")
    assert (I[:, 0] % 3000 == np.arange(5)).all()


def test_saved_grouped_index_round_trips_and_keeps_its_version(tmp_path):
    X = flat_data(2000, 32)
    index = LPLRIndex(32, bits_per_coordinate=1, metric="ip").build(X, ids=np.arange(2000) * 5)
    index.remove([0, 5])
    index.save(tmp_path / "a.lplr")
    c = read_container(tmp_path / "a.lplr")
    assert c.version == 6 and c.header["settings"]["codec"] == "auto" and c.header["encoder"] in ("pca", "rotation")
    assert {"vq_groups", "vq_codebooks", "l_codes", "mean"} <= set(c.arrays)
    again = LPLRIndex.load(tmp_path / "a.lplr", mmap=True)
    assert again.to_bytes() == index.to_bytes() and again.nbytes == index.nbytes == (tmp_path / "a.lplr").stat().st_size
    np.testing.assert_array_equal(again.search(X[:10], 4)[1], index.search(X[:10], 4)[1])


def _edited(data: bytes, **arrays) -> bytes:
    c = read_container(data)
    new = {k: np.array(v) for k, v in c.arrays.items()}
    new.update(arrays)
    return container_to_bytes(c.header, new, version=c.version)


@pytest.mark.parametrize("edit", ["groups-too-wide", "groups-count-zero", "codebook-nan", "codebook-short",
                                  "dirs-out-of-range", "dirs-repeated", "groups-dtype", "scalar-encoder",
                                  "levels-three", "levels-two-short-books", "version-3-columns"])
def test_damaged_grouped_files_are_refused(edit):
    X = flat_data(800, 64)
    index = LPLRIndex(64, bits_per_coordinate=1).build(X)
    assert index.encoder == "rotation"
    data = index.to_bytes()
    c = read_container(data)
    groups, books, dirs = (np.array(c.arrays[k]) for k in ("vq_groups", "vq_codebooks", "vq_dirs"))
    if edit == "groups-too-wide":
        bad = _edited(data, vq_groups=np.array([[64, 2, 1]], np.int32))
    elif edit == "groups-count-zero":
        g = groups.copy()
        g[0, 1] = 0
        bad = _edited(data, vq_groups=g)
    elif edit == "codebook-nan":
        b = books.copy()
        b[3] = np.nan
        bad = _edited(data, vq_codebooks=b)
    elif edit == "codebook-short":
        bad = _edited(data, vq_codebooks=books[:-16])
    elif edit == "dirs-out-of-range":
        d = dirs.copy()
        d[0] = 64
        bad = _edited(data, vq_dirs=d)
    elif edit == "dirs-repeated":
        d = dirs.copy()
        d[1] = d[0]
        bad = _edited(data, vq_dirs=d)
    elif edit == "groups-dtype":
        bad = _edited(data, vq_groups=groups.astype(np.int64))
    elif edit == "levels-three":
        g = groups.copy()
        g[0, 2] = 3
        bad = _edited(data, vq_groups=g)
    elif edit == "levels-two-short-books":  # a second level without its fine codebook
        g = groups.copy()
        g[0, 2] = 2
        bad = _edited(data, vq_groups=g)
    elif edit == "version-3-columns":  # a version-4 file must say the levels
        bad = _edited(data, vq_groups=np.ascontiguousarray(groups[:, :2]))
    else:  # grouped arrays under a header that names the scalar encoder
        header = dict(c.header)
        header["encoder"] = "pinv"
        bad = container_to_bytes(header, {k: np.array(v) for k, v in c.arrays.items()}, version=c.version)
    with pytest.raises(IndexFileError, match="damaged or inconsistent"):
        LPLRIndex.from_bytes(bad)


def test_the_scalar_codes_stay_available_and_unchanged():
    rng = np.random.default_rng(3)
    X = (rng.standard_normal((2000, 24)) * 0.85 ** np.arange(24)).astype(np.float32)
    paper = LPLRIndex(24, rank=8, bits_l=8, bits_r=8, quantizer="minmax", refine_iters=0, factor="lstsq").build(X)
    assert paper.codec == "scalar" and paper.encoder == "sketch"
    scalar = LPLRIndex(24, bits_per_coordinate=1, codec="scalar").build(X)
    assert scalar.codec == "scalar" and scalar.encoder == "pinv"
    with pytest.raises(ValueError, match="codec='vq' stores 4-bit codes"):
        LPLRIndex(24, bits_per_coordinate=1, bits_l=8, codec="vq")


def decoded_scores(metric, Q, Xh, mean):
    """The re-ranker's scores (larger is better) of prepared queries ``Q`` against decoded rows ``Xh`` (nq, c, dim)."""
    if metric == "l2":
        return 2 * np.einsum("qd,qcd->qc", Q - mean, Xh - mean) - ((Xh - mean) ** 2).sum(-1)
    S = np.einsum("qd,qcd->qc", Q, Xh)
    return S if metric == "ip" else S / np.linalg.norm(Xh, axis=-1)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_rescoring_grouped_codes_equals_scoring_the_decoded_vectors(metric):
    from lplr_index.search import blas
    from lplr_index.search.metrics import prepare_queries

    X = flat_data(3000, 48)
    index = LPLRIndex(48, bits_per_coordinate=1, metric=metric).build(X)
    view = index._state.view  # white-box: the re-ranker's scores against the decoded vectors
    Q = prepare_queries(view, X[:30] + 0.03)
    ids = np.random.default_rng(0).integers(-1, 3000, (30, 40))
    S = blas.exact_scores(view, Q, ids)
    ref = decoded_scores(metric, Q, index.reconstruct()[np.maximum(ids, 0)], view.encoder.mean)
    assert np.array_equal(np.isneginf(S), ids < 0)
    np.testing.assert_allclose(S[ids >= 0], ref[ids >= 0], rtol=1e-4, atol=1e-5)  # observed <= 4e-7


@pytest.mark.parametrize("seed", [2**31 + 5, 2**63 - 1])
def test_seeds_beyond_faiss_int_range_build(seed):
    X = flat_data(2000, 32)
    a = LPLRIndex(32, bits_per_coordinate=1, seed=seed).build(X)
    b = LPLRIndex(32, bits_per_coordinate=1, seed=seed).build(X)
    assert a.to_bytes() == b.to_bytes() and a.codec == "vq"


# ------------------------------------------------------------ two-level codes
def steep_data(n=4000, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(np.random.default_rng(5).standard_normal((dim, dim)))
    return ((rng.standard_normal((n, dim)) * 0.85 ** np.arange(dim)) @ basis).astype(np.float32)


@pytest.fixture
def two_level_only(monkeypatch):
    """Builds choose among the designs with coarse + fine codes only."""
    monkeypatch.setattr(vq_module, "CANDIDATE_SIZES", (vq_module.CANDIDATE_SIZES[-1],))


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_two_level_codes_search_round_trip_and_rescore_exactly(metric, two_level_only, tmp_path):
    from lplr_index.search import blas
    from lplr_index.search.metrics import prepare_queries

    X = steep_data()
    Q = X[:60] + 0.01
    index = LPLRIndex(32, bits_per_coordinate=4, metric=metric, codec="vq").build(X)
    lq = index._state.encoder.lq  # white-box: the layout
    assert index.codec == "vq" and lq.two_level and lq.n_codes > lq.n_coarse
    assert index.bits_per_coordinate <= 4 and index.layout["groups"] == lq.groups.tolist()
    assert index.fastscan_ready
    # fast-scan scans the coarse codes, the re-rank the whole code: with a deep enough
    # re-rank the results are the exact scan's
    D_fast, _ = index.search(Q, 10, rerank_factor=50)
    D_exact, I_exact = index.search(Q, 10, mode="factored")
    D_flat, _ = index.search(Q, 10, mode="reconstructed")
    np.testing.assert_allclose(D_fast, D_exact, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(D_flat, D_exact, rtol=1e-3, atol=1e-4)
    # the re-ranker scores the whole codes (256 centroids per group) as the decoded vectors score
    view = index._state.view
    Qp = prepare_queries(view, Q[:20])
    ids = np.random.default_rng(0).integers(-1, len(X), (20, 30))
    ref = decoded_scores(metric, Qp, index.reconstruct()[np.maximum(ids, 0)], view.encoder.mean)
    S = blas.exact_scores(view, Qp, ids)
    np.testing.assert_allclose(S[ids >= 0], ref[ids >= 0], rtol=1e-4, atol=1e-4)
    assert np.isneginf(S[ids < 0]).all()
    # saved and loaded (version 4), then added to with the same codes
    index.save(tmp_path / "a.lplr")
    again = LPLRIndex.load(tmp_path / "a.lplr")
    assert read_container(tmp_path / "a.lplr").version == 6
    assert again.to_bytes() == index.to_bytes()
    codes = np.array(again._state.store.codes[:50])
    again.add(X[:50])
    np.testing.assert_array_equal(np.array(again._state.store.codes[len(X):]), codes)


def test_two_level_designs_are_checked_on_all_rows_when_the_data_outgrows_the_sample(monkeypatch):
    from lplr_index.search import fastscan

    def build(X, budget=2):
        index = LPLRIndex(X.shape[1], bits_per_coordinate=budget, codec="vq").build(X)
        return index, index.build_report

    def tried(report):
        return any(isinstance(o, tuple) for c in report["candidates"] for o in (c["sizes"] or ()))

    small, big = steep_data(8000, 16), steep_data(20_000, 16)  # big: more rows than the 16,384-row sample
    index, report = build(small)
    assert tried(report) and report["full_check"] is None  # the sample is the data: its check is the search
    index, report = build(big)
    assert tried(report)
    check = report["full_check"]
    assert check is not None and any(lv == 2 for _, _, lv in check["groups"])
    assert 0 <= check["recall"] <= check["deep_recall"] + 0.02 and check["deep_recall"] <= 1
    assert check["predicted_recall"] == pytest.approx(
        check["exact_sample_recall"] - (check["deep_recall"] - check["recall"]))
    assert (index.layout["groups"] == check["groups"]) == check["kept"]

    # the decision follows the measured recalls: nothing lost keeps the two-level design,
    # everything lost falls back to the best one-level design, encoded in a third pass
    real = fastscan.first_stage_recall
    for recalls in ((1.0, 1.0), (0.0, 1.0)):
        monkeypatch.setattr(fastscan, "first_stage_recall",
                            lambda *a, recalls=recalls, **kw: (recalls, real(*a, **kw)[1]))
        index, report = build(big)
        kept = report["full_check"]["kept"]
        assert kept == (recalls[0] == 1.0)
        assert index._state.encoder.lq.two_level == kept
    monkeypatch.setattr(vq_module, "CANDIDATE_SIZES", vq_module.CANDIDATE_SIZES[:-1])
    one_level = LPLRIndex(16, bits_per_coordinate=2, codec="vq").build(big)
    monkeypatch.undo()
    assert one_level.to_bytes() == index.to_bytes()
    np.testing.assert_array_equal(index.search(big[:50], 5)[1], one_level.search(big[:50], 5)[1])


def test_two_level_designs_on_data_past_the_checked_size_only_at_high_rates(monkeypatch):
    monkeypatch.setattr(vq_module, "FULL_CHECK_ROWS", 10_000)
    X = steep_data(12_000, 16)
    for budget, expect in ((2, False), (4, True)):
        report = LPLRIndex(16, bits_per_coordinate=budget, codec="vq").build(X).build_report
        assert any(isinstance(o, tuple) for c in report["candidates"] for o in (c["sizes"] or ())) == expect
        assert report["full_check"] is None  # the sample (12,000 rows) is the data
    monkeypatch.undo()
    assert vq_module.two_level_tried(0.5, 1 << 16) and not vq_module.two_level_tried(3.4, (1 << 16) + 1)
    assert vq_module.two_level_tried(3.5, 10**9)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_first_stage_recall_counts_the_exact_neighbours_found(metric, two_level_only):
    from lplr_index.search.fastscan import first_stage_recall
    from lplr_index.search.metrics import prepare_queries

    X = steep_data(2000, 16)
    index = LPLRIndex(16, bits_per_coordinate=4, metric=metric, codec="vq").build(X)
    st = index._state
    rows = np.arange(0, 2000, 23)
    Q = prepare_queries(st.view, X[rows])
    # as neighbours, what the exact scan of the codes finds: a depth holding every row finds them all
    _, nearest = index.search(X[rows], 11, mode="factored")
    (shallow, deep), scorer = first_stage_recall(st.encoder, st.store.codes, metric, Q, rows, nearest,
                                                 k=10, factor=200, multiple=2)
    assert shallow == deep == 1.0 and scorer.ntotal == 2000
    (shallow, deep), _ = first_stage_recall(st.encoder, st.store.codes, metric, Q, rows, nearest,
                                            k=10, factor=1, multiple=200)
    assert deep == 1.0 and 0.0 <= shallow < 1.0


def test_the_layout_is_read_only_and_its_sizes_survive_pickling():
    import pickle

    lq, _ = quantizer(groups=((1, 3, 2), (2, 4, 1), (4, 2, 1)))
    assert (lq.n_codes, lq.n_coarse, lq.rank, lq.dsub, lq.two_level) == (12, 9, 19, 4, True)
    with pytest.raises(ValueError):
        lq.groups[0, 0] = 2  # the cached sizes and classes follow the layout: it cannot change
    again = pickle.loads(pickle.dumps(lq))
    assert "_pq" not in again.__dict__ and again.classes()[1].C.base is not None
    assert (again.n_codes, again.n_coarse, again.rank, again.dsub, again.two_level) == (12, 9, 19, 4, True)
    Z = np.random.default_rng(1).standard_normal((50, 19)).astype(np.float32)
    np.testing.assert_array_equal(again.encode(Z), lq.encode(Z))
    np.testing.assert_array_equal(again.decode(again.encode(Z)), lq.decode(lq.encode(Z)))


def test_the_scalar_codes_are_fitted_from_six_bits_and_built_when_they_win():
    from lplr_index.index import SCALAR_RIVAL_MIN_BITS

    X = flat_data(4000, 64)
    below = LPLRIndex(64, bits_per_coordinate=SCALAR_RIVAL_MIN_BITS - 2).build(X)
    assert below.codec == "vq" and all(c["basis"] != "scalar" for c in below.build_report["candidates"])
    at = LPLRIndex(64, bits_per_coordinate=SCALAR_RIVAL_MIN_BITS).build(X)
    assert [c["basis"] for c in at.build_report["candidates"]].count("scalar") == 1
    # with 10 bits a coordinate the 8-bit scalar codes beat every grouped design on the sample
    # (observed 0.994 against 0.989): the index is built with them
    high = LPLRIndex(64, bits_per_coordinate=10).build(X)
    cands = high.build_report["candidates"]
    assert high.codec == "scalar" and high.build_report["chosen"] == {"basis": "scalar"}
    assert max(c["sample_recall"] for c in cands if c["basis"] == "scalar") > max(
        c["sample_recall"] for c in cands if c["basis"] != "scalar")
    assert high.bits_per_coordinate <= 10
