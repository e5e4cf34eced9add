"""Several devices in one `edgekit bench` call: each device measures all artifacts, in its own thread.

Devices are independent machines, so they run in parallel (a remote board spends most of its time waiting
on its own CPU, not ours). A device that fails as a whole (unreachable, bad key, out of disk, ...) gives one
line and error records for its artifacts; the others are still measured and reported. Devices that share
this host (local beside an ssh loopback) compete for its cores: measure them apart for numbers to publish.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.bench import records as rec
from edgekit.bench.devices import Device
from edgekit.bench.harness import measure_on
from edgekit.errors import EdgekitError


@dataclass
class DeviceRun:
    """What one device gave: its BenchResult, or the one-line reason it could not measure at all."""

    device: Device
    result: Any = None  # BenchResult
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def failed_device_records(device: Device, artifacts: Sequence[str | Path], error: str) -> list[dict[str, Any]]:
    """One error record per artifact for a device that could not measure, so tables and JSON show it."""
    from edgekit.artifact import load_artifact

    out = []
    for path in artifacts:
        r = rec.empty_record()
        manifest: dict[str, Any] = {}
        with contextlib.suppress(EdgekitError):
            manifest = load_artifact(path, verify_files=False).manifest
        r.update(artifact=str(path), name=Path(path).name or str(path), target=manifest.get("target"),
                 backend=manifest.get("backend"), precision=manifest.get("precision"),
                 device={"kind": device.kind, "name": device.name}, status="error", error=error)
        out.append(r)
    return out


def target_notes(devices: Sequence[Device], artifacts: Sequence[str | Path]) -> list[str]:
    """Artifacts exported for another target than a device declares (a note, not an error)."""
    from edgekit.artifact import load_artifact

    notes = []
    for dev in devices:
        declared = getattr(dev, "target", None)
        if not declared:
            continue
        for path in artifacts:
            try:
                target = load_artifact(path, verify_files=False).manifest.get("target")
            except EdgekitError:
                continue
            if target and target != declared:
                notes.append(f"note: {Path(path).name} was exported for target '{target}'; device {dev.name} is "
                             f"declared as '{declared}'")
    return notes


def bench_devices(artifacts: Sequence[str | Path], config: Any, devices: Sequence[Device], *,
                  eval_data: Any = None, reference: str | Path | None = None, progress: bool = False,
                  log: Callable[[str], None] | None = None, trust_model_source: bool = False) -> list[DeviceRun]:
    """Measure the artifacts on every device, devices in parallel; one DeviceRun per device, in order."""
    log = log or (lambda _m: None)
    several = len(devices) > 1
    lock = threading.Lock()

    def run_one(device: Device) -> DeviceRun:
        def dev_log(msg: str) -> None:
            with lock:
                log(f"[{device.name}] {msg}" if several else msg)

        try:
            result = measure_on(device, artifacts, config, eval_data=eval_data, reference=reference,
                                progress=progress and not several, log=dev_log,
                                trust_model_source=trust_model_source)
            return DeviceRun(device, result=result)
        except EdgekitError as exc:
            message = str(exc)
            named = not several or device.name in message  # alone, the error is the call's and reads as before
            return DeviceRun(device, error=message if named else f"{device.name}: {message}")

    if not several:
        return [run_one(devices[0])]
    with ThreadPoolExecutor(max_workers=len(devices), thread_name_prefix="edgekit-device") as pool:
        return list(pool.map(run_one, devices))


def measure(artifacts: Sequence[str | Path], config: Any, devices: Sequence[Device], *, eval_data: Any = None,
            reference: str | Path | None = None, progress: bool = False, log: Callable[[str], None] | None = None,
            trust_model_source: bool = False) -> tuple[list[dict[str, Any]], list[DeviceRun]]:
    """`edgekit bench` on one or several devices, for the CLI and the Python API alike: the records of every
    device (error records for a device that failed as a whole, said in one line) and each device's run; an
    EdgekitError when a device is named twice or every device failed (nothing was measured)."""
    log = log or (lambda _m: None)
    if not artifacts:
        raise EdgekitError("no artifacts to benchmark: name at least one artifact folder")
    names = [d.name for d in devices]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise EdgekitError(f"device(s) given more than once: {', '.join(twice)}")
    for note in target_notes(devices, artifacts):
        log(f"bench: {note}")
    runs = bench_devices(artifacts, config, devices, eval_data=eval_data, reference=reference, progress=progress,
                         log=log, trust_model_source=trust_model_source)
    failed = [r for r in runs if not r.ok]
    if len(failed) == len(runs) == 1:
        raise EdgekitError(failed[0].error or "the device failed")
    for r in failed:
        log(f"bench: device {r.device.name}: error: {r.error}")
    if len(failed) == len(runs):
        raise EdgekitError(f"all {len(runs)} devices failed; nothing was measured")
    return all_records(runs, artifacts), runs


def all_records(runs: Sequence[DeviceRun], artifacts: Sequence[str | Path]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for run in runs:
        out += run.result.records if run.ok else failed_device_records(run.device, artifacts, run.error or "")
    return out
