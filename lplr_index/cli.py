"""Command line: ``lplr-index {build,add,search,info,eval}`` (also ``python -m lplr_index``).

User mistakes (missing files, bad arguments, damaged indexes) print one line,
``lplr-index: error: ...``, and exit with status 1; usage errors exit with 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__
from ._progress import Progress
from .evaluation import METRICS, accuracy, exact_knn, knn_vote, neighbour_overlap, recall_at_k, weighted_f1
from .fileformat import IndexFileError
from .index import SEARCH_MODES, LPLRIndex
from .quantize import SCHEMES

log = logging.getLogger("lplr_index")

_QUERY_BATCH = 1024


class UserError(Exception):
    """A mistake on the command line: reported in one line, exit status 1."""


def _load_array(path: str, what: str, *, ndim: int = 2) -> np.ndarray:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} file {path} does not exist")
    if p.suffix != ".npy":
        raise UserError(f"{what} file {path} must be a NumPy .npy file (numpy.save), got suffix {p.suffix!r}")
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"{what} file {path} is not a readable .npy array ({exc})") from None
    if arr.ndim != ndim:
        shape = "(n, dim)" if ndim == 2 else "(n,)"
        raise UserError(f"{what} file {path} must hold a {ndim}-D array {shape}, got shape {arr.shape}")
    return arr


def _emit(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return
    width = max(len(k) for k in result)
    for key, value in result.items():
        if isinstance(value, float):
            value = f"{value:.6g}"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        print(f"{key:<{width}}  {value}")


def _index_info(index: LPLRIndex, path: str | None = None) -> dict:
    info = {
        "dim": index.dim,
        "ntotal": index.ntotal,
        "metric": index.metric,
        "rank": index.rank,
        "bits_l": index.bits_l,
        "bits_r": index.bits_r,
        "quantizer": index.quantizer,
        "encoder": index.encoder,
        "refine_iters": index.refine_iters,
        "seed": index.seed,
        "budget_bits_per_coordinate": index.budget,
        "bits_per_coordinate": index.bits_per_coordinate,
        "nbytes": index.nbytes,
        "fit_error": index.fit_error,
        "n_clipped": index.n_clipped,
        "storage_bytes": index.storage_breakdown(),
    }
    if path is not None:
        info["file"] = str(path)
        info["file_size"] = os.path.getsize(path)
    return info


def _make_index(args, dim: int) -> LPLRIndex:
    return LPLRIndex(
        dim,
        bits_per_coordinate=args.bits_per_coordinate,
        rank=args.rank,
        bits_l=args.bits_l,
        bits_r=args.bits_r,
        metric=args.metric,
        quantizer=args.quantizer,
        refine_iters=args.refine_iters,
        seed=args.seed,
    )


def _build_index(args, X) -> LPLRIndex:
    if args.bits_per_coordinate is None and args.rank is None:
        raise UserError("give --bits-per-coordinate B (a storage budget) or --rank R")
    if args.bits_per_coordinate is not None and args.rank is not None:
        raise UserError("give either --bits-per-coordinate or --rank, not both")
    index = _make_index(args, X.shape[1])
    log.info("building on %d x %d vectors ...", X.shape[0], X.shape[1])
    t0 = time.perf_counter()
    index.build(np.asarray(X))
    log.info(
        "built in %.2f s: rank %d, %d-bit codes, %.4f bits per coordinate",
        time.perf_counter() - t0, index.rank, index.bits_l, index.bits_per_coordinate,
    )
    return index


def _search(index: LPLRIndex, Q, k: int, mode: str, desc: str = "search"):
    D = np.empty((len(Q), k), np.float32)
    I = np.empty((len(Q), k), np.int64)
    with Progress(len(Q), desc, unit="queries") as bar:
        for s in range(0, len(Q), _QUERY_BATCH):
            D[s : s + _QUERY_BATCH], I[s : s + _QUERY_BATCH] = index.search(
                np.asarray(Q[s : s + _QUERY_BATCH]), k, mode=mode
            )
            bar.update(min(_QUERY_BATCH, len(Q) - s))
    return D, I


def cmd_build(args) -> dict:
    X = _load_array(args.embeddings, "embeddings")
    index = _build_index(args, X)
    index.save(args.output)
    return _index_info(index, args.output)


def cmd_add(args) -> dict:
    index = LPLRIndex.load(args.index)
    X = _load_array(args.embeddings, "embeddings")
    before = index.ntotal
    index.add(np.asarray(X))
    index.save(args.output or args.index)
    info = _index_info(index, args.output or args.index)
    info["added"] = index.ntotal - before
    return info


def cmd_search(args) -> dict:
    index = LPLRIndex.load(args.index, mmap=args.mmap)
    Q = _load_array(args.queries, "queries")
    t0 = time.perf_counter()
    D, I = _search(index, Q, args.k, args.mode)
    elapsed = time.perf_counter() - t0
    result = {"n_queries": len(Q), "k": args.k, "mode": args.mode, "seconds": elapsed}
    if args.output:
        np.savez(args.output, distances=D, indices=I)
        result["output"] = args.output
    if args.json or not args.output:
        result["indices"] = I.tolist()
        result["distances"] = [[float(x) for x in row] for row in D]
    return result


def cmd_info(args) -> dict:
    return _index_info(LPLRIndex.load(args.index), args.index)


def cmd_eval(args) -> dict:
    Xb = _load_array(args.train, "train embeddings")
    Xq = _load_array(args.test, "test embeddings")
    yb = _load_array(args.train_labels, "train labels", ndim=1)
    yq = _load_array(args.test_labels, "test labels", ndim=1)
    if len(yb) != len(Xb):
        raise UserError(f"train labels have {len(yb)} entries, but train embeddings have {len(Xb)} rows")
    if len(yq) != len(Xq):
        raise UserError(f"test labels have {len(yq)} entries, but test embeddings have {len(Xq)} rows")
    index = _build_index(args, Xb)
    k = max(args.k, args.recall_k)
    D, I = _search(index, Xq, k, args.mode, desc="compressed search")
    log.info("exact search ...")
    _, I_true = exact_knn(np.asarray(Xb), np.asarray(Xq), k, metric=args.metric)
    y_pred = knn_vote(I[:, : args.k], yb)
    y_exact = knn_vote(I_true[:, : args.k], yb)
    return {
        "k": args.k,
        "bits_per_coordinate": index.bits_per_coordinate,
        "rank": index.rank,
        "bits_l": index.bits_l,
        "accuracy": accuracy(yq, y_pred),
        "weighted_f1": weighted_f1(yq, y_pred),
        "exact_accuracy": accuracy(yq, y_exact),
        "exact_weighted_f1": weighted_f1(yq, y_exact),
        f"recall_{args.recall_k}@{args.recall_k}": recall_at_k(I, I_true, args.recall_k),
        f"neighbour_overlap@{args.recall_k}": neighbour_overlap(I[:, : args.recall_k], I_true[:, : args.recall_k]),
        "fit_error": index.fit_error,
    }


def _add_index_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bits-per-coordinate", "-b", type=float, help="storage budget (bits per coordinate, everything counted)")
    p.add_argument("--rank", type=int, help="explicit rank instead of a budget")
    p.add_argument("--bits-l", type=int, default=None, help="bits per code of each vector (default: chosen from the budget)")
    p.add_argument("--bits-r", type=int, default=8, help="bits per entry of the shared factor (default: 8)")
    p.add_argument("--metric", choices=METRICS, default="l2")
    p.add_argument("--quantizer", choices=SCHEMES, default="mse-col")
    p.add_argument("--refine-iters", type=int, default=2, help="alternating refinement rounds (default: 2)")
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lplr-index", description="Compressed k-NN index (LPLR).")
    parser.add_argument("--version", action="version", version=f"lplr-index {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no log lines on stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="build an index from an (n, dim) .npy file")
    p.add_argument("embeddings")
    p.add_argument("-o", "--output", required=True, help="index file to write")
    _add_index_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("add", help="encode more vectors into an index (no refit)")
    p.add_argument("index")
    p.add_argument("embeddings")
    p.add_argument("-o", "--output", help="write here instead of replacing INDEX")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_add)

    p = sub.add_parser("search", help="k nearest neighbours of each query")
    p.add_argument("index")
    p.add_argument("queries")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("-o", "--output", help="write distances and indices to this .npz")
    p.add_argument("--mode", choices=SEARCH_MODES, default="factored")
    p.add_argument("--mmap", action="store_true", help="map the codes from the file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("info", help="settings, size and measured bits of an index")
    p.add_argument("index")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("eval", help="k-NN accuracy, F1 and recall of a compressed index against exact search")
    p.add_argument("--train", required=True, help="(n, dim) .npy database embeddings")
    p.add_argument("--train-labels", required=True, help="(n,) .npy labels")
    p.add_argument("--test", required=True, help="(n_test, dim) .npy query embeddings")
    p.add_argument("--test-labels", required=True, help="(n_test,) .npy labels")
    p.add_argument("-k", type=int, default=3, help="neighbours that vote (default: 3)")
    p.add_argument("--recall-k", type=int, default=10, help="k of recall k@k (default: 10)")
    p.add_argument("--mode", choices=SEARCH_MODES, default="factored")
    _add_index_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lplr-index`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="lplr-index: %(message)s",
        stream=sys.stderr,
    )
    try:
        result = args.func(args)
    except (UserError, IndexFileError, ValueError, TypeError, RuntimeError, IndexError) as exc:
        print(f"lplr-index: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"lplr-index: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lplr-index: interrupted", file=sys.stderr)
        return 130
    _emit(result, getattr(args, "json", False))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
