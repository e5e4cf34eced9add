"""`edgekit self-distill`: label-free QAT (the FP32 model is its own teacher) on unlabelled samples."""

from __future__ import annotations

import argparse

from edgekit.commands import DATA_HELP, log


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from edgekit.artifact import check_destination, staging
    from edgekit.errors import EdgekitError
    from edgekit.graph.onnx_export import reference_outputs
    from edgekit.common.metrics import top1_agreement
    from edgekit.models.source import load_model, parse_input_shape
    from edgekit.data.calibration import check_matches, load_data
    from edgekit.train import selfdistill

    out = Path(args.out)
    check_destination(out, args.force)  # before any work: an existing folder needs --force
    shape = parse_input_shape(args.input_shape) if args.input_shape else None
    src = load_model(args.model, shape)
    if src.kind == "onnx":
        raise EdgekitError(f"{args.model} is an ONNX file, which cannot be trained: pass the model as "
                           "package.module:factory (with --weights) or a torch.export .pt2 program")
    module = src.module if src.kind == "torch" else src.exported.module()
    if args.weights:
        from edgekit.train.distill.inputs import load_weights

        module = load_weights(module, args.weights, "model")
    data = load_data(args.data, max_samples=args.samples)
    check_matches(data, src.input_shape, "training data")
    evalset = load_data(args.eval, max_samples=None) if args.eval else None
    if evalset is not None:
        check_matches(evalset, src.input_shape, "evaluation data")
    with staging(out, args.force) as tmp:  # a failure leaves nothing behind
        result = selfdistill.self_distill(module, data.x, epochs=args.epochs, lr=args.lr, seed=args.seed,
                                          out_dir=tmp, log=log, progress=not args.no_progress)
        report = {"model": args.model, "data": data.source, **result.metrics}
        if evalset is not None:  # agreement with the FP32 model, labels not needed
            from edgekit.quant.fallback import run_session, session

            qat_out = run_session(session(result.onnx.path, {}), evalset.x)[0]
            ref = reference_outputs(src if args.weights is None else load_model(module, src.input_shape),
                                    evalset.x)[0]
            report["eval_data"] = evalset.source
            report["agreement_vs_fp32"] = top1_agreement(ref, qat_out)
        report["onnx"] = selfdistill.ONNX_FILE
        (tmp / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "onnx"}, indent=2, default=str))
    model_path = out / selfdistill.ONNX_FILE
    print(f"int8 model: {model_path}; export it with: edgekit export {model_path} --target x86-server-cpu "
          "--precision int8 (no calibration: "
          "its ranges come from training)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "self-distill", help="label-free QAT: the FP32 model teaches its own int8 version on unlabelled samples",
        description="Quantization-aware training without labels: a fake-quantized copy of MODEL (torchao PT2E: "
                    "uint8 activations, int8 per-channel weights) is trained to match the FP32 MODEL's outputs "
                    "(soft-target KL) on unlabelled samples such as the calibration set. Use it when post-"
                    "training int8 loses too much and no labelled data exists. Writes OUT/selfdistill_qat."
                    "verified.onnx (Q/DQ, exported without calibration) and OUT/report.json. " + DATA_HELP + ".",
        epilog="Example: edgekit self-distill mypkg.models:student --weights student.pt --input-shape 1x3x32x32 "
               "--data calib.npz --eval val.npz --out sd",
    )
    p.add_argument("model", metavar="MODEL", help="package.module:factory (with --input-shape) or a .pt2 program")
    p.add_argument("--weights", metavar="FILE.pt", help="state_dict to load into the factory's model")
    p.add_argument("--input-shape", metavar="NxCxHxW", help="input shape for a factory model")
    p.add_argument("--data", required=True, metavar="DATA", help="unlabelled training samples (labels ignored)")
    p.add_argument("--samples", type=int, default=None, metavar="N", help="use at most N samples (default all)")
    p.add_argument("--eval", metavar="DATA", help="measure top-1 agreement with the FP32 model on DATA")
    p.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--out", "-o", default="edgekit-self-distill", metavar="DIR", help="output folder")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
