"""A transformer's ONNX Runtime int8 graph (the forms edgekit.quant.transformer writes: dynamic int8, or static
QDQ) with chosen layers kept float, and its measurement against FP32 on named, typed check data: what the
budgeted search and the diagnosis use for models with token inputs, as qgraph is for single-input models.

The candidates are the weighted nodes the transformer quantizer makes int8: the projection and
feed-forward MatMul/Gemm nodes and the embedding-table Gathers. Keeping one float means building the graph
with the quantizer's `keep_float` naming it, the same option a user can pass by hand, so what is measured
here is what the export writes. Outputs are compared with the metric that fits each (cosine for
embeddings and hidden states, agreement for logits), the first output deciding, as the export's
verification and budgets read it.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.common.io import Feeds, count
from edgekit.common.metrics import compare_outputs
from edgekit.errors import EdgekitError


def candidate_nodes(model) -> list[Any]:
    """The nodes int8 quantizes, in graph order: constant-weight MatMul/Gemm and embedding-table Gathers (the
    graph's nodes must be named: see named_graph)."""
    from edgekit.graph.attention import projection_nodes
    from edgekit.quant.embedding import MIN_TABLE_ELEMENTS, embedding_gathers

    inits = {t.name: t for t in model.graph.initializer}
    wanted = {n.name for n in projection_nodes(model)}
    wanted |= {n.name for n in embedding_gathers(model)
               if int(np.prod(inits[n.input[0]].dims)) >= MIN_TABLE_ELEMENTS}
    return [n for n in model.graph.node if n.name in wanted]


def named_graph(src: Path, dest: Path) -> Path:
    """A copy of `src` with every node named uniquely (as the transformer quantizer names them), so that
    candidates are addressed by the names the quantizer's keep_float matches."""
    import onnx

    model = onnx.load(str(src))
    seen: set[str] = set()
    for i, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{i}"
        seen.add(n.name)
    onnx.save(model, str(dest))
    return dest


@dataclass
class TransformerSetup:
    """Everything needed to build and check a transformer int8 graph with chosen layers kept float."""

    source: Path  # the FP32 ONNX graph, nodes named (named_graph)
    precision: str  # dynamic-int8 | int8 (static QDQ when options["static"])
    options: dict[str, Any]  # the transformer quantizer's options (the target's and the user's)
    session_options: dict[str, Any]  # the target's backend options (session config)
    held: Feeds  # the check data, named inputs
    reference: list[np.ndarray]  # FP32 outputs on `held`
    outputs: list[dict[str, Any]]  # name and metric per output
    calib_feeds: list[Feeds] | None = None  # static int8's calibration batches
    metric: str | None = None  # one metric for every output (--metric), else each output's own
    backend: str = "onnxruntime"
    kept_precision: str = "fp32"
    has_int16_rung: bool = False
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="edgekit-tfallback-")))

    @property
    def held_x(self) -> np.ndarray:
        """The first input's array (its length is the number of check samples)."""
        return next(iter(self.held.values()))

    def candidates(self) -> list[dict[str, str]]:
        import onnx

        model = onnx.load(str(self.source), load_external_data=False)
        return [{"layer": n.name, "op": n.op_type, "tensor": n.output[0]} for n in candidate_nodes(model)]

    def build(self, kept: Sequence[str], dest: Path) -> dict[str, Any]:
        from edgekit.quant.transformer import quantize_transformer

        opts = dict(self.options)
        opts["keep_float"] = sorted({*opts.get("keep_float", []), *kept})
        level = logging.getLogger().level
        try:
            return quantize_transformer(self.source, dest, self.precision, self.calib_feeds, opts)
        finally:
            logging.getLogger().setLevel(level)

    def run(self, path: Path, extra_outputs: Sequence[str] = (), samples: int | None = None) -> list[np.ndarray]:
        from edgekit.common.io import run_batched, take
        from edgekit.quant.qgraph import session

        if extra_outputs:
            from edgekit.quant.graphs import with_outputs

            path = with_outputs(path, list(extra_outputs), self.workdir / f"{path.stem}-taps.onnx")
        sess = session(path, self.session_options)
        feeds = self.held if samples is None else take(self.held, slice(0, samples))
        names = [o.name for o in sess.get_outputs()]
        return run_batched(lambda f: sess.run(names, f), feeds, 16)

    def evaluate(self, path: Path) -> dict[str, Any]:
        got = self.run(path)[: len(self.reference)]
        return compare_outputs(self.reference, got, self.outputs, None, self.metric)

    def build_and_evaluate(self, kept: Sequence[str], tag: str, int16: Sequence[str] = ()) -> dict[str, Any]:
        if int16:
            raise EdgekitError("the transformer int8 graph has no int16 layer rung")
        path = self.workdir / f"{tag}.onnx"
        self.build(kept, path)
        return self.evaluate(path)


def make_setup(source: Path, precision: str, target_options: dict[str, Any], user_options: dict[str, Any],
               held: Feeds, reference: list[np.ndarray], outputs: list[dict[str, Any]],
               calib_feeds: list[Feeds] | None, workdir: Path, metric: str | None = None) -> TransformerSetup:
    """A setup with the options the ONNX Runtime exporter would hand the transformer quantizer."""
    from edgekit.quant.transformer import OPTION_NAMES

    if precision not in ("int8", "dynamic-int8"):
        raise EdgekitError(f"a budget on a transformer applies to its int8 forms (int8, dynamic-int8); got {precision}")
    options = {k: v for k, v in target_options.items() if k in OPTION_NAMES}
    options.update(user_options)
    if options.get("static") and not calib_feeds:
        raise EdgekitError("static int8 needs calibration feeds; pass calibration data")
    if count(held) < 2:
        raise EdgekitError(f"the check data holds {count(held)} sample(s); give at least 2")
    workdir.mkdir(parents=True, exist_ok=True)
    named = named_graph(source, workdir / "fp32-named.onnx")
    return TransformerSetup(named, precision, options, dict(target_options), held, reference, outputs,
                            calib_feeds if options.get("static") else None, metric, workdir=workdir)
