"""Distillation data, scored and scheduled: which unlabelled samples to train on, and when.

Each sample gets measurable scores, all from the teacher's embedding space (so the same code serves a text
encoder's sentence embeddings and a CNN's penultimate features or logits):

- degenerate: modality checks (`text_degenerate`: too few tokens, mostly [UNK] or non-words, one token
  repeated; `image_degenerate`: a near-constant image). Dropped.
- near-duplicate: cosine >= `dup_threshold` to an earlier kept sample in the teacher's space. Dropped (the
  earlier one stays): a duplicate only re-weights what is already there.
- consistency: cosine between the teacher's embedding of the sample and of a lightly augmented copy (token
  dropout for text, small noise for images). A sample whose meaning flips under a light change is noise
  to the teacher; the lowest `drop_inconsistent` fraction is dropped.
- diversity: 1 − mean cosine to the k nearest kept neighbours: rare regions of the teacher's space.
- quality: the consistency rank (what survives augmentation is what the teacher is sure about).
- difficulty: teacher-student disagreement (per-sample output loss), an exponential moving average updated
  as training sees each sample; samples not yet seen count as median.

`ScheduledSampler` draws each batch as a mixture whose weights move linearly with training progress from
warm-up (70 % diversity-weighted, 30 % quality-weighted) to convergence (60 % quality, 40 % hard). Draws
within a component are proportional to rank² (the top sample about three times as likely as the median
one) and without replacement inside a batch. Every epoch's batches are drawn up front from a generator
seeded by (seed, epoch) and from difficulties synchronised across processes, so every DDP rank draws
the same batches and takes its own slice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

WARMUP = {"diverse": 0.7, "quality": 0.3, "hard": 0.0}
CONVERGE = {"diverse": 0.0, "quality": 0.6, "hard": 0.4}


@dataclass
class DataScores:
    """Per-sample scores over the *kept* samples (indices into the original data in `kept`)."""

    kept: torch.Tensor
    diversity: torch.Tensor
    quality: torch.Tensor
    consistency: torch.Tensor
    dropped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[int]] = field(default_factory=dict)

    def report(self, total: int) -> dict[str, Any]:
        return {"samples": total, "kept": len(self.kept), "dropped": dict(self.dropped),
                "dropped_examples": {k: v[:3] for k, v in self.examples.items()},
                "consistency_mean": float(self.consistency.mean()),
                "diversity_mean": float(self.diversity.mean())}


def ranks(values: torch.Tensor) -> torch.Tensor:
    """Values -> ranks in [0, 1] (0 the lowest); ties broken by position."""
    n = len(values)
    out = torch.empty(n)
    out[values.argsort()] = torch.arange(n, dtype=torch.float32) / max(n - 1, 1)
    return out


def score_samples(embeddings: torch.Tensor, augmented: torch.Tensor, degenerate: dict[str, torch.Tensor] | None = None,
                  *, dup_threshold: float = 0.97, drop_inconsistent: float = 0.02, k: int = 10,
                  duplicates_in: torch.Tensor | None = None) -> DataScores:
    """Score N samples from the teacher's embeddings of them (N, D) and of augmented copies (N, D).

    `degenerate` maps a reason to a boolean mask (N) of samples failing that modality check.
    `duplicates_in` (N, ...) finds near-duplicates in another space than the embeddings': a classifier's
    10 logits are too few dimensions to tell distinct images apart, their pixels are not.
    """
    n = len(embeddings)
    e = F.normalize(embeddings.float(), dim=-1)
    a = F.normalize(augmented.float(), dim=-1)
    consistency = (e * a).sum(-1)
    alive = torch.ones(n, dtype=torch.bool)
    dropped: dict[str, int] = {}
    examples: dict[str, list[int]] = {}

    def drop(reason: str, mask: torch.Tensor) -> None:
        hit = mask & alive
        if hit.any():
            dropped[reason] = dropped.get(reason, 0) + int(hit.sum())
            examples.setdefault(reason, []).extend(hit.nonzero().flatten().tolist())
            alive.logical_and_(~hit)

    for reason, mask in (degenerate or {}).items():
        drop(reason, mask.bool())
    sim = e @ e.T
    if duplicates_in is not None:
        d = duplicates_in.float().flatten(1)
        d = F.normalize(d - d.mean(1, keepdim=True), dim=-1)
        dup_sim = d @ d.T
    else:
        dup_sim = sim
    earlier = torch.ones(n, n, dtype=torch.bool).tril(-1)  # earlier[i, j]: j < i
    dup = ((dup_sim >= dup_threshold) & earlier & alive[None, :]).any(1)
    drop("near_duplicate", dup)
    if drop_inconsistent > 0 and alive.sum() > 1:
        cut = torch.quantile(consistency[alive], drop_inconsistent)
        drop("inconsistent_under_augmentation", consistency < cut)
    kept = alive.nonzero().flatten()
    ks = sim[kept][:, kept]
    ks.fill_diagonal_(-2.0)
    kk = min(k, max(len(kept) - 1, 1))
    diversity = 1 - ks.topk(kk, dim=1).values.clamp_min(-1).mean(1)
    return DataScores(kept, diversity, ranks(consistency[kept]), consistency[kept], dropped, examples)


def text_degenerate(token_ids: Sequence[Sequence[int]], tokens: Callable[[int], str], special: set[int],
                    unk_id: int, min_tokens: int = 4) -> dict[str, torch.Tensor]:
    """Masks of tokenised sentences that are too short, mostly [UNK]/non-word pieces, or one token repeated."""
    short, junk, repetitive = [], [], []
    for ids in token_ids:
        body = [i for i in ids if i not in special]
        short.append(len(body) < min_tokens)
        wordish = sum(1 for i in body if i != unk_id and any(c.isalpha() for c in tokens(i)))
        junk.append(len(body) > 0 and wordish < 0.5 * len(body))
        repetitive.append(len(body) >= min_tokens and len(set(body)) < 0.4 * len(body))
    return {"too_short": torch.tensor(short), "mostly_non_words": torch.tensor(junk),
            "repetitive": torch.tensor(repetitive)}


def image_degenerate(x: torch.Tensor, min_std: float = 1e-3) -> dict[str, torch.Tensor]:
    """Near-constant images (blank frames, saturated captures)."""
    return {"near_constant": x.float().flatten(1).std(1) < min_std}


def token_dropout(ids: Sequence[int], p: float, gen: torch.Generator, special: set[int]) -> list[int]:
    """Drop each non-special token with probability p (at least one token stays)."""
    keep = [i for i in ids if i in special or float(torch.rand((), generator=gen)) >= p]
    return keep if len(keep) > len([i for i in ids if i in special]) else list(ids)


def image_jitter(x: torch.Tensor, sigma: float, gen: torch.Generator) -> torch.Tensor:
    return x + sigma * x.float().std() * torch.randn(x.shape, generator=gen)


class ScheduledSampler:
    """Batches drawn as a progress-dependent mixture of diverse, high-quality and hard samples."""

    def __init__(self, scores: DataScores, batch_size: int, seed: int = 0, momentum: float = 0.5) -> None:
        self.scores = scores
        self.batch_size = batch_size
        self.seed = seed
        self.momentum = momentum
        self.difficulty = torch.full((len(scores.kept),), float("nan"))
        self._div_w = ranks(scores.diversity) ** 2 + 1e-3
        self._q_w = scores.quality**2 + 1e-3

    def __len__(self) -> int:
        return len(self.scores.kept)

    @staticmethod
    def mixture(progress: float) -> dict[str, float]:
        p = min(max(progress, 0.0), 1.0)
        return {k: (1 - p) * WARMUP[k] + p * CONVERGE[k] for k in WARMUP}

    def _hard_w(self) -> torch.Tensor:
        d = self.difficulty.clone()
        seen = ~d.isnan()
        if not seen.any():
            return torch.ones_like(d)
        d[~seen] = d[seen].median()
        return ranks(d) ** 2 + 1e-3

    def epoch_batches(self, epoch: int, epochs: int, steps: int) -> list[torch.Tensor]:
        """`steps` batches of positions into the kept samples, for epoch `epoch` of `epochs`."""
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch + 7)
        hard = self._hard_w()
        weights = {"diverse": self._div_w, "quality": self._q_w, "hard": hard}
        n, b = len(self), min(self.batch_size, len(self))
        batches = []
        for i in range(steps):
            mix = self.mixture((epoch + i / steps) / epochs)
            counts = {k: round(v * b) for k, v in mix.items()}
            counts["quality"] += b - sum(counts.values())
            taken = torch.zeros(n, dtype=torch.bool)
            picks = []
            for kind, count in counts.items():
                if count <= 0:
                    continue
                w = weights[kind].clone()
                w[taken] = 0
                idx = torch.multinomial(w, count, replacement=False, generator=gen)
                taken[idx] = True
                picks.append(idx)
            batches.append(torch.cat(picks)[torch.randperm(b, generator=gen)])
        return batches

    def update_difficulty(self, positions: torch.Tensor, losses: torch.Tensor) -> None:
        """EMA of per-sample disagreement; `positions` index the kept samples. Call with all ranks' values."""
        old = self.difficulty[positions]
        new = losses.float().cpu()
        self.difficulty[positions] = torch.where(old.isnan(), new, self.momentum * old + (1 - self.momentum) * new)


