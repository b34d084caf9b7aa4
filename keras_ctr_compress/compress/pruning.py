"""DeepLight pruning (sparse DeepFwFM) and structured pruning that shrinks the exported model.

DeepLight (Deng et al., WSDM 2021, arXiv 2002.06987) prunes a trained-while-pruning
DeepFwFM by magnitude. After ``warmup_epochs`` dense epochs, every ``frequency`` (10)
steps the target sparsity is ``S_t = S (1 - 0.99^(t / 100))`` (``t``: training steps
since the warm-up) and:

- each DNN Dense kernel is zeroed to ``S_t`` by its own magnitude threshold (biases
  and the 1-unit output layer are never pruned);
- all embedding tables share ONE global magnitude threshold, at ``S_t * emb_r``;
- the symmetric field-pair matrix ``r = (R + R^T) / 2`` is pruned to
  ``S_t * emb_corr`` by ``|r_fg|``, a pair as a whole (``R_fg`` and ``R_gf`` together).

:class:`DeepLightPruning` is that schedule as a Keras callback, in the authors' mode
(``"regrow"``: weights are zeroed at each prune and may regrow until the next one) or
with persistent masks (``"mask"``: re-applied after every step). :func:`strip_pruning`
returns the plain pruned model: zero field pairs become an explicit pair list, which
the :class:`~keras_ctr_compress.layers.FieldPairInteraction` gathers, so the FwFM term
costs O(kept pairs x dim) in the exported file too.

Unstructured zeros buy no speed on LiteRT (dense kernels, see shared/litert.md) and
no bytes in the plain ``.tflite``; :func:`sparsity_file_savings` reports the honest
gain (gzip of the file, and the converter's ``EXPERIMENTAL_SPARSITY`` format, which
must never be combined with dynamic-range quantisation: it gave wrong outputs).

:class:`StructuredPruning` turns sparsity into speed: on the same schedule it removes
whole DNN neurons (smallest L2 norm of their incoming weights) and whole field pairs;
:func:`strip_pruning` then rebuilds the Dense layers physically smaller (the next
layer's kernel rows go too), so the exported FULLY_CONNECTED ops are smaller.

Choices the paper leaves open, as taken here:

- Embedding pruning covers the ``emb_*`` tables (DeepLight prunes the embedding
  vectors, its ``fm_2nd_embeddings``); the 1-wide first-order ``lin_*`` tables are
  left dense unless ``include_linear=True``.
- "DNN" means every ``Dense`` layer with more than one unit (the authors prune every
  ``linear`` weight except the output ``fc``); pass ``dnn_layers`` to choose.
- Thresholds are exact counts: ``round(s * n)`` weights with the smallest magnitude
  are zeroed (the authors binary-search a threshold; ties make that approximate).
- The pair sparsity counts the ``F (F - 1) / 2`` off-diagonal pairs (the authors
  count all ``F^2`` entries of ``R``, the unused diagonal included).
- Besides every ``frequency`` steps, a prune also happens at the last step of each
  epoch (as in the authors' loop), so the weights evaluated at an epoch end are pruned.
- The schedule constants (0.99 and 100) are options: ``S_t`` reaches 99 % of ``S``
  only after 45,800 steps, two Criteo epochs but hundreds of epochs on small data.
  :func:`prune_deeplight` shortens ``decay_steps`` to fit its pruning epochs and snaps
  to exactly ``S`` at the end.
"""

from __future__ import annotations

import gzip
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from keras_ctr_compress.compress.swap import ensure_functional
from keras_ctr_compress.data.schema import CTRDataset
from keras_ctr_compress.layers.field_pair_interaction import FieldPairInteraction
from keras_ctr_compress.layers.split_fields import SplitFields

MODES = ("regrow", "mask")
#: DeepLight's schedule constants: S_t = S (1 - BASE^(t / DECAY_STEPS)).
SCHEDULE_BASE = 0.99
SCHEDULE_DECAY_STEPS = 100.0
#: DeepLight prunes every 10 steps.
PRUNE_FREQUENCY = 10
#: the authors' Criteo setting (log file of their reference run)
DEEPLIGHT_EMB_R = 0.444


# --------------------------------------------------------------------------- schedule


def check_sparsity(value, name: str = "target_sparsity") -> float:
    """Validates a sparsity: a number in ``[0, 1)`` (1 would remove everything)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1). Received: {name}={value!r}")
    return float(value)


def deeplight_sparsity(
    step: float,
    target: float,
    *,
    base: float = SCHEDULE_BASE,
    decay_steps: float = SCHEDULE_DECAY_STEPS,
) -> float:
    """DeepLight's sparsity at ``step`` steps after the warm-up: ``S (1 - base^(t / decay_steps))``.

    Args:
        step: training steps since the warm-up ended (``t >= 0``).
        target: the final sparsity ``S`` in ``[0, 1)``.
        base, decay_steps: the schedule's constants (0.99 and 100 in the paper).

    Returns:
        ``S_t``, rising from 0 at ``t = 0`` towards ``S``.
    """
    target = check_sparsity(target)
    if step < 0:
        raise ValueError(f"`step` must be >= 0. Received: {step!r}")
    if not 0.0 < base < 1.0:
        raise ValueError(f"`base` must be in (0, 1). Received: {base!r}")
    if not decay_steps > 0:
        raise ValueError(f"`decay_steps` must be positive. Received: {decay_steps!r}")
    return target * (1.0 - base ** (step / decay_steps))


def _check_ratio(value, name: str, target: float) -> float:
    """A sparsity ratio (``emb_r``, ``emb_corr``): >= 0 and ``value * target < 1``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value * target >= 1.0:
        raise ValueError(
            f"`{name}` must be a number >= 0 with {name} * target_sparsity < 1 "
            f"(target_sparsity={target}). Received: {name}={value!r}"
        )
    return float(value)


def decay_steps_to_reach(steps: int, *, share: float = 0.99, base: float = SCHEDULE_BASE) -> float:
    """The ``decay_steps`` for which ``S_t`` reaches ``share * S`` after ``steps`` steps."""
    if steps < 1:
        raise ValueError(f"`steps` must be >= 1. Received: {steps!r}")
    return steps * math.log(base) / math.log(1.0 - share)


# --------------------------------------------------------------------------- masks


