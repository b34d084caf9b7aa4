"""Property-based tests (hypothesis): readers, quantisers, the cost model, plan validation.

(The scalar quantiser and packing properties, ``dequantise(quantise(x))`` within half
a step and the int4 / int2 packing round trip at any dim, are in test_quant_ops.py;
here they are extended to what ships: per-row fp16 steps and whole tables.)
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_ctr_compress.data import CSVSource, DataError
from keras_ctr_compress.data.readers import TableSchema, concat_chunks
from keras_ctr_compress.layers import quant_ops as q
from keras_ctr_compress.search import (
    CostModel,
    DensePlan,
    PairPlan,
    Plan,
    TablePlan,
    search_space,
    validate,
)

SLOW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ----------------------------------------------------------------------------- readers

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCXYZ0123456789_-.:/", min_size=0, max_size=8)
NUMBER = st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=64).map(repr), st.just(""),
                   st.sampled_from(["nan", "inf", "-inf", "NaN", "Infinity"]),
                   st.integers(-10**6, 10**6).map(str))
ROW = st.tuples(st.sampled_from(["0", "1"]), TOKEN, TOKEN, NUMBER)
def _schema() -> TableSchema:
    from keras_ctr_compress.data import Column

    return TableSchema("y", (Column("a", "categorical"), Column("b", "categorical"), Column("x", "numeric")), ",", True)


def _as_float(text: str) -> float:
    v = float(text) if text else math.nan
    return v if math.isfinite(v) else math.nan


def _read(lines: list[bytes], block_bytes: int, skip: int = 0):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.csv"
        path.write_bytes(b"y,a,b,x\n" + b"".join(ln + b"\n" for ln in lines))
        src = CSVSource([(path, None)], _schema(), block_bytes=block_bytes, skip_bad_rows=skip)
        return concat_chunks(src.chunks()), src.last_bad.count, str(path)


@SLOW
@given(rows=st.lists(ROW, min_size=1, max_size=60), block_bytes=st.integers(16, 2048))
def test_csv_reader_returns_what_was_written(rows, block_bytes):
    """Any rows, any block size: labels, tokens, numbers (non-finite -> NaN) and line
    numbers come back exactly."""
    lines = [",".join(r).encode() for r in rows]
    chunk, bad, _ = _read(lines, block_bytes)
    assert bad == 0 and len(chunk) == len(rows)
    assert chunk.labels.tolist() == [int(r[0]) for r in rows]
    assert chunk.columns["a"].tolist() == [r[1] for r in rows]
    assert chunk.columns["b"].tolist() == [r[2] for r in rows]
    np.testing.assert_array_equal(chunk.columns["x"], np.array([_as_float(r[3]) for r in rows]))
    assert chunk.lines.tolist() == list(range(2, len(rows) + 2))


BAD_ROW = st.sampled_from([b"1,a", b"1,a,b,x,extra", b"2,a,b,1", b"1,a,b,12x", b"", b"1,\xff\xfe,b,1", b"yes,a,b,1"])


@SLOW
@given(rows=st.lists(ROW, min_size=1, max_size=40), bad=st.lists(st.tuples(st.integers(0, 40), BAD_ROW), min_size=1, max_size=6),
       block_bytes=st.integers(16, 1024))
def test_malformed_rows_are_named_or_skipped_and_counted(rows, bad, block_bytes):
    """Bad rows anywhere: without a budget the error names the first one's line; with a
    budget of exactly their number they are skipped, counted, and the good rows survive
    with their own line numbers."""
    lines: list[bytes] = [",".join(r).encode() for r in rows]
    is_bad = [False] * len(lines)
    for pos, text in sorted(bad, key=lambda b: -b[0]):
        k = min(pos, len(lines))
        lines.insert(k, text)
        is_bad.insert(k, True)
    first_bad_line = is_bad.index(True) + 2
    with pytest.raises(DataError) as e:
        _read(lines, block_bytes)
    message = str(e.value)
    assert message.split(": ", 1)[0].endswith(f"d.csv:{first_bad_line}") and "\n" not in message, message
    chunk, count, _ = _read(lines, block_bytes, skip=len(bad))
    good_lines = [k + 2 for k, b in enumerate(is_bad) if not b]
    assert count == len(bad) and chunk.lines.tolist() == good_lines
    assert chunk.columns["a"].tolist() == [r[1] for r in rows]
    if len(bad) > 1:  # one short of the budget: the last bad row is the one named
        with pytest.raises(DataError, match=f"more than skip_bad_rows={len(bad) - 1} bad rows"):
            _read(lines, block_bytes, skip=len(bad) - 1)


# --------------------------------------------------------------------------- quantisers


@SLOW
@given(bits=st.integers(2, 8), rows=st.integers(1, 6), dim=st.integers(1, 33), seed=st.integers(0, 2**16),
       spread=st.floats(1e-3, 1e3))
def test_row_steps_as_shipped_dequantise_within_one_step(bits, rows, dim, seed, spread):
    """A table quantised with per-row steps rounded to the fp16 scales that ship,
    packed at any dim and unpacked, dequantises every in-range weight within half its
    row's step (and clips the rest to the range ends)."""
    rng = np.random.default_rng(seed)
    w = (rng.normal(size=(rows, dim)) * spread).astype("float32")
    step = q.to_fp16_step_np(q.init_step_np(w, bits, "row", "lsq"))[:, None]
    codes = q.quantize_np(w, step, bits)
    unpacked = q.unpack_codes_np(q.pack_codes_np(codes, bits), bits, dim)
    np.testing.assert_array_equal(unpacked, codes)
    qn, qp = q.qrange(bits)
    deq = unpacked.astype("float64") * step
    inside = (w >= qn * step) & (w <= qp * step)
    assert np.all(np.abs(deq - w)[inside] <= step.repeat(dim, 1)[inside] / 2 * (1 + 1e-6))
    assert np.all(unpacked[w > qp * step] == qp) and np.all(unpacked[w < qn * step] == qn)


