"""Transformer students from a short config string, initialised from the teacher where shapes allow.

`layers=3,hidden=192,heads=6,intermediate=768` builds a BERT encoder; optional keys: `vocab=trim|shared|N`,
`embedding_rank=R`, `max_len=128`, `init=teacher|random`. Why each piece:

- Vocabulary. all-MiniLM-L6-v2's 30,522 x 384 word embeddings are half its parameters; a 1/8 student cannot
  keep them. `trim` (the default) keeps the special tokens, every single-character piece of printable ASCII
  (so a new word still splits into pieces instead of becoming [UNK]) and every token the training data
  uses; `N` keeps at most N of the data's tokens, most frequent first; `shared` keeps the teacher's. A
  trimmed WordPiece vocabulary tokenises a word exactly as the teacher does whenever all the teacher's
  pieces were kept (greedy longest match over a subset), so training sees the teacher's token positions,
  which attention and hidden-state distillation need.
- Factorised table (`embedding_rank=R`). The word table is stored as V x R rows times an R x hidden
  projection (a Gather and a MatMul once exported), initialised by a truncated SVD of the teacher's rows,
  so a student can keep ten thousand tokens for the parameters of three thousand and spend the rest on its
  feed-forward layers.
- Initialisation (`init=teacher`). A narrower student starts in the teacher's principal subspace: P holds
  the top `hidden` principal directions of the kept word embeddings, embeddings are projected by P, each
  student block starts from its mapped teacher block with the strongest head of each head group (head
  widths must match) and the strongest feed-forward neurons, all weights seen through P. The student then
  starts close to "the teacher restricted to P" instead of from noise.
- The student's hidden width differs from the teacher's embedding width, so a linear head (hidden ->
  teacher width, initialised to P) maps the pooled student embedding into the teacher's space: that is
  what "cosine to the teacher" compares. It is saved like a sentence-transformers Dense module.
"""

from __future__ import annotations

import json
import string
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgekit.errors import EdgekitError
from edgekit.train.distill.layer_map import layer_map
from edgekit.train.distill.text_losses import mean_pool

_INT_KEYS = ("layers", "hidden", "heads", "intermediate", "max_len")
_KEYS = (*_INT_KEYS, "embedding_rank", "vocab", "init")
CONFIG_HELP = ("comma-separated KEY=VALUE: layers, hidden, heads, intermediate (required unless defaulted), "
               "vocab=trim|shared|N, embedding_rank=R (0: a full table), max_len, init=teacher|random; "
               "e.g. layers=3,hidden=192,heads=6,intermediate=768")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass(frozen=True)
class StudentSpec:
    layers: int = 3
    hidden: int = 192
    heads: int = 6
    intermediate: int = 768
    vocab: str = "trim"
    max_len: int = 128
    init: str = "teacher"
    embedding_rank: int = 0  # 0: a (vocab, hidden) table; R: (vocab, R) rows times an (R, hidden) projection

    def __post_init__(self) -> None:
        for key in _INT_KEYS:
            if getattr(self, key) < 1:
                raise EdgekitError(f"student config {key} must be >= 1 (got {getattr(self, key)})")
        if not 0 <= self.embedding_rank < self.hidden:
            raise EdgekitError(f"student config embedding_rank must be 0 (a full table) or below hidden "
                               f"{self.hidden} (got {self.embedding_rank})")
        if self.hidden % self.heads:
            raise EdgekitError(f"student config: hidden {self.hidden} is not divisible by heads {self.heads}; "
                               "pick heads that divide the hidden size")
        if self.vocab not in ("trim", "shared") and not self.vocab.isdigit():
            raise EdgekitError(f"student config vocab must be trim, shared or a token count (got {self.vocab!r})")
        if self.init not in ("teacher", "random"):
            raise EdgekitError(f"student config init must be teacher or random (got {self.init!r})")


PRESETS = {"eighth": "2 blocks of the teacher's width and heads, vocabulary trimmed to the data's 10000 most "
                      "frequent tokens stored at rank width/6 (V x 64 rows + 64 x 384), feed-forward width "
                      "filling the rest of 1/8 of the teacher's parameters"}
