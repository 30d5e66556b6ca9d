"""LPLRIndex: recall against brute force, factored == reconstructed, honest budgets, add, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import cross_val_score

import lplr_index.search.blas as blas_module
from lplr_index import LPLRIndex, LPLRKNeighborsClassifier, SearchResult, neighbour_overlap, recall_at_k

pytestmark = pytest.mark.usefixtures("blas_single_thread")

METRICS = ["l2", "ip", "cosine"]
BUDGETS = [0.5, 1, 2, 4]
SETTINGS = [(m, b) for m in METRICS for b in BUDGETS]

#: recall 10@10 of factored search against brute force on the session data (5000 x 64,
#: singular values 0.9**i, queries = database points + noise). Thresholds sit a few
#: points below the observed values, which move by ~0.005 with the BLAS thread count.
RECALL_THRESHOLDS = {
    ("l2", 0.5): 0.27,  # observed 0.3085 (rank 6, 4-bit codes)
    ("l2", 1): 0.66,  # observed 0.7060 (rank 14, 4-bit)
    ("l2", 2): 0.79,  # observed 0.8300-0.8335 (rank 30, 4-bit)
    ("l2", 4): 0.93,  # observed 0.9660-0.9685 (rank 31, 8-bit)
    ("ip", 0.5): 0.42,  # observed 0.4655
    ("ip", 1): 0.70,  # observed 0.7465
    ("ip", 2): 0.77,  # observed 0.8135-0.8155
    ("ip", 4): 0.95,  # observed 0.9835-0.9840
    ("cosine", 0.5): 0.25,  # observed 0.2880
    ("cosine", 1): 0.69,  # observed 0.7330
    ("cosine", 2): 0.80,  # observed 0.8385-0.8395
    ("cosine", 4): 0.93,  # observed 0.9705-0.9725
}


def setting_id(setting):
    metric, budget = setting
    return f"{metric}-{budget}bpc"


@pytest.fixture(scope="module")
def small_index(blas_single_thread, small_embeddings):
    """A built (1000, 32) index for the bad-input tests; never modified."""
    return LPLRIndex(32, bits_per_coordinate=2).build(small_embeddings)


def reconstruction_knn_check(index, Q, D, I, knn_checker):
    """``(D, I)`` is a correct k-NN answer over the index's own decoded vectors."""
    knn_checker(index.reconstruct(), Q, D, I, index.metric)


# ------------------------------------------------------------------ recall
@pytest.mark.parametrize("setting", SETTINGS, ids=setting_id)
def test_recall_at_10_against_brute_force(setting, index_factory, embeddings, queries, brute_knn):
    metric, budget = setting
    index = index_factory(metric, budget)
    I_true = brute_knn(embeddings, queries, 10, metric)
    D, I = index.search(queries, 10)
    assert isinstance(D, np.ndarray) and D.shape == I.shape == (len(queries), 10)
    assert D.dtype == np.float32 and I.dtype == np.int64
    assert recall_at_k(I, I_true, 10) >= RECALL_THRESHOLDS[setting]


def test_recall_grows_with_the_budget(index_factory, embeddings, queries, brute_knn):
    for metric in METRICS:
        I_true = brute_knn(embeddings, queries, 10, metric)
        recalls = [recall_at_k(index_factory(metric, b).search(queries, 10).indices, I_true) for b in BUDGETS]
        assert recalls == sorted(recalls), (metric, recalls)


def test_explicit_rank_recall(embeddings, queries, brute_knn):
    index = LPLRIndex(64, rank=16).build(embeddings)
    assert index.rank == 16 and index.bits_l == 8  # the paper's 8-bit codes by default
    I_true = brute_knn(embeddings, queries, 10, "l2")
    assert recall_at_k(index.search(queries, 10).indices, I_true) >= 0.78  # observed 0.829


