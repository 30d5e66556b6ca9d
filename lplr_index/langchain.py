"""A LangChain ``VectorStore`` over :class:`~lplr_index.LPLRIndex`: documents beside compressed vectors.

``pip install "lplr-index[langchain]"`` (langchain-core). ``import lplr_index`` never imports
this module; importing it without langchain-core raises an ImportError that says what to
install.

    from lplr_index.langchain import LPLRVectorStore

    store = LPLRVectorStore.from_documents(docs, embeddings, bits_per_coordinate=2)
    store.similarity_search_with_score("query", k=4, filter={"source": "a.txt"})
    store.save_local("my_store")
    store = LPLRVectorStore.load_local("my_store", embeddings)

How the vectors are stored as the store grows:

1. **Exact stage.** A new store keeps its vectors as float32 and answers exactly (a numpy
   scan), from the first document on, for any dimension. Codes need data to be trained on:
   a budget of ``b`` bits per coordinate holds the shared factor and codebooks only once
   there are enough vectors, and codebooks trained on a few dozen vectors would serve later
   vectors badly.
2. **First build.** When the store holds ``train_threshold`` live vectors (default
   :data:`TRAIN_THRESHOLD`), it builds an :class:`~lplr_index.LPLRIndex` on all of them with
   the index settings given (default ``bits_per_coordinate=2``: 16x smaller than float32)
   and drops the float vectors. Where the budget cannot hold an index of that many vectors
   (tiny dimensions, e.g. 6 at 2 bits per coordinate needs about 2,000 vectors) the store
   stays exact and tries again at twice the size.
3. **Growth and re-training.** Later vectors are encoded with the learned encoder
   (``LPLRIndex.add``, no refit). A design fitted to 2,000 vectors is not the best one for
   100,000: the budget paid for its shared parts over few vectors (a stored principal basis,
   ``dim x dim`` 8-bit entries, costs ``8 * dim / n`` bits per coordinate: 1.5 at 2,048
   vectors of 384 dimensions, 0.05 at 65,536), and its codebooks saw few. So when the store has grown
   ``retrain_growth`` times (default 4) since its codes were trained, and they were trained
   on fewer than ``retrain_until`` vectors (default 65,536), the codes are trained again
   on all vectors. The vectors come back from the texts: the store calls
   ``embedding.embed_documents`` on the texts stored before the batch that triggers it (it
   keeps the texts, not the float vectors; the batch's own vectors are used as they are),
   after checking on 256 of them that the model still gives vectors near their codes (else
   it warns and keeps the codes). Measured on BBC sentences (MiniLM, 35,892
   vectors, 2 bits per coordinate, README): codes trained on the first 2,048 vectors then
   given the rest, recall 10@10 0.813; trained on all, 0.861; re-training on decoded vectors
   instead of re-embedded ones, 0.741. The cost is bounded: re-trainings stop once the codes were trained on
   ``retrain_until`` vectors and each comes at 4 times the last one's size, so with the
   defaults fewer than 350,000 texts are ever embedded again, whatever the store's final
   size (a store grown one text at a time re-trains at 8,192, 32,768 and 131,072 vectors:
   172,029 texts); a store built in one call (``from_texts``, ``from_documents``) is trained
   once, on everything.
   ``retrain_growth=None`` turns re-training off (no text is then ever embedded twice);
   :meth:`LPLRVectorStore.retrain` does it on demand.

Ids: documents have string ids (given, or uuid4); the index holds int64 ids that are the
rows' order of arrival (so the index stores none: they cost nothing), and the store maps
between them. Adding a document under an id the store has replaces it (the old vector is
removed); ``delete`` removes vectors (tombstones, dropped by a compaction once a quarter of
the rows are removed) and documents.

Scores are distances, lower is better, as LangChain's relevance functions expect:
Euclidean distance for ``metric="l2"`` (the default; LangChain's FAISS store returns the
*squared* distance), ``1 - cosine`` for ``"cosine"``, the negative inner product for
``"ip"``; ``similarity_search_with_relevance_scores`` maps them with
``_euclidean_relevance_score_fn``, ``_cosine_relevance_score_fn`` or
``_max_inner_product_relevance_score_fn``. A metadata ``filter`` (a dict as LangChain's FAISS
store takes, with ``$eq``, ``$neq``, ``$gt``, ``$gte``, ``$lt``, ``$lte``, ``$in``, ``$nin``,
``$and``, ``$or``, ``$not``, or a callable ``metadata -> bool``) is applied before the
search (``allowed=`` of :meth:`LPLRIndex.search`): the k best matching documents are
returned, however few match.

``save_local`` writes one folder: ``<index_name>.json`` (the store's settings),
``<index_name>.docs.jsonl`` (one JSON object per document: id, text, metadata; metadata
must be JSON-serialisable), and ``<index_name>.lplr`` (the index file) or, in the exact
stage, ``<index_name>.vectors.npy``. Nothing is pickled: ``load_local`` needs no
``allow_dangerous_deserialization`` (accepted and ignored, for scripts written for FAISS).
"""

