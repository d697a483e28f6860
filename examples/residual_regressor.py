"""A residual regressor (one block reused four times) and a regressor that adds a
reconstruction loss from inside its forward pass (an auxiliary loss).

    python examples/residual_regressor.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from housing import baseline_rmse, load_housing, rmse  # noqa: E402

import latentflows as lf  # noqa: E402
from latentflows.layers import AddsLosses, Dense, ResidualBlock  # noqa: E402
from latentflows.losses import MSELoss  # noqa: E402
from latentflows.training import Batches, Trainer, adam, supervised  # noqa: E402


@lf.register
class ResidualRegressor(nn.Module, lf.Configurable):
    def __init__(self, output_dim: int = 1):
        super().__init__()
        self.output_dim = output_dim
        self.hidden1 = Dense(30, "elu", "he_normal")
        self.block1 = ResidualBlock(30, 2, "elu")
        self.block2 = ResidualBlock(30, 2, "elu")
        self.out = Dense(output_dim)

    def forward(self, x):
        z = self.hidden1(x)
        for _ in range(1 + 3):
            z = self.block1(z)  # the same block, four times
        return self.out(self.block2(z))

    def get_config(self):
        return {"output_dim": self.output_dim}


@lf.register
class ReconstructingRegressor(AddsLosses, nn.Module, lf.Configurable):
    """Five hidden layers; the top one also reconstructs the input, weighted 0.05."""

    def __init__(self, output_dim: int = 1, weight: float = 0.05, input_dim: int | None = None):
        super().__init__()
        self.output_dim, self.weight, self.input_dim = output_dim, weight, None
        self.hidden = nn.Sequential(*[Dense(30, "selu", "lecun_normal") for _ in range(5)])
        self.out = Dense(output_dim)
        if input_dim is not None:
            self.build(input_dim)

    def build(self, input_dim: int) -> None:
        """Create the reconstruction layer once the input size is known (the first call)."""
        self.input_dim = input_dim
        self.reconstruct = nn.Linear(30, input_dim)

    def forward(self, x):
        if self.input_dim is None:
            self.build(x.shape[1])
        z = self.hidden(x)
        reconstruction = self.reconstruct(z)
        self.add_loss("reconstruction", self.weight * (reconstruction - x).pow(2).mean())
        return self.out(z)

    def get_config(self):
        return {"output_dim": self.output_dim, "weight": self.weight, "input_dim": self.input_dim}


def fit(model, data, epochs, verbose, lr=3e-3):
    (X_train, y_train), (X_valid, y_valid), _ = data
    model(X_train[:2])
    trainer = Trainer(model, adam(model.parameters(), lr), supervised(MSELoss()), stage=type(model).__name__,
                      progress=verbose)
    return trainer.fit(Batches([X_train, y_train], 32, shuffle=True), epochs, Batches([X_valid, y_valid], 1024))


def main(rows: int | None = None, epochs: int = 15, verbose: bool = True) -> dict:
    torch.manual_seed(42)
    data = load_housing(rows)
    (_, y_train), _, (X_test, y_test) = data
    residual, reconstructing = ResidualRegressor(), ReconstructingRegressor()
    fit(residual, data, epochs, verbose)
    history = fit(reconstructing, data, epochs, verbose)
    result = {"residual_test_rmse": rmse(residual, X_test, y_test),
              "reconstructing_test_rmse": rmse(reconstructing, X_test, y_test),
              "baseline_rmse": baseline_rmse(y_train, y_test),
              "reconstruction_loss": [r.train["reconstruction"] for r in history]}
    if verbose:
        print({k: v for k, v in result.items() if k != "reconstruction_loss"})
    return result


if __name__ == "__main__":
    main()
