"""`select`: thresholds, exact quotas per group and globally, order, diversity."""
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings, strategies as st

from curate.contract.schema import POLARS_MESSAGES
from curate.stages.base import StageContext
from curate.stages.select import Config, SelectStage
from helpers import planned_on_copies
from curate.contract.typed_config import ConfigError, load_dataclass


def make_table(rows):
    """rows: (task, score, user, answer)"""
    return pl.DataFrame(
        {
            "id": [f"id{i:04d}" for i in range(len(rows))],
            "source": ["s"] * len(rows),
            "task": [r[0] for r in rows],
            "messages": [[{"role": "user", "content": r[2]}, {"role": "assistant", "content": r[3]}] for r in rows],
            "meta": ["{}"] * len(rows),
            "origin": [f"f:{i}" for i in range(len(rows))],
            "score": [r[1] for r in rows],
        },
        schema_overrides={"score": pl.Float64, "messages": POLARS_MESSAGES, "id": pl.String, "source": pl.String,
                          "task": pl.String, "meta": pl.String, "origin": pl.String},
    )


def run(table, tmp_path, **kw):
    cfg = load_dataclass(Config, {"kind": "select", "column": "score", **kw})
    ctx = StageContext(run_dir=tmp_path, config_dir=tmp_path, seed=0, stage_dir=tmp_path / "st")
    return SelectStage(cfg, ctx).process(table)


def test_threshold_and_missing(tmp_path):
    t = make_table([("a", 0.1, "u", "x"), ("a", 0.5, "u", "y"), ("a", None, "u", "z"), ("a", 0.9, "u", "w"),
                    ("a", float("nan"), "u", "v")])
    r = run(t, tmp_path, min=0.2, max=0.8)
    assert r.kept["score"].to_list() == [0.5]
    assert dict(r.dropped.group_by("_reason").len().iter_rows()) == {"below_min": 1, "above_max": 1, "missing_score": 2}
    assert len(r.kept) + len(r.dropped) == len(t)
    assert set(r.kept.columns) == set(t.columns)


def test_top_k_per_task_keeps_best_in_table_order(tmp_path):
    t = make_table([("a", 0.3, "1", "x"), ("b", 0.9, "2", "x"), ("a", 0.8, "3", "x"), ("a", 0.5, "4", "x"),
                    ("b", 0.1, "5", "x")])
    r = run(t, tmp_path, top_k=2)
    assert r.kept["id"].to_list() == ["id0001", "id0002", "id0003", "id0004"]
    r = run(t, tmp_path, top_k=1, keep="lowest")
    assert sorted(r.kept["score"].to_list()) == [0.1, 0.3]
    r = run(t, tmp_path, top_k=2, by="global")
    assert sorted(r.kept["score"].to_list()) == [0.8, 0.9]
    assert r.stats["groups"]["all"]["dropped"] == {"over_quota": 3}


@settings(max_examples=40, deadline=None)
@given(
    data=st.lists(st.tuples(st.sampled_from("abc"), st.one_of(st.none(), st.floats(-5, 5))), min_size=0, max_size=60),
    top_k=st.one_of(st.none(), st.integers(0, 20)),
    frac=st.one_of(st.none(), st.floats(0.01, 1.0)),
    quota_a=st.one_of(st.none(), st.integers(0, 10)),
)
def test_quotas_are_exact(tmp_path_factory, data, top_k, frac, quota_a):
    import math

    tmp = tmp_path_factory.mktemp("sel")
    t = make_table([(task, s, f"u{i}", "x") for i, (task, s) in enumerate(data)])
    kw = {}
    if top_k is not None:
        kw["top_k"] = top_k
    if frac is not None:
        kw["top_fraction"] = frac
    if quota_a is not None:
        kw["quotas"] = {"a": quota_a}
    r = run(t, tmp, **kw)
    assert len(r.kept) + len(r.dropped) == len(t)
    for task in "abc":
        sub = t.filter(pl.col("task") == task)
        n_in = len(sub)
        valid = sub.filter(pl.col("score").is_not_null())
        q = quota_a if (task == "a" and quota_a is not None) else top_k
        if frac is not None:
            f = math.floor(frac * n_in + 1e-9)
            q = f if q is None else min(q, f)
        expect = len(valid) if q is None else min(q, len(valid))
        got = r.kept.filter(pl.col("task") == task)
        assert len(got) == expect
        if expect:  # the kept ones are the best ones
            assert got["score"].min() >= valid["score"].sort(descending=True)[expect - 1]


