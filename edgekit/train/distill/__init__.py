"""Knowledge distillation: composable losses, schedules, a DDP-ready trainer and the metrics of each stage.

    from edgekit.train.distill import DistillConfig, TrainConfig, distill
    result = distill(teacher, student, train, test, loss=DistillConfig(alpha=0.9, temperature=1),
                     config=TrainConfig(epochs=20), baseline=True)
    result.metrics["retention"], result.metrics["student_alone_accuracy"]
"""

from edgekit.train.distill.losses import (
    AttentionMSE,
    DistillationLoss,
    DistillConfig,
    FeatureMSE,
    HiddenCosine,
    LayerPair,
    kd_loss,
    soft_target_kl,
)
from edgekit.train.distill.metrics import count_macs, count_params, linear_cka, penultimate_features, stage_metrics
from edgekit.train.distill.predict import accuracy_on
from edgekit.train.distill.schedules import (
    ConstantAlpha,
    ConstantTemperature,
    LearnableTemperatureConfig,
    LinearAlpha,
    StagedTemperature,
    parse_alpha,
    parse_temperature,
)
from edgekit.train.distill.stage import StageResult, distill
from edgekit.train.distill.trainer import Data, TrainConfig, Trainer, TrainResult

__all__ = [
    "AttentionMSE",
    "ConstantAlpha",
    "ConstantTemperature",
    "Data",
    "DistillConfig",
    "DistillationLoss",
    "FeatureMSE",
    "HiddenCosine",
    "LayerPair",
    "LearnableTemperatureConfig",
    "LinearAlpha",
    "StageResult",
    "StagedTemperature",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "accuracy_on",
    "count_macs",
    "count_params",
    "distill",
    "kd_loss",
    "linear_cka",
    "parse_alpha",
    "parse_temperature",
    "penultimate_features",
    "soft_target_kl",
    "stage_metrics",
]
