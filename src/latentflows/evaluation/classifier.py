"""A small CNN that tells the classes apart, the judge of conditional fidelity.

Trained on the run's real training images only, it is saved in the run folder
(``RUN/classifier/``) so that every evaluation of a run is judged by the same classifier.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..autoencoder import to_signed_unit
from ..data import Batches, ImageDataset, MappedImages
from ..distributed import as_runtime
from ..registry import Configurable, register
from ..runtime import Runtime
from ..training.callbacks import StepSchedule
from ..training.trainer import Trainer, adam  # runs training/__init__ too: evaluation sits above train


@register
class ImageClassifier(nn.Module, Configurable):
    """Four stride-2 conv stages (each conv-BN-ReLU twice), global average pool, linear.

    The judge of conditional fidelity: trained on real images only, it tells how often
    generated images of a class are recognised as that class.

    Args:
        num_classes: number of classes.
        width: channels of the first stage (doubled at each stage).
        dropout: dropout before the linear layer.

    Example:
        >>> import torch
        >>> model = ImageClassifier(2, width=4).eval()
        >>> model.predict(torch.zeros(3, 3, 64, 64, dtype=torch.uint8)).shape
        torch.Size([3])
    """

    def __init__(self, num_classes: int, width: int = 32, dropout: float = 0.3):
        super().__init__()
        self.num_classes, self.width, self.dropout = num_classes, width, dropout
        layers, channels = [], 3
        for multiple in (1, 2, 4, 8):
            out = width * multiple
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(),
                       nn.Conv2d(out, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs omit memory_format

    def forward(self, images: Tensor) -> Tensor:
        """uint8 or [-1, 1] float images -> class logits."""
        return self.head(self.embed(images))

    def embed(self, images: Tensor) -> Tensor:
        """The pooled features the head classifies (8 x width of them)."""
        if images.dtype == torch.uint8:
            images = to_signed_unit(images)
        return self.features(images.contiguous(memory_format=torch.channels_last)).mean((2, 3))

    @torch.no_grad()
    def predict(self, images: Tensor | MappedImages, batch_size: int = 512) -> Tensor:
        """Class indices of ``images`` (uint8 or [-1, 1] float), in eval mode and by batches.

        Each batch is moved to the classifier's device (``images`` may stay on the CPU);
        the indices come back on the CPU.
        """
        self.eval()
        device = next(self.parameters()).device
        predicted = [self(images[i : i + batch_size].to(device)).argmax(1) for i in range(0, len(images), batch_size)]
        return torch.cat(predicted).cpu() if predicted else torch.zeros(0, dtype=torch.long)

    def get_config(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "width": self.width, "dropout": self.dropout}


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Blur float images (N, C, H, W) with a Gaussian of ``sigma`` pixels (separable, reflect-padded).

    The classifier's training augmentation uses it, so that the judge also recognises the
    smooth images a decoder makes. The kernel's radius (about 3 sigma) must be smaller than
    the images.

    Args:
        images: float images ``(N, C, H, W)``.
        sigma: the Gaussian's standard deviation in pixels.

    Example:
        >>> import torch
        >>> images = torch.zeros(1, 1, 9, 9)
        >>> images[0, 0, 4, 4] = 1.0
        >>> blurred = gaussian_blur(images, 1.0)
        >>> blurred.shape, round(blurred.sum().item(), 4), round(blurred[0, 0, 4, 4].item(), 3)
        (torch.Size([1, 1, 9, 9]), 1.0, 0.159)
    """
    radius = max(1, int(3 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def _augment(images: Tensor) -> Tensor:
    """Mirror half the batch (a pet is the same either way round) and blur half of it by a
    random amount, so the judge recognises classes in the smooth images a decoder makes
    and not only in sharp photos. The masks are drawn on the images' device (on the CPU,
    the same draws as ever); the blur's sigma is drawn on the CPU (a number, not a sync)."""
    images = to_signed_unit(images) if images.dtype == torch.uint8 else images
    flip = (torch.rand(len(images), device=images.device) < 0.5).view(-1, 1, 1, 1)
    images = torch.where(flip, images.flip(-1), images)
    blur = (torch.rand(len(images), device=images.device) < 0.5).view(-1, 1, 1, 1)
    sigma = float(torch.empty(()).uniform_(0.5, 2.5))
    return torch.where(blur, gaussian_blur(images, sigma), images)


def _classification_loss(model: nn.Module, batch: tuple[Tensor, ...]) -> dict[str, Tensor]:
    images, labels = batch
    if model.training:
        images = _augment(images)
    logits = model(images)
    return {"loss": F.cross_entropy(logits, labels),
            "accuracy": (logits.argmax(1) == labels).float().mean().detach()}


def train_classifier(train_set: ImageDataset, val_set: ImageDataset | None = None, *, epochs: int = 15,
                     batch_size: int = 64, lr: float = 1e-3, width: int = 32, seed: int = 0,
                     progress: bool = True,
                     runtime: Runtime | str | torch.device | None = None) -> tuple[ImageClassifier, list[dict]]:
    """Fit a classifier on ``train_set`` for a fixed number of epochs (no early stopping on
    ``val_set``, so its validation accuracy stays an unbiased estimate).

    Adam with a cosine learning-rate schedule, mirrored and blurred training images, then
    ``recalibrate_batch_norm`` on the training images. Returns the model in eval mode, on
    the runtime's device, and the history, one dict per epoch. (No example: it trains a network.)

    Args:
        train_set: the real training images and labels.
        val_set: images to report validation figures on, or None.
        epochs: number of passes over ``train_set``.
        batch_size: training batch size (the last incomplete batch is dropped).
        lr: Adam's initial learning rate.
        width: channels of the classifier's first stage.
        seed: seeds the initialization and the shuffling.
        progress: show progress bars.
        runtime: where to train: a ``Runtime``, or a device (``"auto"``, ``"cpu"``, ``"cuda"``,
            ``"cuda:N"``, ``"mps"``); default the CPU. The weights are initialized on the CPU
            (the same start on every device), then moved; the images are placed with
            ``Runtime.place``.
    """
    runtime = as_runtime(runtime if runtime is not None else "cpu")
    torch.manual_seed(seed)
    model = ImageClassifier(train_set.num_classes, width).to(runtime.device)
    optimizer = adam(model.parameters(), lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)  # a calm last epoch
    trainer = Trainer(model, optimizer, _classification_loss, runtime=runtime, stage="classifier", progress=progress,
                      callbacks=[StepSchedule(schedule)])
    val = None
    if val_set is not None and len(val_set):
        val = Batches(runtime.place([val_set.images, val_set.labels]), 512)
    train_images, train_labels = runtime.place([train_set.images, train_set.labels])
    train_batches = Batches([train_images, train_labels], batch_size, shuffle=True, seed=seed, drop_last=True)
    history = trainer.fit(train_batches, epochs, val)
    recalibrate_batch_norm(model, train_images)
    if val is not None:
        history[-1].val = trainer.evaluate(val)  # with the recalibrated statistics
    model.eval()
    return model, [record.as_dict() for record in history]


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, images: Tensor | MappedImages, batch_size: int = 256) -> None:
    """Replace batch norm's running statistics with exact averages over ``images`` under the
    final weights. The running averages lag behind the weights, which in short trainings
    leaves eval-mode predictions far worse than training-mode ones.

    The statistics are averaged over the batches of ``images`` (each batch's mean and
    variance weighted equally); the model is left in eval mode with its momenta restored.

    Args:
        model: a module with batch norm layers (without any, nothing happens).
        images: the inputs to compute the statistics on; each batch is moved to the device
            of the model's batch norm statistics.
        batch_size: how many inputs go through the model at once.

    Example:
        >>> import torch
        >>> model = nn.Sequential(nn.BatchNorm1d(1))
        >>> recalibrate_batch_norm(model, torch.tensor([[1.0], [3.0], [5.0], [7.0]]), batch_size=2)
        >>> model[0].running_mean.item(), model[0].momentum, model.training
        (4.0, 0.1, False)
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    device = norms[0].running_mean.device if norms[0].running_mean is not None else images.device
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches below
    model.train()
    for i in range(0, len(images), batch_size):
        model(images[i : i + batch_size].to(device))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.eval()
