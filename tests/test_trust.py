"""Trust boundaries: checkpoints, exported programs and artifacts received from others are data, never code.

Each crafted file carries a real payload (a pickle whose `__reduce__` creates a marker file, or a manifest
that names code to import); every test first shows the payload works where it is not guarded against, so a
test that passes proves the guard, not a broken payload.
"""

from __future__ import annotations

import contextlib
import io
import json
import zipfile
from pathlib import Path

import pytest
import torch

from edgekit.errors import EdgekitError


class Payload:
    """Unpickling this creates `marker`: stands for any code an attacker wants run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _one_line_refusal(r, marker: Path) -> None:
    assert r.rc == 2, (r.rc, r.err)
    assert len(r.err.strip().splitlines()) == 1, r.err
    assert "could run code" in r.err or "refused" in r.err, r.err
    assert not marker.exists(), "the payload ran"


@pytest.fixture(scope="module")
def real_pt2(tmp_path_factory) -> Path:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 10)).eval()
    path = tmp_path_factory.mktemp("pt2") / "real.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 8, 8),)), str(path))
    return path


def _rewrite_zip(src: Path, dst: Path, mutate) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, mutate(info.filename, zin.read(info.filename)))
    return dst


def crafted_pt2(real: Path, dst: Path, marker: Path, where: str) -> Path:
    """A real .pt2 with a payload in its sample inputs (torch retries them with weights_only=False) or in a
    weight declared as pickled (torch loads those with weights_only=False)."""
    def mutate(name: str, data: bytes) -> bytes:
        if where == "sample_inputs" and name.endswith("data/sample_inputs/model.pt"):
            return _torch_bytes((Payload(marker),))
        if where == "weight" and name.endswith("_weights_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True
            return json.dumps(config).encode()
        if where == "weight" and name.endswith("data/weights/weight_0"):
            return _torch_bytes(Payload(marker))
        return data
    return _rewrite_zip(real, dst, mutate)


# -- the payloads are real ----------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["sample_inputs", "weight"])
def test_crafted_pt2_runs_code_in_plain_torch_export_load(tmp_path, real_pt2, where):
    """Why the .pt2 check exists: torch 2.13's own loader runs the payload."""
    marker = tmp_path / "ran"
    evil = crafted_pt2(real_pt2, tmp_path / "evil.pt2", marker, where)
    with contextlib.suppress(Exception):  # the weight variant fails after the payload ran; that is the point
        torch.export.load(str(evil))
    assert marker.exists()


# -- checkpoints --------------------------------------------------------------------------------------------
def test_distill_resume_refuses_a_crafted_checkpoint(tmp_path, cli):
    from edgekit.train.distill.trainer import CHECKPOINT_VERSION

    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "ran"
    ckpt = out / "checkpoint.pt"
    ckpt.write_bytes(_torch_bytes({"version": CHECKPOINT_VERSION, "fingerprint": {}, "student": Payload(marker)}))
    r = cli("distill", "--epochs", 1, "--no-progress", "--resume", "--out", out)
    _one_line_refusal(r, marker)
    assert "checkpoint" in r.err and str(ckpt) in r.err
    torch.load(ckpt, weights_only=False)  # the same file, read as before: the payload is real
    assert marker.exists()


def test_student_weights_refuse_a_crafted_file(tmp_path, cli):
    marker = tmp_path / "ran"
    weights = tmp_path / "weights.pt"
    weights.write_bytes(_torch_bytes({"fc.weight": Payload(marker)}))
    r = cli("distill", "--epochs", 1, "--no-progress", "--student-weights", weights, "--out", tmp_path / "run")
    _one_line_refusal(r, marker)


def test_load_torch_file_reads_state_dicts(tmp_path):
    from edgekit.models.checkpoint import load_torch_file

    path = tmp_path / "sd.pt"
    torch.save({"w": torch.ones(2), "meta": {"epoch": 3, "history": [1.0, 2.0]}}, path)
    state = load_torch_file(path, "weights")
    assert state["meta"]["epoch"] == 3 and torch.equal(state["w"], torch.ones(2))
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(EdgekitError, match="not a readable torch file"):
        load_torch_file(tmp_path / "junk.pt", "weights")


