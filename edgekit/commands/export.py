"""`edgekit export`: one model to one target and precision, written atomically as an artifact folder."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from edgekit.commands import DATA_HELP, log
from edgekit.errors import EdgekitError


def parse_options(pairs: Sequence[str], flag: str = "--calib-option") -> dict[str, object]:
    """KEY=VALUE pairs; values are read as JSON when they parse (numbers, booleans), else kept as text."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise EdgekitError(f"malformed {flag} '{pair}': expected KEY=VALUE, e.g. percentile=99.99")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def print_artifact(art) -> None:
    m = art.manifest
    v = m["verification"]
    size = sum(f["bytes"] for f in m["files"].values())
    print(f"artifact   {art.path}")
    print(f"target     {m['target']} ({m['backend']}, {m['precision']})")
    print(f"files      {', '.join(m['files'])} ({size / 1024:.1f} KiB)")
    sq = "exact" if v.get("sqnr_db") is None else f"{v['sqnr_db']:.1f} dB"
    print(f"agreement  {v['agreement']:.4f} top-1 vs FP32 on {v['samples']} samples of {v['data']}; SQNR {sq}")
    if "accuracy" in v:
        print(f"accuracy   {v['accuracy']:.4f} (FP32 {v['reference_accuracy']:.4f}, "
              f"drop {100 * v['accuracy_drop']:.2f} points)")


def run(args: argparse.Namespace) -> int:
    from edgekit.export import ExportPipeline
    from edgekit.models import parse_input_shape
    from edgekit.targets import load_target

    target = load_target(args.target)  # fail fast on a bad target before loading the model
    if args.backend:
        target = target.with_backend(args.backend)
    target.check_precision(args.precision)
    exporter_options = parse_options(args.backend_option, "--backend-option")
    if args.require_engine:
        exporter_options["require_engine"] = True
    if args.allow_float_fallback:
        exporter_options["allow_float_fallback"] = True
    shape = parse_input_shape(args.input_shape) if args.input_shape else None
    if args.calib_samples < 1:
        raise EdgekitError(f"--calib-samples must be at least 1 (got {args.calib_samples})")
    with ExportPipeline(args.model, shape, log=log) as pipeline:
        art = pipeline.export(
            target, args.precision, calib=args.calib, calib_method=args.calib_method,
            calib_options=parse_options(args.calib_option), calib_samples=args.calib_samples,
            eval_data=args.eval, out=args.out, force=args.force, exporter_options=exporter_options,
        )
    print_artifact(art)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a model for a target (ONNX, calibration, quantization, accuracy check)",
        description="Export MODEL for a target: torch -> ONNX (checked against torch), calibration ranges "
                    "(for int8, computed once and saved with the artifact), the backend's files, and a check "
                    "of the result against FP32, all written atomically to a folder with manifest.json.",
        epilog=f"MODEL is a .onnx file, a .pt2 file (torch.export.save), package.module:factory (needs "
               f"--input-shape), or zoo:digits-student / zoo:digits-teacher. {DATA_HELP}. Example: "
               f"edgekit export zoo:digits-student --target x86-server-cpu --precision int8 --calib zoo:digits",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--target", "-t", required=True, help="target name (see `edgekit targets`) or a .toml file")
    p.add_argument("--precision", "-p", help="fp32, int8, dynamic-int8, ... (default: the target's default)")
    p.add_argument("--backend", "-b", help="one of the target's other backends (`edgekit targets` lists them), "
                   "e.g. tflite on raspberry-pi-5; default: the target's first backend")
    p.add_argument("--calib", metavar="DATA", help="calibration data for int8 (default for zoo models: zoo:digits)")
    p.add_argument("--calib-method", default="minmax", metavar="M",
                   help="minmax (default), entropy, percentile, or a recipe name/.toml from calibration/")
    p.add_argument("--calib-option", action="append", default=[], metavar="KEY=VALUE",
                   help="calibration option, e.g. percentile=99.99 or num_bins=4096 (repeatable)")
    p.add_argument("--calib-samples", type=int, default=300, metavar="N",
                   help="use at most N calibration samples, a seeded random subset (default 300)")
    p.add_argument("--eval", metavar="DATA", help="data the artifact is checked on against FP32 (default: the "
                   "held-out split for zoo data, else the calibration data)")
    p.add_argument("--input-shape", metavar="NxCxHxW", help="model input shape, e.g. 1x3x224x224")
    p.add_argument("--out", "-o", help="artifact folder (default: ./MODEL-TARGET-PRECISION)")
    p.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option for the backend's exporter (repeatable); an unknown one lists those accepted")
    p.add_argument("--require-engine", action="store_true",
                   help="fail unless the device engine itself is built here (TensorRT .engine, Ascend .om)")
    p.add_argument("--allow-float-fallback", action="store_true",
                   help="int8 (tflite): keep ops that have no int8 kernel in float instead of failing; the manifest "
                        "lists them")
    p.add_argument("--force", action="store_true", help="replace the output folder if it exists")
    p.set_defaults(func=run)
