"""The Inception-v3 network that FID and KID are defined with, in plain PyTorch.

The standard FID features are the 2048-d pool features of the TensorFlow Inception graph
of 2015-12-05 ("pt_inception" as converted by torch-fidelity). This module rebuilds that
graph without torchvision (which does not import beside the CPU torch here): TF 1.x
bilinear resize to 299 px, (x - 128) / 128, the FID variants of the mixed blocks (average
pools that ignore padding, a max pool in the last block). Module names follow the
converted weights file so its state dict loads strictly.

Weights: ``--fid-weights PATH`` (safetensors, or torch-fidelity's .pth read with
``torch.load(weights_only=True)``, which loads tensors and nothing executable), else a
copy in the latentflows cache, else a download (verified by its SHA-256 prefix) that is
stored there as safetensors. No weights: ``load_inception`` says why, and evaluation
reports FID/KID as unavailable instead of printing a number.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ModelFileError
from ..storage import load_torch_state_dict

WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
CACHED_WEIGHTS = "inception-2015-12-05.safetensors"
INPUT_SIZE = 299
NO_DOWNLOAD_ENV = "LATENTFLOWS_NO_DOWNLOAD"


def tf1_bilinear_resize(images: Tensor, size: int) -> Tensor:
    """Bilinear resize as TensorFlow 1.x does it (align_corners=False, no half-pixel shift).

    FID's reference numbers were computed with this resize; torch's own bilinear modes
    sample at different positions and would shift every score.

    Args:
        images: float images ``(..., H, W)``.
        size: the output height and width.

    Example:
        >>> import torch
        >>> tf1_bilinear_resize(torch.zeros(2, 3, 64, 64), 299).shape
        torch.Size([2, 3, 299, 299])
        >>> tf1_bilinear_resize(torch.tensor([[[[0.0, 2.0]]]]), 4)[0, 0, 0].tolist()   # torch: [0, 0.5, 1.5, 2]
        [0.0, 1.0, 2.0, 2.0]
    """

    def axis(n_in: int) -> tuple[Tensor, Tensor, Tensor]:
        position = torch.arange(size, dtype=torch.float32, device=images.device) * torch.tensor(n_in / size)
        low = position.long()
        high = (low + 1).clamp_max(n_in - 1)
        return low, high, (position - low.float()).to(images.dtype)

    y_low, y_high, dy = axis(images.shape[-2])
    x_low, x_high, dx = axis(images.shape[-1])
    # along x first, then y: the order of the reference implementation, so results match bit for bit
    left, right = images.index_select(-1, x_low), images.index_select(-1, x_high)
    columns = left + (right - left) * dx
    top, bottom = columns.index_select(-2, y_low), columns.index_select(-2, y_high)
    return top + (bottom - top) * dy.view(-1, 1)


class ConvBN(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, as in TF), ReLU: the unit every block is built of.

    Args:
        channels_in: input channels.
        channels_out: output channels.
        kernel: the convolution's kernel size.
        stride: the convolution's stride.
        padding: the convolution's zero padding.

    Example:
        >>> import torch
        >>> ConvBN(3, 4, 3, 1, 1).eval()(torch.zeros(1, 3, 8, 8)).shape
        torch.Size([1, 4, 8, 8])
    """

    def __init__(self, channels_in: int, channels_out: int, kernel: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0):
        super().__init__()
        self.conv = nn.Conv2d(channels_in, channels_out, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(channels_out, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _row(cin: int, cout: int) -> ConvBN:  # 1x7 then 7x1 factorised convolutions
    return ConvBN(cin, cout, (1, 7), padding=(0, 3))


def _column(cin: int, cout: int) -> ConvBN:
    return ConvBN(cin, cout, (7, 1), padding=(3, 0))


def _avg_pool(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)  # TF ignores the padding


class Mixed35(nn.Module):
    """35x35 block of Inception-v3: 1x1, 5x5, double 3x3 and pooled branches, concatenated.

    Args:
        channels: input channels.
        pool_features: channels of the pooled branch.

    References:
        Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016,
        arXiv:1512.00567.

    Example:
        >>> import torch
        >>> Mixed35(8, 4).eval()(torch.zeros(1, 8, 5, 5)).shape
        torch.Size([1, 228, 5, 5])
    """

    def __init__(self, channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = ConvBN(channels, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = ConvBN(channels, 48, 1), ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(channels, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(channels, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool(x)),
        ], 1)


class Reduce35(nn.Module):
    """35 -> 17 grid reduction of Inception-v3: strided 3x3, strided double 3x3 and max-pool branches.

    Args:
        channels: input channels.

    References:
        Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016,
        arXiv:1512.00567.

    Example:
        >>> import torch
        >>> Reduce35(8).eval()(torch.zeros(1, 8, 7, 7)).shape
        torch.Size([1, 488, 3, 3])
    """

    def __init__(self, channels: int):
        super().__init__()
        self.branch3x3 = ConvBN(channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(channels, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class Mixed17(nn.Module):
    """17x17 block of Inception-v3 with factorised 7x7 convolutions (1x7 then 7x1).

    Args:
        channels: input channels.
        c7: channels of the factorised 7x7 branches.

    References:
        Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016,
        arXiv:1512.00567.

    Example:
        >>> import torch
        >>> Mixed17(8, 4).eval()(torch.zeros(1, 8, 5, 5)).shape
        torch.Size([1, 768, 5, 5])
    """

    def __init__(self, channels: int, c7: int):
        super().__init__()
        self.branch1x1 = ConvBN(channels, 192, 1)
        self.branch7x7_1, self.branch7x7_2, self.branch7x7_3 = ConvBN(channels, c7, 1), _row(c7, c7), _column(c7, 192)
        self.branch7x7dbl_1, self.branch7x7dbl_2 = ConvBN(channels, c7, 1), _column(c7, c7)
        self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5 = _row(c7, c7), _column(c7, c7), _row(c7, 192)
        self.branch_pool = ConvBN(channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        double = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            double = layer(double)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            double,
            self.branch_pool(_avg_pool(x)),
        ], 1)


class Reduce17(nn.Module):
    """17 -> 8 grid reduction of Inception-v3: strided 3x3, strided factorised 7x7 and max-pool branches.

    Args:
        channels: input channels.

    References:
        Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016,
        arXiv:1512.00567.

    Example:
        >>> import torch
        >>> Reduce17(8).eval()(torch.zeros(1, 8, 7, 7)).shape
        torch.Size([1, 520, 3, 3])
    """

    def __init__(self, channels: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = ConvBN(channels, 192, 1), ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1, self.branch7x7x3_2 = ConvBN(channels, 192, 1), _row(192, 192)
        self.branch7x7x3_3, self.branch7x7x3_4 = _column(192, 192), ConvBN(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        seven = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), seven, F.max_pool2d(x, 3, stride=2)], 1)


class Mixed8(nn.Module):
    """8x8 block of Inception-v3 with split 1x3/3x1 branches; the FID graph's last one pools by max.

    Args:
        channels: input channels.
        max_pool: pool the pooled branch by max instead of average.

    References:
        Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016,
        arXiv:1512.00567.

    Example:
        >>> import torch
        >>> Mixed8(8, max_pool=True).eval()(torch.zeros(1, 8, 3, 3)).shape
        torch.Size([1, 2048, 3, 3])
    """

    def __init__(self, channels: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = ConvBN(channels, 320, 1)
        self.branch3x3_1 = ConvBN(channels, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1, self.branch3x3dbl_2 = ConvBN(channels, 448, 1), ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(single), self.branch3x3_2b(single),
            self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
            self.branch_pool(pooled),
        ], 1)


class FIDInceptionV3(nn.Module):
    """uint8 images (N, 3, H, W) of any size -> the 2048-d features FID and KID compare.

    Inception-v3 as in the TensorFlow graph FID is defined with, so that scores match the
    published ones. It takes no arguments and starts with random weights: ``load_inception``
    returns one with the real weights. It stays in eval mode and needs no gradients.

    References:
        Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016,
        arXiv:1512.00567; Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge
        to a Local Nash Equilibrium" (FID), NeurIPS 2017, arXiv:1706.08500.

    Example:
        >>> FIDInceptionV3.num_features   # building one takes a while: see tf1_bilinear_resize for its resize
        2048
    """

    num_features = 2048  # read by torchmetrics

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = Mixed35(192, 32), Mixed35(256, 64), Mixed35(288, 64)
        self.Mixed_6a = Reduce35(288)
        self.Mixed_6b, self.Mixed_6c = Mixed17(768, 128), Mixed17(768, 160)
        self.Mixed_6d, self.Mixed_6e = Mixed17(768, 160), Mixed17(768, 192)
        self.Mixed_7a = Reduce17(768)
        self.Mixed_7b, self.Mixed_7c = Mixed8(1280, max_pool=False), Mixed8(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)  # the classifier head: in the weights file, unused for FID
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FIDInceptionV3:
        return super().train(False)  # batch norm always uses the stored statistics

    def forward(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images of shape (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        x = tf1_bilinear_resize(images.float(), INPUT_SIZE)
        x = (x - 128) / 128
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean((2, 3))


def _read_weights(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise ModelFileError(f"{path}: Inception weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as error:  # noqa: BLE001 - any unreadable file gets the same message
            raise ModelFileError(f"{path}: not a readable Inception weights file "
                                 f"({type(error).__name__}: {error})") from None
    return load_torch_state_dict(path, "Inception weights")


def inception_from_file(path: str | os.PathLike) -> FIDInceptionV3:
    """The FID network with weights from ``path``; a missing or wrong file gives a ModelFileError.

    Args:
        path: safetensors, or torch-fidelity's ``.pth`` (read as tensors only).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     try:
        ...         inception_from_file(Path(folder) / "missing.pth")
        ...     except ModelFileError as error:
        ...         print(str(error).split(": ")[-1])
        Inception weights file not found
    """
    path = Path(path)
    state = _read_weights(path)
    network = FIDInceptionV3()
    missing, unexpected = network.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ModelFileError(f"{path}: not the FID Inception weights (missing: {', '.join(missing[:3]) or '-'}; "
                             f"unexpected: {', '.join(unexpected[:3]) or '-'})")
    return network


def load_inception(weights: str | os.PathLike | None = None,
                   download: bool = True) -> tuple[FIDInceptionV3 | None, str]:
    """The FID network and where its weights came from, or ``(None, why not)``.

    A given path must load (else ModelFileError). Without one: the cached copy, else a
    download when allowed (``download`` and ``$LATENTFLOWS_NO_DOWNLOAD`` unset).

    Args:
        weights: a weights file to load, or None to use the cache or a download.
        download: allow a download when there is no cached copy.

    Example:
        >>> import tempfile
        >>> from unittest import mock
        >>> with tempfile.TemporaryDirectory() as folder, mock.patch.dict(os.environ, {"LATENTFLOWS_CACHE": folder}):
        ...     network, reason = load_inception(download=False)
        >>> network, reason.split(";")[0]
        (None, 'no Inception weights: downloads are off')
    """
    if weights is not None:
        return inception_from_file(weights), str(weights)
    from ..data import weights_cache_dir

    cached = weights_cache_dir() / CACHED_WEIGHTS
    if cached.is_file():
        return inception_from_file(cached), str(cached)
    if not download or os.environ.get(NO_DOWNLOAD_ENV):
        return None, (f"no Inception weights: downloads are off; pass --fid-weights PATH "
                      f"(the file at {WEIGHTS_URL})")
    try:
        state = _download(cached.parent)
    except Exception as error:  # noqa: BLE001 - offline, proxy, HTTP or hash errors all mean "no weights"
        return None, (f"no Inception weights: download failed ({type(error).__name__}: {error}); "
                      f"pass --fid-weights PATH (the file at {WEIGHTS_URL})")
    from ..storage import save_safetensors

    save_safetensors(cached, state, "fid-inception-v3")
    return inception_from_file(cached), f"{WEIGHTS_URL} (cached as {cached})"


def _download(folder: Path) -> dict[str, Tensor]:
    import socket

    folder.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        # check_hash: the file name carries a SHA-256 prefix; weights_only is torch's default
        state = torch.hub.load_state_dict_from_url(WEIGHTS_URL, model_dir=str(folder), map_location="cpu",
                                                   check_hash=True, progress=False, weights_only=True)
    finally:
        socket.setdefaulttimeout(previous)
    (folder / WEIGHTS_URL.rsplit("/", 1)[1]).unlink(missing_ok=True)  # kept as safetensors instead
    return state
