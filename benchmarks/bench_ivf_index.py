"""LPLRIndex with partitioned search (``nlist``) against the exhaustive LPLRIndex, by size.

For each ``--n``: clustered synthetic vectors (``bench_ivf.make_clustered``: a seeded mixture
of 100 Gaussians, spectrum decaying as j^-0.5), exact ground truth by faiss's flat search,
then two indexes at the same budget: ``LPLRIndex(nlist=default_nlist(n))`` with the nprobe
its build measured (and every list probed: the same codes searched exhaustively), and the
exhaustive ``LPLRIndex`` (no lists). Recall 10@10, batch q/s
(the best of ``--repeats`` batches, 1 thread), build time and measured bits per coordinate,
both indexes timed in the same process. Prints a table; writes JSON and Markdown.

    python benchmarks/bench_ivf_index.py --n 20000 100000 --out results/reference/bench_ivf_index
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import lplr_index  # noqa: F401 (first: it loads faiss with this CPU's BLAS kernels)
import faiss
import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ivf import make_clustered  # noqa: E402
from common import ROOT, machine, markdown_table, write_results  # noqa: E402

from lplr_index import LPLRIndex, recall_at_k  # noqa: E402
from lplr_index.search.ivf import default_nlist  # noqa: E402


def qps(index: LPLRIndex, Q: np.ndarray, k: int, repeats: int, **kw) -> tuple[np.ndarray, float]:
    index.search(Q[:10], k, **kw)  # first search builds the search structures
    best, I = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, I = index.search(Q, k, **kw)
        best = min(best, time.perf_counter() - t0)
    return I, len(Q) / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[20_000, 100_000])
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--bits", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "runs" / "bench_ivf_index")
    args = p.parse_args()
    rows, k = [], 10
    faiss.omp_set_num_threads(1)
    with threadpool_limits(1):
        for n in args.n:
            X, Q = make_clustered(n, args.queries, args.dim, decay=0.5, n_clusters=100, seed=0)
            flat = faiss.IndexFlatL2(args.dim)
            flat.add(X)
            _, truth = flat.search(Q, k)
            for name, nlist in (("exhaustive", None), ("lists", default_nlist(n))):
                t0 = time.perf_counter()
                index = LPLRIndex(args.dim, bits_per_coordinate=args.bits, nlist=nlist).build(X)
                build_s = time.perf_counter() - t0
                I, rate = qps(index, Q, k, args.repeats)
                rows.append(dict(n=n, index=name, nlist=index.nlist if nlist else None,
                                 nprobe=index.nprobe if nlist else None, recall=recall_at_k(I, truth, k),
                                 qps=rate, build_s=build_s, bits_per_coordinate=index.bits_per_coordinate))
                print(rows[-1], flush=True)
                if nlist:  # the same codes, every list probed: what the lists' codes give exhaustively
                    I, rate = qps(index, Q, k, args.repeats, nprobe=index.nlist)
                    rows.append(dict(rows[-1], index="lists, nprobe = nlist", nprobe=index.nlist,
                                     recall=recall_at_k(I, truth, k), qps=rate))
                    print(rows[-1], flush=True)
    table = markdown_table(rows, [("n", "n", ",d"), ("index", "LPLRIndex", ""), ("nlist", "nlist", ""),
                                  ("nprobe", "nprobe", ""), ("recall", "recall 10@10", ".3f"), ("qps", "q/s", ",.0f"),
                                  ("build_s", "build s", ".1f"), ("bits_per_coordinate", "b/c", ".3f")])
    print(table)
    write_results(args.out, "bench_ivf_index", {"machine": machine(), "args": vars(args) | {"out": str(args.out)},
                                                "rows": rows}, table)


if __name__ == "__main__":
    main()
