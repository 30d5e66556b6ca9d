"""Fixtures for the pipeline tests: small files in the exact on-disk formats, written here."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest


def write_idx(path: Path, array: np.ndarray, *, compress: bool) -> Path:
    """Write ``array`` as an IDX file (big-endian header, the MNIST format)."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B,
             np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}
    big = array.astype(array.dtype.newbyteorder(">")) if array.dtype.itemsize > 1 else array
    header = bytes([0, 0, codes[big.dtype], array.ndim])
    header += np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(big).tobytes()
    if compress:
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


@pytest.fixture
def idx_writer():
    """The IDX writer, for tests that build their own files."""
    return write_idx


@pytest.fixture
def idx_folder(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A Fashion-MNIST-style folder: gzip train files, raw test files, 10 classes."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (40, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(40, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(20, dtype=np.uint8) * 3) % 10,
    }
    folder = tmp_path / "fmnist"
    folder.mkdir()
    for stem, arr in arrays.items():
        compress = stem.startswith("train")
        write_idx(folder / (stem + (".gz" if compress else "")), arr, compress=compress)
    return folder, arrays


def write_cifar_folder(folder: Path, n_per_batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Write data_batch_1..5, test_batch and batches.meta as the CIFAR-10 python version does.

    The real files are Python 2 pickles of dicts with byte-string keys; ``pickle`` with
    protocol 2 and ``bytes`` keys writes the same structure.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer",
             b"dog", b"frog", b"horse", b"ship", b"truck"]
    with (folder / "batches.meta").open("wb") as fh:
        pickle.dump({b"num_cases_per_batch": n_per_batch, b"label_names": names, b"num_vis": 3072}, fh, protocol=2)
    written = {}
    for i, batch in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n_per_batch)]
        content = {
            b"batch_label": f"batch {i + 1} of 6".encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img_{i}_{j}.png".encode() for j in range(n_per_batch)],
        }
        with (folder / batch).open("wb") as fh:
            pickle.dump(content, fh, protocol=2)
        written[batch] = (data, np.asarray(labels))
    return written


@pytest.fixture
def cifar_folder(tmp_path: Path):
    folder = tmp_path / "cifar-10-batches-py"
    written = write_cifar_folder(folder, n_per_batch=6)
    return folder, written


@pytest.fixture
def small_images() -> np.ndarray:
    """Eight 28 x 28 grey images with some structure (seeded)."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:28, 0:28]
    imgs = [(127 + 120 * np.sin((xx * (i + 1) + yy * (8 - i)) / 6.0)).astype(np.uint8) for i in range(8)]
    noise = rng.integers(0, 20, (8, 28, 28))
    return np.clip(np.stack(imgs) + noise, 0, 255).astype(np.uint8)
