"""The figures of an evaluation, each a plain function of tensors (easy to test and reuse).

Pixel distances are root-mean-square differences per pixel with values in [0, 1], so
0 means identical images and 1 means black against white everywhere.

The heavy image measures take a ``device`` to compute on (default: where their inputs
are) and return plain floats or CPU tensors. Sums and distances defined in float64 stay in
float64: on Apple's MPS, which has none, those steps run on the CPU.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import TYPE_CHECKING, Iterator, cast

import torch
from torch import Tensor, nn
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
from torchmetrics.image.fid import FrechetInceptionDistance  # module paths: the package only
from torchmetrics.image.kid import KernelInceptionDistance  # exports them with torch-fidelity

from ..autoencoder import to_signed_unit
from ..losses import to_bits_per_dim

if TYPE_CHECKING:  # pragma: no cover
    from ..data import MappedImages


def _float64_device(device: torch.device) -> torch.device:
    """Where float64 work on ``device`` runs: there, or on the CPU for MPS (no float64)."""
    return torch.device("cpu") if device.type == "mps" else device


@contextlib.contextmanager
def _full_float32() -> Iterator[None]:
    """float32 matrix products in full float32 for the block (not TF32, which a CUDA runtime allows)."""
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)


@torch.no_grad()
def reconstruction_quality(originals: Tensor | MappedImages, reconstructions: Tensor, batch_size: int = 256,
                           device: str | torch.device | None = None) -> dict[str, float]:
    """MSE on the [-1, 1] scale the autoencoder trains on; PSNR (dB, mean over images) and
    SSIM on [0, 1] pixels.

    How close an autoencoder's reconstructions are to its inputs; identical images give
    an infinite PSNR.

    Args:
        originals: uint8 images ``(N, 3, H, W)``.
        reconstructions: uint8 images of the same shape.
        batch_size: images compared at once.
        device: where to compare them (each batch is moved there); default where ``originals`` are.

    References:
        Wang, Bovik, Sheikh, Simoncelli, "Image Quality Assessment: From Error Visibility to
        Structural Similarity", IEEE Transactions on Image Processing, 2004 (SSIM).

    Example:
        >>> import torch
        >>> originals = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
        >>> grey = torch.full((2, 3, 16, 16), 51, dtype=torch.uint8)   # 0.2 on [0, 1]
        >>> {k: round(v, 2) for k, v in reconstruction_quality(originals, grey).items()}
        {'mse': 0.16, 'psnr_db': 13.98, 'ssim': 0.0}
    """
    device = originals.device if device is None else torch.device(device)
    psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3)).to(device)  # per image, then averaged
    ssim = StructuralSimilarityIndexMeasure(data_range=1.0).to(device)
    squared, count = 0.0, 0
    for i in range(0, len(originals), batch_size):
        real, fake = originals[i : i + batch_size].to(device), reconstructions[i : i + batch_size].to(device)
        squared += float((to_signed_unit(real) - to_signed_unit(fake)).square().sum())
        count += real.numel()
        psnr.update(fake.float() / 255, real.float() / 255)
        ssim.update(fake.float() / 255, real.float() / 255)
    return {"mse": squared / count, "psnr_db": float(psnr.compute()),
            "ssim": float(cast(Tensor, ssim.compute()))}  # torchmetrics types compute() loosely


def nll_summary(log_prob: Tensor, dim: int) -> dict[str, float]:
    """Mean negative log-likelihood in nats per dimension and bits per dimension.

    Args:
        log_prob: per-sample log-densities in nats.
        dim: the number of dimensions of each sample.

    Example:
        >>> import torch
        >>> summary = nll_summary(torch.tensor([-4.0, -2.0]), 2)
        >>> summary["nats_per_dim"], round(summary["bits_per_dim"], 4), summary["count"]
        (1.5, 2.164, 2)
    """
    nll = float(-log_prob.double().mean())
    return {"nats_per_dim": nll / dim, "bits_per_dim": to_bits_per_dim(nll, dim), "count": len(log_prob)}


class _Given(nn.Module):
    """Passes precomputed features to torchmetrics, so each image is embedded only once."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def feature_distances(real: Tensor, fake: Tensor, kid_subsets: int = 100, seed: int = 0) -> dict[str, float]:
    """FID and KID (mean and std over subsets) between two sets of image features.

    KID's seeded random subsets hold half the smaller set (at most 1000 images), so that its
    std shows the sampling spread. FID is biased upwards at small n: compare runs only at
    the same n.

    Args:
        real: features of real images ``(N, D)``, e.g. from ``FIDInceptionV3``.
        fake: features of generated images ``(M, D)``.
        kid_subsets: number of random subsets KID averages over.
        seed: seeds KID's subsets.

    References:
        Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
        Equilibrium", NeurIPS 2017, arXiv:1706.08500 (FID); Binkowski et al., "Demystifying
        MMD GANs", ICLR 2018, arXiv:1801.01401 (KID).

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> real = torch.randn(50, 8)
        >>> distances = feature_distances(real, real + 3.0)   # same covariance, means 3 apart in 8 dims
        >>> sorted(distances), round(distances["fid"], 3)
        (['fid', 'kid_mean', 'kid_std'], 72.0)
    """
    if len(real) < 4 or len(fake) < 4:
        raise ValueError("FID and KID need at least 4 real and 4 generated images")
    real, fake = real.double(), fake.double()
    fid = FrechetInceptionDistance(feature=_Given(real.shape[1]))
    fid.update(real, real=True)
    fid.update(fake, real=False)
    with warnings.catch_warnings():  # "KID keeps all features in memory": they are ours already
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=_Given(real.shape[1]), subsets=kid_subsets,
                                      subset_size=min(1000, len(real) // 2, len(fake) // 2))
    kid.update(real, real=True)
    kid.update(fake, real=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    # one thread: the eigenvalue step of a 1280-d or 2048-d covariance took 25-70 s on two
    # threads of a busy 2-core machine, against about 1 s on one
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        frechet = float(fid.compute())
    finally:
        torch.set_num_threads(threads)
    return {"fid": frechet, "kid_mean": float(kid_mean), "kid_std": float(kid_std)}


def linear_probe(train_x: Tensor, train_y: Tensor, val_x: Tensor, val_y: Tensor, classes: int,
                 steps: int = 300, weight_decay: float = 1e-3) -> dict[str, float]:
    """How much class information a representation keeps: a logistic regression trained on
    ``train_x`` (standardized with its statistics, classes weighted by their frequency),
    scored on ``val_x`` by accuracy and balanced accuracy (mean recall over classes).

    Set beside a classifier's accuracy on the reconstructions (``evaluate``'s judge), it shows
    where class is lost: in the encoder (a low probe) or in the decoder (a high probe, a low
    accuracy on reconstructions).

    Args:
        train_x, train_y: training features ``(N, D)`` and integer labels.
        val_x, val_y: validation features and labels.
        classes: the number of classes.
        steps: full-batch L-BFGS steps.
        weight_decay: L2 penalty on the weights.

    References:
        Alain & Bengio, "Understanding intermediate layers using linear classifier probes",
        ICLR 2017 workshop, arXiv:1610.01644.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> y = torch.arange(200) % 2
        >>> x = torch.randn(200, 5) + 3 * y[:, None]
        >>> linear_probe(x[:100], y[:100], x[100:], y[100:], 2)["balanced_accuracy"] > 0.95
        True
    """
    train_x, val_x = train_x.double(), val_x.double()
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-8)
    train_x, val_x = (train_x - mean) / std, (val_x - mean) / std
    counts = torch.bincount(train_y, minlength=classes).double().clamp_min(1)
    weights = len(train_y) / (classes * counts)
    linear = torch.nn.Linear(train_x.shape[1], classes).double()
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(train_x), train_y, weight=weights)
        loss = loss + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        predicted = linear(val_x).argmax(1)
    recalls = [float((predicted[val_y == c] == c).double().mean()) for c in range(classes) if (val_y == c).any()]
    return {"accuracy": float((predicted == val_y).double().mean()), "balanced_accuracy": sum(recalls) / len(recalls)}


