"""Does curation with no user code clean a noisy multi-task pool nobody tuned it for?

    python benchmarks/efficacy/noisy.py                  # 2 families x 3 seeds, ~1-2 min
    python benchmarks/efficacy/noisy.py --quick          # 1 family, 1 seed, small pool (tests)
    python benchmarks/efficacy/noisy.py --cv --model DIR # adds the consensus + cv-loss arm

The pool (per family, per seed) follows the issue's measurement: of the unique records 60%
have the right answer, 30% a plausible wrong one, 10% a refusal; then 20% extra exact
copies. Two task families from two independent generators (digit_tasks.py: reverse,
shift, lookup; word_tasks.py: capital, plural, acronym); `lookup` and `capital` are fixed
key -> answer tables, so their prompts recur with conflicting answers.

Arms (each a pipeline.toml in OUT/pipelines, run by curate's own runner; every arm ends
in the same `mix` with equal task weights, so task balance is equal across arms):
  raw        normalize only
  random     normalize + exact dedup, then a random subset the size of `default`
  default    recipes/noisy-multitask.toml as shipped, only its [[sources]] swapped
  cv         default + quality scorer = "cv_loss" + select (needs --cv and a model)
  verifier   default + a verifier select (checkers.py, written without importing the
             generators): the CHECKABLE-task upper bound (tables have no checker)
  oracle     the raw pool's correct records (same copies), normalize + exact dedup

Metric: precision of the curated set (share of kept records whose answer is right,
judged with the generator's answer key, which no arm reads), per family, mean ± std over
seeds, and the fraction of the raw-to-oracle precision gap each arm closes; plus kept
rows and answer tokens. This is a data-quality measurement, not a trained model's exact
match: see docs/curation-efficacy.md for what that leaves open.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import digit_tasks  # noqa: E402
import word_tasks  # noqa: E402

RECIPE = REPO / "recipes" / "noisy-multitask.toml"
REFUSALS = ["I'm sorry, but I can't help with that.", "As an AI language model, I cannot answer this.",
            "I am unable to provide that information.", "Sorry, I don't know."]
ARMS = {"raw": "raw pool", "random": "random subset (normalised, exact-deduped), size of default",
        "default": "default recipe, no user code", "cv": "default + cross-validated loss select",
        "verifier": "default + verifiers (checkable-task upper bound)", "oracle": "oracle: the pool's correct records",
        "base": "base model, no training", "fewshot": "few-shot: base model + k curated examples (default arm's)"}


def _digits_family():
    def draw(rng, task):
        if task == "lookup":
            return rng.choice(sorted(digit_tasks.LOOKUP))
        return "".join(rng.choice("0123456789") for _ in range(rng.randint(4, 6)))

    def wrong(rng, task, x, right):
        if task == "lookup":
            return rng.choice([v for v in digit_tasks.LOOKUP.values() if v != right])
        d = list(right)
        i = rng.randrange(len(d))
        d[i] = str((int(d[i]) + rng.randint(1, 9)) % 10)
        return "".join(d)

    return digit_tasks.TASKS, digit_tasks.PHRASES, digit_tasks.solve, draw, wrong


def _words_family():
    return word_tasks.TASKS, word_tasks.PHRASES, word_tasks.solve, word_tasks.draw, word_tasks.wrong


FAMILIES = {"digits": _digits_family, "words": _words_family}


def make_pool(family: str, n_unique: int, seed: int) -> tuple[list[dict], dict]:
    """The pool (Alpaca rows with `task`) and the answer key {(task, prompt): right}."""
    tasks, phrases, solve, draw, wrong = FAMILIES[family]()
    rng = random.Random(f"{family}:{seed}")
    base, key = [], {}
    for i in range(n_unique):
        task = tasks[i % len(tasks)]
        x = draw(rng, task)
        prompt, right = rng.choice(phrases[task]).format(x=x), solve(task, x)
        key[(task, prompt)] = right
        u = rng.random()
        answer = right if u < 0.6 else (wrong(rng, task, x, right) if u < 0.9 else rng.choice(REFUSALS))
        base.append({"instruction": prompt, "input": "", "output": answer, "task": task})
    pool = base + [dict(base[rng.randrange(len(base))]) for _ in range(round(0.2 * len(base)))]
    rng.shuffle(pool)
    return pool, key


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def write_pipeline(path: Path, out: Path, pool: Path, stages: list[dict], render: dict,
                   train: dict | None = None) -> Path:
    lines = ["[run]", f"output_dir = {_toml(str(out))}", "seed = 0", "",
             "[[sources]]", 'name = "pool"', f"path = {_toml(str(pool))}", 'format = "alpaca"', 'task_field = "task"', ""]
    for s in stages:
        lines.append("[[stages]]")
        lines += [f"{k} = {_toml(v)}" for k, v in s.items()]
        lines.append("")
    lines.append("[render]")
    lines += [f"{k} = {_toml(v)}" for k, v in render.items()]
    if train:
        lines += ["", "[train]"] + [f"{k} = {_toml(v)}" for k, v in train.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def recipe() -> tuple[list[dict], dict]:
    data = tomllib.loads(RECIPE.read_text(encoding="utf-8"))
    render = dict(data["render"])
    if not Path(render["tokenizer"]).is_absolute():
        render["tokenizer"] = str((RECIPE.parent / render["tokenizer"]).resolve())
    return data["stages"], render


def equal_mix(total: int | None = None) -> dict:
    m = {"kind": "mix", "name": "balance", "by": "task", "weights": {"*": 1.0}, "val_fraction": 0.0}
    if total is not None:
        m["total"] = total
    return m


def run_arm(pipeline: Path) -> tuple[Path, dict]:
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run_pipeline

    cfg = load_config(pipeline)
    manifest = run_pipeline(cfg, fresh=True)
    return cfg.output_dir(), manifest


def measure(run_dir: Path, manifest: dict, key: dict) -> dict:
    import polars as pl

    from curate.contract.datasets import read_dataset
    from curate.contract.views import text_view

    last = manifest["stages"][-1]["output"]
    t = read_dataset(run_dir / last)
    t = t.select("task", text_view("user").alias("p"), text_view("response").alias("a"))
    right = [key.get((task, p)) == a for task, p, a in t.iter_rows()]
    per_task = dict(t.group_by("task").len().sort("task").iter_rows())
    tokens = sum(v.get("supervised_tokens", 0) for v in (manifest.get("tokens") or {}).get("by_task", {}).values())
    return {"rows": t.height, "precision": sum(right) / max(t.height, 1), "per_task": per_task,
            "distinct_right": len({(task, p) for (task, p, a), ok in zip(t.iter_rows(), right) if ok}),
            "supervised_tokens": tokens}


# --------------------------------------------------------------------------- --train


def make_test(family: str, n_per_task: int, pool: list[dict]) -> list[dict]:
    """Clean test records (right answers), drawn with their own seed. Prompts already in the
    pool are avoided where the task's space allows (reverse, shift, acronym); the tables
    (`lookup`, `capital`) and `plural` (40 nouns) have few prompts, so theirs were seen in
    training: for those, the test asks "did the model learn the right answer", not
    "does it generalise"."""
    tasks, phrases, solve, draw, _ = FAMILIES[family]()
    rng = random.Random(f"{family}:test")
    seen = {r["instruction"] for r in pool}
    out = []
    for task in tasks:
        got: dict[str, str] = {}
        for _ in range(50 * n_per_task):
            if len(got) >= n_per_task:
                break
            x = draw(rng, task)
            prompt = rng.choice(phrases[task]).format(x=x)
            if prompt in got or (prompt in seen and rng.random() < 0.97):
                continue
            got[prompt] = solve(task, x)
        out += [{"instruction": p, "input": "", "output": a, "task": task} for p, a in got.items()]
    return out


def train_settings(model: str, lr: float, micro_batch_tokens: int, max_length: int, threads: int) -> dict:
    """The [train] table every trained arm shares (full fine-tuning, as in run.py): only
    seed and max_steps differ (steps from the arm's share of answer tokens, so every arm
    trains on the same number of supervised tokens)."""
    import run as trained  # benchmarks/efficacy/run.py: the trained-model driver's helpers

    return {"base_model": model, "method": "full", "lr": lr,
            "batch_tokens": trained.step_tokens(micro_batch_tokens, max_length),
            "micro_batch_tokens": micro_batch_tokens, "warmup": 0.05, "eval_every": 100_000, "save_every": 0,
            "device": "cpu", "threads": threads, "early_stopping": {"patience": 0}}


def train_and_eval(pipeline: Path, run_dir: Path, manifest: dict, seed: int, budget: int, batch_tokens: int,
                   test_file: Path, arms: str, shots: int) -> dict:
    """`curate train` at a fixed supervised-token budget, then `curate eval --test` (the
    CLI's own code path, in-process): greedy exact match per task, per eval arm."""
    import run as trained
    from curate.cli.eval import eval_cmd

    steps, epochs = trained.budget_steps(manifest, budget, batch_tokens)
    trained.curate_train(pipeline, run_dir, {"seed": seed, "max_steps": steps, "epochs": epochs})
    eval_cmd.main([str(run_dir), "--test", str(test_file), "--format", "alpaca", "--task-field", "task",
                   "--arms", arms, "-k", str(shots), "--max-new-tokens", "12", "--batch-size", "64",
                   "--threads", "1"], standalone_mode=False)
    ev = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))["eval"]
    out = {}
    for arm in ev["arms"]:
        by_task = {t: v[arm]["exact_match"] for t, v in ev["tasks"].items()}
        out[arm] = {"em": statistics.mean(by_task.values()), "em_by_task": by_task,
                    "loss": ev["overall"][arm]["answer_loss"]}
    out["tuned"].update(steps=steps, trained_supervised=trained.supervised_spent(run_dir / "train"))
    return out


