"""Artifact folders: written atomically (a staging folder renamed into place only when everything
succeeded), described by manifest.json, and checked against their manifest when loaded.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.manifest import MANIFEST, Manifest, read_manifest, sha256_file
from edgekit.manifest import verify_files as check_files

__all__ = ["MANIFEST", "MANIFEST_VERSION", "Artifact", "load_artifact", "sha256_file", "staging", "write_manifest"]

MANIFEST_VERSION = 1


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
        raise EdgekitError(f"output folder {out} exists; choose another out= (--out) or pass force=True (--force) "
                           "to replace it")
    if out.exists() and not out.is_dir():
        raise EdgekitError(f"output path {out} exists and is not a folder")
    check_writable(out)


@contextlib.contextmanager
def staging(out: Path, force: bool) -> Iterator[Path]:
    """Yield a private folder beside `out`; on success it replaces `out`, on any error it is removed."""
    check_destination(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    from edgekit.common.rundir import sweep

    # a run killed here (SIGKILL) left its staging folder; it is gone with its PID, so remove it now
    sweep(None, [out], log=lambda m: print(m, file=sys.stderr))
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
    #: the validated, typed view of `manifest` (None only for an Artifact built by hand)
    info: Manifest | None = None

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


def load_artifact(path: Path | str, verify_files: bool = True) -> Artifact:
    """Read an artifact folder through the validated manifest (edgekit.manifest); with `verify_files`, every
    listed file must be inside the folder with its size and sha256."""
    path = Path(path)
    info = read_manifest(path)
    if verify_files:
        check_files(path, info)
    return Artifact(path, dict(info.raw), info)
