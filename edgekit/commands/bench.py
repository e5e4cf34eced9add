"""`edgekit bench`: latency, memory, size and accuracy of artifacts, each in its own process, interleaved."""

from __future__ import annotations

import argparse

from edgekit.commands import DATA_HELP, log

# kept equal to edgekit.bench.records' defaults (not imported: this module must stay light for --help)
_WARMUP, _WARMUP_S, _ITERS, _MIN_S, _MAX_S, _ROUNDS, _THREADS = 1, 0.5, 50, 1.0, 150.0, 5, 1


def run(args: argparse.Namespace) -> int:
    from edgekit.bench import multi, report
    from edgekit.bench.devices import make_device
    from edgekit.bench.jobs import parse_batches
    from edgekit.bench.records import BenchConfig
    from edgekit.errors import EdgekitError

    config = BenchConfig(warmup=args.warmup, warmup_seconds=args.warmup_seconds, iters=args.iters,
                         min_seconds=args.min_seconds, max_seconds=args.max_seconds, rounds=args.rounds,
                         batches=parse_batches(args.batch), threads=args.threads, eval_samples=args.eval_samples,
                         interleave=not args.sequential, profile=args.profile, metric=args.metric)
    # every device is resolved before anything is loaded or contacted: a typo fails at once
    devices = [make_device(spec, benchmark_model=args.benchmark_model, perf_test=args.perf_test)
               for spec in (args.device or ["local"])]
    if args.plot:
        report.check_plot_support()
    records, runs = multi.measure(args.artifacts, config, devices, eval_data=args.eval, reference=args.reference,
                            progress=not args.no_progress, log=log, trust_model_source=args.trust_model_source)
    print(report.table(records, baseline=args.baseline))
    if args.profile:
        for line in report.profile_lines(records):
            print(line)
    written = []
    if args.json:
        written.append(report.write_json(records, args.json))
    if args.csv:
        written.append(report.write_csv(records, args.csv))
    if args.markdown:
        path = args.markdown
        with open(path, "w") as f:
            f.write(report.markdown(records, baseline=args.baseline) + "\n")
        written.append(path)
    if args.plot:
        written.append(report.write_plot(records, args.plot))
    for path in written:
        log(f"wrote {path}")
    failures = [(r.device.name, path) for r in runs if r.ok for path, _ in r.result.failures]
    if failures:
        names_ = ", ".join(path if len(runs) == 1 else f"{path} on {dev}" for dev, path in failures)
        total = len(args.artifacts) * sum(r.ok for r in runs)
        raise EdgekitError(f"{len(failures)} of {total} artifact(s) could not be measured "
                           f"({names_}); the others were measured and reported")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="benchmark artifacts: latency, throughput, cold start, peak memory, size, accuracy",
        description="Benchmark artifact folders (from `edgekit export`). Each artifact runs in a fresh worker "
                    "process (peak memory = peak RSS while loading and running minus the RSS before loading; "
                    "cold start = load + first inference). Several artifacts are timed interleaved, in rounds, "
                    "so machine drift touches all alike. Agreement (top-1) and SQNR are measured against "
                    "the FP32 reference: --reference, else the manifest's source model when it is data (zoo, "
                    ".onnx, .pt2; code only with --trust-model-source), else an fp32 artifact of it; with "
                    "labelled --eval data, top-1 accuracy too. Accuracy and agreement are fractions in [0, 1].",
        epilog=f"Defaults follow TFLite's benchmark_model: warm-up >= {_WARMUP} run and >= {_WARMUP_S} s, then "
               f">= {_ITERS} runs and >= {_MIN_S} s per artifact and batch size (at most {_MAX_S:.0f} s), in "
               f"{_ROUNDS} interleaved rounds, {_THREADS} thread. {DATA_HELP}; without --eval, the data the "
               "export was checked on when it can be read here, else seeded random inputs. Exit code 2 when "
               "any artifact could not be measured (the others are still reported). Devices: local, "
               "ssh://USER@HOST[:PORT] (the board needs Python >= 3.11, numpy and the runtime package), "
               "adb://SERIAL (TFLite artifacts with --benchmark-model, ORT-mobile .ort artifacts with "
               "--perf-test), or a NAME from the devices file "
               "($EDGEKIT_DEVICES, default ~/.config/edgekit/devices.toml); several --device run in parallel "
               "and give one table with a device column; a device that fails as a whole gives one error line, "
               "exit code 2 only when every device failed. Example: edgekit bench "
               "art-fp32 art-int8 --eval zoo:digits:test --batch 1,8 --json results.json --plot pareto.png",
    )
    p.add_argument("artifacts", nargs="+", metavar="ARTIFACT", help="artifact folder(s)")
    p.add_argument("--eval", metavar="DATA", help="evaluation data; with labels y, top-1 accuracy is reported")
    p.add_argument("--metric", choices=("agreement", "cosine", "sqnr"),
                   help="how outputs are compared with FP32 (default: per output, agreement for logits, cosine "
                        "for embeddings and hidden states)")
    p.add_argument("--eval-samples", type=int, metavar="N", help="use at most N evaluation samples (default: all)")
    p.add_argument("--reference", metavar="MODEL_OR_ARTIFACT",
                   help="FP32 reference for agreement/SQNR: an artifact folder or a model (zoo:NAME, .onnx, .pt2, "
                        "package.module:factory). Default: the manifest's source when it is a zoo model or an "
                        ".onnx/.pt2 file, else an fp32 artifact of the same model in this run")
    p.add_argument("--trust-model-source", action="store_true",
                   help="import the package.module:factory a manifest names to build the FP32 reference (runs "
                        "that code: only for artifacts you made or trust; said on stderr when used)")
    p.add_argument("--baseline", metavar="ART", help="artifact the speed-up column is relative to (default: the "
                   "same target's fp32 artifact, else the torch-eager one; the rule `recommend` uses too)")
    p.add_argument("--profile", action="store_true",
                   help="after timing, record the runtime's per-op profile (ONNX Runtime: top ops by time, int8 vs "
                        "float vs Quantize/Dequantize share; LiteRT: not reachable from Python, said so)")
    p.add_argument("--batch", default="1", metavar="B[,B...]",
                   help="batch sizes, e.g. 1,8 (default 1); throughput is reported per batch size")
    p.add_argument("--threads", type=int, default=_THREADS, metavar="N",
                   help=f"intra-op threads given to every runtime (default {_THREADS}; 0: the runtime's default)")
    p.add_argument("--warmup", type=int, default=_WARMUP, metavar="N",
                   help=f"warm-up runs at least (default {_WARMUP})")
    p.add_argument("--warmup-seconds", type=float, default=_WARMUP_S, metavar="S",
                   help=f"warm-up seconds at least (default {_WARMUP_S})")
    p.add_argument("--iters", type=int, default=_ITERS, metavar="N",
                   help=f"timed runs at least, per artifact and batch size (default {_ITERS})")
    p.add_argument("--min-seconds", type=float, default=_MIN_S, metavar="S",
                   help=f"timed seconds at least, per artifact and batch size (default {_MIN_S})")
    p.add_argument("--max-seconds", type=float, default=_MAX_S, metavar="S",
                   help=f"stop timing after S seconds even if --iters is not reached (default {_MAX_S:.0f})")
    p.add_argument("--rounds", type=int, default=_ROUNDS, metavar="R",
                   help=f"interleaved rounds the timed runs are split into (default {_ROUNDS})")
    p.add_argument("--sequential", action="store_true",
                   help="one artifact at a time instead of interleaved (only one model in memory, for small "
                        "devices; drift is then not spread over all artifacts)")
    p.add_argument("--device", action="append", metavar="DEVICE",
                   help="where to run: local (default), ssh://USER@HOST[:PORT][?python=...&key=...&workdir=...], "
                        "adb://SERIAL, or a NAME from the devices file; repeat for several devices")
    p.add_argument("--benchmark-model", metavar="PATH",
                   help="TFLite's benchmark_model binary built for the phone, pushed to adb devices")
    p.add_argument("--perf-test", metavar="PATH",
                   help="ONNX Runtime's onnxruntime_perf_test binary built for the phone, pushed to adb devices to "
                        "measure ort-mobile (.ort) artifacts (run with -e cpu -m times -r ITERS -x THREADS -I -s)")
    p.add_argument("--json", metavar="FILE", help="write the records (a JSON list of benchmark records)")
    p.add_argument("--csv", metavar="FILE", help="write the records as CSV (nested fields flattened)")
    p.add_argument("--markdown", metavar="FILE", help="write the table as Markdown")
    p.add_argument("--plot", metavar="FILE", help="write a PNG of latency vs accuracy with the Pareto front")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run)
