"""kcc memory: each configuration in its own process; the lpt table is int8."""

import json

import pytest

from keras_ctr_compress.bench.memory import run_memory_benchmark
from keras_ctr_compress.cli import main
from keras_ctr_compress.layers.quantized_embedding import lpt_training_bytes


def test_memory_benchmark_small_table(tmp_path):
    out = tmp_path / "mem.json"
    assert main(["memory", "--rows", "300000", "--dim", "16", "--steps", "3",
                 "--configs", "fp32-adam,lpt-sgd", "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    by = {r["config"]: r for r in rec["results"]}
    assert by["lpt-sgd"]["table_dtype"] == "int8" and by["fp32-adam"]["table_dtype"] == "float32"
    # int8 codes + per-row step + the step's Adam moments; no slot for the codes
    assert by["lpt-sgd"]["table_variable_bytes"] == sum(lpt_training_bytes(300000, 16, "row", "sgd").values())
    assert by["fp32-adam"]["optimizer_slot_bytes"] == 2 * 300000 * 16 * 4  # Adam's two moments
    assert by["lpt-sgd"]["optimizer_slot_bytes"] == 0
    # 19 MB of fp32 table + 38 MB of moments against 4.8 MB of codes (+ per-row steps)
    assert rec["fp32_state_bytes_over"]["lpt-sgd"] > 5
    # the RSS growth agrees in direction; its ratio exists only where lpt's growth is measurable
    assert by["fp32-adam"]["table_share_mb"] > by["lpt-sgd"]["table_share_mb"]
    if by["lpt-sgd"]["table_share_mb"] > 0:
        assert rec["fp32_share_over"]["lpt-sgd"] > 1.5
    assert rec["command"].startswith("kcc memory")


def test_memory_benchmark_rejects_unknown_config():
    with pytest.raises(ValueError, match="unknown memory configuration"):
        run_memory_benchmark(10, 4, ["fp32-sgd"], log=None)
