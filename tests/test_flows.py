import math

import pytest
import torch
from tolerance import jacobian_bound, round_trip_bounds

from latentflows.errors import UnknownComponentError
from latentflows.flows import (
    ActNorm,
    Composite,
    ConditionalRealNVP,
    Coupling,
    Flow,
    FlowDistribution,
    InvertibleBatchNorm,
    RandomPermutation,
    Standardize,
    StandardNormal,
    coupling_mask,
    held_batch_statistics,
    jacobian_logabsdet,
)
from latentflows.registry import deserialize, serialize
from latentflows.training.stages import fixed_head

D, C, B = 6, 3, 7


def randomize(module, std=0.4):
    """Non-trivial parameters and running statistics (new couplings start as the identity)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, std)
        for m in module.modules():
            if isinstance(m, InvertibleBatchNorm):
                m.running_mean.normal_(0, 1)
                m.running_var.uniform_(0.5, 2.0)
    return module


def one_hot(n, classes=C):
    return torch.nn.functional.one_hot(torch.arange(n) % classes, classes).float()


def net(hidden, shared=True):
    return {"class": "CouplingNet", "config": {"hidden": hidden, "shared": shared}}


def coupling(bijection="TanhAffine", mask="alternate", hidden=(16, 16), context_size=0, shared=True, flip=False):
    return Coupling(D, mask, {"class": bijection, "config": {}}, net(list(hidden), shared), context_size, flip)


def layers(context_size):
    yield "coupling-tanh-affine", coupling("TanhAffine", context_size=context_size)
    yield "coupling-softplus-affine", coupling("SoftplusAffine", context_size=context_size)
    yield "coupling-additive", coupling("Additive", "half", [16], context_size)
    yield "coupling-half-flip", coupling("TanhAffine", "half", [16], context_size, flip=True)
    yield "coupling-two-networks", coupling("TanhAffine", context_size=context_size, shared=False)
    yield "coupling-explicit-mask", coupling("TanhAffine", [True, True, False, True, False, False], [8], context_size)
    yield "permutation", RandomPermutation(D, seed=3)
    yield "batchnorm", InvertibleBatchNorm(D)
    yield "standardize", Standardize(D, torch.randn(D), torch.rand(D) + 0.5)
    yield "composite", Composite([coupling(hidden=[8], context_size=context_size), RandomPermutation(D),
                                  InvertibleBatchNorm(D), coupling("TanhAffine", "half", [8], context_size)])
    yield "realnvp", ConditionalRealNVP(D, context_size, couplings=3, hidden=[16, 16], standardize=True,
                                        mean=torch.randn(D), std=torch.rand(D) + 0.5).transform
    yield "realnvp-no-perm-no-bn", ConditionalRealNVP(D, context_size, couplings=3, hidden=[16], normalization="none",
                                                      mixing="none", mask="half").transform


CASES = [(name, context_size, mode) for context_size in (0, C) for name, _ in layers(context_size)
         for mode in ("train", "eval")]


def build(name, context_size, mode, dtype):
    module = dict(layers(context_size))[name]
    randomize(module).to(dtype).train(mode == "train")
    context = one_hot(B).to(dtype) if context_size else None
    return module, context


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,context_size,mode", CASES)
def test_round_trip(name, context_size, mode, dtype):
    module, context = build(name, context_size, mode, dtype)
    x = torch.randn(B, D, dtype=dtype) * 2
    x_bound, logabsdet_bound = round_trip_bounds(module, x, context, dtype)  # before the pass: same statistics
    z, logabsdet = module(x, context)
    x_back, inverse_logabsdet = module.inverse(z, context)
    assert (x_back - x).abs().max() <= x_bound
    assert (logabsdet + inverse_logabsdet).abs().max() <= logabsdet_bound
    assert logabsdet.shape == (B,)
    if name != "permutation":
        assert not torch.allclose(z, x), "the transform should not be the identity here"
    if name.startswith("coupling") and context_size:
        other, _ = module(x, context.roll(1, dims=1))
        assert not torch.allclose(other, z), "the context should change the transform"


@pytest.mark.parametrize("name,context_size,mode", CASES)
def test_logabsdet_matches_autograd_jacobian(name, context_size, mode):
    module, context = build(name, context_size, mode, torch.float64)
    x = torch.randn(B, D, dtype=torch.float64)
    for direction in ("forward", "inverse"):
        apply = module if direction == "forward" else module.inverse
        _, reported = apply(x, context)
        with held_batch_statistics(module):
            _, reported_held = apply(x, context)
        _, exact = jacobian_logabsdet(module, x, context, direction)
        bound = jacobian_bound(module, x, context, direction)
        assert (reported_held - exact).abs().max() <= bound, direction
        assert (reported - exact).abs().max() <= bound, direction


COUPLING_LAYOUTS = {"coupling-tanh-affine": "interleaved", "coupling-additive": "identity first",
                    "coupling-half-flip": "transformed first", "coupling-explicit-mask": "permuted"}


@pytest.mark.parametrize("name", [*COUPLING_LAYOUTS, "permutation"])
def test_gradients_through_the_splits_and_permutations_match_finite_differences(name):
    """The gather-free splits and the permutation's own backward (a gather by the inverse) give
    autograd's Jacobian; a wrong backward permutation would keep |det J| but not J itself."""
    module, context = build(name, C, "eval", torch.float64)
    if name in COUPLING_LAYOUTS:
        assert module._layout == COUPLING_LAYOUTS[name]
    x = torch.randn(B, D, dtype=torch.float64)
    by_autograd = torch.autograd.functional.jacobian(lambda v: module(v, context)[0], x)
    eps, by_differences = 1e-6, torch.zeros_like(by_autograd)
    for sample in range(B):
        for feature in range(D):
            step = torch.zeros_like(x)
            step[sample, feature] = eps
            by_differences[:, :, sample, feature] = (module(x + step, context)[0] - module(x - step, context)[0]) / (2 * eps)
    assert torch.allclose(by_autograd, by_differences, atol=1e-7)


