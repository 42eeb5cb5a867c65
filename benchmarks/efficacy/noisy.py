"""Does curation with no user code clean a noisy multi-task pool nobody tuned it for?

    python benchmarks/efficacy/noisy.py                  # 2 families x 3 seeds, ~1-2 min
    python benchmarks/efficacy/noisy.py --quick          # 1 family, 1 seed, small pool (tests)
    python benchmarks/efficacy/noisy.py --cv --model DIR # adds the default recipe's arm and the cv arm

The pool (per family, per seed) follows the issue's measurement: of the unique records 60%
have the right answer, 30% a plausible wrong one, 10% a refusal; then 20% extra exact
copies. Two task families from two independent generators (digit_tasks.py: reverse,
shift, lookup; word_tasks.py: capital, plural, acronym); `lookup` and `capital` are fixed
key -> answer tables, so their prompts recur with conflicting answers.

Arms (each a pipeline.toml in OUT/pipelines, run by curate's own runner; every arm ends
in the same `mix`, the recipe's own (arm_mix), so task balance follows one rule in every arm):
  raw        normalize only
  random     normalize + exact dedup, then a random subset the size of `consensus`
  consensus  recipes/noisy-multitask-consensus.toml as shipped (the default recipe without
             its cross-validated stages: what runs without a model), only its [[sources]] swapped
  default    recipes/noisy-multitask.toml as shipped, only its [[sources]] and the cv stage's
             `model` swapped (needs --cv and a model): consensus + the cross-validated loss,
             cut only on unrepeated prompts of the tasks the fold models learned
  default_mixture  the default arm with its select's fixed `top_fraction = 0.8` replaced by
             `cut = "mixture"`: per task, a two-Gaussian fit of the loss ratio drops the
             worse component (or refuses and keeps all); same scoring, same gate, same scope
  default_regret  the default arm with its select ranking by SCORE_COLUMN (SCORE_KEEP
             first: the fold models' per-token regret) in place of the loss ratio: same
             scoring (as default_mixture's), same top_fraction, scope and gate; only the
             column and its direction differ
  cv         consensus + quality scorer = "cv_loss" + select (needs --cv and a model)
  cv_single  consensus + the same cv_loss scorer, its select only on records whose prompt had
             no vote (consensus_group_size < the consensus min_group, `scope_max`): prompts
             that repeat keep the vote's verdict (needs --cv and a model)
  cv_agree   consensus + the same cv_loss scorer; its select drops a record whose held-out
             answer the fold models would not reproduce exactly (cv_loss_agree = 0), only on
             unrepeated prompts (as cv_single) and only in tasks whose held-out agreement
             rate is at least GATE (the fold models learned the task; select's gate_min)
  verifier   consensus + a verifier select (checkers.py, written without importing the
             generators): the CHECKABLE-task upper bound (tables have no checker)
  oracle     the raw pool's correct records (same copies) through the consensus arm's own
             stages: the same normalisation, consensus, dedup and mix, so by construction
             it can only be better data than the consensus arm's (and than the default's,
             which only removes records from the consensus arm's set)

Metric: precision of the curated set (share of kept records whose answer is right,
judged with the generator's answer key, which no arm reads), per family, mean ± std over
seeds, and the fraction of the raw-to-oracle precision gap each arm closes; plus kept
rows and answer tokens. This is a data-quality measurement, not a trained model's exact
match: benchmarks/efficacy/trained.py trains a model on every arm (docs/curation-efficacy.md).
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
CONSENSUS_RECIPE = REPO / "recipes" / "noisy-multitask-consensus.toml"
REFUSALS = ["I'm sorry, but I can't help with that.", "As an AI language model, I cannot answer this.",
            "I am unable to provide that information.", "Sorry, I don't know."]
# cv_agree: a task is cut only where the fold models reproduce at least this share of its
# held-out answers exactly (docs/curation-efficacy.md says why 0.5)
GATE = 0.5
# default_regret: the score its select ranks by, chosen on words 300k seeds 0-2 before any
# arm trained on it (docs/curation-efficacy.md, "The fold models' margin and regret"): of
# the two new columns, the regret ranked better on every seed (acronym, unrepeated prompts:
# AUC 0.831 / 0.840 / 0.783 vs the margin's 0.823 / 0.837 / 0.781); a rank mean with the
# ratio was below the ratio alone on every seed, so no combination
SCORE_COLUMN, SCORE_KEEP = "cv_loss_regret", "lowest"
# default_incv: the second cv round's fold models train only on the best TRUST_FRACTION of
# each task's rows by round 1's loss ratio (iterative cross-validation); its columns are
# named INCV_COLUMN_*. 0.6: round 1's worst 40% go, about the share of wrong answers in
# the select's scope (35%) plus a margin; fixed before any arm trained on it. Round 2 runs
# round 1's epochs / TRUST_FRACTION (rounded), so its fold models take as many gradient
# steps as round 1's: on fewer rows at the same epochs they learn less (the unit test's
# pool: AUC 0.71 at the same epochs, 0.84 at matched steps, round 1 0.86)
INCV_COLUMN, TRUST_FRACTION = "cv2", 0.6
ARMS = {"raw": "raw pool", "random": "random subset (normalised, exact-deduped), size of consensus",
        "consensus": "consensus recipe, no model, no user code",
        "default": "default recipe (consensus + gated cv loss), no user code",
        "default_mixture": "default recipe with the mixture cut (cut = \"mixture\") in place of the fixed 80%",
        "default_regret": "default recipe ranking by the fold models' regret in place of the loss ratio",
        "default_incv": "default recipe, its select on a second cv round (fold models trained on round 1's best 60%)",
        "default_incv_mixture": "default_incv with the mixture cut in place of the fixed 80%",
        "cv": "consensus + cross-validated loss select",
        "cv_single": "consensus + cv loss select on unrepeated prompts",
        "cv_agree": "consensus + cv agreement select (learned tasks, unrepeated prompts)",
        "verifier": "consensus + verifiers (checkable-task upper bound)", "oracle": "oracle: the pool's correct records"}


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


def recipe(path: Path = RECIPE) -> tuple[list[dict], dict]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    render = dict(data["render"])
    if not Path(render["tokenizer"]).is_absolute():
        render["tokenizer"] = str((path.parent / render["tokenizer"]).resolve())
    return data["stages"], render


def arm_mix(base_stages: list[dict], total: int | None = None) -> dict:
    """The mix every arm ends in: the recipe's own `mix` stage (the same rule for every arm,
    so task balance is decided alike), with no val split (the benchmark measures the
    kept set; trained.py splits its own). `total` (the random arm: the consensus arm's size)
    fixes the amount, so the recipe's `balance` does not apply there."""
    mixes = [s for s in base_stages if s["kind"] == "mix"]
    m = dict(mixes[-1]) if mixes else {"kind": "mix", "by": "task", "weights": {"*": 1.0}}
    m.update({"name": "balance", "val_fraction": 0.0})
    if total is not None:
        m.pop("balance", None)
        m["total"] = total
    return m


def run_arm(pipeline: Path, fresh: bool = True) -> tuple[Path, dict]:
    """fresh = False: the runner reuses the stages of a run already in its output dir whose
    fingerprints (inputs, configs up to the stage, files read) still match."""
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run_pipeline

    cfg = load_config(pipeline)
    manifest = run_pipeline(cfg, fresh=fresh)
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
    return {"rows": t.height, "distinct": t.unique().height, "precision": sum(right) / max(t.height, 1), "per_task": per_task,
            "distinct_right": len({(task, p) for (task, p, a), ok in zip(t.iter_rows(), right) if ok}),
            "supervised_tokens": tokens}


def recipes(default: Path = RECIPE, consensus: Path = CONSENSUS_RECIPE) -> tuple[dict, dict]:
    """{"default": stages, "consensus": stages} of the two shipped recipes, and the render
    config (the consensus recipe's; both recipes end in the same mix and render)."""
    d, render = recipe(Path(default))
    c, _ = recipe(Path(consensus))
    return {"default": d, "consensus": c}, render


def mixture_select(select: dict) -> dict:
    """The default recipe's cv select with its quota cut replaced by `cut = "mixture"`
    (scope and gate unchanged); a select that already cuts by mixture stays as it is."""
    out = {k: v for k, v in select.items() if k not in ("top_fraction", "top_k")}
    out["cut"] = "mixture"
    return out


def incv_stages(stages: list[dict], mixture: bool = False) -> list[dict]:
    """The default arm's stages with a second cv round (iterative cross-validation): a
    quality stage after the first, the same fold setup, whose fold models train only on the
    rows round 1 trusts (per task, the best TRUST_FRACTION by the loss ratio); the select
    ranks by round 2's ratio and gates on round 2's agreement (scope and cut as shipped,
    or the mixture cut). Round 1's stages are unchanged, so its scoring is the default's."""
    i = next(i for i, s in enumerate(stages) if s["kind"] == "quality" and s.get("scorer") == "cv_loss")
    first = stages[i]
    second = dict(first, name="cv_round2", column=INCV_COLUMN, trust_column=f"{first.get('column', 'cv_loss')}_ratio",
                  trust_keep="lowest", trust_fraction=TRUST_FRACTION,
                  cv_epochs=round(first.get("cv_epochs", 1) / TRUST_FRACTION))
    out = []
    for s in stages[:i + 1] + [second] + stages[i + 1:]:
        if s["kind"] == "select" and s.get("column") == "cv_loss_ratio":
            s = dict(s, column=f"{INCV_COLUMN}_ratio", gate_column=f"{INCV_COLUMN}_agree")
            s = mixture_select(s) if mixture else s
        out.append(s)
    return out


def arm_stages(arm: str, stages: dict, model: str | None, consensus_rows: int | None,
               cv_epochs: int = 3, key_module: tuple[str, str] | None = None) -> list[dict] | None:
    """Each arm's stages. Every arm ends in the same mix (arm_mix: the consensus recipe's,
    which is the default recipe's too). The oracle runs the consensus arm's own stages on the
    pool's correct records, so by construction its data can only be better than the
    consensus arm's (same normalisation, consensus, dedup and mix; only the wrong records
    are gone), and the default arm only removes records from the consensus arm's set."""
    base_stages = stages["consensus"]
    no_mix = [s for s in base_stages if s["kind"] != "mix"]
    exact = {"kind": "dedup", "name": "exact_dedup", "method": "exact", "view": "conversation"}
    if arm == "raw":
        return [{"kind": "normalize"}, arm_mix(base_stages)]
    if arm in ("consensus", "oracle"):
        return no_mix + [arm_mix(base_stages)]
    if arm in ("default", "default_mixture", "default_regret", "diag_rank80", "default_incv", "default_incv_mixture"):  # the shipped recipe; only the cv stage's model is swapped in
        if not model:
            return None
        # max_length 64: the cv arms' cap (the benchmark's records are far shorter, so it
        # changes no score); every cv arm's quality stage the same, so their scores agree
        out = [dict(s, model=model, max_length=64) if s["kind"] == "quality" and s.get("scorer") == "cv_loss" else dict(s)
               for s in stages["default"] if s["kind"] != "mix"]
        if arm == "default_regret":  # the select's column and direction swapped; scoring as default_mixture's
            out = [dict(s, column=SCORE_COLUMN, keep=SCORE_KEEP) if s["kind"] == "select" and s.get("column") == "cv_loss_ratio"
                   else s for s in out]
        if arm == "diag_rank80":  # DIAGNOSTIC (reads the answer key): the same cut, ranked by the key
            if key_module is None:
                raise ValueError("diag_rank80 needs the answer key's verifier module (trained.py writes it)")
            folder, fn = key_module
            i = next(i for i, s in enumerate(out) if s["kind"] == "select" and s.get("column") == "cv_loss_ratio")
            out[i:i + 1] = [{"kind": "quality", "name": "answer_key", "scorer": "verifier", "column": "answer_key",
                             "python_path": [folder], "functions": {"*": fn}},
                            dict(out[i], column="answer_key", keep="highest")]
        if arm in ("default_incv", "default_incv_mixture"):
            out = incv_stages(out, mixture=arm == "default_incv_mixture")
        if arm == "default_mixture":
            # only the select's cut swapped (scoring as the default arm's)
            out = [mixture_select(s) if s["kind"] == "select" and s.get("column") == "cv_loss_ratio" else s
                   for s in out]
        return out + [arm_mix(stages["default"])]
    if arm == "random":
        # the random subset: the consensus arm's size in rows (its repeats included)
        return [{"kind": "normalize"}, exact, arm_mix(base_stages, consensus_rows)]
    if arm == "verifier":
        fns = {t: f"checkers:{t}" for t in ("reverse", "shift", "plural", "acronym")}
        fns["*"] = "checkers:no_opinion"
        return no_mix[:2] + [{"kind": "quality", "scorer": "verifier", "python_path": [str(HERE)], "functions": fns},
                             {"kind": "select", "column": "verifier", "min": 1.0, "missing": "keep"}] + no_mix[2:] + [arm_mix(base_stages)]
    if arm in ("cv", "cv_single", "cv_agree"):
        if not model:
            return None
        quality = {"kind": "quality", "scorer": "cv_loss", "model": model, "folds": 3, "cv_method": "full",
                   "cv_epochs": cv_epochs, "cv_lr": 3e-3, "max_length": 64, "batch_size": 64}
        select = {"kind": "select", "column": "cv_loss_ratio", "keep": "lowest", "top_fraction": 0.8}
        if arm == "cv_agree":
            select = {"kind": "select", "column": "cv_loss_agree", "min": 1.0, "gate_min": GATE}
        if arm in ("cv_single", "cv_agree"):
            cons = next((s for s in no_mix if s["kind"] == "consensus"), None)
            if cons is None:
                raise ValueError(f"the {arm} arm needs a consensus stage in the recipe")
            prefix = cons.get("name") or "consensus"
            select.update(scope_column=f"{prefix}_group_size", scope_max=cons.get("min_group", 3) - 1)
        return no_mix + [quality, select, arm_mix(base_stages)]
    raise ValueError(arm)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/curate-noisy")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--unique", type=int, default=3000, help="unique records per family (before the 20%% copies)")
    ap.add_argument("--families", default="digits,words")
    ap.add_argument("--quick", action="store_true", help="1 family, 1 seed, 300 unique records")
    ap.add_argument("--cv", action="store_true", help="add the default recipe's arm and the cv arm (need a model)")
    ap.add_argument("--cv-epochs", type=int, default=3, help="--cv: epochs of each fold's fine-tuning")
    ap.add_argument("--model", default=str(REPO.parent / "shared" / "data" / "models" / "stories260K"))
    ap.add_argument("--results", default=None, help="also write the table to this Markdown file")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the cv arm")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.unique, args.families = 1, 300, "words"
    if args.cv:
        import torch

        torch.set_num_threads(args.threads)  # on a busy small machine one thread is often faster
    out = Path(args.out)
    stages_of, render = recipes()
    # consensus before random: the random subset is drawn to the consensus arm's size
    arms = ["raw", "consensus", "random"] + (["default", "cv"] if args.cv else []) + ["verifier", "oracle"]
    results: dict = {}
    t0 = time.perf_counter()
    for family in args.families.split(","):
        for seed in range(args.seeds):
            pool, key = make_pool(family, args.unique, seed)
            d = out / family / f"seed{seed}"
            pool_file = write_jsonl(d / "pool.jsonl", pool)
            oracle_file = write_jsonl(d / "oracle.jsonl",
                                      [r for r in pool if key[(r["task"], r["instruction"])] == r["output"]])
            consensus_rows = None
            for arm in arms:
                stages = arm_stages(arm, stages_of, args.model if args.cv else None, consensus_rows, args.cv_epochs)
                if stages is None:
                    continue
                src = oracle_file if arm == "oracle" else pool_file
                p = write_pipeline(d / "pipelines" / f"{arm}.toml", d / "runs" / arm, src, stages, render, None)
                run_dir, manifest = run_arm(p)
                m = measure(run_dir, manifest, key)
                if arm == "consensus":
                    consensus_rows = m["rows"]
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
             "| family | arm | kept rows (distinct) | answer tokens | precision | gap closed | distinct right prompts |",
             "|---|---|---|---|---|---|---|"]
    for family, arms in results.items():
        raw = [m["precision"] for m in arms["raw"]]
        orc = [m["precision"] for m in arms["oracle"]]
        for arm, ms in arms.items():
            if "precision" not in ms[0]:
                continue
            gaps = [(m["precision"] - r) / (o - r) if o > r else float("nan") for m, r, o in zip(ms, raw, orc)]
            lines.append(f"| {family} | {ARMS[arm]} | {_ms([m['rows'] for m in ms], '{:.0f}')} "
                         f"({_ms([m['distinct'] for m in ms], '{:.0f}')}) | "
                         f"{_ms([m['supervised_tokens'] for m in ms], '{:.0f}')} | {_ms([m['precision'] for m in ms])} | "
                         f"{_ms(gaps, '{:.0%}')} | {_ms([m['distinct_right'] for m in ms], '{:.0f}')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
