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
