"""`distill()`: one call that trains a student against a teacher and measures the result, optionally next
to the same student trained alone (same initial weights, seed, epochs and optimizer): the comparison that
says whether distillation earned its keep.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from edgekit.train.distill.losses import DistillConfig
from edgekit.train.distill.metrics import stage_metrics
from edgekit.train.distill.predict import accuracy_on
from edgekit.train.distill.trainer import Data, TrainConfig, Trainer, TrainResult


@dataclass
class StageResult:
    student: nn.Module
    train: TrainResult
    metrics: dict[str, Any] = field(default_factory=dict)
    baseline: TrainResult | None = None


def distill(
    teacher: nn.Module, student: nn.Module, train: Any, eval_data: Any = None, *,
    loss: DistillConfig | None = None, config: TrainConfig | None = None, baseline: bool = False,
    log: Callable[[str], None] | None = None, sampler: Any = None,
) -> StageResult:
    """Distil `teacher` into `student` (trained in place) and return the stage metrics.

    With `baseline=True` a copy of the student, taken before training, is trained on the labels alone with
    the same TrainConfig; its accuracy is `metrics['student_alone_accuracy']`. `sampler` (scored data, see
    data_score) orders the distillation run only; the student-alone baseline keeps the shuffled order.
    """
    loss = loss or DistillConfig()
    config = config or TrainConfig()
    train_data = Data.of(train, "training data")
    evaluation = Data.of(eval_data, "evaluation data") if eval_data is not None else train_data
    sample_shape = tuple(train_data.x.shape[1:])
    initial = copy.deepcopy(student) if baseline else None

    trainer = Trainer(student, config, loss, teacher, log=log, sampler=sampler)
    result = trainer.fit(train_data, evaluation)
    metrics = stage_metrics(teacher, student, evaluation, sample_shape)
    metrics["loss"] = trainer.loss.describe() if trainer.loss is not None else loss.describe()
    metrics["epochs"] = config.epochs
    metrics["seed"] = config.seed
    if sampler is not None:
        metrics["data_scores"] = sampler.scores.report(len(train_data))
    stage = StageResult(student, result, metrics)
    if initial is not None:
        alone_config = replace(config, checkpoint=None, resume=False, desc=f"{config.desc} (student alone)")
        alone = Trainer(initial, alone_config, DistillConfig(alpha=0.0), None, log=log)
        stage.baseline = alone.fit(train_data, evaluation)
        metrics["student_alone_accuracy"] = accuracy_on(initial, evaluation)
        stage.metrics["baseline_history"] = stage.baseline.history
    return stage
