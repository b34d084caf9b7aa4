"""Plans (JSON, validation with one-line errors) and the search space derived from a model."""

import json

import numpy as np
import pytest

from keras_ctr_compress.data import load_dataset
from keras_ctr_compress.layers import RowwiseQuantEmbedding
from keras_ctr_compress.models import build_model
from keras_ctr_compress.search import (
    PLAN_VERSION,
    DensePlan,
    PairPlan,
    Plan,
    SearchSpace,
    TablePlan,
    anatomy,
    rowwise_tier_sizes,
    search_space,
    validate,
)

SPEC = "synthetic:rows=6000,fields=5,numeric=0,noise_fields=1,total_vocab=500,seed=3"


@pytest.fixture(scope="module")
def fields():
    return load_dataset(SPEC).fields


@pytest.fixture(scope="module")
def deepfm(fields):
    return build_model("deepfm", fields, mlp=(32, 32), embedding_dim=6, seed=0)


@pytest.fixture(scope="module")
def deepfwfm(fields):
    return build_model("deepfwfm", fields, mlp=(32, 32), embedding_dim=6, seed=0)


def full_plan() -> Plan:
    return Plan(
        tables={"c0": TablePlan("quant", bits=4), "c1": TablePlan("quant", bits=2, granularity="table"),
                "c2": TablePlan("rowwise", tiers=("fp16", "int8", "pruned"), fractions=(0.1, 0.6, 0.3)),
                "c3": TablePlan("lowrank", rank=2), "c4": TablePlan("pruned")},
        dense={"dnn_0": DensePlan(units=16), "dnn_1": DensePlan(rank=4)},
        pairs=PairPlan(kept=(("c0", "c1"), ("c2", "c3"))), drq=True, model="deepfm",
    )


# ------------------------------------------------------------------------------ JSON


def test_json_round_trip_and_atomic_save(tmp_path, deepfm):
    plan = full_plan()
    again = Plan.from_json(plan.to_json())
    assert again == plan and again.to_dict() == plan.to_dict()
    d = json.loads(plan.to_json())
    assert d["version"] == PLAN_VERSION and d["tables"]["c2"]["tiers"] == ["fp16", "int8", "pruned"]
    path = plan.save(tmp_path / "sub" / "plan.json")
    assert Plan.load(path) == plan
    assert [p.name for p in path.parent.iterdir()] == ["plan.json"]  # no temporary file left
    validate(Plan.load(path), deepfm)


def test_defaults_are_left_out_and_read_back():
    plan = Plan(tables={"c0": TablePlan("fp32")}, dense={"dnn_0": DensePlan()})
    d = plan.to_dict()
    assert d["tables"] == {} and d["dense"] == {} and "pairs" not in d
    assert Plan.from_dict({"version": 1}).table("c0").method == "fp32"
    assert Plan.from_dict({"version": 1, "tables": {"c0": {"method": "quant", "bits": 8}}}).table("c0").granularity == "row"


# ------------------------------------------------------------------------ validation

BAD_JSON = [
    ({"version": 2}, "plan entry version: plan version 2 is not supported (this library reads version 1)"),
    ({}, "plan entry version: missing"),
    ({"version": 1, "tables": {"c0": {"method": "quant", "bits": 3}}},
     "plan entry tables.c0: bits=3 is not allowed for method 'quant' (choose 8, 4 or 2)"),
    ({"version": 1, "tables": {"c0": {"method": "zip"}}}, "plan entry tables.c0: unknown method 'zip'"),
    ({"version": 1, "tables": {"c0": {"method": "lowrank", "rank": 0}}},
     "plan entry tables.c0: method 'lowrank' needs an integer rank >= 1, got rank=0"),
    ({"version": 1, "tables": {"c0": {"method": "lowrank", "rank": 2, "bits": 4}}},
     "plan entry tables.c0: 'bits' does not apply to method 'lowrank'"),
    ({"version": 1, "tables": {"c0": {"method": "quant", "bits": 4, "granularity": "col"}}},
     "plan entry tables.c0: granularity='col' is not allowed"),
    ({"version": 1, "tables": {"c0": {"method": "quant", "bitz": 4}}}, "plan entry tables.c0: unknown key 'bitz'"),
    ({"version": 1, "tables": {"c0": {"method": "rowwise", "tiers": ["int4", "int8"], "fractions": [0.5, 0.5]}}},
     "plan entry tables.c0: tiers ['int4', 'int8'] must go from most to least precise"),
    ({"version": 1, "tables": {"c0": {"method": "rowwise", "tiers": ["int3"], "fractions": [1]}}},
     "plan entry tables.c0: unknown tier 'int3'"),
    ({"version": 1, "tables": {"c0": {"method": "rowwise", "tiers": ["int8", "int4"], "fractions": [0.5, 0.4]}}},
     "plan entry tables.c0: fractions must be non-negative numbers summing to 1"),
    ({"version": 1, "dense": {"dnn_0": {"rank": 0}}}, "plan entry dense.dnn_0: rank must be an integer >= 1"),
    ({"version": 1, "pairs": {"sparsity": 1.0}}, "plan entry pairs: sparsity must be a number in [0, 1)"),
    ({"version": 1, "pairs": {"kept": [["c0", "c0"]]}}, "plan entry pairs: pair ['c0', 'c0'] pairs a field with itself"),
    ({"version": 1, "finetune": {"epochs": -1}}, "plan entry finetune: epochs must be an integer >= 0"),
    ({"version": 1, "drq": "yes"}, "plan entry drq: must be true or false"),
]


