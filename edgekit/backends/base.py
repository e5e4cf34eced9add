"""The two interfaces every backend implements, after Polygraphy's loader/runner split.

An Exporter turns the one intermediate form (a verified FP32 ONNX graph, plus calibration ranges when the
precision needs them) into the files a runtime loads. A Runner loads those files and runs them. The export
pipeline, the accuracy check and the benchmark harness drive every backend through these two and nothing
else, so a new runtime is one module and one registry entry.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.graph.tensors import TensorSpec as TensorSpec  # the manifest's tensor description, shared

if TYPE_CHECKING:
    from edgekit.graph.onnx_export import OnnxModel
    from edgekit.models.source import SourceModel
    from edgekit.data.calibration import CalibrationSet, Ranges
    from edgekit.targets import Target

#: ops whose second input is a weight (what int8 quantizes per channel and a Q/DQ graph holds as integers)
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class ExportResult:
    """What an exporter wrote into its folder. `details` goes into the manifest under the backend's name."""

    model_file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportRequest:
    """Everything an exporter needs, gathered by the pipeline so each backend sees the same inputs."""

    onnx: OnnxModel
    target: Target
    precision: str
    calibration: CalibrationSet | None
    ranges: Ranges | None
    out_dir: Path
    #: the quantization-ready graph the ranges are keyed on (None for float precisions)
    prepared: Path | None = None
    #: the model the user gave, for backends that need more than the ONNX graph (the torch eager baseline)
    source: SourceModel | None = None
    #: the transformer quantizer the pipeline hands down (a higher layer's code, so backends never import it):
    #: (src, dest, precision, calibration feeds, target options, user options) -> report; None: ONNX Runtime's
    #: own dynamic/int4 quantizers are used
    quantize_transformer: Callable[..., dict[str, Any]] | None = None


class Exporter(abc.ABC):
    """Settings come in the constructor; the work happens in `export`, which writes only into `out_dir`."""

    #: precisions that need a calibration set (e.g. int8 for TFLite's representative dataset)
    needs_calibration: tuple[str, ...] = ()
    #: precisions that also need the shared activation ranges computed by edgekit (a subset of the above)
    uses_ranges: tuple[str, ...] = ()
    #: True when a model with token inputs (a transformer) is quantized by the exporter's own calibration from
    #: the named feeds, so the pipeline computes no shared ranges for it
    calibrates_token_models: bool = False
    #: the registry name whose option declaration (edgekit.backends.options) the constructor checks against
    backend: str = ""
    #: options a Python caller may hand over as objects rather than the declared plain values
    passthrough_options: tuple[str, ...] = ()

    def __init__(self, **options: Any) -> None:
        from edgekit.backends.options import validate

        if not self.backend:
            if options:
                raise EdgekitError(f"{type(self).__name__} declares no options; it accepts none")
            self.options: dict[str, Any] = {}
            return
        self.options = validate(self.backend, options, "exporter options", self.passthrough_options)

    @property
    def option_names(self) -> tuple[str, ...]:
        """The options `edgekit export --backend-option KEY=VALUE` accepts for this backend."""
        from edgekit.backends.options import names

        return names(self.backend) if self.backend else ()

    @abc.abstractmethod
    def export(self, request: ExportRequest) -> ExportResult: ...


class Runner(abc.ABC):
    """load / infer / close, and a context manager. `infer` takes what the source model takes (NCHW float)."""

    def __init__(self, artifact_dir: Path, manifest: dict[str, Any], threads: int | None = None) -> None:
        self.artifact_dir = Path(artifact_dir)
        self.manifest = manifest
        self.threads = threads
        #: the thread count the runtime was given (0: its own default); runners that pick one update it
        self.threads_used = int(threads or 0)

    @abc.abstractmethod
    def load(self) -> None: ...

    @abc.abstractmethod
    def infer(self, inputs: np.ndarray | dict[str, np.ndarray]) -> list[np.ndarray]: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    @property
    def runtime_version(self) -> str:
        return "unknown"

    def __enter__(self) -> Runner:
        self.load()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def input_names(self) -> list[str]:
        return [t["name"] for t in self.manifest["inputs"]]

    def as_feed(self, inputs: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if isinstance(inputs, dict):
            return inputs
        names = self.input_names()
        if len(names) != 1:
            raise ValueError(f"this model has {len(names)} inputs ({', '.join(names)}); pass a dict")
        return {names[0]: inputs}


def run_batched(runner, x: np.ndarray | dict[str, np.ndarray], batch: int | None = None) -> list[np.ndarray]:
    """Run a runner over many samples (the one input's array, or arrays keyed by input name), in batches of
    the artifact's fixed batch when it has one (batch None: as many as `batch_for` allows for the sample
    size)."""
    from edgekit.common import io
    from edgekit.graph.onnx_export import batch_for

    feeds = x if isinstance(x, dict) else {runner.input_names()[0]: x}
    first = next(iter(feeds.values()))
    step = io.fixed_batch(runner.manifest["inputs"]) or batch or batch_for(first.shape[1:])
    return io.run_batched(runner.infer, feeds, step)
