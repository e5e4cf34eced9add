"""`edgekit distill`: train a student against a teacher (soft targets, features, attention) and report the stage.

The argument helpers here are shared by `edgekit qat` and `edgekit prune`; this module imports nothing
heavy (torch is imported inside `run`).
"""

from __future__ import annotations

import argparse

from edgekit.commands import DATA_HELP, log
from edgekit.commands._distill_text import add_text_args

MODEL_HELP = ("zoo:NAME, package.module:factory (a function returning an nn.Module), or for a teacher a .pt2 "
              "program")


def add_model_args(p: argparse.ArgumentParser, *, student: bool = True) -> None:
    p.add_argument("--teacher", metavar="MODEL", help=f"the teacher: {MODEL_HELP} (default: the zoo pair's)")
    p.add_argument("--teacher-weights", metavar="FILE.pt", help="a state dict loaded into the teacher")
    if student:
        p.add_argument("--student", metavar="MODEL", help="the student: zoo:NAME (its untrained architecture) or "
                       "package.module:factory (default: the zoo pair's)")
        p.add_argument("--student-weights", metavar="FILE.pt", help="a state dict (or an edgekit checkpoint) "
                       "loaded into the student before training")
    p.add_argument("--pair", metavar="NAME", help="a zoo teacher/student pair: digits-cnn (default) or digits-vit")


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="DATA", help=f"training data (default for zoo models: zoo:digits). {DATA_HELP}")
    p.add_argument("--eval", metavar="DATA", help="evaluation data (default: zoo:digits:test for zoo data, else "
                   "the training data)")


def add_train_args(p: argparse.ArgumentParser, *, epochs: int, lr: float, alpha: str = "0.9",
                   temperature: str = "1", layers: bool = True) -> None:
    p.add_argument("--epochs", type=int, default=epochs, metavar="N", help=f"training epochs (default {epochs})")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="batch size per process (default 64)")
    p.add_argument("--lr", type=float, default=lr, help=f"AdamW peak learning rate, cosine decay (default {lr:g})")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default 1e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation and data order (default 0)")
    p.add_argument("--alpha", default=alpha, metavar="A|A0:A1",
                   help=f"weight of the soft-target KL, 1-alpha goes to cross-entropy; A0:A1 is linear over "
                        f"training, e.g. 0.7:0.3 (default {alpha})")
    p.add_argument("--temperature", "-T", default=temperature, metavar="T|T1,T2,..|learnable[:T0]",
                   help=f"softmax temperature: constant, staged (5,2,1) or learnable (default {temperature})")
    p.add_argument("--standardize-logits", action=argparse.BooleanOptionalAction, default=True,
                   help="z-score teacher and student logits before the soft-target KL (logit standardization; "
                        "default on: it is what let the 1/15-size digits student beat training alone; "
                        "--no-standardize-logits with -T 4 is classic Hinton KD)")
    if layers:
        p.add_argument("--feature", action="append", default=[], metavar="S=T",
                       help="feature distillation: student layer S towards teacher layer T (MSE, learned "
                            "projection when widths differ; repeatable)")
        p.add_argument("--feature-weight", type=float, default=1.0, help="weight of the feature terms (default 1)")
        p.add_argument("--attention", action="append", default=[], metavar="S=T",
                       help="attention-map MSE between two attention layers (repeatable)")
        p.add_argument("--attention-weight", type=float, default=1.0, help="weight of the attention terms")
        p.add_argument("--hidden", action="append", default=[], metavar="S=T",
                       help="hidden-state cosine alignment between two layers (repeatable)")
        p.add_argument("--hidden-weight", type=float, default=1.0, help="weight of the hidden-state terms")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    p.add_argument("--amp", default="auto", choices=("auto", "off", "fp16", "bf16"),
                   help="mixed precision (default auto: fp16 on CUDA, off on CPU)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--force", action="store_true", help="start over even if OUT holds a checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_output_args(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--out", "-o", default=default_out, metavar="DIR",
                   help=f"folder for the checkpoint, the trained model and report.json (default ./{default_out})")
    p.add_argument("--report", metavar="FILE.json", help="also write the stage report here")


def train_config(args: argparse.Namespace, out, desc: str):
    from edgekit.train.distill.trainer import TrainConfig

    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                       seed=args.seed, device=args.device, amp=args.amp, progress=not args.no_progress,
                       checkpoint=out / "checkpoint.pt", resume=args.resume, desc=desc)


def loss_config(args: argparse.Namespace, zoo_pair=None, layers: bool = True):
    from edgekit.train.distill.losses import DistillConfig

    kwargs = {}
    if layers:
        attention = args.attention or ([f"{s}={t}" for s, t in zoo_pair.attention] if zoo_pair else [])
        hidden = args.hidden or ([f"{s}={t}" for s, t in zoo_pair.hidden] if zoo_pair else [])
        kwargs = {"features": tuple(args.feature), "feature_weight": args.feature_weight,
                  "attention": tuple(attention), "attention_weight": args.attention_weight,
                  "hidden": tuple(hidden), "hidden_weight": args.hidden_weight}
    return DistillConfig(alpha=args.alpha, temperature=args.temperature,
                         standardize_logits=args.standardize_logits, **kwargs)


