"""Speed and peak memory of the LPLR family on large float32 matrices.

Each case runs in a fresh interpreter, so "peak RSS" is that case's own peak
resident memory (input and its generation included); "allocated" is the peak
of the arrays the method itself allocates (tracemalloc, one extra run).
Times are medians of ``--repeats`` runs.

    python benchmarks/bench_factorize.py                 # n in 1e4, 1e5, 1e6 (d = 384), plus 1e5 x 1024
    python benchmarks/bench_factorize.py --sizes 10000 --dims 384 --methods lplr
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, TracedPeak, machine, make_embeddings, markdown_table, median_time, peak_rss_mib, run_case_in_subprocess, write_results  # noqa: E402

METHODS = ("lplr", "lplr_svd", "direct_svd_quant", "naive_quant")


def run_case(case: dict) -> dict:
    import lplr_index

    n, d, rank, method = case["n"], case["d"], case["rank"], case["method"]
    X, _ = make_embeddings(n, d, seed=0)
    if method == "naive_quant":
        fn = lambda: lplr_index.naive_quant(X, 1, quantizer="minmax")  # noqa: E731
    elif method == "direct_svd_quant":
        fn = lambda: lplr_index.direct_svd_quant(X, rank, 8, 8)  # noqa: E731
    else:
        f = getattr(lplr_index, method)
        fn = lambda: f(X, rank, 8, 8, seed=0)  # noqa: E731
    with TracedPeak() as traced:
        fn()
    seconds, C = median_time(fn, case["repeats"])
    peak = peak_rss_mib()
    err = lplr_index.relative_error(X[:20000], C.reconstruct()[:20000]) if n <= 200000 else None
    return {
        **case,
        "seconds": seconds,
        "input_mib": X.nbytes / 2**20,
        "peak_rss_mib": peak,
        "extra_mib": traced.mib,
        "nbits": C.nbits,
        "bits_per_entry": C.bits_per_entry,
        "rel_error_first_20k_rows": err,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dims", type=int, nargs="+", default=[384])
    p.add_argument("--rank", type=int, default=128)
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--extra-1e5x1024", action=argparse.BooleanOptionalAction, default=True,
                   help="also run lplr on 100,000 x 1,024 (the issue's speed target)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "runs" / "bench_factorize")
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    cases = [
        {"n": n, "d": d, "rank": args.rank, "method": m, "repeats": args.repeats}
        for d in args.dims for n in args.sizes for m in args.methods
    ]
    if args.extra_1e5x1024:
        cases.append({"n": 100_000, "d": 1024, "rank": args.rank, "method": "lplr", "repeats": args.repeats})
    rows = []
    for i, case in enumerate(cases, 1):
        print(f"[{i}/{len(cases)}] {case['method']} n={case['n']} d={case['d']} rank={case['rank']} ...",
              file=sys.stderr, flush=True)
        row = run_case_in_subprocess(Path(__file__), case)
        print(f"    {row['seconds']:.2f} s, peak {row['peak_rss_mib']:.0f} MiB "
              f"(input {row['input_mib']:.0f} MiB)", file=sys.stderr, flush=True)
        rows.append(row)
    table = markdown_table(rows, [
        ("method", "method", ""), ("n", "n", ","), ("d", "d", ""), ("rank", "rank", ""),
        ("seconds", "time (s, median)", ".2f"), ("input_mib", "input (MiB)", ".0f"),
        ("peak_rss_mib", "peak RSS (MiB)", ".0f"), ("extra_mib", "allocated (MiB)", ".0f"),
        ("bits_per_entry", "bits/entry", ".3f"),
    ])
    print(table)
    write_results(args.out, "bench_factorize", {"args": vars(args) | {"out": str(args.out)}, "machine": machine(), "rows": rows}, table)


if __name__ == "__main__":
    main()
