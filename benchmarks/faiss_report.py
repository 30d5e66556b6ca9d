"""Reporting for ``bench_faiss.py``: JSON, Markdown table and PNG plots."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_json", "one_line", "markdown", "plots"]

FAMILY_ORDER = ["Flat", "LPLR", "PQ", "PQfs4", "PCAR+PQfs4", "PCA+PQfs4", "OPQ+PQfs4", "RaBitQfs", "OPQ+PQ", "SQ4",
                "SQ8", "RaBitQ", "PCA+SQ8", "LSH", "ScaNN-AH", "RaBitQLib"]


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(result: dict[str, Any], path: Path) -> None:
    """Write ``result`` as indented JSON, atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(_jsonable(result), fh, indent=1)
        fh.write("\n")
    os.replace(tmp, path)


def _label(row: dict[str, Any]) -> str:
    return row["method"] + (f" [{row['mode']}]" if row.get("mode") else "")


def one_line(row: dict[str, Any], k: int) -> str:
    """Short progress line for one row."""
    acc = row.get("knn3_accuracy")
    return (f"{_label(row)} {row['param']}: {row['bits_per_coordinate']:.3f} b/c, "
            f"R1@1 {row['recall_1_at_1']:.3f}, R{k}@{k} {row[f'recall_{k}_at_{k}']:.3f}"
            + (f", 3-NN {acc:.3f}" if acc is not None else "")
            + f", build {row['build_s']:.1f}s, {row['qps']:.0f} q/s, {row['latency_ms']:.2f} ms/q")


def _num(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _targets(row: dict[str, Any]) -> str:
    return ", ".join(f"{t:g}" for t in row["targets"]) if row["targets"] else "native"


def _sort_key(row: dict[str, Any]) -> tuple:
    t = min(row["targets"]) if row["targets"] else math.inf
    fam = FAMILY_ORDER.index(row["family"]) if row["family"] in FAMILY_ORDER else len(FAMILY_ORDER)
    return (t, fam, row["method"], row.get("mode", ""), row["bits_per_coordinate"])


def markdown(result: dict[str, Any]) -> str:
    """Markdown report: context, one table of all rows grouped by budget, skipped settings.

    Parameters
    ----------
    result : dict
        The JSON-ready result of ``bench_faiss.main``.

    Returns
    -------
    str
    """
    k = result["k"]
    m = result["machine"]
    d = result["data"]
    rows = sorted(result["rows"], key=_sort_key)
    has_acc = any(r.get("knn3_accuracy") is not None for r in rows)
    lines = [
        f"# bench_faiss: {result['dataset']}",
        "",
        f"- data: n={d['n']}, d={d['dim']}, queries={d['n_queries']}"
        + (f" ({d['source']}: " + ", ".join(f"{key}={d[key]}" for key in ("decay", "n_clusters", "cluster_std", "seed")
                                             if key in d) + ")" if d.get("source") == "synthetic" else ""),
        f"- machine: {m['cpu']}, {m['logical_cores']} logical cores, {m['memory_gib']} GiB; "
        f"faiss {m['faiss_version']} with {m['faiss_omp_threads']} OpenMP threads "
        f"(OMP_WAIT_POLICY={m['omp_wait_policy']}), numpy BLAS threads "
        + ", ".join(f"{t['prefix']}={t['num_threads']}" for t in m.get("threadpools", [])
                    if t.get("user_api") == "blas")
        + "; other libraries: " + ", ".join(f"{lib} {m.get(lib + '_version') or 'not installed'}"
                                             for lib in ("scann", "rabitqlib"))
        + f"; load average at start {_load(m.get('load_average_at_start'))}, "
          f"at end {_load(m.get('load_average_at_end'))} (shared machine: timings are indicative)",
        _load_range(rows),
        f"- command: `{result['command']}`"
        + "".join(f"; rows of other families kept (--merge) from `{m['command']}`"
                  for m in result.get("merged_from", [])),
        f"- budget rule: {result['budget_rule']}",
        f"- bits/coord = whole stored index (faiss.serialize_index length, the files ScaNN's serialize "
        f"writes, the rabitqlib save file, or the LPLRIndex file) * 8 / (n * d); "
        f"code b/c = per-vector codes only. QPS: batch of {rows[0]['batch_queries'] if rows else '?'} queries, "
        f"median of repeats; latency: median single-query time. Recalls against exact search "
        f"(lplr_index.recall_at_k); 3-NN accuracy by lplr_index.knn_vote (ties to the nearest).",
        "",
        *summary_table(result),
        "",
        "All rows:",
        "",
        "| budget | method | setting | bits/coord | code b/c | file | build s | QPS 1t | latency ms 1t "
        f"| QPS 2t | latency ms 2t | R1@1 | R{k}@{k} | RD ratio (floor) |" + (" 3-NN acc |" if has_acc else ""),
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if has_acc else ""),
    ]
    for r in rows:
        over = "" if r["within_budget"] in (None, True) else " (over)"
        code = "" if r["code_bits_per_coordinate"] is None else f"{r['code_bits_per_coordinate']:.3f}"
        acc = r.get("knn3_accuracy")
        lines.append(
            f"| {_targets(r)} | {_label(r)} | {r['param']} | {r['bits_per_coordinate']:.3f}{over} | {code} "
            f"| {_fmt_bytes(r['file_bytes'])} | {r['build_s']:.2f} | {r['qps']:.0f} | {r['latency_ms']:.2f} "
            f"| {_num(r.get('qps_2t'), '.0f')} | {_num(r.get('latency_ms_2t'), '.2f')} "
            f"| {r['recall_1_at_1']:.3f} | {r[f'recall_{k}_at_{k}']:.3f} | {_rd(r)} |"
            + (f" {acc:.3f} |" if has_acc and acc is not None else (" – |" if has_acc else ""))
        )
    errors = [s for s in result.get("skipped", []) if s.get("error")]
    if errors:
        lines += ["", "**Errors** (a setting that raised; no row):", ""]
        lines += [f"- {s['family']} @ {_budgets(s['budget'])} b/c: {s['reason']}" for s in errors]
    rest = [s for s in result.get("skipped", []) if not s.get("error")]
    if rest:
        lines += ["", "Not run at a budget (no setting fits, fixed rate, or a duplicate setting):", ""]
        grouped: dict[tuple[str, str], list[Any]] = {}
        for s in rest:
            grouped.setdefault((s["family"], s["reason"]), []).append(s["budget"])
        for (fam, reason), budgets in grouped.items():
            lines.append(f"- {fam} @ {', '.join(_budgets(b) for b in budgets)} b/c: {reason}")
    earlier = [m.get("seconds") for m in result.get("merged_from", [])]
    lines += ["", f"Benchmark time: {result.get('seconds', 0):.0f} s"
              + (" for this run; merged earlier runs: "
                 + ", ".join("not recorded" if t is None else f"{t:.0f} s" for t in earlier) if earlier else "")
              + ".", ""]
    return "\n".join(lines)


