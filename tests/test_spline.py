"""Rational-quadratic spline couplings, ActNorm, LULinear and ContextAffine: the same inversion and
log-determinant checks as every layer, plus what is particular to each (identity at zero,
identity tails, data-dependent initialisation that survives a reload, LU mixing in a flow)."""

import math

import flow_helpers
import pytest
import torch
from tolerance import bounds_for_steps, round_trip_bounds

from latentflows.cli.options import OPTIONS, bijection_spec
from latentflows.compat import current_specs, layer_kinds
from latentflows.flows import (
    ActNorm,
    ClassWhitening,
    ConditionalRealNVP,
    ContextAffine,
    ContextLinear,
    Coupling,
    InvertibleBatchNorm,
    LULinear,
    RandomPermutation,
    RationalQuadraticSpline,
)
from latentflows.registry import deserialize, serialize

D, C, B = 6, 3, 7
BOUND = 3.0


def one_hot(n, classes=C, dtype=torch.float32):
    return flow_helpers.one_hot(n, classes, dtype)


def randomize(module, std=0.4, seed=0):
    return flow_helpers.randomize(module, std, seed)


def spread_inputs(dtype=torch.float64, n=B, features=D, seed=1):
    """Inputs inside the spline, in both tails and exactly on the bounds."""
    x = torch.randn(n, features, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2.5
    x[0, :3] = torch.tensor([BOUND + 1.5, -BOUND - 2.0, BOUND], dtype=dtype)
    x[1, :3] = torch.tensor([-BOUND, 4.2, -7.0], dtype=dtype)
    return x


def spline_coupling(context_size=0, bins=5, mask="alternate", flip=False):
    return Coupling(D, mask, {"class": "RationalQuadraticSpline", "config": {"bins": bins, "bound": BOUND}},
                    {"class": "CouplingNet", "config": {"hidden": [16, 16]}}, context_size, flip)


def fitted_whitening(classes=C, shrinkage=0.05, n=300, seed=5):
    """A ClassWhitening fitted to correlated data with a different mean and covariance per class.

    Fitted in float64: its whitening matrix and Cholesky factor are then inverses of each
    other to float64 precision (a float32 fit makes them a float32-accurate pair, which no
    float64 round trip can beat), and casting to float32 rounds each entry once."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    mixing = torch.randn(classes, D, D, generator=generator, dtype=torch.float64) * 0.5 + torch.eye(D)
    x = torch.einsum("nij,nj->ni", mixing[labels], torch.randn(n, D, generator=generator, dtype=torch.float64))
    x = x + 3.0 * labels[:, None]
    layer = ClassWhitening(D, classes, shrinkage=shrinkage).double()
    layer.fit_to_data(x, one_hot(n, classes, dtype=torch.float64))
    return layer  # build() casts it to the dtype under test


def lu_actnorm_flow(context_size=C, **options):
    return ConditionalRealNVP(D, context_size, couplings=3, hidden=[16], mixing="lu", normalization="actnorm",
                              bijection={"class": "RationalQuadraticSpline", "config": {"bins": 4}}, **options)


# ------------------------------------------------------------------ the spline as an element-wise bijection

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spline_with_zero_params_is_the_identity(dtype):
    spline = RationalQuadraticSpline(bins=8)
    x = torch.linspace(-6, 6, 240, dtype=dtype).view(-1, 3)
    params = torch.zeros(x.shape[0], spline.params_per_feature, 3, dtype=dtype)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-12
    for apply in (spline, spline.inverse):
        y, logabsdet = apply(x, params)
        assert (y - x).abs().max() < tolerance * 10
        assert logabsdet.abs().max() < tolerance * 10


def test_spline_parameter_count_and_config_round_trip():
    spline = RationalQuadraticSpline(bins=6, bound=4.0, min_bin_width=1e-2, min_bin_height=2e-3, min_derivative=1e-4)
    assert spline.params_per_feature == 3 * 6 - 1
    copy = deserialize(serialize(spline))
    assert isinstance(copy, RationalQuadraticSpline) and copy.get_config() == spline.get_config()
    assert RationalQuadraticSpline().get_config() == {"bins": 8, "bound": 3.0, "min_bin_width": 1e-3,
                                                      "min_bin_height": 1e-3, "min_derivative": 1e-3}


@pytest.mark.parametrize("options", [{"bins": 1}, {"bound": 0.0}, {"bins": 4, "min_bin_width": 0.25},
                                     {"min_derivative": 0.0}, {"min_derivative": 1.0}])
def test_spline_refuses_options_that_break_it(options):
    with pytest.raises(ValueError):
        RationalQuadraticSpline(**options)


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_spline_round_trip_monotone_and_exact_derivative(scale):
    spline = RationalQuadraticSpline(bins=7, bound=BOUND)
    x = torch.linspace(-5, 5, 401, dtype=torch.float64).view(-1, 1).repeat(1, 4)
    params = torch.randn(1, spline.params_per_feature, 4, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(3)).expand(x.shape[0], -1, -1) * scale
    x.requires_grad_(True)
    y, logabsdet = spline(x, params)
    slope = torch.autograd.grad(y.sum(), x)[0]  # element-wise map: the Jacobian is diagonal
    assert torch.allclose(logabsdet, slope.log().sum(1), atol=1e-10)
    assert (y[1:] > y[:-1]).all(), "strictly increasing"
    x_back, inverse_logabsdet = spline.inverse(y.detach(), params)
    x_bound, logabsdet_bound = bounds_for_steps([lambda h: spline(h, params)], x, torch.float64)
    assert (x_back - x).abs().max() <= x_bound
    assert (inverse_logabsdet + logabsdet).abs().max() <= logabsdet_bound


def test_spline_tails_are_the_identity_and_meet_the_spline_smoothly():
    spline = RationalQuadraticSpline(bins=5, bound=BOUND)
    params = torch.randn(4, spline.params_per_feature, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    outside = torch.tensor([[-BOUND - 1e-9, BOUND + 1e-9, 10.0]] * 4, dtype=torch.float64)
    y, logabsdet = spline(outside, params)
    assert torch.equal(y, outside) and torch.equal(logabsdet, torch.zeros(4, dtype=torch.float64))
    x, logabsdet = spline.inverse(outside, params)
    assert torch.equal(x, outside) and torch.equal(logabsdet, torch.zeros(4, dtype=torch.float64))
    # value and slope continuous at +-bound: the boundary knots have derivative 1
    edges = torch.tensor([[-BOUND, BOUND, BOUND]] * 4, dtype=torch.float64)
    for step in (-1e-10, 0.0):
        y, logabsdet = spline(edges + step * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64), params)
        assert torch.allclose(y, edges, atol=1e-8)
        assert logabsdet.abs().max() < 1e-6


def test_spline_float32_round_trip_with_network_sized_params():
    spline = RationalQuadraticSpline()
    x = spread_inputs(torch.float32, n=64)
    params = torch.randn(64, spline.params_per_feature, D, generator=torch.Generator().manual_seed(5)) * 0.5
    x_bound, logabsdet_bound = bounds_for_steps([lambda h: spline(h, params.double())], x)
    z, logabsdet = spline(x, params)
    x_back, inverse_logabsdet = spline.inverse(z, params)
    assert (x_back - x).abs().max() <= x_bound and (logabsdet + inverse_logabsdet).abs().max() <= logabsdet_bound
    assert torch.isfinite(torch.autograd.functional.jacobian(lambda p: spline(x, p)[1].sum(), params)).all()


def test_spline_gradients_stay_finite_in_the_tails_and_on_the_bounds():
    spline = RationalQuadraticSpline(bins=4)
    x = spread_inputs(torch.float64).requires_grad_(True)
    params = (torch.randn(B, spline.params_per_feature, D, dtype=torch.float64) * 0.5).requires_grad_(True)
    for apply in (spline, spline.inverse):
        y, logabsdet = apply(x, params)
        gx, gp = torch.autograd.grad(y.sum() + logabsdet.sum(), (x, params))
        assert torch.isfinite(gx).all() and torch.isfinite(gp).all()


def test_the_cli_finds_the_spline_by_name():
    assert bijection_spec("RationalQuadraticSpline") == {"class": "RationalQuadraticSpline", "config": {}}
    assert OPTIONS["bijection"].to_config("RationalQuadraticSpline")["class"] == "RationalQuadraticSpline"


# ------------------------------------------------------------------ every layer's checks: round trip + Jacobian

def layers(context_size):
    # conditioner weights of std 0.25 give spline parameters of order 1 (std 0.4 gives slopes
    # near 1e-6 somewhere, where float32 cannot invert to 1e-4: a conditioning limit, not an error)
    yield "spline-coupling", randomize(spline_coupling(context_size), std=0.25)
    yield "spline-coupling-half-flip", randomize(spline_coupling(context_size, bins=3, mask="half", flip=True),
                                                 std=0.25)
    yield "actnorm", ActNorm(D)
    yield "lu-orthogonal", randomize(LULinear(D, seed=2), std=0.3)
    yield "lu-identity-no-bias", randomize(LULinear(D, init="identity", bias=False), std=0.3)
    yield "realnvp-lu-actnorm", randomize(lu_actnorm_flow(context_size), std=0.2).transform
    yield "context-affine", randomize(ContextAffine(D, context_size), std=0.5)
    yield "context-linear", randomize(ContextLinear(D, context_size), std=0.3)
    if context_size:
        yield "class-whitening", fitted_whitening(context_size)
    yield "realnvp-class-affine", randomize(ConditionalRealNVP(D, context_size, couplings=2, hidden=[8],
                                                               class_affine=True), std=0.2).transform
    yield "realnvp-spline-default-layers", randomize(ConditionalRealNVP(
        D, context_size, couplings=2, hidden=[8], bijection={"class": "RationalQuadraticSpline", "config": {}}),
        std=0.25).transform


CASES = [(name, context_size, mode) for context_size in (0, C) for name, _ in layers(context_size)
         for mode in ("train", "eval")]


def build(name, context_size, mode, dtype):
    module = dict(layers(context_size))[name].to(dtype).train(mode == "train")
    context = one_hot(B, dtype=dtype) if context_size else None
    if mode == "eval":  # initialise ActNorm layers on a first training batch, then evaluate
        module.train()
        with torch.no_grad():
            module(spread_inputs(dtype, n=32, seed=9), one_hot(32, dtype=dtype) if context_size else None)
        module.eval()
    return module, context


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,context_size,mode", CASES)
def test_round_trip(name, context_size, mode, dtype):
    module, context = build(name, context_size, mode, dtype)
    flow_helpers.check_round_trip(module, spread_inputs(dtype), context, dtype,
                                  context_matters=name.startswith("spline") and bool(context_size))


@pytest.mark.parametrize("name,context_size,mode", CASES)
def test_logabsdet_matches_autograd_jacobian(name, context_size, mode):
    module, context = build(name, context_size, mode, torch.float64)
    flow_helpers.check_jacobian(module, spread_inputs(torch.float64), context)


def test_spline_coupling_hits_the_tails_in_the_jacobian_check():
    """The checks above include inputs outside [-bound, bound] on transformed features."""
    layer = spline_coupling()
    transformed = spread_inputs()[:, layer.transformed_index]
    assert (transformed.abs() > BOUND).any() and (transformed.abs() < BOUND).any()


# ------------------------------------------------------------------ ActNorm

def test_actnorm_initialises_from_the_first_training_batch_only():
    norm = ActNorm(D).train()
    x = torch.randn(512, D) * torch.arange(1.0, D + 1) + 3
    z, logabsdet = norm(x)
    assert z.mean(0).abs().max() < 1e-4 and (z.std(0, unbiased=False) - 1).abs().max() < 1e-4
    assert torch.allclose(logabsdet, -x.std(0, unbiased=False).log().sum().expand(512), atol=1e-4)
    loc, log_scale = norm.loc.detach().clone(), norm.log_scale.detach().clone()
    norm(x * 5 - 2)
    assert torch.equal(norm.loc, loc) and torch.equal(norm.log_scale, log_scale)


def test_actnorm_is_the_identity_until_initialised_and_in_eval_mode_does_not_initialise():
    norm = ActNorm(D).eval()
    x = torch.randn(4, D) * 3
    z, logabsdet = norm(x)
    assert torch.equal(z, x) and torch.equal(logabsdet, torch.zeros(4)) and not bool(norm.initialized)
    with pytest.raises(ValueError, match="at least 2"):
        ActNorm(D).train()(torch.randn(1, D))


def test_actnorm_does_not_reinitialise_after_loading_a_state_dict():
    trained = ActNorm(D).train()
    trained(torch.randn(64, D) * 2 + 1)
    with torch.no_grad():
        trained.loc.add_(0.5)  # as if trained further
    state = trained.state_dict()
    assert bool(state["initialized"])
    loaded = deserialize(serialize(trained))
    loaded.load_state_dict(state)
    loaded.train()
    other = torch.randn(64, D) * 10 - 4
    z, _ = loaded(other)
    assert torch.equal(loaded.loc, trained.loc) and torch.equal(loaded.log_scale, trained.log_scale)
    assert torch.equal(z, trained(other)[0])


def test_actnorm_reads_the_loaded_flag_even_after_it_ran():
    norm = ActNorm(D).train()
    norm(torch.randn(16, D))
    norm.load_state_dict(ActNorm(D).state_dict())  # an uninitialised state: initialise again on the next batch
    x = torch.randn(16, D) * 3
    z, _ = norm(x)
    assert bool(norm.initialized) and z.mean(0).abs().max() < 1e-5


# ------------------------------------------------------------------ LULinear

def test_lu_linear_logabsdet_is_that_of_its_weight_and_inverse_is_exact():
    layer = randomize(LULinear(D, seed=4), std=0.3).double()
    weight = layer.weight()
    x = torch.randn(B, D, dtype=torch.float64)
    z, logabsdet = layer(x)
    assert torch.allclose(z, x @ weight.T + layer.bias)
    assert torch.allclose(logabsdet, torch.linalg.slogdet(weight).logabsdet.expand(B))
    assert torch.allclose(layer.inverse(z)[0], x)


def test_lu_linear_initialisations():
    x = torch.randn(B, D)
    identity = LULinear(D, init="identity")
    assert torch.equal(identity(x)[0], x) and torch.equal(identity.weight(), torch.eye(D))
    orthogonal = LULinear(D, seed=7)
    weight = orthogonal.weight()
    assert torch.allclose(weight @ weight.T, torch.eye(D), atol=1e-5)
    assert not torch.allclose(weight.abs(), torch.eye(D), atol=0.1), "mixes features, not just a permutation"
    assert torch.equal(LULinear(D, seed=7).weight(), weight) and not torch.equal(LULinear(D, seed=8).weight(), weight)
    parameters = sum(p.numel() for p in orthogonal.parameters())
    assert parameters == D * D + D  # W and the bias, no padding
    with pytest.raises(ValueError, match="init"):
        LULinear(D, init="random")


def test_lu_linear_config_round_trip_and_reload():
    layer = randomize(LULinear(D, seed=3, bias=False), std=0.2)
    copy = deserialize(serialize(layer))
    assert copy.get_config() == {"features": D, "init": "orthogonal", "seed": 3, "bias": False}
    copy.load_state_dict(layer.state_dict())
    x = torch.randn(B, D)
    assert torch.equal(copy(x)[0], layer(x)[0])


# ------------------------------------------------------------------ ContextAffine

def test_context_affine_standardizes_each_class_on_its_first_batch_then_trains_as_weights():
    generator = torch.Generator().manual_seed(3)
    context = one_hot(300)
    centres, spreads = torch.randn(C, D, generator=generator) * 4, torch.rand(C, D, generator=generator) + 0.5
    labels = context.argmax(1)
    x = centres[labels] + spreads[labels] * torch.randn(300, D, generator=generator)
    layer = ContextAffine(D, C).train()
    assert torch.equal(layer(x, context)[0], x) is False  # initialised by this first batch
    z, logabsdet = layer(x, context)
    for c in range(C):
        chosen = labels == c
        assert z[chosen].mean(0).abs().max() < 1e-4 and (z[chosen].std(0, unbiased=False) - 1).abs().max() < 1e-3
        assert torch.allclose(logabsdet[chosen], -x[chosen].std(0, unbiased=False).log().sum().expand(int(chosen.sum())),
                              atol=1e-3)
    weights = layer.shift.weight.detach().clone()
    layer(x * 2 + 1, context)  # only the first batch initialises
    assert torch.equal(layer.shift.weight, weights)
    fresh = ContextAffine(D, C).eval()
    assert torch.equal(fresh(x, context)[0], x), "the identity before initialisation"
    with pytest.raises(ValueError, match="context of shape"):
        layer(x)


def test_context_affine_initialises_one_hot_classes_to_their_exact_mean_and_spread():
    """By the class's own mean and spread, not by least squares: LAPACK's float32 solution
    moved by an ulp from one process to the next, so two identical runs trained apart."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 256, generator=generator) * 3 + 1
    labels = torch.randint(0, 2, (64,), generator=generator)
    layer = ContextAffine(256, 2).train()
    layer(x, torch.eye(2)[labels])
    for c in range(2):
        rows = x[labels == c]
        assert torch.equal(layer.shift.weight[:, c], rows.mean(0))
        assert torch.equal(layer.log_scale.weight[:, c], -0.5 * torch.log(rows.var(0, unbiased=False)))


def test_context_affine_fits_a_continuous_context_by_least_squares():
    t = torch.linspace(-1, 1, 50).unsqueeze(1)
    context = torch.cat([torch.ones_like(t), t], 1)  # not one-hot: the mean is a line in t
    x = 2.0 + 3.0 * t + 0.1 * torch.randn(50, 1, generator=torch.Generator().manual_seed(0))
    layer = ContextAffine(1, 2).train()
    layer(x, context)
    assert torch.allclose(layer.shift.weight, torch.tensor([[2.0, 3.0]]), atol=0.1)


def test_context_affine_without_a_class_in_the_first_batch_leaves_that_class_alone():
    layer = ContextAffine(D, C).train()
    context = torch.nn.functional.one_hot(torch.arange(8) % 2, C).float()  # class 2 absent
    layer(torch.randn(8, D) * 3 + 1, context)
    assert torch.equal(layer.shift.weight[:, 2], torch.zeros(D)) and torch.equal(layer.log_scale.weight[:, 2],
                                                                                  torch.zeros(D))


def test_class_affine_flow_begins_with_the_layer_and_old_configs_are_unchanged():
    plain = ConditionalRealNVP(D, C, couplings=2, hidden=[8])
    assert "class_affine" not in plain.get_config()
    flow = ConditionalRealNVP(D, C, couplings=2, hidden=[8], class_affine=True, standardize=True)
    assert isinstance(flow.transform.transforms[1], ContextAffine) and flow.get_config()["class_affine"]
    copy = deserialize(serialize(flow))
    copy.load_state_dict(randomize(flow, std=0.1).state_dict())
    x, context = torch.randn(B, D), one_hot(B)
    assert torch.equal(copy.eval().log_prob(x, context), flow.eval().log_prob(x, context))


# ------------------------------------------------------------------ ContextLinear

def test_context_linear_starts_as_the_identity_and_gives_each_class_its_own_gaussian():
    x, context = torch.randn(B, D), one_hot(B)
    layer = ContextLinear(D, C)
    z, logabsdet = layer(x, context)
    assert torch.equal(z, x) and torch.equal(logabsdet, torch.zeros(B))
    randomize(layer, std=0.3)
    labels = context.argmax(1)
    z, logabsdet = layer(x, context)
    for row in range(B):  # each row by its own class's lower-triangular matrix and offset
        c = int(labels[row])
        matrix = layer.lower[c].tril(-1) + torch.diag(layer.log_diagonal[c].exp())
        assert torch.allclose(z[row], matrix @ x[row] + layer.offset[c], atol=1e-5)
        assert torch.isclose(logabsdet[row], torch.linalg.slogdet(matrix).logabsdet, atol=1e-5)
    other = one_hot(B).roll(1, dims=1)
    assert not torch.allclose(layer(x, other)[0], z), "the class changes the map"
    with pytest.raises(ValueError, match="one-hot context of shape"):
        layer(x)
    copy = deserialize(serialize(layer))
    copy.load_state_dict(layer.state_dict())
    assert torch.equal(copy(x, context)[0], z)


def test_context_linear_gradients_repeat_bit_for_bit_on_several_threads():
    """Advanced indexing (``offset[labels]``) accumulates its gradient across threads in no
    fixed order, so two identical training runs drifted apart; the layer must not use it."""
    torch.manual_seed(0)
    layer = randomize(ContextLinear(256, 2), std=0.3)
    x, context = torch.randn(512, 256), one_hot(512, classes=2)
    weights = torch.randn(512, 256)

    def gradients() -> list[torch.Tensor]:
        layer.zero_grad()
        z, logabsdet = layer(x, context)
        ((z * weights).sum() + logabsdet.sum()).backward()
        return [p.grad.clone() for p in layer.parameters()]

    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, 2))
    try:
        first = gradients()
        for _ in range(20):
            assert all(torch.equal(a, b) for a, b in zip(first, gradients()))
    finally:
        torch.set_num_threads(threads)


