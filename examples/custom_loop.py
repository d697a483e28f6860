"""A hand-written training loop with a status bar, as the document writes it, on latentflows
parts: random batches, main loss + regularization losses, streaming metrics reset each epoch.

    python examples/custom_loop.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from housing import baseline_rmse, load_housing, rmse  # noqa: E402
from torchmetrics import MeanAbsoluteError  # noqa: E402

from latentflows.layers import L2, Dense, regularization_loss  # noqa: E402
from latentflows.metrics import MeanMetric  # noqa: E402


def random_batch(X, y, batch_size, generator):
    index = torch.randint(len(X), (batch_size,), generator=generator)
    return X[index], y[index]


def status_bar(iteration, total, metrics: dict, stream=sys.stderr):
    shown = " - ".join(f"{name}: {float(metric.compute()):.4f}" for name, metric in metrics.items())
    stream.write(f"\r{iteration}/{total} - {shown}" + ("\n" if iteration >= total else ""))


def main(rows: int | None = None, epochs: int = 5, verbose: bool = True) -> dict:
    torch.manual_seed(42)
    (X_train, y_train), _, (X_test, y_test) = load_housing(rows)
    model = nn.Sequential(Dense(30, "elu", "he_normal", kernel_regularizer=L2(0.05)), Dense(1, kernel_regularizer=L2(0.05)))
    model(X_train[:2])
    optimizer = torch.optim.NAdam(model.parameters(), lr=0.01)
    mean_loss, metrics = MeanMetric(), {"mae": MeanAbsoluteError()}
    batch_size = 32
    steps = len(X_train) // batch_size
    generator = torch.Generator().manual_seed(42)
    epoch_losses = []
    for epoch in range(1, epochs + 1):
        if verbose:
            print(f"Epoch {epoch}/{epochs}", file=sys.stderr)
        for step in range(1, steps + 1):
            X_batch, y_batch = random_batch(X_train, y_train, batch_size, generator)
            model.train()
            prediction = model(X_batch)
            main_loss = nn.functional.mse_loss(prediction, y_batch)
            loss = main_loss + regularization_loss(model)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            mean_loss.update(loss.detach().reshape(1))
            for metric in metrics.values():
                metric.update(prediction.detach(), y_batch)
            if verbose and (step % 50 == 0 or step == steps):
                status_bar(step * batch_size, steps * batch_size, {"loss": mean_loss, **metrics})
        epoch_losses.append(float(mean_loss.compute()))
        for metric in [mean_loss, *metrics.values()]:
            metric.reset()
    result = {"epoch_losses": epoch_losses, "test_rmse": rmse(model, X_test, y_test),
              "baseline_rmse": baseline_rmse(y_train, y_test)}
    if verbose:
        print(result)
    return result


if __name__ == "__main__":
    main()
