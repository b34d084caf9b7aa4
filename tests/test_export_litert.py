"""Tests of keras_ctr_compress.export on tiny models (LiteRT export, runner, parity,
size breakdown, latency). Every export here takes about a second."""

from __future__ import annotations

import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

from keras_ctr_compress.export import (
    EMBEDDING_SCALES,
    EMBEDDING_TABLES,
    ExportError,
    LiteRTModel,
    ParityError,
    artefact_bytes,
    assert_builtins_only,
    check_parity,
    export_litert,
    list_ops,
    measure_latency,
    ratios,
    size_breakdown,
)
from keras_ctr_compress.export import litert as litert_module

VOCAB = (300, 200, 150, 100)
F = len(VOCAB)


# ---------------------------------------------------------------------------- models


@keras.saving.register_keras_serializable(package="test_export")
class FieldEmbeddings(keras.layers.Layer):
    """One float table per field, looked up with ops.take: (batch, F) -> (batch, F, dim)."""

    def __init__(self, vocab_sizes, dim, **kwargs):
        super().__init__(**kwargs)
        self.vocab_sizes = list(vocab_sizes)
        self.dim = dim

    def build(self, input_shape):
        self.tables = [
            self.add_weight(shape=(v, self.dim), initializer="uniform", name=f"table_{j}")
            for j, v in enumerate(self.vocab_sizes)
        ]

    def call(self, ids):
        cols = ops.unstack(ids, num=len(self.vocab_sizes), axis=1)
        return ops.stack([ops.take(t, c, axis=0) for t, c in zip(self.tables, cols, strict=True)], axis=1)

    def get_config(self):
        return {**super().get_config(), "vocab_sizes": self.vocab_sizes, "dim": self.dim}


@keras.saving.register_keras_serializable(package="test_export")
class Int8RowwiseEmbedding(keras.layers.Layer):
    """int8 codes with one fp16 scale per row, stored as int16 bits (shared/litert.md)."""

    def __init__(self, vocab, dim, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.vocab, self.dim, self.seed = vocab, dim, seed

    def build(self, input_shape):
        rng = np.random.default_rng(self.seed)
        codes = rng.integers(-127, 128, (self.vocab, self.dim)).astype("int8")
        scales = rng.uniform(0.001, 0.01, self.vocab).astype("float16").view("int16")
        self.codes = self.add_weight(shape=codes.shape, dtype="int8", trainable=False, name="codes",
                                     initializer=keras.initializers.Constant(codes))
        self.scales = self.add_weight(shape=scales.shape, dtype="int16", trainable=False, name="scales",
                                      initializer=keras.initializers.Constant(scales))
        self.codes.assign(codes)
        self.scales.assign(scales)

    def call(self, ids):
        g = ops.cast(ops.take(self.codes, ids, axis=0), "float32")
        s = ops.cast(ops.view(ops.take(self.scales, ids, axis=0), "float16"), "float32")
        return g * ops.expand_dims(s, -1)

    def get_config(self):
        return {**super().get_config(), "vocab": self.vocab, "dim": self.dim, "seed": self.seed}


class HashIds(keras.layers.Layer):
    """Uses string ops, which have no LiteRT builtin kernel (Flex only)."""

    def call(self, ids):
        import tensorflow as tf

        return tf.strings.to_hash_bucket_fast(tf.strings.as_string(ids), 100)


def _head(h):
    h = keras.layers.Dense(32, activation="relu", name="dense_hidden")(h)
    return keras.layers.Dense(1, activation="sigmoid", name="dense_out")(h)


def embedding_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    ids = keras.Input((F,), dtype="int32", name="ids")
    embs = [keras.layers.Embedding(v, 8, name=f"emb_field{j}")(ids[:, j]) for j, v in enumerate(VOCAB)]
    return keras.Model(ids, _head(keras.layers.Concatenate()(embs)), name="tiny_embedding")


def custom_layer_model() -> keras.Model:
    keras.utils.set_random_seed(1)
    ids = keras.Input((F,), dtype="int32", name="ids")
    e = FieldEmbeddings(VOCAB, 8, name="field_embeddings")(ids)
    return keras.Model(ids, _head(keras.layers.Flatten()(e)), name="tiny_custom")


def int8_model() -> keras.Model:
    keras.utils.set_random_seed(2)
    ids = keras.Input((F,), dtype="int32", name="ids")
    e = Int8RowwiseEmbedding(max(VOCAB), 8, name="rowwise_embedding")(ids)
    return keras.Model(ids, _head(keras.layers.Flatten()(e)), name="tiny_int8")


def flex_model() -> keras.Model:
    ids = keras.Input((F,), dtype="int32", name="ids")
    e = keras.layers.Embedding(100, 4, name="emb_hashed")(HashIds(name="hash_ids")(ids))
    return keras.Model(ids, _head(keras.layers.Flatten()(e)), name="tiny_flex")


def rows(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, v, n) for v in VOCAB], axis=1).astype(np.int32)


