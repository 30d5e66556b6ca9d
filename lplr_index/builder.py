"""From rows to a snapshot: the design choice and fit of a build, encoding, the coarse lists.

:meth:`LPLRIndex.build <lplr_index.LPLRIndex.build>` checks its input and ids, then runs
these steps: :func:`fit_design` (grouped codes: the design chosen on a sample, two passes;
also :meth:`LPLRIndex.plan <lplr_index.LPLRIndex.plan>`'s design choice on a sample) or
:func:`fit_scalar` (the scalar codes: LPLR and its refinement rounds), then
:func:`partitioned` (a partitioned index: coarse k-means on the codes' latent rows, every
row's list, and the default ``nprobe`` measured on the build data). :func:`encode_rows` is
the encoding pass of ``add`` and ``update``. Each returns new values (codes, encoders,
snapshots, reports) and changes nothing it is given.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import layout, sizing
from ._blocks import ArraySource, LocalExecutor
from ._progress import progress_bar
from .ids import ids_layout
from .search import blas, fastscan
from .search import ivf as ivf_search
from .search.metrics import prepare_queries
from .search.router import RERANK_FACTORS_TRIED, default_rerank_factor, fastscan_ready
from .settings import IndexSettings
from .snapshot import Snapshot, _frozen
from .train import fit, sample_rows
from .vq import NoRoom, fit_vq

__all__ = ["SCALAR_RIVAL_MIN_BITS", "NPROBE_QUERIES", "NPROBE_TOLERANCE", "fit_design", "fit_scalar",
           "encode_rows", "measured", "partitioned", "measure_rerank_factor"]


#: ``codec="auto"`` fits the scalar 8-bit codes on the sample beside the grouped designs from
#: this budget (bits per coordinate) on. Measured, sample recall 10@10 of the best grouped
#: design against the scalar codes: at 4 bits Fashion-MNIST 0.987 / 0.958, BBC 0.941 / 0.881,
#: fortunes 0.940 / 0.786, BBC sentences 0.952 / 0.829; at 6 bits the three text sets 0.969 /
#: 0.951, 0.977 / 0.938, 0.980 / 0.961; at 8 bits the scalar codes win all three (0.982 /
#: 0.987, 0.985 / 0.990, 0.990 / 0.995). Below this budget their fit only costs time (7 s of
#: a 31 s Fashion-MNIST build at 4 bits)
SCALAR_RIVAL_MIN_BITS = 6.0
#: the build measures the default ``nprobe`` and re-rank depth on this many of its rows as queries
#: (seeded)
NPROBE_QUERIES = 100
#: the default ``nprobe``: the smallest power of two whose top 10 on those queries agrees with every
#: list's (``nprobe = nlist``) on all but this share of the results, which bounds its recall 10@10
#: loss (:func:`measure_nprobe`)
NPROBE_TOLERANCE = 0.01


def fit_design(s: IndexSettings, source: ArraySource, ids, progress, *, n_rows: int | None = None,
               encode: bool = True):
    """Grouped codes (:func:`lplr_index.vq.fit_vq`): two passes. With ``codec="auto"`` and
    a budget at which the scalar codes would be 8-bit, those are fitted on the sample too
    and, when their recall there is higher, the result has no encoder (build them instead);
    from :data:`SCALAR_RIVAL_MIN_BITS` only. ``n_rows`` and ``encode``: ``LPLRIndex.plan``'s
    design choice on a sample of ``n_rows`` rows, without the encoding pass (see ``fit_vq``).
    Returns the result of ``fit_vq`` and the build's report of the designs it compared."""
    n = source.n if n_rows is None else n_rows
    id_layout = ids_layout(ids)
    rival = None
    scalar = dataclasses.replace(s, codec="scalar", nlist=None)
    # the 8-bit scalar codes are no rival of a partitioned index: its lists need 4-bit codes
    if (s.codec == "auto" and s.nlist is None and s.bits_per_coordinate is not None and scalar.bits_l_used == 8
            and s.bits_per_coordinate >= SCALAR_RIVAL_MIN_BITS):
        try:
            rank = sizing.rank_for_budget(s, n, 8, ids=id_layout)
        except ValueError:
            rank = None
        if rank is not None:
            def rival(raw):
                from .train import fit_array

                fitted = fit_array(raw, min(rank, len(raw)), 8, s.bits_r, s.quantizer, s.seed, s.refine_iters,
                                   factor=s.factor, normalize=s.metric == "cosine").encoder
                L = fitted.lq.decode(fitted.lq.encode(fitted.prepare(raw) @ fitted.T))
                return L @ fitted.R + fitted.mean

    def file_bits(basis, groups):
        return 8 * layout.file_nbytes(s, n, 1, 4, ids=id_layout, vq=(basis, groups))

    budget = None if s.bits_per_coordinate is None else s.bits_per_coordinate * n * s.dim
    bar = progress_bar(progress, n, 2 * n, "build (2 passes)")
    passes = []

    def on_pass(name):  # a two-level design that fails its full-scale check: encoded twice
        passes.append(name)
        if bar is not None and len(passes) > 2:
            bar.total += n
            bar.desc = f"build ({len(passes)} passes)"

    try:
        executor = LocalExecutor(source, progress=None if bar is None else bar.update)
        try:
            result = fit_vq(executor, budget, file_bits, bits_r=s.bits_r, scheme=s.quantizer, seed=s.seed,
                            metric=s.metric, rank=s.rank, rival=rival, on_pass=on_pass,
                            first_stage=fastscan.first_stage_recall, n_rows=n_rows, encode=encode)
        except NoRoom:
            need = file_bits("rotation", np.array([[1, 1, 1]], np.int32)) / (n * s.dim)
            with_ids = " and their user ids" if ids is not None else ""
            raise ValueError(
                f"bits_per_coordinate={s.bits_per_coordinate:g} cannot hold even a rank-1 index of {n} "
                f"vectors of dimension {s.dim}{with_ids} (one 4-bit code per vector): that needs "
                f"{need:.3f} bits per coordinate (add more vectors or raise the budget)") from None
    finally:
        if bar is not None:
            bar.close()
    chosen = ({"basis": result.encoder.basis, "groups": result.encoder.lq.groups.tolist()}
              if result.encoder is not None else {"basis": "scalar"})
    report = {"chosen": chosen,
              "candidates": [dict(zip(("basis", "sizes", "groups", "sample_recall", "sample_error",
                                       "model_ratio"), c)) for c in result.candidates],
              "not_fitted": [dict(zip(("basis", "sizes", "groups", "model_ratio"), c))
                             for c in result.not_fitted],
              "full_check": result.full_check}
    return result, report


