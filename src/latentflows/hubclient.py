"""Talking to the Hugging Face Hub: Hub ids, downloads into its cache, one-line errors.

``resolve_run`` turns ``owner/name`` into a folder in the Hugging Face cache (a download the
first time), so that every command that reads a run also reads a Hub model;
``upload_errors`` turns a failed upload into one line. Every failure is a
``LatentflowsError``: offline, a missing or private repo, an incomplete run, no write access.
``huggingface_hub`` is imported when a function here needs it, so this module itself is
light. It knows nothing of the pipeline: ``LatentFlowPipeline.from_pretrained`` /
``push_to_hub`` use it, and ``latentflows.hub`` (pushing a run folder) is built on both.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ._version import __version__
from .errors import LatentflowsError, ModelFileError
from .extras import require
from .runs import RunFolder

LIBRARY_NAME = "latentflows"
# what a command reading a run may use; a Hub repo made by ``push`` has the model files and eval.json
RUN_FILES = RunFolder.MODEL_FILES + (RunFolder.EVAL, RunFolder.SETTINGS, RunFolder.METRICS)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_LOGIN = "log in with `hf auth login`"


class HubError(LatentflowsError):
    """The Hugging Face Hub could not give or take a model (offline, missing repo, no access).

    Args:
        *args: the message, as for any ``Exception``.

    Example:
        >>> isinstance(HubError("x"), LatentflowsError)
        True
    """


def is_hub_id(text: str | os.PathLike) -> bool:
    """True when ``text`` has the form of a Hub model id (``owner/name``), whatever is on disk.

    Example:
        >>> is_hub_id("someone/pets-flow"), is_hub_id("runs/quick"), is_hub_id("quick"), is_hub_id("/abs/path")
        (True, True, False, False)
        >>> is_hub_id("a/b/c"), is_hub_id("owner/..")
        (False, False)
    """
    text = str(text)
    return bool(_HUB_ID.fullmatch(text)) and ".." not in text and "--" not in text and not text.endswith((".", "-"))


# ---------------------------------------------------------------------------------------- reading
def resolve_run(text: str | os.PathLike, *, download: bool = True, revision: str | None = None,
                token: str | bool | None = None, cache_dir: str | os.PathLike | None = None,
                force_download: bool = False, files: tuple[str, ...] = RUN_FILES) -> Path:
    """The run folder that ``text`` names: a local folder, or a Hub model id (``owner/name``)
    downloaded into the Hugging Face cache (``HF_HOME``; once, then read from there).

    A local folder wins over a Hub id of the same spelling. Only ``files`` are downloaded
    (by default what the commands read: the model, ``eval.json``, ``run.json``,
    ``metrics.jsonl``); a cached model is used offline.

    Args:
        text: a run folder, or ``owner/name``.
        download: False: never download, only the cache (``local_files_only``).
        revision: a branch, tag or commit of the Hub repo (default: main).
        token: a Hugging Face token (default: ``HF_TOKEN`` or the ``hf auth login`` one).
        cache_dir: another cache than the Hugging Face default.
        force_download: download again even when cached.
        files: the file names to fetch (``allow_patterns``).

    Raises:
        ModelFileError: ``text`` is neither a folder nor a Hub id, or the repo is not a latentflows model.
        HubError: offline and not cached, no such (or a private) repo, or another Hub failure; one line.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     resolve_run(folder) == Path(folder)
        True
        >>> try:
        ...     resolve_run("no-such-run")
        ... except ModelFileError as error:
        ...     print(error)
        no-such-run: no such run folder
    """
    path = Path(text)
    if path.is_dir():
        return path
    text = str(text)
    if path.exists():
        raise ModelFileError(f"{text} is a file, not a run folder")
    if not is_hub_id(text):
        raise ModelFileError(f"{text}: no such run folder")
    if path.parent.is_dir():  # runs/quikc: a local path with a typo, not someone's model
        raise ModelFileError(f"{text}: no such run folder ({path.parent}/ is a local folder, so {text} is not "
                             f"read as a Hugging Face Hub id)")
    hf = require("huggingface_hub", "hub")
    try:
        folder = Path(hf.snapshot_download(text, repo_type="model", revision=revision, cache_dir=cache_dir,
                                           token=token, force_download=force_download, local_files_only=not download,
                                           allow_patterns=list(files), library_name=LIBRARY_NAME,
                                           library_version=__version__))
    except Exception as error:
        explained = _download_error(error, text, download=download, revision=revision)
        if explained is None:
            raise
        raise explained from None
    missing = [name for name in RunFolder.MODEL_FILES if not (folder / name).is_file()]
    if missing and (not download or bool(getattr(hf.constants, "HF_HUB_OFFLINE", False))):
        raise HubError(f"{text} is only partly in the local Hugging Face cache (no {' or '.join(missing)}); download "
                       f"it once online, or pass a local run folder")
    if missing:
        raise ModelFileError(f"{text}: not a latentflows model (the Hub repo has no {' or '.join(missing)})")
    return folder


def _offline(error: BaseException) -> bool:
    from huggingface_hub import constants, errors

    offline_error = getattr(errors, "OfflineModeIsEnabled", ())
    causes = [error, error.__cause__, error.__context__]
    return bool(getattr(constants, "HF_HUB_OFFLINE", False)) or any(isinstance(c, offline_error) for c in causes)


def _unreachable(error: BaseException) -> bool:
    """A connection failure or offline mode (not an answer from the Hub); huggingface_hub 1.x
    speaks httpx, 0.x requests."""
    from huggingface_hub import errors

    if isinstance(error, errors.HfHubHTTPError):
        return False
    kinds: list[type] = [ConnectionError, TimeoutError]
    kinds += [getattr(errors, name) for name in ("LocalEntryNotFoundError", "OfflineModeIsEnabled") if hasattr(errors, name)]
    for module, names in (("httpx", ("TransportError",)), ("requests.exceptions", ("ConnectionError", "Timeout"))):
        try:
            imported = __import__(module, fromlist=list(names))
        except ImportError:
            continue
        kinds += [getattr(imported, name) for name in names]
    return isinstance(error, tuple(kinds))


def _status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _download_error(error: BaseException, repo_id: str, *, download: bool, revision: str | None
                    ) -> LatentflowsError | None:
    """One line for a failed download (None: not a Hub failure, let it through)."""
    from huggingface_hub import errors

    if isinstance(error, errors.RevisionNotFoundError):
        return HubError(f"{repo_id}: no revision {revision!r} on the Hugging Face Hub")
    if isinstance(error, errors.GatedRepoError):
        return HubError(f"{repo_id} is gated: accept its conditions on https://huggingface.co/{repo_id} and {_LOGIN}")
    if isinstance(error, errors.RepositoryNotFoundError) or _status(error) in (401, 404):
        return HubError(f"{repo_id}: no such model on the Hugging Face Hub (or it is private: {_LOGIN})")
    if isinstance(error, errors.HFValidationError):
        return ModelFileError(f"{repo_id}: no such run folder, nor a valid Hugging Face Hub id ({_first_line(error)})")
    if _unreachable(error):
        where = "only partly in" if isinstance(error, getattr(errors, "IncompleteSnapshotError", ())) else "not in"
        if not download:
            return HubError(f"{repo_id} is {where} the local Hugging Face cache and downloads are off; download it "
                            f"once, or pass a local run folder")
        reason = "HF_HUB_OFFLINE is set" if _offline(error) else "no connection"
        return HubError(f"{repo_id} is {where} the local Hugging Face cache and the Hub cannot be reached ({reason}); "
                        f"download it once online, or pass a local run folder")
    if isinstance(error, errors.HfHubHTTPError):
        return HubError(f"{repo_id}: the Hugging Face Hub answered {_status(error) or 'an error'}: {_first_line(error)}")
    return None


# ---------------------------------------------------------------------------------------- uploading
@contextmanager
def upload_errors(repo_id: str) -> Iterator[None]:
    """Turn a failed Hub upload (create, check, commit) into one line."""
    try:
        yield
    except LatentflowsError:
        raise
    except Exception as error:
        explained = _upload_error(error, repo_id)
        if explained is None:
            raise
        raise explained from None


def _upload_error(error: BaseException, repo_id: str) -> LatentflowsError | None:
    from huggingface_hub import errors

    status = _status(error)
    if isinstance(error, errors.HFValidationError):
        return HubError(f"{repo_id}: not a valid Hugging Face Hub repo id (expected owner/name: {_first_line(error)})")
    if isinstance(error, getattr(errors, "LocalTokenNotFoundError", ())) or status == 401:
        return HubError(f"cannot push to {repo_id}: not logged in to the Hugging Face Hub ({_LOGIN}, set HF_TOKEN or "
                        f"pass --token)")
    if status == 403:
        return HubError(f"cannot push to {repo_id}: the token has no write access there (a write token of its owner "
                        f"is needed)")
    if isinstance(error, errors.RepositoryNotFoundError):
        return HubError(f"cannot push to {repo_id}: the repo could not be created or found (check the owner and that "
                        f"the token can write to it)")
    if _unreachable(error):
        reason = "HF_HUB_OFFLINE is set" if _offline(error) else "no connection"
        return HubError(f"cannot push to {repo_id}: the Hugging Face Hub cannot be reached ({reason})")
    if isinstance(error, errors.HfHubHTTPError):
        return HubError(f"cannot push to {repo_id}: the Hugging Face Hub answered {status or 'an error'}: "
                        f"{_first_line(error)}")
    return None
