"""Swapping layers of a Keras 3 functional model: the one mechanism every transform uses.

:func:`replace_layers` is ``keras.models.clone_model`` with a layer mapping: the graph is
rebuilt call by call, so the copy keeps the model's inputs (names, shapes, dtypes) and
outputs, and every layer that is not replaced gets the original's trained weights. It
works on the project's models and on user-built functional models alike (supported
layers: :func:`~keras_ctr_compress.compress.user_model.check_supported`).
"""

from __future__ import annotations

from collections.abc import Callable

import keras


def ensure_functional(model: keras.Model) -> None:
    """Clear error for models whose graph cannot be rebuilt layer by layer: subclassed
    or nested models and layers outside the supported families (see
    :func:`~keras_ctr_compress.compress.user_model.check_supported`)."""
    from keras_ctr_compress.compress.user_model import check_supported

    check_supported(model)


def replace_layers(
    model: keras.Model,
    replace: Callable[[keras.layers.Layer], keras.layers.Layer | None],
) -> tuple[keras.Model, list[str]]:
    """Clones ``model``, replacing each layer for which ``replace(layer)`` returns a
    new layer; other layers are cloned from their config and get the original
    weights. The original model is left untouched. Returns the new model and the
    names of the replaced layers.

    ``replace`` must return a layer that accepts the same inputs and produces the
    same output shape; it is responsible for initialising the new layer's weights
    (typically by building it and assigning values derived from the old layer).

    Example::

        # every Dense with 64 units -> a copy without bias (weights of the others kept)
        def swap(layer):
            if isinstance(layer, keras.layers.Dense) and layer.units == 64:
                return keras.layers.Dense(64, use_bias=False, name=layer.name)
            return None
        new_model, names = replace_layers(model, swap)

    Raises:
        ValueError: a subclassed or nested model, or an unsupported layer (named).
    """
    ensure_functional(model)
    replaced: list[str] = []

    def clone(layer):
        new = replace(layer)
        if new is None:
            new = layer.__class__.from_config(layer.get_config())
            return _CopyWeights(layer, new)
        replaced.append(layer.name)
        return new

    pending: list[_CopyWeights] = []

    def clone_fn(layer):
        out = clone(layer)
        if isinstance(out, _CopyWeights):
            pending.append(out)
            return out.new
        return out

    new_model = keras.models.clone_model(model, clone_function=clone_fn)
    for p in pending:
        p.copy()
    return new_model, replaced


class _CopyWeights:
    def __init__(self, old, new):
        self.old, self.new = old, new

    def copy(self):
        # Operation nodes of a functional graph (``x[:, 0]``, ``keras.ops.*`` calls)
        # are cloned too but hold no weights (and have no ``weights`` attribute).
        if getattr(self.old, "weights", None):
            self.new.set_weights(self.old.get_weights())
