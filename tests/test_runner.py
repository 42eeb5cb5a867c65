import json
import textwrap
from pathlib import Path

import polars as pl
import pytest

from curate.contract.atomic import sha256_file
from curate.pipeline.config import load_config
from curate.pipeline.runner import run_pipeline
from curate.stages.normalize import Normalize

SAMPLE_TOKENIZER = Path(__file__).resolve().parent.parent / "sample_data" / "tokenizer"

PIPELINE = """
[run]
output_dir = "run"
seed = 1

[[sources]]
name = "alpaca"
path = "alpaca.jsonl"
task = "qa"

[[sources]]
name = "chat"
path = "chat.json"
format = "sharegpt"
task = "dialogue"

[[stages]]
kind = "normalize"

[[stages]]
kind = "normalize"
name = "normalize_again"
"""


def make_inputs(tmp_path: Path, render: bool = False) -> Path:
    lines = []
    for i in range(40):
        lines.append(json.dumps({"instruction": f"What is {i} plus {i}?", "input": "<noinput>" if i % 3 == 0 else "",
                                 "output": f"{i} plus {i} is {2 * i}." if i % 10 != 7 else "N/A"}))
    lines += ["{broken json", json.dumps({"instruction": "no output"}), json.dumps({"instruction": 3, "output": "x"})]
    (tmp_path / "alpaca.jsonl").write_text("\n".join(lines) + "\n")
    chats = [{"conversations": [{"from": "human", "value": f"Hello number {i}"}, {"from": "gpt", "value": f"Hi {i}!"}]}
             for i in range(10)]
    chats.append({"conversations": [{"from": "gpt", "value": "I speak first"}]})
    chats.append({"conversations": [{"from": "alien", "value": "?"}]})
    (tmp_path / "chat.json").write_text(json.dumps(chats))
    text = PIPELINE
    if render:
        text += textwrap.dedent(f"""
        [render]
        template = "chatml"
        tokenizer = "{SAMPLE_TOKENIZER}"
        max_length = 128
        pack = true
        val_fraction = 0.2
        """)
    p = tmp_path / "pipeline.toml"
    p.write_text(text)
    return p


def test_ledger_rejects_quarantine(tmp_path):
    cfg = load_config(make_inputs(tmp_path))
    m = run_pipeline(cfg)
    led = m["ledger"]
    assert led["read"] == 55 and led["quarantined"] == 4
    assert led["dropped"] == {"normalize": {"empty_answer": 4, "no_assistant_after_user": 1}}
    assert led["kept"] == 46 and led["reconciles"]
    run = tmp_path / "run"
    q = [json.loads(x) for x in (run / "quarantine.jsonl").read_text().splitlines()]
    assert [(e["file"], e["line"], e["field"]) for e in q] == [
        ("alpaca.jsonl", "41", None), ("alpaca.jsonl", "42", "output"), ("alpaca.jsonl", "43", "instruction"),
        ("chat.json", "#11", "conversations[0].from")]
    rej = pl.read_parquet(run / "rejects" / "01-normalize.parquet")
    assert rej.height == 5 and set(rej["stage"]) == {"normalize"}
    assert rej.columns[:3] == ["stage", "reason", "detail"]
    assert (run / "stages" / "02-normalize_again" / "part-00000.parquet").is_file()
    assert m["stages"][0]["rows_in"] == 51 and m["stages"][0]["rows_out"] == 46
    assert [s["format"] for s in m["sources"]] == ["alpaca", "sharegpt"]


def test_resume_skips_finished_stages_and_fresh_restarts(tmp_path, monkeypatch):
    cfg = load_config(make_inputs(tmp_path))
    first = run_pipeline(cfg)
    calls = []
    orig = Normalize.process
    monkeypatch.setattr(Normalize, "process", lambda self, t: calls.append(1) or orig(self, t))
    assert run_pipeline(cfg) == first and calls == []
    run_pipeline(cfg, fresh=True)
    assert len(calls) == 2
    # changing one stage's config reruns it and everything after it, not before it
    calls.clear()
    cfg.stages[1].require_alternation = False
    run_pipeline(cfg)
    assert len(calls) == 1


def test_input_change_invalidates_resume(tmp_path):
    p = make_inputs(tmp_path)
    run_pipeline(load_config(p))
    with open(tmp_path / "alpaca.jsonl", "a") as fh:
        fh.write(json.dumps({"instruction": "new", "output": "one"}) + "\n")
    assert run_pipeline(load_config(p))["ledger"]["read"] == 56


def _digest(run: Path) -> dict:
    """Every output's sha256; the run's own bookkeeping (its marker with a random run id,
    the file-hash cache keyed by mtimes) and timings are not outputs."""
    return {str(p.relative_to(run)): sha256_file(p) for p in sorted(run.rglob("*"))
            if p.is_file() and p.name != "timings.json" and p.suffix != ".html"
            and not p.relative_to(run).parts[0].startswith(".")}


def test_killed_run_resumes_to_identical_bytes(tmp_path, monkeypatch):
    p = make_inputs(tmp_path, render=SAMPLE_TOKENIZER.is_dir())
    cfg = load_config(p)
    run_pipeline(cfg, out_dir=tmp_path / "clean")
    orig = Normalize.process

    def crash_second(self, t):
        if self.name == "normalize_again":
            raise KeyboardInterrupt("killed")
        return orig(self, t)

    monkeypatch.setattr(Normalize, "process", crash_second)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, out_dir=tmp_path / "broken")
    assert not (tmp_path / "broken" / "manifest.json").exists()
    monkeypatch.setattr(Normalize, "process", orig)
    run_pipeline(cfg, out_dir=tmp_path / "broken")
    assert _digest(tmp_path / "broken") == _digest(tmp_path / "clean")


@pytest.mark.skipif(not SAMPLE_TOKENIZER.is_dir(), reason="sample tokenizer not generated")
def test_render_writes_shards_with_hashes_and_twice_same_bytes(tmp_path):
    p = make_inputs(tmp_path, render=True)
    m1 = run_pipeline(load_config(p), out_dir=tmp_path / "a")
    m2 = run_pipeline(load_config(p), out_dir=tmp_path / "b")
    assert m1 == m2
    assert m1["shards"]["train"] and m1["ledger"]["reconciles"]
    for split in ("train", "val"):
        for shard in m1["shards"][split]:
            assert sha256_file(tmp_path / "a" / shard["file"]) == shard["sha256"]
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    total = sum(s["examples"] for sp in ("train", "val") for s in m1["shards"][sp])
    assert total == m1["ledger"]["kept"]
    assert sum(v["examples"] for v in m1["tokens"]["by_task"].values()) == total
