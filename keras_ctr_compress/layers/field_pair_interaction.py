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

    With ``use_mask=True`` the layer also holds a non-trainable 0/1 ``pair_mask``
    (``F x F``): the effective weight of pair ``(f, g)`` is ``r_fg * m_fg * m_gf``, so
    a pair is masked as a whole whichever triangle holds the zero. The mask lives in
    the model (saved with it): it prunes the pairs of an FM, which have no weight to
    zero, or fixes a pair selection by hand (:meth:`set_pair_mask`). FwFM pairs need
    no mask: :class:`keras_ctr_compress.compress.DeepLightPruning` zeroes ``R_fg`` and
    ``R_gf`` together. Masked or zero pairs still cost compute on the full ``R``
    until :func:`keras_ctr_compress.compress.strip_pruning` turns the surviving
    pairs into an explicit ``pairs`` list.

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
        use_mask: add the non-trainable ``pair_mask`` weight (all ones at first).

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
        use_mask: bool = False,
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
        if not isinstance(use_mask, bool):
            raise ValueError(f"`use_mask` must be True or False. Received: {use_mask!r}")
        self.use_mask = use_mask

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
        if self.use_mask:
            self.pair_mask = self.add_weight(
                name="pair_mask",
                shape=(self.num_fields, self.num_fields),
                initializer="ones",
                trainable=False,
            )

    @property
    def kept_pairs(self) -> list[tuple[int, int]]:
        """The pairs the layer computes: the explicit list, or all pairs."""
        return all_pairs(self.num_fields) if self.pairs is None else list(self.pairs)

    def pair_weights(self):
        """``r_fg`` (times the pair mask) for every kept pair, shape ``(P,)`` (ones for FM)."""
        pairs = self.kept_pairs
        upper = np.array([i * self.num_fields + j for i, j in pairs], "int32")
        lower = np.array([j * self.num_fields + i for i, j in pairs], "int32")
        if self.mode == "fm":
            weights = ops.ones((len(pairs),))
        else:
            flat = ops.reshape(self.r, (-1,))
            weights = 0.5 * (ops.take(flat, upper) + ops.take(flat, lower))
        if self.use_mask:
            flat_mask = ops.reshape(self.pair_mask, (-1,))
            weights = weights * ops.take(flat_mask, upper) * ops.take(flat_mask, lower)
        return weights

    def set_pair_mask(self, kept: Sequence[Sequence[int]]) -> None:
        """Sets ``pair_mask`` to keep exactly the pairs ``kept`` (both triangles).

        Raises:
            ValueError: the layer has no mask (``use_mask=False``) or a pair is invalid.
        """
        if not self.use_mask:
            raise ValueError(f"layer {self.name!r} was built with use_mask=False; it has no pair mask")
        mask = np.zeros((self.num_fields, self.num_fields), "float32")
        for i, j in _check_pairs(kept, self.num_fields):
            mask[i, j] = mask[j, i] = 1.0
        self.pair_mask.assign(mask)

    def pair_weight_matrix(self) -> np.ndarray:
        """The effective symmetric ``F x F`` pair weights as NumPy (zero diagonal).

        Entry ``(f, g)`` is the weight the layer gives pair ``(f, g)``: ``r_fg`` (1 for
        FM) times the pair mask, and 0 for pairs outside an explicit ``pairs`` list.
        """
        n = self.num_fields
        out = np.zeros((n, n), "float32")
        pairs = self.kept_pairs
        if pairs:
            w = np.asarray(keras.ops.convert_to_numpy(self.pair_weights()), "float32")
            idx = np.array(pairs)
            out[idx[:, 0], idx[:, 1]] = w
            out[idx[:, 1], idx[:, 0]] = w
        return out

    def surviving_pairs(self) -> list[tuple[int, int]]:
        """Kept pairs whose effective weight is non-zero (what a stripped layer computes)."""
        r = self.pair_weight_matrix()
        return [(i, j) for i, j in self.kept_pairs if r[i, j] != 0.0]

    def call(self, v):
        if self.pairs is None:
            return self._all_pairs(v)
        if not self.pairs:
            return ops.zeros_like(v[:, 0, :1])
        left = np.array([i for i, _ in self.pairs], "int32")
        right = np.array([j for _, j in self.pairs], "int32")
        dots = ops.sum(ops.take(v, left, axis=1) * ops.take(v, right, axis=1), axis=-1)
        if self.mode == "fm" and not self.use_mask:
            return ops.sum(dots, axis=1, keepdims=True)
        return ops.sum(dots * self.pair_weights(), axis=1, keepdims=True)

    def _all_pairs(self, v):
        if self.mode == "fm" and not self.use_mask:
            s = ops.sum(v, axis=1)
            return 0.5 * ops.sum(s * s - ops.sum(v * v, axis=1), axis=1, keepdims=True)
        # sum_{f<g} r_fg <v_f, v_g> = 0.5 * sum_{f != g} r_fg (V V^T)_fg with r symmetric.
        if self.mode == "fm":
            r = ops.ones((self.num_fields, self.num_fields))
        else:
            r = 0.5 * (self.r + ops.transpose(self.r))
        if self.use_mask:
            r = r * self.pair_mask * ops.transpose(self.pair_mask)
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
            "use_mask": self.use_mask,
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
