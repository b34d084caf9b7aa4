"""ALPT / LPT-SR at 4 bits, trained from scratch as the benchmark does
(keras_ctr_compress.bench.quant_methods._train_from_scratch), with the row-wise
Adagrad table learning rate (and optionally the step-size learning rate) overridden.

    python table_lr.py SEED METHOD:LR[:STEP_LR],... OUT.json

Reports the best validation AUC (what a choice may be made on) and the test AUC.
"""
import json
import sys
import time

from keras_ctr_compress.bench.quant_methods import GRANULARITY, LPT_L2_SCALE, _table_regularizer
from keras_ctr_compress.compress.quantize import METHOD_PRESETS, finalize_quantized, quantize_embeddings
from keras_ctr_compress.data import load_dataset
from keras_ctr_compress.models import TrainConfig, build_model, train_model
from keras_ctr_compress.models.training import evaluate

seed, variants, out = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
ds = load_dataset("frappe")
rows = []
for var in variants:
    method, table_lr, *rest = var.split(":")
    kind, preset = METHOD_PRESETS[method]
    extra = {"learning_rate": float(table_lr)}
    if rest:
        extra["step_learning_rate"] = float(rest[0])
    t0 = time.perf_counter()
    model = build_model("deepfm", ds.fields, seed=seed)
    q = quantize_embeddings(model, method=kind, bits=4, step_init="lsq", granularity=GRANULARITY, seed=seed,
                            **preset, **extra, **_table_regularizer(model, LPT_L2_SCALE[method]))
    config = TrainConfig(epochs=40, batch_size=1024, learning_rate=1e-3, patience=2, seed=seed, lr_decays=1)
    summary = train_model(q, ds.train, ds.valid, config)
    final = finalize_quantized(q)
    row = {"seed": seed, "var": var, "epochs": summary["epochs"], "best_epoch": summary["best_epoch"],
           "val": summary["best_val_auc"], "test": evaluate(final, ds.test)["auc"],
           "secs": time.perf_counter() - t0}
    print(json.dumps(row), flush=True)
    rows.append(row)
    json.dump(rows, open(out, "w"), indent=1)