def magnitude_keep_mask(values: np.ndarray, sparsity: float) -> np.ndarray:
    """Boolean mask keeping all but the ``round(sparsity * n)`` smallest ``|values|``.

    An exact count (ties broken by position), so the zero fraction is exactly the
    requested one whatever the values; already-zero entries are the first to go, so
    repeated prunes at a rising sparsity never revive a pruned weight.
    """
    values = np.asarray(values)
    n_prune = int(round(check_sparsity(sparsity, "sparsity") * values.size))
    keep = np.ones(values.size, bool)
    if n_prune > 0:
        flat = np.abs(values.reshape(-1))
        keep[np.argpartition(flat, n_prune - 1, kind="introselect")[:n_prune]] = False
    return keep.reshape(values.shape)


def global_keep_masks(arrays: Sequence[np.ndarray], sparsity: float) -> list[np.ndarray]:
    """:func:`magnitude_keep_mask` under ONE threshold over several arrays (all tables)."""
    if not arrays:
        return []
    flat = np.concatenate([np.asarray(a).reshape(-1) for a in arrays])
    keep = magnitude_keep_mask(flat, sparsity)
    out, start = [], 0
    for a in arrays:
        out.append(keep[start : start + a.size].reshape(a.shape))
        start += a.size
    return out


def pair_keep_mask(layer: FieldPairInteraction, sparsity: float) -> np.ndarray:
    """``F x F`` 0/1 mask of ``R`` keeping the pairs with the largest ``|r_fg|``.

    Only the layer's kept pairs compete; a pruned pair loses ``R_fg`` and ``R_gf``
    together (its symmetric weight is what the model uses). The diagonal is kept
    (it is never used) so that the mask does not count towards the sparsity.
    """
    pairs = layer.kept_pairs
    r = layer.pair_weight_matrix()
    values = np.array([r[i, j] for i, j in pairs], "float32")
    keep_pair = magnitude_keep_mask(values, sparsity) if pairs else np.zeros(0, bool)
    mask = np.ones((layer.num_fields, layer.num_fields), "float32")
    for (i, j), keep in zip(pairs, keep_pair, strict=True):
        if not keep:
            mask[i, j] = mask[j, i] = 0.0
    # pairs outside an explicit list are already gone: leave their R entries alone.
    return mask


def neuron_keep_mask(kernel: np.ndarray, sparsity: float) -> np.ndarray:
    """Boolean ``(units,)`` mask keeping the neurons with the largest incoming L2 norm.

    At least one neuron always stays (a layer of width 0 cannot be exported).
    """
    units = kernel.shape[-1]
    norms = np.linalg.norm(kernel.reshape(-1, units), axis=0)
    n_prune = min(int(round(check_sparsity(sparsity, "sparsity") * units)), units - 1)
    keep = np.ones(units, bool)
    if n_prune > 0:
        keep[np.argpartition(norms, n_prune - 1)[:n_prune]] = False
    return keep


# --------------------------------------------------------------------------- targets


def dense_layers(model: keras.Model) -> list[keras.layers.Dense]:
    """The DNN Dense layers DeepLight prunes: every ``Dense`` with more than one unit."""
    return [layer for layer in model.layers if isinstance(layer, keras.layers.Dense) and layer.units > 1]


def embedding_layers(model: keras.Model, *, include_linear: bool = False) -> list[keras.layers.Embedding]:
    """The ``keras.layers.Embedding`` tables pruned under one global threshold.

    Tables of width 1 (the first-order ``lin_*`` weights) only with ``include_linear``.
    """
    return [
        layer for layer in model.layers
        if isinstance(layer, keras.layers.Embedding) and (include_linear or layer.output_dim > 1)
    ]


def pair_layers(model: keras.Model) -> list[FieldPairInteraction]:
    """The FwFM field-pair layers (FM layers have no ``R`` to prune by magnitude)."""
    return [layer for layer in model.layers if isinstance(layer, FieldPairInteraction) and layer.mode == "fwfm"]


def _layers_by_name(model: keras.Model, names: Sequence[str], kind: type, what: str) -> list:
    out = []
    for name in names:
        try:
            layer = model.get_layer(name)
        except ValueError:
            raise ValueError(f"{what}: model {model.name!r} has no layer {name!r}") from None
        if not isinstance(layer, kind):
            raise ValueError(f"{what}: layer {name!r} is a {type(layer).__name__}, expected {kind.__name__}")
        out.append(layer)
    return out


def _consumers(model: keras.Model) -> dict[int, list[keras.layers.Layer]]:
    """Layers reading each layer's output, keyed by ``id(producer)`` (single-use layers)."""
    producer = {}
    for layer in model.layers:
        for t in keras.tree.flatten(layer.output):
            producer[id(t)] = layer
    out: dict[int, list] = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        for t in keras.tree.flatten(layer.input):
            src = producer.get(id(t))
            if src is not None:
                out.setdefault(id(src), []).append(layer)
    return out


_PASSTHROUGH = (keras.layers.Dropout, keras.layers.Activation)


def prunable_neuron_layers(model: keras.Model) -> list[keras.layers.Dense]:
    """Dense layers whose neurons can be removed physically.

    A layer qualifies when it has more than one unit and every path from its output
    reaches a ``Dense`` layer through only Dropout / Activation / Concatenate layers
    (whose consumers qualify the same way): then a removed neuron only takes a row
    out of the next kernel. The DNN hidden layers of the reference models qualify;
    DCNv2's cross layers (multiplied with the input) and output layers do not.
    """
    consumers = _consumers(model)

    def reaches_dense_only(layer) -> bool:
        users = consumers.get(id(layer), [])
        if not users:
            return False  # a model output: its width is part of the contract
        for user in users:
            if isinstance(user, keras.layers.Dense):
                continue
            if isinstance(user, (*_PASSTHROUGH, keras.layers.Concatenate)) and reaches_dense_only(user):
                continue
            return False
        return True

    return [layer for layer in dense_layers(model) if reaches_dense_only(layer)]


# --------------------------------------------------------------------------- callbacks


@dataclass
class _Target:
    """One variable under a mask. ``mask`` is float32 0/1 of the variable's shape."""

    variable: keras.Variable
    mask: object = None  # NumPy while computed, a backend tensor once applied
    group: str = ""


