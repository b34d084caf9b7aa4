"""The ``tfmot-prune`` peer: TFMOT's prune_low_magnitude on a tf_keras copy, in a child
process. The end-to-end runs need a Python with the ``bench`` extra
(``$KCC_TFMOT_PYTHON`` or this one) and skip cleanly without it."""

import subprocess
import sys
import venv

import pytest

import keras_ctr_compress.bench.tfmot_peer as tfmot_peer
from keras_ctr_compress.bench import run_benchmark
from keras_ctr_compress.bench.registry import MethodContext
from keras_ctr_compress.models import TrainConfig

TINY = "synthetic:rows=6000,fields=5,numeric=0,noise_fields=1,total_vocab=500,seed=3"


def _has_tfmot(python: str) -> bool:
    """The importorskip check, run in the child's Python (importing TFMOT here would
    switch this process to Keras 2)."""
    try:
        tfmot_peer.check_tfmot_python(python)
    except RuntimeError:
        return False
    return True


needs_tfmot = pytest.mark.skipif(
    not _has_tfmot(tfmot_peer.tfmot_python()),
    reason=f"tensorflow-model-optimization / tf-keras not installed in {tfmot_peer.tfmot_python()} "
    f"(pip install -e .[bench], or set {tfmot_peer.PYTHON_ENV})",
)


@needs_tfmot
@pytest.mark.parametrize("model", ["deepfwfm", "deepfm"])
def test_tfmot_prune_end_to_end(tmp_path, model):
    rec = run_benchmark(TINY, model=model, methods=["tfmot-prune"], seeds=[0], quick=True,
                        workdir=tmp_path, train_config=TrainConfig(epochs=1, verbose=0),
                        model_kwargs={"mlp": (16, 16), "embedding_dim": 4}, latency_seconds=0.05,
                        log=lambda s: None)
    rows = {r["method"]: r for r in rec["results"]}
    assert list(rows) == ["fp32", "tfmot-prune"]
    row = rows["tfmot-prune"]
    assert (tmp_path / "seed0" / "tfmot-prune.tflite").stat().st_size == row["tflite_bytes"] > 0
    assert not (tmp_path / "seed0" / "tfmot-prune" / "data.npz").exists()  # training copy removed
    extra, plan = row["extra"], row["plan"]
    target = tfmot_peer.DEEPLIGHT["target_sparsity"]
    assert plan["target_sparsity"] == target and plan["pruned_layers"] == ["dnn_0", "dnn_1"]
    # each hidden kernel is pruned to the target (up to TFMOT's rounding of k), dnn_out is not
    for name, s in extra["sparsity_per_layer"].items():
        assert abs(s - target) <= 0.01, (name, s)
    assert abs(extra["dnn_sparsity"] - target) <= 0.01
    # the tf_keras copy equalled the Keras 3 model before pruning; the file equals the pruned one
    assert extra["copy_parity_max_abs"] <= 1e-5 and extra["file_parity_max_abs"] <= 1e-4
    # zeros stay dense float32 in the file (same weight bytes as fp32); gzip sees them
    assert row["size_by_category"] == {**rows["fp32"]["size_by_category"], "other": pytest.approx(
        rows["fp32"]["size_by_category"]["other"], abs=64)}
    assert extra["tflite_gzip_bytes"] < extra["fp32_tflite_gzip_bytes"]
    assert row["train_seconds"] > 0 and extra["best_epoch"] >= plan["ramp_epochs"]
    # the row's parity is the file against its own (pruned tf_keras) model, enforced
    assert row["parity_enforced"] and row["parity_max_abs"] == extra["file_parity_max_abs"]
    assert 0.5 < row["test_auc"] <= 1.0
    assert row["latency_us_b1"] > 0


def _bare_ctx(tmp_path) -> MethodContext:
    # the python check comes before anything touches the model or the data
    return MethodContext(dataset=None, model_name="deepfm", seed=0, fp32_model=None,
                         fp32_tflite=tmp_path / "fp32.tflite", workdir=tmp_path)


def test_clear_error_without_tfmot(tmp_path, monkeypatch):
    bare = tmp_path / "bare"
    venv.create(bare, with_pip=False)  # no site-packages of ours: no TFMOT, no numpy
    python = bare / "bin" / "python"
    assert subprocess.run([str(python), "-c", "pass"]).returncode == 0
    monkeypatch.setenv(tfmot_peer.PYTHON_ENV, str(python))
    with pytest.raises(RuntimeError) as err:
        tfmot_peer.tfmot_prune(_bare_ctx(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and "tensorflow_model_optimization" in msg and str(python) in msg
    assert "pip install -e .[bench]" in msg and tfmot_peer.PYTHON_ENV in msg
    assert not (tmp_path / "seed0").exists()  # failed before writing anything


def test_clear_error_for_a_missing_python(tmp_path, monkeypatch):
    monkeypatch.setenv(tfmot_peer.PYTHON_ENV, str(tmp_path / "no-such-python"))
    with pytest.raises(RuntimeError, match=r"pip install -e \.\[bench\]"):
        tfmot_peer.tfmot_prune(_bare_ctx(tmp_path))


def test_default_python_and_unsupported_model(tmp_path, monkeypatch):
    monkeypatch.delenv(tfmot_peer.PYTHON_ENV, raising=False)
    assert tfmot_peer.tfmot_python() == sys.executable
    ctx = _bare_ctx(tmp_path)
    ctx.model_name = "dcnv2"
    with pytest.raises(ValueError, match="deepfm or deepfwfm"):
        tfmot_peer.tfmot_prune(ctx)


@needs_tfmot
def test_copy_mismatch_fails_loudly(tmp_path, monkeypatch):
    """The child refuses to prune when its tf_keras copy differs from the Keras 3 model."""
    from keras_ctr_compress.data import load_dataset
    from keras_ctr_compress.models import build_model

    ds = load_dataset(TINY, seed=0)
    model = build_model("deepfwfm", ds.fields, mlp=(8,), embedding_dim=4, seed=0)
    real_predict = model.predict
    # the "Keras 3 predictions" the child checks against are off by 1e-3
    monkeypatch.setattr(model, "predict", lambda x, **kw: real_predict(x, **kw) + 1e-3)
    ctx = MethodContext(ds, "deepfwfm", 0, model, tmp_path / "fp32.tflite", tmp_path, quick=True)
    with pytest.raises(RuntimeError, match=r"tf_keras copy vs the Keras 3 model: max \|difference\|"):
        tfmot_peer.tfmot_prune(ctx)
    assert not (tmp_path / "seed0" / "tfmot-prune.tflite").exists()
