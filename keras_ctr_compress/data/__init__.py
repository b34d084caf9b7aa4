"""Datasets: specs, readers, preprocessing, the synthetic generator."""

from keras_ctr_compress.data.schema import CTRDataset, Field, Split

__all__ = ["CTRDataset", "Field", "Split"]
