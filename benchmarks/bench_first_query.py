"""A loaded partitioned index's first queries (issue 27): how soon a memory-mapped index answers.

A partitioned index file stores each row's list number, not faiss's block layout of the lists;
a loaded index fills each list when a search first probes it (``IVFScorer._fill``). This
measures, each run in a fresh interpreter (the file stays in the page cache between runs, as on
a server that restarts), at one thread:

- ``load_s``: ``LPLRIndex.load(path, mmap=True)``;
- ``first_query_s``: the first single query (the lists it probes are filled then);
- the next ``--warm`` single queries, one at a time (each fills the lists it is the first to
  probe): their median and 90th percentile, and the lists still waiting after them;
- ``fill_rest_s``: every list still waiting filled at once (the private scorer's ``_fill_all``,
  a profiler's call, not an API), then the steady state: the same single queries again
  (median) and all of them as one batch (q/s);
- ``fill_all_at_once_s``: in the same process, a second scorer of the same lists filled whole
  (``_fill_all`` right after ``from_assignment``): what the first query cost before lists were
  filled one by one (the first search after a load filled every list).

The index is built once from ``bench_ivf.py``'s clustered data (``--data-dir`` writes the 15 GB
10^7 set out of core there once) and kept at ``--index``; queries are that data's held-out
queries.

    python benchmarks/bench_first_query.py --n 1000000 --nlist 4096
    python benchmarks/bench_first_query.py --n 10000000 --data-dir data --index /tmp/ivf1e7.lplr

Results: ``results/reference/bench_first_query/synthetic-<n>x<d>-<bits>bc.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, machine, markdown_table, run_case_in_subprocess, write_results  # noqa: E402


def single_queries(index, Q: np.ndarray, k: int) -> list[float]:
    """The wall time of each query of ``Q`` searched alone, in order, seconds."""
    times = []
    for q in Q:
        t = time.perf_counter()
        index.search(q[None], k)
        times.append(time.perf_counter() - t)
    return times


def measure(case: dict) -> dict:
    """One fresh interpreter's load, first query, warm-up and steady state."""
    import faiss

    from lplr_index import LPLRIndex
    from lplr_index.search.ivf import IVFScorer, padded_centroids

    faiss.omp_set_num_threads(1)
    Q = np.load(case["queries"])
    k, warm = case["k"], case["warm"]
    t = time.perf_counter()
    index = LPLRIndex.load(case["index"], mmap=True)
    out = {"load_s": time.perf_counter() - t}
    t = time.perf_counter()
    index.search(Q[:1], k)
    out["first_query_s"] = time.perf_counter() - t
    lat = single_queries(index, Q[1 : 1 + warm], k)
    out["warm_median_ms"] = 1e3 * statistics.median(lat)
    out["warm_p90_ms"] = 1e3 * float(np.percentile(lat, 90))
    state = index._state
    scorer = state.ivf()
    waiting = scorer._pending
    out["lists_waiting_after_warm"] = 0 if waiting is None else int(waiting.unfilled.sum())
    t = time.perf_counter()
    scorer._fill_all()
    out["fill_rest_s"] = time.perf_counter() - t
    out["steady_median_ms"] = 1e3 * statistics.median(single_queries(index, Q[1 : 1 + warm], k))
    t = time.perf_counter()
    index.search(Q, k)
    out["steady_batch_qps"] = len(Q) / (time.perf_counter() - t)
    t = time.perf_counter()
    whole = IVFScorer.from_assignment(state.view, padded_centroids(state.encoder, state.ivf_centroids),
                                      state.ivf_lists)
    whole._fill_all()
    out["fill_all_at_once_s"] = time.perf_counter() - t
    out["nprobe"], out["nlist"] = index.nprobe, index.nlist
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=1_000_000, help="rows of the clustered synthetic data")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--bits", type=float, default=1.0, help="bits per coordinate")
    p.add_argument("--nlist", default="auto", help="lists: an int or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=None,
                   help="write the data there once as .npy and memory-map it (bench_ivf.py's --data-dir)")
    p.add_argument("--index", type=Path, default=None,
                   help="the partitioned index file: built there when missing (default: a temporary file)")
    p.add_argument("--queries", type=int, default=1000, help="held-out queries (the batch)")
    p.add_argument("--warm", type=int, default=300, help="single queries after the first one")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--runs", type=int, default=3, help="fresh interpreters")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "reference" / "bench_first_query")
    args = p.parse_args(argv)
    if args.case:
        print(json.dumps(measure(json.loads(args.case))))
        return
    if not 1 <= args.warm < args.queries:
        p.error(f"--warm must be at least 1 and below --queries ({args.queries}), got {args.warm}")
    from bench_ivf import make_clustered

    from lplr_index import LPLRIndex

    X, Q = make_clustered(args.n, args.queries, args.dim, decay=0.5, n_clusters=100, seed=args.seed,
                          data_dir=args.data_dir, log=print)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.index or Path(tmp) / "ivf.lplr"
        built_s = None
        if not path.exists():
            nlist = args.nlist if args.nlist == "auto" else int(args.nlist)
            t = time.perf_counter()
            index = LPLRIndex(args.dim, bits_per_coordinate=args.bits, nlist=nlist, seed=args.seed).build(X)
            built_s = time.perf_counter() - t
            index.save(path)
            print(f"built {path} in {built_s:.1f} s: {index.nlist} lists, default nprobe {index.nprobe}")
            del index
        qpath = Path(tmp) / "queries.npy"
        np.save(qpath, np.ascontiguousarray(Q, np.float32))
        case = {"index": str(path), "queries": str(qpath), "k": args.k, "warm": args.warm}
        runs = []
        for r in range(args.runs):
            got = run_case_in_subprocess(Path(__file__), case)
            runs.append({"run": r + 1, **got})
            print(f"run {r + 1}: load {got['load_s']:.3f} s, first query {got['first_query_s']:.3f} s, "
                  f"next {args.warm} {got['warm_median_ms']:.2f} ms (p90 {got['warm_p90_ms']:.2f}), "
                  f"{got['lists_waiting_after_warm']} lists left, filled in {got['fill_rest_s']:.3f} s; steady "
                  f"{got['steady_median_ms']:.3f} ms, batch {got['steady_batch_qps']:.0f} q/s; every list at once "
                  f"{got['fill_all_at_once_s']:.3f} s", flush=True)
    name = f"synthetic-{args.n}x{args.dim}-{args.bits:g}bc"
    columns = [("run", "run", ""), ("load_s", "load s", ".3f"), ("first_query_s", "first query s", ".3f"),
               ("warm_median_ms", f"next {args.warm}: median ms", ".2f"), ("warm_p90_ms", "p90 ms", ".2f"),
               ("lists_waiting_after_warm", "lists left", ""), ("fill_rest_s", "fill rest s", ".3f"),
               ("steady_median_ms", "steady ms", ".3f"), ("steady_batch_qps", "batch q/s", ".0f"),
               ("fill_all_at_once_s", "every list at once s", ".3f")]
    payload = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}, "built_s": built_s,
               "runs": runs}
    table = (f"{args.n} x {args.dim}, {args.bits:g} b/c, {runs[0]['nlist']} lists, default nprobe "
             f"{runs[0]['nprobe']}, 1 thread, each run a fresh interpreter:\n\n" + markdown_table(runs, columns))
    write_results(args.out, name, payload, table)
    print(table)


if __name__ == "__main__":
    main()
