"""A regressor trained with a Huber loss whose threshold is saved and loaded with the model.

    python examples/huber_regression.py
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
from latentflows.layers import Dense  # noqa: E402
from latentflows.losses import HuberLoss  # noqa: E402
from latentflows.saving import load_model, save_model  # noqa: E402
from latentflows.training import Batches, Trainer, adam, supervised  # noqa: E402


@lf.register
class Regressor(nn.Sequential, lf.Configurable):
    """Dense(30, elu, he_normal) -> Dense(1), as in the document."""

    def __init__(self, hidden: int = 30):
        self.hidden = hidden
        super().__init__(Dense(hidden, "elu", "he_normal"), Dense(1))

    def get_config(self):
        return {"hidden": self.hidden}


def main(rows: int | None = None, epochs: int = 20, verbose: bool = True) -> dict:
    torch.manual_seed(42)
    (X_train, y_train), (X_valid, y_valid), (X_test, y_test) = load_housing(rows)
    model = Regressor()
    model(X_train[:2])  # build the lazy layers before the optimizer sees the parameters
    loss = HuberLoss(threshold=2.0)
    trainer = Trainer(model, adam(model.parameters(), 1e-2), supervised(loss), stage="huber", progress=verbose)
    trainer.fit(Batches([X_train, y_train], 32, shuffle=True), epochs, Batches([X_valid, y_valid], 1024))
    with tempfile.TemporaryDirectory() as directory:
        save_model(directory, model, loss=loss)
        loaded, components = load_model(directory)
    result = {"test_rmse": rmse(model, X_test, y_test), "loaded_test_rmse": rmse(loaded, X_test, y_test),
              "baseline_rmse": baseline_rmse(y_train, y_test), "loaded_threshold": components["loss"].threshold}
    if verbose:
        print(result)
    return result


if __name__ == "__main__":
    main()