def test_a_spatial_flow_with_class_linear_ends_with_it():
    from latentflows.flows import SpatialRealNVP

    flow = SpatialRealNVP(2 * 4 * 4, context_size=2, couplings=2, latent_shape=[2, 4, 4], hidden=8, class_linear=True)
    assert isinstance(flow.transform.transforms[-1], ContextLinear) and flow.get_config()["class_linear"]
    plain = SpatialRealNVP(32, 2, couplings=2, latent_shape=[2, 4, 4], hidden=8)
    assert not any(isinstance(m, ContextLinear) for m in plain.modules())


# ------------------------------------------------------------------ ClassWhitening

def test_class_whitening_is_exactly_one_gaussian_per_class():
    from latentflows.flows import StandardNormal

    generator = torch.Generator().manual_seed(11)
    n = 600
    context = one_hot(n)
    labels = context.argmax(1)
    mixing = torch.randn(C, D, D, generator=generator, dtype=torch.float64) * 0.5 + 2 * torch.eye(D, dtype=torch.float64)
    x = torch.einsum("nij,nj->ni", mixing[labels], torch.randn(n, D, generator=generator, dtype=torch.float64))
    x = x + 2.0 * labels[:, None]  # well conditioned: the tiny ridge does not show in the whitened covariance
    layer = ClassWhitening(D, C, shrinkage=0.0).double()
    layer.fit_to_data(x, context.double())
    z, logabsdet = layer(x, context.double())
    log_prob = StandardNormal(D).double().log_prob(z) + logabsdet
    for c in range(C):
        rows = x[labels == c]
        covariance = torch.cov(rows.T) + 1e-6 * torch.cov(rows.T).diagonal().mean() * torch.eye(D, dtype=torch.float64)
        gaussian = torch.distributions.MultivariateNormal(rows.mean(0), covariance_matrix=covariance)
        assert torch.allclose(log_prob[labels == c], gaussian.log_prob(rows), atol=1e-6)
        assert torch.allclose(z[labels == c].T.cov(), torch.eye(D, dtype=torch.float64), atol=1e-4)


