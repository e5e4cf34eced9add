"""Real English sentences available offline, for distilling text encoders without a download.

Python itself ships prose: the language reference topics of `pydoc_data.topics` and the docstrings of the
standard library's modules; every installed package (numpy, scipy, torch, transformers, tensorflow ...)
ships far more in its docstrings: tens of thousands of sentences, which a small student needs to learn its
teacher's embedding (a few thousand sentences leave it far behind). All are read as text (docstrings through
`ast`, so no module is imported and nothing runs). The site-packages part depends on what is installed, so
its size differs between machines; `sources=("stdlib",)` gives the fixed, smaller corpus. Sentences are
split, cleaned of code-like lines and deduplicated; the held-out set comes from *different documents* than
the training set (split by a hash of the document's name), so a held-out sentence never
shares a paragraph with a training one. `everyday_sentences()` adds ~100 ordinary sentences
written for this kit, far from the technical register the student is trained on: the harder test.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import EdgekitError

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_WORD = re.compile(r"[A-Za-z]+")
_CODE_HINTS = re.compile(r"(>>>|\.\.\.\s|::|==|!=|\w+\(.*\)|[{}\[\]<>=_*`|\\#@$])")
_EVERYDAY = Path(__file__).with_name("everyday_sentences.txt")


@dataclass
class TextCorpus:
    """Training and held-out sentences (lists of str) and what was dropped while building them."""

    train: list[str]
    heldout: list[str]
    stats: dict[str, int]


def _is_prose(sentence: str) -> bool:
    """A sentence of 6-40 words, mostly alphabetic, with no code markers."""
    words = sentence.split()
    if not 6 <= len(words) <= 40 or _CODE_HINTS.search(sentence):
        return False
    alpha = sum(len(w) for w in _WORD.findall(sentence))
    return alpha >= 0.75 * len(sentence.replace(" ", "")) and sentence[0].isupper() and sentence[-1] in ".!?"


def split_sentences(text: str) -> list[str]:
    """Paragraphs (blank-line separated, code blocks skipped) cut into sentences, whitespace collapsed."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        lines = para.splitlines()
        if not lines or any(line.startswith(("   ", "\t", ">>>")) for line in lines[:1]):
            continue  # an indented block is code or a grammar production, not prose
        flat = " ".join(line.strip() for line in lines)
        out.extend(s.strip() for s in _SENTENCE_END.split(flat))
    return [s for s in out if _is_prose(s)]


SOURCES = ("stdlib", "site-packages")
CORPUS_FORMAT = 1  # bump when the sentence splitting or filtering changes: old caches are then ignored
_MAX_FILE_BYTES = 400_000  # generated op wrappers and schemas: big, repetitive, little prose
_SKIP_PARTS = {"tests", "test", "testing", "_vendor", "vendored", "__pycache__"}


def _docstrings(path: Path) -> str:
    """The module, class and function docstrings of one .py file, parsed (never imported)."""
    try:
        if path.stat().st_size > _MAX_FILE_BYTES:
            return ""
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, SyntaxError, ValueError, RecursionError):
        return ""
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef))]
    return "\n\n".join(d for n in nodes if (d := ast.get_docstring(n)))


def _documents(sources: tuple[str, ...] = SOURCES) -> list[tuple[str, str]]:
    """(name, text): every language-reference topic, every stdlib module's docstrings and, with
    "site-packages", every installed package file's docstrings (tests and vendored copies skipped)."""
    unknown = set(sources) - set(SOURCES)
    if unknown:
        raise EdgekitError(f"unknown corpus source(s) {', '.join(sorted(unknown))}; available: {', '.join(SOURCES)}")
    docs: list[tuple[str, str]] = []
    if "stdlib" in sources:
        from pydoc_data.topics import topics

        docs += [(f"topic:{name}", text) for name, text in sorted(topics.items())]
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        docs += [(f"module:{p.stem}", t) for p in sorted(stdlib.glob("*.py")) if (t := _docstrings(p))]
    if "site-packages" in sources:
        root = Path(sysconfig.get_paths()["purelib"])
        for path in _py_files(root):
            if text := _docstrings(path):
                docs.append((f"pkg:{path.relative_to(root).as_posix()}", text))
    return docs


def _py_files(root: Path) -> list[Path]:
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if not (_SKIP_PARTS & set(rel.parts[:-1]) or rel.name.startswith("test_")):
            out.append(path)
    return out


def _cache_key(sources: tuple[str, ...]) -> str:
    """What the corpus depends on: the sources, Python's version and every site-packages file's size and
    modification time (a package installed or upgraded changes the key)."""
    h = hashlib.sha256(f"{CORPUS_FORMAT}|{sorted(sources)}|{sys.version}".encode())
    if "site-packages" in sources:
        root = Path(sysconfig.get_paths()["purelib"])
        for path in _py_files(root):
            st = path.stat()
            h.update(f"{path.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def document_sentences(sources: tuple[str, ...] = ("stdlib",), cache_dir: str | Path | None = None
                       ) -> list[tuple[str, list[str]]]:
    """(document name, its prose sentences) for every document of `sources`. Reading every installed
    package's docstrings takes a minute or more on a laptop, so the result is cached (JSON, in the system's
    temporary folder unless `cache_dir` says otherwise) under a key that changes with what is installed."""
    folder = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / "edgekit-text-cache"
    path = folder / f"corpus-{_cache_key(tuple(sources))}.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return [(str(name), [str(x) for x in sents]) for name, sents in data]
        except (ValueError, TypeError, OSError):
            pass  # a damaged cache is rebuilt
    docs = [(name, split_sentences(text)) for name, text in _documents(tuple(sources))]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(docs), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass  # a read-only temporary folder only costs the next run the same minute
    return docs


def _heldout_doc(name: str, heldout_percent: int) -> bool:
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % 100 < heldout_percent


def build_corpus(max_train: int = 4000, max_heldout: int = 400, heldout_percent: int = 10,
                 sources: tuple[str, ...] = ("stdlib",), cache_dir: str | Path | None = None) -> TextCorpus:
    """Deduplicated prose sentences; held-out documents chosen by hash, never shared with training.

    `sources`: "stdlib" (Python's own prose, the same on every machine) and/or "site-packages"."""
    seen: set[str] = set()
    train: list[str] = []
    heldout: list[str] = []
    stats = {"documents": 0, "candidates": 0, "duplicates": 0}
    for name, sentences in document_sentences(tuple(sources), cache_dir):
        stats["documents"] += 1
        target = heldout if _heldout_doc(name, heldout_percent) else train
        for s in sentences:
            stats["candidates"] += 1
            key = " ".join(_WORD.findall(s.lower()))
            if key in seen:
                stats["duplicates"] += 1
                continue
            seen.add(key)
            target.append(s)
    # an even spread over the documents rather than the first ones: every k-th sentence
    train = train[:: max(1, len(train) // max_train)][:max_train]
    heldout = heldout[:: max(1, len(heldout) // max_heldout)][:max_heldout]
    stats.update(train=len(train), heldout=len(heldout))
    return TextCorpus(train, heldout, stats)


def everyday_sentences() -> list[str]:
    """About a hundred ordinary English sentences (weather, cooking, travel ...), one per line of a text file."""
    return [line.strip() for line in _EVERYDAY.read_text(encoding="utf-8").splitlines() if line.strip()]