# ------------------------------------------------ factored == reconstructed
@pytest.mark.parametrize("setting", SETTINGS, ids=setting_id)
def test_factored_and_reconstructed_search_agree(setting, index_factory, queries, knn_checker):
    index = index_factory(*setting)
    Df, If = index.search(queries, 10, mode="factored")
    Dr, Ir = index.search(queries, 10, mode="reconstructed")
    # both are right answers over the decoded vectors, up to float32 rounding and ties
    reconstruction_knn_check(index, queries, Df, If, knn_checker)
    reconstruction_knn_check(index, queries, Dr, Ir, knn_checker)
    assert neighbour_overlap(If, Ir) > 0.99  # observed 1.0


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("quantizer", ["minmax", "minmax-col", "mse-col"])
def test_every_quantizer_searches_in_both_modes(quantizer, metric, small_embeddings, knn_checker):
    # "minmax" keeps one level pair for the whole matrix: the factored scorer must
    # broadcast it (it once failed with a matmul shape error)
    index = LPLRIndex(32, bits_per_coordinate=2, quantizer=quantizer, metric=metric).build(small_embeddings)
    Q = small_embeddings[:25] + 0.01
    results = [index.search(Q, 5, mode=mode) for mode in ("factored", "reconstructed")]
    for D, I in results:
        reconstruction_knn_check(index, Q, D, I, knn_checker)
    assert neighbour_overlap(results[0].indices, results[1].indices) > 0.99


@pytest.mark.parametrize("bits_l", range(1, 9), ids=lambda b: f"bits_l{b}")
def test_explicit_rank_every_code_width(bits_l, small_embeddings, knn_checker):
    # rank 7: 7 * bits_l fills whole bytes only at bits_l = 8, so rows end in padding bits
    index = LPLRIndex(32, rank=7, bits_l=bits_l).build(small_embeddings)
    assert (index.rank, index.bits_l) == (7, bits_l)
    Q = small_embeddings[:25] + 0.01
    for mode in ("factored", "reconstructed"):
        D, I = index.search(Q, 5, mode=mode)
        reconstruction_knn_check(index, Q, D, I, knn_checker)


@pytest.mark.parametrize("metric", METRICS)
def test_blockwise_factored_search_equals_one_block(metric, small_embeddings, monkeypatch, knn_checker):
    # white-box: the database is scored in blocks of BLOCK_ROWS rows and merged;
    # blocks of 97 rows (and k > 97) exercise the merge the test data never reach otherwise
    index = LPLRIndex(32, bits_per_coordinate=2, metric=metric).build(small_embeddings)
    Q = small_embeddings[::50] + 0.01
    D1, I1 = index.search(Q, 150, mode="factored")
    monkeypatch.setattr(blas_module, "BLOCK_ROWS", 97)
    fresh = LPLRIndex(32, bits_per_coordinate=2, metric=metric).build(small_embeddings)
    D2, I2 = fresh.search(Q, 150, mode="factored")
    reconstruction_knn_check(fresh, Q, D2, I2, knn_checker)
    np.testing.assert_allclose(D2, D1, rtol=1e-5, atol=1e-5)
    assert neighbour_overlap(I1, I2) > 0.99


# ---------------------------------------------------------------- budgets
@pytest.mark.parametrize("setting", SETTINGS, ids=setting_id)
def test_budget_is_kept_and_measured_on_the_file(setting, index_factory, tmp_path, embeddings):
    index = index_factory(*setting)
    assert index.bits_per_coordinate <= setting[1]
    path = tmp_path / "index.lplr"
    written = index.save(path)
    size = path.stat().st_size
    assert written == size == index.nbytes
    assert index.bits_per_coordinate == 8 * size / (len(embeddings) * 64)
    assert sum(index.storage_breakdown().values()) == size


