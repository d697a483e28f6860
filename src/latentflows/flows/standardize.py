"""A fixed affine map ``(x - mean) / std``: the head of a flow over raw embeddings."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..registry import register
from .base import Transform, check_features, class_labels, per_class_matmul


@register
class Standardize(Transform):
    """Subtract a fixed mean and divide by a fixed standard deviation, feature by feature.

    The statistics are buffers (saved with the weights, never trained). At the head of a
    flow it lets the flow's density be that of the raw embeddings, while the layers after
    it see data at unit scale; its log-determinant is the constant ``-sum(log std)``.

    Args:
        features: number of features.
        mean, std: the statistics (default 0 and 1: the identity until weights are loaded).

    Example:
        >>> import torch
        >>> from latentflows.flows import Standardize
        >>> layer = Standardize(2, mean=torch.tensor([1.0, 2.0]), std=torch.tensor([2.0, 4.0]))
        >>> z, logabsdet = layer(torch.tensor([[3.0, 6.0]]))
        >>> z.tolist(), round(logabsdet.item(), 4)
        ([[1.0, 1.0]], -2.0794)
    """

    mean: Tensor
    std: Tensor

    def __init__(self, features: int, mean: Tensor | None = None, std: Tensor | None = None):
        super().__init__()
        self.features = features
        mean = torch.zeros(features) if mean is None else torch.as_tensor(mean, dtype=torch.float32).detach().clone()
        std = torch.ones(features) if std is None else torch.as_tensor(std, dtype=torch.float32).detach().clone()
        if mean.shape != (features,) or std.shape != (features,):
            raise ValueError(f"mean and std must have shape ({features},), got {tuple(mean.shape)}, {tuple(std.shape)}")
        if not bool((std > 0).all()):
            raise ValueError("every std must be positive")
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    @classmethod
    def fit(cls, x: Tensor, eps: float = 1e-8) -> "Standardize":
        """The standardization of ``x``'s features (std plus ``eps``, so constant features work)."""
        return cls(x.shape[1], x.mean(0), x.std(0) + eps)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features(x, self.features, "Standardize")
        return (x - self.mean) / self.std, (-self.std.log().sum()).expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features(z, self.features, "Standardize")
        return z * self.std + self.mean, self.std.log().sum().expand(z.shape[0])

    def get_config(self) -> dict[str, Any]:
        return {"features": self.features}


