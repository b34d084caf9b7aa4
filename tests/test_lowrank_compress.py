"""compress.low_rank (AFM and weight SVD), folding, fine-tuning: exactness, errors, export."""

import keras
import numpy as np
import pytest

from keras_ctr_compress.compress import (
    finetune,
    fold_embedding_projections,
    low_rank,
    uniform_ranks,
)
from keras_ctr_compress.compress.low_rank import (
    EmbeddingIdStats,
    afm_dense_factors,
    afm_embedding_factors,
    default_targets,
    svd_dense_factors,
    svd_embedding_factors,
)
from keras_ctr_compress.data import Field
from keras_ctr_compress.data.schema import Split
from keras_ctr_compress.export import assert_builtins_only, check_parity, export_litert, op_counts
from keras_ctr_compress.layers import LowRankDense, LowRankEmbedding
from keras_ctr_compress.models import TrainConfig, build_model, train_model

FIELDS = [Field(f"f{i}", 60) for i in range(6)]
MLP = (64, 32, 16)


def _split(n: int, seed: int) -> Split:
    """Zipf-like ids; clicks from a rank-2 field interaction (so that the trained
    layers' outputs are correlated, as in real CTR models)."""
    rng = np.random.default_rng(seed)
    ids = np.minimum(rng.zipf(1.3, size=(n, len(FIELDS))) - 1, 59).astype("int32")
    factors = np.random.default_rng(99).normal(size=(len(FIELDS), 60, 2))
    z = sum(factors[f, ids[:, f]] for f in range(len(FIELDS)))
    logit = 1.5 * z[:, 0] * z[:, 1] / len(FIELDS) + 0.5 * z[:, 0] - 0.5
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("float32")
    return Split(ids, y)


@pytest.fixture(scope="module")
def data():
    return _split(6000, 0), _split(2000, 1)


@pytest.fixture(scope="module")
def trained(data):
    train, valid = data
    model = build_model("deepfm", FIELDS, embedding_dim=8, mlp=MLP, seed=0)
    train_model(model, train, valid, TrainConfig(epochs=2, batch_size=256, patience=1, verbose=0))
    return model


def _predict(model, x):
    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)), np.float64)


# ------------------------------------------------------------------ exact at full rank


@pytest.mark.parametrize("method", ["afm", "svd"])
def test_factors_at_full_rank_are_exact(method):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12))
    kernel, bias = rng.normal(size=(12, 9)), rng.normal(size=9)
    y = x @ kernel + bias
    if method == "afm":
        f = afm_dense_factors(kernel, bias, y.mean(0), np.cov(y.T, bias=True), 9)
        got = (x @ f.u + f.middle_bias) @ f.v + f.bias
    else:
        f = svd_dense_factors(kernel, bias, 9)
        got = x @ f.u @ f.v + f.bias
    np.testing.assert_allclose(got, y, atol=1e-9)
    table = rng.normal(size=(40, 6))
    e = (afm_embedding_factors(table, table.mean(0), np.cov(table.T, bias=True), 6) if method == "afm"
         else svd_embedding_factors(table, 6))
    np.testing.assert_allclose(e.table(), table, atol=1e-9)


@pytest.mark.parametrize("method", ["afm", "svd"])
def test_low_rank_at_full_rank_reproduces_every_layer(trained, data, method):
    x = data[1].x[:1000]
    targets = default_targets(trained)
    ranks = {n: min(trained.get_layer(n).weights[0].shape) for n in targets}
    new, report = low_rank(trained, data[0].x[:2000], ranks=ranks, method=method, skip_unprofitable=False)
    assert sorted(report.compressed) == sorted(targets)
    for name in targets:
        old_layer, new_layer = trained.get_layer(name), new.get_layer(name)
        assert isinstance(new_layer, (LowRankDense, LowRankEmbedding))
        if isinstance(new_layer, LowRankEmbedding):
            inp = np.arange(old_layer.input_dim)
        else:
            inp = np.random.default_rng(0).normal(size=(64, old_layer.kernel.shape[0])).astype("float32")
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(new_layer(inp)), keras.ops.convert_to_numpy(old_layer(inp)),
            atol=1e-5, rtol=1e-5,
        )
        assert report.layer(name).rel_error < 1e-10
    np.testing.assert_allclose(_predict(new, x), _predict(trained, x), atol=1e-5)