#: (data tokens kept at most, embedding rank as a fraction of the width; 0: a full table), tried in order
_EIGHTH_VOCABS = ((10000, 6), (3000, 0), (2000, 0), (1000, 0), (500, 0), (250, 0))


def _eighth(teacher: nn.Module, vocab: str) -> str:
    """The `eighth` preset for this teacher. Why this shape: at 1/8 of a MiniLM the parameters go to the
    vocabulary, attention or feed-forward; keeping the teacher's width lets every kept weight (embedding
    rows, attention heads, strongest FFN neurons) start as the teacher's own and needs no projection; on
    all-MiniLM-L6-v2, two blocks of width 384 reached 0.685 held-out cosine where three of width 192 reached
    0.56 (same 1,500 sentences and steps; benchmarks/results/text_distill_l2_h384.json, _l3_h192.json).
    The vocabulary is stored factorised: up to 10,000 of the data's tokens at rank 64 cost 0.67 M parameters
    where 3,000 tokens as a full table cost 1.17 M, so the feed-forward width grows from 256 to 576 and far
    fewer words are re-split into pieces the teacher never used for them (held-out docstring tokens: 1.1 %
    instead of 6.3 %; everyday ones: 24 % instead of 36 %). Same 250 steps of 64 on 16,000 docstring
    sentences, one thread: held-out cosine 0.809 (p10 0.687, worst 0.398) against 0.788 (0.596, 0.181),
    everyday sentences 0.296 against 0.189. The teacher's full 30,522 tokens at rank 32 (feed-forward 384)
    scored 0.377 on everyday sentences but 0.727 held out: rank 32 keeps only 29 % of the table's energy
    (benchmarks/results/text_distill_layouts.json). At 750 steps (3 epochs of the 16,000 sentences) this
    shape reached 0.852 held out (p10 0.752, worst 0.395; everyday 0.325) where the 3000-token full table
    reached 0.817 (0.626, 0.184; everyday 0.190) (text_distill_rank64.json, text_distill.json). With all
    96,419 corpus sentences and 6,028 steps (4 epochs, 22 minutes on one thread) it reaches 0.906 (p10 0.843;
    everyday 0.435; with the hidden-state and attention terms 0.904; text_distill_rank64_long.json): the
    shape was limited by steps, not size. Narrower widths are tried only for teachers too small for that."""
    cfg = teacher.config
    budget = sum(p.numel() for p in teacher.parameters()) // 8
    layers = min(2, cfg.num_hidden_layers)
    max_pos = min(128, cfg.max_position_embeddings)
    for shrink in (1, 2, 4, 8):
        d, heads = cfg.hidden_size // shrink, max(1, cfg.num_attention_heads // shrink)
        if d < 8 or d % heads:
            break
        for n_vocab, rank_div in _EIGHTH_VOCABS:
            if vocab.isdigit():
                n_vocab = min(n_vocab, int(vocab))
            v = min(n_vocab + 100, cfg.vocab_size)  # the data's tokens + specials and single characters
            rank = d // rank_div if rank_div else 0
            if rank and v * rank + rank * d >= v * d // 2:
                continue  # a table this small gains little from factorising
            words = v * rank + rank * d if rank else v * d
            head = 0 if d == cfg.hidden_size else d * cfg.hidden_size
            fixed = words + (max_pos + cfg.type_vocab_size + 2) * d + layers * (4 * d * d + 9 * d) + head
            inter = (budget - fixed) // (layers * (2 * d + 1)) // 32 * 32
            if inter >= max(64, d // 2):
                inter = min(inter, cfg.intermediate_size)
                return (f"layers={layers},hidden={d},heads={heads},intermediate={inter},"
                        f"vocab={n_vocab},max_len={max_pos}" + (f",embedding_rank={rank}" if rank else ""))
    raise EdgekitError(f"the teacher ({budget * 8:,} parameters) is too small for the 'eighth' preset; give "
                       f"--student-config explicitly: {CONFIG_HELP}")


def resolve_preset(text: str, teacher: nn.Module, vocab: str = "trim") -> str:
    """A preset name (see PRESETS) -> the config string it stands for with this teacher; K=V text unchanged."""
    name = text.strip()
    if "=" in name:
        return text
    if name not in PRESETS:
        raise EdgekitError(f"unknown student preset {name!r}; presets: "
                           + "; ".join(f"{k}: {v}" for k, v in PRESETS.items()) + f"; or {CONFIG_HELP}")
    return _eighth(teacher, vocab)


def parse_student_config(text: str) -> StudentSpec:
    values: dict[str, Any] = {}
    for part in (p for p in text.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in _KEYS:
            raise EdgekitError(f"malformed student config entry {part.strip()!r}: expected {CONFIG_HELP}")
        if key in (*_INT_KEYS, "embedding_rank"):
            if not value.isdigit():
                raise EdgekitError(f"student config {key} must be a whole number (got {value!r})")
            values[key] = int(value)
        else:
            values[key] = value
    return StudentSpec(**values)


class EmbeddingStudent(nn.Module):
    """A BERT encoder plus a linear head into the teacher's embedding width; returns the sentence embedding.

    `forward(input_ids, attention_mask, states=True)` also returns hidden states and attention maps, which
    distillation needs and inference does not.
    """

    def __init__(self, bert: nn.Module, out_dim: int) -> None:
        super().__init__()
        self.bert = bert
        hidden = bert.config.hidden_size
        self.head: nn.Module = nn.Identity() if hidden == out_dim else nn.Linear(hidden, out_dim, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, states: bool = False):
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=states,
                        output_attentions=states, return_dict=True)
        emb = self.head(mean_pool(out.last_hidden_state, attention_mask))
        if not states:
            return emb
        return emb, tuple(out.hidden_states), tuple(out.attentions)


@dataclass
class TextStudent:
    model: EmbeddingStudent
    tokens: list[str]  # the student's vocabulary, in id order
    vocab_map: torch.Tensor  # teacher token id -> student token id ([UNK] where dropped)
    spec: StudentSpec
    basis: torch.Tensor | None = None  # (teacher width, student width) principal directions, or None
    notes: list[str] = field(default_factory=list)

    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def choose_vocab(teacher_vocab: dict[str, int], train_ids: Iterable[Iterable[int]], mode: str) -> list[str]:
    """The kept tokens in teacher-id order (see the module docstring for `mode`)."""
    if mode == "shared":
        return [t for t, _ in sorted(teacher_vocab.items(), key=lambda kv: kv[1])]
    by_id = {i: t for t, i in teacher_vocab.items()}
    counts = Counter(i for ids in train_ids for i in ids)
    data_ids = [i for i, _ in counts.most_common()]
    if mode.isdigit():
        data_ids = data_ids[: int(mode)]
    chars = [c for c in string.printable.strip().lower() if c.isprintable()]
    base = [t for c in chars for t in (c, f"##{c}") if t in teacher_vocab]
    keep = {teacher_vocab[t] for t in (*SPECIAL_TOKENS, *base) if t in teacher_vocab} | set(data_ids)
    return [by_id[i] for i in sorted(keep)]


def build_student(teacher: nn.Module, teacher_vocab: dict[str, int], spec: StudentSpec,
                  train_ids: list[list[int]] | None = None, seed: int = 0) -> TextStudent:
    """A student for `teacher` (a Hugging Face BERT-style encoder) after `spec`."""
    from transformers import BertConfig, BertModel

    tcfg = teacher.config
    for key in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size"):
        if not hasattr(tcfg, key):
            raise EdgekitError(f"the teacher's config has no {key}: a BERT-style encoder is expected")
    if spec.hidden > tcfg.hidden_size:
        raise EdgekitError(f"student hidden {spec.hidden} is wider than the teacher's {tcfg.hidden_size}; a "
                           "student must not be wider than its teacher")
    tokens = choose_vocab(teacher_vocab, train_ids or [], spec.vocab)
    missing = [t for t in SPECIAL_TOKENS if t not in tokens]
    if missing:
        raise EdgekitError(f"the teacher's vocabulary lacks {', '.join(missing)}: a BERT WordPiece tokenizer "
                           "is expected")
    student_id = {t: i for i, t in enumerate(tokens)}
    vocab_map = torch.full((len(teacher_vocab),), student_id["[UNK]"], dtype=torch.long)
    for t, i in teacher_vocab.items():
        if t in student_id:
            vocab_map[i] = student_id[t]
    config = BertConfig(
        vocab_size=len(tokens), hidden_size=spec.hidden, num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads, intermediate_size=spec.intermediate,
        max_position_embeddings=min(spec.max_len, tcfg.max_position_embeddings),
        type_vocab_size=tcfg.type_vocab_size, hidden_act=tcfg.hidden_act, layer_norm_eps=tcfg.layer_norm_eps,
        pad_token_id=student_id["[PAD]"], attn_implementation="eager",
    )
    torch.manual_seed(seed)
    bert = BertModel(config, add_pooling_layer=False)
    if spec.embedding_rank:
        from edgekit.models.factorised_embedding import install

        install(bert, spec.embedding_rank)
    model = EmbeddingStudent(bert, tcfg.hidden_size)
    student = TextStudent(model, tokens, vocab_map, spec)
    if spec.init == "teacher":
        kept = torch.tensor([teacher_vocab[t] for t in tokens])
        _init_from_teacher(student, teacher, kept)
    return student


@torch.no_grad()
def _init_from_teacher(student: TextStudent, teacher: nn.Module, kept: torch.Tensor) -> None:
    s, t = student.model.bert, teacher
    ds, dt = s.config.hidden_size, t.config.hidden_size
    words = t.embeddings.word_embeddings.weight[kept].float()
    if ds == dt:
        basis = torch.eye(dt)
    else:  # top principal directions of the kept word embeddings
        centred = words - words.mean(0, keepdim=True)
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        basis = vh[:ds].T.contiguous()  # (dt, ds)
    student.basis = basis
    P = basis

    def ln(dst: nn.LayerNorm, src: nn.LayerNorm) -> None:
        dst.weight.copy_((P**2).T @ src.weight)
        dst.bias.copy_(P.T @ src.bias)

    se, te = s.embeddings, t.embeddings
    if isinstance(se.word_embeddings, nn.Embedding):
        se.word_embeddings.weight.copy_(words @ P)
    else:  # factorised: the best low-rank approximation of the projected teacher rows
        kept_energy = se.word_embeddings.init_from(words @ P)
        student.notes.append(f"word embeddings: rank {se.word_embeddings.rows.weight.shape[1]} keeps "
                             f"{kept_energy:.1%} of the teacher rows' energy")
    n_pos = se.position_embeddings.weight.shape[0]
    se.position_embeddings.weight.copy_(te.position_embeddings.weight[:n_pos] @ P)
    se.token_type_embeddings.weight.copy_(te.token_type_embeddings.weight @ P)
    ln(se.LayerNorm, te.LayerNorm)

    hs, ht = s.config.num_attention_heads, t.config.num_attention_heads
    head_ok = ds // hs == dt // ht and hs <= ht
    if not head_ok:
        student.notes.append(f"attention weights random: student head width {ds // hs} != teacher's {dt // ht}")
    mapping = dict(layer_map("uniform", s.config.num_hidden_layers, t.config.num_hidden_layers).blocks)
    width = dt // ht
    for si, sl in enumerate(s.encoder.layer, start=1):
        tl = t.encoder.layer[mapping[si] - 1]
        if head_ok:
            rows = _head_rows(tl, hs, ht, width)
            for name in ("query", "key", "value"):
                dst, src = getattr(sl.attention.self, name), getattr(tl.attention.self, name)
                dst.weight.copy_(src.weight[rows] @ P)
                dst.bias.copy_(src.bias[rows])
            so, to = sl.attention.output, tl.attention.output
            so.dense.weight.copy_(P.T @ to.dense.weight[:, rows])
            so.dense.bias.copy_(P.T @ to.dense.bias)
        ln(sl.attention.output.LayerNorm, tl.attention.output.LayerNorm)
        w1 = tl.intermediate.dense.weight @ P  # (teacher intermediate, ds)
        w2 = P.T @ tl.output.dense.weight  # (ds, teacher intermediate)
        strength = w1.norm(dim=1) * w2.norm(dim=0)
        keep = strength.topk(min(s.config.intermediate_size, len(strength))).indices.sort().values
        n = len(keep)
        sl.intermediate.dense.weight[:n].copy_(w1[keep])
        sl.intermediate.dense.bias[:n].copy_(tl.intermediate.dense.bias[keep])
        sl.output.dense.weight[:, :n].copy_(w2[:, keep])
        sl.output.dense.bias.copy_(P.T @ tl.output.dense.bias)
        ln(sl.output.LayerNorm, tl.output.LayerNorm)
    if isinstance(student.model.head, nn.Linear):
        student.model.head.weight.copy_(P)
    student.notes.append(f"initialised from teacher blocks {[mapping[i] for i in sorted(mapping)]} through "
                         f"{'the identity' if ds == dt else f'the top {ds} principal directions'}")


def _head_rows(layer: nn.Module, hs: int, ht: int, width: int) -> torch.Tensor:
    """Row indices of the strongest teacher head (by output-projection norm) in each of `hs` head groups."""
    out = layer.attention.output.dense.weight  # (dt, dt): columns are the heads' concatenated outputs
    norms = out.reshape(out.shape[0], ht, width).norm(dim=(0, 2))
    group = ht // hs
    chosen = [g * group + int(norms[g * group : (g + 1) * group].argmax()) for g in range(hs)]
    return torch.cat([torch.arange(h * width, (h + 1) * width) for h in chosen])


# -- saving and loading -----------------------------------------------------------------------------------------
def save_student(student: TextStudent, out: Path, teacher_tokenizer: Any = None, extra: dict | None = None) -> dict:
    """A `save_pretrained` folder (loadable as hf:OUT) + tokenizer + the embedding head as 2_Dense."""
    from safetensors.torch import save_file
    from transformers import BertTokenizer

    out.mkdir(parents=True, exist_ok=True)
    student.model.bert.save_pretrained(out)
    lower = bool(getattr(teacher_tokenizer, "do_lower_case", True)) if teacher_tokenizer is not None else True
    tok = BertTokenizer(vocab={t: i for i, t in enumerate(student.tokens)}, do_lower_case=lower)
    tok.model_max_length = student.model.bert.config.max_position_embeddings
    tok.save_pretrained(out)
    (out / "vocab.txt").write_text("\n".join(student.tokens) + "\n", encoding="utf-8")
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": student.spec.hidden, "pooling_mode_mean_tokens": True}, indent=2))
    head = student.model.head
    if isinstance(head, nn.Linear):
        dense = out / "2_Dense"
        dense.mkdir(exist_ok=True)
        save_file({"linear.weight": head.weight.detach().contiguous()}, dense / "model.safetensors")
        (dense / "config.json").write_text(json.dumps(
            {"in_features": head.in_features, "out_features": head.out_features, "bias": False,
             "activation_function": "torch.nn.modules.linear.Identity"}, indent=2))
        modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    meta = {"spec": asdict(student.spec), "vocab_size": len(student.tokens), "params": student.params(),
            "notes": student.notes, **(extra or {})}
    (out / "edgekit_student.json").write_text(json.dumps(meta, indent=2))
    return {"student": str(out)}


def load_text_student(path: str | Path) -> tuple[EmbeddingStudent, Any]:
    """(EmbeddingStudent, tokenizer) from a folder written by `save_student`."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, BertModel

    path = Path(path)
    if not (path / "config.json").is_file():
        raise EdgekitError(f"{path} is not a saved student folder (no config.json); pass the --out folder of "
                           "edgekit distill")
    from transformers import BertConfig

    from edgekit.models.factorised_embedding import CONFIG_KEY, load_bert

    config = BertConfig.from_pretrained(path, attn_implementation="eager")
    if getattr(config, CONFIG_KEY, 0):
        bert = load_bert(str(path), config)
    else:
        bert = BertModel.from_pretrained(path, add_pooling_layer=False, attn_implementation="eager")
    dense = path / "2_Dense" / "model.safetensors"
    weight = load_file(dense)["linear.weight"] if dense.is_file() else None
    model = EmbeddingStudent(bert, weight.shape[0] if weight is not None else bert.config.hidden_size)
    if weight is not None:
        with torch.no_grad():
            model.head.weight.copy_(weight)
    return model.eval(), AutoTokenizer.from_pretrained(path)
