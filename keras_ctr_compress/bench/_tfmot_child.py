"""Child process of the ``tfmot-prune`` benchmark peer: run by file path, never imported.

TensorFlow Model Optimization (TFMOT) 0.8.1 works only with tf_keras (Keras 2), and
importing it switches the whole process to Keras 2 (``TF_USE_LEGACY_KERAS=1``; see
shared/litert.md). So the library never imports it: ``tfmot_peer.py`` writes the
trained Keras 3 model's architecture (JSON) and weights plus the data (``.npz``), and
this script, in its own process, needs only tensorflow, tf_keras,
tensorflow_model_optimization and numpy. It

1. rebuilds the same DeepFM / DeepFwFM in tf_keras (the math of models/builder.py and
   layers/field_pair_interaction.py) and fails unless it equals the Keras 3 model's
   predictions to ``PARITY_ATOL`` before anything else;
2. wraps the hidden DNN Dense layers (not ``dnn_out``) in ``prune_low_magnitude`` with
   a ``PolynomialDecay`` schedule to the target sparsity over the ramp epochs, then
   fine-tunes at that sparsity, keeping the best validation-AUC epoch at the target;
3. ``strip_pruning``, converts with ``TFLiteConverter.from_keras_model`` (builtin ops
   only), checks the file equals the stripped model, and writes a JSON report.

Usage: ``python _tfmot_child.py ARCH.json DATA.npz OUT.tflite REPORT.json``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

#: exit status when the TFMOT stack is not importable (the parent explains the fix)
EXIT_MISSING = 3
#: the tf_keras copy must equal the Keras 3 model to this before pruning
PARITY_ATOL = 1e-5
#: the converted file must equal the stripped tf_keras model to this
FILE_ATOL = 1e-4

# Bound by _load_stack(): this module must stay importable without TensorFlow.
tf: Any = None
keras: Any = None
tfmot: Any = None


def _load_stack() -> None:
    global tf, keras, tfmot
    import tensorflow
    import tensorflow_model_optimization
    import tf_keras

    tf, keras, tfmot = tensorflow, tf_keras, tensorflow_model_optimization


def exact_auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC by average ranks (ties count one half), NumPy only."""
    y = np.asarray(y).reshape(-1) > 0.5
    p = np.asarray(p, "float64").reshape(-1)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC undefined: {n_pos} positives, {n_neg} negatives")
    _, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = avg_rank[inverse]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# ---------------------------------------------------------------- the tf_keras model


def _custom_layers() -> tuple[type, type]:
    """tf_keras twins of SplitFields and FieldPairInteraction (same formulas)."""

    class SplitFields(keras.layers.Layer):
        def __init__(self, num_fields: int, **kwargs):
            super().__init__(**kwargs)
            self.num_fields = num_fields

        def call(self, inputs):
            return tf.unstack(inputs, num=self.num_fields, axis=1)

        def get_config(self):
            return {**super().get_config(), "num_fields": self.num_fields}

    class FieldPairInteraction(keras.layers.Layer):
        def __init__(self, num_fields: int, mode: str, pairs: list | None = None, **kwargs):
            super().__init__(**kwargs)
            self.num_fields, self.mode = num_fields, mode
            self.pairs = None if pairs is None else [tuple(p) for p in pairs]

        def build(self, input_shape):
            if self.mode == "fwfm":
                self.r = self.add_weight(name="r", shape=(self.num_fields, self.num_fields),
                                         initializer="ones")
            super().build(input_shape)

        def _pair_weights(self):
            if self.mode == "fm":
                return tf.ones((len(self.pairs),))
            n = self.num_fields
            flat = tf.reshape(self.r, (-1,))
            upper = np.array([i * n + j for i, j in self.pairs], "int32")
            lower = np.array([j * n + i for i, j in self.pairs], "int32")
            return 0.5 * (tf.gather(flat, upper) + tf.gather(flat, lower))

        def call(self, v):
            if self.pairs is not None:
                if not self.pairs:
                    return tf.zeros_like(v[:, 0, :1])
                left = np.array([i for i, _ in self.pairs], "int32")
                right = np.array([j for _, j in self.pairs], "int32")
                dots = tf.reduce_sum(tf.gather(v, left, axis=1) * tf.gather(v, right, axis=1), -1)
                if self.mode == "fm":
                    return tf.reduce_sum(dots, axis=1, keepdims=True)
                return tf.reduce_sum(dots * self._pair_weights(), axis=1, keepdims=True)
            if self.mode == "fm":
                s = tf.reduce_sum(v, axis=1)
                return 0.5 * tf.reduce_sum(s * s - tf.reduce_sum(v * v, axis=1), 1, keepdims=True)
            n = self.num_fields
            r = 0.5 * (self.r + tf.transpose(self.r))
            gram = tf.matmul(v, tf.transpose(v, (0, 2, 1)))
            return 0.5 * tf.reduce_sum(tf.reshape(gram * (r * (1.0 - tf.eye(n))), (-1, n * n)),
                                       1, keepdims=True)

        def get_config(self):
            return {**super().get_config(), "num_fields": self.num_fields, "mode": self.mode,
                    "pairs": None if self.pairs is None else [list(p) for p in self.pairs]}

    return SplitFields, FieldPairInteraction


