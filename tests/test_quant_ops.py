"""Quantiser maths against an independent NumPy reference; packing; fp16 scale bits."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_ctr_compress.layers import quant_ops as q


def ref_range(bits):
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def ref_quantize(w, step, bits, u=None):
    """methods.md: v = w / D; round = floor(v + 0.5) or floor(v + u); clip to [Qn, Qp]."""
    qn, qp = ref_range(bits)
    v = w / step
    r = np.floor(v + 0.5) if u is None else np.floor(v + u)
    return np.clip(r, qn, qp)


def ref_lsq_grads(w, step, bits, upstream, grad_scale):
    """LSQ straight-through gradients of q = D * round(clip(w / D)) (deterministic round)."""
    qn, qp = ref_range(bits)
    v = w / step
    inside = (v >= qn) & (v <= qp)
    dw = upstream * inside
    dq_dstep = np.where(v < qn, qn, np.where(v > qp, qp, np.floor(v + 0.5) - v))
    dstep = np.sum(upstream * dq_dstep, axis=1, keepdims=True) * grad_scale
    return dw, dstep


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quantize_matches_reference_and_clips(bits):
    rng = np.random.default_rng(bits)
    w = rng.normal(size=(50, 7)).astype("float32")
    step = np.float32(0.3)
    qn, qp = ref_range(bits)
    codes = q.quantize_np(w, step, bits)
    np.testing.assert_array_equal(codes, ref_quantize(w, step, bits))
    assert codes.dtype == np.int8 and codes.min() >= qn and codes.max() <= qp
    u = rng.random(w.shape)
    np.testing.assert_array_equal(q.quantize_np(w, step, bits, "stochastic", u=u), ref_quantize(w, step, bits, u))
    # Far outside the range: clipped to the end codes.
    np.testing.assert_array_equal(q.quantize_np(np.array([[-1e3, 1e3]]), 1.0, bits), [[qn, qp]])


def test_round_ops_deterministic_and_stochastic_match_reference():
    v = np.array([-2.5, -1.49, -0.5, 0.49, 0.5, 1.51], "float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(q.round_ops(v, "deterministic")), np.floor(v + 0.5))
    s = keras.ops.convert_to_numpy(q.round_ops(v, "stochastic", seed=1))
    assert np.all((s == np.floor(v)) | (s == np.floor(v) + 1))


def test_stochastic_rounding_is_unbiased():
    v = np.full((200_000,), 0.3, "float32") + np.tile(np.array([-2.0, 0.0, 1.0, 3.0], "float32"), 50_000)
    out = keras.ops.convert_to_numpy(q.round_ops(v, "stochastic", seed=3))
    for k in (-2.0, 0.0, 1.0, 3.0):
        sel = v == np.float32(k + 0.3)
        assert abs(out[sel].mean() - (k + 0.3)) < 0.01
    ref = q.round_np(v, "stochastic", rng=np.random.default_rng(0))
    assert abs(ref.mean() - v.mean()) < 0.01


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_fake_quant_forward_and_lsq_gradients_match_reference(bits):
    rng = np.random.default_rng(10 + bits)
    w = rng.normal(size=(6, 5)).astype("float32")
    step = np.abs(rng.normal(size=(6, 1))).astype("float32") * 0.4 + 0.05
    upstream = rng.normal(size=w.shape).astype("float32")
    g = 0.37
    wv, sv = tf.Variable(w), tf.Variable(step)
    with tf.GradientTape() as tape:
        out = q.fake_quant(wv, sv, bits, "deterministic", grad_scale=g)
        loss = tf.reduce_sum(out * upstream)
    dw, dstep = tape.gradient(loss, [wv, sv])
    np.testing.assert_allclose(out.numpy(), ref_quantize(w, step, bits) * step, rtol=1e-6, atol=1e-7)
    ref_dw, ref_dstep = ref_lsq_grads(w, step, bits, upstream, g)
    np.testing.assert_allclose(dw.numpy(), ref_dw, atol=1e-6)
    np.testing.assert_allclose(dstep.numpy(), ref_dstep, rtol=1e-5, atol=1e-6)
    # Some entries are clipped at 2 bits: their weight gradient is zero.
    if bits == 2:
        assert (dw.numpy() == 0).any()


def test_lsq_grad_scale_is_alpt_choice():
    np.testing.assert_allclose(float(q.lsq_grad_scale(32, 10, 4)), 1 / np.sqrt(32 * 10 * 7), rtol=1e-6)


@pytest.mark.parametrize("method", ["lsq", "mse"])
@pytest.mark.parametrize("granularity", ["row", "table"])
def test_init_step(method, granularity):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(20, 8)).astype("float32")
    step = q.init_step_np(w, 4, granularity, method)
    assert step.shape == ((20,) if granularity == "row" else ())
    if method == "lsq":
        axis = 1 if granularity == "row" else None
        np.testing.assert_allclose(step, 2 * np.abs(w).mean(axis=axis) / np.sqrt(7), rtol=1e-6)
    else:
        d = step[:, None] if granularity == "row" else step
        lsq = q.init_step_np(w, 4, granularity, "lsq")
        dl = lsq[:, None] if granularity == "row" else lsq
        err = np.sum((q.quantize_np(w, d, 4) * d - w) ** 2)
        assert err <= np.sum((q.quantize_np(w, dl, 4) * dl - w) ** 2) * 1.0001
    assert np.all(q.init_step_np(np.zeros((3, 4)), 8, granularity) > 0)


@pytest.mark.parametrize("bad", [0, 1, 9, 2.5, True, "8", None])
def test_check_bits_rejects(bad):
    with pytest.raises(ValueError, match="bits"):
        q.check_bits(bad)


def test_fp16_bits_round_trip():
    x = np.array([1e-3, 0.5, 3.14159, 2.0**-20], "float32")
    bits = q.fp16_bits_np(x)
    assert bits.dtype == np.int16
    np.testing.assert_array_equal(q.fp16_from_bits_np(bits), x.astype("float16").astype("float32"))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(q.fp16_bits_to_float(bits)), q.fp16_from_bits_np(bits))


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(2, 8),
    dim=st.integers(1, 40),
    rows=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_packing_round_trip_any_dim(bits, dim, rows, seed):
    qn, qp = ref_range(bits)
    codes = np.random.default_rng(seed).integers(qn, qp + 1, size=(rows, dim))
    packed = q.pack_codes_np(codes, bits)
    assert packed.dtype == np.int8
    assert packed.shape == (rows, q.packed_width(dim, bits))
    assert packed.shape[1] == int(np.ceil(dim * q.storage_bits(bits) / 8))
    np.testing.assert_array_equal(q.unpack_codes_np(packed, bits, dim), codes)
    unpacked = keras.ops.convert_to_numpy(q.unpack_codes(packed.astype("float32"), bits, dim))
    np.testing.assert_array_equal(unpacked, codes)


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(2, 8),
    step=st.floats(1e-3, 10.0),
    data=st.lists(st.floats(-1.0, 1.0), min_size=1, max_size=30),
    seed=st.integers(0, 2**16),
)
def test_dequantize_error_within_one_step(bits, step, data, seed):
    qn, qp = ref_range(bits)
    # Values inside the representable range [Qn D, Qp D].
    x = np.asarray(data, "float64")
    x = np.where(x < 0, -x * qn, x * qp) * step
    det = q.quantize_np(x, step, bits).astype("float64") * step
    assert np.all(np.abs(det - x) <= step / 2 * (1 + 1e-6))
    sto = q.quantize_np(x, step, bits, "stochastic", rng=np.random.default_rng(seed)).astype("float64") * step
    assert np.all(np.abs(sto - x) < step * (1 + 1e-6))
    fq = keras.ops.convert_to_numpy(q.fake_quant(x.astype("float32"), np.float32(step), bits))
    assert np.all(np.abs(fq - x) <= step / 2 * (1 + 1e-4) + 1e-6)
