"""QuantizedEmbedding (QAT / LPT / inference) and RowwiseQuantEmbedding: maths, training, saving."""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ctr_compress.layers import QuantizedEmbedding, RowwiseQuantEmbedding, SplitFields
from keras_ctr_compress.layers import quant_ops as q
from keras_ctr_compress.layers.quantized_embedding import lpt_training_bytes


def _lookup_model(layer, input_shape=()):
    ids = keras.Input(input_shape, dtype="int32", name="ids")
    return keras.Model(ids, layer(ids))


def _toy_data(vocab=40, n=1200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, vocab, size=(n,)).astype("int32")
    y = (rng.normal(size=vocab)[x] > 0).astype("float32")
    return x, y


def _ctr_model(layer):
    ids = keras.Input((), dtype="int32", name="ids")
    out = keras.layers.Dense(1, activation="sigmoid", name="head")(layer(ids))
    return keras.Model(ids, out)


# ---------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"bits": 0}, "bits"),
        ({"bits": 9}, "bits"),
        ({"bits": 1}, "bits"),
        ({"granularity": "column"}, "granularity"),
        ({"mode": "train"}, "mode"),
        ({"rounding": "nearest"}, "rounding"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"step_optimizer": "rmsprop"}, "step_optimizer"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"learn_step": 1}, "learn_step"),
        ({"step_init": "max"}, "step_init"),
    ],
)
def test_quantized_embedding_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantizedEmbedding(10, 4, **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tiers": ("int4", "int8")}, "most to least precise"),
        ({"tiers": ("int9",)}, "unknown tier"),
        ({"tiers": ("pruned",)}, "stored tier"),
        ({"fractions": (0.5, 0.6, 0, 0, 0)}, "fractions"),
        ({"fractions": (0.5, 0.5)}, "fractions"),
        ({"fractions": (1, 0, 0, 0, 0), "byte_budget": 100}, "not both"),
        ({"gamma": 0.0}, "gamma"),
        ({"oov_index": 10}, "oov_index"),
        ({"mode": "inference"}, "tier_sizes"),
        ({"mode": "packed"}, "mode"),
    ],
)
def test_rowwise_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RowwiseQuantEmbedding(10, 4, **kwargs)


def test_rowwise_budget_below_minimum():
    layer = RowwiseQuantEmbedding(100, 4, tiers=("int8", "int4"))
    layer.build()
    with pytest.raises(ValueError, match="smallest size"):
        layer.assign_tiers(byte_budget=10)


# ---------------------------------------------------------------------------- QAT


def test_qat_trains_shadow_table_and_step():
    x, y = _toy_data()
    layer = QuantizedEmbedding(40, 4, bits=4, mode="qat", embeddings_initializer="random_normal", name="emb")
    model = _ctr_model(layer)
    model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy")
    step0 = layer.step.numpy().copy()
    hist = model.fit(x, y, batch_size=100, epochs=3, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert layer.step.trainable and not np.allclose(layer.step.numpy(), step0)
    # The inference forward pass is the deterministic fake quantiser of the shadow table.
    out = keras.ops.convert_to_numpy(layer(np.arange(40)))
    np.testing.assert_allclose(out, layer.dequantized_weights(), rtol=1e-6, atol=1e-7)
    final = layer.finalize()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(final(np.arange(40))), out)


# ---------------------------------------------------------------------------- LPT


