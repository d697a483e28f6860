"""The extension API (issue 4): configs and registry, losses, streaming metrics, hooks,
layers, auxiliary losses, autodiff, the training loop."""

import json

import pytest
import torch
from torch import nn

import latentflows as lf
from latentflows.autodiff import StableSoftplus, naive_softplus, stable_softplus
from latentflows.cli.options import with_options
from latentflows.contrib import Precision, SumProductRatio
from latentflows.errors import LatentflowsError, UnknownComponentError
from latentflows.flows import ConditionalRealNVP, Coupling, jacobian_logabsdet
from latentflows.layers import (
    L1,
    L2,
    AddsLosses,
    Dense,
    GaussianNoise,
    Lambda,
    NonNegative,
    ResidualBlock,
    apply_constraints,
    regularization_loss,
)
from latentflows.losses import FlowNLL, HuberLoss, MSELoss, parse_loss
from latentflows.metrics import BitsPerDim, HuberMetric, MeanMetric
from latentflows.registry import register
from latentflows.saving import load_model, save_model
from latentflows.training import Batches, Callback, Trainer, adam, build_stages, supervised


def round_trip(component):
    return lf.deserialize(json.loads(json.dumps(lf.serialize(component))))


# ------------------------------------------------------------------ 1. configs and registry

@register(name="exponential_for_test")
def exponential(x):
    return torch.exp(x)



@pytest.mark.parametrize("component", [
    HuberLoss(2.0, reduction="sum"), MSELoss(), FlowNLL("bits_per_dim"), HuberMetric(3.0), BitsPerDim(16),
    Precision(0.7), L1(0.2), L2(0.3), NonNegative(), GaussianNoise(0.1), ResidualBlock(8, 3, "elu"),
    Dense(5, "tanh", "glorot_normal", L1(0.01), NonNegative()), Lambda("exponential_for_test"),
    Coupling(6, "half", {"class": "SoftplusAffine"},
             {"class": "CouplingNet", "config": {"hidden": [8], "kernel_regularizer": L2(0.1)}}, 2),
    ConditionalRealNVP(6, 2, couplings=2, hidden=[8], standardize=True), lf.Standardize(3),
    lf.ConvAutoencoder(128, 8),
])
def test_every_component_round_trips_through_json(component):
    assert round_trip(component).get_config() == component.get_config()


def test_missing_component_names_it_and_says_how_to_register():
    with pytest.raises(UnknownComponentError, match=r"'NotThere'.*@latentflows.register"):
        lf.deserialize({"class": "NotThere", "config": {}})


def test_registering_another_class_under_a_taken_name_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        @register(name="HuberLoss")
        class Other(lf.Configurable):
            pass


def test_user_model_with_custom_loss_saves_and_loads_by_name(tmp_path):
    @register(name="TinyRegressorForTest")
    class TinyRegressor(nn.Sequential, lf.Configurable):
        def __init__(self, hidden=4):
            self.hidden = hidden
            super().__init__(Dense(hidden, "relu"), Dense(1))

        def get_config(self):
            return {"hidden": self.hidden}

    model = TinyRegressor(6)
    x = torch.randn(5, 3)
    expected = model(x)
    save_model(tmp_path, model, loss=HuberLoss(2.5))
    loaded, components = load_model(tmp_path)
    assert torch.equal(loaded(x), expected)
    assert isinstance(components["loss"], HuberLoss) and components["loss"].threshold == 2.5


# ------------------------------------------------------------------ 2. losses

def test_huber_is_quadratic_then_linear_and_per_sample():
    loss = HuberLoss(threshold=2.0, reduction="none")
    target = torch.zeros(3, 1)
    values = loss(target, torch.tensor([[1.0], [2.0], [5.0]]))
    assert torch.allclose(values, torch.tensor([0.5, 2.0, 2 * 5 - 2.0]))


