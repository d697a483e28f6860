"""A hand-made streaming metric (the customization guide's precision example)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from ..registry import Configurable, register


@register(name="contrib.Precision")
class Precision(Metric, Configurable):
    """Binary precision, true positives / predicted positives, accumulated over batches.

    Args:
        threshold: predictions at or above it count as positive.

    Example:
        >>> import torch
        >>> from latentflows.contrib import Precision
        >>> metric = Precision()
        >>> metric.update(torch.tensor([1, 1, 0, 1, 0, 1, 1, 1]), torch.tensor([0, 1, 1, 0, 1, 1, 1, 1]))
        >>> metric.compute().item()
        0.6666666865348816
    """

    full_state_update = False
    true_positives: Tensor  # states added by add_state
    false_positives: Tensor

    def __init__(self, threshold: float = 0.5, **kwargs: Any):
        super().__init__(**kwargs)
        self.threshold = threshold
        self.add_state("true_positives", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("false_positives", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, prediction: Tensor, target: Tensor) -> None:
        predicted = torch.as_tensor(prediction, dtype=torch.float32) >= self.threshold
        actual = torch.as_tensor(target).bool()
        self.true_positives += (predicted & actual).sum()
        self.false_positives += (predicted & ~actual).sum()

    def compute(self) -> Tensor:
        predicted = self.true_positives + self.false_positives
        return self.true_positives / predicted if predicted > 0 else torch.tensor(0.0)

    def get_config(self) -> dict[str, Any]:
        return {"threshold": self.threshold}