from __future__ import annotations

import json
import operator
import os
import threading
import uuid
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.vectorstores import VectorStore
    from langchain_core.vectorstores.utils import maximal_marginal_relevance
except ImportError as exc:  # pragma: no cover - exercised by a test in a subprocess
    raise ImportError(
        "lplr_index.langchain needs langchain-core, which is not installed: "
        'pip install "lplr-index[langchain]"'
    ) from exc

from .index import LPLRIndex

__all__ = ["DEFAULT_BITS_PER_COORDINATE", "RETRAIN_GROWTH", "RETRAIN_UNTIL", "TRAIN_THRESHOLD", "LPLRVectorStore"]

#: live vectors at which the exact stage builds the compressed index
TRAIN_THRESHOLD = 2048
#: growth factor since the last training at which the codes are trained again
RETRAIN_GROWTH = 4.0
#: no automatic re-training once the codes were trained on this many vectors
RETRAIN_UNTIL = 65_536
#: the store's default budget (LPLRIndex settings may be passed as keyword arguments)
DEFAULT_BITS_PER_COORDINATE = 2.0
#: a compaction drops removed rows once they are this share of the stored rows
COMPACT_FRACTION = 0.25

_FORMAT = "lplr-index-langchain"
_FORMAT_VERSION = 1
_STRATEGIES = {"EUCLIDEAN_DISTANCE": "l2", "MAX_INNER_PRODUCT": "ip", "COSINE": "cosine"}


def _metric_of(distance_strategy) -> str:
    """LangChain's ``DistanceStrategy`` (an enum of str, or its value) as an index metric."""
    name = str(getattr(distance_strategy, "value", distance_strategy)).upper()
    if name not in _STRATEGIES:
        raise ValueError(f"distance_strategy must be one of {sorted(_STRATEGIES)}, got {distance_strategy!r}")
    return _STRATEGIES[name]


