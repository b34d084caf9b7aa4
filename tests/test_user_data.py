"""Bring your own data: a CSV file plus a short schema through ``kcc train / export /
score``, schema mistakes as one-line errors, ``--quiet``. (Parquet and Arrow files with
a schema: tests/test_tfio.py, through both readers.)"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from keras_ctr_compress.cli import main

SCHEMA = {"label": "clicked", "categorical": ["site", "device"], "numeric": ["price"], "min_count": 2}


def _clicks(n: int = 3000, seed: int = 0) -> pa.Table:
    """Clicks that depend on site and price, so a model can learn them."""
    rng = np.random.default_rng(seed)
    site = rng.choice([f"s{k}" for k in range(30)], n)
    device = rng.choice(["ios", "android", "web"], n)
    price = np.round(rng.gamma(2.0, 5.0, n), 2)
    logit = -1.0 + 2.0 * np.isin(site, ["s1", "s2", "s3", "s4", "s5"]) - 0.05 * price
    clicked = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return pa.table({"clicked": clicked, "site": site, "device": device, "price": price})


@pytest.fixture(autouse=True)
def loud(monkeypatch):
    monkeypatch.setenv("KCC_QUIET", "0")  # `--quiet` sets it; restored after each test


def _files(tmp_path, table: pa.Table | None = None, schema: dict | None = None) -> str:
    table = _clicks() if table is None else table
    path = tmp_path / "clicks.csv"
    pacsv.write_csv(table, path)
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA if schema is None else schema))
    return f"csv:{path},schema={tmp_path / 'schema.json'}"


def _train(spec: str, out, *extra: str) -> int:
    return main(["train", "--data", spec, "--out", str(out), "--epochs", "2", "--mlp", "16",
                 "--embedding-dim", "4", "--batch-size", "256", *extra])


def test_csv_with_schema_train_export_score(tmp_path, capsys):
    spec = _files(tmp_path)
    assert _train(spec, tmp_path / "m") == 0
    loud = capsys.readouterr()  # progress is on by default: the reader, the data, every epoch
    assert "[data] reader:" in loud.err and "[train]" in loud.err and "Epoch 1/2" in loud.out + loud.err
    meta = json.loads((tmp_path / "m" / "meta.json").read_text())
    assert [f["name"] for f in meta["fields"]] == ["site", "device", "price"]
    pre = json.loads((tmp_path / "m" / "preprocessor.json").read_text())
    assert pre["min_count"] == 2  # the schema's threshold
    assert main(["export", str(tmp_path / "m"), "--out", str(tmp_path / "m.tflite"), "--no-latency"]) == 0
    assert main(["score", str(tmp_path / "m.tflite"), "--data", spec]) == 0
    out = capsys.readouterr().out
    assert "parity vs Keras" in out
    auc = float(out.split("AUC ")[-1].split()[0])
    assert auc > 0.65, out  # site and price carry real signal


@pytest.mark.parametrize("what, expect", [
    ("missing column", r"clicks\.csv:1: header lacks columns \['device'\]"),
    ("label not 0/1", r"clicks\.csv:5: label '2' \(expected 0 or 1\)"),
    ("empty file", r"clicks\.csv:1: empty file or empty header line"),
    ("header only", r"no data rows \(the file is empty, holds only a header"),
    ("bad min_count", r"schema\.json: schema min_count must be an integer >= 1, got 0"),
    ("no label", r"schema\.json: schema needs \"label\""),
])
def test_schema_mistakes_are_one_line_errors(tmp_path, capsys, what, expect):
    import re

    t, schema = _clicks(50), dict(SCHEMA)
    if what == "missing column":
        t = t.drop_columns(["device"])
    elif what == "label not 0/1":
        y = t.column("clicked").to_numpy().copy()
        y[3] = 2
        t = t.set_column(0, "clicked", pa.array(y))
    elif what == "bad min_count":
        schema["min_count"] = 0
    elif what == "no label":
        del schema["label"]
    spec = _files(tmp_path, t, schema)
    if what == "empty file":
        (tmp_path / "clicks.csv").write_text("")
    elif what == "header only":
        (tmp_path / "clicks.csv").write_text("clicked,site,device,price\n")
    assert _train(spec, tmp_path / "m") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if "error" in line]) == 1 and err[-1].startswith("kcc train: error: ")
    assert re.search(expect, err[-1]), err[-1]
    assert not (tmp_path / "m" / "meta.json").exists()


def test_quiet_silences_progress_not_results(tmp_path, capsys):
    spec = _files(tmp_path, _clicks(800))
    assert main(["--quiet", "train", "--data", spec, "--out", str(tmp_path / "b"), "--epochs", "2", "--mlp", "8",
                 "--embedding-dim", "4"]) == 0
    quiet = capsys.readouterr()
    assert "[train]" not in quiet.err and "[data] reader" not in quiet.err and "Epoch" not in quiet.out + quiet.err
    assert "test AUC" in quiet.out  # the result is still printed
    # --quiet belonged to that command: the next one in this process reports again,
    # the reader line included (one-off notices are per command, not per process)
    for out in ("c", "d"):
        assert main(["train", "--data", spec, "--out", str(tmp_path / out), "--epochs", "1", "--mlp", "8",
                     "--embedding-dim", "4"]) == 0
        loud = capsys.readouterr()
        assert "[train]" in loud.err and "[data] reader:" in loud.err


def test_every_command_help_has_examples(capsys):
    from keras_ctr_compress.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in sub.choices:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert "examples:" in text and f"kcc {name}" in text, name
