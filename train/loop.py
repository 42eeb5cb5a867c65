"""The training loop, in plain view (nanoGPT / torchtune style: explicit state, no callbacks).

One optimiser step:
  1. the step's micro-batches come from a seeded per-epoch plan (train/data.py), so the
     order is a function of (seed, epoch) and a resumed run replays it exactly;
  2. each micro-batch's summed token loss is divided by the number of supervised tokens in
     the WHOLE step (all micro-batches, all ranks) before backward - the loss is a mean
     over the step's tokens, not a mean of per-micro-batch means (the gradient-accumulation
     scaling fix);
  3. logits are computed only at supervised positions (`logits_to_keep` with a boolean
     mask), which saves the [tokens x vocab] projection for prompt tokens;
  4. with several processes (torchrun), the trainable gradients are summed in one flat
     all-reduce per step: data parallelism with one collective per step. Trade-off: DDP's
     overlap of communication with backward matters for full fine-tuning of big models,
     not for adapters whose gradients are a few MB.
Evaluation (val loss per task, forgetting monitor) runs every `eval_every` steps and at the
end; early stopping keeps the best weights, which are what gets exported."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from train import checkpoint as ckpt
from train.attention import passing_segments, uses_segments
from train.config import SMALL_MODEL_PARAMS, TrainConfig
from train.data import IGNORE, DataError, Split, eval_batches, load_split, make_batch, plan_epoch, read_manifest, \
    shard_hashes, tokenizer_fingerprint
from train.export import ExportInfo, base_reference, chat_template, model_card, save_adapter, save_merged, \
    write_provenance
from train.forgetting import ForgettingMonitor, reference_split
from train.paths import inside, safe_name, safe_names
from train.provenance import check_resume, run_fingerprint, start_fresh
from train.model import is_adapter, load_base, pick_device, pick_dtype, size_of, trainable, wrap


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss, ...); the message says where."""


# --- process group ----------------------------------------------------------------------


class Dist:
    """torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); a single process otherwise."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.owns_group = False
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend)
            self.owns_group = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.owns_group:
            torch.distributed.destroy_process_group()


# --- pieces of a step -------------------------------------------------------------------


def lr_lambda(cfg: TrainConfig, total: int):
    warm = int(cfg.warmup * total) if cfg.warmup < 1 else int(cfg.warmup)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if cfg.schedule == "constant":
            return 1.0
        frac = (step - warm) / max(1, total - warm)
        return max(0.0, 1.0 - frac) if cfg.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))

    return f


def param_groups(cfg: TrainConfig, params: dict[str, torch.nn.Parameter]) -> list[dict]:
    """One group at cfg.learning_rate; with `lora_plus_ratio` != 1 (LoRA+, Hayou et al. 2024)
    every lora_B tensor goes in a second group at ratio x that lr. The scheduler scales each
    group's own lr, so warmup and decay apply to both; group 0 is always the base lr (logged)."""
    if cfg.lora_plus_ratio == 1.0:
        return [{"params": list(params.values()), "lr": cfg.learning_rate}]
    b = [p for n, p in params.items() if ".lora_B." in n]
    rest = [p for n, p in params.items() if ".lora_B." not in n]
    return [{"params": rest, "lr": cfg.learning_rate}, {"params": b, "lr": cfg.learning_rate * cfg.lora_plus_ratio}]


def make_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter] | dict[str, torch.nn.Parameter]) -> torch.optim.Optimizer:
    groups = param_groups(cfg, params) if isinstance(params, dict) else [{"params": list(params), "lr": cfg.learning_rate}]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.learning_rate, momentum=cfg.betas[0], weight_decay=cfg.weight_decay)
    kind = {p.device.type for g in groups for p in g["params"]}
    # fused AdamW (one kernel over all parameters) where torch has it; foreach elsewhere
    fused = {"fused": True} if kind <= {"cpu"} or kind <= {"cuda"} else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                             **fused)


