"""`curate eval`: is the tuned model better than its base, and than just prompting the base
with a few curated examples? Per task, on held-out prompts with reference answers:

  exact_match   greedy answer (template's generation prompt, stop at end-of-turn) equals
                the reference after `normalise` (case, punctuation, whitespace)
  answer_loss   mean negative log-likelihood per reference-answer token (end-of-turn
                included: a model that does not stop pays for it)

for three arms: `base` (the base model, adapter off), `few_shot` (the base model with k
curated train examples of the same task before the prompt: the alternative to
fine-tuning) and `tuned` (the trained adapter, or the fully fine-tuned model).

Items come as token ids (the CLI renders a test file through the run's template and
tokenizer, or takes the run's val split): the prompt is an example's tokens before its
first supervised token, the reference answer its first supervised stretch (later turns of
a multi-turn example are not scored). Few-shot examples are whole train examples up to
the end of their first answer, joined at token level (BOS kept only on the first).
Trade-off: a few-shot prefix is k rendered conversations back to back, not one
conversation with k exchanges; for templates with a system prompt it repeats."""
from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from train.data import IGNORE, Split
from train.generate import adapter_off, greedy

ARMS = ("base", "few_shot", "tuned")
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


@dataclass
class EvalItem:
    task: str
    prompt: list[int]
    answer: list[int]  # reference answer tokens, end-of-turn included when the shards have it
    id: str = ""


