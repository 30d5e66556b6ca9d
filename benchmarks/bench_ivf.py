"""Partitioned search (issue 27): recall 10@10 against queries per second, LPLRIndex with
``nlist`` against faiss's IVF fast-scan at the same bits per coordinate.

One process, ``--threads`` threads (default 1: faiss's OpenMP and the BLAS, builds included),
every index built on the same data and measured in the same run:

- ``lplr exhaustive``: ``LPLRIndex(dim, bits_per_coordinate=b)`` (no lists), the reference:
  ``vs exhaustive`` is the recall of each partitioned LPLR row against its results (left out
  with ``--no-exhaustive``: at 10^7 its build and its scans of every row take ~5 minutes);
- ``lplr ivf{nlist}``: ``LPLRIndex(dim, bits_per_coordinate=b, nlist=nlist)`` searched with
  ``index.search(Q, k, nprobe=P)`` for each ``--nprobe``, the default nprobe its build
  measured (marked ``*``) and ``nlist`` (every list: the same codes scanned exhaustively;
  ``vs all lists`` is the recall against that row's results). Its budget counts the partition:
  ``index.bits_per_coordinate`` is the whole file (codes, factor, coarse centroids, every row's
  list number), so it is built at the target itself, with no extra allowance;
- ``faiss IVF{nlist},PQ{M}x4fs`` and ``faiss PCAR{M},IVF{nlist},PQ{M}x4fs`` (PCA + random
  rotation, one 4-bit code per rotated PCA coordinate: the faiss analogue of LPLR's latent), at
  the largest ``M`` whose serialized index (``faiss.serialize_index``: codes, 64-bit ids,
  centroids, PCA) fits the target bits; same ``nlist``, same nprobe sweep. They train on
  ``--faiss-train`` sampled rows (the sample is drawn before the build is measured);
- ``scann tree{nlist},AH...`` (unless ``--no-scann``; skipped with a note when ``import scann``
  fails, it is the optional ``bench`` extra): ScaNN with its partitioning tree,
  ``scann.scann_ops_pybind.builder(X, k, "squared_l2").tree(num_leaves=nlist,
  training_sample_size=--scann-train).score_ah(dims_per_block,
  anisotropic_quantization_threshold=--scann-threshold).build()`` (16 centres, 4 bits, a block,
  LUT16 scoring), searched with ``searcher.search_batched(Q, leaves_to_search=nprobe,
  final_num_neighbors=k)`` (q/s; not ``search_batched_parallel``) and ``searcher.search(q, ...)``
  (latency), ``leaves_to_search`` = each nprobe of the sweep. Its b/c is everything
  ``searcher.serialize(folder)`` writes (as ``faiss_baselines.ScannAH`` measures it): the AH
  codes (ONE BYTE PER 4-BIT CODE in the file), the tree's centres (``serialized_partitioner.pb``,
  about 8 bytes a coordinate), each row's leaf id (``datapoint_to_token.npy``, int32: 32 bits a
  row), the codebooks and the config. ``dims_per_block`` is the smallest (most blocks) whose
  measured size fits the target bits: block counts are estimated from that formula first, then
  the build is serialized and stepped down while it is over. NO reordering: ScaNN's ``reorder``
  rescoring stores the dataset again, float32 (32 b/c), bfloat16 (16) or int8 (8 b/c plus
  per-dimension scales), on top of the codes, more than any low-bit target here allows, so the
  AH scores are final. The codes are not residuals of the leaf centres: ScaNN refuses residual
  quantization with a tree under ``squared_l2`` ("only works with dot product distance"), so
  scanning more leaves can lower its recall. ScaNN's training threads are set to ``--threads``.

``nlist`` defaults to :func:`lplr_index.search.ivf.default_nlist` (the power of two nearest
``sqrt(n)``); nprobe values above it are skipped.

Measured for each index: build seconds, and the build's peak memory: the process's peak
resident set during the build above its resident set just before (the kernel's high-water mark
``VmHWM``, reset before each build through ``/proc/self/clear_refs``; where that is not allowed,
psutil sampled every 2 ms in a thread; freed heap is returned to the system with
``malloc_trim`` before each build so that an earlier build's memory is not counted as reused),
and ``resident MiB``: the resident set after the build and one warm-up search above the one
before the build, freed heap handed back first (what the index holds while searching; the data
``X`` is not counted), and the build's anonymous-memory peak (``RssAnon`` sampled every 10 ms;
the resident set also counts the pages of a memory-mapped ``--data-dir`` input). The partitioned
LPLR index is also saved, memory-mapped back and timed on its first query (faiss's lists are
filled then). A small LPLR, faiss and ScaNN build run first, unmeasured, so that one-time
costs (lazy imports, BLAS buffers) do not land on the first measured index.
Timing: batch q/s is the median of ``--repeats`` searches of all queries; latency the median
single-query time over ``--latency-queries`` queries (one warm-up query first). Recall 10@10 is
against the exact neighbours (faiss ``IndexFlatL2``), cached as ``.npy`` under ``--cache``
keyed by the data's settings, so a re-run skips them.

Usage (clustered synthetic data; 2 * 10^5 x 384 at 1 b/c takes ~10 minutes on one core)::

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/bench_ivf.py
    python benchmarks/bench_ivf.py --n 1000000 --nlist 4096 --bits 1 --out results/reference/bench_ivf
    python benchmarks/bench_ivf.py --n 20000 --nlist 128 --nprobe 1 4 16 --repeats 1 \\
        --latency-queries 10 --n-queries 200 --out /tmp/bench_ivf_smoke        # smoke run
    python benchmarks/bench_ivf.py --no-scann ...                              # without ScaNN
    python benchmarks/bench_ivf.py --n 10000000 --bits 1 --no-scann --data-dir data \
        --faiss-factory "PCAR{M},IVF{nlist},PQ{M}x4fs" --faiss-train 655360 \
        --out results/reference/bench_ivf                                       # 10^7, out of core
    python benchmarks/bench_ivf.py --data npy --npy data/cache/langchain/minilm-36892-*.npy --bits 1 \
        --out results/reference/bench_ivf/minilm                               # a real set: its last rows query

Writes ``{out}/synthetic-{n}x{dim}-{bits}bc.{json,md,png}`` (``powerlaw-...`` with
``--data powerlaw``, ``<file name>-...`` with ``--data npy``): the rows, the Markdown table, and recall against q/s (log scale), one
line per index, nprobe annotated. Progress lines go to stderr.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before faiss loads libgomp (shared machine)

import argparse  # noqa: E402
import ctypes  # noqa: E402
import gc  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import lplr_index  # noqa: F401, E402 (first: it loads faiss with this CPU's BLAS kernels)
import faiss  # noqa: E402
import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
from common import ROOT, machine, make_embeddings, markdown_table, write_results  # noqa: E402
from faiss_baselines import ScannAH, _pad_ids, dir_nbytes, package_version  # noqa: E402

from lplr_index import LPLRIndex, recall_at_k  # noqa: E402
from lplr_index.search.ivf import default_nlist  # noqa: E402

DEFAULT_NPROBE = [1, 2, 4, 8, 16, 32, 64, 128]
#: rows handed to faiss's ``add`` at a time
FAISS_ADD_ROWS = 1 << 20
MIB = 2.0**20


def make_clustered(n: int, n_queries: int, dim: int, *, decay: float, n_clusters: int, seed: int,
                   data_dir: Path | None = None, log=None):
    """bench_faiss.py's seeded Gaussian mixture with a power-law spectrum (database, queries).

    ``data_dir``: the database is written there once, chunk by chunk, as
    ``clustered-{n}x{dim}-seed{seed}-c{n_clusters}-decay{decay}.npy`` and memory-mapped read-only
    (10^7 x 384 is 15 GB: the builds then read it out of core); a later run reuses the file."""
    from bench_faiss import make_synthetic

    kw = {"decay": decay, "n_clusters": n_clusters, "seed": seed}
    if data_dir is None:
        ds = make_synthetic(n, n_queries, dim, **kw)
        return ds.xb, ds.xq
    path = Path(data_dir) / f"clustered-{n}x{dim}-seed{seed}-c{n_clusters}-decay{decay:g}.npy"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.stem + ".partial.npy")
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(n, dim))
        make_synthetic(n, 0, dim, out=out, **kw)
        out.flush()
        del out
        os.replace(partial, path)  # only a whole file gets the name
        if log is not None:
            log(f"wrote {path}")
    X = np.load(path, mmap_mode="r")
    if X.shape != (n, dim) or X.dtype != np.float32:
        raise SystemExit(f"bench_ivf: {path} holds {X.shape} {X.dtype}, expected ({n}, {dim}) float32: remove it")
    return X, make_synthetic(0, n_queries, dim, **kw).xq  # the queries do not depend on n


# ------------------------------------------------------------------------------------ memory
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return 1024 * kib
    import psutil

    return psutil.Process().memory_info().rss


def _trim() -> None:
    """Collect garbage and hand freed heap back to the system (glibc), so RSS starts clean."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _hwm_resettable() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmHWM") is not None
    except OSError:
        return False


