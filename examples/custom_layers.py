"""Custom functions and layers: activation, initializer, regularizer, constraint, lambda,
a lazily built layer, a layer with two inputs and three outputs, a training-only layer.

    python examples/custom_layers.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from housing import baseline_rmse, load_housing, rmse  # noqa: E402

import latentflows as lf  # noqa: E402
from latentflows.contrib import SumProductRatio  # noqa: E402
from latentflows.layers import L1, Dense, GaussianNoise, Lambda, NonNegative  # noqa: E402
from latentflows.losses import MSELoss  # noqa: E402
from latentflows.saving import load_model, save_model  # noqa: E402
from latentflows.training import Batches, Trainer, adam, supervised  # noqa: E402


@lf.register
def my_softplus(z):
    return lf.autodiff.stable_softplus(z)


@lf.register
def my_glorot_initializer(weight):
    std = (2.0 / (weight.shape[0] + weight.shape[1])) ** 0.5
    return torch.randn_like(weight) * std


@lf.register
def exponential(z):
    return torch.exp(z)


@lf.register
class CustomRegressor(nn.Sequential, lf.Configurable):
    def __init__(self, noise: float = 0.1):
        self.noise = noise
        super().__init__(
            GaussianNoise(noise),  # active in training only
            Dense(30, "elu", "he_normal"),
            Dense(30, "my_softplus", "my_glorot_initializer", kernel_regularizer=L1(0.001),
                  kernel_constraint=NonNegative()),
            Dense(1),
            Lambda("exponential"),  # house values are positive: predict log-value, return value
        )

    def get_config(self):
        return {"noise": self.noise}


def main(rows: int | None = None, epochs: int = 15, verbose: bool = True) -> dict:
    torch.manual_seed(42)
    (X_train, y_train), (X_valid, y_valid), (X_test, y_test) = load_housing(rows)
    model = CustomRegressor()
    model(X_train[:2])
    trainer = Trainer(model, adam(model.parameters(), 3e-3), supervised(MSELoss()), stage="custom", progress=verbose)
    history = trainer.fit(Batches([X_train, y_train], 32, shuffle=True), epochs, Batches([X_valid, y_valid], 1024))
    with tempfile.TemporaryDirectory() as directory:
        save_model(directory, model)
        loaded, _ = load_model(directory)
    sums, products, ratios = SumProductRatio()([torch.tensor([2.0]), torch.tensor([4.0])])
    result = {"test_rmse": rmse(model, X_test, y_test), "loaded_test_rmse": rmse(loaded, X_test, y_test),
              "baseline_rmse": baseline_rmse(y_train, y_test), "min_hidden_weight": float(model[2].linear.weight.detach().min()),
              "regularization": history[-1].train["regularization"],
              "sum_product_ratio": [float(sums), float(products), float(ratios)]}
    if verbose:
        print(result)
    return result


if __name__ == "__main__":
    main()
