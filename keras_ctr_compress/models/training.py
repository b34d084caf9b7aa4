"""Training and evaluation of CTR models: Adam, binary cross-entropy, exact AUC,
early stopping on validation AUC (restoring the best weights), per-epoch checkpoints.

Resuming: with ``checkpoint=PATH`` :func:`train_model` writes the whole training
state after every epoch into one ``.npz`` (atomically: a temporary file renamed
into place, so a killed run leaves the previous epoch's complete checkpoint, never a
torn one): every model variable (weights and the dropout seed-generator states),
every optimizer variable (Adam's moments, its step counter and learning rate),
:class:`DecayOnPlateau`'s state with its best weights, the epoch counter and the
history. ``resume=True`` restores all of it and continues with the next epoch.

Why a resumed run ends with the SAME weights as an uninterrupted one (on CPU):
each epoch's batch order is a pure function of ``(seed, epoch)`` (a stateless
shuffle, not Keras' own, whose random stream would restart with the process), the
dropout masks come from the restored seed-generator states, and TensorFlow's CPU
kernels are deterministic for a given thread count.
"""

from __future__ import annotations

import json
import math
import re
import time
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

from keras_ctr_compress.data.schema import Split
from keras_ctr_compress.utils import atomic_path

CHECKPOINT_FORMAT = "keras_ctr_compress.train_checkpoint"
CHECKPOINT_VERSION = 1


def auc_logloss(y_true: np.ndarray, p: np.ndarray, *, where: str = "data") -> tuple[float, float]:
    """Exact ROC AUC and log loss; a clear error when AUC is undefined."""
    y_true = check_labels(y_true, where, need_both=True)
    p = np.asarray(p, dtype="float64").reshape(-1)
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{where}: the model produced non-finite predictions")
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(roc_auc_score(y_true, p)), float(log_loss(y_true, p, labels=[0, 1]))


def check_labels(y: np.ndarray, where: str, *, need_both: bool = False) -> np.ndarray:
    """``y`` as a flat array after checking it holds only 0 / 1 labels (and, with
    ``need_both``, rows of both classes: AUC is undefined otherwise)."""
    y = np.asarray(y).reshape(-1)
    if y.size == 0:
        raise ValueError(f"{where}: no rows to evaluate (empty split)")
    bad = np.flatnonzero((y != 0) & (y != 1))
    if bad.size:
        raise ValueError(f"{where}: label {y[bad[0]].item()!r} at row {int(bad[0])} (expected 0 or 1)")
    if need_both and np.unique(y).size < 2:
        raise ValueError(f"{where}: AUC is undefined, all {y.size} labels are {y[0]:g} (it needs both "
                         "clicks and non-clicks: more rows, or another split)")
    return y


def input_vocab_sizes(model: keras.Model) -> list[int | None] | None:
    """Rows of the smallest table reading each input column (None where no lookup
    says), or None for a model without the reference ``SplitFields`` layout."""
    from keras_ctr_compress.compress.field_importance import field_lookups

    try:
        lookups = field_lookups(model)
    except (ValueError, AttributeError):
        return None
    sizes: list[int | None] = []
    for layers in lookups:
        dims = [int(layer.input_dim) for layer in layers if getattr(layer, "input_dim", None)]
        sizes.append(min(dims) if dims else None)
    return sizes


def check_ids(model: keras.Model, x: np.ndarray, where: str, sizes: Sequence[int | None] | None = None) -> None:
    """Raises one ValueError line naming the first id of ``x`` that ``model`` cannot
    look up (negative, or beyond its column's table), instead of TensorFlow's
    multi-line gather error from deep inside the graph."""
    x = np.asarray(x)
    sizes = input_vocab_sizes(model) if sizes is None else sizes
    if x.ndim != 2:
        raise ValueError(f"{where}: ids must be 2-D (rows, fields); got shape {x.shape}")
    if sizes is None or x.size == 0:
        return
    if x.shape[1] != len(sizes):
        raise ValueError(f"{where}: {x.shape[1]} id columns but model {model.name!r} reads {len(sizes)}")
    if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{where}: ids must be integers; got dtype {x.dtype}")
    upper = np.array([np.iinfo(np.int32).max if s is None else s for s in sizes], dtype=np.int64)
    bad = (x < 0) | (x >= upper)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise ValueError(f"{where}: id {int(x[row, col])} at row {row}, column {col} is out of range "
                         f"(column {col} of model {model.name!r} takes ids in [0, {int(upper[col])}); "
                         "unseen values must be mapped to the OOV id 0)")


