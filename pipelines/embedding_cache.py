"""On-disk cache of embeddings, keyed by everything that determines them.

Each entry is two files in the cache folder: ``<stem>.npz`` (``embeddings`` float32,
``labels`` int64) and ``<stem>.json`` (the key and some metadata: creation time,
shape, seconds it took to compute). ``<stem>`` is the dataset and split plus a hash of
the key (dataset, split, subset, model, weights hash, resolution, ...), so a change of
any of them computes a new entry and a second run with the same settings reuses the
first run's embeddings. Files are written to a temporary name and renamed, so an
interrupted run never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from numpy.typing import NDArray

__all__ = ["CacheEntry", "EmbeddingCache", "default_cache_dir"]

_FORMAT = 1


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_cache_dir() -> Path:
    """The default cache folder: ``$LPLR_CACHE_DIR`` if set, else ``data/cache/embeddings``
    under the current directory."""
    env = os.environ.get("LPLR_CACHE_DIR")
    return Path(env) if env else Path("data") / "cache" / "embeddings"


@dataclass
class CacheEntry:
    """Embeddings and labels with the metadata stored next to them.

    Attributes
    ----------
    embeddings : ndarray of shape (n, dim), float32
    labels : ndarray of shape (n,), int64
    metadata : dict
        The cache key plus ``created``, ``shape`` and ``seconds``.
    hit : bool
        Whether the entry was read from disk (True) or just computed (False).
    path : Path
        The ``.npz`` file.
    """

    embeddings: NDArray[np.float32]
    labels: NDArray[np.int64]
    metadata: dict[str, Any]
    hit: bool
    path: Path


def _canonical(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


class EmbeddingCache:
    """A folder of cached embedding arrays.

    Parameters
    ----------
    root : str or Path, optional
        Cache folder; created when the first entry is written. Default:
        :func:`default_cache_dir`.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def stem(self, key: dict[str, Any]) -> str:
        """File name stem of the entry for ``key``."""
        digest = hashlib.sha256(_canonical(key).encode()).hexdigest()[:16]
        return f"{_slug(str(key.get('dataset', 'data')))}-{_slug(str(key.get('split', 'all')))}-{digest}"

    def get_or_compute(
        self,
        key: dict[str, Any],
        compute: Callable[[], tuple[NDArray[np.float32], NDArray[np.int64]]],
    ) -> CacheEntry:
        """Return the cached entry for ``key``, computing and storing it first if absent.

        Parameters
        ----------
        key : dict
            JSON-serialisable description of everything the embeddings depend on.
        compute : callable
            Returns ``(embeddings, labels)`` when the entry is missing or unreadable.

        Returns
        -------
        entry : CacheEntry
        """
        stem = self.stem(key)
        npz_path, json_path = self.root / f"{stem}.npz", self.root / f"{stem}.json"
        cached = self._read(npz_path, json_path, key)
        if cached is not None:
            return cached
        start = time.perf_counter()
        embeddings, labels = compute()
        seconds = time.perf_counter() - start
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.int64)
        if embeddings.ndim != 2 or len(embeddings) != len(labels):
            raise ValueError(f"compute() must return (n, dim) embeddings and n labels; got "
                             f"{embeddings.shape} and {labels.shape}")
        metadata = {
            "format": _FORMAT,
            "key": key,
            "shape": list(embeddings.shape),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(seconds, 3),
        }
        self.root.mkdir(parents=True, exist_ok=True)
        self._atomic_write(npz_path, lambda fh: np.savez(fh, embeddings=embeddings, labels=labels))
        self._atomic_write(json_path, lambda fh: fh.write(json.dumps(metadata, indent=2, default=str).encode()))
        return CacheEntry(embeddings, labels, metadata, False, npz_path)

    def _read(self, npz_path: Path, json_path: Path, key: dict[str, Any]) -> CacheEntry | None:
        if not (npz_path.is_file() and json_path.is_file()):
            return None
        try:
            metadata = json.loads(json_path.read_text())
            if metadata.get("format") != _FORMAT or _canonical(metadata.get("key")) != _canonical(
                    json.loads(_canonical(key))):
                return None
            with np.load(npz_path, allow_pickle=False) as data:
                embeddings, labels = data["embeddings"], data["labels"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None  # damaged entry: recompute and overwrite it
        if list(embeddings.shape) != metadata.get("shape") or len(labels) != len(embeddings):
            return None
        return CacheEntry(embeddings, labels, metadata, True, npz_path)

    @staticmethod
    def _atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; use the usual mode
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
