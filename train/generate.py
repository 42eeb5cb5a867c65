"""Generation for eval, chat and the forgetting monitor's self-sampled reference, on top
of transformers' `generate` (KV cache, left padding, stopping on several ids).

  greedy(model, prompts, stop_ids, ...)      batched greedy continuations, cut at a stop id
  stream(model, tokenizer, prompt, ...)      one continuation, text handed out as it is made
  sample_from_bos(model, bos_id, n, ...)     n seeded samples from BOS (general text of the base)

Batched prompts are left-padded with an attention mask; transformers derives position ids
from the mask, so a padded prompt continues exactly as it would alone (a test checks it).
Trade-off: one `generate` call per batch runs until every row stopped (or the token
limit); rows that stopped early keep computing padding. Batches are sorted by prompt
length so that rows of a batch are alike."""
from __future__ import annotations

import contextlib

import numpy as np
import torch


def _gen_config(model, stop_ids: list[int], pad_id: int, max_new_tokens: int, **kw):
    from transformers import GenerationConfig

    return GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=list(stop_ids) or None, pad_token_id=pad_id,
                            use_cache=True, **kw)


@torch.no_grad()
def greedy(model, prompts: list[list[int]], stop_ids: list[int], pad_id: int, max_new_tokens: int = 64,
           batch_size: int = 16) -> list[list[int]]:
    """Greedy continuation of every prompt, without the stop id it ended on."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    gcfg = _gen_config(model, stop_ids, pad_id, max_new_tokens, do_sample=False)
    stops = set(stop_ids)
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for j, i in enumerate(idx):
            p = prompts[i]
            ids[j, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[j, width - len(p):] = 1
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gcfg)
        for j, i in enumerate(idx):
            seq = gen[j, width:].tolist()
            cut = next((k for k, t in enumerate(seq) if t in stops), len(seq))
            out[i] = seq[:cut]
    model.train(was)
    return out


@torch.no_grad()
def stream(model, tokenizer, prompt: list[int], stop_ids: list[int], on_text, max_new_tokens: int = 256,
           temperature: float = 0.0, seed: int = 0) -> list[int]:
    """Generate one continuation of `prompt`, calling `on_text(str)` with each new piece of
    decoded text as it is produced (stop ids are not shown); returns the new token ids."""
    from transformers import TextStreamer

    class _Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    device = next(model.parameters()).device
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop_ids[0] if stop_ids else 0)
    kw = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    gcfg = _gen_config(model, stop_ids, pad, max_new_tokens, **kw)
    streamer = _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gcfg,
                             streamer=streamer)
    seq = gen[0, len(prompt):].tolist()
    stops = set(stop_ids)
    cut = next((k for k, t in enumerate(seq) if t in stops), len(seq))
    return seq[:cut]


@torch.no_grad()
def sample_from_bos(model, bos_id: int, n: int, length: int, temperature: float, seed: int,
                    stop_id: int | None = None, batch_size: int = 16) -> list[np.ndarray]:
    """`n` samples of up to `length` tokens (BOS included) drawn from the model at
    `temperature`, seeded: the same (model, n, length, temperature, seed) gives the same
    tokens on the same device. The global torch RNG is left as it was. A sample is cut
    after its first `stop_id` (an EOS: what follows it is not the model's text)."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    gcfg = _gen_config(model, [], bos_id, max(1, length - 1), do_sample=True, temperature=temperature, top_k=0,
                       top_p=1.0, remove_invalid_values=True)  # a broken base fails at step 1, named
    gcfg.eos_token_id = None
    samples: list[np.ndarray] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for b in range(0, n, batch_size):
            k = min(batch_size, n - b)
            ids = torch.full((k, 1), bos_id, dtype=torch.long, device=device)
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gcfg)
            for row in gen.cpu().numpy():
                row = row[:length]
                if stop_id is not None:
                    hit = np.flatnonzero(row[1:] == stop_id)
                    if len(hit):
                        row = row[: int(hit[0]) + 2]
                samples.append(row.astype(np.int32))
    model.train(was)
    return samples


@contextlib.contextmanager
def adapter_off(model, off: bool):
    """The base model's view of a peft model (adapter disabled) when `off`, else as is."""
    if off and hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
    else:
        yield model
