"""Codes of the vectors against codes of their residuals to the list centroid, at equal bits (issue 27).

A partitioned ``LPLRIndex`` stores each vector's own codes in its list. The alternative stores the
codes of ``x - c_l``, the vector's residual to the centroid of its list, which has less energy to
spend the bits on. This measures both the way the codes' quality shows: recall 10@10 of an exact
scan of the decoded vectors in each query's ``nprobe`` nearest lists (no fast-scan, no re-rank
depth: what an index scoring these codes exactly would reach), at equal total bits per coordinate
(codes, shared factor, centroids, list numbers).

Variants:

- ``vectors``: ``LPLRIndex(nlist=--nlist)`` as it is built today (its own search's recall beside,
  a check of the method: equal where fast-scan and the re-rank lose nothing);
- ``residuals, own basis``: faiss k-means centroids in the input space, an exhaustive ``LPLRIndex``
  fitted to the residuals at the bits left after the centroids and list numbers, the decoded
  vector ``c_l + decode(code)``;
- ``vectors, same lists``: an exhaustive ``LPLRIndex`` of the vectors at that same budget, scanned
  in the residual variant's lists (so the residual alone differs);
- ``shared basis, vectors`` / ``shared basis, residuals``: a simulation of the route faiss's IVF
  fast-scan takes natively (``by_residual``): the ``vectors`` index's principal basis and code
  count, one 16-level codebook shared by the latent coordinates after a Haar rotation (what a
  class of one-direction groups is), trained on the latent vectors or on their residuals to
  latent k-means centroids; same codes, same lists, same centroids.

    python benchmarks/bench_ivf_residual.py --n 1000000 --data-dir data          # 10^6 clustered, ~8 min
    python benchmarks/bench_ivf_residual.py --data powerlaw --n 1000000             # no clusters
    python benchmarks/bench_ivf_residual.py --data fashion-mnist                    # 60,000 x 784 pixels
    python benchmarks/bench_ivf_residual.py --data npy --npy vectors.npy            # any set: its last rows query

Results: ``results/reference/bench_ivf_residual/<data>-<n>x<d>-<bits>bc-nlist<nlist>.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, machine, markdown_table, write_results  # noqa: E402

NPROBE = (1, 2, 4, 8, 16)
LEVELS = 16  # 4-bit codes


def probed_recall(Xh: np.ndarray, lists: np.ndarray, probes: np.ndarray, Q: np.ndarray, gt: np.ndarray,
                  nlist: int, k: int, nprobes) -> dict[str, float]:
    """Recall 10@10 of the exact top ``k`` among the decoded rows ``Xh`` of each query's first
    ``nprobe`` lists in ``probes``, for each ``nprobe``, and (``"all"``) among every row."""
    import faiss

    from lplr_index import recall_at_k

    order = np.argsort(lists, kind="stable")
    off = np.concatenate([[0], np.cumsum(np.bincount(lists, minlength=nlist))])
    out = {}
    for p in nprobes:
        hits = 0
        for q, probe, truth in zip(Q, probes, gt):
            rows = np.concatenate([order[off[c] : off[c + 1]] for c in probe[:p]])
            dist = ((Xh[rows] - q) ** 2).sum(1)
            hits += len(np.intersect1d(rows[np.argsort(dist, kind="stable")[:k]], truth))
        out[str(p)] = hits / (len(Q) * k)
    out["all"] = float(recall_at_k(faiss.knn(Q, Xh, k)[1], gt, k))
    return out


def kmeans(X: np.ndarray, nlist: int, seed: int, rows: int):
    """faiss k-means centroids trained on ``rows`` seeded rows, the index that searches them, and
    every row's nearest (by blocks)."""
    import faiss

    sample = np.sort(np.random.default_rng(seed).choice(len(X), min(len(X), rows), replace=False))
    km = faiss.Kmeans(X.shape[1], nlist, niter=10, seed=seed + 1, max_points_per_centroid=256)
    km.train(np.ascontiguousarray(X[sample], np.float32))
    lists = np.concatenate([km.index.search(np.ascontiguousarray(X[s : s + (1 << 17)], np.float32), 1)[1][:, 0]
                            for s in range(0, len(X), 1 << 17)])
    return km.centroids.astype(np.float32), km.index, lists