def fit_scalar(s: IndexSettings, source: ArraySource, rank: int, bits_l: int, progress):
    """The scalar codes (:func:`lplr_index.train.fit`) at ``rank`` and ``bits_l``: ``2 + refine_iters``
    passes; the fit's result (encoder, codes, error)."""
    n = source.n
    bar = progress_bar(progress, n, (2 + s.refine_iters) * n, f"build ({2 + s.refine_iters} passes)")
    try:
        executor = LocalExecutor(source, progress=None if bar is None else bar.update)
        return fit(
            executor, rank, bits_l, s.bits_r, s.quantizer, s.seed, s.refine_iters,
            factor=s.factor, normalize=s.metric == "cosine",
        )
    finally:
        if bar is not None:
            bar.close()


def encode_rows(encoder, source: ArraySource, progress, desc: str) -> tuple[np.ndarray, int]:
    """Packed codes of every row of ``source`` (one pass, with ``encoder``) and the count of clipped entries."""
    bar = progress_bar(progress, source.n, source.n, desc)
    try:
        blocks, clipped = [], 0
        for _, block in source.blocks():
            packed, c = encoder.encode(block)
            blocks.append(packed)
            clipped += c
            if bar is not None:
                bar.update(len(block))
    finally:
        if bar is not None:
            bar.close()
    return np.concatenate(blocks), clipped


