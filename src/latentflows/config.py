"""Training settings and the named presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace


@dataclass
class TrainConfig:
    """Every knob of a training run; saved in the run's config.json."""

    preset: str = "quick"
    seed: int = 0
    val_fraction: float = 0.1
    image_size: int = 64
    # autoencoder
    embedding_dim: int = 256
    width: int = 64
    fc_dim: int = 1024
    dropout: float = 0.2
    ae_epochs: int = 100
    ae_batch_size: int = 32
    ae_lr: float = 1e-4
    ae_weight_decay: float = 1e-5
    ae_loss: str = "mse"  # or "huber" / "huber:THRESHOLD"
    # flow
    couplings: int = 12
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    batch_norm: bool = True
    permute: bool = True
    mask: str = "alternate"
    shared_network: bool = True
    residual: bool = False  # residual blocks in the coupling networks
    flow_epochs: int = 25
    flow_batch_size: int = 32
    flow_lr: float = 1e-4
    flow_weight_decay: float = 1e-5
    scale_fn: str = "tanh"  # coupling scale: tanh-bounded log-scale, or softplus
    flow_noise: float = 0.0  # std of Gaussian noise added to embeddings during flow training
    flow_patience: int | None = None  # stop the flow after this many epochs without a better val NLL
    grad_clip: float | None = None
    compile: bool = False  # torch.compile the training steps (slower on CPU at our sizes; see README)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def validate(self) -> "TrainConfig":
        positive = ["embedding_dim", "width", "fc_dim", "ae_epochs", "ae_batch_size", "couplings",
                    "flow_epochs", "flow_batch_size"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("ae_lr", "flow_lr"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be between 0 and 1, got {getattr(self, name)}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val-fraction must be between 0 and 1, got {self.val_fraction}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.scale_fn not in ("tanh", "softplus"):
            raise ValueError(f"scale-fn must be tanh or softplus, got {self.scale_fn!r}")
        if self.mask not in ("alternate", "half"):
            raise ValueError(f"mask must be alternate or half, got {self.mask!r}")
        if self.flow_noise < 0:
            raise ValueError(f"flow-noise must be non-negative, got {self.flow_noise}")
        if any(h < 1 for h in self.hidden) or not self.hidden:
            raise ValueError(f"hidden sizes must be positive integers, got {self.hidden}")
        return self


# The seed notebook's exact setup.
SEED = TrainConfig(preset="seed")

# The default: finishes on 2 CPU cores in under 15 minutes on the embedded data
# (settings chosen by measured validation loss and by looking at samples; see README).
QUICK = replace(
    SEED, preset="quick", width=32, ae_epochs=20, ae_batch_size=64, ae_lr=3e-4,
    flow_epochs=100, flow_batch_size=256, flow_lr=1e-3, flow_noise=0.05, flow_patience=15,
)

PRESETS = {"quick": QUICK, "seed": SEED}