def test_budget_mode_uses_the_largest_rank_that_fits(small_embeddings):
    index = LPLRIndex(32, bits_per_coordinate=1.5).build(small_embeddings)
    from lplr_index import layout

    # white-box accounting: the file of the next rank
    bigger = layout.file_nbytes(index.settings, len(small_embeddings), index.rank + 1, index.bits_l)
    assert 8 * index.nbytes <= 1.5 * 1000 * 32 < 8 * bigger


def test_explicit_rank_reports_what_it_stores(small_embeddings, tmp_path):
    index = LPLRIndex(32, rank=5, bits_l=3, bits_r=6, quantizer="minmax").build(small_embeddings)
    assert index.save(tmp_path / "i.lplr") == index.nbytes
    assert index.bits_per_coordinate == 8 * index.nbytes / (1000 * 32)
    parts = index.storage_breakdown()
    assert parts["codes"] == 1000 * 2  # ceil(5 * 3 / 8) = 2 bytes per vector
    assert parts["shared_factor"] == 5 * 24  # ceil(32 * 6 / 8) = 24 bytes per row of R
    assert parts["quantizer_levels"] == 4 * (2 + 2)  # one [lo, hi] pair per factor


def test_refinement(small_embeddings):
    # the paper's least-squares factor: the encoder of the kept round is stored as it is
    plain = LPLRIndex(32, bits_per_coordinate=1, refine_iters=0, factor="lstsq").build(small_embeddings)
    refined = LPLRIndex(32, bits_per_coordinate=1, refine_iters=2, factor="lstsq").build(small_embeddings)
    assert plain.encoder == "sketch"
    assert refined.encoder in ("sketch", "pinv")
    assert refined.fit_error <= plain.fit_error  # the best round is kept: never worse


def test_orthonormal_factor_encodes_by_projection(small_embeddings):
    index = LPLRIndex(32, bits_per_coordinate=1, codec="scalar").build(small_embeddings)
    assert index.factor == "orthonormal" and index.encoder == "pinv"
    enc = index._state.encoder  # white-box: the stored factor's rows are orthonormal up to 8-bit rounding
    G = enc.R.astype(np.float64) @ enc.R.T.astype(np.float64)
    np.testing.assert_allclose(G, np.eye(index.rank), atol=0.02)  # observed max deviation ~0.004


# -------------------------------------------------------------------- add
@pytest.mark.parametrize("refine_iters", [0, 2], ids=["sketch-encoder", "refined-encoder"])
@pytest.mark.parametrize("metric", METRICS)
def test_adding_the_build_vectors_gives_identical_codes(metric, refine_iters, small_embeddings):
    index = LPLRIndex(32, bits_per_coordinate=2, metric=metric, refine_iters=refine_iters)
    index.build(small_embeddings)
    n = len(small_embeddings)
    before = index.reconstruct()
    index.add(small_embeddings)
    assert len(index) == index.ntotal == 2 * n
    np.testing.assert_array_equal(index.reconstruct(np.arange(n)), before)
    np.testing.assert_array_equal(index.reconstruct(np.arange(n, 2 * n)), before)


def test_add_continues_ids_and_never_refits(embeddings):
    head, tail = embeddings[:4000], embeddings[4000:]
    index = LPLRIndex(64, bits_per_coordinate=1).build(head)
    head_codes = index.reconstruct()
    index.add(tail[:300]).add(tail[300:])
    assert index.ntotal == 5000
    np.testing.assert_array_equal(index.reconstruct(np.arange(4000)), head_codes)  # no refit
    # the tail got ids 4000.. and the same codes as adding it in one go
    one_go = LPLRIndex(64, bits_per_coordinate=1).build(head).add(tail)
    np.testing.assert_array_equal(index.reconstruct(np.arange(4000, 5000)), one_go.reconstruct(np.arange(4000, 5000)))
    D, I = index.search(index.reconstruct([4000, 4999]), 1)
    np.testing.assert_array_equal(index.reconstruct(I[:, 0]), index.reconstruct([4000, 4999]))


