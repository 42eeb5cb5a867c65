"""Generate the efficacy benchmark's data: a noisy multi-task raw pool, a small trusted seed
set, and a clean held-out test set with unseen inputs.

    python benchmarks/efficacy/generate.py OUT_DIR [--pool 6000] [--seed 0]

Writes (Alpaca-style JSONL, `task` per record):
  pool.jsonl         the raw pool, noise injected at the rates below
  pool_labels.jsonl  one line per pool record: its planted defect ("clean" or which kind);
                     kept apart from the pool so no stage can see it (the oracle uses it)
  oracle.jsonl       the pool's clean records, each once, no eval leaks (the upper bound)
  shuffled.jsonl     oracle.jsonl with answers shuffled within each task (the floor)
  seed.jsonl         a few hundred clean examples with inputs used nowhere else
                     (what a user writes or checks by hand to train a reference model)
  test.jsonl         the held-out test set: reverse/shift on unseen inputs, lookup on
                     every key of the table (a memorised table has no "unseen" key)
  evalset.jsonl      the test items with unseen inputs (reverse, shift): `decontaminate`'s
                     eval set (lookup's keys are meant to be seen in training)
  stats.json         the planted counts

Noise, as fractions of the unique records before duplication (`RATES`):
  wrong       plausible wrong answers (one digit changed, digits swapped, the input
              echoed, shift by two, another key's code)
  refusal     refusals and chatty boilerplate around the answer ("Sure! The answer is ...")
  truncated   the answer cut by one or two digits
then copies are added: exact duplicates (`DUP_RATE` of the final pool) and near
duplicates (case/punctuation/spacing edits of a record), and `LEAKS` test prompts with
their answers are planted (eval leakage, for `decontaminate`). Deterministic per seed.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digit_tasks import LOOKUP, PHRASES, TASKS, solve  # noqa: E402

RATES = {"wrong": 0.30, "refusal": 0.10, "truncated": 0.05}
DUP_RATE = 0.20  # exact copies, as a fraction of the final pool
NEAR_DUP_RATE = 0.05  # lightly edited copies, as a fraction of the final pool
LEAK_FRACTION = 0.02  # test prompts planted in the pool, as a fraction of the final pool

REFUSALS = [
    "I'm sorry, but I can't help with that request.",
    "As an AI language model, I cannot perform calculations on personal data.",
    "I am unable to answer this question.",
]
BOILERPLATE = [
    "Sure! The answer is {a}. Let me know if you need anything else!",
    "Here is the result: {a}\n\nI hope this helps!",
    "Great question! After careful thought, the answer is {a}.",
]


def _digits(rng: random.Random) -> str:
    n = rng.randint(4, 6)
    return str(rng.randint(1, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(n - 1))


def _wrong(rng: random.Random, task: str, x: str, right: str) -> str:
    """A plausible wrong answer: the same shape as the right one."""
    for _ in range(20):
        kind = rng.randrange(3)
        if task == "lookup":
            a = LOOKUP[rng.choice([k for k in LOOKUP if k != x])] if kind < 2 else right[::-1]
        elif kind == 0:  # one digit changed
            i = rng.randrange(len(right))
            a = right[:i] + str((int(right[i]) + rng.randint(1, 9)) % 10) + right[i + 1:]
        elif kind == 1:  # two neighbouring digits swapped
            i = rng.randrange(len(right) - 1)
            a = right[:i] + right[i + 1] + right[i] + right[i + 2:]
        else:  # the typical confusion of each task
            a = x if task == "reverse" else "".join(str((int(c) + 2) % 10) for c in x)
        if a != right:
            return a
    return right[:-1] + str((int(right[-1]) + 1) % 10)


def _near(rng: random.Random, prompt: str) -> str:
    """A lightly edited copy: what dedup's normalisation (case, punctuation, spaces) undoes."""
    k = rng.randrange(3)
    if k == 0:
        return prompt.lower()
    if k == 1:
        return prompt.rstrip(".?!")
    return prompt.replace(" ", "  ", 1)


def _record(task: str, prompt: str, answer: str) -> dict:
    return {"instruction": prompt, "input": "", "output": answer, "task": task}


