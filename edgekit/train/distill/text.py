"""Distilling a transformer encoder (a Hugging Face BERT-style model) into a smaller one on unlabelled text.

The loss, with α and the temperature following the same schedules as the CNN stage:

    (1 − α) · output + α · (hidden_weight · hidden + attention_weight · attention)

- output: cosine (or MSE) between the mean-pooled sentence embeddings, the student's mapped into the
  teacher's width by its head: an encoder without labels is judged by its embedding;
- hidden: 1 − cos between mapped layers' token states through a learned projection (initialised to the
  student's principal basis when it was built from the teacher);
- attention: KL (or MSE) between attention maps of mapped blocks, teacher heads averaged in groups, both
  softened by the temperature.

With α going 0.7 -> 0.3 the student first copies the teacher's internals and then its output, the order
TinyBERT found to work. `output_only=True` drops the layer terms: the baseline that shows what they bought.
What they buy depends on the budget. The measurements are all-MiniLM-L6-v2 into the 1/8 preset, paired on
300 held-out sentences, same seed and steps. On 1,500 sentences the layer terms gained +0.0047 cosine
(95 % interval +0.0027 to +0.0068). On all 96,419 corpus sentences (6,028 steps) both students reached
0.90, and the layer terms cost -0.0018 (-0.0032 to -0.0005). The teacher's internals guide a student that
sees little data; with enough data the output alone is the better target. That is also why the stage
drops the layer targets when they would not fit in memory.

Why a loop of its own next to `Trainer`: the inputs are ragged token sequences (padded per batch, a mask
everywhere), the teacher's targets are per-layer tensors of per-sample length, and the sampler reorders data
from scores that change during training. It reuses the same pieces: seeded data order per epoch,
AdamW with cosine decay, DistributedDataParallel under torchrun (gloo on CPU) over the student and the
loss's projections together, and the frozen teacher's outputs computed once.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.errors import EdgekitError
from edgekit.train.distill.data_score import DataScores, ScheduledSampler, bucketed_batches, uniform_batches
from edgekit.train.distill.distributed import barrier, init_distributed, is_main_process
from edgekit.train.distill.layer_map import LayerMap
from edgekit.train.distill.schedules import (
    AlphaSpec,
    ConstantAlpha,
    ConstantTemperature,
    LearnableTemperatureConfig,
    LinearAlpha,
    StagedTemperature,
    TemperatureSpec,
    parse_alpha,
    parse_temperature,
)
from edgekit.train.distill.student import TextStudent
from edgekit.train.distill.text_losses import (
    ATTENTION_LOSSES,
    OUTPUT_LOSSES,
    attention_loss,
    embedding_loss,
    group_heads,
    hidden_cosine,
    mean_pool,
)
from edgekit.train.distill.trainer import TrainConfig, check_fingerprint

SAMPLING = ("uniform", "scored")


@dataclass(frozen=True)
class TextDistillConfig:
    layer_map: str = "uniform"
    embeddings: bool = True
    hidden_weight: float = 1.0
    attention_weight: float = 1.0
    attention_loss: str = "kl"
    output_loss: str = "cosine"
    alpha: AlphaSpec | str | float = "0.7:0.3"
    temperature: TemperatureSpec | str | float = "5,2,1"
    output_only: bool = False
    max_length: int = 64
    sampling: str = "uniform"
    bucket: bool = True  # uniform sampling in batches of similar length (less padding, same data per pass)

    def __post_init__(self) -> None:
        if not isinstance(self.alpha, ConstantAlpha | LinearAlpha):
            object.__setattr__(self, "alpha", parse_alpha(self.alpha))
        if not isinstance(self.temperature, ConstantTemperature | StagedTemperature | LearnableTemperatureConfig):
            object.__setattr__(self, "temperature", parse_temperature(self.temperature))
        if self.attention_loss not in ATTENTION_LOSSES:
            raise EdgekitError(f"attention loss must be one of {', '.join(ATTENTION_LOSSES)} "
                               f"(got {self.attention_loss!r})")
        if self.output_loss not in OUTPUT_LOSSES:
            raise EdgekitError(f"output loss must be one of {', '.join(OUTPUT_LOSSES)} (got {self.output_loss!r})")
        if self.sampling not in SAMPLING:
            raise EdgekitError(f"sampling must be one of {', '.join(SAMPLING)} (got {self.sampling!r})")
        if not 8 <= self.max_length <= 512:
            raise EdgekitError(f"max length must be within 8..512 tokens (got {self.max_length})")
        for name in ("hidden_weight", "attention_weight"):
            if not getattr(self, name) >= 0:
                raise EdgekitError(f"{name} must be >= 0 (got {getattr(self, name)})")

    def describe(self) -> dict[str, Any]:
        return {"layer_map": self.layer_map, "hidden_weight": self.hidden_weight,
                "attention_weight": self.attention_weight, "attention_loss": self.attention_loss,
                "output_loss": self.output_loss, "alpha": self.alpha.describe(),
                "temperature": self.temperature.describe(), "output_only": self.output_only,
                "max_length": self.max_length, "sampling": self.sampling, "bucket": self.bucket}


# -- data and the teacher's targets ----------------------------------------------------------------------------
def encode(tokenizer: Any, sentences: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each sentence ([CLS] ... [SEP]), truncated to `max_length`."""
    return tokenizer(list(sentences), truncation=True, max_length=max_length)["input_ids"]


