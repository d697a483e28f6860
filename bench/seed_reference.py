"""The seed notebook's way of training and sampling, rewritten here for timing only.

``bench/bench.py`` runs these pieces in the same process as latentflows' own code, so that
each of its figures comes with the seed notebook's figure on the same machine, at the same
moment, and their ratio. Nothing here is used by the package; it is the notebook's approach,
in our own code, kept as plain as the notebook kept it:

* ``PhotoRows`` / ``photo_loader``: the per-item data feed. A torch ``Dataset`` over the rows
  of the embedded parquet photos that, for every item it is asked for, fetches the row,
  decodes the encoded photo with Pillow, converts it to RGB, resizes it to 64x64 (bilinear,
  what torchvision's ``Resize`` does to a Pillow image), turns it into a float CHW tensor in
  [0, 1] and maps it to [-1, 1]; a ``DataLoader`` (batch 32, shuffled, no worker processes:
  the notebook's defaults) collates the items. torchvision is not a dependency here, so the
  transforms are written with Pillow, NumPy and torch.
* ``SeedAutoencoderStep``: one autoencoder training step as the notebook takes it, batch
  by batch from that loader: forward, MSE, ``loss.item()``, zero the gradients, backward,
  plain Adam (no fused or multi-tensor kernel: the notebook's ``torch.optim.Adam``). The
  network is ``latentflows.ConvAutoencoder(256, 64)`` (the notebook's DCGAN-style network)
  turned back to the default contiguous NCHW layout, and run layer group by layer group
  here, because our class's own ``encode``/``decode`` switch inputs to channels_last.
* ``SeedRealNVP``: the notebook's conditional RealNVP: 12 blocks of (affine coupling, random
  permutation, invertible batch norm), a Python loop over the 36 layers, a fixed odd/even
  mask, one-hot class concatenated in front of the masked input, one network per coupling
  whose output is full width for both the log-scale and the shift (2 x 256 numbers, of which
  the mask keeps half), a tanh-bounded log-scale and a ``torch.distributions.Normal`` prior.
  The notebook builds each network's hidden layers by pairing every size with the size
  before it, wrapping round to the last for the first, so ``[256, 256]`` gives three hidden
  layers, not two; that is kept.
* ``SeedFlowStep``: a flow training step at batch 32, fed as the notebook feeds it (a
  ``DataLoader`` over a Python list of (embedding, label) pairs, one-hot made per step).
* ``seed_generate``: sampling as the notebook does it: draw from the prior, run the layers
  backwards, add the prior's log-density to the log-determinant, undo the embedding
  standardization, decode, sort by log-density, map to [0, 1] and copy to the CPU.

The embedded photos are already 64x64 JPEGs, where the notebook's Hugging Face copy of the
Oxford pets holds full-size photos (about 500x375): decoding and resizing those costs
several times more per item, so the feed's cost measured here is a lower bound of the
notebook's.
"""

from __future__ import annotations

import io
import time
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from latentflows import ConvAutoencoder
from latentflows.data import embedded_files

NOTEBOOK_BATCH = 32


# ---------------------------------------------------------------------------- data feed

class PhotoRows(Dataset):
    """The embedded photos as a map-style dataset that decodes one photo per ``__getitem__``.

    Each item is fetched from the Arrow table as a row (as a Hugging Face dataset does when
    indexed), then decoded, resized and normalized: ``(float (3, 64, 64) in [-1, 1], 0 or 1)``.
    """

    def __init__(self, files: Sequence | None = None, size: int = 64):
        tables = [pq.read_table(path, columns=["image", "dog"]) for path in (files or embedded_files())]
        self.table = pa.concat_tables(tables)
        self.size = size

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        row = self.table.slice(index, 1).to_pylist()[0]
        with Image.open(io.BytesIO(row["image"]["bytes"])) as photo:
            photo = photo if photo.mode == "RGB" else photo.convert("RGB")
            photo = photo.resize((self.size, self.size), Image.Resampling.BILINEAR)
            pixels = np.array(photo, dtype=np.uint8)
        # HWC uint8 -> CHW float in [0, 1] -> (x - 0.5) / 0.5, per image
        x = torch.from_numpy(pixels).permute(2, 0, 1).contiguous().float().div(255)
        x = x.sub_(0.5).div_(0.5)
        return x, 1 if row["dog"] else 0


def photo_loader(dataset: Dataset | None = None, batch_size: int = NOTEBOOK_BATCH) -> DataLoader:
    """The notebook's loader: shuffled, default collation, decoding in the main process."""
    return DataLoader(dataset if dataset is not None else PhotoRows(), batch_size, shuffle=True)


