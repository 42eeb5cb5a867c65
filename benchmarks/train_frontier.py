"""The mitigation frontier: task skill against forgetting, for the seed's five mitigations.

    # the grid as measured (benchmarks/train_frontier.md): the issue's arms, 3 seeds
    python benchmarks/train_frontier.py --epochs 4 --batch-tokens 512 --eval-every 20 --test-examples 50 --jobs 2 \
        --arms default,full_5x,full,lr_0.1x,no_early_stop,kl_0.1,kl_1,l2_0.01,l2_1,replay_10,replay_25,epochs_3
    python benchmarks/train_frontier.py --quick              # smoke run: 1 seed, tiny data
    python benchmarks/train_frontier.py ... --summarise      # outputs from the runs a cut-short grid left

One base model (../shared/data/models/stories260K, a real pretrained 260k-parameter
Llama; --model DIR for another) and one curated set, built with curate's own pipeline
(normalize, filter, exact dedup over the conversation, render with
benchmarks/efficacy/plain.jinja, pack). `--set` picks the tasks:

  capital_shift (default)  `capital` (benchmarks/efficacy/word_tasks.py: a fixed 30-entry
                table of made-up words) and `shift` (digit_tasks.py: each digit + 1) on
                3-digit numbers. Chosen because skill appears within ~100k trained tokens
                (full FT at lr 1e-3, 4 epochs: shift 1.00, capital 0.28, 1 seed), where
                the earlier set needed ~570k: at 7 epochs that set made the 3-seed grid
                hours of a shared 2-core CPU. Held-out test: shift on 50 numbers that occur
                nowhere in training (the rule); capital on every key in both phrasings (a
                table's keys are the skill: no model can answer a key it never saw, so the
                test prompts are the training prompts, and exact dedup leaves each once).
  shift_reverse `shift` and `reverse` on 4-5 digits, both rules (the set of the earlier
                probes in train_frontier.md; skill only at ~7 epochs).

Per arm and seed, every arm trains with `curate train`'s code path (train.run_training on
the curated run) and is then scored on what it exported:

  exact match   held-out test prompts rendered with the run's own [render] config, greedy,
                stop at end-of-turn: train.eval.evaluate, the code of `curate eval`
  KL to base    KL(base || tuned) per token on the forgetting monitor's default reference,
                `self_samples` (16 texts the base model writes from BOS, seed 1234), and the
                tuned model's loss on it (`ref loss`; the base's own is printed once)
  tokens, wall  tokens the optimiser saw; wall seconds of the training (not the scoring)

KL is measured on the exported weights (with early stopping: the best val-loss step's),
not read from the trainer's summary, whose `kl_to_base` is that of the last evaluation.

Arms (each is the default [train] with one thing changed; the table says which):
  default        every [train] key at its default, except the size keys below: LoRA r 16,
                 1 epoch, early stopping patience 3, betas (0.9, 0.999), warmup 3%, and, on a
                 model under 50M parameters such as stories260K, lr 1e-3 with the input
                 embeddings (tied head) trained beside the adapter (TrainConfig.resolved)
  default_old    the default before that change: lr 2e-4, the adapter alone. Every arm below
                 that is not "default_*" is, like it, the adapter alone (modules_to_save = [])
                 with lr a multiple of 2e-4, so the arms keep the meaning they were measured with
  default_kl_0.1 the default + kl_to_base 0.1; default_lr_0.5x the default at lr 5e-4
  embed, embed_5x, r64_embed_5x, r32_5x, r64_5x, rslora, rslora_5x, loraplus, loraplus_5x,
  lr_15x, betas_95_5x   issue 17's LoRA probes (1 seed; what makes LoRA learn this set)
  lr 10x         LoRA at 10x the default lr: where the grid shows the default lr leaves skill unlearned
  lr 5x / 50x    LoRA at 5x (1e-3) and 50x (1e-2): the lr probe (LoRA usually needs a higher lr
                 than full fine-tuning to learn a task at all)
  lr 0.1x        LoRA at 0.1x
  3 epochs       LoRA, 3x the grid's epochs (early stopping on)
  no early stop  LoRA, patience 0 (lr_5x_no_early_stop: at 5x the lr, where early stopping
                 ended LoRA at step 70 of 581 in the 7-epoch probe)
  kl_to_base a/b LoRA with the KL-to-base regulariser at two weights
  full           full fine-tuning at its default lr (1e-5)
  full_lora_lr   full fine-tuning at the LoRA default lr (2e-4), so both methods are
                 compared at the same lr as well as at their own defaults; full_5x at 5x
  l2_to_base a/b full fine-tuning at 5x the LoRA lr (1e-3, the lr where it learns: at 2e-4
                 full FT learns nothing exact within the budget, so an L2 pull would have
                 no skill to trade) with the L2-to-base regulariser at 0.01 and 1
  betas_95       LoRA with Adam betas (0.9, 0.95); warmup_10: LoRA with 10% warmup (the
                 issue's betas/warmup finding; not in the measured grid: at the default lr
                 LoRA learns nothing exact within the budget, so they could only move KL)
  replay 10/25%  LoRA on the curated set mixed (curate's `mix` stage, by source) with 10%
                 or 25% general text: texts the base model writes from BOS with another
                 seed (777) than the forgetting reference's (1234), so no arm trains on the
                 text its forgetting is measured on
The size keys, the same for every arm: batch_tokens = micro_batch_tokens = 1024 (the
default 16384 tokens per step would give a ~25k-token set 2 steps an epoch; --batch-tokens),
eval_every 10 (--eval-every), save_every 0, threads 1. Everything else is the product's default.

Budget: `--epochs E` (default 1) is the number of epochs every arm trains (the default
[train] trains 1; the 3-epochs arm 3E); `--batch-tokens` (default 1024) and `--eval-every`
(default 10) size every arm's steps. On capital_shift (~25k tokens an epoch after dedup)
E = 4 with 512-token steps (204 steps, ~100k tokens) is where full FT learns; LoRA at any
lr probed (2e-4 to 1e-2) does not (exact match 0), a finding, not a sizing fault: more
budget would move LoRA too, at a cost the shared CPU could not pay for 3 seeds. On a
loaded 2-core CPU each run is ~15-20 s of CPU and ~150-300 s of wall (load average
17-25). 1 torch thread per run; `--jobs N` runs N worker processes, each training its
share of the (arm, seed) pairs one after another, seed-major (a grid cut short still has
every arm at its first seeds: `--summarise` then writes the outputs, marked partial).
--quick is for the test: 1 seed, a few hundred examples.

Output (--out, default runs/frontier): frontier.json (every run, per-arm means and stds,
the Pareto set), frontier.svg (exact match vs KL, one point per arm with +-1 std bars,
the frontier drawn; curate.look.charts.scatter), frontier.md (the table and the command);
frontier.json is also copied into the curated run directory, whose report
(`curate report`) then shows the table and the chart. --results PATH writes the Markdown
there as well (benchmarks/train_frontier.md is the committed one)."""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE / "efficacy"))
sys.path.insert(0, str(REPO))

