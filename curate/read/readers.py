"""Readers: files in the formats users actually have -> the canonical record table.

Two independent axes:
  file type  jsonl | json (array, or an object holding one list) | parquet | csv | arrow,
             each optionally `.gz` or `.zst` compressed; detected from the extension.
  format     alpaca | sharegpt | messages | dolly | prompt_completion | task | auto

Reading is bounded: `iter_source` yields one table per block of at most `batch_rows`
input rows (JSONL and CSV lines, Parquet and Arrow record batches); JSON arrays cannot be
streamed and are loaded whole (keep big data in JSONL or Parquet). A JSONL block of a
flat format (alpaca, dolly, prompt_completion) is parsed column-wise by polars; rows it
cannot vouch for byte-for-byte (nulls, a key seen twice, a number where a string belongs,
escaped surrogates, nested values) and blocks that do not parse take the per-line
`json.loads` path, so results and quarantine lines are exactly those of per-line parsing.

Containment, the rules (the ledger counts every quarantine entry as one input read):
  a bad record or line      one quarantine entry with file, line (or #index), field, error;
                            a line over `max_record_bytes` is not parsed at all
  a bad file                one entry naming the file, where it broke and why (truncated or
                            non-gzip/zstd data, corrupt Parquet/Arrow, a CSV field over the
                            limit, undetectable format); records before the break are kept
  an empty file             nothing read, a log line
  not a data file           skipped in directories and globs with a log line (see sources.py)
Encodings: UTF-8 (a BOM is stripped), UTF-16 and UTF-32 when the file starts with their BOM.
"""
from __future__ import annotations

import codecs
import csv
import gc
import gzip
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from curate.contract.schema import (
    POLARS_MESSAGE,
    POLARS_SCHEMA,
    RECORD_SCHEMA,
    canonical_turns,
    empty_records,
    ids_from_canonical,
    json_string,
    recompute_ids,
)
from curate.read.sources import (  # noqa: F401
    COMPRESSIONS,
    DEFAULT_MAX_RECORD_BYTES,
    FILE_TYPES,
    HF_PREFIX,
    SourceConfig,
    file_type_of,
    local_path,
    source_files,
)

RAW_PREVIEW = 1000  # characters of a quarantined input kept for inspection
DEFAULT_BATCH_ROWS = 65_536
PARSE_BLOCK = 8_192  # lines polars parses at once; a bad line sends only its block per-line
BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))


class RecordError(ValueError):
    """A record that cannot be turned into a conversation; `field` names the culprit."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


@dataclass
class SourceRead:
    """One source's records and what could not be read."""

    name: str
    format: str  # the format used (auto resolved)
    files: list[str]
    table: pl.DataFrame
    quarantine: list[dict] = field(default_factory=list)

    @property
    def read(self) -> int:
        return self.table.height + len(self.quarantine)


# ---------------------------------------------------------------- file types and bytes


def file_type(path: Path, override: str | None = None) -> str:
    if override:
        return override
    ftype = file_type_of(path)
    if ftype is None:
        raise RecordError("path", f"{path}: cannot tell the file type from its extension (set `file_type`)")
    return ftype


def open_binary(path: Path) -> io.BufferedIOBase:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith((".zst", ".zstd")):
        import zstandard

        raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), read_across_frames=True, closefd=True)
        return io.BufferedReader(raw)  # line iteration needs a buffered reader
    return open(path, "rb")


def sniff_encoding(path: Path) -> tuple[str, int]:
    """(encoding, BOM length) from the first bytes of the (decompressed) file."""
    with open_binary(path) as fh:
        head = fh.read(4)
    for bom, enc in BOMS:
        if head.startswith(bom):
            return enc, len(bom)
    return "utf-8", 0


def _open_text(path: Path) -> tuple[Any, bool]:
    """A stream positioned after any BOM: binary for UTF-8 (lines are bytes), text for
    UTF-16/32 (lines are str, re-encoded by the caller). Returns (stream, is_text)."""
    enc, bom = sniff_encoding(path)
    fh = open_binary(path)
    fh.read(bom)
    if enc == "utf-8":
        return fh, False
    return io.TextIOWrapper(fh, encoding=enc, newline=""), True


class _Progress:
    """Where a file's reading has got to, for the message when it breaks."""

    def __init__(self) -> None:
        self.line = 0
        self.items = 0


def _lines(path: Path, limit: int, prog: _Progress, span: tuple[int, int, int] | None = None
           ) -> Iterator[tuple[int, bytes | None, int]]:
    """(line number, UTF-8 bytes or None when longer than `limit`, size) per non-blank line;
    never holds more than `limit` bytes of one line. `span` (start byte, end byte, lines
    before start), both at line starts of an uncompressed UTF-8 file: only the lines in
    [start, end), numbered as in the whole file (curate/read/ranges.py plans them)."""
    fh, is_text = _open_text(path)
    with fh:
        n = 0
        end = None
        if span is not None:
            start, end, n = span
            if start:
                fh.seek(start)
        while True:
            if end is not None and fh.tell() >= end:
                return
            line = fh.readline(limit + 1)
            if not line:
                return
            n += 1
            prog.line = n
            if is_text:
                line = line.encode("utf-8", errors="surrogatepass")
            if len(line) > limit and not line.endswith(b"\n"):
                size = len(line)
                while True:  # skip the rest of the over-long line in bounded pieces
                    more = fh.readline(1 << 20)
                    size += len(more.encode("utf-8") if is_text else more)
                    if not more or (more.endswith("\n") if is_text else more.endswith(b"\n")):
                        break
                yield n, None, size
                continue
            if line.strip():
                yield n, line, len(line)