def evaluate(model: keras.Model, split: Split, *, batch_size: int = 4096, where: str = "test") -> dict:
    """AUC and log loss of ``model`` on ``split`` (Keras predictions)."""
    check_labels(split.y, where, need_both=True)
    check_ids(model, split.x, where)
    p = model.predict(split.x, batch_size=batch_size, verbose=0)
    auc, ll = auc_logloss(split.y, p, where=where)
    return {"auc": auc, "logloss": ll}


class ValidationAUC(keras.callbacks.Callback):
    """Adds the exact validation AUC and log loss to the epoch logs as ``val_auc`` /
    ``val_logloss`` (Keras' binned AUC metric is an approximation; early stopping
    on 1e-4 differences needs the exact one)."""

    def __init__(self, valid: Split, batch_size: int = 4096):
        super().__init__()
        self.valid = valid
        self.batch_size = batch_size

    def on_epoch_end(self, epoch, logs=None):
        res = evaluate(self.model, self.valid, batch_size=self.batch_size, where="validation split")
        if logs is not None:
            logs["val_auc"] = res["auc"]
            logs["val_logloss"] = res["logloss"]


class DecayOnPlateau(keras.callbacks.Callback):
    """Early stopping with learning-rate decay: on a plateau, go back and go slower.

    When ``monitor`` has not improved for ``patience`` epochs, the best weights so far
    are restored and the learning rate is multiplied by ``factor``; after ``decays``
    such steps the next plateau stops training (best weights restored). With
    ``decays=0`` this is ``EarlyStopping(restore_best_weights=True)``.

    Why not Keras' own: ``ReduceLROnPlateau`` keeps training from the overfitted
    weights of the plateau epochs, and ``EarlyStopping`` cannot decay. CTR models
    overfit within a few epochs (Frappe: after 2-4), and the slower phase from the
    best weights is worth +0.0015 test AUC there (shared/data/README's recipe without
    it stops at 0.9820; the fine-tuned fp32 of the low-rank record reached 0.9836),
    which an undertrained baseline would hand to every compressed model.
    """

    def __init__(self, monitor: str = "val_auc", patience: int = 2, decays: int = 1,
                 factor: float = 0.1, mode: str = "max"):
        super().__init__()
        if decays < 0 or not 0 < factor < 1:
            raise ValueError(f"decays must be >= 0 and factor in (0, 1); got decays={decays!r}, "
                             f"factor={factor!r}")
        self.monitor, self.patience, self.decays, self.factor = monitor, patience, decays, factor
        self.sign = 1.0 if mode == "max" else -1.0

        self._restored = False

    def on_train_begin(self, logs=None):
        if self._restored:  # a resumed run continues from the checkpointed state
            self._restored = False
            return
        self.best, self.best_weights, self.best_epoch = -math.inf, None, -1
        self.wait, self.decayed = 0, 0
        self.stopped_epoch = None

    def get_state(self) -> dict:
        """The plateau state as JSON-able data (``best_weights`` apart: arrays)."""
        return {"best": None if self.best == -math.inf else self.best, "best_epoch": self.best_epoch,
                "wait": self.wait, "decayed": self.decayed, "stopped_epoch": self.stopped_epoch}

    def set_state(self, state: dict, best_weights: list[np.ndarray] | None) -> None:
        """Restores :meth:`get_state`'s data; the next ``on_train_begin`` keeps it."""
        best = state["best"]
        self.best = -math.inf if best is None else float(best)
        self.best_epoch, self.wait = int(state["best_epoch"]), int(state["wait"])
        self.decayed, self.stopped_epoch = int(state["decayed"]), state["stopped_epoch"]
        self.best_weights = best_weights
        self._restored = True

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise ValueError(f"DecayOnPlateau: metric {self.monitor!r} is not in the epoch logs")
        score = self.sign * float(value)
        if score > self.best:
            self.best, self.best_epoch, self.wait = score, epoch, 0
            self.best_weights = self.model.get_weights()
            return
        self.wait += 1
        if self.wait < self.patience:
            return
        self._restore_best()
        self.wait = 0
        if self.decayed >= self.decays:
            self.model.stop_training = True
            self.stopped_epoch = epoch
            return
        self.decayed += 1
        lr = self.model.optimizer.learning_rate
        lr.assign(float(keras.ops.convert_to_numpy(lr)) * self.factor)
        self._sync_layer_learning_rates()

    def _restore_best(self) -> None:
        self.model.set_weights(self.best_weights)
        self._sync_layer_learning_rates()

    def _sync_layer_learning_rates(self) -> None:
        """Layers that train their weights with their own optimizer (QuantizedEmbedding
        in ``lpt`` mode) decay with the model's: scale ``factor ** decays so far``.
        Absolute, not relative, and set again after every restore: the best weights
        hold their (saved) scale of that epoch."""
        for layer in self.model._flatten_layers(include_self=False, recursive=True):
            if callable(getattr(layer, "set_learning_rate_scale", None)):
                layer.set_learning_rate_scale(self.factor**self.decayed)

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self._restore_best()