# -------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def emb(out_dir):
    m = embedding_model()
    return m, export_litert(m, out_dir / "emb_fp32.tflite"), export_litert(m, out_dir / "emb_drq.tflite", quantization="drq")


@pytest.fixture(scope="module")
def custom(out_dir):
    m = custom_layer_model()
    return m, export_litert(m, out_dir / "custom_fp32.tflite")


@pytest.fixture(scope="module")
def x1000() -> np.ndarray:
    return rows(1000)


# ---------------------------------------------------------------------------- export


def test_fp32_and_drq_use_builtins_only(emb, custom):
    for path in (emb[1], emb[2], custom[1]):
        ops_used = list_ops(path)
        assert not any(o.startswith("Flex") or o == "CUSTOM" for o in ops_used), ops_used
        assert "GATHER" in ops_used and "FULLY_CONNECTED" in ops_used
        assert_builtins_only(path)
    assert "DEQUANTIZE" in list_ops(emb[2])  # drq stores int8 tables, dequantises gathered rows


def test_drq_file_is_smaller(emb):
    _, fp32, drq = emb
    assert drq.stat().st_size < 0.6 * fp32.stat().st_size


def test_fp32_parity_on_1000_rows(emb, custom, x1000):
    for model, path in ((emb[0], emb[1]), custom):
        assert check_parity(model, path, x1000, atol=1e-4) <= 1e-4


def test_drq_parity_is_reported_not_enforced(emb, x1000):
    diff = check_parity(emb[0], emb[2], x1000, atol=float("inf"))
    assert 0 < diff < 0.05


def test_int8_custom_table_exports_exactly(out_dir, x1000):
    m = int8_model()
    path = export_litert(m, out_dir / "int8.tflite")
    assert check_parity(m, path, x1000, atol=1e-5) <= 1e-5
    report = size_breakdown(path)
    by_dtype = {t.dtype: t for t in report.tensors if t.layer == "rowwise_embedding"}
    assert by_dtype["int8"].category == EMBEDDING_TABLES and by_dtype["int8"].bytes == max(VOCAB) * 8
    assert by_dtype["int16"].category == EMBEDDING_SCALES and by_dtype["int16"].bytes == max(VOCAB) * 2


def test_drq_stacks_on_integer_codes_and_leaves_them_exact(out_dir, x1000):
    # The table's codes and fp16-bit scales are integers: DRQ only quantises the head.
    m = int8_model()
    plain = export_litert(m, out_dir / "int8_plain.tflite")
    path = export_litert(m, out_dir / "int8_drq.tflite", quantization="drq")
    tables = lambda p: sorted((t.dtype, t.bytes) for t in size_breakdown(p).tensors  # noqa: E731
                              if t.layer == "rowwise_embedding")
    assert tables(path) == tables(plain)
    assert 0 < check_parity(m, path, x1000, atol=float("inf")) < 0.05


class _CodesWithFloatTable(keras.layers.Layer):
    def build(self, input_shape):
        self.codes = self.add_weight(shape=(64, 4), dtype="int8", trainable=False, initializer="zeros",
                                     name="codes")
        self.fp_rows = self.add_weight(shape=(512, 4), initializer="ones", name="fp_rows")

    def call(self, ids):
        codes = keras.ops.cast(keras.ops.take(self.codes, ids % 64, axis=0), "float32")
        return codes + keras.ops.take(self.fp_rows, ids % 512, axis=0)


def test_drq_refused_where_it_would_requantise_a_quantised_layer(tmp_path):
    ids = keras.Input((F,), dtype="int32", name="ids")
    e = _CodesWithFloatTable(name="mixed_table")(ids)
    m = keras.Model(ids, _head(keras.layers.Flatten()(e)))
    with pytest.raises(ExportError, match="mixed_table.*fp_rows.*must not be stacked"):
        export_litert(m, tmp_path / "m.tflite", quantization="drq")
    assert list(tmp_path.iterdir()) == []


