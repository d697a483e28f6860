"""The Hugging Face Hub: push a run with its model card, and use a Hub id wherever a run folder goes.

A run folder already is what a Hub model repo needs: ``config.json`` (JSON, with format
tags) and ``model.safetensors``. ``push`` uploads exactly those, a model card
(``README.md``, from ``model_card``), and when the run has them the samples picture
(``figures/samples.png``) and the evaluation (``eval.json``); the run folder is never
changed. ``LatentFlowPipeline.from_pretrained`` / ``save_pretrained`` / ``push_to_hub`` are
the same operations for a pipeline in memory. Loading stays strict and pickle-free.

This module is the Hub's one front door; it is built on the two below the pipeline:
``hubclient`` (Hub ids, downloads, one-line errors: ``resolve_run``, ``HubError``) and
``modelcard`` (``model_card``, ``card_text``), whose names it also offers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from ._version import __version__
from .errors import ModelFileError
from .extras import require
from .hubclient import LIBRARY_NAME, RUN_FILES, HubError, is_hub_id, resolve_run, upload_errors
from .modelcard import CARD_TAGS, SAMPLES, card_text, model_card
from .runs import RunFolder

__all__ = ["CARD", "CARD_TAGS", "LIBRARY_NAME", "OPTIONAL_UPLOADS", "RUN_FILES", "SAMPLES", "HubError", "add_push_arguments",
           "card_text", "is_hub_id", "model_card", "push", "resolve_run", "run_push", "stage", "upload_errors"]

CARD = "README.md"
# uploaded when the run has them, deleted from the repo when it has not (they would describe older weights)
OPTIONAL_UPLOADS = (RunFolder.EVAL, SAMPLES)


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
    missing = [name for name in RunFolder.MODEL_FILES if not (run.path / name).is_file()]
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
    names = [*RunFolder.MODEL_FILES, *(name for name in OPTIONAL_UPLOADS if (run.path / name).is_file())]
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
