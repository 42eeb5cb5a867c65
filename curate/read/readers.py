"""Readers: files in the formats users actually have -> the canonical record table.

Two independent axes:
  file type  jsonl | json (array, or an object holding one list) | parquet | csv | arrow,
             each optionally `.gz` or `.zst` compressed; detected from the extension.
  format     alpaca | sharegpt | messages | dolly | prompt_completion | task | auto

Parsing a record is a Python call per record (json.loads, field checks) by necessity; the
table is then built column-wise in Arrow. A record that cannot be parsed never stops the
run: it is quarantined with its file, line, field and error, and counted as read.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import polars as pl
import pyarrow as pa

from curate.read.sources import SourceConfig, source_files
from curate.contract.schema import RECORD_SCHEMA, conversation_id, empty_records

COMPRESSIONS = (".gz", ".zst", ".zstd")
FILE_TYPES = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".pq": "parquet",
    ".csv": "csv", ".arrow": "arrow", ".feather": "arrow", ".ipc": "arrow",
}
RAW_PREVIEW = 1000  # characters of a quarantined input kept for inspection


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


# ---------------------------------------------------------------- file types


def file_type(path: Path, override: str | None = None) -> str:
    if override:
        return override
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes.pop()
    if suffixes and suffixes[-1] in FILE_TYPES:
        return FILE_TYPES[suffixes[-1]]
    raise RecordError("path", f"{path}: cannot tell the file type from its extension (set `file_type`)")


def open_binary(path: Path) -> io.BufferedIOBase:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith((".zst", ".zstd")):
        import zstandard

        raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), read_across_frames=True, closefd=True)
        return io.BufferedReader(raw)  # line iteration needs a buffered reader
    return open(path, "rb")


def _preview(raw: Any) -> str:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    elif not isinstance(raw, str):
        raw = json.dumps(raw, ensure_ascii=False, default=str)
    return raw[:RAW_PREVIEW]


def iter_items(path: Path, ftype: str) -> Iterator[tuple[str, Any, str | None, str]]:
    """Yield (location, item, error, raw) for every input item of a file. `location` is
    "line N" or "#index"; `error` is set when the item itself cannot be decoded."""
    if ftype == "jsonl":
        with open_binary(path) as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    yield f"{n}", None, f"invalid UTF-8 at byte {exc.start}", line
                    continue
                try:
                    yield f"{n}", json.loads(text), None, text
                except json.JSONDecodeError as exc:
                    yield f"{n}", None, f"bad JSON: {exc.msg} at column {exc.colno}", text
    elif ftype == "json":
        with open_binary(path) as fh:
            data = fh.read()
        try:
            obj = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            yield "#file", None, f"invalid UTF-8 at byte {exc.start}", data
            return
        except json.JSONDecodeError as exc:
            # A JSON array that does not parse is often JSON Lines with a .json name.
            items = list(_try_jsonl(data))
            if items:
                yield from items
                return
            yield f"{exc.lineno}", None, f"bad JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", data
            return
        if isinstance(obj, dict):
            lists = [v for v in obj.values() if isinstance(v, list)]
            if len(lists) != 1:
                yield "#file", None, "a JSON object file must hold exactly one list of records", data
                return
            obj = lists[0]
        if not isinstance(obj, list):
            yield "#file", None, f"expected a JSON array of records, got {type(obj).__name__}", data
            return
        for i, item in enumerate(obj):
            yield f"#{i}", item, None, item
    elif ftype in ("parquet", "arrow"):
        import pyarrow.ipc
        import pyarrow.parquet as pq

        with open_binary(path) as fh:
            buf = fh.read()
        reader = pq.read_table(pa.BufferReader(buf)) if ftype == "parquet" else _read_ipc(buf)
        for i, row in enumerate(reader.to_pylist()):
            yield f"#{i}", row, None, row
    elif ftype == "csv":
        with open_binary(path) as fh:
            data = fh.read()
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            yield "#file", None, f"invalid UTF-8 at byte {exc.start}", data
            return
        reader = csv.DictReader(io.StringIO(text, newline=""))
        start = 2  # a row's origin is its first physical line (rows may span several)
        for row in reader:
            extra = row.pop(None, None)
            if extra:
                yield f"{start}", None, f"{len(extra)} more fields than the header", row
            else:
                yield f"{start}", row, None, row
            start = reader.line_num + 1
    else:  # pragma: no cover - file_type() already refused it
        raise RecordError("file_type", f"unknown file type {ftype!r}")


def _read_ipc(buf: bytes) -> pa.Table:
    import pyarrow.ipc

    try:
        return pyarrow.ipc.open_file(pa.BufferReader(buf)).read_all()
    except pa.ArrowInvalid:
        return pyarrow.ipc.open_stream(pa.BufferReader(buf)).read_all()


def _try_jsonl(data: bytes) -> Iterator[tuple[str, Any, str | None, str]]:
    lines = data.split(b"\n")
    parsed = []
    good = 0
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
            parsed.append((f"{n}", json.loads(text), None, text))
            good += 1
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            parsed.append((f"{n}", None, f"bad JSON line: {exc}", line))
    # Only call it JSON Lines when most lines parse on their own.
    return iter(parsed) if good >= max(2, len(parsed) // 2) else iter(())


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


def _history(rec: dict) -> list[dict]:
    hist = rec.get("history") or []
    if not isinstance(hist, list):
        raise RecordError("history", "`history` must be a list of [user, assistant] pairs")
    out = []
    for i, pair in enumerate(hist):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RecordError(f"history[{i}]", f"`history[{i}]` must be a [user, assistant] pair of strings")
        out += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return out


def convert_alpaca(rec: dict) -> tuple[list[dict], set[str]]:
    msgs = []
    system = _text(rec, "system", required=False)
    if system:
        msgs.append({"role": "system", "content": system})
    msgs += _history(rec)
    msgs.append({"role": "user", "content": _join(_text(rec, "instruction"), _text(rec, "input", required=False))})
    msgs.append({"role": "assistant", "content": _text(rec, "output")})
    return msgs, {"system", "history", "instruction", "input", "output"}


def convert_sharegpt(rec: dict) -> tuple[list[dict], set[str]]:
    conv = rec.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise RecordError("conversations", "`conversations` must be a non-empty list")
    msgs = []
    system = rec.get("system")
    if isinstance(system, str) and system:
        msgs.append({"role": "system", "content": system})
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict):
            raise RecordError(f"conversations[{i}]", f"`conversations[{i}]` must be an object")
        role_key = "from" if "from" in turn else "role"
        content_key = "value" if "value" in turn else "content"
        role = _map_role(turn.get(role_key), f"conversations[{i}].{role_key}")
        msgs.append({"role": role, "content": _content(turn.get(content_key), f"conversations[{i}].{content_key}")})
    return msgs, {"conversations", "system"}


def convert_messages(rec: dict) -> tuple[list[dict], set[str]]:
    conv = rec.get("messages")
    if not isinstance(conv, list) or not conv:
        raise RecordError("messages", "`messages` must be a non-empty list")
    msgs = []
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict):
            raise RecordError(f"messages[{i}]", f"`messages[{i}]` must be an object")
        role = _map_role(turn.get("role"), f"messages[{i}].role")
        content = _content(turn.get("content"), f"messages[{i}].content")
        if role == "assistant" and not content and turn.get("tool_calls"):
            content = json.dumps(turn["tool_calls"], ensure_ascii=False, sort_keys=True)
        msgs.append({"role": role, "content": content})
    return msgs, {"messages"}


def convert_dolly(rec: dict) -> tuple[list[dict], set[str]]:
    user = _join(_text(rec, "instruction"), _text(rec, "context", required=False))
    return [{"role": "user", "content": user}, {"role": "assistant", "content": _text(rec, "response")}], {
        "instruction", "context", "response"}


def convert_prompt_completion(rec: dict) -> tuple[list[dict], set[str]]:
    return [{"role": "user", "content": _text(rec, "prompt")},
            {"role": "assistant", "content": _text(rec, "completion")}], {"prompt", "completion"}


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


# ---------------------------------------------------------------- sources


def read_source(cfg: SourceConfig, base_dir: Path, log: Callable[[str], None] = lambda s: None,
                display_root: Path | None = None) -> SourceRead:
    """Read every file of one `[[sources]]` entry into the canonical record table."""
    files = source_files(cfg, base_dir)
    root = display_root or base_dir
    columns: dict[str, list] = {k: [] for k in RECORD_SCHEMA.names}
    quarantine: list[dict] = []
    fmt = cfg.format
    build = None
    if fmt == "task":
        from curate.read.task_templates import build_messages, template_fields

        used_fields = template_fields(cfg, base_dir)

        def build(rec, index):
            return build_messages(rec, cfg, index, base_dir=base_dir), used_fields

    shown = []
    for path in files:
        shown_path = _display(path, root)
        shown.append(shown_path)
        ftype = file_type(path, cfg.file_type)
        items = iter_items(path, ftype)
        pending: list = []
        if fmt == "auto":
            # Look at the first decodable records to choose, then replay them.
            for entry in items:
                pending.append(entry)
                if sum(1 for e in pending if e[2] is None) >= 20:
                    break
            fmt = detect_format([e[1] for e in pending if e[2] is None])
            log(f"source {cfg.name!r}: detected format {fmt!r} from {shown_path}")
        converter = build if build else CONVERTERS[fmt]
        index = 0
        for loc, item, error, raw in _chain(pending, items):
            origin = f"{shown_path}:{loc}"
            field_name = None
            if error is None:
                try:
                    if not isinstance(item, dict):
                        raise RecordError("<record>", f"a record must be an object, got {type(item).__name__}")
                    msgs, used = converter(item, index) if build else converter(item)
                    task = _task(cfg, item, fmt)
                except RecordError as exc:
                    error, field_name = str(exc), exc.field
                except KeyError as exc:  # task templates name a missing field this way
                    error, field_name = f"missing field {exc.args[0]!r}", str(exc.args[0])
            if error is not None:
                quarantine.append({"source": cfg.name, "file": shown_path, "line": loc, "field": field_name,
                                   "error": error, "raw": _preview(raw)})
                index += 1
                continue
            if cfg.system and not any(m["role"] == "system" for m in msgs):
                msgs = [{"role": "system", "content": cfg.system}] + msgs
            task_key = None if cfg.task else (cfg.task_field or ("category" if fmt == "dolly" else None))
            meta = {k: v for k, v in item.items() if k not in used and k != task_key}
            columns["id"].append(conversation_id(msgs))
            columns["source"].append(cfg.name)
            columns["task"].append(task)
            columns["messages"].append(msgs)
            columns["meta"].append(json.dumps(meta, ensure_ascii=False, sort_keys=True, default=str))
            columns["origin"].append(origin)
            index += 1
    table = pl.from_arrow(pa.table(columns, schema=RECORD_SCHEMA)) if columns["id"] else empty_records()
    return SourceRead(name=cfg.name, format=fmt, files=shown, table=table, quarantine=quarantine)


def _chain(first: list, rest: Iterator) -> Iterator:
    yield from first
    yield from rest


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
