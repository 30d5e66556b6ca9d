"""Evaluation helpers: exact k-NN against numpy, recall, overlap, voting, accuracy and F1."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from lplr_index import accuracy, exact_knn, knn_vote, neighbour_overlap, recall_at_k, weighted_f1

pytestmark = pytest.mark.usefixtures("blas_single_thread")

METRICS = ["l2", "ip", "cosine"]


# ------------------------------------------------------------- exact_knn
@pytest.mark.parametrize("k", [1, 10], ids=lambda k: f"k{k}")
@pytest.mark.parametrize("metric", METRICS)
def test_exact_knn_matches_numpy_brute_force(rng, metric, k, knn_checker):
    xb = rng.standard_normal((500, 24)).astype(np.float32)
    xq = rng.standard_normal((40, 24)).astype(np.float32)
    D, I = exact_knn(xb, xq, k, metric)
    assert D.shape == I.shape == (40, k)
    assert D.dtype == np.float32 and I.dtype == np.int64
    knn_checker(xb, xq, D, I, metric)


def test_exact_knn_in_query_blocks_equals_one_faiss_call(rng, capsys):
    import faiss

    from lplr_index.evaluation import _QUERY_BLOCK

    xb = rng.standard_normal((300, 8)).astype(np.float32)
    xq = rng.standard_normal((_QUERY_BLOCK + 5, 8)).astype(np.float32)  # two blocks
    D, I = exact_knn(xb, xq, 4, progress=True)
    D1, I1 = faiss.knn(xq, xb, 4)
    np.testing.assert_array_equal(I, I1)
    np.testing.assert_array_equal(D, D1)
    assert f"{_QUERY_BLOCK + 5}/{_QUERY_BLOCK + 5} queries" in capsys.readouterr().err
    exact_knn(xb, xq[:3], 4)  # default: no bar
    assert capsys.readouterr().err == ""


def test_exact_knn_refuses_padding_past_the_result_cap(rng):
    xb = rng.standard_normal((50, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"k=1000000000 for 3 queries .* holds only 50 vectors: use k <= 50"):
        exact_knn(xb, xb[:3], 10**9)
    assert exact_knn(xb, xb[:3], 60)[1].shape == (3, 60)  # small padding is the documented contract


@pytest.mark.parametrize("metric", METRICS)
def test_exact_knn_with_ties_is_tie_aware(metric, knn_checker):
    # integer grid points: many equal distances, any of the tied ids is a right answer
    xb = np.array([[x, y] for x in range(-3, 4) for y in range(-3, 4)], np.float32)
    xq = np.array([[0.0, 0.0], [0.5, 0.5], [1.0, -2.0]], np.float32)
    xb = xb[np.linalg.norm(xb, axis=1) > 0] if metric == "cosine" else xb
    D, I = exact_knn(xb, xq, 6, metric)
    knn_checker(xb, xq, D, I, metric)


@pytest.mark.parametrize(
    ("metric", "fill"), [("l2", np.inf), ("ip", -np.inf), ("cosine", -np.inf)]
)
def test_exact_knn_pads_when_k_exceeds_the_database(metric, fill, knn_checker):
    xb = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], np.float32)
    xq = np.array([[1.0, 0.2], [-1.0, 0.5]], np.float32)
    D, I = exact_knn(xb, xq, 5, metric)
    assert D.shape == I.shape == (2, 5)
    np.testing.assert_array_equal(I[:, 3:], -1)
    np.testing.assert_array_equal(D[:, 3:], fill)
    knn_checker(xb, xq, D[:, :3], I[:, :3], metric)
    assert sorted(I[0, :3]) == [0, 1, 2]


def test_exact_knn_docstring_case():
    D, I = exact_knn(np.eye(3), np.array([[0.9, 0.1, 0.0]]), k=2)
    np.testing.assert_array_equal(I, [[0, 1]])
    np.testing.assert_allclose(D, [[0.1**2 + 0.1**2, 0.9**2 + 0.9**2]], rtol=1e-6)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: exact_knn(np.ones((3, 2)), np.ones((1, 3)), 1), ValueError,
         "xq has 3 dimensions, but the database xb holds 2-dimensional vectors"),
        (lambda: exact_knn(np.ones((3, 2)), np.ones((1, 2)), 0), ValueError, r"k must be an integer in \[1, inf\]"),
        (lambda: exact_knn(np.ones((3, 2)), np.ones((1, 2)), 1, "hamming"), ValueError, "metric must be one of"),
        (lambda: exact_knn(np.ones(3), np.ones((1, 3)), 1), ValueError, "xb must be a 2-D array"),
        (lambda: exact_knn(np.ones((3, 2)), np.full((1, 2), np.nan), 1), ValueError, "xq must be finite"),
    ],
    ids=["dim-mismatch", "k0", "metric", "xb-1-D", "xq-nan"],
)
def test_exact_knn_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ------------------------------------------------------ recall and overlap
@pytest.mark.parametrize(
    ("I", "I_true", "kwargs", "expected"),
    [
        ([[1, 2, 3]], [[3, 4, 1]], {}, 2 / 3),
        ([[1, 2, 3]], [[1, 2, 3]], {}, 1.0),
        ([[1, 2, 3]], [[4, 5, 6]], {}, 0.0),
        ([[3, 2, 1]], [[1, 2, 3]], {}, 1.0),  # order inside the top k does not matter
        ([[1, 2, 3], [7, 8, 9]], [[1, 5, 6], [9, 8, 7]], {}, (1 / 3 + 1) / 2),
        ([[5, 1, 2]], [[1, 2, 3]], {"k_true": 1}, 1.0),  # 1-recall@3: the true nearest is found
        ([[5, 1, 2]], [[1, 2, 3]], {"k": 1, "k_true": 1}, 0.0),  # 1-recall@1
        ([[5, 1, 2, 3]], [[1, 2, 9, 9]], {"k": 2}, 0.5),  # 2@2 over the first columns only
        ([[-1, -1, 1]], [[1, -1, -1]], {"k_true": 1}, 1.0),  # -1 never matches -1
    ],
    ids=["docstring", "all", "none", "order", "two-queries", "1@3", "1@1", "2@2", "padding-never-matches"],
)
def test_recall_at_k_by_hand(I, I_true, kwargs, expected):
    assert recall_at_k(I, I_true, **kwargs) == pytest.approx(expected)


def test_recall_of_exact_search_against_itself_is_one_even_when_padded():
    # Regression (fixed bug): with fewer than k database vectors, exact search padded with -1
    # scores recall 0.6 against itself: the -1 padding is counted in the denominator
    # (3 real neighbours out of k_true=5), although the docstring says padding never counts.
    _, I = exact_knn(np.eye(3), np.eye(3), 5)
    assert recall_at_k(I, I) == 1.0


def test_recall_matches_the_all_pairs_definition(rng):
    # random ids with repeats, -1 padding and other negative ids; the all-pairs
    # comparison is the definition (memory n * k * k_true, fine at this size)
    for _ in range(200):
        n, k, k_true, hi = rng.integers(1, 6), rng.integers(1, 6), rng.integers(1, 6), rng.integers(1, 20)
        I, J = rng.integers(-3, hi, (n, k)), rng.integers(-3, hi, (n, k_true))
        found = ((J[:, :, None] == I[:, None, :]) & (J[:, :, None] >= 0)).any(axis=2).sum()
        valid = (J >= 0).sum()
        assert recall_at_k(I, J, k_true=k_true) == pytest.approx(found / valid if valid else 1.0)


def test_recall_at_large_k_needs_memory_linear_in_k(rng):
    # 100 queries at k = 5,000: the all-pairs comparison would take 2.5 GB; keys take 8 MB
    I = np.argsort(rng.random((100, 5000)), axis=1)
    assert recall_at_k(I, I[:, ::-1]) == 1.0
    assert recall_at_k(I, I + 5000) == 0.0
    assert neighbour_overlap(I, I[:, :2500]) == pytest.approx(0.5)


def test_recall_at_k_bad_input():
    with pytest.raises(ValueError, match="I has 2 queries, but I_true has 1"):
        recall_at_k([[1], [2]], [[1]])
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 2\], got 3"):
        recall_at_k([[1, 2]], [[1, 2]], k=3)
    with pytest.raises(ValueError, match="I must be a 2-D integer array"):
        recall_at_k([[1.0]], [[1]])
    with pytest.raises(ValueError, match="I_true must be a 2-D integer array"):
        recall_at_k([[1]], [1])


@pytest.mark.parametrize(
    ("I", "I_true", "expected"),
    [
        ([[1, 2, 3]], [[1, 2, 3]], 1.0),
        ([[1, 2, 3]], [[3, 4, 5]], 1 / 5),  # |{3}| / |{1,2,3,4,5}|
        ([[1, 2]], [[3, 4]], 0.0),
        ([[1, 2], [1, 2]], [[2, 1], [2, 3]], (1 + 1 / 3) / 2),
        ([[0, 1, 2, -1, -1]], [[2, 1, 0, -1, -1]], 1.0),  # padding ignored
        ([[0, -1]], [[0, 1]], 1 / 2),
        ([[-1, -1]], [[-1, -1]], 1.0),  # two empty sets agree
    ],
    ids=["same", "one-of-five", "disjoint", "two-queries", "padded-same", "padded-half", "both-empty"],
)
def test_neighbour_overlap_by_hand(I, I_true, expected):
    assert neighbour_overlap(I, I_true) == pytest.approx(expected)


# --------------------------------------------------------------- voting
@pytest.mark.parametrize(
    ("I", "labels", "tie_break", "expected"),
    [
        ([[0, 1, 2]], [5, 7, 7], "nearest", [7]),  # a majority beats the nearest neighbour
        ([[0, 1, 2]], [5, 7, 7], "lowest", [7]),
        ([[2, 1, 0]], [5, 7, 9], "nearest", [9]),  # three-way tie: the nearest neighbour's label
        ([[2, 1, 0]], [5, 7, 9], "lowest", [5]),  # three-way tie: the smallest label
        ([[0, 1, 2, 3]], [2, 1, 1, 2], "nearest", [2]),  # 2-2 tie, label 2 ranks first
        ([[0, 1, 2, 3]], [2, 1, 1, 2], "lowest", [1]),
        ([[1, 0, 3, 2]], [2, 1, 1, 2], "nearest", [1]),
        ([[0, -1, -1]], [4, 6], "nearest", [4]),  # padding casts no vote
        ([[1, -1, 0]], [4, 6], "nearest", [6]),
        ([[1, -1, 0]], [4, 6], "lowest", [4]),
    ],
    ids=["majority-nearest", "majority-lowest", "tie3-nearest", "tie3-lowest", "tie22-nearest",
         "tie22-lowest", "tie22-reordered", "padding", "padding-tie-nearest", "padding-tie-lowest"],
)
def test_knn_vote_by_hand(I, labels, tie_break, expected):
    np.testing.assert_array_equal(knn_vote(I, labels, tie_break=tie_break), expected)


def test_knn_vote_keeps_the_label_dtype():
    y = knn_vote([[0, 1, 2], [2, 2, 0]], np.array(["cat", "dog", "dog"]))
    np.testing.assert_array_equal(y, ["dog", "dog"])
    assert knn_vote([[0]], np.array([3], np.int16)).dtype == np.int16


def test_knn_vote_default_is_nearest():
    np.testing.assert_array_equal(knn_vote([[0, 1, 2], [2, 1, 0]], [5, 7, 9]), [5, 9])


@pytest.mark.parametrize(
    ("I", "labels", "kwargs", "match"),
    [
        ([[-1, -1]], [1, 2], {}, "every query needs at least one neighbour id >= 0"),
        ([[0, 5]], [1, 2], {}, "I holds id 5, but y_train has only 2 labels"),
        ([[0]], [[1, 2]], {}, r"y_train must be 1-D, got shape \(1, 2\)"),
        ([[0]], [1], {"tie_break": "random"}, "tie_break must be one of 'nearest', 'lowest'"),
    ],
    ids=["all-padding", "id-too-big", "2-D-labels", "tie_break"],
)
def test_knn_vote_bad_input(I, labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        knn_vote(I, labels, **kwargs)


# ---------------------------------------------------------- accuracy, F1
def test_accuracy_and_weighted_f1_by_hand():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 1, 0]
    assert accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    # per class F1: 0 -> P 2/3 R 2/3 = 2/3; 1 -> P 2/3 R 1 = 0.8; 2 -> 0; supports 3, 2, 1
    assert weighted_f1(y_true, y_pred) == pytest.approx((3 * 2 / 3 + 2 * 0.8 + 0) / 6)
    assert weighted_f1(y_true, y_pred) == pytest.approx(f1_score(y_true, y_pred, average="weighted"))
    assert accuracy(y_true, y_true) == weighted_f1(y_true, y_true) == 1.0
    assert isinstance(accuracy(y_true, y_pred), float) and isinstance(weighted_f1(y_true, y_pred), float)
