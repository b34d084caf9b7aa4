"""DeepLight pruning: schedule, thresholds, regrow / mask modes, strip_pruning, pair masks, honest sizes."""

import keras
import numpy as np
import pytest

from keras_ctr_compress.compress import (
    DeepLightPruning,
    deeplight_sparsity,
    sparsity_file_savings,
    strip_pruning,
)
from keras_ctr_compress.compress.pruning import (
    KeepSparsity,
    decay_steps_to_reach,
    global_keep_masks,
    magnitude_keep_mask,
    sparsity_report,
)
from keras_ctr_compress.data import Field
from keras_ctr_compress.export import check_parity, export_litert, op_counts, size_breakdown
from keras_ctr_compress.layers import FieldPairInteraction, all_pairs
from keras_ctr_compress.models import build_model

FIELDS = [Field(f"f{i}", 20 + 3 * i) for i in range(6)]
P_ALL = 15


def _data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    x = np.stack([rng.integers(0, f.vocab_size, n) for f in FIELDS], 1).astype("int32")
    y = (rng.random(n) < 0.4).astype("float32")
    return x, y


def _model(seed=0, name="deepfwfm"):
    model = build_model(name, FIELDS, mlp=(16, 8), embedding_dim=4, dropout=0.0, seed=seed)
    rng = np.random.default_rng(seed)
    # Random non-zero weights everywhere (biases and first-order tables included), so
    # that every zero after pruning comes from the pruning.
    model.set_weights([rng.normal(0, 0.3, w.shape).astype(w.dtype) for w in model.get_weights()])
    return model


def _fit(model, callbacks, *, lr=0.0, epochs=1, batch_size=10, n=120):
    x, y = _data(n)
    opt = keras.optimizers.SGD(lr) if lr == 0.0 else keras.optimizers.Adam(lr)
    model.compile(optimizer=opt, loss="binary_crossentropy", run_eagerly=True)
    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, callbacks=callbacks, verbose=0)
    return model


def _zero_share(a):
    return float(np.mean(keras.ops.convert_to_numpy(a) == 0))


# --------------------------------------------------------------------------- schedule


def test_schedule_values_match_formula():
    for t in (0, 1, 10, 100, 1000, 45_800):
        assert deeplight_sparsity(t, 0.9) == pytest.approx(0.9 * (1 - 0.99 ** (t / 100)))
    assert deeplight_sparsity(45_800, 0.9) == pytest.approx(0.99 * 0.9, abs=1e-4)
    assert deeplight_sparsity(50, 0.5, decay_steps=10) == pytest.approx(0.5 * (1 - 0.99**5))
    d = decay_steps_to_reach(200)
    assert deeplight_sparsity(200, 0.8, decay_steps=d) == pytest.approx(0.99 * 0.8)


def test_callback_prunes_every_frequency_steps_after_warmup():
    # 120 rows / 10 = 12 steps per epoch; one warm-up epoch; prunes at t = 5, 10 and
    # the epoch's last step (t = 12), each at S_t of the formula.
    cb = DeepLightPruning(0.9, warmup_epochs=1, frequency=5, decay_steps=4.0)
    _fit(_model(), [cb], epochs=2)
    assert cb.step == 12
    assert [t for t, _ in cb.history] == [5, 10, 12]
    for t, s in cb.history:
        assert s == pytest.approx(0.9 * (1 - 0.99 ** (t / 4.0)))


# --------------------------------------------------------------------------- thresholds


def test_magnitude_masks_exact_count_and_one_global_threshold():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(30, 4))
    keep = magnitude_keep_mask(a, 0.35)
    assert (~keep).sum() == round(0.35 * a.size)
    assert np.abs(a[keep]).min() >= np.abs(a[~keep]).max()
    tables = [rng.normal(0, s, size=(n, 4)) for n, s in ((50, 1.0), (20, 0.1), (10, 3.0))]
    masks = global_keep_masks(tables, 0.5)
    kept = np.concatenate([np.abs(t[m]) for t, m in zip(tables, masks, strict=True)])
    pruned = np.concatenate([np.abs(t[~m]) for t, m in zip(tables, masks, strict=True)])
    assert len(pruned) == round(0.5 * 80 * 4) and kept.min() >= pruned.max()
    # One threshold: the small-scale table loses far more than the large-scale one.
    assert (~masks[1]).mean() > 0.9 and (~masks[2]).mean() < 0.3


