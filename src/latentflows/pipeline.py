"""The latent flow pipeline: autoencoder -> standardized embeddings -> conditional flow.

``train`` runs the three stages and writes a run folder; ``LatentFlowPipeline`` holds the
trained parts, generates class-conditional images ranked by log-density, and saves and
loads itself as JSON config + safetensors (nothing is ever unpickled).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ._version import __version__
from .autoencoder import ConvAutoencoder, to_signed_unit, to_uint8
from .config import TrainConfig
from .data import ImageDataset
from .errors import LatentflowsError, ModelFileError, RunExistsError
from .flows import ConditionalRealNVP
from .layers import GaussianNoise
from .losses import FlowNLL, Loss, MSELoss, parse_loss
from .registry import deserialize, serialize
from .storage import load_weights_into, read_json, save_safetensors, write_json, write_text_atomically
from .training import Batches, Checkpoint, EarlyStopping, JsonlLogger, Trainer, adam, read_checkpoint

RUN_FORMAT = "latentflows-run"
SETTINGS_FORMAT = "latentflows-run-settings"
SETTINGS_FILE, CHECKPOINTS = "run.json", "checkpoints"
WEIGHTS_FORMAT = "latentflows-weights"
CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE = "config.json", "model.safetensors", "metrics.jsonl"


@dataclass
class Samples:
    images: Tensor  # uint8 (n, 3, S, S), highest log-density first
    log_prob: Tensor  # nats, of the standardized embedding under the flow
    label: str


class LatentFlowPipeline(nn.Module):
    def __init__(self, autoencoder: ConvAutoencoder, flow: ConditionalRealNVP, embedding_mean: Tensor,
                 embedding_std: Tensor, class_names: list[str], train_config: dict | None = None):
        super().__init__()
        self.autoencoder, self.flow = autoencoder, flow
        self.register_buffer("embedding_mean", embedding_mean.detach().clone())
        self.register_buffer("embedding_std", embedding_std.detach().clone())
        self.class_names = list(class_names)
        self.train_config = dict(train_config or {})
        self.ae_loss: Loss = MSELoss()  # the reconstruction loss it was trained with

    # ------------------------------------------------------------------ embeddings
    @torch.no_grad()
    def embed(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """uint8 images -> standardized embeddings (what the flow models)."""
        self.autoencoder.eval()
        parts = [self.autoencoder.encode(to_signed_unit(images[i : i + batch_size]))
                 for i in range(0, len(images), batch_size)]
        return (torch.cat(parts) - self.embedding_mean) / self.embedding_std

    @torch.no_grad()
    def decode(self, standardized: Tensor, batch_size: int = 256) -> Tensor:
        """Standardized embeddings -> uint8 images."""
        self.autoencoder.eval()
        embeddings = standardized * self.embedding_std + self.embedding_mean
        parts = [to_uint8(self.autoencoder.decode(embeddings[i : i + batch_size]))
                 for i in range(0, len(embeddings), batch_size)]
        return torch.cat(parts)

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> Tensor:
        return self.decode(self.embed(images))

    def one_hot(self, labels: Tensor) -> Tensor:
        return nn.functional.one_hot(labels, len(self.class_names)).float()

    # ------------------------------------------------------------------ generation
    def class_index(self, label: str | int) -> int:
        if isinstance(label, int) and 0 <= label < len(self.class_names):
            return label
        names = [n.lower() for n in self.class_names]
        if isinstance(label, str) and label.lower() in names:
            return names.index(label.lower())
        raise LatentflowsError(f"unknown class {label!r}; this model knows: {', '.join(self.class_names)}")

    @torch.no_grad()
    def generate(self, label: str | int, n: int = 16, temperature: float = 1.0, seed: int = 0) -> Samples:
        """``n`` images of class ``label``, sorted by the flow's log-density (highest first)."""
        if n < 1:
            raise LatentflowsError(f"the number of samples must be at least 1, got {n}")
        if temperature <= 0:
            raise LatentflowsError(f"temperature must be positive, got {temperature}")
        index = self.class_index(label)
        self.flow.eval()
        context = self.one_hot(torch.tensor([index]))
        generator = torch.Generator().manual_seed(seed)
        standardized, log_prob = self.flow.sample_and_log_prob(n, context, temperature, generator)
        order = torch.argsort(log_prob, descending=True)
        return Samples(self.decode(standardized[order]), log_prob[order], self.class_names[index])

    @torch.no_grad()
    def log_prob(self, images: Tensor, labels: Tensor) -> Tensor:
        """Log-density (nats) of the images' standardized embeddings given their labels."""
        self.flow.eval()
        return self.flow.log_prob(self.embed(images), self.one_hot(labels))

    # ------------------------------------------------------------------ files
    def save(self, run_dir: str | Path) -> None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_safetensors(run_dir / WEIGHTS_FILE, self.state_dict(), WEIGHTS_FORMAT)
        write_json(run_dir / CONFIG_FILE, {
            "format": RUN_FORMAT, "format_version": 1, "latentflows_version": __version__,
            "autoencoder": serialize(self.autoencoder), "flow": serialize(self.flow),
            "autoencoder_loss": serialize(self.ae_loss),
            "class_names": self.class_names, "train_config": self.train_config,
        })

    @classmethod
    def load(cls, run_dir: str | Path) -> "LatentFlowPipeline":
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise ModelFileError(f"{run_dir}: no such run folder")
        config_path = run_dir / CONFIG_FILE
        config = read_json(config_path)
        if config.get("format") != RUN_FORMAT:
            raise ModelFileError(f"{config_path}: not a latentflows run config (no format tag {RUN_FORMAT!r})")
        if int(config.get("format_version", 0)) > 1:
            raise ModelFileError(f"{config_path}: written by a newer latentflows; upgrade to load it")
        try:
            autoencoder = deserialize(config["autoencoder"])
            flow = deserialize(config["flow"])
            class_names = list(config["class_names"])
        except LatentflowsError:
            raise
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f"{config_path}: incomplete or incompatible config ({error})") from None
        dim = autoencoder.embedding_dim
        pipeline = cls(autoencoder, flow, torch.zeros(dim), torch.ones(dim), class_names, config.get("train_config"))
        load_weights_into(pipeline, run_dir / WEIGHTS_FILE, WEIGHTS_FORMAT)
        if "autoencoder_loss" in config:
            pipeline.ae_loss = deserialize(config["autoencoder_loss"])
        return pipeline.eval()


