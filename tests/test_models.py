"""Reference models and FieldPairInteraction: maths, configs, .keras round trips."""

import itertools

import keras
import numpy as np
import pytest

from keras_ctr_compress.data import Field
from keras_ctr_compress.layers import FieldPairInteraction, SplitFields, all_pairs
from keras_ctr_compress.models import MODEL_NAMES, ModelConfig, build_model

FIELDS = [Field(f"f{i}", 30 + i) for i in range(5)]


def _ids(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, f.vocab_size, n) for f in FIELDS], 1).astype("int32")


def _ref_pairs(v, r, pairs):
    out = np.zeros((v.shape[0], 1))
    for i, j in pairs:
        out[:, 0] += r[i, j] * np.sum(v[:, i] * v[:, j], -1)
    return out


@pytest.mark.parametrize("mode", ["fm", "fwfm"])
@pytest.mark.parametrize("pruned", [False, True])
def test_pair_interaction_matches_numpy(mode, pruned):
    rng = np.random.default_rng(1)
    v = rng.normal(size=(7, 5, 3)).astype("float32")
    pairs = [(0, 1), (1, 4), (2, 3)] if pruned else None
    layer = FieldPairInteraction(5, mode=mode, pairs=pairs)
    layer.build(v.shape)
    if mode == "fwfm":
        layer.r.assign(rng.normal(size=(5, 5)).astype("float32"))
        R = layer.r.numpy()
        r = 0.5 * (R + R.T)
    else:
        r = np.ones((5, 5))
    got = keras.ops.convert_to_numpy(layer(v))
    want = _ref_pairs(v, r, pairs or all_pairs(5))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_pair_interaction_no_pairs_is_zero():
    v = np.ones((4, 3, 2), "float32")
    out = keras.ops.convert_to_numpy(FieldPairInteraction(3, pairs=[])(v))
    assert out.shape == (4, 1) and not out.any()


@pytest.mark.parametrize(
    "kwargs, msg",
    [({"num_fields": 1}, "num_fields"), ({"num_fields": 3, "mode": "ffm"}, "mode"),
     ({"num_fields": 3, "pairs": [(1, 1)]}, "invalid"), ({"num_fields": 3, "pairs": [(0, 3)]}, "invalid"),
     ({"num_fields": 3, "pairs": [(0, 1), (0, 1)]}, "duplicates")],
)
def test_pair_interaction_bad_args(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        FieldPairInteraction(**kwargs)


def test_split_fields_rejects_wrong_width():
    with pytest.raises(ValueError, match="expects 3 columns"):
        SplitFields(3)(keras.Input((4,), dtype="int32"))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_models_build_predict_and_round_trip(name, tmp_path):
    model = build_model(name, FIELDS, mlp=(16, 8), embedding_dim=4, seed=0)
    x = _ids()
    p = model.predict(x, verbose=0)
    assert p.shape == (64, 1) and np.all((p > 0) & (p < 1))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), p)


def test_model_layer_naming_contract():
    model = build_model("deepfwfm", FIELDS, mlp=(8, 8), embedding_dim=4)
    names = {layer.name for layer in model.layers}
    assert {f"emb_{f.name}" for f in FIELDS} <= names
    assert {f"lin_{f.name}" for f in FIELDS} <= names
    assert {"pairs", "dnn_0", "dnn_1", "dnn_out", "ctr"} <= names
    assert model.inputs[0].name == "ids" and model.inputs[0].dtype == "int32"


def test_pruned_pairs_model_equals_masked_full_model():
    full = build_model("deepfm", FIELDS, mlp=(8,), embedding_dim=4, seed=0)
    kept = [p for p in itertools.combinations(range(5), 2) if sum(p) % 2 == 0]
    pruned = build_model("deepfm", FIELDS, mlp=(8,), embedding_dim=4, seed=0, pairs=kept)
    pruned.set_weights(full.get_weights())
    x = _ids()
    # The pruned model's FM term is the full term minus the dropped pairs' dots.
    emb = keras.Model(full.inputs, full.get_layer("emb_stack").output).predict(x, verbose=0)
    dropped = [p for p in all_pairs(5) if p not in kept]
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    diff = logit(full.predict(x, verbose=0)) - logit(pruned.predict(x, verbose=0))
    np.testing.assert_allclose(diff, _ref_pairs(emb, np.ones((5, 5)), dropped), atol=2e-4)


@pytest.mark.parametrize(
    "kwargs, msg",
    [({"name": "xdeepfm"}, "unknown model"), ({"embedding_dim": 0}, "embedding_dim"),
     ({"mlp": (10, 0)}, "mlp"), ({"dropout": 1.0}, "dropout")],
)
def test_model_config_errors(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        ModelConfig(**kwargs)


def test_model_config_json_round_trip():
    cfg = ModelConfig(name="deepfwfm", mlp=(4, 2), pairs=[(0, 1)])
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
