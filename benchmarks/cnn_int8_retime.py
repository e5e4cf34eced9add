"""Time again the graphs of a finished benchmarks/cnn_int8.py run, interleaved, and update its speed columns.

Why: the accuracy of a cnn_int8.py run does not depend on the machine's load, its timing does; on a shared
2-core machine the timing of a long run is often taken while other jobs run. This re-times the same graph files
(left in the run's temporary WORK folder) when the machine is quiet, and records when and how.

Usage: python benchmarks/cnn_int8_retime.py WORK RESULTS.json [--rounds 15] [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from cnn_int8 import X86, graph_resolution  # this folder is on sys.path when run as a script

#: row name in the results -> graph file in WORK
GRAPHS = {"ort_fp32": "fp32.onnx", "edgekit_int8_plain": "plain.onnx",
          "hand_quantize_static_minmax": "hand-minmax.onnx", "hand_quantize_static_percentile": "hand-percentile.onnx"}


def main() -> int:
    import torch

    from edgekit.data import photos
    from edgekit.quant.cost import compare_latency

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("results", type=Path)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=10, help="fresh-session repeats for the speed-up's spread")
    args = ap.parse_args()
    record = json.loads(args.results.read_text())
    graphs = {}
    for name in record["rows"]:
        path = args.work / GRAPHS.get(name, f"{name}.onnx")
        if path.is_file():
            graphs[name] = path
    if "ort_fp32" not in graphs:
        sys.exit(f"{args.work} has no fp32.onnx: give the WORK folder of the run behind {args.results}")
    crops = photos.windows(16, seed=0)
    x = photos.render(crops, graph_resolution(graphs["ort_fp32"]))
    load = os.getloadavg()[0]
    lat = compare_latency(graphs, X86, x, rounds=args.rounds, iters=10)
    # the spread of the speed-up: each repeat is a fresh set of sessions timed in one interleaved round, so
    # the ratio's range shows how far one reading of it can be trusted on this machine
    repeats = [compare_latency(graphs, X86, x, rounds=1, iters=10) for _ in range(args.repeats)]
    for name, ms in lat.items():
        ratios = sorted(r["ort_fp32"] / r[name] for r in repeats)
        record["rows"][name]["latency_ms"] = ms
        record["rows"][name]["speed_vs_fp32"] = round(lat["ort_fp32"] / ms, 3)
        record["rows"][name]["speed_vs_fp32_repeats"] = {
            "min": round(ratios[0], 3), "median": round(float(np.median(ratios)), 3), "max": round(ratios[-1], 3),
            "repeats": len(ratios)} if ratios else None
        print(f"{name}: {ms:.2f} ms, {lat['ort_fp32'] / ms:.2f}x FP32"
              + (f" (repeats: {ratios[0]:.2f}-{ratios[-1]:.2f}x)" if ratios else ""), flush=True)
    record["retimed"] = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rounds": args.rounds,
                         "repeats": args.repeats, "load_average_1min_before": round(load, 2),
                         "how": "benchmarks/cnn_int8_retime.py: the run's own graph files, interleaved, 1 thread; "
                                "speed_vs_fp32 from all rounds together, speed_vs_fp32_repeats over repeats of "
                                "one round each with fresh sessions"}
    args.results.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
