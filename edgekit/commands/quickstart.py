"""`edgekit quickstart`: the whole path on the embedded digits default."""

from __future__ import annotations

import argparse

from edgekit.commands import log


def run(args: argparse.Namespace) -> int:
    from edgekit.quickstart import run_quickstart

    run_quickstart(args.out, force=args.force, log=log)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart", help="the whole path on the embedded digits default, in one command",
        description="Train the digits teacher and student (scikit-learn's digits, no download), export the "
                    "student to every target whose runtime is installed, check each artifact against FP32, "
                    "and write artifacts, summary.json and report.md to one folder.",
    )
    p.add_argument("--out", default="edgekit-quickstart", help="report folder (default: edgekit-quickstart)")
    p.add_argument("--force", action="store_true", help="replace the report folder if it exists")
    p.set_defaults(func=run)
