"""Search backends of :class:`lplr_index.LPLRIndex`.

Each backend scores a query batch against a :class:`CodeView` (the frozen
encoder plus the packed per-vector codes) and never reads the index's private
state:

- :mod:`.blas`: exact scores from the codes, block by block with BLAS (every
  code width); also the exact re-ranker of candidate lists;
- :mod:`.fastscan`: 4-bit codes through faiss's fast-scan kernels (SIMD lookup
  tables), a candidate generator whose candidates :mod:`.blas` re-ranks;
- :mod:`.topk` and :mod:`.metrics`: streaming top-k, merging of partial
  results, and the per-metric score conventions shared by all of them.

:mod:`.router` decides, for one search over one snapshot of the index, the mode, the
filter's rows and which of these backends run (imported by the index, not here).
"""

from .metrics import CodeView, finalize, pad_results
from .topk import TopK, merge_results

__all__ = ["CodeView", "finalize", "pad_results", "TopK", "merge_results"]
