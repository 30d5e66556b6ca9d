"""LPLRVectorStore: LangChain's standard vector-store suite, plus the compressed stage, filters,
persistence and the optional-dependency contract.

Skipped as a whole without the ``langchain`` extra (langchain-core) and langchain-tests.
Embeddings are deterministic fakes (no model): LangChain's own ``DeterministicFakeEmbedding``
for the standard suite, and a seeded clustered one (so that codes can be trained and
neighbours mean something) for the rest.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_tests")

from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import Embeddings  # noqa: E402
from langchain_tests.integration_tests import VectorStoreIntegrationTests  # noqa: E402

from lplr_index import LPLRIndex  # noqa: E402
from lplr_index.langchain import LPLRVectorStore  # noqa: E402


# the suite's async tests run under pytest-asyncio's mark (the project does not set asyncio_mode="auto");
# the mark on the class reaches its sync tests too, where pytest-asyncio warns that it does nothing
@pytest.mark.asyncio
@pytest.mark.filterwarnings("ignore:The test <Function .* is marked with '@pytest.mark.asyncio' but it is not an async")
class TestLPLRVectorStoreStandard(VectorStoreIntegrationTests):
    """LangChain's standard suite, as it is: nothing overridden or skipped."""

    @pytest.fixture()
    def vectorstore(self):
        store = LPLRVectorStore(self.get_embeddings())
        try:
            yield store
        finally:
            pass