@dataclass
class TrainConfig:
    """Training recipe (defaults: the Frappe fp32 reference recipe in shared/data/README,
    plus one learning-rate decay: see :class:`DecayOnPlateau`).

    ``patience`` epochs without a better validation AUC restore the best weights and
    either divide the learning rate by 10 (``lr_decays`` times) or stop.
    """

    epochs: int = 15
    batch_size: int = 1024
    learning_rate: float = 1e-3
    patience: int = 2
    seed: int = 0
    verbose: int = 1
    lr_decays: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


def compile_model(model: keras.Model, learning_rate: float = 1e-3) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
    )
    return model


def train_model(
    model: keras.Model,
    train: Split,
    valid: Split,
    config: TrainConfig | None = None,
    *,
    callbacks: list | None = None,
    compile: bool = True,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    run_info: dict | None = None,
) -> dict:
    """Fits ``model`` with early stopping on exact validation AUC (best weights restored).

    Example::

        summary = train_model(model, ds.train, ds.valid, TrainConfig(epochs=5, batch_size=512))
        summary["best_epoch"], summary["best_val_auc"], evaluate(model, ds.test)["auc"]

    Args:
        model, train, valid: the model and its encoded splits (labels 0 / 1; the
            validation split needs both classes, checked before training starts).
        config: the recipe (:class:`TrainConfig`).
        callbacks: extra Keras callbacks (their own state is not checkpointed).
        compile: compile with Adam and binary cross-entropy first.
        checkpoint: write the training state here after every epoch (see the
            module docstring); the caller deletes it once the result is saved.
        resume: continue from ``checkpoint`` (written by an interrupted call with the
            same model, data and config) instead of starting over.
        run_info: JSON-able data stored in the checkpoint (what the caller needs to
            resume: its arguments, a data fingerprint); read it with
            :func:`read_checkpoint_info`.

    Returns a summary dict: ``epochs`` run, ``best_epoch``, ``best_val_auc``,
    ``train_seconds`` and the per-epoch ``history`` (all epochs, across resumes).
    """
    cfg = config or TrainConfig()
    if len(train) == 0:
        raise ValueError("training split is empty")
    check_labels(train.y, "training split")
    check_labels(valid.y, "validation split", need_both=True)
    sizes = input_vocab_sizes(model)
    check_ids(model, train.x, "training split", sizes)
    check_ids(model, valid.x, "validation split", sizes)
    if resume and checkpoint is None:
        raise ValueError("resume=True needs the checkpoint path to resume from")
    keras.utils.set_random_seed(cfg.seed)
    if compile:
        compile_model(model, cfg.learning_rate)
    early = DecayOnPlateau(monitor="val_auc", mode="max", patience=cfg.patience, decays=cfg.lr_decays)
    prior = {"epoch": 0, "history": {}, "train_seconds": 0.0, "stopped": False}
    if resume:
        prior = _restore(model, early, load_checkpoint(checkpoint), cfg)
    cbs = [ValidationAUC(valid), early, *(callbacks or [])]
    saver = None
    if checkpoint is not None:
        saver = EpochCheckpoint(checkpoint, early, cfg, prior, run_info or {})
        cbs.append(saver)  # last: it records what the other callbacks did this epoch
    t0 = time.perf_counter()
    history: dict[str, list[float]] = {k: list(v) for k, v in prior["history"].items()}
    if prior["epoch"] < cfg.epochs and not prior["stopped"]:
        if saver is not None:
            saver.started = t0
        hist = model.fit(
            epoch_batches(train, cfg.batch_size, cfg.seed, prior["epoch"], cfg.epochs),
            steps_per_epoch=math.ceil(len(train) / cfg.batch_size), epochs=cfg.epochs,
            initial_epoch=prior["epoch"], shuffle=False, callbacks=cbs, verbose=cfg.verbose,
        )
        for k, vs in hist.history.items():
            history.setdefault(k, []).extend(float(v) for v in vs)
    elif early.best_weights is not None:  # the checkpoint was the last epoch: only finish
        early.set_model(model)
        early.on_train_end()
    seconds = prior["train_seconds"] + time.perf_counter() - t0
    val_aucs = history.get("val_auc", [math.nan])
    best = int(np.nanargmax(val_aucs))
    return {
        "epochs": len(val_aucs),
        "best_epoch": best + 1,
        "best_val_auc": float(val_aucs[best]),
        "train_seconds": seconds,
        "history": history,
    }