@register
class ClassWhitening(Transform):
    """``z = W_c (x - mean_c)``: each class whitened by its own mean and covariance, fixed once fitted.

    ``W_c`` is the inverse of the Cholesky factor of class ``c``'s covariance (shrunk towards
    its diagonal by ``shrinkage``), so that before anything is trained a flow that begins
    with this layer *is* one full-covariance Gaussian per class: the baseline a flow must
    beat, and a model whose samples already depend on the class. The couplings after it
    learn only what the Gaussians miss. The statistics are buffers set by ``fit_to_data``
    on the whole training set (``FlowStage`` does this); until then the layer is the
    identity. The context must be one-hot (the class).

    Args:
        features: number of features.
        classes: number of classes (the context size).
        shrinkage: weight of the diagonal in each covariance estimate, in [0, 1): keeps it
            invertible when a class has few examples.

    References:
        Ledoit, Wolf, "A well-conditioned estimator for large-dimensional covariance
        matrices", J. Multivariate Analysis 2004 (shrinkage); Kessy, Lewin, Strimmer,
        "Optimal whitening and decorrelation", The American Statistician 2018, arXiv:1512.00809.

    Example:
        >>> import torch
        >>> from latentflows.flows import ClassWhitening
        >>> layer = ClassWhitening(2, classes=2, shrinkage=0.0)
        >>> x = torch.tensor([[0.0, 0.0], [2.0, 2.0], [2.0, 0.0], [0.0, 2.0], [9.0, 9.0], [11.0, 11.0], [11.0, 9.0], [9.0, 11.0]])
        >>> context = torch.eye(2)[[0, 0, 0, 0, 1, 1, 1, 1]]
        >>> layer.fit_to_data(x, context)
        >>> z, logabsdet = layer(x, context)
        >>> [round(v, 4) for v in z.mean(0).tolist()], torch.allclose(layer.inverse(z, context)[0], x, atol=1e-5)
        ([0.0, 0.0], True)
    """

    mean: Tensor
    cholesky: Tensor
    whitening: Tensor

    def __init__(self, features: int, classes: int, shrinkage: float = 0.05):
        super().__init__()
        if classes < 1:
            raise ValueError(f"ClassWhitening needs the number of classes (the one-hot context size), got {classes}")
        if not 0 <= shrinkage < 1:
            raise ValueError(f"shrinkage must be in [0, 1), got {shrinkage}")
        self.features, self.classes, self.shrinkage = features, classes, float(shrinkage)
        eye = torch.eye(features).expand(classes, features, features).clone()
        self.register_buffer("mean", torch.zeros(classes, features))
        self.register_buffer("cholesky", eye)            # x - mean = L z
        self.register_buffer("whitening", eye.clone())   # z = W (x - mean), W = L^-1

    @torch.no_grad()
    def fit_to_data(self, x: Tensor, context: Tensor) -> None:
        """Set each class's mean and whitening from ``x`` (all training data) and its one-hot ``context``."""
        labels = self._labels(x, context)
        for c in range(self.classes):
            rows = x[labels == c].double()
            if len(rows) < 2:
                continue  # unseen class: stays the identity
            covariance = torch.cov(rows.T).reshape(self.features, self.features)
            covariance = (1 - self.shrinkage) * covariance + self.shrinkage * torch.diag(covariance.diagonal())
            covariance = covariance + 1e-6 * covariance.diagonal().mean() * torch.eye(self.features, dtype=rows.dtype)
            cholesky = torch.linalg.cholesky(covariance)
            self.mean[c] = rows.mean(0).to(self.mean)
            self.cholesky[c] = cholesky.to(self.cholesky)
            self.whitening[c] = torch.linalg.solve_triangular(
                cholesky, torch.eye(self.features, dtype=rows.dtype), upper=False).to(self.whitening)

    def _labels(self, x: Tensor, context: Tensor | None) -> Tensor:
        return class_labels(x, context, self.classes, "ClassWhitening")

    def _map(self, x: Tensor, context: Tensor | None, matrices: Tensor, forward: bool) -> tuple[Tensor, Tensor]:
        labels = self._labels(x, context)
        mapped = per_class_matmul(matrices, x, labels)
        log_diagonal = self.whitening.diagonal(dim1=1, dim2=2).log().sum(1)  # log|det W_c| per class
        if forward:  # z = W_c x - W_c mean_c
            return mapped - (self.mean.unsqueeze(1) @ matrices.transpose(1, 2)).squeeze(1)[labels], log_diagonal[labels]
        return mapped + self.mean[labels], -log_diagonal[labels]  # x = L_c z + mean_c

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features(x, self.features, "ClassWhitening")
        return self._map(x, context, self.whitening, forward=True)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features(z, self.features, "ClassWhitening")
        return self._map(z, context, self.cholesky, forward=False)

    def get_config(self) -> dict[str, Any]:
        return {"features": self.features, "classes": self.classes, "shrinkage": self.shrinkage}


def fit_leading_layers(transform: Transform, x: Tensor, context: Tensor | None) -> int:
    """Fit the data-fitted layers (with ``fit_to_data``) at the front of ``transform`` on the
    whole training set, each on the output of the ones before it; returns how many were fitted.

    Example:
        >>> import torch
        >>> from latentflows.flows import ClassWhitening, Composite, RandomPermutation
        >>> body = Composite([ClassWhitening(3, 2), RandomPermutation(3)])
        >>> fit_leading_layers(body, torch.randn(50, 3) * 4, torch.eye(2)[torch.arange(50) % 2])
        1
    """
    layers = list(getattr(transform, "transforms", [transform]))
    fitted = 0
    with torch.no_grad():
        for layer in layers:
            if not hasattr(layer, "fit_to_data"):
                break
            layer.fit_to_data(x, context)
            x, _ = layer(x, context)
            fitted += 1
    return fitted
