"""Code designs for the quality issue: the study that preceded the index's grouped codes.

(The index now builds these designs itself, :mod:`lplr_index.vq`, and chooses among them
at build time; this benchmark keeps the one-design-at-a-time comparison on decoded vectors.)

LPLRIndex gives each kept latent direction one 4-bit scalar code and drops the rest.
Transform coding says the rate should follow the variance, below one bit per direction
where the variance is small: several directions sharing one 4-bit code (a 16-centroid
k-means codebook, as in PQ). This benchmark compares, at equal bits per coordinate
(everything stored counted):

- ``index``: LPLRIndex with its defaults (exact scan of its codes);
- ``scalar``: one 4-bit k-means (Lloyd-Max) code per direction on the top directions;
- ``grouped {g...}``: rates from a Lagrangian allocation over group sizes ``g`` (a group
  of g directions shares one 4-bit code; weakest directions dropped), directions of equal
  rate randomly rotated together and quantized with one shared codebook per rate class;

each on two bases: ``pca`` (the covariance eigenvectors, stored as an 8-bit matrix and
counted) and ``rot`` (a random rotation regenerated from a seed: free to store). Recall
10@10 is of exact search on the decoded vectors against exact search on the originals,
and the squared error is compared with the Gaussian rate-distortion reference
(:func:`lplr_index.evaluation.rate_distortion`).

    python benchmarks/bench_codes.py --dataset bbc
    python benchmarks/bench_codes.py --synthetic --n 100000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import lplr_index  # noqa: F401 (first: it loads faiss with this CPU's BLAS kernels)
import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # pipelines/ runs from the checkout
from common import machine, markdown_table  # noqa: E402

from lplr_index import LPLRIndex, exact_knn, recall_at_k  # noqa: E402
from lplr_index.evaluation import rate_distortion  # noqa: E402

GROUP_SETS = {"scalar": (1,), "grouped {1,2}": (1, 2), "grouped {1,2,4}": (1, 2, 4), "grouped {1,2,4,8}": (1, 2, 4, 8)}
DEFAULT_OUT = Path("results") / "runs" / "bench_codes"


def kmeans_distortion(seed: int = 0) -> dict[int, float]:
    """Squared error per dimension of a 16-centroid k-means on g-dim standard Gaussians."""
    rng = np.random.default_rng(seed)
    out = {}
    for g in (1, 2, 4, 8):
        Z = rng.standard_normal((40000, g)).astype(np.float32)
        km = faiss.Kmeans(g, 16, niter=40, seed=seed + 1, nredo=2)
        km.train(Z)
        _, a = km.index.search(Z, 1)
        out[g] = float(((Z - km.centroids[a[:, 0]]) ** 2).mean())
    return out


def allocate(var: np.ndarray, bits: float, F: dict[int, float]) -> list[tuple[int, np.ndarray]]:
    """Directions per group size: each direction takes the size minimising
    ``var * F[g] + mu * 4 / g`` (or is dropped), ``mu`` bisected to spend ``bits``."""
    gs = sorted(F)

    def choose(mu: float) -> np.ndarray:
        costs = np.stack([var * F[g] + mu * 4.0 / g for g in gs] + [var], 1)
        return np.argmin(costs, 1)

    lo, hi = 1e-12, 1e12
    for _ in range(120):
        mu = np.sqrt(lo * hi)
        c = choose(mu)
        spent = sum(4.0 / gs[j] for j in c if j < len(gs))
        lo, hi = (mu, hi) if spent > bits else (lo, mu)
    c = choose(hi)
    classes = []
    for j, g in enumerate(gs):
        dims = np.flatnonzero(c == j)
        dims = dims[: (len(dims) // g) * g]
        if len(dims):
            classes.append((g, dims))
    return classes


def encode_grouped(X: np.ndarray, budget: float, sizes: tuple, basis: str, F: dict[int, float], seed: int = 0):
    """Decoded vectors and measured bits per coordinate of one design."""
    n, d = X.shape
    mean = X.mean(0)
    Xc = X - mean
    if basis == "pca":
        var, V = np.linalg.eigh((Xc.T.astype(np.float64) @ Xc) / n)
        var, V = var[::-1], V[:, ::-1]
    else:
        V, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
        var = ((Xc @ V) ** 2).mean(0)
        order = np.argsort(-var)
        V, var = V[:, order], var[order]
    bits = budget * d - 32 * d / n
    for _ in range(3):  # shared parts depend on the allocation: iterate to a fixed point
        classes = allocate(np.maximum(var, 0), bits, {g: F[g] for g in sizes})
        kept = sum(len(dims) for _, dims in classes)
        shared = (8 * kept * d + 64 * d if basis == "pca" else 0) + sum(16 * g * 32 for g, _ in classes) + 32 * d
        bits = budget * d - shared / n
    rng = np.random.default_rng(seed + 1)
    Xh = np.tile(mean, (n, 1)).astype(np.float32)
    spent = 0
    for g, dims in classes:
        O, _ = np.linalg.qr(rng.standard_normal((len(dims), len(dims))))
        B = (V[:, dims] @ O).astype(np.float32)
        Z = (Xc @ B).reshape(-1, g)
        km = faiss.Kmeans(g, 16, niter=25, seed=seed + 1)
        km.train(Z[rng.choice(len(Z), min(len(Z), 1 << 17), replace=False)])
        _, a = km.index.search(Z, 1)
        Xh += km.centroids[a[:, 0]].reshape(n, -1) @ B.T
        spent += 4 * len(dims) // g
    measured = (spent * n + shared) / (n * d)
    return Xh, measured, [(g, len(dims)) for g, dims in classes]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=("bbc", "fortunes", "fashion-mnist"), default=None)
    p.add_argument("--synthetic", action="store_true")
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--budgets", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.dataset is not None:
        from pipelines.experiment import load_dataset_embeddings

        data = load_dataset_embeddings(args.dataset, ["--full"])
        X, Q, name = data.X_train.astype(np.float32), data.X_test.astype(np.float32), args.dataset
    else:
        from bench_faiss import make_synthetic

        ds = make_synthetic(args.n, 1000, args.dim)
        X, Q, name = ds.xb, ds.xq, ds.name
    t0 = time.perf_counter()
    _, gt = exact_knn(X, Q, 10)
    F = kmeans_distortion()
    print(f"{name}: {X.shape}, k-means distortion per dimension {F}", flush=True)
    rows = []
    for b in args.budgets:
        index = LPLRIndex(X.shape[1], bits_per_coordinate=b).build(X)
        rd = rate_distortion(X, index, index.bits_per_coordinate)
        rows.append({"budget": b, "design": f"index (rank {index.rank} x {index.bits_l} bits)", "basis": "lplr",
                     "bits": index.bits_per_coordinate, "recall": recall_at_k(index.search(Q, 10, mode="factored")[1], gt, 10),
                     "rd_ratio": rd.ratio, "classes": ""})
        print(rows[-1], flush=True)
        for basis in ("pca", "rot"):
            for design, sizes in GROUP_SETS.items():
                Xh, bits, classes = encode_grouped(X, b, sizes, basis, F)
                rd = rate_distortion(X, Xh, bits)
                rows.append({"budget": b, "design": design, "basis": basis, "bits": bits,
                             "recall": recall_at_k(exact_knn(Xh, Q, 10)[1], gt, 10), "rd_ratio": rd.ratio,
                             "classes": " ".join(f"{g}x{c}" for g, c in classes)})
                print(rows[-1], flush=True)
    table = markdown_table(rows, [("budget", "budget", "g"), ("design", "design", ""), ("basis", "basis", ""),
                                  ("bits", "bits/coord", ".2f"), ("recall", "recall 10@10", ".3f"),
                                  ("rd_ratio", "MSE / RD reference", ".2f"), ("classes", "g x directions", "")])
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"dataset": name, "shape": list(X.shape), "rows": rows, "kmeans_distortion": F,
               "machine": machine(), "seconds": time.perf_counter() - t0}
    (args.out / f"{name}.json").write_text(json.dumps(payload, indent=1, default=float) + "\n")
    (args.out / f"{name}.md").write_text(table + f"\n\nMeasured with `python benchmarks/bench_codes.py {' '.join(sys.argv[1:])}`.\n")
    print(table)
    return payload


if __name__ == "__main__":
    main()
