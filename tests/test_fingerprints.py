"""#15 content fingerprints: a stage reruns when a file it reads changes, not only when
its config values do; file hashes are cached by (path, size, mtime)."""
import json
import os
from pathlib import Path


import curate.pipeline.fingerprint as fp
from curate.contract.progress import Progress
from curate.pipeline.config import load_config
from curate.pipeline.fingerprint import FileHashes, config_files
from curate.pipeline.runner import run_pipeline

PIPELINE = """
[run]
output_dir = "run"

[[sources]]
name = "a"
path = "data.jsonl"
format = "alpaca"
task = "qa"

[[stages]]
kind = "decontaminate"
evalsets = [{ path = "evals/eval.jsonl", fields = ["question"] }]
n = 5
min_words = 5
"""


def _question(k: int) -> str:
    words = ("amber", "bridge", "cedar", "delta", "ember", "fjord", "garnet", "harbor", "island")
    return " ".join(f"{w}{k}" for w in words)  # no 5-gram shared between two questions


def _setup(tmp_path: Path, n_eval: int) -> Path:
    rows = [{"instruction": _question(k), "output": f"Item {k} is old."} for k in range(40)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _write_eval(tmp_path, n_eval)
    p = tmp_path / "pipeline.toml"
    p.write_text(PIPELINE)
    return p


def _write_eval(tmp_path: Path, n_eval: int) -> None:
    (tmp_path / "evals").mkdir(exist_ok=True)
    (tmp_path / "evals" / "eval.jsonl").write_text(
        "".join(json.dumps({"question": _question(k)}) + "\n" for k in range(n_eval)))


class Lines(Progress):
    def __init__(self):
        super().__init__(enabled=False)
        self.lines = []

    def log(self, message):
        self.lines.append(message)


def test_eval_set_growth_recomputes_decontaminate(tmp_path):
    p = _setup(tmp_path, 5)
    first = run_pipeline(load_config(p))
    assert first["ledger"]["dropped"]["decontaminate"] == {"contaminated": 5}
    _write_eval(tmp_path, 25)  # prompts added to the eval set; no config value changed
    log = Lines()
    second = run_pipeline(load_config(p), progress=log)
    assert second["ledger"]["dropped"]["decontaminate"] == {"contaminated": 25}
    assert any("[decontaminate] recomputing" in line for line in log.lines), log.lines
    assert not any("[decontaminate] resumed" in line for line in log.lines)
    assert any("[read] resumed" in line for line in log.lines)  # the inputs did not change


def test_config_files_finds_nested_paths_and_skips_the_project_and_the_run(tmp_path):
    p = _setup(tmp_path, 3)
    cfg = load_config(p)
    assert config_files(cfg.stages[0], cfg.base_dir) == [(tmp_path / "evals" / "eval.jsonl").resolve()]

    import dataclasses

    @dataclasses.dataclass
    class C:  # a value "." or ".." must never hash the whole project, nor one into the run
        a: str = "."
        b: str = ".."
        c: str = "run"
        d: str = "evals"

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("x")
    assert config_files(C(), tmp_path, run_dir=tmp_path / "run") == [(tmp_path / "evals" / "eval.jsonl").resolve()]


def test_config_can_name_its_files_itself(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"w")

    class C:
        def files(self, base_dir):
            return [Path(base_dir) / "w.bin"]

    assert config_files(C(), tmp_path) == [(tmp_path / "w.bin").resolve()]


def test_hash_cache_reads_a_file_once_until_it_changes(tmp_path, monkeypatch):
    f = tmp_path / "model.bin"
    f.write_bytes(b"a" * 1000)
    calls = []
    real = fp.sha256_file
    monkeypatch.setattr(fp, "sha256_file", lambda path: calls.append(path) or real(path))
    cache = tmp_path / "cache" / "hashes.json"
    h = FileHashes(cache)
    first = h.sha256(f)
    h.save()
    again = FileHashes(cache)
    assert again.sha256(f) == first and len(calls) == 1
    f.write_bytes(b"b" * 1000)
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    assert again.sha256(f) != first and len(calls) == 2
    cache.write_text("{not json")  # a damaged cache is only a slower run
    assert FileHashes(cache).sha256(f) == again.sha256(f)
