"""`edgekit export`: one model to one target and precision, written atomically as an artifact folder."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from edgekit.commands import DATA_HELP, log
from edgekit.errors import EdgekitError


def parse_options(pairs: Sequence[str], flag: str = "--calib-option") -> dict[str, object]:
    """KEY=VALUE pairs; values are read as JSON when they parse (numbers, booleans), else kept as text."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise EdgekitError(f"malformed {flag} '{pair}': expected KEY=VALUE, e.g. percentile=99.99")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def print_artifact(art) -> None:
    m = art.manifest
    v = m["verification"]
    size = sum(f["bytes"] for f in m["files"].values())
    print(f"artifact   {art.path}")
    print(f"target     {m['target']} ({m['backend']}, {m['precision']})")
    print(f"files      {', '.join(m['files'])} ({size / 1024:.1f} KiB)")
    for line in verification_lines(v):
        print(line)
    if "accuracy" in v:
        lo, hi = v.get("accuracy_ci95", (v["accuracy"], v["accuracy"]))
        print(f"accuracy   {v['accuracy']:.4f} (95% CI {lo:.3f}-{hi:.3f}; FP32 {v['reference_accuracy']:.4f}, "
              f"drop {100 * v['accuracy_drop']:.2f} points)")
    b = m.get("budget")
    if b:
        print(f"budget     {b['status'].upper()} on this final check ({b['samples']} samples of {b['checked_on']}, "
              "the data the search was judged on)")


def verification_lines(v: dict) -> list[str]:
    """One line per output: the metric that fits it (agreement for logits, cosine for embeddings) and SQNR."""
    per = v.get("outputs") or {"": v}
    lines = []
    for name, o in per.items():
        sq = "exact" if o.get("sqnr_db") is None else f"{o['sqnr_db']:.1f} dB"
        label = f" [{name}]" if name else ""
        if o.get("cosine"):
            c = o["cosine"]
            lines.append(f"cosine     {c['mean']:.4f} mean, {c['worst']:.4f} worst vs FP32{label} on {v['samples']} "
                         f"samples of {v['data']}; SQNR {sq}")
        elif o.get("agreement") is not None:
            ci = o.get("agreement_ci95") or (v.get("agreement_ci95") if o is v or len(per) == 1 else None)
            interval = f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""
            lines.append(f"agreement  {o['agreement']:.4f}{interval} top-1 vs FP32{label} on {v['samples']} samples "
                         f"of {v['data']}; SQNR {sq}")
        else:
            lines.append(f"sqnr       {sq} vs FP32{label} on {v['samples']} samples of {v['data']}")
    return lines


def print_improvements(m: dict) -> None:
    """What each int8 technique and the budgeted fallback bought, on the held-out calibration samples."""
    for step in m.get("ptq_techniques", []):
        print(f"technique  {step['technique']}: agreement {step['agreement']:.4f}, SQNR {step['sqnr_db']:.1f} dB "
              "(check data)")
    for skip in m.get("ptq_techniques_not_applied", []):
        print(f"technique  {skip['technique']}: {skip['why']}")
    fb = m.get("fallback")
    if fb:
        for t in fb.get("int8_techniques", []):
            if t.get("skipped"):
                print(f"budget     {t['technique']} {t['skipped']}")
                continue
            print(f"budget     tried {t['technique']} first (all layers int8): agreement {t['agreement']:.4f}, "
                  f"SQNR {t['sqnr_db']:.1f} dB; {'applied' if t['applied'] else 'not applied'}")
        kept = ", ".join(fb["kept_layers"]) or "none"
        if fb.get("int16_layers"):
            print(f"int16      weights of {len(fb['int16_layers'])} layer(s): {', '.join(fb['int16_layers'])}")
        if fb["full_int8"].get("cosine") is not None:
            from edgekit.quant.budget import describe

            print(f"fallback   kept in {fb['kept_precision']}: {kept}; {describe(fb['full_int8'])} -> "
                  f"{describe(fb['result'])} on {fb.get('checked_on', 'held-out samples')}")
        else:
            print(f"fallback   kept in {fb['kept_precision']}: {kept}; agreement {fb['full_int8']['agreement']:.4f} -> "
                  f"{fb['result']['agreement']:.4f}, SQNR {fb['full_int8']['sqnr_db']:.1f} -> "
                  f"{fb['result']['sqnr_db']:.1f} dB on {fb.get('checked_on', 'held-out samples')}")
        cost = fb.get("cost", {})
        lat = cost.get("latency_ms")
        extra = ""
        if isinstance(lat, dict):
            extra = f"; latency {lat['full_int8']:.3f} -> {lat['budgeted']:.3f} ms"
            if "fp32" in lat:
                extra += f" (fp32 {lat['fp32']:.3f} ms, {cost.get('speedup_vs_fp32', 0):.2f}x)"
        print(f"cost       {100 * cost.get('macs_kept_fraction', 0):.1f}% of MACs in float{extra}")


