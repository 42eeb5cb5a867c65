"""`scorer = "verifier"`: the user's own Python function per task decides or scores.

    functions = {math = "checks:math_answer_ok", "*" = "checks:generic"}
    python_path = ["tools"]     # added to sys.path (relative to pipeline.toml)

A function receives one record as a dict:
    {"id", "source", "task", "messages": [{"role", "content"}, ...],
     "prompt", "response", "meta": {...original fields...}}
and returns True/False (1.0/0.0), a number (its score), or None (no opinion). An exception
or any other return value gives a null score and the error in `<column>_error`, so one
bad record cannot stop a run.

This runs the user's code in-process with the user's rights: the module is theirs and
the trust is on them, as with any Python file they import.
"""
from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path
from typing import Callable

import polars as pl

from curate.contract.views import text_view


def load_functions(functions: dict[str, str], python_path: list[Path]) -> dict[str, Callable]:
    for p in reversed(python_path):
        s = str(p)
        if s not in sys.path:
            sys.path.insert(0, s)
    out = {}
    for task, spec in functions.items():
        module_name, _, attr = spec.partition(":")
        module = importlib.import_module(module_name)
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise ValueError(f"{spec!r}: module {module_name!r} has no function {attr!r}")
        out[task] = fn
    return out


def _as_score(value) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if value is None:
        return None
    if isinstance(value, (int, float)):
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"returned a non-finite number {value!r}")
        return v
    raise TypeError(f"returned {type(value).__name__}; expected bool, number or None")


def run(table: pl.DataFrame, fns: dict[str, Callable]) -> tuple[list[float | None], list[str | None]]:
    """One call per record: the user function is the library call that forces the loop."""
    view = table.select("id", "source", "task", "messages", "meta",
                        text_view("prompt").alias("prompt"), text_view("response").alias("response"))
    scores: list[float | None] = []
    errors: list[str | None] = []
    default = fns.get("*")
    for rec in view.iter_rows(named=True):
        fn = fns.get(rec["task"], default)
        if fn is None:
            scores.append(None)
            errors.append(None)
            continue
        try:
            rec["meta"] = json.loads(rec["meta"]) if rec["meta"] else {}
        except ValueError:
            pass
        try:
            scores.append(_as_score(fn(rec)))
            errors.append(None)
        except Exception as exc:  # noqa: BLE001 - a user function's failure is data, not a crash
            scores.append(None)
            errors.append(f"{type(exc).__name__}: {exc}"[:500])
    return scores, errors
