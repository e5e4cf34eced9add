"""`edgekit diagnose`: where INT8 loses accuracy. Per-layer error of the int8 graph against FP32, the layers
ranked by what keeping each alone in float buys at the output, and (with --against) a per-tensor comparison
of two backends' int8 artifacts of the same model."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from edgekit.commands import DATA_HELP, log
from edgekit.errors import EdgekitError


def _is_artifact(path: str) -> bool:
    return Path(path).is_dir() and (Path(path) / "manifest.json").is_file()


def _manifest(path: str) -> dict:
    try:
        return json.loads((Path(path) / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EdgekitError(f"cannot read {path}/manifest.json: {exc}") from None


def _write_json(path: str, data: dict) -> None:
    """Written whole or not at all (a temporary file renamed into place)."""
    dest = Path(path)
    if not dest.parent.is_dir():
        raise EdgekitError(f"--json {path}: folder {dest.parent} does not exist")
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(dest)


def _compare(args: argparse.Namespace) -> int:
    from edgekit.data.calibration import load_data
    from edgekit.quant.diagnose import compare_backends, format_comparison, require_onnx_qdq

    if not _is_artifact(args.against):
        raise EdgekitError(f"--against {args.against} is not an artifact folder (no manifest.json); export one with "
                           "`edgekit export ... --backend tflite --precision int8`")
    a, b = _manifest(args.source), _manifest(args.against)
    if a.get("backend") == "tflite" and b.get("backend") != "tflite":
        args.source, args.against, a, b = args.against, args.source, b, a
    require_onnx_qdq(a, Path(args.source))
    if b.get("backend") != "tflite":
        raise EdgekitError(f"--against {args.against} is a {b.get('backend')} artifact; the cross-backend "
                           "comparison lines up an ONNX Q/DQ artifact with a tflite one")
    if not args.calib:
        raise EdgekitError("the comparison needs input samples: pass --calib DATA")
    data = load_data(args.calib, max_samples=args.samples)
    want = a["model"]["input_shape"][1:]
    if list(data.x.shape[1:]) != list(want):
        raise EdgekitError(f"data '{data.source}' has samples of shape {tuple(data.x.shape[1:])}, but the "
                           f"artifacts take {tuple(want)}")
    log(f"comparing {args.source} ({a['backend']}) with {args.against} (tflite) on {data.count} samples")
    report = compare_backends(Path(args.source), a, Path(args.against), b, data.x, samples=args.samples)
    if args.json:
        _write_json(args.json, report)
    print(format_comparison(report))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise EdgekitError(f"--top must be at least 1 (got {args.top})")
    if args.samples < 2:
        raise EdgekitError(f"--samples must be at least 2 (got {args.samples})")
    if args.json and not Path(args.json).parent.is_dir():
        raise EdgekitError(f"--json {args.json}: folder {Path(args.json).parent} does not exist")
    if args.against:
        if not _is_artifact(args.source):
            raise EdgekitError(f"--against compares two artifacts; {args.source} is not an artifact folder "
                               "(no manifest.json)")
        return _compare(args)
    if _is_artifact(args.source):
        raise EdgekitError(f"{args.source} is an artifact: diagnose re-quantizes the FP32 model, so pass the model "
                           f"it was exported from ({_manifest(args.source)['model']['source']}), or compare it "
                           "with another backend's artifact with --against ARTIFACT")
    from edgekit.export import ExportPipeline
    from edgekit.models.source import parse_input_shape
    from edgekit.quant.diagnose import format_report

    shape = parse_input_shape(args.input_shape) if args.input_shape else None
    with ExportPipeline(args.source, shape, log=log) as pipeline:
        report = pipeline.diagnose(args.target, args.calib, backend=args.backend, calib_method=args.calib_method,
                                   calib_samples=args.calib_samples, samples=args.samples, verify=args.verify)
    report["model"] = args.source
    if args.json:
        _write_json(args.json, report)
    print(format_report(report, args.top))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diagnose", help="where int8 loses accuracy: per-layer error, ranked layers, cross-backend comparison",
        description="Quantize MODEL to int8 for the target, compare every weighted layer's output with FP32 "
                    "(SQNR, cosine), and rank the layers by the output-SQNR gain of keeping each alone in "
                    "higher precision. With two artifacts (SOURCE and --against), line up their corresponding "
                    "tensors (ONNX Runtime int8 vs TFLite int8) and show where they diverge.",
        epilog=f"{DATA_HELP}. Examples: edgekit diagnose model.onnx --calib calib.npz; edgekit diagnose "
               "art-ort-int8 --against art-tflite-int8 --calib calib.npz",
    )
    p.add_argument("source", metavar="MODEL_OR_ARTIFACT")
    p.add_argument("--calib", metavar="DATA", help="calibration data (a quarter is held out for the measurements)")
    p.add_argument("--against", metavar="ARTIFACT", help="a second artifact (tflite int8) to compare SOURCE with")
    p.add_argument("--target", "-t", default="x86-server-cpu", help="target whose int8 format is diagnosed "
                   "(default x86-server-cpu; nvidia-t4-server for TensorRT's Q/DQ)")
    p.add_argument("--backend", "-b", help="one of the target's other backends")
    p.add_argument("--calib-method", default="minmax", metavar="M", help="minmax (default), entropy, percentile")
    p.add_argument("--calib-samples", type=int, default=300, metavar="N", help="at most N calibration samples")
    p.add_argument("--input-shape", metavar="NxCxHxW", help="model input shape, e.g. 1x3x224x224")
    p.add_argument("--samples", type=int, default=64, metavar="N",
                   help="held-out samples the errors are measured on (default 64)")
    p.add_argument("--verify", type=int, default=12, metavar="N",
                   help="measure the fallback gain of the N layers with the largest per-layer error (default 12)")
    p.add_argument("--top", type=int, default=10, metavar="N", help="rows of the table (default 10)")
    p.add_argument("--json", metavar="FILE", help="also write the full report as JSON")
    p.set_defaults(func=run)