def summary_table(result: dict[str, Any]) -> list[str]:
    """Compact Markdown table: recall k@k (measured bits/coord) per method and budget.

    LPLR rows are those of the index's default search (fast-scan with exact re-ranking
    where it has 4-bit codes, else the exact scan of the codes); rows without a budget
    (native rates) go to the last column.
    """
    k = result["k"]
    key = f"recall_{k}_at_{k}"
    budgets = list(result["args"]["budgets"])
    cells: dict[str, dict[Any, str]] = {}
    for r in sorted(result["rows"], key=_sort_key):
        if r["family"] == "LPLR" and r["mode"] != "fastscan":
            if any(x["method"] == r["method"] and x["mode"] == "fastscan" and x["targets"] == r["targets"]
                   for x in result["rows"]):
                continue
        text = f"{r[key]:.3f} ({r['bits_per_coordinate']:.2f})"
        name = r["method"]
        for t in (r["targets"] or ["native"]):
            cells.setdefault(name, {})[t] = text
    cols = budgets + (["native"] if any("native" in c for c in cells.values()) else [])
    head = "| method | " + " | ".join(f"{c:g} b/c" if c != "native" else "native rate" for c in cols) + " |"
    lines = [f"Recall {k}@{k} (measured bits/coord) at each budget:", "", head,
             "|---|" + "---:|" * len(cols)]
    for name in sorted(cells, key=lambda n: _family_rank(n)):
        lines.append(f"| {name} | " + " | ".join(cells[name].get(c, "–") for c in cols) + " |")
    return lines


def _load_range(rows: list[dict[str, Any]]) -> str:
    loads = [r["load_average_1m"] for r in rows if r.get("load_average_1m") is not None]
    if not loads:
        return "- load during the rows: not recorded"
    return (f"- 1-minute load average when each row finished: {min(loads):.1f} to {max(loads):.1f} "
            f"(median {float(np.median(loads)):.1f}) over {len(loads)} rows; a load above the core count means "
            f"other processes competed for the cores, and speeds then fall below an idle machine's")


def _budgets(b: Any) -> str:
    return ", ".join(f"{x:g}" for x in b) if isinstance(b, list) else f"{b:g}"


def _load(x: Any) -> str:
    return "?" if not x else "/".join(f"{v:.1f}" for v in x)


LPLR_COLORS = {"LPLR default": "black", "LPLR bl4": "crimson", "LPLR bl8": "darkorange",
               "LPLR paper": "saddlebrown"}