def epoch_batches(split: Split, batch_size: int, seed: int, first_epoch: int, last_epoch: int):
    """A ``tf.data.Dataset`` of the batches of epochs ``first_epoch .. last_epoch - 1``.

    Each epoch's row order is a stateless shuffle keyed by ``(seed, epoch)`` only, so
    a run resumed at epoch ``k`` sees exactly the batches an uninterrupted run sees
    there (the last batch of an epoch may be short).
    """
    import tensorflow as tf

    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = len(split)
    x = tf.constant(np.asarray(split.x))
    y = tf.constant(np.asarray(split.y, dtype="float32").reshape(-1, 1))

    def one_epoch(epoch):
        key = tf.stack([tf.constant(int(seed), tf.int64), epoch])
        order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=key)
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

    index = tf.data.Dataset.range(first_epoch, max(first_epoch, last_epoch)).flat_map(one_epoch)
    return index.map(lambda idx: (tf.gather(x, idx), tf.gather(y, idx)),
                     num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------------- checkpoints


class EpochCheckpoint(keras.callbacks.Callback):
    """Writes the training state after every epoch (see :func:`save_checkpoint`)."""

    def __init__(self, path: str | Path, early: DecayOnPlateau, config: TrainConfig, prior: dict,
                 run_info: dict):
        super().__init__()
        self.path = Path(path)
        self.early, self.config, self.run_info = early, config, run_info
        self.history = {k: list(v) for k, v in prior["history"].items()}
        self.prior_seconds = prior["train_seconds"]
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(float(v))
        state = {
            "epoch": epoch + 1,
            "stopped": bool(self.model.stop_training),
            "history": self.history,
            "train_seconds": self.prior_seconds + time.perf_counter() - self.started,
            "early": self.early.get_state(),
            "config": _resumable_config(self.config),
            "run": self.run_info,
        }
        save_checkpoint(self.path, self.model, state, self.early.best_weights)


def _resumable_config(cfg: TrainConfig) -> dict:
    """The parts of the recipe a resumed run must share (verbosity may differ)."""
    d = cfg.to_dict()
    d.pop("verbose", None)
    return d


def save_checkpoint(path: str | Path, model: keras.Model, state: dict,
                    best_weights: list[np.ndarray] | None) -> Path:
    """Writes ``state`` (JSON-able) with every model and optimizer variable and the best
    weights into one ``.npz``, atomically (no pickles: ``allow_pickle=False`` reads it)."""
    arrays: dict[str, np.ndarray] = {}
    model_vars = list(model.variables)
    opt_vars = list(model.optimizer.variables) if model.optimizer is not None else []
    for k, v in enumerate(model_vars):
        arrays[f"model/{k}"] = keras.ops.convert_to_numpy(v)
    for k, v in enumerate(opt_vars):
        arrays[f"optimizer/{k}"] = keras.ops.convert_to_numpy(v)
    for k, w in enumerate(best_weights or []):
        arrays[f"best/{k}"] = np.asarray(w)
    header = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state,
              "model_variables": [v.path for v in model_vars],
              "optimizer_variables": [v.path for v in opt_vars],
              "best_weights": len(best_weights or [])}
    arrays["state"] = np.array(json.dumps(header))
    path = Path(path)
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to a name
            np.savez(fh, **arrays)
    return path


