"""The precision decision helper: every leaf of the tree from a target profile, the fallback when a target
lacks the wanted precision, the measured-results rules (2x per point, 5 points of recall per size
reduction, the user's budget) and the CLI's text, JSON and bad-input behaviour.

Profiles are built here (Target objects, or TOML files in tmp_path for the CLI) so these tests do not depend
on which built-in targets colleagues have added."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from edgekit.errors import EdgekitError
from edgekit.recommend import FALLBACK_ORDER, decide, judge, recommend
from edgekit.recommend.judge import RULE_BUDGET, RULE_NO_ACCURACY, RULE_NO_LATENCY, RULE_SIZE, RULE_SPEEDUP
from edgekit.targets import PRECISIONS, Target, load_target


def make_target(**fields) -> Target:
    base = dict(
        name="board", description="a test device", device="test device", backend="onnxruntime",
        device_class="cpu", precisions=("fp32", "int8", "dynamic-int8"), default_precision="int8",
        cpu_arch="x86_64", memory_budget_mb=1024, opset_min=17, opset_max=21,
    )
    base.update(fields)
    return Target(**base)


GPU = make_target(backend="tensorrt", device_class="gpu", precisions=("fp32", "fp16", "int8", "mixed"))
SERVER_CPU = make_target()
ARM_BOARD = make_target(device_class="edge-cpu", cpu_arch="aarch64")
ARM_INT4 = make_target(device_class="edge-cpu", cpu_arch="arm64", precisions=("fp32", "int8", "int4-weight"))
X86_EDGE = make_target(device_class="edge-cpu", cpu_arch="x86_64", precisions=("fp32", "int8"))
NPU = make_target(backend="npu-sdk", device_class="npu", precisions=("fp32", "fp16", "int8"))
MCU = make_target(backend="tflm", device_class="mcu", cpu_arch="armv7e-m", precisions=("fp32", "int8"))


# --- the tree: one case per leaf ------------------------------------------------------------------------

@pytest.mark.parametrize("target, priority, workload, leaf, precision, techniques, says", [
    (GPU, "latency", None, "latency/gpu", "mixed", ("ptq",), "device class gpu -> mixed precision (FP16 + INT8)"),
    (SERVER_CPU, "latency", None, "latency/cpu", "dynamic-int8", (), "device class cpu (a CPU) -> dynamic INT8"),
    (ARM_BOARD, "latency", None, "latency/cpu", "dynamic-int8", (), "device class edge-cpu (a CPU) -> dynamic"),
    (NPU, "latency", None, "latency/npu", "int8", ("ptq",), "device class npu -> static INT8"),
    (MCU, "latency", None, "latency/mcu", "int8", ("ptq",), "device class mcu -> full-integer INT8"),
    (X86_EDGE, "cost", None, "cost/edge-int8", "int8", ("distill", "qat"), "edge device (device_class edge-cpu"),
    (MCU, "cost", None, "cost/edge-int8", "int8", ("distill", "qat"), "edge device (device_class mcu"),
    (SERVER_CPU, "cost", None, "cost/batch", "int8", ("distill", "prune", "qat"),
     "batch inference -> distillation + pruning"),
    (GPU, "cost", "batch", "cost/batch", "mixed", ("distill", "prune", "qat"),
     "batch inference -> distillation + pruning"),
    (ARM_INT4, "cost", None, "cost/arm-int4", "int4-weight", ("distill",),
     "runtime supports 4-bit weights? yes"),
    (ARM_BOARD, "cost", "online", "cost/arm-int8", "int8", ("distill", "qat"),
     "runtime supports 4-bit weights? no (onnxruntime offers fp32, int8, dynamic-int8; no int4-weight kernels)"),
])
def test_every_leaf_is_reached_from_profile_and_priority(target, priority, workload, leaf, precision, techniques,
                                                         says):
    d = decide(target, priority, workload)
    assert (d.leaf, d.precision, d.techniques) == (leaf, precision, techniques)
    assert any(says in step for step in d.path), d.path
    assert d.path[-1].startswith(f"recommend {precision}")
    assert d.precision in target.precisions


def test_tree_reads_fields_not_names():
    for name in ("raspberry-pi-5", "my-board", "x86-server-cpu"):
        assert decide(replace(ARM_BOARD, name=name), "cost").leaf == "cost/arm-int8"


def test_cortex_a_rule_is_for_edge_cpus_only():
    # an ARM server CPU (Neoverse) and a Jetson-class GPU module on an ARM host do not take the 4-bit branch
    assert decide(replace(SERVER_CPU, cpu_arch="aarch64"), "cost", "online").leaf == "cost/edge-int8"
    jetson = replace(GPU, cpu_arch="aarch64")
    d = decide(jetson, "cost")
    assert (d.workload, d.leaf, d.precision) == ("online", "cost/edge-int8", "int8")


@pytest.mark.parametrize("target, workload", [(X86_EDGE, "online"), (MCU, "online"), (SERVER_CPU, "batch"),
                                              (GPU, "batch"), (NPU, "batch")])
def test_default_workload_under_cost(target, workload):
    d = decide(target, "cost")
    assert d.workload == workload
    assert f"workload: {workload} (default for device_class {target.device_class}" in "\n".join(d.path)


def test_explicit_workload_is_said():
    d = decide(SERVER_CPU, "cost", "online")
    assert d.leaf == "cost/edge-int8" and "workload: online (--workload)" in d.path
    assert any(step.startswith("online serving on a server") for step in d.path)


# --- fallback when the target lacks what the leaf wants -------------------------------------------------

@pytest.mark.parametrize("target, priority, wanted, got, step", [
    # ort-mobile-like phone: no dynamic-int8
    (make_target(device_class="edge-cpu", cpu_arch="arm64", precisions=("fp32", "int8")), "latency",
     "dynamic-int8", "int8", "falling back to int8 (order dynamic-int8 -> int8 -> fp32)"),
    # Ascend-like NPU: no int8 in the backend; dynamic-int8 is never a fallback on an accelerator
    (make_target(device_class="npu", precisions=("fp32", "fp16", "mixed"), default_precision="fp16"), "latency",
     "int8", "mixed", "falling back to mixed (order int8 -> mixed -> fp16 -> fp32)"),
    (make_target(device_class="mcu", precisions=("fp32", "dynamic-int8"), default_precision="fp32"), "latency",
     "int8", "fp32", "falling back to fp32"),
    (make_target(device_class="gpu", precisions=("fp32", "fp16"), default_precision="fp16"), "latency",
     "mixed", "fp16", "falling back to fp16 (order mixed -> fp16 -> int8 -> fp32)"),
    (make_target(precisions=("fp16",), default_precision="fp16"), "latency",
     "dynamic-int8", "fp16", "the target's default precision fp16"),
])
def test_precision_falls_back_along_documented_order(target, priority, wanted, got, step):
    d = decide(target, priority)
    assert (d.wanted, d.precision) == (wanted, got)
    assert any(step in s for s in d.path), d.path


def test_fallback_order_ends_in_fp32_and_covers_every_precision():
    assert set(FALLBACK_ORDER) == set(PRECISIONS)
    assert all(not chain or chain[-1] == "fp32" for chain in FALLBACK_ORDER.values())


def test_techniques_follow_the_precision_actually_used():
    # distillation + INT8 wanted, but the target only runs fp16/fp32: no QAT for a precision without INT8
    d = decide(make_target(device_class="edge-cpu", precisions=("fp32", "fp16"), default_precision="fp16"), "cost")
    assert (d.precision, d.techniques) == ("fp16", ("distill",))


@pytest.mark.parametrize("name", ["x86-server-cpu", "raspberry-pi-5", "android-ort-mobile"])
@pytest.mark.parametrize("priority", ["latency", "cost"])
def test_foundation_targets_get_a_precision_they_offer(name, priority):
    t = load_target(name)
    assert decide(t, priority).precision in t.precisions


def test_bad_priority_or_workload():
    with pytest.raises(EdgekitError, match="unknown priority 'speed'"):
        decide(SERVER_CPU, "speed")
    with pytest.raises(EdgekitError, match="unknown workload 'stream'"):
        decide(SERVER_CPU, "cost", "stream")


# --- measured results ---------------------------------------------------------------------------------

def rec(artifact: str, precision: str, p50: float | None, accuracy: float | None = None, target: str = "board",
        **extra) -> dict:
    r = {"artifact": artifact, "target": target, "precision": precision, **extra}
    if p50 is not None:
        r["latency_ms"] = {"mean": p50 * 1.05, "p50": p50, "p90": p50 * 1.2}
    if accuracy is not None:
        r["accuracy"] = accuracy
    return r


GPU_SERVER = make_target(device_class="gpu", precisions=("fp32", "fp16", "int8", "mixed"))


def issue_case(int8_accuracy: float) -> list[dict]:
    """FP32 at 10 ms / 0.95; FP16 loses 0.1 point for 1.5x; INT8 is 4x faster at the given accuracy."""
    return [
        rec("m-fp32", "fp32", 10.0, 0.95, model_bytes=4_000_000),
        rec("m-fp16", "fp16", 10.0 / 1.5, 0.949, model_bytes=2_000_000),
        rec("m-int8", "int8", 2.5, int8_accuracy, model_bytes=1_000_000),
    ]


def test_int8_losing_3_points_for_4x_is_rejected_by_the_2x_per_point_rule():
    r = recommend(GPU_SERVER, results=issue_case(0.92))
    j = r.judgement
    assert r.chosen_artifact == "m-fp16" and r.precision == "fp16"
    [rejected] = j.rejected
    assert (rejected.artifact, rejected.rule) == ("m-int8", RULE_SPEEDUP)
    assert rejected.reason == ("loses 3.00 points (accuracy) for a 4.00x speed-up over FP32; each point lost "
                               "must buy 2x, so it needs >= 6.00x")
    assert any(step.startswith("reject m-int8 (int8) by 2x-per-point") for step in r.path)
    assert "measurements override the tree: fp16 instead of mixed" in r.path
    assert r.to_dict()["rejected"][0] == {"artifact": "m-int8", "precision": "int8", "rule": "2x-per-point",
                                          "reason": rejected.reason}


def test_mirror_int8_losing_1_point_for_4x_is_accepted_and_chosen():
    r = recommend(GPU_SERVER, results=issue_case(0.94))
    assert r.chosen_artifact == "m-int8" and r.precision == "int8"
    assert r.judgement.rejected == ()
    v = r.judgement.chosen
    assert v.speedup == pytest.approx(4.0) and v.points_lost == pytest.approx(1.0) and v.metric == "accuracy"


def test_exactly_2x_per_point_passes():
    r = recommend(GPU_SERVER, results=issue_case(0.93))  # 2 points for 4x
    assert r.chosen_artifact == "m-int8"


def test_agreement_is_the_proxy_when_no_accuracy_and_the_path_says_so():
    records = [rec("m-fp32", "fp32", 10.0, agreement=1.0), rec("m-int8", "int8", 2.5, agreement=0.97)]
    r = recommend(SERVER_CPU, results=records)
    [v] = r.judgement.rejected
    assert v.rule == RULE_SPEEDUP and v.metric == "agreement" and "(agreement)" in v.reason
    assert any("agreement with FP32 is the proxy" in step for step in r.path)
    records[1]["agreement"] = 0.995
    assert recommend(SERVER_CPU, results=records).chosen_artifact == "m-int8"


def test_size_reduction_may_cost_at_most_5_points_of_accuracy_without_recall():
    # 5.5 points for 12x passes the 2x-per-point rule (needs 11x) but not the size rule
    records = [rec("m-fp32", "fp32", 12.0, 0.95, model_bytes=4_000_000),
               rec("m-int8", "int8", 1.0, 0.895, model_bytes=1_000_000)]
    [v] = judge(records, SERVER_CPU).rejected
    assert v.rule == RULE_SIZE
    assert v.reason == "its size reduction costs 5.50 points of accuracy (no recall measured); at most 5 allowed"


def test_size_rule_uses_recall_when_recorded():
    base = rec("m-fp32", "fp32", 10.0, 0.95, recall=0.95, model_bytes=4_000_000)
    worse = rec("m-int8", "int8", 2.5, 0.94, recall=0.88, model_bytes=1_000_000)
    [v] = judge([base, worse], SERVER_CPU).rejected
    assert v.rule == RULE_SIZE and "7.00 points of recall" in v.reason
    worse["recall"] = 0.93
    assert judge([base, worse], SERVER_CPU).chosen.artifact == "m-int8"


def test_size_rule_applies_only_to_a_size_reduction():
    # same bytes (e.g. an fp32 on another runtime): no size reduction, only the speed-up rule applies
    records = [rec("m-fp32", "fp32", 12.0, 0.95, model_bytes=1000, runtime="onnxruntime"),
               rec("m-fp32-fast", "fp32", 1.0, 0.89, model_bytes=1000, runtime="other")]
    j = judge(records, SERVER_CPU)
    assert j.rejected == () and j.chosen.artifact == "m-fp32-fast"


def test_max_accuracy_drop_is_the_users_budget():
    # a fraction, like every accuracy in edgekit and like edgekit.export's budget: 0.005 is half a point
    r = recommend(GPU_SERVER, max_accuracy_drop=0.005, results=issue_case(0.94))
    [v] = r.judgement.rejected
    assert (v.artifact, v.rule) == ("m-int8", RULE_BUDGET)
    assert v.reason == ("loses 1.00 points (accuracy); the budget is 0.5 points (max_accuracy_drop / "
                        "--max-accuracy-drop)")
    assert r.chosen_artifact == "m-fp16"
    assert r.to_dict()["max_accuracy_drop"] == 0.005


def test_budgets_are_fractions_in_python_and_points_on_the_command_line(cli, board, tmp_path):
    with pytest.raises(EdgekitError, match="must be a fraction in \\[0, 1\\]"):
        recommend(GPU_SERVER, max_accuracy_drop=5, results=issue_case(0.94))
    results = write_results(tmp_path / "r.json", 0.94)
    r = cli("recommend", "--target", str(board), "--results", str(results), "--max-accuracy-drop", "0.5", "--json")
    assert r.rc == 0, r.err
    out = json.loads(r.out)
    assert out["max_accuracy_drop"] == 0.005
    assert {"artifact": "m-int8", "precision": "int8", "rule": RULE_BUDGET,
            "reason": "loses 1.00 points (accuracy); the budget is 0.5 points (max_accuracy_drop / "
                      "--max-accuracy-drop)"} in out["rejected"]


def test_quantized_artifact_slower_than_fp32_is_flagged_and_fp32_wins():
    records = [rec("m-fp32", "fp32", 10.0, 0.95), rec("m-int8", "int8", 12.5, 0.95)]
    r = recommend(SERVER_CPU, results=records)
    [v] = r.judgement.flagged
    assert v.artifact == "m-int8" and v.flag.startswith("quantized but slower than FP32 (0.80x")
    assert r.chosen_artifact == "m-fp32" and r.precision == "fp32" and r.techniques == ()
    assert r.to_dict()["flagged"][0]["artifact"] == "m-int8"


def test_missing_optional_fields_are_tolerated_and_unjudgeable_ones_rejected():
    records = {"records": [
        {"artifact": "m-fp32", "target": "board", "precision": "fp32", "latency_ms": {"mean": 10.0}},
        {"artifact": "m-int8", "target": "board", "precision": "int8", "latency_ms": 3.0, "agreement": 0.999},
        {"artifact": "m-fp16", "target": "board", "precision": "fp16", "agreement": 1.0},
        {"artifact": "m-mixed", "target": "board", "precision": "mixed", "latency_ms": {"p50": 4.0}},
        {"target": "board", "precision": "fp32", "latency_ms": {"p50": 9.0}, "batch": 8},
    ]}
    from edgekit.recommend import records_from

    j = judge(records_from(records, "r.json"), GPU_SERVER)
    rules = {v.artifact: v.rule for v in j.rejected}
    assert rules == {"m-fp16": RULE_NO_LATENCY, "m-mixed": RULE_NO_ACCURACY}
    assert j.chosen.artifact == "m-int8"
    assert "record 4 (board fp32)" in {v.artifact for v in j.verdicts}


def test_other_targets_are_ignored_and_torch_eager_is_the_fallback_baseline():
    records = [
        rec("torch-fp32", "fp32", 20.0, 0.95, target="host-torch-cpu", runtime={"name": "torch", "version": "2.6"}),
        rec("pi-int8", "int8", 5.0, 0.93, target="raspberry-pi-5"),
        rec("m-int8", "int8", 5.0, 0.94),
        rec("m-fp16", "fp16", 8.0, 0.95),
    ]
    r = recommend(GPU_SERVER, results=records)
    j = r.judgement
    assert j.baseline == "torch-fp32"
    assert j.ignored == (("pi-int8", "measured for target 'raspberry-pi-5', not 'board'"),)
    assert r.chosen_artifact == "m-int8"  # 1 point for 4x over torch eager
    assert any("FP32 baseline: torch-fp32 (torch eager)" in step for step in r.path)
    assert "torch-fp32" not in {v.artifact for v in j.verdicts}


def test_precisions_the_target_does_not_offer_are_ignored_unless_an_alternative_backend_does():
    records = [rec("m-fp32", "fp32", 10.0, 0.95), rec("m-fp16", "fp16", 5.0, 0.95)]
    j = judge(records, SERVER_CPU)
    assert j.chosen.artifact == "m-fp32"
    assert j.ignored == (("m-fp16", "precision fp16 is not offered by target 'board' "
                                    "(offers dynamic-int8, fp32, int8)"),)
    with_tflite = replace(SERVER_CPU, alternatives={"tflite": replace(SERVER_CPU, backend="tflite",
                                                                      precisions=("fp32", "fp16"),
                                                                      default_precision="fp32")})
    assert judge(records, with_tflite).chosen.artifact == "m-fp16"


@pytest.mark.parametrize("marker", [{"runtime": "torch 2.6.0"}, {"backend": "torch-eager"}, {"runtime": "pytorch"}])
def test_torch_eager_is_recognised_by_runtime_or_backend(marker):
    records = [rec("torch-fp32", "fp32", 20.0, 0.95, target="host-torch-cpu", **marker),
               rec("m-int8", "int8", 5.0, 0.94)]
    assert judge(records, SERVER_CPU).baseline == "torch-fp32"


def test_the_eager_target_itself_can_be_judged():
    eager_target = make_target(name="host-torch-cpu", backend="torch-eager", precisions=("fp32",),
                               default_precision="fp32", cpu_arch="host")
    records = [rec("torch-fp32", "fp32", 20.0, 0.95, target="host-torch-cpu", runtime="torch")]
    r = recommend(eager_target, results=records)
    assert r.chosen_artifact == "torch-fp32" and r.precision == "fp32"


def test_same_runtime_fp32_is_preferred_as_baseline():
    records = [
        rec("ort-fp32", "fp32", 10.0, 0.95, runtime="onnxruntime 1.20"),
        rec("lite-fp32", "fp32", 20.0, 0.95, runtime="ai_edge_litert"),
        rec("lite-int8", "int8", 10.0, 0.94, runtime="ai_edge_litert"),
    ]
    v = next(v for v in judge(records, SERVER_CPU).verdicts if v.artifact == "lite-int8")
    assert v.baseline == "lite-fp32" and v.speedup == pytest.approx(2.0)


@pytest.mark.parametrize("records, message", [
    ([rec("m-int8", "int8", 2.0, 0.9)], "no FP32 baseline for target 'board'"),
    ([rec("m-fp32", "fp32", None, 0.9), rec("m-int8", "int8", 2.0, 0.9)], "no FP32 baseline for target 'board'"),
    ([rec("x", "fp32", 2.0, 0.9, target="other")], "no records for target 'board' (targets present: other)"),
    ([rec("m-fp32", "fp32", 2.0, 95.0)], "field 'accuracy' must be a fraction in [0, 1] (got 95.0)"),
    ([{"artifact": "m", "target": "board"}], "missing field 'precision'"),
    ([rec("m-fp32", "fp32", None, 0.9, latency_ms={"p50": "fast"})], "field 'latency_ms' must hold a positive p50"),
])
def test_bad_records(records, message):
    with pytest.raises(EdgekitError) as err:
        judge(records, SERVER_CPU)
    assert message in str(err.value)


# --- the CLI --------------------------------------------------------------------------------------------

BOARD_TOML = """
name = "my-arm-board"
description = "an ARM board"
device = "board"
backend = "onnxruntime"
device_class = "edge-cpu"
cpu_arch = "aarch64"
precisions = ["fp32", "int8", "dynamic-int8"]
default_precision = "int8"
memory_budget_mb = 2048
opset = [17, 21]

