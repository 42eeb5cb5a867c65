"""Rendering: conversations -> chat template text -> token ids + loss labels.

    render_examples(table, cfg, base_dir, seed) -> RenderOutput(examples, dropped, stats, fingerprints)

Per batch of `cfg.batch_size` conversations: render each through the compiled template
(Jinja is per record by nature), tokenize the whole batch in one call to the Rust tokenizer
(`encode_batch`, with character offsets), and turn generation spans into token masks with
numpy. Masks come from `{% generation %}` blocks (exactly as `apply_chat_template(...,
return_assistant_tokens_mask=True)` computes them: a token is trained when it overlaps a
span); a template without them gets each assistant turn's span from prefix renders
(render(turns[:i], add_generation_prompt=True) vs render(turns[:i+1])), which must be
prefixes of the full text. Never from searching for marker strings.

The text is tokenized with add_special_tokens=False, as apply_chat_template does: the
template writes BOS itself, so it is never doubled.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from curate.chat_templates import ChatTemplate, TemplateError, TemplateSecurityError, load_template, special_tokens_kwargs

IGNORE = -100
PROBE_ANSWER = "Probe answer 7."
SAMPLES = 3


class RenderError(ValueError):
    """Rendering cannot start or cannot be trusted (bad template/tokenizer pairing)."""


@dataclass
class RenderOutput:
    examples: pl.DataFrame
    dropped: pl.DataFrame
    stats: dict = field(default_factory=dict)
    fingerprints: dict = field(default_factory=dict)


@dataclass
class Encoded:
    """One rendered conversation. `mask` is the assistant mask (HF's), `labels` the loss labels
    after `train_on`, truncation and the first-token rule; `reason` set when it is dropped."""

    input_ids: np.ndarray | None = None
    mask: np.ndarray | None = None
    labels: np.ndarray | None = None
    text: str = ""
    spans: list = field(default_factory=list)
    offsets: np.ndarray | None = None
    truncated: bool = False
    reason: str | None = None
    detail: str | None = None

    @property
    def error(self) -> str | None:
        return None if self.reason is None else f"{self.reason}: {self.detail}"


# --------------------------------------------------------------------------- tokenizer


def load_tokenizer(path: str | Path, base_dir: Path | None = None, trust_remote_code: bool = False):
    """A local fast tokenizer (no hub: the path must exist)."""
    from transformers import AutoTokenizer

    p = Path(path).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    if not p.exists():
        raise RenderError(f"render.tokenizer: no local tokenizer at {p}")
    tok = AutoTokenizer.from_pretrained(str(p), trust_remote_code=trust_remote_code, local_files_only=True)
    backend_of(tok)
    return tok


def backend_of(tokenizer):
    """The Rust `tokenizers.Tokenizer` behind a transformers tokenizer (batch encode + offsets)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch"):
        raise RenderError(f"{type(tokenizer).__name__} is not a fast tokenizer: rendering needs character offsets")
    return backend


# --------------------------------------------------------------------------- masks


def span_token_mask(offsets: np.ndarray, spans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask, span index) per token. Same rule as transformers' apply_chat_template: walking
    tokens in order, skip spans that end at or before the token's start, and mark the token
    when it ends after the current span's start. Vectorised: the span index is the count of
    span ends <= the running maximum of token starts."""
    n = len(offsets)
    if n == 0 or len(spans) == 0:
        return np.zeros(n, dtype=bool), np.full(n, -1, dtype=np.int64)
    starts = np.maximum.accumulate(offsets[:, 0])
    idx = np.searchsorted(spans[:, 1], starts, side="right")
    valid = idx < len(spans)
    safe = np.minimum(idx, len(spans) - 1)
    mask = valid & (offsets[:, 1] > spans[safe, 0])
    return mask, np.where(mask, idx, -1)


def char_to_token(offsets: np.ndarray, pos: int) -> int:
    """Index of the first token ending after character `pos` (-1 if none)."""
    i = int(np.searchsorted(offsets[:, 1], pos, side="right"))
    return i if i < len(offsets) and offsets[i, 0] <= pos else -1


# --------------------------------------------------------------------------- renderer


class Renderer:
    """Template + tokenizer + masking policy, set up once per run."""

    def __init__(self, template: ChatTemplate, tokenizer, max_length: int, train_on: str = "assistant",
                 overflow: str = "drop"):
        self.template = template
        self.tokenizer = tokenizer
        self.backend = backend_of(tokenizer)
        self.max_length = max_length
        self.train_on = train_on
        self.overflow = overflow
        self.kwargs = special_tokens_kwargs(tokenizer)
        self.bos_id = getattr(tokenizer, "bos_token_id", None)
        self.end_of_turn, self.end_of_turn_ids = self._probe()

    # -- rendering text and spans
    def _spans_by_prefix(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        full, _ = self.template.render(messages, **self.kwargs)
        spans = []
        for i, m in enumerate(messages):
            if m.get("role") != "assistant":
                continue
            before, _ = self.template.render(messages[:i], add_generation_prompt=True, **self.kwargs) if i else ("", [])
            upto, _ = self.template.render(messages[: i + 1], **self.kwargs)
            if not (full.startswith(upto) and upto.startswith(before)):
                raise TemplateError(
                    f"template {self.template.name!r} has no {{% generation %}} blocks and its renders of a "
                    "conversation's first turns are not prefixes of the whole: add {% generation %} blocks around "
                    "assistant turns so the loss mask can be derived"
                )
            spans.append((len(before), len(upto)))
        return full, spans

    def render_text(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
        if self.template.has_generation:
            return self.template.render(messages, **self.kwargs)
        return self._spans_by_prefix(messages)

    def _probe(self) -> tuple[str, list[int]]:
        """Find the end-of-turn text: what the template writes after an assistant answer inside
        its trained span. A template whose trained span stops at the answer is refused: a model
        that never sees the end-of-turn token never learns to stop."""
        msgs = [{"role": "user", "content": "Probe question?"}, {"role": "assistant", "content": PROBE_ANSWER}]
        text, spans = self.render_text(msgs)
        if not spans:
            raise RenderError(f"template {self.template.name!r} marks no assistant span for a user/assistant exchange")
        s, e = spans[-1]
        span_text = text[s:e]
        at = span_text.rfind(PROBE_ANSWER)
        tail = span_text[at + len(PROBE_ANSWER):].strip() if at >= 0 else ""
        if not tail:
            raise RenderError(
                f"template {self.template.name!r}: the trained span of an assistant turn ends with the answer text "
                "and does not include the end-of-turn token; put it inside {% generation %}"
            )
        enc = self.backend.encode(text, add_special_tokens=False)
        offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        eot_start = s + span_text.rfind(tail)
        first, last = char_to_token(offsets, eot_start), char_to_token(offsets, eot_start + len(tail) - 1)
        ids = list(enc.ids[first: last + 1]) if first >= 0 and last >= first else []
        return tail, [int(i) for i in ids]

    # -- the batch path
    def render_batch(self, conversations: list[list[dict]]) -> list[Encoded]:
        out: list[Encoded] = []
        texts: list[str] = []
        todo: list[int] = []
        for i, msgs in enumerate(conversations):
            try:
                text, spans = self.render_text(msgs)
            except TemplateSecurityError:
                raise
            except TemplateError as exc:
                out.append(Encoded(reason="template_error", detail=str(exc)[:500]))
                continue
            out.append(Encoded(text=text, spans=spans))
            texts.append(text)
            todo.append(i)
        encodings = self.backend.encode_batch(texts, add_special_tokens=False) if texts else []
        for i, enc in zip(todo, encodings):
            self._finish(out[i], np.asarray(enc.ids, dtype=np.int32),
                         np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2))
        return out

    def _finish(self, ex: Encoded, ids: np.ndarray, offsets: np.ndarray) -> None:
        spans = np.asarray(ex.spans, dtype=np.int64).reshape(-1, 2)
        mask, span_of = span_token_mask(offsets, spans)
        ex.mask = mask
        n = len(ids)
        kept_spans = len(spans)
        if n > self.max_length:
            if self.overflow == "drop":
                ex.reason, ex.detail = "too_long", f"{n} tokens > max_length {self.max_length}"
                return
            # Cut only right after a whole assistant turn (its end-of-turn token included):
            # never inside a header, never leaving a turn without its terminator.
            ends = np.array([np.flatnonzero(span_of == j)[-1] + 1 if (span_of == j).any() else 0
                             for j in range(len(spans))], dtype=np.int64)
            fits = np.flatnonzero((ends > 0) & (ends <= self.max_length))
            if len(fits) == 0:
                ex.reason = "too_long"
                ex.detail = f"{n} tokens > max_length {self.max_length}, and no whole assistant turn fits"
                return
            cut = int(ends[fits[-1]])
            kept_spans = int(fits[-1]) + 1
            ids, offsets, mask, span_of = ids[:cut], offsets[:cut], mask[:cut], span_of[:cut]
            ex.truncated = True
        if self.train_on == "all":
            sup = np.ones(len(ids), dtype=bool)
        elif self.train_on == "last_assistant":
            sup = span_of == (kept_spans - 1)
        else:
            sup = mask
        labels = np.where(sup, ids, IGNORE).astype(np.int32)
        if len(labels):
            # The first token is never predicted; forcing it unsupervised also keeps a packed
            # example's first label from being predicted by the previous example's last token.
            labels[0] = IGNORE
        ex.input_ids, ex.labels, ex.offsets = ids, labels, offsets
        if not (labels != IGNORE).any():
            ex.reason, ex.detail = "no_supervised_tokens", f"train_on={self.train_on}: nothing to learn"
            return
        if self.train_on != "all":
            trained = range(kept_spans) if self.train_on == "assistant" else [kept_spans - 1]
            for j in trained:
                s, e = ex.spans[j]
                at = ex.text.rfind(self.end_of_turn, s, e)
                tok = char_to_token(offsets, at + len(self.end_of_turn) - 1) if at >= 0 else -1
                if tok < 0 or labels[tok] == IGNORE:
                    ex.reason = "end_of_turn_unsupervised"
                    ex.detail = f"assistant turn {j}: end-of-turn {self.end_of_turn!r} is not in the supervised span"
                    return


# --------------------------------------------------------------------------- split


def assign_split(table: pl.DataFrame, val_fraction: float, seed: int) -> pl.Series:
    """"train"/"val" per row: a `split` column when present (a mix stage made it), else a
    stable hash of (seed, id), stratified per task: in each task the floor(n * val_fraction)
    rows with the smallest hash go to val, so a task with few rows may have none."""
    if "split" in table.columns:
        return table["split"].cast(pl.String).fill_null("train")
    if table.height == 0 or val_fraction <= 0:
        return pl.Series("split", ["train"] * table.height, dtype=pl.String)
    # hashlib, not polars' hash(): polars documents its hash as unstable across versions.
    h = [int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(), "big")
         for i in table["id"].to_list()]
    ranked = table.select("id", "task").with_columns(pl.Series("_h", h, dtype=pl.UInt64)).with_columns(
        _r=pl.struct("_h", "id").rank("ordinal").over("task"), _n=pl.len().over("task"))
    val = ranked["_r"] <= (ranked["_n"] * val_fraction).floor()
    return pl.Series("split", np.where(val.to_numpy(), "val", "train"), dtype=pl.String)


# --------------------------------------------------------------------------- the stage entry point


def _list_array(arrays: list[np.ndarray]) -> pa.Array:
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate(arrays).astype(np.int32) if arrays else np.zeros(0, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int32()))


def _samples(tokenizer, df: pl.DataFrame, k: int = SAMPLES) -> list[dict]:
    """A few decoded examples with the supervised part marked, for the report."""
    out = []
    for row in df.head(k).iter_rows(named=True):
        ids = np.asarray(row["input_ids"])
        sup = np.asarray(row["labels"]) != IGNORE
        cuts = np.flatnonzero(np.diff(sup.astype(np.int8))) + 1
        segments = []
        for part_ids, part_sup in zip(np.split(ids, cuts), np.split(sup, cuts)):
            if len(part_ids):
                segments.append({"text": tokenizer.decode(part_ids.tolist(), skip_special_tokens=False),
                                 "supervised": bool(part_sup[0])})
        marked = "".join(f"[[{s['text']}]]" if s["supervised"] else s["text"] for s in segments)
        out.append({"id": row["id"], "task": row["task"], "tokens": int(len(ids)),
                    "supervised_tokens": int(sup.sum()), "segments": segments, "marked": marked})
    return out


def render_examples(table: pl.DataFrame, cfg, base_dir: Path, seed: int, tokenizer=None) -> RenderOutput:
    """Render, tokenize and mask every conversation of `table` (cfg: curate.config.RenderConfig).
    `tokenizer` may be passed in (tests, benchmarks); else it is loaded from cfg.tokenizer."""
    from curate.shards import check_examples, tokenizer_fingerprint

    base_dir = Path(base_dir)
    if tokenizer is None:
        if not cfg.tokenizer:
            raise RenderError("render.tokenizer is required")
        tokenizer = load_tokenizer(cfg.tokenizer, base_dir, cfg.trust_remote_code)
    try:
        template = load_template(cfg.template, base_dir, tokenizer)
        renderer = Renderer(template, tokenizer, cfg.max_length, cfg.train_on, cfg.overflow)
    except TemplateError as exc:
        raise RenderError(f"render.template: {exc}") from exc

    split = assign_split(table, cfg.val_fraction, seed)
    ids_col, labels_col, keep_rows, drop_rows, reasons, details = [], [], [], [], [], []
    truncated = 0
    messages = table["messages"]
    for start in range(0, table.height, cfg.batch_size):
        convs = messages.slice(start, cfg.batch_size).to_list()
        for j, ex in enumerate(renderer.render_batch(convs)):
            row = start + j
            if ex.reason is not None:
                drop_rows.append(row)
                reasons.append(ex.reason)
                details.append(ex.detail)
                continue
            keep_rows.append(row)
            ids_col.append(ex.input_ids)
            labels_col.append(ex.labels)
            truncated += ex.truncated

    keep_idx = pl.Series(keep_rows, dtype=pl.UInt32)
    base = table.select("id", "source", "task").with_columns(split)[keep_idx]
    examples = pl.from_arrow(pa.table({
        "id": base["id"].to_arrow(), "source": base["source"].to_arrow(), "task": base["task"].to_arrow(),
        "split": base["split"].to_arrow(),
        "input_ids": _list_array(ids_col), "labels": _list_array(labels_col),
    }))
    examples = examples.with_columns(pl.col(c).cast(pl.String) for c in ("id", "source", "task", "split"))
    examples = examples.sort("id", "split", "task", "source", maintain_order=True)
    dropped = table[pl.Series(drop_rows, dtype=pl.UInt32)].with_columns(
        pl.Series("_reason", reasons, dtype=pl.String), pl.Series("_detail", details, dtype=pl.String))

    checks = check_examples(examples, renderer.end_of_turn_ids, expect_end_of_turn=cfg.train_on != "all")
    n_bos = 0
    if renderer.bos_id is not None and examples.height:
        first2 = examples.select(pl.col("input_ids").list.head(2)).to_series()
        n_bos = int(first2.list.eval(pl.element() == renderer.bos_id).list.sum().eq(2).sum())
    checks["double_bos"] = n_bos
    reason_counts = dict(sorted(pl.Series(reasons, dtype=pl.String).value_counts().iter_rows())) if reasons else {}
    stats = {
        "examples": examples.height,
        "dropped": {k: int(v) for k, v in reason_counts.items()},
        "truncated": truncated,
        "splits": {s: int((examples["split"] == s).sum()) for s in ("train", "val")},
        "tokens": checks["tokens"],
        "supervised_tokens": checks["supervised_tokens"],
        "mask_source": "generation" if template.has_generation else "prefix",
        "checks": checks,
        "samples": _samples(tokenizer, examples.filter(pl.col("split") == "train")),
    }
    fingerprints = {
        "template": template.name,
        "template_sha256": template.sha256,
        "tokenizer": {"path": str(cfg.tokenizer), **tokenizer_fingerprint(tokenizer)},
        "end_of_turn": {"text": renderer.end_of_turn, "ids": renderer.end_of_turn_ids},
        "train_on": cfg.train_on,
        "max_length": cfg.max_length,
        "pack": cfg.pack,
    }
    return RenderOutput(examples=examples, dropped=dropped, stats=stats, fingerprints=fingerprints)
