"""Renders committed benchmark records into ``benchmarks/results/README.md``, plots,
and the headline table of the project README (never typed by hand).

Records of ``kcc bench`` (schema 1) are grouped by dataset: one table per dataset
holds every (model, method) of its records, each row taken from the record with
the most seeds (ties: the file that sorts last), its size and latency ratios
against the fp32 row OF THE SAME RECORD (measured in the same run, interleaved).
Where a dataset's records disagree on the fp32 reference (different test AUC for a
seed, or a different machine or library version) the section says so. Records of
``kcc memory`` and ``kcc scale`` get their own sections; any other JSON file in the
folder is listed as not rendered.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

from keras_ctr_compress.bench.record import SCHEMA_VERSION, load_record, summarize, validate_record
from keras_ctr_compress.utils import atomic_path, atomic_write_text

START, END = "<!-- results:start -->", "<!-- results:end -->"
WHY_START, WHY_END = "<!-- why-not:start -->", "<!-- why-not:end -->"
#: The README's "why not TFMOT / Keras PTQ alone" rows: method -> what a user would try
#: and why it falls short (the numbers beside them come from the records).
WHY_NOT = {
    "keras-int8": ("Keras `Embedding.quantize(\"int8\")`", "only the tables: Keras' int8 Dense does not "
                   "convert to LiteRT, and the MLP is most of the file"),
    "keras-int4": ("Keras `Embedding.quantize(\"int4\")`", "Keras unpacks the whole int4 table before the "
                   "gather: the file stores a byte per weight"),
    "drq": ("LiteRT dynamic-range quantisation", "one scale per tensor, no training; the baseline to beat"),
    "tfmot-prune": ("TFMOT `prune_low_magnitude` (tf_keras copy)", "Keras 2 only; unstructured zeros change "
                    "neither the file size nor LiteRT speed"),
}
#: Our rows shown beside them (the first of each group that the records hold).
WHY_OURS = (("searched",), ("alpt-4",), ("afm-d16-ft", "afm-d4-ft"), ("deeplight-structured",))
#: Facts of ``record["machine"]`` that must agree for ratios of two records to compare.
MACHINE_KEYS = ("cpu", "cores", "tensorflow", "keras", "litert")


def pareto_front(points: list[tuple[float, ...]]) -> list[int]:
    """Indices of the points no other point dominates (all coordinates minimised)."""
    keep = []
    for i, p in enumerate(points):
        dominated = any(
            all(q[k] <= p[k] for k in range(len(p))) and any(q[k] < p[k] for k in range(len(p)))
            for j, q in enumerate(points) if j != i
        )
        if not dominated:
            keep.append(i)
    return keep


# ------------------------------------------------------------------ bench records


def dataset_rows(records: list[tuple[Path, dict]]) -> list[dict]:
    """``summarize`` rows of one dataset's records, one per (model, method), each with
    its ``record`` (file name) and ratios against its own record's fp32 row."""
    best: dict[tuple[str, str], dict] = {}
    order: list[tuple[str, str]] = []
    for path, rec in records:
        for s in summarize(rec):
            key = (s["model"], s["method"])
            s = {**s, "record": path.name}
            if key not in best:
                order.append(key)
                best[key] = s
            elif s["seeds"] >= best[key]["seeds"]:
                best[key] = s
    models = list(dict.fromkeys(m for m, _ in order))
    return [best[k] for m in models for k in order if k[0] == m]


def reference_notes(records: list[tuple[Path, dict]]) -> list[str]:
    """Where one dataset's records disagree: fp32 test AUC per (model, seed), machine."""
    notes = []
    fp32: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
    machines: dict[tuple, list[str]] = defaultdict(list)
    for path, rec in records:
        for r in rec["results"]:
            if r["method"] == "fp32":
                fp32[(r["model"], r["seed"])][path.name] = r["test_auc"]
        m = rec.get("machine", {})
        machines[tuple(m.get(k) for k in MACHINE_KEYS)].append(path.name)
    for (model, seed), aucs in sorted(fp32.items()):
        if len(aucs) > 1 and max(aucs.values()) - min(aucs.values()) > 1e-6:
            notes.append(f"fp32 {model} seed {seed} differs between records: "
                         + ", ".join(f"{k} {v:.4f}" for k, v in aucs.items()))
    if len(machines) > 1:
        notes.append("records come from different machines or library versions ("
                     + "; ".join(f"{', '.join(v)}: {dict(zip(MACHINE_KEYS, k, strict=True))}"
                                 for k, v in machines.items())
                     + "): compare ratios within a record only")
    return notes