def load(run_dir: str | Path) -> LatentFlowPipeline:
    """Load a trained pipeline from a run folder (JSON + safetensors only)."""
    return LatentFlowPipeline.load(run_dir)


# ---------------------------------------------------------------------- training

def reconstruction_objective(loss: Loss):
    """The autoencoder stage's ``loss_fn``: reconstruct uint8 image batches under ``loss``."""

    def loss_fn(model: ConvAutoencoder, batch) -> dict[str, Tensor]:
        images = to_signed_unit(batch[0])
        reconstruction, _ = model(images)
        return {"loss": loss(images, reconstruction)}

    return loss_fn


autoencoder_loss = reconstruction_objective(MSELoss())


class NoisyFlow(nn.Module):
    """The flow stage's model: Gaussian noise on the embeddings (training only), then the flow."""

    def __init__(self, flow: ConditionalRealNVP, noise_std: float = 0.0):
        super().__init__()
        self.noise, self.flow = GaussianNoise(noise_std), flow


NATS = FlowNLL("nats")


def flow_loss(model: ConditionalRealNVP | NoisyFlow, batch) -> dict[str, Tensor]:
    embeddings, context = batch
    if isinstance(model, NoisyFlow):
        embeddings, model = model.noise(embeddings), model.flow
    nll = NATS(model, embeddings, context)
    return {"loss": nll, "bits_per_dim": nll.detach() / (embeddings.shape[1] * math.log(2))}


