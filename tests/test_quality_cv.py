"""The cross-validated loss scorer: a tiny real model, fine-tuned on k-1 folds of a small
pool, ranks planted wrong answers above right ones on the held-out folds."""
import random

import numpy as np
import pytest

from curate.contract.typed_config import ConfigError, load_dataclass
from curate.stages.base import StageContext
from curate.stages.common.signal import auc
from tests.helpers import pair, records

torch = pytest.importorskip("torch")


def pool(per_name=10, wrong_share=0.25, seed=0):
    """A fixed name -> colour table asked in `per_name` phrasings each (distinct ids, so the
    same fact lands in several folds); a quarter of the answers name a wrong colour."""
    rng = random.Random(seed)
    names = ["cat", "dog", "bird", "fish", "frog", "bear", "lion", "duck"]
    colors = ["red", "blue", "green", "yellow", "pink", "brown", "white", "black"]
    truth = dict(zip(names, colors))
    convs, good = [], []
    for n in names:
        for j in range(per_name):
            wrong = rng.random() < wrong_share
            a = rng.choice([c for c in colors if c != truth[n]]) if wrong else truth[n]
            convs.append(pair(f"Story {j}: what color is the {n}?", f"The {n} is {a}."))
            good.append(not wrong)
    return records(convs), np.array(good)


@pytest.mark.slow  # two fine-tunings of a 260k-parameter model: ~10 s on one core
def test_cv_loss_ranks_planted_wrong_answers_above_right_ones(tmp_path, shared_data):
    from curate.stages.quality.stage import Config, QualityStage

    model = shared_data("models", "stories260K")
    torch.set_num_threads(1)
    table, good = pool()
    cfg = load_dataclass(Config, {"kind": "quality", "scorer": "cv_loss", "model": str(model), "folds": 2,
                                  "cv_method": "full", "cv_epochs": 8, "cv_lr": 3e-3}, "stages[0]")
    ctx = StageContext(run_dir=tmp_path, config_dir=tmp_path, seed=0, stage_dir=tmp_path / "q", log=lambda m: None)
    res = QualityStage(cfg, ctx).process(table)
    out = res.kept
    assert out.height == table.height and set(out["cv_loss_fold"].unique()) == {0, 1}
    held, base = out["cv_loss"].to_numpy(), out["cv_loss_base_loss"].to_numpy()
    # the base model knows nothing of the table; the pool teaches it the right colours
    assert auc(-base, good) < 0.7
    assert auc(-held, good) > 0.85 and auc(-out["cv_loss_ratio"].to_numpy(), good) > 0.85
    assert np.nanmean(held[good]) < np.nanmean(held[~good])
    assert res.stats["fine_tunings"] == 2 and len(res.stats["train_loss"]["0"]) == 8
    # agreement: the fold models reproduce right answers exactly far more often than planted wrong ones
    agree, acc = out["cv_loss_agree"].to_numpy(), out["cv_loss_token_acc"].to_numpy()
    assert set(np.unique(agree)) <= {0.0, 1.0} and ((acc >= 0) & (acc <= 1)).all()
    assert (agree[acc < 1] == 0).all() and (agree[acc == 1] == 1).all()
    assert agree[good].mean() > 0.6 and agree[~good].mean() < 0.1  # measured: 0.86 / 0.0
    # margin (worst answer token) and regret (mean): a planted wrong colour is a token the fold
    # model is confident of and the record disagrees with, so both rank it below right answers
    margin, regret = out["cv_loss_margin"].to_numpy(), out["cv_loss_regret"].to_numpy()
    assert auc(margin, good) > 0.85 and auc(-regret, good) > 0.85
    assert np.nanmedian(margin[~good]) < -1.0 < np.nanmedian(margin[good])
    assert (regret >= 0).all() and (regret[agree == 1] == 0).all() and ((margin >= 0) == (agree == 1)).all()
    a = res.stats["agreement"]["t"]
    assert a["n"] == table.height and a["agree"] == pytest.approx(agree.mean(), abs=1e-6)


def test_cv_loss_config_refusals():
    from curate.stages.quality.stage import Config

    with pytest.raises(ConfigError, match="folds"):
        load_dataclass(Config, {"kind": "quality", "scorer": "cv_loss", "model": "m", "folds": 6}, "s")
    with pytest.raises(ConfigError, match="model"):
        load_dataclass(Config, {"kind": "quality", "scorer": "cv_loss"}, "s")


