"""Where the int8 error of EfficientNet-Lite1 sits among its activations: the output SQNR gained by removing the
rounding of each activation quantizer of a finished int8 graph, alone (its Q/DQ pair replaced by a Clip to the
range the pair represents, so the ReLU6 the quantizer stands for stays).

Why: a 16-bit-activation rung only pays when a few tensors carry most of the activation error. If every tensor
carries a little, no per-tensor fallback can buy decibels, and the remedy has to be global (the weights, or all
activations at once).

Run on the graph of a finished benchmarks/cnn_int8.py run (its WORK folder), with the selection crops of that
run (windows after the first --calib, --select of them); one thread.

Usage: python benchmarks/cnn_int8_activation_sensitivity.py WORK [--graph edgekit_int8_adaround+qat.onnx]
       [--calib 64] [--select 100]
Writes benchmarks/results/cnn_int8_activation_sensitivity.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from cnn_int8 import graph_resolution  # this folder is on sys.path when run as a script

RESULTS = Path(__file__).resolve().parent / "results"


def without_rounding(model, name: str):
    """A copy of `model` where the QuantizeLinear `name` and its DequantizeLinear readers become one Clip to the
    range the pair represents: the tensor keeps the quantizer's saturation (which stands for a ReLU6 the
    quantizer absorbed) and loses only its rounding. None when a DequantizeLinear writes a graph output."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    q = next(n for n in out.graph.node if n.name == name)
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    scale = float(inits[q.input[1]])
    zp = inits[q.input[2]] if len(q.input) > 2 and q.input[2] else np.zeros((), np.uint8)
    info = np.iinfo(zp.dtype)
    lo, hi = (info.min - int(zp)) * scale, (info.max - int(zp)) * scale
    outputs = {o.name for o in out.graph.output}
    clipped = f"{name}_clip_output"
    for dq in [n for n in out.graph.node if q.output[0] in n.input and n.op_type == "DequantizeLinear"]:
        if dq.output[0] in outputs:
            return None
        for node in out.graph.node:
            for i, tensor in enumerate(node.input):
                if tensor == dq.output[0]:
                    node.input[i] = clipped
        out.graph.node.remove(dq)
    out.graph.initializer.extend([numpy_helper.from_array(np.array(lo, np.float32), f"{name}_clip_lo"),
                                  numpy_helper.from_array(np.array(hi, np.float32), f"{name}_clip_hi")])
    clip = onnx.helper.make_node("Clip", [q.input[0], f"{name}_clip_lo", f"{name}_clip_hi"], [clipped],
                                 name=f"{name}_clip")
    index = list(out.graph.node).index(q)
    out.graph.node.remove(q)
    out.graph.node.insert(index, clip)
    return out


def main() -> int:
    import onnx

    from edgekit.common.metrics import sqnr_db, top1_agreement
    from edgekit.data import photos
    from edgekit.graph.onnx_export import ort_session

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--graph", default="edgekit_int8_adaround+qat.onnx")
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--select", type=int, default=100)
    ap.add_argument("--out", type=Path, default=RESULTS / "cnn_int8_activation_sensitivity.json")
    args = ap.parse_args()
    t0 = time.time()
    crops = photos.windows(args.calib + args.select, seed=0)
    size = graph_resolution(args.work / "fp32.onnx")
    x = photos.render(crops[args.calib :], size)

    tmp = Path(tempfile.mkdtemp(prefix="cnn-int8-sens-"))

    def run(model_or_path) -> np.ndarray:
        path = model_or_path
        if isinstance(model_or_path, onnx.ModelProto):
            path = tmp / "variant.onnx"
            onnx.save(model_or_path, str(path))
        sess = ort_session(path, None, 1)
        name = sess.get_inputs()[0].name
        return np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])

    ref = run(args.work / "fp32.onnx")
    base = onnx.load(str(args.work / args.graph))
    start = run(base)
    base_db = sqnr_db(ref, start)
    inits = {t.name for t in base.graph.initializer}
    inputs = {i.name for i in base.graph.input}
    names = [n.name for n in base.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits
             and n.input[0] not in inputs]  # the graph input's quantizer feeds an int8-only stem
    rows = []
    for name in names:
        model = without_rounding(base, name)
        if model is None:
            continue
        got = run(model)
        rows.append({"quantizer": name, "sqnr_gain_db": round(sqnr_db(ref, got) - base_db, 3)})
    shutil.rmtree(tmp, ignore_errors=True)
    rows.sort(key=lambda r: -r["sqnr_gain_db"])
    gains = np.array([r["sqnr_gain_db"] for r in rows])
    record = {
        "model": f"EfficientNet-Lite (ImageNet weights) of the run in {args.work.name}, {size}x{size}",
        "graph": args.graph, "crops": f"{len(x)} selection crops (windows {args.calib}-{args.calib + len(x) - 1})",
        "int8_graph": {"sqnr_db": round(base_db, 2), "agreement": round(top1_agreement(ref, start), 4)},
        "activation_quantizers": len(rows),
        "gain_db": {"max": float(gains.max()), "median": float(np.median(gains)), "min": float(gains.min()),
                    "sum_of_gains": round(float(gains.sum()), 2)},
        "top10": rows[:10], "all": rows, "seconds": round(time.time() - t0),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("int8_graph", "activation_quantizers", "gain_db")}))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
