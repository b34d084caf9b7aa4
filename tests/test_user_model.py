"""Bring your own model: a user model built from scratch with standard Keras layers (and
keras-rs' DCN FeatureCross), never with the project's model builders, through swap,
low rank, export and parity; plans (search space, apply_plan) on a user MLP; clear
errors for subclassed models and unsupported layers."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_ctr_compress.compress import (
    allow_layer,
    as_reference_model,
    finalize_quantized,
    inputs_from_ids,
    low_rank,
    quantize_embeddings,
    replace_layers,
    with_user_inputs,
)
from keras_ctr_compress.data import load_dataset
from keras_ctr_compress.export import check_parity, export_litert, size_breakdown
from keras_ctr_compress.models import evaluate

keras_rs = pytest.importorskip("keras_rs", reason="keras-rs is in the dev extra")

DATA = "synthetic:rows=4000,fields=4,vocab=40,seed=3"


@pytest.fixture(scope="module")
def ds():
    return load_dataset(DATA)


def _fields(ds) -> list[str]:
    return [f.name for f in ds.fields]


def user_dcn(ds, dim: int = 8) -> keras.Model:
    """What a user writes: named (1,) inputs, one Embedding each, a DCN cross tower
    (keras-rs FeatureCross + LayerNormalization), a deep tower (Dense, BatchNormalization,
    Dropout, Activation) and a Dot of two field embeddings."""
    inputs = {f.name: keras.Input((1,), dtype="int32", name=f.name) for f in ds.fields}
    vecs = [keras.layers.Flatten()(keras.layers.Embedding(f.vocab_size, dim, name=f"{f.name}_table")(inputs[f.name]))
            for f in ds.fields]
    x0 = keras.layers.Concatenate()(vecs)
    cross = keras.layers.LayerNormalization()(keras_rs.layers.FeatureCross(projection_dim=4)(x0, x0))
    deep = keras.layers.Dense(32, name="deep_1")(x0)
    deep = keras.layers.Activation("relu")(keras.layers.BatchNormalization()(deep))
    deep = keras.layers.Dense(16, activation="relu", name="deep_2")(keras.layers.Dropout(0.1)(deep))
    dot = keras.layers.Dot(axes=1)([vecs[0], vecs[1]])
    out = keras.layers.Dense(1, activation="sigmoid", name="ctr")(keras.layers.Concatenate()([cross, deep, dot]))
    return keras.Model(inputs, out, name="user_dcn")


def user_mlp(ds, dim: int = 6) -> keras.Model:
    """A user MLP in the plan-readable shape: one input per field (shapes (1,) and ()),
    one Embedding each, Concatenate, a Dense tower."""
    inputs, vecs = {}, []
    for k, f in enumerate(ds.fields):
        shape = (1,) if k % 2 == 0 else ()
        inputs[f.name] = keras.Input(shape, dtype="int32", name=f.name)
        v = keras.layers.Embedding(f.vocab_size, dim, name=f"table_{k}")(inputs[f.name])
        vecs.append(keras.layers.Flatten()(v) if shape else v)
    h = keras.layers.Dense(24, activation="relu", name="hidden_1")(keras.layers.Concatenate()(vecs))
    h = keras.layers.Dense(12, activation="relu", name="hidden_2")(keras.layers.Dropout(0.1)(h))
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="click")(h), name="user_mlp")


def _fit(model, ds, epochs: int = 2):
    keras.utils.set_random_seed(0)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy")
    model.fit(inputs_from_ids(ds.train.x, model, _fields(ds)), ds.train.y, batch_size=256, epochs=epochs, verbose=0)
    return model


def _auc(model, ds) -> float:
    if len(model.inputs) == 1:
        return evaluate(model, ds.test)["auc"]
    from keras_ctr_compress.models import auc_logloss

    p = model.predict(inputs_from_ids(ds.test.x, model, _fields(ds)), batch_size=1024, verbose=0)
    return auc_logloss(ds.test.y, p)[0]


@pytest.fixture(scope="module")
def trained_dcn(ds):
    return _fit(user_dcn(ds), ds)


def test_swap_keeps_the_user_signature_and_weights(ds, trained_dcn, tmp_path):
    model = trained_dcn
    q = quantize_embeddings(model, method="lpt", bits=8, granularity="row")
    assert sorted(t.name for t in q.inputs) == sorted(t.name for t in model.inputs) == sorted(_fields(ds))
    assert {type(q.get_layer(f"{f}_table")).__name__ for f in _fields(ds)} == {"QuantizedEmbedding"}
    for name in ("deep_1", "ctr"):  # untouched layers keep their trained weights
        for a, b in zip(model.get_layer(name).get_weights(), q.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    cross = [[layer for layer in m.layers if isinstance(layer, keras_rs.layers.FeatureCross)] for m in (model, q)]
    assert len(cross[1]) == 1
    for a, b in zip(cross[0][0].get_weights(), cross[1][0].get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    small = finalize_quantized(q)
    assert abs(_auc(small, ds) - _auc(model, ds)) < 0.01  # int8 per-row tables cost no AUC
    path = export_litert(small, tmp_path / "user_q.tflite")
    x = inputs_from_ids(ds.test.x[:500], small, _fields(ds))
    assert check_parity(small, path, x, atol=1e-4) < 1e-4
    # the tables' bytes, not the whole (structure-dominated) tiny file
    fp32 = size_breakdown(export_litert(model, tmp_path / "user_fp32.tflite")).by_layer
    int8 = size_breakdown(path).by_layer
    for f in _fields(ds):
        assert int8[f"{f}_table"] < 0.5 * fp32[f"{f}_table"], (f, int8, fp32)


def test_low_rank_on_the_user_model(ds, trained_dcn, tmp_path):
    x = inputs_from_ids(ds.train.x[:2000], trained_dcn, _fields(ds))
    small, report = low_rank(trained_dcn, x, ranks={"deep_1": 6, "deep_2": 4}, method="afm")
    assert report.layer("deep_1").status == "compressed" and report.bytes_after < report.bytes_before
    assert type(small.get_layer("deep_1")).__name__ == "LowRankDense"
    assert report.prediction_max_abs_diff < 0.2
    path = export_litert(small, tmp_path / "user_lr.tflite")
    # a matrix feeds the file's named inputs in signature order
    assert check_parity(small, path, ds.test.x[:500]) < 1e-4


def test_replace_layers_on_a_user_model(ds, trained_dcn):
    new, names = replace_layers(trained_dcn, lambda layer: None)
    assert names == []
    x = inputs_from_ids(ds.test.x[:300], trained_dcn, _fields(ds))
    np.testing.assert_allclose(new(x, training=False), trained_dcn(x, training=False), atol=1e-6)


class Tower(keras.Model):
    def __init__(self):
        super().__init__()
        self.emb = keras.layers.Embedding(10, 4)
        self.out = keras.layers.Dense(1, activation="sigmoid")

    def call(self, x):
        return self.out(keras.ops.mean(self.emb(x), axis=1))


class Scale(keras.layers.Layer):
    def call(self, x):
        return 2.0 * x


def test_unsupported_models_and_layers_get_clear_errors():
    sub = Tower()
    sub(np.zeros((2, 3), "int32"))
    with pytest.raises(ValueError, match=r"Tower .* is a subclassed model: .*functional API.*supported layers: Keras built-in"):
        quantize_embeddings(sub, method="qat", bits=8)
    ids = keras.Input((3,), dtype="int32", name="ids")
    h = Scale(name="my_scale")(keras.layers.Flatten()(keras.layers.Embedding(10, 4)(ids)))
    custom = keras.Model(ids, keras.layers.Dense(1, activation="sigmoid")(h))
    with pytest.raises(ValueError, match=r"layer 'my_scale' \(.*Scale\) is not supported; supported: Keras built-in"):
        replace_layers(custom, lambda layer: None)
    allow_layer(Scale)  # its config rebuilds it: the user may vouch for it
    assert replace_layers(custom, lambda layer: None)[1] == []
    inner = keras.Model(ids, keras.layers.Embedding(10, 4)(ids), name="inner")
    outer_in = keras.Input((3,), dtype="int32", name="ids")
    nested = keras.Model(outer_in, keras.layers.Dense(1)(keras.layers.Flatten()(inner(outer_in))))
    with pytest.raises(ValueError, match="layer 'inner' is a nested Functional"):
        replace_layers(nested, lambda layer: None)


@pytest.fixture(scope="module")
def trained_mlp(ds):
    return _fit(user_mlp(ds), ds)


def test_search_on_a_user_mlp(ds, trained_mlp, tmp_path):
    from keras_ctr_compress.search import search

    fields = _fields(ds)
    ref = as_reference_model(trained_mlp, fields=fields)  # the search reads the id-matrix layout
    lines: list[str] = []
    res = search(ref, ds, max_ratio=1.5, trials=2, tuner="random", out_dir=tmp_path / "search", seed=0,
                 final_epochs=1, latency_plans=2, log=lines.append)
    assert len(res.trials) == 2 and res.best_plan is not None and res.tflite_path.exists()
    assert res.best["bytes"] <= res.fp32_bytes / 1.5
    assert any(line.startswith("[search]") for line in lines)
    kept = res.best.get("kept_field_indices") or list(range(len(fields)))
    shipped = with_user_inputs(res.best_model, like=trained_mlp)  # the user's input names again
    path = export_litert(shipped, tmp_path / "searched_user.tflite")
    x_user = {fields[k]: inputs_from_ids(ds.test.x[:500], trained_mlp, fields)[fields[k]] for k in kept}
    assert check_parity(shipped, path, x_user) < 1e-4


def test_plans_on_a_user_mlp(ds, trained_mlp, tmp_path):
    from keras_ctr_compress.search import (
        DensePlan,
        FinetuneOptions,
        Plan,
        TablePlan,
        apply_plan,
        export_plan,
        search_space,
    )
    from keras_ctr_compress.search import anatomy as read_anatomy

    model = trained_mlp
    fields = _fields(ds)
    ref = as_reference_model(model, fields=fields)
    assert [t.name for t in ref.inputs] == ["ids"] and ref.get_layer(f"emb_{fields[0]}").input_dim == ds.fields[0].vocab_size
    np.testing.assert_allclose(ref(ds.test.x[:300], training=False),
                               model(inputs_from_ids(ds.test.x[:300], model, fields), training=False), atol=1e-6)
    an = read_anatomy(ref)
    assert an.field_names == fields
    assert [(d.name, d.source) for d in an.dense] == [("hidden_1", "fields"), ("hidden_2", "hidden_1"), ("click", "hidden_2")]
    assert search_space(ref) is not None
    plan = Plan(tables={fields[0]: TablePlan("quant", bits=4, granularity="row"), fields[1]: TablePlan("pruned"),
                        fields[2]: TablePlan("lowrank", rank=2)},
                dense={"hidden_1": DensePlan(units=16), "hidden_2": DensePlan(rank=4)},
                finetune=FinetuneOptions(epochs=1, batch_size=512))
    small, info = apply_plan(model, plan, ds)  # the user model itself; columns in the data's order
    assert info["pruned_fields"] == [fields[1]] and len(small.inputs) == 1
    kept = info["kept_field_indices"]
    out = export_plan(small, plan, tmp_path / "plan.tflite", check_x=ds.test.x[:500, kept])
    assert out["parity_max_abs"] < 1e-4
    # back to the user's named inputs: the pruned field has no input any more
    shipped = with_user_inputs(small, like=model)
    assert sorted(t.name for t in shipped.inputs) == sorted(fields[k] for k in kept)
    path = export_litert(shipped, tmp_path / "shipped.tflite")
    x_user = {fields[k]: inputs_from_ids(ds.test.x[:500], model, fields)[fields[k]] for k in kept}
    assert check_parity(shipped, path, x_user) < 1e-4
    np.testing.assert_allclose(keras.ops.convert_to_numpy(shipped(x_user, training=False)),
                               keras.ops.convert_to_numpy(small(ds.test.x[:500, kept], training=False)), atol=1e-6)


def test_plan_reader_names_what_it_cannot_read(ds, trained_dcn):
    from keras_ctr_compress.search import anatomy as read_anatomy

    # Plans need Dense towers over the embeddings; BatchNormalization between Dense layers is not read.
    with pytest.raises(ValueError, match=r"Dense layer 'deep_2' reads 'batch_normalization' \(BatchNormalization\); "
                                         r"plans apply to .* or a user model of that shape"):
        read_anatomy(as_reference_model(trained_dcn, fields=_fields(ds)))
