"""How close an artifact's outputs are to the FP32 reference's. One definition, used by export
verification, the benchmark harness and the decision helper alike. All accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def top1_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    ref = reference.reshape(len(reference), -1).argmax(1)
    got = candidate.reshape(len(candidate), -1).argmax(1)
    return float((ref == got).mean())


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio: 10 log10(|ref|^2 / |ref - cand|^2); inf when identical."""
    ref = reference.astype(np.float64)
    noise = float(np.sum((ref - candidate.astype(np.float64)) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.reshape(len(logits), -1).argmax(1) == labels.reshape(-1)).mean())


def compare(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None = None) -> dict[str, Any]:
    """Agreement, SQNR and error of `candidate` against `reference`; accuracies when labels are given."""
    out: dict[str, Any] = {
        "samples": len(reference),
        "agreement": top1_agreement(reference, candidate),
        "sqnr_db": _finite(sqnr_db(reference, candidate)),
        "max_abs_err": float(np.max(np.abs(reference.astype(np.float64) - candidate))) if reference.size else 0.0,
    }
    if labels is not None:
        ref_acc = accuracy(reference, labels)
        acc = accuracy(candidate, labels)
        out.update({"accuracy": acc, "reference_accuracy": ref_acc, "accuracy_drop": ref_acc - acc})
    return out


def _finite(x: float) -> float | None:
    """JSON has no inf: an exact match's SQNR is recorded as null and shown as 'exact'."""
    return None if math.isinf(x) else x