# -- exported programs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["sample_inputs", "weight"])
def test_export_refuses_a_crafted_pt2(tmp_path, cli, real_pt2, where):
    marker = tmp_path / "ran"
    evil = crafted_pt2(real_pt2, tmp_path / "evil.pt2", marker, where)
    r = cli("export", evil, "--target", "x86-server-cpu", "--out", tmp_path / "art")
    _one_line_refusal(r, marker)
    assert not (tmp_path / "art").exists()


def test_distill_teacher_refuses_a_crafted_pt2(tmp_path, cli, real_pt2):
    marker = tmp_path / "ran"
    evil = crafted_pt2(real_pt2, tmp_path / "teacher.pt2", marker, "sample_inputs")
    r = cli("distill", "--teacher", evil, "--epochs", 1, "--no-progress", "--out", tmp_path / "run")
    _one_line_refusal(r, marker)


def test_real_pt2_still_loads_and_garbage_is_one_line(tmp_path, real_pt2):
    from edgekit.models.checkpoint import load_exported_program

    assert load_exported_program(real_pt2).module()(torch.randn(1, 3, 8, 8)).shape == (1, 10)
    garbage = tmp_path / "garbage.pt2"
    with zipfile.ZipFile(garbage, "w") as z:
        z.writestr("m/data/sample_inputs/model.pt", b"\x80\x04garbage")
        z.writestr("m/models/model.json", b"{}")
    with pytest.raises(EdgekitError) as info:
        load_exported_program(garbage)
    assert "\n" not in str(info.value)
    (tmp_path / "text.pt2").write_text("hello")
    with pytest.raises(EdgekitError, match=r"not a torch\.export archive"):
        load_exported_program(tmp_path / "text.pt2")


# -- bench never runs a manifest's code ---------------------------------------------------------------------
QUICK_BENCH = ["--iters", "5", "--min-seconds", "0.02", "--warmup-seconds", "0", "--rounds", "1", "--no-progress",
               "--eval-samples", "32"]


@pytest.fixture(scope="module")
def digits_fp32(tmp_path_factory) -> Path:
    from edgekit.export import ExportPipeline

    out = tmp_path_factory.mktemp("art") / "digits-fp32"
    with ExportPipeline("zoo:digits-student") as pipeline:
        return pipeline.export("x86-server-cpu", "fp32", out=out).path