def test_build_plus_add_versus_build_on_the_concatenation(embeddings, queries, brute_knn):
    # documented difference: add() encodes with the factor and quantizer learned on the
    # first part (no refit), so the codes differ from a build on everything, but the
    # search quality is the same (observed recall@10 0.713 vs 0.706 at 1 bit per coordinate)
    added = LPLRIndex(64, bits_per_coordinate=1).build(embeddings[:4000]).add(embeddings[4000:])
    whole = LPLRIndex(64, bits_per_coordinate=1).build(embeddings)
    assert added.ntotal == whole.ntotal == 5000
    I_true = brute_knn(embeddings, queries, 10, "l2")
    r_added = recall_at_k(added.search(queries, 10).indices, I_true)
    r_whole = recall_at_k(whole.search(queries, 10).indices, I_true)
    assert abs(r_added - r_whole) < 0.05
    assert min(r_added, r_whole) > 0.66


def test_out_of_range_vectors_are_clipped_not_wrapped(small_embeddings):
    index = LPLRIndex(32, bits_per_coordinate=2, factor="lstsq").build(small_embeddings)
    assert index.n_clipped == 0
    outlier = small_embeddings[:1] * 100
    index.add(outlier)
    # white-box: the latent coordinates of the outlier, and where they fall in the range
    enc = index._state.encoder
    q = enc.lq
    y = (enc.prepare(outlier) @ enc.T).ravel()
    half = q.step / 2
    above, below = y > q.hi + half, y < q.lo - half
    assert index.n_clipped == above.sum() + below.sum() == index.rank  # observed: all 12 entries
    # the stored codes sit on the end levels (wrapping would put them anywhere)
    stored = index._state.view.decode_latent(index._state.store.codes[-1:])[0]
    top = q.decode(np.full((1, index.rank), q.levels - 1, np.uint8))[0]
    np.testing.assert_array_equal(stored[above], top[above])
    np.testing.assert_array_equal(stored[below], np.broadcast_to(q.lo, stored.shape)[below])
    # the public view of the same fact: saturated codes do not change with the scale
    saturated = index.reconstruct([index.ntotal - 1])
    index.add(small_embeddings[:1] * 1000)
    assert index.n_clipped == 2 * index.rank
    np.testing.assert_array_equal(index.reconstruct([index.ntotal - 1]), saturated)


def test_vectors_inside_the_range_are_not_counted_as_clipped(small_embeddings):
    # minmax-col levels span the build data, so re-adding it clips nothing
    index = LPLRIndex(32, bits_per_coordinate=2, quantizer="minmax-col").build(small_embeddings)
    index.add(small_embeddings)
    assert index.n_clipped == 0


# ----------------------------------------------------------------- padding
@pytest.mark.parametrize("mode", ["factored", "reconstructed"])
@pytest.mark.parametrize(("metric", "fill"), [("l2", np.inf), ("ip", -np.inf), ("cosine", -np.inf)])
def test_k_larger_than_the_index_is_padded(metric, fill, mode, small_embeddings, knn_checker):
    index = LPLRIndex(32, rank=4, metric=metric).build(small_embeddings[:5])
    Q = small_embeddings[10:13]
    D, I = index.search(Q, 8, mode=mode)
    assert D.shape == I.shape == (3, 8) and D.dtype == np.float32 and I.dtype == np.int64
    np.testing.assert_array_equal(I[:, 5:], -1)
    np.testing.assert_array_equal(D[:, 5:], fill)
    assert (np.sort(I[:, :5], axis=1) == np.arange(5)).all()
    reconstruction_knn_check(index, Q, D[:, :5], I[:, :5], knn_checker)


def test_search_result_is_a_named_tuple(small_index, small_embeddings):
    result = small_index.search(small_embeddings[:2], 3)
    assert isinstance(result, SearchResult)
    D, I = result
    assert D is result.distances and I is result.indices


