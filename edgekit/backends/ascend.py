"""Huawei Ascend backend, a stub by design: the ONNX that ATC compiles, the `atc` command line, and an AIPP
config; the `.om` itself only where Huawei's `atc` (CANN toolkit) is on PATH.

ATC does the fp16 / mixed conversion itself (`--precision_mode`), so the artifact's ONNX stays float32 at an
opset ATC accepts (the target's range), and the check here runs that ONNX with ONNX Runtime: it proves the
graph given to ATC is right, not ATC's fp16 numerics, which only the device shows.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from edgekit.backends.base import Exporter, ExportRequest, ExportResult
from edgekit.backends.onnxruntime import OrtRunner
from edgekit.errors import EdgekitError
from edgekit.graph.onnx_export import describe

MODEL_FILE = "model.onnx"
OM_FILE = "model.om"
AIPP_FILE = "aipp.cfg"
#: edgekit precision -> atc --precision_mode
PRECISION_MODES = {"fp16": "force_fp16", "mixed": "allow_mix_precision", "fp32": "must_keep_origin_dtype"}
#: AIPP input formats that need no colour-space conversion, by the channel count they feed
AIPP_FORMATS = {"YUV400_U8": 1, "RGB888_U8": 3, "XRGB8888_U8": 3}
_GET_ATC = ("install Huawei's CANN toolkit (Ascend-cann-toolkit) and run `source "
            "/usr/local/Ascend/ascend-toolkit/set_env.sh` so that atc is on PATH")


def atc_path() -> str | None:
    return shutil.which("atc")


def compile_support() -> tuple[bool, str]:
    """(True, why) where atc can compile a .om here; the .om itself runs only on an Ascend device."""
    if atc_path() is None:
        return False, "atc (CANN toolkit) is not on PATH"
    return True, "atc compiles the .om here (it runs only on an Ascend device)"


def to_opset(model, lo: int, hi: int) -> tuple[Any, int | None]:
    """`model` converted into the opset range atc accepts; (model, old opset or None)."""
    from edgekit.graph.onnx_export import convert_opset

    return convert_opset(model, lo, hi, accepted_by="atc",
                         hint="; export the model at an opset in that range or widen the target's opset range")


def _per_channel(values: Any, channels: int, key: str) -> list[float]:
    if isinstance(values, int | float):
        values = [values]
    if not isinstance(values, list | tuple) or not values or not all(isinstance(v, int | float) for v in values):
        raise EdgekitError(f"backend option '{key}' must be a number or a list of numbers (got {values!r})")
    if len(values) == 1:
        values = list(values) * channels
    if len(values) != channels:
        raise EdgekitError(f"backend option '{key}' has {len(values)} values but the model input has "
                           f"{channels} channels")
    return [float(v) for v in values]


def aipp_config(shape: list[int], layout: str, opts: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A static AIPP config (atc --insert_op_conf) for a uint8 image input of the model's size.

    AIPP computes out = (pixel - mean_chn - min_chn) * var_reci_chn; the model's normalisation
    x = (pixel - mean) / std is written with the integer part of the mean in mean_chn, its fraction in
    min_chn, and 1/std in var_reci_chn.
    """
    if len(shape) != 4:
        raise EdgekitError(f"AIPP needs a 4-D image input; this model's input has shape {shape} (set aipp = false)")
    c, h, w = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])
    fmt = opts.get("aipp_input_format", "auto")
    if fmt == "auto":
        fmt = {1: "YUV400_U8", 3: "RGB888_U8"}.get(c)
        if fmt is None:
            raise EdgekitError(f"AIPP takes 1- or 3-channel images; this model's input has {c} channels "
                               "(set aipp = false)")
    if fmt not in AIPP_FORMATS:
        raise EdgekitError(f"backend option 'aipp_input_format' must be auto or one of {', '.join(AIPP_FORMATS)} "
                           f"(got {fmt!r}); formats that need colour-space conversion are not generated")
    if AIPP_FORMATS[fmt] != c:
        raise EdgekitError(f"AIPP input format {fmt} gives {AIPP_FORMATS[fmt]} channels but the model takes {c}")
    mean = _per_channel(opts.get("aipp_mean", 0.0), c, "aipp_mean")
    std = _per_channel(opts.get("aipp_std", 1.0), c, "aipp_std")
    if any(s <= 0 for s in std):
        raise EdgekitError(f"backend option 'aipp_std' must be positive (got {std})")
    lines = ["aipp_op {", "    aipp_mode : static", "    related_input_rank : 0", f"    input_format : {fmt}",
             f"    src_image_size_w : {w}", f"    src_image_size_h : {h}", "    csc_switch : false",
             "    rbuv_swap_switch : false"]
    for i, (m, s) in enumerate(zip(mean, std, strict=True)):
        whole = int(m // 1)
        lines += [f"    mean_chn_{i} : {whole}", f"    min_chn_{i} : {m - whole:.6g}",
                  f"    var_reci_chn_{i} : {1.0 / s:.9g}"]
    lines.append("}")
    return "\n".join(lines) + "\n", {"input_format": fmt, "image_size": [h, w], "mean": mean, "std": std}


#: how each precision is checked here: fp16 (atc's force_fp16) is emulated by running the float16 cast of the
#: graph; mixed (allow_mix_precision: atc picks per op) cannot be, and the manifest says so
VERIFICATION: dict[str, dict[str, str]] = {
    "fp32": {"verification_runner": "onnxruntime (CPU) on model.onnx, the graph given to atc (float32)",
             "verified_precision": "fp32"},
    "fp16": {"verification_runner": "onnxruntime (CPU) on the float16 cast of model.onnx (atc's force_fp16 "
                                    "emulated: float tensors and weights rounded to float16)",
             "verified_precision": "fp16"},
    "mixed": {"verification_runner": "onnxruntime (CPU) on model.onnx in float32",
              "verified_precision": "fp32",
              "not_verified": "mixed not verified: atc's allow_mix_precision chooses on the device which ops run "
                              "in float16, which cannot be reproduced here; the figures are the float32 graph's"},
}


def aipp_normalisation(user: dict[str, Any], profile: dict[str, Any], calib: Any) -> tuple[dict[str, Any] | None, str]:
    """The AIPP mean/std in uint8 pixel units and where they came from, or (None, why none).

    Only what the user said (backend options, their target file) or what the calibration recipe records as
    its normalisation; edgekit never assumes one, since a wrong mean/std silently corrupts every input.
    """
    for options, origin in ((user, "backend options"), (profile, "the target profile's backend options")):
        if "aipp_mean" in options and "aipp_std" in options:
            return {"aipp_mean": options["aipp_mean"], "aipp_std": options["aipp_std"]}, origin
    norm = (getattr(calib, "preprocessing", None) or {}).get("normalize")
    if isinstance(norm, dict) and isinstance(norm.get("mean"), int | float | list) and norm.get("std"):
        def pixels(v: Any) -> Any:
            return [255.0 * float(x) for x in v] if isinstance(v, list) else 255.0 * float(v)

        return ({"aipp_mean": pixels(norm["mean"]), "aipp_std": pixels(norm["std"])},
                f"the calibration recipe of {calib.source} (normalize mean {norm['mean']}, std {norm['std']} on "
                "0..1, times 255)")
    return None, ("no normalisation known: neither backend options aipp_mean/aipp_std nor a calibration recipe "
                  "that records one; pass --backend-option aipp_mean=[...] --backend-option aipp_std=[...] (uint8 "
                  "pixel units) to get one")


class AscendExporter(Exporter):
    """fp32 / fp16 / mixed for ATC: the ONNX, the atc command, the AIPP config; the .om where atc exists.

    Options (constructor or the target's [backend_options]; the constructor wins): soc_version, batch_size
    (the static batch atc compiles), aipp, aipp_input_format, aipp_mean, aipp_std, require_engine.
    """

    backend = "ascend"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.options.get("require_engine") and atc_path() is None:
            raise EdgekitError(f"require_engine (--require-engine): Huawei's atc compiler (CANN toolkit) is not on "
                               f"PATH, so no .om can be built here; {_GET_ATC}, or drop require_engine "
                               "(--require-engine) to get the ONNX and the atc command")

    def export(self, request: ExportRequest) -> ExportResult:
        import onnx

        opts = {**request.target.backend_options, **self.options}
        precision = request.precision
        if precision not in PRECISION_MODES:
            raise EdgekitError(f"backend ascend has no precision '{precision}'; it offers {', '.join(PRECISION_MODES)}")
        if request.onnx.quantization is not None:
            raise EdgekitError(f"the ascend backend takes a float model; this one carries Q/DQ quantization "
                               f"({request.onnx.quantization}): export the float model (atc's int8 path is AMCT)")
        soc = opts.get("soc_version")
        if not isinstance(soc, str) or not soc:
            raise EdgekitError(f"target '{request.target.name}' sets no backend option 'soc_version' (e.g. "
                               "Ascend310P3, as `npu-smi info` shows on the device)")
        batch = opts.get("batch_size", 1)
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise EdgekitError(f"backend option 'batch_size' must be a positive integer (got {batch!r})")

        model, converted_from = to_opset(onnx.load(str(request.onnx.path)), request.target.opset_min,
                                         request.target.opset_max)
        out = request.out_dir / MODEL_FILE
        onnx.save(model, str(out))
        inputs, outputs, opset = describe(model, request.target.input_layout)
        shapes = []
        # atc compiles static shapes: a named axis beyond the batch (a transformer's sequence) takes the size
        # the model was exported for
        examples = {s.name: s.example for s in (request.source.inputs if request.source is not None else [])}
        for spec in inputs:
            dims = [batch if i == 0 and not isinstance(d, int)
                    else examples.get(spec.name, {}).get(str(d), d) if isinstance(d, str) else d
                    for i, d in enumerate(spec.shape)]
            if not all(isinstance(d, int) for d in dims):
                raise EdgekitError(f"atc needs static input shapes; input '{spec.name}' has dynamic dims {spec.shape} "
                                   "beyond the batch")
            shapes.append((spec.name, dims))
        args = [f"--model={MODEL_FILE}", "--framework=5", f"--output={Path(OM_FILE).stem}", f"--soc_version={soc}",
                "--input_shape=" + ";".join(f"{n}:{','.join(map(str, d))}" for n, d in shapes),
                f"--input_format={request.target.input_layout if all(len(d) == 4 for _, d in shapes) else 'ND'}",
                f"--precision_mode={PRECISION_MODES[precision]}"]
        details: dict[str, Any] = {"precision": precision, "precision_mode": PRECISION_MODES[precision],
                                   "soc_version": soc, "opset": opset, "onnx": MODEL_FILE,
                                   "input_shape": {n: d for n, d in shapes}}
        if converted_from is not None:
            details["opset_converted_from"] = converted_from
        image_input = len(inputs) == 1 and len(shapes[0][1]) == 4 and inputs[0].dtype.startswith("float")
        if opts.get("aipp", False) and not image_input and "aipp" not in self.options:
            # the target profile's AIPP default is for cameras; a text model's token ids skip it
            details["aipp"] = {"skipped": "the model has no 4-D float image input (AIPP preprocesses images)"}
        elif opts.get("aipp", False):
            norm, origin = aipp_normalisation(self.options, request.target.backend_options,
                                               request.calibration)
            if norm is None:
                details["aipp"] = {"config": None, "note": f"no aipp.cfg written: {origin}"}
            else:
                text, aipp = aipp_config(shapes[0][1], request.target.input_layout, {**opts, **norm})
                (request.out_dir / AIPP_FILE).write_text(text)
                args.append(f"--insert_op_conf={AIPP_FILE}")
                details["aipp"] = {"config": AIPP_FILE, **aipp, "from": origin, "channel_order": "as the model's "
                                   "input (rbuv_swap_switch false: no R/B swap)",
                                   "note": f"the .om takes {aipp['input_format']} uint8 images; AIPP normalises "
                                           "them on the NPU, so the host feeds raw pixels, not the float input the "
                                           "ONNX takes"}
        if precision == "fp32":
            details["precision_note"] = ("must_keep_origin_dtype keeps float32, which fails on Ascend 310-class "
                                         "chips for ops (e.g. Conv, MatMul) whose cube unit has no float32 kernel; "
                                         "use fp16 or mixed there")
        details["atc_command"] = shlex.join(["atc", *args])
        details.update(self._compile(request.out_dir, args))
        details.update(VERIFICATION[precision])
        return ExportResult(MODEL_FILE, inputs, outputs, details)

    def _compile(self, out_dir: Path, args: list[str]) -> dict[str, Any]:
        """Run atc in a scratch folder (it writes fusion_result.json and kernel_meta/ into its cwd)."""
        atc = atc_path()
        if atc is None:
            return {"compiled": "false (atc not found)"}
        with tempfile.TemporaryDirectory(prefix="edgekit-atc-") as tmp:  # pragma: no cover - needs atc
            local = [a.replace(f"={MODEL_FILE}", f"={out_dir.resolve() / MODEL_FILE}")
                     .replace(f"={AIPP_FILE}", f"={out_dir.resolve() / AIPP_FILE}")
                     .replace(f"--output={Path(OM_FILE).stem}", f"--output={Path(tmp) / Path(OM_FILE).stem}")
                     for a in args]
            proc = subprocess.run([atc, *local], cwd=tmp, capture_output=True, text=True)
            made = sorted(Path(tmp).glob("*.om"))
            if proc.returncode != 0 or not made:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                raise EdgekitError(f"atc failed (exit {proc.returncode}): {tail[0]}")
            shutil.move(str(made[0]), out_dir / OM_FILE)
        return {"compiled": "true", "om_file": OM_FILE, "atc": atc}


class AscendOnnxRunner(OrtRunner):
    """Runs the artifact's ONNX (the graph given to atc) with ONNX Runtime on the CPU; the .om runs only on
    an Ascend device, through CANN's ACL runtime. An fp16 artifact runs the float16 cast of that ONNX (what
    atc's force_fp16 computes, up to its kernels), so its check measures fp16 numerics, not float32's."""

    executes = "onnxruntime-cpu"

    def model_input(self) -> str | bytes:
        if self.manifest.get("precision") != "fp16":
            return super().model_input()
        import onnx

        from edgekit.graph.qdq import convert_to_fp16

        model = onnx.load(str(self.artifact_dir / self.manifest["model_file"]))
        converted, _ = convert_to_fp16(model, keep_io_fp32=True, fp32_ops=[])
        return converted.SerializeToString()

    @property
    def runtime_version(self) -> str:
        import onnxruntime as ort

        how = "its float16 cast" if self.manifest.get("precision") == "fp16" else "float32"
        return f"onnxruntime {ort.__version__} on CPU (the ONNX given to atc, {how}; .om not run)"