def normalise(text: str) -> str:
    """Exact-match normalisation: NFKC, lower case, punctuation dropped, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(_PUNCT.sub(" ", text).split())


def split_example(tokens: np.ndarray, labels: np.ndarray) -> tuple[list[int], list[int]] | None:
    """(prompt, first supervised stretch) of one example; None when nothing is supervised."""
    sup = labels != IGNORE
    first = np.flatnonzero(sup)
    if not len(first) or first[0] == 0:
        return None
    a = int(first[0])
    rest = np.flatnonzero(~sup[a:])
    b = a + int(rest[0]) if len(rest) else len(tokens)
    return tokens[:a].tolist(), tokens[a:b].tolist()


def items_from_split(split: Split, limit: int | None = None) -> list[EvalItem]:
    out = []
    for e in range(len(split.ex_len)):
        s, n = int(split.ex_start[e]), int(split.ex_len[e])
        pa = split_example(split.tokens[s : s + n], split.labels[s : s + n])
        if pa is not None:
            out.append(EvalItem(split.tasks[split.ex_task[e]], pa[0], pa[1], split.ex_id[e]))
    return _limit(out, limit)


def items_from_arrays(input_ids: list, labels: list, tasks: list[str], ids: list[str], limit: int | None = None) -> list[EvalItem]:
    out = []
    for x, y, t, i in zip(input_ids, labels, tasks, ids):
        pa = split_example(np.asarray(x), np.asarray(y))
        if pa is not None:
            out.append(EvalItem(str(t), pa[0], pa[1], str(i)))
    return _limit(out, limit)


def _limit(items: list[EvalItem], limit: int | None) -> list[EvalItem]:
    """At most `limit` items per task, in order (deterministic)."""
    if not limit:
        return items
    seen: dict[str, int] = {}
    keep = []
    for it in items:
        seen[it.task] = seen.get(it.task, 0) + 1
        if seen[it.task] <= limit:
            keep.append(it)
    return keep


def shots_from_split(split: Split, k: int, exclude: set[str] = frozenset()) -> dict[str, list[list[int]]]:
    """The first k train examples of each task (prompt + first answer), as token lists."""
    out: dict[str, list[list[int]]] = {}
    if k <= 0:
        return out
    for e in range(len(split.ex_len)):
        task = split.tasks[split.ex_task[e]]
        if len(out.setdefault(task, [])) >= k or split.ex_id[e] in exclude:
            continue
        s, n = int(split.ex_start[e]), int(split.ex_len[e])
        pa = split_example(split.tokens[s : s + n], split.labels[s : s + n])
        if pa is not None:
            out[task].append(pa[0] + pa[1])
    return out


def with_shots(prompt: list[int], shots: list[list[int]], bos_id: int | None, max_len: int | None = None) -> list[int]:
    """The shots, then the prompt, BOS only at the start. With `max_len`, the earliest shots
    are left out until the whole fits (the prompt itself is never cut)."""
    shots = list(shots)
    while shots and max_len is not None and sum(len(s) for s in shots) + len(prompt) > max_len:
        shots.pop(0)
    seqs = [*shots, prompt]
    out = list(seqs[0])
    for s in seqs[1:]:
        out += s[1:] if bos_id is not None and s and s[0] == bos_id else s
    return out


@torch.no_grad()
def answer_nll(model, pairs: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int = 16) -> list[tuple[float, int]]:
    """(summed NLL, tokens) of each answer given its prompt, teacher-forced, batched
    (right padding with an attention mask)."""
    device = next(model.parameters()).device
    out: list[tuple[float, int]] = [(0.0, 0)] * len(pairs)
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        width = max(len(pairs[i][0]) + len(pairs[i][1]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        tgt = torch.full((len(idx), width), IGNORE, dtype=torch.long)
        for j, i in enumerate(idx):
            p, a = pairs[i]
            seq = p + a
            ids[j, : len(seq)] = torch.tensor(seq)
            mask[j, : len(seq)] = 1
            tgt[j, len(p) : len(seq)] = torch.tensor(a)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits.float()
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), tgt[:, 1:].to(device), ignore_index=IGNORE,
                              reduction="none").sum(1)
        for j, i in enumerate(idx):
            out[i] = (float(nll[j]), len(pairs[i][1]))
    return out


def run_arm(model, items: list[EvalItem], tokenizer, stop_ids: list[int], prefix: dict[str, list[list[int]]] | None,
            max_new_tokens: int, batch_size: int) -> list[dict]:
    """Per item: the greedy answer, exact match and answer NLL for one arm."""
    bos = tokenizer.bos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop_ids[0] if stop_ids else 0)
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    limit = limit - max_new_tokens if isinstance(limit, int) else None
    prompts = [with_shots(it.prompt, prefix.get(it.task, []), bos, limit) if prefix else it.prompt for it in items]
    gens = greedy(model, prompts, stop_ids, pad, max_new_tokens, batch_size)
    nll = answer_nll(model, [(p, it.answer) for p, it in zip(prompts, items)], pad, batch_size)
    stops = set(stop_ids)
    rows = []
    for it, g, (s, n) in zip(items, gens, nll):
        ref_ids = list(it.answer)
        while ref_ids and ref_ids[-1] in stops:
            ref_ids.pop()
        got = tokenizer.decode(g, skip_special_tokens=True)
        want = tokenizer.decode(ref_ids, skip_special_tokens=True)
        rows.append({"id": it.id, "task": it.task, "output": got, "reference": want,
                     "exact_match": normalise(got) == normalise(want), "nll": s, "tokens": n})
    return rows


def summarise(rows_by_arm: dict[str, list[dict]]) -> dict:
    """{tasks: {task: {arm: {exact_match, answer_loss, n}}}, overall: {arm: {...}}}:
    exact match is a mean over items, answer loss a mean over answer tokens."""
    def agg(rows: list[dict]) -> dict:
        n_tok = sum(r["tokens"] for r in rows)
        return {"exact_match": float(np.mean([r["exact_match"] for r in rows])) if rows else None,
                "answer_loss": sum(r["nll"] for r in rows) / n_tok if n_tok else None, "n": len(rows)}

    tasks = sorted({r["task"] for rows in rows_by_arm.values() for r in rows})
    return {"tasks": {t: {arm: agg([r for r in rows if r["task"] == t]) for arm, rows in rows_by_arm.items()}
                      for t in tasks},
            "overall": {arm: agg(rows) for arm, rows in rows_by_arm.items()}}


def evaluate(tuned, items: list[EvalItem], tokenizer, stop_ids: list[int], shots: dict[str, list[list[int]]],
             base=None, arms=ARMS, max_new_tokens: int = 64, batch_size: int = 16, adapter_for_task=None) -> dict:
    """Run the arms. `tuned` is a peft model (its adapter switched off gives the base) or,
    for full fine-tuning, a plain model with `base` given separately. `adapter_for_task`
    (per-task adapters) maps a task to the adapter name to activate for its items."""
    rows: dict[str, list[dict]] = {}
    for arm in arms:
        model = tuned if arm == "tuned" or base is None else base
        off = arm != "tuned" and base is None
        prefix = shots if arm == "few_shot" else None
        with adapter_off(model, off):
            if arm == "tuned" and adapter_for_task is not None:
                rows[arm] = []
                for task in sorted({it.task for it in items}):
                    model.set_adapter(adapter_for_task(task))
                    rows[arm] += run_arm(model, [it for it in items if it.task == task], tokenizer, stop_ids, None,
                                         max_new_tokens, batch_size)
            else:
                rows[arm] = run_arm(model, items, tokenizer, stop_ids, prefix, max_new_tokens, batch_size)
    result = summarise(rows)
    result["arms"] = list(arms)
    result["k"] = max((len(v) for v in shots.values()), default=0)
    result["samples"] = {arm: r[:5] for arm, r in rows.items()}
    return result


def format_table(result: dict) -> str:
    """The console table: one row per task (and overall), EM and answer loss per arm."""
    arms = result["arms"]
    head = f"{'task':<24}{'n':>5}" + "".join(f"{a + ' EM':>14}{a + ' loss':>14}" for a in arms)
    lines = [head, "-" * len(head)]
    for name, by_arm in [*result["tasks"].items(), ("(all)", result["overall"])]:
        n = next(iter(by_arm.values()))["n"]
        cells = "".join(f"{_f(by_arm[a]['exact_match']):>14}{_f(by_arm[a]['answer_loss']):>14}" for a in arms)
        lines.append(f"{name[:23]:<24}{n:>5}{cells}")
    return "\n".join(lines)


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"
