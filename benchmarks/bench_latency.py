"""Per-query cost of LPLRIndex's default search against faiss's fast-scan at equal bits, and
where its time goes, timed in alternating rounds.

Three indexes are built on the same data at each budget: LPLRIndex (defaults), faiss
``PQ{M}x4fs`` (``M = budget * d / 4`` sub-quantizers of 4 bits) and ``PCAR{m},PQ{m}x4fs``
(PCA, a random rotation, one 4-bit code per latent dimension: the largest even ``m`` whose
serialized index fits the budget, +2 %). Bits are measured: the LPLRIndex file, faiss's
``serialize_index`` output. Then, at one thread (faiss's OpenMP and the BLAS threads; the
builds use the default threads), ``--rounds`` rounds each time every index in turn: a block
of ``--queries`` single queries (one warm-up query first; the block's median) and one batch
of all the queries (``--batch``; its time). ``bench_faiss.py`` times each index in its own
block, minutes apart; on a shared machine the state drifts between blocks, so ratios here
come from medians over interleaved rounds, and each round's ratio range is reported.

The profile splits LPLRIndex's search into its stages, each timed alone on the same
queries in the same rounds: the projection (centring and ``R^T``, numpy or faiss), faiss's
fast-scan of the codes for ``rerank_factor * k`` candidates (the depth the index's build
measured, ``index.rerank_factor``), the exact re-rank of those
candidates in faiss (``IndexRefine`` minus the fast-scan), the scorer's Python and numpy
work around them (results from faiss's distances), and the index's own (argument checks,
snapshot, filters, ids, padding). It reads the index's private scorer (a profiler, not an
API).

``--same-codes`` also times ``PCAR{M},PQ{M}x4fs`` with ``M`` the 4-bit codes a vector LPLRIndex's
fast-scan scores (a reference beside the rivals, whatever its bits: on few rows its d x d PCA
matrix takes it over the budget). Both scan the same number of codes a vector, so its ratios
show what LPLRIndex's search costs beyond faiss's (projection, re-rank, Python), apart from the
code count its design chose.

    python benchmarks/bench_latency.py --synthetic --n 10000 --dim 384
    python benchmarks/bench_latency.py --synthetic --n 100000 --dim 384
    python benchmarks/bench_latency.py --synthetic --n 1000000 --dim 384 --max-train 50000 --rounds 4
    python benchmarks/bench_latency.py --dataset fashion-mnist

Results: ``results/reference/bench_latency/<dataset>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import lplr_index  # noqa: F401 (first: it loads faiss with this CPU's BLAS kernels)
import faiss
import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_faiss import add_source_args, check_source_args, load_source  # noqa: E402
from common import ROOT, machine, markdown_table, write_results  # noqa: E402
from faiss_baselines import serialized_nbytes  # noqa: E402

from lplr_index import LPLRIndex  # noqa: E402
from lplr_index.search import router  # noqa: E402

#: the profile's stages, in the order they run
STAGES = ("project", "fastscan", "rerank", "scorer_glue", "index_glue")


def faiss_bits(index: faiss.Index, n: int, d: int) -> float:
    return 8 * serialized_nbytes(index) / (n * d)


def build_pq(budget: float, xb: np.ndarray, xtrain: np.ndarray) -> tuple[faiss.Index, str]:
    d = xb.shape[1]
    M = max(1, int(budget * d / 4))
    while d % M:  # faiss's PQ needs sub-vectors of one width
        M -= 1
    index = faiss.index_factory(d, f"PQ{M}x4fs")
    index.train(xtrain)
    index.add(xb)
    return index, f"PQ{M}x4fs"


def build_pcar(budget: float, xb: np.ndarray, xtrain: np.ndarray) -> tuple[faiss.Index, str] | None:
    """The largest even ``m`` whose ``PCAR{m},PQ{m}x4fs`` fits ``budget`` (+2 %): the size
    predicted from the code and the serialized matrices, then checked by serializing."""
    n, d = xb.shape
    limit = 1.02 * budget * n * d / 8

    def predicted(m):  # codes, PCA (d x d, mean, eigenvalues), rotation (m x m), PQ tables
        return n * m / 2 + 4 * (d * d + 3 * d + m * m + 16 * m) + 1024

    m = max((m for m in range(2, d + 1, 2) if predicted(m) <= limit), default=None)
    while m:
        index, name = build_pcar_m(m, xb, xtrain)
        if serialized_nbytes(index) <= limit:
            return index, name
        m -= 2
    return None


def build_pcar_m(m: int, xb: np.ndarray, xtrain: np.ndarray) -> tuple[faiss.Index, str]:
    """``PCAR{m},PQ{m}x4fs``: ``m`` 4-bit codes a vector, one per PCA direction."""
    name = f"PCAR{m},PQ{m}x4fs"
    index = faiss.index_factory(xb.shape[1], name)
    index.train(xtrain)
    index.add(xb)
    return index, name


def fastscan_codes(index: LPLRIndex) -> int:
    """The 4-bit codes a vector LPLRIndex's fast-scan scores: its sub-quantizers (for two-level
    groups, the coarse codes)."""
    return int(index._fastscan().index.M)


def recall(I: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(I, truth)]))


def lplr_stages(index: LPLRIndex, k: int):
    """Callables ``(Q, P)`` running each cumulative part of LPLRIndex's default search (l2, ip)
    on queries ``Q`` projected to ``P``, and the projection; None where the search does not
    re-rank in faiss, or does not use fast-scan at all (8-bit codes)."""
    if not index.fastscan_ready:
        return None
    scorer = index._fastscan()
    if not scorer.refines:
        return None
    kc = min(index.ntotal, index.rerank_factor * k)  # the depth the build measured
    mean = scorer.view.encoder.mean if index.metric != "ip" else 0
    one = scorer.one(router._ONE_NORM2_LIMIT)  # the single-query function the index's search runs

    def project(Q):
        return scorer.project(np.ascontiguousarray(Q - mean, np.float32))

    return {
        "project": lambda Q, P: project(Q),
        "fastscan": lambda Q, P: scorer.index.search(P, kc),
        "refine": lambda Q, P: scorer._refined().search(P, kc),
        # a single query takes the index's lean path (router.search_one), a batch the general one
        "scorer": lambda Q, P: one(np.ascontiguousarray(Q, np.float32), kc, k) if len(Q) == 1 else scorer.search(Q, kc, k),
        "total": lambda Q, P: index.search(Q, k),
    }, project


def timed(fn, args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def measure(budget: float, xb: np.ndarray, xq: np.ndarray, truth: np.ndarray, args) -> dict:
    """Build the three indexes at ``budget`` and time them (and LPLRIndex's stages) in rounds."""
    n, d = xb.shape
    xtrain = xb[: args.max_train]
    t0 = time.perf_counter()
    lplr = LPLRIndex(d, bits_per_coordinate=budget, seed=args.seed).build(xb)
    row = {"budget": budget, "lplr_layout": str(lplr.layout.get("groups", lplr.codec)), "lplr_rerank_factor": lplr.rerank_factor,
           "lplr_bits": lplr.bits_per_coordinate, "lplr_build_s": time.perf_counter() - t0}
    searches = {"lplr": lambda Q: lplr.search(Q, args.k)}
    pq, row["pq_name"] = build_pq(budget, xb, xtrain)
    row["pq_bits"] = faiss_bits(pq, n, d)
    searches["pq"] = lambda Q: pq.search(Q, args.k)
    pcar = build_pcar(budget, xb, xtrain)
    if pcar is not None:
        row["pcar_name"] = pcar[1]
        row["pcar_bits"] = faiss_bits(pcar[0], n, d)
        searches["pcar"] = lambda Q: pcar[0].search(Q, args.k)
    if args.same_codes and lplr.fastscan_ready:  # a reference beside the rivals, whatever its bits
        same, row["same_name"] = build_pcar_m(min(d, fastscan_codes(lplr)), xb, xtrain)
        row["same_bits"] = faiss_bits(same, n, d)
        searches["same"] = lambda Q: same.search(Q, args.k)
    Qb = np.ascontiguousarray(xq[: args.batch])
    single: dict[str, list[float]] = {name: [] for name in searches}
    batch: dict[str, list[float]] = {name: [] for name in searches}
    got = lplr_stages(lplr, args.k)
    stages = {m: {s: [] for s in got[0]} for m in ("single", "batch")} if got else None
    with threadpool_limits(1):
        faiss.omp_set_num_threads(1)
        for name, search in searches.items():  # first searches: fast-scan set-up, caches; recall
            row[f"{name}_recall"] = recall(search(Qb)[1], truth, args.k)
        if got:
            PB = got[1](Qb)
            for fn in got[0].values():
                fn(Qb, PB)
        for r in range(args.rounds):
            start = r * args.queries
            qs = [np.ascontiguousarray(xq[i % len(xq) : i % len(xq) + 1]) for i in range(start, start + args.queries)]
            for name, search in searches.items():
                search(qs[0])
                single[name].append(statistics.median(timed(search, (q,)) for q in qs))
                batch[name].append(timed(search, (Qb,)))
            if got:
                Ps = [got[1](q) for q in qs]
                for s, fn in got[0].items():
                    stages["single"][s].append(statistics.median(timed(fn, (q, p)) for q, p in zip(qs, Ps)))
                    stages["batch"][s].append(timed(fn, (Qb, PB)))
    for name in searches:
        row[f"{name}_ms"] = 1e3 * statistics.median(single[name])
        row[f"{name}_qps"] = len(Qb) / statistics.median(batch[name])
    rivals = [name for name in ("pq", "pcar") if name in searches]
    best_ms = min(row[f"{r}_ms"] for r in rivals)
    best_qps = max(row[f"{r}_qps"] for r in rivals)
    row["latency_ratio"] = row["lplr_ms"] / best_ms
    row["qps_ratio"] = row["lplr_qps"] / best_qps
    per_round = [[single["lplr"][i] / min(single[r][i] for r in rivals) for i in range(args.rounds)],
                 [min(batch[r][i] for r in rivals) / batch["lplr"][i] for i in range(args.rounds)]]
    row["latency_ratio_rounds"] = [min(per_round[0]), max(per_round[0])]
    row["qps_ratio_rounds"] = [min(per_round[1]), max(per_round[1])]
    if "same" in searches:
        row["same_latency_ratio"] = row["lplr_ms"] / row["same_ms"]
        row["same_qps_ratio"] = row["lplr_qps"] / row["same_qps"]
    if got:
        for mode in ("single", "batch"):
            med = {s: statistics.median(v) for s, v in stages[mode].items()}
            scale = 1e6 if mode == "single" else 1e6 / len(Qb)  # us per query
            parts = {"project": med["project"], "fastscan": med["fastscan"],
                     "rerank": med["refine"] - med["fastscan"],
                     "scorer_glue": med["scorer"] - med["refine"] - med["project"],
                     "index_glue": med["total"] - med["scorer"]}
            row[f"profile_{mode}_us"] = {s: scale * parts[s] for s in STAGES}
            row[f"profile_{mode}_total_us"] = scale * med["total"]
    return row


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(rows))
    names = [("lplr", "LPLRIndex"), ("pq", "PQ fast-scan"), ("pcar", "PCAR + PQ fast-scan")]
    for j, (key, label) in enumerate(names):
        axes[0].bar(x + (j - 1) * 0.27, [r.get(f"{key}_ms", np.nan) for r in rows], 0.27, label=label)
        axes[1].bar(x + (j - 1) * 0.27, [r.get(f"{key}_qps", np.nan) for r in rows], 0.27, label=label)
    for ax, ylabel in zip(axes, ("single-query latency, ms (lower is better)", "batch queries / s (higher is better)")):
        ax.set_xticks(x, [f"{r['budget']:g} b/c" for r in rows])
        ax.set_ylabel(ylabel)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_source_args(p)
    p.add_argument("--queries", type=int, default=100, help="single queries per block")
    p.add_argument("--batch", type=int, default=1000, help="queries of the batch search")
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--max-train", type=int, default=30000, help="faiss training rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--same-codes", action="store_true",
                   help="also time PCAR{M},PQ{M}x4fs with M = LPLRIndex's fast-scan codes a vector (a reference "
                        "beside the rivals: where the gap is the code count rather than the search)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "reference" / "bench_latency")
    args = p.parse_args(argv)
    check_source_args(p, args)
    for name in ("queries", "batch", "rounds", "k", "max_train"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    data = load_source(args)
    name = data.name
    xq = np.ascontiguousarray(data.xq[: max(args.batch, args.queries * args.rounds)])
    flat = faiss.IndexFlatL2(data.xb.shape[1])
    flat.add(data.xb)
    truth = flat.search(xq[: args.batch], args.k)[1]
    del flat
    rows = []
    for b in args.bits:
        row = measure(b, data.xb, xq, truth, args)
        prof = row.get("profile_single_us", {})
        print(f"{name} {b:g} b/c: one query LPLRIndex {row['lplr_ms']:.3f} ms, {row['pq_name']} {row['pq_ms']:.3f}, "
              f"{row.get('pcar_name', '-')} {row.get('pcar_ms', float('nan')):.3f} -> {row['latency_ratio']:.2f}x; "
              f"batch {row['lplr_qps']:.0f} / {row['pq_qps']:.0f} / {row.get('pcar_qps', float('nan')):.0f} q/s -> "
              f"{row['qps_ratio']:.2f}x; recall {row['lplr_recall']:.3f} / {row['pq_recall']:.3f} / "
              f"{row.get('pcar_recall', float('nan')):.3f}; one query's us: "
              + ", ".join(f"{s} {v:.0f}" for s, v in prof.items()), flush=True)
        if "same_name" in row:
            print(f"  {row['same_name']} ({row['same_bits']:.3f} b/c, LPLRIndex's code count): one query "
                  f"{row['same_ms']:.3f} ms ({row['same_latency_ratio']:.2f}x), batch {row['same_qps']:.0f} q/s "
                  f"({row['same_qps_ratio']:.2f}x), recall {row['same_recall']:.3f}", flush=True)
        rows.append(row)
    for r in rows:
        for mode in ("single", "batch"):
            for s, v in r.get(f"profile_{mode}_us", {}).items():
                r[f"{mode}_{s}"] = v
    table = markdown_table(rows, [
        ("budget", "b/c", "g"), ("lplr_bits", "LPLRIndex bits", ".3f"), ("pq_bits", "PQ bits", ".3f"),
        ("pcar_bits", "PCAR bits", ".3f"), ("lplr_recall", "recall LPLR", ".3f"), ("pq_recall", "recall PQ", ".3f"),
        ("pcar_recall", "recall PCAR", ".3f"), ("lplr_ms", "LPLR ms", ".3f"), ("pq_ms", "PQ ms", ".3f"),
        ("pcar_ms", "PCAR ms", ".3f"), ("latency_ratio", "latency ratio", ".2f"), ("lplr_qps", "LPLR q/s", ".0f"),
        ("pq_qps", "PQ q/s", ".0f"), ("pcar_qps", "PCAR q/s", ".0f"), ("qps_ratio", "q/s ratio", ".2f")])
    profile = markdown_table(rows, [("budget", "b/c", "g")] + [
        (f"{m}_{s}", f"{'one query' if m == 'single' else 'batch, per query'}: {s} us", ".1f")
        for m in ("single", "batch") for s in STAGES])
    table = (f"{table}\n\nLatency ratio: LPLRIndex's single-query median over the quicker rival's; q/s ratio: "
             f"LPLRIndex's batch q/s over the faster rival's.\n\nWhere LPLRIndex's time goes (us per query; "
             f"stages timed alone in the same rounds):\n\n{profile}")
    if args.same_codes:
        same = markdown_table(rows, [
            ("budget", "b/c", "g"), ("same_name", "faiss, LPLR's code count", ""), ("same_bits", "its bits", ".3f"),
            ("same_recall", "its recall", ".3f"), ("same_ms", "its ms", ".3f"),
            ("same_latency_ratio", "LPLR latency / its", ".2f"), ("same_qps", "its q/s", ".0f"),
            ("same_qps_ratio", "LPLR q/s / its", ".2f")])
        table += (f"\n\nThe same number of 4-bit codes a vector as LPLRIndex's fast-scan scores, in faiss (a "
                  f"reference beside the rivals, whatever its bits: on few rows its d x d PCA takes it over the "
                  f"budget), timed in the same rounds:\n\n{same}")
    info = machine()  # timed at one thread, built at faiss's (and BLAS's) default
    info["build_threads"], info["faiss_threads"] = info["faiss_threads"], 1
    payload = {"benchmark": "bench_latency", "dataset": name, "n": int(len(data.xb)), "dim": int(data.xb.shape[1]),
               "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "machine": info, "rows": rows}
    write_results(args.out, name, payload, table)
    plot(rows, args.out / f"{name}.png", f"{name}, k={args.k}, 1 thread")
    print(table)
    return payload


if __name__ == "__main__":
    main()
