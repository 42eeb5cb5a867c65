"""#19 the streaming local executor (curate/pipeline/executor.py `run_stage`): whole-table
stages with keys/plan/apply run part by part (manifest `memory = "keys"`) and equal the
reference `run_planned` over the whole table, also when their plan reorders or repeats
rows; stages without the protocol fall back to the whole table (logged, `memory =
"whole-table"`); a source larger than a tiny `[run] memory_budget` gives the same
outputs as an unbounded run, in several parts, and the ledger reconciles."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from curate.contract.ledger import DETAIL, REASON
from curate.contract.datasets import read_dataset
from curate.pipeline import parts as P
from curate.pipeline.config import load_config
from curate.pipeline.executor import LocalExecutor, StageJob
from curate.pipeline.memory import MIN_PART_ROWS
from curate.pipeline.runner import run_pipeline
from curate.stages.base import Plan, Stage, StageContext, StageResult, decided_part, run_planned, split_decided

from helpers import EXACT_DEDUP_STAGES
from test_fingerprints import Lines
from test_part_resume import _outputs


class _Cfg:
    name = None


class LongestPerGroup(Stage):
    """Keeps the row with the longest `text` of each `g` (first on ties), from keys only."""

    kind = "longest_per_group"

    def process(self, table):
        return run_planned(self, table, max(1, table.height))

    def keys(self, part):
        return part.select("g", pl.col("text").str.len_chars().alias("n"))

    def plan(self, keys):
        best = (keys.sort(["g", "n", "_row"], descending=[False, True, False])
                .group_by("g", maintain_order=True).first().select("g", pl.col("_row").alias("best")))
        d = (keys.join(best, on="g", how="left").filter(pl.col("_row") != pl.col("best"))
             .select("_row", pl.lit("not_longest").alias(REASON), pl.col("best").cast(pl.String).alias(DETAIL))
             .sort("_row"))
        return Plan(decisions=d, stats={"groups": best.height, "dropped": d.height})

    def apply(self, part, plan, first_row):
        res = split_decided(decided_part(part, plan, first_row))
        return StageResult(kept=res.kept, dropped=res.dropped, stats=plan.stats)


class Reverse(LongestPerGroup):
    """Drops nothing; outputs every row in reverse input order (rows move across parts)."""

    def plan(self, keys):
        d = keys.select("_row").with_columns(pl.lit(None, pl.String).alias(REASON),
                                             pl.lit(None, pl.String).alias(DETAIL)).head(0)
        order = keys.select(pl.col("_row").reverse(), pl.lit(0, pl.Int32).alias("repeat"))
        return Plan(decisions=d, stats={"reversed": keys.height}, order=order)

    def apply(self, part, plan, first_row):  # a part's kept rows in the sequence `order` has them
        res = super().apply(part, plan, first_row)
        return StageResult(kept=res.kept.reverse(), dropped=res.dropped, stats=plan.stats)


class NoProtocol(Stage):
    kind = "no_protocol"

    def process(self, table):
        keep = table["i"] % 3 != 0
        return StageResult(kept=table.filter(keep),
                           dropped=table.filter(~keep).with_columns(pl.lit("third").alias(REASON)),
                           stats={"n": table.height})


def _table(n=53):
    return pl.DataFrame({"i": list(range(n)), "g": [f"g{i % 5}" for i in range(n)],
                         "text": ["x" * ((i * 7) % 11) for i in range(n)]})


def _job(tmp_path, table, part_rows, log=None):
    src = tmp_path / "in"
    entries = [P.write_part(src, k, table.slice(lo, part_rows)) for k, lo in enumerate(range(0, table.height, part_rows))]
    out = tmp_path / "out"
    out.mkdir()
    return StageJob(in_dir=src, in_entries=entries, out_dir=out, progress=P.StageProgress(out, "k"),
                    part_rows=part_rows, log=log or (lambda s: None))


def _stage(cls, tmp_path):
    return cls(_Cfg(), StageContext(run_dir=tmp_path, config_dir=tmp_path, seed=0, stage_dir=tmp_path / "out",
                                    log=lambda s: None))


def _rejects(res):
    return pl.concat([pl.read_parquet(r) if isinstance(r, Path) else r for r in res.rejects], how="vertical_relaxed")


@pytest.mark.parametrize("cls", [LongestPerGroup, Reverse])
def test_protocol_path_equals_the_whole_table_reference(tmp_path, cls):
    table = _table()
    ref = run_planned(_stage(cls, tmp_path), table, table.height)
    res = LocalExecutor().run_stage(_stage(cls, tmp_path), _job(tmp_path, table, 6))
    assert res.memory == "keys"
    assert len(res.entries) >= 2
    assert read_dataset(tmp_path / "out", res.entries).equals(ref.kept)
    if cls is Reverse:
        assert ref.kept["i"].to_list() == list(range(52, -1, -1))
    assert res.stats == ref.stats
    assert res.rows_out + _rejects(res).height == table.height
    assert _rejects(res)["i"].to_list() == ref.dropped["i"].to_list()
    assert not (tmp_path / "out" / "parts" / "applied").exists()  # the reorder scratch is removed


def test_a_stage_without_the_protocol_runs_on_the_whole_table_and_says_so(tmp_path):
    table = _table()
    log = Lines()
    res = LocalExecutor().run_stage(_stage(NoProtocol, tmp_path), _job(tmp_path, table, 6, log.log))
    assert res.memory == "whole-table"
    assert any("whole-table stage: holds all 53 rows in memory" in x for x in log.lines), log.lines
    ref = NoProtocol.process(None, table)
    assert read_dataset(tmp_path / "out", res.entries).equals(ref.kept)
    assert res.stats == {"n": 53}


def _big_inputs(tmp_path: Path, budget: str | None) -> Path:
    raw = tmp_path / "big.jsonl"
    if not raw.is_file():
        lines = [json.dumps({"instruction": f"Question {i}: what is {i % 97} times {i % 13}?",
                             "output": f"It is {(i % 97) * (i % 13)}." + (" " * (i % 4))}) for i in range(700)]
        lines[5] = "{broken"
        raw.write_text("\n".join(lines) + "\n")
    toml = f"""
[run]
output_dir = "{tmp_path / 'run'}"
{'memory_budget = "%s"' % budget if budget else ''}

[[sources]]
name = "big"
path = "big.jsonl"
task = "qa"
""" + EXACT_DEDUP_STAGES
    p = tmp_path / f"pipeline-{budget}.toml"
    p.write_text(toml)
    return p


def test_a_source_larger_than_a_tiny_memory_budget_gives_the_same_outputs(tmp_path):
    log = Lines()
    small = run_pipeline(load_config(_big_inputs(tmp_path, "1KiB")), out_dir=tmp_path / "small", progress=log)
    assert any(f"[run] part_rows = {MIN_PART_ROWS}" in x for x in log.lines), log.lines
    read = json.loads((tmp_path / "small" / "stages" / "00-read" / "done.json").read_text())
    assert len(read["parts"]) == -(-read["rows_out"] // MIN_PART_ROWS) > 5
    big = run_pipeline(load_config(_big_inputs(tmp_path, "8GiB")), out_dir=tmp_path / "big")
    assert _outputs(tmp_path / "small") == _outputs(tmp_path / "big")
    strip = lambda m: {k: v for k, v in m.items() if k not in ("config", "config_hash", "pipeline")}  # noqa: E731
    assert strip(small) == strip(big)
    led = small["ledger"]
    assert led["reconciles"] and led["read"] == 700
    assert [s["memory"] for s in small["stages"]] == ["parts", "parts", "keys"]
