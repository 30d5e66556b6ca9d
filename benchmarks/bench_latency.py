"""Single-query latency of LPLRIndex's default search against faiss's PQ fast-scan, timed in
alternating blocks.

``bench_faiss.py`` times each index in its own block, minutes apart; on a shared machine
the state drifts between blocks (its Fashion-MNIST runs of one code gave 0.47 and 0.79 ms
at 1 bit per coordinate) and a ratio of two such figures moves with it. Here both indexes
are built first, then timed in ``--rounds`` alternating blocks of ``--queries`` single
queries each (one warm-up query per block), at one thread (faiss's OpenMP and the BLAS
threads; the builds use the default threads); the ratio of the medians, and each round's
ratio, are reported.

PQ fast-scan gets ``budget * d / 4`` sub-quantizers of 4 bits (what ``bench_faiss.py``'s
``PQfs4`` family builds at these budgets on Fashion-MNIST and the synthetic set), trained
on ``--max-train`` database rows.

    python benchmarks/bench_latency.py --dataset fashion-mnist
    python benchmarks/bench_latency.py --synthetic --n 1000000 --dim 384

Results: ``results/reference/bench_latency/<dataset>.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_faiss import add_source_args, check_source_args, load_source  # noqa: E402
from common import ROOT, machine, markdown_table, write_results  # noqa: E402

from lplr_index import LPLRIndex  # noqa: E402


def block_times(search, Q: np.ndarray, start: int, count: int) -> list[float]:
    """Seconds of ``count`` single queries from row ``start`` (after one warm-up query)."""
    search(Q[start : start + 1])
    out = []
    for i in range(start, start + count):
        q = np.ascontiguousarray(Q[i % len(Q) : i % len(Q) + 1])
        t0 = time.perf_counter()
        search(q)
        out.append(time.perf_counter() - t0)
    return out


def measure(budget: float, xb: np.ndarray, xq: np.ndarray, args) -> dict:
    """Build both indexes at ``budget`` bits per coordinate and time them in alternating blocks."""
    d = xb.shape[1]
    t0 = time.perf_counter()
    lplr = LPLRIndex(d, bits_per_coordinate=budget, seed=args.seed).build(xb)
    build_s = time.perf_counter() - t0
    M = int(budget * d / 4)
    pq = faiss.IndexPQFastScan(d, M, 4)
    pq.train(xb[: args.max_train])
    pq.add(xb)
    searches = {"lplr": lambda q: lplr.search(q, args.k), "pq": lambda q: pq.search(q, args.k)}
    times: dict[str, list[float]] = {"lplr": [], "pq": []}
    rounds = []
    with threadpool_limits(1):
        faiss.omp_set_num_threads(1)
        for name, search in searches.items():  # first searches: fast-scan set-up, caches
            search(xq[: min(len(xq), 100)])
        for r in range(args.rounds):
            start = r * args.queries
            got = {name: block_times(search, xq, start, args.queries) for name, search in searches.items()}
            for name, ts in got.items():
                times[name].extend(ts)
            rounds.append(statistics.median(got["lplr"]) / statistics.median(got["pq"]))
    lat = {name: 1e3 * statistics.median(ts) for name, ts in times.items()}
    return {"budget": budget, "lplr_layout": str(lplr.layout.get("groups", lplr.codec)),
            "lplr_bits_per_coordinate": lplr.bits_per_coordinate, "lplr_build_s": build_s,
            "pq_M": M, "lplr_ms": lat["lplr"], "pq_ms": lat["pq"], "ratio": lat["lplr"] / lat["pq"],
            "round_ratio_min": min(rounds), "round_ratio_max": max(rounds), "queries_timed": len(times["pq"])}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_source_args(p)
    p.add_argument("--queries", type=int, default=100, help="single queries per block")
    p.add_argument("--rounds", type=int, default=6, help="alternating blocks per index")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--max-train", type=int, default=30000, help="PQ training rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "reference" / "bench_latency")
    args = p.parse_args(argv)
    check_source_args(p, args)
    for name in ("queries", "rounds", "k", "max_train"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    data = load_source(args)
    name = data.name
    rows = []
    for b in args.bits:
        row = measure(b, data.xb, data.xq, args)
        print(f"{name} {b:g} b/c: LPLRIndex {row['lplr_ms']:.3f} ms, PQ fast-scan (M={row['pq_M']}) "
              f"{row['pq_ms']:.3f} ms, ratio {row['ratio']:.2f}x (rounds {row['round_ratio_min']:.2f}-"
              f"{row['round_ratio_max']:.2f}x)", flush=True)
        rows.append(row)
    table = markdown_table(rows, [("budget", "b/c", "g"), ("lplr_layout", "LPLRIndex design", ""),
                                  ("lplr_ms", "LPLRIndex ms", ".3f"), ("pq_M", "PQ fast-scan M", "d"),
                                  ("pq_ms", "PQ fast-scan ms", ".3f"), ("ratio", "ratio", ".2f"),
                                  ("round_ratio_min", "round min", ".2f"), ("round_ratio_max", "round max", ".2f")])
    info = machine()  # timed at one thread, built at faiss's (and BLAS's) default
    info["build_threads"], info["faiss_threads"] = info["faiss_threads"], 1
    payload = {"benchmark": "bench_latency", "dataset": name, "n": int(len(data.xb)), "dim": int(data.xb.shape[1]),
               "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "machine": info, "rows": rows}
    write_results(args.out, name, payload, table)
    print(table)
    return payload


if __name__ == "__main__":
    main()
