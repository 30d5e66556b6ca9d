"""Build from Parquet against the build from the same rows as .npy: time, peak memory, identical bytes.

Writes seeded synthetic vectors (a decaying spectrum) once as a ``.npy`` file and once as a
Parquet dataset (``--files`` files of ``fixed_size_list<float32>`` rows beside an int64 id
column, ``--row-group`` rows per row group), then builds each in a fresh interpreter
(``--threads`` BLAS/OpenMP threads) and reports the wall time, the child's peak resident
memory (``VmHWM`` of ``/proc/self/status``, Linux) and whether the two index files are byte for byte the same.

    python benchmarks/bench_parquet.py --n 300000 --dim 128

Needs pyarrow (``pip install "lplr-index[parquet]"``). Prints JSON; writes nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

#: one build in a fresh interpreter: input argv[1] (column argv[2] or ""), settings argv[3], output argv[4]
CHILD = r"""
import json, sys, time
from lplr_index import LPLRIndex
source, column, settings, out = sys.argv[1], sys.argv[2] or None, json.loads(sys.argv[3]), sys.argv[4]
t0 = time.perf_counter()
kw = {} if column is None else {"column": column}
from lplr_index._inputs import open_source
dim = open_source(source, **kw).dim
index = LPLRIndex(dim, **settings).build(source, **kw)
seconds = time.perf_counter() - t0
index.save(out)
# VmHWM: this process's own peak (ru_maxrss would carry the parent's over fork and exec)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "peak_rss_mib": hwm / 1024}))
"""


def write_data(folder: Path, n: int, dim: int, files: int, row_group: int, seed: int) -> tuple[str, str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    npy = folder / "x.npy"
    X = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=(n, dim))
    scale = (0.97 ** np.arange(dim)).astype(np.float32)
    for s in range(0, n, 1 << 16):
        X[s : s + (1 << 16)] = rng.standard_normal((min(1 << 16, n - s), dim), np.float32) * scale
    X.flush()
    pqdir = folder / "parquet"
    pqdir.mkdir()
    cuts = np.linspace(0, n, files + 1).astype(int)
    for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        with pq.ParquetWriter(pqdir / f"part-{k:05d}.parquet",
                              pa.schema([("id", pa.int64()), ("emb", pa.list_(pa.float32(), dim))])) as w:
            for s in range(a, b, row_group):
                e = min(s + row_group, b)
                rows = np.ascontiguousarray(X[s:e])
                w.write_table(pa.table({"id": np.arange(s, e), "emb": pa.FixedSizeListArray.from_arrays(
                    pa.array(rows.ravel()), dim)}), row_group_size=row_group)
    del X
    return str(npy), str(pqdir)


def build(source: str, column: str, settings: dict, out: str, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", CHILD, source, column, json.dumps(settings), out],
                          capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=300_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--files", type=int, default=7)
    p.add_argument("--row-group", type=int, default=20_000)
    p.add_argument("--bits-per-coordinate", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    settings = {"bits_per_coordinate": args.bits_per_coordinate, "seed": 0}
    with tempfile.TemporaryDirectory(prefix="bench-parquet-") as tmp:
        folder = Path(tmp)
        npy, pqdir = write_data(folder, args.n, args.dim, args.files, args.row_group, args.seed)
        sizes = {"npy_mib": os.path.getsize(npy) / 2**20,
                 "parquet_mib": sum(f.stat().st_size for f in Path(pqdir).iterdir()) / 2**20}
        a = build(npy, "", settings, str(folder / "npy.lplr"), args.threads)
        b = build(pqdir, "emb", settings, str(folder / "pq.lplr"), args.threads)
        same = (folder / "npy.lplr").read_bytes() == (folder / "pq.lplr").read_bytes()
    print(json.dumps({"n": args.n, "dim": args.dim, "files": args.files, "row_group": args.row_group,
                      "threads": args.threads, **sizes, "npy": a, "parquet": b, "identical_bytes": same},
                     indent=2))


if __name__ == "__main__":
    main()