@dataclass
class Checkpoint:
    """A checkpoint read back: its ``state`` header and the variable values."""

    path: Path
    state: dict
    model_values: list[np.ndarray]
    optimizer_values: list[np.ndarray]
    best_weights: list[np.ndarray] | None


def read_checkpoint_info(path: str | Path) -> dict:
    """The header of a checkpoint (epoch, history, config, ``run`` info) without its arrays."""
    return _open_checkpoint(Path(path), arrays=False).state


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Reads a checkpoint written by :func:`save_checkpoint` (one-line errors)."""
    return _open_checkpoint(Path(path), arrays=True)


def _open_checkpoint(path: Path, arrays: bool) -> Checkpoint:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        with np.load(path, allow_pickle=False) as z:
            state = json.loads(str(z["state"]))
            if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
                raise ValueError("not a training checkpoint")
            if state.get("version") != CHECKPOINT_VERSION:
                raise ValueError(f"checkpoint version {state.get('version')!r} (expected {CHECKPOINT_VERSION})")
            if not arrays:
                return Checkpoint(path, state, [], [], None)
            model_values = [z[f"model/{k}"] for k in range(len(state["model_variables"]))]
            opt_values = [z[f"optimizer/{k}"] for k in range(len(state["optimizer_variables"]))]
            best = [z[f"best/{k}"] for k in range(state["best_weights"])] or None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: corrupted training checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160] if str(e) else 'unreadable'})") from None
    return Checkpoint(path, state, model_values, opt_values, best)


def _restore(model: keras.Model, early: DecayOnPlateau, ck: Checkpoint, cfg: TrainConfig) -> dict:
    """Puts a checkpoint's state into ``model``, its optimizer and ``early``; returns
    the prior-progress dict ``train_model`` continues from."""
    st = ck.state
    want = _resumable_config(cfg)
    diff = sorted(k for k in set(want) | set(st["config"]) if want.get(k) != st["config"].get(k))
    if diff:
        k = diff[0]
        raise ValueError(f"{ck.path}: the checkpoint was trained with {k}={st['config'].get(k)!r}, "
                         f"not {want.get(k)!r}; resume with the interrupted run's settings")
    model_vars = list(model.variables)
    if _plain_paths(v.path for v in model_vars) != _plain_paths(st["model_variables"]):
        raise ValueError(f"{ck.path}: the checkpoint holds another model's variables "
                         f"({len(st['model_variables'])} variables, this model has {len(model_vars)})")
    if model.optimizer is None:
        raise ValueError("resuming needs a compiled model (compile=True or model.compile first)")
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    opt_vars = list(model.optimizer.variables)
    if _plain_paths(v.path for v in opt_vars) != _plain_paths(st["optimizer_variables"]):
        raise ValueError(f"{ck.path}: the checkpoint's optimizer state does not fit this model's optimizer")
    for v, a in zip(model_vars, ck.model_values, strict=True):
        _assign(v, a, ck.path)
    for v, a in zip(opt_vars, ck.optimizer_values, strict=True):
        _assign(v, a, ck.path)
    early.set_state(st["early"], ck.best_weights)
    return {"epoch": int(st["epoch"]), "history": st["history"], "train_seconds": float(st["train_seconds"]),
            "stopped": bool(st["stopped"])}


def _plain_paths(paths) -> list[str]:
    """Variable paths without Keras' uniquifying suffixes (``seed_generator_3`` ->
    ``seed_generator``): auto-named objects count up within a process, so the same
    model built in another process (or twice in one) gets other numbers."""
    return [re.sub(r"_\d+(?=/|$)", "", p) for p in paths]


def _assign(variable, value: np.ndarray, path: Path) -> None:
    if tuple(variable.shape) != tuple(value.shape):
        raise ValueError(f"{path}: variable {variable.path} has shape {tuple(value.shape)} in the checkpoint, "
                         f"{tuple(variable.shape)} in the model")
    variable.assign(value)
