"""The text distillation stage end to end: load a Hugging Face teacher, build the student, compute the
teacher's targets once, optionally score the data, train, and measure retention on held-out sentences.

Measured: parameters (embeddings counted), mean / worst embedding cosine to the teacher, nearest-neighbour
retrieval agreement, linear CKA per mapped layer pair, and the vocabulary's cost: the share of held-out
tokens that become [UNK], both for the student's own tokenizer (what inference sees) and for the teacher's
tokens mapped into the student's vocabulary (what training saw).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.errors import EdgekitError
from edgekit.train.distill.data_score import DataScores, score_samples, text_degenerate, token_dropout
from edgekit.train.distill.layer_map import layer_map
from edgekit.train.distill.metrics import layer_cka, retrieval_agreement
from edgekit.train.distill.student import StudentSpec, TextStudent, build_student
from edgekit.train.distill.text import (
    TextData,
    TextDistillConfig,
    embed,
    encode,
    fit_text,
    teacher_targets,
)
from edgekit.train.distill.trainer import TrainConfig


def load_hf_teacher(spec: str | Path) -> tuple[nn.Module, Any]:
    """(model, tokenizer) from `hf:DIR` or a folder, with eager attention so attention maps come back."""
    text = str(spec)
    path = Path(text[3:] if text.startswith("hf:") else text)
    if not (path / "config.json").is_file():
        raise EdgekitError(f"teacher folder {path} has no config.json: pass hf:DIR with a Hugging Face "
                           "save_pretrained folder (model + tokenizer)")
    try:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise EdgekitError("a hf:DIR teacher needs the Python package 'transformers', which is not installed; "
                           "pip install 'edgekit[text]'") from None

    hf_logging.disable_progress_bar()  # stderr carries edgekit's own progress lines and one-line errors
    try:
        model = AutoModel.from_pretrained(path, attn_implementation="eager")
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise EdgekitError(f"cannot load a Hugging Face model and tokenizer from {path}: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), tokenizer


def read_sentences(path: str | Path, what: str = "data") -> list[str]:
    """One sentence per line; blank lines skipped; duplicates kept (scoring removes them)."""
    from edgekit.models.hf import read_text

    return read_text(Path(path), what, at_least=2)


def student_tokenizer(student: TextStudent, like: Any = None) -> Any:
    from transformers import BertTokenizer

    lower = bool(getattr(like, "do_lower_case", True)) if like is not None else True
    return BertTokenizer(vocab={t: i for i, t in enumerate(student.tokens)}, do_lower_case=lower)


LAYER_TARGET_BYTES = 2 * 2**30


@dataclass
class TextSetup:
    teacher: nn.Module
    tokenizer: Any
    student: TextStudent
    data: TextData
    config: TextDistillConfig


def prepare(teacher: nn.Module, tokenizer: Any, sentences: Sequence[str], spec: StudentSpec,
            config: TextDistillConfig, seed: int = 0, score: bool = False,
            log: Callable[[str], None] | None = None, layers: bool | str | None = None,
            cache_dir: str | Path | None = None, max_layer_bytes: int = LAYER_TARGET_BYTES) -> TextSetup:
    """Tokenise, build the student, run the teacher once over the data, and score it when asked.

    `layers` (default: unless the config is output-only) keeps the teacher's hidden states and attention
    maps; without them only pooled embeddings are kept, which `cache_dir` caches across runs. "auto" keeps
    them when they take at most `max_layer_bytes`, and otherwise switches the config to output-only (the
    setup's config says which was done)."""
    log = log or (lambda _m: None)
    ids = encode(tokenizer, sentences, config.max_length)
    student = build_student(teacher, tokenizer.get_vocab(), spec, ids, seed=seed)
    lmap = layer_map(config.layer_map, spec.layers, teacher.config.num_hidden_layers, config.embeddings)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if layers == "auto":
        need = layer_target_bytes(ids, teacher, lmap, spec.heads)
        layers = not config.output_only and need <= max_layer_bytes
        if not layers and not config.output_only:
            log(f"the teacher's hidden states and attention maps for {len(ids)} sentences would take "
                f"{need / 2**30:.1f} GiB (> {max_layer_bytes / 2**30:.1f} GiB): distilling the pooled embedding "
                "alone (--terms full keeps them anyway)")
            config = replace(config, output_only=True)
    layers = (not config.output_only) if layers is None else bool(layers)
    log(f"teacher targets for {len(ids)} sentences ({'layer map ' + lmap.describe() if layers else 'embeddings only'})")
    cached = None
    if not layers:
        cached = cached_teacher_embeddings(teacher, ids, pad_id, cache_dir, log)
    targets = teacher_targets(teacher, ids, lmap, spec.heads, pad_id, layers=layers, embedding=cached)
    data = TextData(ids, targets, pad_id)
    if score or config.sampling == "scored":
        data.scores = score_text(teacher, tokenizer, ids, targets.embedding, seed)
    return TextSetup(teacher, tokenizer, student, data, config)


def layer_target_bytes(ids: Sequence[Sequence[int]], teacher: nn.Module, lmap: Any, student_heads: int) -> int:
    """Bytes the teacher's per-token targets take in memory (float16): hidden states of every mapped pair
    and attention maps (student heads x tokens x tokens) of every mapped block."""
    width = teacher.config.hidden_size
    tokens = sum(len(x) for x in ids)
    cells = sum(len(x) ** 2 for x in ids)
    return 2 * (tokens * width * len(lmap.pairs) + cells * student_heads * len(lmap.blocks))


def cached_teacher_embeddings(teacher: nn.Module, ids: list[list[int]], pad_id: int, cache_dir: str | Path | None,
                              log: Callable[[str], None]) -> torch.Tensor:
    """The teacher's pooled embeddings of `ids`, from `cache_dir` when an earlier run computed them for the
    same teacher weights and token ids (the key hashes both), else computed now (and cached when a folder is
    given). The teacher's forward pass is most of the cost of preparing tens of thousands of sentences."""
    from edgekit.train.distill.text import embed

    if cache_dir is None:
        return embed(teacher, ids, pad_id, teacher=True, sort=True)
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for name, t in sorted(teacher.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().sum().numpy().tobytes())  # a fingerprint of the weights, not a copy
    for x in ids:
        h.update(np.asarray(x, dtype=np.int32).tobytes() + b"|")
    path = Path(cache_dir) / f"teacher_emb_{h.hexdigest()[:24]}.npy"
    if path.is_file():
        arr = np.load(path, allow_pickle=False)
        if arr.shape[0] == len(ids):
            log(f"teacher embeddings from the cache {path}")
            return torch.from_numpy(arr).float()
    done = [0]

    def progress(k: int) -> None:
        done[0] += k
        if done[0] % 5120 < k:
            log(f"  teacher {done[0]}/{len(ids)}")

    emb = embed(teacher, ids, pad_id, teacher=True, sort=True, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npy")
    np.save(tmp, emb.numpy().astype(np.float32))
    tmp.replace(path)
    return emb


def score_text(teacher: nn.Module, tokenizer: Any, ids: list[list[int]], embeddings: torch.Tensor,
               seed: int = 0, dropout: float = 0.15) -> DataScores:
    """Scores from the teacher: token-dropout consistency, near-duplicates, degenerate sentences."""
    special = set(tokenizer.all_special_ids)
    gen = torch.Generator().manual_seed(seed + 12345)
    augmented_ids = [token_dropout(x, dropout, gen, special) for x in ids]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    augmented = embed(teacher, augmented_ids, pad_id, teacher=True)
    degenerate = text_degenerate(ids, lambda i: tokenizer.convert_ids_to_tokens(i), special,
                                 tokenizer.unk_token_id)
    return score_samples(embeddings, augmented, degenerate)


def unk_rates(tokenizer: Any, student: TextStudent, sentences: Sequence[str], max_length: int) -> dict[str, float]:
    """Share of held-out (non-special) tokens that are [UNK] for the student."""
    own = student_tokenizer(student, tokenizer)
    unk = student.tokens.index("[UNK]")
    frame_t = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id}
    frame_s = {own.cls_token_id, own.sep_token_id, own.pad_token_id}
    t_ids = [[i for i in x if i not in frame_t] for x in encode(tokenizer, sentences, max_length)]
    s_ids = [[i for i in x if i not in frame_s] for x in encode(own, sentences, max_length)]
    t_total = max(1, sum(map(len, t_ids)))
    return {
        "unk_rate_student_tokenizer": sum(i == unk for x in s_ids for i in x) / max(1, sum(map(len, s_ids))),
        "unk_rate_mapped_teacher_tokens": sum(int(student.vocab_map[i]) == unk for x in t_ids for i in x) / t_total,
        "unk_rate_teacher": sum(i == tokenizer.unk_token_id for x in t_ids for i in x) / t_total,
    }


def evaluate(setup: TextSetup, model: nn.Module, sentences: Sequence[str], *, cka: bool = True,
             teacher_embeddings: torch.Tensor | None = None, per_sentence: bool = False) -> dict[str, Any]:
    """Retention on held-out sentences: the student reads them with its own tokenizer. `per_sentence` adds
    every sentence's cosine (in order), which a paired comparison of two students needs."""
    tok, cfg = setup.tokenizer, setup.config
    pad_id = setup.data.pad_id
    t_ids = encode(tok, sentences, cfg.max_length)
    t_emb = teacher_embeddings if teacher_embeddings is not None else embed(setup.teacher, t_ids, pad_id,
                                                                            teacher=True)
    own = student_tokenizer(setup.student, tok)
    s_emb = embed(model, encode(own, sentences, cfg.max_length), own.pad_token_id)
    cos = F.cosine_similarity(s_emb, t_emb, dim=-1)
    out: dict[str, Any] = {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                           "cosine_p10": float(cos.quantile(0.1)), **retrieval_agreement(t_emb, s_emb)}
    if per_sentence:
        out["cosines"] = [round(float(c), 5) for c in cos]
    if cka:
        lmap = layer_map(cfg.layer_map, setup.student.spec.layers, setup.teacher.config.num_hidden_layers,
                         cfg.embeddings)
        out["cka"] = layer_cka(setup.teacher, model, t_ids, setup.student.vocab_map, lmap, pad_id)
    return out


def run_stage(setup: TextSetup, train: TrainConfig, heldout: Sequence[str], *, config: TextDistillConfig | None = None,
              log: Callable[[str], None] | None = None, steps_per_epoch: int | None = None,
              student: TextStudent | None = None, per_sentence: bool = False) -> tuple[TextStudent, dict[str, Any]]:
    """Train a copy of the setup's fresh student (or `student`) under `config` and measure it (`per_sentence`:
    the report's `cosines` holds every held-out sentence's cosine, for paired comparisons)."""
    config = config or setup.config
    student = student or copy.deepcopy(setup.student)
    t_ids = encode(setup.tokenizer, heldout, config.max_length)
    t_emb = embed(setup.teacher, t_ids, setup.data.pad_id, teacher=True)

    def quick(model: nn.Module) -> dict[str, float]:
        r = evaluate(setup, model, heldout, cka=False, teacher_embeddings=t_emb)
        return {"heldout_cosine": r["cosine_mean"]}

    result = fit_text(student, setup.data, config, train, evaluate=quick, log=log, steps_per_epoch=steps_per_epoch)
    report = {"config": config.describe(), "history": result.history, "steps": result.steps,
              "seconds": result.seconds, "world_size": result.world_size,
              "resumed_from_epoch": result.resumed_from_epoch,
              **evaluate(setup, student.model, heldout, teacher_embeddings=t_emb, per_sentence=per_sentence)}
    return student, report


def same_budget(config: TextDistillConfig, **changes: Any) -> TextDistillConfig:
    """The same configuration with a few fields changed (baseline: output_only=True)."""
    return replace(config, **changes)
