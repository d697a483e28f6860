"""California housing, as the customization examples use it: standardized splits as tensors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

CSV = Path(__file__).resolve().parent / "data" / "housing.csv"
FEATURES = ["longitude", "latitude", "housing_median_age", "total_rooms", "total_bedrooms",
            "population", "households", "median_income"]


def load_housing(rows: int | None = None, seed: int = 42):
    """(train, valid, test) splits of (X, y): 8 standardized features, target in $100,000.

    Missing ``total_bedrooms`` are filled with the training median; the split is 56/19/25 %
    as in the document (train_test_split twice); ``rows`` takes a random subset first.
    """
    with CSV.open() as stream:
        table = list(csv.DictReader(stream))
    X = np.array([[float(r[f]) if r[f] else np.nan for f in FEATURES] for r in table], dtype=np.float64)
    y = np.array([float(r["median_house_value"]) / 100_000 for r in table], dtype=np.float64)
    order = np.random.default_rng(seed).permutation(len(X))
    if rows is not None:
        order = order[:rows]
    X, y = X[order], y[order]
    n_test = len(X) // 4
    n_valid = (len(X) - n_test) // 4
    parts = np.split(np.arange(len(X)), [len(X) - n_test - n_valid, len(X) - n_test])
    train = parts[0]
    median = np.nanmedian(X[train], axis=0)
    X = np.where(np.isnan(X), median, X)
    mean, std = X[train].mean(0), X[train].std(0)
    X = (X - mean) / std
    as_tensors = lambda idx: (torch.tensor(X[idx], dtype=torch.float32),  # noqa: E731
                              torch.tensor(y[idx, None], dtype=torch.float32))
    return tuple(as_tensors(idx) for idx in parts)


def rmse(model, X, y) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(X) - y).pow(2).mean().sqrt())


def baseline_rmse(y_train, y) -> float:
    """RMSE of predicting the training mean: what a useful model must beat."""
    return float((y - y_train.mean()).pow(2).mean().sqrt())