FAISS_COLORS = {"Flat": "tab:gray", "PQ": "tab:blue", "PQfs4": "tab:cyan", "OPQ+PQ": "tab:purple",
                "SQ4": "tab:green", "SQ8": "tab:olive", "RaBitQ": "tab:pink", "PCA+SQ8": "tab:brown",
                "LSH": "tab:red", "ScaNN-AH": "darkgreen", "RaBitQLib": "magenta"}


OTHER_LIBRARIES = {"ScaNN-AH", "RaBitQLib"}  # rivals from other packages (diamond markers)


def _family_rank(label: str) -> tuple:
    method = label.split(" [")[0]
    fam = "LPLR" if method.startswith("LPLR") else method.replace(" (exact)", "")
    variant = list(LPLR_COLORS).index(method) if method in LPLR_COLORS else 0
    return (FAMILY_ORDER.index(fam) if fam in FAMILY_ORDER else 99, variant, label)


def _series(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(_label(r), []).append(r)
    return out


def plots(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """Two PNGs: recall@k against bits per coordinate, and recall@k against queries per second.

    Parameters
    ----------
    result : dict
        The JSON-ready result of ``bench_faiss.main``.
    out_dir : Path

    Returns
    -------
    list of Path
        The files written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = result["k"]
    key = f"recall_{k}_at_{k}"
    rows = result["rows"]
    title = f"{result['dataset']} (n={result['data']['n']}, d={result['data']['dim']})"
    written = []

    def style(row: dict[str, Any]) -> dict[str, Any]:
        if row["family"] == "LPLR":
            color = LPLR_COLORS.get(row["method"], "black")
            ls = ":" if row.get("mode") == "reconstructed" else "-"
            return dict(color=color, ls=ls, marker="o", ms=7, lw=2.2)
        color = FAISS_COLORS.get(row["family"], "gray")
        marker = "*" if row["family"] == "Flat" else ("D" if row["family"] in OTHER_LIBRARIES else "s")
        return dict(color=color, ls="--", marker=marker, ms=6, lw=1)

    # recall against bits: both LPLR scoring modes return the same neighbours, so one curve
    # per variant (factored, or reconstructed where factored failed)
    by_bits: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["family"] == "LPLR":
            continue
        by_bits.setdefault(r["method"], []).append(r)
    for method in dict.fromkeys(r["method"] for r in rows if r["family"] == "LPLR"):
        mine = [r for r in rows if r["method"] == method]
        fact = [r for r in mine if r["mode"] == "factored"]
        have = {tuple(r["targets"]) for r in fact}
        by_bits[method] = fact + [r for r in mine if r["mode"] == "reconstructed"
                                  and tuple(r["targets"]) not in have]
    fig, ax = plt.subplots(figsize=(9, 6))
    for name in sorted(by_bits, key=_family_rank):
        pts = sorted(by_bits[name], key=lambda r: r["bits_per_coordinate"])
        st = style(pts[0])
        st["ls"] = "-" if pts[0]["family"] == "LPLR" else st["ls"]
        ax.plot([r["bits_per_coordinate"] for r in pts], [r[key] for r in pts], label=name, **st)
    for b in result["args"]["budgets"]:
        ax.axvline(b, color="0.85", lw=0.8, zorder=0)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("measured bits per coordinate (whole stored index)")
    ax.set_ylabel(f"recall {k}@{k}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Recall against storage: {title}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    path = out_dir / f"{result['dataset']}_recall_vs_bits.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    series = _series(rows)
    fig, ax = plt.subplots(figsize=(11, 6))
    for name in sorted(series, key=_family_rank):
        pts = sorted(series[name], key=lambda r: r["bits_per_coordinate"])  # joined in bits order
        st = style(pts[0])
        st["lw"] = st["lw"] * 0.6
        ax.plot([r["qps"] for r in pts], [r[key] for r in pts], label=name, **st)
        for r in pts:
            ax.annotate(f"{r['bits_per_coordinate']:.2g}", (r["qps"], r[key]), fontsize=6,
                        xytext=(3, 2), textcoords="offset points", color=st["color"])
    ax.set_xscale("log")
    ax.set_xlabel(f"queries per second (batch of {rows[0]['batch_queries'] if rows else '?'}, "
                  f"{result['machine']['faiss_omp_threads']} threads)")
    ax.set_ylabel(f"recall {k}@{k}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Recall against throughput (point labels: bits/coord): {title}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path = out_dir / f"{result['dataset']}_recall_vs_qps.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


def _rd(row: dict) -> str:
    """The RD ratio, and in parentheses the best ratio of the index's code options on Gaussian
    data of the same covariance (``RateDistortion.floor_ratio``) where the row has it."""
    floor = row.get("rd_floor_ratio")
    return _num(row.get("rd_ratio"), ".2f") + ("" if floor is None else f" ({floor:.2f})")
