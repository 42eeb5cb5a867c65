"""fastText quality classifier: `curate classifier train` on real-format files, held-out
metrics, determinism, and scoring through the `quality` stage."""
import json
import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from curate.stages.quality.classifier import TrainOptions, metrics, roc_auc, train_classifier
from curate.cli import main
from curate.stages.base import StageContext
from curate.stages.quality.stage import Config, QualityStage
from curate.contract.typed_config import load_dataclass

TOPICS = ["the water cycle", "photosynthesis", "a binary search", "the french revolution", "compound interest",
          "how vaccines work", "plate tectonics", "a hash table", "the moon's phases", "supply and demand"]
VERBS = ["explains", "describes", "shows", "covers", "walks through"]


def good(rng):
    t = rng.choice(TOPICS)
    return {"instruction": f"Explain {t} in simple terms.", "input": "",
            "output": f"Sure. This answer {rng.choice(VERBS)} {t} step by step: first the idea, then an example, "
                      f"and finally a short summary so that the reader understands {t}."}


def noisy(rng):
    t = rng.choice(TOPICS)
    junk = rng.choice([" ".join([rng.choice(["lol", "asdf", "!!!", "???", "click here"])] * rng.randint(5, 15)),
                       "".join(rng.choice("#$%&*@^~") for _ in range(40)),
                       "ok", "idk " * 8, "BUY NOW http://spam.example.com " * 3])
    return {"instruction": f"Explain {t} in simple terms.", "input": "", "output": junk}


def write_jsonl(path: Path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("clf")
    rng = random.Random(0)
    pos = write_jsonl(d / "good.jsonl", [good(rng) for _ in range(150)])
    neg = write_jsonl(d / "noisy.jsonl", [noisy(rng) for _ in range(150)])
    return d, pos, neg


def test_auc_and_metrics():
    assert roc_auc(np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0])) == 1.0
    assert roc_auc(np.array([0.5, 0.5]), np.array([1, 0])) == 0.5
    m = metrics(np.array([0.9, 0.4, 0.6, 0.1]), np.array([1, 1, 0, 0]))
    assert m["precision"] == 0.5 and m["recall"] == 0.5 and m["auc"] == 0.75


def test_cli_trains_prints_heldout_metrics_and_is_deterministic(files):
    d, pos, neg = files
    runner = CliRunner()
    out = d / "q.bin"
    res = runner.invoke(main, ["classifier", "train", "--positive", str(pos), "--negative", str(neg), "-o", str(out),
                               "--epoch", "5", "--holdout", "0.25", "--bucket", "20000"])
    assert res.exit_code == 0, res.output
    assert "AUC" in res.output and out.is_file()
    rep = json.loads((d / "q.bin.json").read_text())
    assert rep["holdout"]["n"] > 40 and rep["holdout"]["auc"] > 0.95
    assert rep["train"]["positive"] + rep["train"]["negative"] + rep["holdout"]["n"] == 300
    first = out.read_bytes()
    res = runner.invoke(main, ["classifier", "train", "-p", str(pos), "-n", str(neg), "-o", str(out),
                               "--epoch", "5", "--holdout", "0.25", "--bucket", "20000"])
    assert res.exit_code == 0 and out.read_bytes() == first  # thread=1: same bytes


def test_cli_refuses_bad_input(files, tmp_path):
    d, pos, _ = files
    res = CliRunner().invoke(main, ["classifier", "train", "-p", str(pos), "-n", str(tmp_path / "nope.jsonl"),
                                    "-o", str(tmp_path / "m.bin")])
    assert res.exit_code != 0 and "no such file" in res.output
    res = CliRunner().invoke(main, ["classifier", "train", "-p", str(pos), "-n", str(pos), "-o",
                                    str(tmp_path / "m.bin"), "--view", "nonsense"])
    assert res.exit_code != 0
    res = CliRunner().invoke(main, ["classifier", "train", "-p", str(pos), "-n", str(pos), "-o",
                                    str(tmp_path / "m.bin"), "--epoch", "-1"])
    assert res.exit_code != 0 and "--epoch" in res.output


