"""Adam betas and warmup of the built-in trainer, side by side on one curated run.

Issue 17 reported that the default betas (0.9, 0.999) reached exact match 0.153 where
(0.9, 0.95) with 5% warmup reached 0.495 on a noisy multi-task pool. This script trains
the same [train] config of a finished run (its shards, its base model) with each arm and
reports, per arm and seed: best val loss, answer loss and exact match of the tuned model
on the val split (train/eval.py: greedy, stop at end-of-turn), and KL to base on the
forgetting reference. No arm reads anything but the train split while training; the
val split is what early stopping already sees. Prints the ratio of answer loss
(0.95 arm / 0.999 arm).

    python benchmarks/train_betas.py RUN_DIR [--seeds 0,1] [--threads 1]

RUN_DIR: a `curate run` output with shards and a [train] table in its manifest
(e.g. `curate run sample_data/pipeline.toml --no-train --out /tmp/s`)."""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

ARMS = {
    "betas (0.9, 0.999), warmup 3% (old default)": {"betas": [0.9, 0.999], "warmup": 0.03},
    "betas (0.9, 0.95), warmup 5%": {"betas": [0.9, 0.95], "warmup": 0.05},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--arm", type=int, default=None, help="run only this arm (0-based index)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from train import parse_train_config, run_training
    from train.data import load_split, read_manifest
    from train.eval import evaluate, items_from_split
    from train.load import load_trained

    src = Path(args.run_dir)
    manifest = read_manifest(src)
    table = dict((manifest.get("config") or {}).get("train") or {})
    base_dir = Path(manifest["pipeline"]).parent
    rows = []
    for j, (arm, over) in enumerate(ARMS.items()):
        if args.arm is not None and j != args.arm:
            continue
        for seed in [int(s) for s in args.seeds.split(",")]:
            work = Path(tempfile.mkdtemp(prefix="betas-"))
            shutil.copytree(src / "shards", work / "shards")
            shutil.copy(src / "manifest.json", work / "manifest.json")
            cfg = parse_train_config({**table, **over, "seed": seed, "save_every": 0,
                                      **({"epochs": args.epochs} if args.epochs else {})}, base_dir)
            t0 = time.perf_counter()
            s = run_training(work, cfg, log=lambda *a: None)
            wall = time.perf_counter() - t0
            trained = load_trained(work)
            items = items_from_split(load_split(work, "val", read_manifest(work)))
            ev = evaluate(trained.model, items, trained.tokenizer, trained.stop_ids, {}, arms=("tuned",),
                          max_new_tokens=48)
            o = ev["overall"]["tuned"]
            rows.append({"arm": arm, "seed": seed, "best_val_loss": s["best_val_loss"], "answer_loss": o["answer_loss"],
                         "exact_match": o["exact_match"], "kl_to_base": s["kl_to_base"], "steps": s["steps"], "wall_s": wall})
            print(json.dumps(rows[-1]), flush=True)
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'arm':<46}{'seed':>5}{'best val':>10}{'ans loss':>10}{'EM':>7}{'KL base':>9}{'steps':>6}")
    for r in rows:
        print(f"{r['arm']:<46}{r['seed']:>5}{r['best_val_loss']:>10.4f}{r['answer_loss']:>10.4f}{r['exact_match']:>7.3f}"
              f"{r['kl_to_base']:>9.4f}{r['steps']:>6}")
    mean = {a: sum(r["answer_loss"] for r in rows if r["arm"] == a) / n for a in ARMS
            if (n := sum(r["arm"] == a for r in rows))}
    if len(mean) == 2:
        a, b = list(ARMS)
        print(f"\nanswer loss ratio ({b}) / ({a}): {mean[b] / mean[a]:.3f}")


if __name__ == "__main__":
    main()
