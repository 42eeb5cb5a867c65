"""benchmarks/efficacy/trained.py end to end on a tiny pool (`--quick`): every arm is curated,
rendered for the real model, trained with the product's trainer and scored through
`curate eval`'s code. Exact-match values are not asserted (a 600-token budget on one
seed teaches a 260k model nothing); the structure, the equal budget and the bookkeeping are.
Skips when ../shared/data/models/stories260K is absent."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "efficacy"
MODEL = REPO.parent / "shared" / "data" / "models" / "stories260K"


def _load():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("efficacy_trained", BENCH / "trained.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_test_prompts_are_clean_and_unseen():
    mod = _load()
    import noisy

    pool, key = noisy.make_pool("digits", 200, 0)
    rows = mod.test_rows("digits", key, 200, 0)
    seen = {p for (_t, p) in key}
    _, fresh = noisy.make_pool("digits", 200, 10_000)
    assert rows and all(fresh[(r["task"], r["instruction"])] == r["output"] for r in rows)  # the right answers
    assert {r["task"] for r in rows} == {"reverse", "shift", "lookup"}
    for r in rows:
        if r["task"] not in mod.TABLES:
            assert r["instruction"] not in seen  # rule tasks: inputs the pool never had
    assert len({(r["task"], r["instruction"]) for r in rows}) == len(rows)


def test_every_arm_ends_in_the_recipes_mix_and_the_oracle_runs_the_consensus_stages():
    mod = _load()
    import noisy

    stages, _render = noisy.recipes()
    recipe_mix = [s for s in stages["consensus"] if s["kind"] == "mix"][-1]
    assert [s for s in stages["default"] if s["kind"] == "mix"][-1] == recipe_mix  # both recipes: one mix
    arms = {a: noisy.arm_stages(a, stages, str(MODEL), 100) for a in noisy.ARMS}
    for arm, st in arms.items():
        m = st[-1]
        assert m["kind"] == "mix" and m["val_fraction"] == 0.0
        for k in ("by", "weights", "temperature", "max_repeat"):  # one balance rule for every arm
            assert m.get(k) == recipe_mix.get(k), (arm, k)
        if arm != "random":
            assert m.get("balance") == recipe_mix.get("balance")
    assert arms["random"][-1]["total"] == 100 and "balance" not in arms["random"][-1]
    # the oracle: the consensus arm's own stages (only its input differs: the correct records)
    assert arms["oracle"] == arms["consensus"]
    # the default arm: the shipped recipe, only the cv stage's model swapped; without its two
    # cv stages it is the consensus recipe
    q = next(s for s in arms["default"] if s["kind"] == "quality")
    assert q["scorer"] == "cv_loss" and q["model"] == str(MODEL)
    assert [s for s in arms["default"] if s["kind"] not in ("quality", "select")] == arms["consensus"]
    sel = next(s for s in arms["default"] if s["kind"] == "select")
    assert sel["gate_column"] == "cv_loss_agree" and sel["scope_column"] == "consensus_group_size"
    assert noisy.arm_stages("default", stages, None, 100) is None  # no model, no default arm
    # default_mixture: the default arm with only the cut swapped (scope and gate kept, no quota)
    mix_sel = next(s for s in arms["default_mixture"] if s["kind"] == "select")
    assert mix_sel["cut"] == "mixture" and "top_fraction" not in mix_sel and "top_k" not in mix_sel
    assert {k: v for k, v in mix_sel.items() if k != "cut"} == {k: v for k, v in sel.items() if k != "top_fraction"}
    assert [s for s in arms["default_mixture"] if s["kind"] != "select"] == [
        dict(s, max_length=64) if s["kind"] == "quality" else s for s in arms["default"] if s["kind"] != "select"]
    assert "default_mixture" in mod.CV_ARMS and "default_mixture_half" in mod.TRAIN_ARMS
    assert [s["kind"] for s in arms["cv"]][-3:] == ["quality", "select", "mix"]
    assert "cv" in mod.TRAIN_ARMS and "default" in mod.CV_ARMS
    # cv_single: the cv arm's scorer and select, scoped to the prompts the vote never decided
    sel = arms["cv_single"][-2]
    cons = next(s for s in stages["consensus"] if s["kind"] == "consensus")
    assert arms["cv_single"][:-2] == arms["cv"][:-2]
    assert sel["scope_column"] == "consensus_group_size" and sel["scope_max"] == cons.get("min_group", 3) - 1
    assert {k: v for k, v in sel.items() if not k.startswith("scope")} == arms["cv"][-2]
    # cv_agree: drops disagreeing records, gated per task by the agreement rate
    assert arms["cv_agree"][-2]["column"] == "cv_loss_agree" and arms["cv_agree"][-2]["gate_min"] == noisy.GATE


def test_twin_row_reuses_only_a_byte_identical_set(tmp_path):
    """A job whose kept set is byte-identical to a trained arm's (same family, seed and budget
    scale) takes that arm's row, marked `same_set_as`; a different set, another seed or a
    half-budget row does not count."""
    mod = _load()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "consensus.jsonl").write_text('{"a": 1}\n')
    (kept / "default.jsonl").write_text('{"a": 1}\n')
    (kept / "cv_single.jsonl").write_text('{"a": 2}\n')
    job = {"family": "w", "seed": 0, "arm": "default", "run": str(tmp_path / "rendered" / "default"), "supervised": 5}
    row = {"family": "w", "seed": 0, "arm": "consensus", "set_supervised": 5, "exact_match": 0.7, "by_task": {}}
    assert mod.twin_row(job, [row])["same_set_as"] == "consensus"
    assert mod.twin_row(job, [{**row, "seed": 1}]) is None
    assert mod.twin_row(job, [{**row, "arm": "consensus_half"}]) is None
    assert mod.twin_row(job, [{**row, "arm": "cv_single"}]) is None
    assert mod.twin_row({**job, "arm": "default_half", "budget_scale": 0.5}, [{**row, "arm": "consensus_half"}]) \
        ["same_set_as"] == "consensus_half"


def test_diagnostic_sets_and_per_task_stats(tmp_path):
    """diag_clean = consensus's kept set minus its wrong records (repeats kept); diag_plus = it
    plus one copy of each of raw's distinct rule-task records it lacks (never a table's)."""
    mod = _load()
    import noisy

    key = {("acronym", "a b"): "AB", ("acronym", "c d"): "CD", ("capital", "X?"): "Y"}
    row = lambda t, p, a: {"instruction": p, "input": "", "output": a, "task": t}  # noqa: E731
    default = [row("acronym", "a b", "AB"), row("acronym", "a b", "AB"), row("acronym", "c d", "cd"),
               row("capital", "X?", "Y")]
    raw = default + [row("acronym", "c d", "CD"), row("acronym", "c d", "CD"), row("capital", "X?", "Z")]
    noisy.write_jsonl(tmp_path / "consensus.jsonl", default)
    noisy.write_jsonl(tmp_path / "raw.jsonl", raw)
    clean = mod.diag_rows("diag_clean", tmp_path, key)
    assert clean == [default[0], default[1], default[3]]
    plus = mod.diag_rows("diag_plus", tmp_path, key)
    assert plus == default + [row("acronym", "c d", "CD")]
    st = mod.set_stats(plus, key)
    assert st["acronym"] == {"rows": 4, "distinct": 3, "prompts": 2, "right_prompts": 2, "precision": 0.75}
    assert st["capital"]["precision"] == 1.0


@pytest.mark.skipif(not (MODEL / "config.json").is_file(), reason="stories260K not present")
def test_quick_end_to_end(tmp_path):
    mod = _load()
    rows = mod.main(["--quick", "--jobs", "1", "--out", str(tmp_path), "--results", str(tmp_path / "t.md")])
    arms = {r["arm"] for r in rows}
    assert arms == {"base", "few_shot", "raw", "consensus", "random", "verifier", "oracle"}
    trained = [r for r in rows if r["arm"] not in ("base", "few_shot")]
    # the same supervised-token budget for every trained arm, and each really trained
    assert len({r["supervised_budget"] for r in trained}) == 1
    assert all(r["steps"] >= 1 and r["tokens"] > 0 for r in trained)
    assert all(r["distinct"] <= r["kept"] and r["set_supervised"] > 0 for r in trained)
    for r in rows:
        assert 0.0 <= r["exact_match"] <= 1.0
        assert set(r["by_task"]) == {"capital", "plural", "acronym"}
    assert next(r for r in trained if r["arm"] == "oracle")["precision"] == 1.0
    text = (tmp_path / "t.md").read_text()
    assert "gap closed" in text and "base model + k curated shots" in text
    assert json.loads((tmp_path / "trained.json").read_text()) == rows


def test_floor_lines_say_met_only_beyond_seed_noise():
    mod = _load()
    em = {}
    for s, (raw, d, o, v) in enumerate([(0.55, 0.86, 0.95, 0.97), (0.60, 0.88, 0.96, 0.95), (0.52, 0.84, 0.94, 0.96)]):
        em.update({("raw", s): raw, ("default", s): d, ("oracle", s): o, ("verifier", s): v})
    out = mod.floor_lines(em, 3)
    assert len(out) == 2 and "MET" in out[0] and "MET" in out[1]
    # default as good as raw on one seed, better on another: within noise, not met
    em.update({("default", 0): 0.55, ("default", 1): 0.90, ("default", 2): 0.53})
    assert "MET" not in mod.floor_lines(em, 3)[0]
    one = mod.floor_lines({("raw", 0): 0.5, ("default", 0): 0.9, ("oracle", 0): 1.0}, 1)
    assert "1 seed: noise not measured" in one[0]
