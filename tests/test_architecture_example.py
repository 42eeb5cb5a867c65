"""ARCHITECTURE.md's example stage is real: its code block is loaded as a module, registered
as a stage kind, checked for a bad key, and run in a real pipeline whose ledger reconciles
and whose rejects name the reason."""
import json
import re
import sys
from pathlib import Path

import polars as pl
import pytest

from curate.contract.typed_config import ConfigError
from curate.pipeline.config import load_config
from curate.pipeline.runner import run_pipeline
from curate.stages import STAGE_MODULES

ROOT = Path(__file__).resolve().parents[1]


def _example_source() -> str:
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    [block] = [b for b in blocks if "STAGE = MaxTurnsStage" in b]
    assert len(block.strip().splitlines()) <= 40  # "a 30-line example": small enough to read at once
    return block


@pytest.fixture
def max_turns_kind(tmp_path, monkeypatch):
    (tmp_path / "example_max_turns.py").write_text(_example_source(), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(STAGE_MODULES, "max_turns", "example_max_turns")
    yield
    sys.modules.pop("example_max_turns", None)


def _write_inputs(d: Path, max_turns: int) -> Path:
    chats = []
    for n in (1, 2, 3, 4):
        turns = []
        for k in range(n):
            turns += [{"from": "human", "value": f"question {n}.{k}"}, {"from": "gpt", "value": f"answer {n}.{k}"}]
        chats.append({"conversations": turns})
    (d / "chat.json").write_text(json.dumps(chats), encoding="utf-8")
    cfg = d / "pipeline.toml"
    cfg.write_text(f"""
[run]
output_dir = "run"

[[sources]]
name = "chat"
path = "chat.json"
format = "sharegpt"
task = "dialogue"

[[stages]]
kind = "normalize"

[[stages]]
kind = "max_turns"
max_turns = {max_turns}
""", encoding="utf-8")
    return cfg


def test_example_stage_runs_in_a_pipeline(tmp_path, max_turns_kind):
    cfg = load_config(_write_inputs(tmp_path, max_turns=2))
    manifest = run_pipeline(cfg)
    ledger = manifest["ledger"]
    assert ledger["read"] == 4
    assert ledger["dropped"]["max_turns"] == {"too_many_turns": 2}
    assert ledger["read"] == ledger["kept"] + ledger["quarantined"] + sum(
        n for reasons in ledger["dropped"].values() for n in reasons.values())
    rejects = pl.read_parquet(tmp_path / "run" / "rejects" / "02-max_turns.parquet")
    assert sorted(rejects["max_turns_user_turns"].to_list()) == [3, 4]
    assert set(rejects["reason"]) == {"too_many_turns"}


def test_example_stage_refuses_a_bad_key(tmp_path, max_turns_kind):
    with pytest.raises(ConfigError, match="max_turns"):
        load_config(_write_inputs(tmp_path, max_turns=0))
