"""Error bounds for flow round trips and log-determinants, derived from the computation itself.

A fixed tolerance such as ``1e-4`` passes on one CPU and fails on another: which vector
kernels run (AVX-512, AVX2, plain C; MKL or not; how a reduction is split over threads)
changes the rounding, and a flow amplifies rounding by its conditioning. The bounds here
are worked out for each test input from the module itself, run in float64 as the reference:

- Each layer ``h_l = f_l(h_{l-1})`` is taken to compute its output with a relative error of
  at most ``OPS * u`` on the magnitudes involved, where ``u`` is the unit roundoff of the
  dtype and ``OPS = 32`` the longest chain of roundings on the way to one output element
  (a rational-quadratic spline and the root formula of its inverse take about 20
  operations; an affine coupling or a normalization fewer than 10). That is standard
  forward-error analysis of a backward-stable step: the error in ``h_l`` is at most
  ``OPS * u * (|h_l| + ||J_l|| |h_{l-1}|)``, and in the inverse step
  ``OPS * u * (|h_{l-1}| + ||J_l^-1|| |h_l|)``.
- A round trip makes each of these errors once and carries it back to the input through
  the Jacobian of the inverse of the layers before it (``J_1^-1 ... J_l^-1``); the later
  layers' forward and inverse cancel. The bound on ``|x_back - x|`` is the sum.
- The two log-determinants disagree by what rounding does to each layer's log-determinant
  (``OPS * u * D * (1 + |log det J_l|)``) plus each inverse log-determinant's gradient
  times how far its input is from the forward pass's value.

The Jacobians come from ``torch.autograd.functional.jacobian`` in float64, one block per
sample (training-mode batch norms hold the batch's statistics, so samples are independent).
"""

from __future__ import annotations

import copy

import torch

from latentflows.flows import held_batch_statistics

# The longest chain of roundings on the way to one output element of one layer (see above).
OPS = 32


def unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


def layers_of(module):
    """The module as a list of steps in the data -> noise direction (composites flattened)."""
    inner = getattr(module, "transforms", None)
    if inner is None:
        return [module]
    return [step for layer in inner for step in layers_of(layer)]


def _apply(matrices, vectors):
    """|A| |v| per sample: the componentwise bound of A v (batch, d, d) x (batch, d)."""
    return (matrices.abs() @ vectors.abs().unsqueeze(-1)).squeeze(-1)


def _steps(module, context, direction="forward"):
    """float64 callables ``h -> (h', logabsdet)`` of each layer in the order ``direction`` applies them."""
    if direction == "inverse":
        return [lambda h, layer=layer: layer.inverse(h, context) for layer in reversed(layers_of(module))]
    return [lambda h, layer=layer: layer(h, context) for layer in layers_of(module)]


def _reference(module, x, context, direction="forward"):
    """A float64 copy of ``module`` that has seen ``x`` (batch statistics, first-batch initialisations)."""
    reference = copy.deepcopy(module).double()
    context = None if context is None else context.double()
    x = x.detach().double()
    with torch.no_grad():
        (reference if direction == "forward" else reference.inverse)(x, context)
    return reference, x, context


def _per_sample_jacobian(step, h):
    """d step(h)[i] / d h[i] for each sample i: the diagonal blocks of the batch Jacobian."""
    full = torch.autograd.functional.jacobian(lambda v: step(v)[0], h, vectorize=True)  # (B, D, B, D)
    index = torch.arange(h.shape[0])
    return full[index, :, index, :]