def gaussian_baseline(train_x: Tensor, train_y: Tensor, val_x: Tensor, val_y: Tensor,
                      classes: int) -> dict[str, float]:
    """Validation NLL (nats per dimension) of one full-covariance Gaussian per class, fitted to ``train_x``.

    The baseline a flow must beat to earn its keep: a flow whose validation NLL is not below
    this one has learned nothing about the embeddings that their class means and covariances
    do not already say (on small data it can even be worse: it overfits). It is the density
    of ``flows.ClassWhitening`` without shrinkage (the layer a flow can start from), so the
    two never disagree; classes with fewer than 2 training embeddings are left out.

    Args:
        train_x, train_y: training embeddings ``(N, D)`` and integer labels.
        val_x, val_y: validation embeddings and labels.
        classes: the number of classes.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> x, y = torch.randn(2000, 3) * 2, torch.arange(2000) % 2
        >>> round(gaussian_baseline(x[:1000], y[:1000], x[1000:], y[1000:], 2)["nats_per_dim"], 1)  # 0.5 log(2 pi e 4)
        2.1
    """
    from ..flows import ClassWhitening, StandardNormal

    train_x, val_x = train_x.double(), val_x.double()
    fitted = torch.bincount(train_y, minlength=classes) >= 2
    scored = fitted[val_y]
    if not bool(scored.any()):
        raise ValueError("no class has both 2 training and 1 validation embedding")
    gaussians = ClassWhitening(train_x.shape[1], classes, shrinkage=0.0).double()
    gaussians.fit_to_data(train_x, torch.nn.functional.one_hot(train_y, classes).double())
    val_x, val_y = val_x[scored], val_y[scored]
    z, logabsdet = gaussians(val_x, torch.nn.functional.one_hot(val_y, classes).double())
    log_prob = StandardNormal(val_x.shape[1]).double().log_prob(z) + logabsdet
    return {"nats_per_dim": float(-log_prob.mean()) / val_x.shape[1], "count": len(val_x)}


