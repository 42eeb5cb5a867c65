"""Shared test fixtures. Real external data lives in ../shared/data; tests using it skip
when it is absent (a user's clone has no ../shared)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("CURATE_SHARED_DATA", ROOT.parent / "shared" / "data"))
SAMPLE = ROOT / "sample_data"


def shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not present: {path}")
    return path


@pytest.fixture
def shared_data():
    return shared


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch, tmp_path):
    # Nothing a test does may reach the network or write outside its tmp dir.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """One local Ray for every test module that needs one (2 CPUs, its files in pytest's
    tmp). One per session, because a second `ray.init` in the same process after a
    `ray.shutdown` can time out waiting for the new GCS on a busy machine. Yields the
    fault-marker path the workers see through `FAULT_ENV` (a test writes "die once" to it
    to make one worker exit mid-stage)."""
    ray = pytest.importorskip("ray")
    from curate.pipeline.ray_executor import FAULT_ENV

    base = tmp_path_factory.mktemp("ray")
    saved = {k: os.environ.get(k) for k in ("HOME", "TMPDIR", "RAY_TMPDIR")}
    for k, sub in (("HOME", "home"), ("TMPDIR", "tmp"), ("RAY_TMPDIR", "r")):
        (base / sub).mkdir()
        os.environ[k] = str(base / sub)
    fault = base / "fault"
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(base / "r"), logging_level="warning",
             log_to_driver=False, runtime_env={"env_vars": {FAULT_ENV: str(fault)}})
    try:
        yield fault
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
