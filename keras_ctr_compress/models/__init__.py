"""Reference CTR models (FM, FwFM, DeepFM, DeepFwFM, DCNv2) and their training."""

from keras_ctr_compress.models.builder import MODEL_NAMES, ModelConfig, build_model
from keras_ctr_compress.models.training import (
    TrainConfig,
    ValidationAUC,
    auc_logloss,
    evaluate,
    train_model,
)

__all__ = [
    "MODEL_NAMES",
    "ModelConfig",
    "TrainConfig",
    "ValidationAUC",
    "auc_logloss",
    "build_model",
    "evaluate",
    "train_model",
]