SHARED_MODEL = REPO.parent / "shared" / "data" / "models" / "stories260K"
TEMPLATE = HERE / "efficacy" / "plain.jinja"
REPLAY_SEED = 777  # general text for replay; the forgetting reference uses Forgetting.seed (1234)

# arm -> (label, data set, [train] overrides). `lr` values are filled in from the defaults
# at run time (LoRA / full learning_rate), so the arms follow train/config.py if it changes.
LORA_LR = "lora_lr"
EPOCHS = "epochs"  # ("epochs", k): k times the grid's --epochs (the budget every other arm gets)
ARMS: dict[str, tuple[str, str, dict]] = {
    "default": ("default [train] (LoRA; small model: lr 1e-3, embeddings trained)", "tasks", {}),
    "default_old": ("old default [train] (LoRA lr 2e-4, adapter only)", "tasks", {"lr": (LORA_LR, 1.0)}),
    "default_kl_0.1": ("default [train] + kl_to_base 0.1", "tasks", {"kl_to_base": 0.1}),
    "default_lr_0.5x": ("default [train], lr 5e-4", "tasks", {"lr": (LORA_LR, 2.5)}),
    "lr_10x": ("LoRA, lr 10x", "tasks", {"lr": (LORA_LR, 10.0)}),
    "lr_0.1x": ("LoRA, lr 0.1x", "tasks", {"lr": (LORA_LR, 0.1)}),
    "lr_5x": ("LoRA, lr 5x", "tasks", {"lr": (LORA_LR, 5.0)}),
    "lr_50x": ("LoRA, lr 50x", "tasks", {"lr": (LORA_LR, 50.0)}),
    "epochs_3": ("LoRA, 3x the epochs", "tasks", {"epochs": (EPOCHS, 3)}),
    "no_early_stop": ("LoRA, early stopping off", "tasks", {"early_stopping": {"patience": 0}}),
    "lr_5x_no_early_stop": ("LoRA, lr 5x, early stopping off", "tasks",
                            {"lr": (LORA_LR, 5.0), "early_stopping": {"patience": 0}}),
    "kl_0.1": ("LoRA + kl_to_base 0.1", "tasks", {"kl_to_base": 0.1}),
    "kl_1": ("LoRA + kl_to_base 1", "tasks", {"kl_to_base": 1.0}),
    "full": ("full FT, its default lr", "tasks", {"method": "full"}),
    "full_lora_lr": ("full FT, lr = LoRA default", "tasks", {"method": "full", "lr": (LORA_LR, 1.0)}),
    "full_5x": ("full FT, lr 5x LoRA default", "tasks", {"method": "full", "lr": (LORA_LR, 5.0)}),
    "l2_0.01": ("full FT (lr 5x) + l2_to_base 0.01", "tasks", {"method": "full", "lr": (LORA_LR, 5.0), "l2_to_base": 0.01}),
    "l2_1": ("full FT (lr 5x) + l2_to_base 1", "tasks", {"method": "full", "lr": (LORA_LR, 5.0), "l2_to_base": 1.0}),
    "betas_95": ("LoRA, betas (0.9, 0.95)", "tasks", {"betas": [0.9, 0.95]}),
    "warmup_10": ("LoRA, warmup 10%", "tasks", {"warmup": 0.1}),
    # issue 17's LoRA probes: what makes LoRA learn this set within the budget
    "lr_15x": ("LoRA, lr 15x", "tasks", {"lr": (LORA_LR, 15.0)}),
    "r32_5x": ("LoRA r 32 alpha 64, lr 5x", "tasks", {"r": 32, "alpha": 64.0, "lr": (LORA_LR, 5.0)}),
    "r64_5x": ("LoRA r 64 alpha 128, lr 5x", "tasks", {"r": 64, "alpha": 128.0, "lr": (LORA_LR, 5.0)}),
    "rslora": ("LoRA, rsLoRA scaling", "tasks", {"use_rslora": True}),
    "rslora_5x": ("LoRA, rsLoRA scaling, lr 5x", "tasks", {"use_rslora": True, "lr": (LORA_LR, 5.0)}),
    "betas_95_5x": ("LoRA, lr 5x, betas (0.9, 0.95), warmup 5%", "tasks",
                    {"lr": (LORA_LR, 5.0), "betas": [0.9, 0.95], "warmup": 0.05}),
    "loraplus": ("LoRA+ (lora_B lr 16x)", "tasks", {"lora_plus_ratio": 16.0}),
    "loraplus_5x": ("LoRA+ (lora_B lr 16x), lr 5x", "tasks", {"lora_plus_ratio": 16.0, "lr": (LORA_LR, 5.0)}),
    "embed": ("LoRA + embeddings trained", "tasks", {"modules_to_save": ["embed_tokens"]}),
    "embed_5x": ("LoRA + embeddings trained, lr 5x", "tasks", {"modules_to_save": ["embed_tokens"], "lr": (LORA_LR, 5.0)}),
    "r64_embed_5x": ("LoRA r 64 alpha 128 + embeddings, lr 5x", "tasks",
                     {"r": 64, "alpha": 128.0, "modules_to_save": ["embed_tokens"], "lr": (LORA_LR, 5.0)}),
    "replay_10": ("LoRA + replay 10%", "replay_10", {}),
    "replay_25": ("LoRA + replay 25%", "replay_25", {}),
}
SIZE = {"batch_tokens": 1024, "micro_batch_tokens": 1024, "eval_every": 10, "save_every": 0, "threads": 1}