def row_targets(split: Split) -> np.ndarray:
    """Supervised next-token targets per row (what the loss is averaged over): an
    example's supervised tokens except its first token, which nothing predicts."""
    sup = (split.labels != IGNORE).astype(np.int64)
    cum = np.concatenate([[0], np.cumsum(sup)])
    s, n = split.ex_start, split.ex_len
    per_ex = cum[s + n] - cum[s + np.minimum(n, 1)]
    per = per_ex[split.row_ex]
    return np.add.reduceat(per, split.row_ptr[:-1]) if len(per) else np.zeros(0, np.int64)


def token_logits(model, b) -> torch.Tensor:
    """Logits at the batch's supervised positions only, [n, vocab] in fp32."""
    if b.segments and uses_segments(model):
        with passing_segments():
            out = model(input_ids=b.input_ids, position_ids=b.position_ids, use_cache=False, logits_to_keep=b.keep,
                        curate_segments=b.segments)
    else:
        out = model(input_ids=b.input_ids, position_ids=b.position_ids, use_cache=False, logits_to_keep=b.keep)
    return out.logits.float().reshape(-1, out.logits.shape[-1])


@torch.no_grad()
def evaluate(model, batches, n_tasks: int, dist: Dist) -> torch.Tensor:
    """[n_tasks, 2] sums of (loss, tokens) over the split, across ranks."""
    was = model.training
    model.eval()
    acc = torch.zeros(n_tasks, 2, dtype=torch.float64)
    for b in batches:
        nll = F.cross_entropy(token_logits(model, b), b.targets, reduction="none").double().cpu()
        task = b.target_task.cpu()
        acc[:, 0].index_add_(0, task, nll)
        acc[:, 1].index_add_(0, task, torch.ones_like(nll))
    model.train(was)
    return dist.sum(acc)


# --- metrics ----------------------------------------------------------------------------


class Metrics:
    """metrics.jsonl, kept in memory and rewritten atomically at evals and checkpoints
    (a crash never leaves half a line; a resume drops lines past its checkpoint)."""

    def __init__(self, path: Path, resume: bool, main: bool) -> None:
        self.path, self.main = path, main
        self.rows: list[dict] = []
        if resume and path.is_file():
            self.rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
        self.tb = None
        if main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(inside(path.parent, path.parent / "tensorboard")))
            except ImportError:
                pass

    def truncate(self, adapter: str, step: int) -> None:
        self.rows = [r for r in self.rows if not (r.get("adapter") == adapter and r["step"] > step)]

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(f"{row.get('adapter', 'default')}/{k}", v, row["step"])

    def flush(self) -> None:
        if self.main:
            from curate.contract.atomic import write_text

            write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.rows))
            if self.tb is not None:
                self.tb.flush()


# --- one adapter's training -------------------------------------------------------------