def _flat(images: Tensor) -> Tensor:
    return images.reshape(len(images), -1).float() / 255


@torch.no_grad()
def mean_pairwise_distance(images: Tensor, batch_size: int = 512, device: str | torch.device | None = None) -> float:
    """Mean pixel distance over all pairs of different images: how varied a set is.

    Args:
        images: uint8 images, at least 2.
        batch_size: rows of the distance matrix computed at once.
        device: where to compute the (float64) distances; default where ``images`` are
            (MPS: the CPU).

    Example:
        >>> import torch
        >>> black, white = torch.zeros(3, 4, 4, dtype=torch.uint8), torch.full((3, 4, 4), 255, dtype=torch.uint8)
        >>> mean_pairwise_distance(torch.stack([black, white])), mean_pairwise_distance(torch.stack([black, black]))
        (1.0, 0.0)
    """
    if len(images) < 2:
        raise ValueError("diversity needs at least 2 images")
    device = _float64_device(images.device if device is None else torch.device(device))
    flat = _flat(images.to(device)).double()
    total = 0.0
    for i in range(0, len(flat), batch_size):
        total += float(torch.cdist(flat[i : i + batch_size], flat).sum())
    n = len(flat)
    return total / (n * (n - 1)) / math.sqrt(flat.shape[1])


@torch.no_grad()
def nearest_neighbours(queries: Tensor, references: Tensor | MappedImages, batch_size: int = 256,
                       device: str | torch.device | None = None) -> tuple[Tensor, Tensor]:
    """For each query image, the pixel distance to its nearest reference image and its index.

    The search runs in float32 matrix products (fast, a quarter of double's memory; full
    float32 on CUDA too, not TF32); the distance to the neighbour found is then recomputed
    exactly, so a copy scores 0. Used to tell whether generated images copy training images.

    Args:
        queries: uint8 images to look up.
        references: uint8 images to search (e.g. the training set).
        batch_size: queries searched at once.
        device: where to search (the references are copied there once); default where
            ``references`` are. The distances and indices come back on the CPU.

    Example:
        >>> import torch
        >>> references = torch.stack([torch.full((3, 4, 4), v, dtype=torch.uint8) for v in (0, 100, 255)])
        >>> distances, indices = nearest_neighbours(references[[2, 1]], references)
        >>> distances.tolist(), indices.tolist()
        ([0.0, 0.0], [2, 1])
    """
    if len(references) == 0:
        raise ValueError("no reference images to search")
    device = references.device if device is None else torch.device(device)
    exact = _float64_device(device)
    flat_references = _flat(references.to(device))
    distances, indices = [], []
    for i in range(0, len(queries), batch_size):
        flat_queries = _flat(queries[i : i + batch_size].to(device))
        with _full_float32():
            nearest = torch.cdist(flat_queries, flat_references).argmin(1)
        distances.append((flat_queries.to(exact).double() - flat_references[nearest].to(exact).double()).norm(dim=1))
        indices.append(nearest)
    return (torch.cat(distances).float() / math.sqrt(flat_references.shape[1])).cpu(), torch.cat(indices).cpu()


def distance_summary(distances: Tensor) -> dict[str, float]:
    """Mean, median and minimum of a set of distances, as plain floats for a report.

    Args:
        distances: a 1-d tensor of distances, e.g. from ``nearest_neighbours``.

    Example:
        >>> import torch
        >>> distance_summary(torch.tensor([0.25, 0.5, 1.5]))
        {'mean': 0.75, 'median': 0.5, 'min': 0.25}
    """
    return {"mean": float(distances.mean()), "median": float(distances.median()), "min": float(distances.min())}
