"""`edgekit qat`: quantization-aware training (torchao PT2E) with distillation from the FP32 teacher; writes
the converted model as a .pt2 program and as the Q/DQ ONNX that `edgekit export --precision int8` takes
without calibration."""

from __future__ import annotations

import argparse

from edgekit.commands import log
from edgekit.commands.distill import add_data_args, add_model_args, add_output_args, add_train_args, print_summary


def run(args: argparse.Namespace) -> int:
    import time
    from dataclasses import replace

    from edgekit.commands import _qat_text
    from edgekit.errors import EdgekitError
    from edgekit.train import qat
    from edgekit.train.distill import inputs
    from edgekit.train.distill.distributed import init_distributed, world_size
    from edgekit.train.distill.stage import distill
    from edgekit.train.distill.trainer import TrainConfig

    if _qat_text.is_text(args):
        return _qat_text.run_text(args, {"lr": 1e-5, "batch_size": 64})
    qat_config = qat.QATConfig(quantizer=args.quantizer)  # an unknown name fails before any work
    if world_size() > 1:
        raise EdgekitError("edgekit qat runs in one process (torchao's PT2E graphs are not wrapped in DDP here); "
                           "run it without torchrun")
    from edgekit.commands.distill import loss_config, train_config

    if args.student_weights and args.feature:
        raise EdgekitError("--feature applies to the FP32 distillation that runs when no --student-weights are "
                           "given; QAT itself distils on the outputs only: drop --feature or --student-weights")
    pair = inputs.resolve_pair(args.teacher, args.student, args.pair, teacher_weights=args.teacher_weights,
                               student_weights=args.student_weights, seed=args.seed)
    train, evaluation, note = inputs.load_datasets(args.data, args.eval, zoo_default=pair.uses_zoo)
    out = inputs.prepare_out_dir(args.out, args.resume, args.force)
    loss = loss_config(args, layers=False)
    config = replace(train_config(args, out, "qat"))
    sample_shape = tuple(train.x.shape[1:])
    init_distributed()
    started = time.perf_counter()
    fp32_report = None
    if not args.student_weights:
        log(f"no --student-weights: distilling the FP32 student first ({args.distill_epochs} epochs)")
        fp32_config = TrainConfig(epochs=args.distill_epochs, batch_size=args.batch_size, lr=args.distill_lr,
                                  weight_decay=args.weight_decay, seed=args.seed, device=args.device, amp=args.amp,
                                  progress=config.progress, checkpoint=out / "fp32-checkpoint.pt",
                                  resume=args.resume, desc="distill (fp32)")
        from edgekit.train.distill.losses import DistillConfig

        fp32_loss = DistillConfig(alpha=args.alpha, temperature=args.temperature, features=tuple(args.feature),
                                  feature_weight=args.feature_weight, standardize_logits=args.standardize_logits)
        fp32 = distill(pair.teacher, pair.student, train, evaluation, loss=fp32_loss, config=fp32_config, log=log)
        fp32_report = {k: v for k, v in fp32.metrics.items() if k != "baseline_history"}
    result = qat.qat(pair.teacher, pair.student, train, evaluation, config=qat_config, train_config=config,
                     loss=loss, log=log)
    files = inputs.save_student(pair.student, out, "student_fp32", sample_shape)
    example = train.x[:2]
    files["program"] = str(qat.save_program(result.model, example, out / "student_qat.pt2"))
    onnx_model = qat.save_onnx(result.model, (1, *sample_shape), out / "student_qat.onnx",
                               real_inputs=evaluation.x.numpy())
    files["onnx"] = str(onnx_model.path)
    report = {"stage": "qat", "teacher": pair.teacher_spec, "student": pair.student_spec,
              "train_data": train.source, **result.metrics, "history": result.train.history,
              "onnx": {"quantization": onnx_model.quantization, "opset": onnx_model.opset,
                       "max_abs_err_vs_torch": onnx_model.check.get("max_abs_err")},
              "files": files, "seconds": time.perf_counter() - started}
    if fp32_report is not None:
        report["fp32_distill"] = fp32_report
    if note:
        report["note"] = note
    inputs.write_report(report, out / "report.json", args.report)
    print_summary(report)
    target = qat.QUANTIZERS[qat_config.quantizer]["target"]
    print(f"fp32       accuracy {100 * (report['fp32_student_accuracy'] or 0):.2f}% before QAT; export the int8 "
          f"model ({qat_config.quantizer} quantizer: {qat.QUANTIZERS[qat_config.quantizer]['backend']}) with: "
          f"edgekit export {onnx_model.path} --target {target} --precision int8 --eval DATA")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "qat", help="quantization-aware training with distillation (torchao PT2E) -> Q/DQ ONNX for int8 export",
        description="Fine-tune a trained FP32 student with fake quantization (torchao prepare_qat_pt2e; int8 "
                    "per-channel weights, activations as --quantizer says), the loss being distillation from "
                    "the FP32 teacher; batch norm then observers are frozen late in training; convert_pt2e "
                    "gives Q/DQ ops. Writes OUT/student_qat.pt2 and OUT/student_qat.onnx (metadata "
                    "edgekit.quantization=qat), which `edgekit export --precision int8` uses without "
                    "calibration. Pick the quantizer for the target's backend: x86 (default, uint8 asymmetric "
                    "activations) for ONNX Runtime on x86 CPUs; tensorrt (int8 symmetric activations, zero "
                    "point 0) for TensorRT targets such as jetson-orin-nano or nvidia-t4-server, which refuse "
                    "uint8 Q/DQ (ONNX Runtime runs it too, slower on x86).",
        epilog="Without --student-weights the student is first distilled in FP32 (--distill-epochs). Example: "
               "edgekit distill --out d && edgekit qat --student-weights d/student.pt --out q; for TensorRT: "
               "edgekit qat --student-weights d/student.pt --quantizer tensorrt --out qt && edgekit export "
               "qt/student_qat.onnx --target jetson-orin-nano --precision int8. Transformers: edgekit qat "
               "--teacher hf:FP32 --student hf:FP32 --data zoo:sentences --eval zoo:sentences:test --out q (int8 "
               "weights fake-quantized on the exporter's dynamic-int8 grid; writes q/student_qat and q/artifact)",
    )
    add_model_args(p)
    add_data_args(p)
    add_train_args(p, epochs=3, lr=1e-5, layers=False)
    p.add_argument("--quantizer", default="x86", metavar="NAME",
                   help="Q/DQ format to train for: x86 (default; uint8 asymmetric activations, ONNX Runtime on x86) "
                        "or tensorrt (int8 symmetric activations, zero point 0: TensorRT targets); both use int8 "
                        "symmetric per-channel weights")
    p.add_argument("--distill-epochs", type=int, default=20, metavar="N",
                   help="epochs of FP32 distillation when no --student-weights are given (default 20)")
    p.add_argument("--distill-lr", type=float, default=3e-3, help="learning rate of that FP32 distillation")
    p.add_argument("--feature", action="append", default=[], metavar="S=T",
                   help="feature distillation pairs for the FP32 distillation step (repeatable)")
    p.add_argument("--feature-weight", type=float, default=1.0, help="weight of those feature terms")
    from edgekit.commands._qat_text import add_text_args

    add_text_args(p)
    add_output_args(p, "edgekit-qat")
    p.set_defaults(func=run)
