"""The distillation trainer: AdamW with a cosine schedule, seeded and deterministic on CPU, a progress bar,
checkpoint and resume, evaluation after each epoch, mixed precision on CUDA, and DistributedDataParallel
when launched by `torchrun` (gloo on CPU, NCCL on CUDA) with no change to the calling code.

Why it is built this way:
- The student and the loss module (projections, a learnable temperature) are wrapped together in one
  module, so DDP synchronises every trained parameter, not only the student's.
- The data order of each epoch comes from a generator seeded by (seed, epoch), and the checkpoint saves the
  global RNG state: a run resumed from epoch k's checkpoint ends with the same weights as one that never
  stopped.
- The teacher is frozen and there is no augmentation, so its outputs (and tapped layers) are computed once
  for the whole training set when they fit in memory: distillation then costs little more than training
  the student alone.
- Training with `alpha=0` and no teacher is the same code path, which is what makes "the same student
  trained alone, same seed, same epochs" a fair baseline.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekit.errors import EdgekitError
from edgekit.train.distill.distributed import barrier, init_distributed
from edgekit.train.distill.losses import DistillationLoss, DistillConfig
from edgekit.train.distill.predict import accuracy_on, logits_of
from edgekit.train.distill.taps import FeatureTaps

CHECKPOINT_VERSION = 1
_AMP_MODES = ("auto", "off", "fp16", "bf16")
_TEACHER_CACHE_BYTES = 256 * 1024 * 1024


# -- data ------------------------------------------------------------------------------------------------------
@dataclass
class Data:
    """Samples (N x ...) and optional integer labels (N); `source` names them in messages and reports."""

    x: torch.Tensor
    y: torch.Tensor | None = None
    source: str = "data"

    def __post_init__(self) -> None:
        if isinstance(self.x, np.ndarray):
            self.x = torch.from_numpy(np.ascontiguousarray(self.x, dtype=np.float32))
        if isinstance(self.y, np.ndarray):
            self.y = torch.from_numpy(self.y.astype(np.int64))
        if self.y is not None and len(self.y) != len(self.x):
            raise EdgekitError(f"{self.source}: {len(self.y)} labels for {len(self.x)} samples")
        if len(self.x) == 0:
            raise EdgekitError(f"{self.source} has no samples")

    @classmethod
    def of(cls, value: Any, source: str = "data") -> Data:
        """A Data, a zoo Split / CalibrationSet (anything with .x and .y), or an (x, y) tuple."""
        if isinstance(value, Data):
            return value
        if hasattr(value, "x"):
            return cls(value.x, getattr(value, "y", None), getattr(value, "source", source))
        if isinstance(value, tuple) and len(value) == 2:
            return cls(value[0], value[1], source)
        return cls(value, None, source)

    def __len__(self) -> int:
        return len(self.x)


# -- configuration ---------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """How to train. `amp`: 'auto' (fp16 on CUDA, off on CPU), 'off', 'fp16' (CUDA) or 'bf16'.

    `cache_teacher`: 'auto' keeps the frozen teacher's outputs for the training set in memory when they take
    under 256 MiB; True / False force it.
    """

    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    progress: bool = True
    checkpoint: str | Path | None = None
    resume: bool = False
    cache_teacher: bool | str = "auto"
    grad_clip: float | None = None
    desc: str = "distill"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise EdgekitError(f"epochs must be at least 1 (got {self.epochs})")
        if self.batch_size < 1:
            raise EdgekitError(f"batch size must be at least 1 (got {self.batch_size})")
        if not self.lr > 0:
            raise EdgekitError(f"learning rate must be > 0 (got {self.lr})")
        if self.weight_decay < 0:
            raise EdgekitError(f"weight decay must be >= 0 (got {self.weight_decay})")
        if self.amp not in _AMP_MODES:
            raise EdgekitError(f"amp must be one of {', '.join(_AMP_MODES)} (got {self.amp!r})")
        if self.cache_teacher not in (True, False, "auto"):
            raise EdgekitError(f"cache_teacher must be True, False or 'auto' (got {self.cache_teacher!r})")
        if self.resume and self.checkpoint is None:
            raise EdgekitError("resume needs a checkpoint path (--out DIR holds checkpoint.pt)")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise EdgekitError(f"grad_clip must be > 0 (got {self.grad_clip})")

    def resolved_device(self) -> torch.device:
        if self.device != "auto":
            return torch.device(self.device)
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")

    def amp_dtype(self, device: torch.device) -> torch.dtype | None:
        if self.amp == "off" or (self.amp == "auto" and device.type != "cuda"):
            return None
        if self.amp == "fp16" and device.type != "cuda":
            raise EdgekitError("amp 'fp16' needs a CUDA device; on CPU use 'bf16' or 'off'")
        return torch.bfloat16 if self.amp == "bf16" else torch.float16


@dataclass
class TrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from_epoch: int = 0
    world_size: int = 1
    teacher_cached: bool = False

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


# -- helpers ---------------------------------------------------------------------------------------------------
def _set_mode(model: nn.Module, train: bool) -> None:
    """nn.Module.train/eval; torchao PT2E graphs only allow it once `allow_exported_model_train_eval` ran."""
    model.train(train)


class _Step(nn.Module):
    """Student forward + loss in one module, so DDP sees (and all-reduces) the loss's parameters too."""

    def __init__(self, student: nn.Module, loss: DistillationLoss, taps: FeatureTaps | None) -> None:
        super().__init__()
        self.student = student
        self.loss = loss
        self._taps = taps

    def forward(self, x, y, t_logits, t_feats, progress: float):
        s_logits = logits_of(self.student(x))
        s_feats = self._taps.take() if self._taps is not None else {}
        return self.loss(s_logits, t_logits, y, s_feats, t_feats, progress)


