"""Verifier functions for the noisy-pool benchmark's checkable tasks, written WITHOUT
importing either generator (digit_tasks.py, word_tasks.py): each recomputes the answer
from the prompt by its own reading of the task, as a user's checker would.

Not checkable without the generator's table: `lookup` and `capital` (a checker would need
the answer key); they return None (no opinion), so the verifier arm is the upper bound of
the CHECKABLE tasks only.
"""
from __future__ import annotations

import re


def _last_number(prompt: str) -> str | None:
    m = re.findall(r"\d+", prompt or "")
    return m[-1] if m else None


def _after_of(prompt: str) -> str | None:
    m = re.search(r"\bof (.+?)[.?]?$", (prompt or "").strip())
    return m.group(1).strip() if m else None


def reverse(rec: dict) -> bool | None:
    x = _last_number(rec.get("prompt"))
    return None if x is None else (rec.get("response") or "").strip() == "".join(reversed(x))


def shift(rec: dict) -> bool | None:
    x = _last_number(rec.get("prompt"))
    if x is None:
        return None
    want = "".join("0123456789"[("0123456789".index(c) + 1) % 10] for c in x)
    return (rec.get("response") or "").strip() == want


def plural(rec: dict) -> bool | None:
    w = _after_of(rec.get("prompt"))
    if not w:
        return None
    if re.search(r"(s|x|z|ch|sh)$", w):
        want = w + "es"
    elif re.search(r"[^aeiou]y$", w):
        want = w[:-1] + "ies"
    else:
        want = w + "s"
    return (rec.get("response") or "").strip() == want


def acronym(rec: dict) -> bool | None:
    phrase = _after_of(rec.get("prompt"))
    if not phrase:
        return None
    return (rec.get("response") or "").strip() == "".join(p[0].upper() for p in phrase.split())


def no_opinion(rec: dict) -> None:
    return None
