"""Issue #19: mix's, select's and consensus's plans hold a few integers a row, and decide exactly what
main decided before the change. MAIN holds the digests of tests/plan_cases.py run on main
at ecdd529 (the old plans: string group keys, joins, a per-row detail string; select's id
as a string): many groups, null tasks, val split, up- and downsampling, unit = tokens,
canonical ids (with repeats) and other ids (select's string fallback)."""
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plan_cases  # noqa: E402
from curate.contract.typed_config import load_dataclass  # noqa: E402
from curate.stages.base import ROW_COL, StageContext  # noqa: E402
from curate.stages.mix import Config as MixConfig, MixStage  # noqa: E402
from curate.stages.select import Config as SelectConfig, SelectStage  # noqa: E402

MAIN = {
    'mix/no_val/False': '585b8dcc362d3a1f9f6804d9',
    'mix/no_val/True': 'd1afe68135a60dd29f6804d9',
    'mix/targets_tokens/False': '5862af98a7369f94092bff1b',
    'mix/targets_tokens/True': '1c8523a169b3f48455e4accf',
    'mix/temperature/False': '47c64532b5eae54e845c9f5f',
    'mix/temperature/True': 'f935ba10394585f8845c9f5f',
    'mix/tokens_temperature/False': 'cd7dc5f9be4736451e9f482e',
    'mix/tokens_temperature/True': 'ebec632fb6f7fa0ad30e0138',
    'mix/upsample/False': '62d89f4e19cf577a58d975e9',
    'mix/upsample/True': '4b383e2e05ad1b4358d975e9',
    'mix/weights_source/False': '89c19f2e554ef523c11933cb',
    'mix/weights_source/True': '338645b3d59bbb72dea3b08a',
    'select/quotas_global/False': 'ea889175e55f6a09e51cd468',
    'select/quotas_global/True': '419f3f2c64717d3ce51cd468',
    'select/top_fraction/False': '175754ef99504ad1903c4315',
    'select/top_fraction/True': '627ffc16d86ef66b903c4315',
    'select/top_k_keep/False': 'e31767baf11948a06498d1ee',
    'select/top_k_keep/True': '9606ad058f1d4c7c6498d1ee',
}


# consensus on main e0aa5d6 (string ids and tasks in the keys, polars group-bys and joins)
MAIN_CONSENSUS = {
    "consensus/default/True": "ae1a272d39daa1ba600d7201",
    "consensus/exact_ties_drop/True": "8715dd8c850d257cbf11d59d",
    "consensus/plurality/True": "b2a44654f085a33a782e2100",
    "consensus/none/True": "bb37aae870074c2673dc2174",
    "consensus/default/False": "a30f145557b8db723ab8f991",
    "consensus/exact_ties_drop/False": "d67056216a4c1dd001d9e0f3",
    "consensus/plurality/False": "5eebb200e691076b9dddff26",
    "consensus/none/False": "c307d58589f5073873dc2174",
}


def test_outputs_equal_main_before_the_change():
    assert plan_cases.run_all() == MAIN


def test_consensus_outputs_equal_main_before_the_change():
    assert plan_cases.consensus_digests() == MAIN_CONSENSUS


def _keys(stage, t):
    return stage.keys(t).with_columns(pl.int_range(t.height, dtype=pl.UInt64).alias(ROW_COL))


def _ctx(tmp_path):
    return StageContext(tmp_path, tmp_path, 7, tmp_path / "stage", log=lambda m: None)


@pytest.mark.parametrize("case", ["upsample", "targets_tokens", "weights_source"])
def test_mix_plan_tables_have_no_strings_and_few_bytes_a_row(tmp_path, case):
    t = plan_cases.table(n=6000)
    st = MixStage(load_dataclass(MixConfig, plan_cases.MIX[case]), _ctx(tmp_path))
    keys = _keys(st, t)
    plan = st.plan(keys)
    for frame in (keys, plan.decisions):
        assert pl.String not in frame.schema.dtypes(), frame.schema
    assert keys.estimated_size() / keys.height <= 40  # 2 u64 keys, u32 units, 2 categorical codes, row
    assert plan.decisions.estimated_size() / t.height <= 20  # sparse, or 17 B a row with the token counts
    assert plan.order is None
    # the dropped rows' details: one string per group, not per row
    assert len(plan.details) == t[plan_cases.MIX[case].get("by", "task")].fill_null("").n_unique()


def test_select_keys_hold_canonical_ids_as_integers(tmp_path):
    t = plan_cases.table(n=6000)
    st = SelectStage(load_dataclass(SelectConfig, plan_cases.SELECT["top_fraction"]), _ctx(tmp_path))
    keys = _keys(st, t)
    assert "id" not in keys.columns and keys["__id_str"].null_count() == keys.height
    assert keys["__id_hi"].null_count() == 0
    assert keys.estimated_size() / keys.height <= 32
    # the integers order as the strings do
    order = keys.select(pl.int_range(pl.len()).sort_by("__id_hi", "__id_lo", maintain_order=True)).to_series()
    assert t["id"].gather(order).to_list() == sorted(t["id"].to_list())


