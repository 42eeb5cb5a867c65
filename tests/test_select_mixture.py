"""select's `cut = "mixture"`: per group, a two-Gaussian fit of the scores decides how many
rows go (the worse component's), or refuses and keeps every row when the data shows one
population (curate/stages/common/mixture.py)."""
import numpy as np
import polars as pl
import pytest

from curate.contract.typed_config import ConfigError, load_dataclass
from curate.stages.common import mixture as mx
from curate.stages.select import Config
from helpers import planned_on_copies
from test_select import make_table
from test_select_gate import stage_for


def bimodal(n_good=300, n_bad=100, seed=0):
    """Good rows around 0 (sd 1), bad rows around 6 (sd 1): the valley lies near 3.3
    (the posterior is 0.5 where 3 x N(x|0,1) = N(x|6,1): x = 3 + ln(3)/6)."""
    rng = np.random.default_rng(seed)
    return np.r_[rng.normal(0.0, 1.0, n_good), rng.normal(6.0, 1.0, n_bad)]


def test_fit_finds_planted_components_and_cuts_at_the_valley():
    x = bimodal()
    d = mx.decide(x, "high")
    assert d["applied"] and d["reason"] is None
    assert abs(d["noise"] - 0.25) < 0.03
    assert abs(d["means"][0]) < 0.2 and abs(d["means"][1] - 6.0) < 0.2
    assert d["separation"] > 4
    # the cut is the first data value past the valley: nothing below the valley goes, all above it
    drop = x >= d["cut"]
    assert not drop[x < 3.0].any() and drop[x > 3.4].all()
    assert d["dropped"] == int((x >= d["cut"]).sum())
    assert abs(d["dropped"] - 100) <= 3
    # keep = "highest" orientation: the low component is the worse one
    e = mx.decide(-x, "low")
    assert e["applied"] and abs(e["cut"] + d["cut"]) < 1e-9 and e["dropped"] == d["dropped"]


def test_unimodal_and_degenerate_data_refuse():
    rng = np.random.default_rng(1)
    d = mx.decide(rng.normal(0, 1, 2000), "high")
    assert not d["applied"] and "BIC" in d["reason"]
    assert not mx.decide(np.full(100, 0.7), "high")["applied"]  # every score tied
    few = mx.decide(bimodal(20, 10), "high", min_rows=50)
    assert not few["applied"] and "mixture_min_rows" in few["reason"]
    # two populations that overlap (means 1 sd apart): BIC may see two, the separation bar refuses
    close = mx.decide(np.r_[rng.normal(0, 1, 3000), rng.normal(1.0, 1, 1000)], "high", min_separation=1.5)
    assert not close["applied"]
    # the worse component a majority: a score that ranks most rows as bad is no noise detector
    flip = mx.decide(bimodal(100, 300), "high")
    assert not flip["applied"] and "majority" in flip["reason"] and flip["noise"] > 0.5


def test_fit_is_deterministic_and_order_free():
    x = bimodal(seed=3)
    a, b = mx.fit(x), mx.fit(x[::-1].copy())
    assert a == b  # the same bits: sorted input, fixed start, no randomness


def test_ties_share_a_verdict_and_cannot_collapse_a_component():
    # heavy ties at the good end (many rows with the same low loss) and a bad tail
    x = np.r_[np.full(200, 0.1), np.linspace(0.0, 0.3, 100), np.linspace(2.0, 3.0, 80), np.full(20, 2.5)]
    d = mx.decide(x, "high")
    assert d["applied"] and all(np.isfinite(d["sds"])) and min(d["sds"]) > 0
    dropped = x >= d["cut"]
    for v in np.unique(x):  # every copy of a value has the same verdict
        assert len(set(dropped[x == v])) == 1
    assert dropped[x >= 2.0].all() and not dropped[x <= 0.3].any()


def mixture_table(seed=0):
    """Task `noisy`: 120 good (score ~0.05) + 40 bad (~0.5); task `clean`: 160 good only;
    task `tiny`: 10 rows. Scores are a loss-ratio-like positive column (log scale)."""
    rng = np.random.default_rng(seed)
    noisy = np.r_[np.exp(rng.normal(np.log(0.05), 0.3, 120)), np.exp(rng.normal(np.log(0.5), 0.3, 40))]
    clean = np.exp(rng.normal(np.log(0.05), 0.3, 160))
    tiny = np.exp(rng.normal(np.log(0.05), 0.3, 10))
    rows = ([("noisy", float(s), f"n{i}", "bad" if i >= 120 else "good") for i, s in enumerate(noisy)]
            + [("clean", float(s), f"c{i}", "good") for i, s in enumerate(clean)]
            + [("tiny", float(s), f"t{i}", "good") for i, s in enumerate(tiny)])
    return make_table(rows)


