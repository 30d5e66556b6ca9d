"""Partitioned fast-scan (issue 27): recall 10@10 against queries per second.

One process, one thread (faiss and BLAS), all rows measured in the same run:

- ``lplr exhaustive``: ``LPLRIndex.search`` (fast-scan over every row + exact re-rank);
- ``lplr ivf``: :class:`lplr_index.search.ivf.IVFScorer` over the SAME index's codes
  (nothing re-encoded), ``nlist`` lists, for each ``nprobe``; its bits add the coarse
  centroids (float32, latent width), the list sizes and a ``ceil(log2 n)``-bit permutation
  (rows stored in list order) to the index's own bits; the 64-bit ids faiss keeps in memory
  are reported beside;
- ``lplr ivf (equal total)``: the same at a budget lowered so that index + partition
  costs the target bits (skip with ``--no-equal-total``);
- ``faiss IVF{nlist},PQ{M}x4fs``: the largest ``M`` dividing ``dim`` whose index file
  (codes, 64-bit ids, lists padded to blocks of 32, ``nlist x dim`` float32 centroids) fits the
  target bits, and the next larger ``M``; and ``PCAR{M},IVF{nlist},PQ{M}x4fs`` (PCA + random
  rotation, one 4-bit code per rotated PCA coordinate: the faiss analogue of a rotated LPLR
  latent) at the largest fitting ``M``. Their bits are measured (``faiss.serialize_index``);
  same ``nprobe`` values.

Usage (200,000 x 384 clustered synthetic data, 1 bit per coordinate; ~10 minutes on one core)::

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ivf.py
    .venv/bin/python benchmarks/bench_ivf.py --n 1000000 --nlist 4096      # later, at 10^6

Prints a Markdown table (and writes JSON with ``--json PATH``). Recall 10@10 is against the
exact neighbours of the float vectors; q/s is from the fastest of ``--repeats`` batches of all
queries (the machine may be shared: the load average is printed); latency is the median
single-query time. ``vs exhaustive``: recall of the LPLR rows against the exhaustive LPLR
search of the same index (what partitioning loses).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before faiss loads libgomp (shared machine)
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
from common import machine, make_embeddings, markdown_table  # noqa: E402

from lplr_index import LPLRIndex, recall_at_k  # noqa: E402
from lplr_index.search.ivf import IVFScorer  # noqa: E402


def make_clustered(n: int, n_queries: int, dim: int, *, decay: float, n_clusters: int, seed: int):
    """bench_faiss.py's seeded Gaussian mixture with a power-law spectrum (database, queries)."""
    from bench_faiss import make_synthetic

    ds = make_synthetic(n, n_queries, dim, decay=decay, n_clusters=n_clusters, seed=seed)
    return ds.xb, ds.xq


def timed(search, Q: np.ndarray, repeats: int, latency_queries: int):
    """(ids of all queries, fastest batch seconds, median single-query ms)."""
    _, I = search(Q)  # warm-up, and the results
    times = []  # the fastest batch counts: on a shared machine the others lose time to other processes
    for _ in range(repeats):
        t0 = time.perf_counter()
        search(Q)
        times.append(time.perf_counter() - t0)
    lat = []
    for i in range(min(latency_queries, len(Q))):
        q = Q[i : i + 1]
        t0 = time.perf_counter()
        search(q)
        lat.append(time.perf_counter() - t0)
    return np.asarray(I), float(np.min(times)), 1e3 * float(np.median(lat))


def partition_bits(ivf: IVFScorer) -> dict:
    """Bits per row the partition adds to a file (centroids, list sizes, permutation) and what faiss
    holds in memory instead of the permutation (64-bit ids)."""
    s = ivf.storage()
    file_bits = s["centroid_bits_per_row"] + s["list_size_bits_per_row"] + s["permutation_bits_per_row"]
    return {"file_bits_per_row": file_bits, **s}


def faiss_ivfpq_bits(index, n: int, dim: int) -> float:
    """Measured: the serialized index's bits per coordinate."""
    return 8 * len(faiss.serialize_index(index)) / (n * dim)