def test_class_whitening_is_the_identity_until_fitted_and_needs_the_class():
    x = torch.randn(B, D)
    layer = ClassWhitening(D, C)
    z, logabsdet = layer(x, one_hot(B))
    assert torch.equal(z, x) and torch.equal(logabsdet, torch.zeros(B))
    with pytest.raises(ValueError, match="one-hot context"):
        layer(x)
    with pytest.raises(ValueError, match="shrinkage"):
        ClassWhitening(D, C, shrinkage=1.0)


def test_flow_stage_fits_the_whitening_to_all_training_codes_and_it_is_saved(tmp_path):
    from latentflows.flows import fit_leading_layers

    flow = ConditionalRealNVP(D, C, couplings=2, hidden=[8], class_whitening=True, standardize=True)
    assert flow.get_config()["class_whitening"] and "class_whitening" not in ConditionalRealNVP(D, C).get_config()
    x, context = torch.randn(90, D) * 2 + 1, one_hot(90)
    assert fit_leading_layers(flow.body, x, context) == 1
    whitening = flow.body.transforms[0]
    assert torch.allclose(whitening.mean[0], x[context[:, 0] == 1].mean(0), atol=1e-5)
    copy = deserialize(serialize(flow))
    copy.load_state_dict(flow.state_dict())
    assert torch.equal(copy.body.transforms[0].whitening, whitening.whitening)


