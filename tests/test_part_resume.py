"""#19 part-granular work inside a stage: row-local stages (normalize, filter, pii,
language, decontaminate, locally scored quality) run in parts of `[run] part_rows` rows,
each finished part kept in RUN/stages/NN-name/parts/; a run killed inside a stage resumes
from its last finished part, and the output is the same bytes whatever the part size."""
from pathlib import Path

import pytest

from curate.contract.atomic import sha256_file
from curate.pipeline.config import load_config
from curate.pipeline.runner import run_pipeline
from curate.stages.filter.stage import HeuristicFilter as Filter

from test_fingerprints import Lines
from test_runner import make_inputs

ROOT = Path(__file__).resolve().parent.parent
EXTRA = """
[[stages]]
kind = "pii"
action = "redact"

[[stages]]
kind = "filter"
on = "assistant"
"""


def _outputs(run: Path) -> dict:
    files = [*run.glob("stages/*/data.parquet"), *run.glob("rejects/*.parquet"), *run.glob("shards/*/*.arrow")]
    return {str(p.relative_to(run)): sha256_file(p) for p in sorted(files)}


def _manifest(m: dict) -> dict:
    return {k: v for k, v in m.items() if k not in ("config", "config_hash")}


def _cfg(tmp_path, part_rows):
    p = make_inputs(tmp_path, render=True)
    if "kind = \"pii\"" not in p.read_text():
        p.write_text(p.read_text().replace("[render]", EXTRA + "\n[render]", 1))
    cfg = load_config(p)
    cfg.run.part_rows = part_rows
    return cfg


def test_parts_give_the_same_bytes_as_one_whole_table(tmp_path):
    whole = run_pipeline(_cfg(tmp_path, 50000), out_dir=tmp_path / "whole")
    log = Lines()
    parted = run_pipeline(_cfg(tmp_path, 7), out_dir=tmp_path / "parted", progress=log)
    assert any("[filter] 7 parts of up to 7 rows (annotate)" in x for x in log.lines), log.lines
    assert any("[normalize] 8 parts" in x for x in log.lines), log.lines
    assert _outputs(tmp_path / "parted") == _outputs(tmp_path / "whole")
    assert _manifest(parted) == _manifest(whole)
    assert not list((tmp_path / "parted").glob("stages/*/parts"))  # a finished stage supersedes its parts


def test_killed_inside_a_stage_resumes_from_its_last_finished_part(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, 7)
    run_pipeline(cfg, out_dir=tmp_path / "clean")
    calls, kill = [], [True]
    orig = Filter.annotate

    def annotate(self, table):
        calls.append(table.height)
        if kill[0] and len(calls) == 4:
            raise KeyboardInterrupt("killed inside the filter stage")
        return orig(self, table)

    monkeypatch.setattr(Filter, "annotate", annotate)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, out_dir=tmp_path / "run")
    parts = sorted(p.name for p in (tmp_path / "run" / "stages").glob("*-filter/parts/part-*.json"))
    assert parts == ["part-00000.json", "part-00001.json", "part-00002.json"]
    calls.clear()
    kill[0] = False
    log = Lines()
    run_pipeline(cfg, out_dir=tmp_path / "run", progress=log)
    assert len(calls) == 7 - 3  # only the parts not finished before the kill
    assert any("[filter] 7 parts" in x and "3 resumed" in x for x in log.lines), log.lines
    assert _outputs(tmp_path / "run") == _outputs(tmp_path / "clean")


def test_a_damaged_part_is_computed_again(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, 7)
    run_pipeline(cfg, out_dir=tmp_path / "clean")
    orig = Filter.annotate
    n = []

    def annotate(self, table):
        n.append(1)
        if len(n) == 3:
            raise KeyboardInterrupt
        return orig(self, table)

    monkeypatch.setattr(Filter, "annotate", annotate)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, out_dir=tmp_path / "run")
    part = next((tmp_path / "run" / "stages").glob("*-filter/parts/part-00001.arrow"))
    part.write_bytes(part.read_bytes()[:100])
    n.clear()
    monkeypatch.setattr(Filter, "annotate", lambda self, t: n.append(1) or orig(self, t))
    run_pipeline(cfg, out_dir=tmp_path / "run")
    assert len(n) == 6  # part 0 resumed, part 1 damaged and recomputed, 2..6 new
    assert _outputs(tmp_path / "run") == _outputs(tmp_path / "clean")


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "sample_data" / "pipeline.toml").is_file(), reason="no sample pipeline")
def test_sample_pipeline_in_parts_is_byte_identical(tmp_path):
    cfg = load_config(ROOT / "sample_data" / "pipeline.toml")
    whole = run_pipeline(cfg, out_dir=tmp_path / "whole")
    cfg.run.part_rows = 400
    parted = run_pipeline(cfg, out_dir=tmp_path / "parted")
    assert _outputs(tmp_path / "parted") == _outputs(tmp_path / "whole")
    assert _manifest(parted) == _manifest(whole)
