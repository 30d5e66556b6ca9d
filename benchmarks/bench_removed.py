"""What removed vectors cost a search: one index searched as built and with a share of its rows
removed, alternating query by query in one process, 1 thread.

An index keeps removed vectors as tombstones until ``compact()`` (the LangChain store until a
quarter of its rows are); every search drops them. This times single queries (each searched on
both copies in turn, the order swapped every query) and batches of all queries (alternating,
the order swapped every round), and counts how many single queries the lean single-query path
answered (``router.search_one``; the rest took the general path). The copies are the same file
loaded twice; the removed rows are evenly spaced.

    python benchmarks/bench_removed.py --n 10000
    python benchmarks/bench_removed.py --n 1000000 --nlist 1024

Results: ``results/reference/bench_removed/synthetic-<n>x<d>-<bits>bc[-nlist<L>].{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, machine, markdown_table, write_results  # noqa: E402


def count_lean(router):
    """Wrap ``router.search_one`` to count the queries it answers; returns the count (a list)."""
    taken = [0]
    real = router.search_one

    def counted(*args):
        got = real(*args)
        taken[0] += got is not None
        return got

    router.search_one = counted
    return taken


def measure(args: argparse.Namespace) -> dict:
    import faiss
    from bench_faiss import make_synthetic
    from threadpoolctl import threadpool_limits

    from lplr_index import LPLRIndex
    from lplr_index.search import router

    data = make_synthetic(args.n, args.queries, args.dim, seed=args.seed)
    t = time.perf_counter()
    built = LPLRIndex(args.dim, bits_per_coordinate=args.bits, nlist=args.nlist, seed=args.seed).build(data.xb)
    build_s = time.perf_counter() - t
    blob = built.to_bytes()
    del built
    plain, removed = LPLRIndex.from_bytes(blob), LPLRIndex.from_bytes(blob)
    step = max(1, round(1 / args.removed))
    gone = np.arange(0, removed.ntotal, step)
    removed.remove(gone)
    Q = np.ascontiguousarray(data.xq, np.float32)
    singles = [Q[i : i + 1] for i in range(min(args.latency_queries, len(Q)))]
    indexes = {"as built": plain, "removed": removed}
    times = {name: [] for name in indexes}
    batch = {name: [] for name in indexes}
    faiss.omp_set_num_threads(1)
    with threadpool_limits(1):
        for ix in indexes.values():  # the search structures, made at the first search
            ix.search(Q, args.k)
        same = float(np.mean([len(np.intersect1d(a, b)) / args.k for a, b in
                              zip(plain.search(Q, args.k)[1], removed.search(Q, args.k)[1])]))
        lean = count_lean(router)
        for r in range(args.rounds):
            for i, q in enumerate(singles):
                for name in (indexes if (r + i) % 2 == 0 else reversed(list(indexes))):
                    t = time.perf_counter()
                    indexes[name].search(q, args.k)
                    times[name].append(time.perf_counter() - t)
            for name in (indexes if r % 2 == 0 else reversed(list(indexes))):
                t = time.perf_counter()
                indexes[name].search(Q, args.k)
                batch[name].append(time.perf_counter() - t)
    lean_share = lean[0] / (2 * args.rounds * len(singles))
    row = {"n": args.n, "nlist": plain.nlist, "removed_rows": int(len(gone)),
           "removed_share": len(gone) / plain.ntotal, "build_s": build_s,
           "overlap_with_as_built": same, "lean_share": lean_share}
    for name, key in (("as built", "plain"), ("removed", "removed")):
        row[f"{key}_us"] = 1e6 * statistics.median(times[name])
        row[f"{key}_qps"] = len(Q) / statistics.median(batch[name])
    row["single_ratio"] = row["removed_us"] / row["plain_us"]
    row["batch_ratio"] = row["removed_qps"] / row["plain_qps"]
    return row


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n", type=int, default=10_000, help="rows of bench_faiss.py's synthetic data")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--bits", type=float, default=1.0, help="bits per coordinate")
    p.add_argument("--nlist", type=int, default=None, help="lists of a partitioned index (default: exhaustive)")
    p.add_argument("--removed", type=float, default=0.001, help="share of the rows removed, evenly spaced")
    p.add_argument("--queries", type=int, default=1000, help="held-out queries (the batch)")
    p.add_argument("--latency-queries", type=int, default=300, help="single queries a round")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "reference" / "bench_removed")
    args = p.parse_args(argv)
    if not 0 < args.removed < 1:
        p.error(f"--removed must be a share of the rows in (0, 1), got {args.removed}")
    if args.nlist is not None and not 1 <= args.nlist <= args.n:
        p.error(f"--nlist must be in [1, --n], got {args.nlist}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    row = measure(args)
    name = f"synthetic-{args.n}x{args.dim}-{args.bits:g}bc" + (f"-nlist{args.nlist}" if args.nlist else "")
    table = markdown_table([row], [
        ("n", "rows", ","), ("nlist", "lists", ""), ("removed_rows", "removed", ","),
        ("plain_us", "1 query as built, us", ".1f"), ("removed_us", "1 query with removed, us", ".1f"),
        ("single_ratio", "ratio", ".2f"), ("plain_qps", "batch q/s as built", ",.0f"),
        ("removed_qps", "batch q/s with removed", ",.0f"), ("batch_ratio", "ratio", ".2f"),
        ("lean_share", "single queries on the lean path", ".2f")])
    payload = {"benchmark": "bench_removed", "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "machine": machine(), "rows": [row]}
    write_results(args.out, name, payload, table)
    print(table)
    return payload


if __name__ == "__main__":
    main()
