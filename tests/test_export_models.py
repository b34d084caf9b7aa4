"""Every reference model (and the peer layers) exports builtins-only with parity <= 1e-4."""

import keras
import numpy as np
import pytest

from keras_ctr_compress.compress.swap import replace_layers
from keras_ctr_compress.data import Field
from keras_ctr_compress.export import check_parity, export_litert, list_ops
from keras_ctr_compress.layers import HashedEmbedding, QREmbedding
from keras_ctr_compress.models import MODEL_NAMES, build_model

FIELDS = [Field(f"f{i}", 50 * (i + 1)) for i in range(6)]


def _rows(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, f.vocab_size, n) for f in FIELDS], 1).astype("int32")


def _perturb(model, seed=0):
    # Random (not initial) weights, so parity is tested on non-trivial values.
    rng = np.random.default_rng(seed)
    model.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in model.get_weights()])
    return model


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_reference_model_parity(name, tmp_path):
    model = _perturb(build_model(name, FIELDS, mlp=(32, 16), embedding_dim=6, seed=0))
    path = export_litert(model, tmp_path / f"{name}.tflite")
    assert not [op for op in list_ops(path) if "Flex" in op]
    assert check_parity(model, path, _rows()) <= 1e-4


def test_pruned_pair_model_parity(tmp_path):
    model = _perturb(build_model("deepfwfm", FIELDS, mlp=(16,), embedding_dim=4, pairs=[(0, 1), (2, 5)]))
    path = export_litert(model, tmp_path / "p.tflite")
    assert check_parity(model, path, _rows()) <= 1e-4


@pytest.mark.parametrize("kind", ["hashing", "qr"])
def test_peer_layers_parity_and_round_trip(kind, tmp_path):
    base = build_model("deepfm", FIELDS, mlp=(16,), embedding_dim=4, seed=0)

    def make(layer):
        if isinstance(layer, keras.layers.Embedding) and layer.name.startswith("emb_"):
            if kind == "hashing":
                return HashedEmbedding(layer.input_dim, layer.output_dim, max(1, layer.input_dim // 8), name=layer.name)
            return QREmbedding(layer.input_dim, layer.output_dim, 8, name=layer.name)
        return None

    model, replaced = replace_layers(base, make)
    assert len(replaced) == len(FIELDS)
    model = _perturb(model)
    x = _rows()
    path = export_litert(model, tmp_path / "m.tflite")
    assert check_parity(model, path, x) <= 1e-4
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-7)


@pytest.mark.parametrize(
    "make, msg",
    [(lambda: HashedEmbedding(10, 4, 11), "must not exceed"), (lambda: HashedEmbedding(10, 0, 2), "output_dim"),
     (lambda: QREmbedding(10, 4, 0), "num_collisions")],
)
def test_peer_layer_bad_args(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()
