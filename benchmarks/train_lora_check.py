"""Is the built-in trainer's LoRA the LoRA a plain peft + torch AdamW loop trains? (issue 17)

The frontier (benchmarks/train_frontier.md) found that the default LoRA learns no exact
answer where full fine-tuning does. Before blaming the defaults this rules out a defect in
the trainer, on a curated run (the frontier's own `capital_shift` run by default):

  1. loss per step: `train.run_training` (folded small-LoRA forward, packed segment
     attention, fused AdamW, the trainer's schedule) against a reference loop written here
     with nothing of the trainer's model code: transformers' own "sdpa" attention (the
     block-diagonal mask built from the packed position ids), peft's unfolded LoRA forward,
     `torch.optim.AdamW` (not fused), its own warmup + cosine lr, loss = summed token NLL /
     supervised tokens of the step, grad clip 1.0. Same data order (train.data.plan_epoch:
     the data is not what is under test), same seed, hence the same LoRA init. Reported:
     max |loss difference| over the steps and max |weight difference| at the end.
  2. gradients of every lora_A / lora_B on one batch with B != 0: folded + segment attention
     against peft's unfolded forward + dense sdpa (relative error of each tensor).
  3. what is trained: LoRA scaling (alpha / r, or alpha / sqrt(r) with rsLoRA), B = 0 at
     init, dropout, which modules "all-linear" targets on this model, whether input
     embeddings and lm_head are tied (and untouched), and that every LoRA tensor is in the
     optimiser with the scheduled lr.

    python benchmarks/train_lora_check.py [--run RUN_DIR] [--steps 40] [--lrs 2e-4,2e-3]

Check 1 runs at each lr with the adapter alone and with the embeddings trained beside it
(modules_to_save = ["embed_tokens"], the small-model default since issue 17).

RUN_DIR defaults to a fresh capital_shift curation (benchmarks/train_frontier.py's set, 4000
records). tests/test_train_reference.py runs `reference_losses` against the trainer on a tiny
model (the test-sized version of check 1)."""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))


def reference_losses(run_dir: Path, cfg, steps: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    """The plain loop: peft LoRA on the base model with transformers' "sdpa" attention,
    torch AdamW, warmup + cosine written out here. Per step: the loss (summed NLL over the
    step's supervised next tokens / their number), and the LoRA weights at the end (peft's
    parameter names). Uses cfg's r, alpha, dropout, target_modules, use_rslora, lr, betas,
    weight_decay, warmup, grad_clip, batch_tokens, micro_batch_tokens, seed, and modules_to_save
    when it is a list (peft's modules_to_save, tied head kept tied); cfg.lr must be set."""
    import peft
    from transformers import AutoModelForCausalLM

    from train.data import load_split, make_batch, plan_epoch, read_manifest

    man = read_manifest(run_dir)
    split = load_split(run_dir, "train", man)
    model = AutoModelForCausalLM.from_pretrained(cfg.base_model, dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    torch.manual_seed(cfg.seed)
    mts = list(cfg.modules_to_save) if isinstance(cfg.modules_to_save, list) else []
    extra = {"modules_to_save": mts, "ensure_weight_tying": True} if mts else {}
    model = peft.get_peft_model(model, peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                                       target_modules=cfg.target_modules, use_rslora=cfg.use_rslora,
                                                       bias="none", task_type="CAUSAL_LM", **extra))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                            foreach=False)
    warm = int(cfg.warmup * steps) if cfg.warmup < 1 else int(cfg.warmup)

    def lr_at(step: int) -> float:  # the documented schedule: linear warmup, then cosine to 0
        if step < warm:
            return cfg.learning_rate * (step + 1) / (warm + 1)
        return cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, steps - warm))))

    pad = 0
    plan, epoch, out = [], 0, []
    model.train()
    for step in range(steps):
        if not plan:
            plan = list(plan_epoch(split, cfg.batch_tokens, cfg.micro_batch_tokens, cfg.seed, epoch))
            epoch += 1
        micro = plan.pop(0)
        batches = [make_batch(split, mb, pad) for mb in micro]
        n_sup = sum(int(b.keep.sum()) for b in batches)
        total = 0.0
        for b in batches:
            logits = model(input_ids=b.input_ids, position_ids=b.position_ids, use_cache=False).logits.float()
            nll = F.cross_entropy(logits[b.keep], b.targets, reduction="sum")
            (nll / n_sup).backward()
            total += nll.item()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append(total / n_sup)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return out, weights


