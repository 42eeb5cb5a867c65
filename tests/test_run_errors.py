"""#15 errors: one `Error:` line naming the file (disk full included), a traceback only
with --debug; temporary files removed on failure and on the next start."""
import errno
import pathlib

from click.testing import CliRunner

from curate.cli import main
from curate.pipeline.config import load_config
from curate.pipeline.runner import run_pipeline

from test_fingerprints import Lines
from test_runner import make_inputs


def _disk_full_on_shards(monkeypatch):
    real = pathlib.Path.write_bytes

    def write_bytes(self, data):
        if ".arrow.tmp" in self.name:
            real(self, data[: len(data) // 2])  # a partial write, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)


def _tmp_files(root):
    return [p for p in root.rglob("*") if ".tmp" in p.name]


def test_disk_full_is_one_line_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    p = make_inputs(tmp_path, render=True)
    _disk_full_on_shards(monkeypatch)
    r = CliRunner().invoke(main, ["run", str(p), "--no-train", "--quiet"])
    assert r.exit_code == 1
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: no space left writing "), r.output
    assert "/run/shards/" in lines[0] and lines[0].endswith("nothing finished was lost, rerun to resume")
    assert "Traceback" not in r.output
    run = tmp_path / "run"
    assert _tmp_files(run) == [] and not (run / "manifest.json").exists()
    monkeypatch.undo()
    log = Lines()
    m = run_pipeline(load_config(p), progress=log)  # rerun resumes every stage
    assert m["ledger"]["reconciles"] and not any("recomputing" in x for x in log.lines)
    assert sum(1 for x in log.lines if "resumed" in x) == 3


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    p = make_inputs(tmp_path, render=True)
    _disk_full_on_shards(monkeypatch)
    r = CliRunner().invoke(main, ["--debug", "run", str(p), "--no-train", "--quiet"])
    assert r.exit_code != 0 and isinstance(r.exception, OSError) and r.exception.errno == errno.ENOSPC
    assert "Error:" not in r.output


def test_refused_output_directory_is_one_error_line(tmp_path):
    p = make_inputs(tmp_path)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "a.txt").write_text("a")
    r = CliRunner().invoke(main, ["run", str(p), "--out", str(tmp_path / "taken"), "--quiet"])
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error:") and "taken" in lines[0]


def test_unexpected_error_is_one_line_naming_the_type(tmp_path, monkeypatch):
    import curate.pipeline.runner as runner

    p = make_inputs(tmp_path)
    monkeypatch.setattr(runner, "iter_source", lambda *a, **k: (_ for _ in ()).throw(ValueError("bad\nthing")))
    r = CliRunner().invoke(main, ["run", str(p), "--quiet"])
    assert r.exit_code == 1 and r.output.strip() == "Error: ValueError: bad thing"


def test_temp_files_of_a_killed_run_are_removed_on_the_next_start(tmp_path):
    p = make_inputs(tmp_path)
    cfg = load_config(p)
    run_pipeline(cfg)
    run = tmp_path / "run"
    left = [run / "stages" / "00-read" / ".data.parquet.tmp4242", run / ".manifest.json.tmp17",
            run / "rejects" / ".01-normalize.parquet.tmp9"]
    for f in left:
        f.write_bytes(b"half")
    (run / "notes.tmp").write_text("not a temp file of ours")
    log = Lines()
    run_pipeline(cfg, progress=log)
    assert not any(f.exists() for f in left)
    assert (run / "notes.tmp").exists()
    assert sum("removed a temporary file" in x for x in log.lines) == 3


def test_sigterm_ends_in_one_line_and_removes_temp_files(tmp_path, monkeypatch):
    import os
    import signal

    from curate.stages.normalize import Normalize

    p = make_inputs(tmp_path, render=True)
    orig = Normalize.process

    def process(self, table):
        if self.name == "normalize_again":
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` from another shell
        return orig(self, table)

    monkeypatch.setattr(Normalize, "process", process)
    before = signal.getsignal(signal.SIGTERM)
    r = CliRunner().invoke(main, ["run", str(p), "--no-train", "--quiet"])
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the command's only
    assert r.exit_code == 130
    assert r.output.strip() == "Error: interrupted; nothing finished was lost, rerun to resume"
    assert _tmp_files(tmp_path / "run") == []
    monkeypatch.undo()
    assert run_pipeline(load_config(p))["ledger"]["reconciles"]