class LPLRVectorStore(VectorStore):
    """LangChain vector store with compressed vectors (:class:`~lplr_index.LPLRIndex`).

    Parameters
    ----------
    embedding : Embeddings
        Embeds documents and queries.
    metric : {"l2", "cosine", "ip"}, default="l2"
        Distance of the index (LangChain's FAISS store's default is L2 too).
    train_threshold : int, default=TRAIN_THRESHOLD (2048)
        Live vectors at which the exact float32 storage is replaced by a compressed index
        trained on them (see the module's documentation).
    retrain_growth : float or None, default=RETRAIN_GROWTH (4.0)
        Train the codes again, on all vectors re-embedded from the stored texts, whenever
        the store has grown this many times since the last training; None never does.
    retrain_until : int, default=RETRAIN_UNTIL (65,536)
        No automatic re-training once the codes were trained on this many vectors.
    normalize_L2 : bool, default=False
        Scale vectors and queries to unit length before storing / searching (as LangChain's
        FAISS store's option of that name).
    distance_strategy : str or DistanceStrategy, default=None
        ``"EUCLIDEAN_DISTANCE"``, ``"COSINE"`` or ``"MAX_INNER_PRODUCT"`` instead of ``metric``
        (the FAISS store's argument).
    relevance_score_fn : callable, default=None
        Maps a score to a relevance in [0, 1]; None picks LangChain's function for the metric.
    **index_settings
        :class:`~lplr_index.LPLRIndex` settings (``bits_per_coordinate``, default 2, or
        ``rank``, ``codec``, ``seed``, ...), except ``dim`` (the embeddings' dimension, known
        at the first document) and ``metric``.
    """

    def __init__(
        self,
        embedding: Embeddings,
        *,
        metric: str | None = None,
        train_threshold: int = TRAIN_THRESHOLD,
        retrain_growth: float | None = RETRAIN_GROWTH,
        retrain_until: int = RETRAIN_UNTIL,
        normalize_L2: bool = False,
        distance_strategy: Any = None,
        relevance_score_fn: Callable[[float], float] | None = None,
        **index_settings: Any,
    ):
        if distance_strategy is not None:
            strategy_metric = _metric_of(distance_strategy)
            if metric is not None and metric != strategy_metric:
                raise ValueError(f"metric={metric!r} and distance_strategy={distance_strategy!r} disagree")
            metric = strategy_metric
        metric = "l2" if metric is None else metric
        if "dim" in index_settings:
            raise TypeError("dim is not a setting of LPLRVectorStore: it is the embeddings' dimension")
        if index_settings.get("bits_per_coordinate") is None and index_settings.get("rank") is None:
            index_settings["bits_per_coordinate"] = DEFAULT_BITS_PER_COORDINATE
        # validate every setting now (the dimension is not known yet: a large stand-in)
        LPLRIndex(1 << 20, metric=metric, **index_settings)
        if isinstance(train_threshold, bool) or not isinstance(train_threshold, (int, np.integer)) \
                or train_threshold < 1:
            raise ValueError(f"train_threshold must be an integer >= 1, got {train_threshold!r}")
        if retrain_growth is not None and not (isinstance(retrain_growth, (int, float)) and retrain_growth > 1):
            raise ValueError(f"retrain_growth must be a number > 1 or None, got {retrain_growth!r}")
        if isinstance(retrain_until, bool) or not isinstance(retrain_until, (int, np.integer)) or retrain_until < 0:
            raise ValueError(f"retrain_until must be an integer >= 0, got {retrain_until!r}")
        self.embedding = embedding
        self.metric = metric
        self.normalize_L2 = bool(normalize_L2)
        self.train_threshold = int(train_threshold)
        self.retrain_growth = None if retrain_growth is None else float(retrain_growth)
        self.retrain_until = int(retrain_until)
        self.index_settings = dict(index_settings)
        self.override_relevance_score_fn = relevance_score_fn
        self._lock = threading.RLock()
        self._reset()

    def _reset(self) -> None:
        self._dim: int | None = None
        self._docs: dict[str, tuple[int, str, dict | None]] = {}  # id -> (key, text, metadata)
        self._id_of_key: list[str | None] = []  # key (int id in the index / row of _X) -> doc id
        self._X: np.ndarray | None = None  # exact stage: float32 rows, row = key
        self._index: LPLRIndex | None = None  # compressed stage
        self._trained_rows = 0  # live vectors the codes were trained on
        self._next_try = self.train_threshold  # exact stage: live count of the next build attempt

    # ------------------------------------------------------------------ properties
    @property
    def embeddings(self) -> Embeddings:
        return self.embedding

    @property
    def index(self) -> LPLRIndex | None:
        """The compressed index (ids are the store's int keys), or None in the exact stage."""
        return self._index

    @property
    def is_compressed(self) -> bool:
        """Whether the vectors are held as codes (else as exact float32 rows)."""
        return self._index is not None

    @property
    def dim(self) -> int | None:
        """Dimension of the vectors (None before the first document)."""
        return self._dim

    def __len__(self) -> int:
        return len(self._docs)

    @property
    def vector_nbytes(self) -> int:
        """Bytes held for the vectors: the index's (its file size, see ``LPLRIndex.nbytes``),
        or the float32 rows in the exact stage (capacity included)."""
        with self._lock:
            if self._index is not None:
                return int(self._index.nbytes)
            return 0 if self._X is None else int(self._X.nbytes)

    # ------------------------------------------------------------------ adding
    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict] | None = None,
        ids: list[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed ``texts`` and add them; a text under an id the store holds replaces that document.

        Returns the ids (given ones, or uuid4 strings for missing ones), in order.
        """
        texts = list(texts)
        if not texts:
            return []
        vectors = self.embedding.embed_documents(texts)
        return self._add(texts, vectors, metadatas, ids)

    def add_embeddings(
        self,
        text_embeddings: Iterable[tuple[str, Sequence[float]]],
        metadatas: list[dict] | None = None,
        ids: list[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Add (text, embedding) pairs without embedding them (as the FAISS store's method)."""
        pairs = list(text_embeddings)
        if not pairs:
            return []
        texts, vectors = zip(*pairs)
        return self._add(list(texts), list(vectors), metadatas, ids)

    def _add(self, texts: list[str], vectors, metadatas, ids) -> list[str]:
        n = len(texts)
        X = np.array(vectors, dtype=np.float32)
        if X.ndim != 2 or len(X) != n:
            raise ValueError(f"the embeddings must be one vector per text: {n} texts, embeddings of shape {X.shape}")
        if X.shape[1] < 1 or not np.isfinite(X).all():
            raise ValueError("embeddings must be non-empty and finite")
        if metadatas is not None and len(metadatas) != n:
            raise ValueError(f"got {len(metadatas)} metadatas for {n} texts")
        if ids is not None and len(ids) != n:
            raise ValueError(f"got {len(ids)} ids for {n} texts")
        ids = [str(uuid.uuid4()) if i is None else i for i in (ids or [None] * n)]
        if not all(isinstance(i, str) for i in ids):
            raise TypeError("document ids must be strings")
        if len(set(ids)) != n:
            raise ValueError("duplicate ids in one call")
        if self.normalize_L2:
            X = _unit_rows(X)
        metas = [None if not m else dict(m) for m in (metadatas or [None] * n)]
        with self._lock:
            if self._dim is None:
                self._dim = X.shape[1]
            elif X.shape[1] != self._dim:
                raise ValueError(f"embeddings have dimension {X.shape[1]}, the store holds dimension {self._dim}")
            replaced = [self._docs[i][0] for i in ids if i in self._docs]
            start = len(self._id_of_key)
            keys = np.arange(start, start + n, dtype=np.int64)
            if self._index is not None:
                self._index.add(X, ids=keys)  # first: if it fails, the store is as it was
                if replaced:
                    self._index.remove(np.asarray(replaced, np.int64))
            else:
                self._append_exact(X)
            for k in replaced:  # their documents are overwritten below
                self._id_of_key[k] = None
            self._id_of_key.extend(ids)
            for key, id_, text, meta in zip(keys.tolist(), ids, texts, metas):
                self._docs[id_] = (key, text, meta)
            self._after_change(fresh=(start, X))
        return ids

    def _append_exact(self, X: np.ndarray) -> None:
        rows = len(self._id_of_key)
        if self._X is None or self._X.shape[0] < rows + len(X):
            cap = max(rows + len(X), 2 * (0 if self._X is None else self._X.shape[0]), 16)
            grown = np.empty((cap, X.shape[1]), np.float32)
            if self._X is not None:
                grown[:rows] = self._X[:rows]
            self._X = grown
        self._X[rows:rows + len(X)] = X

    def _after_change(self, fresh: tuple[int, np.ndarray] | None = None) -> None:
        """Build, re-train or compact when a threshold is passed; ``fresh``: the first key and
        the vectors of the batch just added (not embedded again by a re-training)."""
        n = len(self._docs)
        if self._index is None:
            if n >= self._next_try:
                keys = self._live_keys()
                if not self._build(self._X[keys], keys):
                    self._next_try = 2 * n
                return
            if len(self._id_of_key) > 64 and len(self._id_of_key) - n > COMPACT_FRACTION * len(self._id_of_key):
                keys = self._live_keys()
                self._renumber(keys)
                self._X = np.ascontiguousarray(self._X[keys])
            return
        if (self.retrain_growth is not None and self._trained_rows < self.retrain_until
                and n >= self.retrain_growth * self._trained_rows):
            self.retrain(_fresh=fresh)
            return
        if self._index.n_removed > COMPACT_FRACTION * self._index.ntotal:
            self._index.compact()

    def _live_keys(self) -> np.ndarray:
        return np.fromiter((k for k, _, _ in self._docs.values()), np.int64, count=len(self._docs))

    def _renumber(self, keys: np.ndarray) -> None:
        """Keys ``keys`` (live, in this order) become 0 .. len - 1."""
        ids = [self._id_of_key[k] for k in keys.tolist()]
        self._id_of_key = ids
        for new, id_ in enumerate(ids):
            _, text, meta = self._docs[id_]
            self._docs[id_] = (new, text, meta)

    def _build(self, X: np.ndarray, keys: np.ndarray) -> bool:
        """Train a compressed index on ``X`` (the vectors of ``keys``); False if the budget cannot
        hold an index of so few vectors (the store is left as it was)."""
        try:
            index = LPLRIndex(X.shape[1], metric=self.metric, **self.index_settings).build(X)
        except ValueError:
            return False
        self._renumber(keys)
        self._index = index
        self._X = None
        self._trained_rows = len(keys)
        return True

    def retrain(self, *, _fresh: tuple[int, np.ndarray] | None = None) -> bool:
        """Train the codes again on all documents, re-embedded from their texts.

        In the exact stage this builds the compressed index now (whatever ``train_threshold``).
        The re-embedded vectors are first compared with the stored codes: if they are far
        from them (median relative distance above ``1.5 * index.fit_error + 0.05``: the
        embeddings object is not the model the store was filled with), nothing changes and a
        warning says so. Returns whether the codes were (re)built.
        """
        with self._lock:
            if not self._docs:
                return False
            keys = self._live_keys()
            if self._index is None:
                return self._build(self._X[keys], keys)
            X = np.empty((len(keys), self._dim), np.float32)
            old = np.ones(len(keys), bool)
            if _fresh is not None:  # the batch just added: its vectors are at hand
                start, batch = _fresh
                old = keys < start
                X[~old] = batch[keys[~old] - start]
            pos = np.flatnonzero(old)
            if len(pos):
                texts = [self._docs[self._id_of_key[k]][1] for k in keys[pos].tolist()]
                again = np.array(self.embedding.embed_documents(texts), dtype=np.float32)
                if again.shape != (len(pos), self._dim) or not np.isfinite(again).all():
                    raise ValueError(f"re-embedding the {len(pos)} stored texts gave an array of shape "
                                     f"{again.shape}, not finite vectors of dimension {self._dim}")
                X[pos] = _unit_rows(again) if self.normalize_L2 else again
            self._trained_rows = len(keys)  # whatever happens below, the next automatic try is at the next growth
            if not len(pos):
                return self._build(X, keys)
            sample = pos[np.random.default_rng(0).choice(len(pos), size=min(256, len(pos)), replace=False)]
            stored = self._index.reconstruct(keys[sample])
            fresh = _unit_rows(X[sample]) if self.metric == "cosine" else X[sample]
            norms = np.maximum(np.linalg.norm(fresh, axis=1), 1e-12)
            err = float(np.median(np.linalg.norm(stored - fresh, axis=1) / norms))
            limit = 1.5 * self._index.fit_error + 0.05
            if not err <= limit:
                warnings.warn(
                    f"LPLRVectorStore: not re-training: the stored texts re-embedded are {err:.3g} (median "
                    f"relative distance) from their codes, more than the codes' error allows ({limit:.3g}); "
                    "is `embedding` the model the store was filled with?", RuntimeWarning, stacklevel=3)
                return False
            return self._build(X, keys)

    def merge_from(self, target: LPLRVectorStore) -> None:
        """Add ``target``'s documents and vectors (as the FAISS store's method; ids ``self``
        holds already are replaced). A compressed ``target`` gives its decoded vectors, which
        this store encodes again: use :meth:`retrain` after merging to code them from the texts."""
        if not isinstance(target, LPLRVectorStore):
            raise TypeError(f"can merge only another LPLRVectorStore, got {type(target).__name__}")
        with target._lock:
            if not target._docs:
                return
            keys = target._live_keys()
            X = target._index.reconstruct(keys) if target._index is not None else target._X[keys].copy()
            items = [(target._id_of_key[k], target._docs[target._id_of_key[k]]) for k in keys.tolist()]
        self._add([text for _, (_, text, _) in items], X, [meta for _, (_, _, meta) in items],
                  [id_ for id_, _ in items])

    # ------------------------------------------------------------------ deleting / reading
    def _remove_keys(self, keys: list[int]) -> None:
        for k in keys:
            id_ = self._id_of_key[k]
            self._id_of_key[k] = None
            self._docs.pop(id_, None)
        if self._index is not None:
            self._index.remove(np.asarray(keys, np.int64))

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete the documents with these ids; ids the store does not hold are ignored."""
        if ids is None:
            raise ValueError("No ids provided to delete.")
        with self._lock:
            keys = sorted({self._docs[i][0] for i in ids if i in self._docs})
            if keys:
                self._remove_keys(keys)
                self._after_change()
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The documents with these ids, in the order asked; missing ids are skipped."""
        with self._lock:
            return [self._document(i) for i in ids if i in self._docs]

    def _document(self, id_: str) -> Document:
        _, text, meta = self._docs[id_]
        return Document(id=id_, page_content=text, metadata={} if meta is None else dict(meta))

    # ------------------------------------------------------------------ searching
    def _query_vector(self, embedding) -> np.ndarray:
        q = np.array(embedding, dtype=np.float32).reshape(1, -1)
        if self._dim is not None and q.shape[1] != self._dim:
            raise ValueError(f"the query has dimension {q.shape[1]}, the store holds dimension {self._dim}")
        if not np.isfinite(q).all():
            raise ValueError("the query embedding must be finite")
        return _unit_rows(q) if self.normalize_L2 else q

    def _allowed_keys(self, filter) -> np.ndarray | None:
        if filter is None:
            return None
        match = _filter_function(filter)
        return np.fromiter((k for k, _, m in self._docs.values() if match({} if m is None else m)), np.int64)

    def _search(self, q: np.ndarray, k: int, filter) -> tuple[np.ndarray, np.ndarray]:
        """Keys and scores (distances, lower is better) of the k nearest allowed vectors."""
        allowed = self._allowed_keys(filter)
        n_ok = len(self._docs) if allowed is None else len(allowed)
        k = min(int(k), n_ok)
        if k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if self._index is not None:
            D, I = self._index.search(q, k, allowed=allowed)
            D, I = D[0], I[0]
            ok = I >= 0
            D, I = D[ok], I[ok]
            if self.metric == "l2":
                return I, np.sqrt(np.maximum(D, 0))
            if self.metric == "cosine":
                return I, 1.0 - D
            return I, -D
        keys = self._live_keys() if allowed is None else allowed
        X = self._X[keys]
        if self.metric == "l2":
            score = np.sqrt(np.einsum("ij,ij->i", X - q, X - q))
        elif self.metric == "cosine":
            score = 1.0 - (_unit_rows(X) @ _unit_rows(q)[0])
        else:
            score = -(X @ q[0])
        order = np.lexsort((keys, score))[:k]
        return keys[order], score[order].astype(np.float32)

    def similarity_search_with_score_by_vector(
        self,
        embedding: Sequence[float],
        k: int = 4,
        filter: dict | Callable[[dict], bool] | None = None,
        fetch_k: int = 20,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """Documents nearest to ``embedding`` and their scores (distances: lower is better).

        ``filter`` selects documents by metadata before the search; ``fetch_k`` is accepted
        for scripts written for the FAISS store and not needed. ``score_threshold`` (keyword)
        drops results whose score is above it.
        """
        q = self._query_vector(embedding)
        with self._lock:
            keys, scores = self._search(q, k, filter)
            out = [(self._document(self._id_of_key[key]), float(s)) for key, s in zip(keys.tolist(), scores)]
        threshold = kwargs.get("score_threshold")
        if threshold is not None:
            out = [(doc, s) for doc, s in out if s <= threshold]
        return out

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: dict | Callable | None = None, fetch_k: int = 20, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Documents nearest to ``query`` and their scores (distances: lower is better)."""
        return self.similarity_search_with_score_by_vector(
            self.embedding.embed_query(query), k, filter=filter, fetch_k=fetch_k, **kwargs)

    def similarity_search_by_vector(
        self, embedding: Sequence[float], k: int = 4, filter: dict | Callable | None = None, fetch_k: int = 20,
        **kwargs: Any,
    ) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score_by_vector(
            embedding, k, filter=filter, fetch_k=fetch_k, **kwargs)]

    def similarity_search(
        self, query: str, k: int = 4, filter: dict | Callable | None = None, fetch_k: int = 20, **kwargs: Any
    ) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter=filter, fetch_k=fetch_k,
                                                                     **kwargs)]

    def max_marginal_relevance_search_with_score_by_vector(
        self,
        embedding: Sequence[float],
        *,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict | Callable | None = None,
    ) -> list[tuple[Document, float]]:
        """MMR over the ``fetch_k`` nearest (allowed) documents; their vectors are the decoded
        codes once the store is compressed."""
        q = self._query_vector(embedding)
        with self._lock:
            keys, scores = self._search(q, max(k, fetch_k), filter)
            if len(keys) == 0:
                return []
            if self._index is not None:
                vectors = self._index.reconstruct(keys)
            else:
                vectors = self._X[keys]
            chosen = maximal_marginal_relevance(q[0], vectors, k=k, lambda_mult=lambda_mult)
            return [(self._document(self._id_of_key[int(keys[i])]), float(scores[i])) for i in chosen]

    def max_marginal_relevance_search_by_vector(
        self, embedding: Sequence[float], k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
        filter: dict | Callable | None = None, **kwargs: Any,
    ) -> list[Document]:
        return [doc for doc, _ in self.max_marginal_relevance_search_with_score_by_vector(
            embedding, k=k, fetch_k=fetch_k, lambda_mult=lambda_mult, filter=filter)]

    def max_marginal_relevance_search(
        self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
        filter: dict | Callable | None = None, **kwargs: Any,
    ) -> list[Document]:
        return self.max_marginal_relevance_search_by_vector(
            self.embedding.embed_query(query), k=k, fetch_k=fetch_k, lambda_mult=lambda_mult, filter=filter)

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        if self.override_relevance_score_fn is not None:
            return self.override_relevance_score_fn
        if self.metric == "cosine":
            return self._cosine_relevance_score_fn
        if self.metric == "ip":
            return self._max_inner_product_relevance_score_fn
        return self._euclidean_relevance_score_fn

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict] | None = None,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> LPLRVectorStore:
        """A store holding ``texts`` (one build on all of them when they reach ``train_threshold``)."""
        store = cls(embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    @classmethod
    def from_embeddings(
        cls,
        text_embeddings: Iterable[tuple[str, Sequence[float]]],
        embedding: Embeddings,
        metadatas: list[dict] | None = None,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> LPLRVectorStore:
        """A store of (text, embedding) pairs, embedded already (as the FAISS store's method)."""
        store = cls(embedding, **kwargs)
        store.add_embeddings(text_embeddings, metadatas, ids=ids)
        return store

    # ------------------------------------------------------------------ persistence
    def save_local(self, folder_path: str | os.PathLike, index_name: str = "index") -> None:
        """Write the store to the folder ``folder_path`` (created if needed), no pickle.

        ``<index_name>.json`` (settings), ``<index_name>.docs.jsonl`` (documents: id, key,
        text, metadata), and ``<index_name>.lplr`` (compressed) or ``<index_name>.vectors.npy``
        (exact stage). Each file is written under a temporary name and renamed, the settings
        file last. Metadata must be JSON-serialisable (tuples come back as lists).
        """
        folder = Path(folder_path)
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            keys = self._live_keys()
            tmp = f".tmp-{uuid.uuid4().hex}"
            written: list[tuple[Path, Path]] = []
            try:
                docs_path = folder / f"{index_name}.docs.jsonl"
                with open(docs_path.with_name(docs_path.name + tmp), "w", encoding="utf-8") as fh:
                    for id_, (key, text, meta) in self._docs.items():
                        try:
                            line = json.dumps({"id": id_, "key": key, "text": text, "metadata": meta or {}},
                                              ensure_ascii=False)
                        except (TypeError, ValueError) as exc:
                            raise TypeError(f"the metadata of document {id_!r} cannot be saved as JSON: {exc}") \
                                from None
                        fh.write(line + "\n")
                written.append((docs_path.with_name(docs_path.name + tmp), docs_path))
                if self._index is not None:
                    vec_path = folder / f"{index_name}.lplr"
                    self._index.save(vec_path.with_name(vec_path.name + tmp))
                    stale = folder / f"{index_name}.vectors.npy"
                else:
                    vec_path = folder / f"{index_name}.vectors.npy"
                    X = np.zeros((0, self._dim or 0), np.float32) if self._X is None else self._X[keys]
                    with open(vec_path.with_name(vec_path.name + tmp), "wb") as fh:
                        np.save(fh, X, allow_pickle=False)
                    stale = folder / f"{index_name}.lplr"
                written.append((vec_path.with_name(vec_path.name + tmp), vec_path))
                manifest = {
                    "format": _FORMAT,
                    "version": _FORMAT_VERSION,
                    "dim": self._dim,
                    "metric": self.metric,
                    "normalize_L2": self.normalize_L2,
                    "train_threshold": self.train_threshold,
                    "retrain_growth": self.retrain_growth,
                    "retrain_until": self.retrain_until,
                    "index_settings": self.index_settings,
                    "stage": "compressed" if self._index is not None else "exact",
                    "n_documents": len(self._docs),
                    "next_key": len(self._id_of_key),
                    "trained_rows": self._trained_rows,
                    "next_try": self._next_try,
                }
                man_path = folder / f"{index_name}.json"
                with open(man_path.with_name(man_path.name + tmp), "w", encoding="utf-8") as fh:
                    json.dump(manifest, fh, indent=1)
                written.append((man_path.with_name(man_path.name + tmp), man_path))
            except BaseException:
                for t, _ in written:
                    t.unlink(missing_ok=True)
                for p in folder.glob(f"{index_name}.*{tmp}"):
                    p.unlink(missing_ok=True)
                raise
            for t, final in written:
                os.replace(t, final)
            stale.unlink(missing_ok=True)

    @classmethod
    def load_local(
        cls,
        folder_path: str | os.PathLike,
        embeddings: Embeddings,
        index_name: str = "index",
        *,
        allow_dangerous_deserialization: bool = False,
        **kwargs: Any,
    ) -> LPLRVectorStore:
        """Read a store written by :meth:`save_local`. Nothing is unpickled, so
        ``allow_dangerous_deserialization`` is not needed (accepted for FAISS scripts).
        ``kwargs`` may set ``relevance_score_fn``, ``train_threshold``, ``retrain_growth`` or
        ``retrain_until``."""
        folder = Path(folder_path)
        man_path = folder / f"{index_name}.json"
        try:
            manifest = json.loads(man_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{man_path} does not exist: no store saved as {index_name!r} in {folder}") \
                from None
        if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
            raise ValueError(f"{man_path} is not an LPLRVectorStore file")
        if manifest.get("version") != _FORMAT_VERSION:
            raise ValueError(f"{man_path} has format version {manifest.get('version')!r}; this lplr-index "
                             f"reads version {_FORMAT_VERSION}")
        options = {
            "train_threshold": manifest["train_threshold"],
            "retrain_growth": manifest["retrain_growth"],
            "retrain_until": manifest["retrain_until"],
            "relevance_score_fn": None,
        }
        # the FAISS store's load_local takes its constructor's arguments: these must agree
        saved = {"metric": manifest["metric"], "normalize_L2": manifest["normalize_L2"]}
        given = {"metric": kwargs.pop("metric", None), "normalize_L2": kwargs.pop("normalize_L2", None)}
        if kwargs.get("distance_strategy") is not None:
            given["metric"] = _metric_of(kwargs.pop("distance_strategy"))
        kwargs.pop("distance_strategy", None)
        for name, value in given.items():
            if value is not None and value != saved[name]:
                raise ValueError(f"{name}={value!r} disagrees with the saved store's {saved[name]!r}")
        unknown = set(kwargs) - set(options)
        if unknown:
            raise TypeError(f"load_local does not take {sorted(unknown)} (the index settings are saved)")
        options.update(kwargs)
        store = cls(embeddings, metric=manifest["metric"], normalize_L2=manifest["normalize_L2"],
                    **options, **manifest["index_settings"])
        docs, keys = {}, []
        with open(folder / f"{index_name}.docs.jsonl", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                rec = json.loads(line)
                if not isinstance(rec, dict) or not isinstance(rec.get("id"), str) or \
                        not isinstance(rec.get("text"), str) or not isinstance(rec.get("metadata"), dict) or \
                        not isinstance(rec.get("key"), int) or rec["id"] in docs:
                    raise ValueError(f"{index_name}.docs.jsonl line {lineno} is not a valid document record")
                docs[rec["id"]] = (rec["key"], rec["text"], rec["metadata"] or None)
                keys.append(rec["key"])
        if len(docs) != manifest["n_documents"]:
            raise ValueError(f"{index_name}.docs.jsonl holds {len(docs)} documents, the settings say "
                             f"{manifest['n_documents']}: the folder's files do not belong together")
        next_key = int(manifest["next_key"])
        id_of_key: list[str | None] = [None] * next_key
        for id_, (key, _, _) in docs.items():
            if not 0 <= key < next_key or id_of_key[key] is not None:
                raise ValueError(f"{index_name}.docs.jsonl: document {id_!r} has an invalid key {key}")
            id_of_key[key] = id_
        key_arr = np.asarray(keys, np.int64)
        if manifest["stage"] == "compressed":
            index = LPLRIndex.load(folder / f"{index_name}.lplr")
            if len(index) != len(docs) or not np.array_equal(np.sort(index.live_ids), np.sort(key_arr)):
                raise ValueError(f"{index_name}.lplr does not hold the vectors of {index_name}.docs.jsonl: "
                                 "the folder's files do not belong together")
            store._index = index
        else:
            X = np.load(folder / f"{index_name}.vectors.npy", allow_pickle=False)
            if X.ndim != 2 or len(X) != len(docs) or X.dtype != np.float32:
                raise ValueError(f"{index_name}.vectors.npy does not hold the vectors of {index_name}.docs.jsonl")
            if len(docs):
                store._X = np.zeros((next_key, X.shape[1]), np.float32)
                store._X[key_arr] = X
        store._dim = manifest["dim"]
        store._docs = docs
        store._id_of_key = id_of_key
        store._trained_rows = int(manifest["trained_rows"])
        store._next_try = int(manifest["next_try"])
        return store


# ---------------------------------------------------------------------- helpers
def _unit_rows(X: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return (X / np.where(norms > 0, norms, 1)).astype(np.float32, copy=False)


_COMPARE = {
    "$eq": operator.eq, "$neq": operator.ne, "$ne": operator.ne, "$gt": operator.gt, "$gte": operator.ge,
    "$lt": operator.lt, "$lte": operator.le,
    "$in": lambda a, b: a in b, "$nin": lambda a, b: a not in b,
}


def _filter_function(filter) -> Callable[[dict], bool]:
    """A metadata filter as LangChain's FAISS store reads it: a callable ``metadata -> bool``, or
    a dict of field conditions (a value: equality; a list: membership; a dict of operators
    ``$eq $neq $gt $gte $lt $lte $in $nin``), combined with ``$and``, ``$or``, ``$not``."""
    if callable(filter):
        return filter
    if not isinstance(filter, dict):
        raise ValueError(f"filter must be a dict of metadata conditions or a callable, got {type(filter).__name__}")
    for key in filter:
        if isinstance(key, str) and key.startswith("$") and key not in ("$and", "$or", "$not"):
            raise ValueError(f"filter contains unsupported operator: {key}")
    parts: list[Callable[[dict], bool]] = []
    for key, cond in filter.items():
        if key == "$and":
            subs = [_filter_function(f) for f in cond]
            parts.append(lambda m, subs=subs: all(f(m) for f in subs))
        elif key == "$or":
            subs = [_filter_function(f) for f in cond]
            parts.append(lambda m, subs=subs: any(f(m) for f in subs))
        elif key == "$not":
            sub = _filter_function(cond)
            parts.append(lambda m, sub=sub: not sub(m))
        elif isinstance(cond, dict):
            ops = []
            for op, value in cond.items():
                if op not in _COMPARE:
                    raise ValueError(f"filter contains unsupported operator: {op}")
                ops.append((_COMPARE[op], value))
            parts.append(lambda m, key=key, ops=ops: _all_ops(m.get(key), ops))
        elif isinstance(cond, list):
            parts.append(lambda m, key=key, cond=cond: m.get(key) in cond)
        else:
            parts.append(lambda m, key=key, cond=cond: m.get(key) == cond)
    return lambda m: all(p(m) for p in parts)


def _all_ops(value, ops) -> bool:
    try:
        return all(op(value, arg) for op, arg in ops)
    except TypeError:  # e.g. None > 3: the document does not match
        return False
