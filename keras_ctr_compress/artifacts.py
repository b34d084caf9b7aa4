"""A trained model's folder: ``model.keras`` + ``preprocessor.json`` + ``meta.json``.

``meta.json`` records the data spec, split seed, model config, training summary and
test metrics; it is written last and removed first, so a folder with a ``meta.json``
is complete. While ``kcc train`` runs the folder holds only ``checkpoint.npz`` (the
state after the last finished epoch, for ``kcc train --resume``). Loading always
uses Keras safe mode (no code from the file runs).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras

from keras_ctr_compress.utils import atomic_path, atomic_write_text

MODEL_FILE = "model.keras"
PREPROCESSOR_FILE = "preprocessor.json"
META_FILE = "meta.json"
CHECKPOINT_FILE = "checkpoint.npz"


@dataclass
class TrainedModel:
    model: keras.Model
    preprocessor: object
    meta: dict
    path: Path


def save_trained(folder: str | Path, model: keras.Model, preprocessor, meta: dict) -> Path:
    """Writes the three files, each atomically; ``meta.json`` last, so a folder whose
    meta.json exists is complete. An older ``meta.json`` goes first: a save killed
    half-way over an older model must not leave a folder that looks complete."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / META_FILE).unlink(missing_ok=True)
    with atomic_path(folder / MODEL_FILE, suffix=".keras") as tmp:
        model.save(tmp)
    if preprocessor is not None:
        preprocessor.save(folder / PREPROCESSOR_FILE)
    atomic_write_text(folder / META_FILE, json.dumps(meta, indent=1, default=_jsonable) + "\n")
    return folder


def load_trained(folder: str | Path) -> TrainedModel:
    """Loads a folder written by ``save_trained`` (safe mode); clear errors if incomplete."""
    from keras_ctr_compress.data import Preprocessor

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such model folder")
    meta_path = folder / META_FILE
    if not meta_path.exists():
        hint = (f"; it holds the checkpoint of an interrupted training: finish it with "
                f"kcc train --resume --out {folder}") if (folder / CHECKPOINT_FILE).exists() else ""
        raise ValueError(f"{folder}: not a complete model folder ({META_FILE} missing){hint}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{meta_path}: corrupted JSON ({getattr(e, 'msg', e)})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    model = load_keras_model(folder / MODEL_FILE)
    pre_path = folder / PREPROCESSOR_FILE
    pre = Preprocessor.load(pre_path) if pre_path.exists() else None
    if pre is not None:
        check_preprocessor_fits(pre, model, pre_path)
    return TrainedModel(model, pre, meta, folder)


def check_preprocessor_fits(pre, model: keras.Model, where: str | Path) -> None:
    """Raises one line when the vocabularies give ids the model's tables cannot look up
    (a preprocessor file from another run next to the model). A field-pruned model
    reads a subset of the fields: its columns are matched by field name."""
    from keras_ctr_compress.compress.field_importance import model_field_names
    from keras_ctr_compress.models.builder import safe_name
    from keras_ctr_compress.models.training import input_vocab_sizes

    sizes = input_vocab_sizes(model)
    if sizes is None:
        return
    fields = pre.fields
    if len(fields) != len(sizes):
        by_name = {safe_name(f.name): f for f in fields}
        names = model_field_names(model)
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"{where}: has no field {missing[0]!r} that the model reads (vocabularies and "
                             "model.keras come from different runs)")
        fields = [by_name[n] for n in names]
    for j, (f, rows) in enumerate(zip(fields, sizes, strict=True)):
        if rows is not None and f.vocab_size > rows:
            raise ValueError(f"{where}: field {f.name!r} (column {j}) has {f.vocab_size} ids but the model's "
                             f"table has {rows} rows (vocabularies and model.keras come from different runs)")


def load_keras_model(path: str | Path) -> keras.Model:
    """``keras.saving.load_model`` in safe mode, with a one-line error for a bad file."""
    import keras_ctr_compress.layers  # noqa: F401  (registers the custom layers)

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    _check_archive(path)
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as e:  # Keras raises many types for truncated / corrupted archives
        raise ValueError(f"{path}: cannot load Keras model ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def _check_archive(path: Path) -> None:
    """Checks every member of a ``.keras`` zip against its CRC-32. Keras reads the
    weights through h5py in random order, so zipfile's own end-of-stream CRC check
    never runs: flipped bytes inside the weights would load silently as other weights."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise ValueError(f"{path}: cannot load Keras model (not a complete .keras archive: {e})") from None
    if bad is not None:
        raise ValueError(f"{path}: cannot load Keras model (corrupted: member {bad} fails its CRC-32 check)")


def _jsonable(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
