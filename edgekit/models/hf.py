"""Local Hugging Face model folders (what `save_pretrained` writes) as a model source: `hf:DIR`.

The folder is loaded with `transformers` (an optional extra), never downloaded (`local_files_only`), with
eager attention so the TorchScript ONNX exporter sees plain MatMul/Softmax. A task decides the outputs, as
Optimum's exporter does: `feature-extraction` gives the mean-pooled sentence embedding and the last hidden
state, `text-classification` the logits. The folder's tokenizer turns a text file (one sentence per line)
into the named inputs, padded to the exported maximum length.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.common.io import BATCH, SEQUENCE, Feeds, InputSpec, OutputSpec
from edgekit.errors import EdgekitError

TASKS = ("feature-extraction", "text-classification")
DEFAULT_TASK = "feature-extraction"
DEFAULT_MAX_LENGTH = 128
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json", "spiece.model")
_ARCH_TASK_SUFFIX = {"text-classification": "ForSequenceClassification"}


def _transformers():
    try:
        import transformers
    except ImportError:
        raise EdgekitError("hf: models need the 'transformers' package: pip install 'edgekit[text]'") from None
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def check_folder(folder: Path, task: str) -> dict[str, Any]:
    """The folder's config.json, after checking there is a model, a tokenizer and support for the task."""
    import json

    if not folder.is_dir():
        raise EdgekitError(f"hf: model folder not found: {folder}")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise EdgekitError(f"{folder} has no config.json: not a Hugging Face model folder (save_pretrained writes one)")
    try:
        config = json.loads(config_file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise EdgekitError(f"{config_file} is not valid JSON: {exc}") from None
    if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        raise EdgekitError(f"{folder} has no tokenizer files ({', '.join(_TOKENIZER_FILES[:2])}, ...): save the "
                           "tokenizer into the folder too (tokenizer.save_pretrained(DIR))")
    if task not in TASKS:
        raise EdgekitError(f"unknown --task '{task}'; available: {', '.join(TASKS)}")
    archs = [str(a) for a in config.get("architectures") or []]
    suffix = _ARCH_TASK_SUFFIX.get(task)
    if suffix and archs and not any(a.endswith(suffix) for a in archs):
        heads = [t for t, s in _ARCH_TASK_SUFFIX.items() if any(a.endswith(s) for a in archs)]
        supported = ["feature-extraction", *heads]
        raise EdgekitError(f"{folder} ({', '.join(archs)}) does not support task '{task}': it has no "
                           f"*{suffix} head; supported: {', '.join(supported)}")
    return config


def load_tokenizer(folder: Path):
    transformers = _transformers()
    try:
        return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgekitError(f"cannot load the tokenizer in {folder}: {first}") from None


def _wrapper(model: Any, task: str):
    """An nn.Module taking (input_ids, attention_mask) positionally and returning a tuple of tensors, which
    is what the ONNX exporter and edgekit's reference runs need."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask)
            if task == "text-classification":
                return (out.logits,)
            hidden = out.last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return pooled, hidden

    return Encoder().eval()


def input_specs(vocab_size: int, max_length: int) -> list[InputSpec]:
    dims = (BATCH, SEQUENCE)
    size = {BATCH: 1, SEQUENCE: max_length}
    return [InputSpec("input_ids", "int64", dims, "token_ids", vocab_size, size, {SEQUENCE: max_length}),
            InputSpec("attention_mask", "int64", dims, "attention_mask", None, size, {SEQUENCE: max_length})]


def output_specs(task: str) -> list[OutputSpec]:
    if task == "text-classification":
        return [OutputSpec("logits", "logits", (BATCH, "classes"))]
    return [OutputSpec("sentence_embedding", "embedding", (BATCH, "hidden")),
            OutputSpec("last_hidden_state", "hidden_state", (BATCH, SEQUENCE, "hidden"))]


def load_model(folder: Path, task: str = DEFAULT_TASK) -> Any:
    """The Hugging Face model of a checked folder for `task`, eager attention (so attention maps come back),
    in eval mode; a load failure is one EdgekitError."""
    from edgekit.models.factorised_embedding import CONFIG_KEY, load_bert

    transformers = _transformers()
    cls = transformers.AutoModel if task == "feature-extraction" else transformers.AutoModelForSequenceClassification
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True,
                                                         attn_implementation="eager")
        if getattr(config, CONFIG_KEY, 0) and task == "feature-extraction" and config.model_type == "bert":
            model = load_bert(str(folder), config)  # a factorised word-embedding table (Gather + MatMul)
        else:
            model = cls.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager")
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgekitError(f"cannot load {folder} with transformers ({task}): {first}") from None
    return model.eval()


def export_length(config: dict[str, Any]) -> int:
    """The sequence length an `hf:` model exports at by default: DEFAULT_MAX_LENGTH, capped by its positions."""
    return min(DEFAULT_MAX_LENGTH, int(config.get("max_position_embeddings") or DEFAULT_MAX_LENGTH))


def load(folder: Path, task: str | None, max_length: int | None = None) -> dict[str, Any]:
    """Everything models.SourceModel needs for `hf:DIR`: module, input/output specs, tokenizer."""
    task = task or DEFAULT_TASK
    config = check_folder(folder, task)
    model = load_model(folder, task)
    tokenizer = load_tokenizer(folder)
    positions = int(config.get("max_position_embeddings") or DEFAULT_MAX_LENGTH)
    length = int(max_length or export_length(config))
    if length > positions:
        raise EdgekitError(f"sequence length {length} exceeds {folder}'s max_position_embeddings ({positions})")
    vocab = int(config.get("vocab_size") or len(tokenizer))
    return {"module": _wrapper(model, task), "inputs": input_specs(vocab, length),
            "outputs": output_specs(task), "tokenizer": tokenizer, "task": task}


def read_text(path: Path, what: str = "data", at_least: int = 1) -> list[str]:
    """Non-empty lines of a UTF-8 text file, one sentence each (duplicates kept)."""
    if not path.is_file():
        raise EdgekitError(f"{what} file not found: {path} (expected a text file with one sentence per line)")
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError:
        raise EdgekitError(f"{what} file {path} is not UTF-8 text; give one sentence per line") from None
    lines = [ln for ln in lines if ln]
    if len(lines) < at_least:
        raise EdgekitError(f"{what} file {path} holds {len(lines)} sentence(s); give at least {at_least}, "
                           "one per line")
    return lines


def tokenize(tokenizer: Any, sentences: Sequence[str], specs: Sequence[InputSpec]) -> Feeds:
    """Sentences -> the model's named inputs, padded to the exported maximum length (int64)."""
    length = max((s.max.get(SEQUENCE) or s.example.get(SEQUENCE) or DEFAULT_MAX_LENGTH) for s in specs)
    enc = tokenizer(list(sentences), padding="max_length", truncation=True, max_length=int(length),
                    return_tensors="np")
    feeds: Feeds = {}
    for spec in specs:
        if spec.name not in enc:
            raise EdgekitError(f"the tokenizer gives {', '.join(enc)} but the model takes '{spec.name}'")
        feeds[spec.name] = np.asarray(enc[spec.name]).astype(np.dtype(spec.dtype))
    return feeds
