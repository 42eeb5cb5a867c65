"""The Ray parts path (issue #19: no driver that holds the table): `run_on_parts` and
`RayExecutor.stage_parts` give the local streaming runner's output - ledger, stage
reports, rejects, every stage's parts, shards - also when a worker dies mid-stage, and
the keys -> plan -> apply protocol on workers equals the stage run whole in-process.

One local Ray instance (2 CPUs) for the module, its files in pytest's tmp; marked slow.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install '.[ray]'")

from curate.contract.ledger import DETAIL, REASON  # noqa: E402
from curate.pipeline.config import load_config  # noqa: E402
from curate.pipeline.executor import LocalExecutor  # noqa: E402
from curate.pipeline.parts import read_dataset, write_part  # noqa: E402
from curate.pipeline.ray_executor import FAULT_ENV, PLAN_ROW, RayExecutor, parts_mode, run_on_parts  # noqa: E402
from curate.pipeline.runner import run_pipeline  # noqa: E402
from curate.stages.base import Stage, StageContext, StageResult  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"
pytestmark = pytest.mark.slow
PART_ROWS = 700


@pytest.fixture
def ray_cluster(ray_local):
    """The session's Ray (tests/conftest.py); the fault marker cleared for this test."""
    for p in (ray_local, Path(str(ray_local) + ".claimed")):
        p.unlink(missing_ok=True)
    # the test's protocol stage travels to the workers by value (tests/ is not on their path)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return ray_local


def _sha(run: Path, pattern: str) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.glob(pattern))}


def _same_as_local(local: Path, ray_run: Path, shards: bool = True) -> None:
    ml, mr = (json.loads((d / "manifest.json").read_text()) for d in (local, ray_run))
    assert ml["ledger"] == mr["ledger"] and ml["ledger"]["reconciles"]
    assert ml["stages"] == mr["stages"]  # rows, drops, stats, memory ("parts" / "whole-table")
    assert _sha(local, "rejects/*.parquet") == _sha(ray_run, "rejects/*.parquet")  # one file, fixed row groups
    # every stage's dataset: the same rows in the same order. (Not the same cut: the local
    # runner cuts parts of exactly part_rows across source boundaries, the Ray read cuts
    # each source on its own worker, and row-local stages keep their input's parts.)
    for st in ml["stages"]:
        dl, dr = (json.loads((d / st["output"] / "done.json").read_text()) for d in (local, ray_run))
        assert sum(p["rows"] for p in dl["parts"]) == sum(p["rows"] for p in dr["parts"]), st["name"]
        assert read_dataset(local / st["output"], dl["parts"]).equals(read_dataset(ray_run / st["output"], dr["parts"]))
    if shards:
        files = _sha(local, "shards/*/*.arrow")
        assert files and files == _sha(ray_run, "shards/*/*.arrow")


def test_sample_pipeline_on_parts_identical_to_local(ray_cluster, tmp_path):
    """Every stage kind of the sample pipeline on parts of 700 rows (5 parts read)."""
    cfg = load_config(SAMPLE / "pipeline.toml")
    cfg.run.part_rows = PART_ROWS
    run_pipeline(cfg, tmp_path / "local", executor=LocalExecutor())
    run_on_parts(cfg, tmp_path / "ray", RayExecutor(), part_rows=PART_ROWS)
    _same_as_local(tmp_path / "local", tmp_path / "ray")
    read = json.loads((tmp_path / "ray" / "stages/00-read/done.json").read_text())
    assert len(read["parts"]) > 1


def test_worker_killed_mid_stage_on_parts(ray_cluster, tmp_path):
    """A worker dies (os._exit) inside a part task; Ray resubmits it and the run's output
    still equals the local one (a part's result depends only on the part)."""
    toml = tmp_path / "p.toml"
    toml.write_text(f"""
[run]
seed = 0
part_rows = 300
[[sources]]
name = "qa_alpaca"
path = "{SAMPLE / 'raw' / 'qa_alpaca.jsonl'}"
format = "alpaca"
task = "qa"
[[stages]]
kind = "normalize"
[[stages]]
kind = "filter"
on = "assistant"
""")
    cfg = load_config(toml)
    run_pipeline(cfg, tmp_path / "local", executor=LocalExecutor())
    ray_cluster.write_text("die once")
    run_on_parts(cfg, tmp_path / "ray", RayExecutor(), part_rows=300)
    assert not ray_cluster.exists() and Path(str(ray_cluster) + ".claimed").exists()  # a worker did die
    _same_as_local(tmp_path / "local", tmp_path / "ray", shards=False)