def _preview(raw: Any) -> str:
    if isinstance(raw, bytes):
        raw = raw[:RAW_PREVIEW * 4].decode("utf-8", errors="replace")
    elif not isinstance(raw, str):
        try:
            raw = json.dumps(raw, ensure_ascii=False, default=str)
        except (RecursionError, ValueError, TypeError):
            raw = repr(type(raw))
    return raw[:RAW_PREVIEW]


def _parse_line(n: int, line: bytes | None, size: int, limit: int) -> tuple[str, Any, str | None, Any]:
    if line is None:
        return f"{n}", None, f"record of {size:,} bytes is over max_record_bytes ({limit:,}); not parsed", b""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"{n}", None, f"invalid UTF-8 at byte {exc.start}", line
    try:
        item = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"{n}", None, f"bad JSON: {exc.msg} at column {exc.colno}", text
    except RecursionError:
        return f"{n}", None, "bad JSON: nested too deep", text
    if "\\u" in text and _SURROGATE_RX.search(text) and _has_lone_surrogate(item):
        return f"{n}", None, "bad JSON: a \\u escape makes a lone surrogate (not Unicode text)", text
    return f"{n}", item, None, text


_SURROGATE_RX = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _has_lone_surrogate(item: Any) -> bool:
    """JSON lets `\\ud800` stand alone; such a string cannot be written as UTF-8."""
    try:
        json.dumps(item, ensure_ascii=False).encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True
    except (RecursionError, ValueError, TypeError):
        return False


def iter_items(path: Path, ftype: str, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
               batch_rows: int = DEFAULT_BATCH_ROWS, prog: _Progress | None = None
               ) -> Iterator[tuple[str, Any, str | None, Any]]:
    """Yield (location, item, error, raw) for every input item of a file. `location` is
    "N" (a line) or "#index"; `error` is set when the item itself cannot be decoded. A
    broken file raises (decompression, Parquet, CSV errors); `read_source` contains that."""
    prog = prog or _Progress()
    if ftype == "jsonl":
        for n, line, size in _lines(path, max_record_bytes, prog):
            prog.items += 1
            yield _parse_line(n, line, size, max_record_bytes)
    elif ftype == "json":
        yield from _json_items(path, max_record_bytes, prog)
    elif ftype in ("parquet", "arrow"):
        for batch in _table_batches(path, ftype, batch_rows):
            for row in batch.to_pylist():
                yield f"#{prog.items}", row, None, row
                prog.items += 1
    elif ftype == "csv":
        yield from _csv_items(path, max_record_bytes, prog)
    else:  # pragma: no cover - file_type() already refused it
        raise RecordError("file_type", f"unknown file type {ftype!r}")


def _json_items(path: Path, limit: int, prog: _Progress) -> Iterator[tuple[str, Any, str | None, Any]]:
    enc, bom = sniff_encoding(path)
    with open_binary(path) as fh:
        data = fh.read()
    try:
        text = data[bom:].decode(enc)
    except UnicodeDecodeError as exc:
        yield "#file", None, f"invalid {enc.upper()} at byte {exc.start}", data
        return
    try:
        obj = json.loads(text)
    except RecursionError:
        yield "#file", None, "bad JSON: nested too deep", data
        return
    except json.JSONDecodeError as exc:
        # A JSON array that does not parse is often JSON Lines with a .json name.
        items = _try_jsonl(text.encode("utf-8", errors="surrogatepass"), limit)
        if items:
            yield from items
            return
        yield f"{exc.lineno}", None, f"bad JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", data
        return
    if isinstance(obj, dict):
        lists = [v for v in obj.values() if isinstance(v, list)]
        if len(lists) != 1:
            yield "#file", None, "a JSON object file must hold exactly one list of records", obj
            return
        obj = lists[0]
    if not isinstance(obj, list):
        yield "#file", None, f"expected a JSON array of records, got {type(obj).__name__}", obj
        return
    check = _SURROGATE_RX.search(text) is not None
    del data, text
    for i, item in enumerate(obj):
        prog.items = i + 1
        if check and _has_lone_surrogate(item):
            yield f"#{i}", None, "bad JSON: a \\u escape makes a lone surrogate (not Unicode text)", repr(item)
            continue
        yield f"#{i}", item, None, item