def test_thresholds_hit_target_sparsities():
    model = _model()
    before = {w.path: keras.ops.convert_to_numpy(w).copy() for w in model.weights}
    # lr = 0: training leaves the weights alone, only the pruning changes them.
    cb = DeepLightPruning(0.8, emb_r=0.5, emb_corr=0.75, frequency=4, snap_to_target=True)
    _fit(model, [cb])
    assert cb.history[-1] == (12, 0.8)
    for name in ("dnn_0", "dnn_1"):  # own threshold per kernel
        k = model.get_layer(name).kernel
        assert _zero_share(k) == pytest.approx(round(0.8 * np.prod(k.shape)) / np.prod(k.shape))
    tables = [model.get_layer(f"emb_{f.name}").embeddings for f in FIELDS]
    n = sum(np.prod(t.shape) for t in tables)
    zeros = sum(np.sum(keras.ops.convert_to_numpy(t) == 0) for t in tables)
    assert zeros == round(0.4 * n)  # one global threshold at S * emb_r
    r = model.get_layer("pairs").r.numpy()
    r_sym = 0.5 * (r + r.T)
    pruned_pairs = [(i, j) for i, j in all_pairs(6) if r_sym[i, j] == 0]
    assert len(pruned_pairs) == round(0.6 * P_ALL)
    assert all(r[i, j] == 0 and r[j, i] == 0 for i, j in pruned_pairs)  # a pair as a whole
    # Untouched: biases, the 1-unit output layer, first-order tables.
    for w in model.weights:
        if w.path.endswith("bias") or "dnn_out" in w.path or w.path.startswith("lin_"):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), before[w.path])


def _track_zeros(mode):
    """Zeros of dnn_0 after each step of one 12-step epoch pruned at t = 5, 10, 12."""
    seen = []
    probe = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: seen.append(keras.ops.convert_to_numpy(model.get_layer("dnn_0").kernel) == 0)
    )
    model = _model()
    cb = DeepLightPruning(0.5, frequency=5, decay_steps=2.0, mode=mode)
    _fit(model, [cb, probe], lr=0.05)
    return seen


def test_mask_mode_keeps_pruned_weights_at_zero_between_prunes():
    seen = _track_zeros("mask")
    for step in range(5, 9):  # steps 6..9 (0-based 5..8): after the prune at step 5
        assert seen[step][seen[4]].all()


def test_regrow_mode_lets_pruned_weights_regrow():
    seen = _track_zeros("regrow")
    assert seen[4].sum() > 0
    assert not seen[5][seen[4]].all()  # one Adam step later some pruned weights are back
    assert seen[9].sum() >= seen[4].sum()  # and the next prune zeroes again


