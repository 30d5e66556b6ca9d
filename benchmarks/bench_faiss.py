"""Benchmark LPLRIndex against faiss's compressed flat indexes at equal bits per coordinate.

One run builds, on the same database and queries, the exact ``IndexFlatL2`` reference,
LPLRIndex (several settings, both scoring modes) and the faiss families of
:mod:`faiss_baselines` (PQ, PQ fast-scan 4-bit, OPQ + PQ, SQ4, SQ8, RaBitQ behind a random
rotation, PCA + SQ8, LSH), and, when installed (the ``bench`` extra), ScaNN's brute-force
asymmetric hashing (``ScaNN-AH``, 4-bit LUT16 codes, no reordering) and RaBitQ-Library's
extended RaBitQ (``RaBitQLib``, one cluster), each matched to the bit budgets (default 0.5, 1,
2, 4 bits per coordinate). Storage is measured, never assumed: faiss indexes by the length of
``faiss.serialize_index``, ScaNN by the files ``searcher.serialize`` writes, rabitqlib by the
file its ``save`` writes, LPLRIndex by the size of the file ``save`` writes; all count
per-vector codes plus all shared parts (codebooks, rotations, PCA matrices, factors, headers)
amortised over the database.

Per row: recall 1@1 and 10@10 against exact search, 3-NN accuracy (when labels exist),
build time (train + add), throughput for one batch of queries (median over repeats),
single-query latency (median), measured bits per coordinate and file size. Results go to
``<out>/<name>.json`` (with the arguments, machine, library versions and thread counts),
``<out>/<name>.md`` and two PNG plots.

Examples
--------
Smoke run (seconds, used by the test suite)::

    .venv/bin/python benchmarks/bench_faiss.py --smoke

Synthetic 10^6 x 384 set with a decaying spectrum::

    .venv/bin/python benchmarks/bench_faiss.py --synthetic --n 1000000 --dim 384 --n-queries 1000

The pipelines' datasets, on the same model, split and embedding cache as
``python -m pipelines.experiment --dataset D --full`` (embedded first if not cached)::

    .venv/bin/python benchmarks/bench_faiss.py --dataset bbc
    .venv/bin/python benchmarks/bench_faiss.py --dataset fashion-mnist
    .venv/bin/python benchmarks/bench_faiss.py --dataset cifar10 --cifar-dir DIR --model mobilenet_v3_small

Any embeddings in files (``.npy``, or ``.npz`` with ``embeddings`` and ``labels``)::

    .venv/bin/python benchmarks/bench_faiss.py --name my-set --embeddings base.npz --queries queries.npz

A single labelled file is split like the pipelines split BBC News (500 held out, stratified)::

    .venv/bin/python benchmarks/bench_faiss.py --name my-set --embeddings all.npz --test-size 500

Faiss indexes train on at most ``--max-train`` database vectors (a seeded random subset);
``IndexPQ``'s polysemous training, which ``index_factory`` switches on, is switched off (it only
serves polysemous search and leaves the ADC results unchanged). Everything else is faiss's
defaults (RaBitQ queries quantized to ``qb=4`` bits, PQ k-means 25 iterations, ...).
"""
from __future__ import annotations

import os

# Several processes share this machine's cores: with OpenMP's default busy-waiting, faiss's
# parallel regions slow down by 10-30x when another process holds a core. Passive waiting
# must be chosen before libgomp is loaded (i.e. before importing faiss); it is recorded in the
# JSON. Set OMP_WAIT_POLICY yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Sequence  # noqa: E402

import lplr_index  # noqa: F401, E402 (first: it loads faiss with this CPU's BLAS kernels)
import faiss  # noqa: E402
import numpy as np  # noqa: E402
from numpy.typing import NDArray  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # pipelines/ runs from the checkout
import faiss_baselines as fb  # noqa: E402
import faiss_report  # noqa: E402

import lplr_index  # noqa: E402
from lplr_index import LPLRIndex, accuracy, exact_knn, knn_vote, recall_at_k  # noqa: E402
from lplr_index.evaluation import rate_distortion  # noqa: E402
from lplr_index.index import DEFAULT_RERANK_FACTOR  # noqa: E402
from pipelines.image_embedders import IMAGE_MODELS  # noqa: E402  (imports no torch)

DEFAULT_OUT = Path("results") / "runs" / "bench_faiss"  # ignored by git; reference results: --out results/reference/bench_faiss
SMOKE_OUT = Path("results") / "runs" / "bench_faiss_smoke"
#: pipelines datasets --dataset accepts
PIPELINE_DATASETS = ("bbc", "bbc-sentences", "fortunes", "fashion-mnist", "cifar10")
IMAGE_DATASETS = ("fashion-mnist", "cifar10")  # of those, the image ones (full size, --model)

# LPLRIndex settings compared; the budget is added per run.
LPLR_VARIANTS: dict[str, dict[str, Any]] = {
    # the library's defaults: grouped codes following the spectrum (codec="auto"; at 3.5+ b/c
    # the scalar 8-bit codes when they win on the sample)
    "default": {},
    # the scalar LPLR codes (the 0.2.0 default): bits_l picked from the budget (4 up to 2
    # bits/coord, 8 at 4), per-column MSE quantizer, 2 refinements
    "scalar": {"codec": "scalar"},
    # scalar codes of fixed widths; a variant that resolves to the same settings as one
    # already run at a budget is skipped there
    "bl4": {"bits_l": 4, "codec": "scalar"},
    "bl8": {"bits_l": 8},
    # the paper's LPLR: B = B' = 8, one global min/max quantizer, no refinement, its
    # least-squares factor (uncentred)
    "paper": {"bits_l": 8, "bits_r": 8, "quantizer": "minmax", "refine_iters": 0, "factor": "lstsq"},
}


