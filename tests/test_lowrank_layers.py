"""LowRankDense and LowRankEmbedding: maths, rank checks, byte costs, .keras and LiteRT."""

import keras
import numpy as np
import pytest

from keras_ctr_compress.export import assert_builtins_only, check_parity, export_litert, op_counts
from keras_ctr_compress.layers import LowRankDense, LowRankEmbedding, SplitFields


def _built_dense(**kwargs) -> LowRankDense:
    rng = np.random.default_rng(0)
    layer = LowRankDense(5, 3, **kwargs)
    layer.build((None, 7))
    layer.set_weights([rng.normal(size=w.shape).astype("float32") for w in layer.weights])
    return layer


def test_low_rank_dense_matches_numpy():
    layer = _built_dense(activation="relu", middle_activation="relu", use_middle_bias=True)
    x = np.random.default_rng(1).normal(size=(4, 7)).astype("float32")
    u, v, c, b = (w.numpy() for w in (layer.u, layer.v, layer.middle_bias, layer.bias))
    want = np.maximum(np.maximum(x @ u + c, 0) @ v + b, 0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), want, rtol=1e-5, atol=1e-5)


def test_low_rank_embedding_matches_numpy_and_returns_codes():
    layer = LowRankEmbedding(20, 6, 2, return_codes=True)
    layer.build()
    rng = np.random.default_rng(2)
    layer.set_weights([rng.normal(size=w.shape).astype("float32") for w in layer.weights])
    ids = np.array([[0, 19], [3, 3]])
    vectors, codes = (keras.ops.convert_to_numpy(t) for t in layer(ids))
    c, p, mu = layer.codes.numpy(), layer.projection.numpy(), layer.mean.numpy()
    np.testing.assert_array_equal(codes, c[ids])
    np.testing.assert_allclose(vectors, c[ids] @ p + mu, rtol=1e-5, atol=1e-6)
    assert vectors.shape == (2, 2, 6) and codes.shape == (2, 2, 2)


@pytest.mark.parametrize("rank", [0, -2, 2.5, "4", True, None])
def test_bad_ranks_are_refused(rank):
    with pytest.raises(ValueError, match=r"layer 'emb_x'.*rank.*min\(input_dim, output_dim\) = min\(100, 8\) = 8"):
        LowRankEmbedding(100, 8, rank, name="emb_x")
    with pytest.raises(ValueError, match=r"layer 'dnn_1'.*rank"):
        LowRankDense(16, rank, name="dnn_1")


def test_ranks_above_the_bound_name_it():
    with pytest.raises(ValueError, match=r"'emb_x'.* = 8\]\. Received: rank=9"):
        LowRankEmbedding(100, 8, 9, name="emb_x")
    with pytest.raises(ValueError, match=r"'emb_y'.*min\(5, 8\) = 5\]"):
        LowRankEmbedding(5, 8, 6, name="emb_y")
    # the input side is known only when the layer is built
    with pytest.raises(ValueError, match=r"'dnn_1'.*min\(input_dim, units\) = min\(10, 400\) = 10\]\. Received: rank=32"):
        LowRankDense(400, 32, name="dnn_1")(np.ones((2, 10), "float32"))


def test_byte_costs():
    dense = LowRankDense(400, 32, use_middle_bias=True)
    dense.build((None, 400))
    assert dense.byte_cost() == {"kernel_u": 400 * 32 * 4, "kernel_v": 32 * 400 * 4, "bias": (400 + 32) * 4}
    assert LowRankEmbedding(1000, 16, 2).byte_cost() == {"codes": 8000, "projection": 128, "mean": 64}
    with pytest.raises(ValueError, match="built"):
        LowRankDense(4, 2).byte_cost()


def _tiny_model() -> keras.Model:
    ids = keras.Input((2,), dtype="int32", name="ids")
    cols = SplitFields(2, name="split")(ids)
    embs = [LowRankEmbedding(50, 8, 3, name=f"emb_{k}")(c) for k, c in enumerate(cols)]
    flat = keras.layers.Concatenate(name="emb_concat")(embs)
    h = LowRankDense(16, 4, activation="relu", use_middle_bias=True, name="dnn_1")(flat)
    out = keras.layers.Dense(1, activation="sigmoid", name="ctr")(h)
    model = keras.Model(ids, out)
    rng = np.random.default_rng(3)
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.weights])
    return model


def test_keras_round_trip(tmp_path):
    model = _tiny_model()
    ids = np.arange(50, dtype="int32").reshape(25, 2)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.get_layer("emb_0"), LowRankEmbedding)
    assert loaded.get_layer("dnn_1").get_config() == model.get_layer("dnn_1").get_config()
    np.testing.assert_array_equal(loaded.predict(ids, verbose=0), model.predict(ids, verbose=0))


def test_low_rank_dense_exports_as_two_fully_connected(tmp_path):
    x = keras.Input((16,), name="x")
    model = keras.Model(x, _built_dense_on(x))
    path = export_litert(model, tmp_path / "d.tflite")
    # biases, the middle bias and both activations fuse into the two ops
    assert op_counts(path) == {"FULLY_CONNECTED": 2}


def _built_dense_on(x):
    return LowRankDense(8, 4, activation="relu", middle_activation="relu", use_middle_bias=True)(x)


def test_litert_export_parity_and_ops(tmp_path):
    model = _tiny_model()
    path = export_litert(model, tmp_path / "m.tflite")
    assert_builtins_only(path)
    ops = op_counts(path)
    # per table GATHER + FC (projection); low-rank Dense: 2 FC; output Dense: 1 FC
    assert ops.get("GATHER") == 2 and ops.get("FULLY_CONNECTED") == 5, ops
    ids = np.random.default_rng(4).integers(0, 50, (256, 2)).astype("int32")
    assert check_parity(model, path, ids, atol=1e-4) <= 1e-4
