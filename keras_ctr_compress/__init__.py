"""keras-ctr-compress: compress Keras 3 click-through-rate models for edge devices."""

__version__ = "0.1.0"
