"""Under `--executor ray` the sources are read on workers (curate/pipeline/ray_read.py) and
the parts render on workers, one task per part (curate/render/stream.py `map_parts`); the
run equals the local one byte for byte: on several sources cut into many small parts
across source boundaries, with malformed lines quarantined, a trusted hold-out source, an
auto-detected CSV, render and packed shards, and under `--limit`.

Uses the session's local Ray (tests/conftest.py `ray_local`); marked slow."""
from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install '.[ray]'")

from curate.contract.progress import Progress  # noqa: E402
from curate.pipeline.config import load_config  # noqa: E402
from curate.pipeline.executor import LocalExecutor  # noqa: E402
from curate.pipeline.ray_executor import RayExecutor  # noqa: E402
from curate.pipeline.runner import run_pipeline  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

PIPELINE = """
[run]
seed = 5
part_rows = 13
output_dir = "out"
[[sources]]
name = "qa"
path = "qa"
format = "alpaca"
task = "qa"
max_record_bytes = 1024
[[sources]]
name = "chat"
path = "chat.jsonl.gz"
format = "messages"
task = "chat"
[[sources]]
name = "code"
path = "code.csv"
format = "auto"
task = "code"
[[sources]]
name = "gold"
path = "gold.jsonl"
format = "alpaca"
task = "qa"
trusted = true
[[stages]]
kind = "normalize"
[[stages]]
kind = "dedup"
method = "exact"
view = "conversation"
[render]
template = "chatml"
tokenizer = "{tok}"
max_length = 96
pack = true
val_fraction = 0.2
"""


def _inputs(d: Path) -> Path:
    (d / "qa").mkdir(parents=True)
    for f, n in (("a.jsonl", 60), ("b.jsonl", 25)):
        lines = []
        for i in range(n):
            if i % 9 == 4:
                lines.append(b'{"instruction": "cut off')  # malformed: quarantined
            elif i % 10 == 6:
                lines.append(b"")
            elif i % 14 == 3:
                lines.append(json.dumps({"instruction": "long " * 250, "output": "x"}).encode())  # over 1024 B
            elif i % 12 == 10:  # longer than max_length: dropped by render
                lines.append(json.dumps({"instruction": f"Long {i} of {f}?", "output": "many words " * 60}).encode())
            elif i % 15 == 8:
                lines.append(b'{"instruction": "Question 1 of a.jsonl?", "output": "Answer 1."}')  # an exact copy
            else:
                lines.append(json.dumps({"instruction": f"Question {i} of {f}?", "output": f"Answer {i}. " * (i % 7 + 1)
                                         }).encode())
        (d / "qa" / f).write_bytes(b"\n".join(lines) + b"\n")
    with gzip.open(d / "chat.jsonl.gz", "wt") as fh:
        for i in range(20):
            fh.write(json.dumps({"messages": [{"role": "user", "content": f"Hi {i}"},
                                              {"role": "assistant", "content": f"Hello {i}!"}]}) + "\n")
    (d / "code.csv").write_text("prompt,completion\n" + "".join(f"write f{i},def f{i}(): pass\n" for i in range(17)))
    (d / "gold.jsonl").write_text("".join(json.dumps({"instruction": f"Gold {i}?", "output": f"Gold answer {i}."}) + "\n"
                                          for i in range(9)))
    p = d / "pipeline.toml"
    p.write_text(PIPELINE.format(tok=ROOT / "sample_data" / "tokenizer"))
    return p


def _files(run: Path) -> dict[str, str]:
    pats = ("stages/**/*", "rejects/*", "shards/**/*", "quarantine.jsonl")
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for pat in pats for p in sorted(run.glob(pat)) if p.is_file()}


def _manifest(run: Path) -> dict:
    m = json.loads((run / "manifest.json").read_text())
    m["config"]["run"].pop("executor")
    return {k: v for k, v in m.items() if k != "config_hash"}


def _compare(tmp_path: Path, limit: int | None = None) -> tuple[dict, list[str]]:
    cfg = load_config(_inputs(tmp_path / "in"))
    run_pipeline(cfg, tmp_path / "local", executor=LocalExecutor(), limit=limit)
    logs: list[str] = []
    progress = Progress(enabled=False)
    progress.log = logs.append  # type: ignore[method-assign]
    ex = RayExecutor()
    run_pipeline(cfg, tmp_path / "ray", executor=ex, progress=progress, limit=limit)
    ex.close()
    fa, fb = _files(tmp_path / "local"), _files(tmp_path / "ray")
    assert fa == fb
    assert any(k.startswith("shards/") and k.endswith(".arrow") for k in fa)
    ma, mb = _manifest(tmp_path / "local"), _manifest(tmp_path / "ray")
    assert ma == mb and mb["ledger"]["reconciles"]
    assert any("[read] ray:" in x for x in logs), logs
    assert not (tmp_path / "ray" / "read-work").exists()
    return mb, logs


def test_multi_source_read_and_render_on_workers_identical(ray_local, tmp_path):
    m, logs = _compare(tmp_path)
    read = json.loads((tmp_path / "ray/stages/00-read/done.json").read_text())
    assert len(read["parts"]) > 6 and m["quarantine"]["rows"] > 5
    q = [json.loads(x) for x in (tmp_path / "ray/quarantine.jsonl").read_text().splitlines()]
    assert {x["file"] for x in q} == {"qa/a.jsonl", "qa/b.jsonl"}
    assert any("not parsed" in x["error"] for x in q) and any("bad JSON" in x["error"] for x in q)
    assert [s["format"] for s in m["sources"]] == ["alpaca", "messages", "prompt_completion", "alpaca"]
    assert m["ledger"]["dropped"].get("trusted")  # the gold source held out of the shards
    assert m["render"]["dropped"]  # render rejects written on workers, as locally


def test_limit_sample_identical_on_workers(ray_local, tmp_path):
    m, _ = _compare(tmp_path, limit=11)
    assert m["limit"]["per_source"] == 11
    assert [s["records"] for s in m["sources"]] == [11, 11, 11, 9]
