"""`edgekit recommend`: which precision to ship on a target, from its profile and, when given, measurements."""

from __future__ import annotations

import argparse
import json


def run(args: argparse.Namespace) -> int:
    from edgekit.errors import EdgekitError
    from edgekit.recommend import format_text, load_results, recommend
    from edgekit.targets import load_target

    if args.max_accuracy_drop is not None and not 0.0 <= args.max_accuracy_drop <= 100.0:
        raise EdgekitError(f"--max-accuracy-drop is in percentage points, 0 to 100 (got {args.max_accuracy_drop:g})")
    target = load_target(args.target)
    records = load_results(args.results) if args.results else None
    rec = recommend(target, priority=args.priority, workload=args.workload,
                    max_accuracy_drop=None if args.max_accuracy_drop is None else args.max_accuracy_drop / 100.0,
                    results=records, source=args.results or "results",
                    allow_proxy=args.allow_proxy, min_cosine=args.min_cosine)
    if args.json:
        print(json.dumps(rec.to_dict(), indent=2))
    else:
        print("\n".join(format_text(rec)))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recommend", help="which precision (and training techniques) to ship on a target, and why",
        description="Walk the precision decision tree over the target profile's fields (device class, CPU "
                    "architecture, precisions) and print the path node by node. With --results (bench JSON), "
                    "judge the measured artifacts: each point of accuracy lost must buy at least a 2x speed-up "
                    "over FP32, a size reduction may cost at most 5 points of recall (accuracy when no recall is "
                    "recorded), and no more than --max-accuracy-drop points may be lost; the fastest (p50) that "
                    "passes wins, and every rejected one is listed with its rule.",
        epilog="Example: edgekit recommend --target raspberry-pi-5 --priority cost --results bench.json",
    )
    p.add_argument("--target", "-t", required=True, help="target name (see `edgekit targets`) or a .toml file")
    p.add_argument("--priority", choices=("latency", "cost"), default="latency",
                   help="what matters most (default: latency)")
    p.add_argument("--workload", choices=("online", "batch"),
                   help="how the model is fed, used under --priority cost (default: online for edge devices, "
                        "batch for servers)")
    p.add_argument("--max-accuracy-drop", type=float, metavar="PCT",
                   help="most accuracy points (percentage points) a candidate may lose against FP32")
    p.add_argument("--min-cosine", type=float, metavar="C",
                   help="embeddings/hidden states: reject artifacts whose mean cosine to FP32 is below C (e.g. 0.99)")
    p.add_argument("--results", metavar="FILE", help="bench JSON: a list of records, or {\"records\": [...]}")
    p.add_argument("--allow-proxy", action="store_true",
                   help="rank records not measured on a device of the target's class (e.g. a TensorRT artifact "
                        "run in ONNX Runtime on this CPU) under a loud warning; without it they are refused")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)
