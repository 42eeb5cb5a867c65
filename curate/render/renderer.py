"""Rendering: conversations -> chat template text -> token ids + loss labels.

    render_examples(table, cfg, base_dir, seed) -> RenderOutput(examples, dropped, stats, fingerprints)

Per batch of `cfg.batch_size` conversations: render each through the compiled template
(Jinja is per record by nature), tokenize the whole batch in one call to the Rust tokenizer
(`encode_batch`, on a worker thread while the next batch renders), and turn generation
spans into token ranges with a few lookups in the Rust encoding. Masks come from `{% generation %}` blocks (exactly as `apply_chat_template(...,
return_assistant_tokens_mask=True)` computes them: a token is trained when it overlaps a
span); a template without them gets each assistant turn's span from prefix renders
(render(turns[:i], add_generation_prompt=True) vs render(turns[:i+1])), which must be
prefixes of the full text. Never from searching for marker strings.

The text is tokenized with add_special_tokens=False, as apply_chat_template does: the
template writes BOS itself, so it is never doubled.

Conversations are given to the template whole, as `apply_chat_template(messages, tools=...)`
gets them: each message's `extra` (a JSON object of its keys other than role/content:
`tool_calls`, `tool_call_id`, `name`, unknown keys; null or absent when there are none) is
merged into the message dict, and the conversation's `tools` (kept in `meta` under "tools")
go to the template as `tools=`. A table without `extra` renders as before. A template error
on one conversation (including a time or size limit, see curate.render.templates) drops that
conversation with reason `template_error` and the message; the run goes on.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from curate.render.templates import (ChatTemplate, TemplateError, TemplateSecurityError, load_template, parse_date,
                                     special_tokens_kwargs)
from curate.contract.schema import stable_keys_array
from curate.render.word_cache import WordCache

IGNORE = -100
PROBE_ANSWER = "Probe answer 7."
SAMPLES = 3
PIPELINE_CHUNK = 256  # conversations per render/tokenize hand-off (overlap granularity)
# ... with the word cache: larger (each chunk's cutting and joins are a few polars calls; the
# word table is kept across chunks), yet small enough that Jinja renders chunk k+1 while the
# cache encodes chunk k: on the 2,488 real conversations 1,024 was 0-12% faster than 8,192
# (one chunk, no overlap) with stories260K and the byte-level BPE, 512 no better.
WORD_CACHE_CHUNK = 1024


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
    """One rendered conversation and what to keep of it: the first `length` tokens, trained on
    the inclusive token ranges in `supervised` (the first token never is); `reason` set when
    it is dropped. `input_ids`, `mask` (the assistant mask, as transformers computes it) and
    `labels` are materialised on demand; the batch path in render_examples never does."""

    text: str = ""
    spans: list = field(default_factory=list)  # assistant spans, characters [start, end)
    encoding: object = None  # a TokenizedText or an EncodingSpans: ids, len, offsets
    token_spans: list = field(default_factory=list)  # (first, last) token of each span, or None
    length: int = 0
    supervised: list = field(default_factory=list)
    truncated: bool = False
    reason: str | None = None
    detail: str | None = None

    @property
    def input_ids(self) -> np.ndarray:
        return np.asarray(self.encoding.ids[: self.length], dtype=np.int32)

    @property
    def mask(self) -> np.ndarray:
        m = np.zeros(self.length, dtype=bool)
        for ts in self.token_spans:
            if ts is not None:
                m[ts[0]: ts[1] + 1] = True
        return m

    @property
    def labels(self) -> np.ndarray:
        ids = self.input_ids
        sup = np.zeros(len(ids), dtype=bool)
        for a, b in self.supervised:
            sup[a: b + 1] = True
        sup[:1] = False
        return np.where(sup, ids, np.int32(IGNORE))

    @property
    def offsets(self) -> np.ndarray:
        return np.asarray(self.encoding.offsets, dtype=np.int64).reshape(-1, 2)[: self.length]

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


def span_tokens(enc, start: int, end: int, n: int) -> tuple[int, int] | None:
    """(first, last) token overlapping characters [start, end) of an encoded text, or None.

    The same tokens transformers' apply_chat_template marks (a token overlapping the span),
    found with a few lookups in the Rust encoding instead of walking every token's offsets
    in Python: the tokens holding the span's first and last covered characters, widened over
    neighbours that share those characters (a character split into several byte tokens)."""
    first = last = None
    c = start
    while c < end and first is None:
        first = enc.char_to_token(c)
        c += 1
    if first is None:
        return None
    c = end - 1
    while c >= start and last is None:
        last = enc.char_to_token(c)
        c -= 1
    while first > 0 and enc.token_to_chars(first - 1)[1] > start:
        first -= 1
    while last + 1 < n and enc.token_to_chars(last + 1)[0] < end:
        last += 1
    return first, last


def span_token_mask(offsets: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """Reference over explicit offsets (used by tests): transformers' rule, vectorised.
    Walking tokens in order, skip spans that end at or before the token's start, and mark
    the token when it ends after the current span's start."""
    n = len(offsets)
    if n == 0 or len(spans) == 0:
        return np.zeros(n, dtype=bool)
    starts = np.maximum.accumulate(offsets[:, 0])
    idx = np.searchsorted(spans[:, 1], starts, side="right")
    safe = np.minimum(idx, len(spans) - 1)
    return (idx < len(spans)) & (offsets[:, 1] > spans[safe, 0])


