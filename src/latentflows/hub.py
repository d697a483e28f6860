"""The Hugging Face Hub: push a run, write its model card, and use a hub id wherever a run folder goes.

A run folder already is what a Hub model repo needs: ``config.json`` (JSON, with format
tags) and ``model.safetensors``. ``push`` uploads exactly those, a model card
(``README.md``, from ``model_card``), and when the run has them the samples picture
(``figures/samples.png``) and the evaluation (``eval.json``); the run folder is never
changed. ``resolve_run`` turns ``owner/name`` into a folder in the Hugging Face cache (a
download the first time), so every command that reads a run also reads a Hub model;
``LatentFlowPipeline.from_pretrained`` / ``save_pretrained`` / ``push_to_hub`` are the
same operations for a pipeline in memory. Loading stays strict and pickle-free.

Every failure is one line (a ``LatentflowsError``): offline, a missing or private repo,
an incomplete run, no write access. ``huggingface_hub`` is imported when a function here
needs it, so this module itself is light.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ._version import __version__
from .errors import LatentflowsError, ModelFileError
from .extras import require
from .runs import RunFolder
from .storage import read_json

LIBRARY_NAME = "latentflows"
CARD_TAGS = ["class-conditional", "image-generation", "latentflows", "normalizing-flows", "pytorch"]
MODEL_FILES = (RunFolder.CONFIG, RunFolder.WEIGHTS)
# what a command reading a run may use; a Hub repo made by ``push`` has the first two and eval.json
RUN_FILES = MODEL_FILES + (RunFolder.EVAL, RunFolder.SETTINGS, RunFolder.METRICS)
SAMPLES = f"{RunFolder.FIGURES}/samples.png"
CARD = "README.md"
# uploaded when the run has them, deleted from the repo when it has not (they would describe older weights)
OPTIONAL_UPLOADS = (RunFolder.EVAL, SAMPLES)
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
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
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


# ---------------------------------------------------------------------------------------- the model card
def model_card(run_dir: str | os.PathLike, *, repo_id: str | None = None) -> str:
    """The model card (``README.md``) of a run folder: YAML metadata, what the model is, how to
    use it, the samples picture and the ``latentflows evaluate`` figures when the run has them.

    Args:
        run_dir: a run folder (it needs ``config.json``).
        repo_id: the Hub id the card's examples name (default ``owner/name``).

    Example:
        >>> import tempfile, torch, latentflows as lf
        >>> from latentflows.flows import ConditionalRealNVP
        >>> pipeline = lf.LatentFlowPipeline(lf.ConvAutoencoder(8, width=2, image_size=32, fc_dim=16),
        ...                                  ConditionalRealNVP(8, context_size=2, couplings=2, hidden=[8]),
        ...                                  ["cat", "dog"])
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     pipeline.save(folder)
        ...     card = model_card(folder, repo_id="someone/pets")
        >>> print(card.split("\\n---\\n")[0])
        ---
        library_name: latentflows
        tags:
        - class-conditional
        - image-generation
        - latentflows
        - model_hub_mixin
        - normalizing-flows
        - pytorch
        latentflows_version: "..."
        classes:
        - "cat"
        - "dog"
        >>> "latentflows sample someone/pets --class dog -n 16 --out grid.png" in card
        True
        >>> "Not evaluated" in card
        True
    """
    run = RunFolder(run_dir)
    return card_text(_run_fields(run), run.path, repo_id=repo_id)


def _run_fields(run: RunFolder) -> dict[str, Any]:
    """config.json's fields (format 1 converted), checked to be a latentflows run config."""
    from .compat import pipeline_config_from_v1
    from .pipeline import RUN_FORMAT

    if not run.path.is_dir():
        raise ModelFileError(f"{run.path}: no such run folder")
    saved = read_json(run.config_file)
    if saved.get("format") != RUN_FORMAT:
        raise ModelFileError(f"{run.config_file}: not a latentflows run config (no format tag {RUN_FORMAT!r})")
    try:
        fields = pipeline_config_from_v1(saved) if int(saved.get("format_version", 0)) < 2 else dict(saved)
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFileError(f"{run.config_file}: incomplete or incompatible config ({error})") from None
    fields.setdefault("latentflows_version", saved.get("latentflows_version"))
    return fields


