#!/usr/bin/env python3
"""Training throughput, peak memory and held-out loss: curate's trainer vs TRL's SFTTrainer (+ peft),
side by side, one after the other, repeated.

Same model, same examples (the curated shards of a run), same LoRA (r, alpha, all linear
projections, no dropout), same learning rate and schedule, same tokens per optimiser step. TRL gets
its best packing setting: `packing=True, packing_strategy="bfd"` (best-fit decreasing,
padding-free with per-example position_ids, max_length = the shards' longest row), fed the shards'
examples unpacked with their labels, so both train on the same supervised tokens. An arm is a
number of rows per step (`--rows 1,4`): TRL per_device_train_batch_size = rows, accumulation 1;
ours batch_tokens = micro_batch_tokens = rows x max_length. Every arm trains on the same token
budget (`--tokens`), so more rows per step means fewer steps.

Held-out loss: after training, both models are scored by the same code (train.loop.evaluate: mean
next-token loss over the val split's supervised tokens), so "equal loss" compares like with like.

Install the peer in its own venv (never in the project's):
    python3.11 -m venv /work/venv-bench-train
    /work/venv-bench-train/bin/pip install torch==2.13.0            # CPU wheel first
    /work/venv-bench-train/bin/pip install trl "transformers==5.24.*" "peft==0.21.2" accelerate datasets \
        pyarrow numpy polars click rich safetensors tokenizers zstandard jinja2 datasketch
    /work/venv-bench-train/bin/pip install --no-deps -e .
Run (the issue #20 setting: stories260K, max_length 512, LoRA r8/alpha16, fp32, CPU):
    python -m curate run benchmarks/train_bench.toml --no-train --out runs/train_bench
    /work/venv-bench-train/bin/python benchmarks/train_bench.py --run runs/train_bench \
        --model ../shared/data/models/stories260K --r 8 --rows 1,2,4 --repeat 2 --threads 1 [--old]
    (--old adds a third trainer: ours as before the explicit attention kernel and the folded LoRA
    forward, i.e. SDPA's flash kernel per example and peft's forward, to show what those bought)
    ... --device cuda --dtype bfloat16       (the same comparison on a GPU)
Without TRL installed it runs ours alone and says so.

Each trainer runs in a fresh child process of this script (`--only ours|trl`), so that the peak
memory (VmHWM on CPU, max_memory_allocated on GPU) and the thread pool belong to one trainer
alone; the parent prints the table and the ratios, with the load average before each run.
Throughput is tokens (real, non-padding) per second of training steps: ours sums its step times
(batch building included), TRL is timed from on_train_begin to on_train_end (no eval, no saving).
Tokens per CPU-second (process time over the same span) is printed beside it: on a shared machine
whose load changes from one run to the next it is the steadier of the two; both ratios are shown.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def peak_memory_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_model(args, out: Path) -> Path:
    """The model both trainers use: --model as is, or a random Llama of the given size on
    --model's tokenizer (to compare where compute, not overhead, dominates)."""
    if not args.hidden:
        return Path(args.model).resolve()
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(args.model)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=int(args.hidden * 8 / 3) // 32 * 32,
                      num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                      num_key_value_heads=max(1, args.hidden // 128), max_position_embeddings=4096, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def rows_tokens(args) -> tuple[int, int, int]:
    """(rows per step, tokens per step, steps) of this arm: max_length from the shards."""
    from train.data import load_split, read_manifest

    split = load_split(Path(args.run), "train", read_manifest(Path(args.run)))
    max_len = int(split.row_lengths().max())
    per_step = args.arm_rows * max_len
    steps = args.max_steps or max(1, args.tokens // per_step)
    return args.arm_rows, per_step, steps


def held_out_loss(model, args, device) -> float:
    """Mean next-token loss over the val split's supervised tokens (the trainer's own eval code)."""
    from train.data import eval_batches, load_split, read_manifest
    from train.loop import Dist, evaluate

    va = load_split(Path(args.run), "val", read_manifest(Path(args.run)))
    acc = evaluate(model, [b.to(device) for b in eval_batches(va, 4096)], len(va.tasks), Dist())
    return float(acc[:, 0].sum() / acc[:, 1].sum())


def run_ours(args, model_dir: Path) -> dict:
    from train.config import parse_train_config
    from train.loop import run_training

    _, per_step, steps = rows_tokens(args)
    run = Path(tempfile.mkdtemp(prefix="bench-ours-"))
    for name in ("manifest.json", "shards"):
        os.symlink(Path(args.run).resolve() / name, run / name)
    cfg = parse_train_config({
        "base_model": str(model_dir), "r": args.r, "alpha": float(2 * args.r), "dropout": 0.0, "lr": args.lr,
        "epochs": 1, "batch_tokens": per_step, "micro_batch_tokens": per_step,
        "warmup": 0.0, "schedule": "cosine", "eval_every": 10**9, "save_every": 0, "device": args.device,
        "dtype": args.dtype, "max_steps": steps, "early_stopping": {"patience": 0}, "threads": args.threads,
        "attn_implementation": args.attn, "forgetting": {"max_tokens": 512},
        **({"modules_to_save": [] if args.modules_to_save == "none" else ["embed_tokens"]}
           if args.modules_to_save else {})}, REPO)
    t0 = time.perf_counter()
    summary = run_training(run, cfg, log=lambda s: None)
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    steps_rows = [r for r in rows if r["kind"] == "train"]
    tokens = sum(r["tokens"] for r in steps_rows)
    step_time = sum(r["tokens"] / r["tokens_per_s"] for r in steps_rows)
    final = [r for r in rows if r["kind"] == "eval"][-1]
    return {"tokens": tokens, "steps": len(steps_rows), "train_s": step_time, "wall_s": wall,
            "cpu_s": sum(r["cpu_s"] for r in steps_rows),
            "first_loss": steps_rows[0]["loss"], "last_loss": steps_rows[-1]["loss"], "val_loss": final["val_loss"],
            "note": f"batch_tokens = micro_batch_tokens = {per_step}, attention {args.attn}"
                    + (" (as before: SDPA flash kernel per example, peft's LoRA forward)" if args.only == "ours-old" else ""),
            "adapter": summary.get("adapter_dir")}


def run_trl(args, model_dir: Path) -> dict:
    import numpy as np
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from train.data import load_split, read_manifest

    split = load_split(Path(args.run), "train", read_manifest(Path(args.run)))
    ids = [split.tokens[s : s + n].tolist() for s, n in zip(split.ex_start, split.ex_len)]
    labels = [split.labels[s : s + n].tolist() for s, n in zip(split.ex_start, split.ex_len)]
    data = Dataset.from_dict({"input_ids": ids, "labels": labels})
    max_len = int(split.row_lengths().max())
    per_device, _, steps = rows_tokens(args)
    accum = 1
    dtype = torch.float32 if args.dtype in ("auto", "float32") and not args.device.startswith("cuda") else \
        (torch.bfloat16 if args.dtype in ("auto", "bfloat16") else getattr(torch, args.dtype))
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
    out = tempfile.mkdtemp(prefix="bench-trl-")
    cfg = SFTConfig(output_dir=out, max_length=max_len, packing=True, packing_strategy="bfd",
                    per_device_train_batch_size=per_device, gradient_accumulation_steps=accum, learning_rate=args.lr,
                    lr_scheduler_type="cosine", warmup_steps=0, num_train_epochs=1, max_steps=steps,
                    logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", seed=0,
                    use_cpu=not args.device.startswith("cuda"), bf16=dtype == torch.bfloat16,
                    max_grad_norm=1.0, dataloader_num_workers=0, disable_tqdm=True)
    # --modules-to-save embed: the input embeddings trained in full beside the adapter, as our
    # default does on a model this small (its tied lm_head kept tied, as ours keeps it)
    embed = {"modules_to_save": ["embed_tokens"], "ensure_weight_tying": True} if args.modules_to_save == "embed" else {}
    peft_cfg = LoraConfig(r=args.r, lora_alpha=2 * args.r, lora_dropout=0.0, target_modules="all-linear",
                          task_type="CAUSAL_LM", **embed)
    clock, losses = {}, []

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            clock["t0"], clock["c0"] = time.perf_counter(), time.process_time()

        def on_train_end(self, *a, **k):
            clock["t1"], clock["c1"] = time.perf_counter(), time.process_time()

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    t0 = time.perf_counter()
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok, peft_config=peft_cfg,
                         callbacks=[Timer()])
    collate, seen = trainer.data_collator, {"tokens": 0}

    def counting(examples):
        batch = collate(examples)
        seen["tokens"] += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        return batch

    trainer.data_collator = counting
    trainer.train()
    wall = time.perf_counter() - t0
    val = held_out_loss(trainer.model, args, torch.device(args.device))
    return {"tokens": seen["tokens"], "steps": trainer.state.global_step, "train_s": clock["t1"] - clock["t0"],
            "cpu_s": clock["c1"] - clock["c0"],
            "wall_s": wall, "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "val_loss": val, "note": f"packing=True, packing_strategy=bfd (padding-free), per_device_train_batch_size "
                                     f"{per_device}, max_length {max_len}, accumulation {accum}, sdpa"}


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    model_dir = Path(args.model_dir)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    if args.only == "ours-old":  # ours as before this round: SDPA's flash kernel per example, peft's LoRA forward
        import train.attention
        import train.model

        train.attention.MATH_MAX_HEAD_DIM = 0
        train.model.FOLD_MAX_WEIGHT = 0
    res = run_trl(args, model_dir) if args.only == "trl" else run_ours(args, model_dir)
    res["peak_mb"] = peak_memory_mb(args.device)
    print("RESULT " + json.dumps(res), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(REPO / "runs" / "sample"), help="run directory with shards (curate run)")
    ap.add_argument("--model", default=str(REPO / "sample_data" / "base_model"))
    ap.add_argument("--hidden", type=int, default=0, help="random Llama of this width on --model's tokenizer")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rows", default="1,4", help="arms: rows per optimiser step, comma-separated")
    ap.add_argument("--tokens", type=int, default=102400, help="token budget of every arm (steps = tokens / step)")
    ap.add_argument("--max-steps", type=int, default=None, help="override: this many steps in every arm")
    ap.add_argument("--repeat", type=int, default=1, help="run every arm this many times, alternating the trainers")
    ap.add_argument("--attn", default="segments", help="our attn_implementation")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--old", action="store_true",
                    help="also run ours as before the explicit attention kernel and the folded LoRA forward "
                         "(SDPA's flash kernel per example, peft's LoRA forward)")
    ap.add_argument("--modules-to-save", choices=["none", "embed"], default=None,
                    help="modules trained in full beside the adapter, the same in both trainers: none, or the "
                         "input embeddings (embed). Unset: each trainer's default (ours trains the embeddings "
                         "of a model under 50M parameters, TRL + peft the adapter only), so held-out loss then "
                         "compares different trainable sets")
    ap.add_argument("--only", choices=["ours", "ours-old", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--arm-rows", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only:
        return child(args)
    if not (Path(args.run) / "manifest.json").is_file():
        sys.exit(f"no shards at {args.run}: run `curate run sample_data/pipeline.toml --no-train` first")
    tmp = Path(tempfile.mkdtemp(prefix="bench-model-"))
    model_dir = build_model(args, tmp / "model")
    try:
        import trl  # noqa: F401

        have_trl = True
    except ImportError:
        have_trl = False
        print("TRL is not installed in this interpreter: running ours only (see the install lines at the top)")
    who_all = (["ours", "trl"] if have_trl else ["ours"]) + (["ours-old"] if args.old else [])
    arms = [int(x) for x in args.rows.split(",")]
    results: dict[tuple[int, str], list[dict]] = {}
    print(f"model {model_dir if args.hidden else args.model} (hidden {args.hidden or 'as saved'}), run {args.run}, "
          f"device {args.device}, threads {args.threads}, LoRA r{args.r}/alpha{2 * args.r}, lr {args.lr}, "
          f"token budget {args.tokens}")
    print(f"{'rows':>4} {'trainer':<10} {'rep':>3} {'load':>5} {'steps':>5} {'tokens':>8} {'train s':>8} {'tok/s':>8} "
          f"{'tok/cpu-s':>9} {'peak MB':>8} {'val loss':>8}")
    for rep in range(args.repeat):
        for rows in arms:
            for who in who_all if rep % 2 == 0 else who_all[::-1]:
                load = os.getloadavg()[0]
                cmd = [sys.executable, __file__, "--only", who, "--model-dir", str(model_dir), "--arm-rows", str(rows),
                       *sys.argv[1:]]
                proc = subprocess.run(cmd, capture_output=True, text=True,
                                      env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if proc.returncode or line is None:
                    print(proc.stdout[-3000:], proc.stderr[-3000:])
                    sys.exit(f"{who} failed")
                r = json.loads(line[7:])
                r["load"] = load
                results.setdefault((rows, who), []).append(r)
                print(f"{rows:>4} {who:<10} {rep:>3} {load:>5.1f} {r['steps']:>5} {r['tokens']:>8} {r['train_s']:>8.1f} "
                      f"{r['tokens'] / r['train_s']:>8.0f} {r['tokens'] / r['cpu_s']:>9.0f} {r['peak_mb']:>8.0f} {r['val_loss']:>8.4f}",
                      flush=True)
    for (rows, who), rs in results.items():
        if rs:
            print(f"{who} ({rows} row(s)/step): {rs[0].get('note')}")
    if not have_trl:
        return

    def rate(r: dict) -> float:
        return r["tokens"] / r["train_s"]

    def cpu_rate(r: dict) -> float:
        return r["tokens"] / r["cpu_s"]

    def median(xs: list[float]) -> float:
        xs = sorted(xs)
        return xs[len(xs) // 2] if len(xs) % 2 else 0.5 * (xs[len(xs) // 2 - 1] + xs[len(xs) // 2])

    print("ratios ours / TRL (same arm, repeat by repeat):")
    for rows in arms:
        o, t = results[(rows, "ours")], results[(rows, "trl")]
        sp = [rate(a) / rate(b) for a, b in zip(o, t)]
        cp = [cpu_rate(a) / cpu_rate(b) for a, b in zip(o, t)]
        mem = [a["peak_mb"] / b["peak_mb"] for a, b in zip(o, t)]
        loss = [a["val_loss"] / b["val_loss"] for a, b in zip(o, t)]
        print(f"  {rows} row(s)/step: tokens/s {' '.join(f'{x:.2f}x' for x in sp)} (median {median(sp):.2f}x); "
              f"tokens per CPU-second {' '.join(f'{x:.2f}x' for x in cp)} (median {median(cp):.2f}x); "
              f"peak memory {' '.join(f'{x:.2f}x' for x in mem)}; held-out loss {' '.join(f'{x:.4f}' for x in loss)}")
    if args.old:
        print("ratios ours / ours-old (this trainer against itself before the explicit attention kernel and the folded "
              "LoRA forward):")
        for rows in arms:
            o, f = results[(rows, "ours")], results[(rows, "ours-old")]
            print(f"  {rows} row(s)/step: tokens/s median {median([rate(a) / rate(b) for a, b in zip(o, f)]):.2f}x; "
                  f"tokens per CPU-second median {median([cpu_rate(a) / cpu_rate(b) for a, b in zip(o, f)]):.2f}x; "
                  f"held-out loss {' '.join(f'{x:.4f}' for x in [a['val_loss'] / b['val_loss'] for a, b in zip(o, f)])}")
    for label, fn in (("tokens/s", rate), ("tokens per CPU-second", cpu_rate)):
        best_trl = max(arms, key=lambda a: median([fn(r) for r in results[(a, "trl")]]))
        best_ours = max(arms, key=lambda a: median([fn(r) for r in results[(a, "ours")]]))
        o, t = results[(best_ours, "ours")], results[(best_trl, "trl")]
        print(f"best against best by {label}: ours at {best_ours} row(s)/step vs TRL at {best_trl}: "
              f"{median([fn(r) for r in o]) / median([fn(r) for r in t]):.2f}x, peak memory "
              f"{median([r['peak_mb'] for r in o]) / median([r['peak_mb'] for r in t]):.2f}x, held-out loss "
              f"{median([r['val_loss'] for r in o]) / median([r['val_loss'] for r in t]):.4f}"
              + ("" if best_ours == best_trl else " (different rows per step: fewer optimiser steps on the same "
                 "token budget, so not an equal-loss comparison)"))

if __name__ == "__main__":
    main()
