"""The `edgekit` command. Thin: parse arguments, call the library, print. Subcommands live in
edgekit/commands/, one module each, found by listing that package; heavy imports happen inside the command
functions so `edgekit --help` stays instant.

Exit codes: 0 success, 2 user error (one line on stderr), 1 a bug in edgekit (traceback), 130 Ctrl-C,
143 SIGTERM (after removing the run's temporary files).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Callable, Sequence

from edgekit import commands
from edgekit.errors import EdgekitError, MissingTorchError


def build_parser() -> argparse.ArgumentParser:
    from edgekit import __version__

    parser = commands.Parser(
        prog="edgekit",
        description="Export, calibrate and benchmark distilled PyTorch models for edge targets.",
        epilog="Start with `edgekit quickstart`, or `edgekit targets` then "
               "`edgekit export zoo:digits-student --target x86-server-cpu`.",
    )
    parser.add_argument("--version", action="version", version=f"edgekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=commands.Parser)
    sub.required = True
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"edgekit.commands.{info.name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    from edgekit.rundir import Terminated, run_scope

    out = getattr(args, "out", None)
    try:
        # one temp root for the whole run, removed on every exit; leftovers of killed runs removed first
        with run_scope(out_dirs=[out] if isinstance(out, str) and out else []):
            return func(args)
    except Terminated:
        print(f"edgekit {args.command}: terminated (SIGTERM); temporary files removed", file=sys.stderr)
        return 143
    except EdgekitError as exc:
        print(f"edgekit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "torch":
            raise
        # torch is an optional extra; the commands that need it say so in one line, like any missing piece
        print(f"edgekit {args.command}: error: {MissingTorchError(f'edgekit {args.command}')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgekit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
