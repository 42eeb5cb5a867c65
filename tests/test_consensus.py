"""`consensus`: prompt groups, answer agreement (exact and near-equal), majority, ties."""
import polars as pl
import pytest

from curate.contract.typed_config import ConfigError, load_dataclass
from curate.stages.base import StageContext
from curate.stages.consensus.stage import Config, ConsensusStage
from tests.helpers import pair, records


def run(tmp_path, convs, **kw):
    cfg = load_dataclass(Config, {"kind": "consensus", **kw}, "stages[0]")
    stage = ConsensusStage(cfg, StageContext(run_dir=tmp_path, config_dir=tmp_path, seed=0, stage_dir=tmp_path / "c"))
    # distinct origins so exact copies are distinct rows (their content-hash ids are equal)
    return stage.process(records(convs))


def test_majority_wins_and_minority_is_dropped_with_columns(tmp_path):
    convs = [pair("Capital of France?", "Paris.")] * 3 + [pair("capital of france", "paris")] + \
            [pair("Capital of France?", "Lyon")] * 2 + [pair("What is 2+2?", "4")]
    res = run(tmp_path, convs)
    assert res.dropped.height == 2 and set(res.dropped["_reason"]) == {"minority_answer"}
    d = res.dropped.row(0, named=True)
    assert d["consensus_group_size"] == 6 and d["consensus_support"] == 2 and d["consensus_conflict"]
    assert d["_detail"].startswith("2/6 agree; the majority answer has 4/6")
    k = res.kept.filter(pl.col("consensus_group_size") == 6)
    assert k.height == 4 and k["consensus"].to_list() == [4 / 6] * 4 and k["consensus_majority"].all()
    single = res.kept.filter(pl.col("consensus_group_size") == 1).row(0, named=True)
    assert single["consensus"] == 1.0 and not single["consensus_conflict"] and single["consensus_majority"]
    st = res.stats
    assert st["conflict_groups"] == 1 and st["dropped_minority"] == 2 and st["groups"] == 2
    ex = st["examples"][0]
    assert ex["size"] == 6 and [a["count"] for a in ex["top"]] == [4, 2]


def test_tie_keeps_everything_and_is_flagged(tmp_path):
    convs = [pair("Q", "yes")] * 2 + [pair("Q", "no")] * 2
    res = run(tmp_path, convs)
    assert res.dropped.height == 0
    assert res.kept["consensus_tie"].all() and res.kept["consensus_conflict"].all()
    assert res.stats["tie_groups"] == 1


def test_ties_drop_removes_contested_groups_only(tmp_path):
    # "K1": 4 records, 4 different answers (support 1 each: a tie, nothing to follow);
    # "K2": 2 vs 2 with a minority of 1 (majority = 0: plurality); "K3": a clear winner;
    # "K4": a 2-record tie, below min_group
    convs = ([pair("K1", a) for a in ("11", "12", "13", "14")]
             + [pair("K2", "20")] * 2 + [pair("K2", "21")] * 2 + [pair("K2", "22")]
             + [pair("K3", "30")] * 3 + [pair("K3", "31")]
             + [pair("K4", "40"), pair("K4", "41")])
    keep = run(tmp_path, convs, majority=0.0)
    assert keep.dropped["_reason"].to_list() == ["minority_answer"] * 2  # K2's "22" and K3's "31"
    res = run(tmp_path, convs, majority=0.0, ties="drop")
    assert set(res.dropped["messages"].list.get(0).struct.field("content")) == {"K1", "K2", "K3"}
    by = res.dropped.group_by("_reason").len().sort("_reason")
    assert by.rows() == [("minority_answer", 2), ("tied_answers", 8)]  # K1's 4 + K2's 4 tied; K2's 22, K3's 31
    assert sorted(res.kept["messages"].list.get(1).struct.field("content").to_list()) == ["30", "30", "30", "40", "41"]
    assert res.stats["dropped_tied"] == 8 and res.stats["dropped_minority"] == 2
    assert res.kept.height + res.dropped.height == len(convs)
    with pytest.raises(ConfigError):
        run(tmp_path, convs, ties="maybe")


