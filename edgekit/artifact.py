"""Artifact folders: written atomically (a staging folder renamed into place only when everything
succeeded), described by manifest.json, and checked against their manifest when loaded.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_table(folder: Path) -> dict[str, dict[str, Any]]:
    """name -> {sha256, bytes} for every file in the folder (recursively), manifest excluded."""
    table = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            rel = path.relative_to(folder).as_posix()
            table[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return table


def check_writable(out: Path, flag: str = "--out") -> None:
    """Fail now, before any work, when `out` could not be created: a read-only folder, or a path that runs
    through a regular file. Probed by making (and removing) a hidden folder in the nearest existing parent,
    since permission bits alone do not tell (root ignores them, and so do some file systems)."""
    import tempfile

    parent = out.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise EdgekitError(f"cannot write {flag} {out}: {parent} is a file, not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=".edgekit-probe-", dir=parent)
    except OSError as exc:
        raise EdgekitError(f"cannot write {flag} {out}: folder {parent} is not writable "
                           f"({exc.strerror or exc})") from None
    os.rmdir(probe)


def check_destination(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise EdgekitError(f"output folder {out} exists; choose another --out or pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise EdgekitError(f"output path {out} exists and is not a folder")
    check_writable(out)


@contextlib.contextmanager
def staging(out: Path, force: bool) -> Iterator[Path]:
    """Yield a private folder beside `out`; on success it replaces `out`, on any error it is removed."""
    check_destination(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def write_manifest(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    manifest = dict(manifest)
    manifest["files"] = file_table(folder)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")
    return manifest


@dataclass
class Artifact:
    path: Path
    manifest: dict[str, Any]

    @property
    def backend(self) -> str:
        return self.manifest["backend"]

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def target(self) -> str:
        return self.manifest["target"]

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest["model_file"]

    def runner(self, threads: int | None = None):
        from edgekit.backends import registry

        return registry.runner_class(self.backend)(self.path, self.manifest, threads=threads)


_REQUIRED = ("target", "backend", "precision", "model_file", "files", "inputs", "outputs")


def load_artifact(path: Path | str, verify_files: bool = True) -> Artifact:
    """Read an artifact folder; with `verify_files`, every listed file must exist with its sha256."""
    path = Path(path)
    mpath = path / MANIFEST
    if not path.is_dir():
        raise EdgekitError(f"artifact not found: {path} is not a folder")
    if not mpath.is_file():
        raise EdgekitError(f"{path} is not an edgekit artifact: it has no {MANIFEST}")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise EdgekitError(f"{mpath} is not valid JSON: {exc}") from None
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise EdgekitError(f"{mpath} lacks field(s): {', '.join(missing)}")
    if verify_files:
        for name, meta in manifest["files"].items():
            f = path / name
            if not f.is_file():
                raise EdgekitError(f"artifact {path}: file '{name}' listed in the manifest is missing")
            if f.stat().st_size != meta["bytes"] or sha256_file(f) != meta["sha256"]:
                raise EdgekitError(f"artifact {path}: file '{name}' does not match its sha256 in the manifest")
    return Artifact(path, manifest)
