"""The partitioned build against the exhaustive one (issue 27's target: within 1.5x), in one process.

Builds ``LPLRIndex(bits_per_coordinate=--bits)`` on ``bench_ivf.py``'s clustered data three times
in turn, exhaustive, partitioned (``nlist=--nlist``), exhaustive again, at ``--threads`` threads,
each with the anonymous memory it peaked at (``RssAnon`` sampled every 10 ms: the mapped data
file's pages are not counted). The partitioned index's measured default ``nprobe`` (and the
agreement of each ``nprobe`` tried), its re-rank depth, and recall 10@10 and batch q/s at a few
``nprobe`` against ``bench_ivf.py``'s cached ground truth when there is one (computed and cached
otherwise, as ``bench_ivf.py`` does).

    python benchmarks/bench_ivf_build.py --n 1000000 --nlist 1024
    python benchmarks/bench_ivf_build.py --n 10000000 --nlist 4096 --data-dir data --nprobe 1 2 4 8 16 32 64   # 10 min
    python benchmarks/bench_ivf_build.py --n 30000000 --nlist 4096 --data-dir data --builds partitioned \
        --nprobe 1 2 4 8 16 32 --plan-n 10000000 30000000 100000000   # 46 GB of data written in 12 min,
        # the exact neighbours in 17 min (2 threads), the build 6 min

``--builds partitioned`` builds the partitioned index alone (no build ratio). ``--plan-n`` prints
``LPLRIndex.plan()``'s file size, build peak and fast-scan memory at those sizes (the design chosen
on the first ``--plan-sample`` rows, the lists ``--nlist`` or ``default_nlist(n)`` when
``--plan-nlist auto``) beside what the run measured: a size too large to build here (10^8 x 384,
153 GB of data) gets the plan's figures, checked against a measured size.

Results: ``results/reference/bench_ivf_build/synthetic-<n>x<d>-<bits>bc-nlist<nlist>.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ivf import _status_kib  # noqa: E402
from common import ROOT, machine, markdown_table, write_results  # noqa: E402


def anon_bytes() -> int:
    """The process's anonymous resident memory (``RssAnon``), bytes; 0 where /proc has none."""
    return 1024 * (_status_kib("RssAnon") or 0)


def timed_build(make) -> tuple[object, float, float]:
    """``make()``, its wall time and the anonymous memory it peaked at above the start, GiB."""
    base, peak, stop = anon_bytes(), [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], anon_bytes())
            time.sleep(0.01)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    t = time.perf_counter()
    try:
        out = make()
    finally:
        stop.set()
        watcher.join()
    return out, time.perf_counter() - t, max(0, peak[0] - base) / 2**30