class PeakRSS:
    """The process's peak resident set inside the block above its resident set at entry
    (``peak_mib``), and the resident set at exit above the one at entry (``held_mib``).

    ``VmHWM`` reset at entry (``/proc/self/clear_refs``, Linux) when allowed, else psutil
    sampled every 2 ms in a thread (may miss a peak shorter than that). The resident set
    counts the pages of a memory-mapped input the build has read; ``anon_peak_mib`` (Linux,
    ``RssAnon`` sampled every 10 ms) is the anonymous memory alone, what the build allocates."""

    method = "VmHWM reset" if _hwm_resettable() else "psutil, 2 ms samples"

    def __enter__(self) -> PeakRSS:
        _trim()
        self.base = _rss_bytes()
        self._peak = self.base
        self._anon_base = self._anon_peak = _status_kib("RssAnon")
        self._anon_stop = threading.Event()
        self._anon_thread = threading.Thread(target=self._sample_anon, daemon=True)
        if self._anon_base is not None:
            self._anon_thread.start()
        if self.method == "VmHWM reset":
            _hwm_resettable()
        else:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        import psutil

        proc = psutil.Process()
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, proc.memory_info().rss)

    def _sample_anon(self) -> None:
        while not self._anon_stop.wait(0.01):
            self._anon_peak = max(self._anon_peak, _status_kib("RssAnon") or 0)

    def __exit__(self, *exc) -> None:
        now = _rss_bytes()
        self._anon_stop.set()
        if self._anon_base is not None:
            self._anon_thread.join()
            self._anon_peak = max(self._anon_peak, _status_kib("RssAnon") or 0)
        self.anon_peak_mib = None if self._anon_base is None else (self._anon_peak - self._anon_base) / 1024
        if self.method == "VmHWM reset":
            peak = 1024 * _status_kib("VmHWM")
        else:
            self._stop.set()
            self._thread.join()
            peak = self._peak
        self.peak_mib = (max(peak, now) - self.base) / MIB
        self.end = now

    def held_since_entry(self) -> float:
        """Resident set now above the one at entry, MiB (freed heap handed back first)."""
        _trim()
        return (_rss_bytes() - self.base) / MIB