class EncodingSpans:
    """A tokenizers.Encoding seen through the interface an Encoded keeps (ids, len,
    offsets); curate.render.word_cache.TokenizedText is the other implementation."""

    __slots__ = ("enc", "ids")

    def __init__(self, enc):
        self.enc, self.ids = enc, enc.ids

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def offsets(self):
        return self.enc.offsets


# --------------------------------------------------------------------------- conversations


def message_dicts(messages: list[dict]) -> list[dict]:
    """The message dicts a template sees: role and content (None values left out, as
    before), then the keys of `extra` (a JSON object string) merged in."""
    out = []
    for i, m in enumerate(messages):
        d = {k: v for k, v in m.items() if v is not None and k != "extra"}
        extra = m.get("extra")
        if extra:
            try:
                more = json.loads(extra)
            except (TypeError, ValueError) as exc:
                raise TemplateError(f"message {i}: `extra` is not valid JSON: {exc}") from None
            if not isinstance(more, dict):
                raise TemplateError(f"message {i}: `extra` must be a JSON object, got {type(more).__name__}")
            for k, v in more.items():
                if k not in ("role", "content"):
                    d[k] = v
        out.append(d)
    return out


def calls_as_text(messages: list[dict]) -> list[dict]:
    """For a template that never reads `tool_calls`: each message's calls written into its
    content as JSON (`{"name", "arguments"}`, a list when there are several), after any text,
    so an assistant turn that only calls a tool does not train as an empty answer. A
    template that renders `tool_calls` itself gets the messages unchanged (and the output
    stays token-for-token `apply_chat_template`'s); this fallback is the one place the
    renderer writes what the template would not."""
    out = []
    for m in messages:
        calls = m.get("tool_calls")
        if not calls:
            out.append(m)
            continue
        plain = [c.get("function", c) if isinstance(c, dict) else c for c in calls]
        text = json.dumps(plain[0] if len(plain) == 1 else plain, ensure_ascii=False)
        content = m.get("content") or ""
        d = {k: v for k, v in m.items() if k != "tool_calls"}
        d["content"] = f"{content}\n{text}" if content else text
        out.append(d)
    return out


TOOLS_COL = "_tools"


def tools_column(table: pl.DataFrame) -> pl.Series:
    """Each conversation's `tools` (meta["tools"]: a list of tool schemas, or a JSON string of
    one) as a JSON string, null where none. Only the rows whose meta mentions "tools" are
    parsed."""
    n = table.height
    if "meta" not in table.columns or n == 0:
        return pl.Series(TOOLS_COL, [None] * n, dtype=pl.String)
    meta = table["meta"].cast(pl.String)
    hit = meta.str.contains('"tools"', literal=True).fill_null(False)
    out: list = [None] * n
    if hit.any():
        for i in np.flatnonzero(hit.to_numpy()):
            try:
                obj = json.loads(meta[int(i)])
            except (TypeError, ValueError):
                continue
            tools = obj.get("tools") if isinstance(obj, dict) else None
            if isinstance(tools, str):  # some sets keep the schemas as a JSON string
                try:
                    tools = json.loads(tools)
                except ValueError:
                    continue
            # only a list of tool schemas (objects) is `tools` in the HF sense; a record's own
            # field that happens to be called "tools" ("a knife and a board") is left alone
            if isinstance(tools, list) and tools and all(isinstance(t, dict) for t in tools):
                out[int(i)] = json.dumps(tools, ensure_ascii=False)
    return pl.Series(TOOLS_COL, out, dtype=pl.String)


