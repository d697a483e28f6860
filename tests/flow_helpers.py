"""Shared helpers of the layer tests: class contexts and seeded, non-trivial parameters."""

import torch


def one_hot(n, classes, dtype=torch.float32):
    """One-hot contexts of ``n`` samples cycling through ``classes`` classes."""
    return torch.nn.functional.one_hot(torch.arange(n) % classes, classes).to(dtype)


def randomize(module, std=0.4, seed=0):
    """Every parameter drawn from N(0, std^2) with a seeded generator (new couplings start as the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * std)
    return module


def check_round_trip(module, x, context, dtype, context_matters=False):
    """inverse(forward(x)) == x and the two log-determinants cancel, within the derived bounds
    (``tolerance``); the layer is not the identity, and (``context_matters``) the context moves it.
    Returns ``z``."""
    from tolerance import round_trip_bounds

    x_bound, logabsdet_bound = round_trip_bounds(module, x, context, dtype)  # before the pass: same statistics
    z, logabsdet = module(x, context)
    x_back, inverse_logabsdet = module.inverse(z, context)
    assert (x_back - x).abs().max() <= x_bound
    assert (logabsdet + inverse_logabsdet).abs().max() <= logabsdet_bound
    assert logabsdet.shape == (x.shape[0],)
    assert not torch.allclose(z, x), "the transform should not be the identity here"
    if context_matters:
        other, _ = module(x, context.roll(1, dims=1))
        assert not torch.allclose(other, z), "the context should change the transform"
    return z


def check_jacobian(module, x, context):
    """Both directions' log-determinants equal log|det J| from autograd, within the derived bound."""
    from tolerance import jacobian_bound

    from latentflows.flows import jacobian_logabsdet

    for direction in ("forward", "inverse"):
        apply = module if direction == "forward" else module.inverse
        _, exact = jacobian_logabsdet(module, x, context, direction)
        _, reported = apply(x, context)
        assert (reported - exact).abs().max() <= jacobian_bound(module, x, context, direction), direction
