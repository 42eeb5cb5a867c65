"""`mix` with `balance = "upsample"`: no row is dropped by the mix, small groups repeat
toward their share up to `max_repeat` and fall short (reported) beyond it; the default
("downsample") is unchanged."""
import polars as pl
import pytest

from curate.contract.typed_config import ConfigError, load_dataclass
from curate.stages.base import StageContext
from curate.stages.mix import Config, MixStage
from test_mix import make_table, run, shares


def _train(r):
    return r.kept.filter(pl.col("split") == "train")


def test_upsample_keeps_every_row_and_balances(tmp_path):
    t = make_table({"big": 900, "mid": 300, "table": 60})
    r = run(t, tmp_path, weights={"*": 1.0}, balance="upsample", max_repeat=20, val_fraction=0.0)
    assert len(r.dropped) == 0  # nothing thrown away
    tr = _train(r)
    assert tr.select(pl.col("id").n_unique()).item() == len(t)
    sh = shares(r.kept)
    assert all(abs(v - 1 / 3) <= 0.01 for v in sh.values()), sh
    per = dict(tr.group_by("task").len().iter_rows())
    assert per == {"big": 900, "mid": 900, "table": 900}  # the largest group sets the total
    assert r.stats["upsampled"] == 600 + 840 and r.stats["within_1pct"] and not r.stats["shortfall"]
    assert tr.filter(pl.col("task") == "table")["repeat"].max() == 14  # 60 rows x 15 copies


def test_upsample_beyond_max_repeat_falls_short_and_says_so(tmp_path):
    t = make_table({"big": 900, "table": 60})
    said = []
    cfg = load_dataclass(Config, {"kind": "mix", "weights": {"*": 1.0}, "balance": "upsample", "max_repeat": 4,
                                  "val_fraction": 0.0})
    r = MixStage(cfg, StageContext(tmp_path, tmp_path, 0, tmp_path / "mix", log=said.append)).process(t)
    assert any("WARNING" in x and "table (240 of 900)" in x for x in said), said
    assert len(r.dropped) == 0
    per = dict(_train(r).group_by("task").len().iter_rows())
    assert per == {"big": 900, "table": 240}
    assert r.stats["shortfall"]["table"]["achievable"] == 240 and not r.stats["within_1pct"]


def test_upsample_with_temperature_and_val(tmp_path):
    t = make_table({"a": 800, "b": 200, "c": 50})
    r = run(t, tmp_path, temperature=2.0, balance="upsample", max_repeat=10, val_fraction=0.05)
    assert len(r.dropped) == 0  # val rows come from the data, the rest all train
    val = r.kept.filter(pl.col("split") == "val")
    assert set(val["task"]) == {"a", "b", "c"} and val["repeat"].max() == 0
    sh = shares(r.kept)
    want = {g: n ** 0.5 for g, n in {"a": 760, "b": 190, "c": 48}.items()}
    s = sum(want.values())
    assert all(abs(sh[g] - want[g] / s) <= 0.01 for g in want), sh
    r2 = run(t, tmp_path / "again", temperature=2.0, balance="upsample", max_repeat=10, val_fraction=0.05)
    assert r2.kept.equals(r.kept)  # deterministic


def test_downsample_is_the_default_and_unchanged(tmp_path):
    t = make_table({"big": 900, "table": 60})
    a = run(t, tmp_path, weights={"*": 1.0}, val_fraction=0.0)
    b = run(t, tmp_path / "b", weights={"*": 1.0}, balance="downsample", val_fraction=0.0)
    assert a.kept.equals(b.kept) and len(a.kept) == 120 and len(a.dropped) == 840


@pytest.mark.parametrize("extra", [{"total": 100}, {"targets": {"a": 10}}])
def test_balance_refused_with_fixed_amounts(extra):
    with pytest.raises(ConfigError, match="balance"):
        load_dataclass(Config, {"kind": "mix", "balance": "upsample", **extra})