# ----------------------------------------------------------------------------- data
@dataclass
class Dataset:
    """Database, queries and (optional) labels of one benchmark run.

    Attributes
    ----------
    name : str
    xb : ndarray of shape (n, dim), float32
        Database vectors.
    xq : ndarray of shape (n_queries, dim), float32
        Query vectors (never compressed).
    yb, yq : ndarray of shape (n,) and (n_queries,), or None
        Labels for the 3-NN accuracy.
    info : dict
        How the data were obtained.
    """

    name: str
    xb: NDArray[np.float32]
    xq: NDArray[np.float32]
    yb: NDArray[Any] | None
    yq: NDArray[Any] | None
    info: dict[str, Any]


def make_synthetic(n: int, n_queries: int, dim: int, *, decay: float = 0.5, n_clusters: int = 100,
                   cluster_std: float = 1.0, seed: int = 0, chunk: int = 100_000,
                   out: np.ndarray | None = None) -> Dataset:
    """Seeded Gaussian-mixture vectors with a power-law (decaying) spectrum.

    Each vector is ``x = ((c_y + cluster_std * g) * s) B^T`` with ``y`` a uniform cluster
    label, ``c_y ~ N(0, I)`` the cluster centre, ``g ~ N(0, I)``, the per-direction scale
    ``s_j = (j + 1) ** -decay`` and ``B`` a random orthogonal basis, so the covariance has
    eigenvalues proportional to ``(j + 1) ** (-2 decay)`` in random directions (no
    coordinate is special). Database and queries are independent draws; the database does
    not depend on ``n_queries``.

    Parameters
    ----------
    n : int
        Database vectors.
    n_queries : int
        Query vectors.
    dim : int
        Dimension.
    decay : float, default=0.5
        Power-law exponent of the per-direction standard deviation.
    n_clusters : int, default=100
        Number of mixture components (labels for the 3-NN accuracy).
    cluster_std : float, default=1.0
        Within-cluster standard deviation relative to the spread of the centres.
    seed : int, default=0
    chunk : int, default=100000
        Rows generated at a time (bounds the float64 temporaries).
    out : ndarray of shape (n, dim), float32, default=None
        Where the database is written (a memory-mapped ``.npy``: data larger than memory);
        None: a new array.

    Returns
    -------
    Dataset
    """
    ss_shared, ss_base, ss_query = np.random.SeedSequence(seed).spawn(3)
    rng = np.random.default_rng(ss_shared)
    scale = (1.0 + np.arange(dim)) ** (-float(decay))
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    centres = rng.standard_normal((n_clusters, dim))

    def draw(m: int, ss: np.random.SeedSequence, x=None) -> tuple[np.ndarray, np.ndarray]:
        r = np.random.default_rng(ss)
        x = np.empty((m, dim), np.float32) if x is None else x
        y = r.integers(n_clusters, size=m)
        for s in range(0, m, chunk):
            yy = y[s:s + chunk]
            z = (centres[yy] + cluster_std * r.standard_normal((len(yy), dim))) * scale
            x[s:s + chunk] = z @ basis.T
        return x, y.astype(np.int64)

    if out is not None and (out.shape != (n, dim) or out.dtype != np.float32):
        raise ValueError(f"out must be a float32 array of shape ({n}, {dim}), got {out.shape} {out.dtype}")
    xb, yb = draw(n, ss_base, out)
    xq, yq = draw(n_queries, ss_query)
    info = {"source": "synthetic", "n": n, "n_queries": n_queries, "dim": dim, "decay": decay,
            "n_clusters": n_clusters, "cluster_std": cluster_std, "seed": seed,
            "spectrum": "per-direction std (j+1)^-decay in a random orthogonal basis"}
    return Dataset(f"synthetic-{n}x{dim}", xb, xq, yb, yq, info)


