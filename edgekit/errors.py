"""Error types that the CLI maps to exit codes.

`EdgekitError` is the user's mistake or a missing piece of their environment: the CLI prints its message on
one line and exits 2. Anything else escaping is a bug in edgekit and exits 1 with a traceback.
"""

from __future__ import annotations


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