@pytest.mark.parametrize("lr_scale", [1.0, 0.1])
def test_lpt_one_step_matches_numpy_reference(lr_scale):
    vocab, dim, bits, lr, step_lr = 6, 4, 4, 0.5, 0.01
    layer = QuantizedEmbedding(
        vocab, dim, bits=bits, mode="lpt", optimizer="sgd", learning_rate=lr, learn_step=True,
        step_optimizer="sgd", step_learning_rate=step_lr, rounding="deterministic",
        embeddings_initializer=keras.initializers.RandomNormal(stddev=0.5, seed=1), name="emb",
    )
    model = _lookup_model(layer)
    model.compile(keras.optimizers.SGD(0.0), "mse")
    layer.set_learning_rate_scale(lr_scale)  # a decayed run: both learning rates scaled
    lr, step_lr = lr * lr_scale, step_lr * lr_scale
    c0, d0 = layer.codes.numpy().astype("float32"), layer.step.numpy().copy()
    ids = np.array([0, 2, 2, 5, 3], "int32")
    target = np.random.default_rng(0).normal(size=(5, dim)).astype("float32")
    model.fit(ids, target, batch_size=5, epochs=1, shuffle=False, verbose=0)

    qn, qp = q.qrange(bits)
    out = c0[ids] * d0[ids, None]
    upstream = 2 * (out - target) / (ids.size * dim)  # Keras MSE: mean over dims and batch
    uniq = np.unique(ids)
    grads = np.stack([upstream[ids == u].sum(0) for u in uniq])
    w_new = c0[uniq] * d0[uniq, None] - lr * grads
    v = w_new / d0[uniq, None]
    dq = np.where(v < qn, qn, np.where(v > qp, qp, np.floor(v + 0.5) - v))
    g_step = (grads * dq).sum(1) / np.sqrt(ids.size * dim * qp)
    d1 = d0.copy()
    d1[uniq] = np.maximum(np.abs(d0[uniq] - step_lr * g_step), q.MIN_STEP)
    c1 = c0.copy()
    c1[uniq] = np.clip(np.floor(w_new / d1[uniq, None] + 0.5), qn, qp)

    np.testing.assert_allclose(layer.step.numpy(), d1, rtol=1e-5)
    np.testing.assert_array_equal(layer.codes.numpy(), c1)
    assert int(layer.iterations.numpy()) == 1


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_lpt_skipped_rows_get_the_l2_decay_lazily_numpy_reference(optimizer):
    """A row a step skips is decayed by (1 - 2 l2 eta) per skipped step, read decayed by
    forward passes, and materialised (then updated) at its next lookup."""
    vocab, dim, bits, lr, l2 = 5, 3, 8, 0.1, 0.05
    layer = QuantizedEmbedding(
        vocab, dim, bits=bits, mode="lpt", optimizer=optimizer, learning_rate=lr, learn_step=False, granularity="table",
        rounding="deterministic", embeddings_regularizer=keras.regularizers.L2(l2),
        embeddings_initializer=keras.initializers.RandomNormal(stddev=0.5, seed=3), name="emb",
    )
    model = _lookup_model(layer)
    model.compile(keras.optimizers.SGD(0.0), "mse")
    assert layer.training_byte_cost()["decay_counter"] == 4 * vocab
    qn, qp = q.qrange(bits)
    d = float(layer.step.numpy())
    codes = layer.codes.numpy().astype("float64")
    acc = np.zeros(vocab)
    last = np.zeros(vocab, "int64")
    rng = np.random.default_rng(1)

    def eta(rows):
        return lr / (np.sqrt(acc[rows]) + 1e-8) if optimizer == "adagrad" else np.full(len(rows), lr)

    def pending(rows, t):
        return np.clip(1 - 2 * l2 * eta(rows), 0, 1) ** (t - last[rows])

    for t, ids in enumerate([np.array([0, 1, 3]), np.array([0, 0]), np.array([0]), np.array([1, 4, 3])]):
        # Forward passes read the decayed rows (row 1 is owed steps 2 and 3 at t = 3).
        w_all = codes * d * pending(np.arange(vocab), t)[:, None]
        np.testing.assert_allclose(layer.dequantized_weights(), w_all, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(np.arange(vocab))), w_all, rtol=1e-5, atol=1e-7)
        target = rng.normal(size=(ids.size, dim))
        model.fit(ids.astype("int32"), target.astype("float32"), batch_size=ids.size, epochs=1, shuffle=False,
                  verbose=0)
        upstream = 2 * (w_all[ids] - target) / (ids.size * dim)
        uniq = np.unique(ids)
        w = w_all[uniq]
        grads = np.stack([upstream[ids == u].sum(0) for u in uniq]) + 2 * l2 * w
        if optimizer == "adagrad":
            acc[uniq] += np.mean(grads**2, axis=1)
        w_new = w - eta(uniq)[:, None] * grads
        codes[uniq] = np.clip(np.floor(w_new / d + 0.5), qn, qp)
        last[uniq] = t + 1
        np.testing.assert_array_equal(layer.codes.numpy(), codes)
        np.testing.assert_array_equal(layer.last_update.numpy(), last)
    assert np.any(pending(np.arange(vocab), 4) < 1)  # rows 0 and 2 are owed decay at the end
    # finalize() ships the decayed table (rounded to the step grid).
    np.testing.assert_allclose(layer.finalize().dequantized_weights(), layer.dequantized_weights(), atol=d / 2 + 1e-7)