def test_quality_stage_scores_with_trained_model(files, tmp_path):
    d, pos, neg = files
    model = tmp_path / "q.bin"
    train_classifier([pos], [neg], model, TrainOptions(epoch=5, holdout=0.0, bucket=20000))
    rng = random.Random(1)
    recs = [good(rng) for _ in range(5)] + [noisy(rng) for _ in range(5)]
    t = pl.DataFrame({
        "id": [f"r{i}" for i in range(10)], "source": "s", "task": "explain",
        "messages": [[{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]
                     for r in recs],
        "meta": "{}", "origin": "x"})
    cfg = load_dataclass(Config, {"kind": "quality", "scorer": "fasttext", "model": "q.bin"})
    cfg.check_paths(tmp_path)
    r = QualityStage(cfg, StageContext(tmp_path, tmp_path, 0, tmp_path / "st")).process(t)
    s = r.kept["fasttext"].to_numpy()
    assert ((s >= 0) & (s <= 1)).all()
    assert s[:5].min() > s[5:].max()


def test_heldout_auc_by_hand():
    # positives 0.9, 0.7, 0.4; negatives 0.7, 0.2: of the 6 pairs the positive wins
    # 0.9>0.7, 0.9>0.2, 0.7>0.2, 0.4>0.2, ties 0.7=0.7 (one half), loses 0.4<0.7 -> 4.5/6
    scores, labels = np.array([0.9, 0.7, 0.7, 0.2, 0.4]), np.array([1, 1, 0, 0, 1])
    assert roc_auc(scores, labels) == 0.75
    assert roc_auc(1 - scores, labels) == 0.25  # the other label's probability flips it
    m = metrics(scores, labels)
    assert m["auc"] == 0.75 and m["positives"] == 3 and m["n"] == 5


def test_holdout_mask_keeps_copies_together_and_salt_changes_it():
    from curate.stages.quality.classifier import holdout_mask

    texts = [f"text {i % 50}" for i in range(500)]  # every text 10 times
    held = holdout_mask(texts, 0.2, seed=3)
    by_text = {}
    for t, h in zip(texts, held):
        by_text.setdefault(t, set()).add(bool(h))
    assert all(len(v) == 1 for v in by_text.values())  # no copy of a held-out line is trained on
    assert 0.05 < held.mean() < 0.4
    assert (holdout_mask(texts, 0.2, seed=3, salt="inner") != held).any()


def test_training_file_is_shuffled_and_balanced(tmp_path):
    from curate.stages.quality.classifier import _write_train_file

    texts = [f"p{i}" for i in range(10)] + [f"n{i}" for i in range(90)]
    labels = np.array([1] * 10 + [0] * 90)
    mask = np.ones(100, dtype=bool)
    reps = _write_train_file(tmp_path / "t.txt", texts, labels, mask, True, seed=0)
    lines = (tmp_path / "t.txt").read_text().splitlines()
    assert reps == {1: 9, 0: 1} and len(lines) == 180
    first_half_pos = sum(line.startswith("__label__hq") for line in lines[:90])
    assert 25 < first_half_pos < 65  # not class-sorted (sorted: 90 of 90)
    again = _write_train_file(tmp_path / "u.txt", texts, labels, mask, True, seed=0)
    assert again == reps and (tmp_path / "u.txt").read_bytes() == (tmp_path / "t.txt").read_bytes()


def test_default_epoch_choice_separates_an_easy_imbalanced_label(tmp_path):
    rng = random.Random(2)
    pos = write_jsonl(tmp_path / "good.jsonl", [good(rng) for _ in range(100)])
    neg = write_jsonl(tmp_path / "noisy.jsonl", [noisy(rng) for _ in range(400)])
    rep = train_classifier([pos], [neg], tmp_path / "q.bin", TrainOptions(bucket=20000), log=lambda *a: None)
    choice = rep["epoch_choice"]
    assert choice["chosen"] in choice["candidates"] and rep["train"]["epoch"] == choice["chosen"]
    assert set(choice["validation"]) == {str(e) for e in choice["candidates"]}
    assert rep["holdout"]["auc"] > 0.95 and rep["train"]["repeats"]["positive"] in (3, 4, 5)
    # the held-out AUC's score is P(__label__hq) from the logits: the same numbers as
    # fastText's predict (which adds 1e-5), oriented so the good records score high
    import fasttext

    from curate.stages.quality.fasttext import positive_probability, positive_score
    model = fasttext.load_model(str(tmp_path / "q.bin"))
    rng = random.Random(9)
    texts = [good(rng)["output"].lower() for _ in range(5)] + [noisy(rng)["output"].lower() for _ in range(5)]
    s, p = positive_score(model, texts), positive_probability(model, texts)
    assert np.abs(s - p).max() < 2e-5 and s[:5].min() > s[5:].max()