class _ScheduledPruning(keras.callbacks.Callback):
    """Shared machinery: DeepLight's schedule, step counting, regrow / mask modes."""

    def __init__(
        self,
        target_sparsity: float,
        *,
        warmup_epochs: int = 0,
        frequency: int = PRUNE_FREQUENCY,
        mode: str = "regrow",
        base: float = SCHEDULE_BASE,
        decay_steps: float = SCHEDULE_DECAY_STEPS,
        snap_to_target: bool = False,
    ):
        super().__init__()
        self.target_sparsity = check_sparsity(target_sparsity)
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"`warmup_epochs` must be an integer >= 0. Received: {warmup_epochs!r}")
        if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1:
            raise ValueError(f"`frequency` must be an integer >= 1. Received: {frequency!r}")
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}. Received: {mode!r}")
        deeplight_sparsity(0, self.target_sparsity, base=base, decay_steps=decay_steps)  # validates
        self.warmup_epochs = warmup_epochs
        self.frequency = frequency
        self.mode = mode
        self.base = base
        self.decay_steps = float(decay_steps)
        self.snap_to_target = bool(snap_to_target)
        #: training steps since the warm-up ended (``t`` of the schedule)
        self.step = 0
        #: ``(t, S_t)`` of every prune so far
        self.history: list[tuple[int, float]] = []
        self._epoch = 0
        self._targets: list[_Target] | None = None

    # -- the schedule
    def sparsity_at(self, step: float) -> float:
        return deeplight_sparsity(step, self.target_sparsity, base=self.base, decay_steps=self.decay_steps)

    @property
    def current_sparsity(self) -> float:
        """The sparsity of the latest prune (0 before the first)."""
        return self.history[-1][1] if self.history else 0.0

    # -- subclass hooks
    def _collect_targets(self) -> list[_Target]:
        raise NotImplementedError

    def _update_masks(self, targets: list[_Target], sparsity: float) -> None:
        raise NotImplementedError

    # -- Keras hooks
    def on_train_begin(self, logs=None):
        ensure_functional(self.model)
        self._targets = self._collect_targets()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self._epoch < self.warmup_epochs:
            return
        self.step += 1
        steps = (self.params or {}).get("steps")
        last_of_epoch = steps is not None and batch + 1 == steps
        if self.step % self.frequency == 0 or last_of_epoch:
            self.prune(self.sparsity_at(self.step))
        elif self.mode == "mask":
            self._apply_masks()

    def on_train_end(self, logs=None):
        if self.snap_to_target and self.step > 0:
            self.prune(self.target_sparsity)

    def prune(self, sparsity: float) -> None:
        """Recomputes the masks at ``sparsity`` from the current weights and applies them."""
        if self._targets is None:
            self._targets = self._collect_targets()
        self._update_masks(self._targets, float(sparsity))
        for t in self._targets:
            if t.mask is not None:  # one host-to-device copy per prune, not per step
                t.mask = keras.ops.convert_to_tensor(np.asarray(t.mask, "float32"))
        self._apply_masks()
        self.history.append((self.step, float(sparsity)))

    def _apply_masks(self) -> None:
        for t in self._targets or []:
            if t.mask is not None:
                t.variable.assign(keras.ops.multiply(t.variable, t.mask))


class DeepLightPruning(_ScheduledPruning):
    """DeepLight's magnitude pruning of a (Deep)FwFM as a Keras callback.

    After ``warmup_epochs`` dense epochs, every ``frequency`` steps (and at the last
    step of every epoch) the sparsity target is ``S_t = S (1 - base^(t / decay_steps))``
    with ``t`` the steps since the warm-up, and the callback zeroes by magnitude:
    each DNN Dense kernel to ``S_t`` (own threshold per kernel; biases and 1-unit
    output layers untouched), all embedding tables together to ``S_t * emb_r`` (one
    global threshold) and the FwFM pairs to ``S_t * emb_corr`` (a pair ``R_fg``,
    ``R_gf`` as a whole, ranked by ``|(R_fg + R_gf) / 2|``).

    References:
        - Deng et al., "DeepLight: Deep Lightweight Feature Interactions for
          Accelerating CTR Predictions in Ad Serving", WSDM 2021 (arXiv 2002.06987).
        - Zhu and Gupta, "To prune, or not to prune", 2017 (gradual magnitude pruning).

    Example:

    >>> cb = DeepLightPruning(0.9, warmup_epochs=2, emb_r=0.444, mode="mask")
    >>> model.fit(x, y, epochs=6, callbacks=[cb])  # doctest: +SKIP
    >>> plain = strip_pruning(model)  # doctest: +SKIP

    Args:
        target_sparsity: the final DNN sparsity ``S`` in ``[0, 1)``.
        warmup_epochs: dense epochs before pruning starts.
        emb_r: embedding sparsity as a share of ``S_t`` (0.444 in the authors' Criteo run).
        emb_corr: field-pair sparsity as a share of ``S_t`` (1.0 in the authors' run).
        mode: ``"regrow"`` (the authors' code: zero at each prune, pruned weights may
            regrow until the next prune) or ``"mask"`` (persistent masks re-applied
            after every training step).
        frequency: steps between prunes (10 in the paper).
        base, decay_steps: the schedule constants (0.99 and 100 in the paper).
        prune_dnn, prune_embeddings, prune_pairs: which parts to prune.
        include_linear: also prune the width-1 first-order tables (``lin_*``) under
            the embedding threshold (off: DeepLight prunes the embedding vectors).
        dnn_layers: names of the Dense layers to prune (default: every Dense layer
            with more than one unit).
        snap_to_target: prune once more at exactly ``S`` when training ends (so that a
            short schedule still ends at the requested sparsity).

    Attributes:
        step: training steps since the warm-up (``t``).
        history: ``(t, S_t)`` of every prune.
    """

    def __init__(
        self,
        target_sparsity: float = 0.9,
        *,
        warmup_epochs: int = 0,
        emb_r: float = 1.0,
        emb_corr: float = 1.0,
        mode: str = "regrow",
        frequency: int = PRUNE_FREQUENCY,
        base: float = SCHEDULE_BASE,
        decay_steps: float = SCHEDULE_DECAY_STEPS,
        prune_dnn: bool = True,
        prune_embeddings: bool = True,
        prune_pairs: bool = True,
        include_linear: bool = False,
        dnn_layers: Sequence[str] | None = None,
        snap_to_target: bool = False,
    ):
        super().__init__(
            target_sparsity, warmup_epochs=warmup_epochs, frequency=frequency, mode=mode,
            base=base, decay_steps=decay_steps, snap_to_target=snap_to_target,
        )
        self.emb_r = _check_ratio(emb_r, "emb_r", self.target_sparsity)
        self.emb_corr = _check_ratio(emb_corr, "emb_corr", self.target_sparsity)
        self.prune_dnn = prune_dnn
        self.prune_embeddings = prune_embeddings
        self.prune_pairs = prune_pairs
        self.include_linear = include_linear
        self.dnn_layers = None if dnn_layers is None else list(dnn_layers)

    def _collect_targets(self) -> list[_Target]:
        targets: list[_Target] = []
        if self.prune_dnn:
            layers = (dense_layers(self.model) if self.dnn_layers is None
                      else _layers_by_name(self.model, self.dnn_layers, keras.layers.Dense, "dnn_layers"))
            targets += [_Target(layer.kernel, group="dnn") for layer in layers]
        if self.prune_embeddings:
            tables = embedding_layers(self.model, include_linear=self.include_linear)
            targets += [_Target(layer.embeddings, group="embedding") for layer in tables]
        if self.prune_pairs:
            targets += [_Target(layer.r, group="pairs") for layer in pair_layers(self.model)]
        if not targets:
            raise ValueError(f"model {self.model.name!r} has nothing to prune (no Dense, Embedding or FwFM layer)")
        return targets

    def _update_masks(self, targets: list[_Target], sparsity: float) -> None:
        emb = [t for t in targets if t.group == "embedding"]
        emb_masks = global_keep_masks([keras.ops.convert_to_numpy(t.variable) for t in emb], sparsity * self.emb_r)
        for t, m in zip(emb, emb_masks, strict=True):
            t.mask = m.astype("float32")
        pair_owner = {id(layer.r): layer for layer in pair_layers(self.model)}
        for t in targets:
            if t.group == "dnn":
                t.mask = magnitude_keep_mask(keras.ops.convert_to_numpy(t.variable), sparsity).astype("float32")
            elif t.group == "pairs":
                t.mask = pair_keep_mask(pair_owner[id(t.variable)], sparsity * self.emb_corr)