def test_select_other_ids_fall_back_to_strings(tmp_path):
    t = plan_cases.table(n=500)
    t = t.with_columns(pl.when(pl.int_range(pl.len()) % 7 == 0).then(pl.lit("zz-custom")).otherwise(pl.col("id"))
                       .alias("id"))
    st = SelectStage(load_dataclass(SelectConfig, plan_cases.SELECT["top_k_keep"]), _ctx(tmp_path))
    keys = _keys(st, t)
    assert keys["__id_str"].null_count() < keys.height
    assert st._id_keys(keys)["id"].to_list() == t["id"].to_list()


@pytest.mark.parametrize("canonical", [True, False])
def test_consensus_plan_holds_integers_a_row(tmp_path, canonical):
    """Consensus's keys: hashes, the id as integers (canonical ids; others stay strings in
    the fallback column), the task as a Categorical; its decisions: a row and a distinct
    answer per row of a repeated prompt; everything else per answer or per group."""
    from curate.stages.base import complete_plan
    from curate.stages.consensus.stage import Config as ConsConfig, ConsensusStage

    t = plan_cases.consensus_table(n=4000, canonical_ids=canonical)
    st = ConsensusStage(load_dataclass(ConsConfig, plan_cases.CONSENSUS["default"]), _ctx(tmp_path))
    keys = _keys(st, t)
    strings = [c for c, d in keys.schema.items() if d == pl.String]
    assert strings == ["__cons_id_str"]
    assert (keys["__cons_id_str"].null_count() == keys.height) == canonical
    if canonical:
        assert keys.estimated_size() / keys.height <= 40  # 2 u64 hashes, u64 + u16 id, task code, empty, row
    plan = complete_plan(st, st.plan(keys), [(0, t.height)], lambda i: t)
    d = plan.decisions
    assert d.columns == ["_row", "__cons_aid"] and pl.String not in d.schema.dtypes()
    assert d.height == plan.stats["rows_in_repeated_groups"] < t.height
    assert d.estimated_size() / d.height <= 12
    for table in (plan.answers, plan.groups):
        for name, v in table.items():
            assert name in ("name", "majority_id") or (isinstance(v, np.ndarray) and v.dtype != object), name
    assert len(plan.groups["size"]) == plan.stats["groups_repeated"]


def test_select_plan_time_tables_hold_no_per_row_strings(tmp_path):
    """select's keys and its verdict table: the group and the verdicts as Categoricals (4 B
    a row), the id as integers; the only String column is the fallback id, all null for
    canonical ids; the decisions list the dropped rows only."""
    t = plan_cases.table(n=6000)
    st = SelectStage(load_dataclass(SelectConfig, {**plan_cases.SELECT["top_fraction"], "min": 0.05}), _ctx(tmp_path))
    keys = _keys(st, t)
    assert [c for c, d in keys.schema.items() if d == pl.String] == ["__id_str"]
    assert keys["__id_str"].null_count() == keys.height and keys.schema["__select_group"] == pl.Categorical
    assert keys.estimated_size() / keys.height <= 31  # group code, f64 score, u64 + u16 id, row (+ validity)
    v = st._verdicts(st._id_keys(keys))
    assert pl.String not in v.schema.dtypes(), v.schema
    plan = st.plan(keys)
    res = st.apply(t, plan, 0)
    assert plan.decisions.height == res.dropped.height < t.height
    assert set(plan.decisions["_reason"]) == {"missing_score", "below_min", "over_quota"}


def test_consensus_applied_columns_keep_main_dtypes(tmp_path):
    """The digests compare CSV text; the dtypes of the added columns are main's too."""
    from curate.stages.consensus.stage import Config as ConsConfig, ConsensusStage

    t = plan_cases.consensus_table(n=600)
    r = ConsensusStage(load_dataclass(ConsConfig, plan_cases.CONSENSUS["exact_ties_drop"]), _ctx(tmp_path)).process(t)
    want = [pl.Float64, pl.String, pl.UInt32, pl.UInt32, pl.UInt32, pl.Boolean, pl.Boolean, pl.Boolean]
    for frame in (r.kept, r.dropped):
        assert [frame.schema[c] for c in r.kept.columns[len(t.columns):]] == want
    assert r.dropped.height and r.dropped.schema["_reason"] == pl.String and r.dropped.schema["_detail"] == pl.String
    assert r.dropped.columns[: len(t.columns)] == t.columns


@pytest.mark.parametrize("case", sorted(plan_cases.SELECT))
def test_select_over_quota_by_windows_equals_the_joined_verdicts(tmp_path, case):
    """`_over_np` one window of rows at a time (#19) gives the joined comparison's verdicts
    whatever the window (1 row, uneven windows, one window): ties, null groups, quota 0."""
    st = SelectStage(load_dataclass(SelectConfig, plan_cases.SELECT[case]), _ctx(tmp_path))
    t = plan_cases.table(n=2000)
    v = st._verdicts(st._id_keys(_keys(st, t)))
    cut = st._cutoffs(v, st._n_in(v))
    order = st._order(v)[1:]
    want = st._over_joined(v, cut, order)
    assert 0 < want.sum() < len(want)  # some rows over their quota, some not
    for window in (1, 7, 333, None):
        assert np.array_equal(st._over_np(v, cut, order, window), want), window
