"""Preprocessor: vocabularies, min-count OOV, missing ids, numeric buckets, save / load."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_ctr_compress.data import MISSING_ID, OOV_ID, Field, Preprocessor, bucketize
from keras_ctr_compress.data.preprocess import log2_bucket


def obj(*values):
    return np.array(values, dtype=object)


def test_min_count_maps_rare_tokens_to_oov():
    pre = Preprocessor([("site", "categorical")], min_count=2).fit([{"site": obj("a", "a", "b", "c", "c", "c", "")}])
    # Kept: c (3), a (2); b seen once -> OOV. Ids: most frequent first, after OOV 0 and missing 1.
    assert pre.tokens_of("site") == ["c", "a"]
    x = pre.transform({"site": obj("a", "b", "c", "", "never", None)})
    assert x[:, 0].tolist() == [3, OOV_ID, 2, MISSING_ID, OOV_ID, MISSING_ID]
    assert x.dtype == np.int32
    assert pre.fields == [Field("site", 4, "categorical")]


def test_ties_are_broken_by_token_so_ids_do_not_depend_on_row_order():
    rows = ["b", "a", "d", "c", "a", "b"]
    p1 = Preprocessor([("f", "categorical")]).fit([{"f": obj(*rows)}])
    p2 = Preprocessor([("f", "categorical")]).fit([{"f": obj(*rows[::-1][:3])}, {"f": obj(*rows[::-1][3:])}])
    assert p1.tokens_of("f") == p2.tokens_of("f") == ["a", "b", "c", "d"]


def test_streaming_fit_equals_one_shot_fit():
    rng = np.random.default_rng(0)
    tokens = rng.choice([f"t{k}" for k in range(50)], size=3000).astype(object)
    nums = rng.lognormal(2, 2, size=3000)
    nums[rng.random(3000) < 0.1] = np.nan
    cols = [("tok", "categorical"), ("num", "numeric")]
    one = Preprocessor(cols, min_count=3).fit([{"tok": tokens, "num": nums}])
    many = Preprocessor(cols, min_count=3).fit({"tok": tokens[s:s + 257], "num": nums[s:s + 257]} for s in range(0, 3000, 257))
    assert one.to_dict() == many.to_dict()
    np.testing.assert_array_equal(one.transform({"tok": tokens, "num": nums}), many.transform({"tok": tokens, "num": nums}))


@pytest.mark.parametrize("x, bucket", [
    (0.0, 0), (1.0, 1), (2.0, 2), (2.5, 0), (3.0, 1), (10.0, 5), (100.0, 21), (1e6, 190),
    (-1.0, -1), (-3.7, -3), (0.9, 0), (-0.5, 0),
])
def test_numeric_log_square_bucketing(x, bucket):
    assert log2_bucket(x) == bucket
    b, missing = bucketize(np.array([x]))
    assert b[0] == bucket and not missing[0]
    if x > 2:
        assert bucket == math.floor(math.log(x) ** 2)


def test_numeric_missing_and_nonfinite():
    b, missing = bucketize(np.array([np.nan, np.inf, -np.inf, 5.0]))
    assert missing.tolist() == [True, True, True, False] and b[3] == 2
    pre = Preprocessor([("n", "numeric")]).fit([{"n": np.array([5.0, 5.0, -1.0, np.nan, 1e9])}])
    x = pre.transform({"n": np.array([5.0, np.nan, -1.0, 1e9, 5.5, -2.0])})[:, 0]
    # 5.0 and 5.5 share bucket 2 (ln(x)^2 in [2, 3)); -2 was never seen -> OOV.
    assert x[1] == MISSING_ID and x[0] == x[4] and x[5] == OOV_ID
    assert len({x[0], x[2], x[3]}) == 3 and min(x[0], x[2], x[3]) >= 2


def test_id_fields_take_ids_as_they_are():
    pre = Preprocessor([("u", "id")]).fit([{"u": np.array([0, 3, 7])}, {"u": np.array([2.0, np.nan])}])
    assert pre.fields == [Field("u", 8, "id")]
    x = pre.transform({"u": np.array([0, 7, 8, -1, 3])})[:, 0]
    assert x.tolist() == [0, 7, OOV_ID, OOV_ID, 3]
    x = pre.transform({"u": np.array([1.0, 2.5, np.nan, 9.0])})[:, 0]
    assert x.tolist() == [1, OOV_ID, OOV_ID, OOV_ID]


def test_integer_and_float_columns_as_categorical_tokens():
    pre = Preprocessor([("c", "categorical")]).fit([{"c": np.array([5, 5, 6])}])
    assert pre.tokens_of("c") == ["5", "6"]
    x = pre.transform({"c": np.array([5.0, 6.0, np.nan, 7.0])})[:, 0]
    assert x.tolist() == [2, 3, MISSING_ID, OOV_ID]


def test_save_load_round_trip_is_identical(tmp_path):
    rng = np.random.default_rng(1)
    data = {"a": rng.choice(["x", "y", "z", "ünï", ""], size=500).astype(object),
            "n": rng.normal(5, 10, size=500), "i": rng.integers(0, 40, size=500)}
    pre = Preprocessor([("a", "categorical"), ("n", "numeric"), ("i", "id")], min_count=2).fit([data])
    path = pre.save(tmp_path / "sub" / "pre.json")
    assert [p.name for p in path.parent.iterdir()] == ["pre.json"]  # no temp file left behind
    back = Preprocessor.load(path)
    assert back.to_dict() == pre.to_dict()
    assert back.fields == pre.fields and back.min_count == 2
    np.testing.assert_array_equal(back.transform(data), pre.transform(data))
    assert pre.nbytes_on_disk() == path.stat().st_size


def test_load_errors_are_one_line(tmp_path):
    p = tmp_path / "p.json"
    p.write_text("{broken")
    with pytest.raises(ValueError, match="corrupted preprocessor JSON"):
        Preprocessor.load(p)
    p.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a keras_ctr_compress preprocessor"):
        Preprocessor.load(p)
    with pytest.raises(FileNotFoundError, match="no such preprocessor file"):
        Preprocessor.load(tmp_path / "none.json")
    good = Preprocessor([("a", "categorical")]).fit([{"a": obj("x")}]).to_dict()
    good["fields"][0]["vocab_size"] = 9
    p.write_text(json.dumps(good))
    with pytest.raises(ValueError, match="does not match its 1 tokens"):
        Preprocessor.load(p)


def test_misuse_is_reported():
    pre = Preprocessor([("a", "categorical")])
    with pytest.raises(RuntimeError, match="not fitted"):
        pre.transform({"a": obj("x")})
    pre.fit([{"a": obj("x")}])
    with pytest.raises(KeyError, match="no column 'a'"):
        pre.transform({"b": obj("x")})
    with pytest.raises(ValueError, match="min_count"):
        Preprocessor([("a", "categorical")], min_count=0)
    with pytest.raises(ValueError, match="duplicate"):
        Preprocessor([("a", "categorical"), ("a", "numeric")])


@settings(max_examples=40, deadline=None)
@given(fit=st.lists(st.sampled_from(["a", "b", "c", "d", "", "é"]), min_size=1, max_size=60),
       query=st.lists(st.sampled_from(["a", "b", "c", "d", "", "é", "zz"]), min_size=1, max_size=30),
       min_count=st.integers(1, 4))
def test_transform_matches_a_plain_python_reference(fit, query, min_count):
    pre = Preprocessor([("f", "categorical")], min_count=min_count).fit([{"f": obj(*fit)}])
    counts = {t: fit.count(t) for t in set(fit) if t}
    kept = sorted((t for t, n in counts.items() if n >= min_count), key=lambda t: (-counts[t], t))
    ref = {t: k + 2 for k, t in enumerate(kept)}
    expected = [MISSING_ID if t == "" else ref.get(t, OOV_ID) for t in query]
    assert pre.transform({"f": obj(*query)})[:, 0].tolist() == expected