# --------------------------------------------------------------------------- data


def _digits(rng: random.Random, lo: int = 4, hi: int = 5) -> str:
    n = rng.randint(lo, hi)
    return str(rng.randint(1, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(n - 1))


# Curated sets: name -> ((task, family, digits lo, hi), ...). family "digit" is
# benchmarks/efficacy/digit_tasks.py, "word" word_tasks.py. A rule task's held-out prompts use
# inputs that occur nowhere in training (exact match there is the rule); a table task's
# held-out prompts are its keys, every key in every phrasing (the table is the skill: it
# cannot be answered for a key never seen), so its training rows are those same prompts.
SETS: dict[str, tuple[tuple[str, str, int, int], ...]] = {
    "capital_shift": (("capital", "word", 0, 0), ("shift", "digit", 3, 3)),
    "shift_reverse": (("shift", "digit", 4, 5), ("reverse", "digit", 4, 5)),
}
DEFAULT_SET = "capital_shift"


def _family(fam: str):
    import digit_tasks
    import word_tasks

    return digit_tasks if fam == "digit" else word_tasks


def task_data(n_train: int, n_test: int, seed: int = 0, set_name: str = DEFAULT_SET) -> tuple[list[dict], list[dict]]:
    """Clean Alpaca records of the set's tasks: `n_train` for training (the tasks in turn);
    held out per task: `n_test` prompts with inputs that never occur in training (rule
    tasks), or every key in every phrasing (table tasks, whose keys are the skill)."""
    spec = SETS[set_name]
    rng = random.Random(seed)
    test, train, used = [], [], set()
    for task, fam, lo, hi in spec:
        mod = _family(fam)
        phrases = mod.PHRASES[task]
        if fam == "word" and task == "capital":
            keys = sorted(mod.CAPITALS)
            test += [{"instruction": ph.format(x=k), "input": "", "output": mod.solve(task, k), "task": task}
                     for k in keys for ph in phrases]
            continue
        for i in range(n_test):
            x = _digits(rng, lo, hi)
            while x in used:
                x = _digits(rng, lo, hi)
            used.add(x)
            test.append({"instruction": phrases[i % 2].format(x=x), "input": "", "output": mod.solve(task, x), "task": task})
    while len(train) < n_train:
        task, fam, lo, hi = spec[len(train) % len(spec)]
        mod = _family(fam)
        if fam == "word" and task == "capital":
            x = rng.choice(sorted(mod.CAPITALS))
        else:
            x = _digits(rng, lo, hi)
            if x in used:
                continue
        train.append({"instruction": rng.choice(mod.PHRASES[task]).format(x=x), "input": "", "output": mod.solve(task, x),
                      "task": task})
    return train, test


def general_text(model_dir: Path, n: int, length: int = 96) -> list[dict]:
    """Replay records: `n` texts the base model writes from BOS (temperature 1, seed
    REPLAY_SEED), each split after its first sentence into a prompt and the rest (the part
    trained on). Task `general`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.generate import sample_from_bos

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    rows = []
    for ids in sample_from_bos(model, tok.bos_token_id, n, length, 1.0, REPLAY_SEED, stop_id=tok.eos_token_id,
                               batch_size=256):
        text = " ".join(tok.decode(ids, skip_special_tokens=True).split())
        end = max(text.rfind(c) for c in ".!?\"")  # whole sentences only (`filter` drops a cut-off text)
        text = text[: end + 1] if end > 0 else text
        cut = text.find(". ")
        cut = cut + 1 if 0 < cut < len(text) - 2 else min(len(text) // 3, 40)
        head, rest = text[:cut].strip(), text[cut:].strip()
        if head and rest:
            rows.append({"instruction": head, "input": "", "output": rest, "task": "general"})
    return rows


def write_jsonl(p: Path, rows: list[dict]) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return p


# --------------------------------------------------------------------------- curation


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
        return "{ " + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def write_pipeline(path: Path, run_dir: Path, sources: list[dict], replay: float | None, model: Path) -> Path:
    """The pipeline a user would write: the product's cleaning stages, [render] with the
    compact template; replay adds a `mix` stage by source (tasks : general = 1-r : r)."""
    lines = ["# mitigation frontier, written by benchmarks/train_frontier.py", "[run]",
             f"output_dir = {_toml(str(run_dir))}", "seed = 0", ""]
    for s in sources:
        lines += ["[[sources]]"] + [f"{k} = {_toml(v)}" for k, v in s.items()] + [""]
    stages = [{"kind": "normalize"}, {"kind": "filter"},
              {"kind": "dedup", "name": "exact_dedup", "method": "exact", "view": "conversation"}]
    if replay:
        stages.append({"kind": "mix", "by": "source", "weights": {"tasks": 1.0 - replay, "general": replay},
                       "val_fraction": 0.05})
    for st in stages:
        lines += ["[[stages]]"] + [f"{k} = {_toml(v)}" for k, v in st.items()] + [""]
    render = {"template": str(TEMPLATE), "tokenizer": str(model), "max_length": 256, "pack": True, "val_fraction": 0.05}
    lines += ["[render]"] + [f"{k} = {_toml(v)}" for k, v in render.items()] + [""]
    lines += ["[train]", f"base_model = {_toml(str(model))}", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def curate_run(pipeline: Path) -> dict:
    """= `curate run PIPELINE --no-train --fresh`."""
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run_pipeline

    return run_pipeline(load_config(pipeline), fresh=True)


def test_items(run_dir: Path, test_file: Path):
    """The held-out prompts, read with the project's readers and rendered with the run's
    own [render] config (what `curate eval RUN --test FILE` does)."""
    from curate.contract.typed_config import load_dataclass
    from curate.read.readers import read_source
    from curate.read.sources import SourceConfig
    from curate.render.config import RenderConfig
    from curate.render.renderer import render_examples
    from train.eval import items_from_arrays

    man = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    rcfg = load_dataclass(RenderConfig, dict(man["config"]["render"]), "render")
    src = SourceConfig(name="test", path=str(test_file), format="alpaca", task_field="task")
    src.validate()
    read = read_source(src, Path.cwd(), lambda *_: None)
    ex = render_examples(read.table, rcfg, Path(man["pipeline"]).parent, 0).examples
    return items_from_arrays(ex["input_ids"].to_list(), ex["labels"].to_list(), ex["task"].to_list(), ex["id"].to_list())


# --------------------------------------------------------------------------- one arm


def arm_train_table(arm: str, model: Path, epochs: int = 1) -> dict:
    """The arm's [train] table. `epochs` is the grid's budget: every arm trains that many
    epochs (the default [train] trains 1), the 3-epochs arm three times as many."""
    from train.config import TrainConfig

    _, _, over = ARMS[arm]
    lora_lr = TrainConfig(base_model="x").learning_rate
    t = {"base_model": str(model), **SIZE}
    if not arm.startswith("default") or arm == "default_old":
        # the arms measured before the small-model defaults (TrainConfig.resolved) keep their meaning:
        # the adapter alone, lr a multiple of LoRA's 2e-4; "default*" arms take the product's defaults
        t["modules_to_save"] = []
    if epochs != 1:
        t["epochs"] = epochs
    for k, v in over.items():
        if isinstance(v, tuple) and v[0] == LORA_LR:
            t[k] = v[1] * lora_lr
        elif isinstance(v, tuple) and v[0] == EPOCHS:
            t[k] = v[1] * epochs
        else:
            t[k] = v
    return t


def reference(model_dir: Path, cache: Path):
    """The forgetting monitor's default reference (Forgetting(): 16 self-samples, seed
    1234), generated once and cached."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.config import Forgetting
    from train.forgetting import self_sample_split

    f = Forgetting()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    ref = self_sample_split(base, tok, f"frontier|{model_dir.name}", f.samples, f.max_tokens, f.seq_len,
                            f.temperature, f.seed, torch.device("cpu"), cache)
    return base, tok, ref