def card_text(fields: dict[str, Any], folder: str | os.PathLike | None = None, *, repo_id: str | None = None) -> str:
    """The model card for a pipeline described by ``fields`` (what ``config.json`` holds);
    ``folder``'s ``figures/samples.png``, ``eval.json`` and ``run.json`` are shown when there."""
    run = RunFolder(folder) if folder is not None else None
    classes = [str(name) for name in fields.get("class_names", [])]
    version = str(fields.get("latentflows_version") or __version__)
    settings = _settings(run)
    dataset = _hub_dataset(settings.get("source"))
    metadata = [f"library_name: {LIBRARY_NAME}", "tags:", *(f"- {tag}" for tag in sorted({*CARD_TAGS, "model_hub_mixin"})),
                f"latentflows_version: {json.dumps(version)}", "classes:", *(f"- {json.dumps(name)}" for name in classes)]
    if dataset:
        metadata += ["datasets:", f"- {json.dumps(dataset)}"]
    repo = repo_id or "owner/name"
    title = repo.split("/")[-1] if repo_id else "latentflows model"
    example = classes[-1] if classes else "CLASS"

    autoencoder, flow = fields.get("autoencoder") or {}, fields.get("flow") or {}
    ae_config, flow_config = autoencoder.get("config") or {}, flow.get("config") or {}
    run_config, summary = fields.get("config") or {}, fields.get("summary") or {}
    size = ae_config.get("image_size") or run_config.get("image_size")
    dim = ae_config.get("embedding_dim") or flow_config.get("features")
    pixels = f"{size}x{size} RGB images" if size else "RGB images"
    embeddings = f"embeddings of {dim} numbers" if dim else "embeddings"
    couplings = f" with {flow_config['couplings']} couplings" if flow_config.get("couplings") else ""
    shown = ", ".join(classes[:20]) + (f" and {len(classes) - 20} more" if len(classes) > 20 else "")
    training = [f"preset `{run_config['preset']}`"] if run_config.get("preset") else []
    if summary.get("train_seconds") is not None:
        training.append(f"{float(summary['train_seconds']):.0f} s of training")
    if summary.get("flow_best_epoch") is not None:
        training.append(f"the flow's weights of epoch {summary['flow_best_epoch']} (lowest validation loss)")
    if settings:
        training.append(f"data: {_data_text(settings, dataset)}")

    lines = ["---", *metadata, "---", "", f"# {title}", "",
             "A class-conditional image generator made with [latentflows](https://pypi.org/project/latentflows/): "
             "an autoencoder compresses images to embeddings, a conditional normalizing flow learns the distribution "
             "of the embeddings of each class, and sampling draws new embeddings of a class, decodes them to images "
             "and ranks them by their exact log-density.", "",
             f"- **Classes** ({len(classes)}): {shown}",
             f"- **Autoencoder**: `{autoencoder.get('class', '?')}`, {pixels} <-> {embeddings}",
             f"- **Flow**: `{flow.get('class', '?')}`{couplings} over the embeddings, conditioned on the one-hot class"]
    if training:
        lines.append(f"- **Training**: {'; '.join(training)}")
    lines += [f"- Written by latentflows {version}. The files are `config.json` (JSON) and `model.safetensors`: "
              "loading them never unpickles anything.", "",
              "## Use it", "", "```bash", "pip install latentflows",
              f"latentflows sample {repo} --class {shlex.quote(example)} -n 16 --out grid.png", "```", "",
              "```python", "import latentflows as lf", "",
              f"pipeline = lf.LatentFlowPipeline.from_pretrained({json.dumps(repo)})  # device=\"auto\": a GPU if any",
              f"samples = pipeline.generate({json.dumps(example)}, n=16, seed=0)  "
              "# samples.images: uint8 (n, 3, S, S), highest log-density first", "```", ""]
    if run is not None and (run.path / SAMPLES).is_file():
        lines += ["## Samples", "", f"![generated samples, one row per class]({SAMPLES})", "",
                  "Drawn at the end of training: one row per class (the first 10), highest log-density first, "
                  "the log-density in nats above each image.", ""]
    lines += ["## Evaluation", "", *_evaluation(run)]
    return "\n".join(lines) + "\n"


