"""`edgekit quickstart`: the whole path on the embedded digits default, in one command.

teacher -> distilled student -> QAT student -> an artifact per installed target -> benchmark -> a precision
recommendation per named target, all written to one folder. It exists so a new user sees, in minutes and
on a laptop CPU, every stage edgekit offers producing real numbers, and gets a folder of files shaped like
the ones their own model will produce. Stages use the same library calls as `edgekit distill/qat/export/
bench/recommend`, so nothing here is a demo-only path.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.artifact import staging
from edgekit.errors import EdgekitError

#: targets the report recommends a precision for, with the priority a user of that device usually has
RECOMMEND_FOR: tuple[tuple[str, str], ...] = (
    ("x86-server-cpu", "latency"), ("jetson-orin-nano", "latency"),
    ("raspberry-pi-5", "cost"), ("pixel-8", "cost"),
)
STAGES = 6
HOST_NOTE = ("Every artifact ran here, on this machine's CPU, whatever device it was built for (TensorRT and "
             "Ascend artifacts through their ONNX graphs in ONNX Runtime): the numbers compare formats on one "
             "host, they are not the device's. On the device: `edgekit bench ART --device ...`. The digits "
             "student has 6k parameters, so per-call overhead dominates its latency; int8 pays on larger models "
             "(benchmarks/ort_int8_vs_fp32.py).")


@dataclass(frozen=True)
class StageSettings:
    """What every quickstart shares: the seed, the targets, how long the benchmark measures, and which
    targets get a recommendation."""

    seed: int = 0
    targets: tuple[str, ...] | None = None  # None: every target whose runtime is installed
    bench_iters: int = 20
    bench_rounds: int = 2
    bench_max_seconds: float = 5.0
    recommend_for: tuple[tuple[str, str], ...] = field(default=RECOMMEND_FOR)
    progress: bool = True

    def bench_config(self):
        """The quickstart's short benchmark: enough to rank formats on one host, not a publishable number."""
        from edgekit.bench.records import BenchConfig

        return BenchConfig(warmup=1, warmup_seconds=0.1, iters=self.bench_iters, min_seconds=0.2,
                           max_seconds=self.bench_max_seconds, rounds=self.bench_rounds)

    def require_at_least_one(self, *names: str) -> None:
        for name in ("bench_iters", "bench_rounds", *names):
            if getattr(self, name) < 1:
                raise EdgekitError(f"quickstart: {name.replace('_', '-')} must be at least 1 "
                                   f"(got {getattr(self, name)})")


@dataclass(frozen=True)
class QuickstartConfig(StageSettings):
    """How much work each stage does. The defaults finish in a few minutes on 2 CPU cores; the training
    lengths are those `edgekit distill` and `edgekit qat` default to on the digits pair."""

    distill_epochs: int = 20
    qat_epochs: int = 3

    def __post_init__(self) -> None:
        self.require_at_least_one("distill_epochs", "qat_epochs")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def select_targets(wanted: Sequence[str] | None):
    from edgekit.targets import list_targets, load_target

    if wanted is None:
        return list_targets()
    return [load_target(name) for name in wanted]  # an unknown name fails here, listing the known ones


def _train_stages(stage_dir: Path, config: QuickstartConfig, log: Callable[[str], None]) -> dict[str, Any]:
    """Teacher, distillation (with the student trained alone as the control), QAT; saves the models."""
    import torch

    from edgekit.data import zoo
    from edgekit.train import qat
    from edgekit.train.distill import inputs
    from edgekit.train.distill.stage import distill
    from edgekit.train.distill.trainer import TrainConfig

    models = stage_dir / "models"
    models.mkdir()
    log(f"[1/{STAGES}] teacher: training the digits teacher from scratch (cached after the first run; "
        "`zoo:digits-teacher` itself loads the shipped weights)")
    teacher = zoo.digits_teacher(seed=config.seed, progress=config.progress, train=True)
    train, evaluation, _ = inputs.load_datasets(None, None, zoo_default=True)

    log(f"[2/{STAGES}] distil: student of 1/15 the teacher's parameters, {config.distill_epochs} epochs, "
        "and the same student trained on labels alone for comparison")
    torch.manual_seed(config.seed)
    student = zoo.student_untrained()
    distilled = distill(teacher, student, train, evaluation, baseline=True, log=log,
                        config=TrainConfig(epochs=config.distill_epochs, seed=config.seed,
                                           progress=config.progress, desc="distill"))
    torch.save(student.state_dict(), models / "student_distilled.pt")

    log(f"[3/{STAGES}] QAT: fake-quantized fine-tuning against the FP32 teacher, {config.qat_epochs} epochs")
    q = qat.qat(teacher, copy.deepcopy(student), train, evaluation, log=log,
                train_config=TrainConfig(epochs=config.qat_epochs, lr=1e-5, seed=config.seed,
                                         progress=config.progress, desc="qat"))
    qat_onnx = qat.save_onnx(q.model, zoo.INPUT_SHAPE, models / "student_qat.onnx", real_inputs=evaluation.x.numpy())
    m = distilled.metrics
    return {
        "student": student, "qat_onnx": qat_onnx.path,
        "summary": {
            "teacher": {"params": m["teacher_params"], "accuracy": m["teacher_accuracy"]},
            "distilled_student": {"params": m["student_params"], "accuracy": m["student_accuracy"],
                                  "retention": m["retention"], "cka": m["cka"],
                                  "compression": m.get("compression_ratio"), "epochs": config.distill_epochs},
            "student_alone": {"accuracy": m.get("student_alone_accuracy"), "epochs": config.distill_epochs},
            "qat_student": {"accuracy": q.metrics["student_accuracy"], "epochs": config.qat_epochs,
                            "activations": q.metrics["activations"], "weights": q.metrics["weights"]},
        },
    }


