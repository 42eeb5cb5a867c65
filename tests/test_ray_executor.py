"""`curate run --executor ray` gives the local executor's output, byte for byte: every file
of every stage (parts and done.json), the rejects, the quarantine, the shards, the ledger
and the manifest (but the config's `run.executor`); on the sample pipeline, on a
multi-part input (tiny part_rows), when a worker dies mid-stage, and when a run killed
inside a stage under the local executor is resumed under Ray from its last finished part.

One local Ray (2 CPUs, its files in pytest's tmp: tests/conftest.py `ray_local`) for the
session; marked slow.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install '.[ray]'")

from curate.contract.progress import Progress  # noqa: E402
from curate.pipeline.config import load_config  # noqa: E402
from curate.pipeline.executor import LocalExecutor  # noqa: E402
from curate.pipeline.ray_executor import RayExecutor  # noqa: E402
from curate.pipeline.runner import run_pipeline  # noqa: E402
from helpers import exact_dedup_pipeline, run_digests  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"
pytestmark = pytest.mark.slow


@pytest.fixture
def ray_cluster(ray_local):
    """The session's Ray (tests/conftest.py); the fault marker cleared for this test."""
    for p in (ray_local, Path(str(ray_local) + ".claimed")):
        p.unlink(missing_ok=True)
    return ray_local


def _same_runs(a: Path, b: Path, shards: bool = True) -> dict:
    fa, fb = run_digests(a), run_digests(b)
    assert fa == fb
    assert any(k.endswith("done.json") for k in fa) and any("/part-" in k for k in fa)
    assert not any("/parts/" in k for k in fa)  # finished stages leave no per-part records
    if shards:
        assert any(k.startswith("shards/") and k.endswith(".arrow") for k in fa)
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    strip = lambda m: {k: v for k, v in m.items() if k not in ("config", "config_hash")}  # noqa: E731
    assert strip(ma) == strip(mb) and ma["ledger"]["reconciles"]
    ca, cb = ma["config"], mb["config"]
    ca["run"].pop("executor"), cb["run"].pop("executor")
    assert ca == cb
    return mb


def _logged() -> tuple[Progress, list[str]]:
    logs: list[str] = []
    progress = Progress(enabled=False)
    progress.log = logs.append  # type: ignore[method-assign]
    return progress, logs


def _off_the_driver(*_a, **_k):
    raise AssertionError("ran on the driver: this step belongs on a worker")


