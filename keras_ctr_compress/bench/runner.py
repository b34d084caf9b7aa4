"""``kcc bench``: every method side by side on one dataset, split and set of seeds.

Per seed the fp32 reference is trained once; each method turns it into a candidate
``.tflite``; every candidate is scored *from its file* in the LiteRT interpreter on the
same test rows, parity-checked, and finally all files of the run are timed
interleaved in one process, so latency ratios hold on a noisy machine.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np

from keras_ctr_compress.bench.record import SCHEMA_VERSION, machine_facts, save_record
from keras_ctr_compress.bench.registry import Candidate, MethodContext, get_method
from keras_ctr_compress.data import load_dataset
from keras_ctr_compress.data.schema import CTRDataset, Split
from keras_ctr_compress.export import (
    LiteRTModel,
    check_parity,
    export_litert,
    measure_latency,
    size_breakdown,
)
from keras_ctr_compress.models import TrainConfig, auc_logloss, build_model, train_model
from keras_ctr_compress.utils import peak_rss_mb

PARITY_ATOL = 1e-4
PARITY_ROWS = 2000


def _subsample(split: Split, n: int, seed: int) -> Split:
    if len(split) <= n:
        return split
    idx = np.sort(np.random.default_rng(seed).choice(len(split), n, replace=False))
    return Split(split.x[idx], split.y[idx])


def quick_dataset(ds: CTRDataset, rows: int = 20000) -> CTRDataset:
    """A small slice of ``ds`` (same fields and vocabularies) for smoke runs."""
    return CTRDataset(
        ds.name, ds.fields, _subsample(ds.train, rows, 0), _subsample(ds.valid, rows // 8, 1),
        _subsample(ds.test, rows // 8, 2), ds.preprocessor, dict(ds.info, quick=True),
    )


def train_reference(
    ds: CTRDataset, model_name: str, seed: int, train_config: TrainConfig, model_kwargs: dict
) -> tuple[keras.Model, dict]:
    model = build_model(model_name, ds.fields, seed=seed, **model_kwargs)
    cfg = TrainConfig(**{**train_config.to_dict(), "seed": seed})
    summary = train_model(model, ds.train, ds.valid, cfg)
    return model, summary


def _reference_key(ds: CTRDataset, model_name: str, seed: int, train_config: TrainConfig,
                   model_kwargs: dict) -> dict:
    """What a cached reference must match to stand in for a freshly trained one."""
    return {"dataset": ds.name, "split": ds.split_sizes(), "model": model_name, "seed": seed,
            "train_config": {**train_config.to_dict(), "seed": seed}, "model_kwargs": model_kwargs}


def fp32_reference(
    ds: CTRDataset, model_name: str, seed: int, train_config: TrainConfig, model_kwargs: dict,
    log: Callable[[str], None], reference_dir: str | Path | None = None,
) -> tuple[keras.Model, dict]:
    """The seed's trained fp32 reference and its training summary.

    With ``reference_dir``, a reference that an earlier run with the same dataset, split,
    model, seed and training recipe saved there is loaded instead of retrained, and a
    newly trained one is saved there. Training is deterministic per seed on one CPU
    machine, so separate ``kcc bench`` runs (one per method family, for example) share
    one reference. The folder is written by ``save_trained`` (meta last), so a killed
    run leaves no entry.
    """
    from keras_ctr_compress.artifacts import load_trained, save_trained

    folder = key = None
    if reference_dir is not None:
        key = _reference_key(ds, model_name, seed, train_config, model_kwargs)
        folder = Path(reference_dir) / f"{ds.name}_{model_name}_seed{seed}"
        if (folder / "meta.json").exists():
            saved = load_trained(folder)
            # Through JSON so that tuples in the key compare equal to the saved lists.
            if saved.meta.get("key") == json.loads(json.dumps(key)):
                log(f"[bench] seed {seed}: fp32 reference loaded from {folder}")
                return saved.model, saved.meta["summary"]
            log(f"[bench] seed {seed}: {folder} was trained with other settings; retraining it")
    log(f"[bench] {ds.name} / {model_name} / seed {seed}: training the fp32 reference")
    model, summary = train_reference(ds, model_name, seed, train_config, model_kwargs)
    if folder is not None:
        save_trained(folder, model, None, {"key": key, "summary": summary})
    return model, summary


def run_benchmark(
    dataset: str | CTRDataset,
    *,
    model: str = "deepfm",
    methods: Sequence[str] = ("fp32", "drq"),
    seeds: Sequence[int] = (0, 1, 2),
    json_out: str | Path | None = None,
    quick: bool = False,
    workdir: str | Path | None = None,
    train_config: TrainConfig | None = None,
    model_kwargs: dict | None = None,
    latency_seconds: float = 1.0,
    log: Callable[[str], None] | None = None,
    on_reference: Callable[[int, keras.Model, dict], None] | None = None,
    method_options: dict | None = None,
    reference_dir: str | Path | None = None,
) -> dict:
    """Runs the benchmark and returns (and optionally writes) the record.

    Args:
        dataset: a dataset name / spec (see ``keras_ctr_compress.data``), or a loaded
            ``CTRDataset``. The split is fixed (split seed 0); ``seeds`` vary the
            model's initialisation, data order and any method randomness.
        model: reference model name (``build_model``).
        methods: method names; ``fp32`` is always added first (the reference row).
        quick: a 20k-row slice and at most 2 epochs: a smoke run, not a result.
        workdir: where candidate files go (a temporary folder when None).
        latency_seconds: timing budget per file and batch size.
        on_reference: called with ``(seed, fp32_model, train_summary)`` after each
            reference is trained (e.g. to save it).
        method_options: options for methods that take some (e.g. ``searched``:
            ``{"budget_ratio": 16, "trials": 20}``), passed as ``ctx.extra["method_options"]``.
        reference_dir: a folder of trained fp32 references (``fp32_reference``): each
            seed's reference is loaded from it when an earlier run with the same settings
            saved it, and saved there after training otherwise.
    """
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    methods = ["fp32", *[m for m in methods if m != "fp32"]]
    method_objs = [get_method(m) for m in methods]  # unknown names fail before any work
    ds = dataset if isinstance(dataset, CTRDataset) else load_dataset(dataset, seed=0)
    if quick:
        ds = quick_dataset(ds)
    train_config = train_config or TrainConfig(verbose=0)
    if quick:
        train_config = TrainConfig(**{**train_config.to_dict(), "epochs": min(train_config.epochs, 2)})
    model_kwargs = dict(model_kwargs or {})
    tmp = None
    if workdir is None:
        tmp = tempfile.mkdtemp(prefix="kcc-bench-")
        workdir = tmp
    workdir = Path(workdir)
    rows, files, columns = [], {}, {}
    t_start = time.perf_counter()
    try:
        for seed in seeds:
            fp32, summary = fp32_reference(ds, model, seed, train_config, model_kwargs, log,
                                           reference_dir)
            if on_reference is not None:
                on_reference(seed, fp32, summary)
            fp32_path = workdir / f"seed{seed}" / "fp32.tflite"
            export_litert(fp32, fp32_path)
            ctx = MethodContext(ds, model, seed, fp32, fp32_path, workdir, quick, train_config,
                                extra={"fp32_summary": summary, "model_kwargs": model_kwargs,
                                       "method_options": dict(method_options or {})})
            for i, method in enumerate(method_objs):
                log(f"[bench] seed {seed}: method {i + 1}/{len(method_objs)} {method.name} "
                    f"({time.perf_counter() - t_start:.0f}s elapsed)")
                t0 = time.perf_counter()
                cand = method.fn(ctx)
                if method.name == "fp32":
                    cand.train_seconds = summary["train_seconds"]
                row = _score_candidate(ds, cand, method.name, model, seed, fp32)
                row["method_seconds"] = time.perf_counter() - t0
                rows.append(row)
                files[(method.name, seed)] = cand.tflite_path
                if cand.input_columns is not None:
                    columns[f"{method.name}@{seed}"] = cand.input_columns
                log(f"[bench]   {method.name}: AUC {row['test_auc']:.4f}, {row['tflite_bytes']:,} B, "
                    f"parity {row['parity_max_abs']:.1e}")
            keras.backend.clear_session()
        log(f"[bench] timing {len(files)} files interleaved (batch 1 and 256)")
        lat = measure_latency({f"{m}@{s}": p for (m, s), p in files.items()},
                              ds.test.x, batch_sizes=(1, 256), min_seconds=latency_seconds,
                              input_columns=columns)
        for row in rows:
            key = f"{row['method']}@{row['seed']}"
            row["latency_us_b1"] = float(lat[key][1]["median_us"])
            row["latency_us_b256"] = float(lat[key][256]["median_us"])
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    record = {
        "schema": SCHEMA_VERSION, "dataset": ds.name, "split": ds.split_sizes(),
        "seeds": list(seeds), "model": model, "quick": quick,
        "train_config": train_config.to_dict(), "model_kwargs": model_kwargs,
        **({"method_options": dict(method_options)} if method_options else {}),
        "machine": machine_facts(), "command": " ".join(sys.argv),
        "dataset_info": {k: v for k, v in ds.info.items() if isinstance(v, (int, float, str, bool))},
        "results": rows,
    }
    if json_out is not None:
        save_record(record, json_out)
    return record


def _score_candidate(ds: CTRDataset, cand: Candidate, method: str, model: str, seed: int,
                     fp32: keras.Model) -> dict:
    cols = cand.input_columns if cand.input_columns is not None else list(range(ds.num_fields))
    runner = LiteRTModel(cand.tflite_path)
    p = runner.predict(ds.test.x[:, cols])
    auc, ll = auc_logloss(ds.test.y, p, where=f"{method} test split")
    reference = next((m for m in (cand.keras_model, cand.reference_model) if m is not None), fp32)
    probe = _subsample(ds.test, PARITY_ROWS, 3).x[:, cols]
    # Converter-side methods (drq) are lossy by design: report their difference from
    # the Keras model they approximate; for every other method the file must equal its model.
    enforce = cand.keras_model is not None or cand.parity_max_abs is not None
    if cand.parity_max_abs is not None:
        parity = float(cand.parity_max_abs)
        if not parity <= PARITY_ATOL:
            raise ValueError(f"{method}: its file differs from its own model by {parity:.2e} > {PARITY_ATOL:g}")
    else:
        parity = check_parity(reference, cand.tflite_path, probe, atol=PARITY_ATOL if enforce else np.inf)
    sizes = size_breakdown(cand.tflite_path)
    return {
        "method": method, "model": model, "seed": seed,
        "test_auc": auc, "test_logloss": ll,
        "tflite_bytes": int(Path(cand.tflite_path).stat().st_size),
        "size_by_category": sizes.to_dict().get("by_category", {}),
        "params": int(reference.count_params()),
        "parity_max_abs": float(parity), "parity_enforced": enforce,
        "train_seconds": float(cand.train_seconds), "peak_rss_mb": peak_rss_mb(),
        "plan": cand.plan, **({"extra": cand.extra} if cand.extra else {}),
        **({"input_columns": cand.input_columns} if cand.input_columns is not None else {}),
    }
