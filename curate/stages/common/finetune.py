"""A small supervised fine-tuning loop for scorers that need a model trained on the pool
itself (the cross-validated loss scorer): answer tokens only (the prompt is context),
full fine-tuning or LoRA, seeded, CPU or GPU. Curation never imports train/ (the trainer
meets curation only through the shard contract); this loop is deliberately minimal: no
packing, no schedules beyond linear warm-down, no checkpoints, no early stopping.

Sequences are built exactly as `curate.stages.common.lm.score` builds them
(`build_sequences`: prompt + answer tokenized as one text, EOS scored), so the loss a
model is trained on is the loss it is later scored by.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from curate.stages.common.lm import build_sequences, length_buckets, pad_id


def add_lora(model, r: int = 16, alpha: int | None = None):
    """`model` with LoRA adapters on every linear layer (peft), only those trainable."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=alpha or 2 * r, lora_dropout=0.0, target_modules="all-linear", bias="none")
    return get_peft_model(model, cfg)


def fine_tune(model, tok, prompts: list[str], answers: list[str], *, epochs: int = 1, lr: float = 1e-3,
              batch_size: int = 16, max_batch_tokens: int = 8192, max_length: int = 512, seed: int = 0,
              score_eos: bool = True, log=None):
    """Train `model` in place on the answers given the prompts; returns the mean training
    loss of each epoch. Batches are length-bucketed (as scoring is) and their order is
    shuffled per epoch with `seed`."""
    seqs, starts, _, _ = build_sequences(tok, prompts, answers, max_length, score_eos)
    keep = [i for i, (s, st) in enumerate(zip(seqs, starts)) if len(s) - st > 0 and len(s) > 1]
    if not keep:
        return []
    seqs = [seqs[i] for i in keep]
    starts = [max(starts[i], 1) for i in keep]
    batches = length_buckets([len(s) for s in seqs], batch_size, max_batch_tokens)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    total = max(epochs * len(batches), 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1.0 - step / total))
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    pad = pad_id(tok)
    model.train()
    history = []
    for epoch in range(epochs):
        losses = []
        for b in rng.permutation(len(batches)):
            batch = batches[b]
            width = max(len(seqs[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, i in enumerate(batch):
                s = torch.tensor(seqs[i], dtype=torch.long)
                ids[r, : len(s)] = s
                mask[r, : len(s)] = 1
                labels[r, starts[i]: len(s)] = s[starts[i]:]
            ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        history.append(float(np.mean(losses)) if losses else float("nan"))
        if log is not None:
            log(f"  epoch {epoch + 1}/{epochs}: train loss {history[-1]:.4f}")
    model.eval()
    return history
