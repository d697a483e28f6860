"""Where images come from: an image folder, parquet files, a Hugging Face hub id, or the embedded
Oxford pets, loaded by ``load_images`` as an ``ImageDataset``.

Hub ids and parquet files go through the same ``datasets`` code path; an image folder has one
subfolder per class. Each source becomes a ``DecodePlan`` that the decode cache (``cache.py``)
decodes once with ``decode_image``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

from PIL import Image

from ..errors import DataError
from .cache import DecodePlan, load_or_decode
from .dataset import ImageDataset
from .decode import decode_image

EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "embedded"
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
LOADER_VERSION = 2  # bump when decoding or the cache layout changes, so old cache entries are not reused


def embedded_files() -> list[Path]:
    """The parquet shards of the embedded Oxford pets data, sorted; an error if they are missing.

    Example:
        >>> all(f.suffix == ".parquet" and f.parent == EMBEDDED_DIR for f in embedded_files())
        True
    """
    files = sorted(EMBEDDED_DIR.glob("*.parquet"))
    if not files:
        raise DataError(f"the embedded data is missing from {EMBEDDED_DIR}: reinstall latentflows")
    return files


def load_images(source: str | os.PathLike | None = None, *, label_field: str | None = None,
                image_field: str = "image", image_size: int = 64, cache_dir: str | os.PathLike | None = None,
                use_cache: bool = True, progress: bool = False) -> ImageDataset:
    """Load any supported source as an ``ImageDataset`` (see the module docstring).

    ``label_field`` picks the column that gives the class for parquet and hub data; by
    default ``dog`` (cat/dog, the embedded pets' species) when present, else ``label``.
    Unreadable images are skipped with a warning and listed in ``skipped``. The images
    are a tensor when they take at most ``$LATENTFLOWS_IN_MEMORY_BYTES`` (512 MiB), else
    ``MappedImages`` read from the cache file batch by batch. An interrupted decoding
    resumes where it stopped; two processes decoding the same source take turns.

    Args:
        source: a hub id, a parquet file or folder of shards, an image folder, or None (embedded).
        label_field: the column with the class (parquet and hub data).
        image_field: the column with the images (parquet and hub data).
        image_size: the side of the square images, at least 8.
        cache_dir: the decoded-image cache; default ``cache.default_cache_dir()``.
        use_cache: read and write the cache (without it the images are decoded into a
            temporary file, deleted once read).
        progress: show a progress bar while decoding.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     for name, grey in (("cat", 0), ("dog", 255)):
        ...         (Path(folder) / name).mkdir()
        ...         Image.new("RGB", (10, 10), (grey,) * 3).save(Path(folder) / name / "a.png")
        ...     data = load_images(folder, image_size=8, use_cache=False)
        >>> data.images.shape, data.class_names, data.labels.tolist()
        (torch.Size([2, 3, 8, 8]), ['cat', 'dog'], [0, 1])
    """
    if image_size < 8:
        raise DataError(f"image size must be at least 8 pixels, got {image_size}")
    kind, files, name = _resolve(source)
    key = _cache_key(kind, name, files, image_size, image_field, label_field)

    def plan() -> DecodePlan:
        if kind == "folder":
            return _folder_plan(Path(name))
        return _hf_plan(kind, name, files, image_field, label_field)

    dataset, decoded = load_or_decode(key, plan, image_size, cache_dir=cache_dir, use_cache=use_cache,
                                      progress=progress)
    if decoded and dataset.skipped:
        shown = ", ".join(dataset.skipped[:5]) + (" ..." if len(dataset.skipped) > 5 else "")
        warnings.warn(f"skipped {len(dataset.skipped)} unreadable image(s): {shown}", stacklevel=2)
    return dataset


def _resolve(source: str | os.PathLike | None) -> tuple[str, list[Path], str]:
    """(kind, files, name): kind is 'parquet', 'folder' or 'hub'."""
    if source is None:
        return "parquet", embedded_files(), "embedded:oxford-pets-64"
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix != ".parquet":
            raise DataError(f"{path}: a data file must be .parquet; for images, pass the folder that holds "
                            "one subfolder per class")
        return "parquet", [path.resolve()], str(path.resolve())
    if path.is_dir():
        shards = sorted(path.glob("*.parquet"))
        if shards:
            return "parquet", [p.resolve() for p in shards], str(path.resolve())
        return "folder", [], str(path.resolve())
    text = str(source)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")) and not path.suffix:
        return "hub", [], text
    raise DataError(f"data source {text!r} is neither an existing file or folder nor a hub id like 'owner/name'")


def _cache_key(kind: str, name: str, files: list[Path], image_size: int, image_field: str,
               label_field: str | None) -> str:
    identity: list = [LOADER_VERSION, kind, name, image_size, image_field, label_field]
    if kind == "folder":
        files = sorted(p for p in Path(name).rglob("*") if p.is_file())
    identity += [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:24]



def _folder_plan(root: Path) -> DecodePlan:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class subfolders found; put each class's images in its own subfolder "
                        f"(e.g. {root}/cat/*.jpg, {root}/dog/*.jpg)")
    entries = [(f, label) for label, name in enumerate(classes)
               for f in sorted((root / name).rglob("*"))
               if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".")]

    def chunks(start: int, count: int) -> Iterator[list]:
        for first in range(start, len(entries), count):
            yield [path for path, _ in entries[first : first + count]]

    return DecodePlan(str(root), classes, [label for _, label in entries], chunks, lambda path, size: decode_image(path, size),
                 lambda i: str(entries[i][0].relative_to(root)),
                 f"{root}: no readable images in {', '.join(classes)} (files ending in {', '.join(sorted(IMAGE_EXTENSIONS))})")


def _hf_plan(kind: str, name: str, files: list[Path], image_field: str, label_field: str | None) -> DecodePlan:
    import datasets  # imported here: it is slow to import and only needed on a cache miss

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    try:
        if kind == "parquet":
            table = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
        else:
            table = datasets.load_dataset(name, split="train")
    except Exception as error:
        raise DataError(f"could not load {name}: {error}") from error
    label_field = label_field or ("dog" if "dog" in table.column_names else "label")
    missing = [f for f in (image_field, label_field) if f not in table.column_names]
    if missing:
        raise DataError(f"{name}: missing field(s) {missing}; its fields are {table.column_names} "
                        "(choose others with --image-field / --label-field)")
    labels, class_names = _labels(table, label_field)
    if any(not 0 <= label < len(class_names) for label in labels):
        raise DataError(f"{name}: field {label_field!r} has rows without a class (-1); choose another --label-field")
    # Arrow rows, a chunk at a time: an image column gives {"bytes", "path"} undecoded, and
    # the table stays memory-mapped on disk (datasets' cache), never read whole.
    images = table.select_columns([image_field]).with_format("arrow")

    def chunks(start: int, count: int) -> Iterator[list]:
        for first in range(start, len(images), count):
            yield images[first : first + count].column(0).to_pylist()

    return DecodePlan(name, class_names, labels, chunks, lambda item, size: decode_image(_image_bytes(item), size),
                 lambda i: f"row {i}",
                 f"{name}: none of its {len(table)} rows holds a readable image in field {image_field!r}")


def _image_bytes(item: Any) -> bytes | bytearray | Path:
    if isinstance(item, dict):
        if item.get("bytes"):
            return item["bytes"]
        if item.get("path"):
            return Path(item["path"])
    if isinstance(item, (bytes, bytearray)):
        return item
    if isinstance(item, Image.Image):
        buffer = io.BytesIO()
        item.save(buffer, "PNG")
        return buffer.getvalue()
    raise TypeError(f"unsupported image value of type {type(item).__name__}")


def _labels(table: Any, field_name: str) -> tuple[list[int], list[str]]:
    import datasets

    feature = table.features[field_name]
    values = table[field_name]
    if isinstance(feature, datasets.ClassLabel):
        return list(values), list(feature.names)
    if feature.dtype == "bool":
        names = ["cat", "dog"] if field_name == "dog" else [f"not_{field_name}", field_name]
        return [int(bool(v)) for v in values], names
    if any(v is None for v in values):
        raise DataError(f"field {field_name!r} has empty values; choose another --label-field")
    classes = sorted(set(values), key=lambda v: (str(type(v)), v))
    index = {v: i for i, v in enumerate(classes)}
    return [index[v] for v in values], [str(v) for v in classes]
