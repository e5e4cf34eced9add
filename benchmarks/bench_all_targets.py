"""Export the digits student to every target, backend and precision available here, benchmark all of them
against torch eager FP32 in one interleaved run, and write the results.

    python benchmarks/bench_all_targets.py [--out benchmarks/results] [--batch 1,8] [--min-seconds 1]

Writes, under --out: digits_all_targets.json (the records), .csv, .png (latency vs accuracy, Pareto front)
and .md (environment, settings, the table with speed-ups over torch eager, what was skipped and why).
A backend whose runtime or module is missing, or an export that fails here (e.g. a TensorRT engine without
a GPU), is listed as skipped with the reason instead of stopping the run. Takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgekit.bench import report
from edgekit.bench.harness import run_bench
from edgekit.bench.jobs import parse_batches
from edgekit.bench.records import BenchConfig
from edgekit.errors import EdgekitError

MODEL = "zoo:digits-student"
STEM = "digits_all_targets"


def log(msg: str) -> None:
    print(f"bench_all_targets: {msg}", file=sys.stderr, flush=True)


def _same_files_key(tgt, precision: str) -> str:
    """Targets that give a backend the same options, layout and opsets get byte-identical artifacts, which
    measure the same on this host: each such artifact is made and measured once."""
    return json.dumps([tgt.backend, precision, tgt.backend_options, tgt.input_layout, tgt.opset_min,
                       tgt.opset_max], sort_keys=True, default=str)


def available_exports() -> tuple[list[tuple[Any, str]], list[dict[str, str]]]:
    """(target-as-run-by-backend, precision) pairs to export, and the skipped ones with a reason."""
    from edgekit.backends import registry
    from edgekit.targets import list_targets

    todo, skipped = [], []
    seen: dict[str, str] = {}
    for target in list_targets():
        for backend in target.backends:
            tgt = target.with_backend(backend)
            missing = registry.missing_requirement(backend)
            module = registry.get_spec(backend).exporter.split(":")[0]
            reason = None
            if missing is not None:
                reason = f"{missing.package} not installed (pip install 'edgekit[{missing.extra}]')"
            elif importlib.util.find_spec(module) is None:
                reason = f"backend module {module} is not in this checkout yet"
            for precision in tgt.precisions:
                key = _same_files_key(tgt, precision)
                if reason is None and key in seen:
                    skipped.append({"target": target.name, "backend": backend, "precision": precision,
                                    "reason": f"same artifact as {seen[key]} (same backend options): measured once"})
                elif reason is None:
                    seen[key] = f"{target.name} {backend} {precision}"
                    todo.append((tgt, precision))
                else:
                    skipped.append({"target": target.name, "backend": backend, "precision": precision,
                                    "reason": reason})
    return todo, skipped


def export_all(out: Path) -> tuple[list[Path], list[dict[str, str]]]:
    from edgekit.export import ExportPipeline

    todo, skipped = available_exports()
    paths = []
    with ExportPipeline(MODEL, log=log) as pipeline:
        for tgt, precision in todo:
            dest = out / f"{tgt.name}-{tgt.backend}-{precision}"
            try:
                paths.append(pipeline.export(tgt, precision, out=dest, force=True).path)
            except EdgekitError as exc:
                log(f"skipped {tgt.name} {tgt.backend} {precision}: {exc}")
                skipped.append({"target": tgt.name, "backend": tgt.backend, "precision": precision,
                                "reason": str(exc)})
    return paths, skipped


def summary(result, skipped: list[dict[str, str]], seconds: float, load: tuple[float, ...]) -> str:
    recs = report.ok_records(result.records)
    lines = [f"# Digits student on every available target ({MODEL})", ""]
    if recs:
        d, s = recs[0]["device"], recs[0]["settings"]
        versions = ", ".join(f"{k} {v}" for k, v in (recs[0].get("runtime_versions") or {}).items())
        lines += [
            f"Measured on {d['host']}: {d['cpu_model']}, {d['cores']} logical cores, {d['os']}; {versions}.",
            "",
            f"Each artifact in its own process, {recs[0]['threads']} thread(s); warm-up >= "
            f"{s['warmup_min_iters']} run and >= {s['warmup_min_seconds']} s, then >= {s['min_iters']} runs and "
            f">= {s['min_seconds']} s per artifact and batch size, in {s['rounds']} interleaved rounds "
            f"(whole run {seconds:.0f} s; 1-minute load average {load[0]:.1f} at the start, "
            f"{load[1]:.1f} at the end). Accuracy on {recs[0]['eval']['data']} ({recs[0]['eval']['samples']} "
            f"samples); agreement (top-1) and SQNR against {recs[0]['eval']['reference']}. Speed-up = torch "
            "eager FP32 p50 latency / the artifact's p50 latency at the same batch size. Peak MB = peak RSS while "
            "loading and running minus the RSS before loading (runtime already imported).",
            "",
        ]
    lines += [report.markdown(result.records), ""]
    standins = sorted({(r["backend"], r["runtime_version"]) for r in recs if " " in str(r["runtime_version"])})
    best = {}
    for r in recs:
        if " " in str(r["runtime_version"]):  # a stand-in's speed says nothing about the device
            continue
        sp = report.speedup(result.records, r)
        if sp is not None and (r["batch"] not in best or sp > best[r["batch"]][0]):
            best[r["batch"]] = (sp, r)
    for b, (sp, r) in sorted(best.items()):
        lines.append(f"- batch {b}: lowest p50 among runtimes that ran for real: {r['name']} ({r['backend']} "
                     f"{r['precision']}), {sp:.1f}x torch eager, accuracy {r['accuracy']:.4f}, agreement "
                     f"{r['agreement']:.4f}.")
    if standins:
        lines += ["", "Not the device's own runtime here (as the runner reports what it executed): speed of these "
                  "rows is the stand-in's, their accuracy is the artifact's.", ""]
        lines += [f"- {backend}: {runtime}" for backend, runtime in standins]
    if skipped:
        lines += ["", "Skipped here:", ""] + [f"- {s['target']} / {s['backend']} / {s['precision']}: {s['reason']}"
                                              for s in skipped]
    if result.failures:
        lines += ["", "Failed to measure:", ""] + [f"- {a}: {e}" for a, e in result.failures]
    lines += ["", "Timings on a shared machine are noisy (p99 spikes of ~4 ms are the scheduler giving the core to "
              "other processes): compare ratios within one run, not across runs."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(Path(__file__).parent / "results"), help="results folder")
    p.add_argument("--artifacts", help="keep the exported artifacts in this folder (default: a temporary one)")
    p.add_argument("--batch", default="1,8", help="batch sizes (default 1,8)")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--min-seconds", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    config = BenchConfig(iters=args.iters, min_seconds=args.min_seconds, rounds=args.rounds,
                         batches=parse_batches(args.batch), threads=args.threads)
    out = Path(args.out)
    started = time.monotonic()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    with tempfile.TemporaryDirectory(prefix="edgekit-all-targets-") as tmp:
        art_dir = Path(args.artifacts) if args.artifacts else Path(tmp)
        paths, skipped = export_all(art_dir)
        log(f"benchmarking {len(paths)} artifacts interleaved")
        result = run_bench(paths, config, eval_data="zoo:digits:test", progress=True, log=log)
        if not args.artifacts:  # the temporary folder is gone: keep the artifacts' names, not dead paths
            for rec in result.records:
                rec["artifact"] = Path(rec["artifact"]).name
    seconds = time.monotonic() - started
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(result.records, out / f"{STEM}.json")
    report.write_csv(result.records, out / f"{STEM}.csv")
    report.write_plot(result.records, out / f"{STEM}.png")
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    (out / f"{STEM}.md").write_text(summary(result, skipped, seconds, (load_start, load_end)))
    print(report.table(result.records))
    log(f"wrote {out}/{STEM}.{{json,csv,png,md}} in {seconds:.0f} s")
    return 0 if result.ok else 2


if __name__ == "__main__":
    sys.exit(main())