def train_unit(model, name: str, cfg: TrainConfig, tr: Split, va: Split | None, ref: Split | None, out: Path,
               metrics: Metrics, dist: Dist, device, pad_id: int, resume: bool, log, stop_after: int | None) -> dict:
    """Train the active adapter `name` (or the full model) on `tr`; return its summary."""
    params = trainable(model)
    plist = list(params.values())
    opt = make_optimizer(cfg, params)
    plans: dict[int, list] = {}

    def plan(e: int) -> list:
        if e not in plans:
            plans[e] = plan_epoch(tr, cfg.batch_tokens, cfg.micro_batch_tokens, cfg.seed, e)
        return plans[e]

    total = sum(len(plan(e)) for e in range(cfg.epochs))
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total))
    row_sup, row_len = row_targets(tr), tr.row_lengths()
    val_batches = [b.to(device) for b in eval_batches(va, cfg.micro_batch_tokens, dist.rank, dist.world)] if va else []
    monitor = ForgettingMonitor(model, ref, cfg.micro_batch_tokens, device, is_adapter(model), dist.rank, dist.world) \
        if ref is not None else None
    base_params = {k: p.detach().clone() for k, p in params.items()} if cfg.l2_to_base > 0 else None

    root = inside(out, out / "checkpoints" / safe_name(name))
    state = {"step": 0, "epoch": 0, "pos": 0, "best": None, "best_step": None, "bad_evals": 0, "tokens": 0,
             "stopped_early": False, "first_eval": None}
    last = ckpt.latest(root) if resume else None
    if last is not None:
        state = ckpt.load(last, params, opt, sched)
        metrics.truncate(name, state["step"])
        log(f"[train] {name}: resumed from {last.name} (step {state['step']})")
    elif resume:
        metrics.truncate(name, -1)

    def measure(step: int) -> dict:
        """Val loss (overall, per task) and the forgetting monitor, on the model's current weights."""
        row: dict = {"adapter": name, "step": step, "kind": "eval"}
        if val_batches or va is not None:
            acc = evaluate(model, val_batches, len(va.tasks), dist)
            row["val_loss"] = float(acc[:, 0].sum() / acc[:, 1].sum().clamp(min=1))
            row["val_loss_by_task"] = {t: float(acc[i, 0] / acc[i, 1]) for i, t in enumerate(va.tasks) if acc[i, 1] > 0}
        if monitor is not None:
            kl, nll, nll_base, n = dist.sum(monitor.measure(model)).tolist()
            row.update(kl_to_base=kl / max(n, 1), ref_loss=nll / max(n, 1), ref_loss_base=nll_base / max(n, 1))
        return row

    def run_eval(step: int) -> dict:
        row = measure(step)
        metrics.add(row)
        metrics.flush()
        return row

    def improve(row: dict) -> bool:
        """Early-stopping bookkeeping; saves the best weights; True when patience ran out."""
        if "val_loss" not in row:
            return False
        delta = cfg.early_stopping.min_delta
        task_improved = False
        if cfg.early_stopping.per_task:  # patience counts evaluations in which no task improved
            best_by = state.setdefault("best_by_task", {})
            for t, v in (row.get("val_loss_by_task") or {}).items():
                if t not in best_by or v < best_by[t] - delta:
                    best_by[t], task_improved = v, True
        if state["best"] is None or row["val_loss"] < state["best"] - delta:
            state.update(best=row["val_loss"], best_step=row["step"], bad_evals=0)
            if dist.main:
                ckpt.save_weights(root / "best.safetensors", params)
            return False
        state["bad_evals"] = 0 if task_improved else state["bad_evals"] + 1
        return 0 < cfg.early_stopping.patience <= state["bad_evals"]

    def save_checkpoint() -> None:
        metrics.flush()
        if dist.main:
            ckpt.save(root, state["step"], params, opt, sched, state)
        dist.barrier()

    if state["step"] == 0 and state["first_eval"] is None:
        first = run_eval(0)
        state["first_eval"] = first
        improve(first)
        log(f"[train] {name}: {total} steps; step 0 " + _fmt(first))

    bar = _progress(total, state["step"], dist.main, log)
    model.train()
    done = state["stopped_early"] or state["step"] >= total
    last_eval_step = state["step"] if state["step"] == 0 else None
    t_start, tok_start = time.perf_counter(), state["tokens"]
    while not done:
        steps = plan(state["epoch"])
        micro = steps[state["pos"]]
        t0, c0 = time.perf_counter(), time.process_time()
        n_sup = int(sum(row_sup[mb].sum() for mb in micro))
        n_tok = int(sum(row_len[mb].sum() for mb in micro))
        denom = max(n_sup, 1)
        nlls, kls, batch_ids = [], [], []
        for mb in micro[dist.rank :: dist.world]:
            b = make_batch(tr, mb, pad_id).to(device)
            logits = token_logits(model, b)
            nll = F.cross_entropy(logits, b.targets, reduction="sum")
            loss = nll
            if cfg.kl_to_base > 0:
                with torch.no_grad(), model.disable_adapter():
                    base = F.log_softmax(token_logits(model, b), -1)
                logp = F.log_softmax(logits, -1)
                kl = (logp.exp() * (logp - base)).sum()
                loss = loss + cfg.kl_to_base * kl
                kls.append(kl.detach())
            (loss / denom).backward()
            nlls.append(nll.detach())
            batch_ids.append(b.ids)
        stats, bad_ids = _step_stats(nlls, kls), []  # one host sync per step, not per micro-batch
        if stats[2] > 0:
            bad_ids = batch_ids[int(np.flatnonzero(~np.isfinite(torch.stack(nlls).double().cpu().numpy()))[0])]
        if dist.world > 1:
            _allreduce_grads(plist, dist)
            dist.sum(stats)
        if stats[2] > 0 or not math.isfinite(float(stats[0])):
            metrics.flush()
            where = f"batch ids {bad_ids[:8]}" if bad_ids else "on another rank"
            raise TrainingError(f"non-finite loss at step {state['step'] + 1} (epoch {state['epoch']}), {where}")
        if base_params is not None:  # l2_to_base: d/dθ w·||θ-θ0||² added straight to the gradient
            with torch.no_grad():
                for k, p in params.items():
                    p.grad.add_(p - base_params[k], alpha=2 * cfg.l2_to_base)
        gnorm = torch.nn.utils.clip_grad_norm_(plist, cfg.grad_clip) if cfg.grad_clip else None
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)

        state["step"] += 1
        state["pos"] += 1
        state["tokens"] += n_tok
        dt = time.perf_counter() - t0
        row = {"adapter": name, "step": state["step"], "epoch": state["epoch"], "kind": "train",
               "loss": float(stats[0]) / denom, "lr": lr, "tokens": n_tok, "supervised_tokens": n_sup,
               "tokens_per_s": n_tok / dt if dt > 0 else 0.0, "cpu_s": time.process_time() - c0}
        if gnorm is not None:
            row["grad_norm"] = float(gnorm)
        if cfg.kl_to_base > 0:
            row["kl_train"] = float(stats[1]) / denom
        metrics.add(row)
        bar.update(row)
        step = state["step"]
        if step % cfg.eval_every == 0 or step >= total:
            ev = run_eval(step)
            last_eval_step = step
            if improve(ev):
                state["stopped_early"] = True
                log(f"[train] {name}: early stop at step {step}: val loss has not improved for "
                    f"{state['bad_evals']} evaluations (best {state['best']:.4f} at step {state['best_step']})")
                if early_stop_warning(step, total):
                    log(f"[train] {name}: warning: {early_stop_warning(step, total)}")
            bar.write(f"[train] {name}: step {step} " + _fmt(ev))
        done = state["stopped_early"] or step >= total
        if state["pos"] >= len(steps):
            state["epoch"], state["pos"] = state["epoch"] + 1, 0
        if cfg.save_every and step % cfg.save_every == 0 and not done:
            save_checkpoint()
        if stop_after is not None and step >= stop_after and not done:
            save_checkpoint()
            bar.close()
            return {"interrupted": True, "step": step}
    bar.close()
    if last_eval_step != state["step"] and not any(r.get("kind") == "eval" and r["step"] == state["step"]
                                                   and r.get("adapter") == name for r in metrics.rows):
        improve(run_eval(state["step"]))
    wall = time.perf_counter() - t_start
    final_eval = next(r for r in reversed(metrics.rows) if r.get("kind") == "eval" and r.get("adapter") == name)
    best_path = root / "best.safetensors"
    dist.barrier()
    if va is not None and best_path.is_file() and state["best_step"] != state["step"]:
        weights = ckpt.load_weights(best_path)
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(weights[k].to(p.device, p.dtype))
        # The summary describes the exported weights: measure the restored best ones again
        # (one more val + monitor pass) rather than quoting the last eval, which saw later
        # weights. Not added to metrics.jsonl: that file is the history of the run as trained.
        final_eval = measure(state["best_step"])
    state["step_done"] = state["step"]
    save_checkpoint()
    train_rows = [r for r in metrics.rows if r.get("kind") == "train" and r.get("adapter") == name]
    first = state["first_eval"] or {}
    return {
        "adapter": name, "steps": state["step"], "total_steps": total, "epochs": cfg.epochs,
        "stopped_early": state["stopped_early"], "best_step": state["best_step"], "best_val_loss": state["best"],
        "first_val_loss": first.get("val_loss"), "final_train_loss": train_rows[-1]["loss"] if train_rows else None,
        "val_loss_by_task": final_eval.get("val_loss_by_task"),
        "kl_to_base": final_eval.get("kl_to_base"), "ref_loss_before": first.get("ref_loss"),
        "ref_loss_after": final_eval.get("ref_loss"), "tokens": state["tokens"],
        "tokens_per_s": (state["tokens"] - tok_start) / wall if wall > 0 else None,
        # the console's warnings, kept for the manifest and the report
        "warnings": [w for w in [early_stop_warning(state["step"], total) if state["stopped_early"] else None] if w],
    }