def uniform_batches(n: int, batch_size: int, seed: int, epoch: int, steps: int) -> list[torch.Tensor]:
    """The plain baseline: a seeded permutation per epoch, cut into `steps` batches."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=gen)
    b = min(batch_size, n)
    out = []
    for i in range(steps):
        j = (i * b) % n
        idx = order[j : j + b]
        if len(idx) < b:
            idx = torch.cat([idx, order[: b - len(idx)]])
        out.append(idx)
    return out


def bucketed_batches(lengths: torch.Tensor, batch_size: int, seed: int, epoch: int, steps: int,
                     window: int = 50) -> list[torch.Tensor]:
    """Uniform sampling with little padding: a seeded permutation per epoch, cut into windows of `window`
    batches, each window sorted by length and cut into batches, the batches then shuffled. Every sample is
    still seen once per pass; a padded batch of similar lengths costs about half a random one's time on
    sentences of 5-64 tokens."""
    n = len(lengths)
    b = min(batch_size, n)
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    out: list[torch.Tensor] = []
    while len(out) < steps:
        order = torch.randperm(n, generator=gen)
        chunk: list[torch.Tensor] = []
        for w in range(0, n, window * b):
            part = order[w : w + window * b]
            part = part[lengths[part].argsort(stable=True)]
            chunk += [part[i : i + b] for i in range(0, len(part), b)]
        chunk = [c if len(c) == b else torch.cat([c, order[: b - len(c)]]) for c in chunk]
        out += [chunk[i] for i in torch.randperm(len(chunk), generator=gen).tolist()]
    return out[:steps]


# -- classifiers (CNN students) ---------------------------------------------------------------------------------
@torch.no_grad()
def score_classifier_data(teacher: torch.nn.Module, x: torch.Tensor, seed: int = 0, sigma: float = 0.05,
                          **kwargs: Any) -> DataScores:
    """Scores for image (or any tensor) samples in the space of the teacher's logits; the augmentation is
    Gaussian noise of `sigma` times the data's standard deviation."""
    from edgekit.train.distill.predict import predict

    gen = torch.Generator().manual_seed(seed + 12345)
    logits = predict(teacher, x)
    noisy = predict(teacher, image_jitter(x, sigma, gen))
    return score_samples(logits, noisy, image_degenerate(x), duplicates_in=x, **kwargs)


class ClassifierSampler(ScheduledSampler):
    """A ScheduledSampler whose difficulty is KL(teacher || student) per kept sample, recomputed at the start
    of each epoch from the student's current weights (the trainer calls `refresh`)."""

    def __init__(self, scores: DataScores, x: torch.Tensor, teacher_logits: torch.Tensor, batch_size: int,
                 seed: int = 0) -> None:
        super().__init__(scores, batch_size, seed)
        self.x = x[scores.kept]
        self.log_p_t = F.log_softmax(teacher_logits[scores.kept].float(), dim=-1)

    @torch.no_grad()
    def refresh(self, student: torch.nn.Module, device: torch.device | None = None) -> None:
        from edgekit.train.distill.predict import predict

        log_p_s = F.log_softmax(predict(student, self.x, device=device), dim=-1)
        kl = (self.log_p_t.exp() * (self.log_p_t - log_p_s)).sum(-1)
        self.difficulty = kl  # a full recomputation each epoch: no stale values, resume-safe
