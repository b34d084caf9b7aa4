"""LowRankDense: a Dense layer factorised into two thin matmuls, ``act((x U [+ c]) V + b)``."""

from __future__ import annotations

import numbers

import keras
from keras import ops

#: bytes of one float32 weight in the exported file
FLOAT_BYTES = 4


def check_rank(rank, bound: int, *, layer: str, what: str) -> int:
    """Validates a factorisation rank: an integer in ``[1, bound]``.

    Args:
        rank: the rank to check (Python or NumPy integer; bools are refused).
        bound: the largest allowed rank (``min`` of the factorised matrix's sides).
        layer: the layer's name, quoted in the error.
        what: the bound as a formula, e.g. ``"min(input_dim, units) = min(400, 400)"``.

    Returns:
        ``rank`` as a Python ``int``.

    Raises:
        ValueError: naming the layer, the received rank and the bound.
    """
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
        raise ValueError(
            f"layer {layer!r}: `rank` must be an integer in [1, {what} = {bound}]. "
            f"Received: rank={rank!r} ({type(rank).__name__})"
        )
    rank = int(rank)
    if not 1 <= rank <= bound:
        raise ValueError(
            f"layer {layer!r}: `rank` must be an integer in [1, {what} = {bound}]. "
            f"Received: rank={rank}"
        )
    return rank


def dense_byte_cost(input_dim: int, units: int, *, use_bias: bool = True) -> dict[str, int]:
    """Exported float32 bytes of a plain ``Dense(units)`` on ``input_dim`` features."""
    return {"kernel": input_dim * units * FLOAT_BYTES, "bias": units * FLOAT_BYTES if use_bias else 0}


def low_rank_dense_byte_cost(
    input_dim: int, units: int, rank: int, *, use_bias: bool = True, use_middle_bias: bool = False
) -> dict[str, int]:
    """Exported float32 bytes of ``LowRankDense(units, rank)`` on ``input_dim`` features.

    The pair exports as two FULLY_CONNECTED ops whose weights are ``u`` and ``v``
    (stored transposed, same bytes) with their biases fused in.
    """
    bias = (units if use_bias else 0) + (rank if use_middle_bias else 0)
    return {
        "kernel_u": input_dim * rank * FLOAT_BYTES,
        "kernel_v": rank * units * FLOAT_BYTES,
        "bias": bias * FLOAT_BYTES,
    }


@keras.saving.register_keras_serializable(package="keras_ctr_compress")
class LowRankDense(keras.layers.Layer):
    """Dense layer of rank ``rank``: ``activation((middle_activation(x u + c)) v + b)``.

    A ``Dense(units)`` kernel ``K`` (``input_dim x units``) replaced by two factors
    ``u`` (``input_dim x rank``) and ``v`` (``rank x units``). It saves parameters
    and time when ``rank < input_dim * units / (input_dim + units)``; on LiteRT it
    exports as two FULLY_CONNECTED ops (biases and activations fused), which run
    several times faster than the dense op at the ranks the AFM paper uses.

    The optional middle bias ``c`` exists because AFM's first factor is the affine
    map ``A(x) = x K U_k + U_k^T b``: with a middle activation that bias cannot be
    moved to the output, so the layer keeps it to stay exact. Weights usually come
    from :func:`keras_ctr_compress.compress.low_rank` (AFM or weight SVD); a layer
    built from scratch is trained like any other.

    References:
        - Yu et al., "Compressing Deep Models for Click-Through Rate Prediction via
          Low-Rank Output Features" (AFM), KDD 2024 (arXiv 2405.18146).
        - Denton et al., "Exploiting Linear Structure Within Convolutional Networks
          for Efficient Evaluation", NeurIPS 2014 (the weight-SVD baseline).

    Example:

    >>> layer = LowRankDense(400, rank=32, activation="relu")
    >>> tuple(layer(np.ones((2, 400), "float32")).shape)
    (2, 400)
    >>> layer.byte_cost()["kernel_u"]
    51200

    Args:
        units: output width.
        rank: inner width, an integer in ``[1, min(input_dim, units)]``.
        activation: activation of the output (that of the replaced Dense).
        middle_activation: activation between the factors (``None``: linear, the
            exact AFM factorisation; ``"relu"``: AFM's "act" variant, which needs
            fine-tuning).
        use_bias: output bias ``b``.
        use_middle_bias: middle bias ``c`` (AFM's ``U_k^T b``).
        kernel_initializer, bias_initializer: for ``u`` / ``v`` and both biases.
        kernel_regularizer, bias_regularizer: applied to both factors / both biases.

    Input shape:
        ``(..., input_dim)`` float.

    Output shape:
        ``(..., units)`` float.
    """

    def __init__(
        self,
        units: int,
        rank: int,
        activation=None,
        middle_activation=None,
        use_bias: bool = True,
        use_middle_bias: bool = False,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(units, bool) or not isinstance(units, numbers.Integral) or units <= 0:
            raise ValueError(f"layer {self.name!r}: `units` must be a positive integer. Received: {units!r}")
        self.units = int(units)
        # The input bound is checked again in build(), once input_dim is known.
        self.rank = check_rank(rank, self.units, layer=self.name, what="units")
        self.activation = keras.activations.get(activation)
        self.middle_activation = keras.activations.get(middle_activation)
        self.use_bias = bool(use_bias)
        self.use_middle_bias = bool(use_middle_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.input_dim: int | None = None

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(f"layer {self.name!r}: the last input dimension must be known, got {input_shape}")
        self.input_dim = int(input_dim)
        check_rank(
            self.rank, min(self.input_dim, self.units), layer=self.name,
            what=f"min(input_dim, units) = min({self.input_dim}, {self.units})",
        )
        self.u = self.add_weight(
            name="u", shape=(self.input_dim, self.rank), initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        self.v = self.add_weight(
            name="v", shape=(self.rank, self.units), initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        self.middle_bias = None
        if self.use_middle_bias:
            self.middle_bias = self.add_weight(
                name="middle_bias", shape=(self.rank,), initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
            )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias", shape=(self.units,), initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
            )

    def call(self, inputs):
        h = ops.matmul(inputs, self.u)
        if self.middle_bias is not None:
            h = ops.add(h, self.middle_bias)
        h = self.middle_activation(h)
        y = ops.matmul(h, self.v)
        if self.bias is not None:
            y = ops.add(y, self.bias)
        return self.activation(y)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def byte_cost(self) -> dict[str, int]:
        """Exported float32 bytes by part (``kernel_u``, ``kernel_v``, ``bias``).

        Raises:
            ValueError: the layer is not built (its input width is unknown).
        """
        if self.input_dim is None:
            raise ValueError(f"layer {self.name!r}: byte_cost() needs a built layer (input width unknown)")
        return low_rank_dense_byte_cost(
            self.input_dim, self.units, self.rank, use_bias=self.use_bias,
            use_middle_bias=self.use_middle_bias,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "rank": self.rank,
            "activation": keras.activations.serialize(self.activation),
            "middle_activation": keras.activations.serialize(self.middle_activation),
            "use_bias": self.use_bias,
            "use_middle_bias": self.use_middle_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
        }