# ------------------------------------------------------------------------------------ timing
def timed(search, Q: np.ndarray, repeats: int, latency_queries: int):
    """(ids of all queries, median batch seconds, median single-query ms); warm-up first."""
    I = np.asarray(search(Q)[1])
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        search(Q)
        times.append(time.perf_counter() - t0)
    search(Q[:1])
    lat = []
    for i in range(min(latency_queries, len(Q))):
        q = Q[i : i + 1]
        t0 = time.perf_counter()
        search(q)
        lat.append(time.perf_counter() - t0)
    return I, statistics.median(times), 1e3 * statistics.median(lat)


def npy_split(path: Path, n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """A real set from a ``.npy`` file (read memory-mapped): its last ``n_queries`` rows query the
    others (database, queries), float32."""
    V = np.load(path, mmap_mode="r")
    if V.ndim != 2 or len(V) <= 2 * n_queries:
        raise SystemExit(f"{path}: --npy needs a 2-D array of more than {2 * n_queries} rows (--n-queries "
                         f"{n_queries}), got shape {V.shape}")
    return np.asarray(V[:-n_queries], np.float32), np.ascontiguousarray(V[-n_queries:], np.float32)


def ground_truth(X: np.ndarray, Q: np.ndarray, k: int, path: Path, log) -> np.ndarray:
    """Exact neighbours (faiss's brute-force ``knn``, as ``IndexFlatL2`` finds them, without copying
    ``X``), read from ``path`` when a run already saved them."""
    if path.exists():
        gt = np.load(path)
        if gt.shape == (len(Q), k):
            log(f"ground truth from {path}")
            return gt
    t0 = time.perf_counter()
    gt = faiss.knn(np.ascontiguousarray(Q, np.float32), X, k)[1]  # X read in place, never copied
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, gt)
    log(f"ground truth {time.perf_counter() - t0:.1f}s -> {path}")
    return gt


# ------------------------------------------------------------------------------------- faiss
def faiss_bits_estimate(template: str, m: int, n: int, d: int, nlist: int) -> float:
    """Bits per coordinate of a faiss ``[PCAR{M},]IVF{nlist},PQ{M}x4fs`` file: codes and 64-bit ids,
    the lists padded to blocks of 32 (half a block a list on average), float32 coarse centroids,
    the PQ centroids, and a PCA (faiss stores the full dim x dim matrix and the m x dim one)."""
    width = m if template.startswith("PCA") else d  # what the coarse quantizer and the PQ see
    per_row = m / 2 + 8 + nlist * 16 * (m / 2) / n
    fixed = 4 * nlist * width + 4 * 16 * width
    if template.startswith("PCA"):
        fixed += 4 * (d * d + m * d + 3 * d + m)
    return 8 * (per_row + fixed / n) / d