def arm_stages(arm: str, base_stages: list[dict], model: str | None, default_rows: int | None,
               cv_epochs: int = 3) -> list[dict] | None:
    if arm == "raw":
        return [{"kind": "normalize"}, equal_mix()]
    if arm == "oracle":
        return [{"kind": "normalize"}, {"kind": "dedup", "name": "exact_dedup", "method": "exact", "view": "conversation"},
                equal_mix()]
    if arm == "random":
        return [{"kind": "normalize"}, {"kind": "dedup", "name": "exact_dedup", "method": "exact", "view": "conversation"},
                equal_mix(default_rows)]
    no_mix = [s for s in base_stages if s["kind"] != "mix"]
    if arm == "default":
        return no_mix + [equal_mix()]
    if arm == "verifier":
        fns = {t: f"checkers:{t}" for t in ("reverse", "shift", "plural", "acronym")}
        fns["*"] = "checkers:no_opinion"
        return no_mix[:2] + [{"kind": "quality", "scorer": "verifier", "python_path": [str(HERE)], "functions": fns},
                             {"kind": "select", "column": "verifier", "min": 1.0, "missing": "keep"}] + no_mix[2:] + [equal_mix()]
    if arm == "cv":
        if not model:
            return None
        return no_mix + [{"kind": "quality", "scorer": "cv_loss", "model": model, "folds": 3, "cv_method": "full",
                          "cv_epochs": cv_epochs, "cv_lr": 3e-3, "max_length": 64, "batch_size": 64},
                         {"kind": "select", "column": "cv_loss_ratio", "keep": "lowest", "top_fraction": 0.8},
                         equal_mix()]
    raise ValueError(arm)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/curate-noisy")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--unique", type=int, default=3000, help="unique records per family (before the 20%% copies)")
    ap.add_argument("--families", default="digits,words")
    ap.add_argument("--quick", action="store_true", help="1 family, 1 seed, 300 unique records")
    ap.add_argument("--cv", action="store_true", help="add the consensus + cross-validated loss arm")
    ap.add_argument("--cv-epochs", type=int, default=3, help="--cv: epochs of each fold's fine-tuning")
    ap.add_argument("--model", default=str(REPO.parent / "shared" / "data" / "models" / "stories260K"))
    ap.add_argument("--results", default=None, help="also write the table to this Markdown file")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the cv arm and --train")
    ap.add_argument("--train", action="store_true",
                    help="also train the model on every arm's shards (fixed supervised-token budget) and measure "
                         "greedy exact match on clean test prompts with `curate eval`; adds base and few-shot arms")
    ap.add_argument("--budget", type=int, default=30_000, help="--train: supervised tokens per arm")
    ap.add_argument("--lr", type=float, default=3e-3, help="--train: learning rate (full fine-tuning)")
    ap.add_argument("--batch-tokens", type=int, default=1024, help="--train: micro-batch tokens (one step)")
    ap.add_argument("--test-per-task", type=int, default=100, help="--train: clean test prompts per task")
    ap.add_argument("--shots", type=int, default=4, help="--train: curated examples in the few-shot arm")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.unique, args.families = 1, 300, "words"
        args.budget, args.test_per_task = min(args.budget, 2000), min(args.test_per_task, 10)
    if args.cv or args.train:
        import torch

        torch.set_num_threads(args.threads)  # on a busy small machine one thread is often faster
    out = Path(args.out)
    base_stages, render = recipe()
    train = None
    if args.train:
        # the model's own tokenizer and the benchmark's compact template (plain.jinja); the
        # precision metric reads the stage output, so it does not depend on this
        render = {"template": str(HERE / "plain.jinja"), "tokenizer": args.model, "max_length": 128, "pack": True}
        train = train_settings(args.model, args.lr, args.batch_tokens, render["max_length"], args.threads)
    # default before random: the random subset is drawn to the default arm's size
    arms = ["raw", "default", "random"] + (["cv"] if args.cv else []) + ["verifier", "oracle"]
    results: dict = {}
    t0 = time.perf_counter()
    for family in args.families.split(","):
        for seed in range(args.seeds):
            pool, key = make_pool(family, args.unique, seed)
            d = out / family / f"seed{seed}"
            pool_file = write_jsonl(d / "pool.jsonl", pool)
            oracle_file = write_jsonl(d / "oracle.jsonl",
                                      [r for r in pool if key[(r["task"], r["instruction"])] == r["output"]])
            test_file = write_jsonl(d / "test.jsonl", make_test(family, args.test_per_task, pool)) if train else None
            default_rows = None
            for arm in arms:
                stages = arm_stages(arm, base_stages, args.model if args.cv else None, default_rows, args.cv_epochs)
                if stages is None:
                    continue
                src = oracle_file if arm == "oracle" else pool_file
                p = write_pipeline(d / "pipelines" / f"{arm}.toml", d / "runs" / arm, src, stages, render, train)
                run_dir, manifest = run_arm(p)
                m = measure(run_dir, manifest, key)
                if train:
                    ev = train_and_eval(p, run_dir, manifest, seed, args.budget, train["batch_tokens"], test_file,
                                        "base,few_shot,tuned" if arm == "default" else "tuned", args.shots)
                    m["train"] = ev["tuned"]
                    if arm == "default":  # the untrained model, bare and prompted with curated examples
                        results.setdefault(family, {}).setdefault("base", []).append({"train": ev["base"]})
                        results[family].setdefault("fewshot", []).append({"train": ev["few_shot"]})
                    print(f"[{time.perf_counter() - t0:6.0f}s] {family} seed {seed} {arm}: precision "
                          f"{m['precision']:.3f}, EM {ev['tuned']['em']:.3f} {ev['tuned']['em_by_task']}", flush=True)
                if arm == "default":
                    default_rows = m["rows"]
                results.setdefault(family, {}).setdefault(arm, []).append(m)
    wall = time.perf_counter() - t0
    text = table(results, args, wall)
    print(text)
    if args.results:
        Path(args.results).write_text(text, encoding="utf-8")
    return results


