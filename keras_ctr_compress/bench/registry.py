"""The benchmark's method registry: adding a method is one decorated function.

A method turns the trained fp32 reference model of one seed into a candidate: an
exported ``.tflite`` file (plus the Keras model it must match, when there is one).
The harness then scores every candidate's file in the LiteRT interpreter on the
same test split, checks parity, and times all candidates interleaved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras

from keras_ctr_compress.data.schema import CTRDataset


@dataclass
class MethodContext:
    """What a method gets. ``fp32_model`` is shared by all methods of a seed: a method
    must not modify it (clone or rebuild instead)."""

    dataset: CTRDataset
    model_name: str
    seed: int
    fp32_model: keras.Model
    fp32_tflite: Path
    workdir: Path
    quick: bool = False
    train_config: object = None
    extra: dict = field(default_factory=dict)

    def path(self, name: str) -> Path:
        p = self.workdir / f"seed{self.seed}" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


@dataclass
class Candidate:
    """A method's output.

    Attributes:
        tflite_path: the exported file (what ships; its bytes are the row's bytes).
        keras_model: the Keras model the file must equal (parity <= 1e-4), or None
            for post-training converter methods (``drq``) whose file is compared with
            the fp32 Keras model and whose difference is reported, not enforced.
        train_seconds: time spent training / fine-tuning for this method.
        plan: the compression plan (JSON-able) or None.
        extra: further facts to record (JSON-able).
        input_columns: the dataset columns the file takes, for field-pruned models
            (None: all fields).
        reference_model: where ``keras_model`` is None, the Keras model whose outputs
            the lossy file approximates (its difference is reported, not enforced);
            None: the fp32 model. A method that quantises its own tables and then
            applies DRQ to the rest names its quantised Keras model here, so the
            reported difference is DRQ's, not the whole compression's.
        parity_max_abs: a parity measured where the file's own model lives (the
            ``tfmot-prune`` peer's tf_keras model, in its own process); the runner
            records and enforces it instead of comparing with a Keras 3 model the file
            was never meant to equal.
    """

    tflite_path: Path
    keras_model: keras.Model | None = None
    train_seconds: float = 0.0
    plan: dict | None = None
    extra: dict = field(default_factory=dict)
    input_columns: list[int] | None = None
    reference_model: keras.Model | None = None
    parity_max_abs: float | None = None


MethodFn = Callable[[MethodContext], Candidate]


@dataclass(frozen=True)
class Method:
    name: str
    fn: MethodFn
    description: str


_METHODS: dict[str, Method] = {}


def register_method(name: str, *, description: str) -> Callable[[MethodFn], MethodFn]:
    """Registers ``fn`` as benchmark method ``name`` (decorator). Names are unique."""

    def deco(fn: MethodFn) -> MethodFn:
        add_method(name, fn, description=description)
        return fn

    return deco


def add_method(name: str, fn: MethodFn, *, description: str) -> None:
    if not name or any(c.isspace() or c == "," for c in name):
        raise ValueError(f"invalid benchmark method name {name!r}")
    if name in _METHODS:
        raise ValueError(f"benchmark method {name!r} is already registered")
    _METHODS[name] = Method(name, fn, description)


def get_method(name: str) -> Method:
    try:
        return _METHODS[name]
    except KeyError:
        known = ", ".join(sorted(_METHODS))
        raise ValueError(f"unknown benchmark method {name!r}; known methods: {known}") from None


def method_names() -> list[str]:
    return sorted(_METHODS)
