"""What the index adds to plain LPLR, at 1 bit per coordinate, on synthetic data.

Recall 10@10 of LPLRIndex variants against exact search: the paper's setting
(8-bit codes, minmax quantizer, no refinement), then the column quantizer,
4-bit codes at twice the rank, and alternating refinement (the defaults).

    python benchmarks/bench_refinement.py [--n 20000] [--dim 128] [--bits 1]
"""

from __future__ import annotations

import argparse

import numpy as np

from lplr_index import LPLRIndex, exact_knn, recall_at_k

VARIANTS = [
    ("paper: 8-bit codes, minmax, no refinement", dict(bits_l=8, quantizer="minmax", refine_iters=0)),
    ("8-bit codes, mse-col, no refinement", dict(bits_l=8, refine_iters=0)),
    ("4-bit codes, mse-col, no refinement", dict(bits_l=4, refine_iters=0)),
    ("8-bit codes, mse-col, 2 refinement rounds", dict(bits_l=8)),
    ("defaults: 4-bit codes, mse-col, 2 refinement rounds", dict()),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--bits", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    d = args.dim
    spectrum = np.arange(1, d + 1) ** -0.7
    rotation = np.linalg.qr(rng.standard_normal((d, d)))[0]
    X = ((rng.standard_normal((args.n, d)) * spectrum) @ rotation).astype(np.float32)
    Q = X[:200] + 0.05 * rng.standard_normal((200, d)).astype(np.float32)
    _, I_true = exact_knn(X, Q, 10)
    print(f"| variant ({args.n} x {d}, budget {args.bits:g} bits/coord) | rank | bits_l | measured bits/coord | recall 10@10 |")
    print("|---|---:|---:|---:|---:|")
    for name, kw in VARIANTS:
        index = LPLRIndex(d, bits_per_coordinate=args.bits, seed=args.seed, **kw).build(X)
        recall = recall_at_k(index.search(Q, 10).indices, I_true, 10)
        print(f"| {name} | {index.rank} | {index.bits_l} | {index.bits_per_coordinate:.3f} | {recall:.3f} |")


if __name__ == "__main__":
    main()