def factory_nlist(template: str, nlist: int) -> int:
    """The list count of a faiss factory template: its own (``IVF1024``), else the run's ``nlist``
    (``IVF{nlist}``)."""
    own = re.search(r"IVF(\d+)", template)
    return int(own.group(1)) if own else nlist


def faiss_candidates(template: str, n: int, d: int, nlist: int, bits: float) -> list[int]:
    """``M`` values to try, largest first, whose estimated file fits ``bits`` (PCAR: even M up to d;
    IVF-PQ: M dividing d)."""
    pca = template.startswith("PCA")
    Ms = [m for m in range(2, d + 1, 2) if pca or d % m == 0]
    return [m for m in reversed(Ms) if faiss_bits_estimate(template, m, n, d, nlist) <= bits]


# ------------------------------------------------------------------------------------- ScaNN
def scann_bits_estimate(blocks: int, n: int, d: int, nlist: int, extra_bytes: float = 0.0) -> float:
    """Bits per coordinate of what ScaNN's ``searcher.serialize`` writes for a tree of ``nlist``
    leaves over ``blocks`` 4-bit AH blocks (sizes read off ScaNN 1.4's files): a byte per code and
    an int32 leaf id a row; the tree's centres (8 bytes a coordinate, about 20 a leaf besides);
    the float32 codebooks (16 centres of every coordinate, about 100 bytes a block besides); the
    npy headers, config and asset list. ``extra_bytes``: a correction learnt from a measured build."""
    per_row = blocks + 4
    fixed = (8 * d + 24) * nlist + 4 * 16 * d + 100 * blocks + 1200 + extra_bytes
    return 8 * (per_row + fixed / n) / d


def scann_settings(d: int) -> list[tuple[int, int]]:
    """``(dims_per_block, blocks)`` for every block count, most blocks first, each with the smallest
    ``dims_per_block`` giving it (the most even split: ``faiss_baselines.ScannAH.settings``)."""
    return [(s.opts["dims_per_block"], s.opts["blocks"]) for s in reversed(ScannAH().settings(d))]


def scann_tree_ah(X: np.ndarray, k: int, nlist: int, dims_per_block: int, *, train: int, threshold: float,
                  threads: int):
    """ScaNN searcher: partitioning tree of ``nlist`` leaves, 4-bit AH (LUT16) scoring, no reorder."""
    import scann

    builder = (scann.scann_ops_pybind.builder(X, k, "squared_l2")
               .tree(num_leaves=nlist, num_leaves_to_search=min(nlist, 8), training_sample_size=train)
               .score_ah(dims_per_block, anisotropic_quantization_threshold=threshold))
    builder.set_n_training_threads(threads)
    if "exact_reordering" in builder.create_config():
        raise RuntimeError("ScaNN config unexpectedly reorders")
    return builder.build()


def scann_search(searcher, q: np.ndarray, k: int, nprobe: int):
    """``(None, ids)``: ``search_batched`` (one thread, not ``search_batched_parallel``) for a batch,
    ``search`` for one query; results missing from the searched leaves are -1."""
    if len(q) == 1:
        idx, _ = searcher.search(q[0], leaves_to_search=nprobe, final_num_neighbors=k)
        return None, _pad_ids([idx], k)
    idx, dist = searcher.search_batched(q, leaves_to_search=nprobe, final_num_neighbors=k)
    ids = np.asarray(idx, np.int64)
    ids[np.isnan(dist)] = -1  # search_batched pads a short result with id 0, distance NaN
    return None, ids


