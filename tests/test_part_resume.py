"""#19 part-granular work inside a stage: the read cuts the input into parts of
`[run] part_rows` rows (RUN/stages/00-read/part-IIIII.parquet); row-local stages (normalize,
filter, pii, language, decontaminate, locally scored quality) run part by part, each
finished part recorded in RUN/stages/NN-name/parts/; a run killed inside a stage resumes
from its last finished part, and the output is the same whatever the part size (the same
rows in every stage, the same bytes in rejects/ and shards/)."""
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


def _frame_digest(df) -> str:
    """The frame's schema and values (not its Arrow buffers: polars' string-view buffers
    depend on how a column was concatenated, its values do not)."""
    import hashlib
    import json

    text = json.dumps([str(df.schema), df.to_dicts()], default=str, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _outputs(run: Path) -> dict:
    """sha256 of rejects/ and shards/ files; of each stage's rows (parts concatenated: part
    files follow `part_rows`, their concatenation must not)."""
    import json

    from curate.contract.datasets import read_dataset

    files = [*run.glob("rejects/*.parquet"), *run.glob("shards/*/*.arrow")]
    out = {str(p.relative_to(run)): sha256_file(p) for p in sorted(files)}
    for done in sorted(run.glob("stages/*/done.json")):
        entries = json.loads(done.read_text())["parts"]
        out[str(done.parent.relative_to(run))] = _frame_digest(read_dataset(done.parent, entries))
    return out


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
    assert any("[filter] 8 parts of up to 7 rows (annotate)" in x for x in log.lines), log.lines
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
    assert len(calls) == 8 - 3  # only the parts not finished before the kill
    assert any("[filter] 8 parts" in x and "3 resumed" in x for x in log.lines), log.lines
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
    part = next((tmp_path / "run" / "stages").glob("*-filter/part-00001.parquet"))
    part.write_bytes(part.read_bytes()[:100])
    n.clear()
    monkeypatch.setattr(Filter, "annotate", lambda self, t: n.append(1) or orig(self, t))
    run_pipeline(cfg, out_dir=tmp_path / "run")
    assert len(n) == 7  # part 0 resumed, part 1 damaged and recomputed, 2..7 new
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