def run_one(arm: str, seed: int, out: Path, model: Path, items, base, ref, epochs: int = 1) -> dict:
    """Train one (arm, seed) on its curated run and score what it exported."""
    from train import parse_train_config, run_training
    from train.eval import evaluate
    from train.forgetting import ForgettingMonitor
    from train.load import load_trained

    import torch

    _, data, _ = ARMS[arm]
    src = out / "runs" / data
    work = out / "work" / f"{arm}-s{seed}"  # a private copy: load_trained reads the run's newest training
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    shutil.copytree(src / "shards", work / "shards")
    shutil.copy(src / "manifest.json", work / "manifest.json")
    table = {**arm_train_table(arm, model, epochs), "seed": seed}
    cfg = parse_train_config(table, REPO)
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = run_training(work, cfg, log=lambda *_a, **_k: None)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    trained = load_trained(work, threads=1)
    ev = evaluate(trained.model, items, trained.tokenizer, trained.stop_ids, {}, arms=("tuned",), max_new_tokens=10,
                  batch_size=64)
    mon = ForgettingMonitor(base, ref, 4096, torch.device("cpu"), adapter=False)
    kl, nll, nll_base, n = mon.measure(trained.model).tolist()
    res = {"arm": arm, "seed": seed, "exact_match": ev["overall"]["tuned"]["exact_match"],
           "exact_match_by_task": {t: v["tuned"]["exact_match"] for t, v in ev["tasks"].items()},
           "answer_loss": ev["overall"]["tuned"]["answer_loss"], "kl_to_base": kl / n, "ref_loss": nll / n,
           "ref_loss_base": nll_base / n, "tokens": s["tokens"], "steps": s["steps"], "best_step": s["best_step"],
           "stopped_early": s["stopped_early"], "wall_s": wall, "cpu_s": cpu, "lr": s.get("lr", cfg.learning_rate),
           "modules_to_save": s.get("modules_to_save", []),
           "trainer_kl_last_eval": s.get("kl_to_base")}
    shutil.rmtree(work, ignore_errors=True)
    return res


