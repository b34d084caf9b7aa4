"""Latency of .tflite files, measured interleaved in one process.

Absolute times on a shared machine drift by 1.6x between runs (shared/litert.md), so
all files are timed in the same process and round-robin: every round invokes each
model once, with the starting model rotating, so that drift hits all of them alike
and their *ratios* hold. Only ``invoke()`` is timed; inputs are real rows of ``x``.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from keras_ctr_compress.export.runner import LiteRTModel

#: Distinct input batches cycled through per batch size (real rows, drawn once).
_INPUT_POOL = 8

LatencyTable = dict[str, dict[int, dict[str, float]]]


def _input_pool(x: np.ndarray, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    rows = rng.choice(len(x), size=_INPUT_POOL * batch, replace=len(x) < _INPUT_POOL * batch)
    return [np.ascontiguousarray(x[rows[i * batch : (i + 1) * batch]]) for i in range(_INPUT_POOL)]


def _summary(samples_ns: Sequence[int]) -> dict[str, float]:
    us = np.asarray(samples_ns, dtype=np.float64) / 1e3
    p10, med, p90 = np.percentile(us, [10, 50, 90])
    return {"median_us": float(med), "p10_us": float(p10), "p90_us": float(p90),
            "min_us": float(us.min()), "mean_us": float(us.mean()), "n": int(us.size)}


def _time_batch(
    runners: dict[str, LiteRTModel], pools: dict[str, list[np.ndarray]], *, warmup: int,
    repeats: int, min_seconds: float, max_seconds: float,
) -> dict[str, list[int]]:
    """Round-robin timing of all runners on one batch size; returns ns per invoke.
    ``pools[name][i]`` is batch ``i`` as model ``name`` takes it (same rows for all)."""
    names = list(runners)
    n_pool = len(next(iter(pools.values())))
    for w in range(warmup):
        for name in names:
            runners[name].set_input(pools[name][w % n_pool])
            runners[name].invoke()
    samples: dict[str, list[int]] = {name: [] for name in names}
    spent = 0  # ns inside invoke, all models together
    min_ns, max_ns = min_seconds * 1e9 * len(names), max_seconds * 1e9 * len(names)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside a timed call would be charged to one model
    try:
        r = 0
        while True:
            enough = r >= repeats and spent >= min_ns
            if enough or (spent >= max_ns and r >= 3):
                break
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                runner = runners[name]
                runner.set_input(pools[name][r % n_pool])
                t0 = time.perf_counter_ns()
                runner.invoke()
                dt = time.perf_counter_ns() - t0
                samples[name].append(dt)
                spent += dt
            r += 1
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def measure_latency(
    paths: Mapping[str, str | Path],
    x: np.ndarray,
    *,
    batch_sizes: Sequence[int] = (1, 256),
    warmup: int = 20,
    repeats: int = 100,
    min_seconds: float = 0.5,
    max_seconds: float = 30.0,
    num_threads: int = 1,
    seed: int = 0,
    input_columns: Mapping[str, Sequence[int]] | None = None,
) -> LatencyTable:
    """Times every file at every batch size, interleaved, in this process.

    Args:
        paths: name -> .tflite file (all taking the same id matrix, or the columns of it
            named in ``input_columns``).
        x: real id rows (n, num_fields); batches are drawn from them.
        batch_sizes: rows per invoke.
        warmup: untimed invokes per model and batch size first (XNNPACK packs weights,
            caches warm up).
        repeats: at least this many timed invokes per model and batch size...
        min_seconds: ...and at least this much invoke time per model and batch size.
        max_seconds: stop a batch size once this much time per model is spent (with at
            least 3 rounds) even if ``repeats`` is not reached: slow files stay bounded.
        num_threads: interpreter threads (XNNPACK is LiteRT's default delegate).
        seed: which rows of ``x`` are drawn.
        input_columns: name -> the columns of ``x`` that model takes (field-pruned
            models take fewer); every model sees the same rows.

    Returns:
        ``{name: {batch: {"median_us", "p10_us", "p90_us", "min_us", "mean_us", "n"}}}``,
        microseconds per invoke (the whole batch).
    """
    if not paths:
        raise ValueError("measure_latency needs at least one file")
    batch_sizes = [int(b) for b in batch_sizes]
    if any(b < 1 for b in batch_sizes) or not batch_sizes:
        raise ValueError(f"batch_sizes must be positive integers; got {batch_sizes}")
    if repeats < 1 or warmup < 0 or min_seconds < 0 or max_seconds <= 0:
        raise ValueError(
            f"need repeats >= 1, warmup >= 0, min_seconds >= 0, max_seconds > 0; got "
            f"{repeats}, {warmup}, {min_seconds}, {max_seconds}"
        )
    runners = {name: LiteRTModel(p, num_threads=num_threads) for name, p in paths.items()}
    cols = {name: list((input_columns or {}).get(name) or range(x.shape[1])) for name in runners}
    for name, r in runners.items():
        r.validate(x[:, cols[name]])
    if len(x) == 0:
        raise ValueError("measure_latency needs at least one row of x")
    rng = np.random.default_rng(seed)
    out: LatencyTable = {name: {} for name in runners}
    for b in batch_sizes:
        pool = _input_pool(x, b, rng)
        pools = {name: [np.ascontiguousarray(p[:, cols[name]]) for p in pool] for name in runners}
        for r in runners.values():
            r.prepare(b)
        samples = _time_batch(runners, pools, warmup=warmup, repeats=repeats,
                              min_seconds=min_seconds, max_seconds=max_seconds)
        for name, s in samples.items():
            out[name][b] = _summary(s)
    return out


def ratios(latencies: LatencyTable, reference: str = "fp32", stat: str = "median_us") -> dict[str, dict[int, float]]:
    """Each model's ``stat`` divided by the reference model's, per batch size.

    Ratios are what to report: they hold across runs where absolute times drift.
    """
    if reference not in latencies:
        raise KeyError(f"reference {reference!r} not among the measured models {sorted(latencies)}")
    ref = latencies[reference]
    return {
        name: {b: v[stat] / ref[b][stat] for b, v in per_batch.items() if b in ref}
        for name, per_batch in latencies.items()
    }
