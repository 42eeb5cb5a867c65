"""Config checks that know the pipeline and the data, beyond one key's type and range.

  check_columns(stages)       at validate time: every column a stage reads by name
                              (`select column`, `dedup score_column`, ...) is made by an
                              earlier stage; else ConfigError naming the stages and the
                              columns they make (and the closest name).
  check_names(stages, table)  after reading: group names a stage is given (`mix` weights,
                              targets; `select` quotas) exist in the data; else
                              ConfigError listing the valid names, or a warning for a
                              stage with `strict = false`.

What a stage makes: its Config's `output_columns()` when it has one (quality, consensus,
dedup); otherwise every column named `<stage name>_*` (filter statistics, language,
pii, decontaminate), which is what the stage contract promises. Mix makes `split` and
`repeat`. A column a stage reads by name is looked for among those and the schema columns.
"""
from __future__ import annotations

import difflib
from typing import Any

from curate.contract.schema import POLARS_SCHEMA
from curate.contract.typed_config import ConfigError


def _name(cfg: Any) -> str:
    return getattr(cfg, "name", None) or cfg.kind


def made_by(cfg: Any) -> tuple[list[str], str | None]:
    """(exact column names, a name prefix or None) a stage adds to the table."""
    if cfg.kind == "mix":
        return ["split", "repeat"], None
    out = getattr(cfg, "output_columns", None)
    if out is not None:
        return list(out()), None
    return [], f"{_name(cfg)}_"


def column_refs(cfg: Any) -> list[tuple[str, str]]:
    """(config key, column) pairs of the columns a stage reads by name."""
    refs = getattr(cfg, "column_refs", None)
    return list(refs()) if refs is not None else []


def check_columns(stages: list[Any]) -> None:
    """Refuse a column that no earlier stage makes (select on a typo'd score column would
    otherwise die mid-run, after the expensive stages)."""
    for i, cfg in enumerate(stages):
        earlier = stages[:i]
        for key, col in column_refs(cfg):
            if col in POLARS_SCHEMA:
                continue
            if any(col in exact or (prefix and col.startswith(prefix))
                   for exact, prefix in (made_by(e) for e in earlier)):
                continue
            known = []
            for e in earlier:
                exact, prefix = made_by(e)
                what = ", ".join(exact) + (f"{', ' if exact else ''}{prefix}*" if prefix else "")
                known.append(f"{_name(e)} ({e.kind}): {what}")
            names = [c for e in earlier for c in made_by(e)[0]]
            close = difflib.get_close_matches(col, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            made = "; ".join(known) if known else "no stage runs before this one"
            raise ConfigError(f"stages[{i}].{key}", f"no earlier stage makes column {col!r}{hint}; earlier stages make: {made}")


def check_names(stages: list[Any], names: dict[str, list[str]], log=print) -> list[str]:
    """Run each stage config's `check_data(names)` (names: {"task": [...], "source": [...]}
    of the records read); returns the warnings (also logged). ConfigError keys are
    prefixed with the stage's position."""
    warnings = []
    for i, cfg in enumerate(stages):
        check = getattr(cfg, "check_data", None)
        if check is None:
            continue
        try:
            for w in check(names):
                msg = f"warning: stages[{i}] ({_name(cfg)}): {w}"
                log(msg)
                warnings.append(msg)
        except ConfigError as exc:
            exc.key = f"stages[{i}].{exc.key}"
            exc.args = (exc.message(),)
            raise
    return warnings