def _parse_tools(value):
    if value is None:
        return None
    try:
        tools = json.loads(value)
    except (TypeError, ValueError) as exc:
        raise TemplateError(f"meta.tools is not valid JSON: {exc}") from None
    return tools or None


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
        # a template that never mentions tool_calls would drop them: see calls_as_text
        self.template_reads_calls = "tool_calls" in template.text
        self.bos_id = getattr(tokenizer, "bos_token_id", None)
        self.end_of_turn, self.end_of_turn_ids = self._probe()
        # byte-level BPE tokenizers get the exact column-wise word-cache path
        self.word_cache = WordCache.for_tokenizer(tokenizer)

    # -- rendering text and spans
    def _spans_by_prefix(self, messages: list[dict], tools=None) -> tuple[str, list[tuple[int, int]]]:
        full, _ = self.template.render(messages, tools=tools, **self.kwargs)
        spans = []
        for i, m in enumerate(messages):
            if m.get("role") != "assistant":
                continue
            before, _ = (self.template.render(messages[:i], add_generation_prompt=True, tools=tools, **self.kwargs)
                         if i else ("", []))
            upto, _ = self.template.render(messages[: i + 1], tools=tools, **self.kwargs)
            if not (full.startswith(upto) and upto.startswith(before)):
                raise TemplateError(
                    f"template {self.template.name!r} has no {{% generation %}} blocks and its renders of a "
                    "conversation's first turns are not prefixes of the whole: add {% generation %} blocks around "
                    "assistant turns so the loss mask can be derived"
                )
            spans.append((len(before), len(upto)))
        return full, spans

    def render_text(self, messages: list[dict], tools=None) -> tuple[str, list[tuple[int, int]]]:
        """`messages` as stored (role, content, optional `extra`); `tools` a parsed list or None."""
        messages = message_dicts(messages)
        if not self.template_reads_calls:
            messages = calls_as_text(messages)
        if self.template.has_generation:
            return self.template.render(messages, tools=tools, **self.kwargs)
        return self._spans_by_prefix(messages, tools)

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
        eot_start = s + span_text.rfind(tail)
        found = span_tokens(enc, eot_start, eot_start + len(tail), len(enc.ids))
        ids = list(enc.ids[found[0]: found[1] + 1]) if found else []
        return tail, [int(i) for i in ids]

    # -- the batch path
    def render_texts(self, conversations: list[list[dict]], tools: list | None = None) -> list[Encoded]:
        """Template step only (pure Python, holds the GIL). `tools`: per conversation, its
        tools as a JSON string or None."""
        out: list[Encoded] = []
        for k, msgs in enumerate(conversations):
            try:
                text, spans = self.render_text(msgs, _parse_tools(tools[k]) if tools is not None else None)
            except TemplateSecurityError:
                raise
            except TemplateError as exc:
                out.append(Encoded(reason="template_error", detail=str(exc)[:500]))
                continue
            out.append(Encoded(text=text, spans=spans))
        return out

    def _ranges(self, ex: Encoded) -> list[tuple[int, int]]:
        """The character ranges the planner needs as tokens: each assistant span, then (unless
        train_on = "all") the end-of-turn text inside it ((-1, -1) where it is missing)."""
        if self.train_on == "all":
            return list(ex.spans)
        eot, text = self.end_of_turn, ex.text
        ats = [text.rfind(eot, s, e) for s, e in ex.spans]
        return list(ex.spans) + [(at, at + len(eot)) if at >= 0 else (-1, -1) for at in ats]

    def encode(self, rendered: list[Encoded]) -> list:
        """Tokenizer step, per batch: (encoding, token span of each of `_ranges`) per kept
        example. The word cache (curate.render.word_cache) where the tokenizer allows it, the
        tokenizer's own batch call (Rust, GIL released) for the texts it leaves."""
        todo = [ex for ex in rendered if ex.reason is None]
        if not todo:
            return []
        texts = [ex.text for ex in todo]
        ranges = [self._ranges(ex) for ex in todo]
        out: list = self.word_cache.encode_with_spans(texts, ranges) if self.word_cache is not None else [None] * len(texts)
        rest = [i for i, t in enumerate(out) if t is None]
        if rest:
            encs = self.backend.encode_batch([texts[i] for i in rest], add_special_tokens=False)
            for i, enc in zip(rest, encs):
                n = len(enc.ids)
                out[i] = (EncodingSpans(enc), [span_tokens(enc, a, b, n) if b > a else None for a, b in ranges[i]])
        return out

    def finish(self, rendered: list[Encoded], encodings: list) -> list[Encoded]:
        it = iter(encodings)
        for ex in rendered:
            if ex.reason is None:
                self._plan(ex, *next(it))
        return rendered

    def render_batch(self, conversations: list[list[dict]], tools: list | None = None) -> list[Encoded]:
        rendered = self.render_texts(conversations, tools)
        return self.finish(rendered, self.encode(rendered))

    def _plan(self, ex: Encoded, enc, found: list) -> None:
        """Decide, in plain integers, what is kept and trained: token ranges of the assistant
        spans, the cut (overflow), the supervised ranges (train_on), and the checks. `found`:
        the token span of each of `_ranges(ex)`."""
        n = len(enc)
        ex.encoding = enc
        ex.length = n
        if n > self.max_length and self.overflow == "drop":
            ex.reason, ex.detail = "too_long", f"{n} tokens > max_length {self.max_length}"
            return
        ex.token_spans = spans = found[: len(ex.spans)]
        eot_tokens = found[len(ex.spans):]
        kept, cut_inside = len(spans), False
        if n > self.max_length:
            # Cut only right after a whole assistant turn (its end-of-turn token included):
            # never inside a header, never leaving a turn without its terminator.
            # When not even the first assistant turn fits whole, cut inside it at max_length
            # (what a long single-turn answer needs); that cut turn has no end-of-turn token.
            fits = [j for j, ts in enumerate(spans) if ts is not None and ts[1] + 1 <= self.max_length]
            first = next((j for j, ts in enumerate(spans) if ts is not None), None)
            if fits:
                kept = fits[-1] + 1
                ex.length = spans[fits[-1]][1] + 1
            elif first is not None and max(spans[first][0], 1) < self.max_length:
                kept, cut_inside = first + 1, True
                ex.length = self.max_length
                spans = spans[:first] + [(spans[first][0], self.max_length - 1)]
            else:
                ex.reason = "too_long"
                ex.detail = f"{n} tokens > max_length {self.max_length}, and no assistant turn starts within it"
                return
            ex.truncated = True
        if self.train_on == "all":
            ex.supervised = [(0, ex.length - 1)]
        elif self.train_on == "last_assistant":
            ex.supervised = [spans[kept - 1]] if kept and spans[kept - 1] is not None else []
        else:
            ex.supervised = [ts for ts in spans[:kept] if ts is not None]
        # the first token is never trained (see render_examples)
        if not any(b >= max(a, 1) for a, b in ex.supervised):
            ex.reason, ex.detail = "no_supervised_tokens", f"train_on={self.train_on}: nothing to learn"
            return
        if self.train_on != "all":
            trained = range(kept) if self.train_on == "assistant" else [kept - 1]
            for j in trained:
                if cut_inside and j == kept - 1:
                    continue
                tokens = eot_tokens[j]
                if tokens is None or tokens[0] < 1 or not any(a <= tokens[0] and tokens[1] <= b for a, b in ex.supervised):
                    ex.reason = "end_of_turn_unsupervised"
                    ex.detail = f"assistant turn {j}: end-of-turn {self.end_of_turn!r} is not in the supervised span"
                    return


