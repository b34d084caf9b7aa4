"""The kcc command end to end at tiny size: train -> export -> score, demo, errors."""

import json
import subprocess
import sys

import pytest

from keras_ctr_compress.cli import main

TINY = "synthetic:rows=6000,fields=5,numeric=1,noise_fields=1,total_vocab=600,seed=3"
FAST_TRAIN = ["--epochs", "2", "--mlp", "16,16", "--embedding-dim", "4", "--batch-size", "256"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "model"
    assert main(["train", "--data", TINY, "--out", str(out), *FAST_TRAIN]) == 0
    return out


def test_train_writes_a_complete_folder(trained):
    assert {p.name for p in trained.iterdir()} >= {"model.keras", "preprocessor.json", "meta.json"}
    meta = json.loads((trained / "meta.json").read_text())
    assert 0.5 < meta["test"]["auc"] <= 1.0 and meta["data"] == TINY
    assert not [p for p in trained.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_export_then_score_equals_keras_auc(trained, tmp_path, capsys):
    tfl = tmp_path / "m.tflite"
    assert main(["export", str(trained), "--out", str(tfl), "--no-latency"]) == 0
    out = capsys.readouterr().out
    assert "max abs diff" in out and tfl.exists()
    assert (tmp_path / "m.preprocessor.json").exists()
    assert main(["score", str(tfl), "--data", TINY]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    auc = float(line.split("AUC")[1].split()[0])
    keras_auc = json.loads((trained / "meta.json").read_text())["test"]["auc"]
    assert abs(auc - keras_auc) <= 1e-4


def test_export_drq_is_smaller(trained, tmp_path):
    assert main(["export", str(trained), "--out", str(tmp_path / "a.tflite"), "--no-latency"]) == 0
    assert main(["export", str(trained), "--out", str(tmp_path / "b.tflite"), "--quantize", "drq",
                 "--no-latency"]) == 0
    assert (tmp_path / "b.tflite").stat().st_size < (tmp_path / "a.tflite").stat().st_size


def test_demo_quick(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "| fp32 |" in report and "| drq |" in report and "Bayes-optimal" in report
    for name in ("fp32.tflite", "drq.tflite", "fp32.preprocessor.json", "model/model.keras", "bench.json"):
        assert (out / name).exists(), name


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["train", "--data", "nosuchformat:x", "--out", "{tmp}/m"], "nosuchformat"),
        (["export", "{tmp}/missing", "--out", "{tmp}/x.tflite"], "no such model folder"),
        (["score", "{tmp}/missing.tflite", "--data", TINY], "no such file"),
        (["bench", "--dataset", TINY, "--methods", "fp32,nope", "--json", "{tmp}/r.json"], "unknown benchmark method"),
    ],
)
def test_cli_errors_are_one_line_and_nonzero(argv, msg, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert msg in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "m").exists()


def test_console_script_help():
    res = subprocess.run([sys.executable, "-m", "keras_ctr_compress.cli", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    for cmd in ("train", "export", "score", "bench", "demo"):
        assert cmd in res.stdout