def _export_all(stage_dir: Path, student, qat_onnx: Path, targets, log: Callable[[str], None]
                ) -> tuple[list[dict[str, Any]], list[dict[str, str]], Path | None]:
    """fp32 and the default precision for every target whose runtime is here, plus the QAT student as int8
    on the first ONNX Runtime target; the rest are listed as skipped with the reason and the fix."""
    from edgekit.backends import registry
    from edgekit.data import zoo
    from edgekit.export import ExportPipeline

    arts_dir = stage_dir / "artifacts"
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    references: list[tuple[bool, str, Path]] = []  # FP32 artifacts that run here natively; a server CPU's first
    jobs = []
    for target in installed(targets, skipped):
        jobs += [(target, p) for p in dict.fromkeys(("fp32", target.default_precision)) if p in target.precisions]
    log(f"[4/{STAGES}] export: {len(jobs)} artifacts for {len({t.name for t, _ in jobs})} targets "
        f"({len(skipped)} skipped); each is checked against the FP32 student on the digits test split")
    with ExportPipeline(student, zoo.INPUT_SHAPE, log=log) as pipeline:
        for i, (target, precision) in enumerate(jobs, 1):
            name = f"{target.name}-{precision}"
            log(f"  export {i}/{len(jobs)}: {name}")
            art = pipeline.export(target, precision, calib="zoo:digits", eval_data="zoo:digits:test",
                                  out=arts_dir / name)
            rows.append(artifact_row(art, name, "distilled student"))
            if precision == "fp32" and not registry.get_spec(target.backend).device_runtime:  # runs here natively
                references.append((target.device_class != "cpu", target.name, art.path))
    # the QAT student goes to an ONNX Runtime CPU target, the runtime its uint8-activation Q/DQ was made for
    candidates = [t for t, _ in jobs if registry.get_spec(t.backend).qdq_style == "onnxruntime"
                  and "int8" in t.precisions]
    qat_target = min(candidates, key=lambda t: (t.device_class != "cpu", t.name), default=None)
    if qat_target is not None:
        name = f"{qat_target.name}-int8-qat"
        log(f"  export: {name} (the QAT student's own Q/DQ ranges, no post-training calibration)")
        with ExportPipeline(str(qat_onnx), log=log) as pipeline:
            art = pipeline.export(qat_target, "int8", eval_data="zoo:digits:test", out=arts_dir / name)
        rows.append(artifact_row(art, name, "QAT student"))
    return rows, skipped, (min(references)[2] if references else None)


def installed(targets: list, skipped: list[dict[str, str]]) -> list:
    """The targets whose runtime is installed here; the others go to `skipped` with the install command."""
    from edgekit.backends import registry

    ready = []
    for target in targets:
        missing = registry.missing_requirement(target.backend)
        if missing is not None:
            skipped.append({"target": target.name, "reason": f"{missing.package} not installed (pip install "
                                                            f"'edgekit[{missing.extra}]')"})
        else:
            ready.append(target)
    return ready


def artifact_row(art, name: str, model: str, path: str | None = None) -> dict[str, Any]:
    """One report row from an artifact's manifest: where it is, what it is, what verification measured."""
    m = art.manifest
    v = m["verification"]
    return {
        "artifact": path or f"artifacts/{name}", "model": model, "target": m["target"], "backend": m["backend"],
        "precision": m["precision"], "calibration": (m.get("calibration") or {}).get("method"),
        "bytes": sum(f["bytes"] for f in m["files"].values()), "agreement": v.get("agreement"),
        "accuracy": v.get("accuracy"), "accuracy_drop": v.get("accuracy_drop"), "sqnr_db": v.get("sqnr_db"),
        "cosine": v.get("cosine"),
    }