def test_trusted_rows_are_the_best_share_per_task_ties_by_id():
    import polars as pl

    from curate.stages.quality.stage import Config, QualityStage

    cfg = load_dataclass(Config, {"kind": "quality", "scorer": "cv_loss", "model": "m", "trust_column": "r",
                                  "trust_fraction": 0.5}, "s")
    t = pl.DataFrame({"id": ["d", "c", "b", "a", "e", "f"], "task": ["t", "t", "t", "t", "u", "u"],
                      "r": [0.1, 0.4, None, 0.4, float("nan"), 2.0]})
    # task t: 3 scored rows -> ceil(1.5) = 2 trusted: 0.1 and the tie at 0.4 goes to id "a";
    # a missing or NaN score is never trusted; task u: its one scored row
    assert QualityStage._trusted(t, cfg).tolist() == [True, False, False, True, False, True]
    # the row order does not change the choice
    assert QualityStage._trusted(t.reverse(), cfg).tolist() == [True, False, True, False, False, True]
    hi = load_dataclass(Config, {"kind": "quality", "scorer": "cv_loss", "model": "m", "trust_column": "r",
                                 "trust_keep": "highest", "trust_fraction": 0.5}, "s")
    assert QualityStage._trusted(t, hi).tolist() == [False, True, False, True, False, True]
    with pytest.raises(ConfigError, match="trust_column"):
        QualityStage._trusted(t.drop("r"), cfg)
    with pytest.raises(ConfigError, match="trust_fraction"):
        load_dataclass(Config, {"kind": "quality", "scorer": "cv_loss", "model": "m", "trust_fraction": 0.0}, "s")
    with pytest.raises(ConfigError, match="trust_column"):
        load_dataclass(Config, {"kind": "quality", "scorer": "heuristic", "trust_column": "r"}, "s")


@pytest.mark.slow  # four fine-tunings of a 260k-parameter model: ~25 s on one core
def test_second_round_trains_only_on_trusted_rows_and_scores_every_row(tmp_path, shared_data):
    """Iterative cross-validation: round 2's fold models train on round 1's trusted rows
    only (fewer trained records), every row is still scored by a model of another fold,
    and round 2 still ranks the planted wrong answers well (measured: AUC 0.837, round 1 0.857:
    on this small fixed table a second round does not help, it must not break the ranking)."""
    from curate.stages.quality.stage import Config, QualityStage

    model = shared_data("models", "stories260K")
    torch.set_num_threads(1)
    table, good = pool(wrong_share=0.35)
    base = {"kind": "quality", "scorer": "cv_loss", "model": str(model), "folds": 2, "cv_method": "full",
            "cv_epochs": 8, "cv_lr": 3e-3}
    ctx = StageContext(run_dir=tmp_path, config_dir=tmp_path, seed=0, stage_dir=tmp_path / "q", log=lambda m: None)
    r1 = QualityStage(load_dataclass(Config, base, "s"), ctx).process(table)
    # 13 = 8 / 0.6 epochs: round 1's gradient steps on 60% of the rows (at 8 epochs the fold
    # models learn less and rank worse: AUC 0.71, measured)
    cfg2 = load_dataclass(Config, {**base, "cv_epochs": 13, "column": "cv2", "trust_column": "cv_loss_ratio",
                                   "trust_fraction": 0.6}, "s")
    r2 = QualityStage(cfg2, ctx).process(r1.kept)
    out = r2.kept
    assert out.height == table.height and out["cv2"].null_count() == 0
    assert out["cv2_fold"].to_list() == out["cv_loss_fold"].to_list()  # the same folds: never scored by its own model
    trust = r2.stats["trust"]
    assert trust["trusted"] == int(np.ceil(0.6 * table.height)) and trust["column"] == "cv_loss_ratio"
    assert r2.stats["trained_records"] < r1.stats["trained_records"]
    # round 1's columns are untouched
    assert out["cv_loss_ratio"].to_list() == r1.kept["cv_loss_ratio"].to_list()
    a1, a2 = auc(-out["cv_loss_ratio"].to_numpy(), good), auc(-out["cv2_ratio"].to_numpy(), good)
    assert a2 > 0.8 and a2 >= a1 - 0.05
