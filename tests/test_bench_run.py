"""run_benchmark end to end at tiny size, including a field-pruned candidate that takes
fewer input columns (scored, parity-checked and timed on the same rows)."""

from keras_ctr_compress.bench import load_record, run_benchmark
from keras_ctr_compress.models import TrainConfig

TINY = "synthetic:rows=8000,fields=6,numeric=0,noise_fields=2,total_vocab=800,seed=5"


def test_run_benchmark_with_field_pruning(tmp_path):
    out = tmp_path / "rec.json"
    rec = run_benchmark(TINY, model="deepfwfm", methods=["shark-fields", "drq"], seeds=[0],
                        json_out=out, quick=True, train_config=TrainConfig(epochs=1, verbose=0),
                        model_kwargs={"mlp": (16,), "embedding_dim": 4}, latency_seconds=0.05,
                        log=lambda s: None)
    assert load_record(out)["results"] == rec["results"]
    rows = {r["method"]: r for r in rec["results"]}
    assert list(rows) == ["fp32", "shark-fields", "drq"]
    shark = rows["shark-fields"]
    assert len(shark["input_columns"]) == 4 and shark["parity_enforced"]
    assert shark["parity_max_abs"] <= 1e-4 and shark["latency_us_b1"] > 0
    assert shark["tflite_bytes"] < rows["fp32"]["tflite_bytes"]
    assert not rows["drq"]["parity_enforced"]
    assert rec["machine"]["cores"] >= 1 and rec["machine"]["tensorflow"].startswith("2.")