def test_sample_pipeline_identical_to_local(ray_cluster, tmp_path, monkeypatch):
    """Every stage kind of the sample pipeline in parts of 700 rows (6 read parts). Under
    Ray, the driver's copies of the per-row steps fail: keys, a plan's second pass
    (`refine_keys`: MinHash's shingles, consensus's word sets) and a row-local stage's
    statistics run on workers, and so do the planned stages' plans (their classes reach the
    workers by reference, unpatched)."""
    import curate.pipeline.ray_executor as rx
    from curate.stages.consensus.stage import ConsensusStage
    from curate.stages.dedup.stage import DedupStage

    cfg = load_config(SAMPLE / "pipeline.toml")
    cfg.run.part_rows = 700
    run_pipeline(cfg, tmp_path / "local", executor=LocalExecutor())
    from curate.stages.mix import MixStage
    from curate.stages.select import SelectStage

    for cls in (DedupStage, ConsensusStage, SelectStage, MixStage):
        # keys, the plan, its second passes and the finished stage's read-back: on workers
        for step in ("keys", "refine_keys", "plan", "finish_plan", "spill_keys", "merge_part_stats"):
            if step in vars(cls):
                monkeypatch.setattr(cls, step, _off_the_driver)
    monkeypatch.setattr(rx, "row_local_output", _off_the_driver)
    # render: the template, tokenization and the render rejects (the steps that read a
    # row's messages) on workers; the driver holds keys and per-example facts only
    import curate.render.stream as rs

    monkeypatch.setattr(rs, "tokenize_aligned", _off_the_driver)
    monkeypatch.setattr(rs, "RenderBlock", _off_the_driver)
    monkeypatch.setattr(rs.RenderPart, "__call__", _off_the_driver)
    monkeypatch.setattr(rs.RejectPart, "__call__", _off_the_driver)
    monkeypatch.setattr(rs, "_packed_shard", _off_the_driver)  # shards: ShardPart tasks
    monkeypatch.setattr(rs, "_unpacked_shard", _off_the_driver)
    # the render's per-row state (keys, split, facts, examples, packing plans): in an actor
    monkeypatch.setattr(rs, "render_parts", _off_the_driver)
    monkeypatch.setattr(rs, "write_shards_streamed", _off_the_driver)
    monkeypatch.setattr(rs, "token_facts", _off_the_driver)
    # the rejects merges (a stage's, render's) read rejected rows' text: RayExecutor.write_rejects
    import curate.pipeline.runner as runner_module

    monkeypatch.setattr(runner_module, "_write_rejects", _off_the_driver)
    ex = RayExecutor(block_rows=900)
    progress, logs = _logged()
    run_pipeline(cfg, tmp_path / "ray", executor=ex, progress=progress)
    ex.close()
    assert ray.is_initialized()  # a fixture's Ray is reused, not shut down
    m = _same_runs(tmp_path / "local", tmp_path / "ray")
    assert len(json.loads((tmp_path / "ray/stages/00-read/done.json").read_text())["parts"]) > 1
    # the work ran on workers, part by part; the one whole-table stage says so, as locally
    assert any("[filter] ray: 6 part(s) on workers (annotate)" in x for x in logs), logs
    assert any("[normalize] ray: 6 part(s) on workers (blocks)" in x for x in logs), logs
    # every whole-table stage of the sample is planned from keys (MinHash exact verification
    # and consensus with their second pass over the asked parts on workers)
    for name in ("consensus", "exact_dedup", "near_dedup", "select", "mix"):
        assert any(f"[{name}] ray:" in x and "(planned: keys written by workers, plan on a worker" in x
                   for x in logs), (name, logs)
    assert not any("whole-table stage" in x for x in logs), logs
    memory = {s["name"]: s["memory"] for s in m["stages"]}
    assert memory["near_dedup"] == memory["consensus"] == "keys" and memory["filter"] == "parts"
    # the sources were read on workers
    assert any("[read] ray:" in x and "piece(s)" in x for x in logs), logs
    render = m["render"]["stats"]
    assert render["examples"] > 0 and m["tokens"]  # rendered (in the actor), counted, equal to local's


