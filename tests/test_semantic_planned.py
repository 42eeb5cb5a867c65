"""Semantic dedup from keys (curate/stages/dedup/semantic.py): the keys carry each row's
embedding, the plan clusters them, apply joins the decisions on; for parts of 7 and 64
rows and one part it gives exactly the kept table, the dropped table and the stats of the
whole-table path (`whole_table_roots` over the table's text, then `from_clusters`) and of
`process`. The embedding model is the real stories260K from ../shared/data (skipped when
absent)."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from curate.contract.typed_config import load_dataclass
from curate.stages.base import StageContext, has_plan, run_planned
from curate.stages.dedup import semantic
from curate.stages.dedup.stage import Config, DedupStage
from test_planned import handmade, same

pytestmark = pytest.mark.slow  # loading transformers and the model dominates; the dedup work is milliseconds

SEMANTIC = [
    {"view": "user", "cosine_threshold": 0.99, "keep": "best"},
    {"view": "conversation", "cosine_threshold": 0.98, "keep": "first"},
    {"view": "user", "cosine_threshold": 0.995, "keep": "source_priority", "sources": ["b", "a"], "examples": 0},
]


@pytest.fixture(scope="module")
def model(request):
    pytest.importorskip("transformers")
    pytest.importorskip("curate.stages.common.lm")
    from conftest import shared

    return str(shared("models", "stories260K"))


def make(model: str, stage_dir, log=lambda m: None, **cfg) -> DedupStage:
    config = load_dataclass(Config, {"kind": "dedup", "method": "semantic", "model": model, **cfg}, "s")
    return DedupStage(config, StageContext(run_dir=stage_dir, config_dir=stage_dir, seed=0, stage_dir=stage_dir,
                                           log=log))


@pytest.mark.parametrize("cfg", SEMANTIC, ids=lambda c: f"{c['view']}-{c['cosine_threshold']}-{c['keep']}")
def test_semantic_from_keys_equals_whole_table(tmp_path, model, cfg):
    table = handmade()
    stage = make(model, tmp_path, **cfg)
    assert has_plan(stage) and has_plan(stage, refine=True)
    whole = stage.from_clusters(table, *semantic.whole_table_roots(stage, table))
    assert whole.stats["similar_pairs"] > 0 and whole.dropped.height > 0
    if cfg.get("examples", 5):
        assert whole.stats["dropped_near"] > 0 and whole.stats["examples"]  # near copies, not only exact ones
    for part_rows in (7, 64, table.height):
        same(run_planned(stage, table, part_rows), whole)
    same(stage.process(table), whole)


def test_fresh_embeddings_per_part_decide_as_the_whole_table(tmp_path, model):
    """No cache shared: each part's rows are embedded in batches of their own, so a
    vector may differ from its whole-table one in the last bit (~1e-7); with no pair of
    this data within 1e-4 of the threshold (the midpoint of the widest gap between pair
    cosines in 0.985..0.995), the decisions are the whole table's."""
    table = handmade()
    emb = semantic.embed(make(model, tmp_path / "whole", **SEMANTIC[0]), table)  # cached for `ref`
    cos = np.sort((emb @ emb.T)[np.triu_indices(table.height, 1)])
    near = cos[(cos > 0.985) & (cos < 0.995)]
    k = int(np.argmax(np.diff(near)))
    assert near[k + 1] - near[k] > 2e-4  # the precondition of the claim
    cfg = {**SEMANTIC[0], "cosine_threshold": float(near[k] + near[k + 1]) / 2}
    ref = make(model, tmp_path / "whole", **cfg)
    whole = ref.from_clusters(table, *semantic.whole_table_roots(ref, table))
    for part_rows in (30, 64):  # (the model loads once per part: few parts keep it quick)
        stage = make(model, tmp_path / f"parts-{part_rows}", **cfg)
        vectors = semantic.matrix_from_keys(pl.concat([
            stage.keys(table.slice(lo, part_rows)) for lo in range(0, table.height, part_rows)]))
        assert np.abs(vectors - emb).max() < 1e-5
        same(run_planned(stage, table, part_rows), whole)


