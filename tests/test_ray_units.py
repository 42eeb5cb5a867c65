"""Fast checks of the Ray executor's pieces that need no cluster: the missing-extra
message, the band-bucket pair rule against the dedup stage's own, stats merging, and the
FilterStage merge-state API (block_state / merge_block_states / decide) per stage."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest


def test_missing_ray_is_a_clear_error(monkeypatch):
    from curate.pipeline.executor import make_executor

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    monkeypatch.delitem(sys.modules, "curate.pipeline.ray_executor", raising=False)
    with pytest.raises(RuntimeError, match=r"pip install 'curate\[ray\]'"):
        make_executor(SimpleNamespace(executor="ray", ray_address=None, seed=0))


def test_bucket_pairs_equal_dedup_candidates():
    """The per-partition pair rule (run after Ray's shuffle) gives DedupStage.candidate_pairs'
    pairs, big buckets (star to the first row) included."""
    pytest.importorskip("ray")
    from curate.pipeline.ray_dedup import _bucket_pairs
    from curate.pipeline.ray_blocks import from_ipc
    from curate.stages.base import StageContext
    from curate.stages.dedup.stage import Config, DedupStage

    rng = np.random.default_rng(0)
    n, bands = 3000, 4
    band = rng.integers(0, 400, (n, bands)).astype(np.uint64) + (np.arange(bands, dtype=np.uint64) << np.uint64(40))
    band[100:200] = band[100]  # a bucket bigger than max_bucket
    has = rng.random(n) > 0.05
    stage = DedupStage(Config(kind="dedup", max_bucket=16),
                       StageContext(run_dir=Path("."), config_dir=Path("."), seed=0, stage_dir=Path(".")))
    left, right = stage.candidate_pairs(band, has)
    idx = np.nonzero(has)[0].astype(np.int64)
    keys = pl.DataFrame({"k": band[idx].ravel(), "r": np.repeat(idx, bands)})
    # any hash partition of the keys: here, by key parity
    parts = [keys.filter((pl.col("k") % 2) == p).to_arrow() for p in (0, 1)]
    out = [_bucket_pairs(16)(p) for p in parts]
    assert sum(o["keys"][0].as_py() for o in out) == keys["k"].n_unique()
    got = pl.concat([from_ipc(o["pairs"][0].as_py()) for o in out]).unique().sort("l", "rr")
    assert len(left) > 1000
    assert np.array_equal(got["l"].to_numpy(), left) and np.array_equal(got["rr"].to_numpy(), right)


def test_stats_merge_rules():
    pytest.importorskip("ray")
    from curate.pipeline.blocks import same_values as _same, sum_values as _sum

    assert _sum([{"a": 1, "b": {"x": 2}}, {"a": 3, "b": {"y": 1}}, {}]) == {"a": 4, "b": {"x": 2, "y": 1}}
    assert _same([{"eval_items": 3}, {"eval_items": 3}]) == {"eval_items": 3}
    with pytest.raises(ValueError):
        _same([1, 2])
    with pytest.raises(TypeError):
        _sum([0.5, 0.25])  # a mean is not a sum: such stats are recomputed, never added


ROOT = Path(__file__).resolve().parent.parent


def _sample_table():
    from curate.pipeline.config import load_config
    from curate.read.readers import read_source

    cfg = load_config(ROOT / "sample_data" / "pipeline.toml")
    return pl.concat([read_source(s, ROOT / "sample_data").table for s in cfg.sources], how="vertical_relaxed")


@pytest.mark.parametrize("kind,extra", [
    ("filter", {"on": "assistant"}),
    ("language", {"keep": ["en"]}),
    ("pii", {"action": "redact"}),
    ("pii", {"action": "drop"}),
    ("decontaminate", {"n": 8, "evalsets": [{"path": "evalsets/sample_eval.jsonl", "fields": ["question"]}]}),
])
def test_filter_block_states_merge_to_the_whole_table_state(kind, extra, tmp_path):
    """The public merge-state API (block_state / merge_block_states / decide): annotate
    three blocks on three fresh instances, merge their states into a fourth, decide on the
    concatenated annotations: kept, dropped and stats equal one local process()."""
    import importlib

    from curate.stages.base import StageContext
    from curate.contract.typed_config import load_dataclass

    from curate.stages import STAGE_MODULES

    mod = importlib.import_module(STAGE_MODULES[kind])
    cfg = load_dataclass(mod.Config, {"kind": kind, **extra})
    ctx = StageContext(run_dir=tmp_path, config_dir=ROOT / "sample_data", seed=0, stage_dir=tmp_path)
    table = _sample_table()
    ref = mod.STAGE(cfg, ctx).process(table)
    shared = mod.STAGE(cfg, ctx).shared_resource()
    parts, states = [], []
    for lo in range(0, table.height, 700):
        worker = mod.STAGE(cfg, ctx)
        if shared is not None:
            worker.use_shared_resource(shared)
        parts.append(worker.annotate(table.slice(lo, 700)))
        state = worker.block_state()
        # what crosses the network: JSON values (pii's redacted messages travel as Arrow)
        states.append(state if kind == "pii" else json.loads(json.dumps(state)))
    assert len(parts) > 2
    driver = mod.STAGE(cfg, ctx)
    driver.merge_block_states(states)
    got = driver.decide(table, pl.concat(parts, rechunk=True))
    assert got.kept.equals(ref.kept) and got.dropped.equals(ref.dropped)
    assert got.stats == ref.stats
    assert ref.dropped.height or kind == "pii"