def test_lpt_skipped_row_decay_off_or_without_l2_keeps_rows_as_stored():
    ids = np.array([0, 1], "int32")
    for kwargs in ({"embeddings_regularizer": keras.regularizers.L2(0.1), "skipped_row_decay": False},
                   {"embeddings_regularizer": keras.regularizers.L1(0.1)}, {}):
        layer = QuantizedEmbedding(4, 2, mode="lpt", optimizer="sgd", learning_rate=0.5,
                                   embeddings_initializer="random_normal", name="emb", **kwargs)
        model = _lookup_model(layer)
        model.compile(keras.optimizers.SGD(0.0), "mse")
        model.fit(ids, np.zeros((2, 2), "float32"), batch_size=2, epochs=3, verbose=0)
        assert not hasattr(layer, "last_update")
        assert layer.training_byte_cost()["decay_counter"] == 0
        stored = layer.codes.numpy().astype("float32") * layer.step.numpy()[:, None]
        np.testing.assert_allclose(layer.dequantized_weights(), stored)


def test_decay_on_plateau_decays_the_lpt_table_learning_rate_with_the_optimizer():
    from keras_ctr_compress.models.training import DecayOnPlateau

    layer = QuantizedEmbedding(40, 4, mode="lpt", embeddings_initializer="random_normal", name="emb")
    qat = QuantizedEmbedding(40, 4, mode="qat", name="qat_emb")
    ids = keras.Input((2,), dtype="int32")
    flat = keras.layers.Flatten()
    h = keras.layers.Concatenate()([flat(layer(ids)), flat(qat(ids))])
    model = keras.Model(ids, keras.layers.Dense(1, activation="sigmoid")(h))
    model.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy")
    early = DecayOnPlateau(patience=1, decays=2, factor=0.1)
    early.set_model(model)
    early.on_train_begin()
    scales = []
    for epoch, auc in enumerate([0.7, 0.6, 0.6, 0.6]):  # best at epoch 0, then plateaus
        early.on_epoch_end(epoch, {"val_auc": auc})
        scales.append(float(layer.learning_rate_scale.numpy()))
    # each decay restores epoch 0's weights (scale 1 then) and sets scale factor**n
    np.testing.assert_allclose(scales, [1.0, 0.1, 0.01, 0.01])
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)), 1e-4, rtol=1e-6)
    assert model.stop_training
    layer.reset_optimizer_state()
    assert float(layer.learning_rate_scale.numpy()) == 1.0
    with pytest.raises(ValueError, match="scale"):
        layer.set_learning_rate_scale(0.0)


def test_lpt_rowwise_adagrad_has_one_accumulator_per_row():
    layer = QuantizedEmbedding(8, 3, bits=8, mode="lpt", optimizer="adagrad", learn_step=False,
                               rounding="deterministic", name="emb")
    model = _lookup_model(layer)
    model.compile("sgd", "mse")
    ids = np.array([1, 1, 4], "int32")
    target = np.ones((3, 3), "float32")
    out = layer.dequantized_weights()[ids]
    upstream = 2 * (out - target) / 9
    g1, g4 = upstream[:2].sum(0), upstream[2]
    model.fit(ids, target, batch_size=3, epochs=1, verbose=0)
    acc = layer.accumulator.numpy()
    assert acc.shape == (8,)
    np.testing.assert_allclose(acc[[1, 4]], [np.mean(g1**2), np.mean(g4**2)], rtol=1e-5)
    assert np.all(acc[[0, 2, 3, 5, 6, 7]] == 0)
    assert layer.training_byte_cost() == lpt_training_bytes(8, 3, "row", "adagrad", False)
    assert layer.training_byte_cost()["optimizer"] == 4 * 8