def test_empty_parts_and_tables(tmp_path, model):
    """An empty part's keys (no vector width to give) concatenate with the others; an
    empty table plans to nothing, as the whole-table path does."""
    table = handmade(16)
    stage = make(model, tmp_path, **SEMANTIC[0])
    keys = pl.concat([stage.keys(table.clear()), stage.keys(table), stage.keys(table.clear())], how="vertical")
    assert keys.height == table.height and keys.schema[semantic.EMB] == pl.List(pl.Float32)
    assert semantic.matrix_from_keys(keys).shape == (table.height, 64)
    got = stage.process(table.clear())
    ref = stage.from_clusters(table.clear(), *semantic.whole_table_roots(stage, table.clear()))
    assert got.kept.equals(ref.kept) and got.dropped.equals(ref.dropped)
    # the one difference, as for exact and MinHash: from keys, an empty table still names
    # the score column it has (the whole-table path names none when there is no row)
    assert got.stats.pop("score_column") == "heuristic" and ref.stats.pop("score_column") is None
    assert got.stats == ref.stats


def test_keys_of_differing_widths_are_refused():
    keys = pl.DataFrame({semantic.EMB: [[1.0, 0.0], [1.0, 0.0, 0.0]]}, schema={semantic.EMB: pl.List(pl.Float32)})
    with pytest.raises(RuntimeError, match="differing widths"):
        semantic.matrix_from_keys(keys)


def test_similar_pairs_is_exhaustive_and_blocked():
    """Every pair at or above the threshold, each once (i < j), whatever the block size."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(20, 8)).astype(np.float32)
    emb = np.concatenate([base, base[:7] + 0.01 * rng.normal(size=(7, 8)).astype(np.float32)])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sim = emb @ emb.T
    want = {(i, j) for i in range(len(emb)) for j in range(i + 1, len(emb)) if sim[i, j] >= 0.95}
    assert len(want) >= 7
    for block in (1, 5, 2048):
        left, right = semantic.similar_pairs(emb, 0.95, block=block)
        assert set(zip(left.tolist(), right.tolist())) == want and len(left) == len(want)


def test_local_executor_streams_semantic_dedup(tmp_path, model):
    """The streaming executor plans semantic dedup from keys (manifest `memory = "keys"`)
    over a multi-part input: the whole-table path's kept rows, rejects and stats."""
    from curate.contract.datasets import read_dataset
    from curate.pipeline.executor import LocalExecutor
    from test_refine_executor import _job

    table = handmade()
    stage = make(model, tmp_path / "st", **SEMANTIC[0])
    ref = stage.from_clusters(table, *semantic.whole_table_roots(stage, table))
    res = LocalExecutor().run_stage(make(model, tmp_path / "st", **SEMANTIC[0]), _job(tmp_path, table, 25))
    assert res.memory == "keys" and len(res.entries) > 3
    assert read_dataset(tmp_path / "out", res.entries).equals(ref.kept)
    rejects = pl.concat([pl.read_parquet(r) if not isinstance(r, pl.DataFrame) else r for r in res.rejects],
                        how="vertical_relaxed")
    assert sorted(rejects["id"].to_list()) == sorted(ref.dropped["id"].to_list()) and rejects.height > 0
    assert res.stats == ref.stats


def test_cache_adds_a_file_per_computing_call_and_never_rewrites(tmp_path, model):
    """A call computes only the ids the cache lacks and writes them as a file of its own
    (workers keying parts at once never write one file); a call with everything cached
    computes nothing and writes nothing; another view is another cache."""
    logs: list[str] = []
    stage = make(model, tmp_path, log=logs.append, **SEMANTIC[0])
    table = handmade(40)
    first = semantic.embed(stage, table.slice(0, 20))
    whole = semantic.embed(stage, table)
    folder = semantic.cache_dir(stage)
    files = sorted(folder.glob("part-*.parquet"))
    assert len(files) == 2 and np.array_equal(whole[:20], first)
    stamps = [f.stat().st_mtime_ns for f in files]
    again = semantic.embed(stage, table)
    assert np.array_equal(again, whole) and logs[-1].endswith(" 0 computed")
    assert [f.stat().st_mtime_ns for f in sorted(folder.glob("part-*.parquet"))] == stamps
    assert semantic.cache_dir(make(model, tmp_path, **{**SEMANTIC[0], "view": "conversation"})) != folder
