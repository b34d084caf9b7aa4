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


@dataclass
class TrainConfig:
    """Training recipe (defaults: the Frappe fp32 reference recipe in shared/data/README)."""

    epochs: int = 15
    batch_size: int = 1024
    learning_rate: float = 1e-3
    patience: int = 2
    seed: int = 0
    verbose: int = 1

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
    early = keras.callbacks.EarlyStopping(
        monitor="val_auc", mode="max", patience=cfg.patience, restore_best_weights=True
    )
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
