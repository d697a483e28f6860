"""Throughput of latentflows on this machine: training and generation speed, peak memory.

    python bench/bench.py            # about 1.5 minutes on 2 CPU cores
    python bench/bench.py --seconds 3
    python bench/bench.py --compile  # eager against torch.compile (compiling takes minutes)

Reference (the seed notebook's own code on our 2-core CPU, as reported in issue 3):
autoencoder 56 images/s, flow 740 samples/s at batch 32.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from latentflows import ConditionalRealNVP, ConvAutoencoder, LatentFlowPipeline
from latentflows.training import Batches, NegativeLogLikelihood, Objective, Reconstruction, Trainer, adam
from latentflows.training.stages import AutoencoderTraining, FlowTraining


def call(model, batch):
    """The stages' loss function: the stage model returns its objective's losses."""
    return model(*batch)


def rate(step, items_per_step: int, seconds: float, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        done += items_per_step
    return done / (time.perf_counter() - started)


def autoencoder_rate(width: int, batch: int, seconds: float, compile: bool = False) -> float:
    autoencoder = ConvAutoencoder(256, width)
    model = AutoencoderTraining(autoencoder, Objective({"reconstruction": Reconstruction()}))
    trainer = Trainer(model, adam(autoencoder.parameters(), 1e-4, 1e-5), call, progress=False, compile=compile)
    images = torch.randint(0, 256, (batch * 8, 3, 64, 64), dtype=torch.uint8)
    labels = torch.randint(0, 2, (batch * 8,))
    batches = iter(Batches([images, labels], batch, shuffle=True))
    model.train()

    def step():
        nonlocal batches
        try:
            trainer.train_step(next(batches))
        except StopIteration:
            batches = iter(Batches([images, labels], batch, shuffle=True))

    return rate(step, batch, seconds)


def flow_rate(batch: int, seconds: float, compile: bool = False) -> float:
    flow = ConditionalRealNVP(256, 2, couplings=12, hidden=[256, 256], standardize=True)  # the notebook's flow
    model = FlowTraining(flow, 0.0, Objective({"nll": NegativeLogLikelihood()}), torch.zeros(()))
    trainer = Trainer(model, adam(flow.parameters(), 1e-4, 1e-5), call, progress=False, compile=compile)
    x = torch.randn(batch, 256)
    context = torch.nn.functional.one_hot(torch.arange(batch) % 2, 2).float()
    flow.train()
    return rate(lambda: trainer.train_step((x, context)), batch, seconds)


def generation_rate(width: int, n: int, seconds: float) -> float:
    pipeline = LatentFlowPipeline(ConvAutoencoder(256, width), ConditionalRealNVP(256, 2, standardize=True),
                                  ["cat", "dog"]).eval()
    return rate(lambda: pipeline.generate("dog", n), n, seconds, warmup=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring time per figure")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile'd training steps")
    args = parser.parse_args()
    s = args.seconds
    if args.compile:
        for name, measure in [("flow train, batch 32", lambda c: flow_rate(32, s, c)),
                              ("flow train, batch 256", lambda c: flow_rate(256, s, c)),
                              ("autoencoder train, width 32, batch 64", lambda c: autoencoder_rate(32, 64, s, c))]:
            eager = measure(False)
            started = time.perf_counter()
            compiled = measure(True)
            total = time.perf_counter() - started
            print(f"{name}: eager {eager:7.1f}/s, compiled {compiled:7.1f}/s "
                  f"({compiled / eager:.2f}x; compiling and measuring took {total:.0f}s)", flush=True)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"autoencoder train, notebook architecture (width 64), batch 32: {autoencoder_rate(64, 32, s):7.1f} images/s")
    print(f"autoencoder train, notebook architecture (width 64), batch 64: {autoencoder_rate(64, 64, s):7.1f} images/s")
    print(f"autoencoder train, quick preset (width 32), batch 64:          {autoencoder_rate(32, 64, s):7.1f} images/s")
    print(f"flow train, notebook architecture, batch 32:                  {flow_rate(32, s):7.0f} samples/s")
    print(f"flow train, notebook architecture, batch 256 (our default):   {flow_rate(256, s):7.0f} samples/s")
    print(f"generation (flow + decoder, width 64), 256 at a time:          {generation_rate(64, 256, s):7.1f} images/s")
    print(f"generation (flow + decoder, width 32), 256 at a time:          {generation_rate(32, 256, s):7.1f} images/s")
    print(f"peak memory (resident): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