def teacher_forward(teacher: nn.Module, ids: torch.Tensor, mask: torch.Tensor):
    out = teacher(input_ids=ids, attention_mask=mask, output_attentions=True, output_hidden_states=True,
                  return_dict=True)
    if out.attentions is None or out.hidden_states is None or any(a is None for a in out.attentions):
        raise EdgekitError("the teacher returned no attention maps or hidden states; load it with "
                           "attn_implementation='eager'")
    return out


def pad(batch: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(x) for x in batch)
    ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    for i, x in enumerate(batch):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    return ids, mask


@dataclass
class TeacherTargets:
    """The frozen teacher's outputs for every training sentence, unpadded, in float16 for the layers."""

    embedding: torch.Tensor  # (N, teacher width)
    hidden: list[list[torch.Tensor]]  # [pair][sample] -> (tokens, width)
    attention: list[list[torch.Tensor]]  # [block pair][sample] -> (heads, tokens, tokens)
    lmap: LayerMap
    heads: int

    def __len__(self) -> int:
        return len(self.embedding)


@torch.no_grad()
def teacher_targets(teacher: nn.Module, ids: list[list[int]], lmap: LayerMap, student_heads: int,
                    pad_id: int, batch_size: int = 64, progress: Callable[[int], None] | None = None,
                    layers: bool = True, embedding: torch.Tensor | None = None) -> TeacherTargets:
    """Run the teacher once over all sentences (length-sorted batches: little padding) and keep what the
    loss needs; teacher heads are averaged down to the student's head count here, once.

    `layers=False` keeps only the pooled embeddings (what output-only distillation needs): a float per
    width per sentence instead of per token and per attention cell, so tens of thousands of sentences fit
    in memory, and the teacher runs without returning its maps. `embedding` (N, width), when given (a cache
    of an earlier run), skips the teacher entirely in that case."""
    teacher.eval()
    if not layers:
        if embedding is None:
            embedding = embed(teacher, ids, pad_id, batch_size, teacher=True, sort=True, progress=progress)
        return TeacherTargets(embedding.float(), [], [], lmap, student_heads)
    n = len(ids)
    order = sorted(range(n), key=lambda i: len(ids[i]))
    emb = torch.zeros(n, teacher.config.hidden_size)
    hidden: list[list[Any]] = [[None] * n for _ in lmap.pairs]
    att: list[list[Any]] = [[None] * n for _ in lmap.blocks]
    ht = teacher.config.num_attention_heads
    heads = student_heads if ht % student_heads == 0 else 1
    for start in range(0, n, batch_size):
        chunk = order[start : start + batch_size]
        x, m = pad([ids[i] for i in chunk], pad_id)
        out = teacher_forward(teacher, x, m)
        e = mean_pool(out.last_hidden_state, m)
        for j, i in enumerate(chunk):
            length = len(ids[i])
            emb[i] = e[j]
            for p, (_, t) in enumerate(lmap.pairs):
                hidden[p][i] = out.hidden_states[t][j, :length].half().clone()
            for p, (_, t) in enumerate(lmap.blocks):
                a = group_heads(out.attentions[t - 1][j : j + 1, :, :length, :length], heads)[0]
                att[p][i] = a.half().clone()
        if progress is not None:
            progress(len(chunk))
    return TeacherTargets(emb, hidden, att, lmap, heads)