def _load_array(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Read ``.npy`` (vectors) or ``.npz`` (``embeddings`` and optional ``labels``)."""
    if not path.exists():
        raise SystemExit(f"bench_faiss: {path}: no such file")
    if path.suffix == ".npz":
        with np.load(path) as z:
            if "embeddings" in z:
                x = z["embeddings"]
            elif len(z.files) == 1:
                x = z[z.files[0]]
            else:
                raise SystemExit(f"bench_faiss: {path}: expected an 'embeddings' array, found {z.files}")
            y = z["labels"] if "labels" in z else None
        return x, y
    return np.load(path, allow_pickle=False), None


def load_files(embeddings: Path, queries: Path | None, train_labels: Path | None, test_labels: Path | None,
               name: str | None, *, test_size: int | None = None, split_seed: int = 0) -> Dataset:
    """Database and queries from files (see :func:`_load_array`); labels optional.

    Parameters
    ----------
    embeddings : Path
        ``.npy`` matrix, or ``.npz`` file holding ``embeddings`` (and ``labels``).
    queries : Path or None
        Same for the queries; None splits ``embeddings`` instead (see ``test_size``).
    train_labels, test_labels : Path or None
        ``.npy`` label vectors; override labels found in ``.npz`` files. Without ``queries``,
        ``train_labels`` labels the whole ``embeddings`` file.
    name : str or None
        Dataset name for the output files (default: the embeddings file's stem).
    test_size : int or None
        Without ``queries``: hold out this many labelled vectors as queries with the
        pipelines' stratified split (``pipelines.datasets.stratified_split``), the rest is
        the database.
    split_seed : int, default=0
        Seed of that split.

    Returns
    -------
    Dataset
    """
    xb, yb = _load_array(embeddings)
    if train_labels is not None:
        yb = np.load(train_labels, allow_pickle=False)
    split = None
    if queries is None:
        if yb is None or test_size is None:
            raise SystemExit("bench_faiss: without --queries, --embeddings must carry labels (or "
                             "--train-labels) and --test-size must say how many to hold out")
        from pipelines.datasets import stratified_split  # the pipelines' own protocol

        tr, te = stratified_split(np.asarray(yb), test_size, seed=split_seed)
        xb, xq, yb, yq = xb[tr], xb[te], yb[tr], yb[te]
        split = {"test_size": int(test_size), "split_seed": int(split_seed),
                 "how": "pipelines.datasets.stratified_split"}
    else:
        xq, yq = _load_array(queries)
    if test_labels is not None:
        yq = np.load(test_labels, allow_pickle=False)
    for what, x in (("embeddings", xb), ("queries", xq)):
        if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
            raise SystemExit(f"bench_faiss: {what} must be a 2-D float matrix, got {x.dtype} {x.shape}")
    if xb.shape[1] != xq.shape[1]:
        raise SystemExit(f"bench_faiss: queries have {xq.shape[1]} dimensions, but the embeddings "
                         f"have {xb.shape[1]}")
    if (yb is None) != (yq is None):
        yb = yq = None  # accuracy needs both
    for what, y, x in (("train labels", yb, xb), ("test labels", yq, xq)):
        if y is not None and len(y) != len(x):
            raise SystemExit(f"bench_faiss: {what} have {len(y)} entries for {len(x)} vectors")
    info = {"source": "files", "embeddings": str(embeddings), "queries": str(queries) if queries else None,
            "split": split,
            "train_labels": str(train_labels) if train_labels else None,
            "test_labels": str(test_labels) if test_labels else None,
            "n": int(xb.shape[0]), "n_queries": int(xq.shape[0]), "dim": int(xb.shape[1])}
    return Dataset(name or embeddings.stem, np.ascontiguousarray(xb, np.float32),
                   np.ascontiguousarray(xq, np.float32), yb, yq, info)


def load_pipeline_dataset(dataset: str, name: str | None, *, cifar_dir: Path | None = None,
                          model: str | None = None, weights: str | None = None,
                          threads: int | None = None) -> Dataset:
    """A pipelines dataset at full size: training embeddings as database, test ones as queries.

    Same model, preprocessing, split and embedding cache as ``python -m pipelines.experiment
    --dataset <dataset> --full`` (see ``pipelines.experiment.load_dataset_embeddings``).
    """
    from pipelines.experiment import load_dataset_embeddings

    argv = ["--full"] if dataset in IMAGE_DATASETS else []
    if cifar_dir is not None:
        argv += ["--cifar-dir", str(cifar_dir)]
    for flag, value in (("--model", model), ("--weights", weights), ("--threads", threads)):
        if value is not None:
            argv += [flag, str(value)]
    try:
        emb = load_dataset_embeddings(dataset, argv)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as exc:
        raise SystemExit(f"bench_faiss: --dataset {dataset}: {exc}") from None
    model = emb.info["embedding"].get("model", "")
    default_name = {"all-MiniLM-L6-v2": "minilm"}.get(model, re.sub(r"[^a-z0-9]+", "", model.lower()))
    info = {"source": "pipelines", "dataset": dataset, "pipelines": emb.info,
            "n": int(emb.X_train.shape[0]), "n_queries": int(emb.X_test.shape[0]),
            "dim": int(emb.X_train.shape[1])}
    return Dataset(name or f"{dataset}-{default_name}",
                   np.ascontiguousarray(emb.X_train, np.float32), np.ascontiguousarray(emb.X_test, np.float32),
                   emb.y_train, emb.y_test, info)


# ---------------------------------------------------------------------- measurement
@dataclass
class Timing:
    """Medians of the query timings of one row."""

    first_s: float
    batch_s: float
    batch_repeats: int
    latency_ms: float
    latency_n: int


def add_source_args(p: argparse.ArgumentParser, bits: Sequence[float] = (0.5, 1.0, 2.0, 4.0)) -> None:
    """The data options the single-purpose benchmarks share (``bench_latency.py``,
    ``bench_build.py``): a pipelines dataset or the synthetic mixture, and the budgets."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--dataset", choices=PIPELINE_DATASETS, default="fashion-mnist",
                     help="a pipelines dataset (embedded first if not cached; default fashion-mnist)")
    src.add_argument("--synthetic", action="store_true", help="bench_faiss.py's synthetic mixture instead")
    p.add_argument("--n", type=int, default=1_000_000, help="synthetic database rows")
    p.add_argument("--dim", type=int, default=384, help="synthetic dimension")
    p.add_argument("--bits", type=float, nargs="+", default=list(bits), help="budgets, bits per coordinate")


def check_source_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("n", "dim"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if any(b <= 0 for b in args.bits):
        p.error(f"--bits must be positive, got {args.bits}")


def load_source(args: argparse.Namespace, n_queries: int = 1000) -> Dataset:
    """The data :func:`add_source_args` selected (synthetic: ``n_queries`` queries)."""
    if args.synthetic:
        return make_synthetic(args.n, n_queries, args.dim)
    return load_pipeline_dataset(args.dataset, None)


def measure_threads(search: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None, xq: np.ndarray,
                    args: argparse.Namespace, *,
                    search_t: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]] | None = None
                    ) -> tuple[np.ndarray, dict[int, Timing]]:
    """:func:`measure_search` once per thread count of ``args.speed_threads``.

    faiss's OpenMP threads and the BLAS threads (threadpoolctl) are set for each
    measurement and restored afterwards. ``search_t(Q, threads)`` replaces ``search`` for
    libraries that take the thread count per call (ScaNN, rabitqlib).
    """
    from threadpoolctl import threadpool_limits

    before = faiss.omp_get_max_threads()
    timings: dict[int, Timing] = {}
    I = None
    try:
        for t in args.speed_threads:
            faiss.omp_set_num_threads(t)
            with threadpool_limits(t):
                fn = search if search_t is None else (lambda q, t=t: search_t(q, t))
                I, timings[t] = measure_search(fn, xq, batch=args.batch, repeats=args.repeats,
                                               latency_queries=args.latency_queries, time_cap_s=args.time_cap)
    finally:
        faiss.omp_set_num_threads(before)
    return I, timings


