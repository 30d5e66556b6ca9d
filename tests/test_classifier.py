"""LPLRKNeighborsClassifier: scikit-learn's estimator checks, defaults from settings, proba and kneighbors."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from lplr_index.classifier import LPLRKNeighborsClassifier
from lplr_index.settings import DEFAULT_BITS_PER_COORDINATE, DEFAULTS, IndexSettings

pytestmark = pytest.mark.usefixtures("blas_single_thread")

_TIE_REASON = (
    "predict breaks ties among equally voted classes by the nearest voter (tie_break='nearest'), "
    "not by the first argmax of predict_proba; tie_break='lowest' passes"
)


def _expected_failures(estimator) -> dict[str, str]:
    if estimator.tie_break == "nearest":
        return {"check_classifiers_train": _TIE_REASON}
    return {}


@parametrize_with_checks(
    [LPLRKNeighborsClassifier(), LPLRKNeighborsClassifier(tie_break="lowest", metric="cosine")],
    expected_failed_checks=_expected_failures,
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_the_expected_failure_is_documented():
    doc = inspect.getdoc(LPLRKNeighborsClassifier)
    for check in _expected_failures(LPLRKNeighborsClassifier()):
        assert f"``{check}``" in doc


# ------------------------------------------------------------------ data
@pytest.fixture(scope="module")
def blobs():
    """Three Gaussian classes in 8 dimensions, 600 train and 150 test vectors."""
    rng = np.random.default_rng(31)
    centres = 3 * rng.standard_normal((3, 8))
    y = rng.integers(0, 3, 750)
    X = (centres[y] + rng.standard_normal((750, 8))).astype(np.float32)
    return X[:600], y[:600], X[600:], y[600:]


#: an index that is nearly lossless on 8-dimensional data: full rank, 8-bit codes
LOSSLESS = dict(rank=8, bits_l=8, bits_r=8)


# -------------------------------------------------------------- defaults
def test_defaults_come_from_settings():
    params = LPLRKNeighborsClassifier().get_params()
    assert set(DEFAULTS) <= set(params)  # every index setting is a parameter
    for name, default in DEFAULTS.items():
        if name != "bits_per_coordinate":
            assert params[name] == default, name
    assert params["bits_per_coordinate"] == DEFAULT_BITS_PER_COORDINATE
    assert (params["n_neighbors"], params["tie_break"]) == (3, "nearest")


@pytest.mark.parametrize(
    "params",
    [dict(bits_r=0), dict(metric="manhattan"), dict(quantizer="lloyd"), dict(refine_iters=-1),
     dict(seed=None), dict(bits_per_coordinate=-1.0), dict(rank=9), dict(bits_l=9)],
    ids=lambda p: next(iter(p)),
)
def test_index_parameters_are_validated_at_fit_with_the_index_messages(blobs, params):
    clf = LPLRKNeighborsClassifier(**params)  # sklearn convention: __init__ only stores
    assert clf.get_params()[next(iter(params))] == next(iter(params.values()))
    values = {**DEFAULTS, "bits_per_coordinate": DEFAULT_BITS_PER_COORDINATE, **params}
    if values["rank"] is not None:
        values["bits_per_coordinate"] = None
    with pytest.raises((ValueError, TypeError)) as expected:
        IndexSettings(8, **values)
    with pytest.raises(type(expected.value)) as got:
        clf.fit(blobs[0], blobs[1])
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize(
    "params, message",
    [(dict(n_neighbors=0), r"n_neighbors must be an integer in \[1, inf\], got 0"),
     (dict(tie_break="random"), "tie_break must be one of 'nearest', 'lowest', got 'random'")],
    ids=["n_neighbors", "tie_break"],
)
def test_classifier_parameters_are_validated_at_fit(blobs, params, message):
    with pytest.raises(ValueError, match=message):
        LPLRKNeighborsClassifier(**params).fit(blobs[0], blobs[1])


def test_rank_above_the_training_set_is_refused():
    with pytest.raises(ValueError, match="rank=5 needs at least 5 training vectors, got X with 4"):
        LPLRKNeighborsClassifier(rank=5).fit(np.eye(4, 8), [0, 1, 0, 1])


# ------------------------------------------------------------ small data
def test_budget_falls_back_to_an_explicit_rank_on_tiny_training_sets(blobs):
    X, y = blobs[0][:20], blobs[1][:20]
    clf = LPLRKNeighborsClassifier().fit(X, y)
    assert clf.budget_fallback_ and clf.index_.rank == 8  # min(20 samples, 8 features)
    clf = LPLRKNeighborsClassifier().fit(X[:5], y[:5])
    assert clf.budget_fallback_ and clf.index_.rank == 5
    big = np.random.default_rng(3).standard_normal((3000, 8)).astype(np.float32)
    clf = LPLRKNeighborsClassifier(bits_per_coordinate=4).fit(big, np.arange(3000) % 2)
    assert not clf.budget_fallback_ and clf.index_.bits_per_coordinate <= 4


# -------------------------------------------------------- predict, proba
def test_predict_proba_is_the_vote_share(blobs):
    X, y, Xt, _ = blobs
    clf = LPLRKNeighborsClassifier(n_neighbors=5, tie_break="lowest", **LOSSLESS).fit(X, y)
    proba = clf.predict_proba(Xt)
    assert proba.shape == (len(Xt), 3) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1)
    assert set(np.unique(proba * 5)) <= {0.0, 1.0, 2.0, 3.0, 4.0, 5.0}  # whole votes of 5 neighbours
    _, I = clf.kneighbors(Xt)
    np.testing.assert_array_equal(proba * 5, (y[I][:, :, None] == clf.classes_).sum(axis=1))
    np.testing.assert_array_equal(clf.predict(Xt), clf.classes_[np.argmax(proba, axis=1)])


def test_padding_casts_no_vote():
    X = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0]], np.float32)
    clf = LPLRKNeighborsClassifier(n_neighbors=10, rank=2).fit(X, ["a", "a", "b"])
    np.testing.assert_allclose(clf.predict_proba([[0.0, 0.1]]), [[2 / 3, 1 / 3]])
    assert clf.predict([[0.0, 0.1]]).tolist() == ["a"]


def test_string_labels_and_classes_order(blobs):
    X, y, Xt, yt = blobs
    names = np.array(["zebra", "ant", "moose"])
    clf = LPLRKNeighborsClassifier(**LOSSLESS).fit(X, names[y])
    assert clf.classes_.tolist() == ["ant", "moose", "zebra"]
    assert clf.predict(Xt).dtype.kind == "U"
    assert clf.score(Xt, names[yt]) > 0.9  # well separated blobs; observed 1.0


def test_matches_scikit_learn_on_a_nearly_lossless_index(blobs):
    X, y, Xt, _ = blobs
    ours = LPLRKNeighborsClassifier(n_neighbors=5, tie_break="lowest", **LOSSLESS).fit(X, y)
    ref = KNeighborsClassifier(n_neighbors=5).fit(X, y)
    agree = np.mean(ours.predict(Xt) == ref.predict(Xt))
    assert agree >= 0.97  # observed 1.0
    D, I = ours.kneighbors(Xt)
    D_ref, I_ref = ref.kneighbors(Xt)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(I.tolist(), I_ref.tolist())])
    assert recall >= 0.95  # observed 0.988
    np.testing.assert_allclose(D[:, 0], D_ref[:, 0], rtol=0.05, atol=0.1)  # Euclidean, not squared; observed max difference 0.034
    assert (np.diff(D, axis=1) >= 0).all()


def test_kneighbors_without_x_leaves_each_point_out(blobs):
    X, y, _, _ = blobs
    ours = LPLRKNeighborsClassifier(**LOSSLESS).fit(X, y)
    D, I = ours.kneighbors(n_neighbors=4)
    assert I.shape == D.shape == (600, 4)
    assert not (I == np.arange(600)[:, None]).any()
    _, I_ref = KNeighborsClassifier().fit(X, y).kneighbors(n_neighbors=4)
    recall = np.mean([len(set(a) & set(b)) / 4 for a, b in zip(I.tolist(), I_ref.tolist())])
    assert recall >= 0.93  # observed 0.976
    only = ours.kneighbors(n_neighbors=2, return_distance=False)
    np.testing.assert_array_equal(only, I[:, :2])


@pytest.mark.parametrize(
    "X, k, message",
    [(None, 600, "n_neighbors <= n_samples_fit - 1"), ("train", 601, "n_neighbors <= n_samples_fit, but n_neighbors = 601"),
     ("train", 0, "n_neighbors must be an integer")],
    ids=["self-too-many", "too-many", "zero"],
)
def test_kneighbors_refuses_impossible_k(blobs, X, k, message):
    clf = LPLRKNeighborsClassifier(**LOSSLESS).fit(blobs[0], blobs[1])
    with pytest.raises(ValueError, match=message):
        clf.kneighbors(None if X is None else blobs[2], n_neighbors=k)


@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_kneighbors_distances_ascend_for_similarity_metrics(blobs, metric):
    X, y, Xt, _ = blobs
    clf = LPLRKNeighborsClassifier(metric=metric, **LOSSLESS).fit(X, y)
    D, _ = clf.kneighbors(Xt)
    assert (np.diff(D, axis=1) >= -1e-6).all()
    if metric == "cosine":
        assert (D >= -1e-5).all() and (D <= 2 + 1e-5).all()


def test_works_in_a_pipeline_and_cross_validation(blobs):
    X, y, _, _ = blobs
    pipe = make_pipeline(StandardScaler(), LPLRKNeighborsClassifier(**LOSSLESS))
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.min() > 0.9  # observed 1.0 in each fold
