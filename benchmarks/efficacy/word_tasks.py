"""The second task family of the noisy-pool benchmark, written apart from digit_tasks.py
(a different generator: words, not digits; its own tables and rules):

  capital  "Capital of Velmor?"        -> "Orsk"          (a fixed 30-entry made-up table:
                                                          the same prompts recur many times)
  plural   "Plural of box."            -> "boxes"         (English regular plural rules)
  acronym  "Acronym of light amplified radiation." -> "LAR"  (first letters, upper case)
"""
from __future__ import annotations

import random

TASKS = ("capital", "plural", "acronym")

_rng = random.Random(20261207)
_SYL = ["ka", "vel", "mor", "tri", "sa", "lon", "bre", "di", "ost", "ru", "nen", "pa", "quo", "zel", "ith", "an"]


def _word(k: int) -> str:
    return "".join(_rng.choice(_SYL) for _ in range(k)).capitalize()


CAPITALS: dict[str, str] = {}
while len(CAPITALS) < 30:
    CAPITALS.setdefault(_word(2), _word(2))
del _rng

NOUNS = ["box", "cat", "city", "bus", "wish", "church", "toy", "day", "fox", "lady", "map", "key", "glass", "berry",
         "dish", "pen", "story", "boy", "watch", "kiss", "tree", "party", "hat", "tax", "bench", "ray", "cup", "baby",
         "brush", "lamp", "copy", "bay", "match", "dress", "car", "army", "jar", "quiz", "book", "bunny"]
WORDS = ["light", "amplified", "radiation", "north", "atlantic", "treaty", "random", "access", "memory", "central",
         "processing", "unit", "global", "position", "system", "frequently", "asked", "question", "local", "area",
         "network", "open", "source", "software", "machine", "learning", "model", "data", "quality", "score"]

PHRASES = {
    "capital": ["Capital of {x}?", "What is the capital of {x}?"],
    "plural": ["Plural of {x}.", "Give the plural of {x}."],
    "acronym": ["Acronym of {x}.", "Initials of {x}."],
}


def solve(task: str, x: str) -> str:
    if task == "capital":
        return CAPITALS[x]
    if task == "plural":
        if x.endswith(("s", "x", "z", "ch", "sh")):
            return x + "es"
        if x.endswith("y") and x[-2] not in "aeiou":
            return x[:-1] + "ies"
        return x + "s"
    if task == "acronym":
        return "".join(w[0] for w in x.split()).upper()
    raise ValueError(f"unknown task {task!r}")


def draw(rng: random.Random, task: str) -> str:
    if task == "capital":
        return rng.choice(sorted(CAPITALS))
    if task == "plural":
        return rng.choice(NOUNS)
    return " ".join(rng.sample(WORDS, rng.randint(2, 4)))


def wrong(rng: random.Random, task: str, x: str, right: str) -> str:
    """A plausible wrong answer: another key's capital, the wrong plural rule, a dropped or
    lower-cased letter."""
    if task == "capital":
        return rng.choice([c for c in CAPITALS.values() if c != right])
    if task == "plural":
        for cand in (x + "s", x + "es", x[:-1] + "ies" if x.endswith("y") else x + "ies", x):
            if cand != right:
                return cand
    letters = list(right)
    if len(letters) > 2 and rng.random() < 0.5:
        del letters[rng.randrange(len(letters))]
        return "".join(letters)
    return right.lower()
