"""An interrupted search resumes and loses no finished trial: ``kcc search`` killed
with SIGKILL after a trial finished, then run to the end with ``--resume``; a search
interrupted with SIGINT (Ctrl-C), then resumed (in this process).

Mechanics only, so trials are as cheap as a trial gets: a 5-field toy DeepFM, no
fine-tuning per trial (``--trial-epochs 0``: transforms + validation AUC), no latency
calibration (``--latency-plans 0``).
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from keras_ctr_compress.artifacts import save_trained
from keras_ctr_compress.data import load_dataset
from keras_ctr_compress.models import TrainConfig, build_model, train_model

SPEC = "synthetic:rows=6000,fields=5,numeric=0,noise_fields=1,total_vocab=500,seed=3"
TRIALS = 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    ds = load_dataset(SPEC)
    m = build_model("deepfm", ds.fields, mlp=(32, 32), embedding_dim=6, seed=0)
    train_model(m, ds.train, ds.valid, TrainConfig(epochs=1, verbose=0))
    return save_trained(tmp_path_factory.mktemp("m") / "model", m, ds.preprocessor, {"data": SPEC, "split_seed": 0})


def _command(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "keras_ctr_compress.cli", "search", "--model", str(model_dir), "--out", str(out),
            "--max-ratio", "3", "--trials", str(TRIALS), "--tuner", "bayesian", "--trial-epochs", "0",
            "--final-epochs", "0", "--latency-plans", "0", *extra]


def _finished(out: Path) -> dict[str, dict]:
    """Trials whose trial.json says COMPLETED, with their result records."""
    done = {}
    for d in (out / "tuner" / "search").glob("trial_*"):
        try:
            status = json.loads((d / "trial.json").read_text())["status"]
            rec = json.loads((d / "result.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            continue
        if status == "COMPLETED":
            done[rec["trial_id"]] = rec
    return done


def _run_until(cmd, out: Path, n: int, sig: int, log: Path, timeout: float = 300) -> tuple[dict, int]:
    """Starts ``cmd``, sends ``sig`` once ``n`` trials are finished; returns them and the exit code."""
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        try:
            while len(_finished(out)) < n:
                assert proc.poll() is None, f"search ended before {n} trials finished:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"no {n} finished trials in {timeout}s:\n{log.read_text()[-3000:]}"
                time.sleep(0.1)
            seen = _finished(out)
            running = proc.poll() is None
            proc.send_signal(sig)
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert running, "the search finished before it could be interrupted: the test would prove nothing"
    return seen, rc


def test_killed_search_resumes_without_losing_trials(model_dir, tmp_path):
    out = tmp_path / "search"
    before, rc = _run_until(_command(model_dir, out), out, 1, signal.SIGKILL, tmp_path / "run1.log")
    assert rc == -signal.SIGKILL and 1 <= len(before) < TRIALS

    final = subprocess.run(_command(model_dir, out, "--resume"), capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]
    trials = json.loads((out / "trials.json").read_text())
    assert sorted(t["trial_id"] for t in trials) == [str(i) for i in range(TRIALS)]  # as many as asked, no more
    by_id = {t["trial_id"]: t for t in trials}
    for k, v in before.items():
        assert by_id[k]["plan"] == v["plan"] and by_id[k]["val_auc"] == v["val_auc"]
    statuses = [json.loads(p.read_text())["status"] for p in (out / "tuner" / "search").glob("trial_*/trial.json")]
    assert statuses == ["COMPLETED"] * TRIALS  # the interrupted trials were rerun, not counted as failed
    assert (out / "best.tflite").exists() and json.loads((out / "result.json").read_text())["best"]["bytes"] > 0
    for p in [*out.glob("*.json"), *(out / "tuner" / "search").rglob("*.json")]:
        json.loads(p.read_text())  # every state file complete (written under a temporary name, then renamed)
    assert os.path.getsize(out / "pareto.png") > 0


def test_interrupted_search_resumes_in_process(model_dir, tmp_path):
    """Ctrl-C (SIGINT to this process) during a search: KeyboardInterrupt, finished
    trials kept; ``resume=True`` runs only the missing trials."""
    from keras_ctr_compress.artifacts import load_trained
    from keras_ctr_compress.search import search

    tm = load_trained(model_dir)
    ds = load_dataset(SPEC)
    out = tmp_path / "search"
    kw = dict(max_ratio=3.0, trials=3, tuner="random", out_dir=out, trial_epochs=0, final_epochs=0, latency_plans=0)

    def interrupt_after_first_trial():
        deadline = time.monotonic() + 300
        while not _finished(out) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    lines = []
    threading.Thread(target=interrupt_after_first_trial, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        search(tm.model, ds, log=lines.append, **kw)
    before = _finished(out)
    assert 1 <= len(before) < 3 and any("resume with resume=True" in ln for ln in lines)
    res = search(tm.model, ds, resume=True, log=lines.append, **kw)
    assert sorted(t["trial_id"] for t in res.trials) == ["0", "1", "2"]
    for t in res.trials:
        if t["trial_id"] in before:
            assert t["plan"] == before[t["trial_id"]]["plan"] and t["val_auc"] == before[t["trial_id"]]["val_auc"]
