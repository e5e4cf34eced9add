"""Quantization-aware training of multi-input (transformer) models for ONNX Runtime's dynamic int8.

What the exported int8 transformer does (edgekit.quant.transformer): activations are quantized at run time,
per call, so the only fixed rounding is the weights': each projection and feed-forward MatMul has int8
symmetric per-output-channel weights (scale = max|w| / 127 per channel, values in [-127, 127]) and each large
embedding table int8 symmetric per row (the same rule along the row). Those grids are therefore the one
thing training can fit the model to. This module fake-quantizes exactly those weights on exactly those
grids (a parametrization with a straight-through estimator: the forward pass sees the rounded weight, the
gradient reaches the float weight as if rounding were the identity) and trains against the FP32 model's
sentence embeddings (1 - cosine of the mean-pooled last hidden state) on real sentences.

After training the weights are snapped onto their grids, so the exporter's own quantization finds the same
per-channel maxima, hence the same scales, and rounds every weight back to itself: the int8 artifact holds
exactly the weights the QAT model was trained and evaluated with (checked by `grid_error`).

Why not torchao's PT2E QAT here: it quantizes activations statically (calibrated per-tensor ranges), the
form ONNX Runtime runs slower and less accurately on x86 transformers than dynamic int8, and torch.export of
a Hugging Face BERT is needed first; the static QDQ form is what PT2E would serve.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.quant.embedding import MIN_TABLE_ELEMENTS  # tables the exporter quantizes per row
from edgekit.train.text_grid import QMAX, attach, grid_error, snap

#: precisions whose weights this QAT fits (activations quantized per call, at run time)
PRECISIONS = ("dynamic-int8", "int8")


@dataclass(frozen=True)
class TextQATConfig:
    """How long and how fast to train, and which weights get the int8 grid.

    `embeddings`: fake-quantize the embedding tables the exporter quantizes per row (word and position
    tables of at least MIN_TABLE_ELEMENTS elements). `activations`: also round the Linear layers' inputs as
    ONNX Runtime's dynamic quantization does at run time (uint8 per call), so training sees the deployed
    error (the weights are still the only thing it can fit). `hidden_weight`: weight of a per-token term,
    1 - cos between the last hidden states, used when teacher and student share a tokenizer (more targets
    per sentence than the one pooled embedding). `max_length`: tokens per training sentence.
    `anchor_weight`: weight of a second target, 1 - cos to the student's own FP32 sentence embedding, used
    when the teacher is another model: distillation towards the teacher moves the student, and the int8
    artifact is judged against the FP32 student it replaces, so this term bounds how far QAT may move it.
    """

    steps: int = 300
    batch_size: int = 16
    lr: float = 2e-5
    weight_decay: float = 0.0
    max_length: int = 128
    seed: int = 0
    embeddings: bool = True
    activations: bool = True
    hidden_weight: float = 1.0
    anchor_weight: float = 0.0
    log_every: int = 50

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "max_length"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise EdgekitError(f"text QAT {name} must be a positive integer (got {v!r})")
        for name in ("hidden_weight", "anchor_weight"):
            v = getattr(self, name)
            if isinstance(v, bool) or not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise EdgekitError(f"text QAT {name} must be a number >= 0 (got {v!r})")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise EdgekitError(f"text QAT lr must be a positive number, e.g. 2e-5 (got {self.lr!r})")


@dataclass
class TextQATResult:
    model: Any  # the QAT'd Hugging Face model, weights on the int8 grid
    tokenizer: Any
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    folder: Path | None = None  # the save_pretrained folder (hf:FOLDER), when written
    artifact: Any = None  # the exported Artifact, when a target was given


# ---------------------------------------------------------------------------------------------------------
# data and models
def read_sentences(spec: str | Path, what: str = "data") -> list[str]:
    """zoo:sentences, zoo:sentences:test, or a text file with one sentence per line."""
    from edgekit.models.hf import read_text

    text = str(spec)
    if text.startswith("zoo:sentences"):
        from edgekit.data.text import zoo_sentences

        return read_text(zoo_sentences(text, what), what, at_least=2)
    if text.startswith("zoo:") or not text.endswith(".txt"):
        raise EdgekitError(f"{what} '{text}' is not text: QAT of a text model reads sentences (a .txt file, one "
                           "sentence per line, or zoo:sentences)")
    return read_text(Path(text), what, at_least=2)


def hf_folder(spec: Any, what: str) -> Path:
    text = str(spec)
    if not text.startswith("hf:"):
        raise EdgekitError(f"{what} '{text}' is not a Hugging Face folder: text QAT takes hf:DIR (a "
                           "save_pretrained folder with its tokenizer)")
    return Path(text[3:])


def load(spec: Any, what: str) -> tuple[Any, Any]:
    """(model, tokenizer) of an hf:DIR folder, eager attention, eval mode (dropout off: QAT fits the model to
    its deployed, deterministic self)."""
    from edgekit.models import hf

    folder = hf_folder(spec, what)
    hf.check_folder(folder, hf.DEFAULT_TASK)
    return hf.load_model(folder), hf.load_tokenizer(folder)


def projection_head(folder: Path):
    """The student's linear head into the teacher's embedding width (a sentence-transformers `2_Dense` module, as
    `edgekit distill` saves for a student narrower than its teacher), as a frozen function of the pooled
    embedding, or None when the folder has none. Frozen because `hf:` exports the pooled encoder output without
    it: the head only maps the student into the teacher's space for the loss and the teacher comparisons."""
    import json

    import torch

    weights = folder / "2_Dense" / "model.safetensors"
    if not weights.is_file():
        return None
    from safetensors.torch import load_file

    config_file = folder / "2_Dense" / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    activation = str(config.get("activation_function", "torch.nn.modules.linear.Identity"))
    if not activation.endswith("Identity"):
        raise EdgekitError(f"{folder}/2_Dense applies {activation}; text QAT maps a student into the teacher's "
                           "width with a linear head only: pass the student's own FP32 folder as --teacher")
    tensors = load_file(weights)
    if "linear.weight" not in tensors:
        raise EdgekitError(f"{weights} holds no linear.weight (has {', '.join(sorted(tensors)) or 'nothing'}): not "
                           "a Dense head saved by edgekit distill or sentence-transformers")
    weight = tensors["linear.weight"].float()
    bias = tensors.get("linear.bias")

    def head(emb):
        return torch.nn.functional.linear(emb, weight, None if bias is None else bias.float())

    head.in_features, head.out_features = int(weight.shape[1]), int(weight.shape[0])  # type: ignore[attr-defined]
    return head


