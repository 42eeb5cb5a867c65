"""Multi-task instruction templates: raw task data (question/answer, source/target text,
document/summary, code/description) turned into a user/assistant conversation through one
of several phrasings per task, chosen per record deterministically, as FLAN does, so that
a model learns the task rather than one wording.

A template is a TOML file in `templates/tasks/<name>.toml` (installed as the package
`curate_templates`, so it also loads from a wheel) or a path to such a file:

    description = "..."
    required = ["source", "target"]          # slots every record must fill
    optional = ["source_lang", "target_lang"] # slots a record may fill
    [[phrasings]]
    requires = ["target_lang"]               # used only when these optional slots are filled
    excludes = []                            # used only when these optional slots are empty
    user = "Translate this into {{ target_lang }}.\\n\\n{{ source }}"
    assistant = "{{ target }}"

Phrasings are Jinja, rendered in an ImmutableSandboxedEnvironment: a user-supplied
template file must not reach Python internals.
"""
from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from itertools import combinations
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


@dataclass(frozen=True)
class Phrasing:
    user: Any  # compiled jinja Template
    assistant: Any
    requires: frozenset[str]
    excludes: frozenset[str]

    def eligible(self, present: set[str]) -> bool:
        return self.requires <= present and not (self.excludes & present)


@dataclass(frozen=True)
class TaskTemplate:
    name: str
    path: str
    description: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    phrasings: tuple[Phrasing, ...]

    @property
    def slots(self) -> tuple[str, ...]:
        return self.required + self.optional


def templates_dir() -> Path:
    """`curate_templates/tasks` from the installed package, else the checkout's folder."""
    try:
        p = resources.files("curate_templates") / "tasks"
        if p.is_dir():
            return Path(str(p))
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parents[2] / "templates" / "tasks"


def available_templates() -> list[str]:
    return sorted(p.stem for p in templates_dir().glob("*.toml"))


def _template_path(name: str, base_dir: Path | None = None) -> Path:
    if name.endswith(".toml") or "/" in name or "\\" in name:
        p = Path(name).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = Path(base_dir) / p
        if not p.is_file():
            raise ValueError(f"task template file not found: {p}")
        return p
    p = templates_dir() / f"{name}.toml"
    if not p.is_file():
        raise ValueError(f"unknown task template {name!r} (built-in: {', '.join(available_templates())})")
    return p


@lru_cache(maxsize=64)
def _load(path: str) -> TaskTemplate:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from exc
    unknown = set(data) - {"description", "required", "optional", "phrasings"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    required = tuple(data.get("required", []))
    optional = tuple(data.get("optional", []))
    if not required:
        raise ValueError(f"{path}: `required` must list at least one slot")
    slots = set(required) | set(optional)
    phrasings = []
    for i, ph in enumerate(data.get("phrasings", [])):
        extra = set(ph) - {"user", "assistant", "requires", "excludes"}
        if extra or "user" not in ph or "assistant" not in ph:
            raise ValueError(f"{path}: phrasings[{i}] needs `user` and `assistant` (and only requires/excludes besides)")
        used = set()
        for key in ("user", "assistant"):
            used |= meta.find_undeclared_variables(_ENV.parse(ph[key]))
        if used - slots:
            raise ValueError(f"{path}: phrasings[{i}] uses undeclared slots {sorted(used - slots)}")
        requires = frozenset(ph.get("requires", []))
        excludes = frozenset(ph.get("excludes", []))
        if (requires | excludes) - set(optional):
            raise ValueError(f"{path}: phrasings[{i}] requires/excludes must name optional slots")
        if (used & set(optional)) - requires:
            raise ValueError(f"{path}: phrasings[{i}] uses optional slots {sorted((used & set(optional)) - requires)} "
                             "without listing them in `requires`")
        phrasings.append(Phrasing(_ENV.from_string(ph["user"]), _ENV.from_string(ph["assistant"]), requires, excludes))
    if not phrasings:
        raise ValueError(f"{path}: at least one [[phrasings]] is required")
    # Every combination of filled optional slots must leave a phrasing to choose from.
    for r in range(len(optional) + 1):
        for present in combinations(optional, r):
            if not any(p.eligible(set(present)) for p in phrasings):
                raise ValueError(f"{path}: no phrasing applies when only optional slots {list(present)} are filled")
    return TaskTemplate(Path(path).stem, path, data.get("description", ""), required, optional, tuple(phrasings))


def load_task_template(name: str, base_dir: str | Path | None = None) -> TaskTemplate:
    """A built-in template by name, or a template file by path. Raises ValueError."""
    return _load(str(_template_path(name, Path(base_dir) if base_dir else None).resolve()))


def _lookup(record: dict, field: str) -> Any:
    """`a.b` reaches into nested objects; a plain key wins if the record has it."""
    if field in record:
        return record[field]
    cur: Any = record
    for part in field.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float, bool)):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def pick_index(values: dict[str, str], index: int, n: int) -> int:
    """Deterministic phrasing choice from the record's position and content, so equal
    records at different positions may get different phrasings, and reruns the same."""
    canon = json.dumps(sorted(values.items()), ensure_ascii=False, separators=(",", ":"))
    digest = hashlib.sha1(f"{index}\x00{canon}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n


def template_fields(source_cfg: Any, base_dir: str | Path | None = None) -> set[str]:
    """The record fields a `format = "task"` source turns into messages (so a reader can
    leave them out of `meta`): each slot's mapped name, or the slot name itself."""
    tmpl = load_task_template(source_cfg.task_template, base_dir)
    mapping = dict(getattr(source_cfg, "fields", None) or {})
    return {mapping.get(slot, slot) for slot in tmpl.slots}


def build_messages(record: dict, source_cfg: Any, index: int, base_dir: str | Path | None = None) -> list[dict]:
    """One record of raw task data -> [{"role": "user", ...}, {"role": "assistant", ...}].

    `source_cfg.fields` maps a template slot to the record's field name (default: the slot
    name itself). Raises KeyError(record field name) when a required field is missing or
    empty, so the reader can quarantine the record naming the field; ValueError for an
    unknown template."""
    tmpl = load_task_template(source_cfg.task_template, base_dir)
    mapping = dict(getattr(source_cfg, "fields", None) or {})
    values: dict[str, str] = {}
    for slot in tmpl.slots:
        field = mapping.get(slot, slot)
        text = _as_text(_lookup(record, field))
        if text.strip():
            values[slot] = text
        elif slot in tmpl.required:
            raise KeyError(field)
    present = set(values) & set(tmpl.optional)
    eligible = [p for p in tmpl.phrasings if p.eligible(present)]
    ph = eligible[pick_index(values, index, len(eligible))]
    return [
        {"role": "user", "content": ph.user.render(**values)},
        {"role": "assistant", "content": ph.assistant.render(**values)},
    ]
