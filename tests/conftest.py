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