def early_stop_warning(step: int, total: int) -> str | None:
    """The warning for early stopping at `step` of `total` planned steps, or None when it
    stopped in the last three quarters. Measured: val loss can stall in the first quarter
    and end LoRA long before a task is learned (benchmarks/train_frontier.md)."""
    if total <= 0 or step >= 0.25 * total:
        return None
    return (f"early stopping ended the run after {step} of {total} steps ({step / total:.0%}); on small tasks val "
            "loss can stall before exact answers are learned (docs/training.md, Mitigations): check `curate eval`, "
            "or set [train.early_stopping] patience = 0")


def _step_stats(nlls: list, kls: list) -> torch.Tensor:
    """[summed nll, summed kl, 1.0 if any micro-batch's loss is non-finite] of this rank's
    micro-batches, float64 on the CPU, in one device-to-host copy."""
    if not nlls:
        return torch.zeros(3, dtype=torch.float64)
    n = torch.stack(nlls).double()
    k = torch.stack(kls).double().sum() if kls else n.new_zeros(())
    return torch.stack([n.sum(), k, (~torch.isfinite(n)).any().double()]).cpu()


def _allreduce_grads(plist: list, dist: Dist) -> None:
    """Sum the trainable gradients over ranks in one flat collective (a rank with no
    micro-batch this step contributes zeros)."""
    for p in plist:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = dist.sum(torch.cat([p.grad.flatten() for p in plist]))
    i = 0
    for p in plist:
        p.grad.copy_(flat[i : i + p.numel()].view_as(p))
        i += p.numel()


