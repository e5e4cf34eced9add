"""How close an artifact's outputs are to the FP32 reference's. One definition, used by export
verification, the benchmark harness and the decision helper alike. All accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95 % interval of a proportion: sound near 0 and 1, where agreement figures live (the normal
    approximation would put 0.98 on 50 samples at 0.94-1.02)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, resamples: int = 10000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """Mean of the per-sample difference a - b with a percentile bootstrap interval, resampling the samples
    (pairs kept together): two models scored on the same sentences differ far less than their spreads, so
    the paired difference is what says whether one measurably beats the other."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim != 1 or len(d) < 2:
        raise ValueError(f"paired_bootstrap needs two equally long 1-D score lists (got {d.shape})")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return {"mean_diff": float(d.mean()), "ci_low": float(lo), "ci_high": float(hi), "level": level,
            "n": len(d), "a_better": int((d > 0).sum()), "b_better": int((d < 0).sum()), "resamples": resamples}


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
    n = len(reference)
    out["agreement_ci95"] = list(wilson(out["agreement"] * n, n))
    if labels is not None:
        ref_acc = accuracy(reference, labels)
        acc = accuracy(candidate, labels)
        out.update({"accuracy": acc, "reference_accuracy": ref_acc, "accuracy_drop": ref_acc - acc,
                    "accuracy_ci95": list(wilson(acc * n, n))})
    return out


def _finite(x: float) -> float | None:
    """JSON has no inf: an exact match's SQNR is recorded as null and shown as 'exact'."""
    return None if math.isinf(x) else x


def cosine_per_sample(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Cosine similarity of each sample's output (flattened) with the reference's; 1.0 where both are zero."""
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    got = candidate.reshape(len(candidate), -1).astype(np.float64)
    dot = np.sum(ref * got, axis=1)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    both_zero = norms == 0.0
    return np.where(both_zero, 1.0, dot / np.where(both_zero, 1.0, norms))


def cosine_summary(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Mean and worst (smallest) per-sample cosine: the numbers an embedding or hidden state is judged by."""
    cos = cosine_per_sample(reference, candidate)
    return {"mean": float(cos.mean()), "worst": float(cos.min())} if cos.size else {"mean": 1.0, "worst": 1.0}


#: metric names accepted by `--metric`: top-1 agreement (logits), cosine + SQNR (embeddings, hidden states),
#: SQNR alone
METRICS = ("agreement", "cosine", "sqnr")


def compare_output(reference: np.ndarray, candidate: np.ndarray, metric: str,
                   labels: np.ndarray | None = None) -> dict[str, Any]:
    """One output against its reference with `metric`; SQNR and max error always, accuracy for logits with
    labels."""
    if metric == "agreement":
        return compare(reference, candidate, labels)
    out: dict[str, Any] = {
        "samples": len(reference),
        "sqnr_db": _finite(sqnr_db(reference, candidate)),
        "max_abs_err": float(np.max(np.abs(reference.astype(np.float64) - candidate))) if reference.size else 0.0,
    }
    if metric == "cosine":
        out["cosine"] = cosine_summary(reference, candidate)
    return out


def compare_outputs(references: list[np.ndarray], candidates: list[np.ndarray], outputs: list[dict[str, Any]],
                    labels: np.ndarray | None = None, metric: str | None = None) -> dict[str, Any]:
    """Every output with the metric that fits it (`outputs[i]['metric']`, or `metric` for all), the first
    output's figures at the top level (what budgets and tables read), each output's under `outputs`."""
    if len(references) != len(candidates):
        raise ValueError(f"{len(candidates)} outputs against {len(references)} reference outputs")
    per: dict[str, dict[str, Any]] = {}
    for i, (ref, got) in enumerate(zip(references, candidates, strict=True)):
        spec = outputs[i] if i < len(outputs) else {}
        name = str(spec.get("name") or f"output{i}")
        chosen = metric or str(spec.get("metric") or "agreement")
        per[name] = {"metric": chosen, **compare_output(ref, got, chosen, labels if i == 0 else None)}
    first = next(iter(per.values()))
    result: dict[str, Any] = {k: v for k, v in first.items()}
    result.setdefault("agreement", None)
    if len(per) > 1:
        result["outputs"] = per
    return result
