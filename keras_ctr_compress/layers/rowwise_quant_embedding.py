"""RowwiseQuantEmbedding: SHARK's row-wise mixed precision (F-Quantisation) with tiers."""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from keras_ctr_compress.layers import quant_ops as q

MODES = ("qat", "inference")
PRUNED = "pruned"
DEFAULT_TIERS = ("fp16", "int8", "int4", "int2", PRUNED)
_TIER = re.compile(r"^(fp16|int([2-8])|pruned)$")
_INT16_MAX_ROWS = 32768


def tier_precision(name: str) -> int:
    """Bits per weight of a tier name (``fp16`` 16, ``intB`` B, ``pruned`` 0)."""
    m = _TIER.match(name) if isinstance(name, str) else None
    if m is None:
        raise ValueError(f"unknown tier {name!r}: expected 'fp16', 'int2' ... 'int8' or 'pruned'")
    return 16 if name == "fp16" else 0 if name == PRUNED else int(m.group(2))


def tier_row_bytes(name: str, dim: int) -> int:
    """Exported bytes of one row in tier ``name`` (codes + fp16 scale; fp16 rows 2 bytes per
    weight; pruned rows nothing), remap excluded."""
    bits = tier_precision(name)
    if bits == 16:
        return 2 * dim
    if bits == 0:
        return 0
    return q.packed_width(dim, bits) + 2


def remap_dtype(kept_rows: int) -> str:
    """int16 while the stored row positions fit, else int32."""
    return "int16" if kept_rows <= _INT16_MAX_ROWS else "int32"


def rowwise_byte_cost(tier_sizes: Sequence[int], tiers: Sequence[str], dim: int) -> dict[str, int]:
    """Exported bytes by part of a finalized ``RowwiseQuantEmbedding`` with ``tier_sizes``
    rows per tier: ``codes`` (int tiers), ``scales`` (2 bytes per int-tier row),
    ``weights`` (fp16 rows) and ``remap`` (2 or 4 bytes per id; 0 when every row
    sits in one stored tier)."""
    codes = scales = weights = 0
    for n, name in zip(tier_sizes, tiers, strict=True):
        bits = tier_precision(name)
        if bits == 16:
            weights += 2 * dim * n
        elif bits:
            codes += q.packed_width(dim, bits) * n
            scales += 2 * n
    rows = int(sum(tier_sizes))
    kept = rows - sum(n for n, t in zip(tier_sizes, tiers, strict=True) if t == PRUNED)
    needs_remap = kept < rows or sum(1 for n, t in zip(tier_sizes, tiers, strict=True) if n and t != PRUNED) > 1
    remap = rows * (2 if remap_dtype(kept) == "int16" else 4) if needs_remap else 0
    return {"codes": codes, "scales": scales, "remap": remap, "weights": weights}


def range_step_np(w: np.ndarray, bits: int) -> np.ndarray:
    """Per-row step covering the row's range: ``max(max(w) / Qp, min(w) / Qn)``."""
    qn, qp = q.qrange(bits)
    return q.clamp_step_np(np.maximum(w.max(axis=1) / qp, w.min(axis=1) / qn))


def quantize_rows_np(w: np.ndarray, name: str) -> np.ndarray:
    """What the finalized layer returns for float rows ``w`` stored in tier ``name``."""
    bits = tier_precision(name)
    if bits == 16:
        return w.astype("float16").astype("float32")
    step = q.to_fp16_step_np(range_step_np(w, bits))
    return q.quantize_np(w, step[:, None], bits).astype("float32") * step[:, None]


def _check_tiers(tiers, layer: str) -> tuple[str, ...]:
    if isinstance(tiers, str) or not isinstance(tiers, Sequence) or not tiers:
        raise ValueError(f"layer {layer!r}: `tiers` must be a non-empty list of tier names. Received: {tiers!r}")
    tiers = tuple(tiers)
    try:
        bits = [tier_precision(t) for t in tiers]
    except ValueError as e:
        raise ValueError(f"layer {layer!r}: {e}. Received: tiers={tiers!r}") from None
    if any(a <= b for a, b in zip(bits, bits[1:], strict=False)):
        raise ValueError(
            f"layer {layer!r}: `tiers` must go from most to least precise without repeats "
            f"(e.g. {DEFAULT_TIERS}). Received: {tiers!r}"
        )
    if tiers[0] == PRUNED:
        raise ValueError(f"layer {layer!r}: `tiers` needs a stored tier besides 'pruned'. Received: {tiers!r}")
    return tiers


