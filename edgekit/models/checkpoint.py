"""Checkpoints and exported programs are data: reading one must never run code it carries.

`torch.load` unpickles, and a pickle can call any function while it is read. `load_torch_file` therefore
always reads with `weights_only=True` (tensors and plain containers: dict, list, tuple, numbers, strings),
and says in one line why a file that needs more was refused.

`torch.export.load` (torch 2.13) reads parts of a `.pt2` archive with a full unpickler: pickled weights and
constants (`weights_only=False`), "opaque object" constants (`pickle.loads`), custom script objects, and
the sample inputs, which it retries with `weights_only=False` when the safe read fails. A crafted `.pt2`
can run code as it is loaded. `check_pt2` looks inside the zip first, without unpickling anything
unsafely: every member torch might unpickle must read with `weights_only=True`; raw tensor payloads and
JSON are left alone. torch imports lazily, so importing this module stays cheap.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError

_WHY = "loading it could run code it carries"
# archive members torch reads as text or as raw bytes, never unpickled
_PLAIN = {"archive_format", "archive_version", "byteorder", "version", ".data/version", ".data/serialization_id"}
_UNSAFE_PREFIXES = ("custom_obj_", "opaque_obj_")  # read with pickle.loads / torch's script-object unpickler


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _refused_global(exc: BaseException) -> str:
    """The global torch's safe unpickler refused (e.g. 'builtins.exec'), when its message names one."""
    found = re.search(r"GLOBAL ([\w.]+)", str(exc)) or re.search(r"global ([\w.]+)", str(exc))
    return f" (it names {found.group(1)})" if found else ""


def _operand(exc: BaseException) -> str:
    found = re.search(r"Unsupported operand[^\n]*", str(exc))
    return found.group(0).strip() if found else type(exc).__name__


def _weights_only_load(data: bytes | Path, what: str, fix: str) -> Any:
    import pickle

    import torch

    source: Any = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it reads anyway
            warnings.simplefilter("ignore")
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        named = _refused_global(exc)
        if named or re.search(r"\breduce\b|\bglobal\b", str(exc), re.I):
            raise EdgekitError(f"{what} holds objects other than tensors and plain containers{named}; "
                               f"refused because {_WHY}; {fix}") from None
        raise EdgekitError(f"{what} is not a readable torch file: the safe reader found no tensors and plain "
                           f"containers ({_operand(exc)})") from None
    except Exception as exc:  # truncated, not a torch file, not a zip: the file is what is wrong
        raise EdgekitError(f"{what} is not a readable torch file: {type(exc).__name__}: {_first_line(exc)}") \
            from None


def load_torch_file(path: str | Path, what: str) -> Any:
    """`torch.load(path, weights_only=True)`; a missing, unreadable or code-carrying file is one line."""
    path = Path(path)
    if not path.is_file():
        raise EdgekitError(f"{what} not found: {path}")
    return _weights_only_load(path, f"{what} {path}", "save state dicts (model.state_dict()) and plain "
                              "containers only")


def _member_names(names: list[str]) -> dict[str, str]:
    """Archive member -> its name below the archive's root folder (torch's own reader strips that)."""
    roots = {n.split("/", 1)[0] for n in names if "/" in n}
    if len(roots) == 1 and all("/" in n for n in names):
        return {n: n.split("/", 1)[1] for n in names}
    return {n: n for n in names}


def _raw_payloads(zf: zipfile.ZipFile, rel: dict[str, str], path: Path) -> set[str]:
    """Members that weights/constants configs declare as raw tensor bytes (not pickled); refuses script
    objects and opaque objects, which torch unpickles with no restriction."""
    raw: set[str] = set()
    for member, name in rel.items():
        folder, base = posixpath.split(name)
        if not (folder in ("data/weights", "data/constants") and base.endswith("_config.json")):
            continue
        try:
            config = json.loads(zf.read(member)).get("config", {})
            entries = list(config.values())
        except (ValueError, AttributeError, UnicodeDecodeError):
            raise EdgekitError(f"{path} is not a valid torch.export archive: {name} is malformed") from None
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            pname = str(entry.get("path_name", ""))
            if pname.startswith(_UNSAFE_PREFIXES):
                raise EdgekitError(f"{path} carries a pickled Python object ({folder}/{pname}); refused because "
                                   f"{_WHY}; export a model whose constants are tensors")
            if entry.get("use_pickle") is False:
                raw.add(f"{folder}/{pname}")
    return raw


def check_pt2(path: str | Path) -> None:
    """Refuse a `.pt2` that torch.export.load would unpickle unsafely, or that is not such an archive."""
    path = Path(path)
    if not path.is_file():
        raise EdgekitError(f"torch.export program not found: {path}")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise EdgekitError(f"{path} is not a torch.export archive (.pt2 from torch.export.save): "
                           f"{_first_line(exc)}") from None
    with zf:
        rel = _member_names(zf.namelist())
        raw = _raw_payloads(zf, rel, path)
        for member, name in rel.items():
            if member.endswith("/") or name in raw or name in _PLAIN or name.endswith(".json") \
                    or name.startswith(("extra/", "extra_files/")):
                continue
            if posixpath.basename(name).startswith(_UNSAFE_PREFIXES):
                raise EdgekitError(f"{path} carries a pickled Python object ({name}); refused because {_WHY}")
            try:
                data = zf.read(member)
            except (zipfile.BadZipFile, OSError, ValueError) as exc:  # CRC error, truncated member
                raise EdgekitError(f"{path} is a damaged archive ({name}: {_first_line(exc)})") from None
            _weights_only_load(data, f"{path} (member {name})", "save it with torch.export.save from a "
                               "model you trust")


def load_exported_program(path: str | Path) -> Any:
    """`torch.export.load` after `check_pt2`; torch's own failure is one line."""
    check_pt2(path)
    import torch

    try:
        return torch.export.load(str(path))
    except Exception as exc:
        raise EdgekitError(f"cannot load {path} as a torch.export program: {type(exc).__name__}: "
                           f"{_first_line(exc)}") from None
