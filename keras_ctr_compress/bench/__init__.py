"""The side-by-side benchmark harness behind ``kcc bench``."""

from keras_ctr_compress.bench import lowrank_methods as _lowrank  # noqa: F401  (registers)
from keras_ctr_compress.bench import methods as _builtin_methods  # noqa: F401  (registers)
from keras_ctr_compress.bench import peers as _peers  # noqa: F401  (registers)
from keras_ctr_compress.bench import pruning_methods as _pruning  # noqa: F401  (registers)
from keras_ctr_compress.bench import quant_methods as _quant  # noqa: F401  (registers)
from keras_ctr_compress.bench import search_methods as _search  # noqa: F401  (registers)
from keras_ctr_compress.bench import tfmot_peer as _tfmot  # noqa: F401  (registers)
from keras_ctr_compress.bench.record import (
    load_record,
    machine_facts,
    merge_records,
    render_table,
    save_record,
    summarize,
    validate_record,
)
from keras_ctr_compress.bench.registry import (
    Candidate,
    MethodContext,
    add_method,
    get_method,
    method_names,
    register_method,
)
from keras_ctr_compress.bench.runner import run_benchmark

__all__ = [
    "Candidate", "MethodContext", "add_method", "get_method", "load_record", "machine_facts",
    "merge_records", "method_names", "register_method", "render_table", "run_benchmark", "save_record",
    "summarize", "validate_record",
]
