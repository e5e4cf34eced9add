"""One module per `edgekit` subcommand. Each defines `register(subparsers)` and imports nothing heavy at
module level: the CLI imports every module here to build its parser, and `edgekit --help` must stay instant.
"""

from __future__ import annotations

import argparse
import sys

DATA_HELP = ("DATA is a .npz (array x, or one array per input named after it; optional labels y), a .npy, a .txt "
             "of sentences (hf: models), or zoo:digits[:train|:test]")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit code 2, like every other edgekit error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def log(msg: str) -> None:
    """Progress lines go to stderr so stdout stays the command's result; the last one also names the stage
    an unexpected error is reported in."""
    from edgekit.errors import note_progress

    if not msg.startswith("warning"):
        note_progress(msg)
    print(f"edgekit: {msg}", file=sys.stderr, flush=True)
