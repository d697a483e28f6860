"""A layer with two inputs and three outputs (the customization guide's example)."""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor, nn

from ..registry import Configurable, register


@register(name="contrib.SumProductRatio")
class SumProductRatio(nn.Module, Configurable):
    """Two inputs, three outputs: ``(a + b, a * b, a / b)``.

    Example:
        >>> import torch
        >>> from latentflows.contrib import SumProductRatio
        >>> [t.item() for t in SumProductRatio()([torch.tensor(2.0), torch.tensor(4.0)])]
        [6.0, 8.0, 0.5]
    """

    def forward(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        a, b = inputs
        return [a + b, a * b, a / b]

    def get_config(self) -> dict[str, Any]:
        return {}
