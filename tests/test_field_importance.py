"""SHARK field importance (Taylor vs brute force, permutation) and field pruning."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ctr_compress.compress import (
    drop_fields,
    field_importance,
    model_field_names,
    prune_fields,
    select_fields,
)
from keras_ctr_compress.compress.field_importance import field_lookups
from keras_ctr_compress.data import CTRDataset, Field, Split
from keras_ctr_compress.export import check_parity, export_litert, size_breakdown
from keras_ctr_compress.models import build_model

# Distinct vocabulary sizes: each table is recognisable by its shape in the export.
FIELDS = [Field(f"f{i}", 11 + 4 * i) for i in range(5)]


def _x(n, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, f.vocab_size, n) for f in FIELDS], 1).astype("int32")


def _model(name="deepfwfm", seed=0, scale=0.3):
    model = build_model(name, FIELDS, mlp=(6,), embedding_dim=3, seed=seed)
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, scale, w.shape).astype(w.dtype) for w in model.get_weights()])
    return model


def _dataset(n=900, seed=0):
    """Labels driven by fields 0 and 2 (strongly) and 1 (weakly); 3 and 4 are noise."""
    rng = np.random.default_rng(seed)
    x = _x(n, seed)
    effects = [rng.normal(0, s, f.vocab_size) for f, s in zip(FIELDS, (1.5, 0.5, 1.5, 0, 0), strict=True)]
    logit = sum(e[x[:, i]] for i, e in enumerate(effects))
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("float32")
    a, b = int(0.7 * n), int(0.85 * n)
    return CTRDataset("toy", FIELDS, Split(x[:a], y[:a]), Split(x[a:b], y[a:b]), Split(x[b:], y[b:]))


def _brute_force_taylor(model, x, y):
    """Per-sample gradients one sample at a time, read from the TABLES' gradients (an
    independent route: with one sample, row x_if of table f's gradient is dL/de_f)."""
    lookups = field_lookups(model)
    tables = [[layer.embeddings for layer in layers] for layers in lookups]
    rows = [[keras.ops.convert_to_numpy(t)[x[:, f]] for t in ts] for f, ts in enumerate(tables)]
    means = [[r.mean(axis=0) for r in rs] for rs in rows]
    scores = np.zeros(len(lookups))
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            p = model(x[i : i + 1], training=False)
            loss = keras.losses.binary_crossentropy(y[i : i + 1].reshape(1, 1), p)
        grads = tape.gradient(loss, [t for ts in tables for t in ts])
        k = 0
        for f, ts in enumerate(tables):
            dot = 0.0
            for j, _ in enumerate(ts):
                g = tf.convert_to_tensor(grads[k]).numpy()[x[i, f]]
                dot += float(np.sum(g * (means[f][j] - rows[f][j][i])))
                k += 1
            scores[f] += abs(dot)
    return scores / len(x)


@pytest.mark.parametrize("name", ["deepfwfm", "deepfm"])
def test_taylor_equals_brute_force_per_sample(name):
    model = _model(name)
    x = _x(40, seed=1)
    y = (np.arange(40) % 3 == 0).astype("float32")
    got = field_importance(model, (x, y), "taylor", batch_size=16)
    np.testing.assert_allclose(got, _brute_force_taylor(model, x, y), rtol=1e-4, atol=1e-7)


def test_permutation_importance_is_the_exact_auc_drop():
    from sklearn.metrics import roc_auc_score

    model = _model(scale=0.6)
    x = _x(300, seed=2)
    y = (np.random.default_rng(3).random(300) < 0.4).astype("float32")
    got = field_importance(model, Split(x, y), "permutation", seed=7)
    rng = np.random.default_rng(7)
    base = roc_auc_score(y, model.predict(x, verbose=0).ravel())
    want = []
    for f in range(5):
        xp = x.copy()
        xp[:, f] = rng.permutation(xp[:, f])
        want.append(base - roc_auc_score(y, model.predict(xp, verbose=0).ravel()))
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_baselines_and_bad_arguments():
    model = _model()
    x = _x(50)
    norms = field_importance(model, x, "norm")
    emb = [keras.ops.convert_to_numpy(model.get_layer(f"emb_{f.name}").embeddings)[x[:, i]] for i, f in enumerate(FIELDS)]
    np.testing.assert_allclose(norms, [np.linalg.norm(e, axis=1).mean() for e in emb], rtol=1e-5)
    r = field_importance(model, x, "random", seed=3)
    assert r.shape == (5,) and np.array_equal(r, field_importance(model, x, "random", seed=3))
    with pytest.raises(ValueError, match="method"):
        field_importance(model, x, "shapley")
    with pytest.raises(ValueError, match="needs labels"):
        field_importance(model, x, "taylor")
    with pytest.raises(ValueError, match="columns"):
        field_importance(model, x[:, :4], "norm")


