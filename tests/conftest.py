"""Shared test set-up."""

import os

# Quiet and deterministic TensorFlow on CPU (set before any test imports it).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