def test_sample_weights_and_reductions():
    target, prediction = torch.zeros(4, 2), torch.tensor([[1.0, 1.0], [2.0, 2.0], [0.0, 0.0], [1.0, 3.0]])
    per_sample = MSELoss(reduction="none")(target, prediction)
    assert torch.allclose(per_sample, torch.tensor([1.0, 4.0, 0.0, 5.0]))
    weights = torch.tensor([1.0, 0.0, 1.0, 2.0])
    assert MSELoss()(target, prediction, weights) == pytest.approx((1 + 0 + 0 + 10) / 4)
    assert MSELoss(reduction="sum")(target, prediction, weights) == pytest.approx(11.0)


def test_ae_loss_option_parses():
    assert parse_loss("huber:2.0").threshold == 2.0 and isinstance(parse_loss("mse"), MSELoss)
    for bad in ("huber:abc", "l7", "mse:3", "huber:-1"):
        with pytest.raises((LatentflowsError, ValueError)):
            parse_loss(bad)


def test_flow_nll_in_nats_and_bits_per_dimension():
    flow = ConditionalRealNVP(4, 0, couplings=1, normalization="none").eval()  # identity at init
    x = torch.zeros(2, 4)
    nats = FlowNLL("nats", reduction="none")(flow, x)
    assert torch.allclose(nats, torch.full((2,), 2 * torch.log(torch.tensor(2 * torch.pi)).item()))
    bits = FlowNLL("bits_per_dim", reduction="none")(flow, x)
    assert torch.allclose(bits, nats / (4 * torch.log(torch.tensor(2.0))))


# ------------------------------------------------------------------ 3. streaming metrics

def test_precision_streams_like_the_document():
    precision = Precision()
    precision.update(torch.tensor([1, 1, 0, 1, 0, 1, 0, 1]), torch.tensor([0, 1, 1, 1, 0, 1, 0, 1]))
    assert float(precision.compute()) == pytest.approx(0.8)
    precision.update(torch.tensor([1, 0, 1, 1, 0, 0, 0, 0]), torch.tensor([0, 1, 0, 0, 1, 0, 1, 1]))
    assert float(precision.compute()) == pytest.approx(0.5)  # 4 of 8, not the mean of 0.8 and 0.0
    assert float(precision.true_positives) == 4 and float(precision.false_positives) == 4
    precision.reset()
    assert float(precision.true_positives) == 0


def test_huber_metric_keeps_total_and_count():
    metric = HuberMetric(threshold=1.0)
    metric.update(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 3.0]))  # 0.5 and 2.5
    metric.update(torch.tensor([0.0]), torch.tensor([0.0]))
    assert float(metric.compute()) == pytest.approx(3.0 / 3)
    assert float(metric.count) == 3


def test_bits_per_dim_and_mean_metric():
    metric = BitsPerDim(features=2)
    metric.update(torch.tensor([-2 * torch.log(torch.tensor(2.0))] * 3))
    assert float(metric.compute()) == pytest.approx(1.0)
    mean = MeanMetric()
    mean.update(torch.tensor([1.0]), torch.tensor([3.0]))
    mean.update(torch.tensor([5.0]), torch.tensor([1.0]))
    assert float(mean.compute()) == pytest.approx(2.0)


# ------------------------------------------------------------------ 4. functions and layers

def test_dense_learns_its_input_size_and_applies_hooks():
    layer = Dense(3, "relu", "glorot_normal", kernel_regularizer=L1(0.5), kernel_constraint=NonNegative())
    assert layer(torch.randn(4, 7)).shape == (4, 3) and layer.linear.weight.shape == (3, 7)
    assert regularization_loss(layer).item() == pytest.approx(0.5 * layer.linear.weight.abs().sum().item())
    with torch.no_grad():
        layer.linear.weight.fill_(-1.0)
    apply_constraints(layer)
    assert layer.linear.weight.min() == 0


def test_lambda_multi_io_and_training_only_noise():
    assert torch.equal(Lambda(torch.exp)(torch.zeros(2)), torch.ones(2))
    a, b = torch.tensor([2.0]), torch.tensor([4.0])
    assert [float(t) for t in SumProductRatio()([a, b])] == [6.0, 8.0, 0.5]
    noise, x = GaussianNoise(0.5), torch.zeros(10000)
    assert noise.train()(x).std() == pytest.approx(0.5, rel=0.05)
    assert torch.equal(noise.eval()(x), x)


