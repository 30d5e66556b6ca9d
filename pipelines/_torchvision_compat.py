"""Make ``torchvision`` importable on a CPU-only ``torch``.

The torchvision 0.28.0 wheel on the package registry is a CUDA build: its compiled
operators (``torchvision/_C.so``) cannot be loaded against the CPU build of torch
2.13.0, and ``import torchvision`` then fails with ``RuntimeError: operator
torchvision::nms does not exist`` (upstream pytorch/vision#9085). ``import
sentence_transformers`` fails the same way, because ``transformers`` imports
torchvision whenever it is installed.

:func:`ensure_torchvision_importable` applies the known fix before the first import:
it first tries to load torchvision's own compiled operators; only if that fails does
it register the two operator schemas (``nms`` and ``qnms``) that torchvision's Python
code looks up at import time. Models, transforms and datasets then work;
``torchvision.ops`` kernels and the ``torchvision.io`` decoders do not (the pipelines
decode images with PIL). Where torchvision's own operators load, the function
changes nothing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

__all__ = ["ensure_torchvision_importable", "torchvision_ops_status"]

# Keeps the fallback operator library alive: a ``torch.library.Library`` removes its
# definitions when it is garbage collected.
_FALLBACK_LIBRARY: Any = None
# One of "not-checked", "already-imported", "not-installed", "native", "fallback".
_STATUS = "not-checked"

_FALLBACK_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)


def torchvision_ops_status() -> str:
    """Say what :func:`ensure_torchvision_importable` found.

    Returns
    -------
    status : str
        ``"not-checked"`` before the first call, then ``"already-imported"`` (torchvision
        was imported before the check, nothing done), ``"not-installed"``, ``"native"``
        (torchvision's compiled operators load; nothing changed) or ``"fallback"`` (the
        operator schemas were registered so that ``import torchvision`` succeeds).
    """
    return _STATUS


def ensure_torchvision_importable() -> str:
    """Apply the CPU-torch fix for torchvision once, before torchvision is imported.

    Safe to call many times; only the first call does anything.

    Returns
    -------
    status : str
        See :func:`torchvision_ops_status`.
    """
    global _FALLBACK_LIBRARY, _STATUS
    if _STATUS != "not-checked":
        return _STATUS
    if "torchvision" in sys.modules:
        _STATUS = "already-imported"
        return _STATUS
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        _STATUS = "not-installed"
        return _STATUS

    import torch

    if _nms_registered(torch):
        _STATUS = "native"
        return _STATUS
    package_dir = Path(spec.origin).parent
    compiled = sorted(package_dir.glob("_C.*"))  # _C.so on Linux/macOS, _C.pyd on Windows
    try:
        if not compiled:
            raise OSError(f"no compiled operator library _C.* in {package_dir}")
        torch.ops.load_library(str(compiled[0]))
    except (OSError, RuntimeError):
        # The compiled operators do not match this torch: declare the schemas that
        # torchvision registers fake/meta kernels for at import time.
        library = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _FALLBACK_SCHEMAS:
            library.define(schema)
        _FALLBACK_LIBRARY = library
        _STATUS = "fallback"
    else:
        _STATUS = "native"
    return _STATUS


def _nms_registered(torch: Any) -> bool:
    """Whether an operator ``torchvision::nms`` is already known to torch."""
    try:
        torch.ops.torchvision.nms
    except (AttributeError, RuntimeError):
        return False
    return True