def check_before_work(args: argparse.Namespace, targets: list) -> None:
    """Every check that needs no model comes first: a bad calibration option or an unwritable --out costs
    nothing (no model loaded, no export run, nothing written)."""
    from pathlib import Path

    from edgekit.artifact import check_destination, check_writable
    from edgekit.quant.calibrate import resolve_method

    resolve_method(args.calib_method, parse_options(args.calib_option))
    if not args.out:
        check_writable(Path.cwd() / "artifact", "the default --out in")
    elif len(targets) == 1:
        check_destination(Path(args.out), args.force)
    else:  # one folder per target under --out
        check_writable(Path(args.out) / targets[0].name)


def print_advice(m: dict) -> None:
    """AIPP and memory facts, then the warnings and the command the user must run next (edgekit.export.summary)."""
    from edgekit.export.summary import next_step, warnings

    aipp = (m.get("backend_details") or {}).get("aipp")
    if isinstance(aipp, dict):
        if aipp.get("config"):
            print(f"aipp       {aipp['config']}: {aipp['input_format']}, mean {aipp['mean']}, std {aipp['std']} "
                  f"(from {aipp['from']})")
        else:
            print(f"aipp       {aipp['note']}")
    res = m.get("export_resources") or {}
    if res.get("peak_rss_mb") is not None:
        print(f"memory     export peak RSS {res['peak_rss_mb']:.0f} MB")
    for line in warnings(m):
        print(f"warning    {line}")
    step = next_step(m)
    if step:
        print(f"next       {step}")


