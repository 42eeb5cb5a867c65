"""The Ray executor's stage hook (`RayExecutor.run_stage`) against the local executor's on
the same multi-part input, for a whole-table stage of the keys -> plan -> apply protocol
defined here (it travels to the workers by value) whose plan reorders rows across parts
(`Plan.order` not sorted by `_row`): keys, the plan and apply on workers, the output read
back in output order by a worker task. Same parts, rejects and stats as the local executor, and as
the stage's `process` over the whole table. Marked slow (the session's Ray)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install '.[ray]'")

from curate.contract.ledger import DETAIL, REASON  # noqa: E402
from curate.contract.datasets import read_dataset  # noqa: E402
from curate.pipeline import parts as P  # noqa: E402
from curate.pipeline.executor import LocalExecutor, StageJob  # noqa: E402
from curate.pipeline.ray_executor import RayExecutor  # noqa: E402
from curate.read.readers import read_source  # noqa: E402
from curate.pipeline.config import load_config  # noqa: E402
from curate.stages.base import ROW_COL, Plan, Stage, StageContext, StageResult, has_plan  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"
pytestmark = pytest.mark.slow


@pytest.fixture
def ray_cluster(ray_local):
    for p in (ray_local, Path(str(ray_local) + ".claimed")):
        p.unlink(missing_ok=True)
    # the test's stage travels to the workers by value (tests/ is not on their path)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return ray_local


@dataclass
class LongestHalfConfig:
    kind: str = "longest_half"
    name: str = "longest_half"


class LongestHalf(Stage):
    """Per task, keep the rows whose answer is at least the task's median answer length
    (ties by id), output longest first within each task, tasks in name order: the
    decision needs every row of a task and the output order moves rows across parts."""

    kind = "longest_half"

    def keys(self, part: pl.DataFrame) -> pl.DataFrame:
        answer = pl.col("messages").list.last().struct.field("content").str.len_chars()
        return part.select("task", "id", answer.alias("length"))

    def plannable(self) -> bool:
        return True

    def plan(self, keys: pl.DataFrame) -> Plan:
        assert "messages" not in keys.columns
        ranked = (keys.sort(["task", "length", "id"], descending=[False, True, False])
                  .with_columns((pl.int_range(pl.len()).over("task") + 1).alias("rank"),
                                pl.len().over("task").alias("n")))
        ranked = ranked.with_columns(pl.when(pl.col("rank") > (pl.col("n") + 1) // 2).then(pl.lit("short_half"))
                                     .alias(REASON))
        decisions = ranked.select(ROW_COL, REASON, pl.lit(None, pl.String).alias(DETAIL),
                                  pl.col("rank").cast(pl.Int64)).sort(ROW_COL)
        order = ranked.filter(pl.col(REASON).is_null()).select(ROW_COL, pl.lit(0, pl.Int32).alias("repeat"))
        stats = {"kept": order.height, "tasks": keys["task"].n_unique()}
        return Plan(decisions=decisions, stats=stats, order=order)

    def apply(self, part: pl.DataFrame, plan: Plan, first_row: int) -> StageResult:
        d = plan.decisions.filter((pl.col(ROW_COL) >= first_row) & (pl.col(ROW_COL) < first_row + part.height))
        joined = part.with_columns(pl.int_range(first_row, first_row + part.height, dtype=pl.UInt64)
                                   .alias(ROW_COL)).join(d, on=ROW_COL, how="left", maintain_order="left")
        # kept rows in the order the plan's `order` lists them (within this part)
        kept = joined.filter(pl.col(REASON).is_null())
        kept = kept.join(plan.order.with_row_index("__o").select(ROW_COL, "__o"), on=ROW_COL).sort("__o")
        dropped = joined.filter(pl.col(REASON).is_not_null()).drop(ROW_COL, "rank")
        return StageResult(kept=kept.drop(ROW_COL, REASON, DETAIL, "__o"), dropped=dropped, stats=plan.stats)

    def process(self, table: pl.DataFrame) -> StageResult:
        from curate.stages.base import run_planned

        return run_planned(self, table, max(table.height, 1))


def _job(src: Path, entries: list[dict], out: Path, part_rows: int, log=lambda s: None) -> StageJob:
    out.mkdir(parents=True)
    return StageJob(in_dir=src, in_entries=entries, out_dir=out, progress=P.StageProgress(out, "k"),
                    part_rows=part_rows, log=log)


def _off_the_driver(*_a, **_k):
    raise AssertionError("ran on the driver: this step belongs on a worker")


def test_reordering_plan_on_workers_equals_local_and_whole_table(ray_cluster, tmp_path):
    cfg = load_config(SAMPLE / "pipeline.toml")
    table = read_source(cfg.sources[0], SAMPLE).table
    src = tmp_path / "src"
    entries = [P.write_part(src, k, table.slice(lo, 200)) for k, lo in enumerate(range(0, table.height, 200))]
    assert len(entries) > 2
    ctx = StageContext(run_dir=tmp_path, config_dir=tmp_path, seed=0, stage_dir=tmp_path, log=lambda s: None)
    stage = LongestHalf(LongestHalfConfig(), ctx)
    assert has_plan(stage)
    got = {}
    for name, ex in (("local", LocalExecutor()), ("ray", RayExecutor())):
        job = _job(src, entries, tmp_path / name, 200)
        stage_here = LongestHalf(LongestHalfConfig(), ctx)
        if name == "ray":  # the plan is made by a worker's copy of the stage, not this one
            stage_here.plan = _off_the_driver
        out = ex.run_stage(stage_here, job)
        rejects = pl.concat([pl.read_parquet(r) for r in out.rejects])
        got[name] = (out, read_dataset(job.out_dir, out.entries), rejects,
                     [(tmp_path / name / e["file"]).read_bytes() for e in out.entries])
    (lo, lk, lr, lb), (ro, rk, rr, rb) = got["local"], got["ray"]
    assert ro.memory == lo.memory == "keys" and ro.stats == lo.stats and ro.entries == lo.entries
    assert rb == lb and rr.equals(lr)  # the same part files, byte for byte
    want = stage.process(table)
    assert rk.equals(want.kept) and lk.equals(want.kept)
    assert rk["task"].to_list() == sorted(rk["task"].to_list())  # really reordered across parts
    assert rr.height == want.dropped.height > 0
    assert not (tmp_path / "ray" / "parts" / "applied").exists()


@pytest.mark.parametrize("case", ["minhash-batches", "consensus"])
def test_refined_plans_on_workers_equal_local(ray_cluster, tmp_path, monkeypatch, case):
    """Plans that ask for second passes (base.Refine: MinHash's exact verification - one
    pass whose workers file the shingles, then several batches - consensus's word sets) on
    a multi-part input: the keys written by workers, spilled part by part (dedup:
    `spill_keys`) and planned by one worker task, every pass's `refine_keys` on further
    workers (the driver's copies of keys, plan and passes fail if called), and the same
    part files, rejects and stats as the local executor, with the same passes."""
    from curate.contract.typed_config import load_dataclass
    from curate.stages.consensus.stage import Config as ConsensusConfig, ConsensusStage
    from curate.stages.dedup.stage import Config as DedupConfig, DedupStage
    from test_planned import handmade, voting

    ctx = StageContext(run_dir=tmp_path, config_dir=tmp_path, seed=3, stage_dir=tmp_path / "st", log=lambda m: None)
    if case == "consensus":
        table, cls = voting(), ConsensusStage
        mk = lambda: ConsensusStage(load_dataclass(ConsensusConfig, {"kind": "consensus"}, "s"), ctx)  # noqa: E731
    else:
        table, cls = handmade(), DedupStage
        cfg = {"kind": "dedup", "method": "minhash", "view": "user", "threshold": 0.5, "verify_shingles": 200}
        mk = lambda: DedupStage(load_dataclass(DedupConfig, cfg, "s"), ctx)  # noqa: E731
    src = tmp_path / "src"
    entries = [P.write_part(src, k, table.slice(lo, 25)) for k, lo in enumerate(range(0, table.height, 25))]
    passes, batches, logs = [], [], []
    original = cls.finish_plan
    got = {}
    for name, ex in (("local", LocalExecutor()), ("ray", RayExecutor())):
        if name == "local":  # the passes and verification batches the plan makes (the same code on Ray's worker)
            monkeypatch.setattr(cls, "finish_plan", lambda self, *a: passes.append(len(a[0].rows)) or original(self, *a))
            if cls is DedupStage:  # the verification batches, read from the shingles the refine tasks filed
                import curate.stages.dedup.spill as SP

                take = SP.ShingleStore.take
                monkeypatch.setattr(SP.ShingleStore, "take", lambda self, b: batches.append(1) or take(self, b))
        else:  # keys, plan, passes and their answers: none on the driver
            for step in ("keys", "plan", "refine_keys", "finish_plan", "spill_keys"):
                if hasattr(cls, step):  # (consensus has no spill)
                    monkeypatch.setattr(cls, step, _off_the_driver)
        job = _job(src, entries, tmp_path / name, 25, log=logs.append)
        out = ex.run_stage(mk(), job)
        got[name] = (out, [(tmp_path / name / e["file"]).read_bytes() for e in out.entries],
                     [Path(r).read_bytes() for r in out.rejects])
    (lo, lb, lr), (ro, rb, rr) = got["local"], got["ray"]
    assert ro.memory == lo.memory == "keys" and ro.stats == lo.stats and ro.entries == lo.entries
    assert rb == lb and rr == lr and len(lb) > 3
    assert len(passes) >= 1
    # the worker's plan made the same second passes, answered by further workers
    asked = [n for n in passes if n]
    said = [x for x in logs if "plan on a worker" in x]
    assert len(said) == 1 and f"{len(passes)} second pass(es) over {sum(asked):,} asked rows" in said[0], said
    if case == "minhash-batches":  # spilled keys: one pass (workers file the shingles), several batches
        assert len(asked) == 1 and len(batches) >= 2  # (then one Refine of no rows)
    if case == "minhash-batches":  # the keys went through the dedup spill, as locally (on the plan's worker)
        assert list((tmp_path / "ray" / "parts" / "spill").glob("keys-*.parquet"))
    assert not (tmp_path / "ray" / "parts" / "keys").exists()  # the workers' key files are gone once planned