@pytest.mark.parametrize(("d", "message"), BAD_JSON)
def test_bad_plan_files_fail_with_one_line(d, message):
    with pytest.raises(ValueError) as e:
        Plan.from_dict(d)
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_load_names_the_file(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"version": 1, "tables": {"c0": {"method": "quant", "bits": 3}}}')
    with pytest.raises(ValueError, match=r"p.json: plan entry tables.c0: bits=3"):
        Plan.load(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"p.json: plan: not valid JSON \(line 1"):
        Plan.load(path)


BAD_FOR_MODEL = [
    (Plan(tables={"zz": TablePlan("pruned")}), "plan entry tables.zz: model 'deepfm' has no field 'zz' (fields: c0, c1, c2, c3, c4)"),
    (Plan(dense={"dnn_9": DensePlan(rank=2)}), "plan entry dense.dnn_9: model 'deepfm' has no Dense layer 'dnn_9'"),
    (Plan(tables={"c0": TablePlan("lowrank", rank=6)}),
     "plan entry tables.c0: rank=6 must be in [1, 5] (below min(rows, dim) = min(11, 6) = 6)"),
    (Plan(dense={"dnn_1": DensePlan(rank=32)}),
     "plan entry dense.dnn_1: rank=32 must be in [1, 31]: below min(in, out) = min(32, 32) = 32 after pruning"),
    (Plan(dense={"dnn_0": DensePlan(units=8), "dnn_1": DensePlan(rank=8)}),
     "plan entry dense.dnn_1: rank=8 must be in [1, 7]: below min(in, out) = min(8, 32) = 8 after pruning"),
    (Plan(tables={"c0": TablePlan("pruned")}, dense={"dnn_0": DensePlan(rank=24)}),
     "plan entry dense.dnn_0: rank=24 must be in [1, 23]: below min(in, out) = min(24, 32) = 24 after pruning"),
    (Plan(dense={"dnn_out": DensePlan(units=1)}),
     "plan entry dense.dnn_out: units cannot be removed from 'dnn_out'"),
    (Plan(dense={"dnn_0": DensePlan(units=40)}), "plan entry dense.dnn_0: units=40 exceeds the layer's 32 units"),
    (Plan(tables={f"c{i}": TablePlan("pruned") for i in range(5)}), "plan entry tables: every field is pruned; keep at least 2"),
    (Plan(tables={f"c{i}": TablePlan("pruned") for i in range(4)}),
     "plan entry tables: 4 of 5 fields pruned leaves 1; model 'deepfm' needs at least 2"),
    (Plan(tables={"c2": TablePlan("pruned")}, pairs=PairPlan(kept=(("c0", "c2"),))),
     "plan entry pairs: kept pair ['c0', 'c2'] uses pruned field 'c2'"),
    (Plan(pairs=PairPlan(kept=(("c0", "nope"),))), "plan entry pairs: kept pair ['c0', 'nope'] names unknown field 'nope'"),
    (Plan(tables={"c1": TablePlan("rowwise", tiers=("int8", "int4"), fractions=(0.3, 0.7))}),
     "plan entry tables.c1: fractions [0.3, 0.7] give tiers of [7, 17] rows; a row tier of exactly 7 rows does not export"),
]


@pytest.mark.parametrize(("plan", "message"), BAD_FOR_MODEL)
def test_validate_against_the_model(deepfm, plan, message):
    with pytest.raises(ValueError) as e:
        validate(plan, deepfm)
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_validate_accepts_a_full_plan(deepfm, deepfwfm):
    validate(full_plan(), deepfm)
    validate(full_plan(), deepfwfm)


