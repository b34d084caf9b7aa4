"""Bring your own model: which Keras models the compression API takes, and the adapters
between a user's input signature and the project's id-matrix layout.

The layer swaps (:func:`~keras_ctr_compress.compress.quantize_embeddings`,
:func:`~keras_ctr_compress.compress.low_rank`, :func:`~keras_ctr_compress.compress.replace_layers`)
work on any functional (or Sequential) Keras 3 model whose layers are supported (see
:func:`check_supported`): they clone the graph with a layer mapping, so the result keeps
the user's inputs (names, shapes, dtypes) and every trained weight.

The plan machinery (search space, :func:`~keras_ctr_compress.search.apply_plan`, field
pruning) reads the project's layout: one int32 input ``ids`` of shape ``(batch, F)``,
``SplitFields``, one ``emb_<field>`` table per field. :func:`as_reference_model` maps a
user model onto that layout (same layers and weights, one column per user input, the
field tables renamed); :func:`with_user_inputs` maps a compressed reference model back to
the user's named inputs; :func:`inputs_from_ids` turns an id matrix into the user
model's input dict.

Example::

    inputs = {n: keras.Input((1,), dtype="int32", name=n) for n in ["user", "item"]}
    vecs = [keras.layers.Flatten()(keras.layers.Embedding(v, 8)(inputs[n]))
            for n, v in [("user", 100), ("item", 500)]]
    h = keras.layers.Dense(32, activation="relu")(keras.layers.Concatenate()(vecs))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(h))
    ref = as_reference_model(model, fields=["user", "item"])   # ids (batch, 2) -> same graph
    ref.get_layer("emb_user")                                   # the user table, same weights
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

#: Layer classes accepted beyond the built-in families (see :func:`allow_layer`).
_ALLOWED: set[type] = set()
#: Module prefixes of the supported layer families.
SUPPORTED_MODULES = ("keras.", "keras_rs.", "keras_ctr_compress.")
SUPPORTED_TEXT = (
    "Keras built-in layers (Embedding, Dense, Concatenate, Dot, Add, Flatten, Reshape, activations, "
    "BatchNormalization / LayerNormalization, Dropout, ...), keras-rs layers (FeatureCross, "
    "DotInteraction, ...) and keras_ctr_compress layers"
)


def allow_layer(cls: type) -> type:
    """Accepts a custom layer class in models given to the compression API.

    Only for layers whose ``get_config()`` rebuilds them (``cls.from_config``) and whose
    weights are restored by ``set_weights``; usable as a class decorator.
    """
    if not (isinstance(cls, type) and issubclass(cls, keras.layers.Layer)):
        raise ValueError(f"allow_layer expects a keras.layers.Layer subclass; got {cls!r}")
    _ALLOWED.add(cls)
    return cls


def _supported(op) -> bool:
    if not isinstance(op, keras.layers.Layer):
        return True  # an operation node of a functional graph (x[:, 0], keras.ops.*): no weights
    cls = type(op)
    return cls in _ALLOWED or cls.__module__.startswith(SUPPORTED_MODULES)


def check_supported(model: keras.Model) -> None:
    """Clear errors for models the compression API cannot rebuild.

    Example::

        check_supported(model)     # ValueError: model 'm': layer 'my_scale' (mypkg.Scale) is not supported; ...
        allow_layer(Scale)         # vouch for a custom layer whose get_config() rebuilds it

    Raises:
        ValueError: a subclassed model (no layer graph to rebuild), a nested model
            (swaps would not reach its layers), or a layer outside the supported
            families; the message names the layer and says what is supported.
    """
    # Keras exposes no public "is functional" predicate; these are its own classes.
    from keras.src.models.functional import Functional
    from keras.src.models.sequential import Sequential

    if not isinstance(model, (Functional, Sequential)):
        raise ValueError(
            f"{type(model).__name__} {getattr(model, 'name', '')!r} is a subclassed model: the compression "
            "API rebuilds the layer graph, so build the model with keras.Input(...) and layer calls "
            f"(functional API) or keras.Sequential; supported layers: {SUPPORTED_TEXT}"
        )
    graph = getattr(model, "_functional", None) or model  # a Sequential model's graph
    for op in getattr(graph, "operations", None) or graph.layers:
        if isinstance(op, keras.layers.InputLayer):
            continue
        if isinstance(op, keras.Model):
            raise ValueError(
                f"model {model.name!r}: layer {op.name!r} is a nested {type(op).__name__}; build one flat "
                "functional model (call the sub-model's layers on the outer tensors) so that swaps reach "
                "its layers"
            )
        if not _supported(op):
            cls = type(op)
            raise ValueError(
                f"model {model.name!r}: layer {op.name!r} ({cls.__module__}.{cls.__name__}) is not supported; "
                f"supported: {SUPPORTED_TEXT}. A custom layer whose get_config() rebuilds it can be "
                f"accepted with keras_ctr_compress.compress.allow_layer({cls.__name__})"
            )


# --------------------------------------------------------------------------- id matrix <-> inputs


def _inputs(model: keras.Model) -> list:
    return list(model.inputs)


def _input_name(t) -> str:
    return t._keras_history.operation.name


def field_inputs(model: keras.Model, fields: Sequence[str] | None = None) -> list[str]:
    """The user model's input names in id-matrix column order (``fields``, or the
    model's input order), after checking every input is one integer id per row.

    Raises:
        ValueError: an input that is not int of shape ``()`` or ``(1,)``, or
            ``fields`` that do not name exactly the model's inputs.
    """
    names = []
    for t in _inputs(model):
        name = _input_name(t)
        if not str(t.dtype).startswith(("int", "uint")) or tuple(t.shape[1:]) not in ((), (1,)):
            raise ValueError(
                f"model {model.name!r}: input {name!r} is {t.dtype} of shape {tuple(t.shape)}; each field "
                "must be one integer id per row (keras.Input((1,), dtype='int32') or keras.Input((), "
                "dtype='int32'))"
            )
        names.append(name)
    if fields is None:
        return names
    fields = list(fields)
    if sorted(fields) != sorted(names):
        raise ValueError(f"fields {fields} must name exactly the inputs of model {model.name!r}: {sorted(names)}")
    return fields


def inputs_from_ids(x: np.ndarray, model: keras.Model, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """An id matrix ``(n, F)`` (column ``j`` = ``fields[j]``) as the user model's
    input dict: ``{name: (n,) or (n, 1) int32}``, shaped like each input.

    Example::

        model.fit(inputs_from_ids(ds.train.x, model, [f.name for f in ds.fields]), ds.train.y)
    """
    names = field_inputs(model, fields)
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != len(names):
        raise ValueError(f"expected an id matrix (rows, {len(names)}) for inputs {names}; got shape {x.shape}")
    shapes = {_input_name(t): tuple(t.shape[1:]) for t in _inputs(model)}
    dtypes = {_input_name(t): str(t.dtype) for t in _inputs(model)}
    return {n: x[:, j].astype(dtypes[n]).reshape((-1, *shapes[n])) for j, n in enumerate(names)}


def _is_reference(model: keras.Model) -> bool:
    from keras_ctr_compress.layers import SplitFields

    return len(model.inputs) == 1 and any(isinstance(layer, SplitFields) for layer in model.layers)


class _ToReference:
    """The graph walk of :func:`as_reference_model` (see there)."""

    def __init__(self, model: keras.Model, names: list[str]):
        self.model = model
        self.names = names
        self.column: dict[int, str] = {}  # new column tensor id -> field
        self.squeezed: dict[int, str] = {}  # embedding outputs that lost the length-1 axis
        self.taken = {layer.name for layer in model.layers}

    def run(self) -> keras.Model:
        from keras_ctr_compress.layers import SplitFields

        ids = keras.Input((len(self.names),), dtype="int32", name="ids")
        cols = SplitFields(len(self.names), name="split_fields")(ids)
        by_name = dict(zip(self.names, cols, strict=True))
        for name, col in by_name.items():
            self.column[id(col)] = name
        # clone_model's own walk (it is what clone_model runs), fed with the columns:
        # clone_model itself would wrap them in a Functional whose inputs are not Input
        # tensors, which Keras 3.15 refuses ("not connected to inputs").
        outputs = self.model._run_through_graph([by_name[_input_name(t)] for t in self.model.inputs],
                                                operation_fn=lambda op: op, call_fn=self._call)
        return keras.Model(ids, outputs, name=self.model.name)

    def _call(self, layer, *args, **kwargs):
        tensors = [t for t in keras.tree.flatten((args, kwargs)) if isinstance(t, keras.KerasTensor)]
        fields = [self.column[id(t)] for t in tensors if id(t) in self.column]
        if fields:
            return self._lookup(layer, fields, args, kwargs)
        if len(tensors) == 1 and id(tensors[0]) in self.squeezed:
            # (batch, 1, d) in the user's graph is (batch, d) here: the flatten is a no-op
            # (_lookup checked that only flattening layers read it).
            return tensors[0]
        return _clone_call(layer, args, kwargs)

    def _lookup(self, layer, fields, args, kwargs):
        if not isinstance(layer, keras.layers.Embedding) or len(fields) != 1:
            raise ValueError(
                f"model {self.model.name!r}: input(s) {fields} are read by layer {layer.name!r} "
                f"({type(layer).__name__}); plans need each field input read by Embedding layers only "
                "(one table per field, plus an optional 1-wide first-order table)"
            )
        field = fields[0]
        name = f"{'lin' if layer.output_dim == 1 else 'emb'}_{field}"
        if name != layer.name and name in self.taken:
            raise ValueError(f"model {self.model.name!r}: field {field!r} needs its table named {name!r}, "
                             "which another layer already uses (rename that layer)")
        self.taken.add(name)
        original = next(t for t in self.model.inputs if _input_name(t) == field)
        if tuple(original.shape[1:]) == (1,):
            readers = [op for op in self.model.operations
                       if any(t is layer.output for n in op._inbound_nodes for t in n.input_tensors)]
            bad = [op for op in readers if not _flattens_to(op, layer.output)]
            if bad:
                raise ValueError(
                    f"model {self.model.name!r}: layer {bad[0].name!r} ({type(bad[0]).__name__}) reads the "
                    f"embedding of field {field!r} with its length-1 axis; plans need each field's embedding "
                    "flattened (Flatten or Reshape((dim,))) before other layers, or inputs of shape ()"
                )
        out = _clone_call(layer, args, kwargs, name=name)
        if tuple(original.shape[1:]) == (1,):
            self.squeezed[id(out)] = field
        return out


def _flattens_to(layer, x) -> bool:
    """Whether ``layer`` maps the original ``(batch, 1, d)`` to ``(batch, d)``."""
    if isinstance(layer, keras.layers.Flatten):
        return True
    return isinstance(layer, keras.layers.Reshape) and tuple(layer.target_shape) == (int(x.shape[-1]),)


def _clone_call(layer, args, kwargs, name: str | None = None):
    """A copy of ``layer`` (same config, optionally renamed) called on the new tensors,
    with the original's weights."""
    config = layer.get_config()
    if name is not None:
        config = {**config, "name": name}
    new = layer.__class__.from_config(config)
    out = new(*args, **kwargs)
    if getattr(layer, "weights", None):
        new.set_weights(layer.get_weights())
    return out


