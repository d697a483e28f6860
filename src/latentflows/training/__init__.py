"""Training: the loop (``Trainer``), its callbacks, objectives of named terms, the stages
that build them from a run config, and ``train``, which runs the stages in order."""

from ..data import Batches
from .adversarial import Adversarial, PatchDiscriminator, adaptive_weight, diff_augment
from .build import build_stages, validate_config
from .callbacks import (
                        CHECKPOINT_FORMAT,
                        Callback,
                        Checkpoint,
                        CosineLearningRate,
                        EarlyStopping,
                        EpochRecord,
                        JsonlLogger,
                        StepSchedule,
                        load_checkpoint,
                        read_checkpoint,
)
from .objective import ClassHead, NegativeLogLikelihood, Objective, Reconstruction, ScheduledTerm, Term
from .perceptual import Perceptual, normalized_distance
from .runner import train
from .stages import AutoencoderStage, FlowStage, Stage, StageContext, StagePlan
from .tensorboard import TensorBoardLogger
from .trainer import NonFiniteLossError, Trainer, Update, adam, supervised

__all__ = [
    "CHECKPOINT_FORMAT", "Callback", "Checkpoint", "CosineLearningRate", "EarlyStopping", "EpochRecord",
    "JsonlLogger", "StepSchedule", "TensorBoardLogger",
    "load_checkpoint", "read_checkpoint", "NegativeLogLikelihood", "Objective", "Reconstruction", "Term", "train",
    "AutoencoderStage", "FlowStage", "Stage", "StageContext", "StagePlan", "Batches", "NonFiniteLossError",
    "Adversarial", "PatchDiscriminator", "adaptive_weight", "diff_augment", "Perceptual", "normalized_distance",
    "ClassHead", "ScheduledTerm", "build_stages", "validate_config",
    "Trainer", "Update", "adam", "supervised",
]
