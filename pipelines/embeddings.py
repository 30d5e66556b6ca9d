"""The embedding stage: datasets in, cached embedding matrices out.

:func:`embed_image_splits` and :func:`embed_text_dataset` look the embeddings up in an
:class:`~pipelines.embedding_cache.EmbeddingCache` under a key made of the dataset,
split, subset, a hash of the data themselves, the model, a hash of its weights and the
input resolution; only missing entries are computed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray

from .datasets import ImageDataset, TextDataset
from .embedding_cache import EmbeddingCache
from .image_embedders import ImageEmbedder
from .text_embedders import TextEmbedder

__all__ = ["EmbeddedData", "data_digest", "embed_image_splits", "embed_text_dataset"]


@dataclass
class EmbeddedData:
    """Train and test embeddings of one dataset, ready for the experiment.

    Attributes
    ----------
    name : str
        Dataset name (e.g. ``"fashion-mnist"``).
    X_train : ndarray of shape (n_train, dim), float32
    y_train : ndarray of shape (n_train,), int64
    X_test : ndarray of shape (n_test, dim), float32
    y_test : ndarray of shape (n_test,), int64
    class_names : list of str
    info : dict
        How the data were obtained: sizes, subset, model settings, cache hits and the
        seconds spent embedding (0 for cache hits).
    """

    name: str
    X_train: NDArray[np.float32]
    y_train: NDArray[np.int64]
    X_test: NDArray[np.float32]
    y_test: NDArray[np.int64]
    class_names: list[str]
    info: dict[str, Any] = field(default_factory=dict)


def data_digest(*parts: Any) -> str:
    """sha256 (first 16 hex digits) over arrays and strings, identifying a dataset's content.

    Parameters
    ----------
    *parts : ndarray, str or sequence of str
        Arrays are hashed with their dtype and shape; strings are hashed length-prefixed.

    Returns
    -------
    digest : str
    """
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(f"{part.dtype.str}{part.shape}".encode())
            h.update(np.ascontiguousarray(part).tobytes())
        elif isinstance(part, str):
            b = part.encode("utf-8", "surrogatepass")
            h.update(len(b).to_bytes(8, "little") + b)
        else:
            for item in part:
                b = str(item).encode("utf-8", "surrogatepass")
                h.update(len(b).to_bytes(8, "little") + b)
    return h.hexdigest()[:16]


def embed_image_splits(
    train: ImageDataset,
    test: ImageDataset,
    embedder: ImageEmbedder,
    cache: EmbeddingCache,
    *,
    subset: str = "all",
) -> EmbeddedData:
    """Embed a training and a test split of an image dataset, reusing cached embeddings.

    Parameters
    ----------
    train, test : ImageDataset
        The two splits (already subset if wanted).
    embedder : ImageEmbedder
    cache : EmbeddingCache
    subset : str, default="all"
        Human-readable description of how the splits were subset (part of the cache key
        and of the report).

    Returns
    -------
    data : EmbeddedData
    """
    if train.class_names != test.class_names:
        raise ValueError(f"train and test splits name different classes: {train.class_names} "
                         f"vs {test.class_names}")
    settings = embedder.describe()
    parts: dict[str, Any] = {}
    arrays = {}
    for ds in (train, test):
        key = {
            "kind": "image",
            "dataset": ds.name,
            "split": ds.split,
            "subset": subset,
            "n": len(ds),
            "data_sha256": data_digest(ds.images, ds.labels),
            **settings,
        }
        entry = cache.get_or_compute(
            key, lambda ds=ds: (embedder.embed(ds.images, desc=f"{ds.name} {ds.split}"), ds.labels))
        arrays[ds.split] = entry
        parts[ds.split] = {"n": len(ds), "cache_hit": entry.hit, "cache_file": str(entry.path),
                           "embed_seconds": 0.0 if entry.hit else entry.metadata["seconds"],
                           "embed_seconds_when_computed": entry.metadata["seconds"]}
    tr, te = arrays[train.split], arrays[test.split]
    info = {
        "dataset": train.name,
        "source": train.source,
        "subset": subset,
        "n_train": len(train),
        "n_test": len(test),
        "dim": int(tr.embeddings.shape[1]),
        "n_classes": len(train.class_names),
        "embedding": settings,
        "splits": parts,
    }
    return EmbeddedData(train.name, tr.embeddings, tr.labels, te.embeddings, te.labels,
                        list(train.class_names), info)


def embed_text_dataset(
    data: TextDataset,
    train_idx: Sequence[int] | NDArray[np.int64],
    test_idx: Sequence[int] | NDArray[np.int64],
    embedder: TextEmbedder,
    cache: EmbeddingCache,
    *,
    split: str = "",
) -> EmbeddedData:
    """Embed a whole text dataset once (cached), then split it by indices.

    Parameters
    ----------
    data : TextDataset
    train_idx, test_idx : array-like of int
        Disjoint document indices of the two parts.
    embedder : TextEmbedder
    cache : EmbeddingCache
    split : str, default=""
        Description of the split, for the report.

    Returns
    -------
    data : EmbeddedData
    """
    train_idx = np.asarray(train_idx, dtype=np.int64)
    test_idx = np.asarray(test_idx, dtype=np.int64)
    if np.intersect1d(train_idx, test_idx).size:
        raise ValueError("train_idx and test_idx overlap")
    settings = embedder.describe()
    key = {
        "kind": "text",
        "dataset": data.name,
        "split": "all",
        "subset": "all",
        "n": len(data),
        "data_sha256": data_digest(data.texts, data.labels),
        **settings,
    }
    entry = cache.get_or_compute(key, lambda: (embedder.embed(data.texts, desc=data.name), data.labels))
    X, y = entry.embeddings, entry.labels
    info = {
        "dataset": data.name,
        "source": data.source,
        "subset": split or "all",
        "n_train": int(len(train_idx)),
        "n_test": int(len(test_idx)),
        "dim": int(X.shape[1]),
        "n_classes": len(data.class_names),
        "embedding": settings,
        "splits": {"all": {"n": len(data), "cache_hit": entry.hit, "cache_file": str(entry.path),
                           "embed_seconds": 0.0 if entry.hit else entry.metadata["seconds"],
                           "embed_seconds_when_computed": entry.metadata["seconds"]}},
    }
    return EmbeddedData(data.name, X[train_idx], y[train_idx], X[test_idx], y[test_idx],
                        list(data.class_names), info)