def collate(positions: torch.Tensor, ids: list[list[int]], targets: TeacherTargets, vocab_map: torch.Tensor,
            pad_id: int, with_layers: bool) -> dict[str, Any]:
    """A padded batch: student input ids (teacher ids mapped to the student's vocabulary), mask, targets."""
    rows = positions.tolist()
    x, mask = pad([ids[i] for i in rows], pad_id)
    batch: dict[str, Any] = {"ids": vocab_map[x], "mask": mask, "t_emb": targets.embedding[positions]}
    length = x.shape[1]
    if with_layers:
        batch["t_hidden"] = [_stack([h[i] for i in rows], length) for h in targets.hidden]
        batch["t_att"] = [_stack([a[i] for i in rows], length, square=True) for a in targets.attention]
    return batch


def _stack(parts: list[torch.Tensor], length: int, square: bool = False) -> torch.Tensor:
    shape = (len(parts), *parts[0].shape[:-2], length, length) if square else (len(parts), length,
                                                                                  parts[0].shape[-1])
    out = torch.zeros(shape)
    for i, p in enumerate(parts):
        n = p.shape[-1] if square else p.shape[0]
        if square:
            out[i, ..., :n, :n] = p.float()
        else:
            out[i, :n] = p.float()
    return out


# -- the loss --------------------------------------------------------------------------------------------------
class TextDistillLoss(nn.Module):
    """The configured terms; projections student width -> teacher width per mapped hidden layer."""

    def __init__(self, config: TextDistillConfig, lmap: LayerMap, student_width: int, teacher_width: int,
                 basis: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.lmap = lmap
        temp = config.temperature
        self.learned_temperature = temp.build() if isinstance(temp, LearnableTemperatureConfig) else None
        self.proj = nn.ModuleList()
        if not config.output_only:
            for _ in lmap.pairs:
                if student_width == teacher_width:
                    self.proj.append(nn.Identity())
                    continue
                lin = nn.Linear(student_width, teacher_width, bias=False)
                if basis is not None and tuple(basis.shape) == (teacher_width, student_width):
                    with torch.no_grad():
                        lin.weight.copy_(basis)
                self.proj.append(lin)

    def temperature(self, progress: float):
        if self.learned_temperature is not None:
            return self.learned_temperature(progress)
        return self.config.temperature(progress)

    def forward(self, s_emb, s_hidden, s_att, batch: dict[str, Any], progress: float):
        cfg = self.config
        mask = batch["mask"]
        per_sample = 1 - F.cosine_similarity(s_emb.float(), batch["t_emb"].float(), dim=-1)
        out = embedding_loss(s_emb, batch["t_emb"], cfg.output_loss)
        parts = {"output": out}
        if cfg.output_only:
            return out, parts, per_sample.detach()
        alpha = cfg.alpha(progress)
        temp = self.temperature(progress)
        hid = sum(hidden_cosine(self.proj[p](s_hidden[s]), batch["t_hidden"][p], mask)
                  for p, (s, _) in enumerate(self.lmap.pairs)) / len(self.lmap.pairs)
        parts["hidden"] = hid
        total_layers = cfg.hidden_weight * hid
        if self.lmap.blocks:
            att = sum(attention_loss(s_att[s - 1], batch["t_att"][p], mask, cfg.attention_loss, temp)
                      for p, (s, _) in enumerate(self.lmap.blocks)) / len(self.lmap.blocks)
            parts["attention"] = att
            total_layers = total_layers + cfg.attention_weight * att
        return (1 - alpha) * out + alpha * total_layers, parts, per_sample.detach()


class _TextStep(nn.Module):
    """Student forward + loss in one module, so DDP all-reduces the projections' gradients too."""

    def __init__(self, student: nn.Module, loss: TextDistillLoss) -> None:
        super().__init__()
        self.student = student
        self.loss = loss

    def forward(self, batch: dict[str, Any], progress: float):
        if self.loss.config.output_only:
            s_emb, s_hidden, s_att = self.student(batch["ids"], batch["mask"]), (), ()
        else:
            s_emb, s_hidden, s_att = self.student(batch["ids"], batch["mask"], states=True)
        return self.loss(s_emb, s_hidden, s_att, batch, progress)


# -- training --------------------------------------------------------------------------------------------------
@dataclass
class TextFitResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    world_size: int = 1
    steps: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    resumed_from_epoch: int = 0


@dataclass
class TextData:
    """Tokenised training sentences with the teacher's targets (and optional scores)."""

    ids: list[list[int]]
    targets: TeacherTargets
    pad_id: int
    scores: DataScores | None = None


def fit_text(student: TextStudent, data: TextData, config: TextDistillConfig, train: TrainConfig,
             evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
             log: Callable[[str], None] | None = None, steps_per_epoch: int | None = None,
             on_epoch: Callable[[int], None] | None = None) -> TextFitResult:
    """Train `student.model` in place. `steps_per_epoch` defaults to one pass over the (kept) data.
    With `train.checkpoint` set, a checkpoint is written after every epoch (`train.resume` continues from
    it); `on_epoch(epoch)` runs after that (tests use it to stop a run as an interruption would)."""
    log = log or (lambda _m: None)
    rank, world = init_distributed()
    main = is_main_process()
    device = train.resolved_device()
    torch.manual_seed(train.seed)
    model = student.model.to(device)
    lmap = data.targets.lmap
    loss = TextDistillLoss(config, lmap, model.bert.config.hidden_size, data.targets.embedding.shape[1],
                           student.basis).to(device)
    step_module: nn.Module = _TextStep(model, loss)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        step_module = DDP(step_module, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in step_module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)

    sampler = None
    positions = torch.arange(len(data.ids))
    if config.sampling == "scored":
        if data.scores is None:
            raise EdgekitError("scored sampling needs data scores (score the data first)")
        sampler = ScheduledSampler(data.scores, train.batch_size * world, seed=train.seed)
        positions = data.scores.kept
    n = len(positions)
    global_batch = min(train.batch_size * world, n)
    steps = steps_per_epoch or max(1, math.ceil(n / global_batch))
    total_steps = train.epochs * steps
    warmup = max(1, total_steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(k, total_steps) / total_steps)))

    result = TextFitResult(world_size=world, steps=total_steps)
    ckpt = Path(train.checkpoint) if train.checkpoint is not None else None
    fingerprint = {"config": json.dumps(config.describe(), sort_keys=True, default=str), "epochs": train.epochs,
                   "batch_size": train.batch_size, "lr": train.lr, "seed": train.seed, "steps_per_epoch": steps,
                   "samples": n, "world_size": world, "student_params": student.params()}
    start_epoch = 0
    if train.resume and ckpt is not None and ckpt.is_file():
        start_epoch = load_text_checkpoint(ckpt, fingerprint, step_module, opt, sched, sampler, result)
        result.resumed_from_epoch = start_epoch
        log(f"resumed from {ckpt} after epoch {start_epoch}/{train.epochs}")
    lengths = torch.tensor([len(data.ids[i]) for i in positions.tolist()])
    t_start = time.perf_counter()
    for epoch in range(start_epoch, train.epochs):
        t_epoch = time.perf_counter()
        model.train()
        if sampler is not None:
            local = sampler.epoch_batches(epoch, train.epochs, steps)
            batches = [sampler.scores.kept[b] for b in local]
        elif config.bucket:
            batches = bucketed_batches(lengths, global_batch, train.seed, epoch, steps)
            local = batches
        else:
            batches = uniform_batches(n, global_batch, train.seed, epoch, steps)
            local = batches
        seen_loss = torch.zeros(n)
        seen_count = torch.zeros(n)
        sums: dict[str, float] = {}
        count = 0
        for i, (rows, loc) in enumerate(zip(batches, local, strict=True)):
            rows, loc = rows[rank::world], loc[rank::world]
            if len(rows) == 0:
                continue
            progress = (epoch + i / steps) / train.epochs
            batch = collate(rows, data.ids, data.targets, student.vocab_map, data.pad_id, not config.output_only)
            batch = {k: ([t.to(device) for t in v] if isinstance(v, list) else v.to(device))
                     for k, v in batch.items()}
            opt.zero_grad(set_to_none=True)
            total, parts, per_sample = step_module(batch, progress)
            total.backward()
            if train.grad_clip is not None:
                nn.utils.clip_grad_norm_(params, train.grad_clip)
            opt.step()
            sched.step()
            seen_loss.index_add_(0, loc, per_sample.cpu())
            seen_count.index_add_(0, loc, torch.ones(len(loc)))
            count += len(rows)
            sums["loss"] = sums.get("loss", 0.0) + float(total.detach()) * len(rows)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(rows)
        if world > 1:
            import torch.distributed as dist

            for t in (seen_loss, seen_count):
                dist.all_reduce(t)
        if sampler is not None:
            hit = seen_count > 0
            sampler.update_difficulty(hit.nonzero().flatten(), seen_loss[hit] / seen_count[hit])
        record: dict[str, Any] = {"epoch": epoch + 1, **{k: v / max(count, 1) for k, v in sums.items()}}
        record["lr"] = float(sched.get_last_lr()[0])
        record["alpha"] = config.alpha((epoch + 1) / train.epochs)
        temp = loss.temperature((epoch + 1) / train.epochs)
        record["temperature"] = float(temp.detach()) if isinstance(temp, torch.Tensor) else float(temp)
        if evaluate is not None and main:
            record.update(evaluate(model))
        record["seconds"] = time.perf_counter() - t_epoch
        result.history.append(record)
        if main:
            log(f"{train.desc} epoch {epoch + 1}/{train.epochs}: "
                + ", ".join(f"{k} {record[k]:.4f}" for k in ("loss", "output", "hidden", "attention",
                                                              "heldout_cosine") if k in record))
        if ckpt is not None and main:
            save_text_checkpoint(ckpt, fingerprint, epoch + 1, step_module, opt, sched, sampler, result)
        barrier()
        if on_epoch is not None:
            on_epoch(epoch + 1)
    model.eval()
    result.seconds = time.perf_counter() - t_start
    return result


