"""The benchmark record (design.md): schema check, machine facts, summary tables."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections import defaultdict
from pathlib import Path

from keras_ctr_compress.utils import atomic_write_text

SCHEMA_VERSION = 1
_ROW_FIELDS = {
    "method": str, "model": str, "seed": int, "test_auc": float, "test_logloss": float,
    "tflite_bytes": int, "params": int, "latency_us_b1": float, "latency_us_b256": float,
    "parity_max_abs": float, "train_seconds": float, "peak_rss_mb": float,
}


def machine_facts() -> dict:
    """CPU model, core count and library versions, so records from different
    machines are not compared by accident."""
    import ai_edge_litert
    import keras
    import numpy as np
    import tensorflow as tf

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
        "python": sys.version.split()[0], "tensorflow": tf.__version__,
        "keras": keras.__version__, "litert": getattr(ai_edge_litert, "__version__", "unknown"),
        "numpy": np.__version__,
        # thread settings change absolute times (ratios are measured side by side)
        "tf_threads_env": {k: os.environ[k] for k in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
                           if k in os.environ},
    }


def validate_record(rec: dict, *, where: str = "record") -> None:
    """Raises ValueError naming the first field that does not match the schema."""
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a JSON object")
    if rec.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"{where}: schema must be {SCHEMA_VERSION}, got {rec.get('schema')!r}")
    for key, typ in (("dataset", str), ("split", dict), ("seeds", list), ("results", list)):
        if not isinstance(rec.get(key), typ):
            raise ValueError(f"{where}: field {key!r} missing or not a {typ.__name__}")
    for part in ("train", "valid", "test"):
        if not isinstance(rec["split"].get(part), int):
            raise ValueError(f"{where}: split.{part} must be an integer row count")
    for i, row in enumerate(rec["results"]):
        for key, typ in _ROW_FIELDS.items():
            val = row.get(key)
            ok = isinstance(val, (int, float)) and not isinstance(val, bool) if typ is float else isinstance(val, typ)
            if not ok:
                raise ValueError(f"{where}: results[{i}].{key} must be {typ.__name__}, got {val!r}")
        if "fp32" not in {r["method"] for r in rec["results"]}:
            raise ValueError(f"{where}: no fp32 reference row")


def load_record(path: str | Path) -> dict:
    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    validate_record(rec, where=str(path))
    return rec


def save_record(rec: dict, path: str | Path) -> None:
    validate_record(rec)
    atomic_write_text(path, json.dumps(rec, indent=1, sort_keys=False) + "\n")


def _mean_std(vals: list[float]) -> tuple[float, float]:
    n = len(vals)
    m = sum(vals) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
    return m, sd


def summarize(rec: dict) -> list[dict]:
    """One row per (model, method): means over seeds; latency and size as ratios to
    the same model's fp32 row (the ratio of medians measured in the same run)."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rec["results"]:
        groups[(row["model"], row["method"])].append(row)
    out = []
    for (model, method), rows in groups.items():
        ref = groups.get((model, "fp32"))
        # A seed split over runs has an fp32 row per run (merge_records): each one
        # times its own run's files, so all of them enter the latency ratios.
        timed_ref = (ref or []) + [r for r in rec.get("reference_repeats", []) if r["model"] == model]
        auc_m, auc_s = _mean_std([r["test_auc"] for r in rows])
        s = {
            "model": model, "method": method, "seeds": len(rows),
            "auc_mean": auc_m, "auc_std": auc_s,
            "logloss_mean": _mean_std([r["test_logloss"] for r in rows])[0],
            "bytes": _mean_std([r["tflite_bytes"] for r in rows])[0],
            "lat_b1_us": _median([r["latency_us_b1"] for r in rows]),
            "lat_b256_us": _median([r["latency_us_b256"] for r in rows]),
            "parity_max_abs": max(r["parity_max_abs"] for r in rows),
        }
        if ref:
            s["bytes_ratio"] = s["bytes"] / _mean_std([r["tflite_bytes"] for r in ref])[0]
            s["lat_b1_ratio"] = _latency_ratio(rows, timed_ref, "latency_us_b1")
            s["lat_b256_ratio"] = _latency_ratio(rows, timed_ref, "latency_us_b256")
        out.append(s)
    order = {m: i for i, m in enumerate(dict.fromkeys(r["method"] for r in rec["results"]))}
    out.sort(key=lambda s: (s["model"], order[s["method"]]))
    return out


