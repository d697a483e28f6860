"""Class guidance from exact densities: draw more samples, keep those the flow calls the class.

A class-conditional flow gives ``log p(z | c)`` for every class ``c``, so Bayes' rule gives
the class posterior of any embedding, ``p(c | z) = p(z | c) / sum_k p(z | k)`` (equal class
priors). Guidance with strength ``gamma`` draws ``candidates * n`` embeddings from
``p(z | c)`` and keeps ``n`` of them, each with probability proportional to
``p(c | z) ** gamma``: self-normalised importance resampling towards
``p(z | c) * p(c | z) ** gamma``, the same tilt classifier guidance applies to diffusion models
(Dhariwal & Nichol, arXiv:2105.05233), here with the flow itself as the classifier and no
extra network. ``gamma = 0`` is plain sampling; larger values trade diversity for class.

A flow trained on a few thousand codes is overconfident: on its own training codes, and on
its samples, the classes' log-likelihoods differ by tens of nats, so ``p(c | z)`` is 0 or 1
and guidance would have nothing to choose between. The posterior is therefore tempered,
``softmax(log p(z | c) / T)``, with ``T`` fitted once after training to the validation
codes (temperature scaling; Guo et al., arXiv:1706.04599: the ``T`` whose posterior gives
the validation labels the highest likelihood), and kept in the run's summary as
``posterior_temperature``.

The ``n`` are drawn without replacement (Gumbel top-k; Kool et al., arXiv:1903.06059), so a
picture never shows one sample twice; with many candidates per kept sample this is close to
resampling with replacement.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import check_guidance
from .errors import LatentflowsError
from .flows import Flow

__all__ = ["check_guidance", "class_log_likelihoods", "class_log_posterior", "choose_without_replacement",
           "fit_posterior_temperature", "guided_sample"]

ROWS_PER_PASS = 8192  # flow evaluations per forward pass when scoring every class


@torch.no_grad()
def class_log_likelihoods(flow: Flow, embeddings: Tensor, classes: int) -> Tensor:
    """``log p(z | c)`` of each embedding under each of ``classes`` one-hot contexts: ``(len(embeddings), classes)``."""
    if classes < 2:
        raise LatentflowsError(f"class guidance needs a flow conditioned on at least 2 classes, got {classes}")
    m = embeddings.shape[0]
    eye = torch.eye(classes, device=embeddings.device, dtype=embeddings.dtype)
    rows = embeddings.repeat_interleave(classes, dim=0)  # z_0 with each class, z_1 with each class, ...
    contexts = eye.repeat(m, 1)
    return torch.cat([flow.log_prob(rows[i : i + ROWS_PER_PASS], contexts[i : i + ROWS_PER_PASS])
                      for i in range(0, len(rows), ROWS_PER_PASS)]).view(m, classes)


@torch.no_grad()
def class_log_posterior(flow: Flow, embeddings: Tensor, classes: int, temperature: float = 1.0) -> Tensor:
    """``log p(c | z)`` of each embedding for each of ``classes`` one-hot contexts, with equal
    priors and the log-likelihoods divided by ``temperature``: a ``(len(embeddings), classes)``
    matrix whose rows log-sum-exp to 0.

    Example:
        >>> import torch
        >>> from latentflows.flows import ConditionalRealNVP
        >>> flow = ConditionalRealNVP(4, context_size=3, couplings=2, hidden=[8]).eval()
        >>> posterior = class_log_posterior(flow, torch.randn(5, 4), 3)
        >>> posterior.shape, bool(torch.allclose(posterior.logsumexp(1), torch.zeros(5), atol=1e-5))
        (torch.Size([5, 3]), True)
    """
    log_likelihood = class_log_likelihoods(flow, embeddings, classes)
    return torch.log_softmax(log_likelihood.double() / temperature, dim=1).to(log_likelihood.dtype)


TEMPERATURE_GRID = torch.logspace(-1, 3, 81, dtype=torch.float64)  # 0.1 to 1000, 20 steps per decade


@torch.no_grad()
def fit_posterior_temperature(flow: Flow, embeddings: Tensor, labels: Tensor, classes: int) -> float:
    """The ``T`` (from 0.1 to 1000) whose tempered posterior ``softmax(log p(z | c) / T)`` gives
    held-out ``labels`` the highest likelihood: temperature scaling (Guo et al., arXiv:1706.04599).

    Example:
        >>> import torch
        >>> from latentflows.flows import ConditionalRealNVP
        >>> flow = ConditionalRealNVP(4, context_size=2, couplings=2, hidden=[8]).eval()
        >>> 0.1 <= fit_posterior_temperature(flow, torch.randn(20, 4), torch.arange(20) % 2, 2) <= 1000
        True
    """
    log_likelihood = class_log_likelihoods(flow, embeddings, classes).double().cpu()
    labels = labels.cpu()
    losses = [torch.nn.functional.cross_entropy(log_likelihood / t, labels) for t in TEMPERATURE_GRID]
    return float(TEMPERATURE_GRID[int(torch.stack(losses).argmin())])


def choose_without_replacement(log_weights: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """Indices of ``n`` distinct rows, drawn in turn with probabilities proportional to
    ``exp(log_weights)`` among those left (the Gumbel top-k trick).

    Example:
        >>> import torch
        >>> weights = torch.tensor([0.0, float("-inf"), 0.0, float("-inf")])   # rows 1 and 3 never
        >>> sorted(choose_without_replacement(weights, 2, torch.Generator().manual_seed(0)).tolist())
        [0, 2]
    """
    if not 1 <= n <= len(log_weights):
        raise ValueError(f"cannot choose {n} of {len(log_weights)} rows")
    uniform = torch.rand(len(log_weights), generator=generator, dtype=torch.float64).clamp_min(1e-300)
    keys = log_weights.double().cpu() - torch.log(-torch.log(uniform))
    return torch.topk(keys, n).indices.to(log_weights.device)


@torch.no_grad()
def guided_sample(flow: Flow, n: int, class_index: int, classes: int, guidance: float = 0.0,
                  candidates: int = 8, temperature: float = 1.0, generator: torch.Generator | None = None,
                  posterior_temperature: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` embeddings of class ``class_index`` from a one-hot conditional flow, guided by
    ``p(c | z) ** guidance``; returns ``(embeddings, log p(z | c), p(c | z))``.

    Args:
        flow: a flow whose context is a one-hot class of ``classes`` (in eval mode).
        n: embeddings to return.
        class_index: the class asked for.
        classes: the number of classes.
        guidance: ``gamma >= 0``; 0 returns exactly the flow's own ``n`` samples.
        candidates: embeddings drawn per embedding kept when ``guidance > 0``.
        temperature: scale of the base noise.
        generator: the random source (noise and the choice).
        posterior_temperature: ``T`` of the tempered posterior (``fit_posterior_temperature``).

    Example:
        >>> import torch
        >>> from latentflows.flows import ConditionalRealNVP
        >>> flow = ConditionalRealNVP(4, context_size=2, couplings=2, hidden=[8]).eval()
        >>> z, log_prob, posterior = guided_sample(flow, 3, 1, 2, guidance=2.0,
        ...                                        generator=torch.Generator().manual_seed(0))
        >>> z.shape, log_prob.shape, bool(((posterior > 0) & (posterior <= 1)).all())
        (torch.Size([3, 4]), torch.Size([3]), True)
    """
    check_guidance(guidance, candidates)
    if not 0 <= class_index < classes:
        raise LatentflowsError(f"class index {class_index} is not one of the {classes} classes")
    device = next(flow.parameters()).device
    context = torch.nn.functional.one_hot(torch.tensor([class_index], device=device), classes).float()
    drawn = n if guidance == 0 else n * candidates
    embeddings, log_prob = flow.sample_and_log_prob(drawn, context, temperature, generator)
    log_posterior = class_log_posterior(flow, embeddings, classes, posterior_temperature)[:, class_index]
    if guidance > 0:
        kept = choose_without_replacement(guidance * log_posterior, n, generator)
        embeddings, log_prob, log_posterior = embeddings[kept], log_prob[kept], log_posterior[kept]
    return embeddings, log_prob, log_posterior.exp()