TEXT_CHECKPOINT_VERSION = 1


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if hasattr(module, "module") and isinstance(module.module, _TextStep) else module


def save_text_checkpoint(path: Path, fingerprint: dict[str, Any], epoch: int, step_module: nn.Module, opt, sched,
                         sampler: ScheduledSampler | None, result: TextFitResult) -> None:
    """Everything a resumed run needs to continue the same schedule bit for bit: student and projection
    weights, optimiser and LR schedule, the global RNG (dropout), the sampler's difficulties, the history.
    Only tensors, numbers and strings: loadable with weights_only=True."""
    state = {"version": TEXT_CHECKPOINT_VERSION, "kind": "text", "epoch": epoch, "fingerprint": fingerprint,
             "step": _unwrap(step_module).state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "rng": torch.get_rng_state(),
             "difficulty": sampler.difficulty.clone() if sampler is not None else None,
             "history": json.loads(json.dumps(result.history))}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # a run killed while saving leaves the previous checkpoint intact


def load_text_checkpoint(path: Path, fingerprint: dict[str, Any], step_module: nn.Module, opt, sched,
                         sampler: ScheduledSampler | None, result: TextFitResult) -> int:
    """Restore a checkpoint written by `save_text_checkpoint`; the epoch it was written after."""
    from edgekit.models.checkpoint import load_torch_file

    state = load_torch_file(path, "training checkpoint")  # weights_only: a checkpoint is data, never code
    if not isinstance(state, dict) or state.get("version") != TEXT_CHECKPOINT_VERSION or state.get("kind") != "text":
        raise EdgekitError(f"{path} is not an edgekit text-distillation checkpoint (version "
                           f"{TEXT_CHECKPOINT_VERSION}); start over without --resume")
    check_fingerprint(path, state["fingerprint"], fingerprint)
    try:
        _unwrap(step_module).load_state_dict(state["step"])
    except RuntimeError as exc:
        raise EdgekitError(f"checkpoint {path} does not fit this student: {str(exc).splitlines()[0]}") from None
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    if sampler is not None and state.get("difficulty") is not None:
        sampler.difficulty = state["difficulty"].clone()
    result.history = list(state["history"])
    return int(state["epoch"])


# -- measuring -------------------------------------------------------------------------------------------------
@torch.no_grad()
def embed(model: nn.Module, ids: list[list[int]], pad_id: int, batch_size: int = 64,
          vocab_map: torch.Tensor | None = None, teacher: bool = False, sort: bool = False,
          progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Sentence embeddings (mean-pooled; the student's through its head) for tokenised sentences.
    `sort`: batches of similar length (results in the input order): far less padding on large sets."""
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(ids)), key=lambda i: len(ids[i])) if sort else list(range(len(ids)))
    out = []
    for start in range(0, len(ids), batch_size):
        x, m = pad([ids[i] for i in order[start : start + batch_size]], pad_id)
        if vocab_map is not None:
            x = vocab_map[x]
        x, m = x.to(device), m.to(device)
        if teacher:
            out.append(mean_pool(model(input_ids=x, attention_mask=m).last_hidden_state, m).float().cpu())
        else:
            out.append(model(x, m).float().cpu())
        if progress is not None:
            progress(len(x))
    result = torch.cat(out)
    if sort:
        result[torch.tensor(order)] = result.clone()
    return result