def _fmt(row: dict) -> str:
    parts = []
    if "val_loss" in row:
        parts.append(f"val loss {row['val_loss']:.4f}")
    if "kl_to_base" in row:
        parts.append(f"KL to base {row['kl_to_base']:.5f}, reference loss {row['ref_loss']:.4f} (base {row['ref_loss_base']:.4f})")
    return "; ".join(parts) or "(no val split)"


class _progress:
    """Progress per step: a tqdm bar (loss, tokens/s, ETA) on an interactive main process;
    otherwise (a log file, `curate run`'s console) a line every ~5% of the steps with the
    step, loss, tokens/s over the steps so far and the ETA."""

    def __init__(self, total: int, initial: int, main: bool, log) -> None:
        self.bar, self.log, self.main = None, log, main
        self.total, self.done, self.start = total, initial, initial
        self.every = max(1, total // 20)
        self.t0, self.tokens = time.perf_counter(), 0
        if main and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, row: dict) -> None:
        self.done += 1
        self.tokens += int(row.get("tokens", 0))
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.0f}", refresh=False)
            self.bar.update(1)
        elif self.main and (self.done % self.every == 0 or self.done == self.total):
            dt = time.perf_counter() - self.t0
            n = self.done - self.start
            eta = dt / n * (self.total - self.done) if n else 0.0
            self.log(f"[train] {row.get('adapter', 'default')}: step {self.done}/{self.total} loss {row['loss']:.4f}, "
                     f"{self.tokens / dt if dt > 0 else 0:,.0f} tokens/s, ETA {_duration(eta)}")

    def write(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg)
        else:
            self.log(msg)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# --- the entry point --------------------------------------------------------------------


def check_tokenizer(manifest: dict, tok, base_model: str) -> None:
    """Refuse shards made with another tokenizer than the model's, saying which."""
    info = (manifest.get("render") or {}).get("tokenizer") or {}
    want, have = info.get("fingerprint"), tokenizer_fingerprint(tok)
    if want and want != have:
        raise DataError(f"tokenizer mismatch: the shards were tokenized with {info.get('path')!r} (fingerprint "
                        f"{want[:12]}), the model {base_model!r} has another tokenizer (fingerprint {have[:12]}); "
                        f"set [render] tokenizer to the model's directory and run `curate run` again")
    if info.get("vocab_size") and int(info["vocab_size"]) != len(tok):
        raise DataError(f"tokenizer mismatch: shards have vocab_size {info['vocab_size']}, the model's tokenizer {len(tok)}")