# --------------------------------------------------------------------- AFM beats SVD


def test_afm_error_below_svd_at_equal_rank(trained, data):
    calib = data[0].x
    ranks = uniform_ranks(trained, dense=4, embedding=2)
    afm_model, afm = low_rank(trained, calib, ranks=ranks, method="afm")
    svd_model, svd = low_rank(trained, calib, ranks=ranks, method="svd")
    assert afm.compressed == svd.compressed == list(ranks)
    for name in ranks:
        a, s = afm.layer(name), svd.layer(name)
        assert a.rank == s.rank == ranks[name]
        assert a.rel_error < s.rel_error, (name, a.rel_error, s.rel_error)
        # AFM's error is exactly the variance its principal subspace leaves out
        assert a.rel_error == pytest.approx(1 - a.explained_variance, abs=1e-9)
    # frequency weighting is optimal for the frequency-weighted error it reports
    _, uniform = low_rank(trained, calib, ranks=ranks, table_weighting="uniform")
    for name in ranks:
        if name.startswith("emb_"):
            assert afm.layer(name).rel_error <= uniform.layer(name).rel_error + 1e-12
    # ... and AFM's end-to-end predictions are closer too
    x = data[1].x
    p = _predict(trained, x)
    assert np.abs(_predict(afm_model, x) - p).mean() < np.abs(_predict(svd_model, x) - p).mean()


def test_row_weights_of_each_table_weighting():
    stats = EmbeddingIdStats(4, "t")
    stats.update(np.array([0, 0, 0, 0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2]))  # counts 4, 1, 9, 0
    np.testing.assert_allclose(stats.row_weights("frequency"), [4 / 14, 1 / 14, 9 / 14, 0])
    np.testing.assert_allclose(stats.row_weights("sqrt"), [2 / 6, 1 / 6, 3 / 6, 0])
    np.testing.assert_allclose(stats.row_weights("uniform"), [0.25] * 4)
    table = np.random.default_rng(0).normal(size=(4, 3))
    mu, cov = stats.output_moments(table, "sqrt")
    w = np.array([2, 1, 3, 0]) / 6
    np.testing.assert_allclose(mu, w @ table)
    np.testing.assert_allclose(cov, (table - mu).T @ ((table - mu) * w[:, None]))


def test_frequency_weighting_has_the_lowest_reported_error(trained, data):
    calib = data[0].x
    ranks = {n: 2 for n in uniform_ranks(trained, embedding=2)}
    errors = {tw: low_rank(trained, calib, ranks=ranks, table_weighting=tw)[1]
              for tw in ("frequency", "sqrt", "uniform")}
    for name in ranks:
        freq, sqrt, uni = (errors[tw].layer(name).rel_error for tw in ("frequency", "sqrt", "uniform"))
        # errors are reported over the lookups, which frequency weighting minimises
        assert freq <= sqrt + 1e-12 and freq <= uni + 1e-12, (name, freq, sqrt, uni)


def test_reported_error_matches_the_layer_outputs(trained, data):
    calib = data[0].x[:3000]
    new, report = low_rank(trained, calib, ranks={"dnn_1": 5, "emb_f2": 3})
    probe = keras.Model(trained.input, [trained.get_layer("dnn_1").input, trained.get_layer("emb_f2").output])
    h, e = (keras.ops.convert_to_numpy(t) for t in probe(calib))
    old, lr = trained.get_layer("dnn_1"), new.get_layer("dnn_1")
    y = h @ old.kernel.numpy() + old.bias.numpy()
    y_hat = (h @ lr.u.numpy() + lr.middle_bias.numpy()) @ lr.v.numpy() + lr.bias.numpy()
    want = np.sum((y - y_hat) ** 2) / np.sum((y - y.mean(0)) ** 2)
    assert report.layer("dnn_1").rel_error == pytest.approx(want, rel=1e-3)
    e_hat = keras.ops.convert_to_numpy(new.get_layer("emb_f2")(calib[:, 2]))
    want = np.sum((e - e_hat) ** 2) / np.sum((e - e.mean(0)) ** 2)
    assert report.layer("emb_f2").rel_error == pytest.approx(want, rel=1e-3)