def test_small_groups_never_drop(tmp_path):
    res = run(tmp_path, [pair("Q", "a b c d"), pair("Q", "x y z"), pair("Q", "x y z")], min_group=4)
    assert res.dropped.height == 0 and res.kept["consensus_conflict"].all()


def test_near_equal_answers_agree(tmp_path):
    # one word of difference in ten: Jaccard 9/11 >= 0.8, so the three agree against "no"
    long = "the quick brown fox jumps over the lazy dog and runs far away"
    convs = [pair("Q", long), pair("Q", long + " today"), pair("Q", long.replace("far", "very far")), pair("Q", "no")]
    res = run(tmp_path, convs)
    assert res.dropped.height == 1 and res.dropped["messages"][0][1]["content"] == "no"
    assert sorted(res.kept["consensus_support"].to_list()) == [3, 3, 3]
    exact = run(tmp_path, convs, answer_similarity=1.0)  # exact only: all four disagree, a tie
    assert exact.dropped.height == 0 and exact.kept["consensus_tie"].all()


def test_near_equal_top_answers_are_not_a_tie(tmp_path):
    long = "the quick brown fox jumps over the lazy dog and runs far away"
    res = run(tmp_path, [pair("Q", long), pair("Q", long + " now"), pair("Q", "no")], drop="none")
    assert not res.kept["consensus_tie"].any() and res.kept["consensus_conflict"].all()


def test_empty_prompts_are_their_own_groups(tmp_path):
    convs = [[{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b"}],
             [{"role": "assistant", "content": "c"}]]
    res = run(tmp_path, convs)
    assert res.dropped.height == 0 and res.kept["consensus_group_size"].to_list() == [1, 1, 1]


def test_deterministic_and_order_free(tmp_path):
    convs = [pair(f"q{i % 5}", f"a{i % 3}") for i in range(40)]
    a = run(tmp_path, convs)
    b = run(tmp_path, convs[::-1])
    assert a.kept.height == b.kept.height
    cols = ["consensus", "consensus_support", "consensus_group"]
    assert a.kept.sort("id", *cols).select(cols).equals(b.kept.sort("id", *cols).select(cols))
    assert a.kept.height + a.dropped.height == 40


def test_config_errors():
    with pytest.raises(ConfigError, match="answer_similarity"):
        load_dataclass(Config, {"kind": "consensus", "answer_similarity": 0}, "s").validate()
    with pytest.raises(ConfigError, match="min_group"):
        load_dataclass(Config, {"kind": "consensus", "min_group": 1}, "s").validate()


def test_variants_of_the_majority_answer_are_kept(tmp_path):
    # near-equality is not transitive: W and V each agree with T but not with each other,
    # so their support is below T's; being near T, they are the majority, not outvoted
    t = "a b c d e f g h i j"
    w = t + " k l"                    # Jaccard with t: 10/12
    v = "a b c d e f g h i m"         # with t: 9/11; with w: 9/13 (not near)
    convs = [pair("Q", t)] * 2 + [pair("Q", w)] * 2 + [pair("Q", v), pair("Q", "no")]
    res = run(tmp_path, convs)
    assert [m[1]["content"] for m in res.dropped["messages"]] == ["no"]
    assert sorted(res.kept["consensus_support"].to_list()) == [3, 4, 4, 5, 5]


def test_select_keeps_the_majority_answer_from_the_columns(tmp_path):
    from curate.stages.select import Config as SelectConfig, SelectStage

    convs = [pair("Q", "yes")] * 3 + [pair("Q", "no")] + [pair("R", "x")]
    cons = run(tmp_path, convs, drop="none")
    assert cons.dropped.height == 0
    cfg = load_dataclass(SelectConfig, {"kind": "select", "column": "consensus_majority", "min": 1}, "stages[1]")
    ctx = StageContext(run_dir=tmp_path, config_dir=tmp_path, seed=0, stage_dir=tmp_path / "s", log=lambda m: None)
    sel = SelectStage(cfg, ctx).process(cons.kept)
    assert sorted(m[1]["content"] for m in sel.kept["messages"]) == ["x", "yes", "yes", "yes"]
    assert sel.dropped["_reason"].to_list() == ["below_min"]