def worker(out: Path, model: Path, jobs: list[tuple[str, int]], results: Path, epochs: int = 1) -> None:
    import torch

    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.simplefilter("ignore", FutureWarning)  # transformers' deprecation notes, once per model load
    base, _tok, ref = reference(model, out / "reference")
    items = test_items(out / "runs" / "tasks", out / "data" / "test.jsonl")
    for arm, seed in jobs:
        r = run_one(arm, seed, out, model, items, base, ref, epochs)
        with open(results, "a", encoding="utf-8") as f:
            f.write(json.dumps(r) + "\n")
        print(f"  {arm:<16} seed {seed}: EM {r['exact_match']:.3f} KL {r['kl_to_base']:.4f} "
              f"ref loss {r['ref_loss']:.3f} steps {r['steps']} ({r['wall_s']:.0f}s)", flush=True)


def base_scores(out: Path, model: Path) -> dict:
    """The base model itself on the held-out prompts (the point every arm starts from)."""
    import torch
    from transformers import AutoTokenizer

    from train.eval import evaluate

    base, _tok, ref = reference(model, out / "reference")
    tok = AutoTokenizer.from_pretrained(str(model))
    items = test_items(out / "runs" / "tasks", out / "data" / "test.jsonl")
    man = json.loads((out / "runs" / "tasks" / "manifest.json").read_text(encoding="utf-8"))
    stop = list((man.get("render") or {}).get("end_of_turn", {}).get("ids") or [tok.eos_token_id])
    ev = evaluate(base, items, tok, stop, {}, arms=("tuned",), max_new_tokens=10, batch_size=64)
    from train.forgetting import ForgettingMonitor

    mon = ForgettingMonitor(base, ref, 4096, torch.device("cpu"), adapter=False)
    kl, nll, _, n = mon.measure(base).tolist()
    return {"exact_match": ev["overall"]["tuned"]["exact_match"], "answer_loss": ev["overall"]["tuned"]["answer_loss"],
            "kl_to_base": kl / n, "ref_loss": nll / n, "items": len(items), "reference_tokens": int(n)}


