"""Where the built-in data folders (targets/, calibration/) live.

In a source checkout or editable install they are the repository's top-level folders; in a wheel they are
copied to edgekit/_data/ (see pyproject.toml's force-include).
"""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent.parent  # the edgekit package folder


def load_toml(path: Path, what: str) -> dict:
    """A user's TOML file (target, calibration recipe, devices) as a dict, or one EdgekitError that says which
    file and why: unreadable, not text, or not TOML."""
    import tomllib

    from edgekit.errors import EdgekitError

    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise EdgekitError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise EdgekitError(f"{path}: not valid TOML ({exc})") from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise EdgekitError(f"{path}: not valid TOML (nested too deeply to read)") from None


def builtin_dir(name: str) -> Path:
    for candidate in (_PKG / "_data" / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"edgekit's built-in '{name}' folder is missing (looked in {_PKG / '_data'})")