def _bench(stage_dir: Path, reference: Path | None, config: QuickstartConfig,
           log: Callable[[str], None]) -> list[dict[str, Any]]:
    arts = sorted(p for p in (stage_dir / "artifacts").iterdir() if p.is_dir())
    log(f"[5/{STAGES}] bench: {len(arts)} artifacts, each in its own process, interleaved "
        f"({config.bench_rounds} rounds of >= {config.bench_iters} runs; `edgekit bench` measures longer)")
    return bench_artifacts(stage_dir, arts, reference, "zoo:digits:test", config, log)


def bench_artifacts(stage_dir: Path, arts: Sequence[Path], reference: Path | None, eval_data: Any,
                    config: StageSettings,
                    log: Callable[[str], None], extra: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Bench `arts` (interleaved, each in its own process) and write bench.json/.csv/.png into `stage_dir`
    with paths relative to it; `extra` records (measured apart) are written with them."""
    from edgekit.bench import report
    from edgekit.bench.harness import run_bench

    result = run_bench(arts, config.bench_config(), eval_data=eval_data, reference=reference,
                       progress=config.progress, log=log)
    records = [_relative(r, f"{stage_dir}/") for r in [*result.records, *extra]]  # relative paths
    report.write_json(records, stage_dir / "bench.json")
    report.write_csv(records, stage_dir / "bench.csv")
    try:
        report.check_plot_support()
        report.write_plot(records, stage_dir / "bench.png")
    except EdgekitError as exc:  # matplotlib is an extra: the numbers matter more than the picture
        log(f"no plot: {exc}")
    for path, why in result.failures:
        log(f"bench could not measure {Path(path).name}: {why}")
    return records


def _relative(value: Any, prefix: str) -> Any:
    """`value` with every string path inside the staging folder made relative to the report folder."""
    if isinstance(value, str):
        return value.replace(prefix, "")
    if isinstance(value, dict):
        return {k: _relative(v, prefix) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v, prefix) for v in value]
    return value


def _recommend(records: list[dict[str, Any]], config: QuickstartConfig, log: Callable[[str], None]
               ) -> list[dict[str, Any]]:
    log(f"[6/{STAGES}] recommend: the decision tree, checked against the measurements")
    return recommend_measured(records, config, log)


def recommend_measured(records: list[dict[str, Any]], config: Any, log: Callable[[str], None],
                       **options: Any) -> list[dict[str, Any]]:
    """A recommendation per `config.recommend_for` target, checked against the records measured for it."""
    from edgekit.backends import registry
    from edgekit.recommend import recommend
    from edgekit.targets import load_target

    out = []
    for name, priority in config.recommend_for:
        try:
            target = load_target(name)
        except EdgekitError:
            continue
        measured = [r for r in records if r.get("target") == name and r.get("status") == "ok"]
        eager = [r for r in records if getattr(registry.find_spec(r.get("backend")), "runs_source", False)
                 and r.get("status") == "ok"]
        # everything here is measured on this host; for a GPU/NPU/phone target that is a proxy, and says so
        rec = recommend(target, priority=priority, results=measured + eager if measured else None,
                        source="quickstart bench", allow_proxy=True, **(options if measured else {}))
        proxy = bool(rec.judgement and rec.judgement.proxy)
        if proxy:
            log(f"recommend {name}: measured on this host, not on a {target.device_class} device like {name}: "
                "ranked with --allow-proxy (the speed-ups do not carry over)")
        out.append({**rec.to_dict(), "measured": bool(measured), "proxy": proxy})
    return out


def _markdown(summary: dict[str, Any], bench_md: str) -> str:
    s = summary["stages"]
    t, d, a, q = s["teacher"], s["distilled_student"], s["student_alone"], s["qat_student"]
    lines = [
        "# edgekit quickstart", "",
        f"{summary['machine']}; whole run {summary['seconds']:.0f} s.", "",
        "## Students", "",
        "| model | parameters | test accuracy | note |", "|---|---:|---:|---|",
        f"| teacher | {t['params']:,} | {_pct(t['accuracy'])} | |",
        f"| student, distilled | {d['params']:,} | {_pct(d['accuracy'])} | retention {_pct(d['retention'])}, "
        f"CKA with teacher {d['cka']:.3f}, {d['epochs']} epochs |",
        f"| student, labels alone | {d['params']:,} | {_pct(a['accuracy'])} | same epochs and seed |",
        f"| student, QAT int8 | {d['params']:,} | {_pct(q['accuracy'])} | {q['epochs']} epochs from the distilled "
        f"student; {q['weights']} weights, {q['activations']} activations |", "",
        "## Artifacts (checked at export against the FP32 student, digits test split)", "",
        "| artifact | backend | precision | calibration | size KiB | accuracy | drop (points) | agreement | SQNR dB |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in summary["artifacts"]:
        sq = "exact" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f}"
        drop = "-" if r["accuracy_drop"] is None else f"{100 * r['accuracy_drop']:.2f}"
        lines.append(f"| {r['artifact']} | {r['backend']} | {r['precision']} | {r['calibration'] or '-'} | "
                     f"{r['bytes'] / 1024:.1f} | {_pct(r['accuracy'])} | {drop} | {r['agreement']:.4f} | {sq} |")
    if summary["skipped"]:
        lines += ["", "Skipped targets:", ""] + [f"- {x['target']}: {x['reason']}" for x in summary["skipped"]]
    lines += ["", "## Benchmark (this machine, batch 1; short quickstart settings)", "", HOST_NOTE, "", bench_md,
              "", "## Recommendations", "",
              "The decision tree reads each target's profile; the measurements above then check its answer "
              "(each point of accuracy lost must buy >= 2x speed over FP32; a quantized artifact slower than FP32 "
              "is flagged). Measured here, on this machine, not on the device.", ""]
    lines += recommendation_lines(summary["recommendations"])
    lines += ["## Files", "",
              "- `models/`: distilled student weights (`student_distilled.pt`), QAT student (`student_qat.onnx`)",
              "- `artifacts/NAME/`: one folder per artifact, each with `manifest.json`",
              "- `bench.json`, `bench.csv`, `bench.png`: benchmark records (edgekit.bench/1), table, latency vs "
              "accuracy plot",
              "- `summary.json`: everything above as JSON", ""]
    return "\n".join(lines)


def recommendation_lines(recommendations: list[dict[str, Any]]) -> list[str]:
    """report.md's section per recommended target: the answer, the tree's path, what was rejected or flagged."""
    lines = []
    for r in recommendations:
        how = f"chosen artifact {r['chosen_artifact']}" if r.get("chosen_artifact") else (
            "from the decision tree" + ("" if r["measured"] else " only (not measured here)"))
        lines.append(f"### {r['target']} (priority {r['priority']}): {r['precision']}, {how}")
        lines.append("")
        lines += [f"{i}. {step}" for i, step in enumerate(r["path"], 1)]
        for rej in r.get("rejected", []):
            lines.append(f"- rejected {rej['artifact']}: {rej['rule']}: {rej['reason']}")
        for fl in r.get("flagged", []):
            lines.append(f"- flagged {fl['artifact']}: {fl['note']}")
        lines.append("")
    return lines


def run_quickstart(out: str | Path, *, force: bool = False, config: QuickstartConfig | None = None,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    from edgekit.bench import report
    from edgekit.bench.environment import describe as describe_machine

    config = config or QuickstartConfig()
    out = Path(out)
    targets = select_targets(config.targets)  # bad names fail before any training
    started = time.monotonic()
    with staging(out, force) as stage:
        trained = _train_stages(stage, config, log)
        rows, skipped, reference = _export_all(stage, trained["student"], trained["qat_onnx"], targets, log)
        records = _bench(stage, reference, config, log)
        recommendations = _recommend(records, config, log)
        env = describe_machine()
        summary: dict[str, Any] = {
            "machine": f"{env.get('cpu_model') or 'CPU'}, {env.get('cores')} cores, {env.get('os')}",
            "seconds": time.monotonic() - started, "input_shape": [1, 1, 16, 16], "stages": trained["summary"],
            "artifacts": rows, "skipped": skipped, "recommendations": recommendations,
            "bench": "bench.json",
        }
        bench_md = report.markdown(records, baseline=None)
        (stage / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        (stage / "report.md").write_text(_markdown(summary, bench_md))
    _print_summary(summary, records, out)
    return summary


def _print_summary(summary: dict[str, Any], records: list[dict[str, Any]], out: Path) -> None:
    from edgekit.bench import report

    s = summary["stages"]
    print()
    print(f"teacher {s['teacher']['params']:,} params {_pct(s['teacher']['accuracy'])} | student "
          f"{s['distilled_student']['params']:,} params: distilled {_pct(s['distilled_student']['accuracy'])}, "
          f"alone {_pct(s['student_alone']['accuracy'])}, QAT int8 {_pct(s['qat_student']['accuracy'])}")
    print()
    print(report.table(records))
    print(HOST_NOTE)
    for x in summary["skipped"]:
        print(f"skipped {x['target']}: {x['reason']}")
    print()
    for r in summary["recommendations"]:
        chosen = f" -> {r['chosen_artifact']}" if r.get("chosen_artifact") else ""
        basis = ("measured on this host as a proxy (--allow-proxy)" if r.get("proxy") else
                 "measured" if r["measured"] else "tree only")
        print(f"recommend {r['target']} ({r['priority']}, {basis}): {r['precision']}"
              f" [{', '.join(r['techniques']) or 'export only'}]{chosen}")
    print(f"\n{len(summary['artifacts'])} artifacts, report: {out / 'report.md'} "
          f"({summary['seconds']:.0f} s)")