@pytest.mark.parametrize("granularity", ["row", "table"])
def test_lpt_table_is_int8_during_and_after_fit_and_loss_drops(granularity):
    x, y = _toy_data()
    layer = QuantizedEmbedding(40, 4, bits=4, mode="lpt", granularity=granularity, learning_rate=0.1,
                               embeddings_initializer="random_normal", name="emb")
    model = _ctr_model(layer)
    model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy")
    seen = []

    class Check(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append((layer.codes.dtype, layer.codes.value.dtype, layer.codes.trainable))

    codes0 = layer.codes.numpy().copy()
    hist = model.fit(x, y, batch_size=100, epochs=4, verbose=0, callbacks=[Check()])
    assert hist.history["loss"][-1] < 0.8 * hist.history["loss"][0]
    assert seen and all(s == ("int8", tf.int8, False) for s in seen)
    assert layer.codes.dtype == "int8" and not np.array_equal(layer.codes.numpy(), codes0)
    # No float copy of the table anywhere in the model.
    assert not [w for w in model.weights if tuple(w.shape) == (40, 4) and "float" in str(w.dtype)]
    assert layer.lpt_anchor.numpy() == 0.0
    # Inference forward = codes x step.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(np.arange(40))), layer.dequantized_weights(),
                               rtol=1e-6)


def test_lpt_frozen_layer_is_not_updated_and_evaluate_does_not_update():
    x, y = _toy_data()
    layer = QuantizedEmbedding(40, 4, mode="lpt", embeddings_initializer="random_normal", name="emb")
    model = _ctr_model(layer)
    model.compile("adam", "binary_crossentropy")
    codes0 = layer.codes.numpy().copy()
    model.evaluate(x, y, verbose=0)
    np.testing.assert_array_equal(layer.codes.numpy(), codes0)
    layer.trainable = False
    model.compile("adam", "binary_crossentropy")
    model.fit(x, y, batch_size=200, epochs=1, verbose=0)
    np.testing.assert_array_equal(layer.codes.numpy(), codes0)


def test_lpt_under_mirrored_strategy_on_cpu():
    x, y = _toy_data()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        layer = QuantizedEmbedding(40, 4, bits=4, mode="lpt", learning_rate=0.1,
                                   embeddings_initializer="random_normal", name="emb")
        model = _ctr_model(layer)
        model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy")
    codes0 = layer.codes.numpy().copy()
    hist = model.fit(x, y, batch_size=100, epochs=2, verbose=0)
    assert np.isfinite(hist.history["loss"]).all()
    assert layer.codes.dtype == "int8" and not np.array_equal(layer.codes.numpy(), codes0)


_TWO_REPLICAS = textwrap.dedent(
    """
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    from keras_ctr_compress.layers import QuantizedEmbedding

    def run(strategy):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            ids = keras.Input((), dtype="int32")
            layer = QuantizedEmbedding(20, 4, bits=8, mode="lpt", optimizer="sgd", learning_rate=1.0,
                                       rounding="deterministic", step_optimizer="sgd",
                                       step_learning_rate=1e-3, seed=0,
                                       embeddings_initializer=keras.initializers.RandomNormal(0.3, seed=1))
            model = keras.Model(ids, keras.layers.Dense(1, kernel_initializer="ones", name="head")(layer(ids)))
            model.compile(keras.optimizers.SGD(0.0), "mse")
        x = np.arange(16, dtype="int32") % 20
        y = np.linspace(-1, 1, 16).astype("float32")
        codes0 = layer.codes.numpy().copy()
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        assert (layer.codes.numpy() != codes0).sum() > 10
        return layer.codes.numpy(), layer.step.numpy()

    c1, s1 = run(tf.distribute.get_strategy())
    c2, s2 = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    assert c2.dtype == np.int8
    print("MAXDIFF", int(np.abs(c1.astype(int) - c2.astype(int)).max()), float(np.abs(s1 - s2).max()))
    """
)


def test_lpt_two_replicas_match_one_device():
    res = subprocess.run([sys.executable, "-c", _TWO_REPLICAS], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("MAXDIFF")][-1]
    code_diff, step_diff = line.split()[1:]
    assert int(code_diff) <= 1 and float(step_diff) < 1e-6, line


