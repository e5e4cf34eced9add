"""`edgekit prune`: structured L1 channel pruning to a smaller dense model, then distillation fine-tuning
with the unpruned model as the teacher."""

from __future__ import annotations

import argparse

from edgekit.commands import log
from edgekit.commands.distill import add_data_args, add_model_args, add_output_args, add_train_args, print_summary


def run(args: argparse.Namespace) -> int:
    import time

    from edgekit.commands.distill import loss_config, train_config
    from edgekit.train.distill import inputs
    from edgekit.train.distill.distributed import init_distributed, is_main_process, shutdown_distributed
    from edgekit.train.prune import PruneConfig, prune

    config = PruneConfig(ratio=args.ratio, layers=args.layers, norm=args.norm, round_to=args.round_to,
                         ignored=tuple(args.ignore))
    pair = inputs.resolve_pair(args.teacher, None, args.pair, need_student=False,
                               teacher_weights=args.teacher_weights)
    train, evaluation, note = inputs.load_datasets(args.data, args.eval, zoo_default=pair.uses_zoo)
    out = inputs.prepare_out_dir(args.out, args.resume, args.force)
    init_distributed()
    main = is_main_process()
    started = time.perf_counter()
    try:
        result = prune(pair.teacher, train, evaluation, config=config,
                       train_config=train_config(args, out, "prune fine-tune"),
                       loss=loss_config(args, layers=False), log=log if main else None)
        report = {"stage": "prune", "teacher": pair.teacher_spec, "train_data": train.source, **result.metrics,
                  "history": result.train.history, "world_size": result.train.world_size,
                  "seconds": time.perf_counter() - started}
        if note:
            report["note"] = note
        if main:
            report["files"] = inputs.save_student(result.model, out, "pruned", tuple(train.x.shape[1:]))
            inputs.write_report(report, out / "report.json", args.report)
            print_summary(report)
            p = result.metrics["pruning"]
            print(f"pruned     {p['channels_before'] - p['channels_after']} of {p['channels_before']} channels; "
                  f"accuracy right after pruning {100 * (result.metrics['pruned_accuracy_before_finetune'] or 0):.2f}%")
    finally:
        shutdown_distributed()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune", help="structured L1 channel pruning to a smaller dense model, then distillation fine-tuning",
        description="Remove the lowest-L1-norm output channels of each convolution (torch-pruning keeps coupled "
                    "layers consistent), giving a dense model with fewer parameters and MACs, then fine-tune it "
                    "with distillation from the unpruned model. Writes OUT/pruned.pt2 (for edgekit export) and "
                    "OUT/pruned.pt (state dict of the pruned architecture).",
        epilog="Without --teacher the zoo digits teacher is pruned. Example: edgekit prune --ratio 0.3 --report "
               "prune.json",
    )
    add_model_args(p, student=False)
    add_data_args(p)
    add_train_args(p, epochs=8, lr=1e-3, layers=False)
    p.add_argument("--ratio", type=float, default=0.3, help="fraction of each layer's channels to remove (0.3)")
    p.add_argument("--layers", default="conv", choices=("conv", "all"),
                   help="prune convolutions only (default) or hidden linear layers too")
    p.add_argument("--norm", type=int, default=1, choices=(1, 2), help="rank channels by L1 (default) or L2 norm")
    p.add_argument("--round-to", type=int, metavar="N", help="keep channel counts multiples of N")
    p.add_argument("--ignore", action="append", default=[], metavar="LAYER",
                   help="a layer whose output channels must stay (repeatable)")
    add_output_args(p, "edgekit-prune")
    p.set_defaults(func=run)
