"""Budgeted int8 vs FP32 on ONNX Runtime (x86-server-cpu) for the test-built depthwise-separable model where
plain min-max PTQ loses accuracy (`testmodels.sensitive_dwsep`, the same model and size the tests use:
~0.29 M parameters, input 1x3x32x32).

Exports FP32, plain min-max int8, int8 with each technique alone (--equalize, --range-choice,
--bias-correction), and the budgeted int8 (`--min-agreement 0.98`, which tries equalisation first and keeps
layers in float only if the budget still fails) through edgekit's pipeline, checks each on the digits_rgb test
split (450 samples) against FP32, and times them with their own Runners, i.e. with the session settings a
deployment that follows the manifest gets on this CPU (`session.x64quantprecision` is set only on x86 CPUs
without VNNI/AMX; the script records what this CPU gets). Batch 1, one thread, interleaved in round-robin blocks
so drift on this shared machine touches all alike: compare ratios, not absolute times.
For reference it also exports the budget with layer fallback only (the all-int8 first step switched off,
`--no-budget-equalize`), to show what keeping layers in float costs.
Writes benchmarks/results/int8_fallback.json and .md.

Usage: python benchmarks/int8_fallback.py [--blocks 10] [--iters 20]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

from edgekit.bench.environment import cpu_model, int8_isa

RESULTS = Path(__file__).resolve().parent / "results"




def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()

    from edgekit.backends.onnxruntime import effective_session_config
    from edgekit.data import testmodels
    from edgekit.export import ExportPipeline, run_batched
    from edgekit.common.metrics import compare
    from edgekit.data.calibration import CalibrationSet

    model = testmodels.sensitive_dwsep()
    params = sum(p.numel() for p in model.parameters())
    train, test = testmodels.digits_rgb("train"), testmodels.digits_rgb("test")
    calib = CalibrationSet(train.x[:300], None, "digits_rgb train (unlabelled)", {}, len(train.x), "first 300")
    evalset = CalibrationSet(test.x, test.y, "digits_rgb test", {}, len(test.x), "all")
    budgeted = "int8 budgeted (--min-agreement 0.98)"
    layers_only = "int8 budgeted, layer fallback only (reference)"
    configs = {"fp32": ("fp32", {}), "int8 plain min-max": ("int8", {}),
               "int8 + equalize": ("int8", {"techniques": ["equalize"]}),
               "int8 + range-choice": ("int8", {"techniques": ["range-choice"]}),
               "int8 + bias-correction": ("int8", {"techniques": ["bias-correction"]}),
               budgeted: ("int8", {"min_agreement": 0.98}),
               layers_only: ("int8", {"min_agreement": 0.98, "budget_first_try": ()})}
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp, ExportPipeline(model, (1, 3, 32, 32)) as pipeline:
        arts = {}
        for i, (name, (precision, kw)) in enumerate(configs.items()):
            arts[name] = pipeline.export("x86-server-cpu", precision, calib=calib, eval_data=evalset,
                                         out=Path(tmp) / f"a{i}", **kw)
        reference = pipeline.reference(evalset)[0]
        runners = {k: a.runner(threads=1) for k, a in arts.items()}
        for k, r in runners.items():
            r.load()
            got = run_batched(r, test.x)[0]
            res = compare(reference, got, test.y)
            rows[k] = {"agreement": res["agreement"], "sqnr_db": res["sqnr_db"],
                       "accuracy_drop": res["accuracy_drop"]}
            fb = arts[k].manifest.get("fallback")
            if fb:
                rows[k].update({"int8_techniques_applied": fb["int8_techniques_applied"],
                                "kept_layers": fb["kept_layers"],
                                "macs_kept_fraction": fb["cost"]["macs_kept_fraction"]})
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
        session = effective_session_config(arts[budgeted].manifest["backend_details"]["session_config"])
    record = {"benchmark": "int8_fallback", "model": "testmodels.sensitive_dwsep", "parameters": params,
              "input": [1, 3, 32, 32], "threads": 1, "batch": 1, "blocks": args.blocks, "iters": args.iters,
              "host": {"cpu": cpu_model(), "isa": int8_isa(), "python": platform.python_version(),
                       "load_average": _load()},
              "int8_session_config_here": session, "eval": "digits_rgb test, 450 samples", "results": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "int8_fallback.json").write_text(json.dumps(record, indent=2, default=float) + "\n")
    x64 = session.get("session.x64quantprecision", "unset")
    md = ["# Budgeted int8 vs FP32, ONNX Runtime (x86-server-cpu)", "",
          f"Model `testmodels.sensitive_dwsep` ({params:,} parameters, 1x3x32x32; the model the tests use). CPU: "
          f"{cpu_model()} ({', '.join(int8_isa())}); int8 sessions as shipped here (session.x64quantprecision {x64}); "
          f"1 thread, batch 1, {args.blocks} interleaved blocks of {args.iters} runs; load average at the end "
          f"{_load()}. Agreement/SQNR vs FP32 on 450 test samples (never used for calibration or the budget).", "",
          "| variant | agreement | SQNR dB | p50 ms | speed-up vs fp32 | layers in float |",
          "|---|---:|---:|---:|---:|---|"]
    for k, r in rows.items():
        sq = "exact" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f}"
        kept = ""
        if "kept_layers" in r:
            how = " + ".join(r["int8_techniques_applied"]) or "no technique"
            kept = (f"{', '.join(r['kept_layers']) or 'none'} ({100 * r['macs_kept_fraction']:.1f}% of MACs); "
                    f"all-int8 step: {how}")
        md.append(f"| {k} | {r['agreement']:.4f} | {sq} | {r['p50_ms']:.3f} | {r['speedup_vs_fp32_p50']:.2f}x "
                  f"| {kept} |")
    md.append("")
    (RESULTS / "int8_fallback.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
