"""The model card (``README.md``) of a run or a pipeline, as the Hugging Face Hub shows it.

YAML metadata (library, tags, classes, the Hub dataset it was trained on), what the model
is, how to use it, the samples picture and the ``latentflows evaluate`` figures when the run
folder has them. ``LatentFlowPipeline.save_pretrained`` / ``push_to_hub`` and
``latentflows.hub.push`` all write this card.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from ._version import __version__
from .compat import saved_fields
from .errors import LatentflowsError, ModelFileError
from .hubclient import LIBRARY_NAME, is_hub_id
from .reports import format_report, read_report
from .runs import RUN_FORMAT, RunFolder
from .storage import read_json

CARD_TAGS = ["class-conditional", "image-generation", "latentflows", "normalizing-flows", "pytorch"]
SAMPLES = f"{RunFolder.FIGURES}/samples.png"


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
    """config.json's fields (older runs converted: ``compat``), checked to be a latentflows run config."""
    if not run.path.is_dir():
        raise ModelFileError(f"{run.path}: no such run folder")
    saved = read_json(run.config_file)
    if saved.get("format") != RUN_FORMAT:
        raise ModelFileError(f"{run.config_file}: not a latentflows run config (no format tag {RUN_FORMAT!r})")
    try:
        fields = saved_fields(saved)
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
    recorded = fields.get("imports")
    imports: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
    modules = sorted(str(module) for module in imports)
    import_flags = "".join(f" --import {shlex.quote(module)}" for module in modules)

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
    for module in modules:
        names = ", ".join(f"`{name}`" for name in imports[module]) if isinstance(imports[module], list) else ""
        lines.append(f"- **Needs the module `{module}`**, which registers {names or 'components it uses'}: install it "
                     f"and pass `--import {module}` to every command (or `import {module}` in Python). latentflows "
                     "never imports it by itself, so loading this model runs no code of its own.")
    lines += [f"- Written by latentflows {version}. The files are `config.json` (JSON) and `model.safetensors`: "
              "loading them never unpickles anything.", "",
              "## Use it", "", "```bash", "pip install latentflows",
              f"latentflows sample {repo}{import_flags} --class {shlex.quote(example)} -n 16 --out grid.png", "```", "",
              "```python", *(f"import {module}" for module in modules), "import latentflows as lf", "",
              f"pipeline = lf.LatentFlowPipeline.from_pretrained({json.dumps(repo)})  # device=\"auto\": a GPU if any",
              f"samples = pipeline.generate({json.dumps(example)}, n=16, seed=0)  "
              "# samples.images: uint8 (n, 3, S, S), highest log-density first", "```", ""]
    if run is not None and (run.path / SAMPLES).is_file():
        lines += ["## Samples", "", f"![generated samples, one row per class]({SAMPLES})", "",
                  "Drawn at the end of training as `sample` draws them (with the run's class guidance, if any): "
                  "one row per class (the first 10), highest log-density first, "
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
    report = read_report(run.path / RunFolder.EVAL)
    settings = report.get("settings") or {}
    about = "Figures of `latentflows evaluate` on the run's validation split (all of them in `eval.json`"
    about += f"; {settings['generated_per_class']} generated images per class):" if settings.get(
        "generated_per_class") else "):"
    return [about, "", "```text", format_report(report), "```"]
