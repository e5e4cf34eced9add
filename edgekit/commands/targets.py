"""`edgekit targets`: the target profiles, their backend and precisions, and what this machine can do for each:
export (the exporter's packages are installed) apart from run or compile (the device runtime, compiler or GPU
is here). A TensorRT or Ascend target can be exported everywhere but runs only where its runtime is."""

from __future__ import annotations

import argparse
import json
import platform


def _arch(name: str) -> str:
    n = name.lower()
    return {"x86_64": "x86-64", "amd64": "x86-64", "aarch64": "arm64"}.get(n, n)


def run(args: argparse.Namespace) -> int:
    from edgekit.backends import registry
    from edgekit.commands import log
    from edgekit.targets import list_targets

    def skip(path, exc) -> None:
        log(f"targets: skipped {path}: {exc}")

    rows = []
    for t in list_targets(on_skip=skip):
        missing = registry.missing_requirement(t.backend)
        runs, why = registry.run_here(t.backend)
        if runs and _arch(t.cpu_arch) not in ("host", _arch(platform.machine())):
            why = f"on this {_arch(platform.machine())} CPU, not the device's {_arch(t.cpu_arch)}"
        rows.append({
            "name": t.name, "backend": t.backend, "device_class": t.device_class, "precisions": list(t.precisions),
            "default_precision": t.default_precision, "installed": missing is None,
            "missing": None if missing is None else f"pip install 'edgekit[{missing.extra}]'",
            "export_here": missing is None, "run_here": runs, "run_here_reason": why,
            "device": t.device, "source": t.source, "other_backends": list(t.alternatives),
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    headers = ("target", "backend", "class", "precisions (default*)", "export here", "run/compile here")
    table = [
        (r["name"], r["backend"] + "".join(f" (+{b})" for b in r["other_backends"]), r["device_class"],
         ", ".join(p + ("*" if p == r["default_precision"] else "") for p in r["precisions"]),
         "yes" if r["export_here"] else f"no: {r['missing']}",
         ("yes" + (f", {r['run_here_reason']}" if r["run_here_reason"].startswith("on this") else ""))
         if r["run_here"] else f"no: {r['run_here_reason']}")
        for r in rows
    ]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "targets", help="list targets, their backend and precisions, and whether they export / run here",
        description="List the target profiles: the built-in ones and those in the folders named by "
                    "$EDGEKIT_TARGET_PATH (colon-separated; a user file shadows a built-in of the same name).",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)
