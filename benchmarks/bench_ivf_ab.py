"""LPLRIndex's partitioned search against faiss's IVF fast-scan, timed alternately in one process
(issue 27: "at or above faiss IVF fast-scan at every recall level faiss reaches").

``bench_ivf.py`` times each index in its own block, minutes apart, and this machine's speed
drifts by 25-40 % between blocks: two of its runs at 10^6 put faiss 1.05-1.86x ahead at the
same recall, a third behind. Here both indexes are built once (or loaded from ``--index-dir``),
then every round times each ``nprobe`` of each index in turn, the order of the two swapped every
round: a batch of all queries, then ``--latency-queries`` single queries (median). From the
medians over ``--rounds``:

- each index's recall 10@10 and q/s at each nprobe;
- **along faiss's recall**: at each recall faiss reaches, LPLR's q/s there, read off its own
  curve (time per query interpolated linearly between the two points around that recall;
  where LPLR's fastest point already reaches more recall, its q/s there, a bound in faiss's
  favour), and the ratio LPLR / faiss; the same per round gives the ratio's range. LPLR's
  curve is the upper envelope of its points over every nprobe and every re-rank depth timed:
  its measured default (``rerank_factor`` None) and ``--lplr-depths`` (default 1: the
  fast-scan's own top k, re-scored exactly and re-sorted, a search-time setting as ``nprobe``
  is). faiss's IVF fast-scan has no re-rank; its one setting is ``nprobe``.

LPLR is ``LPLRIndex(dim, bits_per_coordinate=b, nlist=nlist)``; faiss is ``--faiss-factory``
(default ``PCAR{M},IVF{nlist},PQ{M}x4fs``, the best faiss design at 10^6 and 10^7 in
``bench_ivf.py``'s runs) at the largest ``M`` whose serialized file fits the bits, trained on
``--faiss-train`` sampled rows, as ``bench_ivf.py`` builds it. 1 thread (faiss's OpenMP and the
BLAS); ``--busy`` keeps the other core busy with a spinning process meanwhile (a user's
machine running other work).

Usage::

    python benchmarks/bench_ivf_ab.py --n 1000000 --nlist 1024 --bits 1 --data-dir data \\
        --index-dir /tmp/ivf_ab --out results/reference/bench_ivf_ab
    python benchmarks/bench_ivf_ab.py --n 20000 --nlist 64 --nprobe 1 4 --rounds 2 \\
        --n-queries 200 --out /tmp/ivf_ab_smoke                                # smoke run

Writes ``{out}/{data}-{n}x{dim}-{bits}bc-nlist{nlist}[-busy].{json,md,png}``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before faiss loads libgomp (shared machine)

import argparse  # noqa: E402
import multiprocessing  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import lplr_index  # noqa: F401, E402 (first: it loads faiss with this CPU's BLAS kernels)
import faiss  # noqa: E402
import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
from bench_ivf import (FAISS_ADD_ROWS, factory_nlist, faiss_candidates, ground_truth, make_clustered,  # noqa: E402
                       npy_split, plot)
from common import ROOT, machine, markdown_table, write_results  # noqa: E402

from lplr_index import LPLRIndex, recall_at_k  # noqa: E402
from lplr_index.search.ivf import default_nlist  # noqa: E402

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--n-queries", type=int, default=1000)
    p.add_argument("--data", choices=["clustered", "npy"], default="clustered",
                   help="bench_ivf.py's Gaussian mixture, or a real set (--npy: its last --n-queries rows query)")
    p.add_argument("--npy", type=Path)
    p.add_argument("--n-clusters", type=int, default=100)
    p.add_argument("--decay", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, help="bench_ivf.py's memory-mapped copy of the clustered set")
    p.add_argument("--bits", type=float, default=1.0, help="target bits per coordinate (both files)")
    p.add_argument("--nlist", type=int, help="lists; default: default_nlist(n)")
    p.add_argument("--nprobe", type=int, nargs="+", default=[1, 2, 4, 8, 16],
                   help="values above nlist are skipped")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--lplr-depths", type=int, nargs="*", default=[1],
                   help="re-rank depths (rerank_factor) LPLR is also timed at beside its measured default; "
                        "its curve is the upper envelope of all its points")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--latency-queries", type=int, default=100)
    p.add_argument("--faiss-factory", default="PCAR{M},IVF{nlist},PQ{M}x4fs")
    p.add_argument("--faiss-train", type=int, default=327_680, help="rows faiss trains on")
    p.add_argument("--busy", action="store_true", help="keep the other core busy (a spinning process)")
    p.add_argument("--index-dir", type=Path, help="save the built indexes there; a later run loads them")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "runs" / "bench_ivf_ab")
    p.add_argument("--cache", type=Path, default=ROOT / "results" / "runs" / "cache" / "bench_ivf",
                   help="exact neighbours, shared with bench_ivf.py")
    args = p.parse_args(argv)
    if args.data == "npy" and args.npy is None:
        p.error("--data npy needs --npy FILE")
    if args.rounds < 1 or args.latency_queries < 1:
        p.error(f"--rounds and --latency-queries must be at least 1, got {args.rounds} and {args.latency_queries}")
    if any(f < 1 for f in args.lplr_depths):
        p.error(f"--lplr-depths must be at least 1, got {args.lplr_depths}")
    return args


def envelope(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points (recall, seconds a query) no other point beats on both (as much recall or more
    in as little time or less), by recall: LPLR's curve over every nprobe and re-rank depth."""
    best, kept = float("inf"), []
    for r, t in sorted(points, key=lambda rt: (-rt[0], rt[1])):
        if t < best:
            kept.append((r, t))
            best = t
    return kept[::-1]