def _check_fractions(fractions, n: int, layer: str) -> tuple[float, ...] | None:
    if fractions is None:
        return None
    try:
        f = np.asarray(fractions, "float64").reshape(-1)
    except (TypeError, ValueError):
        f = np.array([np.nan])
    if f.size != n or not np.all(np.isfinite(f)) or np.any(f < 0) or abs(f.sum() - 1.0) > 1e-6:
        raise ValueError(
            f"layer {layer!r}: `fractions` must be {n} non-negative numbers (one per tier) summing "
            f"to 1. Received: fractions={fractions!r}"
        )
    return tuple(float(x) for x in f)


@keras.saving.register_keras_serializable(package="keras_ctr_compress")
class RowwiseQuantEmbedding(keras.layers.Layer):
    """Embedding table whose rows live in precision tiers chosen by data (SHARK).

    Each row ``i`` has a priority ``p_i`` updated from data: every update call decays
    all priorities, ``p <- gamma p``, and adds ``a_pos`` for each clicked and
    ``a_neg`` for each non-clicked sample that looks the row up (access frequency with
    time decay, clicks weighted apart). Rows are then assigned to ``tiers`` (most to
    least precise, e.g. ``fp16, int8, int4, int2, pruned``):

    * ``fractions``: the top-priority fraction ``f_0`` of the rows goes to the first
      tier, the next ``f_1`` to the second, and so on (ties: larger row norm first).
    * ``byte_budget``: the exported bytes of the table (codes, scales, fp16 rows and
      the remap) must not exceed the budget. Rows choose the tier that minimises
      ``p_i * err_i(tier) + lambda * bytes(tier)`` (``err``: squared quantisation error
      of the row's current values in that tier; pruned: the distance to the OOV
      row); ``lambda`` is the smallest that meets the budget (bisection). Rows never
      seen get an epsilon priority, so they go wherever their error is cheapest.

    ``pruned`` rows return the field's shared OOV row (``oov_index``, kept in the first
    tier). Integer tiers store per-row codes with a per-row step covering the row's
    range (``max(max w / Qp, min w / Qn)``, fp16); ``fp16`` rows store the fp16 bits.

    Two modes (states): ``"qat"`` trains a float32 shadow table whose looked-up rows
    are fake-quantised per their tier (straight-through gradients); ``"inference"``
    (made by :meth:`finalize`) holds one sub-table per non-empty tier (codes packed
    as in :class:`QuantizedEmbedding`, scales as int16 fp16 bits) and an int16 (up to
    32,768 stored rows) or int32 remap from id to position. The lookup exports as
    GATHER on the remap, then per tier a GATHER on the clipped local position, the
    unpacking, and a 0/1 mask from two comparisons: builtins only.

    Typical use: swap the trained table in, update priorities from the training data
    (:func:`keras_ctr_compress.compress.update_row_priorities`), assign tiers,
    fine-tune (re-assigning tiers between epochs with
    :class:`keras_ctr_compress.compress.RowPriorityCallback`), :meth:`finalize`.

    References:
        - Zhang et al., "SHARK: A Lightweight Model Compression Approach for Large-scale
          Recommender Systems", CIKM 2023 (arXiv 2308.09395).

    Example:

    >>> layer = RowwiseQuantEmbedding(1000, 16, fractions=(0.1, 0.2, 0.3, 0.3, 0.1))
    >>> layer.build()
    >>> layer.update_priorities(np.array([3, 3, 7]), np.array([1, 0, 0]))
    >>> layer.assign_tiers().tolist()
    [100, 200, 300, 300, 100]
    >>> tuple(layer.finalize()(np.array([3, 999])).shape)
    (2, 16)

    Args:
        input_dim: number of rows (ids) of the table.
        output_dim: embedding dimension ``d``.
        tiers: tier names from most to least precise: ``"fp16"``, ``"int8"`` ...
            ``"int2"``, ``"pruned"``.
        fractions: fraction of rows per tier (sums to 1); used when ``byte_budget``
            is None. Default: equal fractions.
        byte_budget: exported bytes allowed for the table (instead of ``fractions``).
        gamma: priority decay per update call, in ``(0, 1]``.
        a_pos, a_neg: priority increments per clicked / non-clicked access.
        oov_index: the shared row pruned ids fall back to.
        mode: ``"qat"`` or ``"inference"``.
        tier_sizes: rows per tier (``inference`` mode; set by :meth:`finalize`).
        embeddings_initializer, embeddings_regularizer: of the float table.

    Input shape:
        int ids of any shape ``s``, values in ``[0, input_dim)``.

    Output shape:
        ``s + (output_dim,)`` float32.
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        tiers: Sequence[str] = DEFAULT_TIERS,
        fractions: Sequence[float] | None = None,
        byte_budget: int | None = None,
        gamma: float = 0.999,
        a_pos: float = 1.0,
        a_neg: float = 0.5,
        oov_index: int = 0,
        mode: str = "qat",
        tier_sizes: Sequence[int] | None = None,
        embeddings_initializer="uniform",
        embeddings_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        name = self.name
        for arg, v in (("input_dim", input_dim), ("output_dim", output_dim)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
                raise ValueError(f"layer {name!r}: `{arg}` must be a positive integer. Received: {arg}={v!r}")
        self.input_dim, self.output_dim = int(input_dim), int(output_dim)
        self.tiers = _check_tiers(tiers, name)
        self.fractions = _check_fractions(fractions, len(self.tiers), name)
        if byte_budget is not None and (
            isinstance(byte_budget, bool) or not isinstance(byte_budget, numbers.Real) or not byte_budget > 0
        ):
            raise ValueError(f"layer {name!r}: `byte_budget` must be a positive number. Received: {byte_budget!r}")
        if byte_budget is not None and fractions is not None:
            raise ValueError(f"layer {name!r}: pass `fractions` or `byte_budget`, not both")
        self.byte_budget = None if byte_budget is None else int(byte_budget)
        if not (isinstance(gamma, numbers.Real) and 0 < gamma <= 1):
            raise ValueError(f"layer {name!r}: `gamma` must be in (0, 1]. Received: gamma={gamma!r}")
        for arg, v in (("a_pos", a_pos), ("a_neg", a_neg)):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or v < 0 or not math.isfinite(v):
                raise ValueError(f"layer {name!r}: `{arg}` must be a non-negative number. Received: {arg}={v!r}")
        self.gamma, self.a_pos, self.a_neg = float(gamma), float(a_pos), float(a_neg)
        if isinstance(oov_index, bool) or not isinstance(oov_index, numbers.Integral) or not 0 <= oov_index < self.input_dim:
            raise ValueError(
                f"layer {name!r}: `oov_index` must be an id in [0, {self.input_dim}). Received: {oov_index!r}"
            )
        self.oov_index = int(oov_index)
        if mode not in MODES:
            raise ValueError(f"layer {name!r}: `mode` must be one of {MODES}. Received: mode={mode!r}")
        self.mode = mode
        self.tier_sizes = None if tier_sizes is None else tuple(int(n) for n in tier_sizes)
        if mode == "inference":
            if (self.tier_sizes is None or len(self.tier_sizes) != len(self.tiers)
                    or sum(self.tier_sizes) != self.input_dim or min(self.tier_sizes) < 0
                    or self.tier_sizes[0] < 1):
                raise ValueError(
                    f"layer {name!r}: mode='inference' needs `tier_sizes`, {len(self.tiers)} row counts "
                    f"(one per tier, the first >= 1) summing to input_dim={self.input_dim}. "
                    f"Received: {tier_sizes!r}"
                )
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.embeddings_regularizer = keras.regularizers.get(embeddings_regularizer)
        self.autocast = False

    # ------------------------------------------------------------------ build

    def build(self, input_shape=None):
        if self.mode == "qat":
            self.embeddings = self.add_weight(
                name="embeddings", shape=(self.input_dim, self.output_dim),
                initializer=self.embeddings_initializer, regularizer=self.embeddings_regularizer,
            )
            self.priority = self.add_weight(
                name="priority", shape=(self.input_dim,), initializer="zeros", trainable=False
            )
            self.tier = self.add_weight(
                name="tier", shape=(self.input_dim,), dtype="int8", initializer="zeros", trainable=False
            )
        else:
            self._build_inference()
        self.built = True

    @property
    def stored_tiers(self) -> list[tuple[int, str, int, int]]:
        """``(tier index, name, offset, rows)`` of each non-empty stored sub-table (inference)."""
        out, offset = [], 0
        for k, (name, n) in enumerate(zip(self.tiers, self.tier_sizes or (), strict=False)):
            if name != PRUNED and n > 0:
                out.append((k, name, offset, n))
                offset += n
        return out

    @property
    def _needs_remap(self) -> bool:
        return rowwise_byte_cost(self.tier_sizes, self.tiers, self.output_dim)["remap"] > 0

    def _build_inference(self):
        self._tables = {}
        for _, name, _, n in self.stored_tiers:
            if name == "fp16":
                rows = self.add_weight(name="rows_fp16", shape=(n, self.output_dim), dtype="int16",
                                       initializer="zeros", trainable=False)
                self._tables[name] = (rows, None)
            else:
                bits = tier_precision(name)
                codes = self.add_weight(name=f"codes_{name}", shape=(n, q.packed_width(self.output_dim, bits)),
                                        dtype="int8", initializer="zeros", trainable=False)
                scales = self.add_weight(name=f"scales_{name}", shape=(n,), dtype="int16",
                                         initializer="zeros", trainable=False)
                self._tables[name] = (codes, scales)
        self.remap = None
        if self._needs_remap:
            kept = sum(n for _, _, _, n in self.stored_tiers)
            self.remap = self.add_weight(name="remap", shape=(self.input_dim,), dtype=remap_dtype(kept),
                                         initializer="zeros", trainable=False)

    # ------------------------------------------------------------------ priorities / tiers

    def update_priorities(self, ids, labels, batch_size: int | None = None) -> None:
        """Decays and increments the row priorities from ``ids`` and their click labels.

        ``ids``: ``(n,)`` or ``(n, k)`` ids; ``labels``: ``(n,)`` (1 = click). With
        ``batch_size`` the samples are taken as consecutive batches, one decay per
        batch (vectorised: sample ``i`` of batch ``b`` of ``B`` adds
        ``gamma^(B-1-b) a``); otherwise as one batch. Runs eagerly (NumPy), ``qat`` mode.
        """
        self._require_qat("update_priorities")
        ids = np.asarray(ids).astype("int64")
        labels = np.asarray(labels, "float64").reshape(-1)
        if ids.shape[0] != labels.shape[0]:
            raise ValueError(f"layer {self.name!r}: {ids.shape[0]} id rows but {labels.shape[0]} labels")
        if ids.size and (ids.min() < 0 or ids.max() >= self.input_dim):
            raise ValueError(f"layer {self.name!r}: ids must lie in [0, {self.input_dim}); got "
                             f"[{ids.min()}, {ids.max()}]")
        inc = np.where(labels > 0.5, self.a_pos, self.a_neg)
        n = labels.shape[0]
        num_batches = 1 if not batch_size else max(1, math.ceil(n / batch_size))
        if num_batches > 1:
            batch = np.arange(n) // batch_size
            inc = inc * self.gamma ** (num_batches - 1 - batch)
        per_id = np.repeat(inc, ids.size // max(n, 1)) if ids.ndim > 1 else inc
        add = np.bincount(ids.reshape(-1), weights=per_id, minlength=self.input_dim)
        p = keras.ops.convert_to_numpy(self.priority).astype("float64")
        self.priority.assign((p * self.gamma**num_batches + add).astype("float32"))

    def tier_byte_costs(self) -> np.ndarray:
        """Exported bytes of one row in each tier (remap excluded)."""
        return np.array([tier_row_bytes(t, self.output_dim) for t in self.tiers], "int64")

    def _budget_remap_bytes(self) -> int:
        """Remap bytes counted against a byte budget: conservative (int32 beyond 32,768
        ids, even if pruning leaves fewer stored rows), 0 with a single tier."""
        if len(self.tiers) == 1:
            return 0
        return self.input_dim * (2 if remap_dtype(self.input_dim) == "int16" else 4)

    def min_byte_budget(self) -> int:
        """The smallest budget :meth:`assign_tiers` can meet (OOV row in the first tier,
        every other row in the cheapest tier, plus the remap)."""
        costs = self.tier_byte_costs()
        return int(costs[0] + (self.input_dim - 1) * costs[-1]) + self._budget_remap_bytes()

    def assign_tiers(self, fractions: Sequence[float] | None = None, byte_budget: int | None = None) -> np.ndarray:
        """Re-assigns every row's tier from the current priorities (and, with a byte
        budget, the current row values); returns the rows per tier.

        Arguments given here replace the layer's policy (``fractions`` /
        ``byte_budget``); with none, the layer's policy applies.
        """
        self._require_qat("assign_tiers")
        if fractions is not None and byte_budget is not None:
            raise ValueError(f"layer {self.name!r}: pass `fractions` or `byte_budget`, not both")
        if fractions is not None:
            self.fractions, self.byte_budget = _check_fractions(fractions, len(self.tiers), self.name), None
        elif byte_budget is not None:
            if isinstance(byte_budget, bool) or not isinstance(byte_budget, numbers.Real) or not byte_budget > 0:
                raise ValueError(f"layer {self.name!r}: `byte_budget` must be a positive number. "
                                 f"Received: {byte_budget!r}")
            self.byte_budget, self.fractions = int(byte_budget), None
        w = keras.ops.convert_to_numpy(self.embeddings)
        p = keras.ops.convert_to_numpy(self.priority).astype("float64")
        if self.byte_budget is not None:
            tier = self._tiers_for_budget(w, p, self.byte_budget)
        else:
            tier = self._tiers_for_fractions(w, p, self.fractions or (1.0 / len(self.tiers),) * len(self.tiers))
        self.tier.assign(tier.astype("int8"))
        return np.bincount(tier, minlength=len(self.tiers))

    def _tiers_for_fractions(self, w, p, fractions) -> np.ndarray:
        order = np.lexsort((-np.linalg.norm(w, axis=1), -p))
        order = np.concatenate([[self.oov_index], order[order != self.oov_index]])
        bounds = np.round(np.cumsum(fractions) * self.input_dim).astype("int64")
        bounds[-1] = self.input_dim
        tier = np.empty(self.input_dim, "int64")
        start = 0
        for k, stop in enumerate(bounds):
            tier[order[start:stop]] = k
            start = max(start, stop)
        tier[self.oov_index] = 0
        return tier

    def _tier_errors(self, w) -> np.ndarray:
        err = np.empty((w.shape[0], len(self.tiers)), "float64")
        for k, name in enumerate(self.tiers):
            ref = w[self.oov_index][None, :] if name == PRUNED else quantize_rows_np(w, name)
            err[:, k] = np.sum((w.astype("float64") - ref) ** 2, axis=1)
        return err

    def _tiers_for_budget(self, w, p, budget: int) -> np.ndarray:
        minimum = self.min_byte_budget()
        if budget < minimum:
            raise ValueError(
                f"layer {self.name!r}: byte_budget={budget} is below the smallest size of this table "
                f"with tiers {self.tiers}: {minimum} bytes"
            )
        costs = self.tier_byte_costs().astype("float64")
        remap = self._budget_remap_bytes()
        mean_p = p.mean()
        weight = p + (1e-3 * mean_p if mean_p > 0 else 1.0)
        weighted = self._tier_errors(w) * weight[:, None]

        def choose(lam: float) -> np.ndarray:
            t = np.argmin(weighted + lam * costs[None, :], axis=1)
            t[self.oov_index] = 0
            return t

        def total(t: np.ndarray) -> float:
            return float(costs[t].sum()) + remap

        best = choose(0.0)
        if total(best) <= budget:
            return best
        lo, hi = -80.0, 80.0  # log10(lambda)
        best = choose(10.0**hi)
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            t = choose(10.0**mid)
            if total(t) <= budget:
                hi, best = mid, t
            else:
                lo = mid
        return best

    def tier_counts(self) -> np.ndarray:
        """Rows per tier (current assignment or the finalized ``tier_sizes``)."""
        if self.mode == "inference":
            return np.asarray(self.tier_sizes, "int64")
        return np.bincount(keras.ops.convert_to_numpy(self.tier).astype("int64"), minlength=len(self.tiers))

    def _require_qat(self, what: str) -> None:
        if self.mode != "qat":
            raise ValueError(f"layer {self.name!r}: {what} needs mode='qat'; this layer is finalized")
        if not self.built:
            self.build()

    # ------------------------------------------------------------------ weights

    def set_float_weights(self, table) -> None:
        """Sets the float table (``qat`` mode) from ``(input_dim, output_dim)`` values."""
        self._require_qat("set_float_weights")
        table = np.asarray(table, "float32")
        if table.shape != (self.input_dim, self.output_dim):
            raise ValueError(f"layer {self.name!r}: expected a float table of shape "
                             f"{(self.input_dim, self.output_dim)}, got {table.shape}")
        self.embeddings.assign(table)

    def _effective_tiers(self) -> np.ndarray:
        tier = keras.ops.convert_to_numpy(self.tier).astype("int64")
        tier[self.oov_index] = 0
        return tier

    def dequantized_weights(self) -> np.ndarray:
        """The float table of the finalized form: ``(input_dim, output_dim)``."""
        if self.mode == "inference":
            return keras.ops.convert_to_numpy(self(np.arange(self.input_dim, dtype="int32")))
        w = keras.ops.convert_to_numpy(self.embeddings)
        tier = self._effective_tiers()
        out = np.empty_like(w)
        for k, name in enumerate(self.tiers):
            rows = np.flatnonzero(tier == k)
            if name != PRUNED and rows.size:
                out[rows] = quantize_rows_np(w[rows], name)
        pruned = np.flatnonzero(np.array(self.tiers)[tier] == PRUNED)
        out[pruned] = out[self.oov_index]
        return out

    def finalize(self) -> RowwiseQuantEmbedding:
        """A new ``inference``-mode layer: one sub-table per non-empty tier and the id remap."""
        self._require_qat("finalize")
        w = keras.ops.convert_to_numpy(self.embeddings)
        tier = self._effective_tiers()
        sizes = np.bincount(tier, minlength=len(self.tiers))
        config = {**self.get_config(), "mode": "inference", "tier_sizes": [int(n) for n in sizes]}
        layer = type(self).from_config(config)
        layer.build()
        position = np.zeros(self.input_dim, "int64")
        for k, name, offset, n in layer.stored_tiers:
            rows = np.flatnonzero(tier == k)
            position[rows] = offset + np.arange(n)
            values = w[rows]
            table, scales = layer._tables[name]
            if name == "fp16":
                table.assign(q.fp16_bits_np(values))
                continue
            bits = tier_precision(name)
            step = q.to_fp16_step_np(range_step_np(values, bits))
            table.assign(q.pack_codes_np(q.quantize_np(values, step[:, None], bits), bits))
            scales.assign(q.fp16_bits_np(step))
        if PRUNED in self.tiers:
            position[tier == self.tiers.index(PRUNED)] = position[self.oov_index]
        if layer.remap is not None:
            layer.remap.assign(position.astype(layer.remap.dtype))
        return layer

    # ------------------------------------------------------------------ forward

    def call(self, ids):
        ids = ops.cast(ids, "int32")
        if self.mode == "qat":
            return self._call_qat(ids)
        return self._call_inference(ids)

    def _call_qat(self, ids):
        tier = ops.cast(ops.take(self.tier, ids, axis=0), "int32")
        oov_tier = ops.cast(ops.take(self.tier, self.oov_index), "int32")
        if PRUNED in self.tiers:
            pruned = ops.equal(tier, self.tiers.index(PRUNED))
            ids = ops.where(pruned, self.oov_index, ids)
            tier = ops.where(pruned, oov_tier, tier)
        # The OOV row always ships in the first tier.
        tier = ops.where(ops.equal(ids, self.oov_index), 0, tier)
        rows = ops.take(self.embeddings, ids, axis=0)
        out = ops.zeros_like(rows)
        for k, name in enumerate(self.tiers):
            if name == PRUNED:
                continue
            mask = ops.expand_dims(ops.cast(ops.equal(tier, k), rows.dtype), -1)
            out = out + mask * self._fake_quant(rows, name)
        return out

    @staticmethod
    def _fake_quant(rows, name: str):
        """Tier ``name``'s rounding of ``rows`` with a straight-through gradient."""
        bits = tier_precision(name)
        if bits == 16:
            return rows + ops.stop_gradient(ops.cast(ops.cast(rows, "float16"), "float32") - rows)
        qn, qp = q.qrange(bits)
        step = ops.maximum(ops.max(rows, axis=-1, keepdims=True) / qp, ops.min(rows, axis=-1, keepdims=True) / qn)
        # The fp16 step that ships (as in finalize), so that training sees the final rows.
        step = ops.cast(ops.cast(ops.maximum(step, q.MIN_STEP), "float16"), "float32")
        step = ops.stop_gradient(ops.maximum(step, 2.0**-24))
        v = ops.clip(rows / step, float(qn), float(qp))
        return (v + ops.stop_gradient(ops.floor(v + 0.5) - v)) * step

    def _lookup_tier(self, name: str, local):
        table, scales = self._tables[name]
        if name == "fp16":
            with keras.name_scope("fp16_rows"):
                return q.fp16_bits_to_float(ops.take(table, local, axis=0))
        codes = ops.cast(ops.take(table, local, axis=0), "float32")
        codes = q.unpack_codes(codes, tier_precision(name), self.output_dim)
        return codes * q.fp16_scale_column(ops.take(scales, local, axis=0))

    def _call_inference(self, ids):
        if self.remap is None:
            pos = ids
        else:
            # The scope names the tensor in the .tflite (size reports tell remaps apart).
            with keras.name_scope("remap"):
                pos = ops.cast(ops.take(self.remap, ids, axis=0), "int32")
        stored = self.stored_tiers
        if len(stored) == 1:
            return self._lookup_tier(stored[0][1], pos)
        out = None
        for _, name, offset, n in stored:
            local = ops.clip(pos - offset, 0, n - 1)
            inside = ops.logical_and(ops.greater_equal(pos, offset), ops.less(pos, offset + n))
            part = ops.expand_dims(ops.cast(inside, "float32"), -1) * self._lookup_tier(name, local)
            out = part if out is None else out + part
        return out

    # ------------------------------------------------------------------ misc

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.output_dim)

    def byte_cost(self) -> dict[str, int]:
        """Exported bytes of the finalized form by part (``codes``, ``scales``, ``remap``,
        ``weights`` = fp16 rows), for the current tier assignment."""
        if self.mode == "qat" and not self.built:
            self.build()
        sizes = self.tier_counts() if self.mode == "inference" else np.bincount(
            self._effective_tiers(), minlength=len(self.tiers))
        return rowwise_byte_cost([int(n) for n in sizes], self.tiers, self.output_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "input_dim": self.input_dim,
            "output_dim": self.output_dim,
            "tiers": list(self.tiers),
            "fractions": None if self.fractions is None else list(self.fractions),
            "byte_budget": self.byte_budget,
            "gamma": self.gamma,
            "a_pos": self.a_pos,
            "a_neg": self.a_neg,
            "oov_index": self.oov_index,
            "mode": self.mode,
            "tier_sizes": None if self.tier_sizes is None else list(self.tier_sizes),
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
            "embeddings_regularizer": keras.regularizers.serialize(self.embeddings_regularizer),
        }
