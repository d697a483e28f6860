"""Image sources -> uint8 images, decoded once into an on-disk cache and read back in batches.

``load_images`` accepts a Hugging Face hub id, a parquet file (or a folder of parquet
shards), an image folder with one subfolder per class, or nothing (the embedded Oxford
pets). Every image is converted to RGB, centre-cropped to a square and resized with
Pillow's LANCZOS filter, then kept as a row of a ``(N, 3, S, S)`` uint8 array. One module
per job:

- ``dataset``: ``ImageDataset``, what every source loads as.
- ``sources``: folder, parquet, hub and embedded sources, and ``load_images``.
- ``decode``: one image -> the uniform RGB array.
- ``cache``: the decode cache on disk (chunked, resumable, locked; least recently used removed).
- ``mapped``: ``MappedImages``, a data set bigger than memory read from its cache file by batches.
- ``batches``: ``Batches`` for the training loops, and ``prefetch``, which reads ahead in a thread.
- ``augment``: ``mirror_and_shift``, label-preserving copies of a batch (the flow's fresh codes).

The settings (``CHUNK_IMAGES``, ``IN_MEMORY_BYTES``, ...) are read from the module that owns them.
"""

from .augment import mirror_and_shift
from .batches import Batches, prefetch
from .cache import (
    CACHE_ENTRIES,
    CACHE_FORMAT,
    CACHE_FORMAT_VERSION,
    CHUNK_IMAGES,
    IN_MEMORY_BYTES,
    DecodePlan,
    cache_entries,
    clear_cache,
    default_cache_dir,
    in_memory_bytes,
    load_or_decode,
    weights_cache_dir,
)
from .dataset import ImageDataset
from .decode import DECODE_ERRORS, decode_image, to_rgb_array
from .mapped import READ_CHUNK_BYTES, MappedImages
from .sources import EMBEDDED_DIR, IMAGE_EXTENSIONS, LOADER_VERSION, embedded_files, load_images

__all__ = [
    "mirror_and_shift", "Batches", "prefetch",
    "CACHE_ENTRIES", "CACHE_FORMAT", "CACHE_FORMAT_VERSION", "CHUNK_IMAGES", "IN_MEMORY_BYTES", "DecodePlan",
    "cache_entries", "clear_cache", "default_cache_dir", "in_memory_bytes", "load_or_decode", "weights_cache_dir",
    "ImageDataset", "DECODE_ERRORS", "decode_image", "to_rgb_array", "READ_CHUNK_BYTES", "MappedImages",
    "EMBEDDED_DIR", "IMAGE_EXTENSIONS", "LOADER_VERSION", "embedded_files", "load_images",
]