def faiss_bits_estimate(template: str, m: int, args) -> float:
    """Bits per coordinate of a faiss ``[PCAR{M},]IVF{nlist},PQ{M}x4fs`` file: codes and 64-bit ids,
    the lists padded to blocks of 32 (half a block a list on average), float32 coarse centroids,
    the PQ centroids, and a PCA (faiss stores the full dim x dim matrix and the m x dim one)."""
    n, d, nlist = args.n, args.dim, args.nlist
    width = m if template.startswith("PCA") else d  # what the coarse quantizer and the PQ see
    per_row = m / 2 + 8 + nlist * 16 * (m / 2) / n
    fixed = 4 * nlist * width + 4 * 16 * width
    if template.startswith("PCA"):
        fixed += 4 * (d * d + m * d + 3 * d + m)
    return 8 * (per_row + fixed / n) / d


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--n-queries", type=int, default=1000)
    p.add_argument("--data", choices=("clustered", "powerlaw"), default="clustered",
                   help="bench_faiss.py's Gaussian mixture, or common.make_embeddings")
    p.add_argument("--n-clusters", type=int, default=100)
    p.add_argument("--decay", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bits", type=float, default=1.0, help="target bits per coordinate")
    p.add_argument("--nlist", type=int, default=1024)
    p.add_argument("--nprobe", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--rerank-factor", type=int, default=4, help="candidates per result (LPLR rows)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--latency-queries", type=int, default=100)
    p.add_argument("--faiss-train", type=int, default=100_000, help="rows faiss's IVF-PQ trains on")
    p.add_argument("--faiss-factory", nargs="*", default=["IVF{nlist},PQ{M}x4fs", "PCAR{M},IVF{nlist},PQ{M}x4fs"],
                   help="faiss index_factory templates ({M} chosen to fit --bits, {nlist})")
    p.add_argument("--no-equal-total", action="store_true", help="skip the LPLR-IVF built at the lowered budget")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    faiss.omp_set_num_threads(args.threads)
    load0 = os.getloadavg()
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    if args.data == "clustered":
        X, Q = make_clustered(args.n, args.n_queries, args.dim, decay=args.decay,
                              n_clusters=args.n_clusters, seed=args.seed)
    else:
        X, Q = make_embeddings(args.n, args.dim, decay=args.decay, n_queries=args.n_queries, seed=args.seed)
    flat = faiss.IndexFlatL2(args.dim)
    flat.add(X)
    _, gt = flat.search(Q, args.k)
    del flat
    log(f"data + ground truth {time.perf_counter() - t0:.1f}s")
    k, kc = args.k, args.rerank_factor * args.k
    rows = []

    def row(method, nprobe, bits, I, batch_s, lat_ms, ref=None, **extra):
        r = {"method": method, "nprobe": nprobe, "bits_per_coord": bits,
             "recall": recall_at_k(I, gt, k), "qps": len(Q) / batch_s, "latency_ms": lat_ms, **extra}
        if ref is not None:
            r["vs_exhaustive"] = recall_at_k(I, ref, k)
        rows.append(r)
        log(f"{method:34s} nprobe={nprobe!s:>5} bits={bits:.3f} recall={r['recall']:.3f} "
            f"qps={r['qps']:.0f} 1q={lat_ms:.2f}ms")

    def lplr_rows(budget, label):
        t = time.perf_counter()
        index = LPLRIndex(args.dim, bits_per_coordinate=budget, seed=args.seed).build(X)
        build_s = time.perf_counter() - t
        view = index._state.view  # the snapshot's codes (until LPLRIndex exposes the backend)
        I, b, lat = timed(lambda q: index.search(q, k, rerank_factor=args.rerank_factor), Q,
                          args.repeats, args.latency_queries)
        ref = I
        row(f"lplr exhaustive {label}", "all", index.bits_per_coordinate, I, b, lat, build_s=build_s)
        t = time.perf_counter()
        ivf = IVFScorer(view, args.nlist, seed=args.seed)
        ivf_s = time.perf_counter() - t
        pb = partition_bits(ivf)
        total = index.bits_per_coordinate + pb["file_bits_per_row"] / args.dim
        with_ids = index.bits_per_coordinate + (pb["centroid_bits_per_row"] + pb["list_size_bits_per_row"]
                                                + pb["ids_bits_per_row"]) / args.dim
        for nprobe in args.nprobe:
            if nprobe > args.nlist:
                continue
            I, b, lat = timed(lambda q: ivf.search(q, kc, k, nprobe=nprobe)[:2], Q,
                              args.repeats, args.latency_queries)
            row(f"lplr ivf{args.nlist} {label}", nprobe, total, I, b, lat, ref=ref, build_s=ivf_s,
                bits_with_64bit_ids=with_ids)
        return index, ivf, pb

    index, ivf, pb = lplr_rows(args.bits, f"{args.bits:g} b/c")
    rank, M_lplr = index.rank, ivf.M
    extra_bc = pb["file_bits_per_row"] / args.dim
    if not args.no_equal_total:
        del index, ivf
        lplr_rows(args.bits - extra_bc, f"{args.bits - extra_bc:.3f} b/c")

    # faiss: for each factory, the largest M whose estimated file fits the target bits (and for
    # IVF-PQ, whose M must divide dim, the next larger M too); the bits shown are measured
    xt = X[np.sort(np.random.default_rng(args.seed).choice(len(X), min(len(X), args.faiss_train), replace=False))]
    for template in args.faiss_factory:
        pca = template.startswith("PCA")
        Ms = [m for m in range(2, args.dim + 1, 2) if pca or args.dim % m == 0]
        fits = [m for m in Ms if faiss_bits_estimate(template, m, args) <= args.bits]
        over = [m for m in Ms if faiss_bits_estimate(template, m, args) > args.bits]
        chosen = fits[-1:] + ([] if pca else over[:1])
        for m in chosen:
            name = template.format(M=m, nlist=args.nlist)
            t = time.perf_counter()
            fx = faiss.index_factory(args.dim, name)
            fx.train(xt)
            fx.add(X)
            build_s = time.perf_counter() - t
            bits = faiss_ivfpq_bits(fx, args.n, args.dim)
            ivf_of = faiss.extract_index_ivf(fx)
            for nprobe in args.nprobe:
                if nprobe > args.nlist:
                    continue
                ivf_of.nprobe = nprobe  # (a pre-transform rejects IVF search parameters)
                I, b, lat = timed(lambda q: fx.search(q, k), Q, args.repeats, args.latency_queries)
                row(f"faiss {name}", nprobe, bits, I, b, lat, build_s=build_s)
            del fx, ivf_of

    load1 = os.getloadavg()
    cols = [("method", "method", ""), ("nprobe", "nprobe", ""), ("bits_per_coord", "b/c (file)", ".3f"),
            ("bits_with_64bit_ids", "b/c with 64-bit ids", ".3f"), ("recall", "recall 10@10", ".3f"),
            ("vs_exhaustive", "vs exhaustive", ".3f"),
            ("qps", "q/s (batch)", ",.0f"), ("latency_ms", "1-query ms", ".2f"), ("build_s", "build s", ".1f")]
    print(f"\n{args.n:,} x {args.dim} {args.data} (seed {args.seed}), {len(Q)} queries, k={k}, "
          f"LPLR re-rank {kc} candidates, nlist={args.nlist}, {args.threads} thread(s); "
          f"LPLR rank {rank}, {M_lplr} fast-scan sub-quantizers")
    print(f"partition per row: centroids {pb['centroid_bits_per_row']:.2f} bits, list sizes "
          f"{pb['list_size_bits_per_row']:.2f}, permutation {pb['permutation_bits_per_row']:.0f} "
          f"(faiss's ids in memory: 64), list padding in memory {pb['block_padding_bits_per_row']:.1f}")
    print(f"load average (1, 5, 15 min) at start {tuple(round(x, 2) for x in load0)}, "
          f"at end {tuple(round(x, 2) for x in load1)}\n")
    print(markdown_table(rows, cols))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k_: str(v) for k_, v in vars(args).items()},
                                         "machine": machine(), "partition": pb,
                                         "load_start": load0, "load_end": load1, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