def _latency_ratio(rows: list[dict], ref: list[dict], key: str) -> float:
    """Median latency of ``rows`` over that of the fp32 ``ref`` rows timed in the SAME
    run (``row["run"]``, 0 unless records were merged), then the median over runs:
    only files timed interleaved in one process are compared."""
    ratios = []
    for run in sorted({r.get("run", 0) for r in rows}):
        mine = [r[key] for r in rows if r.get("run", 0) == run]
        base = [r[key] for r in ref if r.get("run", 0) == run]
        if mine and base:
            ratios.append(_median(mine) / _median(base))
    return _median(ratios) if ratios else float("nan")


def merge_records(records: list[dict], *, where: list[str] | None = None) -> dict:
    """One record from the records of separate ``kcc bench`` runs of the same
    benchmark (e.g. one seed per run, or a rerun of missing seeds).

    Rows keep their run (``row["run"]``: the index of their record here), so latency
    ratios only ever compare files timed in the same process. The runs must agree on
    the dataset, split, model and machine, and must not both hold a (method, seed),
    except the fp32 reference row: a seed split over several runs (each run times its
    own fp32 file) shares one trained reference through ``--reference-dir``, so its
    repeats must score the same AUC; they are kept in ``reference_repeats`` and only
    serve the latency ratios of their run (summaries count each seed once).

    Raises:
        ValueError: naming the record and what differs.
    """
    where = where or [f"record {i}" for i in range(len(records))]
    if len(records) < 2:
        raise ValueError("merging needs at least two records")
    first = records[0]
    for rec, name in zip(records, where, strict=True):
        validate_record(rec, where=name)
        for key in ("dataset", "split", "model"):
            if rec.get(key) != first.get(key):
                raise ValueError(f"{name}: {key} {rec.get(key)!r} differs from {where[0]}'s {first.get(key)!r}")
        mine = {k: (rec.get("machine") or {}).get(k) for k in ("cpu", "cores", "tensorflow", "keras", "litert")}
        theirs = {k: (first.get("machine") or {}).get(k) for k in mine}
        if mine != theirs:
            raise ValueError(f"{name}: machine {mine} differs from {where[0]}'s {theirs}: latencies would not compare")
    seen: dict[tuple[str, str, int], tuple[str, dict]] = {}
    results, runs, repeats = [], [], []
    for rec, name in zip(records, where, strict=True):
        offset = len(runs)
        sub_runs = rec.get("runs") or [{"command": rec.get("command"), "seeds": rec["seeds"]}]
        runs += [{**r, "from": name} for r in sub_runs]
        repeats += [{**r, "run": offset + r.get("run", 0)} for r in rec.get("reference_repeats", [])]
        for row in rec["results"]:
            key = (row["model"], row["method"], row["seed"])
            row = {**row, "run": offset + row.get("run", 0)}
            if key not in seen:
                seen[key] = (name, row)
                results.append(row)
                continue
            other, first_row = seen[key]
            if row["method"] != "fp32":
                raise ValueError(f"{name}: {row['method']} seed {row['seed']} is also in {other}")
            if row["test_auc"] != first_row["test_auc"]:
                raise ValueError(
                    f"{name}: fp32 seed {row['seed']} scores AUC {row['test_auc']} but {other}'s "
                    f"{first_row['test_auc']}: not the same reference (split seeds need --reference-dir)")
            repeats.append(row)
    out = {**first, "seeds": sorted({r["seed"] for r in results}), "runs": runs,
           "command": "; ".join(str(r.get("command")) for r in runs), "results": results}
    out.pop("reference_repeats", None)
    if repeats:
        out["reference_repeats"] = repeats
    return out


def _median(vals: list[float]) -> float:
    v = sorted(vals)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def render_table(rec: dict) -> str:
    """A markdown table of ``summarize(rec)``."""
    lines = [
        "| model | method | AUC (mean ± std) | logloss | .tflite bytes | size vs fp32 | "
        "b1 latency vs fp32 | b256 latency vs fp32 | parity |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summarize(rec):
        lines.append(
            f"| {s['model']} | {s['method']} | {s['auc_mean']:.4f} ± {s['auc_std']:.4f} "
            f"(n={s['seeds']}) | {s['logloss_mean']:.4f} | {s['bytes']:,.0f} | "
            f"{s.get('bytes_ratio', float('nan')):.3f} | {s.get('lat_b1_ratio', float('nan')):.2f} | "
            f"{s.get('lat_b256_ratio', float('nan')):.2f} | {s['parity_max_abs']:.1e} |"
        )
    return "\n".join(lines)
