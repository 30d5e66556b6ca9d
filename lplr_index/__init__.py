"""lplr-index: compressed k-NN search over LPLR-factorized embeddings.

LPLR (Saha, Srivastava & Pilanci, NeurIPS 2023) factors a matrix A ~ L R with
a Gaussian sketch, low-bit codes for L and a low-bit shared factor R.
"""

__version__ = "0.1.0"

from .evaluation import (
    accuracy,
    exact_knn,
    knn_vote,
    neighbour_overlap,
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
from .classifier import LPLRKNeighborsClassifier
from .fileformat import IndexFileError
from .index import LPLRIndex, SearchResult
from .packing import pack_bits, unpack_bits
from .quantize import Quantizer, dequantize, fit_quantizer, quantize
from .sketch import gaussian_sketch

__all__ = [
    "__version__",
    "LPLRIndex",
    "SearchResult",
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
]
