"""keras-tuner, made budget-aware: oracles that only propose plans within the budget,
and a tuner whose trial is "apply the plan, fine-tune, report".

keras-tuner does the search: its oracles (``BayesianOptimization``, ``RandomSearch``,
``Hyperband``) pick hyperparameter values, keep the trials, save and reload their
state (resume) and serve them to workers over gRPC (distributed mode). What it has
no notion of is a constraint, so this module adds one where values are drawn:

- every random draw (``Oracle._random_values``, used by all three oracles and by the
  Bayesian oracle's initial points) is redrawn until the plan it maps to is within
  the budget, *before* a trial exists: no trial is spent on, or failed for, a plan
  over the budget;
- the Bayesian oracle's acquisition step is replaced: keras-tuner minimises the
  upper confidence bound over the unconstrained unit box with L-BFGS-B and snaps the
  result to values, which lands over the budget whenever the budget binds; here a
  Gaussian process (keras-tuner's Matern kernel with one length scale per entry, on
  keras-tuner's embedding of the values) scores a pool of *feasible* candidates
  (one-step neighbours of the best trials, moves of one to three entries of them,
  feasible random draws) by expected improvement, and the best one is proposed. The
  process models ``log(1 - AUC)``, not the raw score: a plan that breaks the model
  scores AUC 0.5 against 0.97 for the rest, and on raw scores those few outliers set
  the whole fit (measured on frappe: 0.5-AUC plans proposed again and again);
- a last check on every proposal raises if a plan over the budget ever got through.

Trial state files are written atomically (temporary file, then rename), so a search
killed with ``kill -9`` at any moment leaves readable state; keras-tuner's reload then
re-queues the trial that was running, and no finished trial is lost.

Example::

    oracle = make_oracle("bayesian", feasibility, hyperparameters=enc.hyperparameters(), max_trials=20)
    tuner = PlanTuner(oracle, runner, directory="out/tuner", project_name="search")
    tuner.search(verbose=0)
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import keras
import keras_tuner as kt
import numpy as np
from keras_tuner.engine import trial as trial_module
from keras_tuner.oracles import BayesianOptimizationOracle, HyperbandOracle, RandomSearchOracle
from sklearn.exceptions import ConvergenceWarning

from keras_ctr_compress.search.budget import Budget, Feasibility
from keras_ctr_compress.search.hparams import Encoding
from keras_ctr_compress.utils import atomic_write_text, rss_mb, trim_heap

TUNERS = ("bayesian", "random", "hyperband")
OBJECTIVE = "score"
#: random draws per proposal before giving up (the budget admits almost no plan)
MAX_DRAWS = 20_000
#: draws taken as they come before one is shrunk into the budget
REJECT_DRAWS = 25
#: steps of one shrink walk
SHRINK_STEPS = 200
RESULT_FILE = "result.json"
TIMING_FILE = "timing.json"
#: the Bayesian oracle's shortest kernel length scale, in keras-tuner's [0, 1] embedding
#: of each choice (a one-step move is 1/options, 0.06-0.5): at 0.5 a one-step neighbour
#: keeps a prior correlation of 0.99 (16 options) to 0.52 (2 options) with its trial
MIN_LENGTH_SCALE = 0.5
#: the Bayesian oracle's candidates change at most this many entries of a best trial
MAX_PERTURBED = 3
#: restarts of the length-scale fit (keras-tuner: 20; ARD's fit costs more per restart)
GP_RESTARTS = 5


class _Budgeted:
    """Mixed into a keras-tuner oracle (first in the bases): budget-aware draws,
    atomic state files, one progress line per finished trial."""

    feasibility: Feasibility
    progress: Callable | None = None
    max_draws: int = MAX_DRAWS

    def configure(self, feasibility: Feasibility, progress: Callable | None = None,
                  max_draws: int = MAX_DRAWS) -> None:
        self.feasibility, self.progress, self.max_draws = feasibility, progress, max_draws
        self.draws = 0

    # ----------------------------------------------------------------- proposals

    def _random_values(self):
        """keras-tuner's random draw, brought within the budget before any trial exists.

        Up to :data:`REJECT_DRAWS` draws are tried as they come (uniform over the
        plans that fit, where enough fit); then the last draw is *shrunk*: random
        hyperparameters step to a random smaller option (each choice list runs from
        the largest plan to the smallest) until the plan fits. Tight budgets leave
        so few plans that rejection alone would need millions of draws (a 5-field
        toy DeepFM at 1/3 of its file: none in 20,000).
        """
        for _ in range(self.max_draws // REJECT_DRAWS):
            values = None
            for _ in range(REJECT_DRAWS):
                values = super()._random_values()
                if values is None:  # keras-tuner: the space is exhausted (too many duplicates)
                    return None
                self.draws += 1
                if self.feasibility.check(values).ok:
                    return values
            values = self._shrink(values)
            if values is not None and not self._duplicate(values):
                return values
        raise kt.errors.FatalError(
            f"no plan within the budget ({self.feasibility.budget.describe()}) in {self.max_draws:,} random "
            "draws: the budget admits almost no plan of this space; raise it or narrow the space")

    def _shrink(self, values: dict, rng: random.Random | None = None, *, keep: str | None = None,
                next_option: bool = False) -> dict | None:
        """``values`` moved to smaller options until the plan fits (None: stuck).

        Each step moves a random entry (never ``keep``) to a random smaller option, or
        to the next smaller one with ``next_option`` (the Bayesian oracle's repairs,
        which stay near the trial they start from). ``rng``: default, one seeded from
        the oracle's seed state."""
        enc = self.feasibility.encoding
        if rng is None:
            rng = random.Random(self._seed_state)
            self._seed_state += 1
        priced = self.feasibility.check(values)
        if priced.ok:
            return values
        for _ in range(SHRINK_STEPS):
            movable = [n for n in enc.names
                       if n != keep and enc.choices(n).index(values[n]) < len(enc.choices(n)) - 1]
            if not movable:
                return None
            name = rng.choice(movable)
            choices = enc.choices(name)
            k = choices.index(values[name]) + 1
            new = {**values, name: choices[k if next_option else rng.randrange(k, len(choices))]}
            p = self.feasibility.check(new)
            # Keep a valid plan valid (e.g. fields left). One-option steps may walk
            # through an invalid plan (units below a layer's rank) to a valid one
            # beyond it, which a random-length step would have jumped.
            if not p.valid and priced.valid and not next_option:
                continue
            values, priced = new, p
            if p.ok:
                return values
        return None

    def populate_space(self, trial_id):
        response = self._propose(trial_id)
        if response.get("status") == trial_module.TrialStatus.RUNNING:
            priced = self.feasibility.check(response["values"])
            if not priced.ok:  # a bug, never a trial: refuse loudly
                raise kt.errors.FatalError(f"internal error: oracle proposed a plan it may not run "
                                           f"({priced.reason}): {response['values']}")
        return response

    def _propose(self, trial_id):
        return super().populate_space(trial_id)

    # ----------------------------------------------------------------- state files

    def save(self):
        atomic_write_text(self._get_oracle_fname(), json.dumps(self.get_state()))

    def _save_trial(self, trial):
        path = os.path.join(self._get_trial_dir(trial.trial_id), "trial.json")
        atomic_write_text(path, json.dumps(trial.get_state()))

    @kt.synchronized
    def end_trial(self, trial):
        super().end_trial(trial)
        if self.progress is not None:
            self.progress(self, self.trials[trial.trial_id])


