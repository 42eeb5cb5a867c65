"""Turn plain dicts (parsed TOML) into typed dataclasses, refusing unknown keys and wrong
types with an error that names the key (and, where the TOML text allows, its line).

Supported field types: str, int, float, bool, Path-like str, Literal[...], X | None,
list[X], dict[str, X], tuple[X, ...] and nested dataclasses. Kept tiny on purpose: a
dependency such as pydantic would do the same at the cost of an import every stage pays."""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Literal, get_args, get_origin


class ConfigError(ValueError):
    """A refused configuration: `key` is the dotted path, e.g. `stages[2].threshold`."""

    def __init__(self, key: str, reason: str, line: int | None = None, file: str | None = None):
        self.key, self.reason, self.line, self.file = key, reason, line, file
        super().__init__(self.message())

    def message(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}" + (f":{self.line}" if self.line else "") + ": "
        return f"{where}config key `{self.key}`: {self.reason}"


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def coerce(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(exc.reason)
        raise ConfigError(key, "; ".join(errors) or f"got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(key, f"must be one of {_type_name(tp)}, got {value!r}")
        return value
    if origin is list or origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(key, f"must be a list, got {type(value).__name__} {value!r}")
        (item,) = get_args(tp)[:1] or (Any,)
        items = [coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a table, got {type(value).__name__}")
        _, vt = get_args(tp) or (str, Any)
        return {str(k): coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a table, got {type(value).__name__}")
        return load_dataclass(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {value!r}")
        return value
    raise ConfigError(key, f"unsupported config type {tp!r}")


def load_dataclass(cls: type, data: dict, key: str = "") -> Any:
    """Build dataclass `cls` from `data`; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{key}." if key else ""
    for k in data:
        if k not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{prefix}{k}", f"unknown key (known keys: {known})")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = coerce(hints[name], data[name], f"{prefix}{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name}", "missing required key")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        try:
            check()
        except ConfigError as exc:
            if not exc.key.startswith(prefix):
                exc.key = f"{prefix}{exc.key}"
                exc.args = (exc.message(),)
            raise
    return obj


def locate_line(toml_text: str, key: str) -> int | None:
    """Best-effort line number of a dotted key such as `stages[2].threshold` in TOML text."""
    lines = toml_text.splitlines()
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", key)
    start, table = 0, None
    i = 0
    while i < len(parts):
        part = parts[i]
        nxt = parts[i + 1] if i + 1 < len(parts) else None
        if nxt is not None and nxt.startswith("["):
            idx = int(nxt[1:-1])
            hdr = re.compile(rf"^\s*\[\[\s*{re.escape(part)}\s*\]\]")
            hits = [n for n, ln in enumerate(lines) if hdr.match(ln)]
            if idx < len(hits):
                start, table = hits[idx], part
            i += 2
            continue
        if i + 1 < len(parts) and table is None:
            hdr = re.compile(rf"^\s*\[\s*{re.escape(part)}\s*\]")
            for n, ln in enumerate(lines):
                if hdr.match(ln):
                    start, table = n, part
                    break
            i += 1
            continue
        pat = re.compile(rf"^\s*{re.escape(part)}\s*=")
        for n in range(start, len(lines)):
            if n > start and re.match(r"^\s*\[", lines[n]) and table is not None:
                break
            if pat.match(lines[n]):
                return n + 1
        return start + 1 if table is not None else None
    return start + 1 if table is not None else None
