"""`edgekit distill --teacher hf:DIR --student-config ... --data sentences.txt`: the transformer path.

Kept apart from the CNN path of `edgekit distill` (same command, same training flags): its inputs are
sentences, its student is built from a config, its output is a `save_pretrained` folder. Nothing heavy is
imported at module level.
"""

from __future__ import annotations

import argparse

from edgekit.commands import log

#: the recipe that reached the issue's target on all-MiniLM-L6-v2 (benchmarks/text_distill.py): the `eighth`
#: student, batches of 64 at peak LR 1.5e-3; the layer terms whenever their targets fit in memory
TEXT_DEFAULTS = {"alpha": "0.7:0.3", "temperature": "5,2,1", "lr": 1.5e-3, "epochs": 5, "batch_size": 64}
DEFAULT_STUDENT = "eighth"
TERMS = ("auto", "full", "output")


def add_text_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("transformer students (teacher hf:DIR, data a text file with one sentence a line)")
    g.add_argument("--student-config", metavar="PRESET|K=V,..",
                   help="a BERT student built from the teacher: the preset 'eighth' (default: 2 blocks of the "
                        "teacher's width, vocabulary trimmed to the data's 3000 commonest tokens, feed-forward "
                        "filling 1/8 of the teacher's parameters) or layers, hidden, heads, intermediate, "
                        "vocab=trim|shared|N, max_len, init=teacher|random")
    g.add_argument("--terms", default="auto", choices=TERMS,
                   help="loss terms: full (embedding + hidden states + attention maps), output (embedding "
                        "alone), auto (default: full when the teacher's per-token targets fit in 2 GiB, which "
                        "is up to a few thousand sentences, else output)")
    g.add_argument("--cache", metavar="DIR",
                   help="cache the teacher's sentence embeddings here across runs (output terms only)")
    g.add_argument("--layer-map", default="uniform", metavar="MAP",
                   help="student -> teacher blocks: uniform (default), last, or S=T pairs such as 1=2,2=4,3=6")
    g.add_argument("--attention-loss", default="kl", choices=("kl", "mse"),
                   help="attention-map term (default kl); heads averaged in groups when counts differ")
    g.add_argument("--output-loss", default="cosine", choices=("cosine", "mse"),
                   help="loss on the mean-pooled sentence embedding (default cosine)")
    g.add_argument("--max-length", type=int, default=64, metavar="N", help="tokens per sentence (default 64)")
    g.add_argument("--sampling", default="uniform", choices=("uniform", "scored"),
                   help="uniform, or scored: drop poor samples and move from diverse to high-quality + hard "
                        "(CNN students too)")


def is_text(args: argparse.Namespace) -> bool:
    return bool(args.student_config) or str(args.teacher or "").startswith("hf:")