@dataclass
class LongestHalfConfig:
    kind: str = "longest_half"
    name: str = "longest_half"


@dataclass
class _Plan:
    decisions: pl.DataFrame
    stats: dict
    order: pl.DataFrame | None = None


class LongestHalf(Stage):
    """A tiny whole-table stage on the keys -> plan -> apply protocol: per task, keep the
    rows whose answer is at least the task's median answer length (ties by id), mark
    each kept row with its rank. Its decision needs every row of a task."""

    kind = "longest_half"

    def keys(self, part: pl.DataFrame) -> pl.DataFrame:
        answer = pl.col("messages").list.last().struct.field("content").str.len_chars()
        return part.select("task", "id", answer.alias("length"))

    def plan(self, keys: pl.DataFrame) -> _Plan:
        assert "messages" not in keys.columns
        ranked = (keys.sort(["task", "length", "id"], descending=[False, True, False])
                  .with_columns((pl.int_range(pl.len()).over("task") + 1).alias("rank"),
                                pl.len().over("task").alias("n")))
        decisions = ranked.select(
            PLAN_ROW, pl.when(pl.col("rank") > (pl.col("n") + 1) // 2).then(pl.lit("short_half"))
            .alias(REASON), pl.lit(None, pl.String).alias(DETAIL), pl.col("rank").cast(pl.Int64))
        stats = {"kept": int((decisions[REASON].is_null()).sum()), "tasks": keys["task"].n_unique()}
        return _Plan(decisions=decisions.sort(PLAN_ROW), stats=stats)

    def plannable(self) -> bool:
        return True

    def apply(self, part: pl.DataFrame, plan: _Plan, first_row: int) -> StageResult:
        d = plan.decisions.filter((pl.col(PLAN_ROW) >= first_row) & (pl.col(PLAN_ROW) < first_row + part.height))
        joined = part.with_columns(pl.int_range(first_row, first_row + part.height, dtype=pl.UInt64)
                                   .alias(PLAN_ROW)).join(d, on=PLAN_ROW, how="left", maintain_order="left")
        kept = joined.filter(pl.col(REASON).is_null()).drop(PLAN_ROW, REASON, DETAIL)
        dropped = joined.filter(pl.col(REASON).is_not_null()).drop(PLAN_ROW, "rank")
        return StageResult(kept=kept, dropped=dropped, stats={})

    def process(self, table: pl.DataFrame) -> StageResult:
        keys = self.keys(table).with_columns(pl.int_range(0, table.height, dtype=pl.UInt64).alias(PLAN_ROW))
        plan = self.plan(keys)
        res = self.apply(table, plan, 0)
        return StageResult(kept=res.kept, dropped=res.dropped, stats=plan.stats)


def test_plan_protocol_stage_on_workers_equals_whole_table(ray_cluster, tmp_path):
    """keys per part on workers, one plan on the driver (from keys only), apply per part on
    workers: the parts' output equals the stage's `process` over the whole table."""
    cfg = load_config(SAMPLE / "pipeline.toml")
    cfg.stages = cfg.stages[:1]  # normalize only: its output is the protocol stage's input
    cfg.render = None
    run_pipeline(cfg, tmp_path / "local", executor=LocalExecutor())
    done = json.loads((tmp_path / "local/stages/01-normalize/done.json").read_text())
    table = read_dataset(tmp_path / "local/stages/01-normalize", done["parts"])
    src = tmp_path / "src"
    parts = [write_part(src, k, table.slice(lo, 500)) for k, lo in enumerate(range(0, table.height, 500))]
    assert len(parts) > 2
    logs: list[str] = []
    ctx = StageContext(run_dir=tmp_path, config_dir=tmp_path, seed=0, stage_dir=tmp_path / "out", log=logs.append)
    stage = LongestHalf(LongestHalfConfig(), ctx)
    assert parts_mode(stage) == "plan"
    (tmp_path / "out").mkdir()
    got = RayExecutor().stage_parts(stage, src, parts, tmp_path / "out", tmp_path / "rejects.parquet", 500)
    want = LongestHalf(LongestHalfConfig(), ctx).process(table)
    assert got.mode == "plan" and got.stats == want.stats
    assert read_dataset(tmp_path / "out", got.parts).equals(want.kept)
    assert pl.read_parquet(tmp_path / "rejects.parquet").height == want.dropped.height == got.dropped["short_half"]
    assert got.rows_in == table.height and got.rows_out == want.kept.height > 0
    assert any("(plan)" in m for m in logs)