def test_unsupported_models_are_named(fields):
    with pytest.raises(ValueError, match=r"model 'dcnv2': Dense layer 'cross_1' reads"):
        anatomy(build_model("dcnv2", fields, mlp=(8,), embedding_dim=4))


def test_rowwise_tier_sizes_match_the_layer():
    rng = np.random.default_rng(0)
    for rows, fractions in [(11, (0.0, 0.5, 0.5)), (300, (0.1, 0.2, 0.3, 0.2, 0.2)), (7, (0.05, 0.95)),
                            (500, (0.33, 0.33, 0.34)), (24, (1.0,))]:
        tiers = ("fp16", "int8", "int4", "int2", "pruned")[: len(fractions)]
        layer = RowwiseQuantEmbedding(rows, 4, tiers=tiers, fractions=fractions)
        layer.build()
        layer.update_priorities(rng.integers(0, rows, 200), rng.random(200) < 0.3)
        assert layer.assign_tiers().tolist() == rowwise_tier_sizes(rows, fractions)


# ----------------------------------------------------------------------------- space


def test_search_space_of_deepfm(deepfm):
    space = search_space(deepfm)
    assert list(space.tables) == ["c0", "c1", "c2", "c3", "c4"]
    c4 = space.tables["c4"]
    assert (c4.rows, c4.dim) == (275, 6) and c4.methods == ["fp32", "quant", "rowwise", "lowrank", "pruned"]
    assert c4.bits == [8, 4, 2] and c4.ranks == [1, 2, 3, 4, 5]
    assert space.tables["c0"].ranks == [1, 2, 3]  # 11 rows: rank 4 and 5 save nothing
    assert list(space.dense) == ["dnn_0", "dnn_1", "dnn_out"]
    assert space.dense["dnn_1"].ranks == [None, 1, 2, 4, 8] and space.dense["dnn_1"].kept_units == [None, 8, 16, 24]
    assert space.dense["dnn_out"].ranks == [None] and space.dense["dnn_out"].kept_units == [None]
    assert space.pairs.mode == "fm" and space.pairs.sparsities == [0.0, 0.25, 0.5, 0.75]
    assert space.min_fields == 2 and space.drq == [False, True]
    assert SearchSpace.from_json(space.to_json()) == space


def test_search_space_of_deepfwfm_samples_valid_plans(deepfwfm):
    space = search_space(deepfwfm)
    assert space.pairs.mode == "fwfm"
    rng = np.random.default_rng(1)
    plans = [space.sample(rng) for _ in range(40)]
    for plan in plans:
        validate(plan, deepfwfm)
        space.check(plan)
        assert len(plan.pruned_fields()) <= 3
    assert len({p.to_json() for p in plans}) == 40
    assert {p.table("c1").method for p in plans} == {"fp32", "quant", "rowwise", "lowrank", "pruned"}


def test_narrowing_the_space(deepfm):
    space = search_space(deepfm)
    narrow = (space.restrict("tables.*", methods=["fp32", "quant"], bits=[4])
              .restrict("dense.dnn_1", ranks=[None, 8])
              .fix("tables.c4", {"method": "pruned"})
              .fix("dense.dnn_0", DensePlan(units=16))
              .fix("drq", True))
    assert space.tables["c0"].methods[-1] == "pruned"  # the original is unchanged
    rng = np.random.default_rng(0)
    for _ in range(10):
        plan = narrow.sample(rng)
        validate(plan, deepfm)
        narrow.check(plan)
        assert plan.table("c4").method == "pruned" and plan.dense_layer("dnn_0").units == 16 and plan.drq
        assert all(plan.table(f).method in ("fp32", "quant") for f in ("c0", "c1", "c2", "c3"))
        assert plan.dense_layer("dnn_1").rank in (None, 8)
    assert narrow.size() < space.size()
    again = SearchSpace.from_dict(json.loads(narrow.to_json()))
    assert again.fixed == narrow.fixed and again.tables == narrow.tables
    with pytest.raises(ValueError, match=r"space entry tables.c0: bits \[3\] not among the allowed \[4\]"):
        narrow.restrict("tables.c0", bits=[3])
    with pytest.raises(ValueError, match=r"space entry dense.dnn_7: model 'deepfm' has no Dense layer"):
        narrow.restrict("dense.dnn_7", ranks=[None])
    with pytest.raises(ValueError, match=r"plan entry drq: False but the space fixes it to True"):
        narrow.check(Plan(tables={"c4": TablePlan("pruned")}, dense={"dnn_0": DensePlan(units=16)}))
