"""A trained model's folder: ``model.keras`` + ``preprocessor.json`` + ``meta.json``.

``meta.json`` records the data spec, split seed, model config, training summary and
test metrics. Loading always uses Keras safe mode (no code from the file runs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import keras

from keras_ctr_compress.utils import atomic_path, atomic_write_text

MODEL_FILE = "model.keras"
PREPROCESSOR_FILE = "preprocessor.json"
META_FILE = "meta.json"


@dataclass
class TrainedModel:
    model: keras.Model
    preprocessor: object
    meta: dict
    path: Path


def save_trained(folder: str | Path, model: keras.Model, preprocessor, meta: dict) -> Path:
    """Writes the three files, each atomically; ``meta.json`` last, so a folder whose
    meta.json exists is complete."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
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
        raise ValueError(f"{folder}: not a complete model folder ({META_FILE} missing)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_path}: corrupted JSON ({e.msg}, line {e.lineno})") from None
    model = load_keras_model(folder / MODEL_FILE)
    pre_path = folder / PREPROCESSOR_FILE
    pre = Preprocessor.load(pre_path) if pre_path.exists() else None
    return TrainedModel(model, pre, meta, folder)


def load_keras_model(path: str | Path) -> keras.Model:
    """``keras.saving.load_model`` in safe mode, with a one-line error for a bad file."""
    import keras_ctr_compress.layers  # noqa: F401  (registers the custom layers)

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as e:  # Keras raises many types for truncated / corrupted archives
        raise ValueError(f"{path}: cannot load Keras model ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def _jsonable(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