def _flatten(batch: list[Encoded]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kept examples of a batch as flat int32 ids and labels plus their lengths: one numpy
    pass per batch instead of several small arrays per example."""
    if not batch:
        z = np.zeros(0, dtype=np.int32)
        return z, z, np.zeros(0, dtype=np.int64)
    full = np.fromiter((len(ex.encoding) for ex in batch), dtype=np.int64, count=len(batch))
    flat = np.concatenate([np.asarray(ex.encoding.ids, dtype=np.int32) for ex in batch])
    bases = np.concatenate(([0], np.cumsum(full)[:-1]))
    keep = np.zeros(len(flat), dtype=bool)
    sup = np.zeros(len(flat), dtype=bool)
    lengths = np.empty(len(batch), dtype=np.int64)
    for i, ex in enumerate(batch):
        base = int(bases[i])
        keep[base: base + ex.length] = True
        lengths[i] = ex.length
        for a, b in ex.supervised:
            sup[base + a: base + b + 1] = True
    sup[bases] = False  # never train the first token
    labels = np.where(sup, flat, np.int32(IGNORE))
    return flat[keep], labels[keep], lengths


def check_config(cfg, base_dir: Path) -> None:
    """Refuse a [render] table before any work (ConfigError naming the key): the template must
    be a built-in name, an existing .jinja file or "tokenizer"; the tokenizer a local folder."""
    from curate.render.templates import builtin_names, is_path_spec
    from curate.contract.typed_config import ConfigError

    base_dir = Path(base_dir)
    if cfg.template != "tokenizer":
        if is_path_spec(cfg.template):
            p = Path(cfg.template).expanduser()
            p = p if p.is_absolute() else base_dir / p
            if not p.is_file():
                raise ConfigError("render.template", f"no chat template file at {p}")
        elif cfg.template not in builtin_names():
            raise ConfigError("render.template", f"unknown built-in template {cfg.template!r} (built-in: "
                              f"{', '.join(builtin_names())}; or a path to a .jinja file, or \"tokenizer\")")
    if not cfg.tokenizer:
        raise ConfigError("render.tokenizer", "required: a local tokenizer or model directory")
    t = Path(cfg.tokenizer).expanduser()
    t = t if t.is_absolute() else base_dir / t
    if not t.is_dir():
        raise ConfigError("render.tokenizer", f"no local tokenizer directory at {t} (models are never downloaded)")


# --------------------------------------------------------------------------- split


def assign_split(table: pl.DataFrame, val_fraction: float, seed: int) -> pl.Series:
    """"train"/"val" per row: a `split` column when present (a mix stage made it), else a
    stable hash of (seed, id), stratified per task: in each task the floor(n * val_fraction)
    rows with the smallest hash go to val, so a task with few rows may have none."""
    if "split" in table.columns:
        return table["split"].cast(pl.String).fill_null("train")
    if table.height == 0 or val_fraction <= 0:
        return pl.Series("split", ["train"] * table.height, dtype=pl.String)
    # hashed a slice of ids at a time: Python strings of 100k ids, not of every row, at once
    ids = table["id"]
    h = np.concatenate([stable_keys_array(ids.slice(lo, 100_000).to_list(), seed, "split")
                        for lo in range(0, ids.len(), 100_000)])
    ranked = table.select("id", "task").with_columns(pl.Series("_h", h, dtype=pl.UInt64)).with_columns(
        _r=pl.struct("_h", "id").rank("ordinal").over("task"), _n=pl.len().over("task"))
    val = ranked["_r"] <= (ranked["_n"] * val_fraction).floor()
    return pl.Series("split", np.where(val.to_numpy(), "val", "train"), dtype=pl.String)


# --------------------------------------------------------------------------- the stage entry point


REASON_COL, DETAIL_COL, TRUNCATED_COL = "_render_reason", "_render_detail", "_render_truncated"


def tokenize_aligned(renderer: "Renderer", messages: pl.Series, batch_size: int,
                     tools: pl.Series | None = None) -> pa.Table:
    """Render, tokenize and mask `messages` (with each row's `tools` JSON, when given); one
    output row per input row, in order: input_ids and labels (null when dropped), the drop
    reason and detail, truncated."""
    n = messages.len()
    if tools is not None and tools.null_count() == tools.len():
        tools = None
    reasons: list = [None] * n
    details: list = [None] * n
    truncated = np.zeros(n, dtype=bool)
    kept = np.zeros(n, dtype=bool)
    ids_col, labels_col, lengths_col = [], [], []

    def collect(start, rendered, future):
        batch = []
        for j, ex in enumerate(renderer.finish(rendered, future.result())):
            if ex.reason is not None:
                reasons[start + j], details[start + j] = ex.reason, ex.detail
            else:
                kept[start + j] = True
                truncated[start + j] = bool(ex.truncated)
                batch.append(ex)
        flat_ids, flat_labels, lengths = _flatten(batch)
        ids_col.append(flat_ids)
        labels_col.append(flat_labels)
        lengths_col.append(lengths)

    # Pipelined: the Rust tokenizer (GIL released) encodes chunk k on a worker thread while
    # this thread renders chunk k+1 through Jinja.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        step = max(1, min(batch_size, PIPELINE_CHUNK)) if renderer.word_cache is None else WORD_CACHE_CHUNK
        for start in range(0, n, step):
            rendered = renderer.render_texts(messages.slice(start, step).to_list(),
                                             tools.slice(start, step).to_list() if tools is not None else None)
            future = pool.submit(renderer.encode, rendered)
            if pending is not None:
                collect(*pending)
            pending = (start, rendered, future)
        if pending is not None:
            collect(*pending)
    lengths = np.zeros(n, dtype=np.int64)
    if kept.any():
        lengths[kept] = np.concatenate(lengths_col)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    null = pa.array(~kept)

    def lists(parts):
        values = np.concatenate(parts).astype(np.int32, copy=False) if parts else np.zeros(0, dtype=np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int32()), mask=null)

    return pa.table({"input_ids": lists(ids_col), "labels": lists(labels_col),
                     REASON_COL: pa.array(reasons, pa.string()), DETAIL_COL: pa.array(details, pa.string()),
                     TRUNCATED_COL: pa.array(truncated)})


class RenderBlock:
    """A picklable `fn(block) -> tokens` for executors: loads the tokenizer and template
    once per worker process, then tokenizes each Arrow block of a `messages` column."""

    _cache: dict = {}

    def __init__(self, cfg, base_dir: str):
        self.cfg, self.base_dir = cfg, base_dir

    def __call__(self, block: pa.Table) -> pa.Table:
        cfg = self.cfg
        key = (repr(cfg), self.base_dir)
        renderer = RenderBlock._cache.get(key)
        if renderer is None:
            tokenizer = load_tokenizer(cfg.tokenizer, Path(self.base_dir), cfg.trust_remote_code)
            renderer = Renderer(template_for(cfg, Path(self.base_dir), tokenizer), tokenizer, cfg.max_length,
                                cfg.train_on, cfg.overflow)
            RenderBlock._cache[key] = renderer
        frame = pl.from_arrow(block)
        return tokenize_aligned(renderer, frame["messages"], cfg.batch_size,
                                frame[TOOLS_COL] if TOOLS_COL in frame.columns else None)


def template_for(cfg, base_dir: Path, tokenizer) -> ChatTemplate:
    """The run's compiled template with its limits and date from `[render]`."""
    return load_template(cfg.template, base_dir, tokenizer, time_limit=cfg.template_time_limit,
                         max_chars=cfg.template_max_chars, date=cfg.date)


def decoded_samples(tokenizer, df: pl.DataFrame, k: int = SAMPLES) -> list[dict]:
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


@dataclass
class RenderSetup:
    """What one run's rendering is set up with, shared by `render_examples` (a whole table)
    and curate.render.stream (part by part), so both record the same fingerprints."""

    cfg: object  # the RenderConfig, with its date fixed
    pinned: bool  # render.date was set
    tokenizer: object
    template: ChatTemplate
    renderer: Renderer

    @classmethod
    def open(cls, cfg, base_dir: Path, tokenizer=None) -> "RenderSetup":
        base_dir = Path(base_dir)
        if tokenizer is None:
            if not cfg.tokenizer:
                raise RenderError("render.tokenizer is required")
            tokenizer = load_tokenizer(cfg.tokenizer, base_dir, cfg.trust_remote_code)
        # The date strftime_now() returns is fixed once per run (and recorded), so that every
        # worker renders the same text.
        pinned = cfg.date is not None
        cfg = replace(cfg, date=cfg.date or parse_date(None).date().isoformat())
        try:
            template = template_for(cfg, base_dir, tokenizer)
            renderer = Renderer(template, tokenizer, cfg.max_length, cfg.train_on, cfg.overflow)
        except TemplateError as exc:
            raise RenderError(f"render.template: {exc}") from exc
        return cls(cfg, pinned, tokenizer, template, renderer)

    def mask_source(self) -> str:
        return "generation" if self.template.has_generation else "prefix"

    def notes(self) -> list[str]:
        if not self.template.uses_date:
            return []
        return [f"the template calls strftime_now(): it rendered with the date {self.cfg.date} (set render.date to "
                "pin it; unset, a run on another day renders other text)"]

    def fingerprints(self, base_dir: Path) -> dict:
        from curate.contract.shards import tokenizer_fingerprint

        cfg, template, renderer = self.cfg, self.template, self.renderer
        return {
            "template": template.name,
            "template_sha256": template.sha256,
            "template_source": template.source(Path(base_dir)),
            # recorded when set, or when the template reads it (else the manifest would change daily)
            "date": cfg.date if self.pinned or template.uses_date else None,
            "tokenizer": {"path": str(cfg.tokenizer), **tokenizer_fingerprint(self.tokenizer)},
            "end_of_turn": {"text": renderer.end_of_turn, "ids": renderer.end_of_turn_ids},
            "train_on": cfg.train_on,
            "max_length": cfg.max_length,
            "pack": cfg.pack,
        }


def render_examples(table: pl.DataFrame, cfg, base_dir: Path, seed: int, tokenizer=None,
                    map_blocks=None) -> RenderOutput:
    """Render, tokenize and mask every conversation of `table` (cfg: curate.pipeline.config.RenderConfig).
    `tokenizer` may be passed in (tests, benchmarks); else it is loaded from cfg.tokenizer.
    `map_blocks(frame, fn)`, when given (the Ray executor's), runs `fn` over contiguous blocks
    of `frame` and concatenates the Arrow results in order: tokenization is per row, so the
    result is the same as one local call; split, checks and stats stay here."""
    from curate.contract.shards import check_examples

    base_dir = Path(base_dir)
    setup = RenderSetup.open(cfg, base_dir, tokenizer)
    cfg, tokenizer, template, renderer = setup.cfg, setup.tokenizer, setup.template, setup.renderer

    split = assign_split(table, cfg.val_fraction, seed)
    # Each distinct conversation is rendered once: a mix stage's upsampled repeats share
    # their id (a content hash), and get the same tokens back through a join.
    unique = table.select("id", "messages", *(["meta"] if "meta" in table.columns else [])).unique(
        "id", keep="first", maintain_order=True)
    tools = tools_column(unique)
    has_tools = tools.null_count() < tools.len()
    if map_blocks is None:
        aligned = tokenize_aligned(renderer, unique["messages"], cfg.batch_size, tools if has_tools else None)
    else:  # an executor spreads the (row-local) tokenization; rows come back in order
        frame = unique.select("messages").with_columns(tools) if has_tools else unique.select("messages")
        aligned = map_blocks(frame, RenderBlock(cfg, str(base_dir)))
    unique = unique.select("id", "messages")
    u = unique.select("id").hstack(pl.from_arrow(aligned))
    tokens = u.filter(pl.col(REASON_COL).is_null()).select("id", "input_ids", "labels")
    base = table.select(pl.col("id", "source", "task").cast(pl.String)).with_columns(split)
    examples = (base.join(tokens, on="id", how="inner", maintain_order="left")
                .sort("id", "split", "task", "source", maintain_order=True))
    why = u.filter(pl.col(REASON_COL).is_not_null()).select(
        "id", pl.col(REASON_COL).alias("_reason"), pl.col(DETAIL_COL).alias("_detail"))
    dropped = table.join(why, on="id", how="inner", maintain_order="left")
    truncated_ids = u.filter(pl.col(TRUNCATED_COL))["id"]
    n_truncated = int(table.select(pl.col("id").is_in(truncated_ids.implode()).sum()).item()) \
        if truncated_ids.len() else 0

    checks = check_examples(examples, renderer.end_of_turn_ids, expect_end_of_turn=cfg.train_on != "all")
    n_bos = 0
    if renderer.bos_id is not None and examples.height:
        first2 = examples.select(pl.col("input_ids").list.head(2)).to_series()
        n_bos = int(first2.list.eval(pl.element() == renderer.bos_id).list.sum().eq(2).sum())
    checks["double_bos"] = n_bos
    reason_counts = dict(sorted(dropped["_reason"].value_counts().iter_rows())) if dropped.height else {}
    stats = {
        "examples": examples.height,
        "dropped": {k: int(v) for k, v in reason_counts.items()},
        "truncated": n_truncated,
        "splits": {s: int((examples["split"] == s).sum()) for s in ("train", "val")},
        "tokens": checks["tokens"],
        "supervised_tokens": checks["supervised_tokens"],
        "mask_source": setup.mask_source(),
        "with_tools": int(tools.len() - tools.null_count()),
        "notes": setup.notes(),
        "checks": checks,
        "samples": decoded_samples(tokenizer, examples.filter(pl.col("split") == "train")),
    }
    return RenderOutput(examples=examples, dropped=dropped, stats=stats, fingerprints=setup.fingerprints(base_dir))