def _try_jsonl(data: bytes, limit: int) -> list[tuple[str, Any, str | None, Any]]:
    parsed = []
    good = 0
    for n, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        entry = _parse_line(n, line if len(line) <= limit else None, len(line), limit)
        if entry[2] is None:
            good += 1
        else:
            entry = (entry[0], None, f"bad JSON line: {entry[2]}", entry[3])
        parsed.append(entry)
    # Only call it JSON Lines when most lines parse on their own.
    return parsed if good >= max(2, len(parsed) // 2) else []


def _table_batches(path: Path, ftype: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Record batches of a Parquet or Arrow (IPC file or stream) file, streamed when it is
    not compressed; a compressed one is decompressed into memory first (no random access)."""
    import pyarrow.ipc
    import pyarrow.parquet as pq

    compressed = path.name.lower().endswith(COMPRESSIONS)
    if compressed:
        with open_binary(path) as fh:
            source: Any = pa.BufferReader(fh.read())
    else:
        source = pa.memory_map(str(path), "r")
    if ftype == "parquet":
        yield from pq.ParquetFile(source).iter_batches(batch_size=batch_rows)
        return
    try:
        reader = pyarrow.ipc.open_file(source)
    except pa.ArrowInvalid:
        source.seek(0)
        for batch in pyarrow.ipc.open_stream(source):
            yield from _slices(batch, batch_rows)
        return
    for i in range(reader.num_record_batches):
        yield from _slices(reader.get_batch(i), batch_rows)


def _slices(batch: pa.RecordBatch, rows: int) -> Iterator[pa.RecordBatch]:
    for start in range(0, batch.num_rows, rows):
        yield batch.slice(start, rows)


def _csv_items(path: Path, limit: int, prog: _Progress) -> Iterator[tuple[str, Any, str | None, Any]]:
    enc, bom = sniff_encoding(path)
    fh = open_binary(path)
    fh.read(bom)
    with io.TextIOWrapper(fh, encoding=enc, newline="") as text:
        reader = csv.DictReader(text)
        start = 2  # a row's origin is its first physical line (rows may span several)
        prog.line = 1
        while True:
            # The field limit is process-wide: set before every row, so sources with other
            # limits read in between cannot change this one's. Over it, csv.Error: the rest
            # of the file cannot be resynchronised and is quarantined as one entry.
            csv.field_size_limit(limit)
            try:
                row = next(reader)
            except StopIteration:
                break
            prog.items += 1
            extra = row.pop(None, None)
            if extra:
                yield f"{start}", None, f"{len(extra)} more fields than the header", row
            else:
                yield f"{start}", row, None, row
            start = reader.line_num + 1
            prog.line = reader.line_num


def file_error_message(exc: BaseException, ftype: str, path: Path) -> str:
    """One line for a file that broke while being read."""
    name = path.name.lower()
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, EOFError) or (name.endswith(".gz") and isinstance(exc, (OSError, gzip.BadGzipFile))):
        return f"truncated or corrupt gzip data ({text})"
    if type(exc).__module__.startswith("zstandard") or (name.endswith((".zst", ".zstd")) and "zstd" in text.lower()):
        return f"not valid zstd data ({text})"
    if isinstance(exc, pa.ArrowException):
        return f"unreadable {ftype} file ({text})"
    if isinstance(exc, csv.Error):
        return f"CSV error: {text}"
    if isinstance(exc, UnicodeError):
        return f"cannot decode text: {text}"
    if isinstance(exc, RecursionError):
        return "nested too deep to read"
    if isinstance(exc, MemoryError):
        return "out of memory reading this file"
    return f"{type(exc).__name__}: {text}"


# ---------------------------------------------------------------- formats

USER_ROLES = {"human": "user", "user": "user", "prompter": "user"}
ASSISTANT_ROLES = {"gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant",
                   "bing": "assistant", "model": "assistant", "bot": "assistant", "function_call": "assistant"}
OTHER_ROLES = {"system": "system", "developer": "system", "observation": "tool", "tool": "tool",
               "function": "tool", "ipython": "tool", "function_response": "tool"}
ROLE_MAP = {**USER_ROLES, **ASSISTANT_ROLES, **OTHER_ROLES}


def _text(rec: dict, key: str, required: bool = True) -> str:
    if key not in rec or rec[key] is None:
        if required:
            raise RecordError(key, f"missing field `{key}`")
        return ""
    value = rec[key]
    if isinstance(value, str):
        return value
    raise RecordError(key, f"field `{key}` must be a string, got {type(value).__name__}")


def _join(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p)


def _content(value: Any, where: str) -> str:
    """A message's content: a string, or OpenAI-style parts [{type: text, text}]."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        texts = []
        for p in value:
            if p.get("type", "text") != "text" or not isinstance(p.get("text"), str):
                raise RecordError(where, f"`{where}` has a non-text part ({p.get('type')!r})")
            texts.append(p["text"])
        return "".join(texts)
    raise RecordError(where, f"`{where}` must be a string, got {type(value).__name__}")


def _map_role(role: Any, where: str) -> str:
    if not isinstance(role, str) or role.strip().lower() not in ROLE_MAP:
        raise RecordError(where, f"unknown role {role!r} in `{where}`")
    return ROLE_MAP[role.strip().lower()]


def _extra(turn: dict, skip: tuple[str, ...], add: dict | None = None) -> str | None:
    """The `extra` of a message: every key of the original turn but `skip`, with a value
    (null-valued keys carry nothing and are left out, so a Parquet struct's absent fields
    and a JSON turn without them give the same message), as sorted JSON; None when empty."""
    if not add and len(turn) <= len(skip) and all(k in skip for k in turn):
        return None  # the common case, checked without building a dict
    rest = {k: v for k, v in turn.items() if k not in skip and v is not None}
    if add:
        rest.update(add)
    return json.dumps(rest, ensure_ascii=False, sort_keys=True, default=str) if rest else None


def _msg(role: str, content: str, extra: str | None = None) -> dict:
    return {"role": role, "content": content, "extra": extra}


def _history(rec: dict) -> list[dict]:
    hist = rec.get("history") or []
    if not isinstance(hist, list):
        raise RecordError("history", "`history` must be a list of [user, assistant] pairs")
    out = []
    for i, pair in enumerate(hist):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RecordError(f"history[{i}]", f"`history[{i}]` must be a [user, assistant] pair of strings")
        out += [_msg("user", pair[0]), _msg("assistant", pair[1])]
    return out


def convert_alpaca(rec: dict) -> tuple[list[dict], set[str]]:
    msgs = []
    system = _text(rec, "system", required=False)
    if system:
        msgs.append(_msg("system", system))
    msgs += _history(rec)
    msgs.append(_msg("user", _join(_text(rec, "instruction"), _text(rec, "input", required=False))))
    msgs.append(_msg("assistant", _text(rec, "output")))
    return msgs, {"system", "history", "instruction", "input", "output"}


def _function_call(value: Any) -> dict | None:
    """A ShareGPT `function_call` turn's value as OpenAI `tool_calls`, when it is a JSON
    object naming the function ({"name", "arguments"}); else None (kept as text)."""
    if not isinstance(value, str):
        return None
    try:
        call = json.loads(value)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not (isinstance(call, dict) and isinstance(call.get("name"), str)):
        return None
    fn = {"name": call["name"], "arguments": call.get("arguments", {})}
    return {"tool_calls": [{"type": "function", "function": fn}]}


def convert_sharegpt(rec: dict) -> tuple[list[dict], set[str]]:
    conv = rec.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise RecordError("conversations", "`conversations` must be a non-empty list")
    msgs = []
    system = rec.get("system")
    if isinstance(system, str) and system:
        msgs.append(_msg("system", system))
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict):
            raise RecordError(f"conversations[{i}]", f"`conversations[{i}]` must be an object")
        role_key = "from" if "from" in turn else "role"
        content_key = "value" if "value" in turn else "content"
        raw_role = turn.get(role_key)
        role = _map_role(raw_role, f"conversations[{i}].{role_key}")
        value = turn.get(content_key)
        calls = _function_call(value) if str(raw_role).strip().lower() == "function_call" else None
        if calls is not None:
            msgs.append(_msg(role, "", _extra(turn, (role_key, content_key), calls)))
            continue
        content = _content(value, f"conversations[{i}].{content_key}")
        msgs.append(_msg(role, content, _extra(turn, (role_key, content_key))))
    return msgs, {"conversations", "system"}


def convert_messages(rec: dict) -> tuple[list[dict], set[str]]:
    """OpenAI messages. Every per-turn key but role/content (tool_calls, tool_call_id,
    name, anything else) goes to the message's `extra`; an assistant turn that only calls
    tools has content "" and its calls in `extra`, as chat templates expect them."""
    conv = rec.get("messages")
    if not isinstance(conv, list) or not conv:
        raise RecordError("messages", "`messages` must be a non-empty list")
    msgs = []
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict):
            raise RecordError(f"messages[{i}]", f"`messages[{i}]` must be an object")
        role = _map_role(turn.get("role"), f"messages[{i}].role")
        content = _content(turn.get("content"), f"messages[{i}].content")
        msgs.append(_msg(role, content, _extra(turn, ("role", "content"))))
    return msgs, {"messages"}