def print_summary(report: dict) -> None:
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f}%"

    print(f"teacher    {report['teacher_params']:,} params, {report.get('teacher_macs', 0):,} MACs, "
          f"accuracy {pct(report.get('teacher_accuracy'))}")
    print(f"student    {report['student_params']:,} params, {report.get('student_macs', 0):,} MACs, "
          f"accuracy {pct(report.get('student_accuracy'))} (compression {report.get('compression_ratio', 0):.1f}x)")
    print(f"retention  {pct(report.get('retention'))}   CKA {report.get('cka', float('nan')):.3f}")
    if "student_alone_accuracy" in report:
        print(f"alone      accuracy {pct(report['student_alone_accuracy'])} (same student, seed and epochs, "
              f"labels only)")
    for key, path in report.get("files", {}).items():
        if not key.endswith("_error"):
            print(f"{key:<10} {path}")


CNN_DEFAULTS = {"alpha": "0.9", "temperature": "1", "lr": 3e-3, "epochs": 20, "batch_size": 64}


def run(args: argparse.Namespace) -> int:
    import time

    from edgekit.commands._distill_text import is_text, resolve_defaults, run_text

    if is_text(args):
        return run_text(args)
    resolve_defaults(args, CNN_DEFAULTS)
    from edgekit.train.distill import inputs
    from edgekit.train.distill.distributed import init_distributed, is_main_process, shutdown_distributed
    from edgekit.train.distill.stage import distill

    pair = inputs.resolve_pair(args.teacher, args.student, args.pair, teacher_weights=args.teacher_weights,
                               student_weights=args.student_weights, seed=args.seed)
    train, evaluation, note = inputs.load_datasets(args.data, args.eval, zoo_default=pair.uses_zoo)
    out = inputs.prepare_out_dir(args.out, args.resume, args.force)
    loss = loss_config(args, pair.zoo)
    config = train_config(args, out, "distill")
    if args.baseline and train.y is None:
        from edgekit.errors import EdgekitError

        raise EdgekitError(f"--baseline trains the student on labels alone, but '{train.source}' has no labels y")
    sampler = None
    if args.sampling == "scored":
        from edgekit.train.distill.data_score import ClassifierSampler, score_classifier_data
        from edgekit.train.distill.distributed import world_size
        from edgekit.train.distill.predict import predict

        scores = score_classifier_data(pair.teacher, train.x, args.seed)
        sampler = ClassifierSampler(scores, train.x, predict(pair.teacher, train.x), args.batch_size * world_size(),
                                    args.seed)
    init_distributed()
    main = is_main_process()
    started = time.perf_counter()
    try:
        result = distill(pair.teacher, pair.student, train, evaluation, loss=loss, config=config,
                         baseline=args.baseline, log=log if main else None, sampler=sampler)
        report = {"stage": "distill", "teacher": pair.teacher_spec, "student": pair.student_spec,
                  "train_data": train.source, **result.metrics, "history": result.train.history,
                  "world_size": result.train.world_size, "resumed_from_epoch": result.train.resumed_from_epoch,
                  "seconds": time.perf_counter() - started}
        if note:
            report["note"] = note
        if main:
            report["files"] = inputs.save_student(pair.student, out, "student", tuple(train.x.shape[1:]))
            inputs.write_report(report, out / "report.json", args.report)
            print_summary(report)
    finally:
        shutdown_distributed()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill", help="distil a teacher into a student (soft targets, features, attention); report the stage",
        description="Train a student against a teacher: alpha*KL(T)*T^2 + (1-alpha)*CE, plus optional feature "
                    "MSE, attention-map MSE and hidden-state cosine terms on named layers. AdamW with cosine "
                    "decay, seeded, checkpointed each epoch (--resume), evaluated each epoch. Runs under "
                    "`torchrun --nproc_per_node N -m edgekit distill ...` with DistributedDataParallel as is.",
        epilog="Without models the zoo pair digits-cnn is used (teacher 94k params, student 6k). Example: "
               "edgekit distill --epochs 20 --baseline --report distill.json; "
               "edgekit distill --pair digits-vit (attention and hidden-state distillation). "
               "Transformers: edgekit distill --teacher hf:DIR --student-config layers=3,hidden=192,heads=6,"
               "intermediate=768 --data sentences.txt --out DIR (defaults there: --alpha 0.7:0.3, -T 5,2,1, "
               "--lr 1e-3, --epochs 3, --batch-size 32; alpha is the weight of the hidden-state and attention "
               "terms, 1-alpha that of the embedding cosine; --baseline trains the same student on the embedding "
               "alone).",
    )
    add_model_args(p)
    add_data_args(p)
    add_train_args(p, epochs=20, lr=3e-3)
    p.add_argument("--baseline", action="store_true",
                   help="also train the same student on labels alone (same seed and epochs) and report "
                        "student_alone_accuracy; for a transformer student: output-only distillation")
    add_text_args(p)
    # None = the default of the path taken (CNN or transformer), resolved in run()
    p.set_defaults(alpha=None, temperature=None, lr=None, epochs=None, batch_size=None)
    add_output_args(p, "edgekit-distill")
    p.set_defaults(func=run)
