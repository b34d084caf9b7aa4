"""tensorflow-io input: run-time detection, the one-line reader notice, and both readers agreeing.

Runs in two environments: the default one (TF 2.21, where tensorflow-io is absent or its
ops do not load, so the pyarrow fallback is tested) and the ``make test-tfio`` lane
(TF 2.16.2 + tensorflow-io 0.37.1, ``KCC_EXPECT_TFIO=1``), where the native ops must
load and every table format is read through tensorflow-io. Only numpy, pyarrow and
the data package are imported, so the lane needs no Keras.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from keras_ctr_compress import console
from keras_ctr_compress.data import MISSING_ID, load_dataset, tfio_status

EXPECT_TFIO = os.environ.get("KCC_EXPECT_TFIO") == "1"
SUFFIX = {"csv": "csv", "parquet": "parquet", "arrow": "arrow"}


@pytest.fixture(autouse=True)
def fresh_notices():
    console._seen.clear()  # each test sees its own one-line notices
    console.set_quiet(False)
    yield
    console._seen.clear()


def _table(n: int = 400, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    site = rng.choice(["a", "b", "c", "d", "e"], n)
    return pa.table({
        "clicked": (rng.random(n) < np.where(site == "a", 0.6, 0.2)).astype(np.int64),
        "site": site,
        "user": rng.integers(0, 40, n).astype(str),
        "price": np.round(rng.gamma(2.0, 3.0, n), 2),
    })


def _write(tmp_path, kind: str, table: pa.Table) -> str:
    path = tmp_path / f"clicks.{SUFFIX[kind]}"
    if kind == "parquet":
        pq.write_table(table, path)
    elif kind == "arrow":
        feather.write_feather(table, path, compression="uncompressed")
    else:
        pacsv.write_csv(table, path)
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"label": "clicked", "categorical": ["site", "user"], "numeric": ["price"],
                                  "min_count": 2}))
    return f"{kind}:{path},schema={schema}"


def test_status_matches_the_environment():
    s = tfio_status()
    if EXPECT_TFIO:
        assert s.available, f"the tensorflow-io lane needs its native ops to load: {s.reason}"
        assert s.version.startswith("0.37") and s.tf_version.startswith("2.16")
    else:
        # TF 2.21: tensorflow-io is not installed, or installed with ops that do not load.
        assert not s.available and s.reason, s
        assert "not installed" in s.reason or "do not load" in s.reason


@pytest.mark.parametrize("kind", ["parquet", "csv", "arrow"])
def test_one_line_says_which_reader(tmp_path, capsys, kind):
    spec = _write(tmp_path, kind, _table())
    ds = load_dataset(spec)
    load_dataset(spec)  # a second load in the same process prints nothing new
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[data] reader:")]
    assert len(lines) == 1, lines
    if tfio_status().available:
        assert "tensorflow-io 0.37.1" in lines[0] and ds.info["reader"] == "tensorflow-io"
    else:
        assert lines[0].startswith("[data] reader: pyarrow + tf.data (") and ds.info["reader"] == "pyarrow + tf.data"
        assert tfio_status().reason in lines[0]


@pytest.mark.parametrize("kind", ["parquet", "csv", "arrow"])
def test_auto_reader_gives_the_same_ids_as_pyarrow(tmp_path, kind):
    spec = _write(tmp_path, kind, _table())
    auto = load_dataset(spec)
    ref = load_dataset(spec + ",reader=pyarrow")
    assert ref.info["reader"] == "pyarrow + tf.data"
    assert auto.info["min_count"] == 2  # from the schema
    assert [f.vocab_size for f in auto.fields] == [f.vocab_size for f in ref.fields]
    for part in ("train", "valid", "test"):
        np.testing.assert_array_equal(getattr(auto, part).x, getattr(ref, part).x)
        np.testing.assert_array_equal(getattr(auto, part).y, getattr(ref, part).y)
    assert auto.info["reader"] == ("tensorflow-io" if EXPECT_TFIO else "pyarrow + tf.data")


def test_reader_tfio_is_explicit(tmp_path):
    spec = _write(tmp_path, "parquet", _table()) + ",reader=tfio"
    if tfio_status().available:
        assert load_dataset(spec).info["reader"] == "tensorflow-io"
    else:
        with pytest.raises(ValueError, match="reader=tfio was asked for but"):
            load_dataset(spec)


def test_parquet_nulls_never_reach_tensorflow_io(tmp_path, capsys):
    # tensorflow-io aborts the whole process on a null; the file goes to pyarrow instead.
    t = _table(200)
    price = t.column("price").to_pylist()
    price[3] = None
    t = t.set_column(t.schema.get_field_index("price"), "price", pa.array(price, pa.float64()))
    ds = load_dataset(_write(tmp_path, "parquet", t) + ",split=hash")
    x = np.concatenate([ds.train.x, ds.valid.x, ds.test.x])
    assert (x[:, 2] == MISSING_ID).sum() == 1  # the null is the price's missing id
    err = capsys.readouterr().err
    if tfio_status().available:
        assert "holds 1 nulls" in err and "read with pyarrow" in err


def test_bad_label_is_located_by_either_reader(tmp_path):
    t = _table(50)
    y = t.column("clicked").to_numpy().copy()
    y[7] = 2
    t = t.set_column(0, "clicked", pa.array(y))
    with pytest.raises(ValueError, match=r"clicks\.parquet:row 8: label 2 \(expected 0 or 1\)"):
        load_dataset(_write(tmp_path, "parquet", t))
