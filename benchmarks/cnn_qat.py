"""Label-free QAT on a real pretrained CNN (EfficientNet-Lite1, ImageNet weights, 240x240), measured as
benchmarks/cnn_int8.py measures its rows: top-1 agreement with the ORT FP32 graph (Wilson 95 % interval) and
output SQNR on the same 300 held-out photo crops, and speed vs FP32 from one interleaved timing run.

Methods (`--method`):
- `pt2e`: edgekit.train.selfdistill (torchao PT2E QAT of the torch model, the FP32 model as teacher, soft
  targets only), its own Q/DQ ONNX export;
- `graph`: the `qat` PTQ technique (edgekit.quant.graph_qat): QAT of the weights of edgekit's own x86 Q/DQ
  graph against the FP32 graph's outputs, then edgekit's exporter.

Training crops: the calibration crops of cnn_int8.py plus `--extra` further windows of the same seeded
sequence (disjoint from the selection and held-out windows). Configurations are compared on the 100
selection crops; `--held-out` adds the held-out figures and the timing (for the chosen configuration).

Usage: python benchmarks/cnn_qat.py --method graph [--extra 0] [--lr ..] [--steps ..] [--held-out]
Appends one record per run to benchmarks/results/cnn_qat.json.
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
from cnn_int8 import X86  # this folder is on sys.path when run as a script

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    import torch

    torch.set_num_threads(1)
    logging.getLogger().setLevel(logging.ERROR)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", choices=("pt2e", "graph"), default="graph")
    ap.add_argument("--held", type=int, default=300)
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--select", type=int, default=100)
    ap.add_argument("--extra", type=int, default=0, help="training crops beyond the calibration ones")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--steps", type=int, default=0, help="graph method: optimisation steps (0: its default)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--start", default="", help="graph method: techniques applied before QAT, e.g. adaround")
    ap.add_argument("--held-out", action="store_true", help="also measure the held-out crops and the speed")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--hand-calib", type=int, default=16, help="calibration crops of the ORT hand path (memory)")
    ap.add_argument("--configs", default="", help="graph method: several runs from one setup, e.g. "
                    "'lr=1e-4,epochs=4;lr=3e-5,epochs=4' (each key overrides the flag of that name)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", type=Path, default=RESULTS / "cnn_qat.json")
    args = ap.parse_args()

    from edgekit.common.metrics import sqnr_db, top1_agreement, wilson
    from edgekit.data import photos, realcnn
    from edgekit.data.calibration import CalibrationSet
    from edgekit.graph.onnx_export import export_to_onnx
    from edgekit.models.source import load_model
    from edgekit.quant.calibrate import compute_ranges, prepare_for_quantization
    from edgekit.quant.cost import compare_latency
    from edgekit.quant.qgraph import QuantSetup, build, run_session, session

    t0 = time.time()
    work = Path(tempfile.mkdtemp(prefix="cnn-qat-"))
    size = realcnn.resolution("efficientnet-lite1")
    n = args.calib + args.select + args.held
    crops = photos.windows(n + args.extra, seed=0)
    cal = photos.render(crops[: args.calib], size)
    sel = photos.render(crops[args.calib : args.calib + args.select], size)
    held = photos.render(crops[args.calib + args.select : n], size) if args.held_out else None
    train = np.concatenate([cal, photos.render(crops[n:], size)]) if args.extra else cal
    model = realcnn.efficientnet_lite1().eval()
    src = load_model(model, (1, 3, size, size))
    fp32 = export_to_onnx(src, work / "fp32.onnx", real_inputs=sel[:4]).path
    prepared = prepare_for_quantization(fp32, work / "prepared.onnx")
    ref_sel = run_session(session(fp32, X86), sel)[0]
    record: dict = {"method": args.method, "tag": args.tag, "train_crops": len(train), "epochs": args.epochs,
                    "steps": args.steps, "lr": args.lr, "batch": args.batch, "temperature": args.temperature,
                    "start": args.start}
    cset = CalibrationSet(cal, None, "photo crops", {}, len(cal), "all")
    ranges = compute_ranges(prepared, cset, "minmax")
    setup = QuantSetup("onnxruntime", prepared, ranges, X86, sel, ref_sel, None, work / "setup")
    setup.workdir.mkdir()
    build(setup, [], work / "plain.onnx")
    print(f"[{time.time() - t0:.0f}s] ready: {len(train)} training crops", flush=True)

    base = dict(record)
    configs = [dict(kv.split("=") for kv in c.split(",")) for c in args.configs.split(";") if c] or [{}]
    for conf in configs:
        for k, v in conf.items():
            setattr(args, k, type(getattr(args, k))(v))
        record = {**base, "epochs": args.epochs, "steps": args.steps, "lr": args.lr,
                  "temperature": args.temperature, "batch": args.batch, "tag": args.tag + ";" + ",".join(
                      f"{k}={v}" for k, v in conf.items())}
        t1 = time.time()
        if args.method == "pt2e":
            from edgekit.train.selfdistill import self_distill

            res = self_distill(model, train, epochs=args.epochs, lr=args.lr, temperature=args.temperature,
                               out_dir=work / "sd", batch_size=args.batch, log=lambda m: print(m, flush=True))
            qat_path = Path(res.onnx.path)
        else:
            from edgekit.quant import ptq_improve

            techs = [t for t in args.start.split(",") if t] + ["qat"]
            opts = {"lr": args.lr, "batch_size": args.batch, "temperature": args.temperature, "epochs": args.epochs}
            if args.steps:
                opts["steps"] = args.steps
            tset = CalibrationSet(train, None, "photo crops", {}, len(train), "all")
            s2, steps = ptq_improve.apply(setup, techs, tset, "minmax", {}, log=lambda m: print(m, flush=True),
                                          qat_options=opts)
            record["steps_on_selection"] = [{k: v for k, v in st.items() if k in (
                "technique", "agreement", "sqnr_db", "seconds", "steps", "final_loss", "lr")} for st in steps]
            qat_path = work / "qat.onnx"
            build(s2, [], qat_path)
        record["fit_seconds"] = round(time.time() - t1)

        def metrics(path: Path, x: np.ndarray, ref: np.ndarray) -> dict:
            got = run_session(session(path, X86), x)[0]
            a = top1_agreement(ref, got)
            return {"agreement": round(a, 4), "agreement_ci95": list(wilson(a * len(x), len(x))),
                    "sqnr_db": round(sqnr_db(ref, got), 2)}

        record["selection"] = {"plain": metrics(work / "plain.onnx", sel, ref_sel),
                               "qat": metrics(qat_path, sel, ref_sel)}
        print(f"[{time.time() - t0:.0f}s] selection: {record['selection']}", flush=True)
        if args.held_out:
            ref = run_session(session(fp32, X86), held)[0]
            record["held_out"] = {"plain": metrics(work / "plain.onnx", held, ref),
                                  "qat": metrics(qat_path, held, ref)}
            print(f"[{time.time() - t0:.0f}s] held-out: {record['held_out']}", flush=True)
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from cnn_int8 import hand_path

            hand = work / "hand-minmax.onnx"
            if not hand.exists():
                hand_path(prepared, hand, cal[: args.hand_calib], "minmax")
            record["held_out"]["hand_quantize_static_minmax"] = metrics(hand, held, ref)
            lat = compare_latency({"ort_fp32": fp32, "hand_quantize_static_minmax": hand,
                                   "plain": work / "plain.onnx", "qat": qat_path}, X86, held,
                                  rounds=args.rounds, iters=10)
            record["latency_ms"] = lat
            record["speed_vs_fp32"] = {k: round(lat["ort_fp32"] / v, 3) for k, v in lat.items()}
            print(f"speed vs FP32: {record['speed_vs_fp32']}", flush=True)
        import onnx

        ops: dict[str, int] = {}
        for node in onnx.load(str(qat_path), load_external_data=False).graph.node:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
        record["qat_graph_ops"] = ops
        record["seconds"] = round(time.time() - t0)
        runs = json.loads(args.out.read_text())["runs"] if args.out.exists() else []
        runs.append(record)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"model": "EfficientNet-Lite1, ImageNet weights, 240x240",
                                        "protocol": "as benchmarks/cnn_int8.py; one thread; shared 2-core machine",
                                        "runs": runs}, indent=2, default=float) + "\n")
        print(json.dumps(record, default=float), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
