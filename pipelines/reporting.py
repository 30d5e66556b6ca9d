"""Write an experiment's results: JSON (with the arguments and the machine), a Markdown
table and a PNG plot of accuracy against measured bits per coordinate."""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from .embedding_cache import _umask
from .knn_protocol import METHOD_LABELS, ExperimentResult

__all__ = ["machine_info", "markdown_table", "plot_accuracy", "write_results"]

SCOPE_LABELS = {"-": "-", "per_class": "per class", "whole": "whole matrix"}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """Platform, CPUs, Python and the versions of the numerical packages (not imported)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "python": sys.version.split()[0],
        "packages": {name: _version(name) for name in (
            "lplr-index", "numpy", "faiss-cpu", "scikit-learn", "torch", "torchvision",
            "sentence-transformers", "transformers")},
    }


def _pm(mean: float, std: float, scale: float = 1.0, digits: int = 1) -> str:
    if std * scale < 0.5 * 10 ** -digits:
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def _rank(row: dict[str, Any]) -> str:
    if row["rank_min"] is None:
        return "-"
    if row["rank_min"] == row["rank_max"]:
        return str(row["rank_min"])
    return f"{row['rank_min']}-{row['rank_max']}"


def markdown_table(result: ExperimentResult) -> str:
    """The summary as a Markdown table (mean ± standard deviation over seeds).

    Columns: scope, method, B_nq, rank (range over classes for the per-class scope),
    measured bits per coordinate, accuracy (%), weighted F1 (%), relative Frobenius
    error of the reconstruction, neighbours shared with exact 3-NN on the uncompressed
    embeddings (%) and the number of runs (seeds).
    """
    k = result.config.k
    lines = [
        f"| Scope | Method | B_nq | Rank | Bits/coord. | Accuracy (%) | Weighted F1 (%) | Rel. Frob. error "
        f"| {k}-NN overlap (%) | Runs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result.summary:
        lines.append(
            f"| {SCOPE_LABELS.get(r['scope'], r['scope'])} | {METHOD_LABELS.get(r['method'], r['method'])} "
            f"| {r['bits_nq'] if r['bits_nq'] is not None else '-'} | {_rank(r)} "
            f"| {r['bits_per_coordinate_mean']:.3f} "
            f"| {_pm(r['accuracy_mean'], r['accuracy_std'], 100)} "
            f"| {_pm(r['weighted_f1_mean'], r['weighted_f1_std'], 100)} "
            f"| {_pm(r['relative_error_mean'], r['relative_error_std'], 1, 3)} "
            f"| {_pm(r['recall_at_k_mean'], r['recall_at_k_std'], 100)} | {r['n_runs']} |"
        )
    return "\n".join(lines) + "\n"


def plot_accuracy(result: ExperimentResult, path: str | Path, *, title: str = "") -> Path:
    """Plot accuracy against measured bits per coordinate, one panel per scope.

    Each compressed method is a line through its budgets (mean over seeds, error bars one
    standard deviation); the unquantized accuracy is a dashed horizontal line.

    Parameters
    ----------
    result : ExperimentResult
    path : str or Path
        PNG file to write.
    title : str, optional
        Figure title.

    Returns
    -------
    path : Path
    """
    # A bare Figure renders with the Agg canvas and leaves pyplot's global state alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    scopes = list(result.config.scopes)
    fig = Figure(figsize=(5.2 * len(scopes), 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(scopes), sharey=True, squeeze=False)
    unq = [r for r in result.summary if r["method"] == "unquantized"]
    markers = {"nq": "s", "dsvd": "^", "lplr": "o", "lplr_svd": "D", "lplr_index": "*"}
    bits = sorted(result.config.bits_nq)
    for ax, scope in zip(axes[0], scopes):
        for method in result.config.methods:
            rows = sorted((r for r in result.summary if r["scope"] == scope and r["method"] == method),
                          key=lambda r: r["bits_per_coordinate_mean"])
            if not rows:
                continue
            ax.errorbar([r["bits_per_coordinate_mean"] for r in rows], [100 * r["accuracy_mean"] for r in rows],
                        yerr=[100 * r["accuracy_std"] for r in rows], marker=markers.get(method, "o"),
                        capsize=3, label=METHOD_LABELS.get(method, method),
                        markersize=9 if method == "lplr_index" else 6)
        if unq:
            ax.axhline(100 * unq[0]["accuracy_mean"], color="black", linestyle="--", linewidth=1,
                       label="Unquantized (32 bits/coord.)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(bits, [str(b) for b in bits])
        ax.set_xlabel("measured bits per coordinate")
        ax.set_title(f"compressed {SCOPE_LABELS.get(scope, scope)}")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel(f"{result.config.k}-NN accuracy (%)")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; use the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_results(
    result: ExperimentResult,
    out_dir: str | Path,
    name: str,
    *,
    arguments: dict[str, Any] | None = None,
    dataset: dict[str, Any] | None = None,
    command: str = "",
    title: str = "",
    timings: dict[str, float] | None = None,
) -> dict[str, Path]:
    """Write ``<name>.json``, ``<name>.md`` and ``<name>.png`` into ``out_dir``.

    Parameters
    ----------
    result : ExperimentResult
    out_dir : str or Path
        Created if missing.
    name : str
        File stem.
    arguments : dict, optional
        The command-line arguments (stored in the JSON).
    dataset : dict, optional
        How the embeddings were obtained (stored in the JSON, summarised in the Markdown).
    command : str, optional
        The command that produced the results (stored in both files).
    title : str, optional
        Title of the Markdown section and of the plot.
    timings : dict, optional
        Seconds spent per stage.

    Returns
    -------
    paths : dict
        ``{"json": ..., "markdown": ..., "png": ...}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "markdown": out / f"{name}.md", "png": out / f"{name}.png"}
    payload = {
        "name": name,
        "title": title,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
        "arguments": arguments or {},
        "dataset": dataset or {},
        "library": {"name": "lplr-index", "version": result.library_version},
        "machine": machine_info(),
        "timings_seconds": {k: round(v, 3) for k, v in (timings or {}).items()},
        **result.to_dict(),
    }
    _atomic_write_text(paths["json"], json.dumps(payload, indent=2, default=str) + "\n")

    cfg = result.config
    ds = dataset or {}
    emb = ds.get("embedding", {})
    lines = [f"# {title or name}", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    facts = [f"{result.data['n_train']} training (database) / {result.data['n_test']} test embeddings of "
             f"dimension {result.data['dim']}, {result.data['n_classes']} classes"]
    if emb:
        model = emb.get("model", "?")
        res = f", {emb['resolution']} px input" if "resolution" in emb else ""
        facts.append(f"embeddings: {model}{res} (weights {emb.get('weights_id', '?')[:23]})")
    if ds.get("subset") and ds.get("subset") != "all":
        facts.append(f"split / subset: {ds['subset']}")
    facts.append(f"B = B' = {cfg.bits_l}/{cfg.bits_r} bits, cr = {cfg.cr:g}, quantizer `{cfg.quantizer}` "
                 f"(LPLRIndex: `{cfg.index_quantizer}`, bits_l "
                 f"{cfg.index_bits_l if cfg.index_bits_l is not None else 'auto'}), "
                 f"{cfg.k}-NN exact L2 with ties to the {cfg.tie_break} label")
    facts.append(f"seeds {', '.join(map(str, cfg.seeds))} (mean ± std over seeds for the randomized methods; "
                 "NQ and DSVD are deterministic)")
    lines += [f"- {f}" for f in facts] + [""]
    lines.append(markdown_table(result))
    lines += [
        f"Bits/coord. is measured: stored bits (codes and quantizer levels; the whole index file for "
        f"LPLRIndex) over n x d. Rank is the range over classes for the per-class scope. "
        f"{cfg.k}-NN overlap: share of the exact {cfg.k} nearest neighbours on the uncompressed "
        f"embeddings that are found on the compressed ones.",
    ]
    if result.skipped:
        lines += ["", "Skipped settings:", ""]
        lines += [f"- {s['method']} ({s['scope']}, B_nq={s['bits_nq']}, seed={s['seed']}): {s['reason']}"
                  for s in result.skipped]
    if timings:
        lines += ["", "Timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) + "."]
    _atomic_write_text(paths["markdown"], "\n".join(lines) + "\n")

    plot_accuracy(result, paths["png"], title=title or name)
    return paths
