"""`--device adb://SERIAL`: measure TFLite and ORT-mobile artifacts on an Android phone with the native tools.

A phone has no Python for the worker, so this device measures with the runtimes' own benchmark binaries,
which the user points at (builds for the phone's ABI): TFLite's `benchmark_model` (`--benchmark-model
PATH`, or benchmark_model = PATH in the devices file) for .tflite artifacts, ONNX Runtime's
`onnxruntime_perf_test` (`--perf-test PATH`, or perf_test = PATH) for .ort artifacts (backend ort-mobile).
It pushes the model and the tool it needs into a fresh folder under /data/local/tmp, checks the model's
sha256 there, runs the tool through `adb -s SERIAL shell` with the bench settings mapped onto its flags,
parses its output (benchmark_model.py, perf_test.py) into the same record, and removes the folder in every
case. Artifacts of other backends are refused, one line each, naming what each tool takes. What the record
cannot have from a tool is null and said so (benchmark_model: p90/p99; onnxruntime_perf_test: std);
accuracy/agreement are null (both tools run generated inputs); memory is the tool's own figure, marked
approximate (`memory_approximate`, `peak_rss_method`).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgekit.bench import benchmark_model, perf_test
from edgekit.bench import records as rec
from edgekit.bench.devices import Device, WorkerChannel
from edgekit.bench.records import BenchConfig, BenchResult
from edgekit.errors import EdgekitError

DEFAULT_WORKDIR = "/data/local/tmp"
_ENV_SCRIPT = ("echo model=$(getprop ro.product.model); echo manufacturer=$(getprop ro.product.manufacturer); "
               "echo release=$(getprop ro.build.version.release); echo sdk=$(getprop ro.build.version.sdk); "
               "echo abi=$(getprop ro.product.cpu.abi); echo soc=$(getprop ro.soc.model); "
               "echo cores=$(nproc 2>/dev/null || grep -c ^processor /proc/cpuinfo); "
               "echo mem_kb=$(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d ' ' -f 2); "
               "echo hardware=$(grep -m1 -E '^(Hardware|model name)' /proc/cpuinfo | cut -d: -f2-)")
_NO_SPACE = ("No space left on device", "ENOSPC")
#: what each on-phone tool measures: model file suffix -> (tool attribute, tool name, option that gives it)
_TOOLS = {".tflite": ("benchmark_model", "TFLite's benchmark_model", "--benchmark-model PATH"),
          ".ort": ("perf_test", "ONNX Runtime's onnxruntime_perf_test", "--perf-test PATH")}
_TAKES = ("adb devices measure .tflite models with benchmark_model (--benchmark-model; export with --backend "
          "tflite) and .ort models with onnxruntime_perf_test (--perf-test; export with --target "
          "android-ort-mobile)")


class AdbDevice(Device):
    """A phone behind adb, measured with benchmark_model (.tflite) or onnxruntime_perf_test (.ort). Nothing is
    contacted until `run_tools` runs."""

    kind = "adb"
    measuring = "runtime-tools"

    def __init__(self, address: str = "", *, serial: str | None = None, benchmark_model: str | None = None,
                 perf_test: str | None = None, target: str | None = None, workdir: str | None = None,
                 adb: str | None = None, timeout: float | str | None = None, name: str | None = None) -> None:
        super().__init__(address)
        self.serial = (serial or address.removeprefix("//")).strip()
        if not self.serial or any(c.isspace() for c in self.serial):
            raise EdgekitError(f"device kind 'adb' needs a serial: --device adb://SERIAL (see `adb devices`); "
                               f"got '{address}'")
        self.benchmark_model = self._binary(benchmark_model, "benchmark_model")
        self.perf_test = self._binary(perf_test, "onnxruntime_perf_test")
        if self.benchmark_model is None and self.perf_test is None:
            raise EdgekitError("device kind 'adb' runs the runtime's own benchmark tool on the phone and needs its "
                               "binary, built for the phone's ABI: --benchmark-model PATH (TFLite's "
                               "benchmark_model, e.g. android_aarch64_benchmark_model, for .tflite artifacts) or "
                               "--perf-test PATH (ONNX Runtime's onnxruntime_perf_test, for .ort artifacts), or "
                               "benchmark_model / perf_test for the device in the devices file")
        self.target = target
        self.workdir = (workdir or DEFAULT_WORKDIR).rstrip("/")
        self.adb = adb or "adb"
        self.timeout = float(timeout) if timeout else 60.0
        self._name = name
        self.remote_dir: str | None = None
        self._pushed_tools: dict[str, str] = {}

    @staticmethod
    def _binary(path: str | Path | None, label: str) -> Path | None:
        if not path:
            return None
        binary = Path(path).expanduser()
        if not binary.is_file():
            raise EdgekitError(f"{label} binary {binary} not found")
        return binary

    @property
    def name(self) -> str:
        return self._name or f"adb://{self.serial}"

    # -- adb --------------------------------------------------------------------------------------------
    def adb_argv(self, *args: str) -> list[str]:
        exe = shutil.which(self.adb)
        if exe is None:
            raise EdgekitError(f"'{self.adb}' not found; install Android platform-tools (Debian: apt install adb) "
                               "or set adb = PATH for the device in the devices file")
        return [exe, "-s", self.serial, *args]

    def call(self, *args: str, doing: str, timeout: float | None = None) -> str:
        """Run one adb command; its stdout, or EdgekitError naming the device, what was done and why."""
        try:
            proc = subprocess.run(self.adb_argv(*args), capture_output=True, timeout=timeout or self.timeout)
        except subprocess.TimeoutExpired:
            raise EdgekitError(f"{self.name}: {doing} did not finish within {timeout or self.timeout:.0f} s") from None
        out = proc.stdout.decode(errors="replace")
        err = proc.stderr.decode(errors="replace")
        text = (err + "\n" + out).strip()
        if any(s in text for s in _NO_SPACE):
            raise EdgekitError(f"{self.name} is out of disk space in {self.workdir} while {doing}")
        if proc.returncode != 0:
            last = text.splitlines()[-1] if text else "no message"
            if ("not found" in text and "device" in text) or "unauthorized" in text or "offline" in text:
                raise EdgekitError(f"{self.name}: {last}; check `adb devices` (is the phone connected, authorized "
                                   "for USB debugging, and is this its serial?)")
            raise EdgekitError(f"{self.name}: {doing} failed (exit status {proc.returncode}): {last}")
        return out

    def shell(self, command: str, *, doing: str, timeout: float | None = None) -> str:
        return self.call("shell", command, doing=doing, timeout=timeout)

    # -- the Device interface: files only; workers are not used on a phone ------------------------------
    def open_worker(self) -> WorkerChannel:
        raise EdgekitError(f"{self.name} measures with benchmark_model / onnxruntime_perf_test, not the Python "
                           "worker; use `edgekit bench` or AdbDevice.bench")

    def _dir(self) -> str:
        if self.remote_dir is None:
            remote = f"{self.workdir}/edgekit-bench-{uuid.uuid4().hex[:12]}"
            self.shell(f"mkdir -p {shlex.quote(remote)}", doing="making a working folder")
            self.remote_dir = remote
        return self.remote_dir

    def stage(self, local: Path) -> str:
        local = Path(local)
        remote = f"{self._dir()}/{local.name}"
        self.call("push", str(local), remote, doing=f"pushing {local.name}", timeout=self.timeout + 600)
        return remote

    def scratch(self, name: str) -> str:
        return f"{self._dir()}/{name}"

    def fetch(self, remote: str, local_dir: Path) -> Path:
        dest = Path(local_dir) / Path(remote).name
        self.call("pull", remote, str(dest), doing=f"pulling {Path(remote).name}")
        return dest

    def close(self) -> None:
        if self.remote_dir is not None:
            remote, self.remote_dir = self.remote_dir, None
            self._pushed_tools = {}
            try:
                self.shell(f"rm -rf {shlex.quote(remote)}", doing="removing the working folder")
            except EdgekitError as exc:
                import sys

                print(f"edgekit: warning: {exc}; remove {remote} on {self.name} by hand", file=sys.stderr)

    # -- measuring --------------------------------------------------------------------------------------
    def check_sha256(self, remote: str, expected: str) -> None:
        out = self.shell(f"sha256sum {shlex.quote(remote)}", doing="hashing the pushed model")
        got = out.split()[0] if out.split() else ""
        if len(got) != 64:
            raise EdgekitError(f"{self.name}: cannot check the pushed model (sha256sum answered {out.strip()[:60]!r})")
        if got != expected:
            raise EdgekitError(f"{self.name}: '{Path(remote).name}' arrived with sha256 {got[:12]}…, expected "
                               f"{expected[:12]}… (the transfer corrupted it); it was not measured")

    def environment(self) -> dict[str, Any]:
        """What the records say about the phone: read on the phone with getprop and /proc."""
        fields = dict(line.split("=", 1) for line in self.shell(_ENV_SCRIPT, doing="reading the phone's "
                      "properties").splitlines() if "=" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        cores = fields.get("cores", "")
        mem = fields.get("mem_kb", "")
        model = " ".join(p for p in (fields.get("manufacturer"), fields.get("model")) if p) or self.serial
        return {"host": model, "serial": self.serial,
                "cpu_model": fields.get("soc") or fields.get("hardware") or fields.get("abi") or "unknown",
                "cores": int(cores) if cores.isdigit() else None, "physical_cores": None,
                "os": f"Android {fields.get('release', '?')} (SDK {fields.get('sdk', '?')})",
                "arch": fields.get("abi"), "memory_mb": round(int(mem) / 1024, 1) if mem.isdigit() else None}

    def command(self, graph: str, tool: str, config: Any) -> str:
        """benchmark_model's command line for the bench settings (same warm-up/run rules: at least N runs
        and S seconds, at most max_seconds)."""
        flags = {"graph": graph, "num_threads": config.threads or -1, "warmup_runs": config.warmup,
                 "warmup_min_secs": config.warmup_seconds, "num_runs": config.iters,
                 "min_secs": config.min_seconds, "max_secs": config.max_seconds}
        return " ".join([shlex.quote(tool), *(f"--{k}={shlex.quote(str(v))}" for k, v in flags.items())])

    def perf_test_command(self, model: str, tool: str, config: Any) -> str:
        """onnxruntime_perf_test's command line for the bench settings: the CPU provider, a fixed count of
        --iters runs (-m times -r N; the tool has no "at least N runs and S seconds" mode, and always runs one
        warm-up inference first), --threads intra-op threads (-x; 0 = ORT's default), generated inputs (-I;
        free dimensions such as the batch are 1) and the latency statistics (-s)."""
        argv = [tool, "-e", "cpu", "-m", "times", "-r", str(max(1, int(config.iters))), "-x",
                str(max(0, int(config.threads or 0))), "-I", "-s", model]
        return " ".join(shlex.quote(a) for a in argv)

    def _tool(self, attr: str) -> str:
        """The tool's path on the phone, pushed (and made executable) the first time an artifact needs it."""
        if attr not in self._pushed_tools:
            local = getattr(self, attr)
            remote = self.stage(local)
            self.shell(f"chmod 755 {shlex.quote(remote)}", doing=f"making {local.name} executable")
            self._pushed_tools[attr] = remote
        return self._pushed_tools[attr]

    def run_tools(self, artifacts: Sequence[str | Path], config: BenchConfig | None, *, eval_data: Any = None,
                  log: Callable[[str], None] | None = None) -> BenchResult:
        """Measure each artifact with its tool (.tflite: benchmark_model, .ort: onnxruntime_perf_test); one
        record per artifact (its own batch). No outputs come back, so no reference is built."""
        log = log or (lambda _m: None)
        config = config or BenchConfig()
        if not artifacts:
            raise EdgekitError("no artifacts to benchmark: name at least one artifact folder")
        state = self.call("get-state", doing="looking for the phone").strip()
        if state != "device":
            raise EdgekitError(f"{self.name} is '{state}', not ready; check `adb devices`")
        records: list[dict[str, Any]] = []
        failures: list[tuple[str, str]] = []
        try:
            env = self.environment()
            for path in artifacts:
                record = self._one(Path(path), env, config, log)
                records.append(record)
                if record["status"] == "error":
                    failures.append((str(path), record["error"]))
        finally:
            self.close()
        if eval_data:
            log(f"bench: {self.name}: --eval ignored: the on-phone tools run generated inputs, accuracy is not "
                "measured")
        return BenchResult(records, failures, config, self.name)

    def _one(self, path: Path, env: dict[str, Any], config: Any, log: Callable[[str], None]):
        from edgekit import __version__
        from edgekit.artifact import load_artifact, now_iso

        r = rec.empty_record()
        r.update(artifact=str(path), name=path.name or str(path), device={"kind": self.kind, "name": self.name, **env},
                 threads=config.threads, settings=config.settings(), edgekit_version=__version__,
                 timestamp=now_iso())
        try:
            art = load_artifact(path)
            m = art.manifest
            r.update(target=m.get("target"), backend=m.get("backend"), precision=m.get("precision"),
                     model=(m.get("model") or {}).get("source"))
            main = str(m["model_file"])
            suffix = Path(main).suffix.lower()
            if suffix not in _TOOLS:
                raise EdgekitError(f"{path} is a '{m.get('backend')}' artifact ({main}); {_TAKES}")
            attr, tool_name, option = _TOOLS[suffix]
            if getattr(self, attr) is None:
                raise EdgekitError(f"{path} is a {suffix} model, measured on {self.name} with {tool_name}: pass "
                                   f"{option} (a build for the phone's ABI) or set {attr} for the device in the "
                                   "devices file")
            r["model_bytes"] = int(m["files"][main]["bytes"])
            r["artifact_bytes"] = int(sum(f["bytes"] for f in m["files"].values()))
            tool = self._tool(attr)
            remote = self.stage(art.model_path)
            self.check_sha256(remote, m["files"][main]["sha256"])
            timeout = config.max_seconds * 2 + config.warmup_seconds + 300
            if attr == "benchmark_model":
                out = self.shell(self.command(remote, tool, config), doing="running benchmark_model", timeout=timeout)
                r.update(self._tflite_fields(benchmark_model.parse(out), m))
            else:
                out = self.shell(self.perf_test_command(remote, tool, config), doing="running onnxruntime_perf_test",
                                 timeout=timeout)
                r.update(self._ort_fields(perf_test.parse(out), m))
            r.update(self._where(tool_name, env))
        except EdgekitError as exc:
            log(f"bench: {path}: error: {exc}")
            return dict(r, status="error", error=str(exc))
        return r

    def _where(self, tool_name: str, env: dict[str, Any]) -> dict[str, Any]:
        """The provenance fields: the phone's own runtime ran it, on the phone's CPU, on the tool's inputs."""
        from edgekit.bench.provenance import arch_label, device_class

        arch = env.get("arch") or env.get("abi")
        return {"executed_on": f"{tool_name} on the phone's CPU ({arch_label(arch)}, Android)", "stand_in_for": None,
                "measured_on": {"host": self.name, "device": self.name, "arch": arch, "cpu_model": env.get("cpu_model"),
                                "device_class": device_class(arch or "arm64", None)},
                "eval_data": {"source": f"inputs {tool_name} generates (no outputs returned)", "samples": 0,
                              "labels": False, "calibration_data": False}}

    def _tflite_fields(self, parsed: benchmark_model.BenchmarkModelOutput, m: dict[str, Any]) -> dict[str, Any]:
        shape = (m.get("model") or {}).get("input_shape") or [1]
        batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else 1
        lat = parsed.latency_ms()
        peak, method = parsed.memory_mb()
        assert self.benchmark_model is not None
        return {
            "status": "ok", "error": None, "batch": batch, "runtime": "tflite benchmark_model",
            "runtime_version": None, "runtime_versions": {"benchmark_model": self.benchmark_model.name},
            "warmup": parsed.warmup.count if parsed.warmup else 0, "iters": parsed.run.count,
            "latency_ms": lat, "latency_extra_ms": parsed.extra_percentiles_ms(),
            "latency_note": "from benchmark_model's run statistics; p90/p99 are not reported by the tool",
            "throughput_per_s": batch * 1e3 / lat["mean"] if lat["mean"] else None,
            "cold_start_ms": (parsed.init_us + parsed.first_inference_us) / 1e3, "load_ms": parsed.init_us / 1e3,
            "first_inference_ms": parsed.first_inference_us / 1e3, "peak_rss_mb": peak,
            "peak_rss_method": method, "memory_approximate": True,
            "accuracy": None, "agreement": None, "sqnr_db": None,
            "eval": {"reference": "not measured: benchmark_model runs random inputs and returns no outputs"},
        }

    def _ort_fields(self, parsed: perf_test.PerfTestOutput, m: dict[str, Any]) -> dict[str, Any]:
        # -I generates inputs with free dimensions (the exported batch axis) set to 1
        inputs = m.get("inputs") or [{}]
        first = (inputs[0].get("shape") or [1])[0] if inputs else 1
        batch = first if isinstance(first, int) and first > 0 else 1
        lat = parsed.latency_ms()
        peak, method = parsed.memory_mb()
        load, first_ms = parsed.session_creation_ms, parsed.first_inference_ms
        note = ("from onnxruntime_perf_test's -s statistics (-m times: a fixed count of runs after one warm-up "
                "inference); std is not reported by the tool")
        if not parsed.stats_ms:
            note = "only the mean: this onnxruntime_perf_test printed no -s statistics"
        assert self.perf_test is not None
        return {
            "status": "ok", "error": None, "batch": batch, "runtime": "onnxruntime onnxruntime_perf_test",
            "runtime_version": None, "runtime_versions": {"onnxruntime_perf_test": self.perf_test.name},
            "warmup": 1, "iters": parsed.requests,
            "latency_ms": lat, "latency_extra_ms": parsed.extra_percentiles_ms(), "latency_note": note,
            "throughput_per_s": batch * 1e3 / lat["mean"] if lat["mean"] else None,
            "cold_start_ms": load + first_ms if load is not None and first_ms is not None else None,
            "load_ms": load, "first_inference_ms": first_ms, "peak_rss_mb": peak,
            "peak_rss_method": method, "memory_approximate": True, "cpu_usage_percent": parsed.cpu_percent,
            "accuracy": None, "agreement": None, "sqnr_db": None,
            "eval": {"reference": "not measured: onnxruntime_perf_test runs generated inputs (-I) and returns no "
                                  "outputs"},
        }
