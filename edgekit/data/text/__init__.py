"""Real English sentences shipped with edgekit for text models: one set to calibrate with and a separate,
held-out set to evaluate on (`zoo:sentences` and `zoo:sentences:test`), so a transformer's int8 is judged on
sentences its ranges never saw."""

from __future__ import annotations

from pathlib import Path

SETS = {"train": "calibration.txt", "test": "evaluation.txt"}


def sentences_path(split: str = "train") -> Path:
    return Path(__file__).with_name(SETS[split])