def measured(s: IndexSettings, st: Snapshot, source) -> tuple[Snapshot, dict[str, dict]]:
    """``st`` as a build leaves it: its coarse lists (:func:`partitioned`) and the re-rank depth
    its searches use by default (:func:`measure_rerank_factor`), both measured on the same
    seeded rows of the build data as queries; with the reports ``{"rerank_factor": {factor:
    agreement}, "nprobe": {nprobe: agreement}}`` (each empty when not measured)."""
    nlist = layout.nlist_for(s, st.n)
    if nlist is None and not fastscan_ready(st, s):  # no fast-scan: nothing to measure
        return st.replaced(keep=DERIVED_KEPT, rerank_factor=default_rerank_factor(st.encoder)), {
            "rerank_factor": {}, "nprobe": {}}
    sample = sample_rows(st.n, s.seed)  # rows of the fit's sample: a re-iterable input takes them without a pass
    rows = np.sort(np.random.default_rng(s.seed).choice(sample, min(NPROBE_QUERIES, len(sample)), replace=False))
    Q = np.asarray(source.take(rows), np.float32)
    if nlist is not None:
        return partitioned(s, st, nlist, rows, Q)
    factor, depth = measure_rerank_factor(st, Q, lambda kc: st.fastscan().candidates(prepare_queries(st.view, Q), kc))
    return st.replaced(keep=DERIVED_KEPT, rerank_factor=factor), {"rerank_factor": depth, "nprobe": {}}


def partitioned(s: IndexSettings, st: Snapshot, nlist: int, rows: np.ndarray, Q: np.ndarray
                ) -> tuple[Snapshot, dict[str, dict]]:
    """:func:`measured` of a partitioned index (``nlist`` lists), on the queries ``Q`` (the
    build's rows ``rows``): faiss k-means on a seeded sample of the codes' latent rows, every
    row assigned to its nearest centroid (:meth:`lplr_index.search.ivf.IVFScorer.assign`); then
    the re-rank depth, with every list scanned; then the default ``nprobe``
    (:func:`measure_nprobe`) at that depth."""
    if st.encoder.lq.bits != 4:
        raise ValueError(f"nlist={s.nlist!r} (partitioned search) needs 4-bit codes, the build "
                         f"chose {st.encoder.lq.bits}-bit codes (codec={s.codec!r}): use "
                         "codec='vq' or nlist=None")
    if nlist > st.n:
        raise ValueError(f"nlist={nlist} lists need at least {nlist} vectors to train the coarse quantizer, "
                         f"got {st.n} (use a smaller nlist or nlist='auto')")
    scorer = ivf_search.IVFScorer(st.view, nlist, seed=s.seed)
    factor, depth = measure_rerank_factor(st, Q, lambda kc: scorer.candidates(Q, kc, nprobe=nlist))  # every list
    nprobe, report = measure_nprobe(s, st, scorer, rows, Q, factor)
    centroids = ivf_search.latent_centroids(st.encoder, scorer.centroids)
    st = st.replaced(keep=DERIVED_KEPT, derived={"ivf": scorer}, ivf_centroids=_frozen(centroids),
                     ivf_lists=_frozen(scorer.assignment()), nprobe=nprobe, rerank_factor=factor)
    return st, {"rerank_factor": depth, "nprobe": report}


#: what a snapshot's derived structures :func:`partitioned` keeps (the codes do not change)
DERIVED_KEPT = ("fastscan", "norms2")


