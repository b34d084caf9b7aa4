"""QuantizedEmbedding: ALPT's low-precision embedding table (QAT, LPT and packed inference)."""

from __future__ import annotations

import math
import numbers

import keras
import numpy as np
from keras import ops

from keras_ctr_compress.layers import quant_ops as q

MODES = ("qat", "lpt", "inference")
OPTIMIZERS = ("sgd", "adagrad")
STEP_OPTIMIZERS = ("adam", "sgd")
# Rows processed at once when a table is (re)quantised in NumPy: bounds the float copy
# of a 10M-row table to a few MB.
_CHUNK_ROWS = 65536
_ADAM_BETA1, _ADAM_BETA2, _ADAM_EPSILON = 0.9, 0.999, 1e-8


def quantized_embedding_byte_cost(
    input_dim: int, output_dim: int, bits: int, granularity: str = "row"
) -> dict[str, int]:
    """Exported bytes of a finalized ``QuantizedEmbedding`` by part.

    ``codes``: ``rows x ceil(dim / k)`` int8 bytes (``k`` = 1, 2, 4 codes per byte at
    8, 4, 2 bits); ``scales``: 2 bytes per row (fp16) or 4 bytes per table (float32);
    ``remap`` and ``weights`` (float rows) are 0.
    """
    scales = 2 * input_dim if granularity == "row" else 4
    return {
        "codes": q.code_bytes(input_dim, output_dim, bits),
        "scales": scales,
        "remap": 0,
        "weights": 0,
    }


def lpt_training_bytes(
    input_dim: int,
    output_dim: int,
    granularity: str = "row",
    optimizer: str = "adagrad",
    learn_step: bool = True,
    step_optimizer: str = "adam",
    decay_counter: bool = False,
) -> dict[str, int]:
    """Bytes the table of an ``lpt`` layer holds during training, by part.

    ``codes``: 1 byte per weight (int8); ``step``: 4 bytes per row (or per table);
    ``optimizer``: 0 for SGD, 4 bytes per row for row-wise Adagrad; ``step_optimizer``:
    8 bytes per step size for Adam (two moments), 0 for SGD; ``decay_counter``: 4 bytes
    per row (the int32 step of the row's last update) where skipped rows get the L2
    decay (``skipped_row_decay``). For comparison a float32 table trained with Adam
    holds 12 bytes per weight (value + two moments).
    """
    steps = input_dim if granularity == "row" else 1
    return {
        "codes": input_dim * output_dim,
        "step": 4 * steps,
        "optimizer": 4 * input_dim if optimizer == "adagrad" else 0,
        "step_optimizer": 8 * steps if learn_step and step_optimizer == "adam" else 0,
        "decay_counter": 4 * input_dim if decay_counter else 0,
    }


def l2_coefficient(regularizer) -> float:
    """The L2 coefficient of a Keras regulariser (``L2``, or ``L1L2``'s ``l2``); 0 for
    none or any other regulariser."""
    if isinstance(regularizer, (keras.regularizers.L2, keras.regularizers.L1L2)):
        return float(regularizer.l2)
    return 0.0


def _check_choice(name: str, value, choices, layer: str) -> str:
    if value not in choices:
        raise ValueError(f"layer {layer!r}: `{name}` must be one of {choices}. Received: {name}={value!r}")
    return value


def _check_positive_int(name: str, value, layer: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"layer {layer!r}: `{name}` must be a positive integer. Received: {name}={value!r}")
    return int(value)


def _check_positive_float(name: str, value, layer: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"layer {layer!r}: `{name}` must be a positive number. Received: {name}={value!r}")
    return float(value)


