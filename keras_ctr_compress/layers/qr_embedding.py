"""QREmbedding: quotient-remainder compositional embeddings, a peer baseline."""

from __future__ import annotations

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_ctr_compress")
class QREmbedding(keras.layers.Layer):
    """Each id's vector is ``Q[id // m] * R[id mod m]`` (element-wise product).

    Two small tables (``ceil(n / m)`` and ``m`` rows) give every id a unique
    vector; a cheap weight-sharing baseline users pick to shrink tables, trained
    from scratch with the fp32 recipe in the benchmark.

    References:
        - Shi et al., "Compositional Embeddings Using Complementary Partitions for
          Memory-Efficient Recommendation Systems", KDD 2020 (arXiv 1909.02107).

    Example:

    >>> layer = QREmbedding(1000, 8, num_collisions=10)
    >>> tuple(layer(np.array([3, 999])).shape)
    (2, 8)

    Args:
        input_dim: number of ids of the field.
        output_dim: embedding dimension.
        num_collisions: ``m``, the remainder table's rows (ids sharing a quotient row).
        embeddings_initializer, embeddings_regularizer: as in ``keras.layers.Embedding``
            (the remainder table starts at ones so that the product starts as ``Q``).

    Input shape:
        int ids of any shape ``s``.

    Output shape:
        ``s + (output_dim,)`` float32.
    """

    def __init__(self, input_dim: int, output_dim: int, num_collisions: int,
                 embeddings_initializer="uniform", embeddings_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        for name, v in (("input_dim", input_dim), ("output_dim", output_dim), ("num_collisions", num_collisions)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"`{name}` must be a positive integer. Received: {v!r}")
        self.input_dim, self.output_dim, self.num_collisions = input_dim, output_dim, num_collisions
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.embeddings_regularizer = keras.regularizers.get(embeddings_regularizer)

    @property
    def quotient_rows(self) -> int:
        return math.ceil(self.input_dim / self.num_collisions)

    def build(self, input_shape=None):
        self.quotient = self.add_weight(
            name="quotient", shape=(self.quotient_rows, self.output_dim),
            initializer=self.embeddings_initializer, regularizer=self.embeddings_regularizer,
        )
        self.remainder = self.add_weight(
            name="remainder", shape=(self.num_collisions, self.output_dim), initializer="ones",
            regularizer=self.embeddings_regularizer,
        )

    def call(self, ids):
        ids = ops.cast(ids, "int32")
        q = ops.take(self.quotient, ops.floor_divide(ids, self.num_collisions), axis=0)
        r = ops.take(self.remainder, ops.mod(ids, self.num_collisions), axis=0)
        return q * r

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.output_dim)

    def byte_cost(self) -> dict[str, int]:
        return {"weights": (self.quotient_rows + self.num_collisions) * self.output_dim * 4}

    def get_config(self):
        return {
            **super().get_config(), "input_dim": self.input_dim, "output_dim": self.output_dim,
            "num_collisions": self.num_collisions,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
            "embeddings_regularizer": keras.regularizers.serialize(self.embeddings_regularizer),
        }
