"""The local streaming executor completes plans that ask for a second pass over the parts
(curate/stages/base.py `Refine`): MinHash dedup with exact verification (the default) and
consensus run from keys (manifest `memory = "keys"`) on a multi-part input, with the same
kept rows, rejects and stats as the stage's `process` on the whole table."""
from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from curate.contract.typed_config import load_dataclass
from curate.contract.datasets import read_dataset
from curate.pipeline import parts as P
from curate.pipeline.executor import LocalExecutor, StageJob
from curate.stages.base import StageContext
from curate.stages.consensus.stage import Config as ConsensusConfig, ConsensusStage
from curate.stages.dedup.stage import Config as DedupConfig, DedupStage

from test_planned import handmade, voting


def _job(tmp_path: Path, table: pl.DataFrame, part_rows: int) -> StageJob:
    src = tmp_path / "in"
    entries = [P.write_part(src, k, table.slice(lo, part_rows)) for k, lo in enumerate(range(0, table.height, part_rows))]
    out = tmp_path / "out"
    out.mkdir()
    return StageJob(in_dir=src, in_entries=entries, out_dir=out, progress=P.StageProgress(out, "k"),
                    part_rows=part_rows)


@pytest.mark.parametrize("case", ["minhash", "minhash-batches", "consensus"])
def test_refined_plans_stream_and_equal_process(tmp_path, case):
    ctx = StageContext(run_dir=tmp_path, config_dir=tmp_path, seed=3, stage_dir=tmp_path / "st", log=lambda m: None)
    if case == "consensus":
        table = voting()
        mk = lambda: ConsensusStage(load_dataclass(ConsensusConfig, {"kind": "consensus"}, "s"), ctx)  # noqa: E731
    else:
        table = handmade()
        cfg = {"kind": "dedup", "method": "minhash", "view": "user", "threshold": 0.5}
        if case == "minhash-batches":
            cfg["verify_shingles"] = 200
        mk = lambda: DedupStage(load_dataclass(DedupConfig, cfg, "s"), ctx)  # noqa: E731
    ref = mk().process(table)
    res = LocalExecutor().run_stage(mk(), _job(tmp_path, table, 25))
    assert res.memory == "keys" and len(res.entries) > 3
    assert read_dataset(tmp_path / "out", res.entries).equals(ref.kept)
    rejects = pl.concat([pl.read_parquet(r) if isinstance(r, Path) else r for r in res.rejects], how="vertical_relaxed")
    assert rejects.height == ref.dropped.height > 0
    assert sorted(rejects["id"].to_list()) == sorted(ref.dropped["id"].to_list())
    assert res.stats == ref.stats
