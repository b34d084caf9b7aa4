"""The budgeted search: Pareto front, budgets, the hyperparameter encoding, the
budget-aware oracles, impossible budgets, one search end to end, kcc compress.

Trials are kept cheap (a 5-field synthetic DeepFM, MLP 32-32, dim 6); the frappe
figures live in benchmarks/results/frappe_deepfm_search.json.
"""

import json
import math
import time

import numpy as np
import pytest

from keras_ctr_compress.compress import select_fields
from keras_ctr_compress.data import load_dataset
from keras_ctr_compress.export import LiteRTModel
from keras_ctr_compress.models import TrainConfig, build_model, train_model
from keras_ctr_compress.search import (
    Budget,
    DensePlan,
    Encoding,
    LatencyModel,
    Plan,
    TablePlan,
    cost_model,
    pareto_front,
    search,
    search_space,
)
from keras_ctr_compress.search.budget import Feasibility, check_possible
from keras_ctr_compress.search.commands import narrow
from keras_ctr_compress.search.hparams import negligible_entries
from keras_ctr_compress.search.pareto import dominates
from keras_ctr_compress.search.tuner import MIN_LENGTH_SCALE, make_oracle

SPEC = "synthetic:rows=6000,fields=5,numeric=0,noise_fields=1,total_vocab=500,seed=3"
#: a toy file is ~33 KB, mostly structure: 1/3 of it leaves few plans (the budget binds)
RATIO = 3.0


@pytest.fixture(scope="module")
def data():
    return load_dataset(SPEC)


@pytest.fixture(scope="module")
def model(data):
    m = build_model("deepfm", data.fields, mlp=(32, 32), embedding_dim=6, seed=0)
    train_model(m, data.train, data.valid, TrainConfig(epochs=1, verbose=0))
    return m


@pytest.fixture(scope="module")
def searched(model, data, tmp_path_factory):
    """One real search: latency calibrated on 4 files, 2 one-epoch trials, a latency cap;
    the best trial's model is shipped as trained (final_epochs=0: no longer final recipe)."""
    out = tmp_path_factory.mktemp("search")
    lines = []
    res = search(model, data, max_ratio=RATIO, max_latency_us=1e4, trials=2, tuner="bayesian", out_dir=out,
                 final_epochs=0, latency_plans=4, log=lines.append)
    return res, lines


# ------------------------------------------------------------------------- Pareto


def test_pareto_front_on_hand_made_trials():
    t = [
        {"trial_id": "a", "val_auc": 0.90, "bytes": 100, "latency_us": 10.0},  # front: smallest
        {"trial_id": "b", "val_auc": 0.95, "bytes": 200, "latency_us": 12.0},  # front: best AUC
        {"trial_id": "c", "val_auc": 0.89, "bytes": 150, "latency_us": 11.0},  # dominated by a
        {"trial_id": "d", "val_auc": 0.93, "bytes": 300, "latency_us": 5.0},   # front: fastest
        {"trial_id": "e", "val_auc": 0.95, "bytes": 200, "latency_us": 12.0},  # equal to b: kept
        {"trial_id": "f", "val_auc": 0.95, "bytes": 250, "latency_us": 12.0},  # dominated by b
        {"trial_id": "g", "val_auc": 0.92, "bytes": 300, "latency_us": 5.0},   # dominated by d
    ]
    front = pareto_front(t)
    assert [x["trial_id"] for x in front] == ["a", "b", "e", "d"]
    assert dominates((1, 1, 1), (1, 2, 1)) and not dominates((1, 1, 1), (1, 1, 1))
    # brute force: nothing outside the front is undominated, nothing on it is dominated
    keys = {x["trial_id"]: (-x["val_auc"], x["bytes"], x["latency_us"]) for x in t}
    for x in t:
        beaten = any(dominates(keys[y["trial_id"]], keys[x["trial_id"]]) for y in t)
        assert beaten == (x not in front)