def measure_search(search: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], xq: np.ndarray, *,
                   batch: int, repeats: int, latency_queries: int, time_cap_s: float
                   ) -> tuple[np.ndarray, Timing]:
    """Search all queries once (results for the metrics, also the warm-up), then time.

    Parameters
    ----------
    search : callable
        ``search(Q) -> (D, I)`` with k fixed.
    xq : ndarray of shape (n_queries, dim), float32
    batch : int
        Queries per timed batch (the first ``batch`` queries).
    repeats : int
        Timed batch repeats; fewer when they would exceed ``time_cap_s``.
    latency_queries : int
        Single queries timed one by one (fewer when exceeding ``time_cap_s``).
    time_cap_s : float
        Soft cap on the seconds spent on each of the two timing loops (at least one sample
        is always taken).

    Returns
    -------
    I : ndarray of shape (n_queries, k), int64
        Neighbour ids of all queries.
    Timing
    """
    t0 = time.perf_counter()
    _, I = search(xq)
    first = time.perf_counter() - t0
    qb = np.ascontiguousarray(xq[:batch])
    times: list[float] = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        search(qb)
        times.append(time.perf_counter() - t0)
        if sum(times) >= time_cap_s:
            break
    search(xq[:1])  # warm the single-query path
    lat: list[float] = []
    for i in range(max(1, min(latency_queries, len(xq)))):
        q = np.ascontiguousarray(xq[i:i + 1])
        t0 = time.perf_counter()
        search(q)
        lat.append(time.perf_counter() - t0)
        if sum(lat) >= time_cap_s:
            break
    return np.asarray(I), Timing(first, float(np.median(times)), len(times),
                                 1e3 * float(np.median(lat)), len(lat))


@dataclass
class Context:
    """Everything shared by the rows of one run."""

    data: Dataset
    gt: np.ndarray
    args: argparse.Namespace

    @property
    def n(self) -> int:
        return int(self.data.xb.shape[0])

    @property
    def dim(self) -> int:
        return int(self.data.xb.shape[1])


def quality(ctx: Context, I: np.ndarray) -> dict[str, float | None]:
    """Recall 1@1, 10@10 (library helpers) and 3-NN accuracy where labels exist."""
    k = ctx.args.k
    out: dict[str, float | None] = {
        "recall_1_at_1": recall_at_k(I, ctx.gt, 1),
        f"recall_{k}_at_{k}": recall_at_k(I, ctx.gt, k),
        "knn3_accuracy": None,
    }
    if ctx.data.yb is not None and k >= 3:
        out["knn3_accuracy"] = accuracy(ctx.data.yq, knn_vote(I[:, :3], ctx.data.yb))
    return out


