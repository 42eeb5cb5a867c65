"""Does the curated set of the noisy benchmark train a better model? Exact match, not precision.

    python benchmarks/efficacy/trained.py --jobs 2          # 2 families x 3 seeds x all arms
    python benchmarks/efficacy/trained.py --quick           # 1 family, 1 seed, tiny pool (tests)
    python benchmarks/efficacy/trained.py --resume ...      # finish an interrupted grid (OUT/rows.jsonl)
    python benchmarks/efficacy/trained.py --curate-only ... # the cv arms' curation alone: judge the scores first

For every family and seed, the arms of noisy.py (raw, the default recipe, the consensus
recipe (the default without a model), cv, random, verifier, oracle; imported from noisy.py, built by curate's own runner exactly as there)
keep a set of records; every arm ends in the recipe's own `mix` (one balance rule for all),
and the oracle is the pool's correct records through the consensus arm's own stages. Each
kept set is then rendered for the model with the compact template (plain.jinja) and the
model's own tokenizer, and the model is trained on it with `curate train`'s code path
(train.run_training): full fine-tuning, lr 1e-3, 1 torch thread, the SAME number of
supervised (answer) tokens for every arm (--budget; a small set is seen for more epochs, a
big one for fewer). Early stopping is off, so the budget is what every arm gets. Curation
of each pool (the cv arm trains 3 fold models there) runs as a job of the same pool.

Scoring: greedy exact match on clean prompts the pool never contained (rule tasks: fresh
inputs; table tasks `lookup` / `capital`: the table's keys, whose right answers are the
skill), rendered with the run's own [render] config and scored by train.eval.evaluate,
the code of `curate eval`; per task, mean over seeds. Two arms without training:
  base        the base model on the test prompts
  few-shot    the base model, each prompt preceded by k curated examples of its task
              (train.eval.shots_from_split on the consensus arm's curated split, as
              `curate eval --shots k` does)
Also: `default_half` / `consensus_half` / `cv_single_half` (that arm's own set, half the budget: does it beat
raw on fewer trained tokens?) and the DIAGNOSTIC arms `diag_clean` / `diag_plus` (built
from the consensus arm's and raw's kept sets WITH the answer key, only to say why an arm scores
as it does; never a product arm), and `diag_rank80` (the default recipe's 80% cut ranked by
the answer key: what a perfect score would give at that cut; a cv arm, since it needs the
fold models' gate). OUT/cv_stats.jsonl holds, per cv run, each per-record score's AUC and
the precision an 80% / 60% cut of the select's scope would keep (cv_stats; the table prints
it). OUT/sets.jsonl holds every kept set's per-task rows,
distinct records, prompts, right prompts and precision; the table prints them.
Gap closed = (arm - raw) / (oracle - raw), per seed, then mean ± std. If the oracle does
not beat raw, the gap is undefined (printed as nan) and the run says so: an upper bound
that does not bound means the budget or the model is the limit, not the data.

The model (../shared/data/models/stories260K) is a 260k-parameter story model: it has
no prior for these tasks, so few-shot is expected near base; the point of that arm is to
show what prompting without training buys at this scale, not a strong baseline.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import shutil
import statistics
import sys
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # train_frontier.test_items: the `curate eval --test` read/render path
sys.path.insert(0, str(REPO))

import noisy  # noqa: E402

MODEL = REPO.parent / "shared" / "data" / "models" / "stories260K"
TEMPLATE = HERE / "plain.jinja"
CV_ARMS = ["default", "default_mixture", "default_regret", "default_incv", "default_incv_mixture", "cv", "cv_single", "cv_agree", "diag_rank80"]  # their curation trains fold models: a job of its own per pool
HALF = "_half"  # an arm name + HALF: that arm's own kept set, trained on half the budget
HALF_OF = ["default", "default_mixture", "default_regret", "default_incv", "consensus", "cv_single", "cv_agree"]
# DIAGNOSTICS, not product arms: built from other arms' kept sets WITH the answer key, only
# to tell why an arm scores as it does (issue #18, words at 300k). No curation reads a key.
DIAG_ARMS = ["diag_clean", "diag_plus"]
# diag_rank80 (a cv arm: it needs the fold models' gate): the default recipe's cut, same
# scope, gate and top_fraction, ranked by the ANSWER KEY instead of a score: what a perfect
# score would give at that cut (noisy.arm_stages)
DIAG_CV = ["diag_rank80"]
TRAIN_ARMS = (["raw", "default", "default_mixture", "default_regret", "default_incv", "default_incv_mixture", "consensus"] + [a + HALF for a in HALF_OF]
              + ["cv", "cv_single", "cv_agree", "random", "verifier", "oracle"] + DIAG_ARMS + DIAG_CV)
ALL_ARMS = TRAIN_ARMS + ["base"]
LABELS = {**noisy.ARMS, "base": "base model, no training", "few_shot": "base model + k curated shots",
          **{a + HALF: noisy.ARMS[a] + ", half the budget" for a in HALF_OF},
          "diag_clean": "DIAGNOSTIC: consensus's kept set minus its wrong records (answer key)",
          "diag_plus": "DIAGNOSTIC: consensus's kept set + raw's distinct records of rule tasks it lacks",
          "diag_rank80": "DIAGNOSTIC: the default recipe's 80% cut ranked by the answer key (a perfect score, same cut)"}
ORDER = ["raw", "consensus", "default", "oracle", "default_incv", "default_incv_mixture", "default_incv_half", "default_regret", "diag_rank80", "default_mixture", "default_regret_half", "default_mixture_half", "cv_agree", "cv_single", "default_half", "consensus_half",
         "cv_agree_half", "cv_single_half", "diag_clean", "diag_plus",
         "verifier", "cv", "random"]  # the jobs in the order that matters most when a grid is cut short
TABLES = {"lookup", "capital"}


def kept_jsonl(run_dir: Path, manifest: dict, path: Path) -> int:
    """The arm's kept records (its last stage's table) as Alpaca JSONL with `task`."""
    from curate.contract.datasets import read_dataset
    from curate.contract.views import text_view

    last = manifest["stages"][-1]["output"]
    t = read_dataset(run_dir / last)
    t = t.select("task", text_view("user").alias("instruction"), text_view("response").alias("output"))
    rows = [{"instruction": p, "input": "", "output": a, "task": task} for task, p, a in t.iter_rows()]
    noisy.write_jsonl(path, rows)
    return len(rows)


def set_stats(rows: list[dict], key: dict) -> dict:
    """Per task of one kept set: rows, distinct (prompt, answer) pairs, distinct prompts,
    prompts with a right answer, precision (answer key: measurement only)."""
    out = {}
    for task in sorted({r["task"] for r in rows}):
        rs = [r for r in rows if r["task"] == task]
        ok = [key.get((task, r["instruction"])) == r["output"] for r in rs]
        out[task] = {"rows": len(rs), "distinct": len({(r["instruction"], r["output"]) for r in rs}),
                     "prompts": len({r["instruction"] for r in rs}),
                     "right_prompts": len({r["instruction"] for r, o in zip(rs, ok) if o}),
                     "precision": sum(ok) / len(rs)}
    return out


# cv_stats: the per-record scores judged, each oriented so that higher = kept first (as
# the select ranks them), with the value a missing score ranks at (last)
CV_SCORES = {"ratio": ("cv_loss_ratio", -1.0, 9.0), "margin": ("cv_loss_margin", 1.0, -1e9),
             "regret": ("cv_loss_regret", -1.0, 1e9),
             # a second cv round's (default_incv: fold models trained on round 1's trusted rows)
             "ratio2": (f"{noisy.INCV_COLUMN}_ratio", -1.0, 9.0), "regret2": (f"{noisy.INCV_COLUMN}_regret", -1.0, 1e9)}
CV_COMBOS = {"ratio+margin": ("ratio", "margin"), "ratio+regret": ("ratio", "regret")}  # mean of the two ranks


def _ranks01(x):
    """Ranks in [0, 1] (ties averaged): the scale a rank combination of two scores averages."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    u, inv, cnt = np.unique(x, return_inverse=True, return_counts=True)
    avg = np.cumsum(cnt) - cnt + (cnt - 1) / 2  # 0-based average rank of each distinct value
    return avg[inv] / max(len(x) - 1, 1)


