"""`curate inspect` on a data file, a run directory and a shard folder: the numbers agree
with polars computed directly and with the manifest; samples mark the supervised part."""
from __future__ import annotations

import io
import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from curate.cli import main
from curate.look.inspect import print_profile, profile_path
from curate.contract.views import text_view
from test_report import TOKENIZER, shared_run, stage, write_inputs
from curate.contract.datasets import read_dataset


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return shared_run(tmp_path_factory)


def _json(args: list[str]) -> dict:
    res = CliRunner().invoke(main, ["inspect", *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_data_file(tmp_path):
    write_inputs(tmp_path)
    prof = _json([str(tmp_path / "qa.jsonl"), "--samples", "2", "--tokenizer", str(TOKENIZER)])
    lines = (tmp_path / "qa.jsonl").read_text().splitlines()
    assert prof["kind"] == "data" and prof["format"] == "alpaca"
    assert prof["read"] == len(lines) and prof["quarantined"] == 2
    t = prof["table"]
    assert t["rows"] == len(lines) - 2 and t["by_task"] == {"qa": t["rows"]}
    # per-role character percentiles equal polars' on the parsed table
    from curate.read.sources import SourceConfig
    from curate.read.readers import read_source

    table = read_source(SourceConfig(name="qa", path=str(tmp_path / "qa.jsonl")), tmp_path).table
    user = table.select(text_view("user").str.len_chars()).to_series()
    assert t["lengths"]["user"]["chars"]["p50"] == user.quantile(0.5, interpolation="nearest")
    assert t["lengths"]["user"]["chars"]["max"] == user.max()
    assert t["lengths"]["assistant"]["tokens"]["n"] == t["rows"]
    # no language stage: the bundled fastText model labels a sample; the planted rows show up
    user_langs = next(v for k, v in t["languages"].items() if k.startswith("user"))
    assert next(iter(user_langs)) == "en" and {"fr", "de"} <= set(user_langs)
    assert len(prof["samples"]) == 2
    for s in prof["samples"]:
        sup = [g["text"] for g in s["segments"] if g["supervised"]]
        assert sup and all("<assistant>" not in x for x in sup)


def test_real_files(shared_data):
    for name, fmt, n in (("alpaca_llamafactory_demo.json", "alpaca", 999), ("sharegpt_fastchat_dummy.json", "sharegpt", 500)):
        prof = profile_path(shared_data("formats", name), samples=1)
        assert prof["format"] == fmt and prof["read"] == n
        assert prof["table"]["rows"] + prof["quarantined"] == n
        assert {"user", "assistant"} <= set(prof["table"]["lengths"])
    zh = profile_path(shared_data("formats", "alpaca_history_oasst_zh.json"))["table"]["languages"]
    assert all(next(iter(v)) == "zh" for v in zh.values())


def test_run_dir(run_dir):
    m = json.loads((run_dir / "manifest.json").read_text())
    prof = _json([str(run_dir), "--samples", "2"])
    assert prof["kind"] == "run" and prof["ledger"] == m["ledger"]
    assert [s["rows"] for s in prof["funnel"][2:-1]] == [s["rows_out"] for s in m["stages"]]
    t = prof["table"]
    last = read_dataset(run_dir / m["stages"][-1]["output"])
    assert t["stage"] == m["stages"][-1]["name"] and t["rows"] == last.height
    assert t["by_task"] == {k: v for k, v in last.group_by("task").len().sort("len", descending=True).iter_rows()}
    assert set(t["languages"]) == {"language_user", "language_assistant"}
    assert t["scores"]["heuristic"]["n"] == last.height
    assert "tokens" in t["lengths"]["assistant"]  # the run's own tokenizer was found
    sh = prof["shards"]
    assert sh["by_task"] == m["tokens"]["by_task"]
    assert sh["examples"] == sum(v["examples"] for v in m["tokens"]["by_task"].values())
    assert len(prof["samples"]) == 2 and any(g["supervised"] for g in prof["samples"][0]["segments"])
    # an earlier stage's output
    dd = _json([str(run_dir), "--stage", "dedup"])
    assert dd["table"]["stage"] == "dedup" and dd["table"]["rows"] == stage(m, "dedup")["rows_out"]
    res = CliRunner().invoke(main, ["inspect", str(run_dir), "--stage", "nope"])
    assert res.exit_code != 0 and "no stage output named 'nope'" in res.output


def test_shard_folder_plain_and_rich(run_dir):
    m = json.loads((run_dir / "manifest.json").read_text())
    res = CliRunner().invoke(main, ["inspect", str(run_dir / "shards"), "--samples", "3", "--plain"])
    assert res.exit_code == 0, res.output
    assert f"shards: {sum(v['examples'] for v in m['tokens']['by_task'].values()):,} examples" in res.output
    assert res.output.count("--- sample") == 3
    # supervised spans are the assistant answers with their end-of-turn token
    assert "<|im_start|>assistant\n[[" in res.output and "<|im_end|>]]" in res.output
    prof = profile_path(run_dir / "shards", samples=3)
    for s in prof["samples"]:
        text = "".join(g["text"] for g in s["segments"])
        assert text.startswith("<|im_start|>") and s["supervised_tokens"] > 0
    buf = io.StringIO()
    from rich.console import Console

    print_profile(prof, console=Console(file=buf, force_terminal=True, width=120), plain=False)
    out = buf.getvalue()
    assert "\x1b[" in out and "green = supervised" in out


def test_missing_path_is_an_error(tmp_path):
    res = CliRunner().invoke(main, ["inspect", str(tmp_path / "nothing.jsonl")])
    assert res.exit_code != 0