def _row(ctx: Context, *, method: str, family: str, param: str, mode: str, targets: Sequence[float],
         nbytes: int, code_bits: float | None, train_s: float, add_s: float, I: np.ndarray,
         timing: dict[int, Timing], notes: str = "", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One result row; ``qps`` and ``latency_ms`` are those of the first thread count measured,
    ``qps_{t}t`` and ``latency_ms_{t}t`` those of each."""
    per_thread = {f"{key}_{t}t": val for t, tm in timing.items() for key, val in (
        ("qps", min(ctx.args.batch, len(ctx.data.xq)) / tm.batch_s), ("latency_ms", tm.latency_ms))}
    timing = next(iter(timing.values()))
    bits = nbytes * 8.0 / (ctx.n * ctx.dim)
    slack = ctx.args.slack
    within = None if not targets else bool(bits <= min(targets) * (1 + slack))
    row = {
        "dataset": ctx.data.name, "method": method, "family": family, "param": param, "mode": mode,
        "targets": list(targets), "bits_per_coordinate": bits, "code_bits_per_coordinate": code_bits,
        "file_bytes": int(nbytes), "within_budget": within,
        "train_s": train_s, "add_s": add_s, "build_s": train_s + add_s,
        "first_search_s": timing.first_s,
        "batch_queries": int(min(ctx.args.batch, len(ctx.data.xq))),
        "batch_s": timing.batch_s, "batch_repeats": timing.batch_repeats,
        "qps": min(ctx.args.batch, len(ctx.data.xq)) / timing.batch_s,
        "latency_ms": timing.latency_ms, "latency_queries": timing.latency_n,
        **quality(ctx, I), "notes": notes,
        # other processes share the cores: the 1-minute load average when the row finished
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "timed_threads": list(ctx.args.speed_threads), **per_thread,
    }
    if extra:
        row.update(extra)
    return row


def run_flat(ctx: Context) -> dict[str, Any]:
    """Exact float32 reference row."""
    built = fb.build_flat(ctx.data.xb)
    I, timing = _time_faiss(ctx, built.index)
    return _row(ctx, method="Flat (exact)", family="Flat", param="float32", mode="", targets=[],
                nbytes=built.nbytes, code_bits=32.0, train_s=0.0, add_s=built.add_s, I=I,
                timing=timing, notes="exact reference")


def _time_faiss(ctx: Context, index: faiss.Index) -> tuple[np.ndarray, dict[int, Timing]]:
    k = ctx.args.k
    return measure_threads(lambda q: index.search(q, k), ctx.data.xq, ctx.args)


def run_faiss_family(ctx: Context, family: fb.Family, xtrain: np.ndarray,
                     calib: fb.SizeCalibrator, log: Callable[[str], None]
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Plan, build and measure every setting of one faiss family.

    Returns
    -------
    rows : list of dict
    skipped : list of dict
        Budgets the family cannot be configured for, with the reason.
    """
    args = ctx.args
    planned, skipped = fb.plan_family(family, args.budgets, calib, slack=args.slack)
    rows = []
    for setting, targets in planned.items():
        setting, built = _build_within_budget(
            setting, targets, log, args.slack, RuntimeError,
            build=lambda s: fb.build_faiss(s, ctx.data.xb, xtrain, opq_niter=args.opq_niter),
            smaller=lambda s: fb.choose_setting(family, min(targets), calib, slack=args.slack, below=s).setting,
            failed=lambda s, exc: skipped.append({"family": family.name, "budget": targets,
                                                  "reason": f"{s.param} failed: {str(exc).splitlines()[0][:160]}"}))
        if built is None:
            if setting is None:
                skipped.append({"family": family.name, "budget": targets,
                                "reason": "no setting fits after measuring"})
            continue
        I, timing = _time_faiss(ctx, built.index)
        note = "" if targets else "native rate (no budget fits / fixed rate)"
        rows.append(_row(ctx, method=family.name, family=family.name, param=setting.param, mode="",
                         targets=targets, nbytes=built.nbytes, code_bits=built.code_bits_per_coordinate,
                         train_s=built.train_s, add_s=built.add_s, I=I, timing=timing, notes=note,
                         extra={"factory": setting.factory or type(built.index).__name__}))
        log("  " + faiss_report.one_line(rows[-1], args.k))
        del built
    return rows, skipped


def _build_within_budget(setting, targets: list[float], log: Callable[[str], None], slack: float,
                         catch: type[BaseException], *, build, smaller, failed):
    """Build ``setting``; while the measured bits exceed the smallest target (the size
    prediction undershot), build the next smaller setting (``smaller(setting)``).

    Returns ``(setting, built)``: ``built`` is None when a build raised ``catch`` (reported
    through ``failed(setting, exc)``) or when no smaller setting is left (``setting`` None).
    Empty ``targets`` (a native-rate row) accept any size.
    """
    while setting is not None:
        log(f"  {setting.label}: build (targets {targets or 'native'})")
        try:
            built = build(setting)
        except catch as exc:
            failed(setting, exc)
            return setting, None
        if not targets or built.bits_per_coordinate <= min(targets) * (1 + slack):
            return setting, built
        log(f"  {setting.label}: measured {built.bits_per_coordinate:.3f} b/c over budget, stepping down")
        del built  # released before the next, smaller build
        setting = smaller(setting)
    return None, None


def run_rival_family(ctx: Context, family: fb.RivalFamily, xtrain: np.ndarray, log: Callable[[str], None]
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Plan, build and measure a rival from another library (ScaNN, rabitqlib) at each budget.

    Same rule as the faiss families: largest setting whose whole saved index fits
    ``budget * (1 + slack)``, predicted from two small builds, measured on the real build and
    stepped down if over. A library that is not installed gives one skipped entry per budget.
    """
    args = ctx.args
    reason = family.unavailable_reason() or family.unsupported(ctx.dim)
    if reason is not None:
        log(f"  skipped: {reason}")
        return [], [{"family": family.name, "budget": b, "reason": reason} for b in args.budgets]
    threads = args.threads
    sizer = fb.RivalSizer(family, xtrain, ctx.n, k=args.k)
    planned: dict[fb.RivalSetting, list[float]] = {}
    skipped: list[dict[str, Any]] = []
    for b in args.budgets:
        try:
            choice = fb.choose_rival(family, b, sizer, slack=args.slack)
        except Exception as exc:  # a library failure is a result to report
            msg = f"calibration raised {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            skipped.append({"family": family.name, "budget": b, "reason": msg, "error": True})
            continue
        if choice.setting is None:
            skipped.append({"family": family.name, "budget": b, "reason": choice.reason})
        else:
            planned.setdefault(choice.setting, []).append(b)
    rows = []
    for setting, targets in planned.items():
        setting, built = _build_within_budget(
            setting, targets, log, args.slack, Exception,
            build=lambda s: family.build(s, ctx.data.xb, xtrain, k=args.k, threads=threads),
            smaller=lambda s: fb.choose_rival(family, min(targets), sizer, slack=args.slack, below=s).setting,
            failed=lambda s, exc: skipped.append({"family": family.name, "budget": targets, "error": True,
                                                  "reason": f"{s.param} failed: {type(exc).__name__}: "
                                                            f"{str(exc).splitlines()[0][:160]}"}))
        if built is None:
            if setting is None:
                skipped.append({"family": family.name, "budget": targets, "reason": "no setting fits after measuring"})
            continue
        k = args.k
        I, timing = measure_threads(None, ctx.data.xq, args, search_t=lambda q, t: (None, built.search(q, k, t)))
        rows.append(_row(ctx, method=family.name, family=family.name, param=setting.param, mode="",
                         targets=targets, nbytes=built.nbytes, code_bits=built.code_bits_per_coordinate,
                         train_s=built.train_s, add_s=built.add_s, I=I, timing=timing, notes=built.notes,
                         extra={**built.extra, "library_version": family.version()}))
        log("  " + faiss_report.one_line(rows[-1], args.k))
        del built
    return rows, skipped


def lplr_settings_key(index: LPLRIndex) -> tuple:
    """Resolved settings of an (unbuilt) LPLRIndex, to skip variants that coincide."""
    return (index.budget, index.bits_l, index.bits_r, index.quantizer, index.refine_iters, index.seed,
            index.factor, index.codec)


def run_lplr(ctx: Context, variant: str, budget: float, log: Callable[[str], None],
             seen: dict[tuple, str] | None = None
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Build one LPLRIndex at ``budget`` and measure it in both scoring modes.

    Parameters
    ----------
    ctx : Context
    variant : str
        Key of :data:`LPLR_VARIANTS`.
    budget : float
        Bits per coordinate given to ``LPLRIndex(bits_per_coordinate=...)``.
    log : callable
    seen : dict or None
        Resolved settings already run -> variant name; a repeat is skipped (and recorded).

    Returns
    -------
    rows : list of dict
        One row per scoring mode that ran.
    skipped : list of dict
        The budget when the index cannot hold it, a scoring mode that raised, or a duplicate.
    """
    args = ctx.args
    kwargs = dict(LPLR_VARIANTS[variant])
    family = f"LPLR {variant}"
    try:
        index = LPLRIndex(ctx.dim, bits_per_coordinate=budget, seed=args.seed, **kwargs)
        key = lplr_settings_key(index)
        if seen is not None:
            if key in seen:
                log(f"  same settings as LPLR {seen[key]}: skipped")
                return [], [{"family": family, "budget": budget,
                             "reason": f"same settings as LPLR {seen[key]} at this budget"}]
            seen[key] = variant
        t0 = time.perf_counter()
        index.build(ctx.data.xb)
        build_s = time.perf_counter() - t0
    except ValueError as exc:
        return [], [{"family": family, "budget": budget, "reason": str(exc)}]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index.lplr"
        index.save(path)
        nbytes = path.stat().st_size
    if nbytes != index.nbytes:
        raise RuntimeError(f"LPLRIndex.nbytes={index.nbytes} but the saved file has {nbytes} bytes")
    codes = index.storage_breakdown()["codes"]
    if index.codec == "vq":  # the design the build chose: basis, then (group size x groups) per class,
        groups = index.layout["groups"]  # "(8b)" where a group has coarse and fine codes
        param = (f"vq {index.encoder} " + " ".join(f"{g}x{c}" + ("(8b)" if lv == 2 else "") for g, c, lv in groups)
                 + f", rank={index.rank}, br={index.bits_r}")
    else:
        param = (f"rank={index.rank}, bl={index.bits_l}, br={index.bits_r}, {index.quantizer}, "
                 f"refine={index.refine_iters}, {index.factor}")
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    rd = rate_distortion(ctx.data.xb, index, index.bits_per_coordinate)
    modes = ("fastscan", "factored") if index.fastscan_ready else ("factored",)
    for mode in modes:
        try:
            I, timing = measure_threads(lambda q: index.search(q, args.k, mode=mode), ctx.data.xq, args)
        except Exception as exc:  # a library failure is a result to report, not a reason to stop
            msg = f"search(mode={mode!r}) raised {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            log(f"  {family} [{mode}] {param}: ERROR {msg}")
            skipped.append({"family": family, "budget": budget, "reason": f"{param}: {msg}", "error": True})
            continue
        note = (f"fast-scan + exact re-rank of {DEFAULT_RERANK_FACTOR}k candidates" if mode == "fastscan"
                else "exact scan of the codes (BLAS); first search computes per-vector norms")
        rows.append(_row(ctx, method=f"LPLR {variant}", family="LPLR", param=param, mode=mode,
                         targets=[budget], nbytes=nbytes, code_bits=codes * 8.0 / (ctx.n * ctx.dim),
                         train_s=build_s, add_s=0.0, I=I, timing=timing, notes=note,
                         extra={"rank": index.rank, "bits_l": index.bits_l, "bits_r": index.bits_r,
                                "quantizer": index.quantizer, "fit_error": index.fit_error,
                                "factor": index.factor, "variant": variant,
                                "rd_ratio": rd.ratio, "rd_equivalent_bits": rd.equivalent_bits,
                                "rd_floor_ratio": rd.floor_ratio}))
        log("  " + faiss_report.one_line(rows[-1], args.k))
    del index
    return rows, skipped


# -------------------------------------------------------------------------- machine
def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    """CPU, memory, thread counts and library versions, for the JSON."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    blas = []
    try:
        from threadpoolctl import threadpool_info

        blas = [{k: d.get(k) for k in ("user_api", "internal_api", "num_threads", "prefix")}
                for d in threadpool_info()]
    except ImportError:
        pass
    return {
        "cpu": cpu, "logical_cores": os.cpu_count(), "memory_gib": mem_gib,
        "platform": platform.platform(), "python": platform.python_version(),
        "faiss_version": faiss.__version__, "numpy_version": np.__version__,
        **{f"{f.package}_version": f.version() for f in fb.rival_families()},
        "lplr_index_version": lplr_index.__version__,
        "faiss_omp_threads": faiss.omp_get_max_threads(),
        "threadpools": blas,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


# ------------------------------------------------------------------------------ CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (see ``--help``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--smoke", action="store_true",
                   help="tiny synthetic run (n=5000, d=64, 200 queries, short timings) for the test suite")
    g.add_argument("--synthetic", action="store_true", help="seeded synthetic data (default when no files)")
    g.add_argument("--n", type=int, default=1_000_000, help="synthetic database size")
    g.add_argument("--dim", type=int, default=384, help="synthetic dimension")
    g.add_argument("--n-queries", type=int, default=1000, help="synthetic queries")
    g.add_argument("--decay", type=float, default=0.5, help="synthetic spectrum: std of direction j ~ (j+1)^-decay")
    g.add_argument("--n-clusters", type=int, default=100, help="synthetic mixture components (labels)")
    g.add_argument("--cluster-std", type=float, default=1.0, help="synthetic within-cluster std")
    g.add_argument("--dataset", choices=PIPELINE_DATASETS, default=None,
                   help="a pipelines dataset with the pipelines' model, split and embedding cache (as "
                        "`python -m pipelines.experiment --dataset D --full`): database = its training "
                        "part, queries = its test part; embeds first when the cache lacks it")
    g.add_argument("--cifar-dir", type=Path, default=None,
                   help="with --dataset cifar10: the cifar-10-batches-py folder")
    g.add_argument("--model", default=None, choices=sorted(IMAGE_MODELS),
                   help="with an image --dataset: the pipelines' image model (e.g. mobilenet_v3_small, the "
                        "paper's CIFAR-10 model; default mobilenet_v2)")
    g.add_argument("--weights", default=None,
                   help="with --model: the pipelines' --weights (DEFAULT, offline or a state-dict file)")
    g.add_argument("--embeddings", type=Path, help="database vectors (.npy, or .npz with 'embeddings'/'labels')")
    g.add_argument("--queries", type=Path, help="query vectors (.npy or .npz)")
    g.add_argument("--train-labels", type=Path, help="database labels (.npy)")
    g.add_argument("--test-labels", type=Path, help="query labels (.npy)")
    g.add_argument("--test-size", type=int, default=None,
                   help="without --queries: hold out this many labelled --embeddings rows as queries "
                        "(stratified, as the pipelines split BBC News)")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the --test-size split")
    g.add_argument("--name", help="dataset name used for the output files")
    g = p.add_argument_group("what to run")
    g.add_argument("--budgets", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0],
                   help="bits per coordinate")
    g.add_argument("--slack", type=float, default=0.02,
                   help="faiss settings may exceed a budget by this fraction (headers, shared parts); "
                        "LPLRIndex keeps its budget exactly")
    g.add_argument("--families", nargs="*",
                   default=[f.name for f in fb.default_families()] + [f.name for f in fb.rival_families()],
                   help="faiss families and optional rivals from other libraries (ScaNN-AH, RaBitQLib: "
                        "skipped with the reason when not installed) to run (none: LPLR only)")
    g.add_argument("--lplr-variants", nargs="*", default=list(LPLR_VARIANTS), choices=list(LPLR_VARIANTS),
                   help="LPLRIndex settings to run (none: faiss only)")
    g.add_argument("--merge", action="store_true",
                   help="keep the rows of an earlier run on the same data in <out>/<name>.json, "
                        "replacing only the families run now")
    g.add_argument("--no-flat", action="store_true", help="skip the exact IndexFlatL2 row")
    g.add_argument("--max-train", type=int, default=100_000,
                   help="faiss indexes train on at most this many database vectors (random subset); "
                        "LPLRIndex.build sees all of them")
    g.add_argument("--opq-niter", type=int, default=None, help="OPQ iterations (faiss default 50)")
    g = p.add_argument_group("measurement")
    g.add_argument("--k", type=int, default=10, help="neighbours searched (recall k@k)")
    g.add_argument("--batch", type=int, default=1000, help="queries per timed batch")
    g.add_argument("--repeats", type=int, default=5, help="timed batch repeats (median)")
    g.add_argument("--latency-queries", type=int, default=100, help="single queries timed (median)")
    g.add_argument("--time-cap", type=float, default=60.0,
                   help="soft cap in seconds on each timing loop of a row (fewer repeats when slow)")
    g.add_argument("--threads", type=int, default=None, help="faiss OpenMP and BLAS threads (default: all cores)")
    g.add_argument("--speed-threads", type=int, nargs="+", default=[1, 2],
                   help="thread counts at which every row's speed is measured (the first is the "
                        "tables' QPS and latency)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--report", type=Path, default=None, metavar="JSON",
                   help="only rewrite the Markdown table and plots of an earlier run's JSON (next to it)")
    g.add_argument("--out", type=Path, default=None, help=f"output folder (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    if args.smoke:
        args.synthetic = True
        args.n, args.dim, args.n_queries = 5000, 64, 200
        args.repeats, args.latency_queries, args.time_cap = 1, 10, 2.0
        args.speed_threads = args.speed_threads[:1]
        args.opq_niter = 5 if args.opq_niter is None else args.opq_niter
        if args.lplr_variants == list(LPLR_VARIANTS):
            args.lplr_variants = ["default", "paper"]
    if args.out is None:
        args.out = SMOKE_OUT if args.smoke else DEFAULT_OUT
    if args.queries is not None and args.embeddings is None:
        p.error("--queries needs --embeddings")
    if args.embeddings is not None and args.queries is None and args.test_size is None:
        p.error("--embeddings needs --queries, or --test-size to split it")
    if sum([args.embeddings is not None, args.synthetic, args.dataset is not None]) > 1:
        p.error("--synthetic, --embeddings and --dataset exclude each other")
    if args.cifar_dir is not None and args.dataset != "cifar10":
        p.error("--cifar-dir goes with --dataset cifar10")
    if (args.model is not None or args.weights is not None) and args.dataset not in IMAGE_DATASETS:
        p.error("--model and --weights go with an image --dataset (fashion-mnist, cifar10)")
    known = {f.name for f in fb.default_families()} | {f.name for f in fb.rival_families()}
    bad = [f for f in args.families if f not in known]
    if bad:
        p.error(f"--families: unknown {bad}; choose from {sorted(known)}")
    if any(b <= 0 for b in args.budgets):
        p.error(f"--budgets must be positive, got {args.budgets}")
    if args.k < 1 or args.batch < 1 or args.repeats < 1:
        p.error("--k, --batch and --repeats must be >= 1")
    return args


def rewrite_report(json_path: Path) -> dict[str, Any]:
    """Regenerate ``<name>.md`` and the PNGs next to an earlier run's JSON."""
    if not json_path.exists():
        raise SystemExit(f"bench_faiss: {json_path}: no such file")
    result = json.loads(json_path.read_text())
    out_dir = json_path.parent
    (out_dir / f"{result['dataset']}.md").write_text(faiss_report.markdown(result))
    pngs = faiss_report.plots(result, out_dir)
    print(f"wrote {out_dir / (result['dataset'] + '.md')}, " + ", ".join(str(p) for p in pngs))
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-ready result (also written to ``--out``)."""
    args = parse_args(argv)
    if args.report is not None:
        return rewrite_report(args.report)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:8.1f}s] {msg}", flush=True)

    if args.threads is not None:
        faiss.omp_set_num_threads(args.threads)
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(args.threads)
        except ImportError:
            pass
    if args.dataset is not None:
        data = load_pipeline_dataset(args.dataset, args.name, cifar_dir=args.cifar_dir, model=args.model,
                                     weights=args.weights, threads=args.threads)
    elif args.embeddings is not None:
        data = load_files(args.embeddings, args.queries, args.train_labels, args.test_labels, args.name,
                          test_size=args.test_size, split_seed=args.split_seed)
    else:
        data = make_synthetic(args.n, args.n_queries, args.dim, decay=args.decay, n_clusters=args.n_clusters,
                              cluster_std=args.cluster_std, seed=args.seed)
        if args.name:
            data.name = args.name
        elif args.smoke:
            data.name = "smoke"
    machine = machine_info(args)
    n, d = data.xb.shape
    log(f"dataset {data.name}: n={n}, d={d}, queries={len(data.xq)}, labels={'yes' if data.yb is not None else 'no'}")
    log(f"faiss {faiss.__version__}, OpenMP threads {faiss.omp_get_max_threads()}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, cpu: {machine['cpu']}")
    if len(data.xq) < args.batch:
        log(f"note: only {len(data.xq)} queries, timed batches use all of them")

    t0 = time.perf_counter()
    _, gt = exact_knn(data.xb, data.xq, args.k)
    log(f"exact ground truth: {time.perf_counter() - t0:.1f}s")
    ctx = Context(data, gt, args)
    rng = np.random.default_rng(args.seed)
    train_idx = np.sort(rng.choice(n, size=min(n, args.max_train), replace=False))
    xtrain = np.ascontiguousarray(data.xb[train_idx])
    n_calib = min(len(xtrain), max(2 * d, 1024))
    calib = fb.SizeCalibrator(xtrain[:n_calib], n)

    out_dir: Path = args.out
    result: dict[str, Any] = {
        "benchmark": "bench_faiss", "dataset": data.name, "data": data.info,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None
        else "bench_faiss.py " + " ".join(argv),
        "machine": machine, "k": args.k, "budget_rule": (
            f"largest setting with measured bits/coord <= budget * (1 + {args.slack}) for faiss "
            "(and ScaNN-AH, RaBitQLib when installed); "
            "LPLRIndex fits its budget exactly (it picks its rank from its file size)"),
        "rows": [], "skipped": [],
    }

    json_path = out_dir / f"{data.name}.json"
    if args.merge and json_path.exists():
        old = json.loads(json_path.read_text())
        if old.get("data") != json.loads(json.dumps(faiss_report._jsonable(data.info))):
            raise SystemExit(f"bench_faiss: --merge: {json_path} was measured on other data "
                             f"({old.get('data')}), not {data.info}")
        rerun = set(args.families) | {f"LPLR {v}" for v in args.lplr_variants}
        if not args.no_flat:
            rerun.add("Flat")

        def kept(entry: dict[str, Any]) -> bool:
            fam = entry["method"] if entry.get("family") == "LPLR" else entry["family"]
            return fam not in rerun

        result["rows"] = [r for r in old["rows"] if kept(r)]
        result["skipped"] = [s for s in old["skipped"] if s["family"] not in rerun]
        result["merged_from"] = old.get("merged_from", []) + [
            {"command": old.get("command"), "machine": old.get("machine"), "args": old.get("args"),
             "seconds": old.get("seconds")}]
        log(f"--merge: kept {len(result['rows'])} rows of {json_path}")

    def save() -> None:
        result["seconds"] = round(time.perf_counter() - t_start, 1)
        faiss_report.write_json(result, json_path)

    if not args.no_flat:
        log("Flat (exact)")
        result["rows"].append(run_flat(ctx))
        log("  " + faiss_report.one_line(result["rows"][-1], args.k))
        save()
    families = [f for f in fb.default_families() if f.name in args.families]
    for fam in families:
        log(f"faiss {fam.name}")
        rows, skipped = run_faiss_family(ctx, fam, xtrain, calib, log)
        result["rows"] += rows
        result["skipped"] += skipped
        save()
    for rival in [f for f in fb.rival_families() if f.name in args.families]:
        log(f"{rival.name} ({rival.package} {rival.version() or 'not installed'})")
        rows, skipped = run_rival_family(ctx, rival, xtrain, log)
        result["rows"] += rows
        result["skipped"] += skipped
        save()
    seen: dict[tuple, str] = {}
    for variant in args.lplr_variants:
        for b in args.budgets:
            log(f"LPLR {variant} @ {b:g} b/c")
            rows, skipped = run_lplr(ctx, variant, b, log, seen)
            result["rows"] += rows
            result["skipped"] += skipped
            save()

    result["machine"]["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    save()
    md = faiss_report.markdown(result)
    (out_dir / f"{data.name}.md").write_text(md)
    pngs = faiss_report.plots(result, out_dir)
    log(f"wrote {out_dir / (data.name + '.json')}, {out_dir / (data.name + '.md')}, "
        + ", ".join(str(p) for p in pngs))
    return result


if __name__ == "__main__":
    main()
