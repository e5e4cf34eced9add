"""Real English sentences shipped with edgekit for text models: one set to calibrate with and a separate,
held-out set to evaluate on (`zoo:sentences` and `zoo:sentences:test`), so a transformer's int8 is judged on
sentences its ranges never saw."""

from __future__ import annotations

from pathlib import Path

SETS = {"train": "calibration.txt", "test": "evaluation.txt"}


def sentences_path(split: str = "train") -> Path:
    return Path(__file__).with_name(SETS[split])


def zoo_sentences(spec: str, what: str = "data") -> Path:
    """The file `zoo:sentences` (calibration) or `zoo:sentences:test` (held out) names; one EdgekitError for
    any other split."""
    from edgekit.errors import EdgekitError

    split = spec.split(":")[2] if spec.count(":") == 2 else "train"
    if split not in SETS or spec.count(":") > 2:
        raise EdgekitError(f"unknown {what} '{spec}'; available: zoo:sentences (calibration), zoo:sentences:test")
    return sentences_path(split)