AGGREGATED = """
[run]
seed = 3
part_rows = 150
output_dir = "{out}"
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
kind = "pii"
action = "redact"
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


def test_cli_executor_ray_multi_part_identical_to_local(ray_cluster, tmp_path):
    """`curate run --executor ray` (the CLI, in-process: it joins the session's Ray) on
    parts of 150 rows through pii, quality, exact dedup, select (quotas, top-k) and mix
    (tokens, upsampling, val split): the local run's bytes, with every stage on parts."""
    from click.testing import CliRunner

    from curate.cli import main

    toml = tmp_path / "p.toml"
    toml.write_text(AGGREGATED.format(raw=SAMPLE / "raw", out=tmp_path / "unused"))
    run_pipeline(load_config(toml), tmp_path / "local", executor=LocalExecutor())
    res = CliRunner().invoke(main, ["run", str(toml), "--no-train", "--executor", "ray", "--quiet",
                                    "--out", str(tmp_path / "ray")])
    assert res.exit_code == 0, res.output
    m = _same_runs(tmp_path / "local", tmp_path / "ray", shards=False)
    assert json.loads((tmp_path / "ray/manifest.json").read_text())["config"]["run"]["executor"] == "ray"
    assert (tmp_path / "ray/report.html").is_file()
    assert len(json.loads((tmp_path / "ray/stages/00-read/done.json").read_text())["parts"]) > 5
    assert {s["memory"] for s in m["stages"]} == {"parts", "keys"}  # nothing gathered on the driver
    assert m["ledger"]["dropped"]["best_half"]["over_quota"] and m["ledger"]["upsampled"]["mix"]
    assert m["ledger"]["dropped"]["dedup"]["duplicate_of"]


KILL = exact_dedup_pipeline(SAMPLE / "raw", part_rows=300)


def test_worker_killed_mid_stage_is_retried(ray_cluster, tmp_path):
    """A worker dies (os._exit) inside a part task, after the part's first write and
    before its record; Ray resubmits the task, which rewrites the part, and the run's
    output is the local one's, byte for byte."""
    toml = tmp_path / "p.toml"
    toml.write_text(KILL)
    cfg = load_config(toml)
    run_pipeline(cfg, tmp_path / "local", executor=LocalExecutor())
    ray_cluster.write_text("die once")
    run_pipeline(cfg, tmp_path / "ray", executor=RayExecutor())
    assert not ray_cluster.exists() and Path(str(ray_cluster) + ".claimed").exists()  # a worker did die
    _same_runs(tmp_path / "local", tmp_path / "ray", shards=False)


def test_run_killed_inside_a_stage_resumes_on_ray_from_its_last_finished_part(ray_cluster, tmp_path, monkeypatch):
    """A local run killed in the filter stage after 3 of its parts; the rerun under Ray
    takes those 3 parts from their records (same fingerprint, same part layout) and
    computes the others on workers: the bytes of an unkilled run."""
    from curate.stages.filter.stage import HeuristicFilter

    toml = tmp_path / "p.toml"
    toml.write_text(KILL)
    cfg = load_config(toml)
    run_pipeline(cfg, tmp_path / "clean", executor=LocalExecutor())
    calls, orig = [], HeuristicFilter.annotate

    def annotate(self, table):
        calls.append(table.height)
        if len(calls) == 4:
            raise KeyboardInterrupt("killed inside the filter stage")
        return orig(self, table)

    monkeypatch.setattr(HeuristicFilter, "annotate", annotate)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, tmp_path / "run", executor=LocalExecutor())
    monkeypatch.setattr(HeuristicFilter, "annotate", orig)
    assert len(list((tmp_path / "run/stages").glob("*-filter/parts/part-*.json"))) == 3
    progress, logs = _logged()
    run_pipeline(cfg, tmp_path / "run", executor=RayExecutor(), progress=progress)
    assert any("[normalize] resumed" in x for x in logs), logs
    assert any("[filter] ray:" in x and "part(s) on workers (annotate), 3 resumed" in x for x in logs), logs
    _same_runs(tmp_path / "clean", tmp_path / "run", shards=False)


def test_limit_and_export_under_ray(ray_cluster, tmp_path):
    """`--limit` (a seeded sample per source, into its own run directory) and `[export]`
    come from the runner, so they work under Ray as locally: the same files."""
    from click.testing import CliRunner

    from curate.cli import main

    toml = tmp_path / "p.toml"
    toml.write_text(exact_dedup_pipeline(SAMPLE / "raw", part_rows=40)
                    + '\n[export]\nformats = ["jsonl", "parquet"]\ncard = false\n')
    for name, executor in (("local", "local"), ("ray", "ray")):
        res = CliRunner().invoke(main, ["run", str(toml), "--no-train", "--quiet", "--executor", executor,
                                        "--limit", "120", "--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
    _same_runs(tmp_path / "local", tmp_path / "ray", shards=False)
    m = json.loads((tmp_path / "ray/manifest.json").read_text())
    assert m["limit"]["per_source"] == 120 and m["ledger"]["read"] - m["ledger"]["quarantined"] == 120
    exported = sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray/export").iterdir())
    assert exported and all((tmp_path / "local" / p).read_bytes() == (tmp_path / "ray" / p).read_bytes()
                            for p in exported)
