"""Swapping trained Embedding tables for quantised layers; finalizing; the benchmark chain."""

import keras
import numpy as np
import pytest

from keras_ctr_compress.compress import (
    METHOD_PRESETS,
    embedding_byte_cost,
    finalize_quantized,
    quantize_and_finetune,
    quantize_embeddings,
    uniform_bits_budget,
    update_row_priorities,
)
from keras_ctr_compress.data.schema import Field, Split
from keras_ctr_compress.export import check_parity, export_litert
from keras_ctr_compress.layers import QuantizedEmbedding, RowwiseQuantEmbedding, SplitFields
from keras_ctr_compress.layers import quant_ops as q_ops
from keras_ctr_compress.models.builder import build_model

VOCABS = (100, 60)


def _user_model(seed=0):
    """A user's own functional CTR model: two tables, a first-order table, an MLP."""
    keras.utils.set_random_seed(seed)
    ids = keras.Input((2,), dtype="int32", name="ids")
    a, b = SplitFields(2, name="cols")(ids)
    ea = keras.layers.Embedding(VOCABS[0], 8, embeddings_initializer="random_normal", name="user_table")(a)
    eb = keras.layers.Embedding(VOCABS[1], 8, embeddings_initializer="random_normal", name="item_table",
                                embeddings_regularizer=keras.regularizers.L2(1e-4))(b)
    bias = keras.layers.Embedding(VOCABS[0], 1, embeddings_initializer="random_normal", name="user_bias")(a)
    h = keras.layers.Dense(16, activation="relu", name="hidden")(keras.layers.Concatenate()([ea, eb]))
    logit = keras.layers.Add()([keras.layers.Dense(1, name="out")(h), bias])
    return keras.Model(ids, keras.layers.Activation("sigmoid")(logit))


