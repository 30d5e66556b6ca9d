"""Building at scale: out of core from a .npy file, in memory, and on a 2-worker Dask LocalCluster.

Generates N x 384 synthetic embeddings (the benchmarks' generator,
``common.make_embeddings``, written block by block: never all in memory) into
``--data-dir`` (10^7 rows are 15 GB; an existing file of the right shape is
reused), then measures, each stage in its own interpreter (time, and peak
resident memory ``VmHWM`` read from ``/proc/self/status``):

1. ``memory``: the in-memory build of the first ``--n-memory`` rows (10^6 by
   default) read into RAM: the reference for the "out of core <= 3x in memory"
   target (its time is extrapolated linearly to N) and the peak bytes per row
   from which the largest in-memory build this machine holds is *estimated*;
2. ``out-of-core``: ``LPLRIndex.build(path)`` on all N rows at
   ``--bits`` bits per coordinate (the target: peak RSS <= 4 GB);
3. ``dask``: the same build with ``lplr_index.distributed.build`` on a
   LocalCluster of ``--workers`` worker processes (one thread each) reading the
   file (``distributed.from_npy``); the client's and each worker's peak RSS;
   the saved file is compared byte for byte with the out-of-core one.

Every stage runs with ``--blas-threads`` BLAS threads (default 1, as the Dask
workers: then the two files must be identical). Results: JSON and Markdown in
``--out``; progress on stderr.

    python benchmarks/bench_scale.py                    # N = 10^7 (15 GB of disk, hours on 2 cores)
    python benchmarks/bench_scale.py --n 200000         # a few minutes: checks that it works
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, markdown_table, write_results  # noqa: E402

#: rows generated (and written) per block, as common.make_embeddings draws them
GEN_BLOCK = 1 << 16
GIB = 2**30


def log(msg: str) -> None:
    print(f"[bench_scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def proc_status(key: str) -> int:
    """A ``/proc/self/status`` memory field (VmHWM, VmRSS) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def mem_total() -> int:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) * 1024


# ---------------------------------------------------------------- the data
def write_embeddings(path: Path, n: int, d: int, *, decay: float = 0.7, seed: int = 0) -> None:
    """``common.make_embeddings(n, d, decay=decay, seed=seed)[0]`` written to a .npy block by block.

    The same random stream in the same order (the rotation, then blocks of
    GEN_BLOCK Gaussian rows), so the rows equal the in-memory generator's; the
    file is written with plain writes (no memory map), to a temporary name
    renamed when complete.
    """
    rng = np.random.default_rng(seed)
    O, _ = np.linalg.qr(rng.standard_normal((d, d)))
    M = ((np.arange(1, d + 1, dtype=np.float64) ** -decay)[:, None] * O).astype(np.float32)
    tmp = path.with_suffix(".npy.part")
    t0, shown = time.perf_counter(), -1
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (n, d)})
        for s in range(0, n, GEN_BLOCK):
            g = rng.standard_normal((min(GEN_BLOCK, n - s), d), dtype=np.float32)
            f.write((g @ M).tobytes())
            pct = int(100 * (s + len(g)) / n)
            if pct // 5 != shown:
                shown = pct // 5
                log(f"generating: {s + len(g):,} / {n:,} rows ({pct}%, {time.perf_counter() - t0:.0f} s)")
    os.replace(tmp, path)


def ensure_data(path: Path, n: int, d: int, regenerate: bool) -> None:
    if path.exists() and not regenerate:
        X = np.load(path, mmap_mode="r")
        if X.shape == (n, d) and X.dtype == np.float32:
            log(f"reusing {path} ({n:,} x {d})")
            return
        log(f"{path} has shape {X.shape}, not ({n}, {d}): regenerating")
        del X
    path.parent.mkdir(parents=True, exist_ok=True)
    need = n * d * 4 + (1 << 20)
    free = shutil.disk_usage(path.parent).free
    if free < need:
        raise SystemExit(f"--data-dir {path.parent}: {need / GIB:.1f} GiB needed for {n:,} x {d} float32 vectors, "
                         f"{free / GIB:.1f} GiB free")
    log(f"writing {n:,} x {d} float32 vectors ({need / GIB:.1f} GiB) to {path}")
    write_embeddings(path, n, d)


