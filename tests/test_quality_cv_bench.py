"""The benchmark's judging of the cross-validated scores (benchmarks/efficacy/trained.py's
cv_stats helpers) and its new arms' stages: fast, no model needed."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "efficacy"


def _load():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("efficacy_trained_cv", BENCH / "trained.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_keep_precision_and_rank_mean():
    mod = _load()
    right = np.array([True, True, False, True, False])
    score = np.array([0.9, 0.8, 0.7, 0.1, 0.0])  # higher = kept first
    assert mod.keep_precision(score, right, 0.6) == pytest.approx(2 / 3)  # best 3: T T F
    assert mod.keep_precision(score, right, 0.8) == pytest.approx(3 / 4)
    assert mod.keep_precision(right.astype(float), right, 0.6) == 1.0  # a perfect score
    assert mod.keep_precision(np.zeros(0), np.zeros(0, bool)) is None
    # ties rank by position (stable), as select breaks ties by id
    assert mod.keep_precision(np.zeros(5), right, 0.4) == 1.0
    r = mod._ranks01(np.array([3.0, 1.0, 2.0, 2.0]))
    assert r.tolist() == pytest.approx([1.0, 0.0, 0.5, 0.5])  # ties averaged, scaled to [0, 1]


def test_new_arms_change_only_the_select(tmp_path):
    """default_regret = the default arm's stages with the select's column and direction
    swapped (and the cv stage as default_mixture has it); diag_rank80 = the same cut ranked
    by an answer-key verifier (a DIAGNOSTIC)."""
    mod = _load()
    import noisy

    stages, _ = noisy.recipes()
    mix = noisy.arm_stages("default_mixture", stages, "M", 100)
    reg = noisy.arm_stages("default_regret", stages, "M", 100)
    sel = [s for s in reg if s["kind"] == "select"]
    assert len(sel) == 1 and sel[0]["column"] == noisy.SCORE_COLUMN and sel[0]["keep"] == noisy.SCORE_KEEP
    base = next(s for s in noisy.arm_stages("default", stages, "M", 100) if s["kind"] == "select")
    assert {k: v for k, v in sel[0].items() if k not in ("column", "keep")} == \
        {k: v for k, v in base.items() if k not in ("column", "keep")}
    assert [s for s in reg if s["kind"] != "select"] == [s for s in mix if s["kind"] != "select"]
    pool, key = noisy.make_pool("words", 30, 0)
    km = mod.write_key_module(tmp_path / "k", "words", 0, key)
    diag = noisy.arm_stages("diag_rank80", stages, "M", 100, key_module=km)
    i = next(i for i, s in enumerate(diag) if s["kind"] == "select")
    assert diag[i - 1]["scorer"] == "verifier" and diag[i]["column"] == "answer_key" and diag[i]["keep"] == "highest"
    assert diag[i]["top_fraction"] == base["top_fraction"] and diag[i]["gate_min"] == base["gate_min"]
    with pytest.raises(ValueError, match="answer key"):
        noisy.arm_stages("diag_rank80", stages, "M", 100)
    # the key module answers per record, by the user turn and the response
    sys.path.insert(0, km[0])
    try:
        m = importlib.import_module(km[1].split(":")[0])
    finally:
        sys.path.remove(km[0])
    (task, prompt), right = next(iter(key.items()))
    rec = {"task": task, "messages": [{"role": "user", "content": prompt}], "response": right}
    assert m.right(rec) is True and m.right({**rec, "response": right + "x"}) is False


def test_cv_prefix_compares_the_scoring_not_the_select(tmp_path):
    mod = _load()
    import noisy

    stages, render = noisy.recipes()
    a = noisy.write_pipeline(tmp_path / "a.toml", tmp_path / "ra", tmp_path / "pool.jsonl",
                             noisy.arm_stages("default_mixture", stages, "M", 100), render)
    b = noisy.write_pipeline(tmp_path / "b.toml", tmp_path / "rb", tmp_path / "pool.jsonl",
                             noisy.arm_stages("default_regret", stages, "M", 100), render)
    c = noisy.write_pipeline(tmp_path / "c.toml", tmp_path / "rc", tmp_path / "pool.jsonl",
                             noisy.arm_stages("default", stages, "M", 100), render)
    assert mod.cv_prefix(a) == mod.cv_prefix(b) is not None  # same scoring, another select
    # the default arm's cv stage has max_length = 64 as the others' (it had none before): one scoring
    assert mod.cv_prefix(a) == mod.cv_prefix(c)
    d = noisy.write_pipeline(tmp_path / "d.toml", tmp_path / "rd", tmp_path / "pool.jsonl",
                             noisy.arm_stages("default_incv", stages, "M", 100), render)
    assert mod.cv_prefix(d) == mod.cv_prefix(c)  # round 1 is the default's, so its run can be reused
    e = noisy.write_pipeline(tmp_path / "e.toml", tmp_path / "re", tmp_path / "pool.jsonl",
                             noisy.arm_stages("default_incv_mixture", stages, "M", 100), render)
    # the sibling to copy: default_incv shares round 2 as well, default only round 1
    n_cv = next(i for i, s in enumerate(noisy.arm_stages("default", stages, "M", 100)) if s["kind"] == "quality")
    assert mod.shared_stages(e, c) == n_cv + 1 and mod.shared_stages(e, d) == n_cv + 2
    assert mod.shared_stages(c, c) == len(noisy.arm_stages("default", stages, "M", 100))
    assert mod.cv_prefix(tmp_path / "missing.toml") is None
    assert mod.cv_current(tmp_path / "no-run") is False


def test_incv_arm_adds_a_second_round_and_ranks_by_it():
    """default_incv = the default arm's stages plus a second cv stage trained on round 1's
    trusted rows; its select ranks by and gates on round 2's columns, nothing else differs
    (default_incv_mixture: the same with the mixture cut)."""
    _load()
    import noisy

    stages, _ = noisy.recipes()
    base = noisy.arm_stages("default", stages, "M", 100)
    incv = noisy.arm_stages("default_incv", stages, "M", 100)
    q = [s for s in incv if s["kind"] == "quality"]
    assert len(q) == 2 and q[0] == next(s for s in base if s["kind"] == "quality")
    c2 = noisy.INCV_COLUMN
    assert q[1]["trust_column"] == "cv_loss_ratio" and q[1]["trust_fraction"] == noisy.TRUST_FRACTION
    # round 2: as many gradient steps as round 1 on its fewer rows (epochs / trust_fraction)
    assert q[1]["cv_epochs"] == round(q[0]["cv_epochs"] / noisy.TRUST_FRACTION) > q[0]["cv_epochs"]
    same = ("name", "column", "cv_epochs")
    assert q[1]["column"] == c2 and {k: v for k, v in q[1].items() if k not in same and not k.startswith("trust")} == \
        {k: v for k, v in q[0].items() if k != "cv_epochs"}
    sel = next(s for s in incv if s["kind"] == "select")
    bsel = next(s for s in base if s["kind"] == "select")
    assert sel["column"] == f"{c2}_ratio" and sel["gate_column"] == f"{c2}_agree"
    assert {k: v for k, v in sel.items() if k not in ("column", "gate_column")} == \
        {k: v for k, v in bsel.items() if k not in ("column", "gate_column")}
    assert [s for s in incv if s not in q and s["kind"] != "select"] == [s for s in base if s["kind"] not in ("quality", "select")]
    mix = next(s for s in noisy.arm_stages("default_incv_mixture", stages, "M", 100) if s["kind"] == "select")
    assert mix["cut"] == "mixture" and "top_fraction" not in mix and mix["column"] == f"{c2}_ratio"
