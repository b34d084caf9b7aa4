"""HashedEmbedding: the hashing trick, a weight-sharing peer baseline."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_ctr_compress")
class HashedEmbedding(keras.layers.Layer):
    """Embedding table shared by colliding ids: row ``id mod num_buckets``.

    The hashing trick is what many CTR engineers reach for first to cap table
    size; here it is a peer baseline in the benchmark (trained from scratch with
    the same recipe as fp32, so that the comparison is fair). Ids come from
    count-sorted vocabularies, so ``id mod K`` spreads the frequent ids over
    different buckets.

    References:
        - Weinberger et al., "Feature Hashing for Large Scale Multitask
          Learning", ICML 2009.

    Example:

    >>> layer = HashedEmbedding(1000, 8, num_buckets=100)
    >>> tuple(layer(np.array([1, 101])).shape)
    (2, 8)

    Args:
        input_dim: number of ids of the field.
        output_dim: embedding dimension.
        num_buckets: rows of the shared table, ``1 <= num_buckets <= input_dim``.
        embeddings_initializer, embeddings_regularizer: as in ``keras.layers.Embedding``.

    Input shape:
        int ids of any shape ``s``.

    Output shape:
        ``s + (output_dim,)`` float32.
    """

    def __init__(self, input_dim: int, output_dim: int, num_buckets: int,
                 embeddings_initializer="uniform", embeddings_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        for name, v in (("input_dim", input_dim), ("output_dim", output_dim), ("num_buckets", num_buckets)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"`{name}` must be a positive integer. Received: {v!r}")
        if num_buckets > input_dim:
            raise ValueError(f"`num_buckets` ({num_buckets}) must not exceed `input_dim` ({input_dim})")
        self.input_dim, self.output_dim, self.num_buckets = input_dim, output_dim, num_buckets
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.embeddings_regularizer = keras.regularizers.get(embeddings_regularizer)

    def build(self, input_shape=None):
        self.embeddings = self.add_weight(
            name="embeddings", shape=(self.num_buckets, self.output_dim),
            initializer=self.embeddings_initializer, regularizer=self.embeddings_regularizer,
        )

    def call(self, ids):
        return ops.take(self.embeddings, ops.mod(ops.cast(ids, "int32"), self.num_buckets), axis=0)

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.output_dim)

    def byte_cost(self) -> dict[str, int]:
        return {"weights": self.num_buckets * self.output_dim * 4}

    def get_config(self):
        return {
            **super().get_config(), "input_dim": self.input_dim, "output_dim": self.output_dim,
            "num_buckets": self.num_buckets,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
            "embeddings_regularizer": keras.regularizers.serialize(self.embeddings_regularizer),
        }