def test_select_fields():
    ds = _dataset(100)
    sub = select_fields(ds, [0, 3])
    assert [f.name for f in sub.fields] == ["f0", "f3"] and sub.train.x.shape[1] == 2
    np.testing.assert_array_equal(sub.valid.x, ds.valid.x[:, [0, 3]])
    assert select_fields(ds.test, [4]).x.shape == (len(ds.test), 1)
    for bad, msg in (([], "every field"), ([1, 1], "duplicates"), ([5], "out of range")):
        with pytest.raises(ValueError, match=msg):
            select_fields(ds.test.x, bad)


def test_dropped_fields_have_no_table_input_or_weights(tmp_path):
    model = _model()
    kept = [0, 2, 3]
    small = drop_fields(model, kept)
    assert small.input.shape == (None, 3) and model_field_names(small) == ["f0", "f2", "f3"]
    assert small.get_layer("dnn_0").kernel.shape == (9, 6)
    assert small.get_layer("pairs").num_fields == 3
    names = {layer.name for layer in small.layers}
    assert not names & {"emb_f1", "lin_f1", "emb_f4", "lin_f4"}
    # Equal to the full model whose dropped fields' lookups output zeros.
    for f in (1, 4):
        for kind in ("emb", "lin"):
            t = model.get_layer(f"{kind}_f{f}").embeddings
            t.assign(np.zeros(t.shape, "float32"))
    x = _x(200, seed=4)
    np.testing.assert_allclose(small.predict(x[:, kept], verbose=0), model.predict(x, verbose=0), atol=1e-6)
    path = export_litert(small, tmp_path / "fields.tflite")
    from ai_edge_litert.interpreter import Interpreter

    assert list(Interpreter(model_path=str(path)).get_input_details()[0]["shape_signature"]) == [-1, 3]
    shapes = {t.shape for t in size_breakdown(path).tensors}
    assert {(11, 3), (19, 3), (23, 3)} <= shapes  # the kept tables
    assert not {(15, 3), (27, 3), (15, 1), (27, 1)} & shapes  # no table of f1 / f4
    assert check_parity(small, path, x[:, kept]) <= 1e-4


def test_prune_fields_bad_arguments():
    model, ds = _model(), _dataset(100)
    for kwargs, msg in (
        ({"n_fields": 5}, "n_fields"), ({"n_fields": 0}, "n_fields"), ({"n_fields": 1}, "n_fields"),
        ({}, "exactly one"), ({"n_fields": 3, "max_auc_drop": 0.01}, "exactly one"),
        ({"n_fields": 3, "method": "gain"}, "method"), ({"max_bytes": 10}, "every field"),
        ({"max_auc_drop": -0.1}, "max_auc_drop"), ({"n_fields": 3, "rounds": 0}, "rounds"),
    ):
        with pytest.raises(ValueError, match=msg):
            prune_fields(model, ds, **kwargs)
    with pytest.raises(ValueError, match="at least 2 fields"):
        drop_fields(model, [0])


def test_prune_fields_rounds_drop_the_noise_fields():
    ds = _dataset()
    model = build_model("deepfwfm", FIELDS, mlp=(8,), embedding_dim=3, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(0.03), loss="binary_crossentropy")
    model.fit(ds.train.x, ds.train.y, batch_size=64, epochs=8, verbose=0)
    small, report = prune_fields(model, ds, n_fields=3, rounds=2, finetune_epochs=1, batch_size=128)
    assert len(report.rounds) == 2 and [len(r["dropped"]) for r in report.rounds] == [1, 1]
    dropped = {f for r in report.rounds for f in r["dropped"]}
    assert {"f0", "f2"} <= set(report.kept_fields) and dropped & {"f3", "f4"}  # strong kept, noise went
    assert small.input.shape == (None, 3) and model_field_names(small) == report.kept_fields
    assert report.bytes < report.base_bytes and model.input.shape == (None, 5)
    assert set(report.rounds[0]["scores"]) == {f.name for f in FIELDS}
    p = small.predict(select_fields(ds.test.x, report.kept_indices), verbose=0)
    assert p.shape == (len(ds.test), 1)
