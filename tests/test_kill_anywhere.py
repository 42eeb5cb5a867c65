"""#15 fault injection: a run killed at N random points (each kill at one of its atomic
writes, before or after the rename, exactly as SIGKILL would leave the disk: the process
exits with `os._exit`, no clean-up runs) resumes to the bytes of an unkilled run and leaves
no temporary file. N = 3 by default, 10 under the `slow` mark.

Only writes change what is on disk, so killing at a write (before its rename: a temp file
left behind; after it: a finished file and nothing more) covers every state a kill
anywhere else can leave."""
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

import curate.contract.atomic as atomic
from curate.pipeline.config import load_config
from curate.pipeline.runner import run_pipeline

from test_runner import _digest, make_inputs

ROOT = Path(__file__).resolve().parent.parent


def _count_writes(cfg, out: Path, monkeypatch) -> int:
    monkeypatch.setattr(atomic, "_FAULT_AFTER", 10**9)
    monkeypatch.setattr(atomic, "_FAULT_TMP", False)
    monkeypatch.setattr(atomic, "_writes", 0)
    run_pipeline(cfg, out_dir=out)
    n = atomic._writes
    monkeypatch.setattr(atomic, "_FAULT_AFTER", 0)
    return n


def _kill_and_resume(tmp_path, monkeypatch, n_kills: int, seed: int):
    p = make_inputs(tmp_path, render=True)
    cfg = load_config(p)
    total = _count_writes(cfg, tmp_path / "clean", monkeypatch)
    assert total > 10
    clean = _digest(tmp_path / "clean")
    rng = random.Random(seed)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for k in range(n_kills):
        point, mode = rng.randint(1, total), rng.choice(["tmp", "renamed"])
        out = tmp_path / f"killed{k}"
        r = subprocess.run([sys.executable, "-m", "curate", "run", str(p), "--out", str(out), "--no-train", "--quiet"],
                           env={**env, "CURATE_FAULT_AFTER_WRITES": str(point), "CURATE_FAULT_MODE": mode},
                           capture_output=True, text=True)
        assert r.returncode == 137, (point, mode, r.stderr)
        if mode == "tmp":
            assert any(".tmp" in f.name for f in out.rglob("*")), "the kill left its temp file, as SIGKILL does"
        run_pipeline(cfg, out_dir=out)
        assert _digest(out) == clean, (point, mode)
        assert not [f for f in out.rglob("*") if atomic.TEMP_RE.match(f.name)], (point, mode)


def test_killed_at_random_writes_resumes_to_identical_bytes(tmp_path, monkeypatch):
    _kill_and_resume(tmp_path, monkeypatch, n_kills=3, seed=0)


@pytest.mark.slow
def test_killed_at_ten_random_writes(tmp_path, monkeypatch):
    _kill_and_resume(tmp_path, monkeypatch, n_kills=10, seed=1)