# ----------------------------------------------------------------- choices and reports


def test_unprofitable_ranks_are_left_alone_and_reported(trained, data):
    # dnn_2 is 32 -> 16: rank 11 >= 32*16/48 = 10.7 saves nothing; emb rank 7 of 8 neither.
    new, report = low_rank(trained, data[0].x[:1000], ranks={"dnn_1": 8, "dnn_2": 11, "emb_f0": 7})
    assert report.compressed == ["dnn_1"]
    kept = report.layer("dnn_2")
    assert kept.status == "kept" and "saves no bytes" in kept.reason and "10.7" in kept.reason
    assert "saves no bytes" in report.layer("emb_f0").reason
    assert type(new.get_layer("dnn_2")) is keras.layers.Dense
    assert type(new.get_layer("emb_f0")) is keras.layers.Embedding
    assert report.layer("emb_f1").reason == "no rank requested"
    assert report.bytes_after < report.bytes_before and "dnn_1" in report.to_text()


def test_bad_ranks_and_options_give_clear_errors(trained, data):
    x = data[0].x[:500]
    with pytest.raises(ValueError, match=r"'dnn_1'.*min\(in, out\) = min\(64, 32\) = 32\]\. Received: rank=33"):
        low_rank(trained, x, ranks={"dnn_1": 33})
    with pytest.raises(ValueError, match=r"'emb_f0'.*Received: rank=0"):
        low_rank(trained, x, ranks={"emb_f0": 0})
    with pytest.raises(ValueError, match=r"'dnn_1'.*Received: rank=-1"):
        low_rank(trained, x, ranks={"dnn_1": -1})
    with pytest.raises(ValueError, match=r"'dnn_1'.*rank=4.0 \(float\)"):
        low_rank(trained, x, ranks={"dnn_1": 4.0})
    with pytest.raises(ValueError, match="no layer"):
        low_rank(trained, x, ranks={"dnn_9": 4})
    with pytest.raises(ValueError, match="FieldPairInteraction"):
        low_rank(trained, x, ranks={"pairs": 1})
    with pytest.raises(ValueError, match="method"):
        low_rank(trained, x, ranks={"dnn_1": 4}, method="pca")
    with pytest.raises(ValueError, match="explained_variance"):
        low_rank(trained, x, explained_variance=1.5)
    for bad in (-0.1, 1.5, float("nan"), "0.5", True):
        with pytest.raises(ValueError, match=r"`covariance_power` must be a number in \[0, 1\]"):
            low_rank(trained, x, ranks={"dnn_1": 4}, covariance_power=bad)
    with pytest.raises(ValueError, match="method='svd' factorises the weights"):
        low_rank(trained, x, ranks={"dnn_1": 4}, method="svd", covariance_power=0.5)
    with pytest.raises(ValueError, match="table_weighting"):
        low_rank(trained, x, ranks={"dnn_1": 4}, table_weighting="log")


def test_covariance_power_spans_svd_to_afm(trained, data):
    calib = data[0].x[:3000]
    ranks = {"dnn_1": 5, "dnn_2": 5}

    def kernels(model):
        return {n: model.get_layer(n).u.numpy() @ model.get_layer(n).v.numpy() for n in ranks}

    afm_model, afm = low_rank(trained, calib, ranks=ranks)
    same_model, _ = low_rank(trained, calib, ranks=ranks, covariance_power=1.0)
    svd_model, _ = low_rank(trained, calib, ranks=ranks, method="svd")
    flat_model, _ = low_rank(trained, calib, ranks=ranks, covariance_power=0.0)
    _, half = low_rank(trained, calib, ranks=ranks, covariance_power=np.float32(0.5))
    for name in ranks:
        np.testing.assert_allclose(kernels(same_model)[name], kernels(afm_model)[name], atol=1e-7)
        # C_x^0 = I: the subspace of K^T K is the weights' right singular subspace, so the
        # rank-k map K V_k V_k^T is exactly the SVD truncation U_k S_k V_k^T
        np.testing.assert_allclose(kernels(flat_model)[name], kernels(svd_model)[name], atol=1e-5)
        # AFM (power 1) minimises the output error that every report measures
        assert afm.layer(name).rel_error <= half.layer(name).rel_error + 1e-12
        assert half.layer(name).explained_variance == pytest.approx(1 - half.layer(name).rel_error)


