"""The benchmark's own from-scratch training (``_train_from_scratch`` of
keras_ctr_compress/bench/quant_methods.py, a MethodContext as ``kcc bench`` builds it)
with the lpt table learning rate overridden per run:

    python bench_lr.py SEED METHOD:BITS:TABLE_LR,... OUT.json

Reports the best validation AUC and the test AUC of the finalized model.
"""
import json
import sys
import time

import keras_ctr_compress.bench.quant_methods as qm
from keras_ctr_compress.bench.registry import MethodContext
from keras_ctr_compress.compress.quantize import METHOD_PRESETS
from keras_ctr_compress.data import load_dataset
from keras_ctr_compress.models import TrainConfig
from keras_ctr_compress.models.training import evaluate

seed, variants, out = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
ds = load_dataset("frappe", seed=0)
ctx = MethodContext(ds, "deepfm", seed, None, None, "/tmp/bench_lr", False, TrainConfig(epochs=40, verbose=0),
                    extra={"model_kwargs": {}})
rows = []
for var in variants:
    method, bits, table_lr = var.split(":")
    kind, preset = METHOD_PRESETS[method]
    qm.METHOD_PRESETS = {**METHOD_PRESETS, method: (kind, {**preset, "learning_rate": float(table_lr)})}
    t0 = time.perf_counter()
    model, info = qm._train_from_scratch(ctx, method, int(bits))
    row = {"seed": seed, "var": var, "epochs": info["epochs"], "best_epoch": info["best_epoch"],
           "val": info["best_val_auc"], "test": evaluate(model, ds.test)["auc"], "secs": time.perf_counter() - t0}
    print(json.dumps(row), flush=True)
    rows.append(row)
    json.dump(rows, open(out, "w"), indent=1)
