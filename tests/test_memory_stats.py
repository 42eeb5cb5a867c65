"""#19: a row-local stage's statistics from its parts' small columns on disk
(base.PartColumns, FilterStage.statistics) equal the whole table's, and the overrides read
a column at a time (what bounds the per-row state of a streamed stage); planned stages'
key tables stay a few fixed-width values a row."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from curate.contract.typed_config import load_dataclass
from curate.pipeline.stage_steps import stats_columns
from curate.stages import stage_class
from curate.stages.base import PartColumns, StageContext
from helpers import pair, records

CONVS = [
    pair("What is the capital of France?", "The capital of France is Paris, a city on the Seine."),
    pair("Say hi", ""),
    pair("Write my email", "Sure: contact me at jane.doe@example.com or call 555-123-4567 any time."),
    pair("Tell me a joke", "I'm sorry, but as an AI language model I cannot do that."),
    pair("Explain gravity", "Gravity pulls masses toward each other; the Earth pulls us down and keeps the Moon near."),
    pair("Traduce", "El perro come la comida en la cocina todos los días por la mañana con su familia."),
    pair("List", "and and and and and and and and and and and and and and and and and and and and"),
    pair("Why is the sky blue?", "Sunlight scatters off air molecules, and blue light scatters the most, so"),
]


def table(n: int = 64) -> pl.DataFrame:
    convs = [[{"role": m["role"], "content": m["content"] + (f" ({i})" if m["role"] == "user" else "")} for m in c]
             for i, c in enumerate(CONVS * (n // len(CONVS)))]
    return records(convs, task=lambda i: "qa" if i % 3 else "chat")


def stage(kind: str, tmp: Path, **cfg):
    cls = stage_class(kind)
    config = load_dataclass(cls.Config, {"kind": kind, **cfg})
    return cls(config, StageContext(run_dir=tmp, config_dir=tmp, seed=0, stage_dir=tmp))


def streamed_stats(kind: str, tmp: Path, t: pl.DataFrame, cuts: list[int], **cfg) -> dict:
    """What the local executor does: one worker annotates each part, writes its small
    columns; the states are merged and `statistics` reads the files."""
    worker = stage(kind, tmp, **cfg)
    paths, states = [], []
    bounds = [0, *cuts, t.height]
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        part = t.slice(lo, hi - lo)
        annotated = worker.annotate(part)
        states.append(worker.block_state())
        p = tmp / f"light-{i}.parquet"
        stats_columns(worker, annotated, part.columns).write_parquet(p)
        paths.append(p)
    driver = stage(kind, tmp, **cfg)
    driver.merge_block_states(states)
    return driver.statistics(PartColumns(paths))


CASES = [
    ("filter", {"on": "assistant"}),
    ("filter", {"on": "assistant", "action": "flag"}),
    ("language", {"keep": ["en"]}),
    ("language", {"keep": ["en"], "action": "flag"}),
    ("pii", {"action": "redact"}),
    ("pii", {"action": "drop"}),
]


@pytest.mark.parametrize("kind,cfg", CASES)
@pytest.mark.parametrize("cuts", [[], [5, 40], [1, 2, 63]])
def test_statistics_from_parts_equal_the_whole_tables(tmp_path, kind, cfg, cuts):
    t = table()
    whole = stage(kind, tmp_path, **cfg).process(t).stats
    got = streamed_stats(kind, tmp_path, t, cuts, **cfg)
    assert json.dumps(got, sort_keys=True) == json.dumps(whole, sort_keys=True)
    assert whole["hits"] or whole.get("rows_redacted") or any(whole.get("languages", {}).values())  # counts exercised


def test_filter_statistics_read_one_column_at_a_time(tmp_path, monkeypatch):
    """The structural bound: filter's statistics never read more than one statistic column
    (plus `_reason`) of a part at once, and never the small columns of every row together."""
    read: list[tuple[str, ...]] = []
    orig = PartColumns.part

    def part(self, i, columns=None):
        read.append(tuple(self.columns if columns is None else columns))
        return orig(self, i, columns)

    monkeypatch.setattr(PartColumns, "part", part)
    stats = streamed_stats("filter", tmp_path, table(), [10, 30], on="assistant")
    assert len(stats["summary"]) >= 20  # ~30 statistics, each summarised
    assert read and max(len(c) for c in read) <= 2
    assert all(set(c) <= {"_reason"} or "_reason" in c for c in read)


@pytest.mark.parametrize("kind,cfg,bound", [
    ("mix", {"by": "task", "unit": "examples"}, 64),
    ("select", {"column": "score", "top_fraction": 0.5}, 96),
])
def test_planned_key_tables_are_a_few_values_a_row(tmp_path, kind, cfg, bound):
    """What a planned stage holds for every row of the input: its keys (no text). Bytes
    per row from polars' estimate of the key table (ids are 40 hex characters)."""
    t = table(640).with_columns(pl.int_range(pl.len()).cast(pl.Float64).alias("score"))
    keys = stage(kind, tmp_path, **cfg).keys(t)
    assert keys.height == t.height
    assert not {"messages", "meta", "origin"} & set(keys.columns)
    assert keys.estimated_size() / keys.height <= bound
