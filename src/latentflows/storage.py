"""Safe files: atomic writes and safetensors with a format tag (never pickle)."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.nn.parameter import is_lazy

from .errors import ModelFileError

FORMAT_VERSION = 1


def _default_mode() -> int:
    """What open() would give a new file: 0o666 less the umask (mkstemp uses 0o600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w"):
    """Write to a temporary file beside ``path``, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, mode) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, _default_mode())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path, data) -> None:
    with atomic_write(path) as stream:
        json.dump(data, stream, indent=2)
        stream.write("\n")


def write_text_atomically(path, text: str) -> None:
    with atomic_write(path) as stream:
        stream.write(text)


def read_json(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(f"{path}: not valid JSON ({error}); the file is damaged or not ours") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: expected a JSON object")
    return data


def save_safetensors(path, tensors: dict[str, torch.Tensor], format_name: str, metadata: dict[str, str] | None = None) -> None:
    """Save tensors with ``format`` and ``format_version`` tags in the header, atomically."""
    header = {"format": format_name, "format_version": str(FORMAT_VERSION), **(metadata or {})}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:  # safetensors writes by path: write a temporary file, then rename it into place
        save_file(tensors, temporary, metadata=header)
        os.chmod(temporary, _default_mode())
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def load_safetensors(path, expected_format: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata; a missing, truncated or foreign file gives a ModelFileError."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as reader:
            metadata = reader.metadata() or {}
            if metadata.get("format") != expected_format:
                raise ModelFileError(f"{path}: not a {expected_format} file (its header has no latentflows format tag)")
            version = int(metadata.get("format_version", "0"))
            if version > FORMAT_VERSION:
                raise ModelFileError(f"{path}: written by a newer latentflows (format {version}); upgrade latentflows to read it")
            tensors = {key: reader.get_tensor(key) for key in reader.keys()}
    except ModelFileError:
        raise
    except Exception as error:
        raise ModelFileError(f"{path}: unreadable safetensors file, truncated or not ours ({error})") from None
    return tensors, metadata


def load_weights_into(module, path, expected_format: str) -> dict[str, str]:
    """Load tagged safetensors into ``module`` strictly; a mismatch names the keys. Returns the header."""
    tensors, metadata = load_safetensors(path, expected_format)
    load_state_strictly(module, tensors, path)
    return metadata


def load_state_strictly(module, tensors: dict[str, torch.Tensor], path) -> None:
    """``module.load_state_dict(tensors)``, but a mismatch is a ModelFileError naming ``path`` and the keys."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [k for k, v in expected.items()  # lazy parameters take their shape from the file
             if k in tensors and not is_lazy(v) and tensors[k].shape != v.shape]
    if missing or unexpected or wrong:
        detail = "; ".join(f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                           for what, keys in (("missing", missing), ("unexpected", unexpected),
                                              ("wrong shape", wrong)) if keys)
        raise ModelFileError(f"{path}: weights do not match the model's config ({detail})")
    module.load_state_dict(tensors)