def resolve_defaults(args: argparse.Namespace, defaults: dict) -> None:
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def run_text(args: argparse.Namespace) -> int:
    import time
    from dataclasses import replace
    from pathlib import Path

    from edgekit.errors import EdgekitError

    resolve_defaults(args, TEXT_DEFAULTS)
    if not str(args.teacher or "").startswith("hf:"):
        raise EdgekitError(f"a transformer student needs a Hugging Face teacher: --teacher hf:DIR (got "
                           f"{args.teacher!r})")
    if args.student or args.pair or args.teacher_weights or args.student_weights:
        raise EdgekitError("--student/--pair/--*-weights are for CNN pairs; a transformer student is given by "
                           f"--student-config, e.g. {DEFAULT_STUDENT}")
    if not args.data:
        raise EdgekitError("transformer distillation needs --data sentences.txt (one sentence per line)")

    from edgekit.train.distill import inputs
    from edgekit.train.distill.distributed import init_distributed, is_main_process, shutdown_distributed
    from edgekit.train.distill.student import parse_student_config, resolve_preset, save_student
    from edgekit.train.distill.text import TextDistillConfig
    from edgekit.train.distill.text_stage import (
        load_hf_teacher,
        prepare,
        read_sentences,
        run_stage,
        same_budget,
        unk_rates,
    )
    from edgekit.train.distill.trainer import TrainConfig

    if (args.student_config or DEFAULT_STUDENT).strip() != DEFAULT_STUDENT:
        parse_student_config(resolve_preset(args.student_config, None))  # a bad config fails before any loading
    terms = getattr(args, "terms", "auto")
    config = TextDistillConfig(layer_map=args.layer_map, attention_loss=args.attention_loss,
                               output_loss=args.output_loss, alpha=args.alpha, temperature=args.temperature,
                               hidden_weight=args.hidden_weight, attention_weight=args.attention_weight,
                               max_length=args.max_length, sampling=args.sampling, output_only=terms == "output")
    sentences = read_sentences(args.data, "--data")
    note = None
    if args.eval:
        heldout = read_sentences(args.eval, "--eval")
    else:  # every 10th sentence held out, so the reported retention is never measured on training data
        heldout = sentences[::10]
        sentences = [s for i, s in enumerate(sentences) if i % 10]
        note = "no --eval: every 10th sentence of --data was held out for evaluation"
    out = inputs.prepare_out_dir(args.out, args.resume, args.force)
    train = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                        seed=args.seed, device=args.device, progress=False, grad_clip=1.0, desc="distill",
                        checkpoint=out / "checkpoint.pt", resume=args.resume)
    teacher, tokenizer = load_hf_teacher(args.teacher)
    spec = parse_student_config(resolve_preset(args.student_config or DEFAULT_STUDENT, teacher))
    init_distributed()
    main = is_main_process()
    say = log if main else None
    started = time.perf_counter()
    try:
        setup = prepare(teacher, tokenizer, sentences, spec, config, seed=args.seed, log=say,
                        layers={"auto": "auto", "full": True, "output": False}[terms], cache_dir=args.cache)
        config = setup.config
        student, result = run_stage(setup, train, heldout, log=say)
        t_params = sum(p.numel() for p in teacher.parameters())
        report = {"stage": "distill", "kind": "text", "teacher": args.teacher, "student_config": spec.__dict__,
                  "train_data": str(Path(args.data)), "train_sentences": len(sentences),
                  "heldout_sentences": len(heldout), "teacher_params": t_params,
                  "student_params": student.params(), "compression_ratio": t_params / student.params(),
                  "vocab_size": len(student.tokens), "student_notes": student.notes,
                  **unk_rates(tokenizer, student, heldout, config.max_length), **result}
        if setup.data.scores is not None:
            report["data_scores"] = setup.data.scores.report(len(sentences))
        if args.baseline:
            plain = replace(train, checkpoint=None, resume=False)  # the checkpoint belongs to the main run
            _, base = run_stage(setup, plain, heldout, config=same_budget(config, output_only=True), log=say)
            report["baseline_output_only"] = {k: v for k, v in base.items() if k != "config"}
        report["seconds"] = time.perf_counter() - started
        if note:
            report["note"] = note
        if main:
            report["files"] = save_student(student, out, tokenizer, {"teacher": args.teacher})
            inputs.write_report(report, out / "report.json", args.report)
            _print(report)
    finally:
        shutdown_distributed()
    return 0


def _print(report: dict) -> None:
    print(f"teacher    {report['teacher_params']:,} params")
    print(f"student    {report['student_params']:,} params (compression {report['compression_ratio']:.1f}x, "
          f"vocabulary {report['vocab_size']:,}, held-out [UNK] {100 * report['unk_rate_student_tokenizer']:.2f}%)")
    print(f"retention  embedding cosine {report['cosine_mean']:.4f} mean (min {report['cosine_min']:.4f}), "
          f"nearest-neighbour agreement {report['nn_top1_agreement']:.3f}")
    print("CKA        " + ", ".join(f"{k} {v:.3f}" for k, v in report["cka"].items()))
    if "baseline_output_only" in report:
        b = report["baseline_output_only"]
        print(f"baseline   output-only distillation: cosine {b['cosine_mean']:.4f}, nearest-neighbour agreement "
              f"{b['nn_top1_agreement']:.3f} (same student, seed and steps)")
    print(f"student    {report['files']['student']}")
