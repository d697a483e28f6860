"""Each example of examples/ runs on a slice of the real California housing data."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

ROWS = 4000


def test_huber_regression_beats_the_mean_and_reloads_its_threshold():
    import huber_regression

    result = huber_regression.main(rows=ROWS, epochs=8, verbose=False)
    assert result["test_rmse"] < 0.75 * result["baseline_rmse"]
    assert result["loaded_test_rmse"] == pytest.approx(result["test_rmse"])
    assert result["loaded_threshold"] == 2.0


def test_custom_metric_streams():
    import custom_metric

    result = custom_metric.main(rows=ROWS, epochs=4, verbose=False)
    assert result["precision_after_each_batch"] == pytest.approx([0.8, 0.5])
    assert 0 < result["val_huber"] < result["val_mse"]  # Huber(2) <= half the squared error


def test_custom_layers_train_with_their_hooks_and_reload():
    import custom_layers

    result = custom_layers.main(rows=ROWS, epochs=8, verbose=False)
    assert result["test_rmse"] < 0.85 * result["baseline_rmse"]
    assert result["loaded_test_rmse"] == pytest.approx(result["test_rmse"], rel=1e-5)
    assert result["min_hidden_weight"] >= 0 and result["regularization"] > 0
    assert result["sum_product_ratio"] == [6.0, 8.0, 0.5]


def test_residual_regressor_and_auxiliary_reconstruction_loss():
    import residual_regressor

    result = residual_regressor.main(rows=ROWS, epochs=8, verbose=False)
    assert result["residual_test_rmse"] < 0.75 * result["baseline_rmse"]
    assert result["reconstructing_test_rmse"] < 0.8 * result["baseline_rmse"]
    assert result["reconstruction_loss"][-1] < result["reconstruction_loss"][0]


def test_custom_loop_with_status_bar(capsys):
    import custom_loop

    result = custom_loop.main(rows=ROWS, epochs=3, verbose=True)
    assert result["epoch_losses"][-1] < result["epoch_losses"][0]
    assert result["test_rmse"] < 0.85 * result["baseline_rmse"]
    assert "mae:" in capsys.readouterr().err