@keras.saving.register_keras_serializable(package="keras_ctr_compress")
class QuantizedEmbedding(keras.layers.Layer):
    """Embedding table quantised to ``bits`` bits with a learnable step size (ALPT).

    Each weight is ``w = D * c`` with an integer code ``c`` in ``[Qn, Qp] =
    [-2^(bits-1), 2^(bits-1) - 1]`` and a step size ``D > 0`` per row
    (``granularity="row"``) or per table (``"table"``). Three modes (states):

    * ``"qat"``: quantisation-aware training. A float32 shadow table is trained by the
      model's optimizer and fake-quantised in the forward pass
      (``D * round(clip(w / D, Qn, Qp))``, straight-through gradients; ``rounding``
      is used in training, the deterministic round at inference). With
      ``learn_step=True`` the step is a trainable weight with the LSQ gradient
      (``dq/dD = round(v) - v`` inside the range, ``Qn`` / ``Qp`` outside) scaled by
      ``g = 1 / sqrt(B d Qp)`` (``B`` ids in the batch); the effective step is
      ``max(|D|, 2^-20)``, so it stays positive, and row steps are rounded to the
      fp16 value that ships (straight through), so :meth:`finalize` is exact.
    * ``"lpt"``: low-precision training, ALPT proper. The table variable is int8
      codes (``dtype="int8"``, not trainable by Keras' optimizer) during training.
      Every training step, for the rows looked up in the batch only: (1) the
      forward pass uses the dequantised rows ``D * c``; (2) the backward pass yields
      their gradient ``G`` (duplicate ids summed) and the table optimizer computes
      full-precision rows ``w' = D c - lr G`` (``"sgd"``) or
      ``w' = D c - lr G / (sqrt(a) + eps)`` with ``a += mean_j G_j^2`` (row-wise
      Adagrad, one accumulator per row); (3) with ``learn_step=True`` the step takes
      one step of its own optimizer (Adam by default, ``step_learning_rate``) on the
      LSQ gradient of ``q = Q_det(w'; D)``, ``sum_j G_j dq_j/dD * g``; (4) the rows are
      stored back as ``clip(round(w' / D), Qn, Qp)`` with ``rounding``
      (``floor(v + u)`` for stochastic, ``floor(v + 0.5)`` for deterministic).
    * ``"inference"``: the exportable form made by :meth:`finalize`: codes packed two
      per byte at 3-4 bits and four per byte at 2 bits (int8 at 5-8 bits), row scales
      as fp16 bit patterns in an int16 vector (a table scale as one float32). The
      lookup exports as GATHER, CAST, FLOOR / MUL / SUB (unpacking), BITCAST and MUL:
      builtins only, 0.25 to 1 byte per weight plus 2 bytes per row.

    How ``lpt`` trains inside ``model.fit``: the lookup is wrapped in a
    ``tf.custom_gradient`` whose backward function applies steps (2)-(4) to the
    layer's own variables and returns a zero gradient to a scalar trainable
    ``lpt_anchor`` weight (which exists only so that the tape differentiates through
    the lookup: the int8 table is not trainable). This needs no custom ``train_step``,
    optimizer wrapper or model class, so any functional model, compiled optimizer,
    callback (EarlyStopping's weight restoring included) and custom training loop
    works; under ``tf.distribute`` the row gradients are all-gathered across
    replicas and every replica applies the same update (state variables use
    ``aggregation="only_first_replica"``). The anchor's zero gradient is computed
    from rows read after the update, which keeps TF's graph optimiser from pruning
    the update (a constant zero gradient lets it drop the side effect). Caveats:
    this mode needs the TensorFlow backend, disables XLA for the layer, and a tape
    that differentiates the loss twice applies the update twice. Step (3) uses the
    upstream gradient ``dL/d(D c)`` of this step as ``dL/dq`` (``q`` differs from
    ``D c`` by one optimizer step), so each training step costs one forward and one
    backward pass instead of the two forward passes of a literal reading of ALPT.
    The layer's ``embeddings_regularizer`` is applied to the rows looked up in the
    batch (its gradient joins ``G``). A float table under a Keras regulariser is
    decayed every step, looked up or not, and that decay is most of what
    regularises rare rows; with ``skipped_row_decay=True`` (default) the L2 part
    (``L2``, or ``L1L2``'s ``l2``) reaches the rows a step skips too, lazily, as in
    FBGEMM's counter-based weight decay: each row keeps the step of its last update
    (``last_update``, int32) and is read as ``D c f^k`` with ``k`` the steps since
    then and ``f = 1 - 2 l2 eta`` its per-step decay (``eta`` the row's current
    learning rate: ``lr`` for SGD, ``lr / (sqrt(a) + eps)`` for row-wise Adagrad),
    which is what ``k`` steps of the L2 gradient alone do to it. Forward passes
    (training and evaluation) read the decayed rows; an update first materialises
    the decay, then steps (2)-(4) follow, so nothing dense runs per step.
    (Measured, frappe DeepFM, 4-bit QAT, 10 epochs: the L2 on looked-up rows only
    gives validation AUC 0.9779 against 0.9804 with the whole table decayed.)

    Training memory of the table (see :func:`lpt_training_bytes`): codes 1 byte per
    weight; step 4 bytes per row (or per table); ``"sgd"`` no optimizer state,
    ``"adagrad"`` 4 bytes per row; the step's Adam 8 bytes per step size; the decay
    counter 4 bytes per row (only with an L2 regulariser and ``skipped_row_decay``).
    A float32 table trained with Adam costs 12 bytes per weight: for ``d = 16`` that
    is 192 bytes per row against 16 + 4 + 4 + 8 (+ 4) = 32 (36) for ``lpt`` with
    row-wise Adagrad.

    References:
        - Li et al., "Adaptive Low-Precision Training for Embeddings in
          Click-Through Rate Prediction", AAAI 2023 (arXiv 2212.05735).
        - Esser et al., "Learned Step Size Quantization", ICLR 2020 (LSQ).
        - Gupta et al., "Deep Learning with Limited Numerical Precision", ICML 2015
          (stochastic rounding).

    Example:

    >>> layer = QuantizedEmbedding(1000, 16, bits=4, mode="lpt")
    >>> tuple(layer(np.array([3, 999])).shape)
    (2, 16)
    >>> layer.finalize().byte_cost()
    {'codes': 8000, 'scales': 2000, 'remap': 0, 'weights': 0}

    Args:
        input_dim: number of rows (ids) of the table.
        output_dim: embedding dimension ``d``.
        bits: code width, an integer in ``[2, 8]``.
        granularity: ``"row"`` (one step per row) or ``"table"`` (one step).
        rounding: ``"stochastic"`` or ``"deterministic"``: how ``lpt`` stores the
            updated rows, and how ``qat`` rounds in the training forward pass.
        learn_step: learn the step size (LSQ); ``False`` keeps the calibrated step.
        mode: ``"qat"``, ``"lpt"`` or ``"inference"`` (see above).
        optimizer: ``lpt`` table optimizer, ``"sgd"`` or ``"adagrad"`` (row-wise).
        learning_rate: ``lpt`` table learning rate (default 0.05: the best of 0.01,
            0.05 and 0.1 for row-wise Adagrad on frappe DeepFM, 8 bits, 10 epochs,
            validation AUC 0.9775 after 20 epochs at 0.01, 0.9815 / 0.9800 after
            10 at 0.05 / 0.1; at 4 and 2 bits 0.1 or 0.2 wins with the full 40-epoch
            recipe, by method, see ``LPT_TABLE_LR`` in
            ``keras_ctr_compress.bench.quant_methods``).
            Multiplied by ``learning_rate_scale``
            (:meth:`set_learning_rate_scale`), which learning-rate decay lowers.
        step_learning_rate: ``lpt`` step-size learning rate (ALPT: 1e-6 to 2e-5
            with Adam; ``kcc bench`` uses 3e-6 at 4 bits, ``ALPT_STEP_LR`` in
            ``keras_ctr_compress.bench.quant_methods``), also multiplied by
            ``learning_rate_scale``. In ``qat`` mode
            the model's optimizer trains the step.
        step_optimizer: ``lpt`` step-size optimizer, ``"adam"`` or ``"sgd"``.
        step_init: ``"lsq"`` (``D0 = 2 mean|w| / sqrt(Qp)``) or ``"mse"`` (the step
            with the least squared error); used when the layer is built and by
            :meth:`set_float_weights`.
        epsilon: Adagrad's epsilon.
        embeddings_initializer: initialiser of the float table (``lpt``: quantised
            as it is drawn, 65,536 rows at a time; the table step is calibrated on
            the first chunk).
        embeddings_regularizer: regulariser of the float table (``qat``) or of the
            looked-up rows (``lpt``, see above).
        skipped_row_decay: ``lpt`` only: the regulariser's L2 part also decays the
            rows a step does not look up, lazily (see above). ``False``: it acts on
            looked-up rows only.
        seed: seed of the stochastic rounding.

    Input shape:
        int ids of any shape ``s``, values in ``[0, input_dim)``.

    Output shape:
        ``s + (output_dim,)`` float32.
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        bits: int = 8,
        granularity: str = "row",
        rounding: str = "stochastic",
        learn_step: bool = True,
        mode: str = "qat",
        optimizer: str = "adagrad",
        learning_rate: float = 0.05,
        step_learning_rate: float = 1e-5,
        step_optimizer: str = "adam",
        step_init: str = "lsq",
        epsilon: float = 1e-8,
        embeddings_initializer="uniform",
        embeddings_regularizer=None,
        skipped_row_decay: bool = True,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        name = self.name
        self.input_dim = _check_positive_int("input_dim", input_dim, name)
        self.output_dim = _check_positive_int("output_dim", output_dim, name)
        self.bits = q.check_bits(bits, f"layer {name!r}")
        self.granularity = _check_choice("granularity", granularity, q.GRANULARITIES, name)
        self.rounding = _check_choice("rounding", rounding, q.ROUNDINGS, name)
        if not isinstance(learn_step, bool):
            raise ValueError(f"layer {name!r}: `learn_step` must be True or False. Received: {learn_step!r}")
        self.learn_step = learn_step
        self.mode = _check_choice("mode", mode, MODES, name)
        self.optimizer = _check_choice("optimizer", optimizer, OPTIMIZERS, name)
        self.learning_rate = _check_positive_float("learning_rate", learning_rate, name)
        self.step_learning_rate = _check_positive_float("step_learning_rate", step_learning_rate, name)
        self.step_optimizer = _check_choice("step_optimizer", step_optimizer, STEP_OPTIMIZERS, name)
        self.step_init = _check_choice("step_init", step_init, q.STEP_INITS, name)
        self.epsilon = _check_positive_float("epsilon", epsilon, name)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.embeddings_regularizer = keras.regularizers.get(embeddings_regularizer)
        if not isinstance(skipped_row_decay, bool):
            raise ValueError(
                f"layer {name!r}: `skipped_row_decay` must be True or False. Received: {skipped_row_decay!r}"
            )
        self.skipped_row_decay = skipped_row_decay
        # The per-step decay of a skipped row is 1 - 2 * l2 * eta (lpt only).
        self._decay_l2 = l2_coefficient(self.embeddings_regularizer) if skipped_row_decay and mode == "lpt" else 0.0
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise ValueError(f"layer {name!r}: `seed` must be an integer or None. Received: {seed!r}")
        self.seed = seed
        # np.random is seeded by keras.utils.set_random_seed: reproducible runs.
        self._rounding_seed = int(seed) if seed is not None else int(np.random.randint(0, 2**31 - 1))
        if self.mode == "lpt":
            if keras.backend.backend() != "tensorflow":
                raise ValueError(
                    f"layer {name!r}: mode='lpt' trains through tf.custom_gradient and needs the "
                    f"TensorFlow backend; the backend is {keras.backend.backend()!r}. Use mode='qat'."
                )
            # tf.unique (dynamic shapes) has no XLA kernel.
            self.supports_jit = False
        self.qn, self.qp = q.qrange(self.bits)
        self.autocast = False
        self.seed_generator = (
            keras.random.SeedGenerator(self._rounding_seed)
            if self.mode == "qat" and self.rounding == "stochastic"
            else None
        )

    # ------------------------------------------------------------------ build

    @property
    def _step_shape(self) -> tuple[int, ...]:
        return (self.input_dim,) if self.granularity == "row" else ()

    @property
    def packed_width(self) -> int:
        """Bytes per row of the packed codes (``inference`` mode)."""
        return q.packed_width(self.output_dim, self.bits)

    def build(self, input_shape=None):
        if self.mode == "qat":
            self._build_qat()
        elif self.mode == "lpt":
            self._build_lpt()
        else:
            self._build_inference()
        self.built = True

    def _build_qat(self):
        self.embeddings = self.add_weight(
            name="embeddings", shape=(self.input_dim, self.output_dim),
            initializer=self.embeddings_initializer, regularizer=self.embeddings_regularizer,
        )
        table = keras.ops.convert_to_numpy(self.embeddings)
        self.step = self.add_weight(
            name="step", shape=self._step_shape, trainable=self.learn_step,
            initializer=keras.initializers.Constant(self._calibrate(table)),
        )

    def _state_weight(self, name: str, shape, dtype: str = "float32", initializer="zeros"):
        # Updated in the backward pass in replica context: every replica computes the
        # same update from all-gathered gradients, the first one's value is kept.
        return self.add_weight(
            name=name, shape=shape, dtype=dtype, initializer=initializer, trainable=False,
            aggregation="only_first_replica",
        )

    def _build_lpt(self):
        self.codes = self._state_weight("codes", (self.input_dim, self.output_dim), "int8")
        self.step = self._state_weight("step", self._step_shape, initializer="ones")
        if self.optimizer == "adagrad":
            self.accumulator = self._state_weight("accumulator", (self.input_dim,))
        if self.learn_step and self.step_optimizer == "adam":
            self.step_m = self._state_weight("step_m", self._step_shape)
            self.step_v = self._state_weight("step_v", self._step_shape)
        self.iterations = self._state_weight("iterations", (), "int64")
        if self._decay_l2 > 0:
            # Step count at the row's last update; iterations - last_update = steps skipped.
            self.last_update = self._state_weight("last_update", (self.input_dim,), "int32")
        # Multiplies both learning rates; DecayOnPlateau (and users) decay it through
        # set_learning_rate_scale, in step with the model optimizer's learning rate.
        self.learning_rate_scale = self._state_weight("learning_rate_scale", (), initializer="ones")
        self.lpt_anchor = self.add_weight(name="lpt_anchor", shape=(), initializer="zeros")
        self._init_lpt_codes()

    def _build_inference(self):
        self.codes = self.add_weight(
            name="codes", shape=(self.input_dim, self.packed_width), dtype="int8",
            initializer="zeros", trainable=False,
        )
        if self.granularity == "row":
            self.scale_bits = self.add_weight(
                name="scale_bits", shape=(self.input_dim,), dtype="int16",
                initializer="zeros", trainable=False,
            )
        else:
            self.scale = self.add_weight(name="scale", shape=(), initializer="ones", trainable=False)

    def _calibrate(self, table: np.ndarray) -> np.ndarray:
        return q.init_step_np(table, self.bits, self.granularity, self.step_init)

    def _init_lpt_codes(self):
        """Draws the float table chunk by chunk and stores only its codes (a 10M-row
        table never exists in float)."""
        import tensorflow as tf

        init = self.embeddings_initializer
        if isinstance(init, keras.initializers.Zeros):
            self.step.assign(np.full(self._step_shape, q.MIN_STEP, "float32"))
            return
        steps = np.empty(self._step_shape, "float32")
        for start in range(0, self.input_dim, _CHUNK_ROWS):
            stop = min(start + _CHUNK_ROWS, self.input_dim)
            w = keras.ops.convert_to_numpy(init((stop - start, self.output_dim), dtype="float32"))
            if self.granularity == "table":
                if start == 0:
                    steps[...] = self._calibrate(w)
                step = steps
            else:
                step = steps[start:stop] = self._calibrate(w)
            codes = q.quantize_np(w, step[..., None] if step.ndim else step, self.bits)
            # Row-range scatter: works on distributed (mirrored) variables, unlike slices.
            self.codes.value.scatter_update(tf.IndexedSlices(codes, tf.range(start, stop)))
        self.step.assign(steps)

    # ------------------------------------------------------------------ weights

    def set_float_weights(self, table, step=None) -> None:
        """Initialises the layer from a float table ``(input_dim, output_dim)``.

        ``step`` (``(input_dim,)`` or scalar) defaults to the calibrated step
        (``step_init``). ``lpt`` codes use the deterministic round; its optimizer
        state is reset. In ``inference`` mode row steps are rounded to fp16 first and
        the codes computed against the rounded step (what ships is consistent).
        """
        if not self.built:
            self.build()
        table = np.asarray(table, "float32")
        if table.shape != (self.input_dim, self.output_dim):
            raise ValueError(
                f"layer {self.name!r}: expected a float table of shape {(self.input_dim, self.output_dim)}, "
                f"got {table.shape}"
            )
        step = self._calibrate(table) if step is None else q.clamp_step_np(step).reshape(self._step_shape)
        if self.mode == "qat":
            self.embeddings.assign(table)
            self.step.assign(step)
            return
        if self.mode == "inference" and self.granularity == "row":
            step = q.to_fp16_step_np(step)
        codes = np.empty((self.input_dim, self.output_dim if self.mode == "lpt" else self.packed_width), "int8")
        for start in range(0, self.input_dim, _CHUNK_ROWS):
            stop = min(start + _CHUNK_ROWS, self.input_dim)
            d = step[start:stop, None] if step.ndim else step
            c = q.quantize_np(table[start:stop], d, self.bits)
            codes[start:stop] = c if self.mode == "lpt" else q.pack_codes_np(c, self.bits)
        self.codes.assign(codes)
        if self.mode == "lpt":
            self.step.assign(step)
            self.reset_optimizer_state()
        elif self.granularity == "row":
            self.scale_bits.assign(q.fp16_bits_np(step))
        else:
            self.scale.assign(step)

    def reset_optimizer_state(self) -> None:
        """Resets the ``lpt`` optimizer state: accumulators, step moments and
        iterations to zero, the learning-rate scale to 1."""
        for name in ("accumulator", "step_m", "step_v", "iterations", "last_update"):
            var = getattr(self, name, None)
            if var is not None:
                var.assign(np.zeros(var.shape, var.dtype))
        if getattr(self, "learning_rate_scale", None) is not None:
            self.learning_rate_scale.assign(1.0)

    def set_learning_rate_scale(self, scale: float) -> None:
        """Sets the multiplier of the ``lpt`` table and step learning rates (a
        learning-rate decay; no effect in the other modes, where the model's
        optimizer trains the table).

        :class:`~keras_ctr_compress.models.training.DecayOnPlateau` calls this on
        every layer that has it when it decays the optimizer (scale ``factor ** n``
        after ``n`` decays), so that the table's own optimizer follows the same
        schedule. The current scale is the ``learning_rate_scale`` weight (saved,
        checkpointed and restored with the others).
        """
        scale = _check_positive_float("scale", scale, self.name)
        if self.mode == "lpt":
            self.learning_rate_scale.assign(scale)

    def step_values(self) -> np.ndarray:
        """The step sizes the inference forward pass uses, float32 ``(input_dim,)`` or ``()``."""
        if self.mode == "qat":
            step = q.clamp_step_np(np.abs(keras.ops.convert_to_numpy(self.step)))
            return q.to_fp16_step_np(step) if self.granularity == "row" else step
        if self.mode == "lpt":
            return keras.ops.convert_to_numpy(self.step).astype("float32")
        if self.granularity == "row":
            return q.fp16_from_bits_np(keras.ops.convert_to_numpy(self.scale_bits))
        return np.asarray(keras.ops.convert_to_numpy(self.scale), "float32")

    def integer_codes(self) -> np.ndarray:
        """The integer codes ``(input_dim, output_dim)`` (int32) of the inference forward pass."""
        if self.mode == "qat":
            step = self.step_values()
            table = keras.ops.convert_to_numpy(self.embeddings)
            return q.quantize_np(table, step[:, None] if step.ndim else step, self.bits).astype("int32")
        codes = keras.ops.convert_to_numpy(self.codes)
        if self.mode == "lpt":
            return codes.astype("int32")
        return q.unpack_codes_np(codes, self.bits, self.output_dim)

    def dequantized_weights(self) -> np.ndarray:
        """The float table the inference forward pass represents, ``(input_dim, output_dim)``
        (``lpt``: with the decay that skipped rows are owed, see ``skipped_row_decay``)."""
        step = self.step_values()
        table = self.integer_codes().astype("float32") * (step[:, None] if step.ndim else step)
        if self.mode == "lpt" and self._decay_l2 > 0:
            ids = np.arange(self.input_dim, dtype="int32")
            table *= keras.ops.convert_to_numpy(self._pending_decay(ids))
        return table

    def finalize(self) -> QuantizedEmbedding:
        """A new ``inference``-mode layer (packed codes, fp16 row scales) with this
        layer's values, ready to export. Same name and configuration otherwise."""
        config = self.get_config()
        config["mode"] = "inference"
        layer = type(self).from_config(config)
        layer.build()
        layer.set_float_weights(self.dequantized_weights(), self.step_values())
        return layer

    # ------------------------------------------------------------------ forward

    def call(self, ids, training=None):
        ids = ops.cast(ids, "int32")
        if self.mode == "qat":
            return self._call_qat(ids, training)
        if self.mode == "lpt":
            if training and self.trainable:
                return self._call_lpt_train(ids)
            rows = ops.cast(ops.take(self.codes, ids, axis=0), "float32")
            rows = rows * self._gathered_step(ops.convert_to_tensor(self.step), ids)
            return rows if self._decay_l2 == 0 else rows * self._pending_decay(ids)
        return self._call_inference(ids)

    def _row_learning_rate(self, ids):
        """The table optimizer's current learning rate of rows ``ids`` (shape of ``ids``)."""
        lr = self.learning_rate * ops.convert_to_tensor(self.learning_rate_scale)
        if self.optimizer == "sgd":
            return ops.ones(ops.shape(ids), "float32") * lr
        acc = ops.take(ops.convert_to_tensor(self.accumulator), ids, axis=0)
        return lr / (ops.sqrt(acc) + self.epsilon)

    def _pending_decay(self, ids):
        """``f^k`` per row of ``ids`` (shape ``ids.shape + (1,)``): the L2 decay owed for
        the ``k`` steps since the row's last update (``skipped_row_decay``)."""
        skipped = ops.convert_to_tensor(self.iterations) - ops.cast(
            ops.take(ops.convert_to_tensor(self.last_update), ids, axis=0), "int64")
        factor = ops.clip(1.0 - 2.0 * self._decay_l2 * self._row_learning_rate(ids), 0.0, 1.0)
        return ops.expand_dims(ops.power(factor, ops.cast(skipped, "float32")), -1)

    def _gathered_step(self, step, ids):
        if self.granularity == "row":
            return ops.expand_dims(ops.take(step, ids, axis=0), -1)
        return step

    def _call_qat(self, ids, training):
        rows = ops.take(self.embeddings, ids, axis=0)
        step = ops.maximum(ops.abs(self._gathered_step(self.step, ids)), q.MIN_STEP)
        if self.granularity == "row":
            # Row steps ship as fp16: use that value (straight through) so that the
            # finalized layer computes exactly what the trained one did.
            step16 = ops.maximum(ops.cast(ops.cast(step, "float16"), "float32"), 2.0**-24)
            step = step + ops.stop_gradient(step16 - step)
        if training:
            num_ids = ops.sum(ops.ones_like(ids, dtype="float32"))
            grad_scale = q.lsq_grad_scale(num_ids, self.output_dim, self.bits)
            return q.fake_quant(rows, step, self.bits, self.rounding, grad_scale, self.seed_generator)
        return q.fake_quant(rows, step, self.bits, "deterministic")

    def _call_inference(self, ids):
        codes = ops.cast(ops.take(self.codes, ids, axis=0), "float32")
        codes = q.unpack_codes(codes, self.bits, self.output_dim)
        if self.granularity == "row":
            return codes * q.fp16_scale_column(ops.take(self.scale_bits, ids, axis=0))
        return codes * self.scale

    # ------------------------------------------------------------------ LPT

    def _call_lpt_train(self, ids):
        import tensorflow as tf

        codes = self.codes.value
        step = self.step.value
        rows = tf.cast(tf.gather(codes, ids), tf.float32)
        rows = rows * (tf.gather(step, ids)[..., None] if self.granularity == "row" else tf.convert_to_tensor(step))
        if self._decay_l2 > 0:
            rows = rows * self._pending_decay(ids)
        anchor = tf.convert_to_tensor(self.lpt_anchor)

        @tf.custom_gradient
        def lookup(rows, anchor):
            def grad(upstream):
                touched = self._lpt_apply(ids, upstream)
                # A zero that depends on rows read after the update: a constant zero
                # would let grappler prune the update (measured).
                return None, tf.reduce_sum(tf.cast(touched, tf.float32)) * 0.0

            return tf.identity(rows), grad

        return lookup(rows, anchor)

    def _lpt_apply(self, ids, upstream):
        """Steps (2)-(4) of an LPT training step on the looked-up rows; returns the
        first updated row's codes, read after the update."""
        import tensorflow as tf

        d = self.output_dim
        flat_ids = tf.reshape(ids, [-1])
        grads = tf.reshape(tf.cast(upstream, tf.float32), [-1, d])
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            flat_ids = ctx.all_gather(flat_ids, axis=0)
            grads = ctx.all_gather(grads, axis=0)
        uniq, index = tf.unique(flat_ids)
        grads = tf.math.unsorted_segment_sum(grads, index, tf.shape(uniq)[0])
        codes, step = self.codes.value, self.step.value
        row_step = tf.gather(step, uniq)[:, None] if self.granularity == "row" else tf.convert_to_tensor(step)
        w = tf.cast(tf.gather(codes, uniq), tf.float32) * row_step
        if self._decay_l2 > 0:  # the decay owed since the last update, before this step's
            w = w * self._pending_decay(uniq)
        if self.embeddings_regularizer is not None:
            with tf.GradientTape() as tape:
                tape.watch(w)
                penalty = self.embeddings_regularizer(w)
            grads = grads + tape.gradient(penalty, w)
        updates = []
        lr_scale = tf.convert_to_tensor(self.learning_rate_scale.value)
        lr = self.learning_rate * lr_scale
        if self.optimizer == "sgd":
            w_new = w - lr * grads
        else:
            acc = tf.gather(self.accumulator.value, uniq) + tf.reduce_mean(tf.square(grads), axis=1)
            updates.append(self.accumulator.value.scatter_update(tf.IndexedSlices(acc, uniq)))
            w_new = w - lr * grads / (tf.sqrt(acc)[:, None] + self.epsilon)
        iteration = self.iterations.value.assign_add(1)
        if self._decay_l2 > 0:
            updates.append(self.last_update.value.scatter_update(
                tf.IndexedSlices(tf.fill(tf.shape(uniq), tf.cast(iteration, tf.int32)), uniq)))
        new_step = row_step
        if self.learn_step:
            num_ids = tf.cast(tf.size(flat_ids), tf.float32)
            new_step, step_updates = self._lpt_step_update(uniq, w_new, row_step, grads, num_ids, iteration,
                                                           self.step_learning_rate * lr_scale)
            updates += step_updates
        v = w_new / new_step
        if self.rounding == "stochastic":
            seed = tf.stack([tf.constant(self._rounding_seed, tf.int64), tf.cast(iteration, tf.int64)])
            v = tf.floor(v + tf.random.stateless_uniform(tf.shape(v), seed=seed))
        else:
            v = tf.floor(v + 0.5)
        new_codes = tf.cast(tf.clip_by_value(v, float(self.qn), float(self.qp)), tf.int8)
        updates.append(codes.scatter_update(tf.IndexedSlices(new_codes, uniq)))
        with tf.control_dependencies(updates):
            return tf.gather(codes, uniq[:1])

    def _lpt_step_update(self, uniq, w_new, row_step, grads, num_ids, iteration, step_lr):
        """One step of the step-size optimizer on the LSQ gradient of ``Q_det(w'; D)``."""
        import tensorflow as tf

        v = w_new / row_step
        dq_dstep = tf.where(
            v < self.qn, float(self.qn), tf.where(v > self.qp, float(self.qp), tf.floor(v + 0.5) - v)
        )
        scale = tf.math.rsqrt(num_ids * float(self.output_dim * self.qp))
        row = self.granularity == "row"
        g = tf.reduce_sum(grads * dq_dstep, axis=1 if row else None) * scale
        old = row_step[:, 0] if row else row_step
        updates = []
        if self.step_optimizer == "sgd":
            new = old - step_lr * g
        else:
            # Lazy (sparse) Adam: the moments of rows not in the batch are left alone;
            # the bias correction uses the layer's global step count.
            m_var, v_var = self.step_m.value, self.step_v.value
            m_old = tf.gather(m_var, uniq) if row else tf.convert_to_tensor(m_var)
            v_old = tf.gather(v_var, uniq) if row else tf.convert_to_tensor(v_var)
            m = _ADAM_BETA1 * m_old + (1 - _ADAM_BETA1) * g
            vv = _ADAM_BETA2 * v_old + (1 - _ADAM_BETA2) * tf.square(g)
            t = tf.cast(iteration, tf.float32)
            m_hat = m / (1 - tf.pow(_ADAM_BETA1, t))
            v_hat = vv / (1 - tf.pow(_ADAM_BETA2, t))
            new = old - step_lr * m_hat / (tf.sqrt(v_hat) + _ADAM_EPSILON)
            if row:
                updates += [m_var.scatter_update(tf.IndexedSlices(m, uniq)),
                            v_var.scatter_update(tf.IndexedSlices(vv, uniq))]
            else:
                updates += [m_var.assign(m), v_var.assign(vv)]
        # ALPT keeps D positive; |D| also keeps a step that overshoots zero usable.
        new = tf.clip_by_value(tf.abs(new), q.MIN_STEP, q.MAX_STEP)
        step_var = self.step.value
        if row:
            updates.append(step_var.scatter_update(tf.IndexedSlices(new, uniq)))
            return new[:, None], updates
        updates.append(step_var.assign(new))
        return new, updates

    # ------------------------------------------------------------------ misc

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.output_dim)

    def byte_cost(self) -> dict[str, int]:
        """Exported bytes of the finalized (``inference``) form by part: ``codes``,
        ``scales``, ``remap`` (0) and ``weights`` (float rows, 0). Whatever the mode:
        export after :meth:`finalize` (or
        :func:`keras_ctr_compress.compress.finalize_quantized`)."""
        return quantized_embedding_byte_cost(self.input_dim, self.output_dim, self.bits, self.granularity)

    def training_byte_cost(self) -> dict[str, int]:
        """Bytes the table holds during ``lpt`` training (see :func:`lpt_training_bytes`)."""
        return lpt_training_bytes(
            self.input_dim, self.output_dim, self.granularity, self.optimizer, self.learn_step,
            self.step_optimizer, decay_counter=self._decay_l2 > 0,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "input_dim": self.input_dim,
            "output_dim": self.output_dim,
            "bits": self.bits,
            "granularity": self.granularity,
            "rounding": self.rounding,
            "learn_step": self.learn_step,
            "mode": self.mode,
            "optimizer": self.optimizer,
            "learning_rate": self.learning_rate,
            "step_learning_rate": self.step_learning_rate,
            "step_optimizer": self.step_optimizer,
            "step_init": self.step_init,
            "epsilon": self.epsilon,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
            "embeddings_regularizer": keras.regularizers.serialize(self.embeddings_regularizer),
            "skipped_row_decay": self.skipped_row_decay,
            "seed": self.seed,
        }