def test_context_changes_the_transform():
    flow = randomize(ConditionalRealNVP(D, C, couplings=2, hidden=[8])).eval()
    x = torch.randn(B, D)
    z_a, _ = flow.transform(x, one_hot(B))
    z_b, _ = flow.transform(x, one_hot(B).roll(1, dims=1))
    assert not torch.allclose(z_a, z_b)


def test_flow_called_with_a_context_is_a_torch_distribution():
    flow = randomize(ConditionalRealNVP(D, C, couplings=2, hidden=[8])).double().eval()
    dog = flow(one_hot(1)[0].double())
    assert isinstance(dog, torch.distributions.Distribution) and isinstance(dog, FlowDistribution)
    assert dog.batch_shape == () and dog.event_shape == (D,)
    x = dog.sample((4, 3))
    assert x.shape == (4, 3, D) and dog.log_prob(x).shape == (4, 3)
    z, logabsdet = flow.transform(x.reshape(-1, D), one_hot(1).double().expand(12, -1))
    expected = flow.base.log_prob(z) + logabsdet
    assert torch.allclose(dog.log_prob(x).reshape(-1), expected)
    samples, log_prob = dog.sample_and_log_prob((5,))
    assert torch.allclose(log_prob, dog.log_prob(samples), atol=1e-8)
    batch = flow(one_hot(B).double())  # one context per row
    assert batch.batch_shape == (B,) and batch.sample().shape == (B, D)
    rsampled = flow(one_hot(1)[0].double()).rsample((2,))
    assert rsampled.requires_grad  # reparametrized: gradients reach the flow's parameters


def test_standardize_head_gives_the_density_of_the_raw_data():
    mean, std = torch.randn(D, dtype=torch.float64), torch.rand(D, dtype=torch.float64) + 0.5
    plain = randomize(ConditionalRealNVP(D, C, couplings=2, hidden=[8])).double().eval()
    headed = ConditionalRealNVP(D, C, couplings=2, hidden=[8], standardize=True, mean=mean, std=std).double()
    headed.body.load_state_dict(plain.transform.state_dict())
    headed.eval()
    x = torch.randn(B, D, dtype=torch.float64)
    expected = plain.log_prob((x - mean) / std, one_hot(B).double()) - std.log().sum()
    assert torch.allclose(headed.log_prob(x, one_hot(B).double()), expected)


