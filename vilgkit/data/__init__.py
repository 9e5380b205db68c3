"""Data: the Shapes world, real image–text data, pre-tokenized code shards, and collation.

Importing this package registers the data sets in ``DATASETS``: ``ShapesDataset``,
``ImageTextFolder`` (JSONL/CSV index + images), ``WebDatasetReader`` (img2dataset tar shards) and
``CodeShardDataset`` (pre-tokenized codes written by ``vilgkit tokenize``).
"""

from vilgkit.data.code_shard_writer import write_code_shards
from vilgkit.data.code_shards import CodeShardDataset, TokenizerMismatchError
from vilgkit.data.collate import collate
from vilgkit.data.image_text import ImageTextFolder
from vilgkit.data.preprocess import DataQualityError, SkipStats
from vilgkit.data.shapes import ShapesDataset
from vilgkit.data.webdataset_reader import StreamPosition, WebDatasetReader

__all__ = [
    "CodeShardDataset",
    "DataQualityError",
    "ImageTextFolder",
    "ShapesDataset",
    "SkipStats",
    "StreamPosition",
    "TokenizerMismatchError",
    "WebDatasetReader",
    "collate",
    "write_code_shards",
]
