"""`edgekit quickstart`: the whole path on the embedded digits default, or on a real sentence encoder
(`--task text`)."""

from __future__ import annotations

import argparse

from edgekit.commands import log


def run(args: argparse.Namespace) -> int:
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip()) if args.targets else None
    if args.task == "text":
        from edgekit.quickstart.text import TextQuickstartConfig, run_text_quickstart

        config = TextQuickstartConfig(teacher=args.teacher, distill_seconds=args.distill_seconds,
                                      train_sentences=args.train_sentences, seed=args.seed, targets=targets,
                                      qat_steps=args.qat_steps,
                                      progress=not args.no_progress,
                                      sources=tuple(s.strip() for s in args.sources.split(",") if s.strip()))
        run_text_quickstart(args.out, force=args.force, config=config, log=log)
        return 0
    if args.teacher:
        from edgekit.errors import EdgekitError

        raise EdgekitError("--teacher is for --task text (a Hugging Face encoder hf:DIR); the digits quickstart "
                           "trains its own teacher")
    from edgekit.quickstart.image import QuickstartConfig, run_quickstart

    config = QuickstartConfig(distill_epochs=args.distill_epochs, qat_epochs=args.qat_epochs, seed=args.seed,
                              targets=targets, progress=not args.no_progress)
    run_quickstart(args.out, force=args.force, config=config, log=log)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart", help="the whole path on the embedded digits default, in one command",
        description="On scikit-learn's digits (shipped with the package, no download): train the teacher, "
                    "distil a student of 1/15 its size (and train the same student on labels alone, for "
                    "comparison), fine-tune it with quantization-aware training, export it to every target "
                    "whose runtime is installed (the others are listed with the command that installs them), "
                    "benchmark every artifact in its own process, and recommend a precision for a few named "
                    "targets from the decision tree checked against the measurements. Everything goes to one "
                    "folder: artifacts/, models/, bench.json/.csv/.png, summary.json and report.md.",
        epilog="A few minutes on 2 CPU cores. The same stages one by one: edgekit distill, edgekit qat, "
               "edgekit export, edgekit bench, edgekit recommend (see each one's --help).",
    )
    p.add_argument("--task", default="digits", choices=("digits", "text"),
                   help="digits (default: CNN on scikit-learn's digits) or text: all-MiniLM-L6-v2 (the "
                        "'real-models' extra) distilled into a 1/8-size student on installed packages' "
                        "docstrings within --distill-seconds, exported to the targets that take token models, "
                        "benchmarked against the teacher; about 10-15 minutes on 2 cores")
    p.add_argument("--out", default="edgekit-quickstart", help="report folder (default: edgekit-quickstart)")
    p.add_argument("--force", action="store_true", help="replace the report folder if it exists")
    p.add_argument("--targets", metavar="T1,T2", help="export to these targets only (default: all installed)")
    p.add_argument("--distill-epochs", type=int, default=20, metavar="N", help="distillation epochs (default 20)")
    p.add_argument("--qat-epochs", type=int, default=3, metavar="N", help="QAT epochs (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed for training (default 0)")
    text = p.add_argument_group("--task text")
    text.add_argument("--teacher", metavar="hf:DIR", help="another BERT-style teacher (default: all-MiniLM-L6-v2)")
    text.add_argument("--distill-seconds", type=float, default=240.0, metavar="S",
                      help="time budget of the student's training (default 240)")
    text.add_argument("--train-sentences", type=int, default=8000, metavar="N",
                      help="training sentences (default 8000)")
    text.add_argument("--qat-steps", type=int, default=60, metavar="N",
                      help="QAT steps of the distilled student for dynamic int8, the teacher as target; 0 skips "
                           "QAT (default 60)")
    text.add_argument("--sources", default="stdlib,site-packages", metavar="S1,S2",
                      help="where the sentences come from: stdlib and/or site-packages docstrings (default both)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.set_defaults(func=run)