# --------------------------------------------------------------------------- summary


def pareto(points: list[tuple[float, float]]) -> list[bool]:
    """Which (exact match, KL) points are on the frontier: no other point has exact match
    >= and KL <= with one of them strictly better. Exact ties are all kept."""
    out = []
    for i, (e, k) in enumerate(points):
        dominated = any(e2 >= e and k2 <= k and (e2 > e or k2 < k) for j, (e2, k2) in enumerate(points) if j != i)
        out.append(not dominated)
    return out


def _ms(v: list[float]) -> tuple[float, float]:
    return (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0)


def summarise(runs: list[dict], arms: list[str]) -> list[dict]:
    rows = []
    for arm in arms:
        rs = [r for r in runs if r["arm"] == arm]
        if not rs:
            continue
        row = {"arm": arm, "label": ARMS[arm][0], "seeds": len(rs)}
        for k in ("exact_match", "kl_to_base", "ref_loss", "tokens", "wall_s", "cpu_s", "steps", "answer_loss"):
            row[k], row[k + "_std"] = _ms([float(r[k]) for r in rs])
        row["exact_match_by_task"] = {t: statistics.mean(r["exact_match_by_task"][t] for r in rs)
                                      for t in rs[0]["exact_match_by_task"]}
        row["lr"] = rs[0]["lr"]
        rows.append(row)
    for row, on in zip(rows, pareto([(r["exact_match"], r["kl_to_base"]) for r in rows])):
        row["pareto"] = on
    return rows


def table_md(rows: list[dict], base: dict | None) -> str:
    tasks = sorted({t for r in rows for t in r.get("exact_match_by_task", {})})
    head = ("| arm | lr | seeds | exact match | " + " | ".join(f"EM {t}" for t in tasks) + (" | " if tasks else "")
            + "KL to base | ref loss | answer loss | tokens | steps | wall s | CPU s | frontier |")
    lines = [head, "|" + "---|" * (12 + len(tasks))]
    if base:
        lines.append(f"| base model, no training | - | - | {base['exact_match']:.3f} | " + "".join("- | " for _ in tasks)
                     + f"0 | {base['ref_loss']:.3f} | {base['answer_loss']:.3f} | 0 | 0 | - | - | |")
    for r in rows:
        by = r.get("exact_match_by_task", {})
        lines.append(f"| {r['label']} | {r['lr']:g} | {r['seeds']} | {r['exact_match']:.3f} ± {r['exact_match_std']:.3f} | "
                     + "".join(f"{by[t]:.3f} | " if t in by else "- | " for t in tasks)
                     + f"{r['kl_to_base']:.3f} ± {r['kl_to_base_std']:.3f} | {r['ref_loss']:.3f} | {r['answer_loss']:.3f} | "
                     f"{r['tokens']:,.0f} | {r['steps']:.0f} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | "
                     f"{'yes' if r['pareto'] else ''} |")
    return "\n".join(lines) + "\n"


