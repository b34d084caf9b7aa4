"""Keras layers of keras-ctr-compress (one layer per module, all registered serializable)."""

from keras_ctr_compress.layers.field_pair_interaction import FieldPairInteraction, all_pairs
from keras_ctr_compress.layers.hashed_embedding import HashedEmbedding
from keras_ctr_compress.layers.low_rank_dense import LowRankDense
from keras_ctr_compress.layers.low_rank_embedding import LowRankEmbedding
from keras_ctr_compress.layers.qr_embedding import QREmbedding
from keras_ctr_compress.layers.quantized_embedding import QuantizedEmbedding
from keras_ctr_compress.layers.rowwise_quant_embedding import RowwiseQuantEmbedding
from keras_ctr_compress.layers.split_fields import SplitFields

__all__ = [
    "FieldPairInteraction",
    "HashedEmbedding",
    "LowRankDense",
    "LowRankEmbedding",
    "QREmbedding",
    "QuantizedEmbedding",
    "RowwiseQuantEmbedding",
    "SplitFields",
    "all_pairs",
]