def as_reference_model(model: keras.Model, fields: Sequence[str] | None = None) -> keras.Model:
    """The user model in the project's layout, for plans, search and field pruning.

    One int32 input ``ids`` ``(batch, F)`` (column ``j`` = ``fields[j]``, default the
    model's input order) -> ``SplitFields`` -> the user's graph, every layer a copy with
    the same weights. Each field's Embedding is renamed ``emb_<field>`` (a 1-wide
    first-order table: ``lin_<field>``); other layers keep their names. Where a user
    input has shape ``(1,)``, the ``Flatten`` / ``Reshape((dim,))`` after its Embedding
    becomes a no-op (the column is ``(batch,)`` here). Predictions are unchanged.
    A model already in the reference layout is returned as it is.

    Example::

        ref = as_reference_model(user_model, fields=[f.name for f in ds.fields])
        ref.inputs[0].shape, ref.get_layer("emb_site")     # (None, F) int32, the user's site table
        small, info = apply_plan(ref, plan, ds)             # or search(ref, ds, max_ratio=4, ...)

    Args:
        model: a functional model with one integer input per field.
        fields: the column order (e.g. ``[f.name for f in dataset.fields]``).

    Returns:
        a new functional model (the input model is untouched).

    Raises:
        ValueError: unsupported layers (:func:`check_supported`), inputs that are not
            one id per row, or a field input read by something other than Embedding
            layers; each message names the layer.
    """
    check_supported(model)
    if _is_reference(model):
        return model
    names = field_inputs(model, fields)
    return _ToReference(model, names).run()