def test_stage_cuts_the_noisy_group_refuses_the_clean_one_and_says_so(tmp_path):
    logs = []
    t = mixture_table()
    st = stage_for(tmp_path, logs, keep="lowest", cut="mixture", mixture_scale="log")
    r = st.process(t)
    assert r.kept.height + r.dropped.height == t.height
    assert set(r.dropped["_reason"]) == {"mixture_worse"}
    assert set(r.dropped["task"]) == {"noisy"}
    answers = r.dropped.select(pl.col("messages").list.get(1).struct.field("content")).to_series()
    assert (answers == "bad").sum() >= 38 and (answers == "good").sum() <= 2
    m = r.stats["mixture"]
    assert m["cut"] == ["noisy"] and m["refused"] == ["clean", "tiny"]
    assert abs(m["groups"]["noisy"]["noise"] - 0.25) < 0.05
    assert "BIC" in m["groups"]["clean"]["reason"] and "mixture_min_rows" in m["groups"]["tiny"]["reason"]
    assert r.stats["groups"]["noisy"]["mixture"]["applied"]
    assert any("'noisy'" in x and "est. noise" in x and "dropped" in x for x in logs)
    assert any("'clean'" in x and "REFUSED" in x and "every row kept" in x for x in logs)
    assert "mixture cut" in r.dropped["_detail"][0]
    # a kept row never scores worse than a dropped one of its group
    kept_noisy = r.kept.filter(pl.col("task") == "noisy")["score"]
    assert kept_noisy.max() < r.dropped["score"].min()
    # planned on parts (a distributed executor): the same verdicts and stats
    got = planned_on_copies(st, t, 37)
    assert got.kept.equals(r.kept) and got.dropped.equals(r.dropped) and got.stats == r.stats


def test_stage_with_scope_and_log_of_nonpositive_refuses(tmp_path):
    t = mixture_table().with_columns(pl.Series("size", [1] * 150 + [5] * 10 + [1] * 170, dtype=pl.Int64))
    r = stage_for(tmp_path, keep="lowest", cut="mixture", mixture_scale="log", scope_column="size",
                  scope_max=2).process(t)
    # the last 10 bad rows of `noisy` are outside the scope (a vote decided them): untouched
    assert r.stats["groups"]["noisy"]["outside_scope"] == 10
    assert r.dropped.height >= 28 and set(r.dropped["task"]) == {"noisy"}
    neg = t.with_columns(pl.when(pl.col("task") == "noisy").then(pl.col("score") - 1.0).otherwise(pl.col("score"))
                         .alias("score"))
    r2 = stage_for(tmp_path, keep="lowest", cut="mixture", mixture_scale="log").process(neg)
    assert "positive" in r2.stats["mixture"]["groups"]["noisy"]["reason"] and r2.dropped.height == 0


def test_mixture_config_refusals():
    base = {"kind": "select", "column": "score", "cut": "mixture"}
    for extra, key in (({"top_fraction": 0.8}, "top_fraction"), ({"top_k": 3}, "top_k"),
                       ({"quotas": {"a": 1}}, "quotas"), ({"diversity": 0.1}, "diversity"),
                       ({"mixture_posterior": 1.0}, "mixture_posterior"), ({"mixture_min_rows": 2}, "mixture_min_rows"),
                       ({"mixture_max_noise": 0.0}, "mixture_max_noise"),
                       ({"mixture_min_separation": -1.0}, "mixture_min_separation")):
        with pytest.raises(ConfigError, match=key):
            load_dataclass(Config, {**base, **extra})
    with pytest.raises(ConfigError, match="cut"):
        load_dataclass(Config, {**base, "cut": "valley"})
    load_dataclass(Config, {**base, "min": 0.0, "mixture_scale": "log"})  # thresholds still apply first


def test_manifest_and_report_carry_each_groups_mixture_verdict(tmp_path):
    """End to end: a run with `cut = "mixture"` puts the per-group fit in the manifest and
    a column of the report's select table (cut or REFUSED, with the reason)."""
    import json

    import test_report as tr
    from curate.look.report import write_report
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run_pipeline

    tr.write_inputs(tmp_path)
    pipe = tr.PIPELINE.format()
    assert "top_fraction = 0.8" in pipe
    (tmp_path / "pipeline.toml").write_text(pipe.replace("top_fraction = 0.8", 'cut = "mixture"\nmixture_min_rows = 4'))
    run_pipeline(load_config(tmp_path / "pipeline.toml"))
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    sel = next(s for s in m["stages"] if s["kind"] == "select")
    mix = sel["stats"]["mixture"]
    assert set(mix["cut"]) | set(mix["refused"]) == set(mix["groups"]) and mix["groups"]
    for g, d in mix["groups"].items():
        assert d["applied"] == (d["reason"] is None)
    html = write_report(tmp_path / "run").read_text(encoding="utf-8")
    assert "2-component mixture on heuristic" in html
    assert all(("REFUSED" in html) if not d["applied"] else ("dropped" in html) for d in mix["groups"].values())
