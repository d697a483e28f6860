"""The flow per step: latentflows' conditional RealNVP against zuko's RealNVP, in one run.

    pip install zuko                        # this benchmark's own dependency
    python bench/flow_speed.py              # about a minute on 2 CPU cores
    python bench/flow_speed.py --seconds 1  # a smoke run, figures not meaningful
    python bench/flow_speed.py --profile    # then where our training step's time goes
    python bench/flow_speed.py --bf16       # also training as a bf16 run trains (below)

Both flows: 256 features, a one-hot context of 2 classes, 12 affine couplings whose
conditioners have hidden layers [256, 256], a standard normal base, fp32. Training is the
same plain loop for both (the mean negative log-likelihood, backward, fused Adam at 1e-3) on
batches of 256 cut from 6,000 in-memory stand-in embeddings, so the figure is the flow's
own cost, not a trainer's. Sampling draws 256 samples of one class with their
log-densities, without gradients, in eval mode.

Rows: latentflows with its default mixing and normalization (a permutation and an
invertible batch norm after each coupling), latentflows without batch norm, latentflows as
zuko builds it (no permutations, no batch norm: masks alternate), and zuko's RealNVP
(alternating masks, no batch norm). The two implementations are timed alternately in
rounds, so both see the same machine load; ``ratio`` is latentflows / zuko.

``--bf16`` adds training rows as a bf16 run trains (``--precision auto`` on a CPU or GPU with
bf16 matrix units): latentflows runs its coupling networks in bf16 and the rest in fp32
(``flows.conditioners_in``), zuko runs its whole step under ``torch.autocast`` to bf16 (what
a zuko user would write). Sampling stays fp32 in both, as ``sample`` does. Our fp32 step is
timed in the same rounds as our bf16 step, so that bf16's own gain is read from one set of
rounds (the rows above are minutes apart, and a shared machine drifts by more than the gain).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from typing import Callable, ContextManager

import torch

from latentflows import __version__
from latentflows.flows import ConditionalRealNVP, conditioners_in

FEATURES, CLASSES, COUPLINGS, HIDDEN, BATCH, ROWS = 256, 2, 12, [256, 256], 256, 6000


def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(ROWS, FEATURES, generator=generator)
    labels = torch.randint(0, CLASSES, (ROWS,), generator=generator)
    return x, torch.nn.functional.one_hot(labels, CLASSES).float()


def ours(**options) -> torch.nn.Module:
    return ConditionalRealNVP(FEATURES, CLASSES, couplings=COUPLINGS, hidden=HIDDEN, **options)


def zuko_flow() -> torch.nn.Module:
    import zuko

    return zuko.flows.RealNVP(FEATURES, CLASSES, transforms=COUPLINGS, hidden_features=HIDDEN)


def training_step(flow: torch.nn.Module, log_prob: Callable,
                  precision: Callable[[], ContextManager] = contextlib.nullcontext) -> Callable[[int], None]:
    """One Adam step of the mean NLL on the k-th batch, its forward pass under ``precision()``."""
    x, context = data()
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3, fused=True)  # the fastest Adam on a CPU, for both
    flow.train()

    def step(k: int) -> None:
        start = (k * BATCH) % (ROWS - BATCH)
        with precision():
            loss = -log_prob(flow, x[start : start + BATCH], context[start : start + BATCH]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def sampling_step(flow: torch.nn.Module, sample: Callable) -> Callable[[int], None]:
    flow.eval()
    one_hot = torch.eye(CLASSES)[1]

    def step(k: int) -> None:
        with torch.no_grad():
            sample(flow, one_hot)

    return step


def ours_log_prob(flow, x, context):
    return flow.log_prob(x, context)


def zuko_log_prob(flow, x, context):
    return flow(context).log_prob(x)


def ours_sample(flow, one_hot):
    return flow.sample_and_log_prob(BATCH, one_hot)


def zuko_sample(flow, one_hot):
    return flow(one_hot).rsample_and_log_prob((BATCH,))


def measure(steps: list[Callable[[int], None]], seconds: float, rounds: int = 8) -> list[float]:
    """Steps per second of each: timed alternately in ``rounds`` rounds after 3 warm-up steps,
    the median of the rounds' rates (a shared machine's bursts of load move a mean, not it)."""
    for step in steps:
        for k in range(3):
            step(k)
    rates: list[list[float]] = [[] for _ in steps]
    done = [0] * len(steps)
    for _ in range(rounds):
        for i, step in enumerate(steps):
            count, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds / rounds:
                step(done[i] + count)
                count += 1
            rates[i].append(count / (time.perf_counter() - started))
            done[i] += count
    return [statistics.median(rate) for rate in rates]


def profile(step: Callable[[int], None], steps: int = 20) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for k in range(steps):
            step(k)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per figure")
    parser.add_argument("--profile", action="store_true", help="then profile our default training step")
    parser.add_argument("--bf16", action="store_true", help="also training as a bf16 run trains (see above)")
    args = parser.parse_args()
    try:
        import zuko
    except ImportError:
        raise SystemExit("zuko is not installed: pip install zuko   (this benchmark's own dependency)") from None
    print(f"latentflows {__version__}, zuko {zuko.__version__}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, {args.seconds:g} s per figure\n", flush=True)
    torch.manual_seed(0)
    reference_training = training_step(zuko_flow(), zuko_log_prob)
    reference_sampling = sampling_step(zuko_flow(), zuko_sample)
    rows = []
    for label, options in [("default (permutations, batch norm)", {}),
                           ("without batch norm", {"normalization": "none"}),
                           ("as zuko's (alternating masks, no batch norm)", {"mixing": "none", "normalization": "none"})]:
        train = measure([training_step(ours(**options), ours_log_prob), reference_training], args.seconds)
        sample = measure([sampling_step(ours(**options), ours_sample), reference_sampling], args.seconds)
        rows.append((f"training, {label}", train))
        rows.append((f"sampling, {label}", sample))
        print(f"  measured: {label}", flush=True)
    gains = []
    if args.bf16:
        zuko_bf16 = training_step(zuko_flow(), zuko_log_prob, lambda: torch.autocast("cpu", torch.bfloat16))
        for label, options in [("default", {}), ("without batch norm", {"normalization": "none"})]:
            ours_bf16 = training_step(ours(**options), ours_log_prob, lambda: conditioners_in(torch.bfloat16))
            ours_fp32 = training_step(ours(**options), ours_log_prob)  # in the same rounds: bf16's own gain
            mine, theirs, fp32 = measure([ours_bf16, zuko_bf16, ours_fp32], args.seconds)
            rows.append((f"training in bf16, {label} (zuko: autocast)", (mine, theirs)))
            gains.append((label, mine, fp32))
            print(f"  measured: bf16, {label}", flush=True)
    print("\n| per step, batch 256 (samples/s) | latentflows | zuko RealNVP (same run) | ratio |")
    print("|---|---:|---:|---:|")
    for label, (mine, theirs) in rows:
        print(f"| {label} | {mine * BATCH:,.0f} | {theirs * BATCH:,.0f} | {mine / theirs:.2f}x |")
    for label, bf16, fp32 in gains:
        print(f"\nlatentflows training, {label}: bf16 {bf16 * BATCH:,.0f} against fp32 {fp32 * BATCH:,.0f} samples/s "
              f"in the same rounds ({bf16 / fp32:.2f}x)")
    if args.profile:
        profile(training_step(ours(), ours_log_prob))


if __name__ == "__main__":
    main()
