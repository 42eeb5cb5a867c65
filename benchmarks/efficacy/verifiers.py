"""Verifier functions for `scorer = "verifier"` on the efficacy benchmark's tasks.

    [[stages]]
    kind = "quality"
    scorer = "verifier"
    python_path = ["."]                       # this folder, relative to the pipeline file
    functions = { reverse = "verifiers:reverse", shift = "verifiers:shift", lookup = "verifiers:lookup" }

Each function gets one record (a dict with "task", "prompt", "response", ...) and returns
True when the answer is exactly right, False otherwise (a wrong digit, a refusal, a
chatty wrapper around the right digits, a truncated answer), or None when the prompt has
no number to check (no opinion). This is what a math or code set's checker looks like:
recompute the answer (or run the tests) and compare.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digit_tasks import LOOKUP, operand, solve  # noqa: E402


def _check(task: str, rec: dict) -> bool | None:
    x = operand(rec.get("prompt") or "")
    if x is None or (task == "lookup" and x not in LOOKUP):
        return None
    return (rec.get("response") or "").strip() == solve(task, x)


def reverse(rec: dict) -> bool | None:
    return _check("reverse", rec)


def shift(rec: dict) -> bool | None:
    return _check("shift", rec)


def lookup(rec: dict) -> bool | None:
    return _check("lookup", rec)