def _l2(value: float):
    return keras.regularizers.L2(value) if value else None


def build_model(arch: dict):
    """The tf_keras copy of builder.py's deepfm / deepfwfm (same layer names)."""
    split_cls, pair_cls = _custom_layers()
    fields, dim = arch["fields"], arch["embedding_dim"]
    ids = keras.Input((len(fields),), dtype="int32", name="ids")
    cols = split_cls(len(fields), name="split_fields")(ids)
    embs = [keras.layers.Embedding(f["vocab"], dim, embeddings_regularizer=_l2(arch["embedding_l2"]),
                                   name=f["emb"])(c) for f, c in zip(fields, cols, strict=True)]
    flat = keras.layers.Concatenate(axis=1, name="emb_concat")(embs)
    lin = [keras.layers.Embedding(f["vocab"], 1, name=f["lin"])(c)
           for f, c in zip(fields, cols, strict=True)]
    logits = [keras.layers.Add(name="linear")(lin)]
    stacked = keras.layers.Reshape((len(fields), dim), name="emb_stack")(flat)
    logits.append(pair_cls(len(fields), arch["pairs"]["mode"], arch["pairs"]["pairs"],
                           name="pairs")(stacked))
    x = flat
    for k, (units, rate) in enumerate(zip(arch["mlp"], arch["dropout"], strict=True)):
        x = keras.layers.Dense(units, activation="relu", kernel_regularizer=_l2(arch["dense_l2"]),
                               name=f"dnn_{k}")(x)
        if rate:
            x = keras.layers.Dropout(rate, name=f"dnn_{k}_drop")(x)
    logits.append(keras.layers.Dense(1, name="dnn_out")(x))
    logit = keras.layers.Add(name="logit")(logits)
    out = keras.layers.Activation("sigmoid", name="ctr")(logit)
    return keras.Model(ids, out, name=arch["model"])


def load_weights(model, data) -> None:
    """Sets every weighted layer from ``w/<layer>/<i>`` arrays; both sides must match."""
    given: dict[str, dict[int, np.ndarray]] = {}
    for key in data.files:
        if key.startswith("w/"):
            _, name, i = key.split("/")
            given.setdefault(name, {})[int(i)] = data[key]
    weighted = {layer.name for layer in model.layers if layer.weights}
    if weighted != set(given):
        raise RuntimeError(f"tf_keras copy and Keras 3 model differ in weighted layers: "
                           f"only tf_keras {sorted(weighted - set(given))}, "
                           f"only Keras 3 {sorted(set(given) - weighted)}")
    for name, arrays in given.items():
        model.get_layer(name).set_weights([arrays[i] for i in range(len(arrays))])


def check_parity(model, x: np.ndarray, expected: np.ndarray, what: str, atol: float) -> float:
    got = model.predict(x, batch_size=len(x), verbose=0).reshape(-1)
    diff = float(np.max(np.abs(got - expected.reshape(-1))))
    if not diff <= atol:  # also catches NaN
        raise RuntimeError(f"{what}: max |difference| {diff:.3g} > {atol:g}")
    return diff