# ------------------------------------------------ dtypes and memory layouts
def layouts(X: np.ndarray) -> dict[str, np.ndarray]:
    wide = np.zeros((X.shape[0], 2 * X.shape[1]), X.dtype)
    wide[:, ::2] = X
    return {
        "float64": X.astype(np.float64),
        "fortran": np.asfortranarray(X),
        "strided": wide[:, ::2],
        "reversed-rows": np.ascontiguousarray(X[::-1])[::-1],
    }


@pytest.mark.parametrize("layout", ["float64", "fortran", "strided", "reversed-rows"])
def test_other_dtypes_and_layouts_give_identical_results(layout, small_embeddings, tmp_path):
    reference = LPLRIndex(32, bits_per_coordinate=2).build(small_embeddings)
    other = LPLRIndex(32, bits_per_coordinate=2).build(layouts(small_embeddings)[layout])
    reference.save(tmp_path / "a.lplr")
    other.save(tmp_path / "b.lplr")
    assert (tmp_path / "a.lplr").read_bytes() == (tmp_path / "b.lplr").read_bytes()
    Q = small_embeddings[:40] + 0.05
    expected = reference.search(Q, 10)
    got = reference.search(layouts(Q)[layout], 10)
    np.testing.assert_array_equal(got.indices, expected.indices)
    np.testing.assert_array_equal(got.distances, expected.distances)


def test_integer_vectors_and_python_lists_are_accepted(small_embeddings):
    X = np.round(small_embeddings * 100).astype(np.int32)
    index = LPLRIndex(32, bits_per_coordinate=2).build(X)
    D, I = index.search(X[:2].tolist(), 3)
    assert I.shape == (2, 3)


# -------------------------------------------------------------- bad input
ONES = np.ones((4, 32), np.float32)

