"""`edgekit quickstart`: the whole path on the embedded digits default, in one command.

Trains (or loads the cached) teacher and student, exports the student to every target whose runtime is
installed, at fp32 and the target's default precision, and writes the artifacts, a JSON summary and a
Markdown report to one folder. Targets whose runtime is missing are listed as skipped, with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgekit.artifact import staging


def _row(art) -> dict[str, Any]:
    m = art.manifest
    v = m["verification"]
    return {
        "target": m["target"], "backend": m["backend"], "precision": m["precision"],
        "artifact": str(art.path), "bytes": sum(f["bytes"] for f in m["files"].values()),
        "agreement": v["agreement"], "accuracy": v.get("accuracy"), "accuracy_drop": v.get("accuracy_drop"),
        "sqnr_db": v.get("sqnr_db"),
    }


def _table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| target | backend | precision | size KiB | accuracy | drop (points) | agreement | SQNR dB |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        sq = "exact" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f}"
        lines.append(f"| {r['target']} | {r['backend']} | {r['precision']} | {r['bytes'] / 1024:.1f} | "
                     f"{r['accuracy']:.4f} | {100 * r['accuracy_drop']:.2f} | {r['agreement']:.4f} | {sq} |")
    return lines


def run_quickstart(out: str | Path, *, force: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    from edgekit import zoo
    from edgekit.backends import registry
    from edgekit.export import ExportPipeline
    from edgekit.targets import list_targets

    out = Path(out)
    with staging(out, force) as stage:
        log("training the digits teacher and student (cached after the first run)")
        teacher = zoo.digits_teacher(progress=True)
        student = zoo.digits_student(progress=True)
        test = zoo.digits_split("test")
        summary: dict[str, Any] = {
            "teacher": {"params": zoo.count_params(teacher), "accuracy": zoo.accuracy(teacher, test)},
            "student": {"params": zoo.count_params(student), "accuracy": zoo.accuracy(student, test)},
            "input_shape": list(zoo.INPUT_SHAPE), "artifacts": [], "skipped": [],
        }
        log(f"teacher {summary['teacher']['params']} params, accuracy {summary['teacher']['accuracy']:.4f}; "
            f"student {summary['student']['params']} params, accuracy {summary['student']['accuracy']:.4f}")
        with ExportPipeline("zoo:digits-student", log=log) as pipeline:
            for target in list_targets():
                missing = registry.missing_requirement(target.backend)
                if missing is not None:
                    summary["skipped"].append({"target": target.name, "reason": f"{missing.package} not "
                                               f"installed (pip install 'edgekit[{missing.extra}]')"})
                    continue
                for precision in dict.fromkeys(("fp32", target.default_precision)):
                    if precision not in target.precisions:
                        continue
                    art = pipeline.export(target, precision, out=stage / "artifacts" / f"{target.name}-{precision}")
                    row = _row(art)
                    row["artifact"] = str(Path(out) / "artifacts" / f"{target.name}-{precision}")
                    summary["artifacts"].append(row)
        (stage / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        report = ["# edgekit quickstart", "",
                  f"Teacher: {summary['teacher']['params']} parameters, test accuracy "
                  f"{summary['teacher']['accuracy']:.4f}. Student: {summary['student']['params']} parameters, "
                  f"test accuracy {summary['student']['accuracy']:.4f}.", "",
                  *_table(summary["artifacts"]), ""]
        if summary["skipped"]:
            report += ["Skipped targets:", ""] + [f"- {s['target']}: {s['reason']}" for s in summary["skipped"]]
        (stage / "report.md").write_text("\n".join(report) + "\n")
    print("\n".join(_table(summary["artifacts"])))
    for s in summary["skipped"]:
        print(f"skipped {s['target']}: {s['reason']}")
    print(f"\nreport: {out / 'report.md'}")
    return summary
