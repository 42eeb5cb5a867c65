"""recipes/noisy-multitask-consensus.toml runs as shipped on its example pool, with consensus
before dedup; recipes/noisy-multitask.toml is it plus the cross-validated stages; and the
noisy-pool benchmark runs end to end (`--quick`; its numbers are not
asserted: one small seed measures nothing, docs/curation-efficacy.md has the full run)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_noisy_multitask_recipe_runs_and_orders_consensus_before_dedup(tmp_path):
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run_pipeline

    cfg = load_config(REPO / "recipes" / "noisy-multitask-consensus.toml")
    kinds = [s.kind for s in cfg.stages]
    assert kinds.index("consensus") < kinds.index("dedup")
    assert len(cfg.sources) == 1
    m = run_pipeline(cfg, out_dir=tmp_path / "run")
    st = {s["name"]: s for s in m["stages"]}
    assert st["consensus"]["stats"]["conflict_groups"] > 0 and st["consensus"]["dropped"].get("minority_answer", 0) > 0
    led = m["ledger"]
    assert led["read"] == led["kept"] + led["quarantined"] + sum(sum(v.values()) for v in led["dropped"].values())
    assert m["shards"]["train"]
    from curate.look.report import build_report

    html = build_report(tmp_path / "run")
    assert 'id="consensus"' in html and "conflicting groups" in html and "distinct answers" in html
    assert '<section id="scorers" data-status="skipped"' in html  # no score-based select in the recipe


def test_default_recipe_is_the_consensus_recipe_plus_the_gated_cv_stages():
    """Parsed only (its cv stage fine-tunes a model 3 x 10 epochs: the benchmark runs it)."""
    import tomllib

    full = tomllib.loads((REPO / "recipes" / "noisy-multitask.toml").read_text())
    cons = tomllib.loads((REPO / "recipes" / "noisy-multitask-consensus.toml").read_text())
    extra = [s for s in full["stages"] if s not in cons["stages"]]
    assert [s for s in full["stages"] if s in cons["stages"]] == cons["stages"]
    assert [s["kind"] for s in extra] == ["quality", "select"] and extra[0]["scorer"] == "cv_loss"
    assert extra[1]["gate_column"] == "cv_loss_agree" and extra[1]["scope_column"] == "consensus_group_size"
    kinds = [s["kind"] for s in full["stages"]]
    assert kinds.index("dedup") < kinds.index("quality") < kinds.index("select") < kinds.index("mix")
    assert full["render"] == cons["render"] and full["sources"] == cons["sources"]


def test_report_warns_on_an_unvalidated_select(tmp_path):
    from curate.look.report import build_report
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run_pipeline

    text = (REPO / "recipes" / "noisy-multitask-consensus.toml").read_text()
    src = str((REPO / "benchmarks" / "efficacy" / "example_pool.jsonl").resolve())
    text = text.replace('"../benchmarks/efficacy/example_pool.jsonl"', f'"{src}"')
    text = text.replace('tokenizer = "../sample_data/tokenizer"', f'tokenizer = "{(REPO / "sample_data" / "tokenizer").resolve()}"')
    text = text.replace('[[stages]]\nkind = "mix"', '[[stages]]\nkind = "quality"\nscorer = "heuristic"\n\n'
                        '[[stages]]\nkind = "select"\ncolumn = "heuristic"\ntop_fraction = 0.9\n\n[[stages]]\nkind = "mix"')
    p = tmp_path / "p.toml"
    p.write_text(text)
    m = run_pipeline(load_config(p), out_dir=tmp_path / "run")
    sel = next(s for s in m["stages"] if s["kind"] == "select")
    assert sel["stats"]["signal"]["verdict"] == "unvalidated"
    html = build_report(tmp_path / "run")
    assert '<section id="scorers" data-status="ok"' in html and "WARNING" in html and "unvalidated" in html


def test_noisy_benchmark_quick(tmp_path):
    here = REPO / "benchmarks" / "efficacy"
    sys.path.insert(0, str(here))
    spec = importlib.util.spec_from_file_location("efficacy_noisy", here / "noisy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--quick", "--out", str(tmp_path / "b"), "--results", str(tmp_path / "r.md")])
    arms = res["words"]
    assert set(arms) == {"raw", "random", "consensus", "verifier", "oracle"}
    assert arms["oracle"][0]["precision"] == 1.0  # the oracle is the pool's correct records
    # equal task balance in every arm: the same mix
    for ms in arms.values():
        counts = list(ms[0]["per_task"].values())
        assert max(counts) - min(counts) <= 1
    assert "gap closed" in (tmp_path / "r.md").read_text()
    # the checker was written without the generators
    src = (here / "checkers.py").read_text()
    assert "import digit_tasks" not in src and "import word_tasks" not in src
    json.dumps(res)
