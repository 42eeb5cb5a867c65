"""The Ray executor gives the local executor's output, byte for byte: same shards (sha256),
same ledger, same per-stage reports and rejects; also when a worker dies mid-stage.

One local Ray instance (2 CPUs) per module, with HOME, TMPDIR and Ray's temp dir inside
the test's tmp. Ray start-up and task scheduling are slow on a busy 2-core machine, so
these are the only Ray tests and they are marked slow.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import polars as pl
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install '.[ray]'")

from curate.pipeline.config import load_config  # noqa: E402
from curate.pipeline.executor import LocalExecutor  # noqa: E402
from curate.pipeline.ray_executor import FAULT_ENV, RayExecutor  # noqa: E402
from curate.pipeline.runner import run_pipeline  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"
pytestmark = pytest.mark.slow


@pytest.fixture
def ray_cluster(ray_local):
    """The session's Ray (tests/conftest.py); the fault marker cleared for this test."""
    for p in (ray_local, Path(str(ray_local) + ".claimed")):
        p.unlink(missing_ok=True)
    return ray_local


def _files(run: Path, pattern: str) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.glob(pattern))}


def _same_runs(a: Path, b: Path, shards: bool = True) -> None:
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma["ledger"] == mb["ledger"]
    # rows, drops and every stage's stats (not `memory`: how each executor held the rows)
    strip = lambda stages: [{k: v for k, v in s.items() if k != "memory"} for s in stages]  # noqa: E731
    assert strip(ma["stages"]) == strip(mb["stages"])
    for rel in _files(a, "rejects/*.parquet"):  # rejects: same rows, same order
        assert pl.read_parquet(a / rel).equals(pl.read_parquet(b / rel)), rel
    # every stage's output, row for row (part files follow each executor's part sizes)
    from curate.contract.datasets import read_dataset

    for d in sorted(p.name for p in (a / "stages").iterdir()):
        assert read_dataset(a / "stages" / d).equals(read_dataset(b / "stages" / d)), d
    if shards:
        assert ma["shards"] == mb["shards"]
        files = _files(a, "shards/*/*.arrow")
        assert files and files == _files(b, "shards/*/*.arrow")


def test_sample_pipeline_identical_to_local(ray_cluster, tmp_path):
    """Every stage kind of the sample pipeline, cut into several blocks per stage."""
    cfg = load_config(SAMPLE / "pipeline.toml")
    run_pipeline(cfg, tmp_path / "local", executor=LocalExecutor())
    ex = RayExecutor(block_rows=900)
    logs: list[str] = []
    from curate.contract.progress import Progress

    progress = Progress(enabled=False)
    progress.log = logs.append  # type: ignore[method-assign]
    render_blocks, original = [], ex.render_blocks
    ex.render_blocks = lambda frame, fn: render_blocks.append(len(ex.blocks(frame))) or original(frame, fn)
    run_pipeline(cfg, tmp_path / "ray", executor=ex, progress=progress)
    ex.close()
    assert ray.is_initialized()  # a fixture's Ray is reused, not shut down
    _same_runs(tmp_path / "local", tmp_path / "ray")
    # The work really was spread: several blocks for row-wise stages and dedup signatures,
    # and the stages without a distributed path say so.
    assert any("[filter] ray:" in m and "block(s) on workers" in m for m in logs)
    assert any("[near_dedup] ray: signatures on" in m for m in logs)
    assert any("[exact_dedup] ray:" in m and "planned: keys, plan on the driver, apply" in m for m in logs)
    assert any("[mix] ray:" in m and "planned: keys, plan on the driver, apply" in m for m in logs)
    assert any("[select] ray:" in m and "planned: keys, plan on the driver, apply" in m for m in logs)
    assert render_blocks and render_blocks[0] > 1  # tokenization ran in blocks on workers


def test_worker_killed_mid_stage_is_retried(ray_cluster, tmp_path):
    """A worker dies (os._exit) inside a block task; Ray Data resubmits the task and the
    output still equals the local run."""
    raw = SAMPLE / "raw"
    toml = tmp_path / "p.toml"
    toml.write_text(f"""
[run]
seed = 0
[[sources]]
name = "qa_alpaca"
path = "{raw / 'qa_alpaca.jsonl'}"
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
    ex = RayExecutor(block_rows=500)
    run_pipeline(cfg, tmp_path / "ray", executor=ex)
    assert not ray_cluster.exists() and Path(str(ray_cluster) + ".claimed").exists()  # a worker did die
    _same_runs(tmp_path / "local", tmp_path / "ray", shards=False)


AGGREGATED = """
[run]
seed = 3
[[sources]]
name = "qa_alpaca"
path = "{raw}/qa_alpaca.jsonl"
format = "alpaca"
task = "qa"
[[sources]]
name = "summarize_messages"
path = "{raw}/summarize_messages.jsonl.gz"
format = "messages"
task = "summarize"
[[sources]]
name = "translate_dolly"
path = "{raw}/translate_dolly.jsonl"
format = "dolly"
task_field = "category"
[[stages]]
kind = "normalize"
[[stages]]
kind = "quality"
scorer = "heuristic"
[[stages]]
kind = "dedup"
method = "exact"
view = "user"
keep = "best"
[[stages]]
kind = "select"
name = "best_half"
column = "heuristic"
top_fraction = 0.5
quotas = {{ qa = 150 }}
[[stages]]
kind = "select"
name = "global_top"
column = "heuristic"
by = "global"
keep = "lowest"
top_k = 300
[[stages]]
kind = "mix"
unit = "tokens"
weights = {{ qa = 2, summarize = 1, "*" = 1 }}
max_repeat = 2.0
val_fraction = 0.1
"""


def test_aggregated_stages_identical_to_local(ray_cluster, tmp_path):
    """exact dedup (hash per block, keep rule on the driver, a join marks the dropped),
    select (top-k / top-fraction / quotas) and mix (tokens counted on workers,
    upsampling, val split) from per-block keys and broadcast cutoffs, with several blocks: the same kept/dropped rows, stats and ledger as the local run,
    and the planned path really ran (no driver fallback)."""
    toml = tmp_path / "p.toml"
    toml.write_text(AGGREGATED.format(raw=SAMPLE / "raw"))
    cfg = load_config(toml)
    run_pipeline(cfg, tmp_path / "local", executor=LocalExecutor())
    from curate.contract.progress import Progress

    logs: list[str] = []
    progress = Progress(enabled=False)
    progress.log = logs.append  # type: ignore[method-assign]
    ex = RayExecutor(block_rows=400)
    run_pipeline(cfg, tmp_path / "ray", executor=ex, progress=progress)
    _same_runs(tmp_path / "local", tmp_path / "ray", shards=False)
    m = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert m["ledger"]["dropped"]["best_half"]["over_quota"] and m["ledger"]["dropped"]["global_top"]["over_quota"]
    assert m["stages"][-1]["stats"]["upsampled"] and m["stages"][-1]["stats"]["val"]
    assert m["ledger"]["dropped"]["dedup"]["duplicate_of"]
    for name in ("dedup", "best_half", "global_top", "mix"):
        assert any(f"[{name}] ray:" in x and "planned: keys, plan on the driver, apply" in x for x in logs), logs
    assert not any("no distributed path" in x for x in logs)
