"""A `trusted = true` source: its records label the scorers' AUC (a `trusted` column), and
they are held out of the shards (ledger `trusted_holdout`) unless `trusted_train = true`."""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from curate.contract.typed_config import ConfigError
from curate.read.sources import SourceConfig
from curate.stages.common import signal as sig

CHECK = '''
def long_answer(rec):
    return float(len(rec.get("response") or "") > 6)
'''


def _rows(n, good, start=0):
    # good answers are long, bad ones short: a "long answer" scorer separates them
    return [{"instruction": f"question {start + i}", "input": "", "output": ("a good long answer" if good else "no"),
             "task": "qa"} for i in range(n)]


def _pipeline(tmp_path, trusted_extra: str, labelled: bool) -> object:
    from curate.pipeline.config import load_config

    (tmp_path / "checks.py").write_text(CHECK)
    pool = _rows(30, True) + _rows(20, False, 100)
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool))
    trusted = _rows(12, True, 200)
    if labelled:
        trusted += _rows(8, False, 300)
        for r in trusted:
            r["ok"] = r["output"] != "no"
    (tmp_path / "trusted.jsonl").write_text("".join(json.dumps(r) + "\n" for r in trusted))
    (tmp_path / "p.toml").write_text(f'''
[run]
output_dir = "run"
[[sources]]
name = "pool"
path = "pool.jsonl"
task_field = "task"
[[sources]]
name = "checked"
path = "trusted.jsonl"
task_field = "task"
trusted = true
{trusted_extra}
[[stages]]
kind = "quality"
scorer = "verifier"
column = "long"
python_path = ["."]
functions = {{ "*" = "checks:long_answer" }}
''')
    return load_config(tmp_path / "p.toml")


@pytest.mark.parametrize("labelled", [True, False])
def test_trusted_source_validates_scorer_and_is_held_out(tmp_path, labelled):
    from curate.pipeline.runner import run_pipeline

    cfg = _pipeline(tmp_path, 'trusted_label = "ok"' if labelled else "", labelled)
    man = run_pipeline(cfg, fresh=True)
    m = man["stages"][0]["stats"]["signal"]
    assert m["verdict"] == "signal"
    if labelled:  # good against bad, the trusted records only: a perfect separation
        assert (m["mode"], m["labels"], m["good"], m["bad"]) == ("labelled", "trusted", 12, 8)
        assert m["auc"] == 1.0
    else:  # good trusted records against the 50 unlabelled pool rows, 60% of them good:
        # AUC = 0.6 * 0.5 + 0.4 * 1.0 (the module doc's dilution)
        assert (m["mode"], m["good"], m["bad"]) == ("positive_vs_unlabelled", 12, 50)
        assert m["auc"] == pytest.approx(0.7, abs=1e-9)
    assert m["ci"][0] <= m["auc"] <= m["ci"][1]
    n_trusted = 20 if labelled else 12
    assert man["trusted_holdout"]["rows"] == n_trusted
    assert man["ledger"]["dropped"]["trusted"] == {"trusted_holdout": n_trusted}
    rejects = pl.read_parquet(cfg.output_dir() / "rejects" / "trusted.parquet")
    assert rejects.height == n_trusted and set(rejects["source"]) == {"checked"}
    assert set(rejects["reason"]) == {"trusted_holdout"}
    led = man["ledger"]
    assert led["reconciles"] and led["read"] == 50 + n_trusted and led["kept"] == 50
    from curate.look.report import build_report

    html = build_report(cfg.output_dir())  # the scorer table names the labels, the AUC and its interval
    assert ("trusted vs unlabelled" if not labelled else ">trusted<") in html
    assert f"{m['ci'][0]}-{m['ci'][1]}" in html


def test_trusted_train_keeps_them(tmp_path):
    from curate.pipeline.runner import run_pipeline

    man = run_pipeline(_pipeline(tmp_path, "trusted_train = true", False), fresh=True)
    assert "trusted_holdout" not in man
    assert man["ledger"]["kept"] == 50 + 12


def test_trusted_labels_column_and_config_checks():
    t = pl.DataFrame({"source": ["a", "t", "t", "t", "u"],
                      "meta": ["{}", '{"ok": true}', '{"ok": 0}', '{"ok": "maybe"}', "{}"]})
    srcs = [SourceConfig(name="a", path="x"), SourceConfig(name="t", path="y", trusted=True, trusted_label="ok"),
            SourceConfig(name="u", path="z", trusted=True)]
    assert sig.trusted_labels(t, srcs).to_list() == [None, 1.0, 0.0, None, 1.0]
    assert sig.trusted_labels(t, srcs[:1]) is None
    with pytest.raises(ConfigError) as e:
        SourceConfig(name="a", path="x", trusted_label="ok").validate()
    assert "trusted_label" in str(e.value.message())
    with pytest.raises(ConfigError):
        SourceConfig(name="a", path="x", trusted=True, trusted_label="a.b").validate()


def test_positive_vs_unlabelled_auc_is_diluted_but_keeps_its_side():
    rng = np.random.default_rng(0)
    good = rng.normal(1.0, 1.0, 300)
    pool = np.r_[rng.normal(1.0, 1.0, 600), rng.normal(-1.0, 1.0, 400)]  # 60% good
    scores = np.r_[good, pool]
    labels = np.r_[np.ones(300), np.full(1000, np.nan)]
    m = sig.measure(scores, labels, label_column="trusted")
    true_auc = sig.auc(np.r_[good, pool[600:]], np.r_[np.ones(300), np.zeros(400)].astype(bool))
    assert m["mode"] == "positive_vs_unlabelled" and m["verdict"] == "signal"
    assert 0.5 < m["auc"] < true_auc
    assert abs(m["auc"] - (0.6 * 0.5 + 0.4 * true_auc)) < 0.03
    m_rand = sig.measure(np.random.default_rng(2).normal(size=1300), labels, label_column="trusted")  # a random score
    assert m_rand["verdict"] == "no_signal"
    # a verifier column with good labels only stays unvalidated (no unlabelled comparison)
    assert sig.measure(scores, labels, label_column="verifier")["verdict"] == "unvalidated"