def trainer_losses(run_dir: Path, cfg) -> tuple[list[float], dict[str, torch.Tensor], dict]:
    """train.run_training on a private copy of the run: per-step losses from metrics.jsonl,
    the exported adapter's weights, and the summary."""
    from safetensors.torch import load_file

    from train import run_training

    work = Path(tempfile.mkdtemp(prefix="lora-check-"))
    try:
        shutil.copytree(run_dir / "shards", work / "shards")
        shutil.copy(run_dir / "manifest.json", work / "manifest.json")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            summary = run_training(work, cfg, log=lambda *_a, **_k: None)
        rows = [json.loads(x) for x in (work / cfg.output_dir / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in rows if r["kind"] == "train"]
        lrs = [r["lr"] for r in rows if r["kind"] == "train"]
        w = load_file(str(work / cfg.output_dir / "adapter" / "adapter_model.safetensors"))
        return losses, w, {**summary, "lrs": lrs}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _peft_key(name: str) -> str:
    """peft parameter name -> the key save_pretrained writes (adapter name dropped; a
    modules_to_save copy is saved under its module's own name)."""
    return name.replace(".modules_to_save.default.weight", ".weight").replace(".default.weight", ".weight")


def compare_weights(ref: dict, saved: dict) -> float:
    """Max |difference| over every tensor the trainer exported; each must be in the
    reference's trained set, and every LoRA tensor of the reference must be exported."""
    keys = {_peft_key(n): t for n, t in ref.items()}
    emb = [k for k in keys if k.endswith("embed_tokens.weight")]
    for k in saved:  # a tied head is saved beside its embedding; named_parameters lists the tensor once
        if k not in keys and k.endswith("lm_head.weight") and emb:
            keys[k] = keys[emb[0]]
    missing = sorted(k for k in saved if k not in keys) + sorted(k for k in keys if "lora_" in k and k not in saved)
    assert not missing, missing[:4]
    return max(float((keys[k] - saved[k]).abs().max()) for k in saved)


def gradient_check(run_dir: Path, cfg) -> dict:
    """Relative error of every LoRA gradient, trainer path (folded + segments) vs peft's
    unfolded forward + dense sdpa, on the first step's first micro-batch with B ~ N(0, 0.05)."""
    import train.model as tm
    from train.data import load_split, make_batch, plan_epoch, read_manifest
    from train.loop import token_logits

    split = load_split(run_dir, "train", read_manifest(run_dir))
    mb = plan_epoch(split, cfg.batch_tokens, cfg.micro_batch_tokens, cfg.seed, 0)[0][0]
    b = make_batch(split, mb, 0)
    grads = {}
    for arm, attn, fold in (("trainer", "segments", tm.FOLD_MAX_WEIGHT), ("reference", "sdpa", 0)):
        c = type(cfg)(**{**cfg.to_dict(), "attn_implementation": attn})
        c.early_stopping, c.forgetting = cfg.early_stopping, cfg.forgetting
        old = tm.FOLD_MAX_WEIGHT
        tm.FOLD_MAX_WEIGHT = fold
        try:
            torch.manual_seed(0)
            model, _ = tm.load_base(c, torch.device("cpu"), torch.float32)
            model = tm.wrap(model, c)
        finally:
            tm.FOLD_MAX_WEIGHT = old
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(n)))
        logits = token_logits(model, b)
        F.cross_entropy(logits, b.targets).backward()
        grads[arm] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    rel = {n: float((g - grads["reference"][n]).norm() / grads["reference"][n].norm().clamp(min=1e-30))
           for n, g in grads["trainer"].items()}
    worst_a = max(v for n, v in rel.items() if "lora_A" in n)
    worst_b = max(v for n, v in rel.items() if "lora_B" in n)
    return {"tensors": len(rel), "max_rel_err_A": worst_a, "max_rel_err_B": worst_b}


