"""The cost model against real exports, and apply_plan end to end (parity, original untouched)."""

import numpy as np
import pytest

from keras_ctr_compress.compress import select_fields
from keras_ctr_compress.data import load_dataset
from keras_ctr_compress.export import export_litert
from keras_ctr_compress.layers import (
    LowRankDense,
    LowRankEmbedding,
    QuantizedEmbedding,
    RowwiseQuantEmbedding,
)
from keras_ctr_compress.models import TrainConfig, build_model, train_model
from keras_ctr_compress.search import (
    CostModel,
    DensePlan,
    PairPlan,
    Plan,
    TablePlan,
    apply_plan,
    export_plan,
    plan_bytes,
    search_space,
)

SPEC = "synthetic:rows=6000,fields=5,numeric=0,noise_fields=1,total_vocab=500,seed=3"
#: the cost model must agree with the exported file within this share of its size
TOLERANCE = 0.01


@pytest.fixture(scope="module")
def data():
    return load_dataset(SPEC)


@pytest.fixture(scope="module")
def trained(data):
    models = {}
    for name in ("deepfm", "deepfwfm"):
        model = build_model(name, data.fields, mlp=(32, 32), embedding_dim=6, seed=0)
        train_model(model, data.train, data.valid, TrainConfig(epochs=1, verbose=0))
        models[name] = model
    return models


def _exported_bytes(model, plan, data, path) -> int:
    small, _ = apply_plan(model, plan, data, finetune=False)
    return export_litert(small, path, quantization="drq" if plan.drq else None).stat().st_size


@pytest.mark.parametrize(("name", "seed"), [("deepfm", 0), ("deepfwfm", 1)])
def test_plan_bytes_agree_with_exported_files_on_random_plans(trained, data, tmp_path, name, seed):
    model = trained[name]
    cost = CostModel(model)
    assert cost.plan_bytes(Plan()) == cost.reference_bytes  # the fp32 plan is the measured file
    space = search_space(model)
    rng = np.random.default_rng(seed)
    plans = [space.sample(rng) for _ in range(5)]
    errors = {}
    for k, plan in enumerate(plans):
        actual = _exported_bytes(model, plan, data, tmp_path / f"{k}.tflite")
        errors[plan.to_json(indent=None)] = (cost.plan_bytes(plan) - actual) / actual
    worst = max(abs(e) for e in errors.values())
    assert worst < TOLERANCE, errors
    print(f"{name}: relative errors {sorted(round(e, 4) for e in errors.values())}")


def test_plan_bytes_on_a_plan_using_every_component(trained, data, tmp_path):
    model = trained["deepfwfm"]
    plan = Plan(
        tables={"c0": TablePlan("quant", bits=2, granularity="row"),
                "c4": TablePlan("rowwise", tiers=("fp16", "int8", "int4", "int2", "pruned"),
                                fractions=(0.1, 0.2, 0.3, 0.2, 0.2)),
                "c2": TablePlan("pruned"), "c3": TablePlan("lowrank", rank=2),
                "c1": TablePlan("quant", bits=4, granularity="table")},
        dense={"dnn_0": DensePlan(units=24, rank=4), "dnn_1": DensePlan(units=16)},
        pairs=PairPlan(sparsity=0.5), drq=True,
    )
    actual = _exported_bytes(model, plan, data, tmp_path / "all.tflite")
    breakdown = CostModel(model).breakdown(plan)
    assert abs(breakdown["total"] - actual) / actual < TOLERANCE, (breakdown, actual)
    assert {c["key"] for c in breakdown["components"]} >= {
        "quant2row", "quant4table", "remap16", "rwfirst_fp16", "rwlater_int2", "drop", "lowrank",
        "fold_site", "lowrank_dense", "pairs_fwfm"}


def test_apply_plan_finetunes_exports_with_parity_and_leaves_the_original(trained, data, tmp_path):
    model = trained["deepfm"]
    weights = [w.copy() for w in model.get_weights()]
    layer_types = [type(layer) for layer in model.layers]
    plan = Plan(
        tables={"c0": TablePlan("quant", bits=4), "c1": TablePlan("rowwise", tiers=("int8", "int4", "pruned"),
                                                                     fractions=(0.25, 0.5, 0.25)),
                "c2": TablePlan("lowrank", rank=2), "c3": TablePlan("pruned")},
        dense={"dnn_0": DensePlan(units=16), "dnn_1": DensePlan(rank=4)},
        pairs=PairPlan(sparsity=0.5), drq=True,
    )
    small, info = apply_plan(model, plan, data)

    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights(), strict=True))
    assert [type(layer) for layer in model.layers] == layer_types
    assert info["kept_fields"] == ["c0", "c1", "c2", "c4"] and info["pruned_fields"] == ["c3"]
    assert len(info["kept_units"]["dnn_0"]) == 16 and len(info["kept_pairs"]) == 3
    assert info["finetune"]["epochs"] == 1 and info["finetune"]["best_val_auc"] >= info["finetune"]["initial_val_auc"]
    kinds = {layer.name: type(layer) for layer in small.layers}
    assert kinds["emb_c0"] is QuantizedEmbedding and small.get_layer("emb_c0").mode == "inference"
    assert kinds["emb_c1"] is RowwiseQuantEmbedding and small.get_layer("emb_c1").mode == "inference"
    assert kinds["emb_c2"] is LowRankEmbedding and kinds["dnn_1"] is LowRankDense
    assert "emb_c3" not in kinds and small.get_layer("dnn_0").units == 16

    x = select_fields(data.test.x, info["kept_field_indices"])
    out = export_plan(small, plan, tmp_path / "small.tflite", check_x=x)
    assert out["parity_max_abs"] <= 1e-4  # the float (non-DRQ) export: exact up to float round-off
    assert out["drq_max_abs"] is not None and (tmp_path / "small.tflite").exists()
    assert not (tmp_path / "small.float.tflite").exists()
    assert abs(plan_bytes(model, plan) - out["bytes"]) / out["bytes"] < TOLERANCE
