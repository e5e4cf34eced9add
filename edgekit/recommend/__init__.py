"""The precision decision helper (`edgekit.recommend(...)`, `edgekit recommend`): which precision (and which
training techniques) to ship on a target.

Two halves. `decide` walks a small decision tree over the target profile's fields (device class, CPU
architecture, the precisions its backend offers) plus the user's priority and workload, and records every node
it passed so the user can see *why*. `judge` then checks measured benchmark records against an accuracy
budget: a static tree cannot know that INT8 costs this particular model 3 points, the measurements can.

The tree reads fields, never target names, so a user's own target file gets the same reasoning as a
built-in one:

    priority latency
      gpu                       -> mixed (FP16 + INT8), PTQ
      cpu / edge-cpu            -> dynamic INT8
      npu                       -> static INT8, PTQ
      mcu                       -> static (full-integer) INT8, PTQ
    priority cost
      workload batch            -> distillation + pruning (+ the class's throughput precision: mixed on gpu,
                                   INT8 elsewhere)
      workload online
        ARM Cortex-A class CPU  -> runtime has int4-weight?  yes: 4-bit weights + distillation
                                                             no:  distillation + INT8, saying why
        any other device        -> distillation + INT8

"ARM Cortex-A class" = device_class edge-cpu with an ARM cpu_arch (not ARM servers, GPU modules or Cortex-M MCUs).
Without --workload, cost decisions take online for edge devices (edge-cpu, mcu, or a gpu/npu on an ARM host)
and batch for servers; latency decisions are online by nature.

Whatever a leaf wants, the target may not offer; the precision then falls back along `FALLBACK_ORDER`
(accelerators and MCUs skip dynamic-int8) and the path says so.

With measurements, each candidate is judged against its FP32 baseline by the rule the bench table uses too
(edgekit.bench.baseline: the same target's fp32 record at the same batch and device, else torch eager fp32):
every point lost must buy >= 2x speed-up, a size reduction may cost <= 5 points of recall (accuracy, or
agreement, when no recall is recorded), and the user's --max-accuracy-drop holds. The fastest survivor (p50)
wins; quantized artifacts slower than FP32 are flagged. Only records measured on a device of the target's class
count, unless --allow-proxy.

Accuracies are fractions in [0, 1]; "points" are percentage points (x100) of them, as everywhere in edgekit.
"""

from __future__ import annotations

from edgekit.common.facade import make_callable
from edgekit.recommend.answer import Recommendation, format_text, recommend
from edgekit.recommend.judge import Judgement, Verdict, judge, load_results, records_from
from edgekit.recommend.tree import FALLBACK_ORDER, TreeDecision, decide

__all__ = ["FALLBACK_ORDER", "Judgement", "Recommendation", "TreeDecision", "Verdict", "decide", "format_text",
           "judge", "load_results", "recommend", "records_from"]

make_callable(__name__, "recommend")