[alternatives.tflite]
precisions = ["fp32", "fp16", "int8", "dynamic-int8"]
"""


@pytest.fixture
def board(tmp_path) -> Path:
    path = tmp_path / "my-arm-board.toml"
    path.write_text(BOARD_TOML)
    return path


def write_results(path: Path, int8_accuracy: float) -> Path:
    records = [{**r, "target": "my-arm-board"} for r in issue_case(int8_accuracy)]
    path.write_text(json.dumps(records))
    return path


def test_cli_prints_the_path_node_by_node(cli, board):
    r = cli("recommend", "--target", board, "--priority", "cost")
    assert r.rc == 0, r.err
    lines = r.out.splitlines()
    assert lines[0] == "recommendation for my-arm-board (priority cost, workload online)"
    assert "  3. workload: online (default for device_class edge-cpu)" in lines
    assert any(line.startswith("  5. runtime supports 4-bit weights? no") for line in lines)
    assert "precision   int8" in lines and "techniques  distill, qat" in lines


def test_cli_json_without_results(cli, board):
    r = cli("recommend", "--target", board, "--json")
    assert r.rc == 0, r.err
    out = json.loads(r.out)
    assert out["precision"] == "dynamic-int8" and out["techniques"] == [] and out["leaf"] == "latency/cpu"
    assert isinstance(out["path"], list) and all(isinstance(s, str) for s in out["path"])
    assert "chosen_artifact" not in out and "rejected" not in out


def test_cli_json_with_results(cli, board, tmp_path):
    results = write_results(tmp_path / "bench.json", 0.92)
    r = cli("recommend", "--target", board, "--priority", "cost", "--results", results, "--json")
    assert r.rc == 0, r.err
    out = json.loads(r.out)
    assert out["precision"] == "fp16" and out["chosen_artifact"] == "m-fp16"
    assert [(x["artifact"], x["rule"]) for x in out["rejected"]] == [("m-int8", "2x-per-point")]
    assert out["techniques"] == ["distill"] and out["tree_precision"] == "int8"
    assert set(PRECISIONS) >= {out["precision"]}


def test_cli_table_with_results(cli, board, tmp_path):
    results = write_results(tmp_path / "bench.json", 0.94)
    r = cli("recommend", "--target", board, "--results", results, "--max-accuracy-drop", "2")
    assert r.rc == 0, r.err
    rows = {line.split()[0]: line for line in r.out.splitlines() if line.startswith("m-")}
    assert rows["m-int8"].split()[1:4] == ["int8", "2.500", "4.00x"] and rows["m-int8"].endswith("chosen")
    assert rows["m-fp32"].endswith("pass")
    assert "chosen      m-int8" in r.out and "precision   int8" in r.out


def test_cli_table_names_the_rejecting_rule(cli, board, tmp_path):
    results = write_results(tmp_path / "bench.json", 0.92)
    r = cli("recommend", "--target", board, "--results", results)
    assert r.rc == 0, r.err
    assert "rejected: 2x-per-point" in r.out
    assert "rejected    m-int8: 2x-per-point: loses 3.00 points (accuracy) for a 4.00x speed-up" in r.out


@pytest.mark.parametrize("make_args, message", [
    (lambda d, b: ["--target", "no-such-board"], "unknown target 'no-such-board'"),
    (lambda d, b: ["--target", b, "--results", d / "missing.json"], "cannot read results file"),
    (lambda d, b: ["--target", b, "--results", write(d / "bad.json", "{not json")], "not valid JSON"),
    (lambda d, b: ["--target", b, "--results", write_bytes(d / "r.npz", b"PK\x03\x04\xff\xfe")], "not a text file"),
    (lambda d, b: ["--target", b, "--results", write(d / "obj.json", '{"a": 1}')], "expected a JSON list"),
    (lambda d, b: ["--target", b, "--results",
                   write(d / "nofp32.json", json.dumps([rec("m", "int8", 1.0, 0.9, target="my-arm-board")]))],
     "no FP32 baseline for target 'my-arm-board'"),
    (lambda d, b: ["--target", b, "--max-accuracy-drop", "-1"],
     "--max-accuracy-drop is in percentage points, 0 to 100"),
    (lambda d, b: ["--target", b, "--priority", "speed"], "invalid choice: 'speed'"),
])
def test_cli_bad_input_is_one_line_and_exit_2(cli, board, tmp_path, make_args, message):
    r = cli("recommend", *make_args(tmp_path, board))
    assert r.rc == 2, (r.out, r.err)
    assert message in r.err and r.err.strip().count("\n") == 0, r.err
    assert r.out == ""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_failed_and_skipped_bench_records_are_ignored_not_judged():
    records = [rec("m-fp32", "fp32", 10.0, 0.95), rec("m-int8", "int8", 2.0, 0.95),
               {**rec("m-fp16", "fp16", 1.0, 0.95), "status": "error", "error": "worker died"},
               {**rec("m-int8", "int8", 1.0, 0.95), "status": "skipped", "batch": 8}]
    j = judge(records, GPU_SERVER)
    assert j.chosen.artifact == "m-int8" and j.chosen.p50_ms == 2.0
    assert ("m-fp16", "status error: worker died") in j.ignored
    assert ("m-int8", "status skipped") in j.ignored