class StructuredPruning(_ScheduledPruning):
    """Structured pruning on DeepLight's schedule: whole DNN neurons and field pairs.

    At every prune each eligible hidden Dense layer (see
    :func:`prunable_neuron_layers`) keeps the ``1 - S_t`` share of its neurons with
    the largest L2 norm of incoming weights; a removed neuron loses its kernel column
    and its bias, so its output is exactly 0 and :func:`strip_pruning` can delete it
    (and the next layer's kernel row) without changing the model's outputs. The FwFM
    pairs are pruned as in :class:`DeepLightPruning` at ``S_t * pair_ratio``.
    Embeddings are not touched (whole fields are SHARK's job, see
    :func:`keras_ctr_compress.compress.prune_fields`).

    Unlike unstructured zeros this shrinks the exported FULLY_CONNECTED ops, so the
    LiteRT latency drops (at 90 % of neurons removed a 400-400-400 DNN becomes
    40-40-40).

    References:
        - Deng et al., DeepLight, WSDM 2021 (arXiv 2002.06987): the schedule and pair pruning.
        - Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017 (norm-based
          structured pruning).

    Example:

    >>> cb = StructuredPruning(0.9, mode="mask")
    >>> model.fit(x, y, epochs=4, callbacks=[cb])  # doctest: +SKIP
    >>> small = strip_pruning(model)  # doctest: +SKIP

    Args:
        target_sparsity: final share of neurons removed per layer, in ``[0, 1)``.
        pair_ratio: field-pair sparsity as a share of ``S_t``.
        warmup_epochs, frequency, base, decay_steps, snap_to_target: as in
            :class:`DeepLightPruning`.
        mode: ``"mask"`` (default: removed neurons stay dead) or ``"regrow"``.
        neuron_layers: names of the Dense layers to thin (default: all eligible).
        prune_pairs: prune FwFM pairs too.
    """

    def __init__(
        self,
        target_sparsity: float = 0.9,
        *,
        pair_ratio: float = 1.0,
        warmup_epochs: int = 0,
        mode: str = "mask",
        frequency: int = PRUNE_FREQUENCY,
        base: float = SCHEDULE_BASE,
        decay_steps: float = SCHEDULE_DECAY_STEPS,
        neuron_layers: Sequence[str] | None = None,
        prune_pairs: bool = True,
        snap_to_target: bool = False,
    ):
        super().__init__(
            target_sparsity, warmup_epochs=warmup_epochs, frequency=frequency, mode=mode,
            base=base, decay_steps=decay_steps, snap_to_target=snap_to_target,
        )
        self.pair_ratio = _check_ratio(pair_ratio, "pair_ratio", self.target_sparsity)
        self.neuron_layers = None if neuron_layers is None else list(neuron_layers)
        self.prune_pairs = prune_pairs
        self._dense: list[keras.layers.Dense] = []

    def _collect_targets(self) -> list[_Target]:
        eligible = prunable_neuron_layers(self.model)
        if self.neuron_layers is None:
            self._dense = eligible
        else:
            self._dense = _layers_by_name(self.model, self.neuron_layers, keras.layers.Dense, "neuron_layers")
            bad = [layer.name for layer in self._dense if layer not in eligible]
            if bad:
                raise ValueError(
                    f"neuron_layers: {bad} cannot lose neurons physically (their outputs do not go only to "
                    "Dense layers through Dropout/Activation/Concatenate)"
                )
        targets = []
        for layer in self._dense:
            targets.append(_Target(layer.kernel, group="kernel"))
            if layer.use_bias:
                targets.append(_Target(layer.bias, group="bias"))
        if self.prune_pairs:
            targets += [_Target(layer.r, group="pairs") for layer in pair_layers(self.model)]
        if not targets:
            raise ValueError(f"model {self.model.name!r} has no hidden Dense layer or FwFM layer to prune")
        return targets

    def _update_masks(self, targets: list[_Target], sparsity: float) -> None:
        by_var = {id(t.variable): t for t in targets}
        for layer in self._dense:
            keep = neuron_keep_mask(keras.ops.convert_to_numpy(layer.kernel), sparsity).astype("float32")
            by_var[id(layer.kernel)].mask = np.broadcast_to(keep, layer.kernel.shape).copy()
            if layer.use_bias:
                by_var[id(layer.bias)].mask = keep
        for layer in pair_layers(self.model):
            if id(layer.r) in by_var:
                by_var[id(layer.r)].mask = pair_keep_mask(layer, sparsity * self.pair_ratio)