def generate(out: Path, pool_size: int = 6000, seed: int = 0, n_seed: int = 300, n_test: int = 200) -> dict:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    used: set[tuple[str, str]] = set()

    def fresh(task: str) -> str:
        while True:
            x = rng.choice(list(LOOKUP)) if task == "lookup" else _digits(rng)
            if task == "lookup" or (task, x) not in used:
                used.add((task, x))
                return x

    # test set first, so its inputs are never drawn again (except as planted leaks)
    test = []
    for task in TASKS:
        if task == "lookup":
            xs = sorted(LOOKUP)
            test += [_record(task, PHRASES[task][i % 2].format(x=x), solve(task, x)) for i, x in enumerate(xs)]
        else:
            for i in range(n_test):
                x = fresh(task)
                test.append(_record(task, PHRASES[task][i % 2].format(x=x), solve(task, x)))
    seed_set = []
    for i in range(n_seed):
        task = TASKS[i % len(TASKS)]
        x = fresh(task)
        seed_set.append(_record(task, rng.choice(PHRASES[task]).format(x=x), solve(task, x)))

    n_unique = round(pool_size * (1 - DUP_RATE - NEAR_DUP_RATE - LEAK_FRACTION))
    base, labels = [], []
    for i in range(n_unique):
        task = TASKS[i % len(TASKS)]
        x = fresh(task)
        prompt, right = rng.choice(PHRASES[task]).format(x=x), solve(task, x)
        u = rng.random()
        if u < RATES["wrong"]:
            rec, lab = _record(task, prompt, _wrong(rng, task, x, right)), "wrong"
        elif u < RATES["wrong"] + RATES["refusal"]:
            a = rng.choice(REFUSALS) if rng.random() < 0.5 else rng.choice(BOILERPLATE).format(a=right)
            rec, lab = _record(task, prompt, a), "refusal"
        elif u < RATES["wrong"] + RATES["refusal"] + RATES["truncated"] and len(right) > 3:
            rec, lab = _record(task, prompt, right[: -rng.randint(1, 2)]), "truncated"
        else:
            rec, lab = _record(task, prompt, right), "clean"
        base.append(rec)
        labels.append(lab)

    pool = list(zip(base, labels))
    for _ in range(round(pool_size * DUP_RATE)):
        rec, lab = base[j := rng.randrange(n_unique)], labels[j]
        pool.append((dict(rec), f"duplicate_{lab}"))
    for _ in range(round(pool_size * NEAR_DUP_RATE)):
        j = rng.randrange(n_unique)
        rec = dict(base[j], instruction=_near(rng, base[j]["instruction"]))
        pool.append((rec, f"near_duplicate_{labels[j]}"))
    leakable = [t for t in test if t["task"] != "lookup"]
    for t in rng.sample(leakable, min(len(leakable), round(pool_size * LEAK_FRACTION))):
        pool.append((dict(t), "eval_leak"))
    rng.shuffle(pool)

    oracle = [r for r, lab in zip(base, labels) if lab == "clean"]
    shuffled = []
    for task in TASKS:
        part = [r for r in oracle if r["task"] == task]
        answers = [r["output"] for r in part]
        rng.shuffle(answers)
        shuffled += [dict(r, output=a) for r, a in zip(part, answers)]

    def dump(name: str, rows: list[dict]) -> None:
        with open(out / name, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")

    dump("pool.jsonl", [r for r, _ in pool])
    dump("pool_labels.jsonl", [{"defect": lab} for _, lab in pool])
    dump("oracle.jsonl", oracle)
    dump("shuffled.jsonl", shuffled)
    dump("seed.jsonl", seed_set)
    dump("test.jsonl", test)
    dump("evalset.jsonl", leakable)
    stats = {"pool": len(pool), "defects": dict(sorted(Counter(lab for _, lab in pool).items())),
             "oracle": len(oracle), "seed": len(seed_set), "test": dict(Counter(t["task"] for t in test)),
             "rates": RATES, "dup_rate": DUP_RATE, "near_dup_rate": NEAR_DUP_RATE, "leak_fraction": LEAK_FRACTION,
             "generator_seed": seed}
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--pool", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-seed", type=int, default=300)
    ap.add_argument("--n-test", type=int, default=200)
    a = ap.parse_args()
    print(json.dumps(generate(a.out, a.pool, a.seed, a.n_seed, a.n_test), indent=2))


if __name__ == "__main__":
    main()
