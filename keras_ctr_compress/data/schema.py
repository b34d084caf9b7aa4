"""The data contract shared by readers, models, export and the CLI.

Every dataset, whatever its source format, ends up as integer ids: one column per
field, id 0 of each field is its OOV id. Models take one ``int32`` input of shape
``(batch, num_fields)`` named ``"ids"``; column ``j`` is field ``j``'s id.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Field:
    """One categorical field as the model sees it.

    Attributes:
        name: field name (unique within a dataset; used in layer names).
        vocab_size: number of ids, including the OOV id 0 (and the missing-value id
            where the field has one). The field's embedding table has this many rows.
        source: where the ids come from: ``"categorical"`` (string tokens looked up
            in a vocabulary), ``"numeric"`` (a bucketised number) or ``"id"``
            (already-encoded integers).
    """

    name: str
    vocab_size: int
    source: str = "categorical"


@dataclass
class Split:
    """Encoded rows: ``x`` int32 ``(n, num_fields)``, ``y`` float32 ``(n,)`` in {0, 1}."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class CTRDataset:
    """An encoded dataset with its deterministic train / valid / test split.

    ``preprocessor`` maps raw rows of the source to ids and is saved next to a
    trained model (see ``keras_ctr_compress.data.preprocess``). ``info`` holds facts
    about the source, e.g. ``{"bayes_auc": 0.78}`` for the synthetic generator.
    """

    name: str
    fields: list[Field]
    train: Split
    valid: Split
    test: Split
    preprocessor: object = None
    info: dict = field(default_factory=dict)

    @property
    def num_fields(self) -> int:
        return len(self.fields)

    def split_sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "valid": len(self.valid), "test": len(self.test)}
