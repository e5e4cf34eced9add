"""Field checks shared by every typed configuration record (targets, recipes, devices, results, options).

Files a user writes are parsed into frozen dataclasses that validate themselves in `__post_init__`, so a
record that exists is a record that is right. Each check here raises one `EdgekitError` line naming the file
(`where`), the field, what was given and what is allowed, so every loader words its refusals the same way.
TOML and JSON booleans are not numbers here, although Python's `bool` is an `int`: `opset = [true, 21]` or
`activation_symmetric = 0` is a mistake in the file, not a value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from edgekit.errors import EdgekitError

_MAX_SHOWN = 60


def shown(value: Any) -> str:
    """A value as the error shows it: its repr, cut short so a huge or nested value stays on one line."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def bad(where: str, field: str, value: Any, allowed: str) -> EdgekitError:
    return EdgekitError(f"{where}: field '{field}' is {shown(value)}; allowed: {allowed}")


def refuse_unknown(where: str, data: Mapping[str, Any], known: Iterable[str], what: str = "field(s)") -> None:
    """Unknown keys are refused with the list of known ones: a typo silently ignored is worse than an error."""
    known = sorted(known)
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise EdgekitError(f"{where}: unknown {what}: {', '.join(shown(k) for k in unknown)}; "
                           f"known: {', '.join(known) or 'none'}")


def table(where: str, field: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad(where, field, value, "a table")
    return value


def string(where: str, field: str, value: Any, choices: Iterable[str] | None = None,
           nonempty: bool = True) -> str:
    if choices is not None:
        choices = tuple(choices)
        if not isinstance(value, str) or value not in choices:
            raise bad(where, field, value, "one of " + ", ".join(choices))
        return value
    if not isinstance(value, str) or (nonempty and not value.strip()):
        raise bad(where, field, value, "a non-empty string" if nonempty else "a string")
    return value


def boolean(where: str, field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise bad(where, field, value, "true or false")
    return value


def _range_text(lo: float | None, hi: float | None, kind: str) -> str:
    if lo is not None and hi is not None:
        return f"{kind} from {lo:g} to {hi:g}"
    if lo is not None:
        return f"{kind} >= {lo:g}"
    if hi is not None:
        return f"{kind} <= {hi:g}"
    return kind


def integer(where: str, field: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """An int (a float such as 1e308 or 4.0 is refused: the file should say what it means)."""
    if isinstance(value, bool) or not isinstance(value, int) or (lo is not None and value < lo) \
            or (hi is not None and value > hi):
        raise bad(where, field, value, _range_text(lo, hi, "an integer"))
    return value


def number(where: str, field: str, value: Any, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False) -> float:
    """A finite int or float within [lo, hi] ((lo, hi] with `lo_open`)."""
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value <= hi
    if not ok:
        kind = "a finite number" + (f" > {lo:g}" if lo_open and lo is not None else "")
        raise bad(where, field, value, _range_text(None if lo_open else lo, hi, kind))
    return float(value)


def string_list(where: str, field: str, value: Any, choices: Iterable[str] | None = None,
                nonempty: bool = False) -> tuple[str, ...]:
    choices = tuple(choices) if choices is not None else None
    allowed = "a list of " + ("names from " + ", ".join(choices) if choices else "non-empty strings")
    if not isinstance(value, list | tuple) or (nonempty and not value) or not all(
            isinstance(v, str) and v and (choices is None or v in choices) for v in value):
        raise bad(where, field, value, allowed + (" (at least one)" if nonempty else ""))
    return tuple(value)


def integer_list(where: str, field: str, value: Any, length: int | None = None, lo: int | None = None,
                 hi: int | None = None) -> tuple[int, ...]:
    ok = isinstance(value, list | tuple) and (length is None or len(value) == length) and all(
        not isinstance(v, bool) and isinstance(v, int) and (lo is None or v >= lo) and (hi is None or v <= hi)
        for v in value)
    if not ok:
        n = f"{length} " if length is not None else ""
        raise bad(where, field, value, f"a list of {n}" + _range_text(lo, hi, "integers"))
    return tuple(value)


def number_list(where: str, field: str, value: Any, lo: float | None = None, lo_open: bool = False,
                nonempty: bool = True) -> tuple[float, ...]:
    ok = isinstance(value, list | tuple) and (bool(value) or not nonempty) and all(
        not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)
        and (lo is None or (v > lo if lo_open else v >= lo)) for v in value)
    if not ok:
        bound = "" if lo is None else f" {'>' if lo_open else '>='} {lo:g}"
        raise bad(where, field, value, f"a non-empty list of finite numbers{bound}")
    return tuple(float(v) for v in value)


KINDS = ("bool", "int", "float", "str", "choice", "names", "ints", "numbers", "table", "mapping")


@dataclass(frozen=True)
class OptionSpec:
    """One option: its type (`kind`), the values it may take, its default (None: the backend decides) and
    a help line. `ints` lists may have a fixed `length`; `lo`/`hi` bound ints and numbers (for `numbers`
    lists, lo 0 means strictly positive: a scale of zero is never meant)."""

    name: str
    kind: str
    help: str
    default: Any = None
    choices: tuple[str, ...] = ()
    lo: float | None = None
    hi: float | None = None
    length: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"option '{self.name}': kind '{self.kind}' is not one of {', '.join(KINDS)}")
        if (self.kind == "choice") != bool(self.choices):
            raise ValueError(f"option '{self.name}': choices go with kind 'choice' and only with it")
        if self.default is not None:
            self.check(self.default, "default")

    def allowed(self) -> str:
        """What the option takes, in words (for `--help` texts and errors)."""
        return {
            "bool": "true or false", "int": _range_text(self.lo, self.hi, "an integer"),
            "float": _range_text(self.lo, self.hi, "a finite number"),
            "str": "a non-empty string", "choice": "one of " + ", ".join(self.choices),
            "names": "a list of names (or one comma-separated string)",
            "ints": f"a list of {self.length or ''} integers".replace("  ", " "),
            "numbers": "a non-empty list of finite numbers", "table": "a table of KEY = value",
            "mapping": "a table (JSON object) of options, checked by the code that takes them",
        }[self.kind]

    def check(self, value: Any, where: str) -> Any:
        """`value` as the backend uses it, or one EdgekitError naming the option."""
        field, lo, hi = self.name, self.lo, self.hi
        if self.kind == "bool":
            return boolean(where, field, value)
        if self.kind == "int":
            return integer(where, field, value, None if lo is None else int(lo), None if hi is None else int(hi))
        if self.kind == "float":
            return number(where, field, value, lo, hi)
        if self.kind == "str":
            return string(where, field, value)
        if self.kind == "choice":
            return string(where, field, value, self.choices)
        if self.kind == "names":
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            return list(string_list(where, field, value))
        if self.kind == "ints":
            return list(integer_list(where, field, value, self.length, None if lo is None else int(lo)))
        if self.kind == "numbers":
            return list(number_list(where, field, value, lo, lo_open=lo is not None and lo == 0))
        entries = table(where, field, value)
        if self.kind == "mapping":  # values keep their JSON types; their consumer checks names and values
            return {str(k): v for k, v in entries.items()}
        for k, v in entries.items():
            if isinstance(v, bool) or not isinstance(v, str | int | float):
                raise bad(where, f"{field}.{k}", v, "a string or number")
        return {str(k): str(v) for k, v in entries.items()}