class KeepSparsity(keras.callbacks.Callback):
    """Holds the zeros of a pruned model during fine-tuning (TFMOT's masks, made static).

    At the start of training it records which weights of the pruning targets are
    exactly zero (DNN kernels, embedding tables, FwFM ``R``; see
    :class:`DeepLightPruning`) and re-zeroes them after every step, so fine-tuning
    cannot regrow them.

    Args:
        include_linear: also hold the first-order tables' zeros (off: DeepLight does
            not prune them, and their unseen rows are zero from initialisation).
    """

    def __init__(self, include_linear: bool = False):
        super().__init__()
        self.include_linear = include_linear
        self._targets: list[_Target] = []

    def on_train_begin(self, logs=None):
        variables = [layer.kernel for layer in dense_layers(self.model)]
        variables += [layer.embeddings for layer in embedding_layers(self.model, include_linear=self.include_linear)]
        variables += [layer.r for layer in pair_layers(self.model)]
        self._targets = []
        for v in variables:
            mask = keras.ops.convert_to_numpy(v) != 0
            if not mask.all():
                self._targets.append(_Target(v, keras.ops.convert_to_tensor(mask.astype("float32"))))

    def on_train_batch_end(self, batch, logs=None):
        for t in self._targets:
            t.variable.assign(keras.ops.multiply(t.variable, t.mask))


# --------------------------------------------------------------------------- reports


def sparsity_report(model: keras.Model, *, include_linear: bool = False) -> dict:
    """Zero fractions of the pruning targets.

    Returns:
        ``{"dnn": {layer: zero share of its kernel}, "embedding": zero share over all
        tables, "pairs": {layer: share of its F (F - 1) / 2 pairs not computed or
        with weight 0}, "neurons": {layer: units}, "nonzero_weights", "total_weights"}``.
    """
    out: dict = {"dnn": {}, "pairs": {}, "neurons": {}}
    for layer in dense_layers(model):
        k = keras.ops.convert_to_numpy(layer.kernel)
        out["dnn"][layer.name] = float(np.mean(k == 0))
        out["neurons"][layer.name] = int(layer.units)
    tables = [keras.ops.convert_to_numpy(t.embeddings) for t in embedding_layers(model, include_linear=include_linear)]
    n = sum(t.size for t in tables)
    out["embedding"] = float(sum(np.count_nonzero(t == 0) for t in tables) / n) if n else 0.0
    for layer in model.layers:
        if isinstance(layer, FieldPairInteraction):
            total = layer.num_fields * (layer.num_fields - 1) // 2
            out["pairs"][layer.name] = 1.0 - len(layer.surviving_pairs()) / total
    weights = [keras.ops.convert_to_numpy(w) for w in model.weights]
    out["nonzero_weights"] = int(sum(np.count_nonzero(w) for w in weights))
    out["total_weights"] = int(sum(w.size for w in weights))
    return out


def gzip_bytes(path: str | Path, level: int = 9) -> int:
    """Size of ``path`` after gzip (what zeros save in a download or a compressed bundle)."""
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=level))


def sparsity_file_savings(
    model: keras.Model,
    workdir: str | Path | None = None,
    *,
    quantization: str | None = None,
    check_x: np.ndarray | None = None,
) -> dict:
    """The honest on-device gain of unstructured zeros: file bytes only, never speed.

    Exports ``model`` twice with builtin ops only, as plain float32 and with the
    converter's ``EXPERIMENTAL_SPARSITY`` (zeros stored in a sparse format and
    DENSIFY-ed at load: no speed-up), and gzips both.

    Args:
        model: a (pruned) Keras model.
        workdir: where the files go (a temporary folder when None).
        quantization: must stay None: sparsity combined with dynamic-range
            quantisation (``Optimize.DEFAULT``) gave WRONG outputs under XNNPACK, so
            it is refused.
        check_x: id rows to check the sparse file's outputs against Keras (max abs
            difference reported).

    Returns:
        ``{"zero_fraction", "tflite_bytes", "tflite_gzip_bytes", "sparse_tflite_bytes",
        "sparse_tflite_gzip_bytes", "saved_bytes_gzip", "saved_bytes_sparse_format",
        "sparse_parity_max_abs" (when check_x is given)}``.

    Raises:
        ValueError: ``quantization`` is not None.
    """
    if quantization is not None:
        raise ValueError(
            f"sparsity cannot be combined with quantization={quantization!r}: the converter's "
            "EXPERIMENTAL_SPARSITY together with Optimize.DEFAULT gave wrong outputs under XNNPACK "
            "(shared/litert.md). Report sparsity savings on the float32 export only."
        )
    from keras_ctr_compress.export import check_parity, export_litert

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(workdir) if workdir is not None else Path(tmp)
        dense = export_litert(model, folder / "dense.tflite")
        sparse = export_litert(model, folder / "sparse.tflite", sparsity=True)
        weights = [keras.ops.convert_to_numpy(w) for w in model.weights]
        out = {
            "zero_fraction": float(sum(np.count_nonzero(w == 0) for w in weights) / sum(w.size for w in weights)),
            "tflite_bytes": dense.stat().st_size,
            "tflite_gzip_bytes": gzip_bytes(dense),
            "sparse_tflite_bytes": sparse.stat().st_size,
            "sparse_tflite_gzip_bytes": gzip_bytes(sparse),
        }
        out["saved_bytes_gzip"] = out["tflite_bytes"] - out["tflite_gzip_bytes"]
        out["saved_bytes_sparse_format"] = out["tflite_bytes"] - out["sparse_tflite_bytes"]
        if check_x is not None:
            out["sparse_parity_max_abs"] = check_parity(model, sparse, check_x, atol=float("inf"))
    return out


# --------------------------------------------------------------------------- rebuilding


@dataclass
class _Slots:
    """Which entries of the OLD tensor's axis ``axis`` the new tensor holds.

    ``const`` gives, for the removed entries, the value they always had at inference
    (a dead neuron's ``activation(bias)``; 0 for a removed field), so that the next
    Dense layer can fold it into its bias and stay exact.
    """

    kept: np.ndarray
    width: int
    const: np.ndarray
    axis: int = -1

    @classmethod
    def full(cls, width: int) -> _Slots:
        return cls(np.arange(width), width, np.zeros(width, "float32"))

    @property
    def removed(self) -> np.ndarray:
        return np.setdiff1d(np.arange(self.width), self.kept)


