"""Safe files: atomic writes and safetensors with a format tag (never pickle)."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

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
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temporary file beside ``path``, then rename: readers never see half a file.

    On an error inside the block the temporary file is removed and ``path`` is left as it
    was. The new file gets the permissions ``open`` would give it.

    Args:
        path: the file to write; missing parent folders are created.
        mode: the ``open`` mode, e.g. ``"w"`` or ``"wb"``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     with atomic_write(Path(folder) / "a.txt") as stream:
        ...         _ = stream.write("done")
        ...     print((Path(folder) / "a.txt").read_text(), len(list(Path(folder).iterdir())))
        done 1
    """
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


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON with a final newline, atomically.

    Args:
        path: the file to write.
        data: JSON-serializable data.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     write_json(Path(folder) / "a.json", {"a": 1})
        ...     print(read_json(Path(folder) / "a.json"))
        {'a': 1}
    """
    with atomic_write(path) as stream:
        json.dump(data, stream, indent=2)
        stream.write("\n")


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see ``atomic_write``).

    Args:
        path: the file to write.
        text: its new content.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     write_text_atomically(Path(folder) / "notes.txt", "hello")
        ...     print((Path(folder) / "notes.txt").read_text())
        hello
    """
    with atomic_write(path) as stream:
        stream.write(text)


def read_json(path: str | os.PathLike) -> dict:
    """A JSON object from ``path``; a missing, damaged or non-object file gives a ModelFileError.

    Args:
        path: the file to read.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = (Path(folder) / "list.json").write_text("[1, 2]")
        ...     try:
        ...         read_json(Path(folder) / "list.json")
        ...     except ModelFileError as error:
        ...         print(str(error).split(": ")[-1])
        expected a JSON object
    """
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


def load_torch_state_dict(path: Path, what: str = "weights", hint: str = "") -> dict[str, torch.Tensor]:
    """A state dict saved with ``torch.save``, read as tensors only (never code).

    Any unreadable file, or one that holds something else, is a ``ModelFileError`` that
    names the file and ``what`` it should hold, and ends with ``hint`` (what to do about it).
    """
    try:
        # weights_only: the restricted unpickler that admits tensors only, never code
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same message
        raise ModelFileError(f"{path}: not a readable {what} file ({type(error).__name__}: {error}){hint}") from None
    if not isinstance(state, dict):
        raise ModelFileError(f"{path}: expected a state dict of tensors{hint}")
    return state


def save_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], format_name: str,
                     metadata: dict[str, str] | None = None) -> None:
    """Save tensors with ``format`` and ``format_version`` tags in the header, atomically.

    The tags let ``load_safetensors`` refuse a file of another kind or a newer version.

    Args:
        path: the file to write.
        tensors: the tensors by name (moved to the CPU and made contiguous).
        format_name: the kind of file, checked on loading.
        metadata: more string entries for the header.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     save_safetensors(Path(folder) / "t.safetensors", {"w": torch.ones(2)}, "demo", {"note": "hi"})
        ...     tensors, header = load_safetensors(Path(folder) / "t.safetensors", "demo")
        >>> tensors["w"].tolist(), header["format"], header["note"]
        ([1.0, 1.0], 'demo', 'hi')
    """
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


def load_safetensors(path: str | os.PathLike, expected_format: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata; a missing, truncated or foreign file gives a ModelFileError.

    Args:
        path: the file to read.
        expected_format: the ``format`` tag the file must carry.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     save_safetensors(Path(folder) / "t.safetensors", {"w": torch.ones(1)}, "demo")
        ...     try:
        ...         load_safetensors(Path(folder) / "t.safetensors", "latentflows-model")
        ...     except ModelFileError as error:
        ...         print(str(error).split(": ")[1])
        not a latentflows-model file (its header has no latentflows format tag)
    """
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
                raise ModelFileError(f"{path}: written by a newer latentflows (format {version}); "
                                     "upgrade latentflows to read it")
            tensors = {key: reader.get_tensor(key) for key in reader.keys()}
    except ModelFileError:
        raise
    except Exception as error:
        raise ModelFileError(f"{path}: unreadable safetensors file, truncated or not ours ({error})") from None
    return tensors, metadata


def load_weights_into(module: torch.nn.Module, path: str | os.PathLike, expected_format: str) -> dict[str, str]:
    """Load tagged safetensors into ``module`` strictly; a mismatch names the keys. Returns the header.

    Args:
        module: the module whose state dict the file must match.
        path: the safetensors file.
        expected_format: the ``format`` tag the file must carry.

    Example:
        >>> import tempfile
        >>> source, target = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     save_safetensors(Path(folder) / "w.safetensors", source.state_dict(), "demo")
        ...     header = load_weights_into(target, Path(folder) / "w.safetensors", "demo")
        >>> torch.equal(source.weight, target.weight), header["format_version"]
        (True, '1')
    """
    tensors, metadata = load_safetensors(path, expected_format)
    load_state_strictly(module, tensors, path)
    return metadata


def load_state_strictly(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """``module.load_state_dict(tensors)``, but a mismatch is a ModelFileError naming ``path`` and the keys.

    Lazy parameters (not yet built) accept any shape, since they take theirs from the file.

    Args:
        module: the module to load into.
        tensors: the state dict to load.
        path: the file the tensors came from, named in the error.

    Example:
        >>> try:
        ...     load_state_strictly(torch.nn.Linear(2, 1), {"weight": torch.ones(1, 2)}, "w.safetensors")
        ... except ModelFileError as error:
        ...     print(error)
        w.safetensors: weights do not match the model's config (missing: bias)
    """
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