def test_head_then_body_is_the_whole_transform_and_a_plain_flow_has_no_head():
    flow = randomize(ConditionalRealNVP(D, C, couplings=2, hidden=[8], standardize=True,
                                        mean=torch.randn(D), std=torch.rand(D) + 0.5)).double().eval()
    x, context = torch.randn(B, D, dtype=torch.float64), one_hot(B).double()
    h, head_logabsdet = flow.head(x, context)
    z, body_logabsdet = flow.body(h, context)
    expected_z, expected_logabsdet = flow.transform(x, context)
    assert torch.allclose(z, expected_z) and torch.allclose(head_logabsdet + body_logabsdet, expected_logabsdet)
    plain = Flow(RandomPermutation(D), StandardNormal(D))
    assert plain.head is None and plain.body is plain.transform and fixed_head(plain) is None


class _TrainableHead(Flow):
    @property
    def head(self):
        return self.transform.transforms[0]


def test_a_head_the_flow_stage_cannot_hold_fixed_is_refused():
    trainable = _TrainableHead(Composite([ActNorm(D), RandomPermutation(D)]), StandardNormal(D))
    with pytest.raises(TypeError, match=r"_TrainableHead.head has trainable parameters \(.*\).*move them into body"):
        fixed_head(trainable)
    not_a_transform = _TrainableHead(Composite([RandomPermutation(D)]), StandardNormal(D))
    not_a_transform.transform.transforms[0] = torch.nn.Identity()
    with pytest.raises(TypeError, match="head must be a flows.Transform or None, got Identity"):
        fixed_head(not_a_transform)


def test_batchnorm_training_uses_batch_stats_and_updates_running_averages():
    norm = InvertibleBatchNorm(D, momentum=0.5).train()
    x = torch.randn(256, D) * 3 + 5
    z, _ = norm(x)
    assert z.mean(0).abs().max() < 1e-5 and (z.std(0) - 1).abs().max() < 0.01
    assert torch.allclose(norm.running_mean, 0.5 * x.mean(0), atol=1e-5)
    assert not norm.running_mean.requires_grad
    norm.eval()
    z_eval, _ = norm(x)
    assert not torch.allclose(z_eval, z)  # eval mode uses the running statistics


def test_batchnorm_training_gradient_matches_finite_differences():
    """The training-mode batch norm's written-out backward (the batch statistics' own terms,
    and the log-determinant's) against numerical gradients, in every input and parameter."""
    from latentflows.flows.batchnorm import _BatchNormalize

    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(7, D, generator=generator, dtype=torch.float64) * 3 + 1).requires_grad_()
    log_gamma = (torch.randn(D, generator=generator, dtype=torch.float64) * 0.5).requires_grad_()
    beta = torch.randn(D, generator=generator, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda *v: _BatchNormalize.apply(*v, 1e-5)[:2], (x, log_gamma, beta))


def test_batchnorm_rejects_single_sample_in_training():
    with pytest.raises(ValueError, match="at least 2 samples"):
        InvertibleBatchNorm(D).train()(torch.randn(1, D))


@pytest.mark.parametrize("normalization", ["batchnorm", "none"])
def test_2d_density_integrates_to_one(normalization):
    flow = randomize(ConditionalRealNVP(2, 2, couplings=4, hidden=[16], normalization=normalization), std=0.3)
    flow.double().eval()
    step = 0.04
    axis = torch.arange(-12, 12, step, dtype=torch.float64) + step / 2
    grid = torch.cartesian_prod(axis, axis)
    for label in range(2):
        context = torch.nn.functional.one_hot(torch.tensor([label]), 2).double()
        with torch.no_grad():
            density = flow.log_prob(grid, context.expand(len(grid), -1)).exp()
        assert abs(density.sum().item() * step * step - 1) < 5e-3


