"""Training: the LSQ training loop (loop), the fast recipe's optimizer (muon), device-resident batches
(device_batches); global batch norm for data-parallel CPU runs is in dcsim.parallel.global_bn.

The loop's names are re-exported here (dcsim.training.train, dcsim.training.TrainConfig, ...)."""

from .loop import (
    OPTIMIZERS,
    SCHEDULES,
    TRAIN_PRECISIONS,
    Augment,
    FloatStage,
    Normalization,
    TrainConfig,
    TrainRuntime,
    accuracy,
    budget_config,
    distillation_loss,
    learning_rate,
    make_optimizer,
    make_teacher,
    measure_epoch_seconds,
    milestones,
    plan_epochs,
    predict_logits,
    set_learning_rate,
    split_accuracy,
    stage_label_smoothing,
    train,
)

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "TRAIN_PRECISIONS",
    "Augment",
    "FloatStage",
    "Normalization",
    "TrainConfig",
    "TrainRuntime",
    "accuracy",
    "budget_config",
    "distillation_loss",
    "learning_rate",
    "make_optimizer",
    "make_teacher",
    "measure_epoch_seconds",
    "milestones",
    "plan_epochs",
    "predict_logits",
    "set_learning_rate",
    "split_accuracy",
    "stage_label_smoothing",
    "train",
]
