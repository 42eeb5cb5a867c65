"""The rejects merge on a worker (`RayExecutor.write_rejects`, issue #19): the same file,
byte for byte, as the runner's own merge on the driver, from per-part Parquet files with
text and empty frames between them; the driver's Parquet reader is made to fail, so the
rows (and their messages) can only have been read on a worker."""
from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install '.[ray]'")

from curate.contract.ledger import REASON, reject_frame  # noqa: E402
from curate.pipeline import runner  # noqa: E402
from curate.pipeline.ray_executor import RayExecutor  # noqa: E402

pytestmark = pytest.mark.slow


def _parts(tmp_path: Path) -> list:
    items = []
    for k in range(4):
        if k == 2:  # a part without rejects: the empty frame of the schema, as the stages give
            items.append(reject_frame("filter", pl.DataFrame(schema={"id": pl.String, "messages": pl.String,
                                                                     REASON: pl.String})))
            continue
        n = 700 + 37 * k  # parts that are not whole row groups
        df = pl.DataFrame({"id": [f"{k}-{i}" for i in range(n)],
                           "messages": [f"user {k} {i} " + "text " * (i % 9) for i in range(n)],
                           REASON: ["too_short" if i % 3 else "lang" for i in range(n)]})
        path = tmp_path / f"rejects-{k:05d}.parquet"
        reject_frame("filter", df).write_parquet(path)
        items.append(path)
    return items


def test_rejects_merged_on_a_worker_equal_the_runner_merge(ray_local, tmp_path, monkeypatch):
    items = _parts(tmp_path)
    ref = runner._write_rejects(tmp_path / "ref.parquet", items)
    monkeypatch.setattr(pl, "read_parquet", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("read a rejects file on the driver")))
    ex = RayExecutor()
    try:
        got = ex.write_rejects(tmp_path / "ray.parquet", items)
    finally:
        ex.close()
    monkeypatch.undo()
    assert got == ref and got["rows"] == sum(pl.read_parquet(p).height for p in items if isinstance(p, Path))
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(tmp_path / "ray.parquet") == digest(tmp_path / "ref.parquet")
