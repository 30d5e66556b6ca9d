"""How many fast-scan candidates a query needs to keep the exact scan's top 10, per design.

For each data set and budget: LPLRIndex with its defaults (the design its build chooses), the
exact scan of its codes (``mode="factored"``: every code decoded and scored) as the reference,
and the default fast-scan search re-ranking ``f * k`` candidates for each factor ``f``
(2, 3, 4 for one-level designs; 4, 6, 8, 12, 16 for two-level ones, whose fast-scan sees only
the coarse codes). Printed: the agreement of each search's top 10 with the exact scan's (the
fraction of the exact top 10 found, averaged over the queries; 1.000 keeps every neighbour).
The index's defaults are 4k and 16k (``router.DEFAULT_RERANK_FACTOR``,
``vq.TWO_LEVEL_RERANK_FACTOR``); the issue's bar for a shallower depth is 0.995.

    python benchmarks/bench_rerank_depth.py --sets synthetic-10000 synthetic-100000 fashion-mnist bbc

Synthetic sets are ``bench_faiss.py``'s seeded mixture (``--dim``, default 384; 1,000 queries); named sets are
pipelines data sets (their embedding cache, built on first use). Results:
``results/reference/bench_rerank_depth/depths.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lplr_index  # noqa: F401 (first: it loads faiss with this CPU's BLAS kernels)
import faiss
import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_faiss import PIPELINE_DATASETS, load_pipeline_dataset, make_synthetic  # noqa: E402
from common import ROOT, machine, markdown_table, write_results  # noqa: E402

from lplr_index import LPLRIndex  # noqa: E402

ONE_LEVEL = (2, 3, 4)
TWO_LEVEL = (4, 6, 8, 12, 16)


def agreement(I: np.ndarray, J: np.ndarray) -> float:
    """Mean fraction of each row of ``J`` (the reference) found in the same row of ``I``."""
    return float(np.mean([len(np.intersect1d(a, b)) / len(b) for a, b in zip(I, J)]))


def load(name: str, n_queries: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    if name.startswith("synthetic-"):
        ds = make_synthetic(int(name.split("-", 1)[1]), n_queries, dim)
    else:
        ds = load_pipeline_dataset(name, None)
    return ds.xb, ds.xq[:n_queries]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", nargs="+", default=["synthetic-10000", "synthetic-100000", "fashion-mnist", "bbc"],
                   help=f"synthetic-N or one of {', '.join(PIPELINE_DATASETS)}")
    p.add_argument("--bits", type=float, nargs="+", default=[0.5, 1, 2, 4])
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--dim", type=int, default=384, help="dimension of the synthetic sets")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "runs" / "bench_rerank_depth")
    args = p.parse_args(argv)
    for name in args.sets:
        if not name.startswith("synthetic-") and name not in PIPELINE_DATASETS:
            p.error(f"--sets: {name!r} is neither synthetic-N nor one of {', '.join(PIPELINE_DATASETS)}")
    faiss.omp_set_num_threads(1)
    rows = []
    for name in args.sets:
        X, Q = load(name, args.queries, args.dim)
        for bits in args.bits:
            index = LPLRIndex(X.shape[1], bits_per_coordinate=bits, seed=0).build(X)
            groups = index.layout.get("groups") or []
            two = any(g[2] == 2 for g in groups)
            with threadpool_limits(1):
                _, exact = index.search(Q, args.k, mode="factored")
                found = {f: agreement(index.search(Q, args.k, rerank_factor=f)[1], exact)
                         for f in (TWO_LEVEL if two else ONE_LEVEL)}
            rows.append({"set": f"{name} ({len(X):,} x {X.shape[1]})", "bits": bits, "groups": str(groups),
                         "design": "two-level" if two else "one-level",
                         "agreement": " / ".join(f"{f}k {a:.4f}" for f, a in found.items()),
                         "by_factor": {str(f): a for f, a in found.items()}})
            print(rows[-1]["set"], bits, rows[-1]["design"], rows[-1]["agreement"], flush=True)
    table = markdown_table(rows, [("set", "set", ""), ("bits", "b/c", "g"), ("design", "design", ""),
                                  ("groups", "groups (size, count, levels)", ""),
                                  ("agreement", "top-10 agreement with the exact scan, by depth", "")])
    print(table)
    write_results(args.out, "depths", {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
                                       "rows": rows}, table)


if __name__ == "__main__":
    main()