def prepare_run_dir(run_dir: str | Path, overwrite: bool, resume: bool = False) -> Path:
    """Create the run folder; refuse to touch a non-empty one unless ``overwrite``."""
    run_dir = Path(run_dir)
    if resume:
        if not (run_dir / SETTINGS_FILE).is_file():
            raise ModelFileError(f"{run_dir}: nothing to resume (no {SETTINGS_FILE}); start it with --out")
        return run_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise RunExistsError(f"{run_dir} exists and is not a folder; choose another --out")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunExistsError(f"{run_dir} already exists and is not empty; choose another --out or pass --overwrite")
        for name in (CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE, SETTINGS_FILE):
            (run_dir / name).unlink(missing_ok=True)
        for folder in ("figures", CHECKPOINTS):
            shutil.rmtree(run_dir / folder, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def read_run_settings(run_dir: str | Path) -> dict:
    """The settings a run started with (``run.json``): training config and data source."""
    path = Path(run_dir) / SETTINGS_FILE
    settings = read_json(path)
    if settings.get("format") != SETTINGS_FORMAT:
        raise ModelFileError(f"{path}: not a latentflows run settings file")
    return settings


def apply_limit(dataset: ImageDataset, limit: int | None, seed: int) -> ImageDataset:
    """A stratified subset of ``limit`` images (``--limit``), the same one for the same seed."""
    if limit and limit < len(dataset):
        dataset, _ = dataset.split(1 - limit / len(dataset), seed=seed)
    return dataset


def run_dataset(run_dir: str | Path, source: str | None = None, *, progress: bool = True) -> ImageDataset:
    """The images a run was trained on, as its ``run.json`` records them (``--limit`` applied).

    ``source`` replaces the recorded data source (e.g. a parquet file that has moved).
    """
    from .data import load_images

    run_dir = Path(run_dir)
    if not (run_dir / SETTINGS_FILE).is_file():
        if source is None:
            raise ModelFileError(f"{run_dir}: no {SETTINGS_FILE} says which data it was trained on; pass --data")
        settings = {"train_config": read_json(run_dir / CONFIG_FILE).get("train_config", {}), "data": {}}
    else:
        settings = read_run_settings(run_dir)
    config, data = TrainConfig.from_dict(settings["train_config"]), settings["data"]
    dataset = load_images(source if source is not None else data.get("source"), label_field=data.get("label_field"),
                          image_field=data.get("image_field") or "image", image_size=config.image_size,
                          progress=progress)
    return apply_limit(dataset, data.get("limit"), config.seed)


def _truncate_metrics(path: Path, completed: dict[str, int]) -> None:
    """Keep the metric lines of epochs that a checkpoint covers; drop the rest."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        row = json.loads(line) if line.strip() else None
        if row is not None and row["epoch"] <= completed.get(row["stage"], 0):
            kept.append(line + "\n")
    write_text_atomically(path, "".join(kept))


def _run_stage(trainer: Trainer, checkpoint: Path | None, batches: Batches, epochs: int, val_batches,
               resume: bool) -> int:
    """Fit one stage, first restoring its checkpoint when resuming; returns the epoch started at."""
    start = 1
    if resume and checkpoint is not None and checkpoint.exists():
        tensors, metadata = read_checkpoint(checkpoint)
        trainer.load_training_state(tensors, metadata, batches)
        start = int(metadata["epoch"]) + 1
    trainer.fit(batches, epochs, val_batches, start_epoch=start)
    return start


def train(dataset: ImageDataset, config: TrainConfig, run_dir: str | Path | None = None, *,
          overwrite: bool = False, progress: bool = True, figures: bool = True, resume: bool = False,
          data_spec: dict | None = None, checkpoint_every: int = 1) -> LatentFlowPipeline:
    """Train autoencoder then flow on ``dataset``; with ``run_dir``, write the run folder.

    With a run folder, each stage is checkpointed every ``checkpoint_every`` epochs and
    ``resume=True`` continues an interrupted run from its last checkpoint, ending with the
    same weights as an uninterrupted run. Checkpoints are removed once the run is complete.
    """
    config.validate()
    if dataset.num_classes < 1:
        raise LatentflowsError("the data has no classes")
    if dataset.image_size != config.image_size:
        raise LatentflowsError(f"images are {dataset.image_size}px but the config expects {config.image_size}px")
    checkpoints: Path | None = None
    callbacks = []
    if run_dir is not None:
        run_dir = prepare_run_dir(run_dir, overwrite, resume)
        checkpoints = run_dir / CHECKPOINTS
        checkpoints.mkdir(exist_ok=True)
        if resume:
            completed = {}
            for stage in ("autoencoder", "flow"):
                if (checkpoints / f"{stage}.safetensors").exists():
                    completed[stage] = int(read_checkpoint(checkpoints / f"{stage}.safetensors")[1]["epoch"])
            _truncate_metrics(run_dir / METRICS_FILE, completed)
        else:
            write_json(run_dir / SETTINGS_FILE, {"format": SETTINGS_FORMAT, "train_config": config.as_dict(),
                                                 "data": data_spec or {}})
        callbacks = [JsonlLogger(run_dir / METRICS_FILE)]
    torch.manual_seed(config.seed)
    train_set, val_set = dataset.split(config.val_fraction, config.seed)
    started = time.perf_counter()

    def stage_callbacks(stage: str, *extra) -> list:
        saving = [Checkpoint(checkpoints / f"{stage}.safetensors", checkpoint_every)] if checkpoints else []
        return callbacks + list(extra) + saving  # the checkpoint last: it records the others' state

    autoencoder = ConvAutoencoder(config.embedding_dim, config.width, config.image_size, config.fc_dim, config.dropout)
    optimizer = adam(autoencoder.parameters(), config.ae_lr, config.ae_weight_decay)
    ae_loss = parse_loss(config.ae_loss)
    trainer = Trainer(autoencoder, optimizer, reconstruction_objective(ae_loss), stage="autoencoder",
                      callbacks=stage_callbacks("autoencoder"), progress=progress, grad_clip=config.grad_clip,
                      compile=config.compile)
    _run_stage(trainer, checkpoints and checkpoints / "autoencoder.safetensors",
               Batches([train_set.images], config.ae_batch_size, shuffle=True, seed=config.seed, drop_last=True),
               config.ae_epochs, Batches([val_set.images], 256), resume)

    # Standardize with the training embeddings' statistics, as the flow expects ~unit scale.
    pipeline = LatentFlowPipeline(autoencoder, None, torch.zeros(config.embedding_dim),
                                  torch.ones(config.embedding_dim), dataset.class_names, config.as_dict())
    raw_train = pipeline.embed(train_set.images)
    pipeline.embedding_mean.copy_(raw_train.mean(0))
    pipeline.embedding_std.copy_(raw_train.std(0) + 1e-8)
    train_embeddings = (raw_train - pipeline.embedding_mean) / pipeline.embedding_std
    val_embeddings = pipeline.embed(val_set.images)

    flow = ConditionalRealNVP(config.embedding_dim, dataset.num_classes, config.couplings, config.hidden,
                              config.batch_norm, config.permute, config.mask, config.shared_network,
                              seed=config.seed, scale_fn=config.scale_fn,
                              network={"residual": True} if config.residual else None)
    pipeline.flow = flow
    pipeline.ae_loss = ae_loss
    optimizer = adam(flow.parameters(), config.flow_lr, config.flow_weight_decay)
    early = [EarlyStopping("loss", config.flow_patience)] if config.flow_patience else []
    trainer = Trainer(NoisyFlow(flow, config.flow_noise), optimizer, flow_loss, stage="flow",
                      callbacks=stage_callbacks("flow", *early), progress=progress, grad_clip=config.grad_clip,
                      compile=config.compile)
    _run_stage(trainer, checkpoints and checkpoints / "flow.safetensors",
               Batches([train_embeddings, pipeline.one_hot(train_set.labels)], config.flow_batch_size,
                       shuffle=True, seed=config.seed + 1, drop_last=True),
               config.flow_epochs, Batches([val_embeddings, pipeline.one_hot(val_set.labels)], 1024), resume)
    if early:
        pipeline.train_config["flow_best_epoch"] = early[0].best_epoch
    pipeline.train_config["train_seconds"] = round(time.perf_counter() - started, 1)
    pipeline.eval()

    if run_dir is not None:
        pipeline.save(run_dir)
        shutil.rmtree(checkpoints, ignore_errors=True)  # the run is complete: model.safetensors has it all
        if figures:
            from .plots import write_run_figures

            write_run_figures(pipeline, run_dir, val_set, seed=config.seed)
    return pipeline
