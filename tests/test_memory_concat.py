"""#19: the memory paths of this round give the same frames and statistics as before.

- `concat_freeing` (stage_steps.hold_keys, PartColumns.read) equals `pl.concat(...,
  vertical_relaxed, rechunk)` on uneven parts, nulls, Null-typed parts, Categoricals and
  relaxed dtypes, and empties the caller's list (the parts are freed as it goes).
- quality's statistics from its parts' files (blocks.merge_stats: the task read as a
  Categorical) equal the whole table's: per-task groups, their order, null tasks.
- `import curate` sets polars' allocator to return freed pages (a fresh process: the
  variable is set, a user's value is kept, and freed memory leaves RSS)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from curate.pipeline.allocator import ENV, SETTING
from curate.stages.base import PartColumns
from curate.stages.common.concat import concat_freeing

ROOT = Path(__file__).resolve().parent.parent


def _parts() -> list[pl.DataFrame]:
    # uneven parts; a part whose string column is all null (Null dtype), an empty part,
    # an Int32 part among Int64s (relaxed to Int64), Categorical groups, float NaN / null
    return [
        pl.DataFrame({"g": ["a", "b", None], "x": [1, 2, 3], "s": ["p", None, "q"], "f": [0.5, None, float("nan")]},
                     schema={"g": pl.Categorical, "x": pl.Int64, "s": pl.String, "f": pl.Float64}),
        pl.DataFrame({"g": ["c"], "x": [4], "s": [None], "f": [1.0]},
                     schema={"g": pl.Categorical, "x": pl.Int32, "s": pl.Null, "f": pl.Float64}),
        pl.DataFrame(schema={"g": pl.Categorical, "x": pl.Int64, "s": pl.String, "f": pl.Float64}),
        pl.DataFrame({"g": ["b"] * 5, "x": list(range(5, 10)), "s": [f"r{i}" for i in range(5)], "f": [-0.0] * 5},
                     schema={"g": pl.Categorical, "x": pl.Int64, "s": pl.String, "f": pl.Float64}),
    ]


def test_concat_freeing_equals_pl_concat_and_empties_the_parts():
    want = pl.concat(_parts(), how="vertical_relaxed", rechunk=True)
    frames = _parts()
    got = concat_freeing(frames)
    assert frames == []  # the caller's references are gone: the parts can be freed
    assert got.schema == want.schema
    assert got.equals(want, null_equal=True)
    assert all(n == 1 for n in got.n_chunks("all"))
    assert got["g"].cast(pl.String).to_list() == ["a", "b", None, "c", "b", "b", "b", "b", "b"]


def test_concat_freeing_one_part_and_mismatched_parts_behave_as_pl_concat():
    one = [_parts()[0]]
    assert concat_freeing(one).equals(_parts()[0], null_equal=True) and one == []
    bad = [pl.DataFrame({"a": [1]}), pl.DataFrame({"b": [2]})]
    with pytest.raises(pl.exceptions.PolarsError):
        pl.concat([pl.DataFrame({"a": [1]}), pl.DataFrame({"b": [2]})], how="vertical_relaxed")
    with pytest.raises(pl.exceptions.PolarsError):
        concat_freeing(bad)


def test_hold_keys_gives_the_concatenation():
    from curate.pipeline.stage_steps import hold_keys

    class NoSpill:  # a stage without `spill_keys` (select, mix, consensus): the job is not read
        name = "x"

    got = hold_keys(NoSpill(), None, iter(_parts()))
    assert got.equals(pl.concat(_parts(), how="vertical_relaxed", rechunk=True), null_equal=True)


def _quality_table(n: int) -> pl.DataFrame:
    from helpers import pair, records

    convs = [pair(f"Question {i}?", ("A fine answer " * (i % 7)) + f"number {i}.") for i in range(n)]
    t = records(convs, task=lambda i: ["qa", "chat", "code"][i % 3])
    return t.with_columns(pl.when(pl.int_range(pl.len()) % 11 == 0).then(None).otherwise(pl.col("task")).alias("task"))


@pytest.mark.parametrize("cuts", [[], [7], [1, 30, 31, 80]])
def test_quality_statistics_from_parts_equal_the_whole_tables(tmp_path, cuts):
    from curate.contract.typed_config import load_dataclass
    from curate.pipeline.blocks import merge_stats
    from curate.pipeline.stage_steps import stats_columns
    from curate.stages import stage_class
    from curate.stages.base import StageContext

    cls = stage_class("quality")
    mk = lambda: cls(load_dataclass(cls.Config, {"kind": "quality", "scorer": "heuristic"}),  # noqa: E731
                     StageContext(run_dir=tmp_path, config_dir=tmp_path, seed=0, stage_dir=tmp_path))
    t = _quality_table(97)
    whole = mk().process(t).stats
    bounds = [0, *cuts, t.height]
    paths, payloads = [], []
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        part = t.slice(lo, hi - lo)
        w = mk()
        res = w.process(part)
        payloads.append(json.loads(json.dumps(res.stats, default=str)))
        paths.append(tmp_path / f"light-{i}.parquet")
        stats_columns(w, res.kept, part.columns).write_parquet(paths[-1])
    got = merge_stats(mk(), PartColumns(paths), payloads)
    assert json.dumps(got) == json.dumps(whole)  # (key order too: the tasks sorted as text, null first)
    assert list(whole["by_task"]) == [None, "chat", "code", "qa"]


def _fresh(code: str, env: dict | None = None) -> str:
    e = {k: v for k, v in os.environ.items() if k != ENV}
    e.update(env or {})
    e["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-c", code], env=e, check=True, capture_output=True, text=True).stdout.strip()


def test_import_curate_sets_polars_allocator_and_keeps_a_users_value():
    assert _fresh(f"import curate, os; print(os.environ[{ENV!r}])") == SETTING
    assert _fresh(f"import curate, os; print(os.environ[{ENV!r}])", {ENV: "narenas:2"}) == "narenas:2"


def test_freed_polars_memory_leaves_rss():
    """With the setting, ~240 MB of polars buffers freed leave RSS at once (jemalloc's
    default keeps them ~10 s: this fails without `import curate` first)."""
    code = (
        "import curate, polars as pl\n"
        "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * 4096\n"
        "df = pl.select(pl.int_range(30_000_000).alias('a') * 3)\n"
        "a = rss(); del df; b = rss(); print(a - b)\n"
    )
    assert int(_fresh(code)) > 150 * 2**20
