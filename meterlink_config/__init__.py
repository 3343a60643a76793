"""Typed reading of TOML config files, shared by every MeterLink service.

Only config modules read files; everything else gets typed values. Every mistake is one
`ConfigError` that names the file and the key, so a systemd journal line says what to fix.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["ConfigError", "TomlReader"]

_T = TypeVar("_T")
_MISSING: Any = object()


class ConfigError(Exception):
    """A config file is missing, unreadable or has a bad value; names the file and the key."""

    def __init__(self, path: str, key: str, reason: str) -> None:
        super().__init__(f"{path}: {key}: {reason}" if key else f"{path}: {reason}")
        self.path = path
        self.key = key
        self.reason = reason


class TomlReader:
    """Pulls typed values out of one parsed TOML file, naming the file and key in every error.

    Keys are dotted paths from the top of the document (``publish.port``); relative file paths
    in values are resolved against the file's folder, so a config folder can be moved.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)
        try:
            self.doc: dict[str, Any] = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(self.where, "", f"cannot read: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(self.where, "", "not UTF-8 text") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(self.where, "", f"not valid TOML: {exc}") from exc

    def error(self, key: str, reason: str) -> ConfigError:
        """A ConfigError for `key` in this file."""
        return ConfigError(self.where, key, reason)

    def has(self, key: str) -> bool:
        """Whether `key` (a dotted path) is present."""
        return self._lookup(key) is not _MISSING

    def table(self, key: str, *, required: bool = False) -> dict[str, Any]:
        """The table at `key`, or {} when absent and not required."""
        value = self._lookup(key)
        if value is _MISSING:
            if required:
                raise self.error(f"[{key}]", "missing table")
            return {}
        if not isinstance(value, dict):
            raise self.error(f"[{key}]", "expected a table")
        return value

    def tables(self, key: str) -> list[dict[str, Any]]:
        """An array of tables (``[[key]]``), or [] when absent."""
        value = self._lookup(key)
        if value is _MISSING:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error(f"[[{key}]]", "expected an array of tables")
        return value

    def get(self, key: str, kind: type[_T] | tuple[type, ...], default: Any = _MISSING) -> Any:
        """The value at `key`, checked against `kind` (bool is never accepted as a number)."""
        value = self._lookup(key)
        if value is _MISSING:
            if default is _MISSING:
                raise self.error(key, "missing")
            return default
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise self.error(key, f"expected {names}, got {value!r}")
        return value

    def number(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        low: float | None = None,
        high: float | None = None,
    ) -> float:
        """A float (ints accepted) within [low, high]."""
        value = float(self.get(key, (int, float), default))
        self._check_range(key, value, low, high)
        return value

    def integer(
        self, key: str, default: Any = _MISSING, *, low: int | None = None, high: int | None = None
    ) -> int:
        """An int within [low, high]."""
        value: int = self.get(key, int, default)
        self._check_range(key, value, low, high)
        return value

    def choice(self, key: str, options: Sequence[str], default: Any = _MISSING) -> str:
        """A string that must be one of `options`."""
        value: str = self.get(key, str, default)
        if value not in options:
            raise self.error(key, f"must be one of {', '.join(options)}, got {value!r}")
        return value

    def file(self, key: str, default: Any = _MISSING, *, must_exist: bool = True) -> Path:
        """A path (relative to the config file's folder) that must name an existing file."""
        path = self.resolve(self.get(key, str, default))
        if must_exist and not path.is_file():
            raise self.error(key, f"no such file: {path}")
        return path

    def resolve(self, text: str) -> Path:
        """Relative paths are relative to the config file's folder."""
        path = Path(text).expanduser()
        return path if path.is_absolute() else (self.path.parent / path).resolve()

    def _check_range(self, key: str, value: float, low: float | None, high: float | None) -> None:
        if low is not None and value < low:
            raise self.error(key, f"must be >= {low}, got {value}")
        if high is not None and value > high:
            raise self.error(key, f"must be <= {high}, got {value}")

    def _lookup(self, key: str) -> Any:
        node: Any = self.doc
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return _MISSING
            node = node[part]
        return node