def test_deterministic(tmp_path):
    rng = np.random.default_rng(0)
    t = make_table([("a", float(rng.integers(0, 3)), f"text {i}", "x") for i in range(50)])
    a = run(t, tmp_path, top_k=10)
    b = run(t.sample(fraction=1.0, shuffle=True, seed=1), tmp_path, top_k=10)
    assert sorted(a.kept["id"].to_list()) == sorted(b.kept["id"].to_list())


def test_diversity_skips_near_duplicates(tmp_path):
    rows = [
        ("a", 0.9, "how do I bake sourdough bread at home", "use a starter and flour"),
        ("a", 0.8, "how do I bake sourdough bread at home please", "use a starter and flour"),
        ("a", 0.7, "explain the rules of chess castling", "king moves two squares"),
        ("a", 0.6, "what is the capital of france", "paris"),
        ("a", 0.5, "what is the capital of france?", "paris"),
    ]
    r = run(make_table(rows), tmp_path, diversity=0.3)
    assert r.kept["id"].to_list() == ["id0000", "id0002", "id0003"]
    sim = r.dropped.filter(pl.col("_reason") == "too_similar")
    assert sim["_detail"].to_list()[0].startswith("id0000 distance=")
    r = run(make_table(rows), tmp_path, diversity=0.3, top_k=2)
    assert r.kept["id"].to_list() == ["id0000", "id0002"]
    assert r.stats["groups"]["a"]["dropped"] == {"over_quota": 2, "too_similar": 1}


def test_diversity_with_precomputed_column(tmp_path):
    t = make_table([("a", 0.9, "x", "y"), ("a", 0.8, "x", "y"), ("a", 0.7, "x", "y")]).with_columns(
        pl.Series("emb", [[1.0, 0.0], [0.99, 0.1], [0.0, 1.0]]))
    r = run(t, tmp_path, diversity=0.1, embedding="column", embedding_column="emb")
    assert r.kept["id"].to_list() == ["id0000", "id0002"]


def test_config_refusals():
    with pytest.raises(ConfigError, match="min"):
        load_dataclass(Config, {"kind": "select", "column": "s", "min": 2, "max": 1})
    with pytest.raises(ConfigError, match="top_fraction"):
        load_dataclass(Config, {"kind": "select", "column": "s", "top_fraction": 1.5})
    with pytest.raises(ConfigError, match="embedding_model"):
        load_dataclass(Config, {"kind": "select", "column": "s", "diversity": 0.2, "embedding": "model"})
    with pytest.raises(ConfigError, match="unknown key"):
        load_dataclass(Config, {"kind": "select", "column": "s", "topk": 3})
    cfg = load_dataclass(Config, {"kind": "select", "column": "s", "diversity": 0.2, "embedding": "model",
                                  "embedding_model": "nope"})
    with pytest.raises(ConfigError, match="no model directory"):
        cfg.check_paths(Path("/nonexistent"))


def test_unknown_column_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="score column 'nope'"):
        cfg = load_dataclass(Config, {"kind": "select", "column": "nope"})
        SelectStage(cfg, StageContext(tmp_path, tmp_path, 0, tmp_path)).process(make_table([("a", 1.0, "u", "x")]))


def test_empty_table(tmp_path):
    t = make_table([])
    for kw in ({"top_k": 3}, {"diversity": 0.2}, {"min": 0.5, "top_fraction": 0.5}):
        r = run(t, tmp_path, **kw)
        assert len(r.kept) == 0 and len(r.dropped) == 0