class BudgetedRandomOracle(_Budgeted, RandomSearchOracle):
    """keras-tuner's random search over the plans within the budget."""


class BudgetedHyperbandOracle(_Budgeted, HyperbandOracle):
    """keras-tuner's Hyperband; its random trials are drawn within the budget (later
    rounds rerun earlier, already feasible, values with more epochs)."""


def error_scale(scores) -> np.ndarray:
    """``log(1 - score)``: the scale the Gaussian process models (minimised).

    Validation AUCs of plans that work sit within a few thousandths of each other near
    1, a plan that breaks the model scores 0.5: on the raw scale those few outliers set
    the whole fit and the differences that matter vanish in its noise (measured on
    frappe: 0.5-AUC plans proposed again and again). On the log error scale 0.5, 0.93
    and 0.98 are -0.7, -2.7 and -3.9: order and ratios of errors are kept, outliers no
    longer dominate.
    """
    return np.log(np.clip(1.0 - np.asarray(scores, dtype="float64"), 1e-6, None))


def expected_improvement(mu, sigma, best: float, xi: float = 0.01) -> np.ndarray:
    """Expected improvement below ``best`` (minimisation) of a Gaussian posterior."""
    from scipy.stats import norm

    mu, sigma = np.asarray(mu, "float64").ravel(), np.maximum(np.asarray(sigma, "float64").ravel(), 1e-12)
    gain = best - mu - xi
    z = gain / sigma
    return gain * norm.cdf(z) + sigma * norm.pdf(z)