# ---------------------------------------------------------------------------- RowwiseQuantEmbedding


def test_priorities_decay_and_click_increments():
    layer = RowwiseQuantEmbedding(5, 2, gamma=0.5, a_pos=1.0, a_neg=0.25)
    layer.build()
    layer.update_priorities(np.array([0, 1, 1]), np.array([1, 0, 1]))
    np.testing.assert_allclose(layer.priority.numpy(), [1.0, 1.25, 0, 0, 0])
    layer.update_priorities(np.array([[2, 1]]), np.array([0]))  # (n, k) ids share the sample's label
    np.testing.assert_allclose(layer.priority.numpy(), [0.5, 0.625 + 0.25, 0.25, 0, 0])
    # batch_size: one decay per batch, the same as one call per batch.
    a, b = RowwiseQuantEmbedding(5, 2, gamma=0.9), RowwiseQuantEmbedding(5, 2, gamma=0.9)
    ids, labels = np.array([0, 3, 3, 4, 1, 0, 2]), np.array([1, 0, 1, 0, 0, 1, 1])
    a.update_priorities(ids, labels, batch_size=3)
    for s in range(0, 7, 3):
        b.update_priorities(ids[s:s + 3], labels[s:s + 3])
    np.testing.assert_allclose(a.priority.numpy(), b.priority.numpy(), rtol=1e-6)


def test_tier_fractions_follow_priority_and_pruned_rows_read_oov():
    rng = np.random.default_rng(0)
    layer = RowwiseQuantEmbedding(100, 6, tiers=("fp16", "int4", "pruned"), fractions=(0.2, 0.5, 0.3))
    layer.build()
    layer.set_float_weights(rng.normal(size=(100, 6)))
    layer.update_priorities(np.repeat(np.arange(100), np.arange(100)), np.zeros(4950))
    counts = layer.assign_tiers()
    assert counts.tolist() == [20, 50, 30]
    tier = layer.tier.numpy()
    assert tier[0] == 0 and np.all(tier[81:] == 0) and np.all(tier[1:30] == 2)
    out = keras.ops.convert_to_numpy(layer(np.array([5, 0, 99, 50])))
    np.testing.assert_array_equal(out[0], out[1])  # pruned id 5 -> OOV row 0
    final = layer.finalize()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(final(np.array([5, 0, 99, 50]))), out)
    np.testing.assert_array_equal(final.dequantized_weights(), layer.dequantized_weights())
    assert final.byte_cost() == layer.byte_cost()
    assert final.byte_cost() == {"codes": 50 * 3, "scales": 50 * 2, "remap": 100 * 2, "weights": 20 * 12}


def test_tier_budget_is_met_and_spends_it_where_priority_is():
    rng = np.random.default_rng(1)
    layer = RowwiseQuantEmbedding(400, 8)
    layer.build()
    layer.set_float_weights(rng.normal(size=(400, 8)))
    ids = np.minimum(rng.zipf(1.5, size=5000), 399)
    layer.update_priorities(ids, rng.random(5000) < 0.3)
    errors = []
    for budget in (1600, 3000, 5000, 8000):
        layer.assign_tiers(byte_budget=budget)
        assert sum(layer.byte_cost().values()) <= budget
        errors.append(float(np.sum(layer.priority.numpy()[:, None]
                                   * (layer.dequantized_weights() - layer.embeddings.numpy()) ** 2)))
    assert errors == sorted(errors, reverse=True)
    layer.assign_tiers(byte_budget=3000)
    tier, p = layer.tier.numpy(), layer.priority.numpy()
    # Pruned rows were (nearly) never seen; the most precise tiers hold the frequent rows.
    assert p[tier == 4].mean() < 1.0 < p[tier <= 1].mean()
    # Everything fits in fp16: no remap-worthy split is forced.
    layer.assign_tiers(byte_budget=8000)
    assert layer.tier_counts().tolist() == [400, 0, 0, 0, 0]


