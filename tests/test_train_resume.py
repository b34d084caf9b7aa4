"""Interrupted work: kill ``kcc train`` with SIGKILL after a checkpointed epoch, resume
it, and get what an uninterrupted run with the same seed gets (epochs, history, and
bit-for-bit the same weights on CPU); atomic writes under SIGKILL.

Why exact equality holds (training.py's module docstring): the batch order of each
epoch is a stateless function of (seed, epoch), the checkpoint holds every model
variable (dropout seed-generator states included), Adam's moments, step counter and
learning rate, and DecayOnPlateau's state; TensorFlow's CPU kernels are
deterministic for a fixed thread count, and both runs here use the same machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_ctr_compress.cli import main
from keras_ctr_compress.data import load_dataset
from keras_ctr_compress.models import TrainConfig, build_model, train_model
from keras_ctr_compress.models.training import load_checkpoint, read_checkpoint_info

SCHEMA = {"label": "clicked", "categorical": ["site", "app"], "numeric": ["price"]}
#: patience above the epoch count: every run trains all epochs, so the kill lands mid-way
ARGS = ["--epochs", "6", "--patience", "10", "--mlp", "16,16", "--embedding-dim", "4", "--batch-size", "128",
        "--lr", "0.003"]


def write_data(folder: Path, rows: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    site, app, price = rng.integers(40, size=rows), rng.integers(8, size=rows), rng.gamma(2.0, 3.0, size=rows)
    p = 1 / (1 + np.exp(-(0.1 * site - 2 + 0.3 * app - 0.05 * price)))
    y = (rng.random(rows) < p).astype(int)
    lines = ["clicked,site,app,price"] + [f"{a},s{b},a{c},{d:.2f}" for a, b, c, d in zip(y, site, app, price, strict=True)]
    (folder / "data.csv").write_text("\n".join(lines) + "\n")
    (folder / "schema.json").write_text(json.dumps(SCHEMA))
    return f"csv:{folder / 'data.csv'},schema={folder / 'schema.json'}"


def kcc(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "keras_ctr_compress.cli", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


def checkpoint_epoch(folder: Path) -> int:
    try:
        return int(read_checkpoint_info(folder / "checkpoint.npz")["epoch"])
    except (FileNotFoundError, ValueError):
        return 0


def saved_weights(folder: Path) -> list[np.ndarray]:
    from keras_ctr_compress.artifacts import load_trained

    return load_trained(folder).model.get_weights()


def test_sigkill_mid_training_then_resume_matches_an_uninterrupted_run(tmp_path, capsys):
    spec = write_data(tmp_path, 12000)
    ref, victim = tmp_path / "ref", tmp_path / "victim"
    reference = kcc("train", "--data", spec, "--out", str(ref), *ARGS)  # runs alongside
    proc = kcc("train", "--data", spec, "--out", str(victim), *ARGS)
    deadline = time.monotonic() + 500
    while checkpoint_epoch(victim) < 1:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # mid-way: a complete checkpoint, nothing that looks like a finished model
    done = checkpoint_epoch(victim)
    assert 1 <= done < 6 and load_checkpoint(victim / "checkpoint.npz").state["epoch"] == done
    assert {p.name for p in victim.iterdir() if not p.name.startswith(".")} == {"checkpoint.npz"}
    print(f"killed after {done} checkpointed epochs")

    # a resume with other settings or other data is refused, and changes nothing
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(victim), "--epochs", "9"]) == 2
    assert "kcc train: error: --epochs 9 differs from the interrupted run's 6" in capsys.readouterr().err
    data = tmp_path / "data.csv"
    original = data.read_bytes()
    data.write_bytes(original.replace(b"\n1,", b"\n0,", 5))
    assert main(["train", "--resume", "--out", str(victim)]) == 2
    assert "changed since the interrupted run" in capsys.readouterr().err
    data.write_bytes(original)
    assert checkpoint_epoch(victim) == done

    resumed = kcc("train", "--resume", "--out", str(victim))
    finish(resumed)
    finish(reference)
    meta_ref = json.loads((ref / "meta.json").read_text())
    meta_res = json.loads((victim / "meta.json").read_text())
    assert meta_res["train"]["epochs"] == meta_ref["train"]["epochs"] == 6
    assert meta_res["train"]["history"] == meta_ref["train"]["history"]  # every epoch, none lost
    assert meta_res["test"] == meta_ref["test"] and meta_res["train_config"] == meta_ref["train_config"]
    for a, b in zip(saved_weights(ref), saved_weights(victim), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not (victim / "checkpoint.npz").exists() and not (ref / "checkpoint.npz").exists()


class StopAfter(keras.callbacks.Callback):
    """Interrupts training like Ctrl-C at the end of an epoch (before that epoch's checkpoint)."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def tiny():
    return load_dataset("synthetic:rows=5000,fields=5,numeric=0,noise_fields=1,total_vocab=400,seed=3")


def test_resume_restores_optimizer_and_plateau_state_exactly(tiny, tmp_path):
    """A run that decays its learning rate after the interruption point, resumed in
    the same process: same epochs, history and weights as without the interruption;
    a checkpoint of another recipe or model is refused."""
    cfg = TrainConfig(epochs=7, batch_size=256, patience=1, learning_rate=3e-3, verbose=0)

    def fresh():
        return build_model("deepfm", tiny.fields, mlp=(16, 16), embedding_dim=4, seed=0)

    full = fresh()
    s_full = train_model(full, tiny.train, tiny.valid, cfg, checkpoint=tmp_path / "full.npz")
    part = fresh()
    with pytest.raises(KeyboardInterrupt):
        train_model(part, tiny.train, tiny.valid, cfg, checkpoint=tmp_path / "part.npz", callbacks=[StopAfter(3)])
    assert read_checkpoint_info(tmp_path / "part.npz")["epoch"] == 3
    # another recipe or another model is refused before anything is touched
    with pytest.raises(ValueError, match=r"part.npz: the checkpoint was trained with batch_size=256, not 128"):
        train_model(fresh(), tiny.train, tiny.valid, TrainConfig(**{**cfg.to_dict(), "batch_size": 128}),
                    checkpoint=tmp_path / "part.npz", resume=True)
    with pytest.raises(ValueError, match=r"part.npz: the checkpoint holds another model's variables"):
        train_model(build_model("fm", tiny.fields, embedding_dim=4, seed=0), tiny.train, tiny.valid, cfg,
                    checkpoint=tmp_path / "part.npz", resume=True)
    again = fresh()
    s_again = train_model(again, tiny.train, tiny.valid, cfg, checkpoint=tmp_path / "part.npz", resume=True)
    assert s_again["epochs"] == s_full["epochs"] and s_again["history"] == s_full["history"]
    assert read_checkpoint_info(tmp_path / "full.npz")["early"]["decayed"] == 1  # the decay happened after epoch 3
    for a, b in zip(full.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # a checkpoint whose last epoch stopped training only finishes: no further epoch
    last = fresh()
    s_last = train_model(last, tiny.train, tiny.valid, cfg, checkpoint=tmp_path / "full.npz", resume=True)
    assert s_last["history"] == s_full["history"]
    for a, b in zip(full.get_weights(), last.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


WRITER = """
import sys, time
from keras_ctr_compress.utils import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    with open(tmp, "wb") as fh:
        for _ in range(2000):
            fh.write(b"x" * 4096)
            fh.flush()
            time.sleep(0.005)
"""


@pytest.mark.parametrize("old", [None, b"the previous complete file\n"])
def test_atomic_write_killed_midway_leaves_no_complete_looking_file(tmp_path, old):
    """SIGKILL while a file is being written through ``atomic_path``: the destination
    is absent (or still the old complete file); only a dot-named temporary remains."""
    dest = tmp_path / "record.json"
    if old is not None:
        dest.write_bytes(old)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(dest)])
    deadline = time.monotonic() + 120
    while not [p for p in tmp_path.iterdir() if p.name.startswith(".record.json.") and p.stat().st_size > 40000]:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    names = sorted(p.name for p in tmp_path.iterdir())
    if old is None:
        assert not dest.exists()
    else:
        assert dest.read_bytes() == old
    assert all(n == "record.json" or n.startswith(".record.json.") for n in names), names