def scalar_codes(Z: np.ndarray, seed: int) -> np.ndarray:
    """``Z`` quantized by one 16-level codebook (1-D k-means on a seeded sample of its entries)."""
    import faiss

    flat = Z.ravel()
    sample = np.random.default_rng(seed).choice(len(flat), min(len(flat), 1 << 20), replace=False)
    km = faiss.Kmeans(1, LEVELS, niter=25, seed=seed)
    km.train(np.ascontiguousarray(flat[sample, None], np.float32))
    levels = np.sort(km.centroids[:, 0])
    edges = (levels[1:] + levels[:-1]) / 2
    return levels[np.searchsorted(edges, Z)]


def load(args):
    """(database, queries, name) of ``--data``; ``npy``: the file's last ``--n-queries`` rows query the others."""
    if args.data == "npy":
        from bench_ivf import npy_split

        return (*npy_split(args.npy, args.n_queries), args.npy.stem)
    if args.data == "fashion-mnist":
        sys.path.insert(0, str(ROOT))
        from pipelines.datasets import load_fashion_mnist

        X = load_fashion_mnist("train").images.reshape(-1, 784).astype(np.float32)
        Q = load_fashion_mnist("test").images.reshape(-1, 784).astype(np.float32)[: args.n_queries]
        return X, Q, "fashion-mnist"
    if args.data == "powerlaw":
        from common import make_embeddings

        X, Q = make_embeddings(args.n, args.dim, decay=0.5, n_queries=args.n_queries, seed=args.seed)
        return X, Q, "powerlaw"
    from bench_ivf import make_clustered

    X, Q = make_clustered(args.n, args.n_queries, args.dim, decay=0.5, n_clusters=100, seed=args.seed,
                          data_dir=args.data_dir, log=print)
    return X, Q, "clustered"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", choices=("clustered", "powerlaw", "fashion-mnist", "npy"), default="clustered")
    p.add_argument("--npy", type=Path, default=None, help="the .npy file of --data npy")
    p.add_argument("--n", type=int, default=1_000_000, help="rows (synthetic data)")
    p.add_argument("--dim", type=int, default=384, help="dimension (synthetic data)")
    p.add_argument("--bits", type=float, default=1.0)
    p.add_argument("--nlist", type=int, default=None, help="lists (default: default_nlist(n))")
    p.add_argument("--n-queries", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=None, help="bench_ivf.py's --data-dir (clustered data)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "reference" / "bench_ivf_residual")
    args = p.parse_args(argv)
    if (args.data == "npy") != (args.npy is not None):
        p.error("--npy goes with --data npy, and --data npy needs --npy")
    import faiss
    from threadpoolctl import threadpool_limits

    from lplr_index import LPLRIndex, recall_at_k
    from lplr_index.search.ivf import default_nlist

    faiss.omp_set_num_threads(1)
    t0 = time.perf_counter()
    X, Q, data = load(args)
    Q = np.ascontiguousarray(Q, np.float32)
    n, d = X.shape
    nlist = args.nlist or default_nlist(n)
    if not 1 <= nlist <= n // 16:
        p.error(f"--nlist must be 1 to n / 16 ({n // 16}), got {nlist}")
    nprobes = [q for q in NPROBE if q <= nlist]
    k, rows = 10, []
    with threadpool_limits(1):
        gt = faiss.knn(Q, X, k)[1]

        def add(variant, bits, got, **extra):
            rows.append({"variant": variant, "bits": bits, **{f"r{q}": v for q, v in got.items()}, **extra})
            print(f"{variant}: {bits:.3f} b/c, {got} ({time.perf_counter() - t0:.0f} s)", flush=True)

        # today's partitioned index: the vectors' own codes
        A = LPLRIndex(d, bits_per_coordinate=args.bits, nlist=nlist, seed=args.seed).build(X)
        sc = A._state.ivf()
        lists_a = sc.assignment()
        probes_a = sc._quantizer.search(sc._queries(Q), max(nprobes))[1]
        add("vectors", A.bits_per_coordinate, probed_recall(A.reconstruct(), lists_a, probes_a, Q, gt, nlist, k, nprobes),
            rank=A.rank, index_search={str(q): float(recall_at_k(A.search(Q, k, nprobe=q)[1], gt, k)) for q in nprobes})
        budget, enc, codes = A.nbytes, sc.view.encoder, A.layout["codes_per_vector"]
        del A, sc

        # residuals to input-space centroids, an LPLR fitted to them at the bits left
        C, coarse, lists = kmeans(X, nlist, args.seed, 64 * nlist)
        overhead = C.nbytes + n * max(1, int(np.ceil(np.log2(nlist)))) / 8  # centroids, list numbers
        bits_left = 8 * (budget - overhead) / (n * d)
        probes = coarse.search(Q, max(nprobes))[1]
        R = np.empty((n, d), np.float32)
        for s in range(0, n, 1 << 17):
            R[s : s + (1 << 17)] = X[s : s + (1 << 17)] - C[lists[s : s + (1 << 17)]]
        energy = float(np.square(R, dtype=np.float64).sum() / np.square(np.asarray(X), dtype=np.float64).sum())
        B = LPLRIndex(d, bits_per_coordinate=bits_left, seed=args.seed).build(R)
        del R
        Xh = B.reconstruct()
        Xh += C[lists]
        add("residuals, own basis", 8 * (B.nbytes + overhead) / (n * d),
            probed_recall(Xh, lists, probes, Q, gt, nlist, k, nprobes), rank=B.rank, residual_energy=energy)
        del B, Xh
        V = LPLRIndex(d, bits_per_coordinate=bits_left, seed=args.seed).build(X)
        add("vectors, same lists", 8 * (V.nbytes + overhead) / (n * d),
            probed_recall(V.reconstruct(), lists, probes, Q, gt, nlist, k, nprobes), rank=V.rank)
        del V

        # the shared-basis simulation: the vectors index's basis, its code count, one codebook
        from lplr_index.vq import haar_rotation

        top = np.asarray(enc.RT, np.float32)[:, :codes]  # principal directions first
        H = haar_rotation(codes, args.seed).astype(np.float32)
        basis = top @ H  # (d, codes): rotated latent coordinates
        mean = np.asarray(enc.mean, np.float32)
        Z = np.concatenate([(np.asarray(X[s : s + (1 << 17)]) - mean) @ basis for s in range(0, n, 1 << 17)])
        Cz, coarse_z, lists_z = kmeans(Z, nlist, args.seed, 64 * nlist)
        probes_z = coarse_z.search(np.ascontiguousarray((Q - mean) @ basis), max(nprobes))[1]
        same_bits = 8 * (n * codes / 2 + Cz.nbytes + n * max(1, int(np.ceil(np.log2(nlist)))) / 8
                         + top.nbytes + mean.nbytes) / (n * d)  # codes, centroids, lists, basis, mean
        for variant, shift in (("shared basis, vectors", None), ("shared basis, residuals", Cz[lists_z])):
            Zh = scalar_codes(Z if shift is None else Z - shift, args.seed)
            if shift is not None:
                Zh += shift
            add(variant, same_bits, probed_recall(Zh @ basis.T + mean, lists_z, probes_z, Q, gt, nlist, k, nprobes),
                rank=codes)
    cols = [("variant", "variant", ""), ("bits", "b/c", ".3f")] + [(f"r{q}", f"nprobe {q}", ".4f") for q in nprobes] \
        + [("rall", "every list", ".4f")]
    text = (f"{data}, {n} x {d}, {args.bits:g} b/c, {nlist} lists, {len(Q)} queries: recall 10@10 of an exact scan "
            f"of the decoded vectors in the nprobe nearest lists.\n\n{markdown_table(rows, cols)}\n\n"
            f"The `vectors` index's own search: {rows[0]['index_search']}. Residual energy (input-space "
            f"centroids): {rows[1]['residual_energy']:.3f} of the vectors'.")
    payload = {"machine": machine(), "args": {a: str(v) for a, v in vars(args).items()}, "rows": rows,
               "nlist": nlist, "n": n, "dim": d}
    write_results(args.out, f"{data}-{n}x{d}-{args.bits:g}bc-nlist{nlist}", payload, text)
    print(text)
    return payload


if __name__ == "__main__":
    main()