def run_training(run_dir: Path, cfg: TrainConfig, log=print, *, resume: bool | str = False, merge: bool | None = None,
                 stop_after: int | None = None) -> dict:
    """Train on RUN/shards, write RUN/<cfg.output_dir>/, return a summary for the manifest.

    `resume=True` continues from the last checkpoint (same losses as an uninterrupted run)
    and refuses checkpoints made with another config or other shards; `resume="auto"` (what
    `curate run` passes) resumes when the checkpoints match and starts over, saying why,
    when they do not. `merge` overrides cfg.merge; `stop_after` stops as if interrupted
    after that many steps of the current adapter, leaving a checkpoint (for time-boxed jobs
    and tests). Every file written lies under `run_dir` (checked after resolving symlinks)."""
    run_dir = Path(run_dir)
    dist = Dist()
    if not dist.main:  # one voice under torchrun
        log = lambda *_a, **_k: None  # noqa: E731
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        torch.manual_seed(cfg.seed)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        device = pick_device(cfg, dist.local_rank)
        dtype = pick_dtype(cfg, device)
        manifest = read_manifest(run_dir)
        hashes = shard_hashes(run_dir, manifest)
        out = inside(run_dir, run_dir / cfg.output_dir)
        model, tok = load_base(cfg, device, dtype)
        check_tokenizer(manifest, tok, cfg.base_model)
        n_params, embed_name = size_of(model)
        asked = cfg
        cfg = cfg.resolved(n_params, embed_name)
        if asked.lr is None and cfg.lr != asked.learning_rate or asked.modules_to_save == "auto" and cfg.modules_to_save:
            log(f"[train] small model ({n_params:,} parameters < {SMALL_MODEL_PARAMS:,}): lr {cfg.lr:g}"
                + (f", {', '.join(cfg.modules_to_save)} trained beside the adapter" if cfg.modules_to_save else "")
                + " (the defaults for small models: docs/training.md, Mitigations)")
        vocab = model.get_input_embeddings().num_embeddings
        train = load_split(run_dir, "train", manifest, vocab)
        if not train.n_rows:
            raise DataError("the train split is empty")
        val = load_split(run_dir, "val", manifest, vocab) if manifest.get("shards", {}).get("val") else None
        val = val if val is not None and val.n_rows else None
        template = chat_template(manifest, tok, run_dir)
        fingerprint = run_fingerprint(cfg, hashes)
        if resume:
            why = check_resume(out, fingerprint, cfg, hashes)
            if why and resume != "auto":
                raise TrainingError(f"--resume refused: {why}; run `curate train` without --resume to start over")
            if why:
                log(f"[train] not resuming: {why}; training from step 0")
                resume = False
            elif resume == "auto":
                resume = (out / "checkpoints").is_dir()
        if dist.main:
            start_fresh(out, fingerprint, cfg, hashes, clear=not resume)
        dist.barrier()
        base_ref = base_reference(cfg.base_model)
        ref = _reference(cfg, val, tok, model, device, out, log, json.dumps(base_ref, sort_keys=True))
        out.mkdir(parents=True, exist_ok=True)
        metrics = Metrics(inside(run_dir, out / "metrics.jsonl"), resume, dist.main)
        if not resume:
            metrics.rows = []
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        merge = cfg.merge if merge is None else merge
        log(f"[train] {cfg.method} on {cfg.base_model} ({device}, {str(dtype).removeprefix('torch.')}); "
            f"{train.n_rows} train rows, {0 if val is None else val.n_rows} val rows; world size {dist.world}")

        names = safe_names(train.tasks) if cfg.adapters == "per_task" else {"default": "default"}
        if cfg.adapters == "per_task":
            width = int(max(train.row_lengths().max(), val.row_lengths().max() if val else 0))
            units = [(t, train.select_examples(train.ex_task == train.tasks.index(t), width),
                      val.select_examples(val.ex_task == val.tasks.index(t), width) if val and t in val.tasks else None)
                     for t in train.tasks]
        else:
            units = [("default", train, val)]
        eot = (manifest.get("render") or {}).get("end_of_turn") or {}
        cfg_dict = cfg.to_dict()

        def info(task: str | None, res: dict) -> ExportInfo:
            return ExportInfo(eot.get("text"), list(eot.get("ids") or []), base_ref,
                              model_card(manifest, hashes, cfg_dict, base_ref, res, task))

        summaries, paths = {}, {}
        for task, tr, va in units:
            name = names[task]  # the peft adapter name and folder name: safe, never a path from data
            torch.manual_seed(cfg.seed)
            done_marker = inside(run_dir, out / "checkpoints" / name / "done.json")
            target = inside(run_dir, out / ("model" if cfg.method == "full" else "adapter" if cfg.adapters == "single"
                                            else f"adapters/{name}"))
            if resume and done_marker.is_file() and target.is_dir():
                summaries[task] = json.loads(done_marker.read_text())
                paths[task] = target
                model = _reload_unit(model, cfg, name, target)
                continue
            model = wrap(model, cfg, name)
            res = train_unit(model, name, cfg, tr, va, ref, out, metrics, dist, device, pad_id, resume, log, stop_after)
            if res.get("interrupted"):
                metrics.flush()
                return {"interrupted": True, "step": res["step"], "adapter": name, "output_dir": str(out)}
            if dist.main:
                save_adapter(model, tok, template, target, None if cfg.adapters == "single" or cfg.method == "full" else name,
                             info=info(task if cfg.adapters == "per_task" else None, res))
                from curate.contract.atomic import write_json

                write_json(done_marker, {**res, "fingerprint": fingerprint})
            summaries[task], paths[task] = res, target
            metrics.flush()
        dist.barrier()

        merged_path = None
        if merge and dist.main and cfg.adapters == "single" and cfg.method != "full":
            merged_path = save_merged(model, tok, template, inside(run_dir, out / "merged"), info=info(None, summaries["default"]))
        summary = {
            "method": cfg.method, "base_model": cfg.base_model, "device": str(device), "dtype": str(dtype),
            "world_size": dist.world, "metrics": str(out / "metrics.jsonl"), "merged": str(merged_path) if merged_path else None,
            "fingerprint": fingerprint, "forgetting_reference": cfg.forgetting.reference,
            "lr": cfg.learning_rate, "modules_to_save": list(cfg.modules_to_save), "base_parameters": n_params,
        }
        if cfg.adapters == "single":
            summary.update(summaries["default"])
            summary["adapter_dir"] = str(paths["default"])
        else:
            summary["adapters"] = {t: {**s, "path": str(paths[t]), "adapter_name": names[t]} for t, s in summaries.items()}
            summary["adapter_names"] = names
            summary["adapter_dir"] = str(out / "adapters")
        if dist.main:
            summary["provenance"] = str(write_provenance(out, run_dir, hashes, cfg_dict,
                                                         {"summary": summary, "base_model_ref": base_ref}))
        return summary
    finally:
        dist.close()


def _reference(cfg: TrainConfig, val, tok, model, device, out: Path, log, base_key: str):
    """The forgetting monitor's reference set (see train/forgetting.py)."""
    f = cfg.forgetting
    if f.reference == "self_samples":
        from train.forgetting import self_sample_split

        ref = self_sample_split(model, tok, base_key, f.samples, f.max_tokens, f.seq_len, f.temperature, f.seed,
                                device, inside(out, out / "reference"))
        if ref is not None:
            log(f"[train] forgetting reference: {len(ref.ex_len)} samples the base model wrote ({len(ref.tokens)} tokens)")
        return ref
    return reference_split(f.reference, val, tok, f.max_tokens, f.seq_len)


def _reload_unit(model, cfg: TrainConfig, name: str, path: Path):
    """On resume, bring an already-finished per-task adapter back in (so later ones sit beside it)."""
    import peft

    if isinstance(model, peft.PeftModel):
        model.load_adapter(str(path), adapter_name=name)
        return model
    return peft.PeftModel.from_pretrained(model, str(path), adapter_name=name, is_trainable=False)
