"""Which teacher layer each student layer learns from, for transformer encoders of different depths.

Layers are numbered as Hugging Face numbers `hidden_states`: 0 is the embedding output, 1..L the outputs of
the L transformer blocks. Attention maps exist for blocks only (attention of block k is `attentions[k-1]`).

- `uniform`: student block i (1..S) learns from teacher block round(i * T / S): evenly spread, the last
  block always on the teacher's last (MiniLM-style depth compression keeps the top layer's knowledge).
- `last`: the student's S blocks learn from the teacher's last S blocks.
- explicit: `1=2,2=4,3=6` (STUDENT=TEACHER, like `--feature`), any subset of the student's blocks.

The embedding outputs (0=0) are paired too unless `embeddings=False`: when widths differ they are matched
through the same learned projection as any hidden state.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.errors import EdgekitError

MAP_HELP = "uniform, last, or explicit STUDENT=TEACHER block pairs such as 1=2,2=4,3=6 (blocks count from 1)"


@dataclass(frozen=True)
class LayerMap:
    """(student layer, teacher layer) pairs in hidden-state numbering (0 = embeddings)."""

    pairs: tuple[tuple[int, int], ...]
    kind: str

    @property
    def blocks(self) -> tuple[tuple[int, int], ...]:
        """The pairs of transformer blocks (the ones with attention maps)."""
        return tuple((s, t) for s, t in self.pairs if s > 0 and t > 0)

    def describe(self) -> str:
        return f"{self.kind}: " + ", ".join(f"{s}={t}" for s, t in self.pairs)


def layer_map(spec: str, student_layers: int, teacher_layers: int, embeddings: bool = True) -> LayerMap:
    """Parse `spec` for a student of `student_layers` blocks and a teacher of `teacher_layers`."""
    if student_layers < 1 or teacher_layers < 1:
        raise EdgekitError(f"layer map needs at least one block on each side (student {student_layers}, "
                           f"teacher {teacher_layers})")
    text = spec.strip().lower()
    if text == "uniform":
        blocks = [(i, max(1, round(i * teacher_layers / student_layers))) for i in range(1, student_layers + 1)]
    elif text == "last":
        if student_layers > teacher_layers:
            raise EdgekitError(f"layer map 'last' needs a student no deeper than the teacher ({student_layers} > "
                               f"{teacher_layers} blocks); use uniform or explicit pairs")
        offset = teacher_layers - student_layers
        blocks = [(i, i + offset) for i in range(1, student_layers + 1)]
    else:
        blocks = _explicit(spec, student_layers, teacher_layers)
        text = "explicit"
    pairs = ([(0, 0)] if embeddings else []) + blocks
    return LayerMap(tuple(pairs), text)


def _explicit(spec: str, student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    pairs = []
    for part in spec.split(","):
        s, sep, t = part.partition("=")
        try:
            si, ti = int(s), int(t)
        except ValueError:
            si = ti = -1
        if not sep or si < 1 or ti < 1:
            raise EdgekitError(f"malformed layer map entry {part.strip()!r} in {spec!r}: expected {MAP_HELP}")
        if si > student_layers or ti > teacher_layers:
            raise EdgekitError(f"layer map pair {si}={ti} is out of range: the student has blocks 1..{student_layers}, "
                               f"the teacher 1..{teacher_layers}")
        pairs.append((si, ti))
    if len({s for s, _ in pairs}) != len(pairs):
        raise EdgekitError(f"layer map {spec!r} pairs a student block twice; give each student block one teacher "
                           "block")
    return sorted(pairs)