def _settings(run: RunFolder | None) -> dict[str, Any]:
    """run.json's data source, if the run has a readable one."""
    if run is None or not run.settings_file.is_file():
        return {}
    try:
        return dict(read_json(run.settings_file).get("data") or {})
    except (LatentflowsError, TypeError, ValueError):
        return {}


def _hub_dataset(source: Any) -> str | None:
    """The Hub dataset id a run trained on, if its source was one (not a local path)."""
    if not isinstance(source, str) or not is_hub_id(source) or Path(source).exists():
        return None
    return source


def _data_text(settings: dict[str, Any], dataset: str | None) -> str:
    source = settings.get("source")
    if dataset:
        return f"[{dataset}](https://huggingface.co/datasets/{dataset})"
    if not source:
        return "the embedded Oxford-IIIT Pet photos at 64x64 (CC BY-SA 4.0)"
    return f"local data (`{Path(str(source)).name}`)"  # never the whole local path


def _evaluation(run: RunFolder | None) -> list[str]:
    if run is None or not (run.path / RunFolder.EVAL).is_file():
        return ["Not evaluated: run `latentflows evaluate RUN` on the run folder (FID, NLL, reconstruction and "
                "classifier figures), then push it again."]
    from .evaluation.report import format_report, read_report

    report = read_report(run.path / RunFolder.EVAL)
    settings = report.get("settings") or {}
    about = "Figures of `latentflows evaluate` on the run's validation split (all of them in `eval.json`"
    about += f"; {settings['generated_per_class']} generated images per class):" if settings.get(
        "generated_per_class") else "):"
    return [about, "", "```text", format_report(report), "```"]


# ---------------------------------------------------------------------------------------- pushing
def push(run_dir: str | os.PathLike, repo_id: str, *, private: bool = False, token: str | None = None,
         commit_message: str | None = None, overwrite: bool = False) -> str:
    """Upload a run to the Hub model repo ``repo_id`` (created if needed); the URL of the repo.

    Uploads exactly ``config.json``, ``model.safetensors``, ``README.md`` (``model_card``), and
    when the run has them ``figures/samples.png`` and ``eval.json`` (one commit; an older
    ``eval.json`` or samples picture in the repo is removed with it). The run folder is not
    changed: the files are staged in a temporary folder.

    Args:
        run_dir: a complete run folder (it loads: ``config.json`` + ``model.safetensors``).
        repo_id: ``owner/name`` (a bare ``name`` goes to the token's user).
        private: create the repo private (default: public, or the organisation's default; an existing
            repo keeps its visibility).
        token: a Hugging Face token with write access (default: ``HF_TOKEN`` or ``hf auth login``'s).
        commit_message: the commit's message.
        overwrite: replace the model of a repo that already holds one.

    Raises:
        ModelFileError: the run is incomplete or does not load.
        HubError: no write access, not logged in, offline, or the repo holds a model and not ``overwrite``.
    """
    from .pipeline import LatentFlowPipeline

    run = RunFolder(run_dir)
    _check_complete(run)
    LatentFlowPipeline.from_pretrained(run.path, device="cpu")  # what we upload loads (strictly), or nothing is uploaded
    hf = require("huggingface_hub", "hub")
    with upload_errors(repo_id):
        api = hf.HfApi(token=token, library_name=LIBRARY_NAME, library_version=__version__)
        url = api.create_repo(repo_id, repo_type="model", private=private or None, exist_ok=True)
        repo_id = getattr(url, "repo_id", None) or repo_id
        if not overwrite and api.file_exists(repo_id, RunFolder.WEIGHTS, repo_type="model"):
            raise HubError(f"{repo_id} already holds a model; pass --overwrite to replace it (the Hub keeps the "
                           f"old one in the repo's history)")
        with tempfile.TemporaryDirectory(prefix="latentflows-push-") as staging:
            stage(run.path, staging, repo_id=repo_id)
            api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=staging,
                              commit_message=commit_message or f"Upload {run.path.resolve().name} (latentflows {__version__})",
                              delete_patterns=list(OPTIONAL_UPLOADS))
    return str(url)


