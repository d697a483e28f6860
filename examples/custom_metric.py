"""Streaming metrics: totals kept across batches, not a mean of per-batch values.

    python examples/custom_metric.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from housing import load_housing  # noqa: E402
from huber_regression import Regressor  # noqa: E402

from latentflows.contrib import Precision  # noqa: E402
from latentflows.losses import MSELoss  # noqa: E402
from latentflows.metrics import HuberMetric  # noqa: E402
from latentflows.training import Batches, Trainer, adam, supervised  # noqa: E402


def precision_demo() -> list[float]:
    """The document's example: 0.8 after the first batch, 0.5 after the second."""
    precision = Precision()
    precision.update(torch.tensor([1, 1, 0, 1, 0, 1, 0, 1]), torch.tensor([0, 1, 1, 1, 0, 1, 0, 1]))
    first = float(precision.compute())
    precision.update(torch.tensor([1, 0, 1, 1, 0, 0, 0, 0]), torch.tensor([0, 1, 0, 0, 1, 0, 1, 1]))
    return [first, float(precision.compute())]


def main(rows: int | None = None, epochs: int = 10, verbose: bool = True) -> dict:
    torch.manual_seed(42)
    (X_train, y_train), (X_valid, y_valid), _ = load_housing(rows)
    model = Regressor()
    model(X_train[:2])
    trainer = Trainer(model, adam(model.parameters(), 1e-2), supervised(MSELoss()),
                      metrics={"huber": HuberMetric(threshold=2.0)}, stage="mse+huber", progress=verbose)
    history = trainer.fit(Batches([X_train, y_train], 32, shuffle=True), epochs, Batches([X_valid, y_valid], 1024))
    result = {"precision_after_each_batch": precision_demo(), "val_huber": history[-1].val["huber"],
              "val_mse": history[-1].val["loss"]}
    if verbose:
        print(result)
    return result


if __name__ == "__main__":
    main()
