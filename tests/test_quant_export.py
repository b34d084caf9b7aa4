"""LiteRT export of the quantised layers: builtins only, exact parity, bytes as analysed."""

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from keras_ctr_compress.export import (
    EMBEDDING_REMAP,
    assert_builtins_only,
    export_litert,
    list_ops,
    size_breakdown,
)
from keras_ctr_compress.layers import QuantizedEmbedding, RowwiseQuantEmbedding, SplitFields

BIG_ROWS, BIG_DIM = 20_000, 16


def _quantized(name, rows, dim, bits, granularity="row", seed=0):
    layer = QuantizedEmbedding(rows, dim, bits=bits, granularity=granularity, mode="inference", name=name)
    layer.build()
    layer.set_float_weights(np.random.default_rng(seed).normal(size=(rows, dim)) * 0.05)
    return layer


def _tiered(name, tiers, fractions, rows=300, dim=6, seed=0):
    rng = np.random.default_rng(seed)
    layer = RowwiseQuantEmbedding(rows, dim, tiers=tiers, fractions=fractions, name=name)
    layer.build()
    layer.set_float_weights(rng.normal(size=(rows, dim)) * 0.05)
    layer.update_priorities(np.minimum(rng.zipf(1.4, size=3000), rows - 1), rng.random(3000) < 0.3)
    layer.assign_tiers()
    return layer.finalize()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    layers = [
        _quantized("emb_q8", BIG_ROWS, BIG_DIM, 8),
        _quantized("emb_q4", BIG_ROWS, BIG_DIM, 4),
        _quantized("emb_q2", BIG_ROWS, BIG_DIM, 2),
        _quantized("emb_odd4", 50, 5, 4, "table"),
        _quantized("emb_odd2", 50, 7, 2),
        _quantized("emb_q3", 50, 6, 3),
        _quantized("emb_q6t", 50, 3, 6, "table"),
        _tiered("emb_tiers", ("fp16", "int8", "int4", "int2", "pruned"), (0.1, 0.2, 0.3, 0.2, 0.2)),
        _tiered("emb_pruned", ("int4", "pruned"), (0.7, 0.3), dim=9),
    ]
    ids = keras.Input((len(layers),), dtype="int32", name="ids")
    cols = SplitFields(len(layers), name="split")(ids)
    out = keras.layers.Concatenate(name="concat")([layer(c) for layer, c in zip(layers, cols, strict=True)])
    model = keras.Model(ids, out)
    path = export_litert(model, tmp_path_factory.mktemp("quant") / "quant.tflite")
    return model, layers, path


def _litert(path, x):
    interp = Interpreter(model_path=str(path), num_threads=1)
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], x.shape, strict=True)
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"])


def test_export_is_builtins_only_with_the_expected_ops(exported):
    _, _, path = exported
    assert_builtins_only(path)
    ops = set(list_ops(path))
    assert not any(op.startswith("Flex") for op in ops)
    assert {"GATHER", "FLOOR", "BITCAST", "CAST"} <= ops


def test_export_parity_every_bit_width_and_tier_mix(exported):
    model, layers, path = exported
    rng = np.random.default_rng(5)
    x = np.stack([rng.integers(0, layer.input_dim, size=512) for layer in layers], axis=1).astype("int32")
    x[:4] = 0  # the OOV row, and ids of every tier below
    keras_out = keras.ops.convert_to_numpy(model(x))
    lite_out = _litert(path, x)
    assert lite_out.shape == keras_out.shape
    assert np.max(np.abs(lite_out - keras_out)) <= 1e-5
    # The Keras output is the quantised table itself.
    start = 0
    for layer, col in zip(layers, x.T, strict=True):
        stop = start + layer.output_dim
        np.testing.assert_array_equal(keras_out[:, start:stop], layer.dequantized_weights()[col])
        start = stop


@pytest.mark.parametrize("name, bits", [("emb_q8", 8), ("emb_q4", 4), ("emb_q2", 2)])
def test_embedding_bytes_in_file_match_analytic(exported, name, bits):
    model, _, path = exported
    report = size_breakdown(path)
    in_file = report.by_layer[name]
    analytic = BIG_ROWS * (BIG_DIM * bits / 8 + 2)  # codes + fp16 row scale
    assert abs(in_file - analytic) <= 0.02 * analytic, (in_file, analytic)
    assert sum(model.get_layer(name).byte_cost().values()) == analytic


def test_size_breakdown_tells_remap_codes_and_scales_apart(exported):
    model, _, path = exported
    report = size_breakdown(path)
    tiers = model.get_layer("emb_tiers").byte_cost()
    pruned = model.get_layer("emb_pruned").byte_cost()
    assert report.by_category[EMBEDDING_REMAP] == tiers["remap"] + pruned["remap"] == 2 * 300 * 2
    tier_bytes = {t.category: 0 for t in report.tensors}
    for t in report.tensors:
        if t.layer == "emb_tiers":
            tier_bytes[t.category] += t.bytes
    assert tier_bytes[EMBEDDING_REMAP] == tiers["remap"]
    # codes + fp16 rows are tables; 2-byte scales are scales.
    assert tier_bytes["embedding_tables"] == tiers["codes"] + tiers["weights"]
    assert tier_bytes["embedding_scales"] == tiers["scales"]
