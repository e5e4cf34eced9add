"""One `edgekit.export` call to several targets against one call per target: wall time, interleaved.

The shared call makes the ONNX export, the calibration ranges and the FP32 reference once; separate calls
make them once each. Runs alternate (shared, separate, shared, ...) so drift on a loaded machine hits both;
the medians and their ratio are printed and written as JSON.

    python benchmarks/multi_target_export.py --rounds 3 --json benchmarks/results/multi_target_export.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

TARGETS = ["x86-server-cpu", "raspberry-pi-5", "jetson-orin-nano"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    import edgekit
    from edgekit.data import testmodels

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = testmodels.small_resdw().eval()
    calib = testmodels.digits_rgb("train").x[: args.samples]

    def shared(out: Path) -> None:
        edgekit.export(model, TARGETS, "int8", calib=calib, out=out)

    def separate(out: Path) -> None:
        for t in TARGETS:
            edgekit.export(model, t, "int8", calib=calib, out=out / t)

    times: dict[str, list[float]] = {"shared": [], "separate": []}
    for r in range(args.rounds):
        for name, fn in (("shared", shared), ("separate", separate)):
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                fn(Path(tmp) / "out")
                times[name].append(time.perf_counter() - start)
            print(f"round {r + 1}: {name} {times[name][-1]:.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"targets": TARGETS, "precision": "int8", "model": "testmodels.small_resdw (1x3x32x32)",
              "calibration_samples": args.samples, "rounds": args.rounds, "seconds": times,
              "median_s": med, "separate_over_shared": med["separate"] / med["shared"]}
    print(f"median: shared {med['shared']:.2f} s, separate {med['separate']:.2f} s, "
          f"ratio {result['separate_over_shared']:.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