def _fingerprint(config: TrainConfig, loss: DistillationLoss, world: int) -> dict[str, Any]:
    return {"epochs": config.epochs, "batch_size": config.batch_size, "lr": config.lr,
            "weight_decay": config.weight_decay, "seed": config.seed, "world_size": world,
            "loss": json.dumps(loss.config.describe(), sort_keys=True)}


def check_fingerprint(path: Path, saved: dict[str, Any], fingerprint: dict[str, Any]) -> None:
    """A checkpoint resumes only the run it came from: every setting that shapes training must match."""
    diff = [k for k in fingerprint if saved.get(k) != fingerprint[k]]
    if diff:
        was = ", ".join(f"{k}={saved.get(k)}" for k in diff)
        now = ", ".join(f"{k}={fingerprint[k]}" for k in diff)
        raise EdgekitError(f"checkpoint {path} was written with {was}, this run asks for {now}: resume with "
                           "the same settings, or start over without --resume")


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# -- the trainer -----------------------------------------------------------------------------------------------
class Trainer:
    """Trains `student` against `teacher` with the loss `loss` (a DistillConfig) under `config`.

    With `teacher=None` the loss must not need one (alpha=0, no layer pairs): that is plain supervised
    training through the very same loop, used for the student-alone baseline.

    `epoch_hook(epoch, student)` runs at the start of every epoch, after the student was put in training
    mode (QAT uses it to freeze batch norm and observers); it must depend on the epoch only, so that a
    resumed run does what an uninterrupted one did.

    `sampler` (e.g. data_score.ScheduledSampler) replaces the shuffled order: each epoch's batches come from
    `sampler.epoch_batches(epoch, epochs, steps)` (positions into `sampler.scores.kept`, samples dropped by
    scoring never seen); a sampler with `refresh(student, device)` is refreshed at the start of every epoch
    after the first, from the student's weights only, so a resumed run draws what an uninterrupted one did.
    """

    def __init__(self, student: nn.Module, config: TrainConfig | None = None, loss: DistillConfig | None = None,
                 teacher: nn.Module | None = None, log: Callable[[str], None] | None = None,
                 epoch_hook: Callable[[int, nn.Module], None] | None = None, sampler: Any = None) -> None:
        self.student = student
        self.sampler = sampler
        self.epoch_hook = epoch_hook
        self.teacher = teacher
        self.config = config or TrainConfig()
        self.loss_config = loss or DistillConfig()
        self.log = log or (lambda _msg: None)
        self.loss: DistillationLoss | None = None
        if teacher is None and self.loss_config.uses_teacher:
            raise EdgekitError("this distillation loss needs a teacher (alpha > 0 or layer pairs); pass a teacher "
                               "or use alpha=0 to train the student alone")

    # -- setup ---------------------------------------------------------------------------------------------
    def _check_data(self, train: Data) -> None:
        if self.loss_config.uses_labels and train.y is None:
            raise EdgekitError(
                f"training data '{train.source}' has no labels (no array 'y'), but the loss uses cross-entropy "
                f"(alpha {self.loss_config.alpha.describe()} < 1): add labels y, or pass --alpha 1 for pure "
                "distillation from the teacher"
            )

    def _probe(self, train: Data, device: torch.device, s_taps: FeatureTaps | None, t_taps: FeatureTaps | None):
        """One small eval-mode batch through both models: output sizes and tapped layer shapes."""
        x = train.x[: min(8, len(train))].to(device)
        was = self.student.training
        _set_mode(self.student, False)
        try:
            with torch.no_grad():
                s_out = logits_of(self.student(x))
                s_feats = s_taps.take() if s_taps else {}
                t_out, t_feats = None, {}
                if self.teacher is not None:
                    t_out = logits_of(self.teacher(x))
                    t_feats = t_taps.take() if t_taps else {}
        except EdgekitError:
            raise
        except Exception as exc:
            raise EdgekitError(f"a model failed on samples of shape {tuple(x.shape[1:])} from {train.source}: "
                               f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
        finally:
            _set_mode(self.student, was)
        if t_out is not None and tuple(t_out.shape[1:]) != tuple(s_out.shape[1:]):
            raise EdgekitError(
                f"teacher and student output sizes differ: teacher {tuple(t_out.shape[1:])}, student "
                f"{tuple(s_out.shape[1:])}; distillation needs the same classes: give the student the teacher's "
                "output size"
            )
        if train.y is not None and self.loss_config.uses_labels:
            classes = s_out.shape[1] if s_out.dim() >= 2 else 1
            top = int(train.y.max())
            if top >= classes or int(train.y.min()) < 0:
                raise EdgekitError(f"labels in {train.source} range {int(train.y.min())}..{top}, but the student "
                                   f"outputs {classes} classes")
        return ({k: tuple(v.shape) for k, v in s_feats.items()}, {k: tuple(v.shape) for k, v in t_feats.items()},
                s_out, t_out)

    @torch.no_grad()
    def _teacher_outputs(self, x: torch.Tensor, device: torch.device, t_taps: FeatureTaps | None):
        assert self.teacher is not None
        logits = logits_of(self.teacher(x.to(device))).float()
        feats = t_taps.take() if t_taps else {}
        return logits, {k: v.detach() for k, v in feats.items()}

    def _cache_teacher(self, train: Data, device: torch.device, t_taps: FeatureTaps | None, t_out: torch.Tensor,
                       t_shapes: dict[str, tuple[int, ...]]):
        if self.teacher is None or not self.loss_config.uses_teacher or self.config.cache_teacher is False:
            return None
        per_sample = (t_out[0].numel() + sum(math.prod(s[1:]) for s in t_shapes.values())) * 4
        if self.config.cache_teacher == "auto" and per_sample * len(train) > _TEACHER_CACHE_BYTES:
            return None
        logits, feats = [], {k: [] for k in t_shapes}
        for i in range(0, len(train), 256):
            lo, fe = self._teacher_outputs(train.x[i : i + 256], device, t_taps)
            logits.append(lo.cpu())
            for k in feats:
                feats[k].append(fe[k].float().cpu())
        return torch.cat(logits), {k: torch.cat(v) for k, v in feats.items()}

    # -- training ------------------------------------------------------------------------------------------
    def fit(self, train: Any, eval_data: Any = None) -> TrainResult:
        train = Data.of(train, "training data")
        evaluation = Data.of(eval_data, "evaluation data") if eval_data is not None else None
        cfg = self.config
        self._check_data(train)
        rank, world = init_distributed()
        main = rank == 0
        device = cfg.resolved_device()
        amp_dtype = cfg.amp_dtype(device)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % (2**32))

        self.student.to(device)
        if self.teacher is not None:
            self.teacher.to(device)
            _set_mode(self.teacher, False)
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        s_taps = FeatureTaps(self.student, self.loss_config.student_layers(), "student") \
            if self.loss_config.student_layers() else None
        t_taps = FeatureTaps(self.teacher, self.loss_config.teacher_layers(), "teacher") \
            if self.teacher is not None and self.loss_config.teacher_layers() else None
        try:
            return self._fit(train, evaluation, device, amp_dtype, rank, world, main, s_taps, t_taps)
        finally:
            for taps in (s_taps, t_taps):
                if taps is not None:
                    taps.close()

    def _fit(self, train: Data, evaluation: Data | None, device: torch.device, amp_dtype, rank: int, world: int,
             main: bool, s_taps: FeatureTaps | None, t_taps: FeatureTaps | None) -> TrainResult:
        cfg = self.config
        s_shapes, t_shapes, _s_out, t_out = self._probe(train, device, s_taps, t_taps)
        torch.manual_seed(cfg.seed)
        self.loss = DistillationLoss(self.loss_config, s_shapes, t_shapes).to(device)
        cache = self._cache_teacher(train, device, t_taps, t_out, t_shapes) if t_out is not None else None

        step_module: nn.Module = _Step(self.student, self.loss, s_taps)
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # a learned temperature goes unused in steps where alpha is 0 (a linear schedule ending at 0)
            a = self.loss_config.alpha
            alpha_hits_zero = (a.value if hasattr(a, "value") else min(a.start, a.end)) == 0.0
            step_module = DDP(step_module, device_ids=[device.index] if device.type == "cuda" else None,
                              find_unused_parameters=self.loss.learned_temperature is not None and alpha_hits_zero)

        temp_params = [p for n, p in self.loss.named_parameters() if n.startswith("learned_temperature")]
        temp_ids = {id(p) for p in temp_params}
        decay = [p for p in step_module.parameters() if p.requires_grad and id(p) not in temp_ids]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
        if temp_params:
            groups.append({"params": temp_params, "weight_decay": 0.0})
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
        per_rank = (len(self.sampler) if self.sampler is not None else len(train)) // world
        steps_per_epoch = max(1, math.ceil(per_rank / cfg.batch_size))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

        result = TrainResult(world_size=world, teacher_cached=cache is not None)
        start_epoch = 0
        ckpt_path = Path(cfg.checkpoint) if cfg.checkpoint is not None else None
        fingerprint = _fingerprint(cfg, self.loss, world)
        if cfg.resume and ckpt_path is not None and ckpt_path.is_file():
            start_epoch = self._load_checkpoint(ckpt_path, fingerprint, opt, sched, scaler, result)
            result.resumed_from_epoch = start_epoch
            if main:
                self.log(f"resumed from {ckpt_path} after epoch {start_epoch}/{cfg.epochs}")

        bar = None
        if cfg.progress and main:
            from tqdm import tqdm

            bar = tqdm(total=cfg.epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch, desc=cfg.desc,
                       unit="step", leave=False, dynamic_ncols=True)
        say = (bar.write if bar is not None else self.log) if main else (lambda _m: None)
        t_start = time.perf_counter()
        try:
            for epoch in range(start_epoch, cfg.epochs):
                t_epoch = time.perf_counter()
                _set_mode(self.student, True)
                self.loss.train()
                if self.epoch_hook is not None:
                    self.epoch_hook(epoch, self.student)
                if self.sampler is not None:
                    if epoch > 0 and hasattr(self.sampler, "refresh"):
                        self.sampler.refresh(self.student, device)
                        _set_mode(self.student, True)
                    kept = self.sampler.scores.kept
                    batches = [kept[b][rank::world]
                               for b in self.sampler.epoch_batches(epoch, cfg.epochs, steps_per_epoch)]
                else:
                    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
                    order = torch.randperm(len(train), generator=gen)[: per_rank * world][rank::world]
                    batches = [order[i * cfg.batch_size : (i + 1) * cfg.batch_size] for i in range(steps_per_epoch)]
                sums: dict[str, float] = {}
                count = 0
                for i in range(steps_per_epoch):
                    idx = batches[i]
                    if len(idx) == 0:
                        continue
                    progress = (epoch + i / steps_per_epoch) / cfg.epochs
                    x = train.x[idx].to(device, non_blocking=True)
                    y = train.y[idx].to(device) if train.y is not None else None
                    t_logits, t_feats = None, {}
                    if self.teacher is not None and self.loss_config.uses_teacher:
                        if cache is not None:
                            t_logits = cache[0][idx].to(device)
                            t_feats = {k: v[idx].to(device) for k, v in cache[1].items()}
                        else:
                            t_logits, t_feats = self._teacher_outputs(x, device, t_taps)
                    opt.zero_grad(set_to_none=True)
                    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                        total, parts = step_module(x, y, t_logits, t_feats, progress)
                    scaler.scale(total).backward()
                    if cfg.grad_clip is not None:
                        scaler.unscale_(opt)
                        nn.utils.clip_grad_norm_(step_module.parameters(), cfg.grad_clip)
                    scaler.step(opt)
                    scaler.update()
                    sched.step()
                    n = len(idx)
                    count += n
                    sums["loss"] = sums.get("loss", 0.0) + float(total.detach()) * n
                    for k, v in parts.items():
                        sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(epoch=epoch + 1, loss=f"{float(total.detach()):.4f}", refresh=False)
                record: dict[str, Any] = {"epoch": epoch + 1, **{k: v / max(count, 1) for k, v in sums.items()}}
                record["lr"] = float(sched.get_last_lr()[0])
                record["alpha"] = self.loss.alpha((epoch + 1) / cfg.epochs)
                temp = self.loss.temperature((epoch + 1) / cfg.epochs)
                record["temperature"] = float(temp.detach()) if isinstance(temp, torch.Tensor) else float(temp)
                if evaluation is not None:
                    record["eval_accuracy"] = accuracy_on(self.student, evaluation, device)
                record["seconds"] = time.perf_counter() - t_epoch
                result.history.append(record)
                acc = record.get("eval_accuracy")
                say(f"{cfg.desc} epoch {epoch + 1}/{cfg.epochs}: loss {record['loss']:.4f}"
                    + "".join(f", {k} {record[k]:.4f}" for k in ("kd", "ce", "features", "attention", "hidden")
                              if k in record)
                    + (f", eval accuracy {acc:.4f}" if acc is not None else ""))
                if ckpt_path is not None and main:
                    self._save_checkpoint(ckpt_path, fingerprint, epoch + 1, opt, sched, scaler, result)
                barrier()
        finally:
            if bar is not None:
                bar.close()
        _set_mode(self.student, False)
        result.seconds = time.perf_counter() - t_start
        return result

    # -- checkpoints ---------------------------------------------------------------------------------------
    def _save_checkpoint(self, path: Path, fingerprint: dict[str, Any], epoch: int, opt, sched, scaler,
                         result: TrainResult) -> None:
        assert self.loss is not None
        state = {
            "version": CHECKPOINT_VERSION,
            "epoch": epoch,
            "fingerprint": fingerprint,
            "student": self.student.state_dict(),
            "loss": self.loss.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": torch.get_rng_state(),
            "history": copy.deepcopy(result.history),
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.config).items()},
        }
        _atomic_save(state, path)

    def _load_checkpoint(self, path: Path, fingerprint: dict[str, Any], opt, sched, scaler,
                         result: TrainResult) -> int:
        assert self.loss is not None
        from edgekit.models.checkpoint import load_torch_file

        state = load_torch_file(path, "training checkpoint")  # weights_only: a checkpoint is data, never code
        if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
            raise EdgekitError(f"{path} is not an edgekit training checkpoint (version {CHECKPOINT_VERSION})")
        check_fingerprint(path, state["fingerprint"], fingerprint)
        try:
            self.student.load_state_dict(state["student"])
        except RuntimeError as exc:
            raise EdgekitError(f"checkpoint {path} does not fit this student: {str(exc).splitlines()[0]}") from None
        self.loss.load_state_dict(state["loss"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        result.history = list(state["history"])
        return int(state["epoch"])


def state_digest(model: nn.Module) -> str:
    """sha256 over a state dict's tensors: equal digests mean bit-identical weights (used by tests and logs)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