@pytest.mark.parametrize("kw", [
    {"top_k": 7}, {"top_k": 7, "keep": "lowest", "missing": "keep"}, {"top_fraction": 0.3, "by": "global"},
    {"quotas": {"a": 0, "b": 5}, "top_k": 9, "min": 0.1}, {"min": 0.2, "max": 0.9}, {"top_fraction": 0.5, "top_k": 4},
])
def test_blockwise_plan_equals_process(tmp_path, kw):
    """Cutoffs found from the keys of several blocks give process()'s kept, dropped and
    stats exactly, with ties (equal scores, -0.0 and 0.0, duplicate ids) and missing scores."""
    rng = np.random.default_rng(1)
    n = 97
    scores = rng.choice([0.0, -0.0, 0.25, 0.5, 0.5, 0.75, None, float("nan"), 1.0], n).tolist()
    t = make_table([(str(rng.choice(["a", "b", "c"])), s, f"u{i}", "x") for i, s in enumerate(scores)])
    t = t.with_columns(pl.when(pl.int_range(pl.len()) % 10 == 3).then(pl.lit("dup")).otherwise(pl.col("id")).alias("id"))
    cfg = load_dataclass(Config, {"kind": "select", "column": "score", **kw})
    stage = SelectStage(cfg, StageContext(run_dir=tmp_path, config_dir=tmp_path, seed=0, stage_dir=tmp_path))
    ref = stage.process(t)
    assert ref.dropped.height and ref.kept.height
    # the documented order, in plain Python: best first, missing last, ties by id then position
    lo, hi = kw.get("min", -math.inf), kw.get("max", math.inf)
    rows = [(i, r["task"] if kw.get("by") != "global" else "all", r["score"], r["id"]) for i, r in enumerate(t.iter_rows(named=True))]
    sign = 1 if kw.get("keep") == "lowest" else -1
    cands = [(g, s is None or s != s, 0.0 if s is None or s != s else sign * s + 0.0, ident, i) for i, g, s, ident in rows
             if (s is not None and s == s and lo <= s <= hi) or (kw.get("missing") == "keep" and (s is None or s != s))]
    expect = []
    for g in sorted({c[0] for c in cands}):
        mine = sorted(c for c in cands if c[0] == g)
        q = stage._quota(g, sum(1 for r in rows if r[1] == g))
        expect += [c[4] for c in (mine if q is None else mine[:q])]
    assert ref.kept.height == len(expect)
    assert ref.kept["origin"].to_list() == [f"f:{i}" for i in sorted(expect)]
    for size in (10, 33):
        got = planned_on_copies(stage, t, size)
        assert got.kept.equals(ref.kept) and got.dropped.equals(ref.dropped) and got.stats == ref.stats


# ---- a scorer must earn its select ---------------------------------------------------------

def _labelled(score_of, n=200, seed=0):
    rng = np.random.default_rng(seed)
    good = rng.random(n) < 0.5
    t = make_table([("t", float(score_of(g, rng)), f"u{i}", "a") for i, g in enumerate(good)])
    return t.with_columns(pl.Series("verifier", good.astype(float)))


def _select(tmp_path, table, logs, **kw):
    cfg = load_dataclass(Config, {"kind": "select", "column": "score", "top_fraction": 0.5, **kw}, "stages[0]")
    ctx = StageContext(run_dir=tmp_path, config_dir=tmp_path, seed=0, stage_dir=tmp_path / "st", log=logs.append)
    return SelectStage(cfg, ctx).process(table)


def test_auc_warning_fires_on_a_random_scorer_not_on_a_good_one(tmp_path):
    logs = []
    rnd = _select(tmp_path, _labelled(lambda g, r: r.random()), logs)
    s = rnd.stats["signal"]
    assert s["labels"] == "verifier" and s["verdict"] == "no_signal" and s["ci"][0] < 0.5 < s["ci"][1]
    assert "warning" in s and any(m.startswith("WARNING select") for m in logs)
    logs.clear()
    good = _select(tmp_path, _labelled(lambda g, r: r.random() + (0.6 if g else 0.0)), logs)
    s = good.stats["signal"]
    assert s["verdict"] == "signal" and s["auc"] > 0.7 and "warning" not in s and not logs
    # the same good score selected the wrong way round is inverted
    inv = _select(tmp_path, _labelled(lambda g, r: r.random() + (0.6 if g else 0.0)), logs, keep="lowest")
    assert inv.stats["signal"]["verdict"] == "inverted"


