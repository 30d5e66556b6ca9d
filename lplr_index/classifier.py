"""A scikit-learn k-NN classifier whose training set lives in an LPLRIndex."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from ._validation import check_int
from .evaluation import knn_vote
from .index import LPLRIndex

__all__ = ["LPLRKNeighborsClassifier"]


class LPLRKNeighborsClassifier(ClassifierMixin, BaseEstimator):
    """k-nearest-neighbour classification against a compressed training set.

    ``fit`` builds an :class:`LPLRIndex` on the training vectors; ``predict``
    searches it and takes a majority vote (:func:`lplr_index.knn_vote`).
    Works with scikit-learn pipelines, ``cross_val_score`` and ``GridSearchCV``.

    Parameters
    ----------
    n_neighbors : int, default=3
    bits_per_coordinate : float, default=1.0
        Storage budget of the index (ignored when ``rank`` is given).
    rank : int, default=None
    bits_l : int, default=None
    bits_r : int, default=8
    metric : {"l2", "ip", "cosine"}, default="l2"
    quantizer : str, default="mse-col"
    refine_iters : int, default=2
    tie_break : {"nearest", "lowest"}, default="nearest"
    seed : int, default=0

    Attributes
    ----------
    index_ : LPLRIndex
    classes_ : ndarray of shape (n_classes,)

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = LPLRKNeighborsClassifier(bits_per_coordinate=2).fit(X[:1500], y[:1500])
    >>> clf.score(X[1500:], y[1500:]) > 0.9
    True
    """

    def __init__(
        self,
        n_neighbors: int = 3,
        *,
        bits_per_coordinate: float | None = 1.0,
        rank: int | None = None,
        bits_l: int | None = None,
        bits_r: int = 8,
        metric: str = "l2",
        quantizer: str = "mse-col",
        refine_iters: int = 2,
        tie_break: str = "nearest",
        seed: int = 0,
    ):
        self.n_neighbors = n_neighbors
        self.bits_per_coordinate = bits_per_coordinate
        self.rank = rank
        self.bits_l = bits_l
        self.bits_r = bits_r
        self.metric = metric
        self.quantizer = quantizer
        self.refine_iters = refine_iters
        self.tie_break = tie_break
        self.seed = seed

    def fit(self, X, y):
        """Build the index on ``X`` (n, dim) and remember the labels ``y`` (n,)."""
        check_int(self.n_neighbors, "n_neighbors", low=1)
        X = np.asarray(X)
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(X):
            raise ValueError(f"y must be 1-D with one label per row of X ({len(X)}), got shape {y.shape}")
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}")
        self.index_ = LPLRIndex(
            X.shape[1],
            bits_per_coordinate=None if self.rank is not None else self.bits_per_coordinate,
            rank=self.rank,
            bits_l=self.bits_l,
            bits_r=self.bits_r,
            metric=self.metric,
            quantizer=self.quantizer,
            refine_iters=self.refine_iters,
            seed=self.seed,
        ).build(X)
        self.y_ = y
        self.classes_ = np.unique(y)
        self.n_features_in_ = X.shape[1]
        return self

    def kneighbors(self, X, n_neighbors: int | None = None):
        """``(distances, indices)`` of the nearest training vectors, like sklearn's."""
        check_is_fitted(self, "index_")
        k = self.n_neighbors if n_neighbors is None else n_neighbors
        return self.index_.search(X, k)

    def predict(self, X):
        """Majority label of the ``n_neighbors`` nearest training vectors."""
        _, I = self.kneighbors(X)
        return knn_vote(I, self.y_, tie_break=self.tie_break)
