"""The named datasets on the shared real data (../shared/data, read at run time).

Each test fails under CI=true when the shared data is missing and skips elsewhere.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import numpy as np
import pytest

from keras_ctr_compress.data import load_dataset
from keras_ctr_compress.data.frappe import FIELDS, read_frappe_log, rebuild


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """A fresh dataset cache for this module (first loads rebuild, later ones hit it)."""
    monkeypatch.setenv("KCC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kcc_cache"))


def test_frappe_full_rebuild(shared_data):
    shared_data("frappe_raw")
    t0 = time.perf_counter()
    ds = load_dataset("frappe")
    first = time.perf_counter() - t0
    n = sum(ds.split_sizes().values())
    assert n == 288_609
    y = np.concatenate([ds.train.y, ds.valid.y, ds.test.y])
    assert y.sum() * 3 == n  # exactly one positive in three
    assert [f.name for f in ds.fields] == list(FIELDS)
    assert ds.split_sizes()["train"] == pytest.approx(0.8 * n, rel=0.01)
    t0 = time.perf_counter()
    again = load_dataset("frappe")
    assert again.info.get("cached") and time.perf_counter() - t0 < max(1.0, first / 2)
    np.testing.assert_array_equal(again.test.x, ds.test.x)
    assert again.preprocessor.to_dict() == ds.preprocessor.to_dict()
    other = load_dataset("frappe", seed=1)  # another split: another cache entry
    assert not np.array_equal(other.test.y[:1000], ds.test.y[:1000]) or len(other.test) != len(ds.test)


def test_frappe_negatives_follow_the_recipe(shared_data):
    log = read_frappe_log(shared_data("frappe_raw") / "frappe.csv")
    cols, labels, origin = rebuild(log)
    assert len(labels) == 3 * len(log["user"]) == 288_609
    used: dict[str, set] = {}
    for u, i in zip(log["user"].tolist(), log["item"].tolist(), strict=True):
        used.setdefault(u, set()).add(i)
    neg = labels == 0
    # Negatives copy user and context of their positive, change only the item.
    for f in FIELDS:
        if f != "item":
            np.testing.assert_array_equal(cols[f][neg], log[f][origin[neg]])
    rows_of = Counter(log["user"].tolist())
    by_user: dict[str, list] = {}
    for u, i in zip(cols["user"][neg].tolist(), cols["item"][neg].tolist(), strict=True):
        by_user.setdefault(u, []).append(i)
    for u, items in by_user.items():
        assert len(set(items)) == len(items) == 2 * rows_of[u]  # 2 x rows, distinct
        assert not used[u] & set(items)  # never used by that user in any context
    cols2, labels2, _ = rebuild(log)
    np.testing.assert_array_equal(cols2["item"], cols["item"])  # fixed seed


def test_frappe_nfm(shared_data):
    shared_data("frappe")
    ds = load_dataset("frappe-nfm")
    assert sum(ds.split_sizes().values()) == 57_722 + 28_860
    y = np.concatenate([ds.train.y, ds.valid.y, ds.test.y])
    assert y.mean() == pytest.approx((19_063 + 9_536) / 86_582)
    assert [f.name for f in ds.fields][:2] == ["user", "item"] and ds.num_fields == 10


def test_criteo_8k_uses_its_own_split(shared_data):
    shared_data("criteo_widersdnn_8k")
    ds = load_dataset("criteo-8k")
    assert ds.split_sizes() == {"train": 7200, "valid": 409, "test": 391}
    assert ds.info["min_count"] == 2 and ds.num_fields == 39
    assert ds.train.y.sum() == 1549 and ds.valid.y.sum() == 93 and ds.test.y.sum() == 86
    assert (ds.test.x[:, 13:] == 0).any()  # categories unseen in train -> OOV


def test_movielens100k(shared_data):
    shared_data("movielens_100k_recbole")
    ds = load_dataset("movielens100k")
    assert sum(ds.split_sizes().values()) == 100_000
    y = np.concatenate([ds.train.y, ds.valid.y, ds.test.y])
    assert y.sum() == 34_174 + 21_201  # ratings 4 and 5
    assert [f.name for f in ds.fields] == ["user_id", "item_id", "age", "gender", "occupation", "zip", "genre", "year"]
    assert {f.name: f.vocab_size for f in ds.fields}["gender"] == 4  # OOV, missing, F, M


def test_criteo_csv_header_samples(shared_data):
    kaggle = shared_data("criteo_kaggle2014_tiny") / "train.tiny.csv"
    ds = load_dataset(f"criteo:{kaggle}")
    assert sum(ds.split_sizes().values()) == 1999
    assert sum(float(s.y.sum()) for s in (ds.train, ds.valid, ds.test)) == 418
    sample = shared_data("criteo_deepctr_sample") / "criteo_sample.txt"
    ds = load_dataset(f"criteo:{sample},min_count=1")
    assert sum(ds.split_sizes().values()) == 200


def test_pre_encoded_ids_through_a_csv_schema(shared_data, tmp_path):
    path = shared_data("criteo_nzc_tiny_processed") / "tiny_train_input.csv"
    schema = tmp_path / "nzc.json"
    names = [f"f{k}" for k in range(39)]
    schema.write_text(json.dumps({"label": "y", "id": names, "header": False, "columns": ["y", *names]}))
    ds = load_dataset(f"csv:{path},schema={schema}")
    assert sum(ds.split_sizes().values()) == 10_000
    x = np.concatenate([ds.train.x, ds.valid.x, ds.test.x])
    assert all(f.source == "id" for f in ds.fields)
    assert (x.max(axis=0) < np.array([f.vocab_size for f in ds.fields])).all()