def keep_precision(score, right, fraction: float = 0.8) -> float | None:
    """Precision of the best `fraction` of the rows by `score` (higher first; ties by
    position, as select breaks them by id): the set a `top_fraction` cut would keep."""
    import numpy as np

    if not len(score):
        return None
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")
    k = max(int(round(fraction * len(score))), 1)
    return float(np.asarray(right)[order[:k]].mean())


def cv_stats(run_dir: Path, manifest: dict, key: dict) -> dict | None:
    """A cv arm's scorer, judged with the answer key (measurement only; the arm never reads
    it): per task, the fold models' held-out agreement rate, the precision of the records
    they agree / disagree with, the AUC of the loss ratio and of agreement, and the select's
    gate verdict (cut or not). Where the run has them, each per-record score of CV_SCORES
    and CV_COMBOS: its AUC on the task's rows (`auc_<score>`) and on its unrepeated-prompt
    rows (the select's scope, consensus_group_size <= 2: `auc_<score>_scope`), and the
    precision of the scope rows an 80% cut by that score would keep (`keep80_<score>`;
    `precision_scope` is the scope's precision before any cut)."""
    import numpy as np
    import polars as pl

    from curate.contract.datasets import read_dataset
    from curate.contract.views import text_view
    from curate.stages.common.signal import auc

    # the last cv stage's output holds every earlier round's columns too
    q = next((s for s in reversed(manifest["stages"])
              if s["kind"] == "quality" and (s.get("stats") or {}).get("scorer") == "cv_loss"), None)
    if q is None:
        return None
    gate = next(((s.get("stats") or {}).get("gate") for s in manifest["stages"] if s["kind"] == "select"), None)
    t = read_dataset(run_dir / q["output"])
    if "cv_loss_agree" not in t.columns:
        return None
    scores = {n: v for n, v in CV_SCORES.items() if v[0] in t.columns}
    t = t.select("task", text_view("user").alias("p"), text_view("response").alias("a"), "cv_loss_agree",
                 "consensus_group_size", *[v[0] for v in scores.values()])
    ok = pl.Series([key.get((task, p)) == a for task, p, a in t.select("task", "p", "a").iter_rows()])
    t = t.with_columns(ok.alias("ok"))
    out = {}
    for task in sorted(t["task"].unique().to_list()):
        x = t.filter(pl.col("task") == task)
        ag, right = x["cv_loss_agree"].fill_null(0.0).to_numpy(), x["ok"].to_numpy()
        un = x.filter(pl.col("consensus_group_size") <= 2)
        r = {"n": x.height, "agree": float(ag.mean()), "precision": float(right.mean()),
             "precision_agree": float(right[ag == 1].mean()) if (ag == 1).any() else None,
             "precision_disagree": float(right[ag == 0].mean()) if (ag == 0).any() else None,
             "auc_agree": auc(ag, right), "unrepeated": un.height,
             "precision_scope": float(un["ok"].mean()) if un.height else None,
             "gate": ((gate or {}).get("groups") or {}).get(task)}
        for part, rows, sfx in ((x, right, ""), (un, un["ok"].to_numpy(), "_scope")):
            oriented = {n: sign * part[c].fill_null(miss).fill_nan(miss).to_numpy() for n, (c, sign, miss) in scores.items()}
            for n, (a, b) in CV_COMBOS.items():
                if a in oriented and b in oriented:
                    oriented[n] = (_ranks01(oriented[a]) + _ranks01(oriented[b])) / 2
            for n, v in oriented.items():
                r[f"auc_{n}{sfx}"] = auc(v, rows)
                if sfx:
                    r[f"keep80_{n}"] = keep_precision(v, rows)
                    r[f"keep60_{n}"] = keep_precision(v, rows, 0.6)
        out[task] = r
    return out


