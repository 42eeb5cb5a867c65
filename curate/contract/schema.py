"""The canonical record schema: one row per conversation, shared by every stage.

Columns (stages may add more, never reshape these):
  id       stable content hash of the normalised conversation (see `conversation_id`)
  source   the `[[sources]]` name the record came from
  task     task label (from the source's `task`, or its `task_field`)
  messages list<struct<role, content>>; roles: system, user, assistant, tool
  meta     the record's other original fields, as JSON, so nothing is lost
  origin   "file:line" (line-based files) or "file:#index" (arrays, tables)
"""
from __future__ import annotations

import hashlib
import json

import polars as pl
import pyarrow as pa

ROLES = ("system", "user", "assistant", "tool")

MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])
RECORD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("task", pa.string()),
        ("messages", pa.list_(MESSAGE_TYPE)),
        ("meta", pa.string()),
        ("origin", pa.string()),
    ]
)
BASE_COLUMNS = tuple(RECORD_SCHEMA.names)

POLARS_MESSAGES = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
POLARS_SCHEMA = {
    "id": pl.String,
    "source": pl.String,
    "task": pl.String,
    "messages": POLARS_MESSAGES,
    "meta": pl.String,
    "origin": pl.String,
}

# Columns a stage's dropped rows carry on top of the record's own.
REJECT_COLUMNS = {"stage": pl.String, "reason": pl.String, "detail": pl.String}


def conversation_id(messages: list[dict]) -> str:
    """Stable content hash of a conversation: sha1 over canonical JSON of (role, content).

    hashlib rather than polars' `hash()`, because polars documents its hash as unstable
    across versions, and ids must stay the same from one release to the next."""
    canon = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha1(canon.encode("utf-8")).hexdigest()[:20]


def stable_keys(ids: list[str], seed: int, salt: str) -> list[int]:
    """A seeded pseudo-random 63-bit key per id, for every seeded order and sample (splits,
    mixing): hashlib, so stable across versions and platforms, unlike polars' hash()."""
    pre = f"{seed}\x00{salt}\x00".encode()
    return [int.from_bytes(hashlib.blake2b(pre + i.encode(), digest_size=8).digest(), "big") >> 1 for i in ids]


def recompute_ids(df: pl.DataFrame) -> pl.DataFrame:
    """Recompute `id` after messages changed (normalisation). One hashlib call per row:
    hashing is the library call that forces it."""
    ids = [conversation_id(m) for m in df["messages"].to_list()]
    return df.with_columns(pl.Series("id", ids, dtype=pl.String))


def empty_records() -> pl.DataFrame:
    return pl.DataFrame(schema=POLARS_SCHEMA)