def test_coupling_network_hooks_residual_and_custom_activation():
    coupling = Coupling(6, conditioner={"class": "CouplingNet", "config": {
        "hidden": [16, 16], "activation": "exponential_for_test", "kernel_initializer": "glorot_normal",
        "kernel_regularizer": L2(0.1), "kernel_constraint": "non_negative", "residual": True}})
    assert any(isinstance(m, ResidualBlock) for m in coupling.modules())
    assert any(isinstance(m, Lambda) for m in coupling.modules())
    assert regularization_loss(coupling) > 0
    apply_constraints(coupling)
    assert all(m.weight.min() >= 0 for m in coupling.modules() if isinstance(m, nn.Linear))


def test_flow_noise_huber_and_softplus_options_train(small_pets, tiny_config, tmp_path):
    lf.train(small_pets, with_options(tiny_config, flow_noise=0.1, ae_loss="huber:2.0", bijection="SoftplusAffine"),
             tmp_path / "run", progress=False, figures=False)
    loaded = lf.load(tmp_path / "run")
    stage, = [stage for name, stage in build_stages(lf.RunConfig(loaded.config)) if name == "autoencoder"]
    assert stage.objective().terms["reconstruction"].loss.threshold == 2.0  # the loss's hyperparameter came back
    assert loaded.flow.bijection_spec["class"] == "SoftplusAffine"


# ------------------------------------------------------------------ 5. auxiliary losses