def what_trains(cfg) -> dict:
    """Scaling, init, dropout, targets, tying, optimiser membership and lr of the trainer's LoRA."""
    from peft.tuners.lora import layer as lora_layer

    from train.loop import lr_lambda, make_optimizer
    from train.model import load_base, trainable, wrap

    torch.manual_seed(cfg.seed)
    model, _ = load_base(cfg, torch.device("cpu"), torch.float32)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = emb.weight.data_ptr() == head.weight.data_ptr()
    model = wrap(model, cfg)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, lora_layer.Linear)}
    scal = sorted({m.scaling["default"] for m in layers.values()})
    b_zero = all(float(m.lora_B["default"].weight.abs().max()) == 0 for m in layers.values())
    drop = sorted({type(m.lora_dropout["default"]).__name__ for m in layers.values()})
    targets = sorted({n.rsplit(".", 1)[-1] for n in layers})
    params = trainable(model)
    opt = make_optimizer(cfg, list(params.values()))
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, 100))
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expect = [cfg.learning_rate * lr_lambda(cfg, 100)(i) for i in range(5)]
    return {"tied_embeddings": tied, "lora_layers": len(layers), "targets": targets, "scaling": scal,
            "expected_scaling": cfg.alpha / (math.sqrt(cfg.r) if cfg.use_rslora else cfg.r), "B_zero_at_init": b_zero,
            "dropout": drop, "trainable_tensors": len(params),
            "trainable_not_lora": [n for n in params if "lora_" not in n],
            "all_in_optimizer": all(id(p) in in_opt for p in params.values()),
            "lr_first_steps": lrs, "lr_expected": expect,
            "embeddings_trainable": emb.weight.requires_grad, "lm_head_trainable": head.weight.requires_grad}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=None, help="curated run (default: a fresh capital_shift curation)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lrs", default="2e-4,2e-3", help="comma-separated learning rates to compare at")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    sys.path.insert(0, str(HERE))
    import train_frontier as tf

    from train import parse_train_config

    run = a.run
    tmp = None
    if run is None:
        tmp = Path(tempfile.mkdtemp(prefix="lora-check-run-"))
        rows, _ = tf.task_data(4000, 10)
        src = {"name": "tasks", "path": str(tf.write_jsonl(tmp / "tasks.jsonl", rows)), "format": "alpaca",
               "task_field": "task"}
        tf.curate_run(tf.write_pipeline(tmp / "p.toml", tmp / "run", [src], None, tf.SHARED_MODEL))
        run = tmp / "run"
    base = {"base_model": str(tf.SHARED_MODEL), "batch_tokens": 512, "micro_batch_tokens": 512, "eval_every": 10 ** 6,
            "save_every": 0, "threads": a.threads, "max_steps": a.steps, "early_stopping": {"patience": 0},
            "forgetting": {"reference": "val_prompts"}}
    report = {}
    cfg0 = parse_train_config({**base, "modules_to_save": []}, REPO)
    report["what_trains"] = what_trains(cfg0)
    report["gradients"] = gradient_check(run, cfg0)
    for lr, mts in [(float(x), m) for x in a.lrs.split(",") for m in ([], ["embed_tokens"])]:
        cfg = parse_train_config({**base, "lr": lr, "modules_to_save": mts}, REPO)
        ref, ref_w = reference_losses(run, cfg, a.steps)
        ours, our_w, summ = trainer_losses(run, cfg)
        d = [abs(x - y) for x, y in zip(ref, ours)]
        report[f"lr {lr:g}, modules_to_save {mts}"] = {"steps": len(ours), "loss_first": [round(x, 4) for x in ours[:3]],
                                "loss_last_trainer": ours[-1], "loss_last_reference": ref[-1],
                                "max_abs_loss_diff": max(d), "max_rel_loss_diff": max(x / y for x, y in zip(d, ref)),
                                "max_abs_weight_diff": compare_weights(ref_w, our_w)}
    print(json.dumps(report, indent=2))
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
