"""Python memory (tracemalloc) and Feasibility cache size of a Bayesian search oracle on
frappe DeepFM (fp32 reference of seed 0, byte budget 1/16), driven without training: each
trial scores a cheap function of its plan. `python oracle_mem.py TRIALS`."""
import sys, time, tracemalloc, tempfile
from keras_ctr_compress.artifacts import load_trained
from keras_ctr_compress.search import Budget, Encoding, cost_model, search_space
from keras_ctr_compress.search.budget import Feasibility
from keras_ctr_compress.search.tuner import make_oracle
m = load_trained("/work/bench/refs/frappe_deepfm_seed0").model
cost = cost_model(m); enc = Encoding(search_space(m), cost)
feas = Feasibility(enc, cost, None, Budget(max_bytes=int(cost.reference_bytes / 16)))
oracle = make_oracle("bayesian", feas, hyperparameters=enc.hyperparameters(), max_trials=int(sys.argv[1]), seed=0, num_initial_points=6)
oracle._set_project_dir(tempfile.mkdtemp(), "p")
tracemalloc.start()
t0 = time.time()
for i in range(int(sys.argv[1])):
    trial = oracle.create_trial("tuner0")
    if trial.status != "RUNNING":
        break
    plan = enc.plan(trial.hyperparameters.values)
    oracle.update_trial(trial.trial_id, {"score": 0.9 + 0.08 * cost.plan_bytes(plan) / feas.budget.max_bytes})
    trial.status = "COMPLETED"; oracle.end_trial(trial)
    print(i, "cache", len(feas._cache), "traced MB", round(tracemalloc.get_traced_memory()[0] / 2**20, 1), "s", round(time.time() - t0, 1), flush=True)