class BudgetedBayesianOracle(_Budgeted, BayesianOptimizationOracle):
    """keras-tuner's Gaussian-process Bayesian optimisation, with the acquisition
    maximised over feasible candidates only (see the module docstring).

    After the random initial points, each proposal fits a Gaussian process
    (:meth:`_make_gpr`) to the finished trials (scores through :func:`error_scale`;
    trials still running on other workers enter at a pessimistic guess) and proposes
    the feasible, untried candidate of highest :func:`expected_improvement`.

    Args:
        candidates: random draws per proposal (uniform over each entry's options,
            then shrunk into the budget), besides the moves around the best trials.
        top: how many of the best trials to explore around.
        moves: moves of the ``top`` best trials per proposal: every other one sets 1
            to :data:`MAX_PERTURBED` entries to other options, the others set one
            entry and shrink others until the plan fits the budget: under a byte
            budget the best plans sit at the cap, where most one-entry moves are
            over the budget or plainly smaller.
        alpha: the noise variance added to the kernel's diagonal (on normalised
            targets): a score is one fine-tuning run, not the plan's exact value, and
            the fit stays well conditioned with near-duplicate trials.
    """

    def __init__(self, *args, candidates: int = 60, top: int = 3, moves: int = 200, alpha: float = 1e-2,
                 **kwargs):
        super().__init__(*args, alpha=alpha, **kwargs)
        self.candidates, self.top, self.moves = candidates, top, moves

    def _make_gpr(self):
        """keras-tuner's process (Matern 5/2, normalised targets, fitted length scales)
        with one length scale per hyperparameter (ARD) kept >= :data:`MIN_LENGTH_SCALE`:
        a few entries decide most of a plan's AUC (the largest tables, the first Dense
        layer's rank) and the others barely matter, which one shared scale cannot say;
        and with a trial per handful of dimensions, maximum likelihood otherwise picks
        scales near 0 (measured: 1e-5), where the process knows nothing between trials."""
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import Matern

        dims = max(1, len(self._nonfixed_space()))
        kernel = Matern(length_scale=np.ones(dims), nu=2.5, length_scale_bounds=(MIN_LENGTH_SCALE, 1e5))
        return GaussianProcessRegressor(kernel=kernel, n_restarts_optimizer=GP_RESTARTS, normalize_y=True,
                                        alpha=self.alpha, random_state=self.seed)

    def _propose(self, trial_id):
        completed = [t for t in self.trials.values() if t.status == trial_module.TrialStatus.COMPLETED]
        initial = self.num_initial_points or max(3 * len(self.hyperparameters.space), 3)
        if len(completed) < initial:
            return self._random_populate_space()
        best_y = self._fit(completed)
        pool = self._pool(completed)
        if not pool:
            return self._random_populate_space()
        mu, sigma = self.gpr.predict(np.array([self._vector(v) for v in pool]), return_std=True)
        pick = int(np.argmax(expected_improvement(mu, sigma, best_y)))
        return {"status": trial_module.TrialStatus.RUNNING, "values": pool[pick]}

    def _fit(self, completed) -> float:
        """Fits the process to the finished trials (minimised, on :func:`error_scale`) and
        returns the best transformed value. Trials still running elsewhere are added at
        the process's mean + one std (pessimistic), so workers do not all pick alike."""
        x = np.array([self._vector(t.hyperparameters.values) for t in completed])
        scores = np.nan_to_num([t.score for t in completed], nan=-1.0, posinf=1.0, neginf=-1.0)
        y = error_scale(scores) if self.objective.direction == "max" else scores
        ongoing = [t for t in self.ongoing_trials.values() if t.status == trial_module.TrialStatus.RUNNING]
        with warnings.catch_warnings():
            # A length scale at its upper bound is an entry that does not matter (ARD
            # saying so), not a failed fit: sklearn would warn about it on every proposal.
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.gpr.fit(x, y)
            if ongoing:
                xo = np.array([self._vector(t.hyperparameters.values) for t in ongoing])
                mu, sd = self.gpr.predict(xo, return_std=True)
                self.gpr.fit(np.vstack([x, xo]), np.concatenate([y, np.ravel(mu) + np.ravel(sd)]))
        return float(y.min())

    def _trade(self, base: dict, rng: random.Random) -> dict | None:
        """``base`` with one entry set to another option (``Encoding.perturb``), then
        shrunk back into the budget by the other entries, one option at a time."""
        new = self.feasibility.encoding.perturb(base, rng, entries=1)
        changed = next((n for n in new if new[n] != base.get(n)), None)
        return self._shrink(new, rng, keep=changed, next_option=True)

    def _vector(self, values) -> list[float]:
        return [hp.value_to_prob(values.get(hp.name, hp.default)) for hp in self._nonfixed_space()]

    def _pool(self, completed) -> list[dict]:
        """Feasible, untried values: neighbours of the best trials, moves of them
        (``perturb`` / :meth:`_trade`), then random draws shrunk into the budget."""
        pool, seen = [], set()

        def add(values):
            if values is None:
                return
            h = self._compute_values_hash(values)
            if h in seen or h in self._tried_so_far or not self.feasibility.check(values).ok:
                return
            seen.add(h)
            pool.append(values)

        enc = self.feasibility.encoding
        names = set(enc.names)
        best = sorted(completed, key=lambda t: t.score, reverse=self.objective.direction == "max")[: self.top]
        bases = [{k: v for k, v in t.hyperparameters.values.items() if k in names} for t in best]
        for base in bases:
            for nb in enc.neighbours(base):
                add(nb)
        # A fresh stream per proposal: the state is the oracle's own (saved with it, so a
        # resumed search proposes what the uninterrupted one would have), and without
        # advancing it every proposal would draw the same candidates and moves.
        rng = random.Random(self._seed_state)
        self._seed_state += 1
        for i in range(self.moves):
            base = bases[i % len(bases)]
            if i % 2:
                add(self._trade(base, rng))
            else:
                add(enc.perturb(base, rng, entries=1 + i % MAX_PERTURBED))
        for _ in range(self.candidates):
            start = {n: rng.choice(enc.choices(n)) for n in enc.names}
            add(self._shrink(start, rng, next_option=True))
        return pool


