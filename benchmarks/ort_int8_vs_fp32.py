"""ONNX Runtime int8 vs fp32 on x86-server-cpu, for test-built models of >= 1 M parameters.

Exports two models through edgekit's own pipeline at fp32 and int8 — `testmodels.plain_cnn` (3x3 convs,
GEMM-bound) and `testmodels.large_resdw` (depthwise-separable with residuals) — and times the artifacts
with their own Runners, i.e. with the session settings a deployment gets from the manifest, interleaved in
round-robin blocks so machine drift touches all alike. The shipped int8 artifact's runner decides
`session.x64quantprecision` for the CPU it runs on (1 on x86 without VNNI/AMX, where the u8s8 kernels
saturate; unset elsewhere); for reference the int8 graph is also timed with the other setting forced, with
its top-1 agreement with fp32 on 300 test images, so a reader sees both what the rule buys and what it
avoids. Writes benchmarks/results/ort_int8_vs_fp32.json and .md. Compare
ratios, not absolute numbers: the machines here are shared.

Usage: python benchmarks/ort_int8_vs_fp32.py [--size 64] [--blocks 15] [--iters 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from edgekit.bench.environment import cpu_model, int8_isa

RESULTS = Path(__file__).resolve().parent / "results"


def _time_block(runner, x: np.ndarray, iters: int) -> list[float]:
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        runner.infer(x)
        out.append((time.perf_counter() - t0) * 1e3)
    return out



def measure(name: str, model, size: int, blocks: int, iters: int, threads: int) -> dict:
    from edgekit.artifact import Artifact
    from edgekit.backends.onnxruntime import int8_saturates_here
    from edgekit.data import testmodels, zoo
    from edgekit.export import ExportPipeline
    from edgekit.data.calibration import CalibrationSet

    data = testmodels.digits_rgb("train", size=size)
    calib = CalibrationSet(data.x[:128], data.y[:128], f"digits_rgb {size}px (train)", {}, len(data.x), "first 128")
    x = data.x[:1]
    shape = (1, 3, size, size)
    with tempfile.TemporaryDirectory() as tmp, ExportPipeline(model, shape) as pipeline:
        arts = {p: pipeline.export("x86-server-cpu", p, calib=calib, out=Path(tmp) / p) for p in ("fp32", "int8")}
        shipped = "1" if int8_saturates_here() else "unset"
        other = "0" if shipped == "1" else "1"
        forced = copy.deepcopy(arts["int8"].manifest)
        forced["backend_details"].setdefault("session_config", {})["session.x64quantprecision"] = other
        ref_name = f"int8, x64quantprecision={other} forced (reference only)"
        variants = {"fp32": arts["fp32"], f"int8 (as shipped: x64quantprecision {shipped} on this CPU)": arts["int8"],
                    ref_name: Artifact(arts["int8"].path, forced)}
        runners = {k: a.runner(threads=threads) for k, a in variants.items()}
        for r in runners.values():
            r.load()
            _time_block(r, x, 10)  # warm-up
        samples: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(blocks):
            for k, r in runners.items():
                samples[k] += _time_block(r, x, iters)
        rows = {}
        for k, a in variants.items():
            s = sorted(samples[k])
            rows[k] = {"p50_ms": statistics.median(s), "mean_ms": statistics.fmean(s),
                       "p90_ms": s[int(0.9 * (len(s) - 1))], "min_ms": s[0], "runs": len(s),
                       "model_bytes": a.model_path.stat().st_size,
                       "agreement_vs_fp32": a.manifest["verification"]["agreement"]}
        test = testmodels.digits_rgb("test", size=size).x[:300]
        ref = np.concatenate(_outputs(runners["fp32"], test)).argmax(1)
        for k, r in runners.items():
            rows[k]["agreement_vs_fp32"] = float((np.concatenate(_outputs(r, test)).argmax(1) == ref).mean())
        int8_key = next(k for k in rows if k.startswith("int8 (as shipped"))
    return {"model": name, "params": zoo.count_params(model), "input_shape": list(shape), "results": rows,
            "speedup_int8_over_fp32_p50": rows["fp32"]["p50_ms"] / rows[int8_key]["p50_ms"],
            "speedup_reference_over_fp32_p50": rows["fp32"]["p50_ms"] / rows[ref_name]["p50_ms"]}


def _outputs(runner, x: np.ndarray) -> list[np.ndarray]:
    return [runner.infer(x[i : i + 1])[0] for i in range(len(x))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="input height and width (default 64)")
    ap.add_argument("--blocks", type=int, default=15, help="round-robin blocks (default 15)")
    ap.add_argument("--iters", type=int, default=20, help="timed runs per block (default 20)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    args = ap.parse_args()

    import torch

    from edgekit.data import testmodels

    models = {"testmodels.plain_cnn": testmodels.plain_cnn, "testmodels.large_resdw": testmodels.large_resdw}
    runs = []
    for name, factory in models.items():
        torch.manual_seed(0)
        runs.append(measure(name, factory().eval(), args.size, args.blocks, args.iters, args.threads))
    record = {"benchmark": "ort_int8_vs_fp32", "target": "x86-server-cpu", "threads": args.threads,
              "host": {"machine": platform.machine(), "cpu": cpu_model(), "isa": int8_isa(),
                       "python": platform.python_version()},
              "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ort_int8_vs_fp32.json").write_text(json.dumps(record, indent=2) + "\n")
    md = ["# ONNX Runtime int8 vs fp32 (x86-server-cpu)", "",
          f"CPU: {cpu_model()} ({', '.join(int8_isa()) or 'no AVX2'}); {args.threads} thread(s), batch 1, "
          f"{args.blocks} interleaved blocks of {args.iters} runs per variant.", ""]
    for run in runs:
        md += [f"## {run['model']}: {run['params']:,} parameters, input {'x'.join(map(str, run['input_shape']))}",
               "", "| variant | p50 ms | mean ms | p90 ms | size KiB | top-1 agreement with fp32 |",
               "|---|---:|---:|---:|---:|---:|"]
        for k, r in run["results"].items():
            md.append(f"| {k} | {r['p50_ms']:.3f} | {r['mean_ms']:.3f} | {r['p90_ms']:.3f} | "
                      f"{r['model_bytes'] / 1024:.0f} | {r['agreement_vs_fp32']:.4f} |")
        md += ["", f"int8 (as shipped) speed-up over fp32, p50: **{run['speedup_int8_over_fp32_p50']:.2f}x** "
               f"(reference setting: {run['speedup_reference_over_fp32_p50']:.2f}x)", ""]
    (RESULTS / "ort_int8_vs_fp32.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