def lplr_qps_at(points: list[tuple[float, float]], recall: float) -> float | None:
    """LPLR's q/s at ``recall`` on its curve ``points`` (recall, seconds a query; by nprobe):
    the time of the first point reaching it, interpolated linearly from the point before when
    that one falls short; None when no point reaches it."""
    for i, (r, t) in enumerate(points):
        if r >= recall:
            if i == 0:
                return 1 / t
            r0, t0 = points[i - 1]
            if r0 >= recall or r == r0:
                return 1 / t
            return 1 / (t0 + (recall - r0) / (r - r0) * (t - t0))
    return None


def _spin() -> None:
    while True:
        pass


def build_or_load(path: Path | None, build, save, load):
    if path is not None and path.exists():
        return load(str(path)), True
    index = build()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save(index, str(path))
    return index, False


def main(argv=None) -> dict:
    args = parse_args(argv)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    faiss.omp_set_num_threads(1)
    n, d, k = args.n, args.dim, args.k
    if args.data == "npy":
        X, Q = npy_split(args.npy, args.n_queries)
        n, d = X.shape
        label, key = args.npy.stem, f"{args.npy.stem}-q{args.n_queries}-k{k}"
    else:
        X, Q = make_clustered(n, args.n_queries, d, decay=args.decay, n_clusters=args.n_clusters, seed=args.seed,
                              data_dir=args.data_dir, log=log)
        label = "synthetic"
        key = f"clustered-{n}x{d}-q{args.n_queries}-seed{args.seed}-c{args.n_clusters}-decay{args.decay:g}-k{k}"
    gt = ground_truth(X, Q, k, args.cache / f"gt-{key}.npy", log)
    nlist = args.nlist or default_nlist(n)
    nprobes = sorted({p for p in args.nprobe if 1 <= p <= nlist})
    if not nprobes:
        raise SystemExit(f"bench_ivf_ab: no --nprobe within 1 to nlist={nlist}, got {args.nprobe}")
    name = f"{label}-{n}x{d}-{args.bits:g}bc-nlist{nlist}" + ("-busy" if args.busy else "")
    where = args.index_dir
    with threadpool_limits(1):
        t = time.perf_counter()
        lplr, loaded = build_or_load(
            where and where / f"{key}-{args.bits:g}bc-nlist{nlist}.lplr",
            lambda: LPLRIndex(d, bits_per_coordinate=args.bits, nlist=nlist, seed=args.seed).build(X),
            lambda ix, p: ix.save(p), LPLRIndex.load)
        log(f"lplr {'loaded' if loaded else 'built'} in {time.perf_counter() - t:.1f} s: "
            f"{lplr.bits_per_coordinate:.3f} b/c, default nprobe {lplr.nprobe}")
        lists = factory_nlist(args.faiss_factory, nlist)
        fx = None
        for m in faiss_candidates(args.faiss_factory, n, d, lists, args.bits):
            fname = args.faiss_factory.format(M=m, nlist=nlist)

            def make(fname=fname):
                sample = np.sort(np.random.default_rng(args.seed).choice(n, min(n, args.faiss_train), replace=False))
                ix = faiss.index_factory(d, fname)
                ix.train(np.ascontiguousarray(X[sample]))
                for s in range(0, n, FAISS_ADD_ROWS):
                    ix.add(np.ascontiguousarray(X[s : s + FAISS_ADD_ROWS]))
                return ix

            t = time.perf_counter()
            fx, loaded = build_or_load(where and where / f"{key}-{fname}.faiss", make, faiss.write_index,
                                       faiss.read_index)
            faiss_bits = 8 * len(faiss.serialize_index(fx)) / (n * d)
            log(f"faiss {fname} {'loaded' if loaded else 'built'} in {time.perf_counter() - t:.1f} s: "
                f"{faiss_bits:.3f} b/c")
            if faiss_bits <= args.bits:
                break
            fx = None
        if fx is None:
            raise SystemExit(f"bench_ivf_ab: no M of {args.faiss_factory} fits {args.bits:g} b/c")
        ivf = faiss.extract_index_ivf(fx)

        def lplr_search(depth):
            return lambda q, p: lplr.search(q, k, nprobe=p, rerank_factor=depth)

        def faiss_search(q, p):
            ivf.nprobe = p  # (a pre-transform rejects IVF search parameters)
            return fx.search(q, k)

        # LPLR at its measured depth (rerank_factor None), and at each other depth asked for
        depths = {"lplr": None} | {f"lplr@{f}": f for f in sorted(set(args.lplr_depths) - {lplr.rerank_factor})}
        searches = {name: lplr_search(f) for name, f in depths.items()} | {"faiss": faiss_search}
        recall = {(s, p): recall_at_k(np.asarray(f(Q, p)[1]), gt, k) for s, f in searches.items() for p in nprobes}
        singles = [Q[i : i + 1] for i in range(min(args.latency_queries, len(Q)))]
        batch = {key_: [] for key_ in recall}
        single = {key_: [] for key_ in recall}
        spinner = None
        if args.busy:
            spinner = multiprocessing.get_context("fork").Process(target=_spin, daemon=True)
            spinner.start()
        try:
            for r in range(args.rounds):
                order = list(searches) if r % 2 == 0 else list(reversed(searches))
                for p in nprobes:
                    for s in order:
                        f = searches[s]
                        t0 = time.perf_counter()
                        f(Q, p)
                        batch[s, p].append(time.perf_counter() - t0)
                        f(singles[0], p)
                        lat = []
                        for q in singles:
                            t0 = time.perf_counter()
                            f(q, p)
                            lat.append(time.perf_counter() - t0)
                        single[s, p].append(statistics.median(lat))
                log(f"round {r + 1}/{args.rounds}: " + ", ".join(
                    f"nprobe {p} {len(Q) / batch['lplr', p][-1]:.0f} / {len(Q) / batch['faiss', p][-1]:.0f} q/s"
                    for p in nprobes))
        finally:
            if spinner is not None:
                spinner.terminate()
                spinner.join()
    nq = len(Q)
    rows = []
    methods = [(name, f"lplr ivf{nlist}" + ("" if f is None else f", depth {f}"), lplr.bits_per_coordinate,
                lplr.rerank_factor if f is None else f) for name, f in depths.items()]
    for s, label_s, bits, depth in methods + [("faiss", f"faiss {fname}", faiss_bits, None)]:
        for p in nprobes:
            b = batch[s, p]
            star = "*" if s == "lplr" and p == lplr.nprobe else ""
            rows.append({"method": label_s, "kind": "lplr" if s in depths else s, "nprobe": p, "depth": depth,
                         "nprobe_label": f"{p}{star}", "bits_per_coord": bits,
                         "recall": recall[s, p], "qps": nq / statistics.median(b), "qps_min": nq / max(b),
                         "qps_max": nq / min(b), "latency_ms": 1e3 * statistics.median(single[s, p])})

    def curve(seconds):  # LPLR's envelope over every nprobe and depth, ``seconds(name, nprobe)`` a query
        return envelope([(recall[name, q], seconds(name, q)) for name in depths for q in nprobes])

    along = []
    for p in nprobes:
        want = recall["faiss", p]
        f_qps = nq / statistics.median(batch["faiss", p])
        got = lplr_qps_at(curve(lambda name, q: statistics.median(batch[name, q]) / nq), want)
        per_round = []
        for r in range(args.rounds):
            g = lplr_qps_at(curve(lambda name, q: batch[name, q][r] / nq), want)
            if g is not None:
                per_round.append(g / (nq / batch["faiss", p][r]))
        lat = lplr_qps_at(curve(lambda name, q: statistics.median(single[name, q])), want)
        along.append({"faiss_nprobe": p, "faiss_recall": want, "faiss_qps": f_qps, "lplr_qps": got,
                      "ratio": None if got is None else got / f_qps,
                      "ratio_rounds": [min(per_round), max(per_round)] if per_round else None,
                      "faiss_latency_ms": 1e3 * statistics.median(single["faiss", p]),
                      "lplr_latency_ms": None if lat is None else 1e3 / lat})
    for a in along:
        a["ratio_rounds_text"] = "-" if a["ratio_rounds"] is None else "{:.2f}-{:.2f}".format(*a["ratio_rounds"])
        a["latency_ratio"] = None if a["lplr_latency_ms"] is None else a["lplr_latency_ms"] / a["faiss_latency_ms"]
    for r in rows:
        r["depth_text"] = "-" if r["depth"] is None else str(r["depth"])
    t1 = markdown_table(rows, [("method", "index", "s"), ("nprobe_label", "nprobe", "s"),
                               ("depth_text", "re-rank depth", "s"), ("bits_per_coord", "b/c", ".3f"),
                               ("recall", "recall 10@10", ".3f"), ("qps", "q/s (median)", ",.0f"),
                               ("qps_min", "q/s min", ",.0f"), ("qps_max", "q/s max", ",.0f"),
                               ("latency_ms", "1-query ms", ".3f")])
    t2 = markdown_table(along, [("faiss_nprobe", "faiss nprobe", "d"), ("faiss_recall", "faiss recall", ".3f"),
                                ("faiss_qps", "faiss q/s", ",.0f"), ("lplr_qps", "LPLR q/s at that recall", ",.0f"),
                                ("ratio", "LPLR / faiss q/s", ".2f"), ("ratio_rounds_text", "per round", "s"),
                                ("faiss_latency_ms", "faiss 1-query ms", ".3f"),
                                ("lplr_latency_ms", "LPLR 1-query ms there", ".3f"),
                                ("latency_ratio", "latency LPLR / faiss", ".2f")])
    info = machine()
    info["faiss_threads"] = 1
    table = (f"{label}, {n:,} x {d}, {nq} queries, k={k}, nlist={nlist}, 1 thread"
             f"{', the other core kept busy' if args.busy else ''}; {args.rounds} rounds alternating the two "
             f"indexes nprobe by nprobe (q/s: median batch of all queries; min / max over the rounds; 1-query: "
             f"median of the rounds' medians of {len(singles)}). LPLR's default nprobe is marked *; re-rank "
             f"depth: candidates a result (``rerank_factor``; LPLR's measured default first, then each "
             f"other depth asked for).\n\n{t1}\n\n"
             f"Along faiss's recall (LPLR's time a query interpolated on its curve, the upper envelope of "
             f"all its points; where its fastest point already reaches more recall, its q/s there):\n\n{t2}")
    payload = {"benchmark": "bench_ivf_ab", "n": n, "dim": d, "nlist": nlist, "args": {
        k_: (str(v) if isinstance(v, Path) else v) for k_, v in vars(args).items()}, "machine": info,
        "rows": rows, "along_faiss": along, "batch_s": {f"{s}/{p}": v for (s, p), v in batch.items()},
        "single_s": {f"{s}/{p}": v for (s, p), v in single.items()}}
    write_results(args.out, name, payload, table)
    plot(rows, args.out / f"{name}.png", f"{label} {n:,} x {d}, {args.bits:g} b/c, nlist {nlist}, 1 thread, "
         f"alternating rounds{', one core busy' if args.busy else ''}", k)
    print(table)
    return payload


if __name__ == "__main__":
    main()
