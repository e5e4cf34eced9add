"""`edgekit distill` on a transformer: a tiny random BERT teacher (hidden 32) saved as a Hugging Face folder,
distilled through the CLI into a config-built student, in-process and under a 2-process torchrun (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from edgekit.data.text_corpus import build_corpus, everyday_sentences, split_sentences
from edgekit.data.tiny_text import save_tiny_bert
from tests.test_ddp import _torchrun

STUDENT = "layers=1,hidden=16,heads=2,intermediate=32"


@pytest.fixture(scope="module")
def textdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    sentences = everyday_sentences()
    (root / "train.txt").write_text("\n".join(sentences[:80]) + "\n")
    (root / "eval.txt").write_text("\n".join(sentences[80:]) + "\n")
    save_tiny_bert(root / "teacher", sentences[:60])  # words of the last 40 sentences are partly unknown
    return root


def test_cli_distils_a_transformer_student_and_saves_a_pretrained_folder(cli, textdir):
    out = textdir / "out"
    r = cli("distill", "--teacher", f"hf:{textdir / 'teacher'}", "--student-config", STUDENT,
            "--data", textdir / "train.txt", "--eval", textdir / "eval.txt", "--epochs", "2", "--batch-size", "16",
            "--sampling", "scored", "--baseline", "--out", out)
    assert r.rc == 0, r.err[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "text" and report["student_params"] < report["teacher_params"]
    assert set(report["cka"]) == {"0=0", "1=2"}  # uniform map: embeddings and the last teacher block
    assert len(report["history"]) == 2 and {"output", "hidden", "attention"} <= set(report["history"][0])
    assert report["data_scores"]["kept"] + sum(report["data_scores"]["dropped"].values()) == 80
    base = report["baseline_output_only"]
    assert "hidden" not in base["history"][0] and base["steps"] == report["steps"]
    assert 0 <= report["unk_rate_student_tokenizer"] <= report["unk_rate_mapped_teacher_tokens"] + 1e-9
    # the saved folder is a Hugging Face model + tokenizer, and the embedding reloads identically
    from transformers import AutoModel, AutoTokenizer

    from edgekit.train.distill.student import load_text_student

    assert AutoModel.from_pretrained(out).config.hidden_size == 16
    model, tok = load_text_student(out)
    assert isinstance(tok, type(AutoTokenizer.from_pretrained(out)))
    batch = tok(["The cat fell asleep in the sun."], return_tensors="pt")
    emb = model(batch["input_ids"], batch["attention_mask"])
    assert emb.shape == (1, 32) and torch.isfinite(emb).all()  # mapped into the teacher's width


def test_cli_text_bad_input_is_one_line_and_writes_nothing(cli, textdir):
    out = textdir / "bad"
    teacher = f"hf:{textdir / 'teacher'}"
    for args, needle in [
        (["--student-config", "layers=1,hidden=15,heads=2"], "not divisible"),
        (["--student-config", "layers=1,hidden=64,heads=2"], "wider than the teacher"),
        (["--student-config", STUDENT, "--layer-map", "1=9"], "out of range"),
        (["--student-config", STUDENT, "--data", textdir / "missing.txt"], "not found"),
    ]:
        argv = ["distill", "--teacher", teacher, "--data", textdir / "train.txt", *args, "--out", out]
        r = cli(*argv)
        assert r.rc == 2, (args, r.err)
        assert needle in r.err and len(r.err.strip().splitlines()) == 1, r.err
        assert not out.exists()
    r = cli("distill", "--teacher", f"hf:{textdir}", "--student-config", STUDENT, "--data", textdir / "train.txt",
            "--out", out)
    assert r.rc == 2 and "config.json" in r.err and not out.exists()


def test_torchrun_two_processes_distil_a_transformer(textdir):
    out = textdir / "ddp"
    cmd = [*_torchrun(), "--standalone", "--nproc_per_node", "2", "-m", "edgekit", "distill",
           "--teacher", f"hf:{textdir / 'teacher'}", "--student-config", STUDENT, "--data", "train.txt",
           "--eval", "eval.txt", "--epochs", "2", "--batch-size", "8", "--sampling", "scored",
           "--temperature", "learnable", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(cmd, cwd=textdir, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["world_size"] == 2 and len(report["history"]) == 2
    assert proc.stdout.count("retention") == 1  # only rank 0 reports
    assert (out / "config.json").is_file() and (out / "2_Dense" / "model.safetensors").is_file()


def test_offline_corpus_is_prose_and_heldout_is_separate():
    corpus = build_corpus(max_train=300, max_heldout=50)
    assert len(corpus.train) == 300 and len(corpus.heldout) == 50
    assert not set(corpus.train) & set(corpus.heldout)
    assert all(s[0].isupper() and s[-1] in ".!?" and 6 <= len(s.split()) <= 40 for s in corpus.train)
    assert len(everyday_sentences()) >= 100
    text = "A first sentence is here today. Then comes a second one, quite long.\n\n    x = f(1)  # code\n"
    assert split_sentences(text) == ["A first sentence is here today.", "Then comes a second one, quite long."]



def test_student_of_the_teachers_shape_starts_as_the_teacher(textdir):
    """Where every shape allows, initialisation copies the teacher: same embeddings, trimmed vocabulary or not."""
    from edgekit.train.distill.student import build_student, parse_student_config
    from edgekit.train.distill.text import embed, encode
    from edgekit.train.distill.text_stage import load_hf_teacher

    teacher, tok = load_hf_teacher(f"hf:{textdir / 'teacher'}")
    sentences = everyday_sentences()[:20]
    ids = encode(tok, sentences, 64)
    expected = embed(teacher, ids, tok.pad_token_id, teacher=True)
    for vocab in ("shared", "trim"):
        spec = parse_student_config(f"layers=2,hidden=32,heads=4,intermediate=64,vocab={vocab}")
        student = build_student(teacher, tok.get_vocab(), spec, ids)
        got = embed(student.model, ids, tok.pad_token_id, vocab_map=student.vocab_map)
        assert torch.allclose(got, expected, atol=1e-5), vocab
    assert len(student.tokens) < len(tok.get_vocab())  # trimmed to the sentences' tokens + single characters


class _Stop(Exception):
    pass


def test_text_resume_continues_the_schedule_with_identical_weights(textdir, tmp_path):
    """Stopping a 3-epoch text run after epoch 2 and resuming from its checkpoint ends with the weights of the
    uninterrupted run: scored sampling (its difficulties), dropout RNG, optimiser and LR schedule all saved."""
    from edgekit.errors import EdgekitError
    from edgekit.models.checkpoint import load_torch_file
    from edgekit.train.distill.student import parse_student_config
    from edgekit.train.distill.text import TextDistillConfig, fit_text
    from edgekit.train.distill.text_stage import load_hf_teacher, prepare
    from edgekit.train.distill.trainer import TrainConfig, state_digest

    teacher, tok = load_hf_teacher(f"hf:{textdir / 'teacher'}")
    setup = prepare(teacher, tok, everyday_sentences()[:48], parse_student_config(STUDENT),
                    TextDistillConfig(sampling="scored"), seed=3)
    ckpt = tmp_path / "checkpoint.pt"

    def run(stop: int | None = None, resume: bool = False, epochs: int = 3):
        import copy

        student = copy.deepcopy(setup.student)
        train = TrainConfig(epochs=epochs, batch_size=8, lr=1e-3, seed=3, progress=False, grad_clip=1.0,
                            checkpoint=ckpt if stop or resume else None, resume=resume)

        def hook(epoch: int) -> None:
            if stop is not None and epoch == stop:
                raise _Stop

        try:
            result = fit_text(student, setup.data, setup.config, train, on_epoch=hook)
        except _Stop:
            result = None
        return student, result

    a, ra = run()
    run(stop=2)
    state = load_torch_file(ckpt, "checkpoint")  # weights_only
    assert state["epoch"] == 2 and state["difficulty"] is not None
    b, rb = run(resume=True)
    assert rb.resumed_from_epoch == 2 and [h["epoch"] for h in rb.history] == [1, 2, 3]
    assert state_digest(b.model) == state_digest(a.model)
    assert rb.history[-1]["loss"] == pytest.approx(ra.history[-1]["loss"], rel=1e-6)
    with pytest.raises(EdgekitError, match=r"epochs=3.*epochs=4"):
        run(resume=True, epochs=4)


def test_cli_text_resume_and_default_preset(cli, textdir):
    """`edgekit distill --teacher hf:DIR --data ...` needs no student config (the `eighth` preset), refuses to
    overwrite its checkpoint silently, and --resume continues it."""
    out = textdir / "resume"
    teacher = save_tiny_bert(textdir / "teacher4", everyday_sentences()[:60], hidden=128, layers=4, heads=4,
                             intermediate=512)  # big enough for a 1/8 student of the teacher's kind
    base = ["distill", "--teacher", f"hf:{teacher}", "--data", textdir / "train.txt",
            "--epochs", "1", "--batch-size", "16", "--out", out]
    r = cli(*base)
    assert r.rc == 0, r.err[-2000:]
    first = json.loads((out / "report.json").read_text())
    assert first["student_params"] <= first["teacher_params"] / 8 and first["resumed_from_epoch"] == 0
    assert (out / "checkpoint.pt").is_file()
    again = cli(*base)
    assert again.rc == 2 and "--resume" in again.err
    r = cli(*base, "--resume")
    assert r.rc == 0, r.err[-2000:]
    second = json.loads((out / "report.json").read_text())
    assert second["resumed_from_epoch"] == 1 and second["cosine_mean"] == pytest.approx(first["cosine_mean"])


def test_bucketed_batches_see_every_sample_once_per_pass_with_less_padding():
    from edgekit.train.distill.data_score import bucketed_batches, uniform_batches

    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 64, (1000,), generator=gen)
    steps = 1000 // 20
    buckets = bucketed_batches(lengths, 20, seed=1, epoch=0, steps=steps, window=10)
    assert sorted(torch.cat(buckets).tolist()) == list(range(1000))  # one pass: each sample exactly once
    assert buckets[0].tolist() != bucketed_batches(lengths, 20, seed=1, epoch=1, steps=steps)[0].tolist()

    def padded(batches):
        return sum(int(lengths[b].max()) * len(b) for b in batches)

    assert padded(buckets) < 0.75 * padded(uniform_batches(1000, 20, seed=1, epoch=0, steps=steps))


def test_eighth_preset_fits_an_eighth_of_a_minilm_shaped_teacher():
    """The preset for all-MiniLM-L6-v2's shape (random weights): at most 1/8 of its parameters, embeddings
    counted, at the teacher's width so every kept weight starts as the teacher's."""
    from transformers import BertConfig, BertModel

    from edgekit.errors import EdgekitError
    from edgekit.train.distill.student import build_student, parse_student_config, resolve_preset

    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, max_position_embeddings=512)
    teacher = BertModel(config, add_pooling_layer=False).eval()
    text = resolve_preset("eighth", teacher)
    spec = parse_student_config(text)
    # the word table factorised at rank 64 pays for a 576-wide feed-forward (256 with a full 3000-token table)
    assert (spec.layers, spec.hidden, spec.heads, spec.vocab, spec.embedding_rank, spec.intermediate) == (
        2, 384, 12, "10000", 64, 576)
    vocab = {f"[unused{i}]": i for i in range(30522)}
    for i, t in enumerate(("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")):
        vocab.pop(f"[unused{i}]")
        vocab[t] = i
    ids = [[i % 30000 + 5 for i in range(k, k + 40)] for k in range(0, 12000, 40)]  # 12000 distinct tokens used
    student = build_student(teacher, vocab, spec, ids)
    total = sum(p.numel() for p in teacher.parameters())
    assert student.params() <= total / 8 and student.params() > 0.9 * total / 8
    assert tuple(student.model.bert.embeddings.word_embeddings.rows.weight.shape) == (len(student.tokens), 64)
    assert resolve_preset("eighth", teacher, "2000").startswith("layers=2,hidden=384,heads=12,intermediate=")
    assert resolve_preset("layers=1,hidden=16,heads=2", teacher) == "layers=1,hidden=16,heads=2"
    with pytest.raises(EdgekitError, match=r"unknown student preset 'tenth'.*eighth"):
        resolve_preset("tenth", teacher)


def test_corpus_cache_gives_the_same_corpus_and_unknown_sources_fail(tmp_path):
    from edgekit.errors import EdgekitError

    first = build_corpus(max_train=200, max_heldout=20, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("corpus-*.json"))) == 1
    again = build_corpus(max_train=200, max_heldout=20, cache_dir=tmp_path)
    assert (again.train, again.heldout, again.stats) == (first.train, first.heldout, first.stats)
    with pytest.raises(EdgekitError, match="unknown corpus source"):
        build_corpus(sources=("stdlib", "internet"), cache_dir=tmp_path)