class ClusteredEmbedding(Embeddings):
    """Deterministic embeddings with structure: text -> one of 20 cluster centres plus noise
    that is mostly in a few directions (as real embeddings' spectra decay), both seeded by a
    hash of the text; unit length. Counts the texts it embeds."""

    def __init__(self, dim: int = 32, n_clusters: int = 20, noise: float = 0.35):
        rng = np.random.default_rng(0)
        self.dim = dim
        self.centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
        self.spread = (np.linspace(1.0, 0.1, dim)[:, None] * np.linalg.qr(rng.standard_normal((dim, dim)))[0])
        self.noise = noise
        self.embedded = 0

    def _vec(self, text: str) -> list[float]:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        rng = np.random.default_rng(seed)
        c = self.centres[rng.integers(len(self.centres))]
        v = c + self.noise * rng.standard_normal(self.dim) @ self.spread
        return (v / np.linalg.norm(v)).astype(np.float32).tolist()  # unit length, as sentence embeddings

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.embedded += len(texts)
        return [self._vec(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vec(text)


def texts_of(n: int, start: int = 0) -> list[str]:
    return [f"passage {i}" for i in range(start, start + n)]


def metas_of(n: int, start: int = 0) -> list[dict]:
    return [{"i": i, "parity": "even" if i % 2 == 0 else "odd", "tens": i // 10} for i in range(start, start + n)]


def exact_ranking(emb: ClusteredEmbedding, texts: list[str], query: str, k: int) -> list[str]:
    X = np.array(emb.embed_documents(texts), np.float32)
    q = np.array(emb.embed_query(query), np.float32)
    d = ((X - q) ** 2).sum(1)
    return [texts[i] for i in np.argsort(d, kind="stable")[:k]]


N = 1500  # passages of the compressed store


@pytest.fixture(scope="module")
def compressed():
    """A store past its first build: 1,500 passages, codes trained on the first 1,000."""
    emb = ClusteredEmbedding()
    store = LPLRVectorStore(emb, train_threshold=1000, retrain_growth=None)
    ids = store.add_texts(texts_of(1000), metas_of(1000), ids=[f"id{i}" for i in range(1000)])
    ids += store.add_texts(texts_of(N - 1000, 1000), metas_of(N - 1000, 1000),
                           ids=[f"id{i}" for i in range(1000, N)])
    assert store.is_compressed and len(store) == N and store.index.ntotal == N
    return emb, store, ids


# ---------------------------------------------------------------- stages
def test_exact_stage_until_the_threshold_then_a_build():
    emb = ClusteredEmbedding()
    store = LPLRVectorStore(emb, train_threshold=300)
    assert store.similarity_search("anything") == [] and len(store) == 0 and store.dim is None
    store.add_texts(texts_of(299), metas_of(299))
    assert not store.is_compressed and store.index is None
    assert store.vector_nbytes >= 299 * 32 * 4
    # exact stage: scores are exact Euclidean distances, the text itself first at distance 0
    (doc, score), *_ = store.similarity_search_with_score("passage 5", k=3)
    assert doc.page_content == "passage 5" and score == pytest.approx(0, abs=1e-5)
    store.add_texts(texts_of(1, 299), metas_of(1, 299))
    assert store.is_compressed and isinstance(store.index, LPLRIndex) and len(store.index) == 300
    assert store.vector_nbytes == store.index.nbytes < 300 * 32 * 4 / 8
    assert store.index.bits_per_coordinate <= 2.0


def test_compressed_store_finds_what_exact_search_finds(compressed):
    emb, store, _ = compressed
    texts = texts_of(N)
    hits = 0
    for q in range(0, N, N // 10):
        got = [d.page_content for d in store.similarity_search(f"passage {q}", k=10)]
        want = exact_ranking(emb, texts, f"passage {q}", 10)
        hits += len(set(got) & set(want))
        assert got[0] == f"passage {q}"  # the query's own text, at 2 bits per coordinate
    # 0.43 measured: 32-d synthetic vectors at 2 bits per coordinate, codes trained on 1,000 of them
    # (MiniLM sentences, README: about 0.85); exact search of random codes would find 10/1500 of them
    assert hits / 100 >= 0.35


def test_scores_are_distances_lower_is_better(compressed):
    emb, store, _ = compressed
    res = store.similarity_search_with_score("passage 3", k=5)
    scores = [s for _, s in res]
    assert scores == sorted(scores) and all(s >= 0 for s in scores)
    q = np.array(emb.embed_query("passage 3"))
    # the scores are the Euclidean distances of the query to the decoded vectors
    decoded = store.index.reconstruct([store._docs[d.id][0] for d, _ in res])
    assert scores == pytest.approx(np.linalg.norm(decoded - q, axis=1), rel=1e-3)
    rel = store.similarity_search_with_relevance_scores("passage 3", k=5)
    assert [r for _, r in rel] == pytest.approx([1 - s / np.sqrt(2) for s in scores], abs=1e-6)


def test_grows_by_add_and_replaces_by_id_after_the_build(compressed):
    emb, _, _ = compressed
    store = LPLRVectorStore(emb, train_threshold=300, retrain_growth=None)
    store.add_texts(texts_of(400), ids=[f"id{i}" for i in range(400)])
    ntotal = store.index.ntotal
    store.add_texts(["passage 9999"], metadatas=[{"new": True}], ids=["id7"])  # replaces id7
    assert len(store) == 400 and store.index.ntotal == ntotal + 1
    (doc,) = store.get_by_ids(["id7"])
    assert doc == Document(id="id7", page_content="passage 9999", metadata={"new": True})
    assert store.similarity_search("passage 9999", k=1)[0].id == "id7"
    assert all(d.id != "id7" for d in store.similarity_search("passage 7", k=20))


def test_delete_in_both_stages_and_compaction():
    emb = ClusteredEmbedding()
    store = LPLRVectorStore(emb, train_threshold=300, retrain_growth=None)
    ids = store.add_texts(texts_of(200))
    store.delete(ids[:150] + ["not there"])
    assert len(store) == 50 and store.get_by_ids(ids[:3]) == []
    assert {d.id for d in store.similarity_search("passage 1", k=100)} == set(ids[150:])
    ids += store.add_texts(texts_of(400, 200))
    assert store.is_compressed
    store.delete(ids[150:250])
    assert store.index.n_removed == 0 or store.index.n_removed <= 0.25 * store.index.ntotal
    found = {d.id for d in store.similarity_search("passage 300", k=1000)}
    assert found == set(ids[250:]) and len(store) == len(found)
    store.delete(list(ids))  # everything: an empty store again
    assert len(store) == 0 and store.similarity_search("passage 1") == []
    store.add_texts(["again"])
    assert [d.page_content for d in store.similarity_search("again", k=3)] == ["again"]


def test_tiny_stores_and_k_above_the_size():
    emb = ClusteredEmbedding(dim=6)
    store = LPLRVectorStore(emb)
    assert store.similarity_search("x", k=4) == [] and store.max_marginal_relevance_search("x") == []
    store.add_texts(["only"])
    assert [d.page_content for d in store.similarity_search("x", k=10)] == ["only"]
    assert store.similarity_search("x", k=0) == []


def test_dimension_6_compresses_when_the_budget_can_hold_it():
    emb = ClusteredEmbedding(dim=6)
    store = LPLRVectorStore(emb, train_threshold=256, retrain_growth=None)
    store.add_texts(texts_of(300))
    # 6-d vectors at 2 bits per coordinate need about 2,000 of them to pay for the codebooks
    assert not store.is_compressed
    store.add_texts(texts_of(2000, 300))
    assert store.is_compressed and store.index.bits_per_coordinate <= 2.0
    # 12 bits a vector among 2,300 vectors of 20 tight clusters: the text is near the top, and
    # the results are its cluster's
    got = [d.page_content for d in store.similarity_search("passage 42", k=20)]
    assert "passage 42" in got
    assert len(set(got) & set(exact_ranking(emb, texts_of(2300), "passage 42", 100))) >= 15


def test_retraining_as_the_store_grows():
    emb = ClusteredEmbedding()
    store = LPLRVectorStore(emb, train_threshold=200, retrain_growth=2, retrain_until=1000)
    store.add_texts(texts_of(250))
    assert store.is_compressed and store._trained_rows == 250 and emb.embedded == 250
    first = store.index
    store.add_texts(texts_of(200, 250))
    assert store._trained_rows == 250 and emb.embedded == 450  # 450 < 2 x 250: no re-training
    assert store.index is first
    store.add_texts(texts_of(100, 450))
    # 550 >= 2 x 250: trained again on all 550; the 450 texts stored before are embedded again,
    # the batch's own 100 vectors are used as they came
    assert store._trained_rows == 550 and emb.embedded == 550 + 450
    assert store.index is not first and store.index.ntotal == 550 and store.index.n_removed == 0
    assert store.similarity_search("passage 500", k=1)[0].page_content == "passage 500"
    store.add_texts(texts_of(600, 550))  # 1,150 >= 2 x 550: once more, on 1,150
    assert store._trained_rows == 1150 and emb.embedded == 1000 + 600 + 550
    store.add_texts(texts_of(1300, 1150))  # trained on 1,150 >= retrain_until: no more
    assert store._trained_rows == 1150 and emb.embedded == 2150 + 1300 and len(store) == 2450
    store.retrain()  # on demand: everything re-embedded
    assert store._trained_rows == 2450 and emb.embedded == 3450 + 2450


def test_no_retraining_with_another_model():
    emb = ClusteredEmbedding()
    store = LPLRVectorStore(emb, train_threshold=1000, retrain_growth=2)
    store.add_texts(texts_of(1000))
    first = store.index
    other = ClusteredEmbedding()
    other.centres = np.random.default_rng(7).standard_normal(other.centres.shape).astype(np.float32)
    store.embedding = other  # e.g. a store loaded with the wrong embeddings object
    with pytest.warns(RuntimeWarning, match="not re-training"):
        store.add_texts(texts_of(1000, 1000))
    assert store.index is first and store._trained_rows == 2000 and len(store) == 2000


def test_no_retraining_when_turned_off():
    emb = ClusteredEmbedding()
    store = LPLRVectorStore(emb, train_threshold=200, retrain_growth=None)
    store.add_texts(texts_of(250))
    first = store.index
    store.add_texts(texts_of(2000, 250))
    assert store.index is first and emb.embedded == 2250


def test_dimension_mismatch_is_refused():
    store = LPLRVectorStore(ClusteredEmbedding(dim=8))
    store.add_texts(["a"])
    with pytest.raises(ValueError, match="dimension"):
        store.add_embeddings([("b", [0.0] * 9)])
    with pytest.raises(ValueError, match="dimension"):
        store.similarity_search_by_vector([0.0] * 9)


# ---------------------------------------------------------------- filters
@pytest.mark.parametrize("stage", ["exact", "compressed"])
def test_filters_select_before_the_search(stage, compressed):
    emb = compressed[0]
    store = compressed[1] if stage == "compressed" else LPLRVectorStore.from_texts(
        texts_of(N), emb, metas_of(N), train_threshold=N + 1)
    assert store.is_compressed == (stage == "compressed")
    for flt, ok in [
        ({"parity": "odd"}, lambda m: m["parity"] == "odd"),
        ({"i": {"$gte": N - 10}}, lambda m: m["i"] >= N - 10),
        ({"i": [3, 5, 7]}, lambda m: m["i"] in (3, 5, 7)),
        ({"$or": [{"i": 1}, {"tens": {"$in": [42]}}]}, lambda m: m["i"] == 1 or m["tens"] == 42),
        ({"$and": [{"parity": "even"}, {"$not": {"tens": {"$lt": N // 10 - 1}}}]},
         lambda m: m["i"] >= N - 10 and m["i"] % 2 == 0),
        ({"i": {"$nin": list(range(1, N))}}, lambda m: m["i"] == 0),
        (lambda m: m["i"] % 100 == 0, lambda m: m["i"] % 100 == 0),
    ]:
        n_match = sum(ok(m) for m in metas_of(N))
        docs = store.similarity_search("passage 10", k=8, filter=flt)
        assert len(docs) == min(8, n_match) and all(ok(d.metadata) for d in docs)
    assert store.similarity_search("passage 10", filter={"parity": "none"}) == []
    with pytest.raises(ValueError, match="unsupported operator"):
        store.similarity_search("x", filter={"i": {"$like": 3}})


def test_mmr_and_retriever(compressed):
    _, store, _ = compressed
    docs = store.max_marginal_relevance_search("passage 4", k=5, fetch_k=30, lambda_mult=0.3)
    assert len(docs) == 5 and len({d.id for d in docs}) == 5 and docs[0].page_content == "passage 4"
    pool = {d.id for d in store.similarity_search("passage 4", k=30)}
    assert {d.id for d in docs} <= pool
    odd = store.max_marginal_relevance_search("passage 4", k=3, filter={"parity": "odd"})
    assert len(odd) == 3 and all(d.metadata["parity"] == "odd" for d in odd)
    retriever = store.as_retriever(search_kwargs={"k": 2})
    assert [d.page_content for d in retriever.invoke("passage 8")][:1] == ["passage 8"]
    rel = store.similarity_search_with_relevance_scores("passage 8", k=50)
    assert all(0 <= r <= 1 for _, r in rel)  # unit vectors: Euclidean distances up to sqrt(2) here
    threshold = rel[4][1]
    thresh = store.as_retriever(search_type="similarity_score_threshold",
                                search_kwargs={"k": 50, "score_threshold": threshold})
    got = thresh.invoke("passage 8")
    assert [d.id for d in got] == [d.id for d, r in rel if r >= threshold] and 5 <= len(got) < 50


@pytest.mark.parametrize("metric,relevance", [("cosine", "_cosine_relevance_score_fn"),
                                              ("ip", "_max_inner_product_relevance_score_fn"),
                                              ("l2", "_euclidean_relevance_score_fn")])
def test_metrics_scores_and_relevance_functions(metric, relevance):
    emb = ClusteredEmbedding(dim=16)
    store = LPLRVectorStore(emb, metric=metric)
    store.add_texts(texts_of(20))
    assert store._select_relevance_score_fn() == getattr(store, relevance)
    X = np.array(emb.embed_documents(texts_of(20)))
    q = np.array(emb.embed_query("passage 2"))
    want = {"l2": np.linalg.norm(X - q, axis=1),
            "cosine": 1 - X @ q / np.linalg.norm(X, axis=1) / np.linalg.norm(q),
            "ip": -(X @ q)}[metric]
    res = store.similarity_search_with_score("passage 2", k=20)
    got = {d.page_content: s for d, s in res}
    assert [s for _, s in res] == sorted(s for _, s in res)
    assert [got[t] for t in texts_of(20)] == pytest.approx(want, rel=1e-4, abs=1e-4)


def test_faiss_store_arguments():
    emb = ClusteredEmbedding(dim=16)
    store = LPLRVectorStore.from_texts(texts_of(10), emb, distance_strategy="COSINE")
    assert store.metric == "cosine"
    unit = LPLRVectorStore.from_texts(texts_of(10), emb, normalize_L2=True)
    (_, s), *_ = unit.similarity_search_with_score("passage 1", k=1)
    assert s == pytest.approx(0, abs=1e-5)
    assert unit.similarity_search_with_score("passage 1", k=10, score_threshold=1e-3)[0][0].page_content == "passage 1"
    assert len(unit.similarity_search_with_score("passage 1", k=10, score_threshold=1e-3)) == 1
    with pytest.raises(ValueError, match="distance_strategy"):
        LPLRVectorStore(emb, distance_strategy="JACCARD")
    with pytest.raises(ValueError):
        LPLRVectorStore(emb, bits_per_coordinate=-1)
    with pytest.raises(ValueError):
        LPLRVectorStore(emb, train_threshold=0)
    custom = LPLRVectorStore(emb, relevance_score_fn=lambda s: 0.5)
    custom.add_texts(["a"])
    assert custom.similarity_search_with_relevance_scores("a", k=1)[0][1] == 0.5


def test_constructors_keep_ids_and_metadata():
    emb = ClusteredEmbedding(dim=16)
    docs = [Document(page_content="a", metadata={"m": 1}, id="x"), Document(page_content="b")]
    store = LPLRVectorStore.from_documents(docs, emb)
    assert store.get_by_ids(["x"]) == [Document(page_content="a", metadata={"m": 1}, id="x")]
    assert docs[1].id is None and len(store) == 2
    pairs = list(zip(["c", "d"], emb.embed_documents(["c", "d"])))
    store2 = LPLRVectorStore.from_embeddings(pairs, emb, metadatas=[{"k": "c"}, {"k": "d"}], ids=["1", "2"])
    assert store2.similarity_search("d", k=1) == [Document(page_content="d", metadata={"k": "d"}, id="2")]
    with pytest.raises(ValueError, match="duplicate"):
        store2.add_texts(["e", "f"], ids=["9", "9"])
    assert store2.add_texts(["e"], [{"k": "e"}], ["3"]) == ["3"]  # positional, as the FAISS store takes them
    # returned documents are copies: changing one does not change the store
    store2.get_by_ids(["1"])[0].metadata["k"] = "changed"
    assert store2.get_by_ids(["1"])[0].metadata == {"k": "c"}


# ---------------------------------------------------------------- persistence
@pytest.mark.parametrize("stage", ["exact", "compressed"])
def test_save_and_load_round_trip_without_pickle(tmp_path, stage, compressed):
    emb = compressed[0]
    if stage == "compressed":
        store = compressed[1]
    else:
        store = LPLRVectorStore.from_texts(texts_of(50), emb, metas_of(50), ids=[f"id{i}" for i in range(50)])
    store.save_local(tmp_path / "s", index_name="kb")
    names = sorted(p.name for p in (tmp_path / "s").iterdir())
    data = "kb.lplr" if stage == "compressed" else "kb.vectors.npy"
    assert names == sorted(["kb.json", "kb.docs.jsonl", data])
    first = json.loads((tmp_path / "s" / "kb.docs.jsonl").read_text().splitlines()[0])
    assert set(first) == {"id", "key", "text", "metadata"}
    loaded = LPLRVectorStore.load_local(tmp_path / "s", emb, index_name="kb", allow_dangerous_deserialization=False)
    assert len(loaded) == len(store) and loaded.is_compressed == store.is_compressed
    for q in ("passage 3", "passage 44"):
        assert loaded.similarity_search_with_score(q, k=5) == store.similarity_search_with_score(q, k=5)
        assert loaded.similarity_search(q, k=3, filter={"parity": "odd"}) == \
            store.similarity_search(q, k=3, filter={"parity": "odd"})
    assert loaded.get_by_ids(["id7"]) == store.get_by_ids(["id7"])
    # the FAISS store's load_local arguments: accepted when they agree with the saved store
    LPLRVectorStore.load_local(tmp_path / "s", emb, "kb", distance_strategy="EUCLIDEAN_DISTANCE", normalize_L2=False)
    with pytest.raises(ValueError, match="disagrees"):
        LPLRVectorStore.load_local(tmp_path / "s", emb, "kb", distance_strategy="COSINE")
    # the loaded store goes on growing and deleting
    new = loaded.add_texts(["fresh text"])
    loaded.delete(["id7"])
    assert loaded.get_by_ids(new + ["id7"])[0].page_content == "fresh text" and len(loaded) == len(store)


def test_save_over_a_store_of_the_other_stage_and_errors(tmp_path):
    emb = ClusteredEmbedding()
    small = LPLRVectorStore.from_texts(texts_of(10), emb)
    small.save_local(tmp_path)
    big = LPLRVectorStore.from_texts(texts_of(400), emb, train_threshold=300)
    big.save_local(tmp_path)
    assert not (tmp_path / "index.vectors.npy").exists() and (tmp_path / "index.lplr").exists()
    assert len(LPLRVectorStore.load_local(tmp_path, emb)) == 400
    bad = LPLRVectorStore.from_texts(["x"], emb, metadatas=[{"obj": object()}])
    with pytest.raises(TypeError, match="JSON"):
        bad.save_local(tmp_path / "bad")
    assert not list((tmp_path / "bad").glob("*"))
    with pytest.raises(FileNotFoundError):
        LPLRVectorStore.load_local(tmp_path / "missing", emb)
    # files of two different saves do not load together
    small.save_local(tmp_path / "other")
    (tmp_path / "other" / "index.docs.jsonl").write_text((tmp_path / "index.docs.jsonl").read_text())
    with pytest.raises(ValueError, match="belong together|invalid key"):
        LPLRVectorStore.load_local(tmp_path / "other", emb)


def test_empty_store_saves_and_loads(tmp_path):
    emb = ClusteredEmbedding()
    LPLRVectorStore(emb).save_local(tmp_path)
    loaded = LPLRVectorStore.load_local(tmp_path, emb)
    assert len(loaded) == 0 and loaded.similarity_search("x") == []
    loaded.add_texts(["y"])
    assert loaded.similarity_search("y", k=1)[0].page_content == "y"


# ---------------------------------------------------------------- optional dependency
def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_lplr_index_does_not_import_langchain():
    done = run_python("import lplr_index, sys; print(sorted(m for m in sys.modules if m.startswith('langchain')))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_missing_langchain_core_names_the_extra():
    done = run_python(
        "import sys\n"
        "sys.modules['langchain_core'] = None\n"
        "try:\n"
        "    import lplr_index.langchain\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n"
    )
    assert done.returncode == 0, done.stderr
    assert 'pip install "lplr-index[langchain]"' in done.stdout


def test_merge_from():
    emb = ClusteredEmbedding(dim=16)
    a = LPLRVectorStore.from_texts(texts_of(5), emb, ids=[f"a{i}" for i in range(5)])
    b = LPLRVectorStore.from_texts(texts_of(3, 5), emb, [{"m": i} for i in range(3)], ids=["b0", "b1", "a0"])
    a.merge_from(b)
    assert len(a) == 7 and a.get_by_ids(["a0"])[0].page_content == "passage 7"
    assert a.similarity_search("passage 6", k=1) == [Document(id="b1", page_content="passage 6", metadata={"m": 1})]
    with pytest.raises(TypeError):
        a.merge_from(object())


def faiss_style_script(Store, emb, folder):
    """What a script written for LangChain's FAISS store does; only ``Store`` is ours here
    (benchmarks/bench_langchain.py runs its own script with both classes)."""
    import asyncio

    docs = [Document(page_content=t, metadata=m) for t, m in zip(texts_of(300), metas_of(300))]
    db = Store.from_documents(docs, emb)
    db.add_texts(["an extra passage"], [{"i": -1, "parity": "odd", "tens": -1}], ["extra"])
    db.add_embeddings([("pre-embedded", emb.embed_query("passage 5"))], ids=["pre"])
    hits = db.similarity_search("passage 5", k=4, filter={"parity": "odd"}, fetch_k=50)
    scored = db.similarity_search_with_score("passage 5", k=4)
    relevant = db.similarity_search_with_relevance_scores("passage 5", k=4, score_threshold=0.1)
    by_vector = db.similarity_search_with_score_by_vector(emb.embed_query("passage 5"), k=2)
    mmr = db.max_marginal_relevance_search("passage 5", k=3, fetch_k=10, lambda_mult=0.5)
    mmr_scored = db.max_marginal_relevance_search_with_score_by_vector(emb.embed_query("passage 5"), k=3)
    for kind, kw in [("similarity", {"k": 3}), ("mmr", {"k": 3, "fetch_k": 10}),
                     ("similarity_score_threshold", {"score_threshold": 0.2, "k": 3})]:
        assert len(db.as_retriever(search_type=kind, search_kwargs=kw).invoke("passage 5")) <= 3
    assert db.delete(["extra"]) is True
    db.save_local(folder)
    db = Store.load_local(folder, emb, allow_dangerous_deserialization=True)
    other = Store.from_texts(["merged text"], emb, ids=["m1"])
    db.merge_from(other)
    assert db.get_by_ids(["m1"])[0].page_content == "merged text"
    db2 = asyncio.run(Store.afrom_texts(["async text"], emb))
    assert asyncio.run(db2.asimilarity_search("async text", k=1))[0].page_content == "async text"
    return hits, scored, relevant, by_vector, mmr, mmr_scored


def test_a_script_written_for_the_faiss_store_runs(tmp_path):
    emb = ClusteredEmbedding()
    hits, scored, relevant, by_vector, mmr, mmr_scored = faiss_style_script(LPLRVectorStore, emb, tmp_path / "f")
    assert len(hits) == 4 and all(d.metadata["parity"] == "odd" for d in hits)
    assert scored[0][0].page_content in ("passage 5", "pre-embedded") and scored[0][1] == pytest.approx(0, abs=1e-5)
    assert all(r >= 0.1 for _, r in relevant) and len(by_vector) == 2
    assert len(mmr) == 3 and len(mmr_scored) == 3
