"""4-bit codes through faiss's fast-scan kernels, re-ranked exactly.

The per-vector codes of an index with 4-bit codes are a product quantizer of
its latent space: latent coordinate j is one sub-quantizer with 16 centroids,
the 16 levels of column j. faiss's ``IndexPQFastScan`` scores such codes with
SIMD lookup tables (codes packed in blocks of 32 vectors; per-query tables
rounded to 8 bits; sums in 16 bits), 10-30 times faster per query than a BLAS
scan and without decoding anything.

The first stage returns ``rerank_factor * k`` candidates ranked by the latent
distance ``||p - l||^2`` with ``p = (q - mean) R^+`` (l2 and cosine) or by the
latent inner product ``l . p`` with ``p = q R^T`` (ip, exact up to the
per-query constant ``<q, mean>``). With an orthonormal shared factor (the
index's default, ``factor="orthonormal"``) the latent distance ranks exactly
like the distance to the decoded vector; otherwise it is an approximation.
Cosine similarity ``<q, x_hat> / ||x_hat||`` cannot be split over codes; the
distance of the unit query to ``x_hat`` ranks near neighbours almost alike
(measured: an inner-product first stage, which favours long ``x_hat``, lost
a fifth of the neighbours at 1 bit per coordinate), and the re-ranker computes
the exact cosine. Either way :func:`lplr_index.search.blas.rerank` re-scores the
candidates exactly from their codes, so the 8-bit table rounding only matters
when a true neighbour falls outside the candidates.

faiss is imported here only, when a fast-scan index is first built.
"""

from __future__ import annotations

import numpy as np

from .metrics import CodeView, prepare_queries

#: codes encoded (decoded to floats and added) per block when building
_ADD_ROWS = 1 << 16


def supported(view: CodeView) -> bool:
    """Fast-scan needs 4-bit per-column codes."""
    return view.encoder.lq.bits == 4


class FastScanScorer:
    """A faiss ``IndexPQFastScan`` over the codes of a :class:`CodeView`.

    Holds its own copy of the codes in faiss's packed block layout (the same
    size as the codes). Rows appended to the view later are added with :meth:`extend`.
    """

    def __init__(self, view: CodeView):
        import faiss

        if not supported(view):
            raise ValueError(
                f"fast-scan search needs 4-bit codes, this index has {view.encoder.lq.bits}-bit codes"
            )
        enc = view.encoder
        m = enc.rank
        metric = faiss.METRIC_INNER_PRODUCT if view.metric == "ip" else faiss.METRIC_L2
        index = faiss.IndexPQFastScan(m, m, 4, metric, 32)
        levels = np.broadcast_to(enc.lq.lo, (m,))[:, None] + (
            np.arange(16, dtype=np.float32)[None, :] * np.broadcast_to(enc.lq.step, (m,))[:, None]
        )
        faiss.copy_array_to_vector(np.ascontiguousarray(levels, np.float32).ravel(), index.pq.centroids)
        index.is_trained = True
        self.index = index
        self.view = view
        self.ntotal = 0
        self.extend(view)

    def extend(self, view: CodeView) -> None:
        """Add the rows of ``view`` past those already held (after ``add``)."""
        for s in range(self.ntotal, view.ntotal, _ADD_ROWS):
            # decoded levels are exactly the centroids: faiss's nearest-centroid
            # encoding gives back the same codes
            L = view.decode_latent(view.codes[s : s + _ADD_ROWS])
            self.index.add(np.ascontiguousarray(L, np.float32))
        self.ntotal = view.ntotal
        self.view = view

    def codes_match(self, rows: int = 1024) -> bool:
        """Whether faiss holds exactly the view's codes for the first ``rows`` rows."""
        n = min(rows, self.ntotal)
        L = self.view.decode_latent(self.view.codes[:n])
        got = self.index.pq.compute_codes(np.ascontiguousarray(L, np.float32))
        return bool(np.array_equal(got, np.asarray(self.view.codes[:n])[:, : got.shape[1]]))

    def candidates(self, Q: np.ndarray, kprime: int) -> np.ndarray:
        """Ids (nq, kprime) of the first stage, best first; -1 where fewer exist."""
        view = self.view
        enc = view.encoder
        Q = prepare_queries(view, Q)
        if view.metric == "ip":
            P = Q @ enc.R.T
        else:
            P = (Q - enc.mean) @ self._projector()
        _, I = self.index.search(np.ascontiguousarray(P, np.float32), int(kprime))
        return I

    def _projector(self) -> np.ndarray:
        """``R^+`` (dim x rank): least-squares latent coordinates of a query."""
        if getattr(self, "_pinv", None) is None:
            self._pinv = np.linalg.pinv(self.view.encoder.R.astype(np.float64)).astype(np.float32)
        return self._pinv