# ------------------------------------------------------------------- plans and costs


@pytest.fixture(scope="module")
def models():
    from keras_ctr_compress.data import load_dataset
    from keras_ctr_compress.models import build_model

    ds = load_dataset("synthetic:rows=3000,fields=5,numeric=0,noise_fields=1,total_vocab=500,seed=3")
    return {"deepfm": build_model("deepfm", ds.fields, mlp=(16, 8), embedding_dim=5, seed=0),
            "fwfm": build_model("fwfm", ds.fields, embedding_dim=6, seed=0)}


@pytest.fixture(scope="module")
def costs(models):
    """Cost models (each measures its fp32 export once); the FwFM's own structure
    terms are checked against real files in test_search_cost.py and the parity sweep."""
    return {"deepfm": CostModel(models["deepfm"])}


def _plan_with(plan: Plan, **changes) -> Plan:
    d = plan.to_dict()
    for group, entries in changes.items():
        if group == "drq":
            d["drq"] = entries
        else:
            d.setdefault(group, {}).update(entries)
    return Plan.from_dict(d)


@SLOW
@given(name=st.sampled_from(["deepfm", "fwfm"]), seed=st.integers(0, 2**32 - 1))
def test_sampled_plans_are_valid_and_round_trip(models, name, seed):
    model = models[name]
    space = search_space(model)
    plan = space.sample(np.random.default_rng(seed))
    assert validate(plan, model) is plan and space.check(plan) is plan
    again = Plan.from_json(plan.to_json())
    # The JSON form leaves out entries that change nothing (an explicit fp32 table),
    # so the round trip is exact on that form, and exact as objects from there on.
    assert again.to_dict() == plan.to_dict() and Plan.from_json(again.to_json()) == again
    assert validate(again, model) is again and space.check(again) is again
    assert json.loads(plan.to_json()) == plan.to_dict()  # plain JSON data, nothing else


@SLOW
@given(seed=st.integers(0, 2**32 - 1), data=st.data())
def test_cost_model_properties(models, costs, seed, data):
    """On random plans: the total is weights + structure; fewer bits never add weight
    bytes (on tiny tables the unpacking ops may outweigh the saving, so the total is
    not monotonic there, in the cost model as in the real files; and under DRQ a float
    table is already one byte a weight, so only quant-to-fewer-bits is compared);
    pruning a field and DRQ shrink the file; the unchanged plan is the measured fp32 file."""
    model, cost = models["deepfm"], costs["deepfm"]
    assert cost.plan_bytes(Plan()) == cost.reference_bytes
    plan = search_space(model).sample(np.random.default_rng(seed))
    b = cost.breakdown(plan)
    assert b["total"] == round(b["structure"] + sum(b["weights"].values())) and b["total"] > 0

    def weights(p: Plan) -> int:
        return sum(cost.breakdown(p)["weights"].values())

    field = data.draw(st.sampled_from([f.name for f in cost.anatomy.fields]))
    current = plan.table(field)
    if current.method == "quant" or (current.method == "fp32" and not plan.drq):
        for fewer in (8, 4, 2):
            if fewer < (current.bits or 32):
                changed = _plan_with(plan, tables={field: {"method": "quant", "bits": fewer,
                                                           "granularity": current.granularity or "row"}})
                assert weights(changed) <= weights(plan)
    can_prune = len(plan.pruned_fields()) + 1 <= len(cost.anatomy.fields) - cost.anatomy.min_fields
    if current.method != "pruned" and can_prune and plan.pairs is None:
        pruned = _plan_with(plan, tables={field: {"method": "pruned"}})
        assert weights(pruned) < weights(plan) and cost.plan_bytes(pruned) < cost.plan_bytes(plan)
    if not plan.drq:
        drq = _plan_with(plan, drq=True)
        assert weights(drq) <= weights(plan) and cost.plan_bytes(drq) <= cost.plan_bytes(plan)


JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-5, 40), st.floats(-2, 2, allow_nan=False),
                      st.sampled_from(["fp32", "quant", "rowwise", "lowrank", "pruned", "row", "table", "int8",
                                       "int4", "fp16", "pruned", "c0", "c1", "c2", "dnn_0", "qat", "alpt", "x"]))
JSON = st.recursive(JSON_LEAF, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                      st.dictionaries(st.sampled_from(
                                                          ["method", "bits", "granularity", "tiers", "fractions",
                                                           "rank", "units", "sparsity", "kept", "epochs", "c0", "c1",
                                                           "dnn_0", "dnn_1", "other"]), kids, max_size=4)),
                    max_leaves=12)
PLAN_DICT = st.fixed_dictionaries({"version": st.one_of(st.just(1), JSON_LEAF)}, optional={
    "tables": st.dictionaries(st.sampled_from(["c0", "c1", "c2", "c3", "c4", "zz"]), JSON, max_size=5),
    "dense": st.dictionaries(st.sampled_from(["dnn_0", "dnn_1", "dnn_out", "zz"]), JSON, max_size=3),
    "pairs": JSON, "drq": JSON, "finetune": JSON, "model": JSON_LEAF, "format": JSON_LEAF,
    "extra": JSON})


@settings(max_examples=150, deadline=None)
@given(d=PLAN_DICT)
def test_any_plan_json_is_a_plan_or_one_line_naming_the_entry(models, d):
    """Arbitrary JSON in a plan file never crashes the reader or the validator with
    anything but a one-line ``plan entry <entry>: ...`` ValueError; what passes both
    round-trips and can be priced."""
    try:
        plan = Plan.from_dict(d)
        validate(plan, models["deepfm"])
    except ValueError as e:
        message = str(e)
        assert message.startswith("plan entry ") and "\n" not in message, message
        return
    assert Plan.from_json(plan.to_json()).to_dict() == plan.to_dict()


@SLOW
@given(rank=st.integers(-2, 12), dense_rank=st.integers(-1, 30), units=st.one_of(st.none(), st.integers(-1, 20)),
       bits=st.integers(0, 9), prune=st.lists(st.sampled_from(["c0", "c1", "c2", "c3", "c4"]), unique=True, max_size=5),
       sparsity=st.one_of(st.none(), st.floats(-0.5, 1.5)))
def test_validation_accepts_exactly_the_plans_that_fit(models, costs, rank, dense_rank, units, bits, prune, sparsity):
    """Bits, ranks, units, pruning and pair sparsity around their limits: a plan is
    accepted exactly when every limit holds (else one line naming its entry), and
    every accepted plan prices."""
    model = models["deepfm"]
    emb = {f"c{k}": model.get_layer(f"emb_c{k}") for k in range(5)}
    kept = 5 - len(prune)
    fits = (kept >= 2  # the pair layer and the first-order sum need two fields
            and ("c0" in prune or bits in (8, 4, 2))
            and ("c1" in prune or 1 <= rank < min(emb["c1"].input_dim, emb["c1"].output_dim))
            and (units is None or 1 <= units <= 16)
            and 1 <= dense_rank < min(5 * kept, units or 16)  # dnn_0 reads 5 dims per kept field
            and (sparsity is None or 0 <= sparsity < 1))
    try:
        tables = {f: TablePlan("pruned") for f in prune}
        if "c0" not in prune:
            tables["c0"] = TablePlan("quant", bits=bits)
        if "c1" not in prune:
            tables["c1"] = TablePlan("lowrank", rank=rank)
        plan = Plan(tables=tables, dense={"dnn_0": DensePlan(rank=dense_rank, units=units)},
                    pairs=None if sparsity is None else PairPlan(sparsity=sparsity))
        validate(plan, model)
    except ValueError as e:
        assert str(e).startswith("plan entry ") and "\n" not in str(e), str(e)
        assert not fits, f"refused a plan within every limit: {e}"
        return
    assert fits, "accepted a plan outside a limit"
    assert costs["deepfm"].plan_bytes(plan) > 0
