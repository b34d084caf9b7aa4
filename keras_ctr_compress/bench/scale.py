"""Scale sweep: what export and on-device scoring cost as the embedding tables grow.

For each total row count (default 1e4, 1e5, 1e6, 1e7 rows over 26 fields of dim 16,
split geometrically as the synthetic generator splits its vocabularies) and each
method (``fp32``, ``drq``, ``alpt-4`` and a searched plan), the sweep records:

- the ``.tflite`` bytes and the export time;
- the extra memory of the export: peak RSS during ``export_litert`` minus RSS just
  before it, in the exporting process (the peak counter is reset before the export,
  so building the model does not hide in it), also as a multiple of the fp32
  model's weight bytes;
- the peak RSS of scoring: a fresh process that loads the file in the LiteRT
  interpreter and scores batches (over that process' RSS after imports);
- batch-1 and batch-256 latency of all files of one scale, interleaved in one
  process (``measure_latency``), so their ratios hold on a noisy machine.

Every export and every scoring run is its own Python process, so one measurement's
allocations never count in another's. The models are untrained (seeded random
weights): none of these costs depends on the weights' values. ``alpt-4`` is the
benchmark's ``alpt-4`` file (int4 codes, one step per table, the MLP by DRQ);
``searched`` applies a plan JSON (``--plan``, e.g. the best plan of ``kcc search``
on the small synthetic model; plans name fields ``c0..c25`` and layers ``dnn_k``,
which every scale shares) without fine-tuning, calibrated on random rows.

``kcc scale --json benchmarks/results/scale_sweep.json [--plan PLAN.json]`` writes
the record and a log-log plot next to it (``.png``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from keras_ctr_compress.utils import peak_mb, reset_peak, rss_mb, variable_bytes

SCHEMA = "kcc-scale/1"
METHODS = ("fp32", "drq", "alpt-4", "searched")
TOTALS = (10_000, 100_000, 1_000_000, 10_000_000)
FIELDS, DIM = 26, 16
MLP = (400, 400, 400)
#: random id rows used to calibrate a plan and to time the files
SAMPLE_ROWS = 8192


# --------------------------------------------------------------------- memory facts


# --------------------------------------------------------------------- the models


def sweep_fields(total_rows: int, fields: int = FIELDS):
    """The sweep's fields ``c0..c{F-1}``: ``total_rows`` table rows split geometrically."""
    from keras_ctr_compress.data.schema import Field
    from keras_ctr_compress.data.synthetic import _geometric_sizes

    if total_rows < fields:
        raise ValueError(f"total rows {total_rows:,} must be at least the field count {fields}")
    return [Field(f"c{i}", int(v)) for i, v in enumerate(_geometric_sizes(int(total_rows), fields))]


