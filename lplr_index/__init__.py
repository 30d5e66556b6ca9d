"""lplr-index: compressed k-NN search over LPLR-factorized embeddings.

LPLR (Saha, Srivastava & Pilanci, NeurIPS 2023) factors a matrix A ~ L R with
a Gaussian sketch, low-bit codes for L and a low-bit shared factor R.

``import lplr_index`` loads numpy and faiss (with its OpenBLAS's kernels chosen for this
CPU: :mod:`lplr_index._faiss`); scikit-learn on first use of
:class:`LPLRKNeighborsClassifier` (resolved lazily by the module's ``__getattr__``),
``accuracy`` or ``weighted_f1``.
"""

from ._version import __version__
from . import _faiss

_faiss.load()  # before anything else imports faiss: OpenBLAS picks its kernels when loaded

from .evaluation import (
    accuracy,
    exact_knn,
    knn_vote,
    neighbour_overlap,
    rate_distortion,
    recall_at_k,
    weighted_f1,
)
from .factorize import (
    CompressedMatrix,
    FactorizedMatrix,
    NaiveQuantized,
    QuantizedMatrix,
    direct_svd_quant,
    lplr,
    lplr_svd,
    naive_quant,
    rank_for_budget,
    relative_error,
)
from .fileformat import IndexFileError
from .index import IndexPlan, LPLRIndex, SearchResult, UnknownIdError
from .packing import pack_bits, unpack_bits
from .quantize import Quantizer, dequantize, fit_quantizer, quantize
from .sketch import gaussian_sketch

__all__ = [
    "__version__",
    "LPLRIndex",
    "SearchResult",
    "IndexPlan",
    "UnknownIdError",
    "LPLRKNeighborsClassifier",
    "IndexFileError",
    "lplr",
    "lplr_svd",
    "direct_svd_quant",
    "naive_quant",
    "rank_for_budget",
    "relative_error",
    "CompressedMatrix",
    "FactorizedMatrix",
    "NaiveQuantized",
    "QuantizedMatrix",
    "Quantizer",
    "fit_quantizer",
    "quantize",
    "dequantize",
    "pack_bits",
    "unpack_bits",
    "gaussian_sketch",
    "exact_knn",
    "recall_at_k",
    "neighbour_overlap",
    "knn_vote",
    "accuracy",
    "weighted_f1",
    "rate_distortion",
]

#: public names resolved on first access (module -> names): they import scikit-learn
_LAZY = {"LPLRKNeighborsClassifier": ".classifier"}


def __getattr__(name: str):
    """Import the scikit-learn estimator only when it is asked for (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