def convert_dolly(rec: dict) -> tuple[list[dict], set[str]]:
    user = _join(_text(rec, "instruction"), _text(rec, "context", required=False))
    return [_msg("user", user), _msg("assistant", _text(rec, "response"))], {"instruction", "context", "response"}


def convert_prompt_completion(rec: dict) -> tuple[list[dict], set[str]]:
    return [_msg("user", _text(rec, "prompt")), _msg("assistant", _text(rec, "completion"))], {"prompt", "completion"}


CONVERTERS: dict[str, Callable[[dict], tuple[list[dict], set[str]]]] = {
    "alpaca": convert_alpaca,
    "sharegpt": convert_sharegpt,
    "messages": convert_messages,
    "dolly": convert_dolly,
    "prompt_completion": convert_prompt_completion,
}


def detect_format(items: list[dict]) -> str:
    """Guess the format from the keys of the first records (majority vote)."""
    votes: dict[str, int] = {}
    for rec in items:
        if not isinstance(rec, dict):
            continue
        keys = set(rec)
        if "conversations" in keys:
            fmt = "sharegpt"
        elif "messages" in keys:
            fmt = "messages"
        elif {"instruction", "response"} <= keys:
            fmt = "dolly"
        elif {"instruction", "output"} <= keys:
            fmt = "alpaca"
        elif {"prompt", "completion"} <= keys:
            fmt = "prompt_completion"
        else:
            continue
        votes[fmt] = votes.get(fmt, 0) + 1
    if not votes:
        raise RecordError("format", "could not detect the format from the first records; set `format`")
    return max(sorted(votes), key=lambda k: votes[k])


# ---------------------------------------------------------------- column-wise JSONL

# Flat formats: (required string fields, optional string fields, how the user turn is
# joined, the assistant field, fields a row must not carry for the fast path).
FLAT = {
    "alpaca": (("instruction", "output"), ("input", "system"), ("instruction", "input"), "output", ("history",)),
    "dolly": (("instruction", "response"), ("context",), ("instruction", "context"), "response", ()),
    "prompt_completion": (("prompt", "completion"), (), ("prompt",), "completion", ()),
}
FLAT["messages"] = (("messages",), (), (), "", ())  # turns of {role, content} strings only
USED = {"messages": {"messages"}, "alpaca": {"system", "history", "instruction", "input", "output"},
        "dolly": {"instruction", "context", "response"}, "prompt_completion": {"prompt", "completion"}}
_PLAIN_KEY = re.compile(r'[^"\\\x00-\x1f]+\Z')
_KEY = r'"(?:[^"\\]|\\.)*"\s*:'
_SURROGATE = r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}"


