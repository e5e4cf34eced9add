"""INT8 PTQ techniques on the pixel-8 (TFLite full-integer, LiteRT) and jetson (TensorRT Q/DQ) targets, on a real
pretrained CNN: EfficientNet-Lite1 (ImageNet weights) at 240x240 (`--model efficientnet-lite2`: Lite2 at 260x260),
crops of real photos.

Rows per target, plain int8 and with the techniques that apply to it, each artifact written by the target's own
exporter (TfliteExporter, TensorRTExporter) from the graph the techniques produced, as `edgekit export --target
pixel-8 / jetson-orin-nano --adaround --bias-correction` does:
- pixel-8: the .tflite run by the real LiteRT interpreter (XNNPACK, one thread). TFLite's converter computes its
  own activation ranges from the representative dataset (the calibration crops), so the range techniques do not
  reach it; learned rounding does when TFLite's per-channel symmetric weight grid is the one the rounding was
  learned on (checked here: the integers in the .tflite against the learned ones), bias correction does through
  the float biases. Bias correction for pixel-8 is measured on an ONNX Runtime Q/DQ stand-in of TFLite's int8
  format (int8 asymmetric per-tensor activations, per-channel symmetric weights).
- jetson: TensorRT is absent here, so the TensorRT-ready Q/DQ ONNX runs in ONNX Runtime on the CPU as a stand-in
  for its numerics (the same Q/DQ graph TensorRT's explicit quantization builds from); no engine is built.
One learned-rounding fit serves both targets (their per-channel weight grid is the same): a fresh one on the
TensorRT format (int8 symmetric activations), or with --fit a learned graph of the same model from an earlier
run (checked to be the same graph). The .tflite's int8 weights are read back and compared with the learned
integers (`tflite_weights_vs_learned_grid`; TFLite rescales a few channels whose int32 bias would overflow,
counted as `channels_rescaled_by_converter`).

Metrics: top-1 agreement with FP32 (Wilson 95 % interval) and output SQNR, both against the ORT FP32 graph's
outputs, on held-out crops disjoint from the calibration crops (the held-out crops of benchmarks/cnn_int8.py).

Usage: python benchmarks/cnn_int8_targets.py [--held 300] [--calib 64] [--adaround-samples 64] [--fit FILE]
       [--bc-samples 64] [--rows plain,adaround,...]; --recheck-grid redoes only the read-back check
Writes benchmarks/results/cnn_int8_targets.json after every row.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from cnn_int8 import MODELS, load_real_cnn, model_label  # this folder is on sys.path as a script

RESULTS = Path(__file__).resolve().parent / "results"


def same_graph(prepared: Path, learned: Path, dest: Path) -> Path:
    """`learned` copied to `dest` after checking it is `prepared` (same nodes, same initializer names and
    shapes) with other Conv/Gemm weights: a fit of another run is only reused for the same model."""
    import shutil

    import onnx
    from onnx import numpy_helper

    a, b = onnx.load(str(prepared)), onnx.load(str(learned))
    if [n.name for n in a.graph.node] != [n.name for n in b.graph.node]:
        raise SystemExit(f"{learned} is not a learned copy of this model's prepared graph (other nodes)")
    shapes = {t.name: numpy_helper.to_array(t).shape for t in a.graph.initializer}
    if shapes != {t.name: numpy_helper.to_array(t).shape for t in b.graph.initializer}:
        raise SystemExit(f"{learned} is not a learned copy of this model's prepared graph (other initializers)")
    shutil.copyfile(learned, dest)
    return dest


def recheck_grid(args: argparse.Namespace) -> int:
    """The adaround rows' check of the written .tflite against the learned graph, redone on the files of an
    earlier run (the check reads files only; nothing is converted or measured again)."""
    from edgekit.quant import adaround

    record = json.loads(args.out.read_text())
    learned = next((p for p in (args.work / "given-fit.onnx", args.work / "trt" / "adaround.onnx") if p.exists()),
                   None)
    if learned is None:
        raise SystemExit(f"no learned graph in {args.work}")
    for name, row in record["rows"].items():
        folder = args.work / name.replace(":", "-")
        if "adaround" in name and (folder / "model.tflite").exists():
            row["tflite_weights_vs_learned_grid"] = adaround.check_artifact("tflite", learned,
                                                                            folder / "model.tflite")
            row["plain_tflite_vs_learned_grid"] = adaround.check_artifact(
                "tflite", learned, args.work / "pixel-8-plain" / "model.tflite")
            print(name, row["tflite_weights_vs_learned_grid"])
    args.out.write_text(json.dumps(record, indent=2, default=float) + "\n")
    return 0


def main() -> int:
    import torch

    torch.set_num_threads(1)
    logging.getLogger().setLevel(logging.ERROR)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=MODELS[0], choices=MODELS)
    ap.add_argument("--held", type=int, default=300, help="held-out crops (cnn_int8.py's last 300)")
    ap.add_argument("--calib", type=int, default=64, help="calibration crops (ranges, TFLite representative set)")
    ap.add_argument("--adaround-samples", type=int, default=64)
    ap.add_argument("--rows", default="plain,adaround,bias-correction,adaround+bias-correction",
                    help="technique rows to measure for both targets, in this order")
    ap.add_argument("--work", type=Path, default=None, help="folder for intermediate graphs (default: a temp dir)")
    ap.add_argument("--reuse-fit", action="store_true", help="reuse WORK/trt/adaround.onnx from an earlier run")
    ap.add_argument("--fit", type=Path, default=None,
                    help="a learned-rounding graph of this model from an earlier run (e.g. cnn_int8.py's "
                         "WORK/search/adaround.onnx, fitted on the same first calibration crops): used instead of "
                         "a fresh fit after checking it is this prepared graph with other weights")
    ap.add_argument("--fit-note", default="", help="where --fit comes from, recorded in the results")
    ap.add_argument("--recheck-grid", action="store_true",
                    help="only redo the learned-rounding check of the adaround rows' .tflite files in --work "
                         "(read back from the files an earlier run wrote) and update --out")
    ap.add_argument("--targets", default="jetson,pixel-8", help="which of jetson, pixel-8 to measure")
    ap.add_argument("--merge", action="store_true", help="keep the rows of --out not measured in this run")
    ap.add_argument("--bc-samples", type=int, default=64, help="calibration crops bias correction measures on")
    ap.add_argument("--out", type=Path, default=RESULTS / "cnn_int8_targets.json")
    args = ap.parse_args()

    if args.recheck_grid:
        return recheck_grid(args)

    from edgekit.backends import registry
    from edgekit.backends.base import ExportRequest, run_batched
    from edgekit.common.metrics import sqnr_db, top1_agreement, wilson
    from edgekit.data import photos, realcnn
    from edgekit.data.calibration import CalibrationSet
    from edgekit.graph.onnx_export import export_to_onnx
    from edgekit.quant import adaround, ptq_improve
    from edgekit.quant.calibrate import compute_ranges, prepare_for_quantization
    from edgekit.quant.qgraph import QuantSetup, run_session, session
    from edgekit.targets import load_target

    t0 = time.time()
    work = args.work or Path(tempfile.mkdtemp(prefix="cnn-int8-targets-"))
    work.mkdir(parents=True, exist_ok=True)
    size = realcnn.resolution(args.model)
    # the windows of cnn_int8.py (128 calibration, 100 selection, 300 held out): the same held-out crops
    crops = photos.windows(128 + 100 + 300, seed=0)
    cal = photos.render(crops[: args.calib], size)
    sel = photos.render(crops[128:228], size)
    held = photos.render(crops[228 : 228 + args.held], size)
    src = load_real_cnn(args.model, size)
    onnx_model = export_to_onnx(src, work / "fp32.onnx", real_inputs=held[:4])
    prepared = prepare_for_quantization(onnx_model.path, work / "prepared.onnx")
    ref = run_session(session(onnx_model.path, {}), held)[0]
    ref_sel = run_session(session(onnx_model.path, {}), sel)[0]
    cset = CalibrationSet(cal, None, "photo crops (calibration windows)", {}, len(cal), "all")
    ranges = compute_ranges(prepared, cset, "minmax")
    print(f"[{time.time() - t0:.0f}s] FP32 ready; {len(cal)} calibration, {len(sel)} selection, {len(held)} "
          "held-out crops", flush=True)

    targets = {"pixel-8": load_target("pixel-8"), "jetson": load_target("jetson-orin-nano")}
    rows: dict[str, dict] = {}
    notes: dict[str, dict] = {}
    if args.merge and args.out.exists():  # rows of an earlier run stay unless measured again
        earlier = json.loads(args.out.read_text())
        rows.update(earlier.get("rows", {}))
        notes.update(earlier.get("notes", {}))

    def write() -> None:
        record = {
            "model": model_label(args.model, size),
            "data": {"calibration_crops": len(cal), "held_out_crops": len(held), "selection_crops": len(sel),
                     "photos": list(photos.photos()),
                     "how": "seeded disjoint square crops (photos.windows(528, seed=0)): calibration = the first "
                            f"{len(cal)}, technique steps measured on windows 128-227, rows on windows 228-"
                            f"{227 + len(held)} (the held-out crops of cnn_int8.json)"},
            "reference": "ONNX Runtime FP32 on the exported graph, same crops",
            "pixel-8": "the .tflite from TfliteExporter run by ai_edge_litert's Interpreter (XNNPACK, 1 thread)",
            "jetson": "TensorRT is not installed here: the TensorRT-ready Q/DQ ONNX from TensorRTExporter run by "
                      "ONNX Runtime (CPU) as a stand-in for its numerics; no engine built",
            "adaround": {"samples": adaround.SAMPLES, "iterations": adaround.ITERATIONS,
                         "fit": ("given (--fit): " + (args.fit_note or str(args.fit))) if args.fit else
                                "one fit on the TensorRT int8 format, reused for pixel-8 (same weight grid: "
                                "per-channel symmetric int8, scale max|w|/127)"},
            "bias_correction": {"samples": ptq_improve.SAMPLES,
                                "measured_on": "jetson: its own Q/DQ format; pixel-8: an ONNX Runtime Q/DQ stand-in "
                                               "of TFLite's int8 format (edgekit.backends.tflite.standin_qdq_format)"},
            "machine": "shared 2-core machine under other load (seconds are wall time there)",
            "notes": notes,
            "rows": rows,
            "seconds": round(time.time() - t0),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2, default=float) + "\n")

    def export(tname: str, graph, label: str) -> tuple[Path, dict]:
        """The target's own exporter on `graph` (FP32 ONNX for TFLite, the quantization-ready graph for
        TensorRT, which also takes the ranges)."""
        tgt = targets[tname]
        out = work / f"{tname}-{label}"
        out.mkdir(exist_ok=True)
        exporter = registry.exporter_class(tgt.backend)()
        if tgt.backend == "tflite":
            request = ExportRequest(dataclasses.replace(onnx_model, path=graph), tgt, "int8", cset, None, out, None,
                                    src)
        else:
            request = ExportRequest(onnx_model, tgt, "int8", cset, ranges, out, graph, src)
        result = exporter.export(request)
        manifest = {"backend": tgt.backend, "model_file": result.model_file, "backend_details": result.details,
                    "inputs": [t.to_json() for t in result.inputs], "outputs": [t.to_json() for t in result.outputs]}
        return out, manifest

    def measure(tname: str, label: str, graph: Path, t_start: float, extra: dict | None = None) -> None:
        t1 = time.time()
        out, manifest = export(tname, graph, label)
        backend = manifest["backend"]
        runner = registry.runner_class(backend)(out, manifest, 1)
        with runner:
            got = run_batched(runner, held)[0]
        a = top1_agreement(ref, got)
        row = {"target": tname, "techniques": label, "agreement": round(a, 4),
               "agreement_ci95": list(wilson(a * len(held), len(held))), "sqnr_db": round(sqnr_db(ref, got), 2),
               "held_out": len(held), "calibration": len(cal),
               "runtime": "LiteRT (ai_edge_litert)" if backend == "tflite" else "onnxruntime CPU (TensorRT stand-in)",
               "seconds_export_and_run": round(time.time() - t1), "seconds_techniques": round(t1 - t_start),
               **(extra or {})}
        if backend == "tflite" and "adaround" in label:
            row["tflite_weights_vs_learned_grid"] = adaround.check_artifact(backend, graph,
                                                                            out / manifest["model_file"])
        rows[f"{tname}:{label}"] = row
        write()
        print(f"[{time.time() - t0:.0f}s] {tname} {label}: agreement {a:.4f} {row['agreement_ci95']}, SQNR "
              f"{row['sqnr_db']} dB", flush=True)

    adaround.SAMPLES = args.adaround_samples
    ptq_improve.SAMPLES = args.bc_samples
    trt_opts = dict(targets["jetson"].backend_options)
    from edgekit.backends.tflite import standin_qdq_format

    tfl_opts = standin_qdq_format(targets["pixel-8"].backend_options)
    setups = {"jetson": QuantSetup("tensorrt", prepared, ranges, trt_opts, sel, ref_sel, None, work / "trt"),
              "pixel-8": QuantSetup("tflite", prepared, ranges, tfl_opts, sel, ref_sel, None, work / "tfl")}
    for s in setups.values():
        s.workdir.mkdir(exist_ok=True)
    learned: Path | None = None

    for label in [r for r in args.rows.split(",") if r]:
        techs = [] if label == "plain" else label.split("+")
        for tname in [t for t in args.targets.split(",") if t]:
            t_start = time.time()
            try:
                setup, steps = setups[tname], []
                if "adaround" in techs:
                    cached = work / "trt" / "adaround.onnx"
                    if learned is None and args.reuse_fit and cached.exists():
                        learned = cached
                        notes["adaround_fit"] = {"reused": str(cached)}
                    if learned is None and args.fit is not None:
                        learned = same_graph(prepared, args.fit, work / "given-fit.onnx")
                        notes["adaround_fit"] = {"given": args.fit_note or str(args.fit)}
                    if learned is None:
                        # the one fit, on the TensorRT format
                        learned_setup, steps = ptq_improve.apply(setups["jetson"], ["adaround"], cset, "minmax", {})
                        learned = learned_setup.prepared
                        notes["adaround_fit"] = {k: v for k, v in steps[-1].items() if k != "per_layer"}
                        notes["adaround_fit"]["seconds_wall"] = round(time.time() - t_start)
                    setup = dataclasses.replace(setup, prepared=learned)
                rest = [t for t in techs if t != "adaround"]
                if rest:
                    setup, steps = ptq_improve.apply(setup, rest, cset, "minmax", {})
                    notes[f"{tname}:{label}"] = [{k: v for k, v in st.items() if k not in ("per_layer",)}
                                                 for st in steps]
                # plain pixel-8 converts the exported FP32 graph, as the exporter does without techniques
                graph = setup.prepared if techs or tname == "jetson" else onnx_model.path
                measure(tname, label, graph, t_start)
            except Exception as exc:  # a failing row is a result too; the others still run
                rows[f"{tname}:{label}"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                write()
                print(f"{tname} {label}: {exc}", flush=True)
    write()
    print(f"{'row':40s} {'agree':>7s} {'95% CI':>13s} {'SQNR':>6s}")
    for name, r in rows.items():
        ci = r.get("agreement_ci95")
        print(f"{name:40s} {r.get('agreement', float('nan')):7.4f} "
              f"{(f'{ci[0]:.3f}-{ci[1]:.3f}' if ci else '-'):>13s} {(r.get('sqnr_db') or float('nan')):6.1f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
