"""FieldPairInteraction: FM / FwFM second-order term over (optionally pruned) field pairs."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

MODES = ("fm", "fwfm")


def all_pairs(num_fields: int) -> list[tuple[int, int]]:
    """Every field pair ``(i, j)`` with ``i < j``, in row-major order."""
    return [(i, j) for i in range(num_fields) for j in range(i + 1, num_fields)]


@keras.saving.register_keras_serializable(package="keras_ctr_compress")
class FieldPairInteraction(keras.layers.Layer):
    """Second-order field-pair term of FM and FwFM, over all or a kept subset of pairs.

    ``y = sum_{(f, g) in pairs} r_fg <v_f, v_g>`` where ``r_fg = 1`` for FM and
    ``r = (R + R^T) / 2`` with a learned ``F x F`` matrix ``R`` for FwFM (DeepLight's
    symmetric parametrisation). With ``pairs=None`` all ``F (F - 1) / 2`` pairs are
    used through closed forms (FM: ``((sum v)^2 - sum v^2) / 2``, O(F d); FwFM: one
    batched ``V V^T``). With an explicit pair list the layer gathers only those pairs,
    so a pruned layer costs O(kept pairs x d) and exports as GATHER + MUL + SUM.

    References:
        - Rendle, "Factorization Machines", ICDM 2010.
        - Pan et al., "Field-weighted Factorization Machines for Click-Through Rate
          Prediction in Display Advertising", WWW 2018.
        - Deng et al., "DeepLight: Deep Lightweight Feature Interactions for
          Accelerating CTR Predictions in Ad Serving", WSDM 2021 (arXiv 2002.06987).

    Example:

    >>> v = np.ones((2, 3, 4), "float32")
    >>> FieldPairInteraction(3, mode="fm")(v).shape
    (2, 1)

    Args:
        num_fields: number of fields F of the input.
        mode: ``"fm"`` (all weights 1) or ``"fwfm"`` (learned symmetric weights).
        pairs: ``None`` for all pairs, or a list of ``(i, j)`` with ``0 <= i < j < F``
            (the surviving pairs of a pruned model; may be empty).
        r_initializer: initializer of ``R`` (FwFM only).

    Input shape:
        ``(batch, num_fields, dim)`` float.

    Output shape:
        ``(batch, 1)`` float.
    """

    def __init__(
        self,
        num_fields: int,
        mode: str = "fm",
        pairs: Sequence[Sequence[int]] | None = None,
        r_initializer="ones",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(num_fields, int) or num_fields < 2:
            raise ValueError(f"`num_fields` must be an integer >= 2. Received: {num_fields!r}")
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}. Received: {mode!r}")
        self.num_fields = num_fields
        self.mode = mode
        self.pairs = None if pairs is None else _check_pairs(pairs, num_fields)
        self.r_initializer = keras.initializers.get(r_initializer)

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[1] != self.num_fields:
            raise ValueError(
                f"FieldPairInteraction expects (batch, {self.num_fields}, dim), got {input_shape}"
            )
        if self.mode == "fwfm":
            self.r = self.add_weight(
                name="r",
                shape=(self.num_fields, self.num_fields),
                initializer=self.r_initializer,
            )

    @property
    def kept_pairs(self) -> list[tuple[int, int]]:
        return all_pairs(self.num_fields) if self.pairs is None else list(self.pairs)

    def pair_weights(self):
        """``r_fg`` for every kept pair, shape ``(P,)`` (ones for FM)."""
        pairs = self.kept_pairs
        if self.mode == "fm":
            return ops.ones((len(pairs),))
        flat = ops.reshape(self.r, (-1,))
        upper = np.array([i * self.num_fields + j for i, j in pairs], "int32")
        lower = np.array([j * self.num_fields + i for i, j in pairs], "int32")
        return 0.5 * (ops.take(flat, upper) + ops.take(flat, lower))

    def call(self, v):
        if self.pairs is None:
            return self._all_pairs(v)
        if not self.pairs:
            return ops.zeros_like(v[:, 0, :1])
        left = np.array([i for i, _ in self.pairs], "int32")
        right = np.array([j for _, j in self.pairs], "int32")
        dots = ops.sum(ops.take(v, left, axis=1) * ops.take(v, right, axis=1), axis=-1)
        if self.mode == "fm":
            return ops.sum(dots, axis=1, keepdims=True)
        return ops.sum(dots * self.pair_weights(), axis=1, keepdims=True)

    def _all_pairs(self, v):
        if self.mode == "fm":
            s = ops.sum(v, axis=1)
            return 0.5 * ops.sum(s * s - ops.sum(v * v, axis=1), axis=1, keepdims=True)
        # sum_{f<g} r_fg <v_f, v_g> = 0.5 * sum_{f != g} r_fg (V V^T)_fg with r symmetric.
        r = 0.5 * (self.r + ops.transpose(self.r))
        off_diag = r * (1.0 - ops.eye(self.num_fields))
        gram = ops.matmul(v, ops.transpose(v, (0, 2, 1)))
        return 0.5 * ops.sum(ops.reshape(gram * off_diag, (-1, self.num_fields**2)), 1, keepdims=True)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1)

    def get_config(self):
        return {
            **super().get_config(),
            "num_fields": self.num_fields,
            "mode": self.mode,
            "pairs": None if self.pairs is None else [list(p) for p in self.pairs],
            "r_initializer": keras.initializers.serialize(self.r_initializer),
        }


def _check_pairs(pairs, num_fields: int) -> list[tuple[int, int]]:
    out = []
    for p in pairs:
        if len(p) != 2:
            raise ValueError(f"each pair must be (i, j); got {p!r}")
        i, j = int(p[0]), int(p[1])
        if not 0 <= i < j < num_fields:
            raise ValueError(f"pair {p!r} invalid: need 0 <= i < j < num_fields={num_fields}")
        out.append((i, j))
    if len(set(out)) != len(out):
        raise ValueError("`pairs` contains duplicates")
    return out