class _CodesWithIntRemap(keras.layers.Layer):
    """int8 codes behind an int32 id -> row remap (RowwiseQuantEmbedding past 32,768 kept rows)."""

    def build(self, input_shape):
        self.codes = self.add_weight(shape=(64, 4), dtype="int8", trainable=False, initializer="ones",
                                     name="codes")
        self.remap = self.add_weight(shape=(40_000,), dtype="int32", trainable=False, initializer="zeros",
                                     name="remap")

    def call(self, ids):
        rows = keras.ops.take(self.remap, ids, axis=0)
        return keras.ops.cast(keras.ops.take(self.codes, rows % 64, axis=0), "float32")


def test_drq_stacks_on_an_int32_remap(tmp_path):
    # DRQ quantises float tensors only; a large integer index is as safe as the codes
    ids = keras.Input((F,), dtype="int32", name="ids")
    e = _CodesWithIntRemap(name="remapped_table")(ids)
    m = keras.Model(ids, _head(keras.layers.Flatten()(e)))
    path = export_litert(m, tmp_path / "m.tflite", quantization="drq")
    x = np.random.default_rng(0).integers(0, 40_000, (64, F)).astype("int32")
    assert 0 <= check_parity(m, path, x, atol=float("inf")) < 0.05


def test_exported_file_is_readable_by_others(emb):
    assert emb[1].stat().st_mode & 0o044 == 0o044 & ~_umask()


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_flex_op_is_refused_and_leaves_no_file(tmp_path):
    target = tmp_path / "flex.tflite"
    with pytest.raises(ExportError, match="AsString") as info:
        export_litert(flex_model(), target)
    assert "builtin" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_assert_builtins_only_names_flex_ops(tmp_path):
    # Keras' own default enables Select-TF ops: the file converts but holds Flex ops.
    path = tmp_path / "select.tflite"
    flex_model().export(str(path), format="litert", verbose=False)
    assert any(o.startswith("Flex") for o in list_ops(path))
    with pytest.raises(ExportError, match="FlexAsString"):
        assert_builtins_only(path)


def test_failed_verification_leaves_nothing_and_keeps_old_file(tmp_path, monkeypatch, emb):
    target = tmp_path / "model.tflite"
    old = tmp_path / "old.tflite"

    def broken(path, label):
        raise ExportError("simulated failure after the file was written")

    monkeypatch.setattr(litert_module, "_verify_file", broken)
    with pytest.raises(ExportError, match="simulated"):
        export_litert(emb[0], target)
    assert list(tmp_path.iterdir()) == []
    old.write_bytes(b"previous good file")
    with pytest.raises(ExportError, match="simulated"):
        export_litert(emb[0], old)
    assert old.read_bytes() == b"previous good file"
    assert [p.name for p in tmp_path.iterdir()] == ["old.tflite"]


@keras.saving.register_keras_serializable(package="test_export")
class LogIds(keras.layers.Layer):
    """log(0) * 0 = NaN on an all-zero batch: converts fine, computes nothing sensible."""

    def call(self, ids):
        return ops.log(ops.cast(ids, "float32")) * 0.0


