"""Parity sweep: random valid plans over every model the search supports, each applied,
exported builtins-only and compared with its Keras model in LiteRT.

Plans are drawn with ``search_space(model).sample(rng)`` for FM, FwFM, DeepFM and
DeepFwFM (tiny synthetic data, tiny models of different widths, so odd dims exercise
the int4 / int2 packing), applied without fine-tuning, exported by ``export_plan``
and checked on held-out rows: the float export (for a ``drq`` plan, its export
WITHOUT dynamic-range quantisation, as ``export_plan`` checks it; the DRQ file's
difference is recorded, not bounded) must match Keras within 1e-4.

``KCC_PARITY_PLANS`` sets the number of plans (default 8, the CI run);
``make parity-sweep`` draws 60 and writes ``benchmarks/results/parity_sweep.json``
(``KCC_PARITY_RECORD``).
"""

from __future__ import annotations

import json
import os
import platform
import time
import traceback
from pathlib import Path

import numpy as np
import pytest

from keras_ctr_compress.compress import select_fields
from keras_ctr_compress.data import load_dataset
from keras_ctr_compress.export.parity import keras_predict
from keras_ctr_compress.models import build_model
from keras_ctr_compress.search import apply_plan, export_plan, search_space
from keras_ctr_compress.utils import atomic_write_text

DATA = "synthetic:rows=8000,fields=6,numeric=1,noise_fields=1,total_vocab=900,seed=11"
#: the models the search supports, each at its own width (odd widths on purpose)
MODELS = {
    "deepfm": {"embedding_dim": 5, "mlp": (16, 8)},
    "deepfwfm": {"embedding_dim": 7, "mlp": (12,)},
    "fm": {"embedding_dim": 6},
    "fwfm": {"embedding_dim": 3},
}
ATOL = 1e-4
WEIGHT_STD = 0.1
CHECK_ROWS = 1000
COUNT = int(os.environ.get("KCC_PARITY_PLANS", "8"))
SEED = int(os.environ.get("KCC_PARITY_SEED", "0"))
RECORD = os.environ.get("KCC_PARITY_RECORD")


@pytest.fixture(scope="module")
def data():
    return load_dataset(DATA)


@pytest.fixture(scope="module")
def models(data):
    """Each model with random weights of a realistic-to-large scale (fresh embedding
    tables are all within 0.01 of zero and would hide a mismatch; parity is a
    property of the weights, not of how they were learned, and training here would
    only cost time)."""
    rng = np.random.default_rng(SEED)
    out = {}
    for name, kw in MODELS.items():
        model = build_model(name, data.fields, seed=0, **kw)
        model.set_weights([rng.normal(0.0, WEIGHT_STD, size=w.shape).astype(w.dtype) for w in model.get_weights()])
        p = keras_predict(model, data.test.x[:CHECK_ROWS])
        # outputs spread over (0, 1), not saturated: a mismatch would show in them
        assert 0.05 < float(np.std(p)) and 0.1 < float(np.mean(p)) < 0.9, (name, np.std(p), np.mean(p))
        out[name] = model
    return out


def check_plan(model, plan, data, path: Path, seed: int) -> dict:
    """Applies, exports and checks one plan; the result row of the record."""
    t0 = time.perf_counter()
    small, info = apply_plan(model, plan, data, finetune=False, seed=seed)
    rows = np.concatenate([data.test.x, data.valid.x])[:CHECK_ROWS]
    x = select_fields(rows, info["kept_field_indices"])
    out = export_plan(small, plan, path, check_x=x, atol=ATOL)
    path.unlink(missing_ok=True)
    return {"parity_max_abs": out["parity_max_abs"], "drq_max_abs": out["drq_max_abs"],
            "bytes": out["bytes"], "float_bytes": out["float_bytes"], "rows": len(x),
            "seconds": round(time.perf_counter() - t0, 2)}


def test_random_plans_export_with_parity(models, data, tmp_path):
    rng = np.random.default_rng(SEED)
    spaces = {name: search_space(m) for name, m in models.items()}
    names = list(MODELS)
    results, failures = [], []
    for k in range(COUNT):
        name = names[k % len(names)]
        plan = spaces[name].sample(rng)
        row = {"index": k, "model": name, "plan": plan.to_dict()}
        try:
            row.update(check_plan(models[name], plan, data, tmp_path / f"plan{k}.tflite", seed=k))
        except Exception as e:  # every failure is kept: the record and the message list them all
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            row["traceback"] = traceback.format_exc(limit=6)
            failures.append(row)
        results.append(row)
    diffs = [r["parity_max_abs"] for r in results if "error" not in r]
    if RECORD:
        write_record(Path(RECORD), results, failures)
    print(f"parity sweep: {len(results)} plans, {len(failures)} failures, max abs diff {max(diffs, default=0):.3g}")
    assert not failures, "\n\n".join(f"plan {f['index']} ({f['model']}): {json.dumps(f['plan'])}\n{f['traceback']}"
                                     for f in failures)
    assert len(diffs) == COUNT and max(diffs) <= ATOL


def write_record(path: Path, results: list[dict], failures: list[dict]) -> None:
    import ai_edge_litert
    import keras
    import tensorflow as tf

    diffs = [r["parity_max_abs"] for r in results if "error" not in r]
    drq = [r["drq_max_abs"] for r in results if r.get("drq_max_abs") is not None]
    record = {
        "schema": "kcc-parity-sweep/1",  # not a kcc bench record: kcc report passes it by
        "what": "random valid plans (search_space(model).sample) applied without fine-tuning, exported "
                "builtins-only and checked against Keras in LiteRT; parity_max_abs is the float export's "
                "(a drq plan's export without DRQ), drq_max_abs the shipped DRQ file's, reported only",
        "command": f"make parity-sweep (KCC_PARITY_PLANS={COUNT}, KCC_PARITY_SEED={SEED})",
        "data": DATA, "models": {k: {a: list(b) if isinstance(b, tuple) else b for a, b in v.items()} for k, v in MODELS.items()},
        "atol": ATOL, "count": len(results), "passed": len(diffs), "failures": len(failures),
        "max_abs_diff": max(diffs, default=None),
        "drq_plans": len(drq), "drq_max_abs_diff": max(drq, default=None),
        "per_model": {m: {"count": sum(r["model"] == m for r in results),
                          "max_abs_diff": max((r["parity_max_abs"] for r in results
                                               if r["model"] == m and "error" not in r), default=None)}
                      for m in MODELS},
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__,
                     "ai_edge_litert": getattr(ai_edge_litert, "__version__", "unknown"),
                     "python": platform.python_version()},
        "plans": [{k: v for k, v in r.items() if k != "traceback"} for r in results],
    }
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
