"""Training-memory benchmark of low-precision embedding training (ALPT's claim).

Each configuration trains the same synthetic model (one big embedding table, a small
MLP) for a few steps in its OWN Python process, so peak RSS is that configuration's
alone. The process records its RSS after importing TensorFlow (``base_rss_mb``) and its
peak at the end; ``table_share_mb`` = peak - base is what the model, its table, the
optimizer slots and the training steps added. ``kcc memory`` runs the configurations
one after the other and writes a JSON record::

    kcc memory --rows 10000000 --dim 16 --json benchmarks/results/memory_lpt.json
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from keras_ctr_compress.utils import variable_bytes

#: configuration -> (layer kind, table optimizer); the MLP always trains with Adam.
CONFIGS: dict[str, tuple[str, str | None]] = {
    "fp32-adam": ("fp32", None),
    "lpt-adagrad": ("lpt", "adagrad"),
    "lpt-sgd": ("lpt", "sgd"),
}
SCHEMA = "kcc-memory/1"


def _child(config: str, rows: int, dim: int, steps: int, batch: int, fields: int) -> dict:
    """Runs one configuration in this process; returns its measurements."""
    from keras_ctr_compress.utils import peak_mb, quiet_tensorflow, reset_peak, rss_mb, trim_heap

    quiet_tensorflow()
    import keras
    import numpy as np

    from keras_ctr_compress.layers import QuantizedEmbedding

    # the baseline is the RSS now, and the peak counts from here: a peak taken after the
    # imports as the baseline hides a small table whenever importing peaked above it
    trim_heap()
    base = rss_mb()
    reset_peak()
    kind, table_optimizer = CONFIGS[config]
    keras.utils.set_random_seed(0)
    ids = keras.Input((fields,), dtype="int32", name="ids")
    if kind == "fp32":
        table = keras.layers.Embedding(rows, dim, name="emb_big")
    else:
        table = QuantizedEmbedding(rows, dim, bits=8, mode="lpt", optimizer=table_optimizer,
                                   granularity="row", name="emb_big")
    h = keras.layers.Flatten()(table(ids))
    h = keras.layers.Dense(64, activation="relu")(h)
    model = keras.Model(ids, keras.layers.Dense(1, activation="sigmoid")(h))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.integers(0, rows, size=(steps * batch, fields)).astype("int32")
    y = rng.integers(0, 2, size=(steps * batch, 1)).astype("float32")
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    train_seconds = time.perf_counter() - t0
    variables = {v.path: str(v.dtype) for v in table.weights}
    # every per-row variable of the layer: codes, per-row steps and their optimizer state
    table_vars = [v for v in table.weights if tuple(v.shape)[:1] == (rows,)]
    main = [v for v in table_vars if tuple(v.shape) == (rows, dim)]
    return {
        "config": config,
        "base_rss_mb": base,
        "peak_rss_mb": peak_mb(),
        "table_share_mb": peak_mb() - base,
        "table_variables": variables,
        "table_dtype": str(main[0].dtype) if main else None,
        "table_variable_bytes": variable_bytes(table_vars),
        "optimizer_slot_bytes": _slot_bytes(model, rows),
        "train_seconds": train_seconds,
    }


def _slot_bytes(model, rows: int) -> int:
    """Bytes of Keras optimizer variables shaped like the table (Adam's moments)."""
    return variable_bytes(v for v in model.optimizer.variables if tuple(v.shape)[:1] == (rows,))


def run_memory_benchmark(
    rows: int = 10_000_000,
    dim: int = 16,
    configs: Sequence[str] = tuple(CONFIGS),
    steps: int = 50,
    batch: int = 1024,
    fields: int = 4,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Runs each configuration in a fresh process; returns the record (see module doc)."""
    from keras_ctr_compress.bench.record import machine_facts

    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise ValueError(f"unknown memory configuration(s) {unknown}; known: {list(CONFIGS)}")
    if rows < 1 or dim < 1 or steps < 1 or batch < 1 or fields < 1:
        raise ValueError("rows, dim, steps, batch and fields must be positive integers")
    results = []
    for i, config in enumerate(configs, 1):
        if log:
            log(f"[memory] {i}/{len(configs)} {config}: {rows:,} x {dim} table, {steps} steps (own process)")
        args = [sys.executable, "-m", "keras_ctr_compress.bench.memory", "--child", config,
                str(rows), str(dim), str(steps), str(batch), str(fields)]
        proc = subprocess.run(args, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise RuntimeError(f"memory run {config!r} failed (exit {proc.returncode}): {tail}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(result)
        if log:
            log(f"[memory]   {config}: peak {result['peak_rss_mb']:,.0f} MB, table share "
                f"{result['table_share_mb']:,.0f} MB, table dtype {result['table_dtype']}")
    by = {r["config"]: r for r in results}
    ratios = {}
    if "fp32-adam" in by:
        # RSS growth below the allocator's resolution (a few MB) has no meaningful ratio
        ratios = {c: by["fp32-adam"]["table_share_mb"] / r["table_share_mb"]
                  for c, r in by.items() if c != "fp32-adam" and r["table_share_mb"] > 0}
    return {
        "schema": SCHEMA,
        "rows": rows, "dim": dim, "steps": steps, "batch": batch, "fields": fields,
        "machine": machine_facts(),
        "command": None,
        "results": results,
        "fp32_share_over": ratios,
        "fp32_state_bytes_over": state_bytes_ratios(results),
    }


_STATE_KEYS = ("table_variable_bytes", "optimizer_slot_bytes")


def state_bytes(result: dict) -> int | None:
    """Exact bytes of the table's training state: its per-row variables plus optimizer
    slots (None for a result of an older record that lacks them)."""
    if not all(k in result for k in _STATE_KEYS):
        return None
    return sum(int(result[k]) for k in _STATE_KEYS)


def state_bytes_ratios(results: list[dict]) -> dict[str, float]:
    """fp32-adam's exact training-state bytes over each other configuration's."""
    by = {r["config"]: state_bytes(r) for r in results}
    ref = by.get("fp32-adam")
    if not ref:
        return {}
    return {c: ref / b for c, b in by.items() if c != "fp32-adam" and b}


def write_record(record: dict, path: str | Path) -> Path:
    from keras_ctr_compress.utils import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(record, indent=1) + "\n")
    return path


if __name__ == "__main__":  # the child process
    if len(sys.argv) == 8 and sys.argv[1] == "--child":
        _config, *_nums = sys.argv[2:]
        print(json.dumps(_child(_config, *map(int, _nums))))
    else:
        sys.exit("usage: python -m keras_ctr_compress.bench.memory --child CONFIG ROWS DIM STEPS BATCH FIELDS")
