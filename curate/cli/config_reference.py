"""The config reference and the code, kept in step.

Every config key the typed config accepts, section by section, is read from the dataclasses
themselves (`config_sections`, `expected_doc_keys`), and `docs/config.md` is read back
(`documented_keys`). The reference is written by hand (a meaning needs a sentence, not a
type) and checked against the dataclasses by tests/test_docs_config.py in both directions:
a key added to a dataclass fails the test until documented, a documented key that no
dataclass has fails it too, and so does a key documented twice. It lives with the command
line because it sees every part, the trainer's `[train]` included."""
from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path


def dataclass_keys(cls) -> list[str]:
    """The TOML keys of a config dataclass, in declaration order (nested dataclasses and
    `kind`/`name` included: they are keys a user writes)."""
    return [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]


def nested_dataclasses(cls) -> dict[str, type]:
    """Fields of `cls` whose type is a dataclass or a list of dataclasses: {field: class}
    (e.g. decontaminate's `evalsets` entries), documented as their own table."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        t = hints.get(f.name)
        for cand in (t, *typing.get_args(t)):
            for inner in (cand, *typing.get_args(cand)):
                if dataclasses.is_dataclass(inner):
                    out[f.name] = inner
    return out


def config_sections() -> dict[str, type]:
    """{section title: dataclass} for every section of pipeline.toml, in the order the
    docs present them."""
    from curate.pipeline.config import RunConfig
    from curate.read.sources import SourceConfig
    from curate.render.config import RenderConfig
    from curate.stages import STAGE_MODULES, stage_class

    sections: dict[str, type] = {"[run]": RunConfig, "[[sources]]": SourceConfig}
    for kind in STAGE_MODULES:
        cls = stage_class(kind).Config
        sections[f'[[stages]] kind = "{kind}"'] = cls
        for fname, inner in nested_dataclasses(cls).items():
            sections[f'[[stages]] kind = "{kind}" · {fname} entries'] = inner
    sections["[render]"] = RenderConfig
    from curate.render.export import ExportConfig

    sections["[export]"] = ExportConfig
    try:
        from train.config import TrainConfig  # the trainer validates [train]; curation never imports it
    except ImportError:  # pragma: no cover - a build without the trainer
        return sections
    sections["[train]"] = TrainConfig
    for fname, inner in nested_dataclasses(TrainConfig).items():
        sections[f"[train] · {fname}"] = inner
    return sections


EVERY_STAGE = "[[stages]] (every kind)"
COMMON_STAGE_KEYS = ("kind", "name")


def expected_doc_keys() -> dict[str, list[str]]:
    """{docs section: keys} that docs/config.md must document: every section's keys, with
    the keys every stage kind shares (`kind`, `name`) documented once, in their own section."""
    out = {EVERY_STAGE: list(COMMON_STAGE_KEYS)}
    for title, cls in config_sections().items():
        keys = dataclass_keys(cls)
        if title.startswith("[[stages]] kind") and " · " not in title:
            keys = [k for k in keys if k not in COMMON_STAGE_KEYS]
        out[title] = keys
    return out

_HEADING = re.compile(r"^##\s+(.+?)\s*$")
_KEY = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def documented_keys(path: str | Path) -> dict[str, dict[str, int]]:
    """{section title: {key: times documented}}. A section is a `## title` heading; its keys
    are the backticked names in the first column of the table rows under it (a row may name
    several keys: `a`, `b`)."""
    out: dict[str, dict[str, int]] = {}
    section = None
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        m = _HEADING.match(line)
        if m:
            section = m.group(1).replace("\\", "")
            out.setdefault(section, {})
            continue
        if section is None or not line.startswith("|") or line.startswith("| ---") or line.startswith("| key"):
            continue
        first = line.split("|")[1]
        for key in _KEY.findall(first):
            out[section][key] = out[section].get(key, 0) + 1
    return out
