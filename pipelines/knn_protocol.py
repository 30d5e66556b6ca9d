"""The paper's 3-NN protocol on embedding matrices, with every compression method.

Only the training (database) embeddings are compressed; the test embeddings stay at
full precision and are classified by a majority vote of their ``k`` nearest neighbours
(exact squared L2) among the reconstructed training embeddings. Methods:

``unquantized``
    The float32 training matrix (the reference; 32 bits per coordinate).
``nq``
    Naive quantization of every entry to ``B_nq`` bits.
``dsvd``
    Direct SVD quantization, rank from the budget rule.
``lplr`` / ``lplr_svd``
    LPLR and LPLR-SVD with ``B = B' = bits_l = bits_r`` bits, rank from the budget rule
    ``m = floor(cr * n * d * B_nq / (n * B + d * B'))``.
``lplr_index``
    :class:`lplr_index.LPLRIndex` built with ``bits_per_coordinate = B_nq`` (its measured
    storage, file header included, stays within that budget) and searched in factored form.

Scopes: ``per_class`` compresses each class's training matrix separately (the paper's
code does this; it needs the labels), ``whole`` compresses the whole training matrix at
once (what an index can do). For the index, ``per_class`` builds one index per class and
merges their results.

All metrics are measured: accuracy and weighted F1 of the vote, relative Frobenius error
of the reconstruction, bits per coordinate from the stored bits (``nbits / (n * d)``, or
the index's ``bits_per_coordinate``), and the agreement of the neighbours with the exact
neighbours on the uncompressed matrix (``recall_at_k``).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
from numpy.typing import NDArray

import lplr_index
from lplr_index import (
    LPLRIndex,
    accuracy,
    direct_svd_quant,
    exact_knn,
    knn_vote,
    lplr,
    lplr_svd,
    naive_quant,
    rank_for_budget,
    recall_at_k,
    relative_error,
    weighted_f1,
)

__all__ = [
    "METHODS",
    "METHOD_LABELS",
    "SCOPES",
    "ExperimentConfig",
    "ExperimentResult",
    "run_knn_experiment",
    "summarize",
]

METHODS = ("unquantized", "nq", "dsvd", "lplr", "lplr_svd", "lplr_index")
SCOPES = ("per_class", "whole")
METHOD_LABELS = {
    "unquantized": "Unquantized (float32)",
    "nq": "Naive quantization",
    "dsvd": "DSVD",
    "lplr": "LPLR",
    "lplr_svd": "LPLR-SVD",
    "lplr_index": "LPLRIndex (factored search)",
}
_RANDOMIZED = ("lplr", "lplr_svd", "lplr_index")


def _check_bits(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= 8:
        raise ValueError(f"{name} must be an integer from 1 to 8; got {value!r}")
    return int(value)


@dataclass(frozen=True)
class ExperimentConfig:
    """Settings of one 3-NN compression experiment (validated on construction).

    Parameters
    ----------
    bits_nq : tuple of int, default=(1, 2, 4)
        Budgets ``B_nq`` in bits per coordinate (1 to 8 each).
    bits_l, bits_r : int, default=8
        ``B`` and ``B'``, the code widths of the two factors for DSVD, LPLR and LPLR-SVD.
    cr : float, default=1.0
        Compression ratio of the rank rule (1 is the paper's "apples to apples").
    seeds : tuple of int, default=(0, 1, 2)
        Seeds of the randomized methods; deterministic methods run once.
    k : int, default=3
        Neighbours that vote.
    scopes : tuple of {"per_class", "whole"}, default=("per_class", "whole")
    methods : tuple of str, default=METHODS
        Any of ``"unquantized", "nq", "dsvd", "lplr", "lplr_svd", "lplr_index"``.
    quantizer : str, default="minmax"
        Quantizer of NQ, DSVD, LPLR and LPLR-SVD (``"minmax"`` is the paper's).
    tie_break : {"lowest", "nearest"}, default="lowest"
        Vote tie break; ``"lowest"`` is the paper's (``scipy.stats.mode``).
    index_quantizer : str, default="mse-col"
        Quantizer of the LPLRIndex (its own default).
    index_bits_l : int, optional
        Code width of the LPLRIndex; default: the index picks it from the budget.
    index_refine_iters : int, default=2
        Refinement rounds of the LPLRIndex (its own default).
    progress : bool, default=True
        Show a progress bar over the runs.
    """

    bits_nq: tuple[int, ...] = (1, 2, 4)
    bits_l: int = 8
    bits_r: int = 8
    cr: float = 1.0
    seeds: tuple[int, ...] = (0, 1, 2)
    k: int = 3
    scopes: tuple[str, ...] = SCOPES
    methods: tuple[str, ...] = METHODS
    quantizer: str = "minmax"
    tie_break: str = "lowest"
    index_quantizer: str = "mse-col"
    index_bits_l: int | None = None
    index_refine_iters: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits_nq", tuple(_check_bits(b, "each of bits_nq") for b in self.bits_nq))
        if not self.bits_nq:
            raise ValueError("bits_nq must name at least one budget")
        _check_bits(self.bits_l, "bits_l")
        _check_bits(self.bits_r, "bits_r")
        if self.index_bits_l is not None:
            _check_bits(self.index_bits_l, "index_bits_l")
        if not (isinstance(self.cr, (int, float)) and self.cr > 0 and math.isfinite(self.cr)):
            raise ValueError(f"cr must be a positive number; got {self.cr!r}")
        seeds = tuple(self.seeds)
        if not seeds or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0 for s in seeds):
            raise ValueError(f"seeds must be one or more integers >= 0; got {self.seeds!r}")
        object.__setattr__(self, "seeds", tuple(int(s) for s in seeds))
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise ValueError(f"k must be a positive integer; got {self.k!r}")
        for name, values, allowed in (("scopes", self.scopes, SCOPES), ("methods", self.methods, METHODS)):
            bad = [v for v in values if v not in allowed]
            if bad or not values:
                raise ValueError(f"{name} must be a non-empty selection of {allowed}; got {tuple(values)!r}")
            object.__setattr__(self, name, tuple(dict.fromkeys(values)))
        if self.tie_break not in ("lowest", "nearest"):
            raise ValueError(f"tie_break must be 'lowest' or 'nearest'; got {self.tie_break!r}")
        if isinstance(self.index_refine_iters, bool) or not isinstance(self.index_refine_iters, int) \
                or self.index_refine_iters < 0:
            raise ValueError(f"index_refine_iters must be an integer >= 0; got {self.index_refine_iters!r}")


@dataclass
class ExperimentResult:
    """What :func:`run_knn_experiment` measured.

    Attributes
    ----------
    config : ExperimentConfig
    runs : list of dict
        One record per (scope, method, B_nq, seed): ``accuracy``, ``weighted_f1``,
        ``relative_error``, ``bits_per_coordinate``, ``recall_at_k`` (neighbours shared
        with the exact search on the uncompressed matrix), ``rank`` / ``ranks``,
        ``compress_seconds``, ``search_seconds``.
    summary : list of dict
        Mean and standard deviation of every metric over the seeds (see :func:`summarize`).
    skipped : list of dict
        Settings that could not run (e.g. a budget too small for rank 1), with the reason.
    data : dict
        Shape of the data: ``n_train``, ``n_test``, ``dim``, ``n_classes``.
    seconds : float
        Wall time of the whole experiment.
    """

    config: ExperimentConfig
    runs: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    data: dict[str, Any]
    seconds: float = 0.0
    library_version: str = field(default_factory=lambda: lplr_index.__version__)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "config": asdict(self.config),
            "data": self.data,
            "summary": self.summary,
            "runs": self.runs,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
            "library_version": self.library_version,
        }


class _Skip(Exception):
    """A setting that cannot run on these data (recorded, not fatal)."""


def _validate_data(X_train: Any, y_train: Any, X_test: Any, y_test: Any, k: int) -> tuple[np.ndarray, ...]:
    X_train = np.ascontiguousarray(X_train, dtype=np.float32)
    X_test = np.ascontiguousarray(X_test, dtype=np.float32)
    y_train = np.asarray(y_train)
    y_test = np.asarray(y_test)
    if X_train.ndim != 2 or X_test.ndim != 2:
        raise ValueError(f"X_train and X_test must be 2-D; got shapes {X_train.shape} and {X_test.shape}")
    if X_train.shape[1] != X_test.shape[1]:
        raise ValueError(f"X_test has {X_test.shape[1]} dimensions, but X_train has {X_train.shape[1]}")
    if y_train.shape != (len(X_train),) or y_test.shape != (len(X_test),):
        raise ValueError(f"need one label per row: X_train {X_train.shape} with y_train {y_train.shape}, "
                         f"X_test {X_test.shape} with y_test {y_test.shape}")
    if len(X_train) < k:
        raise ValueError(f"k={k} neighbours need at least {k} training rows; got {len(X_train)}")
    if not (np.isfinite(X_train).all() and np.isfinite(X_test).all()):
        raise ValueError("embeddings contain NaN or infinite values")
    return X_train, y_train, X_test, y_test


def _groups(y: np.ndarray, scope: str) -> list[np.ndarray]:
    if scope == "whole":
        return [np.arange(len(y))]
    return [np.flatnonzero(y == c) for c in np.unique(y)]


def _compress_groups(
    method: str, X: np.ndarray, groups: list[np.ndarray], bits_nq: int, seed: int | None, cfg: ExperimentConfig
) -> tuple[np.ndarray, int, list[int]]:
    """Compress each group of rows; return the reconstruction, total stored bits, ranks."""
    d = X.shape[1]
    X_hat = np.empty_like(X)
    nbits, ranks = 0, []
    for g in groups:
        A = X[g]
        if method == "nq":
            cm = naive_quant(A, bits_nq, quantizer=cfg.quantizer)
        else:
            rank = rank_for_budget(len(g), d, cfg.bits_l, cfg.bits_r, bits_nq, cfg.cr)
            if rank < 1:
                raise _Skip(f"the budget of {bits_nq} bit(s) per coordinate pays for rank {rank} on a "
                            f"{len(g)} x {d} matrix")
            rank = min(rank, len(g), d)
            ranks.append(rank)
            if method == "dsvd":
                cm = direct_svd_quant(A, rank, cfg.bits_l, cfg.bits_r, quantizer=cfg.quantizer)
            elif method == "lplr":
                cm = lplr(A, rank, cfg.bits_l, cfg.bits_r, quantizer=cfg.quantizer, seed=seed)
            else:
                cm = lplr_svd(A, rank, cfg.bits_l, cfg.bits_r, quantizer=cfg.quantizer, seed=seed)
        X_hat[g] = cm.reconstruct()
        nbits += int(cm.nbits)
    return X_hat, nbits, ranks


def _merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-group (distances, global ids) into the k smallest distances per query."""
    D = np.hstack([p[0] for p in parts])
    I = np.hstack([p[1] for p in parts])
    D = np.where(I < 0, np.inf, D)
    order = np.argsort(D, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)


def _index_groups(
    X: np.ndarray, groups: list[np.ndarray], Q: np.ndarray, bits_nq: int, seed: int, cfg: ExperimentConfig
) -> tuple[np.ndarray, np.ndarray, int, list[int], float]:
    """Build one LPLRIndex per group, search each in factored form, merge.

    Returns the neighbour ids, the reconstruction, total stored bits, the ranks and the
    search seconds.
    """
    X_hat = np.empty_like(X)
    nbits, ranks, parts, search_s = 0, [], [], 0.0
    for g in groups:
        index = LPLRIndex(X.shape[1], bits_per_coordinate=bits_nq, bits_l=cfg.index_bits_l, bits_r=cfg.bits_r,
                          metric="l2", quantizer=cfg.index_quantizer, refine_iters=cfg.index_refine_iters,
                          seed=seed)
        try:
            index.build(X[g])
        except ValueError as exc:
            raise _Skip(str(exc)) from exc
        start = time.perf_counter()
        D, I = index.search(Q, cfg.k, mode="factored")
        search_s += time.perf_counter() - start
        parts.append((D, np.where(I >= 0, g[np.maximum(I, 0)], -1)))
        X_hat[g] = index.reconstruct()
        nbits += 8 * int(index.nbytes)
        ranks.append(int(index.rank))
    start = time.perf_counter()
    _, I = _merge_topk(parts, cfg.k) if len(parts) > 1 else parts[0]
    search_s += time.perf_counter() - start
    return I, X_hat, nbits, ranks, search_s


def _tasks(cfg: ExperimentConfig) -> list[tuple[str, str, int | None, int | None]]:
    tasks: list[tuple[str, str, int | None, int | None]] = []
    if "unquantized" in cfg.methods:
        tasks.append(("-", "unquantized", None, None))
    for scope in cfg.scopes:
        for method in cfg.methods:
            if method == "unquantized":
                continue
            for b in cfg.bits_nq:
                for seed in (cfg.seeds if method in _RANDOMIZED else (None,)):
                    tasks.append((scope, method, b, seed))
    return tasks


def run_knn_experiment(
    X_train: NDArray[np.float32],
    y_train: NDArray[np.int64],
    X_test: NDArray[np.float32],
    y_test: NDArray[np.int64],
    config: ExperimentConfig | None = None,
    *,
    log: Callable[[str], None] | None = None,
    note: Callable[[str], None] | None = None,
) -> ExperimentResult:
    """Run the 3-NN protocol for every method, scope, budget and seed of ``config``.

    Parameters
    ----------
    X_train : ndarray of shape (n_train, d), float32
        Database embeddings (the only thing compressed).
    y_train : ndarray of shape (n_train,), int
    X_test : ndarray of shape (n_test, d), float32
        Query embeddings, kept at full precision.
    y_test : ndarray of shape (n_test,), int
    config : ExperimentConfig, optional
        Default: ``ExperimentConfig()``.
    log : callable, optional
        Receives one line per skipped setting.
    note : callable, optional
        Receives one line per finished run when the progress bar is off (``config.progress``
        False: a log, a pipe, CI), so a long experiment shows its progress there too.

    Returns
    -------
    result : ExperimentResult

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> centers = rng.standard_normal((2, 16)) * 3
    >>> y = np.repeat([0, 1], 60)
    >>> X = (centers[y] + rng.standard_normal((120, 16))).astype(np.float32)
    >>> cfg = ExperimentConfig(bits_nq=(4,), seeds=(0,), methods=("unquantized", "lplr"),
    ...                        scopes=("whole",), progress=False)
    >>> res = run_knn_experiment(X[::2], y[::2], X[1::2], y[1::2], cfg)
    >>> [(r["method"], r["bits_nq"]) for r in res.summary]
    [('unquantized', None), ('lplr', 4)]
    """
    from tqdm.auto import tqdm

    cfg = ExperimentConfig() if config is None else config
    X_train, y_train, X_test, y_test = _validate_data(X_train, y_train, X_test, y_test, cfg.k)
    start_all = time.perf_counter()
    n, d = X_train.shape
    t0 = time.perf_counter()
    _, I_true = exact_knn(X_train, X_test, cfg.k)
    exact_search_s = time.perf_counter() - t0
    runs: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    tasks = _tasks(cfg)
    for i, (scope, method, bits_nq, seed) in enumerate(
            tqdm(tasks, desc="3-NN runs", unit="run", disable=not cfg.progress), 1):
        record: dict[str, Any] = {"scope": scope, "method": method, "bits_nq": bits_nq, "seed": seed}
        start = time.perf_counter()
        try:
            if method == "unquantized":
                X_hat, nbits, ranks = X_train, 32 * n * d, []
                compress_s, search_s, I = 0.0, exact_search_s, I_true
            elif method == "lplr_index":
                I, X_hat, nbits, ranks, search_s = _index_groups(
                    X_train, _groups(y_train, scope), X_test, int(bits_nq), int(seed), cfg)
                compress_s = time.perf_counter() - start - search_s
            else:
                X_hat, nbits, ranks = _compress_groups(method, X_train, _groups(y_train, scope), int(bits_nq),
                                                       seed, cfg)
                compress_s = time.perf_counter() - start
                t0 = time.perf_counter()
                _, I = exact_knn(X_hat, X_test, cfg.k)
                search_s = time.perf_counter() - t0
        except _Skip as exc:
            record["reason"] = str(exc)
            skipped.append(record)
            if log is not None:
                log(f"skipped {method} ({scope}, B_nq={bits_nq}, seed={seed}): {exc}")
            continue
        y_pred = knn_vote(I, y_train, tie_break=cfg.tie_break)
        record.update(
            accuracy=accuracy(y_test, y_pred),
            weighted_f1=weighted_f1(y_test, y_pred),
            relative_error=0.0 if method == "unquantized" else relative_error(X_train, X_hat),
            bits_per_coordinate=nbits / (n * d),
            recall_at_k=recall_at_k(I, I_true, cfg.k),
            rank=(ranks[0] if len(set(ranks)) == 1 else None) if ranks else None,
            ranks=ranks,
            compress_seconds=round(compress_s, 4),
            search_seconds=round(search_s, 4),
        )
        runs.append(record)
        if note is not None and not cfg.progress:  # no bar (a log, a pipe, CI): one line a run
            note(f"3-NN run {i}/{len(tasks)}: {method} ({scope}, B_nq={bits_nq}, seed={seed}) accuracy "
                 f"{record['accuracy']:.3f} in {time.perf_counter() - start:.1f} s "
                 f"({time.perf_counter() - start_all:.0f} s so far)")
    data = {"n_train": int(n), "n_test": int(len(X_test)), "dim": int(d),
            "n_classes": int(len(np.unique(y_train)))}
    return ExperimentResult(cfg, runs, summarize(runs), skipped, data, time.perf_counter() - start_all)


_METRICS = ("accuracy", "weighted_f1", "relative_error", "bits_per_coordinate", "recall_at_k",
            "compress_seconds", "search_seconds")


def summarize(runs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and (population) standard deviation of every metric over seeds.

    Parameters
    ----------
    runs : iterable of dict
        Records from :func:`run_knn_experiment`.

    Returns
    -------
    summary : list of dict
        One row per (scope, method, bits_nq) in first-seen order, with ``<metric>_mean``,
        ``<metric>_std``, ``n_runs``, ``seeds``, ``rank_min`` and ``rank_max``.
    """
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["scope"], r["method"], r["bits_nq"]), []).append(r)
    rows = []
    for (scope, method, bits_nq), rs in groups.items():
        row: dict[str, Any] = {"scope": scope, "method": method, "bits_nq": bits_nq, "n_runs": len(rs),
                               "seeds": [r["seed"] for r in rs]}
        for m in _METRICS:
            vals = np.array([r[m] for r in rs], dtype=np.float64)
            row[f"{m}_mean"] = float(vals.mean())
            row[f"{m}_std"] = float(vals.std())
        ranks = [x for r in rs for x in r["ranks"]]
        row["rank_min"] = min(ranks) if ranks else None
        row["rank_max"] = max(ranks) if ranks else None
        rows.append(row)
    return rows