def chart(rows: list[dict]) -> str:
    from curate.look.charts import scatter

    pts = [{"label": r["label"], "x": r["kl_to_base"], "y": r["exact_match"], "dx": r["kl_to_base_std"],
            "dy": r["exact_match_std"], "frontier": r["pareto"]} for r in rows]
    return scatter(pts, title="Task skill vs forgetting (mean ± std over seeds)",
                   x_label="KL to base on self-samples (nats/token, log scale)",
                   y_label="held-out exact match", frontier="upper-left", log_x=True)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, a few hundred examples")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "frontier")
    ap.add_argument("--model", type=Path, default=None, help="base model directory (default: stories260K)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per arm (default 3; --quick 1)")
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of: " + ",".join(ARMS))
    ap.add_argument("--set", default=DEFAULT_SET, choices=sorted(SETS), help=f"curated set (default {DEFAULT_SET})")
    ap.add_argument("--train-examples", type=int, default=None, help="curated set size before cleaning (default 4000)")
    ap.add_argument("--epochs", type=int, default=1, help="epochs every arm trains (the budget; the 3-epochs arm 3x)")
    ap.add_argument("--test-examples", type=int, default=None, help="held-out prompts per task (default 100; --quick 20)")
    ap.add_argument("--batch-tokens", type=int, default=SIZE["batch_tokens"], help="tokens per optimiser step, every arm")
    ap.add_argument("--eval-every", type=int, default=SIZE["eval_every"], help="steps between evaluations, every arm")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (each 1 torch thread)")
    ap.add_argument("--results", type=Path, default=None, help="also write the Markdown results here")
    ap.add_argument("--summarise", action="store_true",
                    help="no training: write the outputs from the runs-*.jsonl already in --out (a grid cut short; "
                         "pass the grid's --arms/--seeds/--set/--epochs)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    model = (a.model or SHARED_MODEL).resolve()
    out = a.out.resolve()
    SIZE.update(batch_tokens=a.batch_tokens, micro_batch_tokens=a.batch_tokens, eval_every=a.eval_every)
    if a.worker:  # internal: "results.jsonl|arm:seed,arm:seed,..."
        res, jobs = a.worker.split("|", 1)
        worker(out, model, [(j.rsplit(":", 1)[0], int(j.rsplit(":", 1)[1])) for j in jobs.split(",") if j], Path(res),
               a.epochs)
        return {}
    if not (model / "config.json").is_file():
        raise SystemExit(f"no model at {model} (pass --model DIR)")
    arms = [x for x in a.arms.split(",") if x]
    bad = [x for x in arms if x not in ARMS]
    if bad:
        raise SystemExit(f"--arms: unknown {bad}; choose from {', '.join(ARMS)}")
    seeds = a.seeds or (1 if a.quick else 3)
    if a.summarise:
        import torch

        torch.set_num_threads(1)
        tasks = [t[0] for t in SETS[a.set]]
        files = sorted(out.glob("runs-*.jsonl"))
        done = sum(1 for f in files for x in f.read_text(encoding="utf-8").splitlines() if x.strip())
        wall = max(f.stat().st_mtime for f in files) - (out / "data" / "tasks.jsonl").stat().st_mtime
        cmd = "python benchmarks/train_frontier.py " + " ".join(x for x in (argv if argv is not None else sys.argv[1:])
                                                               if x != "--summarise")
        partial = None if done >= len(arms) * seeds else f"{done} of {len(arms) * seeds} (arm, seed) runs finished"
        return finish(out, model, a, arms, seeds, len(files), tasks, curation_of(out), base_scores(out, model), wall, cmd,
                      partial)
    n_train = a.train_examples or (300 if a.quick else 4000)
    if out.exists():
        shutil.rmtree(out)
    (out / "data").mkdir(parents=True)
    t0 = time.perf_counter()
    log = lambda s: print(f"[{time.perf_counter() - t0:6.1f}s] {s}", flush=True)  # noqa: E731

    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
    train_rows, test_rows = task_data(n_train, a.test_examples or (20 if a.quick else 100), set_name=a.set)
    tasks = [t[0] for t in SETS[a.set]]
    write_jsonl(out / "data" / "tasks.jsonl", train_rows)
    write_jsonl(out / "data" / "test.jsonl", test_rows)
    datasets = sorted({ARMS[x][1] for x in arms} | {"tasks"})
    replays = [float(d.split("_")[1]) / 100 for d in datasets if d.startswith("replay_")]
    if replays:  # enough general text that the mix takes every task row at the largest share
        r = max(replays)
        write_jsonl(out / "data" / "general.jsonl", general_text(model, math.ceil(n_train * r / (1 - r) * 1.5) + 16))
    tasks_src = {"name": "tasks", "path": str(out / "data" / "tasks.jsonl"), "format": "alpaca", "task_field": "task"}
    gen_src = {"name": "general", "path": str(out / "data" / "general.jsonl"), "format": "alpaca", "task_field": "task"}
    curation = {}
    for d in datasets:
        r = float(d.split("_")[1]) / 100 if d.startswith("replay_") else None
        p = write_pipeline(out / "pipelines" / f"{d}.toml", out / "runs" / d, [tasks_src] + ([gen_src] if r else []), r, model)
        man = curate_run(p)
        sh = man["shards"]
        curation[d] = {"ledger": man["ledger"], "train_tokens": sum(x["tokens"] for x in sh["train"]),
                       "train_examples": sum(x["examples"] for x in sh["train"]),
                       "val_examples": sum(x["examples"] for x in sh.get("val", []))}
        log(f"curated {d}: {curation[d]}")
    base = base_scores(out, model)
    log(f"base model: EM {base['exact_match']:.3f}, answer loss {base['answer_loss']:.3f}, "
        f"ref loss {base['ref_loss']:.3f} on {base['reference_tokens']} reference tokens")

    jobs = [(arm, s) for s in range(seeds) for arm in arms]  # seed-major: a cut-short grid still has every arm
    results = out / "runs.jsonl"
    n = max(1, min(a.jobs, len(jobs)))
    shares = [jobs[i::n] for i in range(n)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--out", str(out), "--model", str(model),
                               "--epochs", str(a.epochs), "--batch-tokens", str(a.batch_tokens),
                               "--eval-every", str(a.eval_every),
                               "--worker", f"{out / f'runs-{i}.jsonl'}|" + ",".join(f"{x}:{s}" for x, s in share)],
                              env=env) for i, share in enumerate(shares)]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"a worker failed (exit codes {codes})")
    cmd = "python benchmarks/train_frontier.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    return finish(out, model, a, arms, seeds, n, tasks, curation, base, time.perf_counter() - t0, cmd)