def make_oracle(kind: str, feasibility: Feasibility, *, hyperparameters: kt.HyperParameters, max_trials: int,
                seed: int, num_initial_points: int | None = None, hyperband_max_epochs: int = 3,
                progress: Callable | None = None) -> _Budgeted:
    """The budget-aware oracle ``kind`` (``bayesian``, ``random`` or ``hyperband``).

    Every hyperparameter is declared up front (``allow_new_entries=False``); the
    objective is the scalar ``score`` (maximised); a trial that raises is not
    retried (``max_retries_per_trial=0``).
    """
    common = dict(objective=kt.Objective(OBJECTIVE, "max"), hyperparameters=hyperparameters,
                  allow_new_entries=False, tune_new_entries=False, seed=seed + 1, max_retries_per_trial=0)
    if kind == "bayesian":
        oracle = BudgetedBayesianOracle(max_trials=max_trials, num_initial_points=num_initial_points, **common)
    elif kind == "random":
        oracle = BudgetedRandomOracle(max_trials=max_trials, **common)
    elif kind == "hyperband":
        oracle = BudgetedHyperbandOracle(max_epochs=hyperband_max_epochs, factor=3, hyperband_iterations=None,
                                         **common)
        oracle.max_trials = max_trials  # keras-tuner's Hyperband has no trial cap: the count is asked for
    else:
        raise ValueError(f"tuner={kind!r}: choose one of {', '.join(TUNERS)}")
    oracle.configure(feasibility, progress)
    oracle.verbose = 0  # keras-tuner's own per-trial tables; the search prints one line instead
    return oracle


