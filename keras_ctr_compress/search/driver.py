"""``search()``: the budgeted plan search, end to end (``kcc search`` calls it).

1. Price: the exact byte cost model of the trained model (its fp32 file exported
   once), the search space as keras-tuner hyperparameters, the budget. An
   impossible budget (below the smallest plan of the space) fails here, before
   anything is trained.
2. Latency: a latency model calibrated on this machine (files of a few random plans
   exported and timed in the LiteRT interpreter), saved in the output folder.
3. Search: a budget-aware keras-tuner oracle proposes plans within the budget; each
   trial applies its plan to the trained model, fine-tunes it briefly (one epoch by
   default) and reports one scalar, the validation AUC (minus a penalty only for a
   soft budget), with bytes and latency logged beside it. Memory is released between
   trials. Every state file is written atomically: an interrupted search
   (Ctrl-C, ``kill -9``) resumes with ``resume=True`` and keeps every finished trial.
4. Results: the Pareto front of the trials over (AUC, bytes, latency) as JSON and
   PNG; the best plan fine-tuned with the final recipe (more epochs, early
   stopping), its parity-checked ``.tflite`` (within the byte budget: checked on the
   file), its measured latency next to the prediction.

Distributed mode is keras-tuner's: run the same call in several processes with
``KERASTUNER_TUNER_ID`` (``chief`` for the oracle, ``tuner0``, ``tuner1``, ... for
workers), ``KERASTUNER_ORACLE_IP`` and ``KERASTUNER_ORACLE_PORT`` set and one shared
``out_dir``. The chief prices, calibrates and serves the oracle; workers wait for
its files, then run trials; the chief writes the results when all are done.

Output folder::

    search.json          the settings (a resume must match them)
    latency_anchor.json  the latency model's factor to the machine's speed at the start
    fp32.tflite          the reference export the cost model measured
    latency_model.json   the calibrated latency model
    tuner/search/        keras-tuner's state: oracle.json, trial_<id>/{trial,result,timing}.json
    trials.json          every finished trial: plan, val AUC, bytes, latency, score, seconds
    pareto.json, pareto.png
    best_plan.json, best.tflite, best/ (model.keras + meta.json), result.json

Example::

    res = search(model, dataset, max_ratio=16, trials=20, out_dir="runs/search")
    res.best_plan, res.tflite_path, res.pareto_png
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import keras
import keras_tuner as kt
import numpy as np

from keras_ctr_compress.data.schema import CTRDataset
from keras_ctr_compress.search.budget import Budget, Feasibility, check_possible
from keras_ctr_compress.search.cost import cost_model
from keras_ctr_compress.search.hparams import Encoding
from keras_ctr_compress.search.latency import LatencyModel, calibrate_latency
from keras_ctr_compress.search.pareto import front_table, pareto_front, plot_front, save_front
from keras_ctr_compress.search.plan import Plan
from keras_ctr_compress.search.space import SearchSpace, search_space
from keras_ctr_compress.search.tuner import (
    RESULT_FILE,
    TIMING_FILE,
    TUNERS,
    PlanTuner,
    TrialRunner,
    default_initial_points,
    make_oracle,
    release_memory,
    rss_mb,
)
from keras_ctr_compress.utils import atomic_write_text

MANIFEST = "search.json"
MANIFEST_FORMAT = "keras-ctr-compress-search"
LATENCY_FILE = "latency_model.json"
REFERENCE_FILE = "fp32.tflite"
ANCHOR_FILE = "latency_anchor.json"
PROJECT = "search"
#: how long a worker waits for the chief's settings and latency model
WORKER_WAIT_SECONDS = 1800
#: rows of the validation split the exported best file is parity-checked and timed on
CHECK_ROWS = 2000
#: the trials' fine-tuning (besides ``trial_epochs``): a compressed model recovers more in
#: one epoch at 1e-3 than at FinetuneOptions' 1e-4 (frappe DeepFM, ranks 16/8/8 + a
#: rank-4 item table: val AUC 0.9790 vs 0.9772 after one epoch)
TRIAL_FINETUNE = {"learning_rate": 1e-3}
#: the best plan's final fine-tuning (besides ``final_epochs``): early stopping after 2
#: epochs without gain, once with the learning rate / 10 first (same plan: test AUC
#: 0.9809 vs 0.9803 with plain early stopping)
FINAL_FINETUNE = {"patience": 2, "lr_decays": 1}


@dataclass
class SearchResult:
    """What :func:`search` returns (a worker process gets its own trials only).

    Attributes:
        best_plan: the best plan within the budget, with the final fine-tuning recipe.
        best_model: that plan applied to the model and fine-tuned (reads the kept
            columns ``best["kept_field_indices"]``).
        tflite_path: its parity-checked LiteRT file.
        trials: every finished trial: ``trial_id``, ``plan``, ``val_auc``, ``bytes``,
            ``latency_us`` (predicted), ``score``, seconds.
        pareto: the non-dominated trials over (val AUC, bytes, latency).
        pareto_png: the plot of all trials with the front.
        best: facts of the best plan: its trial, final validation AUC, exported bytes,
            parity, measured and predicted latency.
        timings: setup seconds, per-trial overhead and memory figures.
    """

    best_plan: Plan | None
    best_model: keras.Model | None
    tflite_path: Path | None
    trials: list[dict]
    pareto: list[dict]
    pareto_png: Path | None
    best: dict | None = None
    budget: Budget | None = None
    fp32_bytes: int | None = None
    latency: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    out_dir: Path | None = None
    role: str = "local"

    def to_dict(self) -> dict:
        """The JSON form (no model)."""
        return {
            "role": self.role, "out_dir": str(self.out_dir), "fp32_bytes": self.fp32_bytes,
            "budget": None if self.budget is None else self.budget.to_dict(),
            "best_plan": None if self.best_plan is None else self.best_plan.to_dict(),
            "tflite_path": None if self.tflite_path is None else str(self.tflite_path),
            "pareto_png": None if self.pareto_png is None else str(self.pareto_png),
            "best": self.best, "latency": self.latency, "timings": self.timings,
            "trials": self.trials, "pareto": self.pareto,
        }


def _log_default(msg: str) -> None:
    from keras_ctr_compress.console import progress  # stderr; silenced by kcc --quiet / KCC_QUIET=1

    progress(msg)


# --------------------------------------------------------------------------- checks


def _role() -> str:
    """``local``, or keras-tuner's distributed ``chief`` / ``worker`` (from its env vars)."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "local"
    missing = [k for k in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID") if k not in os.environ]
    if missing:
        raise ValueError(f"distributed search: KERASTUNER_ORACLE_IP is set but {missing[0]} is not")
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


def _budget(fp32_bytes: int, max_bytes, max_ratio, max_latency_us, soft: bool) -> Budget:
    if max_bytes is not None and max_ratio is not None:
        raise ValueError("give max_bytes or max_ratio, not both")
    if max_ratio is not None:
        if not isinstance(max_ratio, (int, float)) or not max_ratio > 0:
            raise ValueError(f"max_ratio must be a positive number (the file at most 1/R of fp32's), got {max_ratio!r}")
        max_bytes = int(fp32_bytes / max_ratio)
    return Budget(max_bytes=None if max_bytes is None else int(max_bytes), max_latency_us=max_latency_us, soft=soft)


def _check_args(trials, tuner, trial_epochs, final_epochs, out_dir) -> None:
    if out_dir is None:
        raise ValueError("search needs an out_dir (its state, trials and results go there)")
    if tuner not in TUNERS:
        raise ValueError(f"tuner={tuner!r}: choose one of {', '.join(TUNERS)}")
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ValueError(f"trials must be an integer >= 1, got {trials!r}")
    for name, v in (("trial_epochs", trial_epochs), ("final_epochs", final_epochs)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {v!r}")


def _weights_digest(model: keras.Model) -> str:
    h = hashlib.sha1()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:16]


def _manifest(model, data: CTRDataset, space: SearchSpace, budget: Budget, tuner: str, seed: int,
              fp32_bytes: int, trial_epochs: int) -> dict:
    """The settings a resumed search (or a worker) must share with the first run."""
    return {"format": MANIFEST_FORMAT, "version": 1, "model": model.name, "weights": _weights_digest(model),
            "fp32_bytes": fp32_bytes, "data": {"name": data.name, "split": data.split_sizes()},
            "budget": budget.to_dict(), "tuner": tuner, "seed": seed, "trial_epochs": trial_epochs,
            "space": space.to_dict()}


def _compare(old: dict, new: dict, where: Path) -> None:
    for key in ("model", "weights", "fp32_bytes", "data", "budget", "tuner", "seed", "trial_epochs", "space"):
        if old.get(key) != new.get(key):
            raise ValueError(f"{where}: the search there was started with other settings ({key}: "
                             f"{json.dumps(old.get(key))[:80]} vs now {json.dumps(new.get(key))[:80]}); "
                             "resume with the same model, data, budget, tuner, seed and space, or use another out_dir")


def _check_state_exists(out: Path, state: Path, resume: bool) -> bool:
    """Whether there is a search to resume; refuses to overwrite one or resume nothing."""
    exists = (state / "oracle.json").exists()
    if exists and not resume:
        raise ValueError(f"{out}: already holds a search ({state}); resume it with resume=True "
                         "(kcc search --resume) or choose another out_dir")
    if resume and not exists:
        raise ValueError(f"{out}: nothing to resume (no search state in {state})")
    return exists


def _check_state(out: Path, state: Path, manifest: dict, resume: bool) -> bool:
    """:func:`_check_state_exists`, and a resumed search must have the same settings."""
    exists = _check_state_exists(out, state, resume)
    if exists:
        path = out / MANIFEST
        if not path.exists():
            raise ValueError(f"{path}: missing; cannot check that the resumed search has the same settings")
        _compare(json.loads(path.read_text()), manifest, path)
    return exists


def _cost(model: keras.Model, out: Path, *, reuse: bool):
    """The cost model. Its fp32 reference file is kept in ``out_dir``: a resumed run or
    a worker reads it instead of exporting the model again (the settings check that
    follows compares the model's weights digest)."""
    from keras_ctr_compress.export import export_litert
    from keras_ctr_compress.search.cost import cached_cost_model

    ref = out / REFERENCE_FILE
    if reuse and ref.exists():
        return cost_model(model, reference=ref)
    cached = cached_cost_model(model)
    if cached is not None:  # measured already in this process
        return cached
    export_litert(model, ref)
    return cost_model(model, reference=ref)


def _wait_for(paths: list[Path], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not all(p.exists() for p in paths):
        if time.monotonic() > deadline:
            raise ValueError(f"worker: waited {seconds:.0f}s for the chief's {what} in {paths[0].parent}")
        time.sleep(0.5)


# ------------------------------------------------------------------------ progress


class _Progress:
    """One line per finished trial: trial n of N, its numbers, best so far, time left."""

    def __init__(self, total: int, budget: Budget, fp32_bytes: int, log: Callable[[str], None], verbose: int):
        self.total, self.budget, self.fp32, self.log, self.verbose = total, budget, fp32_bytes, log, verbose
        self.t0 = time.perf_counter()
        self.done_here = 0

    def __call__(self, oracle, trial) -> None:
        self.done_here += 1
        if self.verbose < 1:
            return
        done = len(oracle.end_order)
        elapsed = time.perf_counter() - self.t0
        left = elapsed / self.done_here * max(0, self.total - done)
        best = oracle.get_best_trials(1)
        best_txt = "none yet"
        if best and best[0].status == "COMPLETED":
            best_txt = f"{best[0].score:.5f} (trial {best[0].trial_id})"
        if trial.status == "COMPLETED":
            m = trial.metrics
            nbytes = m.get_last_value("bytes")
            lat = m.get_last_value("latency_us") if m.exists("latency_us") else float("nan")
            what = (f"val AUC {m.get_last_value('val_auc'):.5f}, {int(nbytes):,} B (1/{self.fp32 / nbytes:.1f} of "
                    f"fp32)" + (f", {lat:.1f} us predicted" if lat == lat else ""))
        else:
            msg = (trial.message or "").strip().splitlines()
            what = f"{trial.status}: {msg[-1] if msg else 'no message'}"
        self.log(f"[search] trial {done}/{self.total} ({trial.trial_id}): {what} | best {best_txt} | "
                 f"{_clock(elapsed)} elapsed, ~{_clock(left)} left")


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class _InterruptFlag:
    """While active, Ctrl-C raises KeyboardInterrupt as usual AND is remembered, so
    that one Python swallows (raised inside a finalizer) still stops the search at the
    next trial boundary (see ``PlanTuner``). Only in the main thread."""

    def __init__(self):
        self._set = False
        self._old = None

    def is_set(self) -> bool:
        return self._set

    def _handler(self, signum, frame):
        self._set = True
        raise KeyboardInterrupt

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


# ---------------------------------------------------------------------- collecting


def collect_trials(state: Path) -> list[dict]:
    """Finished trials of a search folder (``tuner/search``), in trial order: the
    trial's result record with its timing record under ``"timing"``."""
    out = []
    for d in sorted(Path(state).glob("trial_*")):
        try:
            status = json.loads((d / "trial.json").read_text()).get("status")
            rec = json.loads((d / RESULT_FILE).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        if status != "COMPLETED":
            continue
        timing = d / TIMING_FILE
        rec["timing"] = json.loads(timing.read_text()) if timing.exists() else None
        out.append(rec)
    return out


def timing_summary(trials: list[dict], rss_before: float | None, setup_seconds: float) -> dict:
    """Per-trial overhead and memory figures from the trials' timing records.

    ``search_overhead`` is what the search machinery adds to a trial (proposing,
    reporting, saving state, releasing memory); ``beyond_training`` is everything in
    the trial's cycle except the fine-tuning fit, i.e. also building the candidate
    (transforms, calibration) and reading its validation AUC.
    """
    tim = [t["timing"] for t in trials if t.get("timing")]
    if not tim:
        return {"setup_seconds": setup_seconds, "trials_timed": 0}
    over = np.array([t["search_overhead_seconds"] for t in tim])
    beyond = np.array([t["total_seconds"] - t["train_seconds"] for t in tim])
    build = np.array([t["build_seconds"] for t in tim])
    rss = [t["rss_mb"] for t in tim]
    return {
        "setup_seconds": setup_seconds, "trials_timed": len(tim),
        "search_overhead_seconds_mean": float(over.mean()), "search_overhead_seconds_max": float(over.max()),
        "beyond_training_seconds_mean": float(beyond.mean()), "beyond_training_seconds_max": float(beyond.max()),
        "build_seconds_mean": float(build.mean()),
        "train_seconds_mean": float(np.mean([t["train_seconds"] for t in tim])),
        "total_seconds_mean": float(np.mean([t["total_seconds"] for t in tim])),
        "rss_mb_before_first": rss_before, "rss_mb_after_each": rss,
        "rss_growth_mb": float(rss[-1] - rss[0]),
        "rss_growth_mb_from_start": None if rss_before is None else float(rss[-1] - rss_before),
    }


# ---------------------------------------------------------------------------- search


def search(
    model: keras.Model,
    data: CTRDataset,
    *,
    max_bytes: int | None = None,
    max_ratio: float | None = None,
    max_latency_us: float | None = None,
    trials: int = 20,
    tuner: str = "bayesian",
    space: SearchSpace | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    resume: bool = False,
    soft_budget: bool = False,
    verbose: int = 1,
    trial_epochs: int = 1,
    final_epochs: int = 12,
    finetune: dict | None = None,
    latency_model: LatencyModel | str | Path | None = None,
    latency_plans: int = 10,
    num_initial_points: int | None = None,
    hyperband_max_epochs: int = 3,
    calibration_rows: int = 8192,
    negligible_share: float = 0.02,
    log: Callable[[str], None] | None = None,
) -> SearchResult:
    """Searches plans of ``model`` under a byte and / or latency budget (module docstring).

    Example::

        res = search(model, ds, max_ratio=16, max_latency_us=40, trials=20, out_dir="runs/s")
        print(res.best["val_auc"], res.best["bytes"], res.tflite_path)

    Args:
        model: the trained reference model (never modified).
        data: its dataset; ``train`` fine-tunes, ``valid`` scores (``test`` is not used).
        max_bytes / max_ratio: the exported file's byte cap, absolute or as a share
            of the fp32 file (``max_ratio=16``: at most 1/16 of it). One or neither.
        max_latency_us: cap on the predicted batch-1 latency (LiteRT, 1 thread).
        trials: trials in total (a resumed search runs only the missing ones).
        tuner: ``"bayesian"`` (keras-tuner BayesianOptimization), ``"random"`` or
            ``"hyperband"`` (its epochs replace ``trial_epochs``).
        space: the search space (default: :func:`search_space` of the model), narrowed
            with ``fix`` / ``restrict``.
        out_dir: the folder of the search (see the module docstring).
        seed: seeds the oracle, the calibration plans and every fine-tuning.
        resume: continue the search in ``out_dir`` (its settings must match).
        soft_budget: let plans over the budget run, penalised (``Budget.penalty``).
        verbose: 0 silent, 1 one line per trial.
        trial_epochs: fine-tuning epochs per trial (the proxy the search ranks on).
        final_epochs: at most this many epochs (early stopping) for the best plan.
        finetune: other fine-tuning options (``FinetuneOptions`` names) for all.
        latency_model: a calibrated :class:`LatencyModel` (or its JSON file) to reuse.
        latency_plans: files measured to calibrate the latency model.
        num_initial_points: random trials before the Bayesian model
            (default :func:`~keras_ctr_compress.search.tuner.default_initial_points`).
        hyperband_max_epochs: Hyperband's largest epoch count.
        calibration_rows: training rows that calibrate each trial's transforms.
        negligible_share: under a byte budget, table and pair entries whose options move
            the file by less than this share of it stay unchanged (0: search them all).
        log: where progress lines go (default: stderr).

    Raises:
        ValueError: bad arguments, an impossible budget (before any training), a
            resume that does not match, or every trial failed.
    """
    log = log or _log_default
    t_setup = time.perf_counter()
    _check_args(trials, tuner, trial_epochs, final_epochs, out_dir)
    role = _role()
    out = Path(out_dir)
    state = out / "tuner" / PROJECT
    if role == "worker":  # the chief writes its reference file and latency model first, its settings last
        _wait_for([out / MANIFEST], WORKER_WAIT_SECONDS, "settings")
    else:
        _check_state_exists(out, state, resume)
    cost = _cost(model, out, reuse=resume or role == "worker")
    fp32_bytes = int(cost.reference_bytes)
    budget = _budget(fp32_bytes, max_bytes, max_ratio, max_latency_us, soft_budget)
    space = _with_finetune(space or search_space(model),
                           {**TRIAL_FINETUNE, **(finetune or {}), "epochs": trial_epochs})
    space, negligible = _fix_negligible(space, cost, budget, negligible_share)
    encoding = Encoding(space, cost)
    if not encoding.names:
        raise ValueError("the search space has nothing left to choose (every entry is fixed)")
    manifest = _manifest(model, data, space, budget, tuner, seed, fp32_bytes, trial_epochs)
    resuming = False
    if role == "worker":
        _compare(json.loads((out / MANIFEST).read_text()), manifest, out / MANIFEST)
    else:
        resuming = _check_state(out, state, manifest, resume)
    if verbose:
        log(f"[search] {model.name}: fp32 file {fp32_bytes:,} B; budget {budget.describe()}; "
            f"{len(encoding.names)} hyperparameters, {space.size():.2e} plans; tuner {tuner}, {trials} trials"
            + (" (resuming)" if resuming else "") + (f" ({role})" if role != "local" else ""))
        if negligible:
            log(f"[search] left unchanged (their options move the file by < {negligible_share:.0%} of the budget): "
                + ", ".join(negligible))
    possible = check_possible(encoding, cost, None, budget, fp32_bytes)
    latency = _latency(latency_model, model, data, space, out, role, latency_plans, seed, possible, log, verbose)
    latency = _anchor(latency, out, data, role, log, verbose)
    if budget.max_latency_us is not None:
        possible = check_possible(encoding, cost, latency, budget, fp32_bytes)
    if role != "worker":
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    feasibility = Feasibility(encoding, cost, latency, budget)
    progress = _Progress(trials, budget, fp32_bytes, log, verbose)
    oracle = make_oracle(tuner, feasibility, hyperparameters=encoding.hyperparameters(), max_trials=trials,
                         seed=seed, num_initial_points=num_initial_points or default_initial_points(trials),
                         hyperband_max_epochs=hyperband_max_epochs, progress=progress)
    runner = TrialRunner(model, data, encoding, cost, latency, budget, seed=seed, calibration_rows=calibration_rows)
    if resuming:  # make keras-tuner reload the oracle whichever tuner id saved it last
        tuner_file = state / f"{os.environ.get('KERASTUNER_TUNER_ID', 'tuner0')}.json"
        if not tuner_file.exists():
            atomic_write_text(tuner_file, "{}")
    interrupt = _InterruptFlag()
    kt_tuner = PlanTuner(oracle, runner, directory=str(out / "tuner"), project_name=PROJECT, overwrite=False,
                         interrupted=interrupt.is_set)
    if role == "local":
        kt_tuner.save()
    setup_seconds = time.perf_counter() - t_setup
    release_memory()
    rss_before = rss_mb()
    # Everything alive now (TensorFlow, the model, the data) lives through the search:
    # frozen, the collections between trials only walk what trials allocate (0.1-0.3 s
    # instead of 1-2.5 s on 2 busy cores; memory is released all the same).
    gc.freeze()
    try:
        with interrupt:
            kt_tuner.search(verbose=0)
    except kt.errors.FatalError as e:  # e.g. no plan within the budget: the user's problem, say it plainly
        raise ValueError(str(e).strip().splitlines()[0]) from None
    except RuntimeError as e:
        if "consecutive failures" not in str(e):
            raise
        last = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        raise ValueError(f"{out}: trials keep failing (keras-tuner stops after 3 in a row); last error: "
                         f"{last[-1] if last else e}") from None
    except KeyboardInterrupt:
        done = len(collect_trials(state))
        log(f"[search] interrupted: {done} finished trials are saved in {out}; resume with resume=True "
            "(kcc search --resume)")
        raise
    finally:
        gc.unfreeze()
    finished = collect_trials(state)
    timings = timing_summary(finished, rss_before, setup_seconds)
    if role == "worker":
        mine = [t for t in finished if t.get("tuner_id") == os.environ.get("KERASTUNER_TUNER_ID")]
        return SearchResult(None, None, None, mine, [], None, budget=budget, fp32_bytes=fp32_bytes,
                            latency=_latency_summary(latency),
                            timings=timing_summary(mine, rss_before, setup_seconds),
                            out_dir=out, role=role)
    return _results(model, data, finished, budget, cost, latency, out, seed, final_epochs, calibration_rows,
                    fp32_bytes, timings, possible, role, log, verbose, runner.best)


def _anchor(latency: LatencyModel | None, out: Path, data: CTRDataset, role: str, log, verbose) -> LatencyModel | None:
    """The latency model re-anchored to the machine's speed now (``LatencyModel.anchored``):
    the chief or local run times the fp32 reference file and writes the factor for its
    workers, so that every process predicts alike."""
    from keras_ctr_compress.export import measure_latency

    ref, anchor = out / REFERENCE_FILE, out / ANCHOR_FILE
    if latency is None:
        return None
    if role == "worker":
        if anchor.exists():  # the chief's total scale, applied to this worker's copy of its model
            return latency.rescaled(json.loads(anchor.read_text())["scale"] / latency.scale)
        return latency
    if not ref.exists():  # the cost model was measured in this process already: no file kept
        return latency
    now = measure_latency({"fp32": ref}, data.valid.x, batch_sizes=(1,), min_seconds=0.5)["fp32"][1]["median_us"]
    anchored = latency.anchored(now)
    atomic_write_text(anchor, json.dumps({"scale": anchored.scale, "fp32_us": now}) + "\n")
    if verbose:
        log(f"[search] latency model anchored to the machine now: fp32 file {now:.1f} us at batch 1 "
            f"(predictions x {anchored.scale:.2f})")
    return anchored


def _latency_summary(latency: LatencyModel | None) -> dict:
    return latency.summary() if latency is not None else {"source": "not predicted (latency_plans=0)"}


def _fix_negligible(space: SearchSpace, cost, budget: Budget, share: float) -> tuple[SearchSpace, list[str]]:
    """The space with its negligible table / pair entries fixed to unchanged
    (:func:`~keras_ctr_compress.search.hparams.negligible_entries`); only under a byte budget."""
    from keras_ctr_compress.search.hparams import negligible_entries

    if budget.max_bytes is None or share <= 0:
        return space, []
    names = negligible_entries(Encoding(space, cost), cost, share * budget.max_bytes)
    for name in names:
        space = space.fix(name, None) if name == "pairs" else space.fix(name, {"method": "fp32"})
    return space, names


def _with_finetune(space: SearchSpace, finetune: dict) -> SearchSpace:
    new = SearchSpace.from_dict(space.to_dict())
    new.finetune = {**space.finetune, **finetune}
    Plan(finetune=new.finetune)  # checks the options (one-line error naming the bad one)
    return new


def _latency(given, model, data, space, out: Path, role: str, plans: int, seed: int, possible: dict,
             log, verbose) -> LatencyModel:
    """The latency model: given, saved by an earlier run / the chief, calibrated now, or
    None (``latency_plans=0`` and none saved: latency is neither predicted nor capped)."""
    path = out / LATENCY_FILE
    if isinstance(given, LatencyModel):
        lat = given
    elif given is not None:
        lat = LatencyModel.load(given, model)
    elif path.exists():
        return LatencyModel.load(path, model)
    elif plans == 0 or role == "worker":
        if verbose and role != "worker":
            log("[search] latency is not predicted (latency_plans=0): the Pareto front is over AUC and bytes")
        return None
    else:
        if verbose:
            log(f"[search] calibrating the latency model on {plans} exported plans (LiteRT, batch 1, 1 thread)")
        lat = calibrate_latency(model, data, space, plans=plans, extra=[Plan.from_dict(possible["min_bytes_plan"])],
                                seed=seed, workdir=None)
        if verbose:
            s = lat.summary()
            log(f"[search] latency model: leave-one-out error median {s['loo_median_abs_rel_error']:.1%}, "
                f"max {s['loo_max_abs_rel_error']:.1%} over {s['files']} files ({s['calibration_seconds']:.0f}s)")
    if role != "worker":
        lat.save(path)
    return lat


# --------------------------------------------------------------------------- results


def _results(model, data, finished, budget, cost, latency, out, seed, final_epochs, calibration_rows, fp32_bytes,
             timings, possible, role, log, verbose, kept=None) -> SearchResult:
    if not finished:
        raise ValueError(f"{out}: no trial finished (see the trial messages in {out / 'tuner' / PROJECT})")
    front = pareto_front(finished)
    slim = [{k: v for k, v in t.items() if k != "apply_seconds"} for t in finished]
    atomic_write_text(out / "trials.json", json.dumps(slim, indent=1) + "\n")
    save_front(front, out / "pareto.json", fp32_bytes=fp32_bytes, budget=budget.to_dict(), trials=len(finished))
    png = plot_front(finished, front, out / "pareto.png", max_bytes=budget.max_bytes, fp32_bytes=fp32_bytes,
                     title=f"{model.name}: {len(finished)} trials, budget {budget.describe()}")
    best_plan, best_model, best = _finalize(model, data, finished, budget, cost, latency, out, seed, final_epochs,
                                            calibration_rows, log, verbose, kept)
    result = SearchResult(best_plan, best_model, Path(best["path"]), finished, front, png, best=best, budget=budget,
                          fp32_bytes=fp32_bytes, latency=_latency_summary(latency), timings=timings, out_dir=out,
                          role=role)
    summary = result.to_dict()
    summary["smallest_plan"] = possible
    summary["pareto_table"] = front_table(front, fp32_bytes)
    summary["trials"] = [{k: t[k] for k in ("trial_id", "val_auc", "bytes", "latency_us", "score")} for t in finished]
    atomic_write_text(out / "result.json", json.dumps(summary, indent=1, default=str) + "\n")
    if verbose:
        pred = best["latency_us_predicted"]
        log(f"[search] best plan: trial {best['trial_id']}, val AUC {best['val_auc']:.5f} after the final fine-tune "
            f"({best['trial_val_auc']:.5f} in its trial), {best['bytes']:,} B (1/{fp32_bytes / best['bytes']:.1f} "
            f"of fp32), latency {best['latency_us_measured']:.1f} us measured"
            + (f" vs {pred:.1f} predicted" if pred is not None else "") + f" -> {best['path']}")
    return result


def _finalize(model, data, finished, budget, cost, latency, out, seed, final_epochs, calibration_rows, log,
              verbose, kept=None) -> tuple[Plan, keras.Model, dict]:
    """The best trial's plan fine-tuned with the final recipe, exported, checked.

    Trials go in score order; one whose exported file is over the byte budget (the
    cost model is within 1%, so only a plan at the budget's edge can be) is skipped.
    Where the final recipe is the trial's own (``final_epochs`` not above the trial's
    epochs) and this process still holds that trial's model (``kept``), it is used
    as it is instead of being rebuilt.
    """
    from keras_ctr_compress.artifacts import save_trained
    from keras_ctr_compress.compress import select_fields
    from keras_ctr_compress.export import export_litert, measure_latency
    from keras_ctr_compress.search.apply import apply_plan, export_plan

    ranked = sorted(finished, key=lambda t: -t["score"])
    for t in ranked[:5]:
        plan = Plan.from_dict(t["plan"])
        if final_epochs > plan.finetune.epochs:
            plan = replace(plan, finetune=replace(plan.finetune, epochs=final_epochs, **FINAL_FINETUNE))
        if kept is not None and kept["trial_id"] == t["trial_id"] and plan == Plan.from_dict(t["plan"]):
            small, info = kept["model"], kept["info"]
        else:
            if verbose:
                log(f"[search] rebuilding the best plan (trial {t['trial_id']}) with up to {plan.finetune.epochs} "
                    "fine-tuning epochs")
            small, info = apply_plan(model, plan, data, seed=seed, calibration_rows=calibration_rows)
        kept = info["kept_field_indices"]
        x_check = select_fields(data.valid.x[:CHECK_ROWS], kept)
        exported = export_plan(small, plan, out / "best.tflite", check_x=x_check)
        if not budget.soft and budget.max_bytes is not None and exported["bytes"] > budget.max_bytes:
            log(f"[search] trial {t['trial_id']}: exported {exported['bytes']:,} B > budget; next best")
            Path(exported["path"]).unlink()
            continue
        ref = out / REFERENCE_FILE
        if not ref.exists():
            export_litert(model, ref)
        timed = measure_latency({"best": exported["path"], "fp32": ref}, data.valid.x, batch_sizes=(1,),
                                min_seconds=0.5, seed=seed, input_columns={"best": kept})
        lat, lat_fp32 = timed["best"][1]["median_us"], timed["fp32"][1]["median_us"]
        ft = info["finetune"] or {}
        best = {
            "trial_id": t["trial_id"], "trial_val_auc": t["val_auc"], "score": t["score"],
            "val_auc": ft.get("best_val_auc", t["val_auc"]), "final_epochs": ft.get("epochs"),
            "final_best_epoch": ft.get("best_epoch"), "final_train_seconds": ft.get("train_seconds"),
            "bytes": int(exported["bytes"]), "bytes_predicted": int(cost.plan_bytes(plan)),
            "parity_max_abs": exported["parity_max_abs"], "drq_max_abs": exported["drq_max_abs"],
            "latency_us_measured": float(lat),
            "latency_us_predicted": None if latency is None else latency.predict(plan),
            "kept_field_indices": kept, "path": exported["path"], "plan": plan.to_dict(),
        }
        best["latency_rel_error"] = None if latency is None else (best["latency_us_predicted"] - lat) / lat
        best["latency_us_fp32_measured"] = float(lat_fp32)  # timed interleaved with the best file
        if latency is not None:  # ratios to fp32 cancel the machine's drift since calibration
            ratio_pred = best["latency_us_predicted"] / latency.predict(Plan())
            best["latency_ratio_measured"], best["latency_ratio_predicted"] = lat / lat_fp32, ratio_pred
            best["latency_ratio_rel_error"] = (ratio_pred - lat / lat_fp32) / (lat / lat_fp32)
        plan.save(out / "best_plan.json")
        save_trained(out / "best", small, data.preprocessor,
                     {"plan": plan.to_dict(), "kept_field_indices": kept, "search": {
                         k: best[k] for k in ("trial_id", "val_auc", "bytes", "latency_us_measured")}})
        return plan, small, best
    raise ValueError(f"{out}: none of the 5 best trials exported within the byte budget {budget.describe()}")


__all__ = ["SearchResult", "collect_trials", "search", "timing_summary"]