def _check_complete(run: RunFolder) -> None:
    if not run.path.is_dir():
        raise ModelFileError(f"{run.path}: no such run folder")
    missing = [name for name in MODEL_FILES if not (run.path / name).is_file()]
    if missing:
        hint = (f"; finish it with latentflows train --resume {run.path}" if (run.path / RunFolder.CHECKPOINTS).is_dir()
                else "; is it a run folder of a finished training?")
        raise ModelFileError(f"{run.path}: incomplete run (no {' or '.join(missing)}){hint}")


def stage(run_dir: str | os.PathLike, folder: str | os.PathLike, *, repo_id: str | None = None) -> list[str]:
    """Put the files ``push`` uploads into ``folder`` (the run folder is only read); their names.

    Example:
        >>> import tempfile, latentflows as lf
        >>> from latentflows.flows import ConditionalRealNVP
        >>> pipeline = lf.LatentFlowPipeline(lf.ConvAutoencoder(8, width=2, image_size=32, fc_dim=16),
        ...                                  ConditionalRealNVP(8, context_size=2, couplings=2, hidden=[8]), ["a", "b"])
        >>> with tempfile.TemporaryDirectory() as run, tempfile.TemporaryDirectory() as staging:
        ...     pipeline.save(run)
        ...     stage(run, staging)
        ['README.md', 'config.json', 'model.safetensors']
    """
    run, folder = RunFolder(run_dir), Path(folder)
    _check_complete(run)
    names = [*MODEL_FILES, *(name for name in OPTIONAL_UPLOADS if (run.path / name).is_file())]
    for name in names:
        _link_or_copy(run.path / name, folder / name)
    (folder / CARD).write_text(model_card(run.path, repo_id=repo_id), encoding="utf-8")
    return sorted([*names, CARD])


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link when the file system allows (no copy of the weights), else a copy; the source is never written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


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


# ---------------------------------------------------------------------------------------- command line
def add_push_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``latentflows push RUN REPO_ID``.

    Example:
        >>> import argparse
        >>> args = add_push_arguments(argparse.ArgumentParser()).parse_args(["runs/quick", "me/pets", "--private"])
        >>> args.run, args.repo_id, args.private, args.overwrite
        ('runs/quick', 'me/pets', True, False)
    """
    parser.add_argument("run", metavar="RUN", help="the run folder to upload (it is not changed)")
    parser.add_argument("repo_id", metavar="REPO_ID", help="the Hub model repo, owner/name (created if needed)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--token", help="a Hugging Face write token (default: HF_TOKEN, else the one of "
                                        "`hf auth login`; an option is visible to other users of the machine)")
    parser.add_argument("--message", help="the commit message")
    parser.add_argument("--overwrite", action="store_true", help="replace the model of a repo that already holds one")
    return parser


def run_push(args: argparse.Namespace) -> None:
    """``latentflows push``: upload, then print the repo's URL."""
    url = push(args.run, args.repo_id, private=args.private, token=args.token, commit_message=args.message,
               overwrite=getattr(args, "overwrite", False))
    print(f"pushed {args.run} to {url}")