def test_default_targets_skip_first_hidden_and_output_layers(trained):
    assert default_targets(trained) == [f"emb_{f.name}" for f in FIELDS] + ["dnn_1", "dnn_2"]


def test_explained_variance_and_sequential_order(trained, data):
    x = data[0].x[:3000]
    _, report = low_rank(trained, x, explained_variance=0.9, layers=["dnn_1", "dnn_2"])
    for r in report.layers:
        assert r.explained_variance >= 0.9 - 1e-9
    new, seq = low_rank(trained, x, ranks={"dnn_1": 6, "dnn_2": 6}, order="sequential")
    assert seq.compressed == ["dnn_1", "dnn_2"]
    assert isinstance(new.get_layer("dnn_2"), LowRankDense)


def test_original_model_untouched(trained, data):
    before = [w.copy() for w in trained.get_weights()]
    low_rank(trained, data[0].x[:1000], ranks=uniform_ranks(trained, dense=4, embedding=2),
             fold_embeddings=True)
    assert all(np.array_equal(a, b) for a, b in zip(before, trained.get_weights(), strict=True))
    assert all(type(layer) is not LowRankDense for layer in trained.layers)


# ------------------------------------------------------------------------- folding


@pytest.mark.parametrize("method", ["afm", "svd"])
def test_fold_embeddings_keeps_outputs(trained, data, method):
    x = data[1].x
    ranks = uniform_ranks(trained, dense=4, embedding=2)
    ranks.pop("emb_f3")  # a plain table among the folded ones
    plain, _ = low_rank(trained, data[0].x, ranks=ranks, method=method)
    folded, report = low_rank(trained, data[0].x, ranks=ranks, method=method, fold_embeddings=True)
    np.testing.assert_allclose(_predict(folded, x), _predict(plain, x), atol=1e-6)
    (rec,) = report.folded
    assert rec["layer"] == "dnn_0" and rec["input_before"] == 6 * 8 and rec["input_after"] == 5 * 2 + 8
    assert rec["bytes_after"] < rec["bytes_before"]
    assert folded.get_layer("dnn_0").kernel.shape == (18, MLP[0])
    # the FM branch still reads reconstructed embeddings
    assert folded.get_layer("emb_stack").output.shape == (None, 6, 8)


def test_fold_into_a_low_rank_first_layer(trained, data):
    x = data[1].x[:500]
    ranks = {**uniform_ranks(trained, embedding=3), "dnn_0": 8}
    plain, _ = low_rank(trained, data[0].x[:2000], ranks=ranks)
    folded, folds = fold_embedding_projections(plain)
    assert folds[0]["layer"] == "dnn_0" and isinstance(folded.get_layer("dnn_0"), LowRankDense)
    np.testing.assert_allclose(_predict(folded, x), _predict(plain, x), atol=1e-6)


# ------------------------------------------------------------- round trip and export


def test_compressed_deepfm_round_trip_and_litert_parity(trained, data, tmp_path):
    x = data[1].x[:1000]
    ranks = uniform_ranks(trained, dense=4, embedding=2)
    model, _ = low_rank(trained, data[0].x, ranks=ranks, fold_embeddings=True)
    path = tmp_path / "afm.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(_predict(loaded, x), _predict(model, x))
    assert loaded.get_layer("emb_f0").return_codes

    tfl = export_litert(model, tmp_path / "afm.tflite")
    assert_builtins_only(tfl)
    assert check_parity(model, tfl, x, atol=1e-4) <= 1e-4
    ops = op_counts(tfl)
    # 6 code tables + 6 first-order tables; 6 projections (FM branch), folded dnn_0,
    # 2 x 2 low-rank Dense, dnn_out
    assert ops["GATHER"] == 12 and ops["FULLY_CONNECTED"] == 6 + 1 + 4 + 1, ops


