"""LPLRIndex end to end: build time, search throughput, recall, memory, file size.

For synthetic embeddings (power-law spectrum, d = 384) of n in {1e5, 1e6} at 1
and 2 bits per coordinate: build time, throughput of a batch of 1,000 queries
(k = 10) with the default search (fast-scan over the 4-bit codes, exact re-rank),
with the exact scan of the codes (``mode="factored"``) and with faiss
IndexFlatL2 on the float32 data, single-query latency, recall 10@10 against exact
search, peak memory and file size. Each case runs in a fresh interpreter with
one thread (faiss and BLAS, ``--threads``); times are medians of repeats.

    python benchmarks/bench_index.py
    python benchmarks/bench_index.py --sizes 100000 --bits 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, make_embeddings, markdown_table, median_time, peak_rss_mib, run_case_in_subprocess, write_results  # noqa: E402


def run_case(case: dict) -> dict:
    import faiss

    from threadpoolctl import threadpool_limits

    from lplr_index import LPLRIndex, recall_at_k

    n, d, bits, nq, k, reps = case["n"], case["d"], case["bits"], case["n_queries"], case["k"], case["repeats"]
    faiss.omp_set_num_threads(case["threads"])
    threadpool_limits(case["threads"])
    X, Q = make_embeddings(n, d, n_queries=nq, seed=0)
    base = peak_rss_mib()
    flat = faiss.IndexFlatL2(d)
    flat.add(X)
    t_flat, (_, I_true) = median_time(lambda: flat.search(Q, k), reps)
    t_flat_one, _ = median_time(lambda: [flat.search(q[None, :], k) for q in Q[:20]], 1)
    del flat

    t0 = time.perf_counter()
    index = LPLRIndex(d, bits_per_coordinate=bits, seed=0).build(X)
    t_build = time.perf_counter() - t0
    rss_after_build = peak_rss_mib()
    del X  # searching needs only the index from here on
    index.search(Q[:1], k)  # the fast-scan index is built on the first search
    t_fast, (_, I_fast) = median_time(lambda: index.search(Q, k), reps)
    t_one, _ = median_time(lambda: [index.search(Q[i : i + 1], k) for i in range(100)], reps)
    t_one /= 100
    index.search(Q[:1], k, mode="factored")  # per-vector norms on the first exact scan
    t_fact, (_, I_fact) = median_time(lambda: index.search(Q, k, mode="factored"), reps)
    with tempfile.TemporaryDirectory() as tmp:
        size = index.save(Path(tmp) / "bench.idx")
    return {
        **case,
        "rank": index.rank,
        "bits_l": index.bits_l,
        "encoder": index.encoder,
        "build_s": t_build,
        "flat_qps": nq / t_flat,
        "fastscan_qps": nq / t_fast,
        "factored_qps": nq / t_fact,
        "fastscan_speedup_vs_flat": t_flat / t_fast,
        "single_query_ms": 1000 * t_one,
        "flat_single_query_ms": 1000 * t_flat_one / 20,
        "recall_10at10": recall_at_k(I_fast, I_true, k),
        "recall_10at10_factored": recall_at_k(I_fact, I_true, k),
        "bits_per_coordinate": index.bits_per_coordinate,
        "file_mib": size / 2**20,
        "float32_mib": n * d * 4 / 2**20,
        "peak_rss_mib": peak_rss_mib(),
        "peak_rss_build_mib": rss_after_build,
        "rss_before_build_mib": base,
        "fit_error": index.fit_error,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--bits", type=float, nargs="+", default=[1.0, 2.0])
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--n-queries", type=int, default=1000)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="faiss and BLAS threads of every case")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "runs" / "bench_index")
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    cases = [
        {"n": n, "d": args.dim, "bits": b, "n_queries": args.n_queries, "k": args.k, "repeats": args.repeats,
         "threads": args.threads}
        for n in args.sizes for b in args.bits
    ]
    rows = []
    for i, case in enumerate(cases, 1):
        print(f"[{i}/{len(cases)}] n={case['n']} d={case['d']} bits={case['bits']} ...", file=sys.stderr, flush=True)
        row = run_case_in_subprocess(Path(__file__), case)
        print(f"    build {row['build_s']:.1f} s, default search {row['fastscan_qps']:.0f} q/s, exact scan "
              f"{row['factored_qps']:.0f} q/s, flat {row['flat_qps']:.0f} q/s, recall {row['recall_10at10']:.3f}",
              file=sys.stderr, flush=True)
        rows.append(row)
    table = markdown_table(rows, [
        ("n", "n", ","), ("bits", "budget", "g"), ("bits_per_coordinate", "measured bits/coord", ".3f"),
        ("rank", "rank", ""), ("bits_l", "bits_l", ""), ("build_s", "build (s)", ".1f"),
        ("fastscan_qps", "default q/s", ".0f"), ("factored_qps", "exact scan q/s", ".0f"),
        ("flat_qps", "IndexFlatL2 q/s", ".0f"), ("fastscan_speedup_vs_flat", "default / flat", ".1f"),
        ("single_query_ms", "1 query (ms)", ".2f"), ("flat_single_query_ms", "flat 1 query (ms)", ".1f"),
        ("recall_10at10", "recall 10@10", ".3f"), ("recall_10at10_factored", "recall (exact scan)", ".3f"),
        ("file_mib", "file (MiB)", ".1f"), ("float32_mib", "float32 (MiB)", ".0f"), ("peak_rss_mib", "peak RSS (MiB)", ".0f"),
    ])
    print(table)
    write_results(args.out, "bench_index", {"args": vars(args) | {"out": str(args.out)}, "machine": machine(), "rows": rows}, table)


if __name__ == "__main__":
    main()
