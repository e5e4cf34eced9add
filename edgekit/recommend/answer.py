"""Both halves together: the tree's answer, overridden by measurements when there are some, and its text form."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.recommend.judge import Judgement, check_cosine, check_drop, judge, load_results
from edgekit.recommend.tree import TreeDecision, decide, techniques_for
from edgekit.targets import Target, load_target


@dataclass(frozen=True)
class Recommendation:
    target: str
    priority: str
    tree: TreeDecision
    precision: str
    techniques: tuple[str, ...]
    path: tuple[str, ...]
    judgement: Judgement | None = None

    @property
    def chosen_artifact(self) -> str | None:
        return self.judgement.chosen.artifact if self.judgement and self.judgement.chosen else None

    def to_dict(self) -> dict[str, Any]:
        """The `--json` form; `rejected` and `chosen_artifact` only when results were given."""
        out: dict[str, Any] = {
            "target": self.target, "priority": self.priority, "workload": self.tree.workload,
            "precision": self.precision, "techniques": list(self.techniques), "path": list(self.path),
            "leaf": self.tree.leaf, "tree_precision": self.tree.precision,
        }
        j = self.judgement
        if j is not None:
            out["chosen_artifact"] = self.chosen_artifact
            out["rejected"] = [{"artifact": v.artifact, "precision": v.precision, "rule": v.rule, "reason": v.reason}
                               for v in j.rejected]
            out["flagged"] = [{"artifact": v.artifact, "precision": v.precision, "note": v.flag} for v in j.flagged]
            out["baseline"] = j.baseline
            out["candidates"] = [
                {"artifact": v.artifact, "precision": v.precision, "baseline": v.baseline, "p50_ms": v.p50_ms,
                 "speedup": v.speedup, "points_lost": v.points_lost, "metric": v.metric,
                 "size_ratio": v.size_ratio, "passed": v.rule is None}
                for v in j.verdicts
            ]
            out["ignored"] = [{"artifact": a, "reason": why} for a, why in j.ignored]
            out["max_accuracy_drop"] = j.max_accuracy_drop
            out["proxy"] = [{"artifact": a, "reason": why} for a, why in j.proxy]
            out["min_cosine"] = j.min_cosine
        return out


def recommend(target: str | Path | Target, results: Any = None, priority: str = "latency",
              max_accuracy_drop: float | None = None, workload: str | None = None,
              source: str | None = None, allow_proxy: bool = False, min_cosine: float | None = None
              ) -> Recommendation:
    """The tree's answer, overridden by measurements when `results` (bench records) are given: a measured
    accuracy loss outranks the tree's general expectation for a device class.

    `target`: a name, a .toml path or a Target. `results`: bench records (what `edgekit.bench` returns), a
    BenchResult, or the path of a bench JSON file. `max_accuracy_drop`: a fraction of accuracy (0.01 = one point), as in
    `edgekit.export`.
    """
    if not isinstance(target, Target):
        target = load_target(str(target))
    if isinstance(results, str | Path):
        source = source or str(results)
        results = load_results(results)
    elif results is not None and hasattr(results, "records"):
        results = results.records
    source = source or "results"
    tree = decide(target, priority, workload)
    check_drop(max_accuracy_drop)
    check_cosine(min_cosine)
    if min_cosine is not None and results is None:
        raise EdgekitError("min_cosine (--min-cosine) judges measured artifacts: pass results= (--results "
                           "bench.json) too")
    if results is None:
        return Recommendation(target.name, priority, tree, tree.precision, tree.techniques, tree.path)
    j = judge(results, target, max_accuracy_drop, source, allow_proxy=allow_proxy, min_cosine=min_cosine)
    precision = j.chosen.precision if j.chosen is not None else "fp32"
    path = [*tree.path, *j.path]
    techniques = tree.techniques
    if precision != tree.precision:
        path.append(f"measurements override the tree: {precision} instead of {tree.precision}")
        techniques = techniques_for([t for t in tree.techniques if t in ("distill", "prune")], precision)
    return Recommendation(target.name, priority, tree, precision, techniques, tuple(path), j)


def format_text(rec: Recommendation) -> list[str]:
    """The human form: the path node by node, the answer, and the measured table when there is one."""
    lines = [f"recommendation for {rec.target} (priority {rec.priority}, workload {rec.tree.workload})"]
    if rec.judgement is not None and rec.judgement.proxy:
        lines.append(f"WARNING: ranked {len(rec.judgement.proxy)} record(s) NOT measured on a device like "
                     f"{rec.target} (--allow-proxy): their speed says nothing about it")
    lines.append("path:")
    lines += [f"  {i}. {step}" for i, step in enumerate(rec.path, 1)]
    lines.append(f"precision   {rec.precision}")
    lines.append(f"techniques  {', '.join(rec.techniques) or '(none: export only)'}")
    j = rec.judgement
    if j is None:
        return lines
    lines.append(f"chosen      {rec.chosen_artifact or '(none)'}")
    headers = ("artifact", "precision", "p50 ms", "speed-up", "points lost", "metric", "size", "verdict")
    rows = []
    for v in j.verdicts:
        verdict = "chosen" if v is j.chosen else ("pass" if v.rule is None else f"rejected: {v.rule}")
        if v.flag:
            verdict += " (slower than FP32)"
        rows.append((
            v.artifact, v.precision, "-" if v.p50_ms is None else f"{v.p50_ms:.3f}",
            "-" if v.speedup is None else f"{v.speedup:.2f}x",
            "-" if v.points_lost is None else f"{v.points_lost:.2f}", v.metric or "-",
            "-" if v.size_ratio is None else f"{v.size_ratio:.2f}x", verdict,
        ))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines.append("")
    lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for v in j.rejected:
        lines.append(f"rejected    {v.artifact}: {v.rule}: {v.reason}")
    for v in j.flagged:
        lines.append(f"flagged     {v.artifact}: {v.flag}")
    for artifact, why in j.ignored:
        lines.append(f"ignored     {artifact}: {why}")
    return lines
