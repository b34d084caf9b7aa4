"""Scoring id matrices with a .tflite file in the LiteRT interpreter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from keras_ctr_compress.export._quiet import captured_output

_INT32_MAX = np.iinfo(np.int32).max


class LiteRTModel:
    """A CTR model file loaded in ``ai_edge_litert.interpreter.Interpreter``: one int32
    input ``(batch, num_fields)`` (the project's layout), or one integer input per field
    of shape ``(batch,)`` / ``(batch, 1)`` (a user-built model with named inputs), and
    one ``(batch, 1)`` probability output.

    Rows are always an id matrix ``(n, num_fields)``; with named inputs, column ``j``
    feeds ``input_names[j]`` (the file's signature order), and a dict ``{name: ids}``
    is accepted too (see :meth:`validate`).

    XNNPACK is applied by default. The input tensors keep the last batch size they were
    resized to, so repeated calls with the same batch size do not re-allocate.

    Example:

    >>> m = LiteRTModel("model.tflite")          # doctest: +SKIP
    >>> p = m.predict(ids)                        # doctest: +SKIP  (n,) float32
    >>> p = m.predict({"user": u, "item": i})     # doctest: +SKIP  a file with named inputs

    Args:
        path: the .tflite file.
        num_threads: interpreter threads (1 = the edge-device setting we report).
        vocab_sizes: optional per-column table sizes; when given, ``predict`` checks
            every id against them before running (otherwise only ``id >= 0`` is
            checked up front and an out-of-range id is located after LiteRT refuses it).
    """

    def __init__(
        self, path: str | Path, num_threads: int = 1, vocab_sizes: Sequence[int] | None = None
    ):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such file")
        if not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be a positive integer; got {num_threads!r}")
        with captured_output() as log:  # hides "Created TensorFlow Lite XNNPACK delegate"
            try:
                self._interp = Interpreter(model_path=str(self.path), num_threads=num_threads)
            except Exception as e:
                error: Exception | None = e
            else:
                error = None
        if error is not None:
            raise ValueError(f"{self.path}: LiteRT cannot load it: {error}\n{log.tail()}") from error
        self.num_threads = num_threads
        inputs, outputs = self._interp.get_input_details(), self._interp.get_output_details()
        if len(outputs) != 1:
            raise ValueError(f"{self.path}: expected one output; got {len(outputs)} outputs")
        if len(inputs) == 1:
            self._setup_matrix_input(inputs[0])
        else:
            self._setup_named_inputs()
        out_sig = tuple(int(s) for s in outputs[0]["shape_signature"])
        if out_sig not in ((-1, 1), (-1,)):
            raise ValueError(f"{self.path}: expected an output of shape (batch, 1); got {out_sig}")
        self._out = int(outputs[0]["index"])
        self.vocab_sizes = self._check_vocab_sizes(vocab_sizes)
        self._batch: int | None = None

    def _setup_matrix_input(self, d: dict) -> None:
        sig = d["shape_signature"]
        if len(sig) != 2 or sig[0] != -1 or d["dtype"] != np.int32:
            raise ValueError(
                f"{self.path}: expected an int32 input of shape (batch, num_fields) with a dynamic "
                f"batch; got {np.dtype(d['dtype']).name} {tuple(int(s) for s in sig)}"
            )
        self.num_fields = int(sig[1])
        self.input_names = [str(d["name"])]
        #: (tensor index, shape after the batch axis, dtype); None = the whole matrix
        self._ins: list[tuple[int, tuple[int, ...] | None, Any]] = [(int(d["index"]), None, np.int32)]

    def _setup_named_inputs(self) -> None:
        # The signature runner maps the Keras input names to the tensors (public API).
        details = self._interp.get_signature_runner().get_input_details()
        self.input_names, self._ins = [], []
        for name, d in details.items():
            sig = tuple(int(s) for s in d["shape_signature"])
            if sig not in ((-1,), (-1, 1)) or not np.issubdtype(d["dtype"], np.integer):
                raise ValueError(
                    f"{self.path}: input {name!r} is {np.dtype(d['dtype']).name} {sig}; a file with several "
                    "inputs needs one integer id per row in each, of shape (batch,) or (batch, 1)"
                )
            self.input_names.append(name)
            self._ins.append((int(d["index"]), sig[1:], d["dtype"]))
        self.num_fields = len(self._ins)

    def _check_vocab_sizes(self, vocab_sizes: Sequence[int] | None) -> np.ndarray | None:
        if vocab_sizes is None:
            return None
        v = np.asarray(vocab_sizes, dtype=np.int64)
        if v.shape != (self.num_fields,) or np.any(v <= 0):
            raise ValueError(
                f"vocab_sizes must hold {self.num_fields} positive sizes; got {list(vocab_sizes)}"
            )
        return v

    @property
    def input_details(self) -> dict[str, Any]:
        """The interpreter's details of the (first) input tensor."""
        return self._interp.get_input_details()[0]

    @property
    def output_details(self) -> dict[str, Any]:
        """The interpreter's details of the (single) output tensor."""
        return self._interp.get_output_details()[0]

    def validate(self, x: Any) -> np.ndarray:
        """Checks ``x`` and returns it as a C-contiguous int32 array of shape (n, F).

        ``x`` is an id matrix, or for a file with named inputs a dict ``{name: ids}``
        (each ``(n,)`` or ``(n, 1)``) holding exactly :attr:`input_names`.

        Raises:
            ValueError: not 2-D, wrong number of columns, not integer, ids out of
                range, or a dict whose names differ from the file's inputs.
        """
        if isinstance(x, Mapping):
            x = self._matrix_from_dict(x)
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(
                f"{self.path.name}: x must be 2-D (rows, {self.num_fields} fields); got shape {x.shape}"
            )
        if x.shape[1] != self.num_fields:
            raise ValueError(
                f"{self.path.name}: expected {self.num_fields} columns (fields), got {x.shape[1]}"
            )
        if not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"{self.path.name}: x must hold integer ids (int32); got dtype {x.dtype}")
        if x.size:
            self._check_range(x)
        return np.ascontiguousarray(x, dtype=np.int32)

    def _matrix_from_dict(self, x: Mapping) -> np.ndarray:
        if sorted(x) != sorted(self.input_names) or self._ins[0][1] is None:
            raise ValueError(f"{self.path.name}: expected inputs {self.input_names}; got {sorted(x)}")
        cols = [np.asarray(x[name]).reshape(-1) for name in self.input_names]
        if len({len(c) for c in cols}) != 1:
            raise ValueError(f"{self.path.name}: inputs have different row counts {[len(c) for c in cols]}")
        return np.stack(cols, axis=1)

    def _check_range(self, x: np.ndarray) -> None:
        lo, hi = x.min(axis=0), x.max(axis=0)
        upper = self.vocab_sizes if self.vocab_sizes is not None else np.full(self.num_fields, _INT32_MAX + 1)
        bad = np.flatnonzero((lo < 0) | (hi >= upper))
        if bad.size == 0:
            return
        col = int(bad[0])
        column = x[:, col]
        row = int(np.flatnonzero((column < 0) | (column >= upper[col]))[0])
        limit = f"[0, {int(upper[col])})" if self.vocab_sizes is not None else ">= 0 (int32)"
        raise ValueError(
            f"{self.path.name}: id {int(column[row])} at row {row}, column {col} is out of range; "
            f"ids of column {col} must be {limit}"
        )

    def _resize(self, batch: int) -> None:
        if batch != self._batch:
            for index, tail, _ in self._ins:
                shape = [batch, self.num_fields] if tail is None else [batch, *tail]
                self._interp.resize_tensor_input(index, shape, strict=True)
            self._interp.allocate_tensors()
            self._batch = batch

    def _feed(self, x: np.ndarray) -> None:
        """Copies an int32 matrix into the input tensor(s): one column per named input."""
        for j, (index, tail, dtype) in enumerate(self._ins):
            if tail is None:
                self._interp.set_tensor(index, x)
            else:
                self._interp.set_tensor(index, np.ascontiguousarray(x[:, j].reshape(-1, *tail), dtype=dtype))

    def prepare(self, batch: int) -> None:
        """Sizes the input for ``batch`` rows (what :meth:`set_input` then expects)."""
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive integer; got {batch!r}")
        self._resize(batch)

    def set_input(self, x: np.ndarray) -> None:
        """Copies an already validated int32 batch of the prepared size into the input.

        No checks: with :meth:`invoke`, the inner steps of latency measurement.
        """
        self._feed(x)

    def invoke(self) -> None:
        """Runs the interpreter on the current input (output left in place)."""
        self._interp.invoke()

    def _predict_chunk(self, chunk: np.ndarray, offset: int) -> np.ndarray:
        self._resize(len(chunk))
        self._feed(chunk)
        try:
            self._interp.invoke()
        except RuntimeError as e:
            raise self._locate_failure(chunk, offset, e) from e
        return self._interp.get_tensor(self._out).reshape(-1)

    def _locate_failure(self, chunk: np.ndarray, offset: int, error: RuntimeError) -> ValueError:
        """Finds the first row that LiteRT refuses (an id beyond its table, usually)."""
        first_line = str(error).split("Node number")[0].strip() or str(error)
        for i in range(len(chunk)):
            self._resize(1)
            self._feed(chunk[i : i + 1])
            try:
                self._interp.invoke()
            except RuntimeError:
                return ValueError(
                    f"{self.path.name}: LiteRT refused row {offset + i} (ids {chunk[i].tolist()}): "
                    f"{first_line}; an id is probably beyond its embedding table"
                )
        return ValueError(f"{self.path.name}: LiteRT failed on rows {offset}..{offset + len(chunk) - 1}: {error}")

    def predict(self, x: Any, batch_size: int = 1024) -> np.ndarray:
        """Click probabilities of the rows of ``x`` (int ids, shape (n, num_fields)).

        Returns:
            float32 array of shape (n,).
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
        x = self.validate(x)
        out = np.empty(len(x), dtype=np.float32)
        for start in range(0, len(x), batch_size):
            chunk = x[start : start + batch_size]
            out[start : start + len(chunk)] = self._predict_chunk(chunk, start)
        return out

    def __repr__(self) -> str:
        return f"LiteRTModel({str(self.path)!r}, num_fields={self.num_fields}, num_threads={self.num_threads})"
