"""The `edgekit` command. Thin: parse arguments, call the library, print. Subcommands live in
edgekit/commands/, one module each, found by listing that package; heavy imports happen inside the command
functions so `edgekit --help` stays instant.

Exit codes: 0 success, 2 user error (one line on stderr), 1 a bug in edgekit (one line; the traceback with
`edgekit --debug CMD` or EDGEKIT_DEBUG=1), 130 Ctrl-C, 143 SIGTERM (after removing the run's temporary files).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import traceback
from collections.abc import Callable, Sequence

from edgekit import commands
from edgekit.errors import EdgekitError, MissingTorchError, last_progress, note_progress


def build_parser() -> argparse.ArgumentParser:
    from edgekit import __version__

    parser = commands.Parser(
        prog="edgekit",
        description="Export, calibrate and benchmark distilled PyTorch models for edge targets.",
        epilog="Start with `edgekit quickstart`, or `edgekit targets` then "
               "`edgekit export zoo:digits-student --target x86-server-cpu`.",
    )
    parser.add_argument("--version", action="version", version=f"edgekit {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help=f"print the traceback of an error (also: {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=commands.Parser)
    sub.required = True
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):  # helpers of a command, not commands
            continue
        importlib.import_module(f"edgekit.commands.{info.name}").register(sub)
    return parser


DEBUG_ENV = "EDGEKIT_DEBUG"


def debug_requested(args: argparse.Namespace | None = None) -> bool:
    """`--debug` before the command, or EDGEKIT_DEBUG=1: show tracebacks."""
    return bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Every way out is one of three: 0 success; 2 the user's error (one line on stderr:
    bad input, or their own code failing, SystemExit included); 1 a bug in edgekit (one line naming the stage
    and the exception, the traceback only with --debug)."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    debug = debug_requested(args)
    note_progress("")
    from edgekit.common.rundir import Terminated, run_scope

    out = getattr(args, "out", None)
    try:
        # one temp root for the whole run, removed on every exit; leftovers of killed runs removed first
        with run_scope(out_dirs=[out] if isinstance(out, str) and out else []):
            rc = func(args)
    except Terminated:
        print(f"edgekit {args.command}: terminated (SIGTERM); temporary files removed", file=sys.stderr)
        return 143
    except EdgekitError as exc:
        if debug:
            traceback.print_exc()
        print(f"edgekit {args.command}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgekit: interrupted", file=sys.stderr)
        return 130
    except BaseException as exc:  # a bug, or a dependency that raised (or called sys.exit) where it should not
        if debug:
            traceback.print_exc()
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == "torch":
            # torch is an optional extra; the commands that need it say so in one line, like any missing piece
            print(f"edgekit {args.command}: error: {MissingTorchError(f'edgekit {args.command}')}", file=sys.stderr)
            return 2
        # the innermost named stage, else the last progress line, else the command itself
        where = getattr(exc, "edgekit_stage", None) or last_progress() or f"running `edgekit {args.command}`"
        print(f"edgekit {args.command}: internal error while {where}: {type(exc).__name__}: "
              f"{one_line(str(exc)) or '(no message)'} (please report; rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1
    return rc if isinstance(rc, int) and not isinstance(rc, bool) else 0


def one_line(text: str) -> str:
    """A message as one line: an error that spans lines would break `edgekit CMD: error: ...` for scripts."""
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
