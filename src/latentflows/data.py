"""Image sources -> in-memory uint8 tensors, decoded once and cached on disk.

``load_images`` accepts a Hugging Face hub id, a parquet file (or a folder of parquet
shards), an image folder with one subfolder per class, or nothing (the embedded Oxford
pets). Hub ids and parquet files go through the same ``datasets`` code path. Every image
is converted to RGB, centre-cropped to a square and resized with Pillow's LANCZOS filter,
then kept as a ``(N, 3, S, S)`` uint8 tensor; the result is cached keyed by the source
and the image size, so the second run skips decoding.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DataError
from .storage import load_safetensors, save_safetensors

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
LOADER_VERSION = 1  # bump when decoding changes, so old cache entries are not reused
CACHE_ENTRIES = 8  # most recently used decoded sources kept on disk ($LATENTFLOWS_CACHE_ENTRIES)


@dataclass
class ImageDataset:
    """Images as uint8 ``(N, 3, S, S)``, integer labels ``(N,)`` and the class names.

    What every source loads as, and what the run split and the training stages take;
    the shapes are checked on creation.

    Args:
        images: uint8 ``(N, 3, S, S)``.
        labels: int64 ``(N,)``.
        class_names: the classes, in label order.
        source: where the images came from.
        skipped: files that could not be read.

    Example:
        >>> import torch
        >>> data = ImageDataset(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 1, 1]), ["cat", "dog"])
        >>> data.class_counts(), data.subset([1, 2]).image_size
        ({'cat': 1, 'dog': 3}, 8)
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    source: str = ""
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 of shape (N, 3, S, S), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must have one entry per image")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    def class_counts(self) -> dict[str, int]:
        """The number of images of each class, by class name."""
        counts = torch.bincount(self.labels, minlength=self.num_classes).tolist()
        return dict(zip(self.class_names, counts))

    def subset(self, indices: torch.Tensor | Sequence[int]) -> "ImageDataset":
        """The images at ``indices``, with the same class names and source."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        return ImageDataset(self.images[indices], self.labels[indices], list(self.class_names), self.source)


# ---------------------------------------------------------------------------- decoding

def to_rgb_array(image: Image.Image, size: int) -> np.ndarray:
    """Any Pillow image -> (size, size, 3) uint8: orientation fixed, RGB, centre crop, LANCZOS.

    The one decoding path of every source, so that all images are prepared alike;
    transparency is composited on white and 16-bit or float greyscale is rescaled.

    Args:
        image: an open Pillow image.
        size: the side of the square output.

    Example:
        >>> image = Image.new("L", (8, 4), 128)
        >>> array = to_rgb_array(image, 2)
        >>> array.shape, array.dtype.name, array[0, 0].tolist()
        ((2, 2, 3), 'uint8', [128, 128, 128])
    """
    if image.format == "JPEG" and max(image.size) > 4 * size:
        image.draft("RGB", (2 * size, 2 * size))  # let libjpeg decode a downscaled image
    image = ImageOps.exif_transpose(image)
    image = _as_rgb(image)
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.resize((size, size), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side))
    return np.asarray(image, dtype=np.uint8)


def _as_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit or float greyscale: Pillow's convert("RGB") clips, so rescale to 8 bits first.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes | str | Path, size: int) -> np.ndarray:
    """Decode an encoded image (bytes or a file path) with ``to_rgb_array``.

    Args:
        data: the encoded image's bytes, or the path of an image file.
        size: the side of the square output.

    Example:
        >>> buffer = io.BytesIO()
        >>> Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(buffer, "PNG")
        >>> decode_image(buffer.getvalue(), 2)[0, 0].tolist()   # fully transparent -> white
        [255, 255, 255]
    """
    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    with Image.open(source) as image:
        return to_rgb_array(image, size)


def _stack(arrays: list[np.ndarray], size: int) -> torch.Tensor:
    if not arrays:
        return torch.empty(0, 3, size, size, dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------------------- sources

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
    default ``dog`` (cat/dog, as in the seed notebook) when present, else ``label``.
    Unreadable images are skipped with a warning and listed in ``skipped``.

    Args:
        source: a hub id, a parquet file or folder of shards, an image folder, or None (embedded).
        label_field: the column with the class (parquet and hub data).
        image_field: the column with the images (parquet and hub data).
        image_size: the side of the square images, at least 8.
        cache_dir: the decoded-image cache; default ``default_cache_dir()``.
        use_cache: read and write the cache.
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
    cache_path = Path(cache_dir or default_cache_dir()) / f"{key}.safetensors"
    if use_cache and cache_path.exists():
        cached = _read_cache(cache_path)
        if cached is not None:
            os.utime(cache_path)  # mark as recently used
            return cached
    if kind == "folder":
        dataset = _load_folder(Path(name), image_size, progress)
    else:
        dataset = _load_hf(kind, name, files, image_field, label_field, image_size, progress)
    if dataset.skipped:
        shown = ", ".join(dataset.skipped[:5]) + (" ..." if len(dataset.skipped) > 5 else "")
        warnings.warn(f"skipped {len(dataset.skipped)} unreadable image(s): {shown}", stacklevel=2)
    if use_cache:
        _write_cache(cache_path, dataset)
    return dataset


def default_cache_dir() -> Path:
    """The latentflows cache folder: ``$LATENTFLOWS_CACHE``, else ``~/.cache/latentflows``.

    Example:
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"LATENTFLOWS_CACHE": "/tmp/lf-cache"}):
        ...     print(default_cache_dir())
        /tmp/lf-cache
    """
    return Path(os.environ.get("LATENTFLOWS_CACHE", Path.home() / ".cache" / "latentflows"))


def weights_cache_dir() -> Path:
    """Where pretrained network weights are kept (Inception, EfficientNet-Lite): ``weights`` in
    the latentflows cache.

    Example:
        >>> weights_cache_dir().name
        'weights'
    """
    return default_cache_dir() / "weights"


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


def _read_cache(path: Path) -> ImageDataset | None:
    try:
        tensors, metadata = load_safetensors(path, expected_format="latentflows-image-cache")
        return ImageDataset(tensors["images"], tensors["labels"], json.loads(metadata["class_names"]),
                            metadata.get("source", ""))
    except Exception as error:  # a damaged cache entry is rebuilt, never fatal
        warnings.warn(f"ignoring unreadable cache entry {path} ({error}); decoding again", stacklevel=3)
        return None


def _write_cache(path: Path, dataset: ImageDataset) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(path, {"images": dataset.images, "labels": dataset.labels}, "latentflows-image-cache",
                     {"class_names": json.dumps(dataset.class_names), "source": dataset.source})
    limit = int(os.environ.get("LATENTFLOWS_CACHE_ENTRIES", CACHE_ENTRIES))
    for stale in cache_entries(path.parent)[limit:]:  # least recently used beyond the limit
        stale.unlink(missing_ok=True)


def cache_entries(cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """Decoded-image cache files, most recently used first.

    Args:
        cache_dir: the cache folder; default ``default_cache_dir()``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = (Path(folder) / "a.safetensors").write_bytes(b"")
        ...     print([p.name for p in cache_entries(folder)], cache_entries(Path(folder) / "none"))
        ['a.safetensors'] []
    """
    directory = Path(cache_dir or default_cache_dir())
    if not directory.is_dir():
        return []
    return sorted(directory.glob("*.safetensors"), key=lambda p: p.stat().st_mtime, reverse=True)


def clear_cache(cache_dir: str | os.PathLike | None = None) -> tuple[int, int]:
    """Delete every cache entry (and leftovers of interrupted writes); (files, bytes) removed.

    Args:
        cache_dir: the cache folder; default ``default_cache_dir()``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = (Path(folder) / "a.safetensors").write_bytes(b"1234")
        ...     print(clear_cache(folder), cache_entries(folder))
        (1, 4) []
    """
    directory = Path(cache_dir or default_cache_dir())
    if not directory.is_dir():
        return 0, 0
    files = [*directory.glob("*.safetensors"), *directory.glob(".*.tmp")]
    size = sum(f.stat().st_size for f in files)
    for f in files:
        f.unlink(missing_ok=True)
    return len(files), size


def _load_folder(root: Path, size: int, progress: bool) -> ImageDataset:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class subfolders found; put each class's images in its own subfolder "
                        "(e.g. {root}/cat/*.jpg, {root}/dog/*.jpg)")
    arrays, labels, skipped = [], [], []
    entries = [(f, label) for label, name in enumerate(classes)
               for f in sorted((root / name).rglob("*"))
               if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".")]
    for path, label in _progress(entries, progress, "decoding images"):
        try:
            arrays.append(decode_image(path, size))
            labels.append(label)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            skipped.append(str(path.relative_to(root)))
    if not arrays:
        raise DataError(f"{root}: no readable images in {', '.join(classes)} "
                        f"(files ending in {', '.join(sorted(IMAGE_EXTENSIONS))})")
    dataset = ImageDataset(_stack(arrays, size), torch.tensor(labels, dtype=torch.long), classes, str(root), skipped)
    return dataset


def _load_hf(kind: str, name: str, files: list[Path], image_field: str, label_field: str | None, size: int,
             progress: bool) -> ImageDataset:
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
    if isinstance(table.features[image_field], datasets.Image):
        table = table.cast_column(image_field, datasets.Image(decode=False))
    labels, class_names = _labels(table, label_field)
    arrays, kept, skipped = [], [], []
    for i, item in enumerate(_progress(table[image_field], progress, "decoding images")):
        try:
            arrays.append(decode_image(_image_bytes(item), size))
            kept.append(i)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, TypeError):
            skipped.append(f"row {i}")
    if not arrays:
        raise DataError(f"{name}: none of its {len(table)} rows holds a readable image in field {image_field!r}")
    labels = torch.tensor(labels, dtype=torch.long)[kept]
    return ImageDataset(_stack(arrays, size), labels, class_names, name, skipped)


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


def _progress(items: Iterable, enabled: bool, description: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=description, leave=False)
