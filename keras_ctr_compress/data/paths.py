"""Where the shared real data and the dataset cache live."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "KCC_DATA_DIR"
CACHE_ENV = "KCC_CACHE_DIR"


def _candidates() -> list[Path]:
    """``shared/data`` next to every parent of the cwd and of this package's folder
    (so that /work/main, /work/main/tests or an installed copy under /work/main/.venv
    all find /work/shared/data), in that order, without duplicates."""
    seen: list[Path] = []
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for parent in (start, *start.parents):
            cand = parent / "shared" / "data"
            if cand not in seen:
                seen.append(cand)
    return seen


def find_shared_data_dir() -> Path:
    """The folder of the shared real datasets (``../shared/data`` of the repository).

    ``$KCC_DATA_DIR`` wins when set; otherwise the first existing ``shared/data``
    beside a parent of the current directory or of the package. Raises
    ``FileNotFoundError`` naming every place it looked.
    """
    env = os.environ.get(DATA_ENV)
    if env:
        p = Path(env).expanduser()
        if p.is_dir():
            return p
        raise FileNotFoundError(f"${DATA_ENV}={env} is not a directory")
    cands = _candidates()
    for cand in cands:
        if cand.is_dir():
            return cand
    looked = ", ".join(str(c) for c in cands[:6]) + (", ..." if len(cands) > 6 else "")
    raise FileNotFoundError(
        f"shared data folder not found: set ${DATA_ENV}, or place it as shared/data beside a "
        f"parent folder (looked in {looked})"
    )


def shared_dataset_dir(name: str) -> Path:
    """``find_shared_data_dir() / name``, with a clear error if that folder is missing."""
    root = find_shared_data_dir()
    p = root / name
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: the shared dataset folder {name!r} is missing")
    return p


def cache_dir() -> Path:
    """The dataset cache: ``$KCC_CACHE_DIR``, else ``~/.cache/keras_ctr_compress``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "keras_ctr_compress"