def plan_row(cls, n: int, d: int, args, X, nlist: int) -> dict:
    """``cls.plan()``'s figures at ``n`` rows (the design chosen on ``X``'s first ``--plan-sample`` rows)."""
    pl = cls.plan(n, d, bits_per_coordinate=args.bits, nlist=min(nlist, n), seed=args.seed,
                  sample=X[: min(len(X), n, args.plan_sample)])
    return {"n": n, "nlist": min(nlist, n), "file_gib": pl.file_bytes / 2**30, "bits": pl.bits_per_coordinate,
            "build_peak_gib": pl.build_peak_bytes / 2**30, "fastscan_gib": pl.fastscan_bytes / 2**30}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--bits", type=float, default=1.0)
    p.add_argument("--nlist", type=int, default=4096)
    p.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--n-queries", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", type=Path, default=None,
                   help="write the data there once as .npy and memory-map it (bench_ivf.py's --data-dir)")
    p.add_argument("--cache", type=Path, default=ROOT / "results" / "runs" / "cache" / "bench_ivf",
                   help="bench_ivf.py's folder of cached ground truth")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "reference" / "bench_ivf_build")
    p.add_argument("--builds", default="exhaustive,partitioned,exhaustive",
                   help="the builds, in order: comma-separated 'exhaustive' and one 'partitioned'")
    p.add_argument("--plan-n", type=int, nargs="*", default=[], help="sizes to print LPLRIndex.plan() at")
    p.add_argument("--plan-sample", type=int, default=200_000, help="rows the plans choose their design on")
    p.add_argument("--plan-nlist", choices=("same", "auto"), default="auto",
                   help="the plans' lists: --nlist, or default_nlist(n) of each size")
    args = p.parse_args(argv)
    if not 1 <= args.nlist <= args.n:
        p.error(f"--nlist must be 1 to --n ({args.n}), got {args.nlist}")
    builds = args.builds.split(",")
    if set(builds) - {"exhaustive", "partitioned"} or builds.count("partitioned") != 1:
        p.error(f"--builds must list 'exhaustive' (any number of times) and 'partitioned' once, "
                f"comma-separated, got {args.builds!r}")
    if any(m < 1 for m in args.plan_n) or args.plan_sample < 1:
        p.error(f"--plan-n and --plan-sample must be positive, got {args.plan_n} and {args.plan_sample}")
    import faiss
    from bench_ivf import ground_truth, make_clustered
    from threadpoolctl import threadpool_limits

    from lplr_index import LPLRIndex
    from lplr_index.search.ivf import default_nlist

    faiss.omp_set_num_threads(args.threads)
    n, d, k = args.n, args.dim, 10
    X, Q = make_clustered(n, args.n_queries, d, decay=0.5, n_clusters=100, seed=args.seed, data_dir=args.data_dir,
                          log=print)
    key = f"clustered-{n}x{d}-q{args.n_queries}-seed{args.seed}-c100-decay0.5-k{k}"
    rows = []
    with threadpool_limits(args.threads):
        gt = ground_truth(X, Q, k, args.cache / f"gt-{key}.npy", print)
        named = [("partitioned", args.nlist) if b == "partitioned" else
                 ("exhaustive, again" if "exhaustive" in builds[:i] else "exhaustive", None)
                 for i, b in enumerate(builds)]
        for name, nlist in named:
            index, built, peak = timed_build(
                lambda nl=nlist: LPLRIndex(d, bits_per_coordinate=args.bits, nlist=nl, seed=args.seed).build(X))
            row = {"build": name, "build_s": built, "anon_peak_gib": peak, "bits": index.bits_per_coordinate,
                   "rerank_factor": index.rerank_factor, "file_gib": index.nbytes / 2**30}
            if nlist is not None:
                row.update(nlist=nlist, nprobe=index.nprobe,
                           nprobe_report={str(q): v for q, v in sorted(index.nprobe_report.items())})
                sweep = {}
                for q in sorted({x for x in args.nprobe if x <= nlist} | {index.nprobe}):
                    t = time.perf_counter()
                    _, I = index.search(Q, k, nprobe=q)
                    sweep[str(q)] = {"recall": float(np.mean([len(np.intersect1d(a, b)) for a, b in
                                                              zip(I, gt[:, :k])]) / k),
                                     "qps": len(Q) / (time.perf_counter() - t)}
                row["sweep"] = sweep
            rows.append(row)
            print(f"{name}: build {built:.1f} s, anonymous peak {peak:.2f} GiB, {row['bits']:.3f} b/c"
                  + (f", default nprobe {row['nprobe']}" if nlist else ""), flush=True)
            del index
        plans = [plan_row(LPLRIndex, m, d, args, X, default_nlist(m) if args.plan_nlist == "auto" else args.nlist)
                 for m in args.plan_n]
    ex = [r["build_s"] for r in rows if r.get("nlist") is None]
    ivf = next(r for r in rows if r.get("nlist") is not None)
    ratio = ivf["build_s"] / (sum(ex) / len(ex)) if ex else None
    table = markdown_table(rows, [("build", "build", ""), ("build_s", "build s", ".1f"),
                                  ("anon_peak_gib", "anonymous peak GiB", ".2f"), ("file_gib", "file GiB", ".2f"),
                                  ("bits", "b/c", ".3f"), ("rerank_factor", "re-rank factor", ""),
                                  ("nprobe", "default nprobe", "")])
    sweep = markdown_table([{"nprobe": q, **v} for q, v in ivf["sweep"].items()],
                           [("nprobe", "nprobe", ""), ("recall", "recall 10@10", ".4f"), ("qps", "q/s", ".0f")])
    text = (f"{n} x {d}, {args.bits:g} b/c, {args.threads} thread(s): the partitioned build ({args.nlist} lists) took "
            + (f"{ratio:.2f}x the mean of the exhaustive ones" if ex else f"{ivf['build_s']:.1f} s (no exhaustive build)")
            + f".\n\n{table}\n\nThe partitioned index (agreement of each nprobe tried with every list's top 10, "
            f"on the build's rows: {ivf['nprobe_report']}):\n\n{sweep}")
    if plans:
        text += (f"\n\n`LPLRIndex.plan()` (design chosen on the first {args.plan_sample:,} rows; fast-scan: what faiss "
                 f"holds once every list is filled, outside the build):\n\n"
                 + markdown_table(plans, [("n", "rows", ","), ("nlist", "lists", ""), ("file_gib", "file GiB", ".2f"),
                                          ("bits", "b/c", ".3f"), ("build_peak_gib", "build peak GiB", ".2f"),
                                          ("fastscan_gib", "fast-scan GiB", ".2f")]))
    payload = {"machine": machine(), "args": {a: str(v) for a, v in vars(args).items()}, "rows": rows,
               "ratio": ratio, "plans": plans}
    write_results(args.out, f"synthetic-{n}x{d}-{args.bits:g}bc-nlist{args.nlist}", payload, text)
    print(text)
    return payload


if __name__ == "__main__":
    main()
