"""The three checkable tasks of the efficacy benchmark, shared by the generator and the
verifier functions so that both agree on what a right answer is.

Digits only, so that with a SentencePiece vocabulary that splits digits (Llama's, the
stories260K model's) every answer digit is one token and exact match is a clean signal:

  reverse  "Reverse 48213."       -> "31284"   (4-6 digits)
  shift    "Shift 4821 up."       -> "5932"    (each digit + 1, 9 wraps to 0)
  lookup   "Code for key 17?"     -> "604"     (a fixed 40-entry table)

2-digit addition was tried in the measurements that led to this benchmark and did not
learn at a CPU-sized budget, so it is left out: a task no arm can learn adds only noise.
"""
from __future__ import annotations

import random
import re

TASKS = ("reverse", "shift", "lookup")

_rng = random.Random(1234)
# 40 two-digit keys -> three-digit codes; fixed (seeded), so checkers can rebuild it.
LOOKUP: dict[str, str] = {}
while len(LOOKUP) < 40:
    LOOKUP.setdefault(f"{_rng.randrange(10, 100)}", f"{_rng.randrange(100, 1000)}")
del _rng

# Short phrasings: with a 512-piece vocabulary every word costs several tokens, and prompt
# tokens are compute the budget (counted in answer tokens) does not see.
PHRASES = {
    "reverse": ["Reverse {x}.", "Flip {x}."],
    "shift": ["Shift {x} up.", "Add one to each digit of {x}."],
    "lookup": ["Code for key {x}?", "Look up key {x}."],
}

_NUMBER = re.compile(r"\d+")


def solve(task: str, x: str) -> str:
    if task == "reverse":
        return x[::-1]
    if task == "shift":
        return "".join(str((int(c) + 1) % 10) for c in x)
    if task == "lookup":
        return LOOKUP[x]
    raise ValueError(f"unknown task {task!r}")


def operand(prompt: str) -> str | None:
    """The number a prompt is about (the last run of digits), or None."""
    found = _NUMBER.findall(prompt or "")
    return found[-1] if found else None