# ------------------------------------------------------------------------ fine-tuning


def test_finetune_never_worsens_validation_auc(trained, data):
    train, valid = data
    model, _ = low_rank(trained, train.x, ranks=uniform_ranks(trained, dense=2, embedding=1))
    summary = finetune(model, Split(train.x[:3000], train.y[:3000]), valid, epochs=1, batch_size=512)
    assert summary["best_val_auc"] >= summary["initial_val_auc"]
    assert summary["best_epoch"] in (0, 1) and summary["epochs"] == 1
    with pytest.raises(ValueError, match="epochs"):
        finetune(model, train, valid, epochs=0)


def test_tf_data_calibration_equals_numpy(trained, data):
    import tensorflow as tf

    x, y = data[0].x[:2000], data[0].y[:2000]
    ranks = {"dnn_1": 4, "emb_f1": 2}
    a, ra = low_rank(trained, x, ranks=ranks, batch_size=512)
    b, rb = low_rank(trained, tf.data.Dataset.from_tensor_slices((x, y)).batch(300), ranks=ranks)
    assert ra.calibration_rows == rb.calibration_rows == 2000
    np.testing.assert_allclose(_predict(a, data[1].x), _predict(b, data[1].x), atol=1e-5)
    _, rc = low_rank(trained, x, ranks=ranks, batch_size=500, calibration_batches=2)
    assert rc.calibration_rows == 1000


def test_fm_part_is_the_model_without_its_dnn():
    from keras_ctr_compress.bench.lowrank_methods import fm_part
    from keras_ctr_compress.data import load_dataset
    from keras_ctr_compress.models import build_model
    ds = load_dataset("synthetic:rows=2000,fields=4,numeric=0,total_vocab=200,seed=1")
    model = build_model("deepfm", ds.fields, mlp=(8,), embedding_dim=4, seed=0)
    part = fm_part(model)
    assert not [la for la in part.layers if isinstance(la, keras.layers.Dense)]
    probe = keras.Model(model.inputs, [model.get_layer("linear").output, model.get_layer("pairs").output])
    lin, pairs = probe.predict(ds.test.x, verbose=0)
    expected = 1 / (1 + np.exp(-(lin + pairs)))
    np.testing.assert_allclose(part.predict(ds.test.x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="fm-part needs deepfm or deepfwfm"):
        fm_part(build_model("dcnv2", ds.fields, mlp=(8,), embedding_dim=4))


def test_afm_dense_factors_are_balanced_and_exact():
    rng = np.random.default_rng(0)
    kernel, bias = rng.normal(size=(12, 9)) * 3.0, rng.normal(size=9)
    x = rng.normal(size=(500, 12))
    y = x @ kernel + bias
    plain = afm_dense_factors(kernel, bias, y.mean(0), np.cov(y.T, bias=True), 4, balance=False)
    f = afm_dense_factors(kernel, bias, y.mean(0), np.cov(y.T, bias=True), 4)
    # the same map, through a middle ReLU too (positive rescaling commutes with it)
    np.testing.assert_allclose(x @ f.u @ f.v, x @ plain.u @ plain.v, atol=1e-9)
    relu = lambda z: np.maximum(z, 0)  # noqa: E731
    np.testing.assert_allclose(relu(x @ f.u + f.middle_bias) @ f.v, relu(x @ plain.u + plain.middle_bias) @ plain.v,
                               atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(f.u, axis=0), np.linalg.norm(f.v, axis=1), rtol=1e-9)
    assert np.allclose(np.linalg.norm(plain.v, axis=1), 1.0)  # unbalanced: B orthonormal
