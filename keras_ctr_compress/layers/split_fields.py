"""SplitFields: one int32 id matrix -> one id vector per field."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_ctr_compress")
class SplitFields(keras.layers.Layer):
    """Splits the model's id matrix into one id vector per field.

    Every reference model takes one input ``ids`` of shape ``(batch, num_fields)``
    (column ``j`` holds field ``j``'s id); each field then has its own embedding
    table, which this layer feeds. Exports as one UNPACK op.

    Example:

    >>> ids = keras.Input((3,), dtype="int32", name="ids")
    >>> cols = SplitFields(3)(ids)
    >>> len(cols), tuple(cols[0].shape)
    (3, (None,))

    Args:
        num_fields: number of columns of the input.

    Input shape:
        ``(batch, num_fields)`` int32.

    Output shape:
        a list of ``num_fields`` tensors of shape ``(batch,)``, same dtype.
    """

    def __init__(self, num_fields: int, **kwargs):
        if not isinstance(num_fields, int) or isinstance(num_fields, bool) or num_fields <= 0:
            raise ValueError(f"`num_fields` must be a positive integer. Received: {num_fields!r}")
        super().__init__(**kwargs)
        self.num_fields = num_fields

    def call(self, inputs):
        return ops.unstack(inputs, num=self.num_fields, axis=1)

    def compute_output_shape(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != self.num_fields:
            raise ValueError(
                f"SplitFields expects {self.num_fields} columns, got input shape {input_shape}"
            )
        return [(input_shape[0],) for _ in range(self.num_fields)]

    def get_config(self):
        return {**super().get_config(), "num_fields": self.num_fields}
