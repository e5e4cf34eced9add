"""Error types that the CLI maps to exit codes.

`EdgekitError` is the user's mistake or a missing piece of their environment: the CLI prints its message on
one line and exits 2; `UserCodeError` is one of them, for code the user named that failed. Anything else
escaping is a bug in edgekit: one line naming the stage it happened in, exit 1, the traceback only with
`--debug`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class EdgekitError(Exception):
    """A user-facing error: bad input, unknown name, missing runtime. Message is one line."""


class MissingRuntimeError(EdgekitError):
    """A backend's runtime package is not installed here."""

    def __init__(self, backend: str, package: str, extra: str, hint: str = "") -> None:
        self.backend = backend
        self.package = package
        self.extra = extra
        msg = (
            f"backend '{backend}' needs the Python package '{package}', which is not installed; "
            f"install it with: pip install 'edgekit[{extra}]'"
        )
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


TORCH_EXTRA = "torch"


class MissingTorchError(EdgekitError):
    """PyTorch is an optional extra: a .onnx model exports, benchmarks and is recommended on without it;
    a torch model (nn.Module, factory, .pt2, zoo) and the training stages need it."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} needs PyTorch, which is not installed; install it with: pip install "
                         f"'edgekit[{TORCH_EXTRA}]' (a .onnx model exports without it)")


class UserCodeError(EdgekitError):
    """Code the user named (a `module:factory`, its module's import) raised, or called `sys.exit`: the user's
    problem, so exit 2 with one line naming the stage; the original exception is kept as `__cause__` for
    `--debug`."""


def describe_exception(exc: BaseException) -> str:
    """`SystemExit(0)`, `ValueError('bad size')`: the type and arguments on one line, cut short."""
    text = " ".join(repr(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."


def user_code_error(stage: str, exc: BaseException, who: str) -> UserCodeError:
    return UserCodeError(f"{stage}: {describe_exception(exc)} raised by {who}")


@contextlib.contextmanager
def stage(what: str) -> Iterator[None]:
    """Name what the program is doing, so an unexpected exception can say where it happened ("internal
    error while <what>"). The innermost stage wins: it is stored on the exception as it passes through."""
    try:
        yield
    except BaseException as exc:
        if getattr(exc, "edgekit_stage", None) is None:
            with contextlib.suppress(AttributeError, TypeError):  # some built-in exceptions take no attributes
                exc.edgekit_stage = what  # type: ignore[attr-defined]
        raise


_PROGRESS: list[str] = [""]


def note_progress(what: str) -> None:
    """Remember the last progress line shown to the user: without a `stage`, it is where an error happened."""
    _PROGRESS[0] = what


def last_progress() -> str:
    return _PROGRESS[0]