def scann_stored(searcher) -> dict[str, int]:
    """The files ``searcher.serialize`` writes (name -> bytes), in a temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        searcher.serialize(tmp, relative_path=True)
        files = dir_nbytes(tmp)
    if any(f.startswith("dataset") or "reorder" in f for f in files):
        raise RuntimeError(f"ScaNN stored a float dataset / reordering data: {files}")
    return files


# -------------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--n-queries", type=int, default=1000)
    p.add_argument("--data", choices=("clustered", "powerlaw", "npy"), default="clustered",
                   help="bench_faiss.py's Gaussian mixture, common.make_embeddings, or a real set (--npy)")
    p.add_argument("--npy", type=Path, default=None,
                   help="--data npy: a .npy of vectors whose last --n-queries rows query the others")
    p.add_argument("--n-clusters", type=int, default=100)
    p.add_argument("--decay", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=None,
                   help="write the clustered database there once as .npy and memory-map it (10^7 rows: 15 GB)")
    p.add_argument("--bits", type=float, default=1.0, help="target bits per coordinate (every index's file)")
    p.add_argument("--nlist", type=int, default=None, help="coarse lists; default: default_nlist(n)")
    p.add_argument("--nprobe", type=int, nargs="+", default=DEFAULT_NPROBE, help="values above nlist are skipped")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--rerank-factor", type=int, default=None, help="LPLR candidates per result; None: the index's")
    p.add_argument("--repeats", type=int, default=3, help="batch searches of all queries (median)")
    p.add_argument("--latency-queries", type=int, default=100, help="single queries timed (median)")
    p.add_argument("--faiss-train", type=int, default=100_000, help="rows faiss's IVF-PQ trains on")
    p.add_argument("--faiss-factory", nargs="*", default=["IVF{nlist},PQ{M}x4fs", "PCAR{M},IVF{nlist},PQ{M}x4fs"],
                   help="faiss index_factory templates ({M} chosen to fit --bits, {nlist})")
    p.add_argument("--no-scann", action="store_true", help="leave out ScaNN (tree + AH)")
    p.add_argument("--no-exhaustive", action="store_true",
                   help="leave out the exhaustive LPLRIndex (no 'vs exhaustive' column)")
    p.add_argument("--scann-threshold", type=float, default=0.2,
                   help="ScaNN's anisotropic_quantization_threshold (nan: plain k-means codebooks)")
    p.add_argument("--scann-train", type=int, default=None,
                   help="rows ScaNN's tree trains on; default min(n, max(64 nlist, --faiss-train))")
    p.add_argument("--threads", type=int, default=1, help="faiss and BLAS threads (builds and searches)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "runs" / "bench_ivf")
    p.add_argument("--cache", type=Path, default=ROOT / "results" / "runs" / "cache" / "bench_ivf",
                   help="folder of the cached ground truth")
    args = p.parse_args(argv)
    for name in ("n", "dim", "n_queries", "k", "repeats", "latency_queries", "faiss_train", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.bits <= 0:
        p.error(f"--bits must be positive, got {args.bits}")
    if args.nlist is not None and not 1 <= args.nlist <= args.n and args.data != "npy":
        p.error(f"--nlist must be 1 to --n, got {args.nlist}")
    if (args.data == "npy") != (args.npy is not None):
        p.error("--npy goes with --data npy, and --data npy needs --npy")
    if args.scann_train is not None and args.scann_train < 1:
        p.error(f"--scann-train must be >= 1, got {args.scann_train}")
    if min(args.nprobe) < 1:
        p.error("--nprobe values must be >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    with threadpool_limits(args.threads):
        return run(args)


def run(args: argparse.Namespace) -> dict:
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    faiss.omp_set_num_threads(args.threads)
    n, d, k = args.n, args.dim, args.k
    t0 = time.perf_counter()
    if args.data == "npy":
        X, Q = npy_split(args.npy, args.n_queries)
        n, d = X.shape
        key = f"{args.npy.stem}-q{args.n_queries}-k{k}"
    elif args.data == "clustered":
        X, Q = make_clustered(n, args.n_queries, d, decay=args.decay, n_clusters=args.n_clusters, seed=args.seed,
                              data_dir=args.data_dir, log=log)
        key = f"clustered-{n}x{d}-q{args.n_queries}-seed{args.seed}-c{args.n_clusters}-decay{args.decay:g}-k{k}"
    else:
        X, Q = make_embeddings(n, d, decay=args.decay, n_queries=args.n_queries, seed=args.seed)
        key = f"powerlaw-{n}x{d}-q{args.n_queries}-seed{args.seed}-decay{args.decay:g}-k{k}"
    log(f"data {time.perf_counter() - t0:.1f}s")
    nlist = args.nlist or default_nlist(n)
    if not 1 <= nlist <= n:
        raise SystemExit(f"bench_ivf: --nlist must be 1 to the {n} rows, got {nlist}")
    nprobes = sorted({p for p in args.nprobe if p <= nlist})
    label = {"clustered": "synthetic", "powerlaw": "powerlaw", "npy": args.npy and args.npy.stem}[args.data]
    name = f"{label}-{n}x{d}-{args.bits:g}bc"
    shown = label if args.data == "npy" else args.data  # the data's name in the table and the plot
    gt = ground_truth(X, Q, k, args.cache / f"gt-{key}.npy", log)
    rows: list[dict] = []
    search_kw = {} if args.rerank_factor is None else {"rerank_factor": args.rerank_factor}

    def row(method, kind, nprobe, bits, I, batch_s, lat_ms, built, ref=None, **extra):
        r = {"method": method, "kind": kind, "nprobe": nprobe, "bits_per_coord": bits,
             "recall": recall_at_k(I, gt, k), "qps": len(Q) / batch_s, "latency_ms": lat_ms, **built, **extra}
        if ref is not None:
            r["vs_exhaustive"] = recall_at_k(I, ref, k)
        rows.append(r)
        log(f"{method:34s} nprobe={r.get('nprobe_label', nprobe)!s:>5} bits={bits:.3f} "
            f"recall={r['recall']:.3f} qps={r['qps']:.0f} 1q={lat_ms:.2f}ms")

    def build(make, warm):
        """``(index, {build_s, build_peak_mib, resident_mib})``: build, then one warm-up search."""
        with PeakRSS() as mem:
            t = time.perf_counter()
            index = make()
            build_s = time.perf_counter() - t
        warm(index)
        return index, {"build_s": build_s, "build_peak_mib": mem.peak_mib, "build_anon_peak_mib": mem.anon_peak_mib,
                       "resident_mib": mem.held_since_entry()}

    scann_info: dict = {"enabled": False, "version": package_version("scann")}
    skipped = []
    if args.no_scann:
        scann_info["reason"] = "--no-scann"
    elif (reason := ScannAH().unavailable_reason()) is not None:
        scann_info["reason"] = reason
        skipped.append({"method": "scann", "reason": reason})
        log(f"note: ScaNN left out: {reason}")
    else:
        scann_info["enabled"] = True

    # one-time costs (lazy imports, BLAS and OpenMP buffers) before anything is measured
    small = X[: min(n, 4000)]
    LPLRIndex(d, bits_per_coordinate=args.bits, nlist=min(8, len(small)), seed=args.seed).build(small).search(Q[:5], k)
    warm = faiss.index_factory(d, f"IVF{min(8, len(small))},PQ{2 if d % 2 == 0 else 1}x4fs")
    warm.train(small)
    warm.add(small)
    warm.search(Q[:5], k)
    if scann_info["enabled"]:
        warm = scann_tree_ah(small, k, min(8, len(small)), 2, train=len(small), threshold=args.scann_threshold,
                             threads=args.threads)
        scann_search(warm, Q[:5], k, 2)
        scann_search(warm, Q[:1], k, 2)
    del small, warm
    _trim()

    # ---- LPLR, exhaustive: the reference
    lplr = lambda nl: LPLRIndex(d, bits_per_coordinate=args.bits, nlist=nl, seed=args.seed).build(X)  # noqa: E731
    ref, lplr_info = None, {"rank": None, "exhaustive_bits": None}
    if not args.no_exhaustive:
        index, built = build(lambda: lplr(None), lambda ix: ix.search(Q[:10], k, **search_kw))
        I, b, lat = timed(lambda q, ix=index: ix.search(q, k, **search_kw), Q, args.repeats, args.latency_queries)
        ref = I
        row("lplr exhaustive", "lplr exhaustive", None, index.bits_per_coordinate, I, b, lat, built,
            nbytes=index.nbytes, nlist=None, nprobe_label="all")
        lplr_info = {"rank": index.rank, "exhaustive_bits": index.bits_per_coordinate}
        del index
        _trim()

    # ---- LPLR, partitioned
    index, built = build(lambda: lplr(nlist), lambda ix: ix.search(Q[:10], k, **search_kw))
    parts = index.storage_breakdown()
    lplr_info.update(nlist=index.nlist, default_nprobe=index.nprobe, storage_breakdown=parts, ivf_rank=index.rank,
                     codec=index.codec,
                     nprobe_report=getattr(index, "nprobe_report", None))
    log(f"lplr nlist={index.nlist}, default nprobe {index.nprobe}; partition per row: centroids "
        f"{8 * parts.get('coarse_centroids', 0) / n:.2f} bits, list numbers {8 * parts.get('list_numbers', 0) / n:.2f}")
    I_all = np.asarray(index.search(Q, k, nprobe=index.nlist, **search_kw)[1])  # every list: the same codes, all scanned
    with tempfile.TemporaryDirectory() as tmp:  # a user's first query after a memory-mapped load
        index.save(Path(tmp) / "ivf.lplr")
        t = time.perf_counter()
        loaded = LPLRIndex.load(Path(tmp) / "ivf.lplr", mmap=True)
        lplr_info["load_s"] = time.perf_counter() - t
        t = time.perf_counter()
        loaded.search(Q[:1], k, **search_kw)
        lplr_info["first_query_after_load_s"] = time.perf_counter() - t
        del loaded
    log(f"lplr nlist={index.nlist}: memory-mapped load {lplr_info['load_s']:.2f} s, first query "
        f"{lplr_info['first_query_after_load_s']:.2f} s")
    for nprobe in sorted(set(nprobes) | {index.nprobe, index.nlist}):
        I, b, lat = timed(lambda q, ix=index, p=nprobe: ix.search(q, k, nprobe=p, **search_kw), Q, args.repeats,
                          args.latency_queries)
        star = "*" if nprobe == index.nprobe else ""
        row(f"lplr ivf{index.nlist}", "lplr ivf", nprobe, index.bits_per_coordinate, I, b, lat, built, ref=ref,
            nbytes=index.nbytes, nlist=index.nlist, nprobe_label=f"{nprobe}{star}", default_nprobe=bool(star),
            vs_all_lists=recall_at_k(I, I_all, k))
    del index
    _trim()

    # ---- faiss: the largest M whose measured file fits the target bits
    sample = np.sort(np.random.default_rng(args.seed).choice(n, min(n, args.faiss_train), replace=False))
    xt = np.ascontiguousarray(X[sample])
    for template in args.faiss_factory:
        fx = None
        lists = factory_nlist(template, nlist)  # the template's own list count sizes its M
        for m in faiss_candidates(template, n, d, lists, args.bits):
            fname = template.format(M=m, nlist=nlist)

            def make(fname=fname, xt=xt):
                ix = faiss.index_factory(d, fname)
                ix.train(xt)
                for s in range(0, n, FAISS_ADD_ROWS):  # bounded temporaries (the PCA of what is added)
                    ix.add(np.ascontiguousarray(X[s : s + FAISS_ADD_ROWS]))
                return ix

            fx, built = build(make, lambda ix: ix.search(Q[:10], k))
            nbytes = len(faiss.serialize_index(fx))
            if 8 * nbytes / (n * d) <= args.bits:
                break
            log(f"faiss {fname}: {8 * nbytes / (n * d):.3f} b/c over {args.bits:g}, trying a smaller M")
            fx = None
            _trim()
        if fx is None:
            skipped.append({"method": "faiss", "template": template, "reason": f"no M fits {args.bits:g} b/c"})
            log(f"faiss {template}: no M fits {args.bits:g} b/c")
            continue
        ivf = faiss.extract_index_ivf(fx)
        for nprobe in nprobes:
            ivf.nprobe = nprobe  # (a pre-transform rejects IVF search parameters)
            I, b, lat = timed(lambda q, ix=fx: ix.search(q, k), Q, args.repeats, args.latency_queries)
            row(f"faiss {fname}", f"faiss {template}", nprobe, 8 * nbytes / (n * d), I, b, lat, built,
                nbytes=nbytes, nlist=lists, nprobe_label=str(nprobe))
        del fx, ivf
        _trim()
    del xt

    # ---- ScaNN, tree + AH: the most blocks (smallest dims_per_block) whose serialized files fit
    if scann_info["enabled"]:
        train = min(n, args.scann_train or max(64 * nlist, args.faiss_train))
        scann_info.update(nlist=nlist, training_sample_size=train, anisotropic_threshold=args.scann_threshold,
                          metric="squared_l2", hash_type="lut16", reorder=None, tried=[])
        settings, searcher, extra, last = scann_settings(d), None, 0.0, None
        p0 = min(nprobes or [1])  # the warm-up search's leaves
        for _ in range(3):  # the estimate, corrected by each measured build: rarely a second build
            fits = [(p, m) for p, m in settings
                    if (last is None or m < last) and scann_bits_estimate(m, n, d, nlist, extra) <= args.bits]
            if not fits:
                break
            dpb, m = fits[0]
            searcher, built = build(
                lambda dpb=dpb: scann_tree_ah(X, k, nlist, dpb, train=train, threshold=args.scann_threshold,
                                              threads=args.threads),
                lambda s: (scann_search(s, Q[:10], k, p0), scann_search(s, Q[:1], k, p0)))
            files = scann_stored(searcher)
            nbytes = sum(files.values())
            bits = 8 * nbytes / (n * d)
            scann_info["tried"].append({"dims_per_block": dpb, "blocks": m, "bits_per_coord": bits,
                                        "estimate": scann_bits_estimate(m, n, d, nlist, extra)})
            if bits <= args.bits:
                break
            log(f"scann dims_per_block={dpb}: {bits:.3f} b/c over {args.bits:g}, trying fewer blocks")
            extra += nbytes - scann_bits_estimate(m, n, d, nlist, extra) * n * d / 8
            searcher, last = None, m
            _trim()
        if searcher is None:
            reason = f"no dims_per_block fits {args.bits:g} b/c"
            scann_info["reason"] = reason
            skipped.append({"method": "scann", "reason": reason})
            log(f"scann: {reason}")
        else:
            scann_info.update(dims_per_block=dpb, blocks=m, stored_files=files, nbytes=nbytes)
            method = f"scann tree{nlist},AH{m}x4 (dpb {dpb})"
            for nprobe in nprobes:
                I, b, lat = timed(lambda q, s=searcher, p=nprobe: scann_search(s, q, k, p), Q, args.repeats,
                                  args.latency_queries)
                row(method, "scann tree-ah", nprobe, bits, I, b, lat, built, nbytes=nbytes, nlist=nlist,
                    nprobe_label=str(nprobe), dims_per_block=dpb, blocks=m)
            log(f"scann files: {files}")
            del searcher
            _trim()

    cols = [("method", "method", ""), ("nprobe_label", "nprobe", ""), ("bits_per_coord", "b/c (file)", ".3f"),
            ("recall", f"recall {k}@{k}", ".3f"), ("vs_exhaustive", "vs exhaustive", ".3f"),
            ("vs_all_lists", "vs all lists", ".3f"),
            ("qps", "q/s (batch)", ",.0f"), ("latency_ms", "1-query ms", ".3f"), ("build_s", "build s", ".1f"),
            ("build_peak_mib", "build peak MiB", ",.0f"), ("build_anon_peak_mib", "build anonymous peak MiB", ",.0f"),
            ("resident_mib", "resident MiB", ",.0f")]
    info = machine()
    head = (f"{n:,} x {d} {shown} (seed {args.seed}), {len(Q)} queries, k={k}, target {args.bits:g} b/c, "
            f"nlist={nlist}, {args.threads} thread(s). LPLR: rank "
            f"{'not built' if lplr_info['rank'] is None else lplr_info['rank']} (exhaustive), "
            f"{lplr_info['ivf_rank']} (partitioned), codec {lplr_info['codec']}, "
            f"default nprobe {lplr_info['default_nprobe']} (marked *); partition per row: coarse centroids "
            f"{8 * parts.get('coarse_centroids', 0) / n:.2f} bits, list numbers "
            f"{8 * parts.get('list_numbers', 0) / n:.2f} bits (in its b/c). b/c: the file "
            f"(LPLRIndex.bits_per_coordinate; faiss.serialize_index, 64-bit ids included; ScaNN: every file "
            f"searcher.serialize writes: a byte per 4-bit AH code, an int32 leaf id a row, the tree's centres, "
            f"codebooks; no reordering, anisotropic threshold {args.scann_threshold:g}). vs exhaustive: "
            f"recall against the exhaustive LPLRIndex's results; vs all lists: against the same partitioned "
            f"index searched with nprobe = nlist (what scanning fewer lists loses). Build peak: the process's peak resident set "
            f"during the build above the one before it ({PeakRSS.method}; it counts the pages of a memory-mapped "
            f"input); anonymous: RssAnon sampled every 10 ms, what the build allocates; resident: after the build "
            f"and a warm-up search. q/s: median of {args.repeats} batches; 1-query ms: median of "
            f"{min(args.latency_queries, len(Q))}. The partitioned LPLR index, saved and memory-mapped: load "
            f"{lplr_info['load_s']:.2f} s, first query {lplr_info['first_query_after_load_s']:.2f} s.")
    table = f"{head}\n\n{markdown_table(rows, cols)}"
    print(table)
    payload = {"benchmark": "bench_ivf", "name": name, "n": n, "dim": d, "nlist": nlist,
               "args": {a: (str(v) if isinstance(v, Path) else v) for a, v in vars(args).items()},
               "machine": info, "memory_method": PeakRSS.method, "lplr": lplr_info, "scann": scann_info,
               "skipped": skipped,
               "rows": rows}
    write_results(args.out, name, payload, table)
    plot(rows, args.out / f"{name}.png", f"{n:,} x {d} {shown}, {args.bits:g} b/c, nlist={nlist}, "
                                         f"{args.threads} thread(s)", k)
    log(f"wrote {args.out / name}.{{json,md,png}}")
    return payload


def plot(rows: list[dict], path: Path, title: str, k: int) -> None:
    """Recall against batch q/s (log), one line per index, each point's nprobe written beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        label = f"{method} ({rs[0]['bits_per_coord']:.3f} b/c)"
        if rs[0]["nprobe"] is None:
            ax.plot([rs[0]["recall"]], [rs[0]["qps"]], "*", ms=14, color="black", label=label)
            continue
        rs.sort(key=lambda r: r["nprobe"])
        style = "s--" if rs[0]["kind"].startswith("scann") else "o-"
        (line,) = ax.plot([r["recall"] for r in rs], [r["qps"] for r in rs], style, label=label)
        for r in rs:
            ax.annotate(r["nprobe_label"], (r["recall"], r["qps"]), textcoords="offset points", xytext=(4, 4),
                        fontsize=8, color=line.get_color())
    ax.set_yscale("log")
    ax.set_xlabel(f"recall {k}@{k}")
    ax.set_ylabel("queries / s, batch (log)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title + "\n(numbers: nprobe; * LPLR's default)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
