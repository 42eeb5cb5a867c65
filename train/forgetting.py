"""The forgetting monitor: how far the adapted model has moved from its base on text it
was not trained on. Two numbers, both per reference token:

  kl_to_base   KL(base || adapted) of the next-token distributions (0 at step 0, grows as
               the model drifts; the measure used by work on fine-tuning-induced forgetting)
  ref_loss     the adapted model's loss on the reference text, beside `ref_loss_base`

The base distribution comes from the same model with its adapter switched off (peft's
`disable_adapter()`), so no second copy of the weights is held. For full fine-tuning there
is no adapter to switch off: the base log-probabilities are computed once before training
and kept (max_tokens x vocab floats, on CPU) - the trade-off for not holding two models."""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from train.data import IGNORE, Split, eval_batches


def reference_split(reference: str, val: Split | None, tokenizer, max_tokens: int, seq_len: int) -> Split | None:
    """The reference set as a Split whose every next token is a target.

    "val_prompts": each val example's tokens before its first supervised token (the prompt
    as rendered by the chat template). A path: UTF-8 text, blank-line-separated documents,
    each tokenized with BOS, joined and cut into windows of `seq_len` tokens."""
    chunks: list[np.ndarray] = []
    if reference == "val_prompts":
        if val is None or not len(val.ex_len):
            return None
        sup = val.labels != IGNORE
        for s, n in zip(val.ex_start, val.ex_len):
            first = np.flatnonzero(sup[s : s + n])
            cut = int(first[0]) if len(first) else int(n)
            if cut >= 2:
                chunks.append(val.tokens[s : s + min(cut, seq_len)])
            if sum(map(len, chunks)) >= max_tokens:
                break
    else:
        text = Path(reference).read_text(encoding="utf-8")
        docs = [d.strip() for d in text.split("\n\n") if d.strip()]
        ids = tokenizer(docs, add_special_tokens=False).input_ids
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        stream = np.asarray([t for x in ids for t in (*bos, *x)], dtype=np.int32)[:max_tokens]
        chunks = [stream[i : i + seq_len] for i in range(0, len(stream), seq_len) if len(stream[i : i + seq_len]) >= 2]
    return _as_split(chunks)


def _as_split(chunks: list[np.ndarray]) -> Split | None:
    """Token windows (at least 2 tokens each) as a Split whose every next token is a target."""
    chunks = [c for c in chunks if len(c) >= 2]
    if not chunks:
        return None
    tokens = np.concatenate(chunks).astype(np.int32)
    lens = np.asarray([len(c) for c in chunks], np.int64)
    start = np.cumsum(lens) - lens
    n = len(chunks)
    return Split(tokens, tokens.copy(), start, lens, np.zeros(n, np.int32), [f"ref{i}" for i in range(n)],
                 ["reference"], np.arange(n + 1, dtype=np.int64), np.arange(n, dtype=np.int64), False)


def self_sample_split(model, tokenizer, base_key: str, samples: int, max_tokens: int, seq_len: int,
                      temperature: float, seed: int, device, cache_dir: Path) -> Split | None:
    """The default reference: `samples` texts the base model writes from BOS (each at most
    `seq_len` tokens, all together at most about `max_tokens`), at `temperature`, seeded.
    Generated once and cached in `cache_dir` (an .npz of token ids, keyed by the base
    model's files and the sampling settings), so a resume or a rerun measures forgetting on
    the very same text. Trade-off: the base's own samples are what it knew in the sense
    of what it would say; they are not a curated general corpus (pass a text file for that)."""
    import hashlib

    from train.generate import sample_from_bos

    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if bos is None:
        return None
    length = max(2, min(seq_len, -(-max_tokens // samples)))
    key = hashlib.sha256(f"{base_key}|{samples}|{length}|{temperature}|{seed}|{bos}".encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"self_samples-{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            tokens, lens = z["tokens"], z["lens"]
        chunks = np.split(tokens, np.cumsum(lens)[:-1]) if len(lens) else []
    else:
        chunks = sample_from_bos(model, int(bos), samples, length, temperature, seed, stop_id=tokenizer.eos_token_id)
        from curate.contract.atomic import atomic_path

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, tokens=np.concatenate(chunks).astype(np.int32) if chunks else np.zeros(0, np.int32),
                         lens=np.asarray([len(c) for c in chunks], np.int64))
    return _as_split(list(chunks))


def _logits(model, batch) -> torch.Tensor:
    out = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False, logits_to_keep=batch.keep)
    return out.logits.float().reshape(-1, out.logits.shape[-1])


class ForgettingMonitor:
    def __init__(self, model, ref: Split, micro_batch_tokens: int, device, adapter: bool, rank: int = 0, world: int = 1):
        self.batches = [b.to(device) for b in eval_batches(ref, micro_batch_tokens, rank, world)]
        self.adapter = adapter
        self.n_tokens = int(sum(len(b.targets) for b in self.batches))
        self.base_cache: list[torch.Tensor] | None = None
        if not adapter:  # full fine-tuning: remember the base before any step
            with torch.no_grad():
                self.base_cache = [F.log_softmax(_logits(model, b), -1).cpu() for b in self.batches]

    def _base_logp(self, model, i: int, batch) -> torch.Tensor:
        if self.base_cache is not None:
            return self.base_cache[i].to(batch.input_ids.device)
        with model.disable_adapter():
            return F.log_softmax(_logits(model, batch), -1)

    @torch.no_grad()
    def measure(self, model) -> torch.Tensor:
        """Sums over this rank's reference tokens: [kl, nll_adapted, nll_base, n]
        (all-reduce them across ranks, then divide by n)."""
        was_training = model.training
        model.eval()
        acc = torch.zeros(4, dtype=torch.float64)
        for i, b in enumerate(self.batches):
            logp = F.log_softmax(_logits(model, b), -1)
            base = self._base_logp(model, i, b)
            kl = (base.exp() * (base - logp)).sum(-1)
            acc += torch.tensor([kl.sum().item(), -logp.gather(1, b.targets[:, None]).sum().item(),
                                 -base.gather(1, b.targets[:, None]).sum().item(), len(b.targets)], dtype=torch.float64)
        model.train(was_training)
        return acc


@contextlib.contextmanager
def base_model(model):
    """The base model's view of a peft model (adapter off), for the kl_to_base regulariser."""
    with model.disable_adapter():
        yield model