def curation_of(out: Path) -> dict:
    """Each curated run's ledger and shard sizes, from its manifest."""
    cur = {}
    for man_p in sorted((out / "runs").glob("*/manifest.json")):
        man = json.loads(man_p.read_text(encoding="utf-8"))
        sh = man["shards"]
        cur[man_p.parent.name] = {"ledger": man["ledger"], "train_tokens": sum(x["tokens"] for x in sh["train"]),
                                  "train_examples": sum(x["examples"] for x in sh["train"]),
                                  "val_examples": sum(x["examples"] for x in sh.get("val", []))}
    return cur


def finish(out: Path, model: Path, a, arms: list[str], seeds: int, n: int, tasks: list[str], curation: dict, base: dict,
           wall: float, cmd: str, partial: str | None = None) -> dict:
    """Gather the workers' runs-*.jsonl and write frontier.json / .svg / .md."""
    runs = []
    for f in sorted(out.glob("runs-*.jsonl")):
        runs += [json.loads(x) for x in f.read_text(encoding="utf-8").splitlines() if x.strip()]
    runs = [r for r in runs if r["arm"] in arms]
    runs.sort(key=lambda r: (arms.index(r["arm"]), r["seed"]))
    write_jsonl(out / "runs.jsonl", runs)
    rows = summarise(runs, arms)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    meta = {"command": cmd, "model": model.name, "set": a.set, "tasks": tasks, "seeds": seeds, "jobs": n, "quick": a.quick,
            "epochs": a.epochs,
            "size": SIZE, "curation": curation, "base": base, "wall_s": round(wall, 1),
            "load_average_end": load, "test_items": base["items"], "partial": partial}
    doc = {"meta": meta, "arms": rows, "runs": runs}
    (out / "frontier.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    shutil.copy(out / "frontier.json", out / "runs" / "tasks" / "frontier.json")
    (out / "frontier.svg").write_text(chart(rows), encoding="utf-8")
    md = (f"Command: `{cmd}`\n\nModel `{model.name}`; set `{a.set}`, tasks {', '.join(tasks)} ({base['items']} held-out prompts); "
          f"{seeds} seed(s) per arm (mean ± std){' - PARTIAL: ' + partial if partial else ''}; {n} worker process(es), "
          f"1 torch thread each; {wall:.0f} s wall (load average at the end {load:.1f}).\n\n" + table_md(rows, base))
    (out / "frontier.md").write_text(md, encoding="utf-8")
    if a.results:
        a.results.write_text(md, encoding="utf-8")
    print("\n" + md)
    return doc

if __name__ == "__main__":
    main()
