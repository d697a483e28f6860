"""Streaming metrics on torchmetrics: state kept across batches, update / compute / reset.

A streaming metric accumulates totals (not per-batch results), so after two batches it
reports the value over both: precision of 4 hits in 8 positive predictions is 0.5 even if
the batches alone gave 0.8 and 0.0.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from .losses import huber, to_bits_per_dim
from .registry import Configurable, register


class StreamingMean(Metric, Configurable):
    """Weighted mean of per-sample values: sum and count, summed across processes.

    The base of the metrics below: it keeps float64 totals, so the mean over many batches
    equals the mean over all their samples. ``update_values(values, weight)`` adds a batch;
    each subclass's ``update`` (its own arguments, as torchmetrics intends) feeds it.

    Args:
        **kwargs: passed to ``torchmetrics.Metric``.

    Example:
        >>> import torch
        >>> mean = MeanMetric()
        >>> mean.update(torch.tensor([1.0, 3.0])); mean.update(torch.tensor([5.0]))
        >>> mean.compute().item()
        3.0
    """

    full_state_update = False
    total: Tensor  # states added by add_state
    count: Tensor

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update_values(self, values: Tensor, weight: Tensor | None = None) -> None:
        values = values.detach().to(torch.float64).flatten()
        weight = torch.ones_like(values) if weight is None else weight.detach().to(torch.float64).flatten()
        self.total += (values * weight).sum()
        self.count += weight.sum()

    def compute(self) -> Tensor:
        return (self.total / self.count).float()

    def get_config(self) -> dict[str, Any]:
        return {}


@register
class MeanMetric(StreamingMean):
    """Mean of whatever values it is given (e.g. a running loss), optionally weighted.

    Args:
        **kwargs: passed to ``torchmetrics.Metric``.

    Example:
        >>> import torch
        >>> metric = MeanMetric()
        >>> metric.update(torch.tensor([2.0]), torch.tensor([3.0])); metric.update(torch.tensor([6.0]))
        >>> metric.compute().item()
        3.0
    """

    def update(self, values: Tensor, weight: Tensor | None = None) -> None:
        self.update_values(values, weight)


@register
class HuberMetric(StreamingMean):
    """Mean Huber loss over all elements seen since the last reset.

    ``update(prediction, target)`` adds a batch.

    Args:
        threshold: where the loss turns from quadratic to linear.
        **kwargs: passed to ``torchmetrics.Metric``.

    References:
        Huber, "Robust Estimation of a Location Parameter", Annals of Mathematical Statistics, 1964.

    Example:
        >>> import torch
        >>> metric = HuberMetric(1.0)
        >>> metric.update(torch.tensor([3.0]), torch.tensor([0.0]))
        >>> metric.compute().item()
        2.5
    """

    def __init__(self, threshold: float = 1.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.threshold = threshold

    def update(self, prediction: Tensor, target: Tensor) -> None:
        self.update_values(huber(target - prediction, self.threshold))

    def get_config(self) -> dict[str, Any]:
        return {"threshold": self.threshold}


@register
class BitsPerDim(StreamingMean):
    """Negative log-likelihood in bits per dimension, from per-sample log-densities in nats.

    ``update(log_prob)`` adds a batch of log-densities.

    Args:
        features: the number of dimensions.
        **kwargs: passed to ``torchmetrics.Metric``.

    Example:
        >>> import torch
        >>> metric = BitsPerDim(2)
        >>> metric.update(torch.tensor([-1.3862943611198906]))   # 2 bits per sample = 1 bit per dimension of 2
        >>> round(metric.compute().item(), 6)
        1.0
    """

    def __init__(self, features: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.features = features

    def update(self, log_prob: Tensor) -> None:
        self.update_values(to_bits_per_dim(-log_prob, self.features))

    def get_config(self) -> dict[str, Any]:
        return {"features": self.features}