def read_rows(path: Path, n: int) -> np.ndarray:
    """The first ``n`` rows of a .npy into memory with plain reads (no map in the resident set)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
        return np.fromfile(f, dtype=dtype, count=n * shape[1]).reshape(n, shape[1])


# ---------------------------------------------------------------- the stages (children)
def stage_memory(case: dict) -> dict:
    from lplr_index import LPLRIndex

    path, n, bits = Path(case["path"]), case["n"], case["bits"]
    base = proc_status("VmRSS")
    log(f"memory: reading {n:,} rows into RAM")
    X = read_rows(path, n)
    log("memory: building")
    t0 = time.perf_counter()
    index = LPLRIndex(X.shape[1], bits_per_coordinate=bits).build(X)
    seconds = time.perf_counter() - t0
    peak = proc_status("VmHWM")
    return {"seconds": seconds, "peak_rss": peak, "baseline_rss": base, "rank": index.rank,
            "bits_per_coordinate": index.bits_per_coordinate, "fit_error": index.fit_error}


def stage_out_of_core(case: dict) -> dict:
    from lplr_index import LPLRIndex

    path, bits, out = case["path"], case["bits"], case["index"]
    d = np.load(path, mmap_mode="r").shape[1]
    base = proc_status("VmRSS")
    log(f"out-of-core: building from {path} (a sample, then 1 + refine_iters fitting passes and 1 encoding pass)")
    t0 = time.perf_counter()
    index = LPLRIndex(d, bits_per_coordinate=bits).build(path)
    seconds = time.perf_counter() - t0
    peak = proc_status("VmHWM")
    log(f"out-of-core: built in {seconds:.1f} s; saving {out}")
    t0 = time.perf_counter()
    index.save(out)
    return {"seconds": seconds, "peak_rss": peak, "baseline_rss": base, "save_seconds": time.perf_counter() - t0,
            "rank": index.rank, "bits_per_coordinate": index.bits_per_coordinate, "fit_error": index.fit_error}


def _worker_peak() -> int:
    return proc_status("VmHWM")


def stage_dask(case: dict) -> dict:
    import distributed

    from lplr_index import distributed as ld

    path, bits, out, workers = case["path"], case["bits"], case["index"], case["workers"]
    threads = {k: str(case["blas_threads"]) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    log(f"dask: starting a LocalCluster of {workers} worker processes")
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  env=threads) as cluster, distributed.Client(cluster) as client:
        base = proc_status("VmRSS")
        log("dask: building")
        t0 = time.perf_counter()
        index = ld.build(ld.from_npy(path), client, bits_per_coordinate=bits)
        seconds = time.perf_counter() - t0
        peak = proc_status("VmHWM")
        worker_peaks = sorted(client.run(_worker_peak).values())
    log(f"dask: built in {seconds:.1f} s; saving {out}")
    index.save(out)
    return {"seconds": seconds, "peak_rss": peak, "baseline_rss": base, "worker_peak_rss": worker_peaks,
            "rank": index.rank, "bits_per_coordinate": index.bits_per_coordinate, "fit_error": index.fit_error}


STAGES = {"memory": stage_memory, "out-of-core": stage_out_of_core, "dask": stage_dask}


def run_stage(name: str, case: dict, blas_threads: int) -> dict:
    """One stage in a fresh interpreter (its own peak memory); its progress goes to our stderr."""
    env = dict(os.environ)
    env.update({k: str(blas_threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    proc = subprocess.run([sys.executable, __file__, "--stage", name, "--case", json.dumps(case)],
                          stdout=subprocess.PIPE, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"stage {name} failed (exit status {proc.returncode}); its error is above")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=10**7, help="rows of the on-disk data (default: 10^7, 15 GB)")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--n-memory", type=int, default=10**6, help="rows of the in-memory build (default: 10^6, "
                   "at most --n)")
    p.add_argument("--bits", type=float, default=1.0, help="bits per coordinate (default: 1)")
    p.add_argument("--workers", type=int, default=2, help="Dask worker processes (default: 2)")
    p.add_argument("--blas-threads", type=int, default=1, help="BLAS threads of every stage (default: 1)")
    p.add_argument("--data-dir", type=Path, default=ROOT / "data", help="where the .npy is written (default: data/)")
    p.add_argument("--stages", default="memory,out-of-core,dask", help="comma-separated subset to run")
    p.add_argument("--regenerate", action="store_true", help="write the data again even if it exists")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "runs" / "bench_scale")
    p.add_argument("--stage", choices=list(STAGES), help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.stage:  # a child: run one stage, print its JSON last
        print(json.dumps(STAGES[args.stage](json.loads(args.case))))
        return 0

    stages = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        p.error(f"--stages: unknown {unknown}, allowed: {', '.join(STAGES)}")
    n, d = args.n, args.dim
    n_mem = min(args.n_memory, n)
    path = args.data_dir / f"scale_{n}x{d}.npy"
    ensure_data(path, n, d, args.regenerate)
    results: dict[str, dict] = {}
    for name in stages:
        case = {"path": str(path), "bits": args.bits, "n": n_mem if name == "memory" else n,
                "index": str(args.data_dir / f"scale_{n}x{d}_{name}.lplr"), "workers": args.workers,
                "blas_threads": args.blas_threads}
        log(f"stage {name}: {case['n']:,} rows")
        results[name] = r = run_stage(name, case, args.blas_threads)
        r["n"] = case["n"]
        log(f"stage {name}: {r['seconds']:.1f} s, peak RSS {r['peak_rss'] / GIB:.2f} GiB")

    summary: dict = {}
    if "memory" in results:
        m = results["memory"]
        per_row = (m["peak_rss"] - m["baseline_rss"]) / m["n"]
        summary["memory_build_seconds_extrapolated_to_n"] = m["seconds"] * n / m["n"]
        summary["memory_build_peak_bytes_per_row"] = per_row
        summary["mem_total_bytes"] = mem_total()
        # an estimate: peak bytes per row measured at n_memory rows, assumed constant
        summary["memory_build_largest_n_estimate"] = int((mem_total() - m["baseline_rss"]) / per_row)
    if "out-of-core" in results and "memory" in results:
        summary["out_of_core_over_memory_time"] = (results["out-of-core"]["seconds"]
                                                   / summary["memory_build_seconds_extrapolated_to_n"])
    if "out-of-core" in results and "dask" in results:
        a, b = (args.data_dir / f"scale_{n}x{d}_{s}.lplr" for s in ("out-of-core", "dask"))
        summary["dask_file_identical_to_out_of_core"] = sha256(a) == sha256(b)

    rows = [{"stage": name, "n": r["n"], "seconds": r["seconds"], "rows_per_s": r["n"] / r["seconds"],
             "peak_rss_gib": r["peak_rss"] / GIB,
             "workers_peak_rss_gib": " / ".join(f"{w / GIB:.2f}" for w in r.get("worker_peak_rss", [])) or None,
             "rank": r["rank"], "bits": r["bits_per_coordinate"], "fit_error": r["fit_error"]}
            for name, r in results.items()]
    table = markdown_table(rows, [("stage", "build", ""), ("n", "rows", ","), ("seconds", "seconds", ".1f"),
                                  ("rows_per_s", "rows/s", ",.0f"), ("peak_rss_gib", "peak RSS (GiB)", ".2f"),
                                  ("workers_peak_rss_gib", "workers' peak RSS (GiB)", ""), ("rank", "rank", "d"),
                                  ("bits", "bits/coord", ".3f"), ("fit_error", "fit error", ".4f")])
    lines = [table, ""]
    if "memory_build_seconds_extrapolated_to_n" in summary:
        lines.append(f"- in-memory build extrapolated to {n:,} rows: "
                     f"{summary['memory_build_seconds_extrapolated_to_n']:.1f} s (linear in n)")
    if "out_of_core_over_memory_time" in summary:
        lines.append(f"- out-of-core / in-memory time: {summary['out_of_core_over_memory_time']:.2f}x (target <= 3x)")
    if "out-of-core" in results:
        lines.append(f"- out-of-core peak RSS: {results['out-of-core']['peak_rss'] / GIB:.2f} GiB (target <= 4 GB)")
    if "memory_build_largest_n_estimate" in summary:
        lines.append(f"- in-memory build: {summary['memory_build_peak_bytes_per_row']:.0f} peak bytes per row, so "
                     f"this machine's {summary['mem_total_bytes'] / GIB:.1f} GiB run out at about "
                     f"{summary['memory_build_largest_n_estimate']:,} rows (an estimate, not measured)")
    if "dask_file_identical_to_out_of_core" in summary:
        lines.append(f"- Dask file byte-identical to the out-of-core file: "
                     f"{summary['dask_file_identical_to_out_of_core']}")
    text = "\n".join(lines)
    payload = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "machine": machine(), "results": results, "summary": summary}
    write_results(args.out, "bench_scale", payload, text)
    print(text)
    log(f"wrote {args.out / 'bench_scale.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