class _Rebuilder:
    """Rebuilds a functional model with fields, neurons or pairs physically removed.

    Walks the graph with :func:`keras.models.clone_model`'s ``call_function``; every
    layer is re-created from its config with copied weights, except those whose
    shapes change. Removed entries are tracked as :class:`_Slots` on the new tensors.
    """

    def __init__(
        self,
        model: keras.Model,
        *,
        kept_fields: Sequence[int] | None,
        kept_units: Mapping[str, np.ndarray],
        kept_pairs: Mapping[str, list[tuple[int, int]]],
        strip_masks: bool,
    ):
        self.model = model
        self.kept_fields = None if kept_fields is None else np.asarray(sorted(kept_fields), int)
        self.kept_units = dict(kept_units)
        self.kept_pairs = dict(kept_pairs)
        self.strip_masks = strip_masks
        self.slots: dict[int, _Slots] = {}
        self.dropped: set[int] = set()

    def run(self) -> keras.Model:
        ensure_functional(self.model)
        if len(self.model.inputs) != 1:
            raise ValueError(f"model {self.model.name!r} must have one input (the id matrix); it has "
                             f"{len(self.model.inputs)}")
        old_in = self.model.inputs[0]
        shape = old_in.shape[1:]
        if self.kept_fields is not None:
            shape = (len(self.kept_fields),)
        new_in = keras.Input(shape, dtype=old_in.dtype, name=old_in.name)
        new = keras.models.clone_model(
            self.model, input_tensors=new_in, clone_function=lambda layer: layer, call_function=self._call
        )
        for t in keras.tree.flatten(new.outputs):
            if id(t) in self.dropped or id(t) in self.slots:
                raise ValueError("the rebuild removed part of the model's output; keep more fields or units")
        return new

    # -- helpers
    def _placeholder(self, old_outputs):
        outs = []
        for t in keras.tree.flatten(old_outputs):
            ph = keras.KerasTensor(t.shape, dtype=t.dtype)
            self.dropped.add(id(ph))
            outs.append(ph)
        return outs if isinstance(old_outputs, (list, tuple)) else outs[0]

    @staticmethod
    def _clone(layer, config: dict | None = None):
        return layer.__class__.from_config(config if config is not None else layer.get_config())

    def _call_clone(self, layer, args, kwargs, config=None, weights=None):
        new = self._clone(layer, config)
        out = new(*args, **kwargs)
        weights = layer.get_weights() if weights is None else weights
        if weights:
            new.set_weights(weights)
        return out

    # -- the per-layer rule
    def _call(self, layer, *args, **kwargs):
        flat = keras.tree.flatten((args, kwargs))
        tensors = [t for t in flat if isinstance(t, keras.KerasTensor)]
        dropped = [id(t) in self.dropped for t in tensors]
        has_slots = any(id(t) in self.slots for t in tensors)
        if isinstance(layer, SplitFields) and self.kept_fields is not None:
            return self._split(layer, args[0])
        if isinstance(layer, keras.layers.Concatenate) and (has_slots or any(dropped)):
            return self._concatenate(layer, args[0])
        if tensors and all(dropped):
            return self._placeholder(layer.output)
        if any(dropped):
            if isinstance(layer, keras.layers.Add):
                kept = [t for t in args[0] if id(t) not in self.dropped]
                return self._call_clone(layer, (kept,), kwargs)
            raise ValueError(
                f"cannot remove fields feeding layer {layer.name!r} ({type(layer).__name__}): only "
                "Concatenate and Add layers may lose inputs"
            )
        if isinstance(layer, keras.layers.Dense) and (has_slots or layer.name in self.kept_units):
            return self._dense(layer, args[0])
        if isinstance(layer, FieldPairInteraction) and (
            has_slots or layer.name in self.kept_pairs or (self.strip_masks and layer.use_mask)
        ):
            return self._pairs(layer, args[0])
        if not has_slots:
            return self._call_clone(layer, args, kwargs)
        (x,) = tensors
        s = self.slots[id(x)]
        if isinstance(layer, keras.layers.Dropout):
            out = self._call_clone(layer, args, kwargs)
            self.slots[id(out)] = s
            return out
        if isinstance(layer, keras.layers.Activation):
            out = self._call_clone(layer, args, kwargs)
            const = np.asarray(keras.ops.convert_to_numpy(layer.activation(s.const)), "float32")
            self.slots[id(out)] = _Slots(s.kept, s.width, const, s.axis)
            return out
        if isinstance(layer, keras.layers.Reshape):
            return self._reshape(layer, x)
        raise ValueError(
            f"cannot rebuild layer {layer.name!r} ({type(layer).__name__}) on an input that lost "
            "fields or neurons; supported consumers: Dense, Dropout, Activation, Concatenate, "
            "Reshape (to fields x dim) and FieldPairInteraction"
        )

    def _split(self, layer, ids):
        new = SplitFields(len(self.kept_fields), name=layer.name)
        cols = new(ids)
        out = list(self._placeholder(layer.output))
        for new_pos, old_pos in enumerate(self.kept_fields):
            self.dropped.discard(id(out[old_pos]))
            out[old_pos] = cols[new_pos]
        return out

    def _concatenate(self, layer, inputs):
        old_inputs = keras.tree.flatten(layer.input)
        rank = len(old_inputs[0].shape)
        if layer.axis not in (-1, rank - 1):
            raise ValueError(f"cannot rebuild Concatenate {layer.name!r} on axis {layer.axis}: only the last axis")
        kept, const, live, offset = [], [], [], 0
        for old, new in zip(old_inputs, inputs, strict=True):
            width = int(old.shape[-1])
            if id(new) in self.dropped:
                s = _Slots(np.arange(0), width, np.zeros(width, "float32"))
            else:
                s = self.slots.get(id(new), _Slots.full(width))
                live.append(new)
            kept.append(offset + s.kept)
            const.append(s.const)
            offset += width
        if not live:
            return self._placeholder(layer.output)
        out = self._call_clone(layer, (live,), {})
        self.slots[id(out)] = _Slots(np.concatenate(kept), offset, np.concatenate(const))
        return out

    def _reshape(self, layer, x):
        s = self.slots[id(x)]
        target = tuple(layer.target_shape)
        if len(target) != 2 or s.axis != -1 or s.width != target[0] * target[1]:
            raise ValueError(f"cannot rebuild Reshape {layer.name!r} to {target} on a pruned input")
        dim = target[1]
        fields = np.unique(s.kept // dim)
        whole = (fields[:, None] * dim + np.arange(dim)).reshape(-1)
        if not np.array_equal(np.sort(s.kept), whole) or np.any(s.const[s.removed] != 0):
            raise ValueError(f"Reshape {layer.name!r}: removed entries are not whole fields of width {dim}")
        config = {**layer.get_config(), "target_shape": (len(fields), dim)}
        out = self._call_clone(layer, (x,), {}, config=config)
        self.slots[id(out)] = _Slots(fields, target[0], np.zeros(target[0], "float32"), axis=1)
        return out

    def _dense(self, layer, x):
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        bias = keras.ops.convert_to_numpy(layer.bias) if layer.use_bias else np.zeros(layer.units, "float32")
        s = self.slots.get(id(x))
        if s is not None:
            if s.axis != -1 or len(x.shape) != 2:
                raise ValueError(f"cannot rebuild Dense {layer.name!r} on a pruned {len(x.shape)}-D input")
            # Removed inputs were constant: their contribution moves into the bias.
            bias = bias + s.const[s.removed] @ kernel[s.removed]
            kernel = kernel[s.kept]
        units = self.kept_units.get(layer.name)
        if units is None:
            units = np.arange(layer.units)
        if len(units) == 0:
            raise ValueError(f"layer {layer.name!r}: cannot remove every neuron")
        # What a removed (dead) neuron outputs at inference: activation of its bias.
        const = np.asarray(keras.ops.convert_to_numpy(layer.activation(bias.astype("float32"))), "float32")
        config = {**layer.get_config(), "units": int(len(units))}
        weights = [kernel[:, units]] + ([bias[units]] if layer.use_bias else [])
        if not layer.use_bias and np.any(bias != 0):
            raise ValueError(f"layer {layer.name!r} has no bias to absorb its removed inputs' constants")
        out = self._call_clone(layer, (x,), {}, config=config, weights=weights)
        if len(units) < layer.units:
            self.slots[id(out)] = _Slots(np.asarray(units), layer.units, const)
        return out

    def _pairs(self, layer: FieldPairInteraction, v):
        s = self.slots.get(id(v))
        fields = np.arange(layer.num_fields) if s is None else s.kept
        if s is not None and s.axis != 1:
            raise ValueError(f"FieldPairInteraction {layer.name!r}: input lost entries inside a field")
        pos = {int(f): i for i, f in enumerate(fields)}
        pairs = self.kept_pairs.get(layer.name)
        # A layer over all pairs keeps its closed form over the remaining fields.
        explicit = pairs is not None or layer.pairs is not None
        if pairs is None:
            pairs = layer.kept_pairs
        new_pairs = [(pos[i], pos[j]) for i, j in pairs if i in pos and j in pos]
        if len(fields) < 2:
            raise ValueError(f"FieldPairInteraction {layer.name!r} needs at least 2 fields; {len(fields)} would remain")
        use_mask = layer.use_mask and not self.strip_masks
        if not explicit and not use_mask:
            new_pairs = None  # all pairs: keep the closed form
        config = {**layer.get_config(), "num_fields": int(len(fields)), "pairs": new_pairs, "use_mask": use_mask}
        weights = []
        if layer.mode == "fwfm":
            weights.append(keras.ops.convert_to_numpy(layer.r)[np.ix_(fields, fields)])
        if use_mask:
            weights.append(keras.ops.convert_to_numpy(layer.pair_mask)[np.ix_(fields, fields)])
        return self._call_clone(layer, (v,), {}, config=config, weights=weights)


def rebuild_model(
    model: keras.Model,
    *,
    kept_fields: Sequence[int] | None = None,
    kept_units: Mapping[str, Sequence[int]] | None = None,
    kept_pairs: Mapping[str, Sequence[tuple[int, int]]] | None = None,
    strip_masks: bool = False,
) -> keras.Model:
    """A copy of ``model`` with fields, neurons and field pairs physically removed.

    The original model is not modified. Removed neurons must be dead for the copy to
    be exact: a removed neuron's output is taken to be ``activation(bias)`` and is
    folded into the next layer's bias (exact when its incoming weights are zero).

    Args:
        model: a functional model with one id-matrix input (the reference models).
        kept_fields: input columns to keep (sorted; the new ``ids`` input has these
            columns in order). Their lookup layers stay; the others' tables and
            first-layer weight rows go.
        kept_units: ``{Dense layer name: indices of the units to keep}``; the next
            Dense layer loses the matching kernel rows.
        kept_pairs: ``{FieldPairInteraction name: pairs to compute}`` (old field indices).
        strip_masks: drop the layers' pair masks (their zeros must already be in ``kept_pairs``).
    """
    kept_units = {k: np.asarray(sorted(v), int) for k, v in (kept_units or {}).items()}
    kept_pairs = {k: [tuple(map(int, p)) for p in v] for k, v in (kept_pairs or {}).items()}
    for name in [*kept_units, *kept_pairs]:
        model.get_layer(name)  # clear error for unknown names
    return _Rebuilder(model, kept_fields=kept_fields, kept_units=kept_units, kept_pairs=kept_pairs,
                      strip_masks=strip_masks).run()


def dead_neurons(model: keras.Model) -> dict[str, np.ndarray]:
    """``{layer: kept units}`` for the removable Dense layers that have dead neurons
    (an all-zero kernel column: the neuron's output is the constant ``activation(bias)``)."""
    out = {}
    for layer in prunable_neuron_layers(model):
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        alive = np.flatnonzero(np.any(kernel != 0, axis=0))
        if len(alive) == 0:
            alive = np.array([0])  # keep one neuron: an empty layer does not export
        if len(alive) < layer.units:
            out[layer.name] = alive
    return out


def strip_pruning(model: keras.Model, *, remove_dead_neurons: bool = True) -> keras.Model:
    """The plain pruned model: masks applied and removed, dead parts physically gone.

    - every :class:`~keras_ctr_compress.layers.FieldPairInteraction` computes only its
      surviving pairs (non-zero ``r_fg`` and pair mask) through an explicit pair list,
      so the export gathers only those pairs (a layer with no pair pruned keeps its
      closed form);
    - with ``remove_dead_neurons`` the hidden Dense neurons whose incoming weights are
      all zero (what :class:`StructuredPruning` leaves) are deleted, with the next
      layer's kernel rows; their constant output ``activation(bias)`` moves into the
      next bias, so the outputs are unchanged.

    Unstructured zeros stay as zeros in the dense kernels and tables (they only save
    bytes after compression: :func:`sparsity_file_savings`). The result has no
    pruning state and saves / loads as a plain ``.keras`` model. ``model`` itself is
    left untouched.
    """
    ensure_functional(model)
    kept_pairs = {}
    for layer in model.layers:
        if isinstance(layer, FieldPairInteraction):
            surviving = layer.surviving_pairs()
            if len(surviving) < len(layer.kept_pairs) or layer.use_mask:
                kept_pairs[layer.name] = surviving
    kept_units = dead_neurons(model) if remove_dead_neurons else {}
    return rebuild_model(model, kept_units=kept_units, kept_pairs=kept_pairs, strip_masks=True)


def copy_model(model: keras.Model) -> keras.Model:
    """An independent copy (new layers and variables, same weights)."""
    ensure_functional(model)
    new = keras.models.clone_model(model)
    new.set_weights(model.get_weights())
    return new


# --------------------------------------------------------------------------- recipes


def prune_deeplight(
    model: keras.Model,
    data: CTRDataset,
    *,
    target_sparsity: float = 0.9,
    emb_r: float = DEEPLIGHT_EMB_R,
    emb_corr: float = 1.0,
    structured: bool = False,
    mode: str = "mask",
    prune_epochs: int = 4,
    finetune_epochs: int = 3,
    batch_size: int = 1024,
    learning_rate: float = 1e-3,
    finetune_learning_rate: float = 1e-4,
    decay_steps: float | str = "auto",
    seed: int = 0,
    verbose: int = 0,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> tuple[keras.Model, dict]:
    """DeepLight on a trained model: prune on the schedule, strip, fine-tune with zeros held.

    1. A copy of ``model`` trains ``prune_epochs`` epochs with :class:`DeepLightPruning`
       (``structured=False``: the paper's unstructured setting) or
       :class:`StructuredPruning` (``structured=True``: neurons and pairs, sparsity
       ``target_sparsity`` for neurons and ``target_sparsity * emb_corr`` for pairs),
       no warm-up (the model is already trained), then one prune at exactly the target.
    2. :func:`strip_pruning` (pair lists; structured: smaller Dense layers).
    3. Fine-tuning (early stopping on exact validation AUC, best weights kept) with
       :class:`KeepSparsity` holding the unstructured zeros.

    ``decay_steps="auto"`` uses the paper's 100 when the pruning phase is long enough
    for ``S_t`` to reach 99 % of the target within 80 % of its steps, and a shorter
    constant otherwise (small datasets).

    Returns:
        the pruned, fine-tuned model and a report: sparsities, schedule, validation
        AUC after each phase, seconds.
    """
    from keras_ctr_compress.models.training import (
        ValidationAUC,
        compile_model,
        evaluate,
        train_model,
    )

    if isinstance(prune_epochs, bool) or not isinstance(prune_epochs, int) or prune_epochs < 1:
        raise ValueError(f"`prune_epochs` must be an integer >= 1. Received: {prune_epochs!r}")
    if isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, int) or finetune_epochs < 0:
        raise ValueError(f"`finetune_epochs` must be an integer >= 0. Received: {finetune_epochs!r}")
    t0 = time.perf_counter()
    keras.utils.set_random_seed(seed)
    work = copy_model(model)
    steps = prune_epochs * math.ceil(len(data.train) / batch_size)
    if decay_steps == "auto":
        decay_steps = min(SCHEDULE_DECAY_STEPS, decay_steps_to_reach(max(1, int(0.8 * steps))))
    common = dict(mode=mode, decay_steps=float(decay_steps), snap_to_target=True)
    if structured:
        pruner: _ScheduledPruning = StructuredPruning(target_sparsity, pair_ratio=emb_corr, **common)
    else:
        pruner = DeepLightPruning(target_sparsity, emb_r=emb_r, emb_corr=emb_corr, **common)
    compile_model(work, learning_rate)
    hist = work.fit(
        data.train.x, data.train.y, batch_size=batch_size, epochs=prune_epochs, shuffle=True,
        callbacks=[pruner, ValidationAUC(data.valid), *callbacks], verbose=verbose,
    )
    pruned_auc = evaluate(work, data.valid, where="validation split")["auc"]
    stripped = strip_pruning(work)
    report = {
        "method": "deeplight-structured" if structured else "deeplight",
        "target_sparsity": target_sparsity, "emb_r": emb_r, "emb_corr": emb_corr, "mode": mode,
        "decay_steps": float(decay_steps), "prune_steps": pruner.step, "prune_epochs": prune_epochs,
        "prune_history_val_auc": [float(a) for a in hist.history.get("val_auc", [])],
        "val_auc_pruned": pruned_auc,
    }
    if finetune_epochs:
        from keras_ctr_compress.models.training import TrainConfig

        cfg = TrainConfig(epochs=finetune_epochs, batch_size=batch_size, learning_rate=finetune_learning_rate,
                          patience=1, seed=seed, verbose=verbose, lr_decays=0)
        before = stripped.get_weights()
        summary = train_model(stripped, data.train, data.valid, cfg, callbacks=[KeepSparsity(), *callbacks])
        report["val_auc_finetuned"] = summary["best_val_auc"]
        report["finetune_epochs_run"] = summary["epochs"]
        if not summary["best_val_auc"] > pruned_auc:
            # fine-tuning never makes the result worse than the stripped model
            stripped.set_weights(before)
            report["val_auc_finetuned"] = pruned_auc
    report["sparsity"] = sparsity_report(stripped)
    report["seconds"] = time.perf_counter() - t0
    return stripped, report


__all__ = [
    "DEEPLIGHT_EMB_R",
    "MODES",
    "DeepLightPruning",
    "KeepSparsity",
    "StructuredPruning",
    "copy_model",
    "dead_neurons",
    "deeplight_sparsity",
    "decay_steps_to_reach",
    "global_keep_masks",
    "gzip_bytes",
    "magnitude_keep_mask",
    "neuron_keep_mask",
    "prunable_neuron_layers",
    "prune_deeplight",
    "rebuild_model",
    "sparsity_file_savings",
    "sparsity_report",
    "strip_pruning",
]