@pytest.mark.parametrize(
    "kwargs, msg",
    [({"target_sparsity": 1.0}, "target_sparsity"), ({"target_sparsity": -0.1}, "target_sparsity"),
     ({"target_sparsity": "0.5"}, "target_sparsity"), ({"mode": "soft"}, "mode"),
     ({"emb_r": -1.0}, "emb_r"), ({"emb_corr": 2.0}, "emb_corr"), ({"frequency": 0}, "frequency"),
     ({"warmup_epochs": -1}, "warmup_epochs"), ({"decay_steps": 0}, "decay_steps")],
)
def test_bad_arguments(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        DeepLightPruning(**kwargs)


def test_unknown_dnn_layer_is_a_clear_error():
    with pytest.raises(ValueError, match="no layer 'dnn_7'"):
        _fit(_model(), [DeepLightPruning(0.5, dnn_layers=["dnn_7"])])


# --------------------------------------------------------------------------- strip + export


@pytest.fixture(scope="module")
def pruned_pair():
    model = _model()
    _fit(model, [DeepLightPruning(0.8, emb_r=0.5, frequency=4, mode="mask", snap_to_target=True)])
    return model, strip_pruning(model)


def test_strip_pruning_plain_model_with_equal_outputs(pruned_pair, tmp_path):
    model, plain = pruned_pair
    x, _ = _data(200, seed=1)
    np.testing.assert_allclose(plain.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    layer = plain.get_layer("pairs")
    assert layer.pairs is not None and len(layer.pairs) == P_ALL - round(0.8 * P_ALL)
    assert not any(isinstance(c, DeepLightPruning) for c in plain.layers)
    assert sparsity_report(plain)["dnn"]["dnn_0"] == pytest.approx(0.8, abs=0.01)
    plain.save(tmp_path / "p.keras")
    loaded = keras.saving.load_model(tmp_path / "p.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), plain.predict(x, verbose=0), atol=1e-7)


def test_pair_pruning_removes_pairs_from_the_export(pruned_pair, tmp_path):
    model, plain = pruned_pair
    dense_path = export_litert(_model(), tmp_path / "dense.tflite")
    path = export_litert(plain, tmp_path / "pruned.tflite")
    x, _ = _data(300, seed=2)
    assert check_parity(plain, path, x) <= 1e-4
    kept = len(plain.get_layer("pairs").pairs)
    # The dense FwFM term is one F x F batched matmul; the pruned one gathers the kept pairs.
    assert op_counts(dense_path).get("BATCH_MATMUL", 0) >= 1
    assert op_counts(path).get("BATCH_MATMUL", 0) == 0 and op_counts(path).get("GATHER", 0) >= 2
    index_shapes = [t.shape for t in size_breakdown(path).tensors if t.dtype == "int32"]
    assert (kept,) in index_shapes and (P_ALL,) not in index_shapes


def test_sparsity_savings_are_bytes_only_and_drq_is_refused(pruned_pair, tmp_path):
    _, plain = pruned_pair
    with pytest.raises(ValueError, match="wrong outputs"):
        sparsity_file_savings(plain, tmp_path, quantization="drq")
    with pytest.raises(ValueError, match="wrong outputs"):
        export_litert(plain, tmp_path / "bad.tflite", quantization="drq", sparsity=True)
    x, _ = _data(100, seed=3)
    report = sparsity_file_savings(plain, tmp_path, check_x=x)
    assert report["tflite_gzip_bytes"] < report["tflite_bytes"]
    assert report["sparse_parity_max_abs"] <= 1e-4
    assert report["zero_fraction"] > 0.3


def test_keep_sparsity_holds_zeros_while_fine_tuning(pruned_pair):
    _, plain = pruned_pair
    model = keras.models.clone_model(plain)
    model.set_weights(plain.get_weights())
    zeros = keras.ops.convert_to_numpy(model.get_layer("dnn_0").kernel) == 0
    _fit(model, [KeepSparsity()], lr=0.05)
    assert (keras.ops.convert_to_numpy(model.get_layer("dnn_0").kernel)[zeros] == 0).all()


# --------------------------------------------------------------------------- pair mask


@pytest.mark.parametrize("mode", ["fm", "fwfm"])
def test_pair_mask_equals_explicit_pair_list(mode, tmp_path):
    rng = np.random.default_rng(0)
    v = rng.normal(size=(9, 5, 3)).astype("float32")
    kept = [(0, 2), (1, 4), (3, 4)]
    masked = FieldPairInteraction(5, mode=mode, use_mask=True)
    masked.build(v.shape)
    if mode == "fwfm":
        masked.r.assign(rng.normal(size=(5, 5)).astype("float32"))
    masked.set_pair_mask(kept)
    listed = FieldPairInteraction(5, mode=mode, pairs=kept)
    listed.build(v.shape)
    if mode == "fwfm":
        listed.r.assign(masked.r)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(masked(v)), keras.ops.convert_to_numpy(listed(v)), atol=1e-5)
    assert masked.surviving_pairs() == kept
    clone = FieldPairInteraction.from_config(masked.get_config())
    assert clone.use_mask and clone.get_config() == masked.get_config()


def test_pair_mask_round_trips_and_strips_to_a_pair_list(tmp_path):
    inp = keras.Input((4, 3))
    layer = FieldPairInteraction(4, mode="fwfm", use_mask=True, name="pairs")
    model = keras.Model(inp, layer(inp))
    layer.r.assign(np.random.default_rng(0).normal(size=(4, 4)).astype("float32"))
    layer.set_pair_mask([(0, 1), (2, 3)])
    v = np.random.default_rng(1).normal(size=(6, 4, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded(v), model(v), atol=1e-6)
    plain = strip_pruning(model)
    assert plain.get_layer("pairs").pairs == [(0, 1), (2, 3)] and not plain.get_layer("pairs").use_mask
    np.testing.assert_allclose(plain(v), model(v), atol=1e-6)
    with pytest.raises(ValueError, match="use_mask=False"):
        FieldPairInteraction(4).set_pair_mask([(0, 1)])
