"""Peak resident memory of an int8 (and fp32) export of a ~3.5 M-parameter 224x224 model.

Edge users often export on small machines, so the export's peak RSS is a figure worth watching. The model is
a MobileNetV2-style network (inverted residuals, width 1.0, 1000 classes: 3.5 M parameters) with seeded
random weights; calibration uses 300 random 224x224 crops of scikit-learn's `load_sample_images()` photos,
normalised with ImageNet's mean and std. Each export runs in its own process (a fresh interpreter), and the
kernel's high-water mark (VmHWM) of that process is its peak; the manifest's
`export_resources.peak_rss_mb` is read back as well.

Writes benchmarks/results/export_memory.json and .md.

Usage: python benchmarks/export_memory.py [--precisions fp32,int8] [--samples 300] [--targets T1,T2]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def mobilenet_v2_like(num_classes: int = 1000, seed: int = 0):
    """MobileNetV2 (width 1.0): 3x3 stem, 17 inverted-residual blocks, 1x1 head to 1280, linear classifier."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    def cbr(cin: int, cout: int, k: int, s: int, groups: int = 1, act: bool = True) -> list[nn.Module]:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
                                   nn.BatchNorm2d(cout)]
        return [*layers, nn.ReLU6(inplace=True)] if act else layers

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = cin * expand
            layers = cbr(cin, hidden, 1, 1) if expand != 1 else []
            layers += cbr(hidden, hidden, 3, stride, groups=hidden) + cbr(hidden, cout, 1, 1, act=False)
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            y = self.body(x)
            return x + y if self.residual else y

    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]
    layers: list[nn.Module] = cbr(3, 32, 3, 2)
    cin = 32
    for t, c, n, s in settings:
        for i in range(n):
            layers.append(Block(cin, c, s if i == 0 else 1, t))
            cin = c
    layers += cbr(cin, 1280, 1, 1)
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, num_classes))
    return model.eval()


def calibration_crops(n: int, size: int = 224, seed: int = 0):
    """n random size x size crops of the two scikit-learn sample photos, ImageNet-normalised, NCHW float32."""
    import numpy as np
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = load_sample_images().images
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
    out = np.empty((n, 3, size, size), dtype=np.float32)
    for i in range(n):
        img = photos[i % len(photos)]
        top = rng.integers(0, img.shape[0] - size + 1)
        left = rng.integers(0, img.shape[1] - size + 1)
        crop = img[top : top + size, left : left + size].astype(np.float32) / 255.0
        out[i] = ((crop - mean) / std).transpose(2, 0, 1)
    return out


def _peak_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def child(precision: str, target: str, model_path: str, calib: str, out: str) -> None:
    """One export in this (fresh) process; prints a JSON line with the peak RSS."""
    import torch

    torch.set_num_threads(1)
    from edgekit.export import export_model

    t0 = time.perf_counter()
    art = export_model(model_path, target, precision=precision, calib=calib, input_shape=(1, 3, 224, 224),
                         out=out)
    seconds = time.perf_counter() - t0
    res = art.manifest.get("export_resources", {})
    print(json.dumps({"precision": precision, "peak_rss_mb": _peak_kb() / 1024, "seconds": seconds,
                      "manifest_peak_rss_mb": res.get("peak_rss_mb"),
                      "agreement": art.manifest["verification"].get("agreement")}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precisions", default="fp32,int8")
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--targets", default="x86-server-cpu,jetson-orin-nano,pixel-8",
                   help="targets exported to, comma-separated (each precision on each target)")
    p.add_argument("--child", nargs=5, metavar=("PRECISION", "TARGET", "MODEL", "CALIB", "OUT"),
                   help=argparse.SUPPRESS)
    p.add_argument("--no-write", action="store_true", help="print only; do not write benchmarks/results")
    args = p.parse_args()
    if args.child:
        child(*args.child)
        return 0
    import numpy as np
    import torch

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgekit-export-memory-") as tmp:
        model = mobilenet_v2_like()
        params = sum(p.numel() for p in model.parameters())
        model_path = Path(tmp) / "mnv2.pt2"
        torch.export.save(torch.export.export(model, (torch.zeros(1, 3, 224, 224),)), str(model_path))
        calib = Path(tmp) / "calib.npz"
        np.savez(calib, x=calibration_crops(args.samples))
        for target, precision in [(t, p) for t in args.targets.split(",") for p in args.precisions.split(",")]:
            cmd = [sys.executable, __file__, "--child", precision, target, str(model_path), str(calib),
                   str(Path(tmp) / f"art-{target}-{precision}")]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            row = {"target": target, **json.loads(proc.stdout.strip().splitlines()[-1])}
            print(json.dumps(row))
            rows.append(row)
    result = {"model": "MobileNetV2-style, seeded random weights", "parameters": params,
              "input_shape": [1, 3, 224, 224], "calibration": f"{args.samples} crops of load_sample_images()",
              "machine": platform.machine(), "rows": rows}
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "export_memory.json").write_text(json.dumps(result, indent=2) + "\n")
        lines = [f"# Export peak RSS: {params / 1e6:.2f} M-parameter MobileNetV2-style, 1x3x224x224, "
                 f"{args.samples} calibration crops", "",
                 "| target | precision | peak RSS MB (VmHWM) | manifest peak_rss_mb | seconds | agreement |",
                 "|---|---|---:|---:|---:|---:|"]
        for r in rows:
            man = r["manifest_peak_rss_mb"]
            man_text = "-" if man is None else f"{man:.0f}"
            lines.append(f"| {r['target']} | {r['precision']} | {r['peak_rss_mb']:.0f} | {man_text} | "
                         f"{r['seconds']:.1f} | {r['agreement']:.4f} |")
        (RESULTS / "export_memory.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