def endless(loader: DataLoader) -> Iterator:
    """The loader's batches, epoch after epoch (a new shuffled order each time)."""
    while True:
        yield from loader


# ---------------------------------------------------------------------------- autoencoder

def seed_autoencoder(device: torch.device | str = "cpu") -> ConvAutoencoder:
    """The notebook's network (our ``ConvAutoencoder(256, 64)``) in the default NCHW layout."""
    return ConvAutoencoder(256, 64).to(memory_format=torch.contiguous_format).to(device)


def seed_encode(autoencoder: ConvAutoencoder, x: Tensor) -> Tensor:
    features = autoencoder.encoder(x)
    return autoencoder.fc_encode(features.view(features.size(0), -1))


def seed_decode(autoencoder: ConvAutoencoder, embedding: Tensor) -> Tensor:
    features = autoencoder.fc_decode(embedding).view(-1, *autoencoder.bottom)
    return autoencoder.decoder(features)


class TimedSteps:
    """One notebook-style training step per call, timing the batch fetch apart from the whole.

    Subclasses set ``batches`` (an endless iterator), ``module``, ``optimizer`` and ``device``,
    and define ``loss(batch)``: the step is the notebook's (fetch, forward, ``loss.item()``,
    which it logs every step, zero_grad, backward, Adam).
    """

    batches: Iterator
    module: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device

    def loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        raise NotImplementedError

    def __call__(self) -> None:
        started = time.perf_counter()
        batch = next(self.batches)
        fetched = time.perf_counter()
        loss = self.loss(batch)
        loss.item()  # the notebook logs every step's loss
        self.module.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.data_seconds += fetched - started
        self.step_seconds += time.perf_counter() - started
        self.steps += 1

    def reset_counts(self) -> None:
        self.data_seconds = self.step_seconds = 0.0
        self.steps = 0


class SeedAutoencoderStep(TimedSteps):
    """One notebook-style autoencoder step per call; keeps the time spent fetching batches.

    ``data_seconds`` is the time spent in the loader's ``next()`` (fetching, decoding and
    collating 32 photos), ``step_seconds`` the whole of each call; on a GPU the decoding
    stays on the CPU, as in the notebook, and batches are copied over each step.
    """

    def __init__(self, device: torch.device | str = "cpu", loader: DataLoader | None = None):
        self.device = torch.device(device)
        self.autoencoder = seed_autoencoder(self.device).train()
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.Adam(self.autoencoder.parameters(), lr=1e-4, weight_decay=1e-5)
        self.batches = endless(loader if loader is not None else photo_loader())
        self.module = self.autoencoder
        self.reset_counts()

    def loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x = batch[0].to(self.device)
        return self.criterion(seed_decode(self.autoencoder, seed_encode(self.autoencoder, x)), x)


# ---------------------------------------------------------------------------- flow

class SeedBatchNorm(nn.Module):
    """Invertible batch norm with a learned log-scale and shift; batch statistics while
    training (running averages updated in place, momentum 0.9), running ones otherwise."""

    def __init__(self, features: int, momentum: float = 0.9, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.log_gamma = nn.Parameter(torch.zeros(features))
        self.beta = nn.Parameter(torch.zeros(features))
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))

    def _statistics(self, x: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if not self.training:
            return self.running_mean, self.running_var
        if x is not None:
            self.batch_mean, self.batch_var = x.mean(0), x.var(0)
            self.running_mean.mul_(self.momentum).add_(self.batch_mean.data * (1 - self.momentum))
            self.running_var.mul_(self.momentum).add_(self.batch_var.data * (1 - self.momentum))
        return self.batch_mean, self.batch_var

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mean, var = self._statistics(x)
        y = self.log_gamma.exp() * ((x - mean) / torch.sqrt(var + self.eps)) + self.beta
        log_det = self.log_gamma - 0.5 * torch.log(var + self.eps)
        return y, log_det.expand_as(x).sum(1)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mean, var = self._statistics()
        x = (y - self.beta) * torch.exp(-self.log_gamma) * torch.sqrt(var + self.eps) + mean
        log_det = 0.5 * torch.log(var + self.eps) - self.log_gamma
        return x, log_det.expand_as(x).sum(1)


class SeedCoupling(nn.Module):
    """Affine coupling over the full width: the masked input (with the context in front)
    goes through one network that returns a log-scale and a shift for every feature;
    the features the mask keeps pass through unchanged."""

    def __init__(self, features: int, mask: Tensor, hidden: Sequence[int], context_size: int = 0):
        super().__init__()
        self.register_buffer("mask", mask)
        sizes = list(hidden)
        layers: list[nn.Module] = [nn.Linear(features + context_size, sizes[0]), nn.ReLU()]
        for i, size in enumerate(sizes):  # sizes[i - 1] wraps round to the last size for i = 0
            layers += [nn.Linear(sizes[i - 1], size), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], 2 * features))
        self.net = nn.Sequential(*layers)

    def _scale_shift(self, kept: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        inputs = kept if context is None else torch.cat([context, kept], dim=1)
        scale, shift = self.net(inputs).chunk(2, 1)
        return torch.tanh(scale), shift

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        kept = x * self.mask
        scale, shift = self._scale_shift(kept, context)
        y = kept + (1 - self.mask) * (x * scale.exp() + shift)
        return y, ((1 - self.mask) * scale).sum(1)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        kept = y * self.mask
        scale, shift = self._scale_shift(kept, context)
        x = kept + (1 - self.mask) * (y - shift) * torch.exp(-scale)
        return x, (-(1 - self.mask) * scale).sum(1)


class SeedPermutation(nn.Module):
    """A fixed random order of the features (log-determinant 0)."""

    def __init__(self, features: int):
        super().__init__()
        self.register_buffer("order", torch.randperm(features))
        self.register_buffer("undo", torch.argsort(self.order))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, int]:
        return x[:, self.order], 0

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, int]:
        return y[:, self.undo], 0