def measure_rerank_factor(st: Snapshot, Q: np.ndarray, candidates) -> tuple[int, dict[int, float]]:
    """The fast-scan candidates per result (``rerank_factor``) a search of ``st`` re-ranks when it
    names none: of :data:`~lplr_index.search.router.RERANK_FACTORS_TRIED` (up to the encoder's
    default), the smallest whose top 10 of every query of ``Q`` is the default depth's.
    ``candidates(kc)``: the ``kc`` fast-scan candidates of each query of ``Q`` (row ids, best
    first, -1: none), asked for as many as the default re-ranks; the first ``f * 10`` of them are
    re-ranked exactly for each factor ``f``.
    Returns the factor and ``{factor: agreement}`` (the fraction of the default depth's top 10
    found, averaged over the queries). A shallower depth's top 10 is the default's exactly when
    the default's 10 are among its candidates, so nothing the default finds is lost on these
    queries; no exact scan of the codes is needed (at 10^7 rows it cost more than the rest of the
    measurement).

    Measured (``benchmarks/bench_rerank_depth.py``, 1,000 held-out queries): one-level designs
    keep every neighbour at 2 candidates a result on synthetic 10^4 and 10^5 and on BBC, while
    Fashion-MNIST at 0.5 b/c finds 0.9932 / 0.9965 / 0.9980 at 2 / 3 / 4; two-level designs
    need 6-8 (synthetic, BBC), Fashion-MNIST's at 4 b/c 16 (0.9953; 0.9888 at 8). Fewer
    candidates are a smaller, cheaper fast-scan (20 results a query use faiss's heap kernel, 40
    its reservoir) and re-rank."""
    k = min(10, st.n)
    tried = RERANK_FACTORS_TRIED[default_rerank_factor(st.encoder)]
    cand = candidates(min(st.n, tried[-1] * k))
    S = blas.exact_scores(st.view, prepare_queries(st.view, Q), cand)  # -inf where no candidate

    def top(f):
        part = S[:, : f * k]
        best = np.argsort(-part, axis=1, kind="stable")[:, :k]
        return np.where(np.take_along_axis(part, best, 1) > -np.inf, np.take_along_axis(cand, best, 1), -1)

    ref = top(tried[-1])
    found = {f: float(np.mean([np.isin(r[r >= 0], t).mean() if (r >= 0).any() else 1.0
                               for t, r in zip(top(f), ref)])) for f in tried}
    return min(f for f in tried if found[f] == 1.0), found


def measure_nprobe(s: IndexSettings, st: Snapshot, scorer, rows: np.ndarray, Q: np.ndarray,
                   factor: int) -> tuple[int, dict[int, float]]:
    """The default ``nprobe``: on the queries ``Q``, the build's rows ``rows`` (each one's own row
    left out of its results), the smallest power of two whose top 10 agrees with the top 10 of
    every list scanned (``nprobe = nlist``) on all but :data:`NPROBE_TOLERANCE` of the results,
    both re-ranked as a search does (``factor`` candidates a result). Returns it and ``{nprobe:
    agreement}`` of every nprobe tried.

    Each result of every list's top 10 that a smaller ``nprobe`` misses costs at most one true
    neighbour, so the agreement bounds the recall lost: recall 10@10 at the chosen ``nprobe`` is
    within :data:`NPROBE_TOLERANCE` of every list's on these queries, without the exact
    neighbours. (Finding those took one more pass over the data, 100 queries against every row:
    88 s of a 10^7 x 384 build at 1 thread, which took 1.6x the exhaustive build with it.)"""
    n, nlist = st.n, scorer.nlist
    k = min(10, n - 1)
    if k < 1 or nlist == 1:
        return nlist, {}
    norms2 = st.norms2() if s.metric == "cosine" else None
    kc = min(n, factor * (k + 1))

    def top(nprobe):
        _, I, _ = scorer.search(Q, kc, k + 1, nprobe=nprobe, norms2=norms2)
        return _without_self(I, rows, k)

    every = top(nlist)

    def agreement(nprobe):
        if nprobe == nlist:
            return 1.0
        return float(np.mean([np.isin(r[r >= 0], g).mean() if (r >= 0).any() else 1.0
                              for g, r in zip(top(nprobe), every)]))

    return ivf_search.choose_nprobe(agreement, nlist, NPROBE_TOLERANCE)


def _without_self(I: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` ids of each row of ``I`` but the query's own row."""
    out = np.full((len(I), k), -1, np.int64)
    for q, (ids, own) in enumerate(zip(I, rows)):
        kept = ids[ids != own][:k]
        out[q, : len(kept)] = kept
    return out
