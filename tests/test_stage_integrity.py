"""#15 done.json is checked against the data it describes: an edited, truncated or
corrupt stage output is recomputed (with a log line saying why), never trusted, never a
crash; the manifest's ledger comes from the stage files, not from done.json."""
import json
from pathlib import Path

import polars as pl

from curate.contract.atomic import sha256_file
from curate.pipeline.config import load_config
from curate.pipeline.runner import run_pipeline

from test_fingerprints import Lines
from test_runner import make_inputs


def _shards(run: Path) -> dict:
    return {str(p.relative_to(run)): sha256_file(p) for p in sorted((run / "shards").rglob("*.arrow"))}


def _setup(tmp_path):
    cfg = load_config(make_inputs(tmp_path, render=True))
    clean = run_pipeline(cfg, out_dir=tmp_path / "clean")
    run_pipeline(cfg)
    return cfg, clean


def test_garbage_answers_in_a_finished_stage_are_detected_and_recomputed(tmp_path):
    cfg, clean = _setup(tmp_path)
    run = tmp_path / "run"
    part = run / "stages" / "01-normalize" / "part-00000.parquet"
    df = pl.read_parquet(part)
    rows = df.to_dicts()
    for r in rows[:: 10]:  # 10% of the answers
        for m in r["messages"]:
            if m["role"] == "assistant":
                m["content"] = "GARBAGE"
    pl.DataFrame(rows, schema=df.schema).write_parquet(part)
    log = Lines()
    m = run_pipeline(cfg, progress=log)
    assert any(line.startswith("[normalize] recomputing") and "checksum" in line for line in log.lines), log.lines
    assert "GARBAGE" not in str(pl.read_parquet(part)["messages"].to_list())
    assert _shards(run) == _shards(tmp_path / "clean")
    assert m["ledger"] == clean["ledger"]


def test_edited_counts_in_done_json_never_reach_the_manifest(tmp_path):
    cfg, clean = _setup(tmp_path)
    run = tmp_path / "run"
    done = run / "stages" / "00-read" / "done.json"
    info = json.loads(done.read_text())
    assert info["quarantined"] == 4
    info["quarantined"] = 1004
    done.write_text(json.dumps(info))
    norm = run / "stages" / "01-normalize" / "done.json"
    ninfo = json.loads(norm.read_text())
    ninfo["dropped"] = {"empty_answer": 1}
    norm.write_text(json.dumps(ninfo))
    log = Lines()
    m = run_pipeline(cfg, progress=log)
    assert m["ledger"]["quarantined"] == 4 and m["ledger"]["reconciles"]
    assert m["ledger"] == clean["ledger"]
    assert any(line.startswith("[read] recomputing") and "counts" in line for line in log.lines), log.lines
    assert any(line.startswith("[normalize] recomputing") for line in log.lines), log.lines


def test_truncated_stage_parquet_is_recomputed_not_a_crash(tmp_path):
    cfg, clean = _setup(tmp_path)
    run = tmp_path / "run"
    part = run / "stages" / "02-normalize_again" / "part-00000.parquet"
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    rejects = run / "rejects" / "01-normalize.parquet"
    rejects.write_bytes(b"PAR1 not a parquet")
    log = Lines()
    m = run_pipeline(cfg, progress=log)
    assert any(line.startswith("[normalize_again] recomputing") for line in log.lines), log.lines
    assert any(line.startswith("[normalize] recomputing") for line in log.lines), log.lines
    assert _shards(run) == _shards(tmp_path / "clean") and m["ledger"] == clean["ledger"]
    # and the repaired run resumes cleanly afterwards
    log = Lines()
    run_pipeline(cfg, progress=log)
    assert not any("recomputing" in line for line in log.lines), log.lines