def copy_student_files(src: Path, dst: Path) -> None:
    """The files of a student folder that `save_pretrained` does not write (sentence-transformers' pooling and
    projection-head modules, edgekit's student record), so the QAT'd folder is the same kind of student."""
    import shutil

    for name in ("modules.json", "edgekit_student.json", "1_Pooling", "2_Dense"):
        item = src / name
        if item.is_dir():
            shutil.copytree(item, dst / name, dirs_exist_ok=True)
        elif item.is_file():
            shutil.copy2(item, dst / name)


def hf_max_length(folder: Path) -> int:
    """The sequence length `hf:` exports at (its maximum): the default, capped by the model's positions."""
    import json

    from edgekit.models.hf import export_length

    return export_length(json.loads((folder / "config.json").read_text()))


def embed(model, tokenizer, sentences: Sequence[str], max_length: int, batch_size: int = 32, grad: bool = False):
    """Mean-pooled last hidden states (the sentence embedding hf: exports as its first output)."""
    import torch

    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx:
        parts = [forward(model, tokenizer, sentences[i : i + batch_size], max_length)[0]
                 for i in range(0, len(sentences), batch_size)]
    return torch.cat(parts)


def forward(model, tokenizer, sentences: Sequence[str], max_length: int):
    """(sentence embeddings, last hidden states, attention mask) of one batch padded to its longest sentence."""
    from edgekit.train.distill.text_losses import mean_pool

    enc = tokenizer(list(sentences), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    return mean_pool(hidden, enc["attention_mask"]), hidden, enc["attention_mask"]


def token_states(model, tokenizer, sentences: Sequence[str], max_length: int, batch_size: int = 32) -> list[Any]:
    """Each sentence's last hidden states over its real tokens (the per-token targets)."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(sentences), batch_size):
            _, hidden, mask = forward(model, tokenizer, sentences[i : i + batch_size], max_length)
            out += [h[: int(m.sum())] for h, m in zip(hidden, mask, strict=True)]
    return out


def cosine_stats(a, b) -> dict[str, float]:
    import torch.nn.functional as F

    cos = F.cosine_similarity(a.double(), b.double(), dim=-1)
    return {"mean": float(cos.mean()), "worst": float(cos.min())}


# ---------------------------------------------------------------------------------------------------------
def train(student, tokenizer, sentences: Sequence[str], targets, config: TextQATConfig,
          log: Callable[[str], None] | None = None, evaluate: Callable[[], dict[str, float]] | None = None,
          token_targets: list[Any] | None = None, anchors=None, head: Callable | None = None
          ) -> list[dict[str, Any]]:
    """AdamW with cosine decay over `config.steps` seeded batches; loss 1 - cos(student, teacher embedding),
    plus `config.hidden_weight` x the mean over real tokens of 1 - cos(student, teacher last hidden state)
    when `token_targets` (the teacher's, same tokenizer) are given, plus `config.anchor_weight` x
    1 - cos(student, `anchors`) (the FP32 student's own embeddings) when given. `head` maps the student's
    embedding into the teacher's width for the first term (None: the widths match)."""
    import torch
    import torch.nn.functional as F

    log = log or (lambda _m: None)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, config.steps) / config.steps)))
    rng = random.Random(config.seed)
    order: list[int] = []
    history: list[dict[str, Any]] = []
    running = 0.0
    started = time.perf_counter()
    for step in range(1, config.steps + 1):
        if len(order) < config.batch_size:
            more = list(range(len(sentences)))
            rng.shuffle(more)
            order += more
        idx, order = order[: config.batch_size], order[config.batch_size :]
        got, hidden, mask = forward(student, tokenizer, [sentences[i] for i in idx], config.max_length)
        loss = (1 - F.cosine_similarity(head(got) if head is not None else got, targets[idx], dim=-1)).mean()
        if anchors is not None and config.anchor_weight > 0:
            loss = loss + config.anchor_weight * (1 - F.cosine_similarity(got, anchors[idx], dim=-1)).mean()
        if token_targets is not None and config.hidden_weight > 0:
            want = torch.zeros_like(hidden)
            for row, i in enumerate(idx):
                want[row, : len(token_targets[i])] = token_targets[i]
            per_token = 1 - F.cosine_similarity(hidden, want, dim=-1, eps=1e-8)
            m = mask.to(per_token.dtype)
            loss = loss + config.hidden_weight * (per_token * m).sum() / m.sum().clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += float(loss.detach())
        if step % config.log_every == 0 or step == config.steps:
            row: dict[str, Any] = {"step": step, "loss": running / (step % config.log_every or config.log_every),
                                   "lr": sched.get_last_lr()[0], "seconds": round(time.perf_counter() - started, 1)}
            if evaluate is not None:
                row.update(evaluate())
            history.append(row)
            log(f"qat step {step}/{config.steps}: loss {row['loss']:.5f}"
                + (f", held-out cosine {row['heldout_cosine']:.5f}" if "heldout_cosine" in row else ""))
            running = 0.0
    return history


