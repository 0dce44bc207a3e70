"""Training: the LSQ training loop (loop), device-resident batches (device_batches) and global batch norm
for data-parallel CPU runs (global_bn).

The loop's names are re-exported here (dcsim.training.train, dcsim.training.TrainConfig, ...)."""

from .loop import (
    SCHEDULES,
    TRAIN_PRECISIONS,
    Augment,
    Normalization,
    TrainConfig,
    TrainRuntime,
    accuracy,
    budget_config,
    learning_rate,
    measure_epoch_seconds,
    milestones,
    plan_epochs,
    predict_logits,
    split_accuracy,
    train,
)

__all__ = [
    "SCHEDULES",
    "TRAIN_PRECISIONS",
    "Augment",
    "Normalization",
    "TrainConfig",
    "TrainRuntime",
    "accuracy",
    "budget_config",
    "learning_rate",
    "measure_epoch_seconds",
    "milestones",
    "plan_epochs",
    "predict_logits",
    "split_accuracy",
    "train",
]
