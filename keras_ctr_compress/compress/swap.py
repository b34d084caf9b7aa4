"""Swapping layers of a Keras 3 functional model: the one mechanism every transform uses."""

from __future__ import annotations

from collections.abc import Callable

import keras


def ensure_functional(model: keras.Model) -> None:
    """Clear error for models whose graph cannot be rebuilt layer by layer."""
    # Keras exposes no public "is functional" predicate; these are its own classes.
    from keras.src.models.functional import Functional
    from keras.src.models.sequential import Sequential

    if not isinstance(model, (Functional, Sequential)):
        raise ValueError(
            f"{type(model).__name__} is not a Keras functional or Sequential model: the "
            "compression API rebuilds the layer graph, so build the model with keras.Input(...) "
            "and layer calls; subclassed models are not supported"
        )


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