def bounds_for_steps(steps, x, dtype=torch.float32):
    """``(x_bound, logabsdet_bound)``: the largest ``|x_back - x|`` and ``|logabsdet +
    inverse_logabsdet|`` a round trip through ``steps`` may show in ``dtype``.

    Args:
        steps: float64 callables ``h -> (h', logabsdet)``, one per layer, in order.
        x: the inputs (any dtype; taken in float64).
        dtype: the dtype whose rounding is bounded.
    """
    u = unit_roundoff(dtype)
    h = [x.detach().double()]
    logdets, jacobians, logdet_grads = [], [], []
    for step in steps:
        inputs = h[-1].clone().requires_grad_(True)
        out, logdet = step(inputs)
        grad = None
        if logdet.requires_grad:  # a volume-preserving layer's log-determinant is a constant
            grad = torch.autograd.grad(logdet.sum(), inputs, allow_unused=True)[0]
        logdet_grads.append(torch.zeros_like(inputs) if grad is None else grad)
        jacobians.append(_per_sample_jacobian(step, h[-1]))
        h.append(out.detach())
        logdets.append(logdet.detach().abs().expand(x.shape[0]))
    inverses = [torch.linalg.inv(jacobian) for jacobian in jacobians]
    size = x.shape[1]
    layers = len(steps)
    # local errors of layer i (1-based below), componentwise: in h_l going forward, in h_{l-1} going back
    forward_error = [OPS * u * (h[i].abs() + _apply(jacobians[i - 1], h[i - 1])) for i in range(1, layers + 1)]
    inverse_error = [OPS * u * (h[i - 1].abs() + _apply(inverses[i - 1], h[i])) for i in range(1, layers + 1)]
    # error[l]: how far the round trip's value of h_l may be from the forward pass's (componentwise)
    error = [torch.zeros_like(h[0]) for _ in range(layers + 1)]
    for level in range(layers + 1):
        carry = torch.eye(size, dtype=torch.float64).expand(x.shape[0], size, size)  # d h_level / d h_{k-1}
        for k in range(level + 1, layers + 1):
            error[level] = error[level] + _apply(carry, inverse_error[k - 1])
            carry = carry @ inverses[k - 1]  # now d h_level / d h_k
            error[level] = error[level] + _apply(carry, forward_error[k - 1])
    logdet_bound = torch.zeros(x.shape[0], dtype=torch.float64)
    for i in range(1, layers + 1):
        # gradient of the inverse layer's log-determinant with respect to its input h_i
        inverse_grad = -(inverses[i - 1].transpose(1, 2) @ logdet_grads[i - 1].unsqueeze(-1)).squeeze(-1)
        logdet_bound = logdet_bound + (inverse_grad.abs() * (error[i] + forward_error[i - 1])).sum(-1)
        logdet_bound = logdet_bound + 2 * OPS * u * size * (1 + logdets[i - 1])
    return float(error[0].max()), float(logdet_bound.max())


def round_trip_bounds(module, x, context=None, dtype=torch.float32):
    """Bounds for a round trip of ``module`` (a flow layer or composite) at ``x``, in ``dtype``.

    The module is copied and run in float64; in training mode its batch norms first see the
    whole batch, then hold those statistics, as the inverse of a training-mode pass does.

    Example:
        >>> from latentflows.flows import Standardize
        >>> layer = Standardize(2, mean=torch.zeros(2), std=torch.tensor([2.0, 4.0]))
        >>> x_bound, logdet_bound = round_trip_bounds(layer, torch.ones(3, 2))
        >>> 0 < x_bound < 1e-5 and 0 < logdet_bound < 1e-4
        True
    """
    reference, x, context = _reference(module, x, context)
    with held_batch_statistics(reference):
        return bounds_for_steps(_steps(reference, context), x, dtype)


def jacobian_bound(module, x, context=None, direction="forward"):
    """How far a float64 log-determinant may be from ``slogdet`` of the autograd Jacobian.

    Each layer's own log-determinant rounds as above: ``OPS * u * D * (1 + |log det J_l|)``.
    The autograd Jacobian is the product ``P = J_L ... J_1``, built by vector-Jacobian
    products from the last layer back. Since ``log det P = sum log det J_l``, an error of
    ``OPS * u`` relative in each entry of ``J_l`` moves it by at most ``D * cond(J_l) * OPS * u``,
    and rounding the running product ``S_l = J_L ... J_l`` (``D`` terms per entry) by at most
    ``D^2 * u * cond(S_{l+1}) * cond(J_l)``. LU with pivoting then adds ``D * u * cond(P)``.

    Example:
        >>> from latentflows.flows import Standardize
        >>> layer = Standardize(2, mean=torch.zeros(2), std=torch.tensor([2.0, 4.0]))
        >>> 0 < jacobian_bound(layer, torch.ones(3, 2)) < 1e-12
        True
    """
    reference, x, context = _reference(module, x, context, direction)
    u, size = unit_roundoff(torch.float64), x.shape[1]
    jacobians, logdets = [], []
    with held_batch_statistics(reference):
        h = x
        for step in _steps(reference, context, direction):
            jacobians.append(_per_sample_jacobian(step, h))
            with torch.no_grad():
                h, logdet = step(h)
            logdets.append(logdet.abs().expand(x.shape[0]))

    def cond(matrices):
        return torch.linalg.cond(matrices, p=float("inf"))

    bound = torch.zeros(x.shape[0], dtype=torch.float64)
    suffix = torch.eye(size, dtype=torch.float64).expand(x.shape[0], size, size)  # S_{l+1}
    for jacobian, logdet in zip(reversed(jacobians), reversed(logdets)):
        bound = bound + OPS * u * size * (1 + logdet) + OPS * u * size * cond(jacobian)
        bound = bound + u * size**2 * cond(suffix) * cond(jacobian)
        suffix = suffix @ jacobian
    bound = bound + u * size * cond(suffix)
    return float(bound.max())