def _runner_embeddings(artifact, tokenizer, sentences: Sequence[str], max_length: int):
    """The artifact's first output (the sentence embedding) on `sentences`, run by its own runner."""
    import torch

    from edgekit.backends import registry
    from edgekit.backends.base import run_batched

    enc = tokenizer(list(sentences), padding=True, truncation=True, max_length=max_length, return_tensors="np")
    feeds = {i["name"]: enc[i["name"]].astype("int64") for i in artifact.manifest["inputs"]}
    runner = registry.runner_class(artifact.manifest["backend"])(artifact.path, artifact.manifest)
    with runner:
        out = run_batched(runner, feeds)
    return torch.from_numpy(out[0]).float()


def qat_text(teacher: Any, student: Any, data: Any, eval_data: Any = None, *, config: TextQATConfig | None = None,
             target: str | None = "x86-server-cpu", precision: str = "dynamic-int8", out: Path | str | None = None,
             force: bool = False, log: Callable[[str], None] | None = None) -> TextQATResult:
    """QAT of an hf: `student` for the dynamic-int8 transformer form, distilled from the FP32 `teacher` (the
    model it was distilled from, or the student's own FP32 self): fake-quantized int8 weights, embedding
    cosine loss, weights snapped onto the grid. With `out`, writes OUT/student_qat (an hf: folder keeping the
    student folder's sentence-transformers files) and, with a `target`, exports it through the normal export
    path to OUT/artifact and measures the artifact against the FP32 teacher and the FP32 student on
    `eval_data` (default `data`)."""
    import torch

    log = log or (lambda _m: None)
    config = config or TextQATConfig()
    if precision not in PRECISIONS:
        raise EdgekitError(f"text QAT fits the weights of ONNX Runtime's transformer int8 ({', '.join(PRECISIONS)}, "
                           f"activations quantized per call); got precision '{precision}'")
    out_path = Path(out) if out is not None else None
    if out_path is not None and out_path.exists() and any(out_path.iterdir()) and not force:
        raise EdgekitError(f"{out_path} exists and is not empty; pass --force (force=True) or another --out")
    tgt = None
    if target is not None:
        from edgekit.backends.registry import get_spec
        from edgekit.targets import load_target

        tgt = load_target(target)
        if get_spec(tgt.backend).qdq_style != "onnxruntime":  # the dynamic int8 grid is ONNX Runtime's
            raise EdgekitError(f"text QAT fits ONNX Runtime's dynamic int8 weights; target {tgt.name} runs "
                               f"{tgt.backend}: pick an onnxruntime target (e.g. x86-server-cpu)")
        tgt.check_precision(precision)
    from edgekit.models import hf

    for spec, what in ((teacher, "teacher"), (student, "student")):  # before any work
        hf.check_folder(hf_folder(spec, what), hf.DEFAULT_TASK)
    sentences = read_sentences(data, "training data")
    held = read_sentences(eval_data, "evaluation data") if eval_data is not None else sentences
    torch.manual_seed(config.seed)
    t_model, t_tok = load(teacher, "teacher")
    s_model, s_tok = load(student, "student")
    for p in t_model.parameters():
        p.requires_grad_(False)
    log(f"teacher embeddings for {len(sentences)} training and {len(held)} held-out sentences")
    t_train = embed(t_model, t_tok, sentences, config.max_length)
    t_held = embed(t_model, t_tok, held, config.max_length)
    s_held = embed(s_model, s_tok, held, config.max_length)  # the FP32 student the int8 artifact replaces
    width = int(s_held.shape[-1])
    head = projection_head(hf_folder(student, "student")) if width != t_train.shape[-1] else None
    if head is not None and head.in_features == width:
        width = head.out_features
    else:
        head = None
    if width != t_train.shape[-1]:
        raise EdgekitError(f"the student's embedding has {width} dimensions and the teacher's {t_train.shape[-1]}, "
                           "and the student folder has no 2_Dense head mapping one onto the other: pass the "
                           "student's own FP32 model as --teacher")

    def to_teacher(emb):  # the student's pooled embedding in the teacher's space
        return head(emb) if head is not None else emb

    fp32 = cosine_stats(to_teacher(s_held), t_held)
    anchors = embed(s_model, s_tok, sentences, config.max_length) if config.anchor_weight > 0 else None
    length = min(config.max_length, hf_max_length(hf_folder(student, "student")))  # what hf: exports at
    s_held_export = s_held if length == config.max_length else embed(s_model, s_tok, held, length)
    names = attach(s_model, config.embeddings, config.activations)
    ptq_emb = embed(s_model, s_tok, held, config.max_length)
    ptq, ptq_own = cosine_stats(to_teacher(ptq_emb), t_held), cosine_stats(ptq_emb, s_held)
    log(f"fake-quantized {len(names)} weight tensors on the exporter's int8 grid; before QAT: held-out cosine "
        f"{ptq['mean']:.5f} mean, {ptq['worst']:.5f} worst (FP32 student {fp32['mean']:.5f})")

    def heldout() -> dict[str, float]:
        got = embed(s_model, s_tok, held, config.max_length)
        c, own = cosine_stats(to_teacher(got), t_held), cosine_stats(got, s_held)
        return {"heldout_cosine": c["mean"], "heldout_cosine_worst": c["worst"],
                "heldout_cosine_vs_fp32_student": own["mean"], "heldout_cosine_vs_fp32_student_worst": own["worst"]}

    started = time.perf_counter()
    same_tokens = t_tok.get_vocab() == s_tok.get_vocab() and head is None  # per-token targets need both
    tokens = token_states(t_model, t_tok, sentences, config.max_length) \
        if same_tokens and config.hidden_weight > 0 else None
    history = train(s_model, s_tok, sentences, t_train, config, log, heldout, tokens, anchors, head)
    seconds = time.perf_counter() - started
    after_emb = embed(s_model, s_tok, held, config.max_length)
    snap(s_model)
    snapped_emb = embed(s_model, s_tok, held, config.max_length)
    after, snapped = cosine_stats(to_teacher(after_emb), t_held), cosine_stats(to_teacher(snapped_emb), t_held)
    metrics: dict[str, Any] = {
        "stage": "qat-text", "teacher": str(teacher), "student": str(student), "train_data": str(data),
        "eval_data": str(eval_data if eval_data is not None else data), "train_sentences": len(sentences),
        "eval_sentences": len(held), "config": asdict(config), "precision": precision,
        "weights": "int8 symmetric per output channel (Linear) / per row (embedding tables >= "
                   f"{MIN_TABLE_ELEMENTS} elements), range [-{QMAX}, {QMAX}], the exporter's dynamic-int8 grid",
        "fake_quantized": names, "seconds": round(seconds, 1),
        "projection_head": (f"2_Dense {head.in_features} -> {head.out_features}, frozen (not in the hf: export)"
                            if head is not None else None),
        "loss": "1 - cos(sentence embedding, teacher's)"
                + (f" + {config.hidden_weight:g} x mean over tokens of 1 - cos(last hidden state)" if tokens is not None
                   else "")
                + (f" + {config.anchor_weight:g} x (1 - cos(sentence embedding, FP32 student's))"
                   if anchors is not None else ""),
        "torch_cosine_vs_teacher": {"fp32_student": fp32, "simulated_int8_before_qat": ptq,
                                    "simulated_int8_after_qat": after, "qat_weights_float_activations": snapped},
        "torch_cosine_vs_fp32_student": {"simulated_int8_before_qat": ptq_own,
                                         "simulated_int8_after_qat": cosine_stats(after_emb, s_held),
                                         "qat_weights_float_activations": cosine_stats(snapped_emb, s_held)},
        "simulated": "int8 weights" + (" and per-call uint8 Linear inputs" if config.activations else ""),
        "grid_error_steps": grid_error(s_model, config.embeddings)}
    result = TextQATResult(s_model, s_tok, metrics, history)
    if out_path is None:
        return result
    out_path.mkdir(parents=True, exist_ok=True)
    folder = out_path / "student_qat"
    s_model.save_pretrained(folder)
    s_tok.save_pretrained(folder)
    copy_student_files(hf_folder(student, "student"), folder)
    result.folder = folder
    if tgt is not None:
        from edgekit.export import export

        art = export(f"hf:{folder}", tgt, precision, calib=data, eval=eval_data if eval_data is not None else data,
                     out=out_path / "artifact", force=True, progress=log)
        got = _runner_embeddings(art, s_tok, held, length)
        ref = embed(t_model, t_tok, held, length)
        qat_ref = embed(s_model, s_tok, held, length)
        metrics["artifact"] = {"path": str(art.path), "target": tgt.name, "precision": precision,
                               "cosine_vs_teacher": cosine_stats(to_teacher(got), ref),
                               "cosine_vs_fp32_student": cosine_stats(got, s_held_export),
                               "cosine_vs_qat_model": cosine_stats(got, qat_ref),
                               "verification": art.manifest["verification"]}
        result.artifact = art
    return result