def _data(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    x = np.stack([rng.integers(0, v, size=n) for v in VOCABS], axis=1).astype("int32")
    wa, wb = rng.normal(size=VOCABS[0]), rng.normal(size=VOCABS[1])
    y = (rng.random(n) < 1 / (1 + np.exp(-2 * (wa[x[:, 0]] + wb[x[:, 1]])))).astype("float32")
    return Split(x, y)


@pytest.fixture(scope="module")
def trained():
    model = _user_model()
    model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy")
    data = _data()
    model.fit(data.x, data.y, batch_size=256, epochs=2, verbose=0)
    return model, data


def test_swap_defaults_to_tables_of_width_two_or_more_and_leaves_original(trained):
    model, data = trained
    before = [w.copy() for w in model.get_weights()]
    q = quantize_embeddings(model, method="qat", bits=8)
    assert isinstance(q.get_layer("user_table"), QuantizedEmbedding)
    assert isinstance(q.get_layer("item_table"), QuantizedEmbedding)
    assert type(q.get_layer("user_bias")) is keras.layers.Embedding
    assert q.get_layer("item_table").embeddings_regularizer.get_config()["l2"] == pytest.approx(1e-4)
    # The original model is untouched.
    assert type(model.get_layer("user_table")) is keras.layers.Embedding
    for w0, w1 in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(w0, w1)
    # int8 with calibrated row steps: predictions barely move; the Dense weights are copies.
    p0, p1 = model.predict(data.x, verbose=0), q.predict(data.x, verbose=0)
    assert np.max(np.abs(p0 - p1)) < 0.005
    np.testing.assert_array_equal(q.get_layer("hidden").get_weights()[0], model.get_layer("hidden").get_weights()[0])
    # Steps calibrated on the trained rows (least squared error), or ALPT's LSQ init on request.
    table = model.get_layer("user_table").get_weights()[0]
    np.testing.assert_allclose(q.get_layer("user_table").step.numpy(), q_ops.init_step_np(table, 8, "row", "mse"))
    lsq = quantize_embeddings(model, ["user_table"], method="lpt", step_init="lsq").get_layer("user_table")
    np.testing.assert_allclose(lsq.step.numpy(), 2 * np.abs(table).mean(1) / np.sqrt(127), rtol=1e-6)


def test_swap_all_and_named_layers(trained):
    model, _ = trained
    q = quantize_embeddings(model, "all", method="lpt", bits=4)
    assert all(isinstance(q.get_layer(n), QuantizedEmbedding) for n in ("user_table", "item_table", "user_bias"))
    q = quantize_embeddings(model, ["item_table"], method="rowwise", tiers=("int8", "int4"))
    assert isinstance(q.get_layer("item_table"), RowwiseQuantEmbedding)
    assert type(q.get_layer("user_table")) is keras.layers.Embedding


def test_swap_bad_requests(trained):
    model, _ = trained
    with pytest.raises(ValueError, match="no layer 'nope'"):
        quantize_embeddings(model, ["nope"])
    with pytest.raises(ValueError, match="is a Dense, not a keras.layers.Embedding"):
        quantize_embeddings(model, ["hidden"])
    with pytest.raises(ValueError, match="`method`"):
        quantize_embeddings(model, method="int8")
    with pytest.raises(ValueError, match="bits"):
        quantize_embeddings(model, bits=9)
    with pytest.raises(ValueError, match="bits"):
        quantize_embeddings(model, bits=0)
    with pytest.raises(ValueError, match="granularity"):
        quantize_embeddings(model, granularity="column")
    with pytest.raises(ValueError, match="does not apply"):
        quantize_embeddings(model, method="rowwise", bits=4)
    with pytest.raises(ValueError, match="`name` is set"):
        quantize_embeddings(model, name="x")

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.emb = keras.layers.Embedding(10, 4)

        def call(self, x):
            return self.emb(x)

    sub = Subclassed()
    sub(np.zeros((2,), "int32"))
    with pytest.raises(ValueError, match="is a subclassed model: .*functional API"):
        quantize_embeddings(sub)
    ids = keras.Input((), dtype="int32")
    masked = keras.Model(ids, keras.layers.Embedding(10, 4, mask_zero=True, name="m")(ids))
    with pytest.raises(ValueError, match="mask_zero"):
        quantize_embeddings(masked)
    no_tables = keras.Model(ids, keras.layers.Dense(2)(keras.ops.cast(ids, "float32")[:, None]))
    with pytest.raises(ValueError, match="no keras.layers.Embedding"):
        quantize_embeddings(no_tables)


def test_reference_model_swap_keeps_first_order_tables():
    fields = [Field("a", 30), Field("b", 20), Field("c", 10)]
    model = build_model("deepfm", fields, embedding_dim=4, mlp=(8,), seed=0)
    q = quantize_embeddings(model, method="lpt", bits=2)
    kinds = {layer.name: type(layer).__name__ for layer in q.layers if layer.name.startswith(("emb_", "lin_"))}
    assert kinds["emb_a"] == "QuantizedEmbedding" and kinds["lin_a"] == "Embedding"


@pytest.mark.parametrize("method, kwargs", [("lpt", {"bits": 4}), ("rowwise", {"fractions": (0.2, 0.3, 0.3, 0.1, 0.1)})])
def test_swapped_model_fine_tunes_finalizes_and_exports(trained, tmp_path, method, kwargs):
    model, data = trained
    q = quantize_embeddings(model, method=method, **kwargs)
    if method == "rowwise":
        counts = update_row_priorities(q, data.x, data.y, batch_size=500)
        assert sorted(counts) == ["item_table", "user_table"]
        assert counts["user_table"].tolist() == [20, 30, 30, 10, 10]
    q.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
    q.fit(data.x, data.y, batch_size=256, epochs=1, verbose=0)
    final = finalize_quantized(q)
    assert all(layer.mode == "inference" for layer in final.layers if isinstance(layer, QuantizedEmbedding))
    np.testing.assert_allclose(final.predict(data.x, verbose=0), q.predict(data.x, verbose=0), atol=5e-3)
    path = export_litert(final, tmp_path / f"{method}.tflite")
    assert check_parity(final, path, data.x[:512], atol=1e-5) <= 1e-5
    costs = embedding_byte_cost(final)
    assert costs["total"] == sum(v for k, v in costs.items() if k != "total")


def test_quantize_and_finetune_chain(trained):
    model, data = trained
    assert set(METHOD_PRESETS) == {"qat", "lpt-dr", "lpt-sr", "alpt", "rowwise"}
    train, valid = Split(data.x[:2400], data.y[:2400]), Split(data.x[2400:], data.y[2400:])
    final, info = quantize_and_finetune(model, train, valid, method="alpt", bits=4, epochs=1, batch_size=512,
                                        table_learning_rate=0.02)
    assert final.get_layer("item_table").learning_rate == 0.02
    layer = final.get_layer("user_table")
    assert layer.mode == "inference" and layer.bits == 4 and layer.learn_step and layer.rounding == "stochastic"
    assert info["layers"] == ["user_table", "item_table"]
    assert info["best_val_auc"] >= info["initial_val_auc"]
    final, info = quantize_and_finetune(model, train, valid, method="rowwise", bits=4, epochs=1, batch_size=512)
    for name in ("user_table", "item_table"):
        layer = final.get_layer(name)
        assert sum(layer.byte_cost().values()) <= uniform_bits_budget(4)(layer)
    assert info["tier_history"] and info["embedding_bytes"]["remap"] == 2 * sum(VOCABS)


def test_swap_in_a_model_with_slicing_ops():
    # ``ids[:, 0]`` makes an operation node (no layer, no weights) in the functional graph.
    ids = keras.Input((3,), dtype="int32", name="ids")
    a = keras.layers.Embedding(50, 4, name="emb_a")(ids[:, 0])
    b = keras.layers.Embedding(60, 4, name="emb_b")(ids[:, 1])
    h = keras.layers.Concatenate()([a, b])
    m = keras.Model(ids, keras.layers.Dense(1, activation="sigmoid", name="head")(h))
    x = np.random.default_rng(0).integers(0, 50, (64, 3)).astype("int32")
    q = quantize_embeddings(m, method="qat", bits=8)
    assert isinstance(q.get_layer("emb_a"), QuantizedEmbedding)
    np.testing.assert_allclose(q.get_layer("head").get_weights()[0], m.get_layer("head").get_weights()[0])
    assert np.abs(q.predict(x, verbose=0) - m.predict(x, verbose=0)).max() < 1e-3
