"""Datasets: specs, streaming readers, preprocessing, splits, the synthetic generator.

The public entry points::

    ds = load_dataset("criteo:train.tsv,min_count=5", seed=0)   # -> CTRDataset (int32 ids)
    ds = load_dataset("synthetic:rows=1000000,fields=16")
    pre = Preprocessor.load("preprocessor.json")
    ds = load_dataset("criteo:new_rows.tsv", preprocessor=pre)  # encode with saved vocabularies
    tf_ds = stream_tf_dataset("criteo:day_0.gz", pre, "train", batch_size=4096)
"""

from keras_ctr_compress.data.datasets import (
    chunk_parts,
    data_files,
    default_min_count,
    fit_preprocessor,
    iter_encoded,
    iter_tf_dataset,
    load_dataset,
    open_source,
    stream_tf_dataset,
)
from keras_ctr_compress.data.errors import DataError
from keras_ctr_compress.data.paths import cache_dir, find_shared_data_dir
from keras_ctr_compress.data.preprocess import MISSING_ID, OOV_ID, Preprocessor, bucketize
from keras_ctr_compress.data.readers import (
    ArraySource,
    ArrowSource,
    Chunk,
    Column,
    CriteoSource,
    CSVSource,
    LibFMSource,
    ParquetSource,
    Source,
    load_schema,
)
from keras_ctr_compress.data.schema import CTRDataset, Field, Split
from keras_ctr_compress.data.spec import DataSpec, parse_spec
from keras_ctr_compress.data.split import split_codes
from keras_ctr_compress.data.synthetic import SyntheticConfig, SyntheticSource, bayes_metrics
from keras_ctr_compress.data.tfio import TfioStatus, tfio_status

__all__ = [
    "MISSING_ID",
    "OOV_ID",
    "ArraySource",
    "ArrowSource",
    "CSVSource",
    "CTRDataset",
    "Chunk",
    "Column",
    "CriteoSource",
    "DataError",
    "DataSpec",
    "Field",
    "LibFMSource",
    "ParquetSource",
    "Preprocessor",
    "Source",
    "Split",
    "SyntheticConfig",
    "SyntheticSource",
    "TfioStatus",
    "bayes_metrics",
    "bucketize",
    "cache_dir",
    "chunk_parts",
    "data_files",
    "default_min_count",
    "find_shared_data_dir",
    "fit_preprocessor",
    "iter_encoded",
    "iter_tf_dataset",
    "load_dataset",
    "load_schema",
    "open_source",
    "parse_spec",
    "split_codes",
    "stream_tf_dataset",
    "tfio_status",
]
