"""Small builders shared by the stage tests."""
from __future__ import annotations

import polars as pl

from curate.contract.schema import POLARS_SCHEMA, conversation_id


def pair(user: str, assistant: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def records(conversations, source="t", task="t", origin="t") -> pl.DataFrame:
    """Canonical rows from message lists: content-hash ids, origins `origin:i`; `source` and
    `task` are one value for all rows or a function of the row index."""
    def value(v, i):
        return v(i) if callable(v) else v

    rows = [{"id": conversation_id(m), "source": value(source, i), "task": value(task, i), "messages": m,
             "meta": "{}", "origin": f"{origin}:{i}"} for i, m in enumerate(conversations)]
    return pl.DataFrame(rows, schema=POLARS_SCHEMA)
