"""Determinism: the same seed gives the same split, vocabularies, sampled plan and (on
CPU) the same metrics; another seed gives another split and plan.

(Across processes, the kill-and-resume test compares two ``kcc train`` processes:
same history, metrics and weights bit for bit.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from keras_ctr_compress.data import (
    CSVSource,
    fit_preprocessor,
    load_dataset,
    load_schema,
    split_codes,
)
from keras_ctr_compress.models import TrainConfig, build_model, evaluate, train_model
from keras_ctr_compress.search import search_space

SPEC = "synthetic:rows=3000,fields=5,numeric=1,noise_fields=1,total_vocab=400,seed=7"


def test_same_seed_same_split_other_seed_other_split():
    rows = np.arange(100_000)
    a, b, c = split_codes(rows, 3), split_codes(rows, 3), split_codes(rows, 4)
    np.testing.assert_array_equal(a, b)
    assert np.mean(a != c) > 0.3
    assert abs(np.mean(a == 0) - 0.8) < 0.01 and abs(np.mean(a == 1) - 0.1) < 0.01
    # the part of a row depends on its index only, not on how the rows were read
    np.testing.assert_array_equal(split_codes(rows[5000:6000], 3), a[5000:6000])


def test_same_seed_same_dataset_and_vocabularies():
    d1, d2 = load_dataset(SPEC, seed=1), load_dataset(SPEC, seed=1)
    for part in ("train", "valid", "test"):
        np.testing.assert_array_equal(getattr(d1, part).x, getattr(d2, part).x)
        np.testing.assert_array_equal(getattr(d1, part).y, getattr(d2, part).y)
    assert d1.preprocessor.to_json() == d2.preprocessor.to_json()
    d3 = load_dataset(SPEC, seed=2)
    assert len(d3.train) != len(d1.train) or not np.array_equal(d3.train.y, d1.train.y)


def test_vocabularies_do_not_depend_on_how_the_file_is_read(tmp_path):
    rng = np.random.default_rng(0)
    lines = ["y,a,b,x"] + [f"{rng.integers(2)},t{rng.zipf(1.5) % 50},u{rng.integers(9)},{rng.gamma(2.0):.3f}"
                           for _ in range(3000)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "s.json").write_text(json.dumps({"label": "y", "categorical": ["a", "b"], "numeric": ["x"]}))
    schema = load_schema(tmp_path / "s.json")
    texts = {fit_preprocessor(CSVSource([(tmp_path / "d.csv", None)], schema, block_bytes=size), seed=5).to_json()
             for size in (64, 1000, 1 << 20)}
    assert len(texts) == 1


@pytest.fixture(scope="module")
def data():
    return load_dataset(SPEC)


def test_same_seed_same_sampled_plan(data):
    m1 = build_model("deepfwfm", data.fields, mlp=(16,), embedding_dim=4, seed=0)
    m2 = build_model("deepfwfm", data.fields, mlp=(16,), embedding_dim=4, seed=1)  # other weights, same shapes
    plans1 = [search_space(m1).sample(np.random.default_rng(s)).to_dict() for s in range(5)]
    plans2 = [search_space(m2).sample(np.random.default_rng(s)).to_dict() for s in range(5)]
    assert plans1 == plans2
    assert len({json.dumps(p, sort_keys=True) for p in plans1}) > 1


def test_same_seed_same_weights_and_metrics_on_cpu(data):
    def run(seed: int) -> tuple[dict, dict, list[np.ndarray]]:  # fresh weights, same seed
        model = build_model("deepfm", data.fields, mlp=(16, 8), embedding_dim=4, seed=seed)
        summary = train_model(model, data.train, data.valid, TrainConfig(epochs=2, batch_size=256, seed=seed, verbose=0))
        return summary, evaluate(model, data.test), model.get_weights()

    s1, t1, w1 = run(0)
    s2, t2, w2 = run(0)
    assert s1["history"] == s2["history"] and s1["epochs"] == s2["epochs"]
    assert abs(t1["auc"] - t2["auc"]) <= 1e-6 and abs(t1["logloss"] - t2["logloss"]) <= 1e-6
    for a, b in zip(w1, w2, strict=True):
        np.testing.assert_array_equal(a, b)  # in fact exact, not just within 1e-6