#: id -> (call on a built (1000, 32) index, exception, message pattern)
BAD_CALLS = {
    "query-nan": (lambda ix: ix.search(np.full((1, 32), np.nan), 3), ValueError, "queries must be finite"),
    "query-inf": (lambda ix: ix.search(np.full((1, 32), -np.inf), 3), ValueError, "queries must be finite"),
    "query-1-D": (lambda ix: ix.search(np.ones(32), 3), ValueError, "queries must be a 2-D array"),
    "query-3-D": (lambda ix: ix.search(np.ones((1, 2, 32)), 3), ValueError, "queries must be a 2-D array"),
    "query-wrong-dim": (lambda ix: ix.search(np.ones((2, 31)), 3), ValueError,
                        "queries has 31 dimensions, but this index holds 32-dimensional vectors"),
    "query-empty": (lambda ix: ix.search(np.ones((0, 32)), 3), ValueError, "queries must hold at least one row"),
    "query-strings": (lambda ix: ix.search(np.full((1, 32), "1"), 3), TypeError, "queries must hold real numbers"),
    "query-object": (lambda ix: ix.search(np.ones((1, 32), object), 3), TypeError, "queries must hold real numbers"),
    "query-complex": (lambda ix: ix.search(np.ones((1, 32), complex), 3), TypeError, "queries must hold real numbers"),
    # Regression: a ragged query list gave numpy's "setting an array element with a sequence" unnamed
    "query-ragged": (lambda ix: ix.search([[1.0] * 32, [1.0] * 31], 5), TypeError,
                     "queries must be a 2-D array of numbers, got list that numpy cannot convert"),
    "query-ragged-nested": (lambda ix: ix.search([[[1.0] * 32], [1.0] * 32], 5), TypeError,
                            "queries must be a 2-D array of numbers, got list"),
    "query-object-none": (lambda ix: ix.search([[1.0] * 31 + [None]], 3), TypeError,
                          "queries must hold real numbers .* got dtype object"),
    "add-ragged": (lambda ix: ix.add([[1.0] * 32, [1.0] * 31]), TypeError,
                   "X must be a 2-D array of numbers, got list that numpy cannot convert"),
    "add-object": (lambda ix: ix.add(np.ones((1, 32), object)), TypeError, "X must hold real numbers"),
    "update-ragged": (lambda ix: ix.update([0, 1], [[1.0] * 32, [1.0] * 31]), TypeError,
                      "X must be a 2-D array of numbers"),
    "remove-ragged-ids": (lambda ix: ix.remove([[1], [2, 3]]), ValueError,
                          "ids must be a 1-D array of integer ids, got list that numpy cannot convert"),
    "reconstruct-ragged-ids": (lambda ix: ix.reconstruct([[1], [2, 3]]), ValueError,
                               "ids must be a 1-D array of integer ids, got list"),
    "reconstruct-object-ids": (lambda ix: ix.reconstruct([1, None]), ValueError,
                               "ids must be a 1-D array of integer ids, got shape .*dtype object"),
    "allowed-ragged": (lambda ix: ix.search(ONES, 3, allowed=[[1], [2, 3]]), TypeError, "allowed must be"),
    "k0": (lambda ix: ix.search(ONES, 0), ValueError, r"k must be an integer in \[1, inf\], got 0"),
    "k-negative": (lambda ix: ix.search(ONES, -3), ValueError, r"k must be an integer in \[1, inf\], got -3"),
    "k-float": (lambda ix: ix.search(ONES, 2.0), TypeError, "k must be an integer, got 2.0"),
    "k-string": (lambda ix: ix.search(ONES, "10"), TypeError, "k must be an integer, got '10'"),
    "mode": (lambda ix: ix.search(ONES, 3, mode="exact"), ValueError,
             "mode must be one of 'auto', 'fastscan', 'factored', 'reconstructed', got 'exact'"),
    "add-nan": (lambda ix: ix.add(np.full((1, 32), np.nan)), ValueError, "X must be finite"),
    "add-wrong-dim": (lambda ix: ix.add(np.ones((1, 33))), ValueError,
                      "X has 33 dimensions, but this index holds 32-dimensional vectors"),
    "add-empty": (lambda ix: ix.add(np.ones((0, 32))), ValueError, "X must hold at least one row"),
    "add-strings": (lambda ix: ix.add(np.full((1, 32), "a")), TypeError, "X must hold real numbers"),
    "reconstruct-id": (lambda ix: ix.reconstruct([1000]), IndexError, r"ids must be in \[0, 999\], got 1000"),
    "reconstruct-float-ids": (lambda ix: ix.reconstruct([1.0]), ValueError, "ids must be a 1-D array of integer ids"),
}


@pytest.mark.parametrize("case", BAD_CALLS, ids=str)
def test_bad_input_to_a_built_index(case, small_index):
    call, exc, match = BAD_CALLS[case]
    ntotal = small_index.ntotal
    with pytest.raises(exc, match=match):
        call(small_index)
    assert small_index.ntotal == ntotal  # a rejected add leaves the index as it was