def render_rows(rows: list[dict], *, with_record: bool = True) -> str:
    """A markdown table of :func:`dataset_rows` (or ``summarize``) rows."""
    head = ("| model | method | AUC (mean ± std) | logloss | .tflite bytes | size vs fp32 | "
            "b1 latency vs fp32 | b256 latency vs fp32 | parity |" + (" record |" if with_record else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in rows:
        lines.append(
            f"| {s['model']} | {s['method']} | {s['auc_mean']:.4f} ± {s['auc_std']:.4f} "
            f"(n={s['seeds']}) | {s['logloss_mean']:.4f} | {s['bytes']:,.0f} | "
            f"{s.get('bytes_ratio', float('nan')):.3f} | {s.get('lat_b1_ratio', float('nan')):.2f} | "
            f"{s.get('lat_b256_ratio', float('nan')):.2f} | {s['parity_max_abs']:.1e} |"
            + (f" `{s['record']}` |" if with_record else "")
        )
    return "\n".join(lines)


def _plot(rows: list[dict], title: str, path: Path, *, x: str, y: str, xlabel: str, ylabel: str,
          front_sign: float) -> Path:
    """One point per row (error bars on AUC), the Pareto front as a dashed line;
    ``front_sign``: +1 when larger ``y`` is better, -1 when smaller is."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    for s in rows:
        yerr = s["auc_std"] if y == "auc_mean" else None
        ax.errorbar(s[x], s[y], yerr=yerr, fmt="o", ms=4, capsize=2)
        ax.annotate(f"{s['method']}" if len({r['model'] for r in rows}) == 1 else f"{s['model']}/{s['method']}",
                    (s[x], s[y]), textcoords="offset points", xytext=(3, 3), fontsize=6)
    front = pareto_front([(s[x], -front_sign * s[y]) for s in rows])
    pts = sorted((rows[i][x], rows[i][y]) for i in front)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "k--", lw=0.8, label="Pareto front")
    ax.set_xscale("log")
    if y != "auc_mean":
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="lower right" if front_sign > 0 else "upper left", fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def plot_auc_vs_bytes(rows: list[dict], title: str, path: str | Path) -> Path:
    """AUC (mean ± std over seeds) against .tflite bytes with the Pareto front."""
    return _plot(rows, title, Path(path), x="bytes", y="auc_mean", xlabel=".tflite bytes (log)",
                 ylabel="test AUC (mean ± std over seeds)", front_sign=1.0)


def plot_latency_vs_bytes(rows: list[dict], title: str, path: str | Path) -> Path:
    """Batch-1 latency ratio to fp32 against .tflite bytes with the Pareto front."""
    rows = [s for s in rows if s.get("lat_b1_ratio", 0) > 0]
    return _plot(rows, title, Path(path), x="bytes", y="lat_b1_ratio", xlabel=".tflite bytes (log)",
                 ylabel="batch-1 latency / fp32 (same run)", front_sign=-1.0)


def _dataset_section(dataset: str, records: list[tuple[Path, dict]], results_dir: Path) -> str:
    rows = dataset_rows(records)
    stem = f"{dataset}_summary"
    plot_auc_vs_bytes(rows, dataset, results_dir / f"{stem}.png")
    plot_latency_vs_bytes(rows, dataset, results_dir / f"{stem}_latency.png")
    parts = [f"## {dataset}", ""]
    for path, rec in records:
        m = rec.get("machine", {})
        parts.append(
            f"- `{path.name}`: model {rec.get('model', '?')}, split {rec['split']}, seeds {rec['seeds']}"
            f"{' (quick smoke run)' if rec.get('quick') else ''}; {m.get('cpu', '?')}, {m.get('cores', '?')} "
            f"cores, TF {m.get('tensorflow', '?')}, Keras {m.get('keras', '?')}, LiteRT {m.get('litert', '?')}; "
            f"command `{rec.get('command', '?')}`")
    parts += ["", render_rows(rows), ""]
    parts += [f"Note: {n}." for n in reference_notes(records)]
    parts += [line for path, rec in records for line in _field_importance_lines(path, rec)]
    parts += ["", f"![AUC vs bytes]({stem}.png) ![latency vs bytes]({stem}_latency.png)", ""]
    return "\n".join(parts)


def _field_importance_lines(path: Path, rec: dict) -> list[str]:
    """SHARK's field-importance facts of a record (means over its seeds): Spearman of
    Taylor and norm scores against the exact permutation importance, and the test AUC
    of each way of choosing the fields to drop (random: mean of its draws)."""
    import numpy as np

    by = defaultdict(list)
    for r in rec["results"]:
        by[r["method"]].append(r)
    taylor = [r["extra"]["importance"] for r in by.get("shark-fields", []) if "importance" in r.get("extra", {})]
    if not taylor:
        return []
    rho_t = np.mean([t["spearman_taylor_vs_permutation"] for t in taylor])
    rho_n = np.mean([t["spearman_norm_vs_permutation"] for t in taylor])
    auc = {m: float(np.mean([r["test_auc"] for r in by[m]])) for m in
           ("fp32", "shark-fields", "shark-fields-permutation", "shark-fields-norm") if by.get(m)}
    rand = [r["extra"]["random_mean_test_auc"] for r in by.get("shark-fields-random", [])
            if "random_mean_test_auc" in r.get("extra", {})]
    if rand:
        draws = len(by["shark-fields-random"][0]["extra"].get("random_draws", []))
        auc[f"random ({draws} draws)"] = float(np.mean(rand))
    aucs = ", ".join(f"{m} {v:.4f}" for m, v in auc.items())
    return ["", f"Field importance (`{path.name}`, {len(taylor)} seeds): Spearman vs exact permutation "
            f"importance: Taylor {rho_t:.3f}, embedding norm {rho_n:.3f}. Test AUC after dropping the same "
            f"number of fields, chosen by: {aucs}."]


# ------------------------------------------------------------------ other records


def _memory_section(path: Path, rec: dict) -> str:
    from keras_ctr_compress.bench.memory import state_bytes, state_bytes_ratios

    lines = [f"## Training memory (`{path.name}`)", "",
             f"{rec['rows']:,} x {rec['dim']} table, {rec['steps']} steps of batch {rec['batch']}, each "
             f"configuration in its own process; command `{rec.get('command', '?')}`.", "",
             "| config | table dtype | peak RSS MiB | table share MiB | fp32-adam share / this | "
             "table + slot bytes | fp32-adam bytes / this |",
             "|---|---|---|---|---|---|---|"]
    # older records lack the exact ratios (and the oldest the byte counts behind them)
    exact_over = rec.get("fp32_state_bytes_over") or state_bytes_ratios(rec["results"])
    for r in rec["results"]:
        ratio = rec.get("fp32_share_over", {}).get(r["config"])
        exact = exact_over.get(r["config"])
        state = state_bytes(r)
        lines.append(f"| {r['config']} | {r['table_dtype']} | {r['peak_rss_mb']:,.0f} | {r['table_share_mb']:,.0f} | "
                     f"{'' if ratio is None else f'{ratio:.2f}x'} | {'' if state is None else f'{state:,}'} | "
                     f"{'' if exact is None else f'{exact:.2f}x'} |")
    return "\n".join(lines) + "\n"


def _scale_section(path: Path, rec: dict, results_dir: Path) -> str:
    from keras_ctr_compress.bench.scale import plot_scale_sweep

    png = plot_scale_sweep(rec, results_dir / f"{path.stem}.png")
    lines = [f"## Scale sweep (`{path.name}`)", "",
             f"{rec['fields']} fields, dim {rec['dim']}, MLP {rec['mlp']}; untrained weights; every export and "
             f"scoring in its own process; latencies interleaved per scale. Command `{rec.get('command', '?')}`.", "",
             "| rows | method | .tflite bytes | export s | export extra MiB | extra / fp32 model bytes | "
             "scoring extra MiB | b1 us | b256 us |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rec["results"]:
        lines.append(
            f"| {r['total_rows']:,} | {r['method']} | {r['tflite_bytes']:,} | {r['export_seconds']:.1f} | "
            f"{r['export_extra_mb']:,.0f} | {r.get('export_extra_over_fp32_model', float('nan')):.2f} | "
            f"{r['score_extra_mb']:,.0f} | {r['latency_us_b1']:.1f} | {r['latency_us_b256']:.1f} |")
    lines += ["", f"![scale sweep]({png.name})", ""]
    return "\n".join(lines)


def _parity_section(path: Path, rec: dict) -> str:
    per = ", ".join(f"{m} {v['count']} (max {v['max_abs_diff']:.1e})" for m, v in rec.get("per_model", {}).items())
    return "\n".join([
        f"## Parity sweep (`{path.name}`)", "",
        f"{rec['passed']} of {rec['count']} random valid plans exported builtins-only and matched Keras in "
        f"LiteRT: max |LiteRT - Keras| {rec['max_abs_diff']:.1e} (tolerance {rec['atol']:g}); per model: {per}. "
        f"The {rec.get('drq_plans', 0)} DRQ files differ by up to {rec.get('drq_max_abs_diff', float('nan')):.1e} "
        f"(reported). Command `{rec.get('command', '?')}`.", ""])


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def write_results_readme(results_dir: str | Path = "benchmarks/results", readme: str | Path | None = None,
                         headline: str | None = None) -> Path:
    """Writes ``results_dir/README.md`` (+ plots) from every ``*.json`` record there;
    with ``readme``, replaces the block between the results markers in that file by
    the ``headline`` dataset's table (default: frappe, else the first dataset)."""
    results_dir = Path(results_dir)
    paths = sorted(results_dir.glob("*.json"))
    if not paths:
        raise ValueError(f"{results_dir}: no benchmark records (*.json) found")
    bench: dict[str, list[tuple[Path, dict]]] = defaultdict(list)
    others, skipped = [], []
    for p in paths:
        raw = _read(p)
        schema = raw.get("schema") if isinstance(raw, dict) else None
        if schema == SCHEMA_VERSION:
            validate_record(raw, where=str(p))
            bench[raw["dataset"]].append((p, raw))
        elif schema == "kcc-memory/1":
            others.append(_memory_section(p, raw))
        elif schema == "kcc-parity-sweep/1":
            others.append(_parity_section(p, raw))
        elif schema == "kcc-scale/1":
            others.append(_scale_section(p, raw, results_dir))
        else:
            skipped.append(p.name)
    parts = ["# Benchmark results", "",
             "Generated by `kcc report` from the JSON records in this folder. AUC: mean ± std "
             "over seeds, scored from each method's .tflite in the LiteRT interpreter on the "
             "test split. Sizes and latencies are ratios to the fp32 row of the record the row "
             "comes from (named in the last column); latencies are medians (num_threads=1) of "
             "all files of that record timed interleaved in one process. Parity: max |LiteRT - "
             "Keras|; for lossy converter rows (drq, and the quantised rows whose MLP DRQ "
             "shrinks) it is the difference to the Keras model they approximate, reported, not "
             "enforced.", ""]
    for dataset in sorted(bench, key=lambda d: (d != "frappe", d)):
        parts.append(_dataset_section(dataset, bench[dataset], results_dir))
    parts += others
    if skipped:
        parts += [f"Other files here (not benchmark records of a known schema): {', '.join(skipped)}.", ""]
    out = results_dir / "README.md"
    atomic_write_text(out, "\n".join(parts))
    if readme is not None:
        if not bench:
            raise ValueError(f"{results_dir}: no kcc bench records for the README's headline table")
        chosen = headline if headline in bench else ("frappe" if "frappe" in bench else next(iter(bench)))
        _replace_block(Path(readme), chosen, bench[chosen], results_dir)
    return out


def why_not_table(rows: list[dict]) -> str:
    """The README's comparison with the tools a user has today, from ``dataset_rows``."""
    by = {s["method"]: s for s in rows}
    lines = ["| what a user would try | model | .tflite bytes vs fp32 | b1 latency vs fp32 | AUC (fp32 of its "
             "record) | why it is not enough |", "|---|---|---|---|---|---|"]

    def fp32_auc(s: dict) -> float:
        ref = next((r for r in rows if r["model"] == s["model"] and r["method"] == "fp32"), None)
        return float("nan") if ref is None else ref["auc_mean"]

    def line(label: str, s: dict, why: str) -> str:
        return (f"| {label} | {s['model']} | {s.get('bytes_ratio', float('nan')):.3f} | "
                f"{s.get('lat_b1_ratio', float('nan')):.2f} | {s['auc_mean']:.4f} ({fp32_auc(s):.4f}) | {why} |")

    for method, (label, why) in WHY_NOT.items():
        if method in by:
            lines.append(line(label, by[method], why))
    for group in WHY_OURS:
        s = next((by[m] for m in group if m in by), None)
        if s is not None:
            lines.append(line(f"here: `{s['method']}`", s, "exact parity where defined; bytes and latency "
                              "measured on the shipped file"))
    return "\n".join(lines)


def _swap_block(text: str, start: str, end: str, body: str) -> str:
    block = f"{start}\n{body}\n{end}"
    return re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)


def _replace_block(readme: Path, dataset: str, records: list[tuple[Path, dict]], results_dir: Path) -> None:
    text = readme.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{readme}: the markers {START} / {END} are missing")
    rel = results_dir.as_posix().rstrip("/")
    rows = dataset_rows(records)
    body = "\n".join([
        f"Headline ({dataset}; from {', '.join(f'`{rel}/{p.name}`' for p, _ in records)}; generated by "
        "`kcc report`, see `benchmarks/results/README.md` for every record):", "",
        render_rows(rows), "", f"![AUC vs bytes]({rel}/{dataset}_summary.png)",
    ])
    text = _swap_block(text, START, END, body)
    if WHY_START in text and WHY_END in text:
        text = _swap_block(text, WHY_START, WHY_END, f"Measured on {dataset} (generated by `kcc report` from "
                           f"the same records):\n\n{why_not_table(rows)}")
    atomic_write_text(readme, text)


__all__ = ["dataset_rows", "load_record", "pareto_front", "plot_auc_vs_bytes", "plot_latency_vs_bytes",
           "reference_notes", "render_rows", "write_results_readme"]