def _ms(xs: list[float], fmt: str = "{:.3f}") -> str:
    if len(xs) == 1:
        return fmt.format(xs[0])
    return f"{fmt.format(statistics.mean(xs))} ± {fmt.format(statistics.stdev(xs))}"


def table(results: dict, args, wall: float) -> str:
    cmd = "python benchmarks/efficacy/noisy.py " + " ".join(sys.argv[1:])
    lines = [f"Command: `{cmd.strip()}`", "",
             f"{args.seeds} seed(s), {args.unique} unique records per family + 20% copies; {wall:.0f} s wall.", "",
             "| family | arm | kept rows | answer tokens | precision | gap closed | distinct right prompts |",
             "|---|---|---|---|---|---|---|"]
    for family, arms in results.items():
        raw = [m["precision"] for m in arms["raw"]]
        orc = [m["precision"] for m in arms["oracle"]]
        for arm, ms in arms.items():
            if "precision" not in ms[0]:
                continue
            gaps = [(m["precision"] - r) / (o - r) if o > r else float("nan") for m, r, o in zip(ms, raw, orc)]
            lines.append(f"| {family} | {ARMS[arm]} | {_ms([m['rows'] for m in ms], '{:.0f}')} | "
                         f"{_ms([m['supervised_tokens'] for m in ms], '{:.0f}')} | {_ms([m['precision'] for m in ms])} | "
                         f"{_ms(gaps, '{:.0%}')} | {_ms([m['distinct_right'] for m in ms], '{:.0f}')} |")
    if any("train" in ms[0] for arms in results.values() for ms in arms.values()):
        lines += ["", f"Trained: {args.model}, full fine-tuning, {args.budget:,} supervised tokens per arm "
                      f"(lr {args.lr}, {args.batch_tokens} tokens per step, {args.threads} torch thread(s)); greedy "
                      f"exact match (`curate eval`) on {args.test_per_task} clean test prompts per task; few-shot "
                      f"k = {args.shots}. Gap closed = (EM - raw EM) / (oracle EM - raw EM).", ""]
        for family, arms in results.items():
            tasks = sorted(arms["raw"][0]["train"]["em_by_task"])
            lines += [f"| family | arm | trained sup. tokens | EM (macro) | gap closed | "
                      + " | ".join(f"EM {t}" for t in tasks) + " |", "|---" * (5 + len(tasks)) + "|"]
            raw = [m["train"]["em"] for m in arms["raw"]]
            orc = [m["train"]["em"] for m in arms["oracle"]]
            for arm, ms in arms.items():
                if "train" not in ms[0]:
                    continue
                em = [m["train"]["em"] for m in ms]
                gaps = [(e - r) / (o - r) if o - r > 1e-9 else float("nan") for e, r, o in zip(em, raw, orc)]
                sup = [m["train"].get("trained_supervised", 0) for m in ms]
                lines.append(f"| {family} | {ARMS[arm]} | {_ms(sup, '{:.0f}')} | {_ms(em)} | {_ms(gaps, '{:.0%}')} | "
                             + " | ".join(_ms([m["train"]["em_by_task"][t] for m in ms]) for t in tasks) + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
