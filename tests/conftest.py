"""Shared test set-up."""

import os

# Quiet and deterministic TensorFlow on CPU (set before any test imports it).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


# --- shared real data (../shared/data): read at run time, never copied into the repo ---

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


def require_shared_data(name: str | None = None) -> Path:
    """The shared data folder (or its sub-folder ``name``).

    When it is missing: fails under ``CI=true`` (CI must have it), skips with the
    reason otherwise.
    """
    from keras_ctr_compress.data.paths import find_shared_data_dir

    try:
        path = find_shared_data_dir()
        if name is not None:
            path = path / name
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing")
    except FileNotFoundError as e:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but the shared data is missing: {e}")
        pytest.skip(f"shared data not available: {e}")
    return path


@pytest.fixture
def shared_data():
    """``shared_data("frappe_raw")`` -> Path, failing in CI / skipping elsewhere if absent."""
    return require_shared_data