def with_user_inputs(model: keras.Model, like: keras.Model) -> keras.Model:
    """A reference-layout model (e.g. from :func:`~keras_ctr_compress.search.apply_plan`)
    with the user's named inputs again.

    The new model takes ``{name: ids}`` shaped like ``like``'s inputs, for the fields
    ``model`` still reads (a pruned field has no input: the device need not compute it),
    stacks them into the ``ids`` matrix and runs ``model``'s layers (same weights).

    Example::

        small, info = apply_plan(as_reference_model(user_model, fields), plan, ds)
        shipped = with_user_inputs(small, like=user_model)
        export_litert(shipped, "small.tflite")     # inputs named like the user's model
    """
    from keras_ctr_compress.compress.field_importance import model_field_names

    check_supported(model)
    if not _is_reference(model):
        raise ValueError(f"model {model.name!r} is not in the id-matrix layout (ids -> SplitFields)")
    kept = model_field_names(model)
    theirs = {_input_name(t): t for t in _inputs(like)}
    missing = [f for f in kept if f not in theirs]
    if missing:
        raise ValueError(f"model {model.name!r} reads fields {missing} that {like.name!r} has no input for")
    new_inputs = {f: keras.Input(tuple(theirs[f].shape[1:]), dtype=theirs[f].dtype, name=f) for f in kept}
    cols = [keras.layers.Reshape((1,), name=f"{f}_column")(t) if t.shape[1:] == () else t
            for f, t in new_inputs.items()]
    ids = keras.layers.Concatenate(axis=-1, name="ids_concat")(cols) if len(cols) > 1 else cols[0]
    ids = keras.ops.cast(ids, "int32")
    outputs = model._run_through_graph([ids], operation_fn=lambda op: op,
                                       call_fn=lambda layer, *a, **k: _clone_call(layer, a, k))
    return keras.Model(new_inputs, outputs, name=model.name)


__all__ = [
    "SUPPORTED_TEXT",
    "allow_layer",
    "as_reference_model",
    "check_supported",
    "field_inputs",
    "inputs_from_ids",
    "with_user_inputs",
]