def _fast_flat(lines: list[bytes], fmt: str, cfg: SourceConfig, task_key: str | None
               ) -> tuple[pl.DataFrame | None, list[int]]:
    """Parse a block of JSONL lines column-wise. Returns (records of the rows it vouches
    for, with their block position in `_pos`; positions left to the per-line path).

    polars' JSON decoding is not byte-exact with `json.loads` everywhere: it coerces a number
    to a string (and true, 1.5 or 1e2 to an integer) to fit the schema, drops keys the schema
    lacks, keeps the first of duplicate keys, cannot tell a missing key from null, and
    decodes lone surrogates differently. Each is detected on the raw lines (keys counted at
    every depth, string values counted, integer literals matched) and such rows, or the
    whole block when its columns have other types, go per-line. The trade: a block whose
    rows differ in keys or types mostly goes per-line (correct, only slower)."""
    n = len(lines)
    everything = list(range(n))
    raw = pl.Series("raw", lines, dtype=pl.Binary).cast(pl.String, strict=False)
    if raw.null_count():
        return None, everything
    try:
        # The schema from a spread sample of the block, then every line decoded with it:
        # several times faster than inferring over the block. Keys the sample missed are
        # dropped by the decoder, numbers it typed as strings coerced: both are caught by the
        # key counts below, and those rows go per-line.
        sample = lines[:: max(1, n // 256)]
        schema = pl.read_ndjson(io.BytesIO(b"".join(ln if ln.endswith(b"\n") else ln + b"\n" for ln in sample)),
                                infer_schema_length=None).schema
        df = raw.str.json_decode(pl.Struct(schema)).struct.unnest()
    except Exception:  # noqa: BLE001 - any line polars cannot parse: the per-line path says which
        return None, everything
    if df.height != n:
        return None, everything
    required, optional, user_parts, answer, absent = FLAT[fmt]
    used = USED[fmt]
    cols = set(df.columns)
    if not set(required) <= cols:
        return None, everything
    meta_keys = sorted(k for k in cols if k not in used and k != task_key)
    checked = [k for k in cols if k not in absent]
    turns = fmt == "messages"
    if turns and not _plain_turns(df.schema["messages"]):
        return None, everything
    for k in checked:
        dtype = df.schema[k]
        if turns and k == "messages":
            continue
        text_col = k in used or k == task_key
        if not _PLAIN_KEY.match(k) or (text_col and dtype not in (pl.String, pl.Null)) or \
                (not text_col and dtype not in (pl.String, pl.Int64, pl.Boolean)):
            return None, everything
    # Every key of the line, at any depth (a JSON string token followed by a colon; leftmost
    # matching keeps it aligned with the real tokens), and those whose value is a string.
    # Equal to the row's non-null columns, and its non-null String columns: no duplicate key,
    # no nested object, no number coerced to a string. Null or missing: per-line.
    n_keys = raw.str.count_matches(_KEY)
    n_str = raw.str.count_matches(_KEY + r'\s*"')
    strings = [k for k in df.columns if df.schema[k] == pl.String]
    el = pl.element()
    inner = (pl.col("messages").list.eval(sum(el.struct.field(f.name).is_not_null().cast(pl.UInt32)
                                              for f in df.schema["messages"].inner.fields)).list.sum()
             .fill_null(0).cast(pl.UInt32) if turns else pl.lit(0, pl.UInt32))
    counts = df.select((pl.sum_horizontal([pl.col(k).is_not_null() for k in df.columns]).cast(pl.UInt32) + inner)
                       .alias("all"),
                       (pl.sum_horizontal([pl.col(k).is_not_null() for k in strings] or [pl.lit(0)])
                        .cast(pl.UInt32) + inner).alias("str"))
    ok = (~raw.str.contains(_SURROGATE) & (n_keys == counts["all"]) & (n_str == counts["str"]))
    for k in required + tuple(meta_keys):
        ok = ok & df[k].is_not_null()
    for k in meta_keys:  # the decoder turns true, 1.5 and 1e2 into integers: the raw value must be one
        if df.schema[k] == pl.Int64:
            ok = ok & (raw.str.count_matches(re.escape(json.dumps(k)) + r"\s*:\s*-?(?:0|[1-9][0-9]*)\s*[,}]") == 1)
    for k in absent:
        if k in cols:
            ok = ok & df[k].is_null()
    if task_key is not None:
        if task_key not in cols:
            return None, everything
        ok = ok & (df[task_key].str.strip_chars().str.len_chars() > 0).fill_null(False)
    if turns:  # a non-empty list whose every role is known
        known = pl.col("messages").list.eval(el.struct.field("role").str.strip_chars().str.to_lowercase()
                                             .is_in(list(ROLE_MAP)).fill_null(False).all()).list.first()
        ok = ok & df.select(((pl.col("messages").list.len() > 0) & known).fill_null(False).alias("k"))["k"]
    ok_list = ok.to_list()
    rest = [i for i, good in enumerate(ok_list) if not good]
    df = df.with_row_index("_pos").filter(ok)
    if df.height == 0:
        return None, rest

    def opt(k: str) -> pl.Expr:
        return pl.col(k).fill_null("") if k in cols else pl.lit("")

    if turns:
        messages = _plain_messages(df, cfg.system)
    else:
        user = pl.concat_str([pl.when(opt(k) != "").then(opt(k)) for k in user_parts], separator="\n\n",
                             ignore_nulls=True)
        system = opt("system") if "system" in optional else pl.lit("")
        if cfg.system:
            system = pl.when(system != "").then(system).otherwise(pl.lit(cfg.system))
        messages = _message_lists(df, [("system", system, system != ""), ("user", user, pl.lit(True)),
                                       ("assistant", pl.col(answer), pl.lit(True))])
    pieces = []
    for k in meta_keys:
        value = json_string(pl.col(k)) if df.schema[k] == pl.String else pl.col(k).cast(pl.String)
        pieces.append(pl.lit(json.dumps(k, ensure_ascii=False) + ": ") + value)
    meta = (pl.lit("{") + pl.concat_str(pieces, separator=", ") + pl.lit("}")) if pieces else pl.lit("{}")
    if cfg.task:
        task = pl.lit(cfg.task)
    elif task_key is not None:
        task = pl.col(task_key).str.strip_chars()
    else:
        task = pl.lit(cfg.name)
    out = df.select("_pos", pl.lit(cfg.name).alias("source"), task.alias("task"), meta.alias("meta"))
    out = out.with_columns(messages)
    out = out.with_columns(canonical_turns(pl.col("messages")).alias("_canon"))
    out = out.with_columns(ids_from_canonical(out["_canon"])).drop("_canon")
    return out, rest


def _plain_turns(dtype: pl.DataType) -> bool:
    """A messages column polars typed as a list of {role, content} string structs (no other
    per-turn key, so no `extra` to build: those records take the per-line path)."""
    if not isinstance(dtype, pl.List) or not isinstance(dtype.inner, pl.Struct):
        return False
    fields = {f.name: f.dtype for f in dtype.inner.fields}
    return "role" in fields and set(fields) <= {"role", "content"} and \
        all(d in (pl.String, pl.Null) for d in fields.values())


def _plain_messages(df: pl.DataFrame, system: str | None) -> pl.Series:
    """`convert_messages` column-wise for plain turns: roles mapped, null content as ""."""
    el = pl.element()
    fields = {f.name for f in df.schema["messages"].inner.fields}
    role = el.struct.field("role").str.strip_chars().str.to_lowercase().replace_strict(ROLE_MAP, return_dtype=pl.String)
    content = el.struct.field("content").fill_null("") if "content" in fields else pl.lit("")
    msgs = df.select(pl.col("messages").list.eval(pl.struct(role.alias("role"), content.cast(pl.String).alias("content"),
                                                            pl.lit(None, pl.String).alias("extra")))
                     .cast(pl.List(POLARS_MESSAGE)))["messages"]
    if system:
        has = msgs.list.eval((el.struct.field("role") == "system").any()).list.first()
        head = pl.Series([[{"role": "system", "content": system, "extra": None}]], dtype=pl.List(POLARS_MESSAGE))
        msgs = pl.DataFrame({"m": msgs, "h": has}).select(
            pl.when(pl.col("h")).then(pl.col("m")).otherwise(pl.concat_list([pl.lit(head).first(), pl.col("m")]))
        )["m"]
    return msgs.alias("messages")


def _message_lists(df: pl.DataFrame, turns: list[tuple[str, pl.Expr, pl.Expr]]) -> pl.Series:
    """The `messages` column from per-row turn expressions (role, content, present?), built
    as one flat Arrow struct array plus list offsets: polars' concat_list of structs costs
    about ten times as much."""
    n = df.height
    parts, counts = [], []
    for order, (role, content, present) in enumerate(turns):
        frame = df.select(pl.int_range(n, dtype=pl.Int64).alias("row"), content.alias("content"),
                          present.alias("present")).filter(pl.col("present"))
        parts.append(frame.select("row", pl.lit(order, pl.Int8).alias("order"), pl.lit(role).alias("role"),
                                  "content"))
        counts.append(df.with_columns(present.cast(pl.Int32).alias("__c"))["__c"])
    flat = pl.concat(parts).sort("row", "order")
    per_row = sum(counts[1:], counts[0]) if counts else pl.Series("c", [0] * n, pl.Int32)
    offsets = pa.array([0] + per_row.cum_sum().to_list(), pa.int32())
    roles, contents = flat["role"].to_arrow(), flat["content"].to_arrow()
    structs = pa.StructArray.from_arrays([roles.cast(pa.string()), contents.cast(pa.string()),
                                          pa.nulls(len(flat), pa.string())],
                                         names=["role", "content", "extra"])
    return pl.Series("messages", pa.ListArray.from_arrays(offsets, structs)).cast(pl.List(POLARS_MESSAGE))


# ---------------------------------------------------------------- sources


class SourceStream:
    """Iterator over one source's records in bounded batches: each step yields
    `(table, quarantine)`, a canonical record table (POLARS_SCHEMA) of at most `batch_rows`
    rows and the quarantine entries of the same block of input, in input order.

    Contract: at most about one block (`batch_rows` input rows; for a JSON array file or a
    compressed Parquet/Arrow file, that file) is held at a time; batches of a file come in
    file order, files in `source_files` order; concatenating every table and every
    quarantine list gives exactly `read_source`'s result. `format` (auto resolved) and
    `files` (as shown in origins) are filled in as the files are reached."""

    def __init__(self, cfg: SourceConfig, base_dir: Path, batch_rows: int = DEFAULT_BATCH_ROWS,
                 log: Callable[[str], None] = lambda s: None, display_root: Path | None = None):
        self.cfg, self.base_dir, self.batch_rows, self.log = cfg, base_dir, max(1, int(batch_rows)), log
        self.root = display_root or base_dir
        self.format = cfg.format
        self.files: list[str] = []
        self._it = self._run()

    def __iter__(self) -> SourceStream:
        return self

    def __next__(self) -> tuple[pl.DataFrame, list[dict]]:
        return next(self._it)

    # -- per record
    def _entry(self, shown: str, loc: str, field_name: str | None, error: str, raw: Any) -> dict:
        return {"source": self.cfg.name, "file": shown, "line": loc, "field": field_name, "error": error,
                "raw": _preview(raw)}

    def _convert(self, entries: list, shown: str, converter, build, index0: int
                 ) -> tuple[list[tuple[int, dict]], list[tuple[int, dict]]]:
        """Per-record conversion of (pos, (loc, item, error, raw)) entries:
        ([(pos, record row)], [(pos, quarantine entry)])."""
        cfg, fmt = self.cfg, self.format
        rows, quarantine = [], []
        task_key = None if cfg.task else (cfg.task_field or ("category" if fmt == "dolly" else None))
        for pos, (loc, item, error, raw) in entries:
            field_name = None
            if error is None:
                try:
                    if not isinstance(item, dict):
                        raise RecordError("<record>", f"a record must be an object, got {type(item).__name__}")
                    msgs, used = converter(item, index0 + pos) if build else converter(item)
                    task = _task(cfg, item, fmt)
                    if cfg.system and not any(m["role"] == "system" for m in msgs):
                        msgs = [_msg("system", cfg.system)] + msgs
                    meta = {k: v for k, v in item.items() if k not in used and k != task_key}
                    row = {"id": None, "source": cfg.name, "task": task, "messages": msgs,
                           "meta": json.dumps(meta, ensure_ascii=False, sort_keys=True, default=str),
                           "origin": f"{shown}:{loc}"}
                except RecordError as exc:
                    error, field_name = str(exc), exc.field
                except KeyError as exc:  # task templates name a missing field this way
                    error, field_name = f"missing field {exc.args[0]!r}", str(exc.args[0])
                except RecursionError:
                    error = "record nested too deep"
                except (TypeError, ValueError) as exc:
                    error = f"{type(exc).__name__}: {exc}"
            if error is not None:
                quarantine.append((pos, self._entry(shown, loc, field_name, error, raw)))
            else:
                rows.append((pos, row))
        return rows, quarantine

    # -- the driver
    def _builder(self):
        cfg = self.cfg
        if cfg.format != "task":
            return None
        from curate.read.task_templates import build_messages, template_fields

        used_fields = template_fields(cfg, self.base_dir)

        def build(rec, index):
            return [_msg(m["role"], m["content"], m.get("extra")) for m in
                    build_messages(rec, cfg, index, base_dir=self.base_dir)], used_fields

        return build

    def _run(self) -> Iterator[tuple[pl.DataFrame, list[dict]]]:
        cfg = self.cfg
        build = self._builder()
        for path, shown in self.shown_files():
            self.files.append(shown)
            try:
                ftype = file_type(path, cfg.file_type)
            except RecordError as exc:
                yield empty_records(), [self._entry(shown, "#file", "path", str(exc), b"")]
                continue
            yield from self._file(path, shown, ftype, build)

    def shown_files(self) -> list[tuple[Path, str]]:
        """The source's files in reading order, each with its name as shown in origins."""
        cfg = self.cfg
        hub = local_path(cfg, self.base_dir) if cfg.path.startswith(HF_PREFIX) else None
        # A hub file is shown as the source path and its place in the snapshot.
        return [(path, f"{cfg.path}:{_display(path, hub)}" if hub is not None else _display(path, self.root))
                for path in source_files(cfg, self.base_dir, self.log)]

    def file_batches(self, path: Path, shown: str, span: tuple[int, int, int] | None = None,
                     first_index: int = 0) -> Iterator[tuple[pl.DataFrame, list[dict]]]:
        """One file's (table, quarantine) batches, as `iter_source` gives them for that
        file, with `format` already resolved (curate/read/ranges.py). `span`: only a line
        range of an uncompressed UTF-8 JSONL file (see `_lines`), whose first non-blank line
        is the file's record number `first_index` (task templates pick phrasings by it)."""
        try:
            ftype = file_type(path, self.cfg.file_type)
        except RecordError as exc:
            yield empty_records(), [self._entry(shown, "#file", "path", str(exc), b"")]
            return
        yield from self._file(path, shown, ftype, self._builder(), span, first_index)

    def _file(self, path: Path, shown: str, ftype: str, build, span: tuple[int, int, int] | None = None,
              index: int = 0) -> Iterator[tuple[pl.DataFrame, list[dict]]]:
        cfg = self.cfg
        prog = _Progress()
        # index: the record's index in its file (task templates pick phrasings by it)
        got_any = False
        try:
            blocks = self._blocks(path, ftype, prog, span)
            for block in blocks:
                got_any = True
                if self.format == "auto":
                    items = _first_items(block, cfg.max_record_bytes)
                    if not items:  # nothing decodable yet: the entries carry their own errors
                        parsed = [_parse_line(int(e[0]), e[3], len(e[3]), cfg.max_record_bytes) if e[1] is _RAW else e
                                  for e in block]
                        yield empty_records(), [self._entry(shown, e[0], None, e[2], e[3]) for e in parsed]
                        index += len(block)
                        continue
                    try:
                        self.format = detect_format(items)
                    except RecordError as exc:
                        yield empty_records(), [self._entry(shown, "#file", "format", f"{exc}", b"")]
                        return
                    self.log(f"source {cfg.name!r}: detected format {self.format!r} from {shown}")
                yield self._block(block, shown, ftype, build, index)
                index += len(block)
        except Exception as exc:  # noqa: BLE001 - one broken file never stops the run
            where = f"{prog.line + 1}" if prog.line else ("#file" if not prog.items else f"#{prog.items}")
            message = (f"{file_error_message(exc, ftype, path)}; the {prog.items:,} records before it were read, "
                       f"the rest of the file was not")
            self.log(f"source {cfg.name!r}: {shown}: {message}")
            yield empty_records(), [self._entry(shown, where, None, message, b"")]
            return
        if not got_any:
            self.log(f"source {cfg.name!r}: {shown} holds no records (empty file)")

    def _blocks(self, path: Path, ftype: str, prog: _Progress, span: tuple[int, int, int] | None = None
                ) -> Iterator[list]:
        """Blocks of at most batch_rows entries (loc, item, error, raw); for JSONL whose
        format allows it, entries of good lines hold the raw bytes (item is `_RAW`) and are
        parsed column-wise in `_block`. When the file breaks, the entries read before the
        break are yielded first, then the error is raised."""
        limit = self.cfg.max_record_bytes
        block: list = []
        # A JSONL block is a list of one small tuple per line that all stay alive until the
        # block is parsed: the cyclic GC would scan them again and again (generation 0
        # every 700 tuples, older generations as they are promoted) and can free none. It
        # is paused while a block fills and enabled again for every yield, so the caller
        # never runs with it paused and nothing accumulates across blocks.
        was_enabled = gc.isenabled()
        try:
            if ftype == "jsonl":
                gc.disable()
                for n, line, size in _lines(path, limit, prog, span):
                    prog.items += 1
                    block.append((f"{n}", _RAW, None, line) if line is not None else _parse_line(n, None, size, limit))
                    if len(block) >= self.batch_rows:
                        if was_enabled:
                            gc.enable()
                        yield block
                        gc.disable()
                        block = []
                if was_enabled:
                    gc.enable()
            else:
                for entry in iter_items(path, ftype, limit, self.batch_rows, prog):
                    block.append(entry)
                    if len(block) >= self.batch_rows:
                        yield block
                        block = []
        except Exception:
            if was_enabled:
                gc.enable()
            if block:
                yield block
            raise
        finally:
            if was_enabled:
                gc.enable()
        if block:
            yield block

    def _block(self, block: list, shown: str, ftype: str, build, index0: int) -> tuple[pl.DataFrame, list[dict]]:
        # The per-line path allocates millions of small dicts and lists that all stay alive
        # until the block's table is built: the cyclic GC would rescan them again and again
        # (measured: ~40% of the per-line time) and can free none. Paused for one block; it
        # runs as usual in between, so nothing accumulates across blocks.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._block_inner(block, shown, ftype, build, index0)
        finally:
            if was_enabled:
                gc.enable()

    def _block_inner(self, block: list, shown: str, ftype: str, build, index0: int
                     ) -> tuple[pl.DataFrame, list[dict]]:
        cfg, fmt = self.cfg, self.format
        converter = build if build else CONVERTERS[fmt]
        frames: list[pl.DataFrame] = []
        pending: list[tuple[int, tuple]] = []
        raw_pos = [i for i, e in enumerate(block) if e[1] is _RAW]
        if raw_pos and fmt in FLAT and build is None:
            task_key = None if cfg.task else (cfg.task_field or ("category" if fmt == "dolly" else None))
            for start in range(0, len(raw_pos), PARSE_BLOCK):
                part = raw_pos[start:start + PARSE_BLOCK]
                try:
                    fast, rest = _fast_flat([block[i][3] for i in part], fmt, cfg, task_key)
                except Exception:  # noqa: BLE001 - data polars trips on: the per-line path decides
                    fast, rest = None, list(range(len(part)))
                if fast is not None and fast.height:
                    pos = pl.Series([part[i] for i in fast["_pos"].to_list()], dtype=pl.Int64)
                    locs = [block[p][0] for p in pos.to_list()]
                    frames.append(fast.with_columns(pos.alias("_pos"),
                                                    pl.Series("origin", [f"{shown}:{x}" for x in locs])))
                pending += [(part[i], block[part[i]]) for i in rest]
        else:
            pending += [(i, block[i]) for i in raw_pos]
        pending += [(i, e) for i, e in enumerate(block) if e[1] is not _RAW]
        pending.sort(key=lambda x: x[0])
        pending = [(i, _parse_line(int(e[0]), e[3], len(e[3]), cfg.max_record_bytes) if e[1] is _RAW else e)
                   for i, e in pending]
        rows, quarantine = self._convert(pending, shown, converter, build, index0)
        if rows:
            cols = {k: [r[k] for _, r in rows] for k in RECORD_SCHEMA.names}
            slow = recompute_ids(pl.from_arrow(pa.table(cols, schema=RECORD_SCHEMA)))  # ids column-wise
            frames.append(slow.with_columns(pl.Series("_pos", [p for p, _ in rows], dtype=pl.Int64)))
        quarantine.sort(key=lambda x: x[0])
        if not frames:
            return empty_records(), [q for _, q in quarantine]
        names = list(POLARS_SCHEMA)
        frames = [f.select(*names, pl.col("_pos").cast(pl.Int64)) for f in frames]
        table = pl.concat(frames, how="vertical").sort("_pos").drop("_pos") if len(frames) > 1 else frames[0].drop("_pos")
        return table, [q for _, q in quarantine]


_RAW = object()  # an unparsed JSONL line waiting for the column-wise parser


def _first_items(block: list, limit: int, n: int = 20) -> list:
    """The first `n` decodable records of a block, for format detection."""
    items = []
    for e in block:
        if e[1] is _RAW:
            e = _parse_line(int(e[0]), e[3], len(e[3]), limit)
        if e[2] is None:
            items.append(e[1])
            if len(items) >= n:
                break
    return items


def iter_source(cfg: SourceConfig, base_dir: Path, batch_rows: int = DEFAULT_BATCH_ROWS,
                log: Callable[[str], None] = lambda s: None, display_root: Path | None = None) -> SourceStream:
    """One source as an iterator of `(records table, quarantine list)` in bounded batches;
    see `SourceStream` for the contract."""
    return SourceStream(cfg, base_dir, batch_rows, log, display_root)


def read_source(cfg: SourceConfig, base_dir: Path, log: Callable[[str], None] = lambda s: None,
                display_root: Path | None = None, batch_rows: int = DEFAULT_BATCH_ROWS) -> SourceRead:
    """Read every file of one `[[sources]]` entry into the canonical record table: the
    concatenation of `iter_source`."""
    stream = iter_source(cfg, base_dir, batch_rows, log, display_root)
    tables, quarantine = [], []
    for table, q in stream:
        if table.height:
            tables.append(table)
        quarantine += q
    table = pl.concat(tables, how="vertical") if tables else empty_records()
    return SourceRead(name=cfg.name, format=stream.format, files=stream.files, table=table, quarantine=quarantine)


def _task(cfg: SourceConfig, rec: dict, fmt: str) -> str:
    if cfg.task:
        return cfg.task
    key = cfg.task_field or ("category" if fmt == "dolly" else None)
    if key:
        value = rec.get(key)
        if not isinstance(value, str) or not value.strip():
            raise RecordError(key, f"task field `{key}` is missing or empty")
        return value.strip()
    return cfg.task_template if fmt == "task" and cfg.task_template else cfg.name


def _display(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def read_sources(sources: list[SourceConfig], base_dir: Path, log=lambda s: None) -> list[SourceRead]:
    return [read_source(s, base_dir, log) for s in sources]