def sweep_dataset(fields, rows: int = SAMPLE_ROWS, seed: int = 0):
    """Random ids (uniform per field) and labels in the sweep's layout: calibration
    rows for a plan and timing inputs; not a learning problem."""
    from keras_ctr_compress.data.schema import CTRDataset, Split

    rng = np.random.default_rng(seed)

    def split(n: int) -> Split:
        x = np.stack([rng.integers(0, f.vocab_size, n) for f in fields], axis=1).astype("int32")
        return Split(x, (rng.random(n) < 0.25).astype("float32"))

    return CTRDataset("scale-sweep", list(fields), split(rows), split(rows // 4), split(rows // 4))


def _candidate(method: str, fields, plan_path: str | None):
    """``(keras model, quantization, kept columns)`` of one method at one scale."""
    from keras_ctr_compress.models import build_model

    model = build_model("deepfm", fields, embedding_dim=DIM, mlp=MLP, seed=0)
    if method == "fp32":
        return model, None, None
    if method == "drq":
        return model, "drq", None
    if method == "alpt-4":
        from keras_ctr_compress.compress.quantize import (
            METHOD_PRESETS,
            finalize_quantized,
            quantize_embeddings,
        )

        kind, preset = METHOD_PRESETS["alpt"]
        q = quantize_embeddings(model, method=kind, bits=4, **{**preset, "granularity": "table"})
        return finalize_quantized(q), "drq", None
    if method == "searched":
        from keras_ctr_compress.search import Plan, apply_plan

        if plan_path is None:
            raise ValueError("method 'searched' needs --plan PLAN.json (e.g. the best plan of kcc search)")
        plan = Plan.load(plan_path)
        small, info = apply_plan(model, plan, sweep_dataset(fields), finetune=False)
        return small, "drq" if plan.drq else None, list(info["kept_field_indices"])
    raise ValueError(f"unknown scale-sweep method {method!r}; choose from {', '.join(METHODS)}")


# --------------------------------------------------------------------- the children


def _child_export(method: str, total: int, out: str, plan_path: str | None) -> dict:
    from keras_ctr_compress.export import export_litert
    from keras_ctr_compress.utils import trim_heap

    fields = sweep_fields(total)
    model, quantization, columns = _candidate(method, fields, plan_path)
    # building a compressed candidate frees its float tables; glibc keeps those pages
    # resident, and an export reusing them would not show in RSS: hand them back first
    trim_heap()
    before = rss_mb()
    reset_peak()
    t0 = time.perf_counter()
    export_litert(model, out, quantization=quantization)
    seconds = time.perf_counter() - t0
    peak = peak_mb()
    return {"method": method, "total_rows": total, "tflite_bytes": Path(out).stat().st_size,
            "export_seconds": seconds, "rss_before_export_mb": before, "export_peak_rss_mb": peak,
            "export_extra_mb": peak - before, "model_weight_bytes": variable_bytes(model.weights),
            "input_columns": columns}


def _child_score(path: str, total: int, columns: list[int] | None) -> dict:
    from keras_ctr_compress.export import LiteRTModel

    x = sweep_dataset(sweep_fields(total), rows=4096).test.x
    x = x if columns is None else x[:, columns]
    base = rss_mb()
    reset_peak()
    runner = LiteRTModel(path)
    p = runner.predict(x, batch_size=256)
    return {"score_base_rss_mb": base, "score_peak_rss_mb": peak_mb(),
            "score_extra_mb": peak_mb() - base, "predictions_finite": bool(np.isfinite(p).all())}


def _run_child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-m", "keras_ctr_compress.bench.scale", *args],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"scale-sweep child {' '.join(args[:3])} failed (exit {proc.returncode}): {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------- the sweep


def run_scale_sweep(
    totals: Sequence[int] = TOTALS,
    methods: Sequence[str] = METHODS,
    *,
    workdir: str | Path,
    plan: str | Path | None = None,
    latency_seconds: float = 1.0,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Runs the sweep (see the module docstring) and returns its record.

    Args:
        totals: total embedding rows per scale (each >= 26).
        methods: a subset of :data:`METHODS`; ``searched`` needs ``plan``.
        workdir: where the ``.tflite`` files go (``<total>/<method>.tflite``).
        plan: the plan JSON ``searched`` applies at every scale.
        latency_seconds: timing budget per file and batch size.
    """
    from keras_ctr_compress.bench.record import machine_facts
    from keras_ctr_compress.export import measure_latency

    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown scale-sweep method {bad[0]!r}; choose from {', '.join(METHODS)}")
    if "searched" in methods and plan is None:
        raise ValueError("method 'searched' needs a plan (--plan PLAN.json)")
    for total in totals:
        sweep_fields(int(total))  # bad totals fail before any work
    workdir = Path(workdir)
    rows = []
    for total in totals:
        total = int(total)
        files, columns = {}, {}
        for method in methods:
            path = workdir / str(total) / f"{method}.tflite"
            path.parent.mkdir(parents=True, exist_ok=True)
            if log:
                log(f"[scale] {total:,} rows / {method}: export (own process)")
            row = _run_child(["export", method, str(total), str(path), str(plan) if plan else "-"])
            score = _run_child(["score", str(path), str(total), json.dumps(row["input_columns"])])
            row.update(score)
            if log:
                log(f"[scale]   {row['tflite_bytes']:,} B in {row['export_seconds']:.1f}s, export +"
                    f"{row['export_extra_mb']:,.0f} MB, scoring +{row['score_extra_mb']:,.0f} MB")
            rows.append(row)
            files[method] = path
            if row["input_columns"] is not None:
                columns[method] = row["input_columns"]
        if log:
            log(f"[scale] {total:,} rows: timing {len(files)} files interleaved (batch 1 and 256)")
        x = sweep_dataset(sweep_fields(total), rows=4096).test.x
        lat = measure_latency(files, x, batch_sizes=(1, 256), min_seconds=latency_seconds,
                              input_columns=columns)
        fp32_bytes = next((r["model_weight_bytes"] for r in rows
                           if r["total_rows"] == total and r["method"] == "fp32"), None)
        for row in rows:
            if row["total_rows"] != total:
                continue
            row["latency_us_b1"] = float(lat[row["method"]][1]["median_us"])
            row["latency_us_b256"] = float(lat[row["method"]][256]["median_us"])
            if fp32_bytes:
                row["export_extra_over_fp32_model"] = row["export_extra_mb"] * 2**20 / fp32_bytes
    return {"schema": SCHEMA, "fields": FIELDS, "dim": DIM, "mlp": list(MLP), "totals": [int(t) for t in totals],
            "methods": list(methods), "plan": None if plan is None else json.loads(Path(plan).read_text()),
            "machine": machine_facts(), "command": " ".join(sys.argv), "results": rows}


def plot_scale_sweep(record: dict, path: str | Path) -> Path:
    """Log-log panels (bytes, export memory, batch-1 and batch-256 latency) vs rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_ctr_compress.utils import atomic_path

    panels = [("tflite_bytes", ".tflite bytes"), ("export_extra_mb", "export extra memory (MiB)"),
              ("latency_us_b1", "batch-1 latency (us)"), ("latency_us_b256", "batch-256 latency (us)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for method in record["methods"]:
            pts = sorted((r["total_rows"], r[key]) for r in record["results"]
                         if r["method"] == method and r.get(key, 0) > 0)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=method)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("embedding rows (26 fields, dim 16)")
        ax.set_title(label, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def _main(argv: list[str]) -> int:
    from keras_ctr_compress.utils import quiet_tensorflow

    quiet_tensorflow()
    if argv[:1] == ["export"] and len(argv) == 5:
        method, total, out, plan = argv[1:]
        print(json.dumps(_child_export(method, int(total), out, None if plan == "-" else plan)))
        return 0
    if argv[:1] == ["score"] and len(argv) == 4:
        path, total, columns = argv[1:]
        print(json.dumps(_child_score(path, int(total), json.loads(columns))))
        return 0
    print("usage: python -m keras_ctr_compress.bench.scale export METHOD TOTAL OUT PLAN|-  |  "
          "score PATH TOTAL COLUMNS_JSON", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
