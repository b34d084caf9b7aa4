"""Parity of an exported .tflite file with the Keras model it came from."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import keras
import numpy as np

from keras_ctr_compress.export.runner import LiteRTModel

#: Rows a parity check should use at least (fewer are accepted, e.g. tiny test sets).
RECOMMENDED_ROWS = 1000


class ParityError(ValueError):
    """LiteRT and Keras outputs differ by more than the tolerance.

    Attributes:
        max_abs_diff: the largest absolute difference (``inf`` where one side is NaN).
        row: the row of ``x`` where it occurs.
        keras_value, litert_value: the two predictions at that row.
    """

    def __init__(self, message: str, max_abs_diff: float, row: int, keras_value: float, litert_value: float):
        super().__init__(message)
        self.max_abs_diff = max_abs_diff
        self.row = row
        self.keras_value = keras_value
        self.litert_value = litert_value


def keras_predict(model: keras.Model, x, batch_size: int = 4096) -> np.ndarray:
    """Keras predictions of ``x`` (an id matrix, or a dict of named inputs) as a flat
    float64 array (direct calls in inference mode; ``model.predict`` would trace a new
    predict function per model, which costs more than the check itself on small inputs)."""
    n = len(next(iter(x.values()))) if isinstance(x, Mapping) else len(x)
    parts = []
    for start in range(0, n, batch_size):
        if isinstance(x, Mapping):
            batch = {k: v[start : start + batch_size] for k, v in x.items()}
        else:
            batch = x[start : start + batch_size]
        y = model(batch, training=False)
        parts.append(np.asarray(keras.ops.convert_to_numpy(y), dtype=np.float64).reshape(-1))
    return np.concatenate(parts) if parts else np.zeros(0)


def _keras_inputs(model: keras.Model, runner: LiteRTModel, x: np.ndarray):
    """The validated id matrix as ``model``'s input: itself for one input, else a dict
    (column ``j`` -> the file's ``input_names[j]``, shaped like the Keras input)."""
    if len(model.inputs) == 1:
        return x
    shapes = {t._keras_history.operation.name: tuple(t.shape[1:]) for t in model.inputs}
    missing = [n for n in runner.input_names if n not in shapes]
    if missing or len(shapes) != len(runner.input_names):
        raise ValueError(f"the file's inputs {runner.input_names} do not match the model's {sorted(shapes)}")
    return {n: x[:, j].reshape((-1, *shapes[n])) for j, n in enumerate(runner.input_names)}


def check_parity(
    model: keras.Model,
    tflite_path: str | Path,
    x: np.ndarray,
    *,
    atol: float = 1e-4,
    batch_size: int = 1024,
) -> float:
    """Max absolute difference between LiteRT's and Keras' predictions on ``x``.

    ``x``: an id matrix ``(n, F)``, or for a model with one named input per field a
    dict ``{name: ids}`` (a matrix then feeds the file's inputs in signature order).

    Example::

        diff = check_parity(model, "model.tflite", ds.test.x[:1000])        # e.g. 3e-07
        diff = check_parity(user_model, "user.tflite", inputs_from_ids(x, user_model, fields))

    Use at least :data:`RECOMMENDED_ROWS` rows where the data has them. Measured float
    parity is 1e-7 to 1e-5, so ``atol=1e-4`` separates round-off from a real
    mismatch; pass ``atol=float("inf")`` to only report the difference (lossy exports
    such as dynamic-range quantisation).

    Raises:
        ParityError: the difference exceeds ``atol`` (or either side produced NaN
            where the other did not), naming the row.
        ValueError: ``x`` does not fit the file (see :class:`LiteRTModel`).
    """
    runner = LiteRTModel(tflite_path)
    x = runner.validate(x)
    if len(x) == 0:
        raise ValueError("check_parity needs at least one row of x")
    lite = runner.predict(x, batch_size=batch_size).astype(np.float64)
    ref = keras_predict(model, _keras_inputs(model, runner, x))
    if ref.shape != lite.shape:
        raise ValueError(
            f"Keras model gives {ref.shape[0]} values for {len(x)} rows but the file gives {lite.shape[0]}: "
            "the model must output one probability per row"
        )
    diff = np.abs(lite - ref)
    # NaN on one side (or both) is a mismatch of unknown size, never a pass.
    diff[np.isnan(diff)] = np.inf
    row = int(np.argmax(diff))
    worst = float(diff[row])
    if worst > atol:
        raise ParityError(
            f"{Path(tflite_path).name}: LiteRT differs from Keras by {worst:.3g} at row {row} "
            f"(Keras {ref[row]:.7g}, LiteRT {lite[row]:.7g}); tolerance {atol:g}, {len(x)} rows checked",
            worst, row, float(ref[row]), float(lite[row]),
        )
    return worst