class Reconstructing(AddsLosses, nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.head, self.back = nn.Linear(3, 8), nn.Linear(8, 1), nn.Linear(8, 3)

    def forward(self, x):
        z = torch.relu(self.body(x))
        self.add_loss("reconstruction", 0.05 * (self.back(z) - x).pow(2).mean())
        return self.head(z)


def test_trainer_adds_auxiliary_losses_and_shows_each():
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    y = x.sum(1, keepdim=True)
    model = Reconstructing()
    trainer = Trainer(model, adam(model.parameters(), 1e-2), supervised(MSELoss()), progress=False)
    losses, _ = trainer.compute_loss((x, y))
    assert torch.allclose(losses["loss"], losses["main_loss"] + losses["reconstruction"])
    history = trainer.fit(Batches([x, y], 16), 30)
    assert {"loss", "main_loss", "reconstruction"} <= set(history[-1].train)
    assert history[-1].train["reconstruction"] < history[0].train["reconstruction"]


# ------------------------------------------------------------------ 6. autodiff

def test_stable_softplus_gradient_at_100_is_one_not_nan():
    x = torch.tensor([100.0], requires_grad=True)
    naive_softplus(x).backward()
    assert torch.isnan(x.grad).all() or torch.isinf(naive_softplus(x.detach())).all()
    x.grad = None
    stable_softplus(x).backward()
    assert x.grad.item() == 1.0


def test_stable_softplus_matches_the_naive_formula_where_that_is_finite():
    x = torch.linspace(-20, 20, 101, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(stable_softplus(x), naive_softplus(x))
    assert torch.autograd.gradcheck(StableSoftplus.apply, (x[:7].detach().requires_grad_(),))
    stable_softplus(x).sum().backward()
    assert torch.allclose(x.grad, torch.sigmoid(x.detach()))


def test_softplus_scale_coupling_is_exact():
    coupling = Coupling(4, bijection={"class": "SoftplusAffine"},
                        conditioner={"class": "CouplingNet", "config": {"hidden": [8]}}).double()
    with torch.no_grad():
        for p in coupling.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(5, 4, dtype=torch.float64)
    z, logabsdet = coupling(x)
    assert torch.allclose(coupling.inverse(z)[0], x)
    assert torch.allclose(jacobian_logabsdet(coupling, x)[1], logabsdet)


def test_running_statistics_carry_no_gradient():
    flow = ConditionalRealNVP(4, 0, couplings=1).train()
    flow.transform(torch.randn(8, 4, requires_grad=True))
    norm = flow.transform.transforms[-1]
    assert norm.running_mean.grad_fn is None and norm.running_var.grad_fn is None


# ------------------------------------------------------------------ 7. the training loop

def test_streaming_metrics_reset_each_epoch_and_callbacks_see_every_epoch():
    x = torch.randn(40, 3)
    y = torch.randn(40, 1)
    model = nn.Linear(3, 1)
    seen = []

    class Recorder(Callback):
        def on_epoch_end(self, trainer, record):
            seen.append((record.epoch, float(trainer.metrics["huber"].count)))

    trainer = Trainer(model, adam(model.parameters(), 1e-2), supervised(MSELoss()),
                      metrics={"huber": HuberMetric()}, callbacks=[Recorder()], progress=False)
    history = trainer.fit(Batches([x, y], 8), 3, Batches([x, y], 40))
    assert seen == [(1, 40.0), (2, 40.0), (3, 40.0)]  # reset each epoch, not accumulated over epochs
    assert "huber" in history[-1].train and "huber" in history[-1].val


def test_checkpoint_callback_writes_atomically_and_loads_back(tmp_path):
    from latentflows.errors import ModelFileError
    from latentflows.training import Checkpoint, load_checkpoint

    x, y = torch.randn(16, 3), torch.randn(16, 1)
    model = nn.Linear(3, 1)
    path = tmp_path / "ckpt.safetensors"
    trainer = Trainer(model, adam(model.parameters(), 1e-2), supervised(MSELoss()),
                      callbacks=[Checkpoint(path, every=2)], progress=False)
    trainer.fit(Batches([x, y], 8), 5)
    restored = nn.Linear(3, 1)
    header = load_checkpoint(path, restored)
    assert header["epoch"] == "4"  # every 2 epochs: the last write was after epoch 4
    assert not torch.equal(restored.weight, model.weight)  # epoch 5 moved on
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ModelFileError, match="ckpt.safetensors"):
        load_checkpoint(path, restored)


def test_residual_option_reaches_the_coupling_networks(small_pets, tiny_config):
    pipeline = lf.train(small_pets, with_options(tiny_config, flow="realnvp", residual=True, hidden=[16, 16], flow_epochs=1,
                                                 ae_epochs=1), None, progress=False, figures=False)
    assert any(isinstance(m, ResidualBlock) for m in pipeline.flow.modules())


def test_compiled_step_gives_the_same_result_as_eager():
    torch.manual_seed(0)
    x, y = torch.randn(32, 3), torch.randn(32, 1)
    results = []
    for compile_ in (False, True):
        torch.manual_seed(1)
        model = nn.Linear(3, 1)
        trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), supervised(MSELoss()),
                          progress=False, compile=compile_)
        for _ in range(3):
            trainer.train_step((x, y))
        results.append(model.weight.detach().clone())
    assert torch.allclose(results[0], results[1], atol=1e-6)


def test_non_finite_losses_are_skipped_counted_and_stop_training():
    from latentflows.training import NonFiniteLossError

    x, y = torch.randn(32, 3), torch.randn(32, 1)
    y_bad = y.clone()
    y_bad[8:16] = float("nan")  # the second of four batches is poisoned
    model = nn.Linear(3, 1)
    trainer = Trainer(model, adam(model.parameters(), 1e-2), supervised(MSELoss()), progress=False)
    history = trainer.fit(Batches([x, y_bad], 8), 2)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert [r.train["skipped_steps"] for r in history] == [1, 1]
    assert torch.isfinite(torch.tensor(history[-1].train["loss"]))

    stuck = Trainer(model, adam(model.parameters(), 1e-2), supervised(MSELoss()), progress=False, max_nonfinite=3)
    before = model.weight.detach().clone()
    with pytest.raises(NonFiniteLossError, match="3 steps in a row.*--grad-clip"):
        stuck.fit(Batches([x, torch.full_like(y, float("nan"))], 8), 5)
    assert torch.equal(model.weight, before)  # no poisoned update reached the weights