class SeedRealNVP(nn.Module):
    """The notebook's flow: ``blocks`` x (coupling, permutation, batch norm) over a N(0, 1) prior.

    The mask is the odd/even one, the same in every coupling (the permutations mix the
    features between couplings).
    """

    def __init__(self, features: int = 256, context_size: int = 2, blocks: int = 12,
                 hidden: Sequence[int] = (256, 256)):
        super().__init__()
        self.register_buffer("prior_mean", torch.zeros(features))
        self.register_buffer("prior_std", torch.ones(features))
        mask = (torch.arange(features) % 2).float()
        layers: list[nn.Module] = []
        for _ in range(blocks):
            layers += [SeedCoupling(features, mask, hidden, context_size), SeedPermutation(features),
                       SeedBatchNorm(features)]
        self.layers = nn.ModuleList(layers)

    @property
    def prior(self) -> torch.distributions.Normal:
        return torch.distributions.Normal(self.prior_mean, self.prior_std)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        log_det: Tensor | int = 0
        for layer in self.layers:
            x, step = layer(x, context)
            log_det = log_det + step
        return x, log_det

    def inverse(self, u: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        log_det: Tensor | int = 0
        for layer in reversed(self.layers):
            u, step = layer.inverse(u, context)
            log_det = log_det + step
        return u, log_det

    def sample(self, n: int, context: Tensor) -> tuple[Tensor, Tensor]:
        """``n`` samples and their log-densities (the prior's plus the inverse's log-determinant)."""
        u = self.prior.sample((n,))
        x, log_det = self.inverse(u, context)
        return x, self.prior.log_prob(u).sum(1) + log_det


class SeedFlowStep(TimedSteps):
    """One notebook-style flow step per call, from a loader over a list of (embedding, label)."""

    def __init__(self, embeddings: Tensor, labels: Tensor, batch_size: int = NOTEBOOK_BATCH,
                 device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.flow = SeedRealNVP(embeddings.shape[1]).to(self.device).train()
        self.optimizer = torch.optim.Adam(self.flow.parameters(), lr=1e-4, weight_decay=1e-5)
        pairs = [(embeddings[i], labels[i]) for i in range(len(embeddings))]
        self.batches = endless(DataLoader(pairs, batch_size, shuffle=True))
        self.module = self.flow
        self.reset_counts()

    def loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch[0].to(self.device), batch[1].to(self.device)
        context = nn.functional.one_hot(y, 2).to(self.device).float()
        u, log_det = self.flow(x, context)
        return -torch.mean(self.flow.prior.log_prob(u).sum(1) + log_det)


# ---------------------------------------------------------------------------- generation

@torch.no_grad()
def seed_generate(flow: SeedRealNVP, autoencoder: ConvAutoencoder, n: int, label: int,
                  mean: Tensor, std: Tensor) -> Tensor:
    """``n`` images of class ``label`` in [0, 1] on the CPU, highest log-density first."""
    device = mean.device
    context = nn.functional.one_hot(torch.tensor([label] * n), 2).to(device).float()
    embeddings, log_prob = flow.sample(n, context)
    images = seed_decode(autoencoder, embeddings * std + mean)
    images = images[log_prob.sort(0)[1].flip(0)]
    return torch.clamp((images + 1) / 2, 0, 1).cpu()