# ------------------------------------------------------------------ in ConditionalRealNVP

def toy_2d(n, generator):
    labels = torch.randint(0, 2, (n,), generator=generator)
    centres = torch.tensor([[-1.5, 0.5], [1.0, -1.0]])[labels]
    x = centres + 0.3 * torch.randn(n, 2, generator=generator)
    x[:, 1] = x[:, 1] + 0.8 * torch.sin(2 * x[:, 0])  # a curved, class-dependent density
    return x, torch.nn.functional.one_hot(labels, 2).float()


@pytest.mark.parametrize("options", [{}, {"mixing": "lu", "normalization": "actnorm"}])
def test_a_spline_flow_learns_a_2d_toy(options):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    train_x, train_context = toy_2d(512, generator)
    test_x, test_context = toy_2d(256, generator)
    flow = ConditionalRealNVP(2, 2, couplings=3, hidden=[32], seed=1,
                              bijection={"class": "RationalQuadraticSpline", "config": {"bins": 8}}, **options)
    optimizer = torch.optim.Adam(flow.parameters(), lr=5e-3)

    def test_nll():
        flow.eval()
        with torch.no_grad():
            return -flow.log_prob(test_x, test_context).mean().item()

    flow.train()
    flow.log_prob(train_x[:128], train_context[:128])  # ActNorm's data-dependent initialisation, if any
    before = test_nll()
    for step in range(60):
        flow.train()
        rows = torch.randint(0, 512, (128,), generator=generator)
        loss = -flow.log_prob(train_x[rows], train_context[rows]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = test_nll()
    assert math.isfinite(after) and after < before - 0.3, (before, after)


def test_lu_actnorm_flow_survives_config_and_state_dict_reload():
    flow = lu_actnorm_flow(standardize=True, mean=torch.randn(D), std=torch.rand(D) + 0.5)
    flow.train()
    flow.log_prob(torch.randn(32, D) * 2, one_hot(32))  # initialises the ActNorms
    randomize(flow.body, std=0.2)
    flow.eval()
    config = serialize(flow)
    assert config["config"]["mixing"] == "lu" and config["config"]["normalization"] == "actnorm"
    loaded = deserialize(config)
    assert serialize(loaded) == config
    loaded.load_state_dict(flow.state_dict())
    loaded.train()  # a loaded ActNorm must not re-initialise on its first training batch
    x, context = torch.randn(B, D), one_hot(B)
    loaded.log_prob(x * 3 + 1, context)
    loaded.eval()
    assert torch.equal(loaded.log_prob(x, context), flow.log_prob(x, context))
    samples = flow.sample(5, one_hot(1)[0], generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded.sample(5, one_hot(1)[0], generator=torch.Generator().manual_seed(0)), samples)
    z, logabsdet = flow.transform(x, context)
    x_back, inverse_logabsdet = flow.transform.inverse(z, context)
    x_bound, logabsdet_bound = round_trip_bounds(flow.transform, x, context)
    assert (x_back - x).abs().max() <= x_bound and (logabsdet + inverse_logabsdet).abs().max() <= logabsdet_bound


def test_layer_kinds_in_the_flow():
    kinds = {
        (): [Coupling, RandomPermutation, InvertibleBatchNorm],
        (("mixing", "lu"),): [Coupling, LULinear, InvertibleBatchNorm],
        (("normalization", "actnorm"),): [Coupling, RandomPermutation, ActNorm],
        (("mixing", "none"), ("normalization", "none")): [Coupling],
        # the on/off switches of runs saved by 0.3 and before, as compat reads them
        (("permute", False), ("normalization", "actnorm")): [Coupling, ActNorm],
        (("batch_norm", False), ("mixing", "lu")): [Coupling, LULinear],
    }
    for options, expected in kinds.items():
        flow = ConditionalRealNVP(D, 0, couplings=2, hidden=[8], **layer_kinds(dict(options)))
        assert [type(t) for t in flow.transform.transforms] == expected * 2, options


def test_old_configs_load_unchanged_and_configs_name_the_layer_kinds():
    keys = {"features", "context_size", "couplings", "mask", "mixing", "normalization", "bijection",
            "conditioner", "seed", "standardize"}
    for permute in (True, False):
        for batch_norm in (True, False):
            # a flow saved by 0.3 and before said permute / batch_norm; compat reads it as the same layers
            old = {"class": "ConditionalRealNVP", "config": {"features": D, "context_size": C, "couplings": 2,
                                                             "hidden": [8], "permute": permute, "batch_norm": batch_norm}}
            flow = deserialize(current_specs(old))
            config = flow.get_config()
            assert set(config) == keys  # a default flow's saved config names both kinds
            assert serialize(deserialize(serialize(flow))) == serialize(flow)
            same = ConditionalRealNVP(D, C, couplings=2, hidden=[8], mixing="permutation" if permute else "none",
                                      normalization="batchnorm" if batch_norm else "none")
            assert list(same.state_dict()) == list(flow.state_dict())
            assert serialize(same) == serialize(flow)
    flow = ConditionalRealNVP(D, C, couplings=2, hidden=[8], mixing="lu", normalization="none")
    assert flow.get_config()["mixing"] == "lu" and flow.get_config()["normalization"] == "none"
    assert "permute" not in flow.get_config() and "batch_norm" not in flow.get_config()
    with pytest.raises(TypeError, match="permute"):  # the core class knows the layer kinds only
        ConditionalRealNVP(D, C, couplings=2, permute=False)


@pytest.mark.parametrize("options,message", [({"permute": False, "mixing": "lu"}, "contradicts"),
                                             ({"batch_norm": False, "normalization": "actnorm"}, "contradicts"),
                                             ({"mixing": "householder"}, "mixing must be"),
                                             ({"normalization": "layernorm"}, "normalization must be")])
def test_contradictory_or_unknown_layer_kinds_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        ConditionalRealNVP(D, 0, couplings=1, **layer_kinds(options))
