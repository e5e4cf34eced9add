"""`edgekit qat --teacher hf:DIR --student hf:DIR --data sentences.txt`: QAT of a transformer for ONNX
Runtime's dynamic int8 (edgekit.train.qat_text), then the export of the QAT'd student through the normal
export path. Kept apart from the CNN path (torchao PT2E); nothing heavy is imported at module level."""

from __future__ import annotations

import argparse

from edgekit.commands import log


def is_text(args: argparse.Namespace) -> bool:
    return any(str(getattr(args, k, None) or "").startswith("hf:") for k in ("teacher", "student"))


def run_text(args: argparse.Namespace, defaults: dict) -> int:
    import json
    from pathlib import Path

    from edgekit.errors import EdgekitError
    from edgekit.train.qat_text import TextQATConfig, qat_text

    if not (str(args.teacher or "").startswith("hf:") and str(args.student or "").startswith("hf:")):
        raise EdgekitError("text QAT takes both --teacher hf:DIR and --student hf:DIR (the teacher is usually the "
                           "student's own FP32 folder)")
    if args.student_weights or args.teacher_weights or args.pair or args.feature:
        raise EdgekitError("--student-weights/--teacher-weights/--pair/--feature are for CNN pairs; a transformer "
                           "student is an hf:DIR folder")
    if args.quantizer != "x86":
        raise EdgekitError(f"--quantizer {args.quantizer} is a PT2E (CNN) format; text QAT fits ONNX Runtime's "
                           "dynamic int8 weights: drop --quantizer")
    if not args.data:
        raise EdgekitError("text QAT needs --data: a .txt file with one sentence per line, or zoo:sentences")
    # the CNN path's --lr and --batch-size defaults are for PT2E: left at them, the text path takes its own
    text = TextQATConfig()
    lr = text.lr if args.lr == defaults["lr"] else args.lr
    batch = text.batch_size if args.batch_size == defaults["batch_size"] else args.batch_size
    config = TextQATConfig(steps=args.steps, batch_size=batch, lr=lr, weight_decay=0.0, max_length=args.max_length,
                           seed=args.seed, embeddings=not args.no_embedding_qat, anchor_weight=args.anchor_weight)
    out = Path(args.out)
    result = qat_text(args.teacher, args.student, args.data, args.eval, config=config, target=args.target,
                      precision=args.precision, out=out, force=args.force, log=log)
    report = {**result.metrics, "history": result.history, "files": {"student_qat": str(result.folder)}}
    if result.artifact is not None:
        report["files"]["artifact"] = str(result.artifact.path)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1, default=str) + "\n")
    c, own = report["torch_cosine_vs_teacher"], report["torch_cosine_vs_fp32_student"]
    print(f"qat        {config.steps} steps on {report['train_sentences']} sentences ({report['seconds']:.0f} s); "
          f"int8 (simulated) cosine to the teacher {c['simulated_int8_before_qat']['mean']:.4f} -> "
          f"{c['simulated_int8_after_qat']['mean']:.4f} mean on {report['eval_sentences']} held-out sentences "
          f"(FP32 student: {c['fp32_student']['mean']:.4f}); to the FP32 student "
          f"{own['simulated_int8_before_qat']['mean']:.4f} -> {own['simulated_int8_after_qat']['mean']:.4f}")
    print(f"student    {result.folder} (hf: folder, weights on the int8 grid: {report['grid_error_steps']:.1e} steps "
          "off)")
    a = report.get("artifact")
    if a:
        print(f"artifact   {a['path']} ({a['target']}, {a['precision']}): cosine to the teacher "
              f"{a['cosine_vs_teacher']['mean']:.4f} mean, {a['cosine_vs_teacher']['worst']:.4f} worst; to the FP32 "
              f"student {a['cosine_vs_fp32_student']['mean']:.4f} mean, {a['cosine_vs_fp32_student']['worst']:.4f} "
              f"worst; to the QAT model {a['cosine_vs_qat_model']['mean']:.5f}")
    return 0


def add_text_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("transformers (--teacher hf:DIR --student hf:DIR, --data sentences)")
    g.add_argument("--target", "-t", default="x86-server-cpu",
                   help="onnxruntime target the QAT'd student is exported to (default x86-server-cpu)")
    g.add_argument("--precision", "-p", default="dynamic-int8", choices=("dynamic-int8", "int8"),
                   help="the int8 form trained for and exported (default dynamic-int8: weights int8 per channel, "
                        "activations quantized per call)")
    g.add_argument("--steps", type=int, default=300, metavar="N", help="training steps (default 300)")
    g.add_argument("--max-length", type=int, default=128, metavar="N", help="tokens per sentence (default 128)")
    g.add_argument("--anchor-weight", type=float, default=0.0, metavar="W",
                   help="weight of a second target, the student's own FP32 embedding, beside the teacher's "
                        "(default 0): keeps the int8 student close to the FP32 student it replaces when the "
                        "teacher is another model")
    g.add_argument("--no-embedding-qat", action="store_true",
                   help="leave the embedding tables out of the fake quantization")
