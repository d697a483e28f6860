"""The presets (``seed``, ``quick``, ``best``): whole run configs to start from, and the
whole-flow specs that ``--flow NAME`` puts in a config.

Each preset is a ``RunConfig`` written out path by path, so that a reader sees every
setting that differs from the preset it starts from. ``train --preset NAME`` starts from
one; flags and ``--set`` then change it.
"""

from __future__ import annotations

import copy
from typing import Any

from .config import AE, FLOW, RunConfig


def _stage(kind: str, model: dict, terms: dict, **settings: Any) -> dict:
    return {"class": kind, "config": {**settings, "model": model, "terms": terms}}


_REALNVP: dict[str, Any] = {"class": "ConditionalRealNVP", "config": {
    "couplings": 12, "mask": "alternate", "mixing": "permutation", "normalization": "batchnorm",
    "bijection": {"class": "TanhAffine", "config": {}},
    "conditioner": {"class": "CouplingNet", "config": {"hidden": [256, 256], "shared": True,
                                                        "activation": "relu", "residual": False}},
    "standardize": True}}

# --flow NAME: the whole flow model (later flow options such as --couplings then change it)
FLOWS = {
    "realnvp": {"class": "ConditionalRealNVP", "config": {**copy.deepcopy(_REALNVP["config"]), "class_whitening": True}},
    "spatial": {"class": "SpatialRealNVP", "config": {"couplings": 8, "hidden": 32, "blocks": 1,
                                                      "class_linear": True, "standardize": True}},
}


def flow_spec(name: str) -> dict:
    """A ``--flow`` name -> a copy of its model spec (see ``FLOWS``).

    Example:
        >>> flow_spec("spatial")["class"], sorted(FLOWS)
        ('SpatialRealNVP', ['realnvp', 'spatial'])
    """
    return copy.deepcopy(FLOWS[name])


# The reference notebook's exact setup.
SEED = RunConfig({
    "preset": "seed", "seed": 0, "val_fraction": 0.1, "image_size": 64, "grad_clip": None, "compile": False,
    "stages": {
        "autoencoder": _stage(
            "AutoencoderStage",
            {"class": "ConvAutoencoder", "config": {"embedding_dim": 256, "width": 64, "fc_dim": 1024, "dropout": 0.2}},
            {"reconstruction": {"class": "Reconstruction", "config": {
                "loss": {"class": "MSELoss", "config": {"reduction": "mean"}}, "weight": 1.0, "target": "loss"}}},
            epochs=100, batch_size=32, lr=1e-4, weight_decay=1e-5),
        "flow": _stage(
            "FlowStage",
            copy.deepcopy(_REALNVP),
            {"nll": {"class": "NegativeLogLikelihood", "config": {"weight": 1.0, "target": "loss"}}},
            epochs=25, batch_size=32, lr=1e-4, weight_decay=1e-5, noise=0.0, patience=None),
    },
})

# The default: finishes on 2 CPU cores in under 15 minutes on the embedded data, install
# included. Chosen by measurement against the seed-style network at the same budget (trials
# and time-to-quality curves in docs/quality.md): an 8x8x4 spatial latent, L1, flips and a
# cosine learning rate keep colour and layout (PSNR +4.8 dB, the fidelity classifier
# recognises 0.80 of reconstructions against 0.51) and bring generated images closer to the
# photos in ImageNet features (Lite0 FD 217 against 255).
QUICK = SEED.with_values({
    "preset": "quick",
    f"{AE}.epochs": 20, f"{AE}.batch_size": 64, f"{AE}.lr": 1e-3,
    f"{AE}.terms.reconstruction.config.loss": {"class": "L1Loss", "config": {"reduction": "mean"}},
    f"{AE}.schedule": "cosine", f"{AE}.flip": True,
    f"{FLOW}.epochs": 100, f"{FLOW}.batch_size": 256, f"{FLOW}.lr": 1e-3, f"{FLOW}.noise": 0.05,
    f"{FLOW}.patience": 15,
    f"{AE}.model": {"class": "SpatialAutoencoder", "config": {"embedding_dim": 256, "width": 32, "blocks": 1}},
    f"{AE}.terms.class_head": {"class": "ClassHead", "config": {"weight": 0.1}},
    f"{FLOW}.model": flow_spec("spatial"),
    # sample, evaluate and the demo guide by the flow's class posterior unless told otherwise:
    # more of the class asked for, closer to the photos, no less varied (docs/quality.md, G3)
    "sampling": {"guidance": 64.0, "candidates": 32},
})

# The longest budget: a wider spatial autoencoder (width 64, two residual blocks) with an
# adversarial term (PatchGAN, hinge, VQGAN's adaptive weight, LeCam-regularised so the
# discriminator cannot win outright, on after 20 epochs), 60 epochs: 72 to 77 minutes of
# training on 2 AVX-512 BF16 CPU cores (measured in docs/quality.md, "`best` on this CPU").
# The class head is on for the first 20 epochs only: left on, it learns the training labels by
# epoch 30 and then only pushes the codes apart (docs/quality.md, H20).
BEST = QUICK.with_values({
    "preset": "best",
    f"{AE}.epochs": 60, f"{AE}.lr": 5e-4,
    f"{AE}.model": {"class": "SpatialAutoencoder", "config": {"embedding_dim": 256, "width": 64, "blocks": 2}},
    # counted in epochs, so the switch falls at epoch 20 on any dataset (1,860 steps on the pets)
    f"{AE}.terms.class_head.config.stop": 20, f"{AE}.terms.class_head.config.unit": "epochs",
    f"{AE}.terms.adversarial": {"class": "Adversarial",
                                "config": {"weight": 0.5, "start": 20, "unit": "epochs", "lecam": 0.3}},
})

PRESETS = {"quick": QUICK, "seed": SEED, "best": BEST}
