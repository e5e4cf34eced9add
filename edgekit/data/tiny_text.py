"""A tiny random BERT encoder with a word-level tokenizer, saved as a Hugging Face folder: a teacher that
runs the whole text distillation path in seconds (tests, smoke runs). Its knowledge is noise; the point is
that every shape, mask and file on the way is real."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from pathlib import Path

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def save_tiny_bert(path: str | Path, sentences: Sequence[str], *, hidden: int = 32, layers: int = 2, heads: int = 4,
                   intermediate: int = 64, seed: int = 0) -> Path:
    """Write config, weights and a tokenizer (the sentences' words + single characters) into `path`."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    words = sorted({w for s in sentences for w in re.findall(r"[a-z]+", s.lower())})
    chars = [c for c in string.ascii_lowercase + string.digits + string.punctuation]
    vocab = list(dict.fromkeys([*SPECIAL, *chars, *(f"##{c}" for c in string.ascii_lowercase), *words]))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate, max_position_embeddings=128)
    model = BertModel(config)
    path = Path(path)
    model.save_pretrained(path)
    BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True).save_pretrained(path)
    return path
