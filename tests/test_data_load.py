"""load_dataset end to end on temp files, re-encoding with a saved preprocessor, streaming."""

from __future__ import annotations

import json

import numpy as np
import pytest

from keras_ctr_compress.data import (
    DataError,
    Preprocessor,
    fit_preprocessor,
    iter_encoded,
    iter_tf_dataset,
    load_dataset,
    stream_tf_dataset,
)

NUM = [f"I{k}" for k in range(1, 14)]
CAT = [f"C{k}" for k in range(1, 27)]


def criteo_file(path, n=600, seed=0, bad_lines=()):
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        nums = [str(int(v)) if v >= 0 else "" for v in rng.integers(-3, 50, size=13)]
        cats = [f"{int(v):08x}" for v in rng.zipf(1.5, size=26) % 1000]
        lines.append("\t".join([str(int(rng.random() < 0.3)), *nums, *cats]))
    for at, text in bad_lines:
        lines.insert(at - 1, text)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_criteo_file(tmp_path):
    p = criteo_file(tmp_path / "day.tsv")
    ds = load_dataset(f"criteo:{p}")
    sizes = ds.split_sizes()
    assert sum(sizes.values()) == 600 and sizes["train"] > sizes["valid"] > 0 and sizes["test"] > 0
    assert ds.num_fields == 39 and ds.train.x.dtype == np.int32 and ds.train.y.dtype == np.float32
    assert [f.name for f in ds.fields] == NUM + CAT
    assert all(ds.train.x[:, j].max() < f.vocab_size for j, f in enumerate(ds.fields))
    assert ds.info["min_count"] == 2 and ds.info["skipped_rows"] == 0  # the Criteo default
    assert ds.info["split"].startswith("hash")
    assert load_dataset(f"criteo:{p},min_count=5").info["min_count"] == 5
    assert load_dataset(f"criteo:{p},min_count=5", min_count=3).info["min_count"] == 3


def test_vocabulary_is_fitted_on_train_rows_only(tmp_path):
    p = tmp_path / "d.csv"
    rows = ["click,site"] + [f"{k % 2},s{k}" for k in range(400)]  # every site appears once
    p.write_text("\n".join(rows) + "\n")
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"label": "click", "categorical": ["site"]}))
    ds = load_dataset(f"csv:{p},schema={schema}")
    assert ds.fields[0].vocab_size == 2 + len(ds.train)
    assert (ds.test.x[:, 0] == 0).all() and (ds.valid.x[:, 0] == 0).all()  # unseen in train -> OOV


def test_saved_preprocessor_encodes_new_raw_rows(tmp_path):
    train_file = criteo_file(tmp_path / "train.tsv", seed=0)
    ds = load_dataset(f"criteo:{train_file}")
    path = ds.preprocessor.save(tmp_path / "pre.json")
    pre = Preprocessor.load(path)
    again = load_dataset(f"criteo:{train_file}", preprocessor=pre)
    np.testing.assert_array_equal(again.test.x, ds.test.x)
    other = criteo_file(tmp_path / "other.tsv", seed=9)
    fresh = load_dataset(f"criteo:{other}", preprocessor=pre)
    assert fresh.fields == ds.fields  # the saved vocabularies, not refitted
    x = np.concatenate([fresh.train.x, fresh.valid.x, fresh.test.x])
    assert (x[:, 13:] == 0).any()  # unseen categories -> OOV 0


def test_preprocessor_for_other_columns_is_rejected(tmp_path):
    p = criteo_file(tmp_path / "d.tsv", n=50)
    pre = Preprocessor([("site", "categorical")]).fit([{"site": np.array(["a"], dtype=object)}])
    with pytest.raises(ValueError, match=r"expects columns \['site'\]"):
        load_dataset(f"criteo:{p}", preprocessor=pre)


def test_skip_bad_rows_reported_in_info(tmp_path):
    p = criteo_file(tmp_path / "d.tsv", n=100, bad_lines=[(10, ""), (50, "1\tbroken")])
    with pytest.raises(DataError, match=r"d\.tsv:10: empty line"):
        load_dataset(f"criteo:{p}")
    ds = load_dataset(f"criteo:{p}", skip_bad_rows=2)
    assert ds.info["skipped_rows"] == 2 and sum(ds.split_sizes().values()) == 100
    assert ds.info["skipped_examples"][1].startswith(f"{p}:50: 2 columns")
    assert load_dataset(f"criteo:{p},skip_bad_rows=5").info["skipped_rows"] == 2
    with pytest.raises(DataError, match="more than skip_bad_rows=1"):
        load_dataset(f"criteo:{p}", skip_bad_rows=1)


def test_limit_and_split_are_consistent(tmp_path):
    p = criteo_file(tmp_path / "d.tsv", n=500)
    full = load_dataset(f"criteo:{p},min_count=1")
    part = load_dataset(f"criteo:{p},min_count=1,limit=200")
    assert sum(part.split_sizes().values()) == 200
    # The first 200 rows keep their parts: each part of the slice is a prefix-subset of the full one.
    assert len(part.test) <= len(full.test) and len(part.train) <= len(full.train)


def test_streamed_splits_equal_the_materialised_ones(tmp_path):
    p = criteo_file(tmp_path / "d.tsv", n=700)
    ds = load_dataset(f"criteo:{p}", seed=3)
    for which, split in (("train", ds.train), ("valid", ds.valid), ("test", ds.test)):
        pieces = list(iter_encoded(f"criteo:{p}", ds.preprocessor, which, seed=3))
        x = np.concatenate([a for a, _ in pieces])
        y = np.concatenate([b for _, b in pieces])
        np.testing.assert_array_equal(x, split.x)
        np.testing.assert_array_equal(y, split.y)
    pre = fit_preprocessor(f"criteo:{p}", seed=3)
    assert pre.to_dict() == ds.preprocessor.to_dict()


def test_presplit_folder_uses_its_files(tmp_path):
    for name, n, seed in (("train.tsv", 300, 0), ("dev.tsv", 40, 1), ("test.tsv", 30, 2)):
        criteo_file(tmp_path / name, n=n, seed=seed)
    ds = load_dataset(f"criteo:{tmp_path}", seed=5)
    assert ds.split_sizes() == {"train": 300, "valid": 40, "test": 30}
    assert ds.info["split"] == "files"


def test_tf_pipelines(tmp_path):
    tf = pytest.importorskip("tensorflow")
    p = criteo_file(tmp_path / "d.tsv", n=900)
    ds = load_dataset(f"criteo:{p}")
    batches = list(iter_tf_dataset(ds.train, batch_size=128, shuffle=True, seed=1))
    assert batches[0][0].shape == (128, 39) and batches[0][0].dtype == tf.int32
    assert sum(int(b[1].shape[0]) for b in batches) == len(ds.train)
    got = np.sort(np.concatenate([b[1].numpy() for b in batches]))
    np.testing.assert_array_equal(got, np.sort(ds.train.y))
    streamed = stream_tf_dataset(f"criteo:{p}", ds.preprocessor, "train", batch_size=100)
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in streamed], strict=True)
    assert all(len(y) == 100 for y in ys[:-1]) and xs[0].dtype == np.int32
    np.testing.assert_array_equal(np.concatenate(xs), ds.train.x)
    np.testing.assert_array_equal(np.concatenate(ys), ds.train.y)
    shuffled = stream_tf_dataset(f"criteo:{p}", ds.preprocessor, "test", batch_size=64, shuffle=True)
    ys = np.concatenate([y.numpy() for _, y in shuffled])
    np.testing.assert_array_equal(np.sort(ys), np.sort(ds.test.y))