def test_rowwise_trains_with_straight_through_gradients():
    x, y = _toy_data()
    layer = RowwiseQuantEmbedding(40, 4, tiers=("int8", "int2", "pruned"), fractions=(0.5, 0.3, 0.2),
                                  embeddings_initializer="random_normal", name="emb")
    model = _ctr_model(layer)
    layer.update_priorities(x, y)
    layer.assign_tiers()
    model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy")
    hist = model.fit(x, y, batch_size=100, epochs=3, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]


# ---------------------------------------------------------------------------- .keras round trip


def _all_states_model():
    rng = np.random.default_rng(0)
    ids = keras.Input((2,), dtype="int32", name="ids")
    a, b = SplitFields(2, name="split")(ids)
    layers = [
        QuantizedEmbedding(30, 4, bits=4, mode="qat", name="emb_qat"),
        QuantizedEmbedding(30, 5, bits=2, mode="lpt", granularity="table", name="emb_lpt_t"),
        QuantizedEmbedding(30, 3, bits=8, mode="lpt", optimizer="sgd", embeddings_regularizer=keras.regularizers.L2(1e-2),
                           name="emb_lpt_r"),
        RowwiseQuantEmbedding(30, 4, tiers=("fp16", "int4", "int2", "pruned"), fractions=(0.2, 0.3, 0.3, 0.2),
                              name="emb_rw"),
    ]
    outs = [layer(a if i % 2 else b) for i, layer in enumerate(layers)]
    flat = keras.layers.Concatenate()([keras.layers.Flatten()(o) for o in outs])
    model = keras.Model(ids, keras.layers.Dense(1, activation="sigmoid", name="head")(flat))
    x = rng.integers(0, 30, size=(600, 2)).astype("int32")
    y = (rng.random(600) < 0.4).astype("float32")
    layers[3].update_priorities(x[:, 1], y)
    layers[3].assign_tiers()
    return model, x, y


def _assert_same(m1, m2, x):
    np.testing.assert_array_equal(m1.predict(x, verbose=0), m2.predict(x, verbose=0))
    for w1, w2 in zip(m1.weights, m2.weights, strict=True):
        assert w1.path == w2.path and str(w1.dtype) == str(w2.dtype)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(w1), keras.ops.convert_to_numpy(w2))


def test_keras_round_trip_all_states(tmp_path):
    from keras_ctr_compress.compress import finalize_quantized

    model, x, y = _all_states_model()
    model.compile("adam", "binary_crossentropy")
    model.fit(x, y, batch_size=100, epochs=1, verbose=0)
    model.save(tmp_path / "train.keras")
    loaded = keras.saving.load_model(tmp_path / "train.keras")
    _assert_same(model, loaded, x)
    lpt = loaded.get_layer("emb_lpt_r")
    assert lpt.codes.dtype == "int8" and int(lpt.iterations.numpy()) == 6
    assert lpt.last_update.dtype == "int32" and int(lpt.last_update.numpy().max()) == 6
    final = finalize_quantized(model)
    assert all(layer.mode == "inference" for layer in final.layers if layer.name.startswith("emb_"))
    final.save(tmp_path / "final.keras")
    _assert_same(final, keras.saving.load_model(tmp_path / "final.keras"), x)
    # Training continues after loading (optimizer state and LPT state restored).
    loaded.compile("adam", "binary_crossentropy")
    loaded.fit(x, y, batch_size=100, epochs=1, verbose=0)
    assert int(lpt.iterations.numpy()) == 12


def test_get_config_round_trip():
    for layer in (
        QuantizedEmbedding(7, 3, bits=3, granularity="table", rounding="deterministic", learn_step=False,
                           mode="lpt", optimizer="sgd", learning_rate=0.2, step_learning_rate=1e-4,
                           step_optimizer="sgd", step_init="mse", seed=4, embeddings_regularizer="l2",
                           skipped_row_decay=False),
        RowwiseQuantEmbedding(7, 3, tiers=("int8", "pruned"), byte_budget=100, gamma=0.9, a_pos=2.0, a_neg=0.1,
                              oov_index=2),
        RowwiseQuantEmbedding(7, 3, tiers=("int8", "int2"), mode="inference", tier_sizes=(3, 4)),
    ):
        config = layer.get_config()
        assert type(layer).from_config(config).get_config() == config
