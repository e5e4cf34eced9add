"""Loss terms for distilling a transformer encoder into a smaller one, on padded token batches.

Every term takes the attention mask (batch, tokens; 1 = real token) so padding never counts: padded query
rows of an attention map are garbage in both models, and a padded token's hidden state is never used.

- `attention_loss`: per mapped block, the teacher's heads averaged in consecutive groups down to the
  student's head count (12 -> 6 averages heads (0,1), (2,3), ...; counts that do not divide are all
  averaged on both sides), then either the squared error summed over keys (each row is a distribution, so
  the scale does not shrink with the token count) or KL(teacher || student) per query row, times T². The
  temperature softens both maps alike (p^(1/T), renormalised), the attention analogue of soft targets.
- `hidden_cosine`: 1 − cos between a student hidden state (projected to the teacher's width) and the
  teacher's, per real token.
- `embedding_loss`: on the mean-pooled sentence embedding (what an encoder without labels outputs): 1 − cos
  or MSE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgekit.errors import EdgekitError

ATTENTION_LOSSES = ("kl", "mse")
OUTPUT_LOSSES = ("cosine", "mse")
_EPS = 1e-12


def group_heads(att: torch.Tensor, heads: int) -> torch.Tensor:
    """(batch, H, L, L) -> (batch, heads, L, L) averaging consecutive groups of H // heads heads."""
    h = att.shape[1]
    if h == heads:
        return att
    if h % heads:
        return att.mean(1, keepdim=True)
    return att.reshape(att.shape[0], heads, h // heads, *att.shape[2:]).mean(2)


def match_heads(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher maps with the same head count: teacher groups averaged, or both fully averaged."""
    hs, ht = s.shape[1], t.shape[1]
    if hs == ht:
        return s, t
    if ht % hs == 0:
        return s, group_heads(t, hs)
    return s.mean(1, keepdim=True), t.mean(1, keepdim=True)


def soften(p: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """p^(1/T) renormalised over the last axis: a softer distribution for T > 1, p itself for T = 1."""
    if not isinstance(temperature, torch.Tensor) and temperature == 1:
        return p
    q = p.clamp_min(_EPS) ** (1.0 / temperature) * (p > 0)
    return q / q.sum(-1, keepdim=True).clamp_min(_EPS)


def attention_loss(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, kind: str = "kl",
                   temperature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Mean over batch, heads and real query rows of the per-row MSE (summed over keys) or KL·T²."""
    if kind not in ATTENTION_LOSSES:
        raise EdgekitError(f"attention loss must be one of {', '.join(ATTENTION_LOSSES)} (got {kind!r})")
    if s.shape[-2:] != t.shape[-2:]:
        raise EdgekitError(f"attention maps cover different tokens: student {tuple(s.shape)}, teacher "
                           f"{tuple(t.shape)}; both models must see the same token sequence")
    s, t = match_heads(s.float(), t.float())
    s, t = soften(s, temperature), soften(t, temperature)
    if kind == "mse":
        per_row = ((s - t) ** 2).sum(-1)
    else:
        per_row = (t * (t.clamp_min(_EPS).log() - s.clamp_min(_EPS).log())).sum(-1) * temperature**2
    rows = mask.float()[:, None, :].expand_as(per_row)
    return (per_row * rows).sum() / rows.sum().clamp_min(1)


def hidden_cosine(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens of 1 − cos(s, t); `s` already projected to the teacher's width."""
    if s.shape != t.shape:
        raise EdgekitError(f"hidden states differ in shape after projection: {tuple(s.shape)} vs {tuple(t.shape)}")
    per_token = 1 - F.cosine_similarity(s.float(), t.float(), dim=-1, eps=1e-8)
    m = mask.float()
    return (per_token * m).sum() / m.sum().clamp_min(1)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The sentence embedding of sentence-transformers encoders: the mean of the real tokens' states."""
    m = mask.to(hidden.dtype)[..., None]
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1)


def embedding_loss(s: torch.Tensor, t: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    if kind not in OUTPUT_LOSSES:
        raise EdgekitError(f"output loss must be one of {', '.join(OUTPUT_LOSSES)} (got {kind!r})")
    if kind == "cosine":
        return (1 - F.cosine_similarity(s.float(), t.float(), dim=-1, eps=1e-8)).mean()
    return F.mse_loss(s.float(), t.float())