def _with_source(art: Path, dst: Path, source: str) -> Path:
    """A copy of a real artifact whose manifest names `source` as its model (the manifest is not hashed)."""
    import shutil

    shutil.copytree(art, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["model"]["source"] = source
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def _helper(folder: Path, marker: Path) -> None:
    (folder / "helper.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "def make():\n"
        "    import torch\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10))\n")


def test_bench_runs_no_code_a_manifest_names(tmp_path, digits_fp32):
    """helper:make with helper.py beside the artifacts (in the working directory), sys:exit and os:abort:
    bench imports none of them, measures all three and exits 0 with the table, agreement empty, said once."""
    import subprocess
    import sys

    marker = tmp_path / "ran"
    _helper(tmp_path, marker)
    arts = [_with_source(digits_fp32, tmp_path / name, source)
            for name, source in (("a-helper", "helper:make"), ("a-exit", "sys:exit"), ("a-abort", "os:abort"))]
    proc = subprocess.run([sys.executable, "-m", "edgekit", "bench", *map(str, arts), *QUICK_BENCH,
                           "--json", str(tmp_path / "r.json")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists(), "bench imported helper.py"
    assert "a-helper" in proc.stdout and "agreement" in proc.stdout
    records = json.loads((tmp_path / "r.json").read_text())
    assert [r["status"] for r in records] == ["ok"] * 3
    assert all(r["agreement"] is None for r in records)
    assert "is code" in records[0]["eval"]["reference"]
    hints = [line for line in proc.stderr.splitlines() if "--trust-model-source" in line]
    assert len(hints) == 1 and "--reference" in hints[0], proc.stderr

    # the same helper, imported as the manifest asks: the marker appears (the payload is real)
    r2 = subprocess.run([sys.executable, "-c", "import helper"], cwd=tmp_path, timeout=60)
    assert r2.returncode == 0 and marker.exists()


def test_bench_reference_and_trust_flag(tmp_path, digits_fp32, cli, monkeypatch):
    """--reference MODEL gives agreement without touching the manifest's source; --trust-model-source
    imports it, and says so on stderr."""
    marker = tmp_path / "ran"
    _helper(tmp_path, marker)
    art = _with_source(digits_fp32, tmp_path / "a-helper", "helper:make")
    r = cli("bench", art, *QUICK_BENCH, "--reference", "zoo:digits-student", "--json", tmp_path / "r.json",
            cwd=tmp_path)
    assert r.rc == 0, r.err
    rec = json.loads((tmp_path / "r.json").read_text())[0]
    assert rec["agreement"] == 1.0 and rec["eval"]["reference"] == "reference model zoo:digits-student"
    assert not marker.exists()

    monkeypatch.syspath_prepend(str(tmp_path))
    r = cli("bench", art, *QUICK_BENCH, "--trust-model-source", "--json", tmp_path / "t.json", cwd=tmp_path)
    assert r.rc == 0, r.err
    assert marker.exists() and "--trust-model-source: importing 'helper:make'" in r.err
    rec = json.loads((tmp_path / "t.json").read_text())[0]
    assert rec["agreement"] is not None and "FP32 source model helper:make" in rec["eval"]["reference"]


# -- manifests: plain names inside the folder, model_file hashed, locally, over ssh and on the device --------
def _edit_manifest(art: Path, edit) -> Path:
    manifest = json.loads((art / "manifest.json").read_text())
    edit(manifest)
    (art / "manifest.json").write_text(json.dumps(manifest))
    return art


def _hash(path: Path) -> dict:
    import hashlib

    data = path.read_bytes()
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def crafted_artifacts(digits_fp32: Path, root: Path) -> dict[str, Path]:
    """Real artifacts, each with one trust violation whose hashes are right (only the path is wrong)."""
    import shutil

    root.mkdir(parents=True, exist_ok=True)
    secret = root / "secret.txt"
    secret.write_text("not part of any artifact\n")
    outside_model = root / "outside.onnx"
    shutil.copy(digits_fp32 / "model.onnx", outside_model)
    arts = {name: shutil.copytree(digits_fp32, root / name) for name in
            ("escaping-entry", "absolute-model", "unlisted-model", "symlink-out")}
    depth = "../" * len(arts["escaping-entry"].resolve().parts)
    _edit_manifest(arts["escaping-entry"], lambda m: m["files"].update({f"{depth}{secret.resolve()}"[1:]:
                                                                         _hash(secret)}))
    _edit_manifest(arts["absolute-model"], lambda m: (m["files"].update({str(outside_model): _hash(outside_model)}),
                                                      m.update(model_file=str(outside_model))))
    (arts["unlisted-model"] / "other.onnx").write_bytes(outside_model.read_bytes())
    _edit_manifest(arts["unlisted-model"], lambda m: m.update(model_file="other.onnx"))
    (arts["symlink-out"] / "model.onnx").unlink()
    (arts["symlink-out"] / "model.onnx").symlink_to(outside_model)
    return arts


def test_crafted_artifacts_are_refused_locally_with_one_line(tmp_path, digits_fp32, cli):
    from edgekit.artifact import load_artifact

    arts = crafted_artifacts(digits_fp32, tmp_path)
    expect = {"escaping-entry": "plain relative file name", "absolute-model": "plain relative file name",
              "unlisted-model": "must be one of the hashed files", "symlink-out": "outside the artifact folder"}
    for name, art in arts.items():
        with pytest.raises(EdgekitError, match=expect[name]) as info:
            load_artifact(art)
        assert len(str(info.value).splitlines()) == 1
    # bench measures the good artifact and refuses each crafted one by name, exit 2
    r = cli("bench", digits_fp32, *arts.values(), *QUICK_BENCH, "--json", tmp_path / "r.json")
    assert r.rc == 2 and "4 of 5 artifact(s) could not be measured" in r.err, r.err
    records = json.loads((tmp_path / "r.json").read_text())
    assert [rec["status"] for rec in records] == ["ok"] + ["error"] * 4
    for rec in records[1:]:
        assert expect[Path(rec["artifact"]).name] in rec["error"]


def test_ssh_stage_refuses_crafted_artifacts_before_sending(tmp_path, digits_fp32):
    """The ssh device runs the same checks before anything leaves this machine (no connection needed to
    show it: a run that reached the transfer would fail on the missing host instead)."""
    from edgekit.bench.ssh import SshDevice

    device = SshDevice("nobody@127.0.0.1:1")
    device.remote_dir = "/nonexistent/edgekit-bench.x"  # as if connected; any transfer would fail loudly
    sent: list[str] = []
    device._push = lambda files, *a, **k: sent.append([n for n, _, _ in files]) or {}
    for art in crafted_artifacts(digits_fp32, tmp_path).values():
        with pytest.raises(EdgekitError) as info:
            device.stage(art)
        assert len(str(info.value).splitlines()) == 1
    assert sent == []
    device.stage(digits_fp32)
    assert sent == [["manifest.json", "model.onnx"]]


def test_device_receiver_refuses_names_leaving_its_folder(tmp_path):
    """The receiver script ssh runs on the board: a name leaving dest is refused there, nothing written."""
    import subprocess
    import sys

    from edgekit.bench.ssh import RECEIVER

    dest = tmp_path / "dest"
    for name in ("../escaped.txt", "/tmp/abs.txt", "a/../../escaped.txt", "..\\escaped.txt", "ok/../x"):
        head = {"dest": str(dest), "files": [{"name": name, "bytes": 3}], "modules": []}
        proc = subprocess.run([sys.executable, "-c", RECEIVER], input=json.dumps(head).encode() + b"\nabc",
                              capture_output=True, timeout=60)
        reply = json.loads(proc.stdout.decode().strip().splitlines()[-1])
        assert reply["ok"] is False and "refused file name" in reply["error"], reply
    assert not (tmp_path / "escaped.txt").exists() and list(dest.iterdir()) == []
    head = {"dest": str(dest), "files": [{"name": "sub/fine.bin", "bytes": 3}], "modules": []}
    proc = subprocess.run([sys.executable, "-c", RECEIVER], input=json.dumps(head).encode() + b"\nabc",
                          capture_output=True, timeout=60)
    assert json.loads(proc.stdout.decode().strip().splitlines()[-1])["ok"] is True
    assert (dest / "sub" / "fine.bin").read_bytes() == b"abc"


def test_device_worker_refuses_crafted_artifacts(tmp_path, digits_fp32):
    """The worker (what ssh runs on the board) checks the artifact again after the transfer."""
    import subprocess
    import sys

    arts = crafted_artifacts(digits_fp32, tmp_path)
    lines = [json.dumps({"cmd": "load", "artifact": str(a), "batch": 1}) for a in arts.values()]
    proc = subprocess.run([sys.executable, "-m", "edgekit.bench.worker"], capture_output=True, text=True,
                          input="\n".join([*lines, json.dumps({"cmd": "exit"})]) + "\n", timeout=120)
    replies = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["ok"] for r in replies] == [False] * 4 + [True], proc.stdout
    assert all(r["user_error"] for r in replies[:4])
