"""Threads on a quiet and on a busy machine: small factorisations and the command line.

Part 1 times numpy's QR and eigh of m x m matrices with 1 and 2 OpenBLAS threads; part 2
times the command line (`lplr-index build` and `search`, each a fresh process as a user
runs it) with `--threads 1` and `--threads 2`. Each part runs once on the machine as it is
("quiet": run this alone) and once with one core kept busy by a spinning process (a
stand-in for another job). Medians of --repeats runs. This is what chose the library's
one-thread small factorisations (lplr_index._threads) and the command line's default
--threads.

    python benchmarks/bench_threads.py --out results/reference/bench_threads   # about 5 min
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, machine, make_embeddings, markdown_table, median_time, write_results  # noqa: E402

SPIN = "while True: pass"


@contextlib.contextmanager
def load(busy: bool):
    """One core kept busy by a spinning process while the block runs (busy=True)."""
    proc = subprocess.Popen([sys.executable, "-c", SPIN]) if busy else None
    try:
        time.sleep(0.5 if busy else 0)
        yield
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()


def linalg_rows(sizes, repeats: int, busy: bool) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for m in sizes:
        A = rng.standard_normal((m, m))
        S = A @ A.T
        for threads in (1, 2):
            with threadpool_limits(limits=threads, user_api="blas"), load(busy):
                qr, _ = median_time(lambda: np.linalg.qr(A), repeats)
                eigh, _ = median_time(lambda: np.linalg.eigh(S), repeats)
            rows.append(dict(part="linalg", busy=busy, m=m, threads=threads, qr_s=qr, eigh_s=eigh))
            print(f"{'busy' if busy else 'quiet'} m={m} threads={threads}: qr {qr:.4f} s, eigh {eigh:.4f} s",
                  flush=True)
    return rows


def cli(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lplr_index", "-q", *args], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def cli_rows(folder: Path, n: int, repeats: int, busy: bool) -> list[dict]:
    X, Q = make_embeddings(n, 384, n_queries=100, seed=1)
    small = X[:1000]
    paths = {name: folder / f"{name}.npy" for name in ("X", "small", "Q")}
    for name, arr in (("X", X), ("small", small), ("Q", Q)):
        np.save(paths[name], arr)
    rows = []
    for threads in (1, 2):
        t = ["--threads", str(threads)]
        with load(busy):
            build, _ = median_time(lambda: cli([*t, "build", str(paths["X"]), "-o", str(folder / "X.lplr"),
                                                "-b", "1"]), repeats)
            cli([*t, "build", str(paths["small"]), "-o", str(folder / "small.lplr"), "-b", "1"])
            search_small, _ = median_time(lambda: cli([*t, "search", str(folder / "small.lplr"), str(paths["Q"]),
                                                       "-k", "1000", "-o", str(folder / "r.npz")]), repeats)
            search, _ = median_time(lambda: cli([*t, "search", str(folder / "X.lplr"), str(paths["Q"]),
                                                 "-k", "10", "-o", str(folder / "r.npz")]), repeats)
        rows.append(dict(part="cli", busy=busy, threads=threads, build_s=build, search_1000_rows_k1000_s=search_small,
                         search_s=search, n=n))
        print(f"{'busy' if busy else 'quiet'} threads={threads}: build {n} x 384 {build:.2f} s, search 100 "
              f"queries k=1000 on 1,000 rows {search_small:.2f} s, k=10 on {n} rows {search:.2f} s", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 384, 768, 1280, 2048])
    p.add_argument("--n", type=int, default=50_000, help="rows of the command line's build (default: 50,000)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "runs" / "bench_threads")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for busy in (False, True):
            rows += linalg_rows(args.sizes, args.repeats, busy)
            rows += cli_rows(Path(tmp), args.n, args.repeats, busy)
    lin = [dict(r, load="one core busy" if r["busy"] else "quiet") for r in rows if r["part"] == "linalg"]
    cl = [dict(r, load="one core busy" if r["busy"] else "quiet") for r in rows if r["part"] == "cli"]
    table = (markdown_table(lin, [("load", "load", ""), ("m", "m x m", "d"), ("threads", "BLAS threads", "d"),
                                  ("qr_s", "QR s", ".4f"), ("eigh_s", "eigh s", ".4f")])
             + "\n\n" + markdown_table(cl, [("load", "load", ""), ("threads", "--threads", "d"),
                                            ("build_s", f"build {args.n:,} x 384, 1 b/c (s)", ".2f"),
                                            ("search_1000_rows_k1000_s", "search 100 q, k=1000, 1,000 rows (s)", ".2f"),
                                            ("search_s", f"search 100 q, k=10, {args.n:,} rows (s)", ".2f")]))
    print(table)
    write_results(args.out, "bench_threads", {"machine": machine(), "args": vars(args) | {"out": str(args.out)},
                                              "rows": rows}, table)


if __name__ == "__main__":
    main()