def test_sample_log_prob_agrees_with_log_prob():
    flow = randomize(ConditionalRealNVP(D, C, couplings=3, hidden=[16])).double().eval()
    context = one_hot(1).double()
    x, log_prob = flow.sample_and_log_prob(50, context, temperature=0.7, generator=torch.Generator().manual_seed(1))
    assert x.dtype == torch.float64 and x.shape == (50, D)
    assert torch.allclose(log_prob, flow.log_prob(x, context), atol=1e-8)


def test_samples_follow_the_base_at_identity():
    flow = ConditionalRealNVP(D, 0, couplings=2, normalization="none").eval()  # zero-init couplings: identity
    x = flow.sample(20000, generator=torch.Generator().manual_seed(0))
    assert x.mean().abs() < 0.02 and (x.std() - 1).abs() < 0.02
    expected = -0.5 * D * math.log(2 * math.pi)
    assert torch.isclose(flow.log_prob(torch.zeros(1, D))[0], torch.tensor(expected))


def test_config_round_trip_rebuilds_an_equal_flow():
    flow = randomize(ConditionalRealNVP(D, C, couplings=2, mask="half", conditioner=net([8], shared=False),
                                        bijection={"class": "SoftplusAffine"}, standardize=True)).eval()
    spec = serialize(flow)
    import json

    rebuilt = deserialize(json.loads(json.dumps(spec)))
    rebuilt.load_state_dict(flow.state_dict())
    rebuilt.eval()
    x = torch.randn(B, D)
    assert torch.equal(flow.transform(x, one_hot(B))[0], rebuilt.transform(x, one_hot(B))[0])


def test_unknown_component_names_it_and_says_how_to_register():
    with pytest.raises(UnknownComponentError, match="'MyFlow'.*@latentflows.register"):
        deserialize({"class": "MyFlow", "config": {}})


def test_masks_split_features_in_two():
    assert coupling_mask(5, "alternate").tolist() == [True, False, True, False, True]
    assert coupling_mask(4, "half", flip=True).tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match="unknown mask"):
        coupling_mask(4, "checkerboard")
    with pytest.raises(ValueError, match="at least one feature unchanged"):
        coupling_mask(3, [True, True, True])


def test_context_errors_are_clear():
    with pytest.raises(ValueError, match="pass a context"):
        ConditionalRealNVP(D, C, couplings=1).log_prob(torch.randn(2, D))
    with pytest.raises(ValueError, match="shape"):
        ConditionalRealNVP(D, C, couplings=1).log_prob(torch.randn(2, D + 1), one_hot(2))
    with pytest.raises(ValueError, match="context must have 3 features"):
        ConditionalRealNVP(D, C, couplings=1)(torch.zeros(C + 1))
    with pytest.raises(UnknownComponentError, match="not a ElementwiseBijection"):
        Coupling(D, bijection={"class": "RandomPermutation", "config": {}})


def test_conditioners_in_bf16_change_only_the_networks_and_still_train_them():
    from latentflows.flows import conditioners_in

    torch.manual_seed(0)
    layer = coupling(context_size=2)
    for p in layer.conditioner.parameters():  # a non-zero map, so the networks matter
        torch.nn.init.normal_(p, std=0.3)
    x, context = torch.randn(64, D), torch.eye(2)[torch.arange(64) % 2]
    z, logabsdet = layer(x, context)
    with conditioners_in(None):
        assert torch.equal(layer(x, context)[0], z)
    with conditioners_in(torch.bfloat16):
        z16, logabsdet16 = layer(x, context)
        assert z16.dtype == logabsdet16.dtype == torch.float32
        assert torch.allclose(layer.inverse(z16, context)[0], x, atol=1e-5)  # exact inverse: same bf16 params
        (z16.square().sum() - logabsdet16.sum()).backward()
    assert not torch.equal(z16, z) and torch.allclose(z16, z, atol=0.05, rtol=0.05)  # bf16 rounding, no more
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.conditioner.parameters())
