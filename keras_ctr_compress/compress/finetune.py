"""Brief fine-tuning of a compressed model: a few epochs at a low learning rate,
early stopping on exact validation AUC, best weights kept.

AFM's AUC gain over the uncompressed model comes from this step (arXiv 2405.18146,
section 1 of shared/methods.md). The training loop, the exact-AUC callback
(:class:`~keras_ctr_compress.models.ValidationAUC`) and early stopping are the
reference models' own (:func:`~keras_ctr_compress.models.train_model`), so that a
fine-tuned row and the fp32 row of a benchmark follow one recipe.
"""

from __future__ import annotations

import keras

from keras_ctr_compress.data.schema import Split
from keras_ctr_compress.models.training import TrainConfig, evaluate, train_model


def finetune(
    model: keras.Model,
    train: Split,
    valid: Split,
    *,
    epochs: int = 3,
    learning_rate: float = 1e-4,
    batch_size: int = 1024,
    patience: int = 1,
    seed: int = 0,
    verbose: int = 0,
) -> dict:
    """Fine-tunes ``model`` in place (Adam, binary cross-entropy) and keeps the best weights.

    Validation AUC is exact (``sklearn.metrics.roc_auc_score`` on the whole valid
    split after every epoch). Training stops after ``patience`` epochs without a
    better AUC and the best epoch's weights are restored; if no epoch beats the
    model as it came in, its incoming weights are restored (fine-tuning never makes
    the validation AUC worse).

    Args:
        model: the (compressed) model; it is compiled anew.
        train, valid: encoded splits (``x`` int32 ``(n, F)``, ``y`` float32 ``(n,)``).
        epochs: at most this many epochs.
        learning_rate: Adam's learning rate (a tenth of the training recipe's).
        batch_size: training batch size.
        patience: epochs without improvement before stopping.
        seed: seeds shuffling and dropout.
        verbose: Keras' fit verbosity.

    Returns:
        ``{"initial_val_auc", "best_val_auc", "best_epoch" (0: the incoming weights
        were kept), "epochs", "train_seconds", "history"}``.
    """
    if epochs < 1:
        raise ValueError(f"`epochs` must be >= 1. Received: {epochs!r}")
    if not learning_rate > 0:
        raise ValueError(f"`learning_rate` must be positive. Received: {learning_rate!r}")
    initial_auc = evaluate(model, valid, where="validation split")["auc"]
    initial_weights = model.get_weights()
    config = TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                         patience=patience, seed=seed, verbose=verbose, lr_decays=0)
    summary = train_model(model, train, valid, config)
    best_epoch, best_auc = summary["best_epoch"], summary["best_val_auc"]
    if not best_auc > initial_auc:
        model.set_weights(initial_weights)
        best_epoch, best_auc = 0, initial_auc
    return {
        "initial_val_auc": initial_auc,
        "best_val_auc": best_auc,
        "best_epoch": best_epoch,
        "epochs": summary["epochs"],
        "train_seconds": summary["train_seconds"],
        "history": summary["history"],
    }
