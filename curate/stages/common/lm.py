"""Scores from a local causal language model: the answer's loss given the prompt, the
answer's loss alone, their instruction-following difficulty, and mean-hidden-state
embeddings. The only module of curate/ that imports torch.

  loss_cond    mean cross-entropy of the answer tokens (+ EOS) given the prompt, prompt
               and answer tokenized together as one text
  loss_answer  mean cross-entropy of the answer tokenized alone (+ EOS) after only BOS
  ifd          exp(loss_cond) / exp(loss_answer): conditional over direct perplexity, as
               Li et al. 2023 ("From Quantity to Quality", Cherry LLM) compute it. Near or
               above 1: the prompt does not help predict the answer (often a mismatched
               pair); low: the answer follows from the prompt. Both losses are kept as
               columns, so one may select on either.

Both losses cover the same target, the answer text and the end-of-sequence token (each
token predicted from the one before), so their ratio compares like with like; the first
piece may differ (joint vs. alone tokenization, see `build_sequences`). With a tokenizer
that has no BOS token the first answer token cannot be predicted alone; it is then left
out of both losses.

Batching is length-bucketed: sequences are sorted by length and cut into batches of at
most `batch_size` rows and `max_batch_tokens` padded tokens, so little compute goes to
padding and memory stays bounded (logits are batch x length x vocabulary floats).
Too-long examples are cut to `max_length`: the answer keeps at least half the budget, the
prompt is cut from the left (its end, next to the answer, matters most).

Models load from local directories only, from safetensors weights only
(`use_safetensors=True`; no pickle), with `trust_remote_code` off unless configured. An
`adapter` is a local PEFT adapter directory loaded on top (e.g. a LoRA trained on a
trusted seed set: Cherry LLM's "pre-experienced" model).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_causal_lm(model_dir: str | Path, adapter: str | Path | None = None, device: str = "cpu",
                   dtype: str = "float32", trust_remote_code: bool = False, threads: int | None = None):
    """`threads` sets torch's CPU threads (None: torch's default, every core); on a busy
    machine one thread is often several times faster than two for small models."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads:
        torch.set_num_threads(int(threads))

    tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=DTYPES[dtype], use_safetensors=True,
                                                 trust_remote_code=trust_remote_code)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    model.to(resolve_device(device)).eval()
    return model, tok


