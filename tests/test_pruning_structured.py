"""Structured pruning: dead neurons removed physically (exact), smaller exported kernels, recipe."""

import keras
import numpy as np
import pytest

from keras_ctr_compress.compress import (
    StructuredPruning,
    prune_deeplight,
    rebuild_model,
    strip_pruning,
)
from keras_ctr_compress.compress.pruning import dead_neurons, prunable_neuron_layers
from keras_ctr_compress.data import CTRDataset, Field, Split
from keras_ctr_compress.export import check_parity, export_litert, size_breakdown
from keras_ctr_compress.models import build_model

FIELDS = [Field(f"f{i}", 20 + 3 * i) for i in range(5)]


def _x(n=150, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, f.vocab_size, n) for f in FIELDS], 1).astype("int32")


def _model(name="deepfwfm", mlp=(16, 12), seed=0):
    model = build_model(name, FIELDS, mlp=mlp, embedding_dim=4, seed=seed)
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype(w.dtype) for w in model.get_weights()])
    return model


def _kill(model, layer_name, units, *, keep_bias=False):
    """Makes ``units`` of a Dense layer dead: zero incoming weights (and bias unless kept)."""
    layer = model.get_layer(layer_name)
    k = layer.kernel.numpy()
    k[:, units] = 0
    layer.kernel.assign(k)
    if not keep_bias:
        b = layer.bias.numpy()
        b[units] = 0
        layer.bias.assign(b)


@pytest.mark.parametrize("keep_bias", [False, True])
def test_removing_dead_neurons_is_exact_and_physical(keep_bias):
    model = _model()
    _kill(model, "dnn_0", [1, 4, 5, 9], keep_bias=keep_bias)
    _kill(model, "dnn_1", [0, 11], keep_bias=keep_bias)
    assert {k: len(v) for k, v in dead_neurons(model).items()} == {"dnn_0": 12, "dnn_1": 10}
    small = strip_pruning(model)
    assert small.get_layer("dnn_0").kernel.shape == (20, 12)
    assert small.get_layer("dnn_1").kernel.shape == (12, 10)
    assert small.get_layer("dnn_out").kernel.shape == (10, 1)
    x = _x()
    # A dead neuron with a bias outputs relu(b): folded into the next layer's bias.
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_structured_callback_then_strip_gives_smaller_equal_model(tmp_path):
    model = _model()
    rng = np.random.default_rng(0)
    x, y = _x(120), (rng.random(120) < 0.4).astype("float32")
    cb = StructuredPruning(0.5, frequency=4, pair_ratio=0.8, snap_to_target=True)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy", run_eagerly=True)
    model.fit(x, y, batch_size=20, epochs=1, callbacks=[cb], verbose=0)
    assert cb.history[-1] == (6, 0.5)
    small = strip_pruning(model)
    assert small.get_layer("dnn_0").units == 8 and small.get_layer("dnn_1").units == 6
    assert len(small.get_layer("pairs").pairs) == 10 - 4
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    # The export holds the smaller kernels (FULLY_CONNECTED stores them out x in).
    path = export_litert(small, tmp_path / "small.tflite")
    shapes = {t.shape for t in size_breakdown(path).tensors if len(t.shape) == 2}
    assert {(8, 20), (6, 8), (1, 6)} <= shapes and (16, 20) not in shapes
    assert check_parity(small, path, _x(300, seed=1)) <= 1e-4


def test_only_dense_fed_layers_can_lose_neurons():
    dcn = _model("dcnv2", mlp=(8,))
    names = [layer.name for layer in prunable_neuron_layers(dcn)]
    assert names == ["dnn_0"]  # cross layers feed a Multiply, dnn_out is the output
    with pytest.raises(ValueError, match="cannot lose neurons"):
        cb = StructuredPruning(0.5, neuron_layers=["cross_0"])
        cb.set_model(dcn)
        cb.on_train_begin()
    with pytest.raises(ValueError, match="pair_ratio"):
        StructuredPruning(0.5, pair_ratio=2.0)
    with pytest.raises(ValueError, match="every neuron"):
        rebuild_model(_model(), kept_units={"dnn_0": []})


def test_prune_deeplight_recipe_structured():
    rng = np.random.default_rng(0)
    x = _x(400)
    y = ((x[:, 0] % 3 == 0) ^ (rng.random(400) < 0.2)).astype("float32")
    ds = CTRDataset("toy", FIELDS, Split(x[:300], y[:300]), Split(x[300:], y[300:]), Split(x[300:], y[300:]))
    model = _model()
    small, report = prune_deeplight(model, ds, target_sparsity=0.75, structured=True, prune_epochs=1,
                                    finetune_epochs=1, batch_size=50)
    assert small.get_layer("dnn_0").units == 4 and small.get_layer("dnn_1").units == 3
    assert model.get_layer("dnn_0").units == 16  # the input model is untouched
    assert report["method"] == "deeplight-structured" and report["sparsity"]["pairs"]["pairs"] == pytest.approx(0.8)
    assert 0.0 <= report["val_auc_finetuned"] <= 1.0
