"""Scoring raw rows through the on-device artefact: ``X.tflite`` + ``X.preprocessor.json``.

This is the edge path end to end: raw feature values -> ids by the saved vocabularies
-> the LiteRT interpreter -> click probabilities.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np


def sidecar_path(tflite_path: str | Path) -> Path:
    """The preprocessor file that travels with ``tflite_path``."""
    p = Path(tflite_path)
    return p.with_name(p.stem + ".preprocessor.json")


def write_sidecar(tflite_path: str | Path, preprocessor_file: str | Path) -> Path:
    """Copies the vocabulary file next to the .tflite (atomically)."""
    from keras_ctr_compress.utils import atomic_path

    dst = sidecar_path(tflite_path)
    with atomic_path(dst) as tmp:
        shutil.copyfile(preprocessor_file, tmp)
    return dst


def artefact_bytes(tflite_path: str | Path) -> dict[str, int]:
    """Bytes of everything the device needs: the .tflite and its preprocessor file."""
    t = Path(tflite_path).stat().st_size
    side = sidecar_path(tflite_path)
    s = side.stat().st_size if side.exists() else 0
    return {"tflite": t, "preprocessor": s, "total": t + s}


def score_tflite(
    tflite_path: str | Path, data_spec: str, *, split: str = "test", seed: int = 0,
    batch_size: int = 1024, skip_bad_rows: int = 0,
) -> dict:
    """AUC and log loss of the artefact on raw rows of ``data_spec`` (``split`` of the
    deterministic split with ``seed``, or ``all``); up to ``skip_bad_rows`` malformed
    rows are skipped. Categories the vocabularies never saw map to the OOV id 0."""
    from keras_ctr_compress.data import Preprocessor, load_dataset
    from keras_ctr_compress.export import LiteRTModel
    from keras_ctr_compress.models import auc_logloss

    tflite_path = Path(tflite_path)
    if not tflite_path.exists():
        raise FileNotFoundError(f"{tflite_path}: no such file")
    side = sidecar_path(tflite_path)
    if not side.exists():
        raise FileNotFoundError(f"{side}: the preprocessor file of {tflite_path.name} is missing")
    runner = LiteRTModel(tflite_path)  # a damaged file is named before any data is read
    pre = Preprocessor.load(side)
    ds = load_dataset(data_spec, seed=seed, preprocessor=pre, skip_bad_rows=skip_bad_rows)
    if split == "all":
        x = np.concatenate([ds.train.x, ds.valid.x, ds.test.x])
        y = np.concatenate([ds.train.y, ds.valid.y, ds.test.y])
    elif split in ("train", "valid", "test"):
        part = getattr(ds, split)
        x, y = part.x, part.y
    else:
        raise ValueError(f"split must be train, valid, test or all; got {split!r}")
    p = runner.predict(x, batch_size=batch_size)
    auc, ll = auc_logloss(y, p, where=f"{data_spec} ({split})")
    return {"auc": auc, "logloss": ll, "rows": int(len(y)), "predictions": p}