def length_buckets(lengths: list[int], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches, cur = [], []
    for i in order:
        width = max(lengths[i], max((lengths[j] for j in cur), default=0))
        if cur and (len(cur) >= batch_size or width * (len(cur) + 1) > max_batch_tokens):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def sequence_losses(model, seqs: list[list[int]], starts: list[int], pad_id: int, *, batch_size: int = 16,
                    max_batch_tokens: int = 8192, want_embeddings: bool = False):
    """Mean next-token loss over positions `starts[i]..len-1` of each sequence (the tokens
    predicted), and optionally the mean last hidden state over the whole sequence."""
    r = sequence_stats(model, seqs, starts, pad_id, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                       want_embeddings=want_embeddings)
    return r["loss"], r["count"], r.get("embedding")


@torch.inference_mode()
def sequence_stats(model, seqs: list[list[int]], starts: list[int], pad_id: int, *, batch_size: int = 16,
                   max_batch_tokens: int = 8192, want_embeddings: bool = False, want_agreement: bool = False) -> dict:
    """`sequence_losses` as a dict (`loss`, `count`, `embedding` with `want_embeddings`),
    and with `want_agreement`, from the same teacher-forced pass:
      `agree`      1.0 where EVERY predicted token (positions starts[i]..len-1, the answer
                   and its EOS) is the model's top-1 prediction given the true prefix, i.e.
                   greedy decoding from the prompt would reproduce the answer exactly; 0.0
                   where one is not; NaN where nothing is predicted
      `token_acc`  the share of predicted tokens that are top-1 (NaN where none)
      `margin`     the worst predicted token's margin: min over the predicted tokens of
                   log p(given) - max over every other token of log p (AUM, Pleiss et al.
                   2020, per token). Above 0: every token is the model's strict top-1;
                   far below 0: somewhere the model is confident of another token than
                   the record's (a dropped letter, a changed case); NaN where none
      `regret`     the mean over the predicted tokens of max log p - log p(given), >= 0:
                   0 where every token is (one of) the top-1, else how much likelier the
                   model's own choices were, on average (NaN where none)
    A tie for the top logit counts as top-1 only for the lowest token id (torch's argmax),
    as greedy decoding would pick it; a tied given token has margin 0 and regret 0.
    No extra forward pass: one top-2 over the logits (log-softmax's normaliser cancels in
    both differences, so they are logit differences, in nats). Trade-off of the two
    summaries: the margin sees only the worst token (the evidence of a one-letter error is
    one token), so one token the model is merely unsure of can sink a right record; the
    regret averages, so it dilutes a single confident disagreement over a long answer."""
    n = len(seqs)
    losses = np.full(n, np.nan, dtype=np.float64)
    counts = np.zeros(n, dtype=np.int64)
    agree = np.full(n, np.nan, dtype=np.float64) if want_agreement else None
    token_acc = np.full(n, np.nan, dtype=np.float64) if want_agreement else None
    margin = np.full(n, np.nan, dtype=np.float64) if want_agreement else None
    regret = np.full(n, np.nan, dtype=np.float64) if want_agreement else None
    embeds = None
    device = next(model.parameters()).device
    for batch in length_buckets([len(s) for s in seqs], batch_size, max_batch_tokens):
        width = max(len(seqs[i]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, i in enumerate(batch):
            ids[r, : len(seqs[i])] = torch.tensor(seqs[i], dtype=torch.long)
            mask[r, : len(seqs[i])] = 1
        ids, mask = ids.to(device), mask.to(device)
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=want_embeddings)
        logits = out.logits[:, :-1].float()
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
        nll = nll.view(len(batch), width - 1)
        pos = torch.arange(width - 1, device=device)
        lens = mask.sum(1)
        st = torch.tensor([max(starts[i], 1) for i in batch], device=device)
        # target j is token j+1: predicted tokens are those at positions start..len-1
        sel = (pos[None, :] >= (st[:, None] - 1)) & (pos[None, :] < (lens[:, None] - 1))
        sums = (nll * sel).sum(1).double().cpu().numpy()
        cnt = sel.sum(1).cpu().numpy()
        if want_agreement:
            hit = (logits.argmax(-1) == ids[:, 1:]) & sel
            hits = hit.sum(1).cpu().numpy()
            given = logits.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            top2 = logits.topk(2, dim=-1).values
            # the best OTHER token: the runner-up where the given token is the top, else the top
            other = torch.where(given >= top2[..., 0], top2[..., 1], top2[..., 0])
            tok_margin = given - other
            worst = torch.where(sel, tok_margin, torch.full_like(tok_margin, math.inf)).amin(1).double().cpu().numpy()
            reg = ((top2[..., 0] - given).clamp(min=0) * sel).sum(1).double().cpu().numpy()
        for r, i in enumerate(batch):
            counts[i] = int(cnt[r])
            if cnt[r] > 0:
                losses[i] = sums[r] / cnt[r]
                if want_agreement:
                    agree[i] = float(hits[r] == cnt[r])
                    token_acc[i] = hits[r] / cnt[r]
                    margin[i] = worst[r]
                    regret[i] = reg[r] / cnt[r]
        if want_embeddings:
            h = out.hidden_states[-1].float()
            m = mask.unsqueeze(-1).float()
            vec = ((h * m).sum(1) / m.sum(1).clamp(min=1)).cpu().numpy()
            if embeds is None:
                embeds = np.zeros((n, vec.shape[1]), dtype=np.float32)
            embeds[batch] = vec
    res = {"loss": losses, "count": counts, "embedding": embeds}
    if want_agreement:
        res.update(agree=agree, token_acc=token_acc, margin=margin, regret=regret)
    return res


def _bos(tok) -> list[int]:
    return [tok.bos_token_id] if tok.bos_token_id is not None else []


def pad_id(tok) -> int:
    for t in (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id):
        if t is not None:
            return int(t)
    return 0


def build_sequences(tok, prompts: list[str], answers: list[str], max_length: int, score_eos: bool = True):
    """Token ids for (BOS + prompt + answer [+ EOS]) and (BOS + answer [+ EOS]), and where
    the scored part starts in each.

    The conditioned sequence tokenizes prompt + answer as ONE text (that is what a model
    sees in training) and splits it by character offsets: the answer starts at the first
    token whose span ends after `len(prompt)`, so a token straddling the boundary belongs
    to the answer. Tokenizing the two separately and concatenating the ids (as before)
    made SentencePiece tokenizers (Llama style) open every answer with a "▁" piece the
    whole text never contains, and those artefact tokens dominated the loss.

    The answer-alone sequence (for IFD) is the answer tokenized on its own, as IFD defines
    it (Cherry LLM does the same); its pieces may differ from the conditioned answer's at
    the first token, so the two losses cover the same text, not always the same ids.

    `score_eos` (default on): the tokenizer's EOS id (when it has one) is appended to both
    answers, so the model's "stop here" is scored too. An empty answer gets no EOS: it
    stays unscored (NaN). A truncated answer gets no EOS either (it did not end there).
    Needs a fast tokenizer (character offsets); both tokenizer calls are batched."""
    if not prompts:
        return [], [], [], []
    if not getattr(tok, "is_fast", False):
        raise ValueError("LM scoring needs a fast (Rust) tokenizer for character offsets; "
                         f"{type(tok).__name__} is not one")
    bos = _bos(tok)
    eos = [int(tok.eos_token_id)] if score_eos and tok.eos_token_id is not None else []
    joint = tok([p + a for p, a in zip(prompts, answers)], add_special_tokens=False, return_offsets_mapping=True)
    alone_enc = tok(list(answers), add_special_tokens=False, return_offsets_mapping=True)
    cond, cond_start, alone, alone_start = [], [], [], []
    budget = max_length - len(bos)
    for prompt, ids, offs, a_ids, a_offs in zip(prompts, joint["input_ids"], joint["offset_mapping"],
                                                  alone_enc["input_ids"], alone_enc["offset_mapping"]):
        ends = np.asarray([e for _, e in offs], dtype=np.int64)
        after = np.flatnonzero(ends > len(prompt))
        k = int(after[0]) if len(after) else len(ids)
        p, a = list(ids[:k]), list(ids[k:])
        a_full = a + eos if a else []
        a = a_full[: max(budget - min(len(p), budget // 2), 1)]
        p = p[len(p) - min(len(p), budget - len(a)):] if budget - len(a) > 0 else []
        cond.append(bos + p + a)
        cond_start.append(len(bos) + len(p))
        if len(a) == len(a_full):  # whole answer (+ EOS) kept: the whole answer alone too
            al = (list(a_ids) + eos if a_ids else [])[:budget]
        else:  # truncated: keep the answer-alone tokens that end within the same text
            cut = offs[k + len(a) - 1][1] - len(prompt)
            n = int(np.sum(np.asarray([e for _, e in a_offs], dtype=np.int64) <= cut)) if a_offs else 0
            al = list(a_ids[: max(n, 1)])[:budget]
        alone.append(bos + al)
        # without BOS, the first answer token has no context in the alone sequence
        alone_start.append(len(bos) if bos else 1)
    if not bos:
        cond_start = [s + 1 for s in cond_start]  # same predicted text in both
    return cond, cond_start, alone, alone_start


def score(model, tok, prompts: list[str], answers: list[str], *, ifd: bool, max_length: int = 512,
          batch_size: int = 16, max_batch_tokens: int = 8192, want_embeddings: bool = False,
          score_eos: bool = True, want_agreement: bool = False) -> dict:
    """Per example: loss_cond, n_tokens, and with `ifd` loss_answer and ifd; NaN where the
    answer is empty. `score_eos`: see `build_sequences`. `want_agreement`: also `agree`
    `token_acc`, `margin` and `regret` of the conditioned answer (see `sequence_stats`)."""
    cond, cstart, alone, astart = build_sequences(tok, prompts, answers, max_length, score_eos)
    pad = pad_id(tok)
    st = sequence_stats(model, cond, cstart, pad, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                        want_embeddings=want_embeddings, want_agreement=want_agreement)
    loss_c, n_tok, emb = st["loss"], st["count"], st["embedding"]
    out = {"loss_cond": loss_c, "n_tokens": n_tok}
    if want_agreement:
        for k in ("agree", "token_acc", "margin", "regret"):
            out[k] = st[k]
    if ifd:
        loss_a, _, _ = sequence_losses(model, alone, astart, pad, batch_size=batch_size,
                                       max_batch_tokens=max_batch_tokens)
        out["loss_answer"] = loss_a
        with np.errstate(over="ignore", invalid="ignore"):
            out["ifd"] = np.exp(loss_c - loss_a)
    if want_embeddings:
        out["embedding"] = emb
    return out


@torch.inference_mode()
def embed_texts(model_dir: str | Path, texts: list[str], *, batch_size: int = 32, max_length: int = 512,
                device: str = "cpu", trust_remote_code: bool = False) -> np.ndarray:
    """Mean of the last hidden state over non-padding tokens, for any local model
    directory AutoModel can load (a causal LM's base model, or a sentence encoder)."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a causal LM's lm_head is "unexpected" for its base model: expected here
    try:
        model = AutoModel.from_pretrained(str(model_dir), use_safetensors=True, trust_remote_code=trust_remote_code)
    finally:
        hf_logging.set_verbosity(level)
    model.to(resolve_device(device)).eval()
    ids = tok(texts, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
    ids = [x if x else [pad_id(tok)] for x in ids]
    pad = pad_id(tok)
    dev = next(model.parameters()).device
    out = None
    for batch in length_buckets([len(x) for x in ids], batch_size, batch_size * max_length):
        width = max(len(ids[i]) for i in batch)
        t = torch.full((len(batch), width), pad, dtype=torch.long)
        m = torch.zeros((len(batch), width), dtype=torch.long)
        for r, i in enumerate(batch):
            t[r, : len(ids[i])] = torch.tensor(ids[i])
            m[r, : len(ids[i])] = 1
        h = model(input_ids=t.to(dev), attention_mask=m.to(dev)).last_hidden_state.float()
        mm = m.to(dev).unsqueeze(-1).float()
        vec = ((h * mm).sum(1) / mm.sum(1).clamp(min=1)).cpu().numpy()
        if out is None:
            out = np.zeros((len(ids), vec.shape[1]), dtype=np.float32)
        out[batch] = vec
    return out if out is not None else np.zeros((0, 1), dtype=np.float32)


def finite_or_none(values: np.ndarray) -> list[float | None]:
    return [float(v) if v is not None and math.isfinite(v) else None for v in values]