@pytest.mark.parametrize(
    ("X", "exc", "match"),
    [
        (np.full((10, 32), np.nan), ValueError, r"X must be finite.*got a non-finite value \(nan\) at row 0, column 0"),
        (np.ones(32), ValueError, "X must be a 2-D array"),
        (np.ones((2, 10, 32)), ValueError, "X must be a 2-D array"),
        (np.ones((10, 16)), ValueError, "X has 16 dimensions, but this index holds 32-dimensional vectors"),
        (np.ones((0, 32)), ValueError, "X must hold at least one row"),
        (np.full((10, 32), "x"), TypeError, "X must hold real numbers"),
        (np.ones((3, 32)), ValueError, "rank=4 needs at least 4 vectors to build on, got X with 3"),
    ],
    ids=["nan", "1-D", "3-D", "wrong-dim", "empty", "strings", "fewer-vectors-than-rank"],
)
def test_bad_build_input(X, exc, match):
    with pytest.raises(exc, match=match):
        LPLRIndex(32, rank=4).build(X)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({}, ValueError, "give exactly one of bits_per_coordinate .* or rank, got bits_per_coordinate=None and rank=None"),
        ({"bits_per_coordinate": 1, "rank": 4}, ValueError, "give exactly one of bits_per_coordinate"),
        ({"rank": 4, "metric": "euclidean"}, ValueError, "metric must be one of 'l2', 'ip', 'cosine', got 'euclidean'"),
        ({"rank": 4, "quantizer": "pq"}, ValueError, "quantizer must be one of 'minmax', 'minmax-col', 'mse-col', got 'pq'"),
        ({"rank": 33}, ValueError, r"rank must be an integer in \[1, 32\], got 33"),
        ({"rank": 0}, ValueError, r"rank must be an integer in \[1, 32\], got 0"),
        ({"bits_per_coordinate": 0}, ValueError, r"bits_per_coordinate must be a finite number > 0 and <= 1e\+06, got 0"),
        ({"bits_per_coordinate": float("nan")}, ValueError, "bits_per_coordinate must be a finite number > 0"),
        ({"bits_per_coordinate": "2"}, TypeError, r"bits_per_coordinate must be a positive number \(> 0 and <= 1e\+06\)"),
        # Regression: 1e308 was accepted, and build overflowed (cannot convert float infinity to integer)
        ({"bits_per_coordinate": 1e308}, ValueError, r"bits_per_coordinate must be a finite number > 0 and <= 1e\+06, "
                                                      r"got 1e\+308"),
        ({"bits_per_coordinate": 1e6 + 1}, ValueError, r"> 0 and <= 1e\+06, got 1000001"),
        ({"bits_per_coordinate": 10**400}, ValueError, r"> 0 and <= 1e\+06, got an integer of 401 digits"),
        ({"bits_per_coordinate": -2}, ValueError, r"> 0 and <= 1e\+06, got -2"),
        ({"rank": 2.0}, TypeError, r"rank must be an integer, got 2.0 \(float\) \(allowed: integers in \[1, 32\]\)"),
        ({"rank": 4, "bits_r": True}, TypeError, r"bits_r must be an integer, got True \(bool\) \(allowed: integers in \[1, 8\]\)"),
        ({"rank": 4, "refine_iters": 101}, ValueError, r"refine_iters must be an integer in \[0, 100\], got 101"),
        ({"rank": 4, "seed": 1.5}, TypeError, r"seed must be an integer, got 1.5 \(float\) \(allowed: integers in \[0, inf\]\)"),
        ({"rank": 4, "bits_l": 9}, ValueError, r"bits_l must be an integer in \[1, 8\], got 9"),
        ({"rank": 4, "bits_r": 0}, ValueError, r"bits_r must be an integer in \[1, 8\], got 0"),
        ({"rank": 4, "seed": None}, ValueError, "seed must be an integer >= 0"),
        ({"rank": 4, "seed": -1}, ValueError, r"seed must be an integer in \[0, inf\]"),
        ({"rank": 4, "refine_iters": -1}, ValueError, r"refine_iters must be an integer in \[0, 100\]"),
    ],
    ids=["neither", "both", "metric", "quantizer", "rank-too-big", "rank0", "budget0", "budget-nan",
         "budget-string", "budget-1e308", "budget-above-max", "budget-huge-int", "budget-negative", "rank-float",
         "bits_r-bool", "refine-too-many", "seed-float", "bits_l9", "bits_r0", "seed-none", "seed-negative",
         "refine-negative"],
)
def test_bad_settings_fail_in_the_constructor(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        LPLRIndex(32, **kwargs)


def test_bad_dim():
    with pytest.raises(ValueError, match=r"dim must be an integer in \[1, 2147483647\], got 0"):
        LPLRIndex(0, rank=1)
    with pytest.raises(ValueError, match=r"dim must be an integer in \[1, 2147483647\], got 2147483648"):
        LPLRIndex(2**31, rank=1)
    with pytest.raises(TypeError, match=r"dim must be an integer, got 16.0 \(float\) \(allowed: integers in \[1, "):
        LPLRIndex(16.0, rank=1)


def test_the_largest_budget_builds_within_it(small_embeddings):
    index = LPLRIndex(32, bits_per_coordinate=1e6).build(small_embeddings[:50])
    assert index.bits_per_coordinate <= 1e6 and index.rank == 32
    assert LPLRIndex.plan(50, 32, bits_per_coordinate=1e6).file_bytes == 50 * 32 * 10**6 // 8


def test_budget_too_small_for_rank_1(small_embeddings):
    with pytest.raises(ValueError, match=r"bits_per_coordinate=0.1 cannot hold even a rank-1 index .* needs"):
        LPLRIndex(32, bits_per_coordinate=0.1).build(small_embeddings[:100])


@pytest.mark.parametrize(
    "call",
    [
        lambda ix: ix.search(np.ones((1, 32)), 1),
        lambda ix: ix.add(np.ones((1, 32))),
        lambda ix: ix.save("never-written.lplr"),
        lambda ix: ix.reconstruct(),
        lambda ix: ix.bits_per_coordinate,
        lambda ix: ix.nbytes,
    ],
    ids=["search", "add", "save", "reconstruct", "bits_per_coordinate", "nbytes"],
)
def test_using_an_index_before_build(call):
    index = LPLRIndex(32, rank=4)
    assert len(index) == 0 and not index.is_built and "not built" in repr(index)
    with pytest.raises(RuntimeError, match="this index is empty; call build"):
        call(index)


# ------------------------------------------------------ sklearn classifier
@pytest.fixture(scope="module")
def digits():
    return load_digits(return_X_y=True)


def test_classifier_fit_predict_score(digits):
    X, y = digits
    clf = LPLRKNeighborsClassifier(bits_per_coordinate=2).fit(X[:1500], y[:1500])
    assert clf.n_features_in_ == 64
    np.testing.assert_array_equal(clf.classes_, np.arange(10))
    pred = clf.predict(X[1500:])
    assert pred.shape == (len(X) - 1500,) and set(pred) <= set(range(10))
    assert clf.score(X[1500:], y[1500:]) > 0.9  # observed 0.936
    D, I = clf.kneighbors(X[1500:1502], n_neighbors=4)
    assert I.shape == (2, 4)


def test_classifier_in_cross_val_score(digits):
    X, y = digits
    scores = cross_val_score(LPLRKNeighborsClassifier(bits_per_coordinate=2), X, y, cv=3)
    assert scores.shape == (3,) and ((0 <= scores) & (scores <= 1)).all()
    assert scores.mean() > 0.85  # observed 0.91


def test_classifier_params_and_clone():
    clf = LPLRKNeighborsClassifier(5, bits_per_coordinate=1.5, metric="cosine", seed=3)
    params = clf.get_params()
    assert params["n_neighbors"] == 5 and params["metric"] == "cosine" and params["seed"] == 3
    twin = clone(clf)
    assert twin is not clf and twin.get_params() == params
    assert not hasattr(twin, "index_")
    twin.set_params(n_neighbors=1)
    assert twin.n_neighbors == 1 and clf.n_neighbors == 5


def test_classifier_bad_input(digits):
    X, y = digits
    with pytest.raises(ValueError, match=r"inconsistent numbers of samples: \[100, 99\]"):
        LPLRKNeighborsClassifier().fit(X[:100], y[:99])
    with pytest.raises(ValueError, match=r"n_neighbors must be an integer in \[1, inf\]"):
        LPLRKNeighborsClassifier(0).fit(X[:100], y[:100])