def test_budget_score_is_auc_unless_soft():
    hard = Budget(max_bytes=1000, max_latency_us=10.0)
    soft = Budget(max_bytes=1000, max_latency_us=10.0, soft=True, penalty=0.1)
    assert hard.score(0.8, 2000, 20.0) == 0.8 and hard.within(1000, 10.0) and not hard.within(1001, 10.0)
    assert soft.score(0.8, 900, 9.0) == 0.8
    assert math.isclose(soft.score(0.8, 1500, 12.0), 0.8 - 0.1 * (0.5 + 0.2))
    with pytest.raises(ValueError, match="max_bytes must be a positive"):
        Budget(max_bytes=0)


# ----------------------------------------------------------------------- encoding


def test_encoding_round_trips_and_orders_choices_by_bytes(model):
    cost = cost_model(model)
    space = search_space(model)
    enc = Encoding(space, cost)
    assert enc.plan(enc.hyperparameters().values) == space.default_plan()
    rng = np.random.default_rng(0)
    for _ in range(20):
        plan = space.sample(rng)
        assert enc.plan(enc.values(plan)).to_dict() == plan.to_dict()
    for name in enc.tables:  # every table's options run from the largest file to the smallest
        sizes = [cost.plan_bytes(space.compose({name: enc.tables[name][t]}, {}, None, False))
                 for t in enc.choices(f"tables.{name}")]
        assert sizes == sorted(sizes, reverse=True), (name, sizes)
    pair_sizes = [cost.plan_bytes(space.compose({}, {}, {"sparsity": x} if x else None, False))
                  for x in enc.choices("pairs")]
    assert pair_sizes == sorted(pair_sizes, reverse=True)
    # entries whose options span less than the threshold are the ones left unchanged
    spans = {n: max(sz) - min(sz) for n, sz in
             {f"tables.{f}": [cost.plan_bytes(space.compose({f: enc.tables[f][t]}, {}, None, False))
                              for t in enc.choices(f"tables.{f}")] for f in enc.tables}.items()}
    cut = sorted(spans.values())[len(spans) // 2]
    assert set(negligible_entries(enc, cost, cut)) - {"pairs"} == {n for n, v in spans.items() if v < cut}
    assert negligible_entries(enc, cost, 0) == []
    narrowed = narrow(space, ['dense.dnn_0={"units": 16}', "drq=true"], ["tables.*:methods=fp32,quant", "tables.*:bits=8,4"])
    enc2 = Encoding(narrowed, cost)
    assert "dense.dnn_0.units" not in enc2.names and "drq" not in enc2.names
    assert set(enc2.choices("tables.c0")) == {"fp32", "quant8row", "quant8table", "quant4row", "quant4table"}
    plan = enc2.plan(enc2.hyperparameters().values)
    assert plan.drq and plan.dense_layer("dnn_0").units == 16
    with pytest.raises(ValueError, match="--fix 'drq': expected ENTRY=JSON"):
        narrow(space, ["drq"], [])
    with pytest.raises(ValueError, match="bits \\[16\\] not among the allowed"):
        narrow(space, [], ["tables.*:bits=16"])


def test_encoding_moves_stay_in_the_options(model):
    """The Bayesian oracle's local candidates: one-step neighbours, and perturbations
    of exactly ``entries`` entries to another of their options."""
    import random

    enc = Encoding(search_space(model), cost_model(model))
    base = enc.hyperparameters().values
    for nb in enc.neighbours(base):
        changed = [n for n in enc.names if nb[n] != base[n]]
        assert len(changed) == 1
        choices = enc.choices(changed[0])
        assert abs(choices.index(nb[changed[0]]) - choices.index(base[changed[0]])) == 1
    rng = random.Random(0)
    movable = [n for n in enc.names if len(enc.choices(n)) > 1]
    for entries in (1, 2, 3, len(movable) + 5):
        new = enc.perturb(base, rng, entries=entries)
        changed = [n for n in enc.names if new[n] != base[n]]
        assert len(changed) == min(entries, len(movable))
        assert all(new[n] in enc.choices(n) for n in enc.names)
        enc.plan(new)  # a valid plan


def test_bayesian_acquisition_maths():
    """log(1 - AUC) orders plans as AUC does and shrinks the 0.5-AUC outliers; expected
    improvement equals its integral definition E[max(best - Y, 0)], Y ~ N(mu, sigma)."""
    from scipy import integrate, stats

    from keras_ctr_compress.search.tuner import error_scale, expected_improvement

    scores = np.array([0.5, 0.93, 0.975, 0.98])
    e = error_scale(scores)
    assert np.all(np.diff(e) < 0) and e[0] == pytest.approx(np.log(0.5))
    # the 0.5 outlier is ~3 units from the rest, the differences that matter ~0.2 to 1
    assert (e[1] - e[3]) / (e[0] - e[3]) > 0.25
    assert np.isfinite(error_scale([1.0, float("nan")])[0])
    mu, sigma, best = np.array([0.0, -1.0, 0.5]), np.array([1.0, 0.3, 2.0]), -0.5
    ei = expected_improvement(mu, sigma, best, xi=0.0)
    for m, s, got in zip(mu, sigma, ei, strict=True):
        want, _ = integrate.quad(lambda y, m=m, s=s: (best - y) * stats.norm.pdf(y, m, s), -np.inf, best)
        assert got == pytest.approx(want, rel=1e-6)
    assert expected_improvement([0.0], [1e-30], best, xi=0.0)[0] == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------- oracles


@pytest.mark.parametrize("kind", ["random", "bayesian", "hyperband"])
def test_oracle_never_proposes_a_plan_over_budget(model, searched, tmp_path, kind):
    """Drive each budget-aware oracle through 8 trials (scored by a real, cheap
    function of the plan: a smaller file scores higher), check every proposal."""
    res, _ = searched
    cost = cost_model(model)
    space = search_space(model)
    enc = Encoding(space, cost)
    latency = LatencyModel.load(res.out_dir / "latency_model.json", model)
    rng = np.random.default_rng(1)
    lat_samples = sorted(latency.predict(space.sample(rng)) for _ in range(50))
    budget = Budget(max_bytes=int(cost.reference_bytes / RATIO), max_latency_us=lat_samples[25])
    feas = Feasibility(enc, cost, latency, budget)
    oracle = make_oracle(kind, feas, hyperparameters=enc.hyperparameters(), max_trials=8, seed=0,
                         num_initial_points=3, hyperband_max_epochs=3)
    oracle._set_project_dir(str(tmp_path), "p")
    for _ in range(8):
        trial = oracle.create_trial("tuner0")
        if trial.status == "IDLE":
            continue
        assert trial.status == "RUNNING"
        plan = enc.plan(trial.hyperparameters.values)
        assert cost.plan_bytes(plan) <= budget.max_bytes
        assert latency.predict(plan) <= budget.max_latency_us
        oracle.update_trial(trial.trial_id, {"score": 1.0 - cost.plan_bytes(plan) / cost.reference_bytes})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    statuses = [t.status for t in oracle.trials.values()]
    assert statuses and set(statuses) == {"COMPLETED"}  # nothing failed, nothing was skipped as a trial
    assert feas.rejected > 0  # the budget did bind: some draws were over it and never became trials
    if kind == "bayesian":
        assert len(statuses) == 8  # 3 random, then 5 proposals of the Gaussian process
        # one fitted length scale per hyperparameter (ARD), none below the floor
        scales = np.atleast_1d(oracle.gpr.kernel_.length_scale)
        assert scales.shape == (len(oracle._nonfixed_space()),) and scales.min() >= MIN_LENGTH_SCALE - 1e-9
        # each proposal draws its own candidates (the seed state advances and is saved)
        completed = list(oracle.trials.values())
        state = oracle._seed_state
        first, second = oracle._pool(completed), oracle._pool(completed)
        assert oracle._seed_state == state + 2 and oracle.get_state()["seed_state"] == state + 2
        hashes = [{oracle._compute_values_hash(v) for v in p} for p in (first, second)]
        assert hashes[0] != hashes[1]
        oracle._seed_state = state
        assert [oracle._compute_values_hash(v) for v in oracle._pool(completed)] == \
            [oracle._compute_values_hash(v) for v in first]  # same state, same pool


def test_feasibility_cache_keeps_verdicts_not_plans(model):
    """A Bayesian proposal prices ~2,000 new values (frappe): the cache keeps each
    one's verdict in a few hundred bytes, not its plan (kilobytes), and a hit gives
    the same verdict as pricing afresh."""
    import random
    import tracemalloc

    cost = cost_model(model)
    enc = Encoding(search_space(model), cost)
    feas = Feasibility(enc, cost, None, Budget(max_bytes=int(cost.reference_bytes / 1.5)))
    rng = random.Random(0)
    draws = [{n: rng.choice(enc.choices(n)) for n in enc.names} for _ in range(3000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        first = [feas.check(v) for v in draws]
        per_entry = (tracemalloc.get_traced_memory()[0] - before) / len(feas._cache)
    finally:
        tracemalloc.stop()
    assert len(feas._cache) > 1000 and per_entry < 800, per_entry  # measured ~400 (with its plan: ~2,900)
    assert {p.ok for p in first} == {True, False}  # the budget binds
    again = [feas.check({**v, "tuner/epochs": 3}) for v in draws]  # keras-tuner's entries do not matter
    def verdicts(ps):  # latency is NaN without a latency model (NaN != NaN)
        return [(p.valid, p.nbytes, p.ok, p.reason) for p in ps]

    assert verdicts(again) == verdicts(first)
    assert verdicts(feas._price(v) for v in draws[:200]) == verdicts(first[:200])
    bad = feas.check({**draws[0], enc.names[0]: "no such option"})
    assert not bad.valid and not bad.ok and bad.reason.startswith("invalid: ")


def test_impossible_budgets_fail_before_any_training(model, data, searched, tmp_path):
    res, _ = searched
    enc = Encoding(search_space(model), cost_model(model))
    smallest = check_possible(enc, cost_model(model), None, Budget(), 1)["min_bytes"]
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=f"max_bytes={smallest - 1:,} is below the smallest plan"):
        search(model, data, max_bytes=smallest - 1, trials=2, out_dir=tmp_path / "a")
    with pytest.raises(ValueError, match="max_latency_us=0.01 is below the fastest plan"):
        search(model, data, max_ratio=RATIO, max_latency_us=0.01, trials=2, out_dir=tmp_path / "b",
               latency_model=res.out_dir / "latency_model.json")
    with pytest.raises(ValueError, match="give max_bytes or max_ratio, not both"):
        search(model, data, max_bytes=10**6, max_ratio=2.0, out_dir=tmp_path / "c")
    assert time.perf_counter() - t0 < 60
    assert not any((tmp_path / d / "tuner").exists() for d in ("a", "b", "c"))  # no trial, no state


def test_search_refuses_to_overwrite_or_to_resume_another_search(model, data, searched, tmp_path):
    res, _ = searched
    with pytest.raises(ValueError, match="already holds a search .* resume it with resume=True"):
        search(model, data, max_ratio=RATIO, max_latency_us=1e4, trials=2, out_dir=res.out_dir)
    with pytest.raises(ValueError, match="started with other settings \\(tuner: \"bayesian\" vs now \"random\"\\)"):
        search(model, data, max_ratio=RATIO, max_latency_us=1e4, trials=2, tuner="random", out_dir=res.out_dir,
               resume=True)
    with pytest.raises(ValueError, match="nothing to resume"):
        search(model, data, max_ratio=RATIO, trials=2, out_dir=tmp_path / "empty", resume=True)
    assert len(json.loads((res.out_dir / "trials.json").read_text())) == 2  # untouched


# ---------------------------------------------------------------------- end to end


def test_search_end_to_end(searched, model, data):
    res, lines = searched
    out = res.out_dir
    assert len(res.trials) == 2 and res.budget.max_bytes == int(res.fp32_bytes / RATIO)
    for t in res.trials:
        assert t["bytes"] <= res.budget.max_bytes and t["within_budget"]
        assert 0.0 < t["val_auc"] < 1.0 and t["latency_us"] > 0 and t["score"] == t["val_auc"]
        assert t["finetune"]["epochs"] == 1 and t["timing"]["rss_mb"] > 0
    # the file: within the budget, the cost model's prediction, parity with its Keras model
    best = res.best
    size = res.tflite_path.stat().st_size
    assert size == best["bytes"] <= res.budget.max_bytes
    # toy files are ~10 KB of mostly tensor names, whose lengths the cost model can only estimate
    assert abs(best["bytes_predicted"] - size) / size < 0.02
    assert best["parity_max_abs"] <= 1e-4
    x = select_fields(data.valid.x[:500], best["kept_field_indices"])
    np.testing.assert_allclose(LiteRTModel(res.tflite_path).predict(x),
                               res.best_model.predict(x, verbose=0).ravel(), atol=0.05 if res.best_plan.drq else 1e-4)
    assert Plan.load(out / "best_plan.json") == res.best_plan
    # Pareto front: JSON and PNG, and it is the front of the logged trials
    front = json.loads((out / "pareto.json").read_text())["front"]
    assert [t["trial_id"] for t in front] == [t["trial_id"] for t in pareto_front(res.trials)]
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res.latency["files"] >= 4 and res.latency["loo_median_abs_rel_error"] is not None
    # progress: trial n of N, best so far, time left
    trial_lines = [ln for ln in lines if ln.startswith("[search] trial ")]
    assert len(trial_lines) == 2 and "trial 2/2" in trial_lines[-1]
    assert all("best " in ln and "left" in ln for ln in trial_lines)
    assert res.timings["trials_timed"] == 2 and res.timings["search_overhead_seconds_mean"] > 0
    assert res.best["val_auc"] == max(t["val_auc"] for t in res.trials)  # the kept trial model, shipped as is


def test_kcc_compress_applies_a_plan_and_refuses_a_bad_one(model, data, tmp_path):
    from keras_ctr_compress.artifacts import load_trained, save_trained
    from keras_ctr_compress.cli import main

    save_trained(tmp_path / "m", model, data.preprocessor, {"data": SPEC, "split_seed": 0})
    plan = Plan(tables={"c0": TablePlan("quant", bits=4), "c3": TablePlan("pruned")}, dense={"dnn_1": DensePlan(rank=4)})
    plan_path = plan.save(tmp_path / "plan.json")
    rc = main(["compress", "--model", str(tmp_path / "m"), "--plan", str(plan_path), "--out", str(tmp_path / "c"),
               "--no-finetune"])
    assert rc == 0
    out = tmp_path / "c"
    assert Plan.load(out / "plan.json") == plan
    size = (out / "model.tflite").stat().st_size
    assert abs(cost_model(model).plan_bytes(plan) - size) / size < 0.02
    assert load_trained(out).meta["kept_field_indices"] == [0, 1, 2, 4]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": 1, "tables": {"nope": {"method": "pruned"}}}))
    assert main(["compress", "--model", str(tmp_path / "m"), "--plan", str(bad), "--out", str(tmp_path / "d")]) == 2
    assert not (tmp_path / "d").exists()


def test_search_summary_counts_how_trials_were_spent():
    """The summary of the committed search record: the Bayesian vs random comparison is
    the per-seed values' means, and trial_quality counts the trials after the initial
    random ones by hand."""
    from pathlib import Path

    from keras_ctr_compress.bench.search_summary import search_summary as summarize_search
    from keras_ctr_compress.bench.search_summary import trial_quality

    q = trial_quality([0.97, 0.5, 0.96, 0.98, 0.4999, 0.9781, 0.9770], initial=3)
    assert q == {"later_trials": 4, "later_trials_median_val_auc": pytest.approx((0.9781 + 0.977) / 2),
                 "later_trials_broken": 1, "later_trials_near_best": 2}
    assert trial_quality([0.97, None, float("nan"), 0.96], initial=1)["later_trials"] == 1  # failed trials
    record = json.loads((Path(__file__).parents[1] / "benchmarks/results/frappe_deepfm_search.json").read_text())
    s = summarize_search(record)
    for method, name in (("searched", "bayesian"), ("searched-random", "random")):
        per_seed = s["methods"][method]["per_seed"]
        assert len(per_seed) == 3 and all(p["later_trials"] == p["trials"] - 6 for p in per_seed)
        assert s["bayesian_vs_random"][f"best_trial_val_auc_{name}"] == pytest.approx(
            np.mean([p["best_trial_val_auc"] for p in per_seed]))
        assert s["bayesian_vs_random"][f"later_trials_broken_{name}"] == sum(p["later_trials_broken"] for p in per_seed)
    diff = s["bayesian_vs_random"]["difference"]
    assert s["bayesian_vs_random"]["bayesian_beats_random"] == (diff > 0)