def run(args: argparse.Namespace) -> int:
    from edgekit.export import export
    from edgekit.targets import load_target

    names = [t.strip() for t in args.target.split(",")] if "," in args.target else [args.target]
    if not all(names):
        raise EdgekitError(f"malformed --target '{args.target}': expected names or .toml paths joined by commas")
    targets = [load_target(n) for n in names]  # fail fast on a bad target before loading the model
    if args.backend:
        targets = [t.with_backend(args.backend) for t in targets]
    options = parse_options(args.backend_option, "--backend-option")
    if args.require_engine:
        options["require_engine"] = True
    if args.allow_float_fallback:
        options["allow_float_fallback"] = True
    from edgekit.backends.options import validate

    # the same declaration each target's [backend_options] is checked against, before the model is loaded
    for target in targets:
        validate(target.backend, options, "--backend-option")
    techniques = [t for t, on in (("equalize", args.equalize), ("range-choice", args.range_choice),
                                  ("range-mse", args.range_mse), ("adaround", args.adaround),
                                  ("bias-correction", args.bias_correction), ("qat", args.qat)) if on]
    if args.min_agreement is not None and not 0.0 < args.min_agreement <= 1.0:
        raise EdgekitError(f"--min-agreement is a fraction in (0, 1], e.g. 0.98 (got {args.min_agreement})")
    if args.max_accuracy_drop is not None and not 0.0 <= args.max_accuracy_drop <= 100.0:
        raise EdgekitError(f"--max-accuracy-drop is in percentage points, 0 to 100 (got {args.max_accuracy_drop})")
    if args.min_cosine is not None and not -1.0 <= args.min_cosine <= 1.0:
        raise EdgekitError(f"--min-cosine is a cosine in [-1, 1], e.g. 0.99 (got {args.min_cosine})")
    budgeted = args.min_agreement is not None or args.max_accuracy_drop is not None or args.min_sqnr is not None \
        or techniques or args.min_cosine is not None
    # techniques alone reach more backends than a budget does (TFLite converts the improved float graph)
    budgeted_only_by_techniques = bool(techniques) and args.min_agreement is None and \
        args.max_accuracy_drop is None and args.min_sqnr is None and args.min_cosine is None
    for target in targets:
        precision = target.check_precision(args.precision)
        # a transformer's dynamic int8 takes a cosine budget too
        allowed = ("int8", "dynamic-int8") if args.min_cosine is not None and not techniques else ("int8",)
        if budgeted and precision not in allowed:
            raise EdgekitError("--min-agreement, --max-accuracy-drop, --equalize, --range-choice and "
                               f"--bias-correction apply to --precision int8 (got {precision})")
        if budgeted:
            from edgekit.backends.registry import check_budget_backend, check_technique_backend

            if budgeted_only_by_techniques:
                check_technique_backend(target.backend, f"target {target.name}")
            else:
                check_budget_backend(target.backend, f"target {target.name}")
    if args.calib_samples < 1:
        raise EdgekitError(f"--calib-samples must be at least 1 (got {args.calib_samples})")
    dynamic = tuple(d.strip() for d in (args.dynamic or "").split(",") if d.strip())
    if dynamic and not args.input_spec:
        raise EdgekitError("--dynamic applies to the axes of --input-spec; pass --input-spec too")
    check_before_work(args, targets)
    result = export(
        args.model, targets if len(targets) > 1 else targets[0], args.precision, calib=args.calib, eval=args.eval,
        out=args.out, force=args.force, progress=log, input_shape=args.input_shape, calib_method=args.calib_method,
        calib_options=parse_options(args.calib_option), calib_samples=args.calib_samples, opset=args.opset,
        min_agreement=args.min_agreement,
        max_accuracy_drop=None if args.max_accuracy_drop is None else args.max_accuracy_drop / 100.0,
        techniques=techniques, budget_first_try=() if args.no_budget_equalize else None,
        min_sqnr_db=args.min_sqnr, keep_best_effort=args.keep_best_effort, int16_rung=not args.no_int16_rung,
        input_spec=args.input_spec, dynamic=dynamic, task=args.task, metric=args.metric,
        min_cosine=args.min_cosine, **options,
    )
    for i, art in enumerate(result if isinstance(result, list) else [result]):
        if i:
            print()
        print_artifact(art)
        print_improvements(art.manifest)
        print_advice(art.manifest)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a model for a target (ONNX, calibration, quantization, accuracy check)",
        description="Export MODEL for a target: torch -> ONNX (checked against torch), calibration ranges "
                    "(for int8, computed once and saved with the artifact), the backend's files, and a check "
                    "of the result against FP32, all written atomically to a folder with manifest.json.",
        epilog=f"MODEL is a .onnx file, a .pt2 file (torch.export.save), package.module:factory (needs "
               f"--input-shape or --input-spec), hf:DIR (a local Hugging Face folder), or zoo:digits-student / "
               f"zoo:digits-teacher. {DATA_HELP}. Example: "
               f"edgekit export zoo:digits-student --target x86-server-cpu --precision int8 --calib zoo:digits",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--target", "-t", required=True,
                   help="target name (see `edgekit targets`) or a .toml file; several joined by commas share one ONNX "
                        "export and one calibration, one artifact folder each under --out")
    p.add_argument("--precision", "-p", help="fp32, int8, dynamic-int8, ... (default: the target's default)")
    p.add_argument("--backend", "-b", help="one of the target's other backends (`edgekit targets` lists them), "
                   "e.g. tflite on raspberry-pi-5; default: the target's first backend")
    p.add_argument("--calib", metavar="DATA", help="calibration data for int8 (default for zoo models: zoo:digits)")
    p.add_argument("--calib-method", default="minmax", metavar="M",
                   help="minmax (default), entropy, percentile, or a recipe name/.toml from calibration/")
    p.add_argument("--calib-option", action="append", default=[], metavar="KEY=VALUE",
                   help="calibration option, e.g. percentile=99.99 or num_bins=4096 (repeatable)")
    p.add_argument("--calib-samples", type=int, default=300, metavar="N",
                   help="use at most N calibration samples, a seeded random subset (default 300)")
    p.add_argument("--eval", metavar="DATA", help="data the artifact is checked on against FP32 (default: the "
                   "held-out split for zoo data, else the calibration data)")
    p.add_argument("--input-shape", metavar="NxCxHxW", help="model input shape, e.g. 1x3x224x224")
    p.add_argument("--input-spec", metavar="NAME:DTYPE:SHAPE,...",
                   help="named, typed inputs, e.g. input_ids:int64:1x128,attention_mask:int64:1x128 (dtypes: "
                        "float32, float16, int64, int32, bool); the first axis is the batch")
    p.add_argument("--dynamic", metavar="AXES", help="axes of --input-spec kept dynamic besides the batch: "
                   "'sequence' (the second axis of integer inputs; its size in the spec is the maximum)")
    p.add_argument("--task", help="hf: models: feature-extraction (sentence embedding + last hidden state, the "
                   "default) or text-classification (logits)")
    p.add_argument("--metric", choices=("agreement", "cosine", "sqnr"),
                   help="how outputs are compared with FP32 (default: per output, agreement for logits, cosine "
                        "for embeddings and hidden states)")
    p.add_argument("--out", "-o", help="artifact folder (default: ./MODEL-TARGET-PRECISION); with several targets, "
                   "the folder that holds one MODEL-TARGET-PRECISION folder per target")
    p.add_argument("--opset", type=int, metavar="N", help="ONNX opset to export at, within the target's range "
                   "(default: the newest the exporter gives in that range)")
    p.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option for the backend's exporter (repeatable); an unknown one lists those accepted")
    p.add_argument("--require-engine", action="store_true",
                   help="fail unless the device engine itself is built here (TensorRT .engine, Ascend .om)")
    p.add_argument("--allow-float-fallback", action="store_true",
                   help="int8 (tflite): keep ops that have no int8 kernel in float instead of failing; the manifest "
                        "lists them")
    p.add_argument("--min-agreement", type=float, metavar="FRACTION",
                   help="int8 budget: keep the most sensitive layers in higher precision until top-1 agreement with "
                        "FP32 is at least FRACTION (e.g. 0.98) on the --eval set, else on a held-out part of the "
                        "calibration set large enough to resolve it (one flip at most half the budget); needs no "
                        "labels")
    p.add_argument("--max-accuracy-drop", type=float, metavar="PCT",
                   help="int8 budget: ... until the accuracy drop is at most PCT percentage points (data with labels)")
    p.add_argument("--no-budget-equalize", action="store_true",
                   help="with a budget: skip the all-int8 cross-layer equalisation it tries first, and go straight "
                        "to keeping layers in float")
    p.add_argument("--min-cosine", type=float, metavar="C",
                   help="int8 / dynamic-int8 budget for models with token inputs (hf:, transformers): keep the most "
                        "sensitive projections and embedding tables float until the first output's mean cosine to "
                        "FP32 is at least C (e.g. 0.99) on the --eval set, else on held-out calibration sentences")
    p.add_argument("--min-sqnr", type=float, metavar="DB",
                   help="int8 budget: also require the output SQNR vs FP32 to reach DB on the check data")
    p.add_argument("--keep-best-effort", action="store_true",
                   help="with a budget: when the final check misses it, write the best effort anyway (manifest "
                        "budget: missed) instead of failing with exit 2")
    p.add_argument("--no-int16-rung", action="store_true",
                   help="with a budget: never give layers int16 weights, go from int8 straight to float layers")
    p.add_argument("--equalize", action="store_true",
                   help="int8: cross-layer equalisation of Conv-ReLU-Conv pairs (depthwise-separable blocks)")
    p.add_argument("--range-choice", action="store_true",
                   help="int8: choose min-max, percentile or entropy per tensor by its own quantization error")
    p.add_argument("--range-mse", action="store_true",
                   help="int8: clip each activation tensor where its expected int8 error is smallest")
    p.add_argument("--adaround", action="store_true",
                   help="int8: learn each weight's rounding (up/down) against its layer's float output "
                        "(AdaRound; minutes on a real CNN)")
    p.add_argument("--bias-correction", action="store_true",
                   help="int8: correct the per-channel mean shift quantization causes, layer by layer")
    p.add_argument("--qat", action="store_true",
                   help="int8: train the quantized graph's weights against the FP32 outputs on the calibration "
                        "samples (quantization-aware, no labels; runs last; minutes on a real CNN)")
    p.add_argument("--force", action="store_true", help="replace the output folder if it exists")
    p.set_defaults(func=run)
