"""Budgeted int8 vs FP32 on ONNX Runtime (x86-server-cpu) for the test-built depthwise-separable model where
plain min-max PTQ loses accuracy (`testmodels.sensitive_dwsep`).

Exports FP32, plain min-max int8, int8 with cross-layer equalisation, and the budgeted int8
(`--min-agreement 0.98`) through edgekit's pipeline, checks each on the digits_rgb test split (450 samples)
against FP32, and times them with their own Runners (the session settings the manifest ships), batch 1, one
thread, interleaved in round-robin blocks so drift on this shared machine touches all alike. For reference it
also times the int8 graphs with `session.x64quantprecision=0` (ONNX Runtime's u8s8 path; it saturates only on
x86 CPUs without VNNI, which this script reports) and checks that variant's agreement too.
Writes benchmarks/results/int8_fallback.json and .md.

Usage: python benchmarks/int8_fallback.py [--blocks 10] [--iters 20]
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

RESULTS = Path(__file__).resolve().parent / "results"


def _isa() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"))


def _cpu() -> str:
    try:
        return next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()

    from edgekit import testmodels
    from edgekit.artifact import Artifact
    from edgekit.calibrate import CalibrationSet
    from edgekit.export import ExportPipeline, run_batched
    from edgekit.metrics import compare

    model = testmodels.sensitive_dwsep()
    train, test = testmodels.digits_rgb("train"), testmodels.digits_rgb("test")
    calib = CalibrationSet(train.x[:300], None, "digits_rgb train (unlabelled)", {}, len(train.x), "first 300")
    evalset = CalibrationSet(test.x, test.y, "digits_rgb test", {}, len(test.x), "all")
    configs = {"fp32": ("fp32", {}), "int8 plain min-max": ("int8", {}),
               "int8 + equalize": ("int8", {"techniques": ["equalize"]}),
               "int8 budgeted (--min-agreement 0.98)": ("int8", {"min_agreement": 0.98})}
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp, ExportPipeline(model, (1, 3, 32, 32)) as pipeline:
        arts = {}
        for i, (name, (precision, kw)) in enumerate(configs.items()):
            arts[name] = pipeline.export("x86-server-cpu", precision, calib=calib, eval_data=evalset,
                                         out=Path(tmp) / f"a{i}", **kw)
        reference = pipeline.reference(evalset)[0]
        variants = dict(arts)
        for name in ("int8 plain min-max", "int8 + equalize", "int8 budgeted (--min-agreement 0.98)"):
            m = copy.deepcopy(arts[name].manifest)
            m["backend_details"]["session_config"]["session.x64quantprecision"] = "0"
            variants[f"{name}, x64quantprecision=0"] = Artifact(arts[name].path, m)
        runners = {k: a.runner(threads=1) for k, a in variants.items()}
        for k, r in runners.items():
            r.load()
            got = run_batched(r, test.x)[0]
            res = compare(reference, got, test.y)
            rows[k] = {"agreement": res["agreement"], "sqnr_db": res["sqnr_db"],
                       "accuracy_drop": res["accuracy_drop"]}
            for _ in range(10):
                r.infer(test.x[:1])
        samples: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(args.blocks):
            for k, r in runners.items():
                for _ in range(args.iters):
                    t0 = time.perf_counter()
                    r.infer(test.x[:1])
                    samples[k].append((time.perf_counter() - t0) * 1e3)
        fp32 = statistics.median(samples["fp32"])
        for k, v in samples.items():
            rows[k].update({"p50_ms": round(statistics.median(v), 4), "mean_ms": round(statistics.fmean(v), 4),
                            "speedup_vs_fp32_p50": round(fp32 / statistics.median(v), 3)})
        fb = arts["int8 budgeted (--min-agreement 0.98)"].manifest["fallback"]
    record = {"benchmark": "int8_fallback", "model": "testmodels.sensitive_dwsep", "input": [1, 3, 32, 32],
              "threads": 1, "batch": 1, "blocks": args.blocks, "iters": args.iters,
              "host": {"cpu": _cpu(), "isa": _isa(), "python": platform.python_version()},
              "eval": "digits_rgb test, 450 samples", "results": rows,
              "kept_layers": fb["kept_layers"], "fallback_cost": fb["cost"]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "int8_fallback.json").write_text(json.dumps(record, indent=2, default=float) + "\n")
    md = ["# Budgeted int8 vs FP32, ONNX Runtime (x86-server-cpu)", "",
          f"Model `testmodels.sensitive_dwsep` (1x3x32x32). CPU: {_cpu()} ({', '.join(_isa())}); 1 thread, batch 1, "
          f"{args.blocks} interleaved blocks of {args.iters} runs. Agreement/SQNR vs FP32 on 450 test samples.", "",
          "| variant | agreement | SQNR dB | p50 ms | speed-up vs fp32 |", "|---|---:|---:|---:|---:|"]
    for k, r in rows.items():
        sq = "exact" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f}"
        md.append(f"| {k} | {r['agreement']:.4f} | {sq} | {r['p50_ms']:.3f} | {r['speedup_vs_fp32_p50']:.2f}x |")
    md += ["", f"Kept in fp32 by the budget: {', '.join(fb['kept_layers'])} "
               f"({100 * fb['cost']['macs_kept_fraction']:.1f}% of MACs).", ""]
    (RESULTS / "int8_fallback.md").write_text("\n".join(md))
    print("\n".join(md))



if __name__ == "__main__":
    main()
