"""LowRankEmbedding: per-row codes of width ``rank`` plus a shared projection and mean."""

from __future__ import annotations

import numbers

import keras
from keras import ops

from keras_ctr_compress.layers.low_rank_dense import FLOAT_BYTES, check_rank


def embedding_byte_cost(input_dim: int, output_dim: int) -> dict[str, int]:
    """Exported float32 bytes of a plain ``Embedding(input_dim, output_dim)``."""
    return {"table": input_dim * output_dim * FLOAT_BYTES}


def low_rank_embedding_byte_cost(input_dim: int, output_dim: int, rank: int) -> dict[str, int]:
    """Exported float32 bytes of ``LowRankEmbedding(input_dim, output_dim, rank)``.

    ``projection`` and ``mean`` are dropped from the file when nothing reads the
    reconstruction (a pure DNN whose first layer was folded onto the codes).
    """
    return {
        "codes": input_dim * rank * FLOAT_BYTES,
        "projection": rank * output_dim * FLOAT_BYTES,
        "mean": output_dim * FLOAT_BYTES,
    }


@keras.saving.register_keras_serializable(package="keras_ctr_compress")
class LowRankEmbedding(keras.layers.Layer):
    """Embedding table stored as codes: ``row(id) = codes[id] @ projection + mean``.

    AFM compresses a field's table ``E`` (``input_dim x output_dim``) by the principal
    subspace ``U_k`` of its looked-up vectors over the data (so frequent ids weigh
    more): ``codes = (E - mu) U_k``, ``projection = U_k^T``, ``mean = mu``. The lookup
    exports as GATHER on the small code table followed by one FULLY_CONNECTED.

    With ``return_codes=True`` the layer returns ``(reconstruction, codes)``: a model
    whose first DNN layer reads the codes directly (the projection folded into that
    layer's kernel) while interaction branches (FM, FwFM, cross network) keep
    reading the reconstruction; one GATHER serves both.

    References:
        - Yu et al., "Compressing Deep Models for Click-Through Rate Prediction via
          Low-Rank Output Features" (AFM), KDD 2024 (arXiv 2405.18146).

    Example:

    >>> layer = LowRankEmbedding(1000, 16, rank=4)
    >>> tuple(layer(np.array([3, 999])).shape)
    (2, 16)
    >>> layer.byte_cost()["codes"]
    16000

    Args:
        input_dim: number of ids (rows) of the field.
        output_dim: embedding dimension ``d``.
        rank: code width, an integer in ``[1, min(input_dim, output_dim)]``.
        return_codes: also return the looked-up codes (see above).
        codes_initializer, projection_initializer: initialisers (the transform
            overwrites them with the factorised table).
        codes_regularizer: regulariser of the code table (the compression transform
            carries the original table's regulariser over, so that fine-tuning
            follows the training recipe).

    Input shape:
        int ids of any shape ``s``.

    Output shape:
        ``s + (output_dim,)`` float32; with ``return_codes`` a pair of that and
        ``s + (rank,)``.
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        rank: int,
        return_codes: bool = False,
        codes_initializer="random_normal",
        projection_initializer="orthogonal",
        codes_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for arg, v in (("input_dim", input_dim), ("output_dim", output_dim)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
                raise ValueError(f"layer {self.name!r}: `{arg}` must be a positive integer. Received: {v!r}")
        self.input_dim, self.output_dim = int(input_dim), int(output_dim)
        self.rank = check_rank(
            rank, min(self.input_dim, self.output_dim), layer=self.name,
            what=f"min(input_dim, output_dim) = min({self.input_dim}, {self.output_dim})",
        )
        self.return_codes = bool(return_codes)
        self.codes_initializer = keras.initializers.get(codes_initializer)
        self.projection_initializer = keras.initializers.get(projection_initializer)
        self.codes_regularizer = keras.regularizers.get(codes_regularizer)

    def build(self, input_shape=None):
        self.codes = self.add_weight(
            name="codes", shape=(self.input_dim, self.rank), initializer=self.codes_initializer,
            regularizer=self.codes_regularizer,
        )
        self.projection = self.add_weight(
            name="projection", shape=(self.rank, self.output_dim), initializer=self.projection_initializer,
        )
        self.mean = self.add_weight(name="mean", shape=(self.output_dim,), initializer="zeros")

    def lookup_codes(self, ids):
        """The code rows of ``ids``: ``s + (rank,)``."""
        return ops.take(self.codes, ops.cast(ids, "int32"), axis=0)

    def reconstruct(self, codes):
        """Embedding vectors from codes: ``codes @ projection + mean``."""
        return ops.add(ops.matmul(codes, self.projection), self.mean)

    def call(self, ids):
        codes = self.lookup_codes(ids)
        vectors = self.reconstruct(codes)
        return (vectors, codes) if self.return_codes else vectors

    def compute_output_shape(self, input_shape):
        vectors = (*input_shape, self.output_dim)
        return (vectors, (*input_shape, self.rank)) if self.return_codes else vectors

    def byte_cost(self) -> dict[str, int]:
        """Exported float32 bytes by part (``codes``, ``projection``, ``mean``)."""
        return low_rank_embedding_byte_cost(self.input_dim, self.output_dim, self.rank)

    def get_config(self):
        return {
            **super().get_config(),
            "input_dim": self.input_dim,
            "output_dim": self.output_dim,
            "rank": self.rank,
            "return_codes": self.return_codes,
            "codes_initializer": keras.initializers.serialize(self.codes_initializer),
            "projection_initializer": keras.initializers.serialize(self.projection_initializer),
            "codes_regularizer": keras.regularizers.serialize(self.codes_regularizer),
        }