# ------------------------------------------------------------------------ pruning


def _is_pruned_layer(layer) -> bool:
    """The hidden DNN Dense layers (``dnn_<k>``), as DeepLight prunes them: not ``dnn_out``."""
    name = layer.name
    return (isinstance(layer, keras.layers.Dense) and name.startswith("dnn_")
            and name[4:].isdigit())


def make_schedule(target: float, ramp_steps: int) -> tuple[Any, dict]:
    """PolynomialDecay from 0 to ``target`` reached within the ramp's steps.

    Pruning every ``frequency`` steps (100 as in TFMOT's examples, fewer on tiny data
    so the ramp still has about 10 prunes); ``end_step`` is a multiple of it no later
    than the ramp's last step, so the target is reached before the fine-tuning starts.
    """
    frequency = max(1, min(100, ramp_steps // 10))
    end_step = ((ramp_steps - 1) // frequency) * frequency
    if end_step <= 0:  # a one-step ramp: prune to the target at once
        sched = tfmot.sparsity.keras.ConstantSparsity(target, begin_step=0, frequency=1)
        return sched, {"schedule": "ConstantSparsity", "target": target, "frequency": 1}
    sched = tfmot.sparsity.keras.PolynomialDecay(initial_sparsity=0.0, final_sparsity=target,
                                                 begin_step=0, end_step=end_step,
                                                 frequency=frequency)
    return sched, {"schedule": "PolynomialDecay", "target": target, "begin_step": 0,
                   "end_step": end_step, "frequency": frequency, "power": 3}


def wrap_for_pruning(model, schedule):
    """A clone whose hidden DNN Dense layers are TFMOT ``PruneLowMagnitude`` wrappers."""

    def clone(layer):
        if _is_pruned_layer(layer):
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    return keras.models.clone_model(model, clone_function=clone)


def _best_at_target_callback(valid_x, valid_y, ramp_epochs: int, patience: int, lr: float,
                             finetune_lr: float):
    """Validation AUC each epoch; early stopping and best-weight restore counting only
    epochs at the target sparsity (earlier epochs are not yet pruned to it); the
    learning rate drops to ``finetune_lr`` after the ramp (as in ``prune_deeplight``)."""

    class BestAtTarget(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.history: list[float] = []
            self.best_auc, self.best_epoch, self.best_weights, self.wait = -math.inf, -1, None, 0

        def on_epoch_begin(self, epoch, logs=None):
            keras.backend.set_value(self.model.optimizer.learning_rate,
                                    lr if epoch < ramp_epochs else finetune_lr)

        def on_epoch_end(self, epoch, logs=None):
            p = self.model.predict(valid_x, batch_size=4096, verbose=0)
            auc = exact_auc(valid_y, p)
            self.history.append(auc)
            if epoch + 1 < ramp_epochs:
                return
            if auc > self.best_auc:
                self.best_auc, self.best_epoch, self.wait = auc, epoch + 1, 0
                self.best_weights = self.model.get_weights()
            else:
                self.wait += 1
                if self.wait >= patience:
                    self.model.stop_training = True

        def on_train_end(self, logs=None):
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)

    return BestAtTarget()


def prune_and_finetune(model, data, arch: dict) -> tuple[Any, dict]:
    """Wraps, fine-tunes with ``UpdatePruningStep``, restores the best epoch, strips."""
    cfg = arch["train"]
    x, y = data["x_train"], data["y_train"].astype("float32")
    steps_per_epoch = math.ceil(len(x) / cfg["batch_size"])
    schedule, sched_info = make_schedule(cfg["target_sparsity"], cfg["ramp_epochs"] * steps_per_epoch)
    wrapped = wrap_for_pruning(model, schedule)
    # Masks start at one: the wrapped model must still be the same function.
    check_parity(wrapped, data["x_probe"], data["p_probe"], "wrapped model before training",
                 PARITY_ATOL)
    wrapped.compile(optimizer=keras.optimizers.Adam(cfg["learning_rate"]),
                    loss=keras.losses.BinaryCrossentropy())
    best = _best_at_target_callback(data["x_valid"], data["y_valid"], cfg["ramp_epochs"],
                                    cfg["patience"], cfg["learning_rate"], cfg["finetune_learning_rate"])
    t0 = time.perf_counter()
    # UpdatePruningStep first: its epoch-end re-mask must precede the best-weight copy.
    wrapped.fit(x, y, batch_size=cfg["batch_size"], epochs=cfg["ramp_epochs"] + cfg["finetune_epochs"],
                shuffle=True, verbose=0, callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), best])
    seconds = time.perf_counter() - t0
    if best.best_weights is None:
        raise RuntimeError("fine-tuning ended before any epoch at the target sparsity")
    stripped = tfmot.sparsity.keras.strip_pruning(wrapped)
    return stripped, {**sched_info, "train_seconds": seconds, "steps_per_epoch": steps_per_epoch,
                      "epochs_run": len(best.history), "best_epoch": best.best_epoch,
                      "best_val_auc": best.best_auc, "val_auc_history": best.history}


def kernel_sparsity(model) -> dict:
    """Fraction of exact zeros in each pruned kernel and over all of them."""
    layers = {layer.name: layer.get_weights()[0] for layer in model.layers if _is_pruned_layer(layer)}
    zeros = {name: int(np.sum(k == 0.0)) for name, k in layers.items()}
    sizes = {name: int(k.size) for name, k in layers.items()}
    return {"per_layer": {n: zeros[n] / sizes[n] for n in layers},
            "dnn": sum(zeros.values()) / max(1, sum(sizes.values())),
            "pruned_weights": sum(zeros.values()), "prunable_weights": sum(sizes.values())}


# ----------------------------------------------------------------------- export


def convert(model, out: Path) -> bytes:
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    blob = conv.convert()
    write_atomically(out, blob)
    return blob


def write_atomically(path: Path, data: bytes) -> None:
    """Temporary name, then rename: a killed child never leaves a truncated file under
    the real name (this process may not import the library's ``utils``)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def file_parity(blob: bytes, model, x: np.ndarray) -> float:
    """Max |file - stripped model| on ``x`` (TF's bundled interpreter, no extra package)."""
    interp = tf.lite.Interpreter(model_content=blob)
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.resize_tensor_input(inp["index"], list(x.shape))
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], x.astype("int32"))
    interp.invoke()
    got = interp.get_tensor(outp["index"]).reshape(-1)
    want = model.predict(x, batch_size=len(x), verbose=0).reshape(-1)
    diff = float(np.max(np.abs(got - want)))
    if not diff <= FILE_ATOL:
        raise RuntimeError(f"converted file differs from the stripped model by {diff:.3g}")
    return diff


