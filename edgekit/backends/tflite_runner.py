"""The LiteRT runner of TFLite artifacts: ai_edge_litert's Interpreter, feeding the source model's layout
(NCHW float, or named token inputs padded to the artifact's fixed sequence length) and returning float
outputs in the source layout, so every check and benchmark compares like with like."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends.base import Runner
from edgekit.errors import EdgekitError


class LiteRTRunner(Runner):
    """ai_edge_litert's Interpreter, XNNPACK on by default; `threads` = the interpreter's num_threads.

    `infer` takes the source model's input (NCHW float) and returns float outputs in the source layout.
    With `raw_io=True` it takes and returns the .tflite model's own tensors (e.g. int8 NHWC) untouched;
    `quantize_input` and `dequantize_output` convert between the two for users who do that themselves.
    Batches: a model with a dynamic batch is resized to the batch given; a fixed-batch one runs in chunks.
    """

    def __init__(self, artifact_dir: Path, manifest: dict[str, Any], threads: int | None = None, *,
                 raw_io: bool = False, xnnpack: bool | None = None) -> None:
        super().__init__(artifact_dir, manifest, threads)
        self.raw_io = raw_io
        details = manifest.get("backend_details", {})
        self.xnnpack = details.get("runtime", {}).get("xnnpack", True) if xnnpack is None else xnnpack
        self._io_in: list[dict[str, Any]] = details.get("inputs", [])
        self._io_out: list[dict[str, Any]] = details.get("outputs", [])
        self.interpreter: Any = None
        #: a model with token inputs (see tflite_tokens): fed by name, padded to its fixed sequence length
        self._tokens = bool(details.get("token_inputs"))
        self._signature: Any = None

    def load(self) -> None:
        from edgekit.backends.tflite_convert import quiet

        path = self.artifact_dir / self.manifest["model_file"]
        with quiet() as cap:  # LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate" on fd 2
            from ai_edge_litert.interpreter import Interpreter, OpResolverType

            resolver = OpResolverType.AUTO if self.xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            try:
                self.interpreter = Interpreter(model_path=str(path), num_threads=self.threads or None,
                                               experimental_op_resolver_type=resolver)
                self.interpreter.allocate_tensors()
            except Exception as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else cap.error_line(type(exc).__name__)
                raise EdgekitError(f"LiteRT cannot load {path}: {reason}") from None
        self._refresh()
        if self._tokens:
            self._signature = self.interpreter.get_signature_runner()
            return
        if len(self._inputs) != 1:
            raise EdgekitError(f"{path} has {len(self._inputs)} inputs; the tflite runner runs one-input models")
        self._resizable = int(self._inputs[0]["shape_signature"][0]) == -1

    def _refresh(self) -> None:
        self._inputs = self.interpreter.get_input_details()
        self._outputs = self.interpreter.get_output_details()

    # -- conversions between the source model's tensors and the .tflite model's ----------------------
    def _perm(self, which: list[dict[str, Any]], k: int) -> list[int] | None:
        return which[k].get("transpose_from_source") if k < len(which) else None

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """Source-layout float input -> the model's input tensor (layout, then int8 with its scale/zero point)."""
        x = np.asarray(x)
        perm = self._perm(self._io_in, 0)
        if perm and x.ndim == len(perm):
            x = x.transpose(perm)
        detail = self._inputs[0]
        dtype = np.dtype(detail["dtype"])
        if np.issubdtype(dtype, np.integer):
            scale, zero = detail["quantization"]
            info = np.iinfo(dtype)
            q = np.round(x.astype(np.float32) / np.float32(scale)) + zero
            return np.clip(q, info.min, info.max).astype(dtype)
        return np.ascontiguousarray(x, dtype=dtype)

    def dequantize_output(self, y: np.ndarray, k: int = 0) -> np.ndarray:
        """The model's k-th output tensor -> float32 in the source model's layout."""
        detail = self._outputs[k]
        if np.issubdtype(np.dtype(detail["dtype"]), np.integer):
            scale, zero = detail["quantization"]
            y = (y.astype(np.float32) - np.float32(zero)) * np.float32(scale)
        perm = self._perm(self._io_out, k)
        if perm and y.ndim == len(perm):
            y = y.transpose(np.argsort(perm))
        return np.ascontiguousarray(y, dtype=np.float32)

    # -- running -------------------------------------------------------------------------------------
    def infer(self, inputs: np.ndarray | dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.interpreter is None:
            raise EdgekitError("the tflite runner is not loaded: call load() or use it as a context manager")
        if self._tokens:
            return self._infer_tokens(inputs)
        if isinstance(inputs, dict):
            names = self.input_names()
            if len(inputs) != 1 or names[0] not in inputs:
                raise EdgekitError(f"this model takes one input named '{names[0]}'; got {', '.join(inputs) or 'none'}")
            inputs = inputs[names[0]]
        x = np.asarray(inputs)
        if self.raw_io:
            want = np.dtype(self._inputs[0]["dtype"])
            if x.dtype != want:
                raise EdgekitError(f"raw_io feeds the model's own input tensor ({want}, "
                                   f"{self._io_in[0].get('layout') if self._io_in else 'its layout'}); got {x.dtype}")
            return self._run(x)
        outs = self._run(self.quantize_input(x))
        return [self.dequantize_output(y, k) for k, y in enumerate(outs)]

    def _infer_tokens(self, inputs: np.ndarray | dict[str, np.ndarray]) -> list[np.ndarray]:
        """Named token inputs of any length up to the fixed one: padded, cast, run one sample at a time (the
        model's batch is 1), outputs dequantized and cut back to the length given."""
        from edgekit.backends.tflite_tokens import pad_feeds

        feeds = self.as_feed(inputs)
        names = [d["name"] for d in self._io_in]
        missing = [n for n in names if n not in feeds]
        if missing:
            raise EdgekitError(f"this model takes inputs {', '.join(names)}; missing {', '.join(missing)} "
                               f"(got {', '.join(feeds) or 'none'})")
        shapes = {d["name"]: d["shape"] for d in self._io_in}
        dtypes = {d["name"]: d["dtype"] for d in self._io_in}
        if self.raw_io:
            fixed, given = {n: np.asarray(feeds[n]) for n in names}, None
            bad = [f"{n} is {fixed[n].dtype}" for n in names if fixed[n].dtype != np.dtype(dtypes[n])]
            if bad:
                raise EdgekitError(f"raw_io feeds the model's own input tensors ({', '.join(dtypes.values())}); "
                                   f"{'; '.join(bad)}")
        else:
            kinds = {d.get("name"): d.get("kind") for d in self.manifest.get("model", {}).get("inputs", [])}
            can_pad = any(kinds.get(n) == "attention_mask" or (n not in kinds and "mask" in n.lower())
                          for n in names)
            fixed, given = pad_feeds(feeds, shapes, dtypes, can_pad)
        n = len(fixed[names[0]])
        parts = []
        for i in range(n):
            out = self._signature(**{k: v[i : i + 1] for k, v in fixed.items()})
            parts.append([out[d["tflite_name"]] for d in self._io_out])
        if not parts:
            return []
        results = []
        for k, d in enumerate(self._io_out):
            y = np.concatenate([p[k] for p in parts])
            if self.raw_io:
                results.append(y)
                continue
            if d.get("scale") and np.issubdtype(y.dtype, np.integer):
                y = (y.astype(np.float32) - np.float32(d.get("zero_point") or 0)) * np.float32(d["scale"])
            axis = d.get("sequence_axis")
            if given is not None and axis is not None and axis < y.ndim:
                y = np.take(y, np.arange(given), axis=axis)
            results.append(np.ascontiguousarray(y, dtype=np.float32))
        return results

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        shape = tuple(int(d) for d in self._inputs[0]["shape"])
        if x.shape != shape and self._resizable and x.shape[1:] == shape[1:]:
            try:
                self.interpreter.resize_tensor_input(self._inputs[0]["index"], list(x.shape))
                self.interpreter.allocate_tensors()
                self._refresh()
                shape = x.shape
            except Exception:  # some graphs pin their batch inside (Reshape): run in chunks instead
                self._resizable = False
        if x.shape == shape:
            return self._invoke(x)
        step = shape[0]
        if x.shape[1:] != shape[1:] or step < 1 or len(x) % step:
            raise EdgekitError(f"input of shape {list(x.shape)} does not fit the .tflite model's input "
                               f"{list(shape)} ({self._io_in[0].get('layout') if self._io_in else ''} layout)")
        parts = [self._invoke(x[i : i + step]) for i in range(0, len(x), step)]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]

    def _invoke(self, x: np.ndarray) -> list[np.ndarray]:
        self.interpreter.set_tensor(self._inputs[0]["index"], np.ascontiguousarray(x))
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(o["index"]) for o in self._outputs]

    def close(self) -> None:
        self.interpreter = None
        self._signature = None

    @property
    def runtime_version(self) -> str:
        import importlib.metadata

        try:
            return importlib.metadata.version("ai-edge-litert")
        except importlib.metadata.PackageNotFoundError:
            return "unknown"
