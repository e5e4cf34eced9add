"""A word-embedding table stored as two factors (ALBERT-style): V x r rows, then an r x d projection.

Why: a 30k-token vocabulary at width 384 is 11.7M parameters, half of all-MiniLM-L6-v2; a student of 1/8
that size cannot hold it, but can hold it at rank 32-64. A full vocabulary means the student tokenises
every sentence exactly as its teacher does (no word re-split into characters), which is what text far
from the training data needs. The module is two ops every target handles: a Gather (the rows) and a MatMul
(the projection). A Hugging Face BERT saved with it records `embedding_rank` in its config.json;
`install` puts the module back after building the model from that config.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

CONFIG_KEY = "embedding_rank"


class FactorisedEmbedding(nn.Module):
    """`ids -> rows[ids] @ up.weight.T`: a drop-in for nn.Embedding(vocab, width)."""

    def __init__(self, vocab: int, rank: int, width: int, padding_idx: int | None = None) -> None:
        super().__init__()
        self.rows = nn.Embedding(vocab, rank, padding_idx=padding_idx)
        self.up = nn.Linear(rank, width, bias=False)

    @property
    def weight(self) -> torch.Tensor:
        """The full (vocab, width) table it stands for (for code that reads `.weight`; not used in forward)."""
        return self.rows.weight @ self.up.weight.T

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.up(self.rows(ids))

    @torch.no_grad()
    def init_from(self, table: torch.Tensor, weights: torch.Tensor | None = None) -> float:
        """The best rank-r approximation of `table` (vocab, width) by truncated SVD, each row's error counted
        `weights[i]**2` times when weights are given (frequent tokens approximated first); returns the share
        of the table's energy (squared Frobenius norm) the approximation keeps."""
        table = table.float()
        w = torch.ones(table.shape[0]) if weights is None else weights.float().clamp_min(1e-6)
        _, _, vh = torch.linalg.svd(table * w[:, None], full_matrices=False)
        r = self.rows.weight.shape[1]
        up = vh[:r]  # (r, width), orthonormal rows
        self.rows.weight.copy_(table @ up.T)  # each row projected onto the kept directions
        self.up.weight.copy_(up.T)
        return float((self.rows.weight**2).sum() / (table**2).sum().clamp_min(1e-12))


def install(bert: Any, rank: int) -> FactorisedEmbedding:
    """Replace a Hugging Face BERT's word embeddings by a rank-`rank` factorised table (randomly initialised)
    and record the rank in its config, so `save_pretrained` writes what `load_bert` needs."""
    cfg = bert.config
    emb = FactorisedEmbedding(cfg.vocab_size, rank, cfg.hidden_size, cfg.pad_token_id)
    bert.embeddings.word_embeddings = emb
    setattr(cfg, CONFIG_KEY, rank)
    return emb


def load_bert(folder: str, config: Any) -> Any:
    """A BertModel (no pooler) with a factorised embedding from a folder `save_pretrained` wrote; every
    weight must load (strict), so a wrong folder fails instead of leaving random weights."""
    from pathlib import Path

    from safetensors.torch import load_file
    from transformers import BertModel

    model = BertModel(config, add_pooling_layer=False)
    install(model, int(getattr(config, CONFIG_KEY)))
    model.load_state_dict(load_file(str(Path(folder) / "model.safetensors")), strict=True)
    return model.eval()
