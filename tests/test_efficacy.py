"""The efficacy benchmark runs end to end (`--quick`) and writes its table. Its numbers are
not asserted: a tiny budget on one seed measures nothing; the full run does
(README.md, "Does curation help?")."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "efficacy"


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"efficacy_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generator_plants_documented_noise(tmp_path):
    gen = _load("generate")
    stats = gen.generate(tmp_path, pool_size=1000, seed=3, n_seed=30, n_test=20)
    pool = [json.loads(x) for x in (tmp_path / "pool.jsonl").read_text().splitlines()]
    labels = [json.loads(x)["defect"] for x in (tmp_path / "pool_labels.jsonl").read_text().splitlines()]
    assert len(pool) == len(labels) == stats["pool"] == 1000
    d = stats["defects"]
    assert sum(v for k, v in d.items() if k.startswith("duplicate_")) == 200
    assert d["eval_leak"] == 20
    n_unique = sum(d[k] for k in ("clean", "wrong", "refusal", "truncated"))
    assert abs(d["wrong"] / n_unique - gen.RATES["wrong"]) < 0.06
    # the verifier agrees with the planted labels: clean passes, wrong/truncated/refusal fail
    ver = _load("verifiers")
    for rec, lab in zip(pool, labels):
        ok = getattr(ver, rec["task"])({"prompt": rec["instruction"], "response": rec["output"]})
        if lab in ("clean", "eval_leak") or lab.endswith("_clean"):
            assert ok is True, (rec, lab)
        elif lab in ("wrong", "truncated", "refusal"):
            assert ok is False, (rec, lab)
    test = [json.loads(x) for x in (tmp_path / "test.jsonl").read_text().splitlines()]
    seen = {r["instruction"] for r, lab in zip(pool, labels) if lab != "eval_leak"}
    assert not any(t["instruction"] in seen for t in test if t["task"] != "lookup")


def test_quick_run_writes_table(tmp_path):
    run = _load("run")
    model = run.default_model()  # stories260K from ../shared when present, else sample_data/base_model
    if not (model / "config.json").is_file():
        pytest.skip("no base model")
    res = run.main(["--quick", "--out", str(tmp_path / "eff"), "--results", str(tmp_path / "RESULTS.md")])
    text = (tmp_path / "RESULTS.md").read_text()
    for arm in ("raw", "random", "curated", "verified", "oracle", "shuffled", "fewshot"):
        assert run.ARMS[arm] in text, arm
        assert res["results"][arm], arm
    saved = json.loads((tmp_path / "eff" / "results.json").read_text())
    assert saved["results"]["curated"][0]["trained_supervised"] > 0
    assert (tmp_path / "eff" / "pipelines" / "curated.toml").is_file()
