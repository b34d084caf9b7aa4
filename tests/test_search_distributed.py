"""keras-tuner's distributed mode on one machine: one chief (the oracle, over gRPC on
localhost) and two workers, each a ``kcc search`` process with the same arguments
and ``KERASTUNER_TUNER_ID`` / ``KERASTUNER_ORACLE_IP`` / ``KERASTUNER_ORACLE_PORT``.

Mechanics only: a toy DeepFM, no fine-tuning per trial, no latency calibration.
"""

import json
import os
import socket
import subprocess
import sys

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_chief_and_two_workers_on_localhost(model_dir, tmp_path):
    out = tmp_path / "search"
    cmd = [sys.executable, "-m", "keras_ctr_compress.cli", "search", "--model", str(model_dir), "--out", str(out),
           "--max-ratio", "3", "--trials", str(TRIALS), "--tuner", "random", "--trial-epochs", "0",
           "--final-epochs", "0", "--latency-plans", "0"]
    port = str(_free_port())
    procs, logs = {}, {}
    try:
        for tuner_id in ("chief", "tuner0", "tuner1"):
            env = {**os.environ, "KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": "127.0.0.1",
                   "KERASTUNER_ORACLE_PORT": port}
            logs[tuner_id] = open(tmp_path / f"{tuner_id}.log", "wb")
            procs[tuner_id] = subprocess.Popen(cmd, env=env, stdout=logs[tuner_id], stderr=subprocess.STDOUT)
        codes = {k: p.wait(timeout=420) for k, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        for fh in logs.values():
            fh.close()
    text = {k: (tmp_path / f"{k}.log").read_text() for k in procs}
    assert codes == {"chief": 0, "tuner0": 0, "tuner1": 0}, {k: v[-2000:] for k, v in text.items()}
    trials = json.loads((out / "trials.json").read_text())
    assert sorted(t["trial_id"] for t in trials) == [str(i) for i in range(TRIALS)]
    ran_by = {t["tuner_id"] for t in trials}
    assert ran_by == {"tuner0", "tuner1"}  # both workers ran trials; the chief only served the oracle
    budget = json.loads((out / "search.json").read_text())["budget"]["max_bytes"]
    assert all(t["bytes"] <= budget for t in trials)
    assert "worker done" in text["tuner0"] and "worker done" in text["tuner1"]
    assert text["chief"].count("[search] trial ") == TRIALS  # the chief's oracle reported every trial
    result = json.loads((out / "result.json").read_text())
    assert result["role"] == "chief" and (out / "best.tflite").stat().st_size == result["best"]["bytes"] <= budget
