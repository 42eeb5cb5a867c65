"""select's `gate_min`: a group is cut only where the mean of the gate column over its rows
in scope reaches the gate (e.g. the fold models' held-out agreement rate per task: where
they did not learn a task, a disagreement says nothing and nothing is dropped there)."""
import json

import polars as pl
import pytest

from curate.contract.typed_config import ConfigError, load_dataclass
from curate.stages.base import StageContext
from curate.stages.select import Config, SelectStage
from helpers import planned_on_copies
from test_select import make_table


def gate_table():
    """Task `learned`: 5 rows agree, 1 disagrees inside the scope (rate 5/6), and 2 outside
    (size 4: a vote decided them), one of them disagreeing. Task `unlearned`: 1 of 5 agree
    inside (rate 0.2). Task `edge`: rate exactly 0.5. Task `blank`: no agreement value."""
    rows = ([("learned", 1.0, f"l{i}", "x") for i in range(5)] + [("learned", 0.0, "l5", "x")]
            + [("learned", 0.0, "l6", "x"), ("learned", 1.0, "l7", "x")]
            + [("unlearned", 1.0, "u0", "x")] + [("unlearned", 0.0, f"u{i}", "x") for i in range(1, 5)]
            + [("edge", 1.0, "e0", "x"), ("edge", 0.0, "e1", "x")]
            + [("blank", None, "b0", "x"), ("blank", None, "b1", "x")])
    size = [1] * 6 + [4, 4] + [1] * 5 + [2, 2] + [1, 1]
    return make_table(rows).with_columns(pl.Series("size", size, dtype=pl.Int64))


def stage_for(tmp_path, logs=None, **kw):
    cfg = load_dataclass(Config, {"kind": "select", "column": "score", **kw})
    ctx = StageContext(run_dir=tmp_path, config_dir=tmp_path, seed=0, stage_dir=tmp_path / "st",
                       log=(logs.append if logs is not None else lambda m: None))
    return SelectStage(cfg, ctx)


def test_gate_cuts_only_groups_that_reach_it(tmp_path):
    logs = []
    t = gate_table()
    st = stage_for(tmp_path, logs, min=1.0, missing="keep", gate_min=0.5, scope_column="size", scope_max=2)
    r = st.process(t)
    dropped = sorted(r.dropped.select(pl.col("messages").list.get(0).struct.field("content")).to_series().to_list())
    # learned (5/6 >= 0.5): its one disagreeing row inside the scope goes; the one outside stays.
    # edge (exactly 0.5): cut. unlearned (0.2) and blank (no value): untouched.
    assert dropped == ["e1", "l5"]
    assert set(r.dropped["_reason"].to_list()) == {"below_min"}
    assert r.kept.height + r.dropped.height == t.height
    gate = r.stats["gate"]
    assert gate["column"] == "score" and gate["min"] == 0.5
    assert gate["cut"] == ["edge", "learned"] and gate["not_cut"] == ["blank", "unlearned"]
    assert gate["groups"]["learned"] == {"rate": round(5 / 6, 6), "n": 6, "applied": True}  # outside rows not counted
    assert gate["groups"]["unlearned"] == {"rate": 0.2, "n": 5, "applied": False}
    assert gate["groups"]["blank"] == {"rate": None, "n": 0, "applied": False}
    g = r.stats["groups"]
    assert g["learned"]["gate"]["applied"] and (g["learned"]["in"], g["learned"]["kept"]) == (6, 5)
    assert g["unlearned"]["outside_scope"] == 5 and g["unlearned"]["in"] == 0  # passed untouched
    assert any("'unlearned'" in m and "not cut" in m and "0.200" in m for m in logs)
    assert any("'learned'" in m and "the cut applies" in m for m in logs)
    # planned on parts: the same verdicts and stats (the group means are over the whole table)
    ref = stage_for(tmp_path, min=1.0, missing="keep", gate_min=0.5, scope_column="size", scope_max=2).process(t)
    got = planned_on_copies(st, t, 4)
    assert got.kept.equals(ref.kept) and got.dropped.equals(ref.dropped) and got.stats == ref.stats


def test_gate_without_scope_and_a_separate_gate_column(tmp_path):
    """No scope: every row counts toward its group's mean. `gate_column`: rank by one column
    (here the top half by score), gate by another (agreement)."""
    t = gate_table().with_columns(pl.Series("agree", [1.0] * 8 + [0.0] * 7 + [None, None]))
    t = t.with_columns(pl.int_range(t.height).cast(pl.Float64).alias("rank"))
    r = stage_for(tmp_path, min=1.0, missing="keep", gate_min=0.6).process(gate_table())
    # learned: 6/8 = 0.75 >= 0.6 -> both disagreeing rows go (no scope protects l6)
    assert r.stats["gate"]["cut"] == ["learned"] and r.dropped.height == 2
    st = stage_for(tmp_path, keep="highest", top_fraction=0.5, gate_min=0.5, gate_column="agree")
    res = st.process(t.drop("score").rename({"rank": "score"}))
    assert res.stats["gate"]["column"] == "agree" and res.stats["gate"]["cut"] == ["learned"]
    assert res.dropped["task"].to_list() == ["learned"] * 4  # top half of 8 by score, nothing elsewhere


def test_gate_refusals(tmp_path):
    with pytest.raises(ConfigError, match="gate_min"):
        load_dataclass(Config, {"kind": "select", "column": "score", "gate_column": "agree"})
    with pytest.raises(ConfigError, match="finite"):
        load_dataclass(Config, {"kind": "select", "column": "score", "gate_min": float("nan")})
    with pytest.raises(ValueError, match="gate_column 'nope'"):
        stage_for(tmp_path, min=1.0, gate_min=0.5, gate_column="nope").process(gate_table())
    cfg = load_dataclass(Config, {"kind": "select", "column": "score", "gate_min": 0.5, "gate_column": "agree"})
    assert ("gate_column", "agree") in cfg.column_refs()


def test_gate_reaches_the_manifest_and_the_report(tmp_path):
    """End to end: a gate no task reaches cuts nothing; the manifest and the report say so per task."""
    from pathlib import Path

    from curate.look.report import build_report
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run_pipeline

    repo = Path(__file__).resolve().parents[1]
    lines = (repo / "benchmarks" / "efficacy" / "example_pool.jsonl").read_text().splitlines()[:40]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("\n".join(lines) + "\n")
    tasks = {json.loads(x)["task"] for x in lines}
    (tmp_path / "p.toml").write_text(f"""
[run]
output_dir = "{tmp_path / 'run'}"

[[sources]]
name = "pool"
path = "{pool}"
format = "alpaca"
task_field = "task"

[[stages]]
kind = "normalize"

[[stages]]
kind = "quality"
scorer = "heuristic"

[[stages]]
kind = "select"
column = "heuristic"
top_fraction = 0.5
gate_min = 2.0

[render]
template = "chatml"
tokenizer = "{repo / 'sample_data' / 'tokenizer'}"
""")
    m = run_pipeline(load_config(tmp_path / "p.toml"))
    sel = next(s for s in m["stages"] if s["kind"] == "select")
    gate = sel["stats"]["gate"]
    assert gate["cut"] == [] and set(gate["not_cut"]) == tasks and len(tasks) > 1
    assert sel["rows_in"] == sel["rows_out"]  # nothing cut
    html = build_report(tmp_path / "run")
    assert "mean heuristic (gate 2.0)" in html and "not cut (passed untouched)" in html
