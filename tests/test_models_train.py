"""Each reference model learns the synthetic truth: test AUC within 0.02 of Bayes-optimal."""

import pytest

from keras_ctr_compress.data import load_dataset
from keras_ctr_compress.models import MODEL_NAMES, TrainConfig, build_model, evaluate, train_model

SPEC = "synthetic:rows=150000,seed=0"


@pytest.fixture(scope="module")
def data():
    return load_dataset(SPEC)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_reaches_bayes_auc(name, data):
    model = build_model(name, data.fields, mlp=(128, 128), seed=0)
    summary = train_model(model, data.train, data.valid, TrainConfig(epochs=10, verbose=0))
    auc = evaluate(model, data.test)["auc"]
    bayes = data.info["bayes_auc"]
    assert bayes - auc <= 0.02, f"{name}: AUC {auc:.4f} vs Bayes {bayes:.4f} after {summary['epochs']} epochs"
    assert auc <= bayes + 0.005  # nothing beats the truth (beyond test-split noise)
