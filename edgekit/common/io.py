"""Named, typed model inputs and outputs, and the feeds (dicts of arrays keyed by input name) that go
through every stage.

A model is described by one InputSpec per input (name, dtype, dims where a string names a dynamic axis such
as `batch` or `sequence`, and what kind of values it takes) and one OutputSpec per output (with the metric
that fits it). A single float image input is one case among others; token ids and masks are int64, and a
transformer has several inputs. Only numpy here: this module sits below every runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError

DTYPES = ("float32", "float16", "int64", "int32", "bool")
#: what a sample of each input kind looks like (`InputSpec.sample`)
KINDS = ("float", "image", "token_ids", "attention_mask", "token_type_ids")
#: output kind -> the metric that fits it by default
OUTPUT_KINDS = {"logits": "agreement", "embedding": "cosine", "hidden_state": "cosine"}
METRICS = ("agreement", "cosine", "sqnr")
BATCH, SEQUENCE = "batch", "sequence"

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class InputSpec:
    """One model input. `dims` holds ints for fixed axes and names for dynamic ones; `example` holds the
    size each dynamic axis takes when a concrete sample is needed (export, random feeds), and `max` the
    largest size the exported graph accepts (a `sequence` longer than that is refused)."""

    name: str
    dtype: str = "float32"
    dims: tuple[int | str, ...] = ()
    kind: str = "float"
    vocab_size: int | None = None
    example: dict[str, int] = field(default_factory=dict)
    max: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise EdgekitError(f"input '{self.name}': unknown dtype '{self.dtype}'; use one of {', '.join(DTYPES)}")
        if self.kind not in KINDS:
            raise EdgekitError(f"input '{self.name}': unknown kind '{self.kind}'; use one of {', '.join(KINDS)}")

    @property
    def rank(self) -> int:
        return len(self.dims)

    @property
    def is_float(self) -> bool:
        return self.dtype.startswith("float")

    def concrete(self, batch: int | None = None, **sizes: int) -> tuple[int, ...]:
        """A concrete shape: dynamic axes take `sizes` (batch from `batch`), else their example size."""
        out = []
        for i, d in enumerate(self.dims):
            if isinstance(d, int) and not (i == 0 and batch is not None):
                out.append(d)
            elif i == 0 and batch is not None:
                out.append(batch)
            else:
                out.append(int(sizes.get(str(d), self.example.get(str(d), 1))))
        return tuple(out)

    def sample(self, batch: int, rng: np.random.Generator, **sizes: int) -> np.ndarray:
        """A valid random batch: token ids inside the vocabulary, masks of ones then zeros, images in [0, 1)
        (standard normal for plain float inputs, as edgekit always used for them)."""
        shape = self.concrete(batch, **sizes)
        np_dtype = np.dtype(self.dtype)
        if self.kind == "token_ids":
            hi = self.vocab_size or 1000
            return rng.integers(0, hi, size=shape).astype(np_dtype)
        if self.kind in ("attention_mask", "token_type_ids"):
            out = np.zeros(shape, dtype=np_dtype)
            length = shape[-1] if shape else 1
            for row in np.ndindex(*shape[:-1]):
                keep = int(rng.integers(max(1, length // 2), length + 1))
                out[row][:keep] = 1 if self.kind == "attention_mask" else 0
            return out
        if self.dtype == "bool":
            return rng.integers(0, 2, size=shape).astype(bool)
        if not self.is_float:
            return rng.integers(0, 2, size=shape).astype(np_dtype)
        if self.kind == "image":
            return rng.random(shape, dtype=np.float32).astype(np_dtype)
        return rng.standard_normal(shape, dtype=np.float32).astype(np_dtype)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "dims": list(self.dims), "kind": self.kind}
        if self.vocab_size is not None:
            d["vocab_size"] = self.vocab_size
        if self.example:
            d["example"] = dict(self.example)
        if self.max:
            d["max"] = dict(self.max)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> InputSpec:
        return cls(str(d["name"]), str(d.get("dtype", "float32")), tuple(d.get("dims", ())),
                   str(d.get("kind", "float")), d.get("vocab_size"), dict(d.get("example", {})),
                   dict(d.get("max", {})))


@dataclass(frozen=True)
class OutputSpec:
    """One model output and the metric that compares it with the FP32 reference."""

    name: str
    kind: str = "logits"
    dims: tuple[int | str, ...] = ()

    @property
    def metric(self) -> str:
        return OUTPUT_KINDS.get(self.kind, "agreement")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "dims": list(self.dims), "metric": self.metric}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> OutputSpec:
        return cls(str(d["name"]), str(d.get("kind", "logits")), tuple(d.get("dims", ())))


def image_input(shape: Sequence[int], name: str = "input") -> InputSpec:
    """The classic edgekit input: one float32 tensor, batch dynamic, the rest fixed."""
    return InputSpec(name, "float32", (BATCH, *(int(d) for d in shape[1:])), "float", example={BATCH: int(shape[0])})


def is_single_float(specs: Sequence[InputSpec]) -> bool:
    return len(specs) == 1 and specs[0].is_float


def kind_for(name: str, dtype: str) -> str:
    lowered = name.lower()
    if dtype.startswith("float"):
        return "float"
    if "mask" in lowered:
        return "attention_mask"
    if "type" in lowered or "segment" in lowered:
        return "token_type_ids"
    return "token_ids" if dtype in ("int64", "int32") else "float"


def parse_input_spec(text: str, dynamic: Sequence[str] = (), vocab_size: int | None = None) -> list[InputSpec]:
    """`input_ids:int64:1x128,attention_mask:int64:1x128` -> InputSpecs. The first axis is the batch (kept
    dynamic); with `dynamic=('sequence',)` the second axis of every rank>=2 integer input is the dynamic
    `sequence`, its written size the example and the maximum."""
    unknown = [d for d in dynamic if d not in (BATCH, SEQUENCE)]
    if unknown:
        raise EdgekitError(f"unknown --dynamic axis '{unknown[0]}'; available: {BATCH}, {SEQUENCE}")
    specs: list[InputSpec] = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        fields = part.split(":")
        if len(fields) != 3 or not fields[0]:
            raise EdgekitError(f"malformed --input-spec entry '{part}': expected NAME:DTYPE:SHAPE, "
                               "e.g. input_ids:int64:1x128")
        name, dtype, shape_text = fields
        try:
            shape = tuple(int(s) for s in shape_text.lower().split("x"))
        except ValueError:
            shape = ()
        if not shape or any(s <= 0 for s in shape):
            raise EdgekitError(f"malformed shape '{shape_text}' in --input-spec '{part}': positive integers "
                               "joined by 'x', e.g. 1x128")
        if dtype not in DTYPES:
            raise EdgekitError(f"--input-spec '{part}': unknown dtype '{dtype}'; use one of {', '.join(DTYPES)}")
        kind = kind_for(name, dtype)
        dims: list[int | str] = [BATCH, *shape[1:]]
        example, maxes = {BATCH: shape[0]}, {}
        if SEQUENCE in dynamic and len(shape) >= 2 and not dtype.startswith("float"):
            dims[1] = SEQUENCE
            example[SEQUENCE] = maxes[SEQUENCE] = shape[1]
        specs.append(InputSpec(name, dtype, tuple(dims), kind, vocab_size if kind == "token_ids" else None,
                               example, maxes))
    if not specs:
        raise EdgekitError("--input-spec is empty: expected NAME:DTYPE:SHAPE[,NAME:DTYPE:SHAPE...]")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise EdgekitError(f"--input-spec names an input twice: {', '.join(names)}")
    return specs


def with_vocab(specs: Sequence[InputSpec], vocab_size: int | None) -> list[InputSpec]:
    return [replace(s, vocab_size=vocab_size) if s.kind == "token_ids" and vocab_size else s for s in specs]


def count(feeds: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(feeds.values()))) if feeds else 0


def take(feeds: Mapping[str, np.ndarray], index: Any) -> Feeds:
    """The same rows (a slice or an index array) of every input."""
    return {k: v[index] for k, v in feeds.items()}


def check_feeds(feeds: Mapping[str, np.ndarray], specs: Sequence[InputSpec], what: str) -> Feeds:
    """Feeds checked against the model's inputs and cast to their dtypes; a one-line EdgekitError for every
    mismatch: a missing input (named), a wrong dtype kind or rank, a wrong fixed size, a sequence longer than
    the exported maximum, token ids outside the vocabulary, inputs of different sample counts."""
    names = [s.name for s in specs]
    missing = [n for n in names if n not in feeds]
    if missing:
        how = "an array 'x' or one" if len(names) == 1 else "one array per input,"
        raise EdgekitError(f"{what} lacks input(s) {', '.join(missing)} of the model (it has: "
                           f"{', '.join(feeds) or 'none'}); the model takes {', '.join(names)}: save {how} "
                           "named after the input")
    out: Feeds = {}
    n = None
    for spec in specs:
        arr = np.asarray(feeds[spec.name])
        if arr.ndim != spec.rank:
            raise EdgekitError(f"{what}: input '{spec.name}' has rank {arr.ndim} (shape {list(arr.shape)}) but the "
                               f"model takes rank {spec.rank} ({'x'.join(map(str, spec.dims))})")
        if spec.is_float:
            if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
                raise EdgekitError(f"{what}: input '{spec.name}' must be numeric (got dtype {arr.dtype})")
        elif spec.dtype == "bool":
            if not (arr.dtype == bool or np.issubdtype(arr.dtype, np.integer)):
                raise EdgekitError(f"{what}: input '{spec.name}' is bool in the model, got dtype {arr.dtype}")
        elif not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
            raise EdgekitError(f"{what}: input '{spec.name}' takes {spec.dtype} but the data is {arr.dtype}; "
                               f"save it as an integer array (token ids must not be floats)")
        for axis, (want, got) in enumerate(zip(spec.dims, arr.shape, strict=True)):
            if axis == 0:
                continue
            if isinstance(want, int) and want != got:
                raise EdgekitError(f"{what}: input '{spec.name}' has size {got} on axis {axis} but the model "
                                   f"takes {want} (shape {'x'.join(map(str, spec.dims))})")
            limit = spec.max.get(str(want)) if isinstance(want, str) else None
            if limit is not None and got > limit:
                raise EdgekitError(f"{what}: input '{spec.name}' has a {want} of {got} but the model was exported "
                                   f"for at most {limit}; truncate it or export with a longer --input-spec")
        if spec.kind == "token_ids" and spec.vocab_size and arr.size:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi >= spec.vocab_size:
                raise EdgekitError(f"{what}: input '{spec.name}' holds token ids {lo}..{hi}, outside the "
                                   f"vocabulary of {spec.vocab_size} (0..{spec.vocab_size - 1}); tokenize with "
                                   "this model's tokenizer")
        if n is not None and len(arr) != n:
            raise EdgekitError(f"{what}: input '{spec.name}' has {len(arr)} samples, the others {n}")
        n = len(arr)
        out[spec.name] = np.ascontiguousarray(arr.astype(np.dtype(spec.dtype), copy=False))
    return out


def random_feeds(specs: Sequence[InputSpec], n: int, seed: int = 0, **sizes: int) -> Feeds:
    """Valid random feeds for every input, seeded, consistent across inputs (one generator)."""
    rng = np.random.default_rng(seed)
    feeds = {s.name: s.sample(n, rng, **sizes) for s in specs}
    masks = [s for s in specs if s.kind == "attention_mask"]
    ids = [s for s in specs if s.kind == "token_ids"]
    if masks and ids and feeds[masks[0].name].shape == feeds[ids[0].name].shape:
        feeds[ids[0].name] = np.where(feeds[masks[0].name] > 0, feeds[ids[0].name], 0).astype(
            feeds[ids[0].name].dtype)
    return feeds


def fixed_batch(specs: Sequence[InputSpec] | Sequence[Mapping[str, Any]]) -> int | None:
    """The batch size an artifact is bound to (an int first dim), or None when the batch is dynamic."""
    if not specs:
        return None
    first = specs[0]
    dims = first.dims if isinstance(first, InputSpec) else first.get("shape") or first.get("dims") or ()
    d = dims[0] if dims else None
    return d if isinstance(d, int) and d > 0 else None


def run_batched(run: Callable[[Feeds], Sequence[np.ndarray]], feeds: Mapping[str, np.ndarray], step: int,
                ) -> list[np.ndarray]:
    """`run` over all samples of `feeds`, `step` samples at a time, outputs concatenated in order.

    One helper for every loop that used to slice one array by hand: sessions, runners and torch alike."""
    n = count(feeds)
    parts = [list(run(take(feeds, slice(i, i + step)))) for i in range(0, n, max(1, step))]
    if not parts:
        return []
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def batches(feeds: Mapping[str, np.ndarray], step: int) -> Iterator[Feeds]:
    for i in range(0, count(feeds), max(1, step)):
        yield take(feeds, slice(i, i + step))