def default_initial_points(trials: int) -> int:
    """Random trials before the Gaussian process takes over: a third of the trials,
    3 to 8 (keras-tuner's default, 3 x the dimensions, is 60 for a 10-field DeepFM,
    which would make a 20-trial Bayesian search a random one)."""
    return int(min(8, max(3, trials // 3)))


# ------------------------------------------------------------------------------ tuner


def release_memory() -> None:
    """Frees what a finished trial held: Keras' global state, Python garbage, and
    the C heap's free pages (glibc keeps them mapped otherwise, and RSS only grows)."""
    keras.backend.clear_session()  # includes gc.collect()
    trim_heap(collect=False)


class TrialRunner:
    """One trial: plan from values, :func:`apply_plan` (transforms + fine-tuning),
    validation AUC, bytes and predicted latency, written to the trial's folder.

    Args:
        model: the trained reference model (never modified).
        data: train / valid splits (test is not touched by the search).
        encoding, cost, latency, budget: as in :class:`~keras_ctr_compress.search.budget.Feasibility`.
        seed: seeds every trial's transforms and fine-tuning alike.
        calibration_rows: training rows that calibrate the transforms.
    """

    def __init__(self, model, data, encoding: Encoding, cost, latency, budget: Budget, *, seed: int = 0,
                 calibration_rows: int = 8192):
        self.model, self.data, self.encoding = model, data, encoding
        self.cost, self.latency, self.budget = cost, latency, budget
        self.seed, self.calibration_rows = seed, calibration_rows
        #: the best trial of this process so far: ``{"trial_id", "score", "model", "info"}`` (one model held)
        self.best: dict | None = None

    def run(self, trial_id: str, values: dict, trial_dir: str | Path) -> dict:
        from keras_ctr_compress.compress import select_fields
        from keras_ctr_compress.models.training import evaluate
        from keras_ctr_compress.search.apply import apply_plan

        t0 = time.perf_counter()
        finetune = {"epochs": int(values["tuner/epochs"])} if "tuner/epochs" in values else None
        plan = self.encoding.plan(values, finetune=finetune)
        small, info = apply_plan(self.model, plan, self.data, seed=self.seed, calibration_rows=self.calibration_rows)
        ft = info["finetune"]
        if ft is not None:
            val_auc, train_s = ft["best_val_auc"], ft["train_seconds"]
        else:
            val_auc = evaluate(small, select_fields(self.data.valid, info["kept_field_indices"]),
                               where="validation split")["auc"]
            train_s = 0.0
        nbytes = self.cost.plan_bytes(plan)
        lat = self.latency.predict(plan) if self.latency is not None else math.nan
        score = self.budget.score(val_auc, nbytes, lat)
        if self.best is None or score > self.best["score"]:  # keep it: the final step may ship it as it is
            self.best = {"trial_id": trial_id, "score": score, "model": small, "info": info}
        del small
        seconds = time.perf_counter() - t0
        record = {
            "trial_id": trial_id, "plan": plan.to_dict(), "val_auc": float(val_auc), "bytes": int(nbytes),
            "latency_us": float(lat), "latency_source": "predicted", "score": float(score),
            "within_budget": self.budget.within(nbytes, 0.0 if lat != lat else lat),
            "train_seconds": float(train_s), "build_seconds": float(seconds - train_s),
            "apply_seconds": info["seconds"], "finetune": ft, "tuner_id": os.environ.get("KERASTUNER_TUNER_ID", "tuner0"),
        }
        atomic_write_text(Path(trial_dir) / RESULT_FILE, json.dumps(record, indent=1) + "\n")
        metrics = {OBJECTIVE: float(score), "val_auc": float(val_auc), "bytes": float(nbytes),
                   "train_seconds": float(train_s), "build_seconds": float(seconds - train_s)}
        if lat == lat:  # keras-tuner's metric tracker warns on NaN
            metrics["latency_us"] = float(lat)
        return metrics


class PlanTuner(kt.engine.base_tuner.BaseTuner):
    """A keras-tuner tuner whose trials are :class:`TrialRunner` runs.

    Per trial it also writes ``timing.json`` (seconds spent proposing, building,
    fine-tuning, reporting and releasing memory, and the RSS after release), the
    facts behind the search's overhead and memory figures.
    """

    def __init__(self, oracle, runner: TrialRunner, *, interrupted: Callable[[], bool] | None = None, **kwargs):
        self.runner = runner
        self.interrupted = interrupted or (lambda: False)
        self._marks: dict[str, float] = {}
        super().__init__(oracle=oracle, hypermodel=None, **kwargs)

    def _stop_if_interrupted(self):
        """A Ctrl-C that Python swallowed (one landing in a finalizer is ignored) still
        stops the search, at the next trial boundary."""
        if self.interrupted():
            raise KeyboardInterrupt

    def pre_create_trial(self):
        self._stop_if_interrupted()
        self._marks = {"cycle": time.perf_counter()}

    def on_trial_begin(self, trial):
        self._marks["begin"] = time.perf_counter()

    def run_trial(self, trial, *args, **kwargs):
        return self.runner.run(trial.trial_id, trial.hyperparameters.values, self.get_trial_dir(trial.trial_id))

    def on_trial_end(self, trial):
        t_end = time.perf_counter()
        super().on_trial_end(trial)  # oracle.end_trial + state files
        t_saved = time.perf_counter()
        release_memory()
        t_done = time.perf_counter()
        result_path = Path(self.get_trial_dir(trial.trial_id)) / RESULT_FILE
        train = build = 0.0
        if result_path.exists():
            rec = json.loads(result_path.read_text())
            train, build = rec["train_seconds"], rec["build_seconds"]
        marks = self._marks
        timing = {
            "trial_id": trial.trial_id, "status": trial.status,
            "propose_seconds": marks.get("begin", t_end) - marks.get("cycle", t_end),
            "run_seconds": t_end - marks.get("begin", t_end), "train_seconds": train, "build_seconds": build,
            "report_seconds": t_saved - t_end, "release_seconds": t_done - t_saved,
            "total_seconds": t_done - marks.get("cycle", t_end), "rss_mb": rss_mb(),
        }
        timing["search_overhead_seconds"] = (timing["propose_seconds"] + timing["report_seconds"]
                                             + timing["release_seconds"] + max(0.0, timing["run_seconds"] - train - build))
        atomic_write_text(Path(self.get_trial_dir(trial.trial_id)) / TIMING_FILE, json.dumps(timing) + "\n")
        self._stop_if_interrupted()

    def save(self):
        if not self._is_worker():
            self.oracle.save()
        atomic_write_text(self._get_tuner_fname(), json.dumps(self.get_state()))