def run(arch_path: Path, data_path: Path, out_path: Path, report_path: Path) -> dict:
    arch = json.loads(arch_path.read_text())
    data = np.load(data_path)
    keras.utils.set_random_seed(arch["train"]["seed"])
    model = build_model(arch)
    load_weights(model, data)
    copy_diff = check_parity(model, data["x_probe"], data["p_probe"],
                             "tf_keras copy vs the Keras 3 model", PARITY_ATOL)
    stripped, fit = prune_and_finetune(model, data, arch)
    blob = convert(stripped, out_path)
    report = {
        "copy_parity_max_abs": copy_diff,
        "file_parity_max_abs": file_parity(blob, stripped, data["x_probe"][:256]),
        "sparsity": kernel_sparsity(stripped), **fit,
        "versions": {"tensorflow": tf.__version__, "tf_keras": keras.__version__,
                     "tensorflow_model_optimization": tfmot.__version__},
        # tfmot itself may import the keras package; the library's modules must not be here.
        "library_imported": any(m.startswith("keras_ctr_compress") for m in sys.modules),
    }
    write_atomically(report_path, json.dumps(report, indent=1).encode())
    return report


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    try:
        _load_stack()
    except ImportError as e:
        print(f"tfmot-prune child: cannot import the TFMOT stack: {e}", file=sys.stderr)
        return EXIT_MISSING
    run(*(Path(a) for a in argv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
