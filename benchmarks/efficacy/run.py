"""Curated beats raw, measured with curate's own pipeline and trainer.

    python benchmarks/efficacy/run.py                 # full: 3 seeds, ~120k supervised tokens/arm (CPU)
    python benchmarks/efficacy/run.py --quick         # CI-sized smoke run: 1 seed, tiny pool and budget
    python benchmarks/efficacy/run.py --model DIR --data DIR --device cuda --budget 2000000   # GPU path

Every arm trains the same base model with the same settings and the same budget of
supervised (answer) tokens, then is scored on one clean held-out test set:
  (a) raw         the whole raw pool as collected
  (b) random      a random subset of the pool, the size of (c)
  (c) curated     `curate run` with the product's stages and defaults: normalize, filter,
                  decontaminate, exact + MinHash dedup, then a reference-model scorer
                  (`quality`, scorer = "perplexity": the base model fully fine-tuned with
                  `curate train` on a few hundred trusted seed examples, Cherry-LLM's
                  "pre-experienced" model) and `select` keeping the low-loss part
  (c') verified   the same, with scorer = "verifier" (benchmarks/efficacy/verifiers.py)
                  instead of the reference model: for answers a program can check
  (d) oracle      the pool's clean records only (the generator's labels): the upper bound
  (e) shuffled    oracle records with answers shuffled within each task: the floor
  (f) few-shot    the base model, no training, curated examples in context
  (0) base        the base model, no training, no examples
Metrics: exact match per task (greedy decoding), held-out loss on the clean test answers,
training tokens spent, and the trainer's forgetting monitor (KL to the base model and the
loss on a fixed reference text before/after).

How the curation and training are driven: each arm is a pipeline.toml written into
OUT/pipelines/ (open them: they are what a user would write), run with
curate.pipeline.config.load_config + curate.pipeline.runner.run_pipeline (= `curate run PIPELINE.toml`),
then trained with train.parse_train_config + train.run_training (= `curate train
PIPELINE.toml`) once per seed. In-process rather than a subprocess per call only to save
the interpreter start-up on a 2-core machine.

Model: --model, else ../shared/data/models/stories260K when present (a real tiny
pretrained Llama, vocab 512), else sample_data/base_model.
Data: --data DIR with pool.jsonl, seed.jsonl, test.jsonl (Alpaca-style with a `task`
field) and optionally evalset.jsonl, oracle.jsonl, shuffled.jsonl, pool_labels.jsonl;
arms whose files are missing are skipped. Without --data, generate.py makes them. With a
real instruction set, pass --no-verifier unless verifiers.py knows its tasks.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

SHARED_MODEL = REPO.parent / "shared" / "data" / "models" / "stories260K"
SAMPLE_MODEL = REPO / "sample_data" / "base_model"

# plain.jinja's turn layout for the reference-model scorer, so it reads text laid out as
# the model was trained on it (quality.py's default is "User: ... / Assistant: ").
TEMPLATE = HERE / "plain.jinja"
PLAIN_ROLES = {"user": "", "assistant": ""}

ARMS = {
    "raw": "(a) raw pool",
    "random": "(b) random subset, size of (c)",
    "curated": "(c) curated: reference-model perplexity",
    "verified": "(c') curated: verifier",
    "oracle": "(d) oracle clean (upper bound)",
    "shuffled": "(e) shuffled answers (floor)",
    "fewshot": "(f) few-shot, curated examples, no training",
    "base": "(0) base model, no training",
}


# --------------------------------------------------------------------------- pipelines


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k) if not k.isidentifier() else k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def _table(name: str, d: dict, array: bool = False) -> str:
    head = f"[[{name}]]" if array else f"[{name}]"
    flat = {k: v for k, v in d.items() if not (isinstance(v, dict) and k in ("early_stopping", "forgetting"))}
    out = [head] + [f"{k} = {_toml_value(v)}" for k, v in flat.items() if v is not None]
    for k, v in d.items():
        if isinstance(v, dict) and k in ("early_stopping", "forgetting"):
            out += ["", f"[{name}.{k}]"] + [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(out) + "\n"


def write_pipeline(path: Path, out_dir: Path, data: Path, stages: list[dict], render: dict, train: dict | None,
                   fmt: str = "alpaca") -> Path:
    """One arm's pipeline.toml: a single source (task from each record's `task` field)."""
    parts = ["# efficacy benchmark arm, written by benchmarks/efficacy/run.py\n",
             _table("run", {"output_dir": str(out_dir), "seed": 0}),
             _table("sources", {"name": data.stem, "path": str(data), "format": fmt, "task_field": "task"}, array=True)]
    parts += [_table("stages", s, array=True) for s in stages]
    parts.append(_table("render", render))
    if train:
        parts.append(_table("train", train))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def cleaning_stages(evalset: Path | None) -> list[dict]:
    """The product's cleaning stages with their defaults; only what the data forces is set:
    decontaminate's n-gram size (the prompts are 2-7 words, shorter than the default 13)
    and dedup over the whole conversation (the default, prompt-only, would merge a right
    and a wrong answer to the same question before the scorer could tell them apart)."""
    st: list[dict] = [{"kind": "normalize"}, {"kind": "filter"}]
    if evalset is not None:
        st.append({"kind": "decontaminate", "evalsets": [{"path": str(evalset), "fields": ["instruction"]}],
                   "n": 3, "min_words": 2})
    st += [{"kind": "dedup", "name": "exact_dedup", "method": "exact", "view": "conversation"},
           {"kind": "dedup", "name": "near_dedup", "method": "minhash", "view": "conversation"}]
    return st


# --------------------------------------------------------------------------- running


def curate_run(pipeline: Path, fresh: bool = True) -> dict:
    """= `curate run PIPELINE --no-train`."""
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run_pipeline

    return run_pipeline(load_config(pipeline), fresh=fresh)


def curate_train(pipeline: Path, run_dir: Path, overrides: dict, quiet: bool = True) -> dict:
    """= `curate train PIPELINE` with [train] keys overridden (seed, steps, output_dir)."""
    from curate.pipeline.config import load_config
    from train import parse_train_config, run_training

    cfg = load_config(pipeline)
    tcfg = parse_train_config(dict(cfg.train, **overrides), cfg.base_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "more than 3 epochs": deliberate, the budget is in tokens
        return run_training(run_dir, tcfg, log=(lambda s: None) if quiet else print)


def split_tokens(manifest: dict) -> tuple[int, int, int]:
    rows = manifest["shards"]["train"]
    return (sum(r["examples"] for r in rows), sum(r["tokens"] for r in rows), sum(r["supervised_tokens"] for r in rows))


def budget_steps(manifest: dict, budget: int, batch_tokens: int) -> tuple[int, int]:
    """Optimiser steps (and epochs to allow them) so that the arm trains on about `budget`
    supervised tokens: the trainer counts steps in all tokens, the arms differ in how much of
    each row is answer."""
    _, tok, sup = split_tokens(manifest)
    steps = max(1, round(budget * tok / max(sup, 1) / batch_tokens))
    epochs = max(1, math.ceil(steps * batch_tokens / max(tok, 1)) + 1)
    return steps, epochs


def step_tokens(micro_batch_tokens: int, max_length: int) -> int:
    """[train] batch_tokens such that one full micro-batch of packed rows closes a step: the
    trainer closes a step once it holds >= batch_tokens real tokens, and packed rows fall a
    little short of max_length, so batch_tokens = micro_batch_tokens would take two."""
    return max(1, micro_batch_tokens - max_length)


def supervised_spent(train_dir: Path) -> int:
    n = 0
    with open(train_dir / "metrics.jsonl", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r.get("kind") == "train":
                n += int(r.get("supervised_tokens", 0))
    return n


# --------------------------------------------------------------------------- evaluation


def load_eval_examples(run_dir: Path) -> list[dict]:
    """The test set as the product rendered it (unpacked shards): prompt ids = everything
    before the last answer, answer ids = the supervised tokens (the answer and its EOS)."""
    from curate.contract.shards import open_split

    t = open_split(run_dir, "train").to_pylist()
    out = []
    for r in t:
        lab = r["labels"]
        sup = [i for i, v in enumerate(lab) if v != -100]
        s, e = sup[0], sup[-1] + 1
        out.append({"id": r["id"], "task": r["task"], "ids": r["input_ids"][:e], "start": s,
                    "answer": r["input_ids"][s:e]})
    return out


def evaluate(model_dir: Path, examples: list[dict], device: str, max_new: int = 12) -> dict:
    """Held-out loss (mean over answer tokens, per task and overall) and greedy exact match.

    Batches hold prompts of equal length, so no padding is needed for generation."""
    import torch
    from torch.nn import functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), use_safetensors=True, dtype=torch.float32)
    model.to(device).eval()
    eos = tok.eos_token_id
    loss_sum: dict[str, float] = {}
    loss_n: dict[str, int] = {}
    em: dict[str, list[int]] = {}
    groups: dict[int, list[dict]] = {}
    for ex in examples:
        groups.setdefault(len(ex["ids"]), []).append(ex)
    with torch.inference_mode():
        for _, exs in sorted(groups.items()):
            for b in range(0, len(exs), 64):
                chunk = exs[b:b + 64]
                ids = torch.tensor([e["ids"] for e in chunk], device=device)
                logits = model(input_ids=ids).logits.float()
                for r, e in enumerate(chunk):
                    s = e["start"]
                    nll = F.cross_entropy(logits[r, s - 1:-1], ids[r, s:], reduction="sum").item()
                    loss_sum[e["task"]] = loss_sum.get(e["task"], 0.0) + nll
                    loss_n[e["task"]] = loss_n.get(e["task"], 0) + ids.shape[1] - s
        pgroups: dict[int, list[dict]] = {}
        for ex in examples:
            pgroups.setdefault(ex["start"], []).append(ex)
        for _, exs in sorted(pgroups.items()):
            for b in range(0, len(exs), 64):
                chunk = exs[b:b + 64]
                prompt = torch.tensor([e["ids"][:e["start"]] for e in chunk], device=device)
                gen = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                     max_new_tokens=max_new, eos_token_id=eos, pad_token_id=eos)
                for r, e in enumerate(chunk):
                    out = gen[r, prompt.shape[1]:].tolist()
                    out = out[: out.index(eos) + 1] if eos in out else out
                    em.setdefault(e["task"], []).append(int(out == e["answer"]))
    tasks = sorted(em)
    res = {"loss_by_task": {t: loss_sum[t] / loss_n[t] for t in tasks},
           "em_by_task": {t: sum(em[t]) / len(em[t]) for t in tasks}}
    res["loss"] = sum(loss_sum.values()) / sum(loss_n.values())
    res["em"] = sum(res["em_by_task"].values()) / len(tasks)  # macro: each task counts once
    return res


# --------------------------------------------------------------------------- data helpers


def read_jsonl(p: Path) -> list[dict]:
    with open(p, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(p: Path, rows: list[dict]) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return p


def kept_records(run_dir: Path) -> list[dict]:
    """The curated records (the last stage's output), as Alpaca rows with their task."""
    from curate.contract.datasets import read_dataset

    man = json.loads((run_dir / "manifest.json").read_text())
    df = read_dataset(run_dir / man["stages"][-1]["output"], columns=["task", "messages"])
    rows = []
    for task, msgs in df.iter_rows():
        user = next(m["content"] for m in msgs if m["role"] == "user")
        asst = [m["content"] for m in msgs if m["role"] == "assistant"][-1]
        rows.append({"instruction": user, "input": "", "output": asst, "task": task})
    return rows


def fewshot_set(test: list[dict], shots: list[dict], k: int, seed: int) -> list[dict]:
    """Test items as multi-turn conversations: k curated examples of the same task first."""
    rng = random.Random(seed)
    by_task: dict[str, list[dict]] = {}
    for s in shots:
        by_task.setdefault(s["task"], []).append(s)
    ctx = {t: rng.sample(v, min(k, len(v))) for t, v in by_task.items()}
    out = []
    for t in test:
        msgs = []
        for s in ctx.get(t["task"], []):
            msgs += [{"role": "user", "content": s["instruction"]}, {"role": "assistant", "content": s["output"]}]
        msgs += [{"role": "user", "content": t["instruction"]}, {"role": "assistant", "content": t["output"]}]
        out.append({"messages": msgs, "task": t["task"]})
    return out


def defect_mix(run_dir: Path, pool: list[dict], labels: list[dict]) -> dict:
    """What the curated set is made of, by the generator's hidden labels (matched on content)."""
    lab: dict[tuple, str] = {}
    for r, l in zip(pool, labels):
        key = (r["instruction"], r["output"])
        if key not in lab or l["defect"] == "clean":
            lab[key] = l["defect"]
    counts: dict[str, int] = {}
    for r in kept_records(run_dir):
        d = lab.get((r["instruction"], r["output"]), "edited")
        d = d.removeprefix("duplicate_").removeprefix("near_duplicate_")
        counts[d] = counts.get(d, 0) + 1
    return dict(sorted(counts.items()))


# --------------------------------------------------------------------------- table


def _ms(vals: list[float], fmt: str) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return format(vals[0], fmt)
    return f"{format(statistics.mean(vals), fmt)} ± {format(statistics.stdev(vals), fmt)}"


def table(results: dict, tasks: list[str]) -> str:
    head = (["arm", "set rows", "set sup. tokens", "trained sup. tokens", "EM (macro)"] + [f"EM {t}" for t in tasks]
            + ["held-out loss", "KL to base", "ref loss before → after"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, label in ARMS.items():
        runs = results.get(arm)
        if not runs:
            continue
        g = lambda k: [r.get(k) for r in runs]  # noqa: E731
        ref = "-"
        if runs[0].get("ref_loss_before") is not None:
            ref = f"{_ms(g('ref_loss_before'), '.3f')} → {_ms(g('ref_loss_after'), '.3f')}"
        row = [label, _ms(g("set_rows"), ".0f"), _ms(g("set_supervised"), ".0f"), _ms(g("trained_supervised"), ".0f"),
               _ms(g("em"), ".3f")] + [_ms([r["em_by_task"][t] for r in runs], ".3f") for t in tasks] + \
              [_ms(g("loss"), ".3f"), _ms(g("kl_to_base"), ".4f"), ref]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def default_model() -> Path:
    return SHARED_MODEL if (SHARED_MODEL / "config.json").is_file() else SAMPLE_MODEL


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="curated vs raw, with curate's own pipeline and trainer")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, small pool, tiny budget")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "efficacy")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=None, help="a folder with pool/seed/test.jsonl (else generated)")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--pool", type=int, default=6000, help="generated pool size")
    ap.add_argument("--budget", type=int, default=None, help="supervised tokens per arm")
    ap.add_argument("--seed-budget", type=int, default=None, help="supervised tokens for the reference model")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-tokens", type=int, default=1024)
    ap.add_argument("--keep-fraction", type=float, default=0.5,
                    help="select: fraction of each task kept by the reference-model score")
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads; 1 is several times faster than 2 on a busy shared 2-core machine")
    ap.add_argument("--no-verifier", action="store_true")
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of: " + ",".join(ARMS))
    ap.add_argument("--results", type=Path, default=None, help="also write the table (markdown) here")
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    quick = a.quick
    seeds = a.seeds or (1 if quick else 3)
    budget = a.budget or (800 if quick else 120_000)
    seed_budget = a.seed_budget or (400 if quick else 60_000)
    pool_size = 300 if quick and a.data is None else a.pool
    model = (a.model or default_model()).resolve()
    arms = [x for x in a.arms.split(",") if x]
    out = a.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    log = lambda s: print(f"[{time.perf_counter() - t0:6.1f}s] {s}", flush=True)  # noqa: E731

    data = a.data.resolve() if a.data else out / "data"
    if a.data is None:
        from generate import generate

        stats = generate(data, pool_size=pool_size, seed=0, n_seed=60 if quick else 300, n_test=20 if quick else 200)
        log(f"generated pool of {stats['pool']} ({stats['defects']})")
    have = lambda n: (data / n).is_file()  # noqa: E731
    evalset = data / "evalset.jsonl" if have("evalset.jsonl") else None

    render = {"template": str(TEMPLATE), "tokenizer": str(model), "max_length": 256, "pack": True, "val_fraction": 0.0}
    render_eval = dict(render, pack=False, train_on="last_assistant", max_length=512)
    reference = model / "reference.txt" if (model / "reference.txt").is_file() else HERE / "reference.txt"
    train = {"base_model": str(model), "method": "full", "lr": a.lr,
             "batch_tokens": step_tokens(a.batch_tokens, render["max_length"]),
             "micro_batch_tokens": a.batch_tokens, "warmup": 0.05, "eval_every": 10_000, "save_every": 0,
             "device": a.device, "early_stopping": {"patience": 0},
             "forgetting": {"reference": str(reference), "max_tokens": 2048, "seq_len": 128}}
    pipes = out / "pipelines"

    # the test set, rendered by the product exactly as training data is
    test_rows = read_jsonl(data / "test.jsonl")
    p = write_pipeline(pipes / "test.toml", out / "runs" / "test", data / "test.jsonl", [], render_eval, None)
    curate_run(p)
    examples = load_eval_examples(out / "runs" / "test")
    tasks = sorted({e["task"] for e in examples})
    log(f"test set: {len(examples)} examples, tasks {tasks}; model {model}")

    results: dict[str, list[dict]] = {}
    meta: dict = {"model": str(model), "budget_supervised_tokens": budget, "seeds": seeds, "lr": a.lr,
                  "batch_tokens": a.batch_tokens, "keep_fraction": a.keep_fraction, "quick": quick,
                  "pipelines": str(pipes), "curation": {}}

    def train_arm(arm: str, pipeline: Path, run_dir: Path, seed: int, manifest: dict) -> dict:
        steps, epochs = budget_steps(manifest, budget, step_tokens(a.batch_tokens, render["max_length"]))
        summ = curate_train(pipeline, run_dir, {"seed": seed, "max_steps": steps, "epochs": epochs,
                                                "output_dir": f"train-seed{seed}"})
        tdir = run_dir / f"train-seed{seed}"
        ev = evaluate(Path(summ["adapter_dir"]), examples, a.device)
        rows, _, sup = split_tokens(manifest)
        res = {"seed": seed, "steps": steps, "set_rows": rows, "set_supervised": sup,
               "trained_supervised": supervised_spent(tdir), "trained_tokens": summ["tokens"],
               "kl_to_base": summ.get("kl_to_base"), "ref_loss_before": summ.get("ref_loss_before"),
               "ref_loss_after": summ.get("ref_loss_after"), **ev}
        log(f"{arm} seed {seed}: EM {ev['em']:.3f} {ev['em_by_task']} loss {ev['loss']:.3f} "
            f"({res['trained_supervised']} sup. tokens, {steps} steps)")
        return res

    def curate_arm(arm: str, label: str, stages: list[dict]) -> tuple[Path, dict]:
        """Curate the pool with `stages` into runs/<arm>; record the ledger and which planted
        defects survived."""
        p = write_pipeline(pipes / f"{arm}.toml", out / "runs" / arm, data / "pool.jsonl", stages, render, train)
        man = curate_run(p)
        meta["curation"][arm] = {"ledger": man["ledger"]}
        if have("pool_labels.jsonl"):
            meta["curation"][arm]["kept_by_planted_defect"] = defect_mix(
                out / "runs" / arm, read_jsonl(data / "pool.jsonl"), read_jsonl(data / "pool_labels.jsonl"))
        log(f"{label}: kept {man['ledger']['kept']} of {man['ledger']['read']}; "
            f"{meta['curation'][arm].get('kept_by_planted_defect')}")
        return p, man

    def simple_arm(arm: str, file: Path) -> None:
        p = write_pipeline(pipes / f"{arm}.toml", out / "runs" / arm, file, [], render, train)
        man = curate_run(p)
        results[arm] = [train_arm(arm, p, out / "runs" / arm, s, man) for s in range(seeds)]

    # the reference model: the base model fully fine-tuned on the trusted seed set (`curate train`)
    curated_rows: list[dict] = []
    need_curated = any(x in arms for x in ("curated", "random", "fewshot"))
    if need_curated:
        p = write_pipeline(pipes / "seed.toml", out / "runs" / "seed", data / "seed.jsonl", [], render, train)
        man = curate_run(p)
        steps, epochs = budget_steps(man, seed_budget, step_tokens(a.batch_tokens, render["max_length"]))
        summ = curate_train(p, out / "runs" / "seed", {"seed": 0, "max_steps": steps, "epochs": epochs})
        ref_model = Path(summ["adapter_dir"])
        ev = evaluate(ref_model, examples, a.device)
        meta["reference_model"] = {"path": str(ref_model), "steps": steps, "em": ev["em"], "loss": ev["loss"]}
        log(f"reference model (seed set, {steps} steps): EM {ev['em']:.3f} loss {ev['loss']:.3f}")

        stages = cleaning_stages(evalset) + [
            {"kind": "quality", "scorer": "perplexity", "model": str(ref_model), "roles": PLAIN_ROLES,
             "separator": "\n", "max_length": 256},
            {"kind": "select", "column": "perplexity", "keep": "lowest", "top_fraction": a.keep_fraction}]
        p, man = curate_arm("curated", "curated (perplexity)", stages)
        curated_rows = kept_records(out / "runs" / "curated")
        if "curated" in arms:
            results["curated"] = [train_arm("curated", p, out / "runs" / "curated", s, man) for s in range(seeds)]

    if "verified" in arms and not a.no_verifier:
        stages = cleaning_stages(evalset) + [
            {"kind": "quality", "scorer": "verifier", "python_path": [str(HERE)],
             "functions": {t: f"verifiers:{t}" for t in ("reverse", "shift", "lookup")}},
            {"kind": "select", "column": "verifier", "min": 1.0}]
        p, man = curate_arm("verified", "verified", stages)
        results["verified"] = [train_arm("verified", p, out / "runs" / "verified", s, man) for s in range(seeds)]

    if "raw" in arms:
        simple_arm("raw", data / "pool.jsonl")
    if "random" in arms and curated_rows:
        pool = read_jsonl(data / "pool.jsonl")
        runs = []
        for s in range(seeds):
            f = write_jsonl(out / "data-random" / f"random-{s}.jsonl", random.Random(100 + s).sample(pool, len(curated_rows)))
            p = write_pipeline(pipes / f"random-{s}.toml", out / "runs" / f"random-{s}", f, [], render, train)
            man = curate_run(p)
            runs.append(train_arm("random", p, out / "runs" / f"random-{s}", s, man))
        results["random"] = runs
    for arm in ("oracle", "shuffled"):
        if arm in arms and have(f"{arm}.jsonl"):
            simple_arm(arm, data / f"{arm}.jsonl")
    if "fewshot" in arms and curated_rows:
        runs = []
        for s in range(seeds):
            f = write_jsonl(out / "data-fewshot" / f"fewshot-{s}.jsonl", fewshot_set(test_rows, curated_rows, a.shots, s))
            p = write_pipeline(pipes / f"fewshot-{s}.toml", out / "runs" / f"fewshot-{s}", f, [], render_eval, None,
                               fmt="messages")
            curate_run(p)
            ev = evaluate(model, load_eval_examples(out / "runs" / f"fewshot-{s}"), a.device)
            runs.append({"seed": s, "set_rows": a.shots * len(tasks), "trained_supervised": 0, **ev})
            log(f"fewshot seed {s}: EM {ev['em']:.3f} loss {ev['loss']:.3f}")
        results["fewshot"] = runs
    if "base" in arms:
        ev = evaluate(model, examples, a.device)
        results["base"] = [{"seed": 0, "trained_supervised": 0, **ev}]
        log(f"base: EM {ev['em']:.3f} loss {ev['loss']:.3f}")

    meta["wall_s"] = round(time.perf_counter() - t0, 1)
    md = table(results, tasks)
    cmd = "python benchmarks/efficacy/run.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    text = (f"Command: `{cmd}`\n\nModel: `{Path(model).name}`; budget {budget:,} supervised tokens per arm; "
            f"{seeds} seed(s) (mean ± std); {meta['wall_s']:.0f} s wall.\n\n{md}")
    (out / "results.md").write_text(text, encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n", encoding="utf-8")
    if a.results:
        a.results.write_text(text, encoding="utf-8")
    print(text)
    return {"meta": meta, "results": results, "table": md}


if __name__ == "__main__":
    main()
