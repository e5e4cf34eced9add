"""`edgekit quickstart`: the whole path on the embedded digits default."""

from __future__ import annotations

import argparse

from edgekit.commands import log


def run(args: argparse.Namespace) -> int:
    from edgekit.quickstart import QuickstartConfig, run_quickstart

    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip()) if args.targets else None
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
    p.add_argument("--out", default="edgekit-quickstart", help="report folder (default: edgekit-quickstart)")
    p.add_argument("--force", action="store_true", help="replace the report folder if it exists")
    p.add_argument("--targets", metavar="T1,T2", help="export to these targets only (default: all installed)")
    p.add_argument("--distill-epochs", type=int, default=20, metavar="N", help="distillation epochs (default 20)")
    p.add_argument("--qat-epochs", type=int, default=3, metavar="N", help="QAT epochs (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed for training (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.set_defaults(func=run)