def test_non_finite_output_is_refused(tmp_path):
    ids = keras.Input((F,), dtype="int32", name="ids")
    model = keras.Model(ids, keras.layers.Dense(1, activation="sigmoid")(LogIds()(ids)))
    with pytest.raises(ExportError, match="not finite"):
        export_litert(model, tmp_path / "nan.tflite")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    model = embedding_model()

    def half_write(self, filepath, **kwargs):
        Path(filepath).write_bytes(b"TFL3 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "export", half_write)
    with pytest.raises(KeyboardInterrupt):
        export_litert(model, tmp_path / "sub" / "m.tflite")
    assert list((tmp_path / "sub").iterdir()) == []


def test_bad_options_are_refused(tmp_path, emb):
    model = emb[0]
    with pytest.raises(ExportError, match="wrong outputs"):
        export_litert(model, tmp_path / "m.tflite", quantization="drq", sparsity=True)
    with pytest.raises(ExportError, match="quantization"):
        export_litert(model, tmp_path / "m.tflite", quantization="int4")
    with pytest.raises(ExportError, match=".tflite"):
        export_litert(model, tmp_path / "m.bin")
    assert list(tmp_path.iterdir()) == []


def test_sparsity_alone_exports_with_parity(out_dir, emb, x1000):
    path = export_litert(emb[0], out_dir / "sparse.tflite", sparsity=True)
    assert check_parity(emb[0], path, x1000, atol=1e-4) <= 1e-4


@pytest.mark.parametrize("quantization", [None, "drq"])
def test_low_memory_export_is_the_same_model_with_buffers_after_the_flatbuffer(out_dir, emb, x1000, quantization):
    from keras_ctr_compress.export import _flatbuffer as fb
    from keras_ctr_compress.search.cost import file_facts

    model, plain = emb[0], emb[1] if quantization is None else emb[2]
    path = export_litert(model, out_dir / f"lowmem_{quantization}.tflite", quantization=quantization, low_memory=True)
    data, flat = fb.read_model(path)
    tables = [t for t in fb.tensors(flat) if t.nbytes >= 1024]
    assert tables and all(flat.Buffers(t.buffer).Offset() > 1 for t in tables)  # the offset layout
    _, plain_flat = fb.read_model(plain)
    assert not any(plain_flat.Buffers(t.buffer).Offset() > 1 for t in fb.tensors(plain_flat))
    # same tensors and bytes as the default layout; only the metadata entry is gone
    assert size_breakdown(path).by_category == size_breakdown(plain).by_category
    assert abs(path.stat().st_size - plain.stat().st_size) < 1024
    np.testing.assert_array_equal(LiteRTModel(path).predict(x1000), LiteRTModel(plain).predict(x1000))
    # constants stored after the flatbuffer are read back as bytes (the cost model's file facts)
    for t in tables:
        assert len(fb.buffer_data(data, flat, t.buffer)) == t.nbytes
    assert file_facts(path)["constants"] == file_facts(plain)["constants"]


def test_low_memory_is_automatic_for_large_models_and_refused_with_sparsity(tmp_path, emb, monkeypatch):
    seen = []
    real = litert_module._converter_kwargs
    monkeypatch.setattr(litert_module, "_converter_kwargs", lambda q, s, lm: seen.append(lm) or real(q, s, lm))
    monkeypatch.setattr(litert_module, "LOW_MEMORY_BYTES", 1)
    export_litert(emb[0], tmp_path / "auto.tflite")
    export_litert(emb[0], tmp_path / "sparse.tflite", sparsity=True)  # auto: off with sparsity
    monkeypatch.setattr(litert_module, "LOW_MEMORY_BYTES", 2**40)
    export_litert(emb[0], tmp_path / "small.tflite")
    assert seen == [True, False, False]
    with pytest.raises(ExportError, match="low_memory=True"):
        export_litert(emb[0], tmp_path / "bad.tflite", sparsity=True, low_memory=True)
    with pytest.raises(ExportError, match="low_memory must be"):
        export_litert(emb[0], tmp_path / "bad.tflite", low_memory="yes")
    assert not (tmp_path / "bad.tflite").exists()


def test_list_ops_refuses_non_tflite(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(ValueError, match="TFL3"):
        list_ops(bad)


# ---------------------------------------------------------------------------- runner


def test_runner_scores_batch_1_and_256_from_one_file(emb, x1000):
    model, path, _ = emb
    runner = LiteRTModel(path)
    assert runner.num_fields == F
    assert runner.input_details["dtype"] == np.int32
    assert list(runner.output_details["shape_signature"]) == [-1, 1]
    ref = np.asarray(model(x1000[:256], training=False)).reshape(-1)
    p1 = np.concatenate([runner.predict(x1000[i : i + 1]) for i in range(3)])
    p256 = runner.predict(x1000[:256], batch_size=256)
    assert p256.shape == (256,) and p256.dtype == np.float32
    np.testing.assert_allclose(p1, ref[:3], atol=1e-5)
    np.testing.assert_allclose(p256, ref, atol=1e-5)
    runner.predict(x1000[256:512], batch_size=256)
    assert runner._batch == 256  # the last size is kept: no re-allocation per call
    np.testing.assert_allclose(runner.predict(x1000, batch_size=300), np.asarray(model(x1000)).reshape(-1), atol=1e-5)


def test_runner_bad_inputs(emb):
    runner = LiteRTModel(emb[1])
    with pytest.raises(ValueError, match=r"expected 4 columns \(fields\), got 5"):
        runner.predict(np.zeros((3, 5), np.int32))
    with pytest.raises(ValueError, match="2-D"):
        runner.predict(np.zeros(4, np.int32))
    with pytest.raises(ValueError, match="integer ids"):
        runner.predict(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="row 1, column 2"):
        runner.predict(np.array([[0, 0, 0, 0], [0, 0, -1, 0]]))
    # Beyond a table: LiteRT refuses it; the runner names the row.
    bad = rows(10)
    bad[7, 3] = VOCAB[3]
    with pytest.raises(ValueError, match="row 7"):
        runner.predict(bad)
    checked = LiteRTModel(emb[1], vocab_sizes=VOCAB)
    with pytest.raises(ValueError, match=r"row 7, column 3 .* \[0, 100\)"):
        checked.predict(bad)
    assert runner.predict(np.zeros((2, 4), np.int64)).shape == (2,)  # other int dtypes are fine
    with pytest.raises(ValueError, match="batch_size"):
        runner.predict(rows(2), batch_size=0)
    with pytest.raises(FileNotFoundError):
        LiteRTModel(emb[1].with_name("missing.tflite"))


# ---------------------------------------------------------------------------- parity


def test_parity_error_names_row_and_diff(emb, x1000):
    other = embedding_model(seed=5)  # same architecture, other weights
    with pytest.raises(ParityError) as info:
        check_parity(other, emb[1], x1000, atol=1e-4)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.max_abs_diff > 1e-4 and 0 <= err.row < 1000
    assert f"row {err.row}" in str(err)


# ------------------------------------------------------------------------------ size


def test_size_breakdown_names_tables_and_sums_to_file(emb, custom):
    for path in (emb[1], emb[2]):
        report = size_breakdown(path)
        assert report.total_file_bytes == path.stat().st_size
        assert 0 < report.tensor_bytes <= report.total_file_bytes
        assert sum(report.by_category.values()) == report.tensor_bytes
        assert report.overhead_bytes == report.total_file_bytes - report.tensor_bytes
        for j in range(F):
            assert report.by_layer[f"emb_field{j}"] > 0
        tables = [t for t in report.tensors if t.category == EMBEDDING_TABLES]
        assert sorted(t.layer for t in tables) == [f"emb_field{j}" for j in range(F)]
        assert report.by_category["dense_weights"] > 0
    fp32 = size_breakdown(emb[1]).by_category[EMBEDDING_TABLES]
    assert fp32 == sum(v * 8 * 4 for v in VOCAB)
    # drq quantises weights of >= 1024 elements only (the 100 x 8 table stays float32).
    drq = {t.layer: t for t in size_breakdown(emb[2]).tensors if t.category == EMBEDDING_TABLES}
    for j, v in enumerate(VOCAB):
        t = drq[f"emb_field{j}"]
        assert (t.dtype, t.bytes) == (("int8", v * 8) if v * 8 >= 1024 else ("float32", v * 8 * 4))
    custom_tables = [t for t in size_breakdown(custom[1]).tensors if t.category == EMBEDDING_TABLES]
    assert {t.layer for t in custom_tables} == {"field_embeddings"}
    assert sum(t.bytes for t in custom_tables) == fp32


def test_size_report_dict_text_and_custom_categories(emb):
    report = size_breakdown(emb[1], categorize=lambda t: "big" if t.bytes > 1000 else "small")
    assert set(report.by_category) == {"big", "small"}
    d = json.loads(json.dumps(report.to_dict()))
    assert d["by_category"]["big"] + d["by_category"]["small"] == d["tensor_bytes"]
    text = size_breakdown(emb[1]).to_text()
    assert "emb_field0" in text and "embedding_tables" in text and "(overhead)" in text


def test_artefact_bytes(emb, tmp_path):
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps({"f0": list(range(100))}))
    sizes = artefact_bytes(emb[1], [vocab])
    assert sizes["total"] == emb[1].stat().st_size + vocab.stat().st_size
    assert sizes["extra"] == {str(vocab): vocab.stat().st_size}
    with pytest.raises(FileNotFoundError, match="missing"):
        artefact_bytes(emb[1], [tmp_path / "missing.json"])


# --------------------------------------------------------------------------- latency


def test_latency_interleaved_two_models(emb, x1000):
    lat = measure_latency({"fp32": emb[1], "drq": emb[2]}, x1000, batch_sizes=(1, 256),
                          warmup=3, repeats=20, min_seconds=0.0)
    for name in ("fp32", "drq"):
        for b in (1, 256):
            s = lat[name][b]
            assert s["median_us"] > 0 and s["n"] >= 20
            assert s["p10_us"] <= s["median_us"] <= s["p90_us"]
    assert lat["fp32"][1]["n"] == lat["drq"][1]["n"]  # round-robin: same number of rounds
    r = ratios(lat, reference="fp32")
    assert r["fp32"] == {1: 1.0, 256: 1.0} and r["drq"][256] > 0
    with pytest.raises(KeyError, match="nope"):
        ratios(lat, reference="nope")


def test_no_stray_files(out_dir, emb, custom):
    assert not [p for p in os.listdir(out_dir) if p.startswith(".")]
