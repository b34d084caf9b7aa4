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
    agreement = shark["extra"]["importance"]
    assert set(agreement["scores"]) == {"taylor", "permutation", "norm"}
    assert -1.0 <= agreement["spearman_taylor_vs_permutation"] <= 1.0


def test_field_pruning_baselines(tmp_path):
    rec = run_benchmark(TINY, model="deepfm", methods=["shark-fields-norm", "shark-fields-random"],
                        seeds=[0], quick=True, train_config=TrainConfig(epochs=1, verbose=0),
                        model_kwargs={"mlp": (8,), "embedding_dim": 4}, latency_seconds=0.02,
                        log=lambda s: None)
    rows = {r["method"]: r for r in rec["results"]}
    assert len(rows["shark-fields-norm"]["input_columns"]) == 4
    draws = rows["shark-fields-random"]["extra"]["random_draws"]
    assert len(draws) == 5 and len({tuple(d["kept_fields"]) for d in draws}) > 1
    # the shipped file is draw 1: its LiteRT AUC equals that draw's Keras AUC
    assert abs(rows["shark-fields-random"]["test_auc"] - draws[0]["test_auc"]) < 1e-4


def test_run_benchmark_quantised_embeddings(tmp_path):
    rec = run_benchmark(TINY, model="deepfm", methods=["alpt-4", "lpt-sr-2", "rowwise", "drq"], seeds=[0],
                        json_out=tmp_path / "q.json", quick=True, train_config=TrainConfig(epochs=1, verbose=0),
                        model_kwargs={"mlp": (16,), "embedding_dim": 6}, latency_seconds=0.05,
                        log=lambda s: None)
    rows = {r["method"]: r for r in rec["results"]}
    fp32_emb = rows["fp32"]["size_by_category"]["embedding_tables"]
    for name in ("alpt-4", "lpt-sr-2", "rowwise"):
        row = rows[name]
        extra = row["extra"]
        # exact where defined (quantised tables + float MLP), reported for the DRQ'd file
        assert extra["quantized_parity_max_abs"] <= 1e-5 and not row["parity_enforced"]
        analytic = sum(extra["quantized_tables_analytic_bytes"].values())
        in_file = sum(v for k, v in extra["quantized_tables_file_bytes"].items() if k != "other")
        assert abs(in_file - analytic) <= 0.02 * analytic
        # At this size the flatbuffer's per-tensor structure (names, shapes, the unpacking
        # ops of every table) outweighs the tables, so whole files are compared on frappe
        # (the committed record); here the quantised tables themselves must be small.
        assert in_file < fp32_emb / 2
        assert rows["drq"]["tflite_bytes"] < rows["fp32"]["tflite_bytes"]
        assert row["plan"]["method"] == {"alpt-4": "alpt", "lpt-sr-2": "lpt-sr", "rowwise": "rowwise"}[name]
    # int4 codes of dim-6 rows: 3 bytes a row instead of 24 (fp32_emb also holds the
    # float first-order tables, so 1/8 of it bounds the codes from above)
    assert rows["alpt-4"]["extra"]["quantized_tables_file_bytes"]["embedding_tables"] < fp32_emb / 8
    assert rows["rowwise"]["size_by_category"]["embedding_remap"] > 0
    assert sum(rows["rowwise"]["extra"]["rows_per_tier"]["emb_c0"]) > 0


def test_reference_dir_reuses_the_trained_reference_only_for_the_same_settings(tmp_path):
    logs: list[str] = []
    common = dict(model="deepfm", methods=["drq"], seeds=[0], quick=True,
                  model_kwargs={"mlp": (8,), "embedding_dim": 4}, latency_seconds=0.02,
                  reference_dir=tmp_path / "refs", log=logs.append)
    first = run_benchmark(TINY, train_config=TrainConfig(epochs=1, verbose=0), **common)
    assert (tmp_path / "refs").is_dir() and not any("loaded" in s for s in logs)
    logs.clear()
    second = run_benchmark(TINY, train_config=TrainConfig(epochs=1, verbose=0), **common)
    assert any("fp32 reference loaded" in s for s in logs)
    for a, b in zip(first["results"], second["results"], strict=True):
        assert a["method"] == b["method"] and a["test_auc"] == b["test_auc"]
        assert a["tflite_bytes"] == b["tflite_bytes"]
    assert second["results"][0]["train_seconds"] == first["results"][0]["train_seconds"]
    logs.clear()
    run_benchmark(TINY, train_config=TrainConfig(epochs=2, verbose=0), **common)  # another recipe
    assert any("trained with other settings" in s for s in logs)
    assert not any("fp32 reference loaded" in s for s in logs)


def test_lpt_rows_train_their_tables_at_the_rate_of_their_method_and_code_width(tmp_path):
    """``LPT_TABLE_LR``: each lpt method's table rate at each width (qat tables train with
    Adam); ``ALPT_STEP_LR``: alpt's step rate at each width."""
    from keras_ctr_compress.bench.quant_methods import (
        ALPT_STEP_LR,
        LPT_TABLE_LR,
        _train_from_scratch,
    )
    from keras_ctr_compress.bench.registry import MethodContext
    from keras_ctr_compress.data import load_dataset
    from keras_ctr_compress.layers import QuantizedEmbedding

    ds = load_dataset(TINY)
    ctx = MethodContext(ds, "deepfm", 0, None, None, tmp_path, True, TrainConfig(epochs=1, verbose=0),
                        extra={"model_kwargs": {"mlp": (8,), "embedding_dim": 4}})
    assert LPT_TABLE_LR == {"lpt-dr": {8: 0.05, 4: 0.2, 2: 0.1}, "lpt-sr": {8: 0.05, 4: 0.1, 2: 0.1},
                            "alpt": {8: 0.05, 4: 0.2, 2: 0.2}}
    assert ALPT_STEP_LR == {8: 1e-5, 4: 3e-6, 2: 1e-5}
    for method, bits, rate, step_rate in (("alpt", 4, 0.2, 3e-6), ("lpt-sr", 2, 0.1, None), ("qat", 4, None, None)):
        model, info = _train_from_scratch(ctx, method, bits)
        tables = [layer for layer in model.layers if isinstance(layer, QuantizedEmbedding)]
        assert tables and info.get("table_learning_rate") == rate
        assert info.get("step_learning_rate") == step_rate
        if rate is not None:
            assert {t.learning_rate for t in tables} == {rate}
        if step_rate is not None:  # alpt only: the others do not learn their step
            assert {t.step_learning_rate for t in tables} == {step_rate}
