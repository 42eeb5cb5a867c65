"""#15 paths: a run writes only inside its run directory, deletes only what a run wrote,
and refuses output directories that are not its own (/, home, among its inputs)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from curate.contract.typed_config import ConfigError
from curate.pipeline.config import load_config
from curate.pipeline.rundir import MARKER, RunDir, RunDirError
from curate.pipeline.runner import run_pipeline

from test_runner import make_inputs

ROOT = Path(__file__).resolve().parent.parent


def _with_output(p: Path, output_dir: str) -> Path:
    p.write_text(p.read_text().replace('output_dir = "run"', f'output_dir = "{output_dir}"'))
    return p


def test_non_empty_directory_without_marker_is_refused_untouched(tmp_path):
    cfg = load_config(make_inputs(tmp_path))
    out = tmp_path / "mine"
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "precious.arrow").write_bytes(b"x")
    (out / "manifest.json").write_text("{}")
    with pytest.raises(RunDirError, match="not empty and is not a curate run"):
        run_pipeline(cfg, out_dir=out)
    assert (out / "shards" / "precious.arrow").read_bytes() == b"x"
    assert (out / "manifest.json").read_text() == "{}"
    assert sorted(p.name for p in out.rglob("*")) == ["manifest.json", "precious.arrow", "shards"]


def test_marker_lists_what_the_run_wrote_and_fresh_deletes_only_that(tmp_path):
    cfg = load_config(make_inputs(tmp_path))
    run_pipeline(cfg)
    run = tmp_path / "run"
    marker = json.loads((run / MARKER).read_text())
    assert marker["project"] == "curate" and len(marker["run_id"]) == 32
    assert {"manifest.json", "quarantine.jsonl", "stages/00-read", "stages/01-normalize",
            "rejects/01-normalize.parquet"} <= set(marker["writes"])
    (run / "notes.txt").write_text("mine")
    (run / "stages" / "my-analysis").mkdir()
    (run / "rejects" / "mine.parquet").write_bytes(b"mine")
    run_pipeline(cfg, fresh=True)
    assert (run / "notes.txt").read_text() == "mine"
    assert (run / "stages" / "my-analysis").is_dir()
    assert (run / "rejects" / "mine.parquet").read_bytes() == b"mine"
    assert json.loads((run / MARKER).read_text())["run_id"] == marker["run_id"]
    # a stage that left the pipeline is cleaned up, a file a run did not write is not
    cfg.stages.pop()
    run_pipeline(cfg)
    assert not (run / "stages" / "02-normalize_again").exists()
    assert not (run / "rejects" / "02-normalize_again.parquet").exists()
    assert (run / "rejects" / "mine.parquet").is_file() and (run / "notes.txt").is_file()


@pytest.mark.parametrize("output_dir", ["/", "~", ".", "..", "sub/.."])
def test_dangerous_output_dirs_refused_at_validate(tmp_path, monkeypatch, output_dir):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    p = _with_output(make_inputs(tmp_path), output_dir)
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert err.value.key == "run.output_dir"


def test_home_directory_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    p = _with_output(make_inputs(tmp_path), str(tmp_path / "home"))
    with pytest.raises(ConfigError, match="home directory"):
        load_config(p)


def test_output_inside_a_directory_source_refused_so_no_run_reads_its_outputs(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    make_inputs(tmp_path)
    (tmp_path / "alpaca.jsonl").rename(data / "alpaca.jsonl")
    p = tmp_path / "pipeline.toml"
    p.write_text('[run]\noutput_dir = "data/run"\n[[sources]]\nname = "a"\npath = "data"\ntask = "qa"\nformat = "alpaca"\n')
    with pytest.raises(ConfigError, match="read its own outputs"):
        load_config(p)
    # and the same through --out at run time
    p.write_text(p.read_text().replace('"data/run"', '"elsewhere"'))
    cfg = load_config(p)
    with pytest.raises(RunDirError, match="read its own outputs"):
        run_pipeline(cfg, out_dir=data / "run")
    assert sorted(x.name for x in data.iterdir()) == ["alpaca.jsonl"]


def test_curate_validate_prints_one_error_line(tmp_path):
    p = _with_output(make_inputs(tmp_path), "/")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "curate", "validate", str(p)], capture_output=True, text=True, env=env)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and "run.output_dir" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_symlinked_entries_are_never_written_or_deleted_through(tmp_path):
    cfg = load_config(make_inputs(tmp_path, render=True))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    run_pipeline(cfg)
    run = tmp_path / "run"
    # an owned entry replaced by a symlink: the link is removed, its target untouched
    import shutil
    shutil.rmtree(run / "shards")
    (run / "shards").symlink_to(outside, target_is_directory=True)
    run_pipeline(cfg)
    assert (outside / "keep.txt").read_text() == "keep" and sorted(os.listdir(outside)) == ["keep.txt"]
    assert (run / "shards").is_dir() and not (run / "shards").is_symlink()
    # a folder of the run pointing outside: refused, nothing written there
    shutil.rmtree(run / "stages")
    (run / "stages").symlink_to(outside, target_is_directory=True)
    with pytest.raises(RunDirError, match="outside the run directory"):
        run_pipeline(cfg)
    assert sorted(os.listdir(outside)) == ["keep.txt"]


def test_rundir_path_refuses_escapes(tmp_path):
    rd = RunDir.open(tmp_path / "r")
    for bad in ("../x", "/etc/passwd", "a/../../b"):
        with pytest.raises(RunDirError):
            rd.path(bad)
    with pytest.raises(RunDirError, match="not written by a curate run"):
        rd.remove("manifest.json")


def test_versions_import_neither_torch_nor_transformers():
    code = ("import sys; from curate.pipeline.runner import versions; v = versions(); "
            "assert 'polars' in v; print([m for m in ('torch', 'transformers') if m in sys.modules])")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert r.stdout.strip() == "[]"


def test_a_run_killed_while_writing_its_first_marker_can_start_again(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "..curate-run.json.tmp777").write_text("{")
    rd = RunDir.open(out)
    assert sorted(os.listdir(out)) == [MARKER] and rd.marker["writes"] == []
