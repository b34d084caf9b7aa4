"""The ``tfmot-prune`` peer: TensorFlow Model Optimization's magnitude pruning.

What a Keras engineer reaches for first to prune a model is TFMOT's
``prune_low_magnitude``. It works only with tf_keras (Keras 2) and switches any process
that imports it to Keras 2 (shared/litert.md), so the library never imports it: this
method writes the trained Keras 3 model (architecture as JSON, weights by layer name)
and the train / valid arrays to its work folder, and a child process (``_tfmot_child.py``
run by path with ``TF_USE_LEGACY_KERAS=1``) rebuilds the same DeepFM / DeepFwFM in
tf_keras, checks it equals the Keras 3 model, prunes the hidden DNN kernels to
DeepLight's sparsity (0.9), fine-tunes, strips and converts to LiteRT.

The child runs in ``$KCC_TFMOT_PYTHON`` when set (a separate environment with the
``bench`` extra), else in this Python.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from keras_ctr_compress.bench.pruning_methods import DEEPLIGHT
from keras_ctr_compress.bench.registry import Candidate, MethodContext, add_method
from keras_ctr_compress.models.builder import safe_name

PYTHON_ENV = "KCC_TFMOT_PYTHON"
CHILD_SCRIPT = Path(__file__).with_name("_tfmot_child.py")
REQUIRED_MODULES = ("tensorflow", "tf_keras", "tensorflow_model_optimization", "numpy")
SUPPORTED_MODELS = ("deepfm", "deepfwfm")
#: rows on which the tf_keras copy must equal the Keras 3 model (before pruning)
PROBE_ROWS = 512
#: epochs of the pruning ramp and of the fine-tuning at the target: prune_deeplight's
#: defaults (prune_epochs=4, finetune_epochs=3, fine-tune lr 1e-4), 1 + 1 when quick
RAMP_EPOCHS, FINETUNE_EPOCHS, FINETUNE_LR = 4, 3, 1e-4
#: exit status of the child when it cannot import the TFMOT stack (_tfmot_child.EXIT_MISSING)
_EXIT_MISSING = 3


def tfmot_python() -> str:
    """The Python that runs the child: ``$KCC_TFMOT_PYTHON`` or this interpreter."""
    return os.environ.get(PYTHON_ENV) or sys.executable


def _missing_hint(python: str, missing: str) -> str:
    return (f"method 'tfmot-prune' needs {missing} in {python}: install the bench extra there "
            f"(pip install -e .[bench]) or set {PYTHON_ENV} to a Python that has "
            f"tensorflow-model-optimization and tf-keras")


def check_tfmot_python(python: str) -> None:
    """Raises a one-line RuntimeError unless ``python`` can import the child's modules.

    Uses ``find_spec`` (no TensorFlow import: fast, and this process stays Keras 3).
    """
    probe = ("import importlib.util as u; print(' '.join(m for m in "
             f"{REQUIRED_MODULES!r} if u.find_spec(m) is None))")
    try:
        res = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(_missing_hint(python, f"a working Python ({type(e).__name__})")) from None
    if res.returncode != 0:
        raise RuntimeError(_missing_hint(python, "a working Python"))
    missing = res.stdout.strip()
    if missing:
        raise RuntimeError(_missing_hint(python, missing.replace(" ", ", ")))


# ------------------------------------------------------------- what the child gets


def _l2_of(regularizer, where: str) -> float:
    """The L2 factor of a Keras regularizer (None: 0); anything else cannot be copied."""
    if regularizer is None:
        return 0.0
    l2 = getattr(regularizer, "l2", None)
    if l2 is None or getattr(regularizer, "l1", 0.0):
        raise ValueError(f"tfmot-prune copies only L2 regularizers; {where} has {regularizer!r}")
    return float(l2)


def _hidden_layers(model) -> list:
    hidden = [layer for layer in model.layers
              if layer.name.startswith("dnn_") and layer.name[4:].isdigit()]
    return sorted(hidden, key=lambda layer: int(layer.name[4:]))


def architecture(ctx: MethodContext) -> dict:
    """builder.py's model as the child rebuilds it, read from the trained model itself
    (layer sizes, dropout rates, regularizers, pair mode) so the two cannot drift."""
    model = ctx.fp32_model
    fields = []
    for f in ctx.dataset.fields:
        emb = model.get_layer(f"emb_{safe_name(f.name)}")
        lin = model.get_layer(f"lin_{safe_name(f.name)}")
        fields.append({"emb": emb.name, "lin": lin.name, "vocab": int(emb.input_dim)})
    first = model.get_layer(fields[0]["emb"])
    pairs = model.get_layer("pairs")
    if getattr(pairs, "use_mask", False):
        raise ValueError("tfmot-prune copies FieldPairInteraction without a pair mask only")
    hidden = _hidden_layers(model)
    names = {layer.name for layer in model.layers}
    return {
        "model": ctx.model_name,
        "fields": fields,
        "embedding_dim": int(first.output_dim),
        "embedding_l2": _l2_of(first.embeddings_regularizer, first.name),
        "mlp": [int(layer.units) for layer in hidden],
        "dropout": [float(model.get_layer(f"{layer.name}_drop").rate)
                    if f"{layer.name}_drop" in names else 0.0 for layer in hidden],
        "dense_l2": _l2_of(hidden[0].kernel_regularizer, hidden[0].name) if hidden else 0.0,
        "pairs": {"mode": pairs.mode,
                  "pairs": None if pairs.pairs is None else [list(p) for p in pairs.pairs]},
    }


def training_plan(ctx: MethodContext) -> dict:
    """The fine-tuning recipe: the reference's batch / lr / patience, DeepLight's target."""
    cfg = ctx.train_config
    return {
        "target_sparsity": DEEPLIGHT["target_sparsity"],
        "ramp_epochs": 1 if ctx.quick else RAMP_EPOCHS,
        "finetune_epochs": 1 if ctx.quick else FINETUNE_EPOCHS,
        "batch_size": int(getattr(cfg, "batch_size", 1024)),
        "learning_rate": float(getattr(cfg, "learning_rate", 1e-3)),
        "finetune_learning_rate": FINETUNE_LR,
        "patience": int(getattr(cfg, "patience", 2)),
        "seed": int(ctx.seed),
    }


def weight_arrays(model, arch: dict) -> dict[str, np.ndarray]:
    """``w/<layer>/<i>`` arrays of every weighted layer, all of them known to the child."""
    known = {f[k] for f in arch["fields"] for k in ("emb", "lin")} | {"pairs", "dnn_out"}
    known |= {f"dnn_{k}" for k in range(len(arch["mlp"]))}
    arrays = {}
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        if layer.name not in known:
            raise ValueError(f"tfmot-prune rebuilds builder.py's deepfm / deepfwfm only; "
                             f"layer {layer.name!r} ({type(layer).__name__}) is not part of them")
        arrays.update({f"w/{layer.name}/{i}": np.asarray(w) for i, w in enumerate(weights)})
    return arrays


def write_inputs(ctx: MethodContext, folder: Path) -> tuple[Path, Path]:
    """Writes ``arch.json`` and ``data.npz`` (weights, splits, parity probe) for the child."""
    arch = {**architecture(ctx), "train": training_plan(ctx)}
    arrays = weight_arrays(ctx.fp32_model, arch)
    probe = ctx.dataset.valid.x[:PROBE_ROWS].astype("int32")
    p_probe = np.asarray(ctx.fp32_model.predict(probe, batch_size=len(probe), verbose=0), "float32")
    arch_path, data_path = folder / "arch.json", folder / "data.npz"
    arch_path.write_text(json.dumps(arch, indent=1))
    np.savez(data_path, x_train=ctx.dataset.train.x.astype("int32"), y_train=ctx.dataset.train.y,
             x_valid=ctx.dataset.valid.x.astype("int32"), y_valid=ctx.dataset.valid.y,
             x_probe=probe, p_probe=p_probe.reshape(-1), **arrays)
    return arch_path, data_path


# ----------------------------------------------------------------------- the child


def run_child(python: str, arch: Path, data: Path, out: Path, report: Path) -> dict:
    """Runs ``_tfmot_child.py`` in ``python`` under Keras 2 and returns its report."""
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # runpy from -c: the script's own folder (this package's bench/) must not land on
    # sys.path, where its modules could shadow others in the child.
    launcher = ("import runpy, sys; sys.argv = sys.argv[1:]; "
                "runpy.run_path(sys.argv[0], run_name='__main__')")
    cmd = [python, "-c", launcher, str(CHILD_SCRIPT), str(arch), str(data), str(out), str(report)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=arch.parent)
    if res.returncode == _EXIT_MISSING:
        raise RuntimeError(_missing_hint(python, "an importable TFMOT stack"))
    if res.returncode != 0:
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-25:])
        raise RuntimeError(f"tfmot-prune child failed (exit {res.returncode}) in {python}:\n{tail}")
    return json.loads(report.read_text())


def gzip_bytes(path: Path) -> int:
    """Size after gzip -9: what unstructured zeros would save on disk or over the wire
    (the .tflite itself stores them as dense float32)."""
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=9))


def tfmot_prune(ctx: MethodContext) -> Candidate:
    if ctx.model_name not in SUPPORTED_MODELS:
        raise ValueError(f"method 'tfmot-prune' needs --model deepfm or deepfwfm; "
                         f"got {ctx.model_name!r}")
    python = tfmot_python()
    check_tfmot_python(python)  # before writing anything large
    folder = ctx.path("tfmot-prune/arch.json").parent
    out = ctx.path("tfmot-prune.tflite")
    arch, data = write_inputs(ctx, folder)
    try:
        report = run_child(python, arch, data, out, folder / "report.json")
    finally:
        data.unlink(missing_ok=True)  # a copy of the training split: do not keep it
    plan = {"method": "tfmot-prune", "pruned_layers": sorted(report["sparsity"]["per_layer"]),
            **json.loads(arch.read_text())["train"],
            **{k: report[k] for k in ("schedule", "end_step", "frequency") if k in report}}
    extra = {
        "dnn_sparsity": report["sparsity"]["dnn"],
        "sparsity_per_layer": report["sparsity"]["per_layer"],
        "tflite_gzip_bytes": gzip_bytes(out),
        "fp32_tflite_gzip_bytes": gzip_bytes(ctx.fp32_tflite),
        "copy_parity_max_abs": report["copy_parity_max_abs"],
        "file_parity_max_abs": report["file_parity_max_abs"],
        "epochs_run": report["epochs_run"], "best_epoch": report["best_epoch"],
        "best_val_auc": report["best_val_auc"], "val_auc_history": report["val_auc_history"],
        "versions": report["versions"], "python": python,
    }
    # its file equals its tf_keras model (checked in the child), not our fp32 Keras model
    return Candidate(tflite_path=out, keras_model=None, train_seconds=report["train_seconds"],
                     plan=plan, extra=extra, parity_max_abs=report["file_parity_max_abs"])


add_method("tfmot-prune", tfmot_prune,
           description="TFMOT prune_low_magnitude (the peer a Keras user tries first): a tf_keras "
           "copy of the DeepFM / DeepFwFM, hidden DNN kernels pruned to S=0.9 by PolynomialDecay "
           "and fine-tuned, in its own process; unstructured zeros (gzip size reported)")
