"""Training and evaluation of CTR models: Adam, binary cross-entropy, exact AUC,
early stopping on validation AUC (restoring the best weights), per-epoch checkpoints."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import keras
import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

from keras_ctr_compress.data.schema import Split


def auc_logloss(y_true: np.ndarray, p: np.ndarray, *, where: str = "data") -> tuple[float, float]:
    """Exact ROC AUC and log loss; a clear error when AUC is undefined."""
    y_true = np.asarray(y_true).reshape(-1)
    p = np.asarray(p, dtype="float64").reshape(-1)
    if y_true.size == 0:
        raise ValueError(f"{where}: no rows to evaluate (empty split)")
    if np.unique(y_true).size < 2:
        raise ValueError(f"{where}: AUC is undefined, all {y_true.size} labels are {y_true[0]:g}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{where}: the model produced non-finite predictions")
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(roc_auc_score(y_true, p)), float(log_loss(y_true, p, labels=[0, 1]))


def evaluate(model: keras.Model, split: Split, *, batch_size: int = 4096, where: str = "test") -> dict:
    """AUC and log loss of ``model`` on ``split`` (Keras predictions)."""
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

    def on_train_begin(self, logs=None):
        self.best, self.best_weights, self.best_epoch = -math.inf, None, -1
        self.wait, self.decayed = 0, 0
        self.stopped_epoch = None

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
        self.model.set_weights(self.best_weights)
        self.wait = 0
        if self.decayed >= self.decays:
            self.model.stop_training = True
            self.stopped_epoch = epoch
            return
        self.decayed += 1
        lr = self.model.optimizer.learning_rate
        lr.assign(float(keras.ops.convert_to_numpy(lr)) * self.factor)

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


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
) -> dict:
    """Fits ``model`` with early stopping on exact validation AUC (best weights restored).

    Returns a summary dict: ``epochs`` run, ``best_epoch``, ``best_val_auc``,
    ``train_seconds`` and the per-epoch ``history``.
    """
    cfg = config or TrainConfig()
    if len(train) == 0:
        raise ValueError("training split is empty")
    keras.utils.set_random_seed(cfg.seed)
    if compile:
        compile_model(model, cfg.learning_rate)
    early = DecayOnPlateau(monitor="val_auc", mode="max", patience=cfg.patience, decays=cfg.lr_decays)
    cbs = [ValidationAUC(valid), early, *(callbacks or [])]
    t0 = time.perf_counter()
    hist = model.fit(
        train.x, train.y, batch_size=cfg.batch_size, epochs=cfg.epochs, shuffle=True,
        callbacks=cbs, verbose=cfg.verbose,
    )
    seconds = time.perf_counter() - t0
    val_aucs = hist.history.get("val_auc", [math.nan])
    best = int(np.nanargmax(val_aucs))
    return {
        "epochs": len(val_aucs),
        "best_epoch": best + 1,
        "best_val_auc": float(val_aucs[best]),
        "train_seconds": seconds,
        "history": {k: [float(v) for v in vs] for k, vs in hist.history.items()},
    }
