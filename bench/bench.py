"""Throughput of latentflows against the seed notebook's code, in the same run, and where the time goes.

    python bench/bench.py                  # about 1.5 minutes on 2 CPU cores (--seconds 5)
    python bench/bench.py --seconds 0.5    # a smoke run, figures not meaningful
    python bench/bench.py --device cuda    # the same on a GPU (default: auto, a GPU when there is one)
    python bench/bench.py --compile        # eager against torch.compile (compiling takes minutes)
    python bench/bench.py --limit          # each autoencoder as a share of the machine's matmul limit

With ``--limit``: the machine's practical limit, 2048x2048 matrix products in fp32 and in bf16
(GFLOP/s), then each autoencoder's training FLOPs per image (``torch.utils.flop_counter``:
convolutions and matrix products, forward and backward) and its images/s and GFLOP/s in
fp32, in bf16 autocast, and in bf16 with the step compiled (``torch.compile``, inductor),
each as a share of the limit of its precision; the seed notebook's own step (fp32, its
DataLoader) is timed in the same run. Compiling takes a minute or two per network.

Prints the device and torch version, then three Markdown tables.

Throughput. Each row times latentflows' code and, where there is one, the seed notebook's
code re-implemented in ``bench/seed_reference.py`` (its approach, our code), in the same
process, alternating between the two in rounds of ``--seconds / 2`` after two warm-up steps
each, so that both see the same machine load. ``ratio`` is latentflows / seed (above 1:
latentflows is faster). The rows:

* autoencoder train, notebook architecture, batch 32 (images/s): the notebook's DCGAN-style
  network (``ConvAutoencoder(256, 64)``, MSE, Adam lr 1e-4 weight decay 1e-5) trained by our
  ``Trainer`` (channels_last weights, fused Adam) from in-memory uint8 batches cut by
  ``Batches``; against the notebook's step: contiguous NCHW, plain Adam, ``loss.item()``
  each step, fed by a ``DataLoader`` that fetches and decodes every photo with Pillow and
  normalizes it item by item (the decoding is part of the seed's figure, as it was part of
  the notebook's training). The embedded photos are 64x64 JPEGs where the notebook decodes
  full-size ones, so the seed's feed cost is a lower bound.
* autoencoder train, quick preset, batch 64 (images/s): the default ``quick`` preset's
  ``SpatialAutoencoder`` with its objective (L1 + class head, flips), ours only.
* flow train, notebook architecture, batch 32 and batch 256 (samples/s): the notebook's
  conditional RealNVP (12 couplings with hidden [256, 256], permutations, batch norm,
  tanh-bounded scale) as the ``seed`` preset builds it, trained by our ``Trainer`` from
  ``Batches`` of 6000 in-memory embeddings; against the notebook's ``LinearRNVP``-style flow
  (Python loop over 36 layers, full-width coupling outputs, three hidden layers per network
  as the notebook's constructor makes them, ``torch.distributions`` prior, plain Adam), fed
  by a ``DataLoader`` over a list of (embedding, label) pairs as in the notebook. The
  notebook trains at batch 32; batch 256 (our default) runs its code at our batch size.
* generation, 256 images (images/s): ``LatentFlowPipeline.generate`` (sample, rank by
  log-density, decode to uint8) with the notebook's networks; against the notebook's
  sampling (prior sample, inverse through the layers, decode, sort, copy to the CPU). A
  second row times the quick preset's networks, ours only. Untrained weights: speed only.

Where the time goes. ``torch.profiler`` (CPU activities) over a few steps of our quick-preset
autoencoder step (batch 64) and our flow step (batch 256): self CPU time per operator group,
top groups with their share; ``autograd engine`` is the backward pass's bookkeeping,
``between operators`` is host time in no operator (Python). On a GPU these are host-side
times (launching kernels), not GPU time. Then, for the seed reference's steps, the share of
each step spent in the ``DataLoader``'s ``next()`` (fetching, decoding and collating) against
forward, loss, backward and Adam, from the steps of the throughput table.

The figures need an otherwise idle machine; the last line is the process's peak resident
memory (and the GPU's peak allocation on CUDA). Before this bench measured both in one
run, the notebook's code was timed on our 2-core CPU at 56 images/s (autoencoder) and 740
samples/s (flow, batch 32), as reported in issue 3.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import resource
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator

import seed_reference as seed  # bench/seed_reference.py, found next to this script
import torch
from torch import Tensor
from torch.profiler import ProfilerActivity, profile, record_function

from latentflows import PRESETS, LatentFlowPipeline, RunConfig, __version__
from latentflows.cli.options import with_options
from latentflows.runtime import DEVICE_HELP, Runtime, resolve_device
from latentflows.training import Batches, Trainer, build_stages
from latentflows.training.stages import AutoencoderTraining, FlowTraining

ROWS = 6000  # in-memory images or embeddings the batches are cut from (about the embedded training split)
IMAGE_SIZE = 64
NEXT_BATCH = "bench: next batch"  # the profiler range around our feed's next()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that the clock reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@contextlib.contextmanager
def notebook_settings() -> Iterator[None]:
    """The switches the seed notebook runs under: cuDNN deterministic without autotuning, and
    full-precision float32 matrix products (torch's default); restored after."""
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()
    try:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        torch.set_float32_matmul_precision("highest")
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[0], saved[1]
        torch.set_float32_matmul_precision(saved[2])


# ---------------------------------------------------------------------------- timing

@dataclass
class Contender:
    """A step to time, the items it processes and the process-wide settings it runs under."""

    step: Callable[[], object]
    items: int
    settings: Callable[[], ContextManager]
    seconds: float = 0.0
    done: int = 0

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds else float("nan")


def measure(contenders: list[Contender], seconds: float, device: torch.device, warmup: int = 2,
            rounds: int = 2) -> list[float]:
    """Items per second of each contender: warm-up steps, then ``rounds`` turns each of
    ``seconds / rounds`` (at least one step), alternating between the contenders."""
    for contender in contenders:
        with contender.settings():
            for _ in range(warmup):
                contender.step()
            synchronize(device)
        reset = getattr(contender.step, "reset_counts", None)
        if reset is not None:
            reset()
    for _ in range(rounds):
        for contender in contenders:
            with contender.settings():
                synchronize(device)
                started = time.perf_counter()
                while True:
                    contender.step()
                    contender.done += contender.items
                    if time.perf_counter() - started >= seconds / rounds:
                        break
                synchronize(device)
                contender.seconds += time.perf_counter() - started
    return [contender.rate for contender in contenders]


# ---------------------------------------------------------------------------- latentflows' steps

def call(model, batch):
    """The stages' loss function: the stage model returns its objective's losses."""
    return model(*batch)


def endless(batches: Batches) -> Iterator[tuple[Tensor, ...]]:
    """Batches epoch after epoch (each epoch reshuffled)."""
    while True:
        yield from batches


def feed_step(trainer: Trainer, tensors: list[Tensor], batch: int) -> Callable[[], None]:
    """One training step per call on batches cut from in-memory tensors, as the stages do."""
    batches = endless(Batches(trainer.runtime.place(tensors), batch, shuffle=True, drop_last=True))

    def step() -> None:
        with record_function(NEXT_BATCH):
            cut = next(batches)
        trainer.train_step(cut)

    return step


def autoencoder_step(config: RunConfig, batch: int, runtime: Runtime, compile: bool = False) -> Callable[[], None]:
    """The autoencoder stage's training step of a run config, on random uint8 images."""
    stage = dict(build_stages(config))["autoencoder"]
    autoencoder = stage.build_model(IMAGE_SIZE, 2)
    objective = stage.objective()
    for term in objective.terms.values():
        term.bind({"embedding_dim": autoencoder.embedding_dim, "classes": 2, "image_size": IMAGE_SIZE})
    autoencoder, objective = autoencoder.to(runtime.device), objective.to(runtime.device)
    model = AutoencoderTraining(autoencoder, objective, stage.flip, stage.latent_noise).train()
    trainer = Trainer(model, stage.updates(autoencoder, objective), call, runtime=runtime, progress=False,
                      compile=compile)
    images = torch.randint(0, 256, (ROWS, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    return feed_step(trainer, [images, torch.randint(0, 2, (ROWS,))], batch)


def embeddings(rows: int = ROWS) -> tuple[Tensor, Tensor]:
    """Standardized stand-in embeddings (256 numbers) and cat/dog labels."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(rows, 256, generator=generator), torch.randint(0, 2, (rows,), generator=generator)


def flow_step(batch: int, runtime: Runtime, compile: bool = False) -> Callable[[], None]:
    """The ``seed`` preset's flow (the notebook's architecture) trained as the flow stage does."""
    stage = dict(build_stages(PRESETS["seed"]))["flow"]
    flow = stage.build_flow(256, 2, 0).to(runtime.device)
    objective = stage.objective().to(runtime.device)
    model = FlowTraining(flow, stage.noise, objective, torch.zeros((), device=runtime.device)).train()
    trainer = Trainer(model, stage.updates(flow, objective), call, runtime=runtime, progress=False,
                      compile=compile, autocast=False)
    x, labels = embeddings()
    return feed_step(trainer, [x, torch.nn.functional.one_hot(labels, 2).float()], batch)


def generation_step(config: RunConfig, n: int, runtime: Runtime) -> Callable[[], object]:
    stages = dict(build_stages(config))
    pipeline = LatentFlowPipeline(stages["autoencoder"].build_model(IMAGE_SIZE, 2), stages["flow"].build_flow(256, 2, 0),
                                  ["cat", "dog"]).to(runtime.device).eval()
    return lambda: pipeline.generate("dog", n)


# ---------------------------------------------------------------------------- the seed's steps

def seed_generation_step(n: int, device: torch.device) -> Callable[[], object]:
    flow = seed.SeedRealNVP().to(device).eval()
    autoencoder = seed.seed_autoencoder(device).eval()
    mean, std = torch.zeros(256, device=device), torch.ones(256, device=device)
    return lambda: seed.seed_generate(flow, autoencoder, n, 1, mean, std)


# ---------------------------------------------------------------------------- profile

GROUPS = [  # (group, pattern on the lower-cased operator name); the first match wins
    ("autograd engine (backward bookkeeping)", r"^autograd::|^[a-z0-9_]*backward\d+$|accumulategrad"),
    ("convolution backward", r"conv.*backward|backward.*conv"),
    ("convolution", r"conv"),
    ("group norm (fwd + bwd)", r"group_norm"),
    ("batch norm (fwd + bwd)", r"batch_norm"),
    ("matmul / addmm (fwd + bwd)", r"^aten::(addmm|mm|bmm|matmul|linear|baddbmm|addmv|mv)$"),
    ("upsample (fwd + bwd)", r"upsample"),
    ("activations (fwd + bwd)", r"relu|threshold|silu|sigmoid|tanh|gelu|elu"),
    ("copies, layout and dtype", r"^aten::(to|_to_copy|copy_|contiguous|clone|empty_like|empty_strided|empty)$"),
    ("indexing, index_put (permutations), cat, flip",
     r"index|gather|scatter|^aten::(cat|stack|flip|where|take|masked_\w+)$"),
    ("reductions (sum, mean, var, norm)", r"^aten::(sum|mean|var|std|norm|linalg_vector_norm|amax|max|min|prod)$"),
]
OPTIMIZER = "optimizer (Adam step, zero_grad)"
FEED = "data feed (cutting the batch)"
BETWEEN = "between operators (Python, host)"
OTHER = "other element-wise ops"


def group_of(event) -> str:
    """The group of a profiler event: by the range it runs in (optimizer, our feed), else by name."""
    parent = event
    while parent is not None:
        if parent.name.startswith("Optimizer.") or "adam" in parent.name.lower():
            return OPTIMIZER
        if parent.name == NEXT_BATCH:
            return FEED
        parent = parent.cpu_parent
    name = event.name.lower()
    for group, pattern in GROUPS:
        if re.search(pattern, name):
            return group
    return OTHER


def where_time_goes(step: Callable[[], object], steps: int, device: torch.device,
                    settings: Callable[[], ContextManager]) -> tuple[list[tuple[str, float]], float]:
    """(group, self CPU seconds per step) for ``steps`` profiled steps, largest first, and
    the wall-clock seconds per step (with the profiler's overhead)."""
    with settings():
        step()
        synchronize(device)
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            started = time.perf_counter()
            for _ in range(steps):
                step()
            synchronize(device)
            wall = time.perf_counter() - started
    totals: Counter[str] = Counter()
    for event in profiler.events():
        totals[group_of(event)] += event.self_cpu_time_total / 1e6
    between = wall - sum(totals.values())
    if between > 0:  # on a GPU the backward pass runs in its own thread: operator times may add up to more
        totals[BETWEEN] += between
    return [(group, seconds / steps) for group, seconds in totals.most_common()], wall / steps


def profile_table(title: str, groups: list[tuple[str, float]], wall: float, top: int = 8) -> list[str]:
    total = sum(seconds for _, seconds in groups)
    lines = [f"| {title} | ms per step | share |", "|---|---:|---:|"]
    for group, seconds in groups[:top]:
        lines.append(f"| {group} | {seconds * 1e3:.2f} | {100 * seconds / total:.1f}% |")
    rest = groups[top:]
    if rest:
        seconds = sum(s for _, s in rest)
        names = "; ".join(group.split(" (")[0] for group, _ in rest)
        lines.append(f"| the rest: {names} | {seconds * 1e3:.2f} | {100 * seconds / total:.1f}% |")
    lines.append(f"| **step, wall clock (profiled)** | **{wall * 1e3:.2f}** | |")
    return lines


# ---------------------------------------------------------------------------- output

def ratio(ours: float, reference: float | None) -> str:
    return f"{ours / reference:.2f}x" if reference else "-"


def figure(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def compile_comparison(seconds: float, device: torch.device, runtime: Runtime) -> None:
    """Eager against torch.compile'd training steps (the ``--compile`` mode)."""
    width32 = with_options(PRESETS["seed"], width=32)
    for name, make, items in [("flow train, batch 32", lambda c: flow_step(32, runtime, c), 32),
                              ("flow train, batch 256", lambda c: flow_step(256, runtime, c), 256),
                              ("autoencoder train, width 32, batch 64", lambda c: autoencoder_step(width32, 64, runtime, c),
                               64)]:
        [eager] = measure([Contender(make(False), items, runtime.session)], seconds, device)
        started = time.perf_counter()
        [compiled] = measure([Contender(make(True), items, runtime.session)], seconds, device)
        total = time.perf_counter() - started
        print(f"{name}: eager {eager:7.1f}/s, compiled {compiled:7.1f}/s "
              f"({compiled / eager:.2f}x; compiling and measuring took {total:.0f}s)", flush=True)


# ---------------------------------------------------------------------------- the machine's limit

def matmul_limit(dtype: torch.dtype, seconds: float, device: torch.device, size: int = 2048) -> float:
    """GFLOP/s of ``size`` x ``size`` matrix products in ``dtype``: the practical peak of this machine."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    step = lambda: torch.mm(a, b)  # noqa: E731
    [rate] = measure([Contender(step, 1, contextlib.nullcontext)], seconds, device, warmup=3)
    return rate * 2 * size**3 / 1e9


def training_flops(step: Callable[[], None], items: int) -> float:
    """FLOPs per item of one training step (forward and backward), counted by torch's flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops() / items


def limit_table(seconds: float, device: torch.device) -> None:
    """Each autoencoder's training throughput as a share of the measured matmul limit."""
    limits = {"fp32": matmul_limit(torch.float32, seconds, device), "bf16": matmul_limit(torch.bfloat16, seconds, device)}
    print(f"matmul limit (2048x2048): fp32 {limits['fp32']:,.0f} GFLOP/s, bf16 {limits['bf16']:,.0f} GFLOP/s\n",
          flush=True)
    networks = [("notebook architecture, batch 32", PRESETS["seed"], 32), ("quick, batch 64", PRESETS["quick"], 64),
                ("best, batch 64", PRESETS["best"], 64)]
    print("| autoencoder training | GFLOP per image | precision | images/s | GFLOP/s | share of the limit |")
    print("|---|---:|---|---:|---:|---:|")
    for name, config, batch in networks:
        flops = training_flops(autoencoder_step(config, batch, Runtime(device, "fp32")), batch)
        modes = [("fp32", "fp32", False), ("bf16", "bf16", False), ("bf16, compiled", "bf16", True)]
        if name.startswith("notebook"):
            modes.insert(0, ("fp32, seed notebook's step", "seed", False))
        for label, precision, compiled in modes:
            if precision == "seed":
                contender = Contender(seed.SeedAutoencoderStep(device), batch, notebook_settings)
                precision = "fp32"
            else:
                runtime = Runtime(device, precision)
                contender = Contender(autoencoder_step(config, batch, runtime, compiled), batch, runtime.session)
            [rate] = measure([contender], seconds, device, warmup=3 if compiled else 2)
            gflops = rate * flops / 1e9
            print(f"| {name} | {flops / 1e9:.3f} | {label} | {rate:,.1f} | {gflops:,.0f} | "
                  f"{100 * gflops / limits[precision]:.0f}% |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per figure (each side of a row)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--compile", action="store_true", help="measure eager against torch.compile'd training steps")
    parser.add_argument("--limit", action="store_true",
                        help="each autoencoder's training throughput as a share of the machine's matmul limit")
    parser.add_argument("--profile-steps", type=int, default=4, help="autoencoder steps profiled (flow: 4x as many)")
    args = parser.parse_args()
    s, device = args.seconds, resolve_device(args.device)
    runtime = Runtime(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"latentflows {__version__}, torch {torch.__version__}, device {device} ({name}), {s:g} s per figure\n",
          flush=True)
    if args.compile:
        compile_comparison(s, device, runtime)
        return
    if args.limit:
        limit_table(s, device)
        return

    quick, notebook = PRESETS["quick"], PRESETS["seed"]
    rows: list[tuple[str, float, float | None]] = []

    def row(label: str, ours: Contender, reference: Contender | None = None, warmup: int = 2) -> None:
        rates = measure([ours] + ([reference] if reference else []), s, device, warmup=warmup)
        rows.append((label, rates[0], rates[1] if reference else None))
        print(f"  measured: {label}", flush=True)

    seed_ae = seed.SeedAutoencoderStep(device)
    row("autoencoder train, notebook architecture, batch 32 (images/s)",
        Contender(autoencoder_step(notebook, 32, runtime), 32, runtime.session),
        Contender(seed_ae, 32, notebook_settings))
    quick_ae = autoencoder_step(quick, 64, runtime)
    row("autoencoder train, quick preset, batch 64 (images/s)", Contender(quick_ae, 64, runtime.session))
    x, labels = embeddings()
    seed_flows = {}
    flows = {}
    for batch in (32, 256):
        flows[batch] = flow_step(batch, runtime)
        seed_flows[batch] = seed.SeedFlowStep(x, labels, batch, device)
        row(f"flow train, notebook architecture, batch {batch} (samples/s)",
            Contender(flows[batch], batch, runtime.session), Contender(seed_flows[batch], batch, notebook_settings))
    row("generation, notebook architecture, 256 at a time (images/s)",
        Contender(generation_step(notebook, 256, runtime), 256, runtime.session),
        Contender(seed_generation_step(256, device), 256, notebook_settings), warmup=1)
    row("generation, quick preset, 256 at a time (images/s)",
        Contender(generation_step(quick, 256, runtime), 256, runtime.session), warmup=1)

    print("\n| throughput | latentflows | seed notebook (same run) | ratio |")
    print("|---|---:|---:|---:|")
    for label, ours, reference in rows:
        print(f"| {label} | {figure(ours)} | {figure(reference)} | {ratio(ours, reference)} |")

    print("\nWhere the time goes (torch.profiler, self CPU time per operator group):\n", flush=True)
    for title, step, steps in [("quick-preset autoencoder step, batch 64", quick_ae, args.profile_steps),
                               ("flow step, batch 256", flows[256], 4 * args.profile_steps)]:
        groups, wall = where_time_goes(step, steps, device, runtime.session)
        print("\n".join(profile_table(title, groups, wall)) + "\n", flush=True)

    print("| seed reference step | ms per step | in DataLoader next() (fetch, decode, collate) | "
          "forward, loss, backward, Adam |")
    print("|---|---:|---:|---:|")
    for title, step in [("autoencoder, batch 32", seed_ae), ("flow, batch 32", seed_flows[32]),
                        ("flow, batch 256", seed_flows[256])]:
        per_step, data = step.step_seconds / step.steps, step.data_seconds / step.steps
        print(f"| {title} | {per_step * 1e3:.1f} | {data * 1e3:.1f} ms ({100 * data / per_step:.1f}%) | "
              f"{(per_step - data) * 1e3:.1f} ms ({100 * (1 - data / per_step):.1f}%) |")

    peak = f"\npeak memory (resident): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    if device.type == "cuda":
        peak += f"; GPU peak allocated: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB"
    print(peak)


if __name__ == "__main__":
    main()
