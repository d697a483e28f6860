"""Run by tests/test_distributed.py under a launcher (2 processes) or alone (1 process).

``python distributed_worker.py OUT [glow]``: the gradients of the first global batch of each stage
(averaged over processes), then a short training run; each process saves what it ended with.
"""

import atexit
import os
import sys
from pathlib import Path

import torch

import latentflows as lf
from latentflows.cli.options import with_options
from latentflows.distributed import as_runtime
from latentflows.runs import apply_limit, run_split
from latentflows.storage import save_safetensors
from latentflows.training import Trainer, build_stages
from latentflows.training.stages import StageContext

# no per-step randomness (flips, noise): processes draw it for their own rows, one process for all
CONFIG = with_options(
    lf.PRESETS["quick"], width=8, embedding_dim=64, ae_epochs=1, ae_batch_size=32, flow="realnvp", couplings=2, hidden=[16],
    flow_epochs=2, flow_batch_size=64, flip=False, flow_noise=0.0).with_values({"stages.flow.config.patience": None})


def first_gradients(pets, runtime):
    """name -> the averaged gradient of the first global batch, for the models of both stages."""
    train_set, val_set = run_split(pets, CONFIG)
    context = StageContext(train_set, val_set, runtime, seed=0, image_size=64)
    grads = {}
    for name, stage in build_stages(CONFIG):
        torch.manual_seed(1)  # the same initial weights in every process, and alone
        plan = stage.plan(context)
        trainer = Trainer(plan.model, plan.updates, plan.loss_fn, runtime=runtime, progress=False)
        batch = next(iter(runtime.shard(plan.train_batches)))
        trainer._step(runtime.move(batch))
        for update in trainer.updates:
            runtime.sync_gradients(update.parameters)
        for key, parameter in plan.model.named_parameters():
            if parameter.grad is not None:
                grads[f"{name}.{key}"] = parameter.grad
        context.models[name] = plan.product()
    return grads


def record_exit(out):
    """Whether the process group is still up as Python exits; registered before the runtime's own
    exit hook, so it runs after it (last in, first out)."""
    Path(out, f"exit-{os.environ.get('RANK', 'single')}.txt").write_text(str(torch.distributed.is_initialized()))


def main(out, variant="quick"):
    atexit.register(record_exit, out)
    runtime = as_runtime("cpu")
    tag = f"rank{runtime.rank}" if runtime.world_size > 1 else "single"
    pets = apply_limit(lf.load_images(), 200, seed=0)
    if variant in ("glow", "spatial"):  # layers initialised from each process's own first batch
        config = (with_options(CONFIG, normalization="actnorm", mixing="lu", flow_lr=1e-4) if variant == "glow" else
                  with_options(CONFIG, flow="spatial", couplings=2, channels=8))  # ContextAffine, ActNorm
        pipeline = lf.train(pets, config, None, progress=False, figures=False, device=runtime)
        save_safetensors(f"{out}/{tag}-{variant}.safetensors", pipeline.state_dict(), "test")
        return
    save_safetensors(f"{out}/{tag}-grads.safetensors", first_gradients(pets, runtime), "test")
    pipeline = lf.train(pets, CONFIG, None, progress=False, figures=False, device=runtime)
    save_safetensors(f"{out}/{tag}-weights.safetensors", pipeline.state_dict(), "test")


if __name__ == "__main__":
    main(*sys.argv[1:])