def _jsonl_rows(f: Path) -> list[dict]:
    """The records of a JSONL file the benchmark appends to (blank lines skipped)."""
    return [json.loads(x) for x in f.read_text(encoding="utf-8").splitlines() if x.strip()]


def _scope_precision(last: dict, task: str) -> str:
    xs = [last[s][task]["precision_scope"] for s in last if task in last[s] and last[s][task].get("precision_scope") is not None]
    return f"{statistics.mean(xs):.3f}" if xs else "no unrepeated prompts"


def cv_table(out: Path, family: str, seeds: list[int] | None = None) -> list[str]:
    """Per task, per score: AUC on all rows / on the select's scope, and the precision an
    80% cut of the scope would keep (OUT/cv_stats.jsonl, one cv run per seed: the last one
    written of the arms that share the scoring); mean over `seeds` (default: all)."""
    f = out / "cv_stats.jsonl"
    if not f.is_file():
        return []
    last = {}
    for r in _jsonl_rows(f):
        if r["family"] == family and (seeds is None or r["seed"] in seeds) and any(
                "auc_margin" in v for v in r["by_task"].values()):
            last[r["seed"]] = r["by_task"]
    if not last:
        return []
    tasks = sorted({t for v in last.values() for t in v})
    names = list(CV_SCORES) + list(CV_COMBOS)
    lines = ["", f"Per-record scores of the fold models ({family}; seeds {', '.join(map(str, sorted(last)))}; mean): "
             "AUC on all rows / AUC on unrepeated prompts (the select's scope) / precision an 80% cut of the scope "
             "keeps / a 60% cut keeps (the scope's precision before any cut in the header; a perfect score keeps "
             "min(1, p / fraction))", "",
             "| score | " + " | ".join(f"{t} ({_scope_precision(last, t)})" for t in tasks) + " |",
             "|---|" + "---|" * len(tasks)]
    for n in names:
        cells = []
        for t in tasks:
            vs = [last[s][t] for s in last if t in last[s] and f"auc_{n}" in last[s][t]]
            if not vs:
                cells.append("-")
                continue

            def m(k):
                xs = [v[k] for v in vs if v.get(k) is not None and not math.isnan(v[k])]
                return f"{statistics.mean(xs):.3f}" if xs else "nan"
            cells.append(f"{m('auc_' + n)} / {m('auc_' + n + '_scope')} / {m('keep80_' + n)} / {m('keep60_' + n)}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return lines


def diag_rows(arm: str, kept_dir: Path, key: dict) -> list[dict]:
    """The diagnostic arms' sets (they read the answer key; never a product arm):
      diag_clean  the consensus arm's kept set (its repeats from the mix included) minus every
                  record whose answer is wrong
      diag_plus   the consensus arm's kept set plus one copy of each distinct (prompt, answer)
                  record of the raw pool's rule tasks (not the tables) that it lacks: do the
                  distinct inputs the consensus recipe removed matter?"""
    def read(a):
        return [json.loads(x) for x in (kept_dir / f"{a}.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]

    default = read("consensus")
    if arm == "diag_clean":
        return [r for r in default if key.get((r["task"], r["instruction"])) == r["output"]]
    have = {(r["task"], r["instruction"], r["output"]) for r in default}
    extra, seen = [], set()
    for r in read("raw"):
        k = (r["task"], r["instruction"], r["output"])
        if r["task"] not in TABLES and k not in have and k not in seen:
            seen.add(k)
            extra.append(r)
    return default + extra


def render_pipeline(path: Path, run_dir: Path, data: Path, model: Path, seed: int) -> Path:
    """normalize only (the arm's curation already happened), then [render] for the model."""
    render = {"template": str(TEMPLATE), "tokenizer": str(model), "max_length": 256, "pack": True,
              "val_fraction": 0.05}
    lines = ["[run]", f"output_dir = {noisy._toml(str(run_dir))}", f"seed = {seed}", "",
             "[[sources]]", 'name = "kept"', f"path = {noisy._toml(str(data))}", 'format = "alpaca"',
             'task_field = "task"', "", "[[stages]]", 'kind = "normalize"', "", "[render]"]
    lines += [f"{k} = {noisy._toml(v)}" for k, v in render.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_rows(family: str, pool_key: dict, n: int, seed: int) -> list[dict]:
    """Clean prompts: a fresh draw's answer key, minus (rule tasks) every prompt of the pool."""
    _pool, key = noisy.make_pool(family, n, 10_000 + seed)
    seen = {p for (_t, p) in pool_key}
    out, have = [], set()
    for (task, prompt), right in sorted(key.items()):
        if (task not in TABLES and prompt in seen) or (task, prompt) in have:
            continue
        have.add((task, prompt))
        out.append({"instruction": prompt, "input": "", "output": right, "task": task})
    return out


def split_tokens(run_dir: Path) -> tuple[int, int]:
    """(supervised, total) tokens of the run's train split."""
    import pyarrow.compute as pc

    from curate.contract.shards import open_split

    t = open_split(run_dir, "train")
    labels = pc.list_flatten(t.column("labels"))
    return int(pc.sum(pc.not_equal(labels, -100)).as_py()), len(labels)


def build_one(family: str, seed: int, a: dict, part: str = "main") -> list[dict]:
    """Curate the arms of one (family, seed) (noisy.py's stages), render each kept set for
    the model: that pool's training jobs, plus the untrained arms' job. part = "main": every
    arm but cv; part = "cv": the cv arm alone (its fold training is most of the curation
    time, so it is a job of its own, with its own copies of the pool and test files)."""
    import torch

    torch.set_num_threads(1)  # the cv arm's fold training; 1 thread is faster on a busy machine
    stages_of, render = noisy.recipes(Path(a["recipe"]), Path(a["consensus_recipe"]))
    pool, key = noisy.make_pool(family, a["unique"], seed)
    d = (Path(a["out"]) / family).resolve() / f"seed{seed}"  # OUT/<family> may link to another grid's (--reuse)
    sfx = "" if part == "main" else f"-{part}"
    pool_file = noisy.write_jsonl(d / f"pool{sfx}.jsonl", pool)
    oracle_file = noisy.write_jsonl(d / f"oracle{sfx}.jsonl",
                                    [r for r in pool if key[(r["task"], r["instruction"])] == r["output"]])
    test_file = noisy.write_jsonl(d / f"test{sfx}.jsonl", test_rows(family, key, a["test"], seed))
    if part == "cv":
        arms = [x for x in CV_ARMS if x in a["arms"] or x + HALF in a["arms"]]
        if a.get("resume") and not a.get("curate_only"):
            # --resume: a cv arm whose rows (and its half arm's, if asked) all exist is not curated again
            done = {arm for (f, s_, arm) in a.get("done", []) if (f, s_) == (family, seed)}
            arms = [x for x in arms if not all(y in done for y in (x, x + HALF) if y in a["arms"])]
    else:  # the diagnostics need raw's and consensus's kept sets, so they come after them
        arms = [x for x in ["raw", "consensus", "random", "verifier", "oracle"] + DIAG_ARMS
                if x in a["arms"] or x + HALF in a["arms"] or (x in ("raw",) and any(y in a["arms"] for y in DIAG_ARMS))]
    consensus_rows, jobs = None, []
    for arm in arms:  # consensus before random (its size)
        if arm in DIAG_ARMS:
            rows = diag_rows(arm, d / "kept", key)
            noisy.write_jsonl(d / "kept" / f"{arm}.jsonl", rows)
            kept = len(rows)
            prec = {"distinct": len({(r["task"], r["instruction"], r["output"]) for r in rows}),
                    "precision": sum(key.get((r["task"], r["instruction"])) == r["output"] for r in rows) / max(kept, 1)}
        else:
            key_module = write_key_module(d / "answer_key", family, seed, key) if arm in DIAG_CV else None
            stages = noisy.arm_stages(arm, stages_of, a["model"], consensus_rows, a["cv_epochs"], key_module)
            src = oracle_file if arm == "oracle" else pool_file
            pf = d / "pipelines" / f"{arm}.toml"
            before = pf.read_text(encoding="utf-8") if pf.is_file() else None
            p = noisy.write_pipeline(pf, d / "runs" / arm, src, stages, render)
            man_file = d / "runs" / arm / "manifest.json"
            if (a.get("reuse") and before == p.read_text(encoding="utf-8") and man_file.is_file()
                    and (arm not in CV_ARMS or cv_current(d / "runs" / arm))):
                # --reuse: the same pipeline (same pool, stages, seed) already ran here: its run stands
                run_dir, manifest = d / "runs" / arm, json.loads(man_file.read_text(encoding="utf-8"))
            else:
                fresh = True
                # a sibling whose cv scoring is this arm's (same stages up to the cv stage) and
                # was made by this code (it has every column the scorer writes now)
                # (the one sharing the most stages: default_incv_mixture reuses default_incv's
                # second cv round, not only default's first)
                sibs = [x for x in CV_ARMS if x != arm and (d / "runs" / x / "manifest.json").is_file()
                        and cv_prefix(d / "pipelines" / f"{x}.toml") == cv_prefix(p) and cv_current(d / "runs" / x)]
                sib = (d / "runs" / max(sibs, key=lambda x: shared_stages(d / "pipelines" / f"{x}.toml", p))
                       if sibs else None)
                if a.get("reuse") and arm in CV_ARMS and sib is not None:
                    # --reuse: another cv arm's run of this pool holds the same fold scoring (the
                    # stages before the select); the runner reuses each stage whose fingerprint matches
                    shutil.rmtree(d / "runs" / arm, ignore_errors=True)
                    shutil.copytree(sib, d / "runs" / arm)
                    fresh = False
                run_dir, manifest = noisy.run_arm(p, fresh=fresh)
            prec = noisy.measure(run_dir, manifest, key)
            if arm == "consensus":
                consensus_rows = prec["rows"]
            kept = kept_jsonl(run_dir, manifest, d / "kept" / f"{arm}.jsonl")
            if arm in CV_ARMS:
                cvs = cv_stats(run_dir, manifest, key)
                if cvs is not None:
                    with (Path(a["out"]) / "cv_stats.jsonl").open("a", encoding="utf-8") as f:
                        f.write(json.dumps({"family": family, "seed": seed, "arm": arm, "by_task": cvs}) + "\n")
        stats = set_stats([json.loads(x) for x in (d / "kept" / f"{arm}.jsonl").read_text(encoding="utf-8").splitlines()
                           if x.strip()], key)
        with (Path(a["out"]) / "sets.jsonl").open("a", encoding="utf-8") as f:  # per-task kept sets, for the table
            f.write(json.dumps({"family": family, "seed": seed, "arm": arm, "by_task": stats}) + "\n")
        if a.get("curate_only"):
            continue
        rp = render_pipeline(d / "pipelines" / f"{arm}-render.toml", d / "rendered" / arm,
                             d / "kept" / f"{arm}.jsonl", Path(a["model"]), seed)
        noisy.run_arm(rp)
        sup, tot = split_tokens(d / "rendered" / arm)
        job = {"family": family, "seed": seed, "arm": arm, "run": str(d / "rendered" / arm),
               "test": str(test_file), "kept": kept, "distinct": prec["distinct"],
               "precision": prec["precision"], "supervised": sup, "total": tot}
        if arm in a["arms"]:
            jobs.append(job)
        if arm + HALF in a["arms"]:  # the same set, half the supervised tokens
            jobs.append({**job, "arm": arm + HALF, "budget_scale": 0.5})
    jobs.sort(key=lambda j: ORDER.index(j["arm"]))
    if "base" in a["arms"] and part == "main":
        # the untrained arms score on the consensus arm's rendering (same [render] config)
        jobs.append({"family": family, "seed": seed, "arm": "base+few_shot", "run": str(d / "rendered" / "consensus"),
                     "test": str(test_file)})
    return jobs


def write_key_module(folder: Path, family: str, seed: int, key: dict) -> tuple[str, str]:
    """A verifier module that answers "is this record's answer the key's?" (the diagnostic
    arms only: it READS THE ANSWER KEY). Its own name per pool, since one process may build
    several pools and Python caches modules by name. Returns (folder, "module:function")."""
    name = f"answer_key_{family}_s{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(sorted([t, p, a] for (t, p), a in key.items())), encoding="utf-8")
    (folder / f"{name}.py").write_text(
        '"""DIAGNOSTIC: the benchmark pool\'s answer key (written by trained.py)."""\n'
        "import json\nfrom pathlib import Path\n\n"
        f"KEY = {{(t, p): a for t, p, a in json.loads((Path(__file__).parent / {name + '.json'!r}).read_text())}}\n\n\n"
        "def right(rec):\n"
        "    user = next((m['content'] for m in rec['messages'] if m['role'] == 'user'), None)\n"
        "    return KEY.get((rec['task'], user)) == (rec.get('response') or '')\n", encoding="utf-8")
    return str(folder), f"{name}:right"


def cv_prefix(pipeline: Path) -> list | None:
    """A pipeline file's sources, seed and stages up to its cv_loss quality stage (None
    without one): two runs with the same prefix score the same records the same way."""
    import tomllib

    if not pipeline.is_file():
        return None
    data = tomllib.loads(pipeline.read_text(encoding="utf-8"))
    stages = data.get("stages", [])
    i = next((i for i, s in enumerate(stages) if s.get("kind") == "quality" and s.get("scorer") == "cv_loss"), None)
    return None if i is None else [data.get("sources"), data.get("run", {}).get("seed"), stages[: i + 1]]


def shared_stages(a: Path, b: Path) -> int:
    """How many leading stages two pipeline files have in common (the runner can reuse
    that many of one's stages for the other)."""
    import tomllib

    sa, sb = (tomllib.loads(x.read_text(encoding="utf-8")).get("stages", []) for x in (a, b))
    return next((i for i, (x, y) in enumerate(zip(sa, sb)) if x != y), min(len(sa), len(sb)))


def cv_current(run_dir: Path) -> bool:
    """Whether a finished run's cv_loss scoring has every column the scorer writes now (a
    run scored before `cv_loss_margin` existed must be scored again, not reused)."""
    from curate.contract.datasets import read_dataset
    from curate.stages.quality.stage import Config

    man = run_dir / "manifest.json"
    if not man.is_file():
        return False
    q = next((s for s in json.loads(man.read_text(encoding="utf-8"))["stages"]
              if s["kind"] == "quality" and (s.get("stats") or {}).get("scorer") == "cv_loss"), None)
    if q is None:
        return True
    want = Config(kind="quality", scorer="cv_loss", model="m").output_columns()
    return set(want) <= set(read_dataset(run_dir / q["output"]).columns)


def twin_row(job: dict, rows: list[dict]) -> dict | None:
    """A trained row of another arm of the same (family, seed) and budget whose kept set is
    byte-identical to this job's (e.g. a gate that cut nothing: the consensus arm's set): its
    result is this job's, since rendering and training are deterministic for a given set and
    seed (checked: words seed 0, a 300,000-token training of the consensus arm's set rerun gave the
    same exact match, 0.854). Saves a training; the row says `same_set_as`."""
    if "supervised" not in job:
        return None
    kept = Path(job["run"]).parents[1] / "kept"
    half = job["arm"].endswith(HALF)
    mine = kept / f"{job['arm'].removesuffix(HALF)}.jsonl"
    if not mine.is_file():
        return None
    data = mine.read_bytes()
    for r in rows:
        if (r["family"], r["seed"]) != (job["family"], job["seed"]) or r["arm"] == job["arm"] or "set_supervised" not in r:
            continue
        if r["arm"].endswith(HALF) != half or r.get("same_set_as") or r["set_supervised"] != job["supervised"]:
            continue
        other = kept / f"{r['arm'].removesuffix(HALF)}.jsonl"
        if other != mine and other.is_file() and other.read_bytes() == data:
            return {**r, "arm": job["arm"], "same_set_as": r["arm"]}
    return None


def run_job(job: dict, args_d: dict) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from train_frontier import test_items

    from train import parse_train_config, run_training
    from train.data import load_split
    from train.eval import evaluate, shots_from_split
    from train.load import load_trained

    run = Path(job["run"])
    items = test_items(run, Path(job["test"]))
    man = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    model = Path(args_d["model"])
    if job["arm"] == "base+few_shot":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model))
        base = AutoModelForCausalLM.from_pretrained(str(model)).eval()
        stop = list((man.get("render") or {}).get("end_of_turn", {}).get("ids") or [tok.eos_token_id])
        shots = shots_from_split(load_split(run, "train", man), args_d["k"])
        ev = evaluate(base, items, tok, stop, shots, base=base, arms=("base", "few_shot"), max_new_tokens=10,
                      batch_size=64)
        return [{**{k: job[k] for k in ("family", "seed")}, "arm": arm, "exact_match": ev["overall"][arm]["exact_match"],
                 "by_task": {t: v[arm]["exact_match"] for t, v in ev["tasks"].items()}, "tokens": 0}
                for arm in ("base", "few_shot")]
    work = Path(args_d["out"]) / "work" / f"{job['family']}-s{job['seed']}-{job['arm']}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    shutil.copytree(run / "shards", work / "shards")
    shutil.copy(run / "manifest.json", work / "manifest.json")
    bt = args_d["batch_tokens"]
    # steps so that steps x batch_tokens x (supervised share) = the budget, for every arm
    budget = round(args_d["budget"] * job.get("budget_scale", 1.0))
    steps = max(1, math.ceil(budget * job["total"] / (job["supervised"] * bt)))
    table = {"base_model": str(model), "method": "full", "lr": args_d["lr"], "batch_tokens": bt,
             "micro_batch_tokens": bt, "epochs": 1000, "max_steps": steps, "eval_every": 10 ** 6, "save_every": 0,
             "threads": 1, "seed": job["seed"], "early_stopping": {"patience": 0}}
    cfg = parse_train_config(table, REPO)
    t0, c0 = time.perf_counter(), time.process_time()
    s = run_training(work, cfg, log=lambda *_a, **_k: None)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    trained = load_trained(work, threads=1)
    ev = evaluate(trained.model, items, trained.tokenizer, trained.stop_ids, {}, arms=("tuned",), max_new_tokens=10,
                  batch_size=64)
    shutil.rmtree(work, ignore_errors=True)
    return [{**{k: job[k] for k in ("family", "seed", "arm", "kept", "distinct", "precision")},
             "set_supervised": job["supervised"],
             "exact_match": ev["overall"]["tuned"]["exact_match"],
             "by_task": {t: v["tuned"]["exact_match"] for t, v in ev["tasks"].items()},
             "tokens": s["tokens"], "steps": s["steps"], "supervised_budget": budget, "wall_s": wall,
             "cpu_s": cpu}]


def _ms(xs: list[float], fmt: str = "{:.3f}") -> str:
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return "nan"
    if len(xs) == 1:
        return fmt.format(xs[0])
    return f"{fmt.format(statistics.mean(xs))} ± {fmt.format(statistics.stdev(xs))}"


def floor_lines(em: dict, seeds: int) -> list[str]:
    """Issue #18's floor, per family: the default recipe (and the cv arm) never below raw,
    closing >= 50% of the raw-to-oracle gap; the verifier arm >= 90%; each beyond seed
    noise (paired over seeds: the mean minus 2 standard errors clears the bar; one seed
    cannot show that). Only seeds where the oracle beats raw count for the gap."""
    out = []
    for arm, bar in (("default", 0.5), ("default_half", 0.5), ("default_mixture", 0.5), ("default_mixture_half", 0.5),
                     ("default_regret", 0.5), ("default_regret_half", 0.5),
                     ("default_incv", 0.5), ("default_incv_half", 0.5), ("default_incv_mixture", 0.5),
                     ("consensus", 0.5), ("consensus_half", 0.5), ("cv", 0.5),
                     ("cv_single", 0.5), ("cv_single_half", 0.5), ("cv_agree", 0.5), ("cv_agree_half", 0.5),
                     ("verifier", 0.9)):
        ss = [s for s in range(seeds) if (arm, s) in em and ("raw", s) in em and ("oracle", s) in em]
        if not ss:
            continue
        diff = [em[(arm, s)] - em[("raw", s)] for s in ss]
        gaps = [(em[(arm, s)] - em[("raw", s)]) / (em[("oracle", s)] - em[("raw", s)])
                for s in ss if em[("oracle", s)] > em[("raw", s)]]

        def clears(xs: list[float], b: float) -> str:
            if len(xs) < 2:
                return f"mean {statistics.mean(xs):.3f} vs {b} (1 seed: noise not measured)" if xs else "undefined"
            m, se = statistics.mean(xs), statistics.stdev(xs) / math.sqrt(len(xs))
            verdict = "MET" if m - 2 * se >= b else ("not met" if m + 2 * se < b else "within noise")
            return f"{m:.3f} ± {2 * se:.3f} (2 s.e.) vs {b}: {verdict}"

        out.append(f"- floor, {LABELS[arm]}: minus raw {clears(diff, 0.0)}; gap closed {clears(gaps, bar)}")
    for a, b, what in (("default", "consensus", "default recipe minus consensus recipe"),
                       ("default_mixture", "default", "mixture cut minus the fixed 80% cut (default_mixture - default)"),
                       ("default_regret", "default", "regret score minus the loss ratio (default_regret - default)"),
                       ("default_incv", "default", "second cv round minus the first (default_incv - default)"),
                       ("default_incv_mixture", "default_incv",
                        "second round: mixture cut minus the fixed 80% cut (default_incv_mixture - default_incv)"),
                       ("diag_rank80", "default", "DIAGNOSTIC: a perfect score at the same cut minus the loss ratio "
                                                  "(diag_rank80 - default)")):
        ss = [s for s in range(seeds) if (a, s) in em and (b, s) in em]
        if len(ss) >= 2:  # what one arm adds to another, paired over seeds
            d = [em[(a, s)] - em[(b, s)] for s in ss]
            m, se = statistics.mean(d), statistics.stdev(d) / math.sqrt(len(d))
            verdict = "above" if m - 2 * se > 0 else ("below" if m + 2 * se < 0 else "within noise")
            out.append(f"- {what}: {m:+.3f} ± {2 * se:.3f} (2 s.e.; per seed "
                       + ", ".join(f"{x:+.3f}" for x in d) + f"): {verdict}")
    return out


def set_table(out: Path, family: str) -> list[str]:
    """Per task, per arm: rows, distinct (prompt, answer) pairs, distinct prompts, prompts
    with a right answer, precision; mean over seeds (OUT/sets.jsonl, written at curation)."""
    f = out / "sets.jsonl"
    if not f.is_file():
        return []
    last = {}
    for r in _jsonl_rows(f):
        if r["family"] == family:
            last[(r["arm"], r["seed"])] = r["by_task"]  # a rerun's curation replaces the earlier one
    if not last:
        return []
    tasks = sorted({t for v in last.values() for t in v})
    lines = ["", f"Kept sets per task ({family}; mean over seeds): rows / distinct (prompt, answer) / distinct prompts "
             "/ prompts with a right answer / precision", "",
             "| arm | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for arm in TRAIN_ARMS:  # a half arm's set is its parent's
        seeds = sorted(s for (a, s) in last if a == arm)
        if not seeds:
            continue
        cells = []
        for t in tasks:
            vs = [last[(arm, s)][t] for s in seeds if t in last[(arm, s)]]
            if not vs:
                cells.append("-")
                continue
            m = {k: statistics.mean(v[k] for v in vs) for k in vs[0]}
            cells.append(f"{m['rows']:.0f} / {m['distinct']:.0f} / {m['prompts']:.0f} / {m['right_prompts']:.0f} / "
                         f"{m['precision']:.3f}")
        lines.append(f"| {LABELS[arm]} | " + " | ".join(cells) + " |")
    return lines


def table(rows: list[dict], args, wall: float) -> str:
    cmd = "python benchmarks/efficacy/trained.py " + " ".join(sys.argv[1:])
    lines = [f"Command: `{cmd.strip()}`", "",
             f"{args.seeds} seed(s), {args.unique} unique records per family + 20% copies; model {Path(args.model).name}, "
             f"full FT lr {args.lr}, {args.budget} supervised tokens per arm, k = {args.k} shots"
             + (f"; {wall:.0f} s wall." if not math.isnan(wall) else "."), ""]
    order = ["base", "few_shot"] + [a for a in TRAIN_ARMS if a not in DIAG_ARMS + DIAG_CV] + DIAG_ARMS + DIAG_CV
    warn = []
    for family in args.families.split(","):
        fr = [r for r in rows if r["family"] == family]
        tasks = sorted({t for r in fr for t in r["by_task"]})
        lines += [f"**{family}**", "", "| arm | seeds | kept rows (distinct) | precision | answer tokens in the set | "
                  "exact match | gap closed | " + " | ".join(tasks) + " |", "|---|---|---|---|---|---|---|" + "---|" * len(tasks)]
        em = {(r["arm"], r["seed"]): r["exact_match"] for r in fr}
        for arm in order:
            ar = sorted((r for r in fr if r["arm"] == arm), key=lambda r: r["seed"])
            if not ar:
                continue
            gaps = []
            for r in ar:
                lo, hi = em.get(("raw", r["seed"])), em.get(("oracle", r["seed"]))
                gaps.append((r["exact_match"] - lo) / (hi - lo) if lo is not None and hi is not None and hi > lo
                            else float("nan"))
            kept = (f"{_ms([r['kept'] for r in ar], '{:.0f}')} ({_ms([r['distinct'] for r in ar], '{:.0f}')})"
                    if "kept" in ar[0] else "-")
            prec = _ms([r["precision"] for r in ar]) if "precision" in ar[0] else "-"
            sup = _ms([r["set_supervised"] for r in ar], "{:.0f}") if "set_supervised" in ar[0] else "-"
            lines.append(f"| {LABELS[arm]} | {len(ar)} | {kept} | {prec} | {sup} | {_ms([r['exact_match'] for r in ar])} | "
                         f"{_ms(gaps, '{:.0%}')} | " + " | ".join(_ms([r['by_task'].get(t, float('nan')) for r in ar])
                                                        for t in tasks) + " |")
        lines += [""] + floor_lines(em, args.seeds)
        twins = sorted((r["arm"], r["seed"], r["same_set_as"]) for r in fr if r.get("same_set_as"))
        if twins:
            lines.append("- not trained again, kept set byte-identical to another arm's (same seed and budget; "
                         "training is deterministic): " + "; ".join(f"{LABELS[a]} seed {s} = {b}" for a, s, b in twins))
        for s in range(args.seeds):
            lo, hi = em.get(("raw", s)), em.get(("oracle", s))
            if lo is not None and hi is not None and hi <= lo:
                warn.append(f"{family} seed {s}: oracle {hi:.3f} does not beat raw {lo:.3f}: the benchmark does not "
                            "bound here (budget or model capacity, not the data, is the limit)")
        lines += set_table(Path(args.out), family)
        lines += cv_table(Path(args.out), family)
        lines.append("")
    if warn:
        lines += ["WARNING:"] + [f"- {w}" for w in warn] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/curate-trained")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--unique", type=int, default=3000, help="unique records per family (before the 20%% copies)")
    ap.add_argument("--families", default="digits,words")
    ap.add_argument("--test", type=int, default=300, help="fresh draws for the clean test prompts, per family and seed")
    ap.add_argument("--budget", type=int, default=12000, help="supervised tokens every trained arm sees")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--arms", default=",".join(ALL_ARMS), help="comma-separated arms (base = base + few-shot)")
    ap.add_argument("--recipe", default=str(noisy.RECIPE), help="the default recipe (the default arm's stages)")
    ap.add_argument("--consensus-recipe", default=str(noisy.CONSENSUS_RECIPE),
                    help="the recipe without a model (the consensus arm's stages and every arm's mix)")
    ap.add_argument("--cv-epochs", type=int, default=3, help="the cv arm: epochs of each fold's fine-tuning")
    ap.add_argument("--batch-tokens", type=int, default=1024)
    ap.add_argument("--k", type=int, default=3, help="shots for the few-shot arm")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--model", default=str(MODEL))
    ap.add_argument("--quick", action="store_true", help="1 family, 1 seed, 150 unique records, 600-token budget (tests)")
    ap.add_argument("--results", default=None, help="also write the table to this Markdown file")
    ap.add_argument("--resume", action="store_true", help="keep OUT/rows.jsonl's finished jobs and run only the rest")
    ap.add_argument("--reuse", action="store_true",
                    help="skip curating an arm whose pipeline file is unchanged and whose run finished (OUT/<family> may "
                         "be a link to another grid's, to share its curation across budgets)")
    ap.add_argument("--table-only", action="store_true", help="print the table of OUT/rows.jsonl and run nothing")
    ap.add_argument("--curate-only", action="store_true",
                    help="curate the cv arms of --arms only (no rendering, no training): writes OUT/cv_stats.jsonl "
                         "and prints the per-record scores' table, to judge a score before any arm trains on it")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.unique, args.families, args.budget, args.test = 1, 150, "words", 600, 30
        if args.arms == ",".join(ALL_ARMS):
            # the cv arms have their own test; the half and diagnostic arms are the same code paths
            args.arms = ",".join(a for a in ALL_ARMS if a not in CV_ARMS + DIAG_ARMS + DIAG_CV and not a.endswith(HALF))
    arms = args.arms.split(",")
    bad = sorted(set(arms) - set(ALL_ARMS))
    if bad or "consensus" not in arms:
        ap.error(f"--arms: {', '.join(bad) or 'consensus is needed'} (choose from {', '.join(ALL_ARMS)}; "
                 "consensus is needed: the random arm's size and the untrained arms' rendering)")
    t0 = time.perf_counter()
    if args.table_only:  # the table of what OUT/rows.jsonl holds (an interrupted grid), nothing run
        log = Path(args.out) / "rows.jsonl"
        rows = [json.loads(x) for x in log.read_text(encoding="utf-8").splitlines() if x.strip()]
        text = table(rows, args, float("nan"))
        print(text)
        if args.results:
            Path(args.results).write_text(text, encoding="utf-8")
        return rows
    build_d = {"recipe": args.recipe, "consensus_recipe": args.consensus_recipe, "unique": args.unique, "out": args.out, "test": args.test, "arms": arms,
               "model": args.model, "cv_epochs": args.cv_epochs, "reuse": args.reuse, "resume": args.resume,
               "curate_only": args.curate_only}
    args_d = {"model": args.model, "k": args.k, "out": args.out, "budget": args.budget, "lr": args.lr,
              "batch_tokens": args.batch_tokens}
    pools = [(f, s, "main") for s in range(args.seeds) for f in args.families.split(",")]
    if any(x in CV_ARMS or x.removesuffix(HALF) in CV_ARMS for x in arms):  # each pool's cv curation after its seed's
        pools = [p for s in range(args.seeds) for p in [x for x in pools if x[1] == s] + [
            (f, s, "cv") for f in args.families.split(",")]]
    # every finished job's rows go to OUT/rows.jsonl at once: an interrupted grid keeps what it
    # measured, and --resume skips those jobs
    Path(args.out).mkdir(parents=True, exist_ok=True)
    log = Path(args.out) / "rows.jsonl"
    rows: list[dict] = []
    if args.resume and log.is_file():
        rows = [json.loads(x) for x in log.read_text(encoding="utf-8").splitlines() if x.strip()]
    elif log.exists():
        log.unlink()
    done_jobs = {(r["family"], r["seed"], "base+few_shot" if r["arm"] in ("base", "few_shot") else r["arm"]) for r in rows}

    def todo(jobs: list[dict]) -> list[dict]:
        return [j for j in jobs if (j["family"], j["seed"], j["arm"]) not in done_jobs]

    def got(new: list[dict]) -> None:
        rows.extend(new)
        with log.open("a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in new))
        for r in new:
            print(f"[{time.perf_counter() - t0:.0f} s] {r['family']} seed {r['seed']} {r['arm']}: "
                  f"exact match {r['exact_match']:.3f} {r['by_task']}"
                  + (f" (kept set identical to {r['same_set_as']}'s: its result, not trained again)"
                     if r.get("same_set_as") else ""), flush=True)

    def pool_done(f: str, s: int, part: str) -> bool:
        cv_part = [x for x in arms if x in CV_ARMS or x.removesuffix(HALF) in CV_ARMS]
        want = cv_part if part == "cv" else [x if x != "base" else "base+few_shot" for x in arms if x not in cv_part]
        return all((f, s, x) in done_jobs for x in want)

    if args.curate_only:  # the cv arms' curation alone, seeds in parallel; nothing trained
        cv_pools = [(f, s, "cv") for s in range(args.seeds) for f in args.families.split(",")]
        with ProcessPoolExecutor(max(args.jobs, 1), mp_context=multiprocessing.get_context("spawn")) as ex:
            for fut in [ex.submit(build_one, f, s, build_d, part) for f, s, part in cv_pools]:
                fut.result()
        text = "\n".join(x for f in args.families.split(",")
                         for x in cv_table(Path(args.out), f, list(range(args.seeds))))
        print(text)
        return rows
    pools = [p for p in pools if not pool_done(*p)]  # --resume: a pool whose jobs all ran is not curated again
    build_d["done"] = sorted(done_jobs)  # --resume: build_one skips the cv arms already trained
    if args.jobs <= 1:
        for f, s, part in pools:
            for j in todo(build_one(f, s, build_d, part)):
                tw = twin_row(j, rows)
                got([tw] if tw else run_job(j, args_d))
    else:
        # spawn, not fork: a forked child of a process that ran polars/torch thread pools can hang.
        # Each pool's curation is a job too. A free worker takes the first waiting training job
        # (pools in order), else the next pool's curation: whole seeds finish first, so an
        # interrupted grid has complete (family, seed) rows rather than a bit of everything.
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as ex:
            waiting: list[dict] = []
            to_build = list(pools)
            running: dict = {}
            while waiting or to_build or running:
                while len(running) < args.jobs and (waiting or to_build):
                    if waiting:
                        j = waiting.pop(0)
                        tw = twin_row(j, rows)
                        if tw:
                            got([tw])
                            continue
                        running[ex.submit(run_job, j, args_d)] = "train"
                    else:
                        f, s_, part = to_build.pop(0)
                        running[ex.submit(build_one, f, s_, build_d, part)] = "build"
                done, _ = wait(set(running), return_when=FIRST_COMPLETED)
                for fut in done:
                    if running.pop(fut) == "build":
                        waiting += todo(fut.result())
                    else:
                        got(fut.result())
    wall = time.perf_counter() - t0
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "trained.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    text = table(rows, args, wall)
    print(text)
    if args.results:
        Path(args.results).write_text(text, encoding="utf-8")
    return rows


if __name__ == "__main__":
    main()