def test_require_signal_refuses_a_random_scorer_and_unvalidated_selection(tmp_path):
    with pytest.raises(ConfigError, match="require_signal.*does not separate"):
        _select(tmp_path, _labelled(lambda g, r: r.random()), [], require_signal=True)
    unlabelled = _labelled(lambda g, r: r.random()).drop("verifier")
    res = _select(tmp_path, unlabelled, [])
    assert res.stats["signal"]["verdict"] == "unvalidated" and "unvalidated" in res.stats["signal"]["note"]
    with pytest.raises(ConfigError, match="not validated"):
        _select(tmp_path, unlabelled, [], require_signal=True)
    ok = _select(tmp_path, _labelled(lambda g, r: r.random() + (0.6 if g else 0.0)), [], require_signal=True)
    assert ok.kept.height == 100


# ---- scope: rank only some rows ---------------------------------------------------------------

def test_scope_ranks_only_rows_inside_it(tmp_path):
    """`scope_column` + bounds: rows outside pass untouched (even below `min`), the quota is a
    fraction of the rows inside; blockwise planning gives the same result."""
    rows = [("a", s, f"u{i}", "x") for i, s in enumerate([0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.05, 0.6])]
    t = make_table(rows).with_columns(pl.Series("size", [1, 1, 1, 1, 5, 5, 5, None], dtype=pl.Int64))
    r = run(t, tmp_path, top_fraction=0.5, min=0.15, scope_column="size", scope_max=2)
    # inside (size <= 2): 0.9 0.1 0.8 0.2; 0.1 below min, quota floor(0.5 * 4) = 2 keeps 0.9 and 0.8;
    # outside (size 5, and null): 0.7 0.3 0.05 0.6 all kept
    assert sorted(r.kept["score"].to_list()) == [0.05, 0.3, 0.6, 0.7, 0.8, 0.9]
    assert dict(r.dropped.group_by("_reason").len().iter_rows()) == {"below_min": 1, "over_quota": 1}
    g = r.stats["groups"]["a"]
    assert (g["in"], g["kept"], g["quota"], g["outside_scope"]) == (4, 2, 2, 4)
    assert r.stats["scope"] == {"column": "size", "min": None, "max": 2, "outside": 4}
    r2 = run(t, tmp_path, top_fraction=0.5, min=0.15, scope_column="size", scope_min=3)
    assert sorted(r2.kept["score"].to_list()) == [0.1, 0.2, 0.6, 0.7, 0.8, 0.9]  # inside: 0.7 0.3 0.05
    cfg = load_dataclass(Config, {"kind": "select", "column": "score", "top_fraction": 0.5, "scope_column": "size",
                                  "scope_max": 2})
    stage = SelectStage(cfg, StageContext(run_dir=tmp_path, config_dir=tmp_path, seed=0, stage_dir=tmp_path))
    ref = stage.process(t)
    got = planned_on_copies(stage, t, 3)
    assert got.kept.equals(ref.kept) and got.dropped.equals(ref.dropped) and got.stats == ref.stats


def test_scope_group_with_no_row_inside_and_refusals(tmp_path):
    t = make_table([("a", 0.9, "1", "x"), ("b", 0.1, "2", "x"), ("b", 0.2, "3", "x")]).with_columns(
        pl.Series("size", [1, 4, 4]))
    r = run(t, tmp_path, top_k=0, scope_column="size", scope_max=1)
    assert r.kept["task"].to_list() == ["b", "b"] and r.stats["groups"]["b"]["in"] == 0
    r = run(t, tmp_path, top_k=1, diversity=0.5, scope_column="size", scope_min=2)  # the sequential walk too
    assert sorted(r.kept["score"].to_list()) == [0.2, 0.9]
    for kw, key in (({"scope_max": 2}, "scope_column"), ({"scope_column": "size"}, "scope_column"),
                    ({"scope_column": "size", "scope_min": 3, "scope_max": 2}, "scope_min")):
        with pytest.raises(ConfigError) as e:
            load_dataclass(Config, {"kind": "select", "column": "score", **kw})
        assert e.value.key.endswith(key) if hasattr(e.value, "key") else key in str(e.value)
    with pytest.raises(ValueError, match="scope_column 'nope'"):
        run(t, tmp_path, top_k=1, scope_column="nope", scope_max=1)
