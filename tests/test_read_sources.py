"""Sources where datasets live (issue 16): `datasets.save_to_disk` folders (Dataset and
DatasetDict), the Hugging Face hub cache laid out as huggingface_hub lays it, and folders of
Parquet shards named by split; metadata files are never records."""
import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.contract.typed_config import ConfigError
from curate.read.readers import read_source
from curate.read.sources import SourceConfig, source_files

RECS = [{"instruction": f"Name a colour, number {i}.", "input": "", "output": f"Colour {i}."} for i in range(7)]


def test_save_to_disk_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(RECS).save_to_disk(str(tmp_path / "ds"))
    assert {"dataset_info.json", "state.json"} <= {p.name for p in (tmp_path / "ds").iterdir()}
    logs = []
    r = read_source(SourceConfig(name="d", path="ds"), tmp_path, log=logs.append)
    assert r.format == "alpaca" and not r.quarantine and r.read == len(RECS)
    assert r.table["messages"].list.get(1).struct.field("content").to_list() == [x["output"] for x in RECS]
    assert r.table["origin"][0].startswith("ds/data-00000-of-00001.arrow:#0")
    assert any("dataset_info.json" in m for m in logs) and any("state.json" in m for m in logs)


def test_save_to_disk_dataset_dict_needs_a_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(RECS),
                               "test": datasets.Dataset.from_list(RECS[:2])})
    dd.save_to_disk(str(tmp_path / "dd"))
    r = read_source(SourceConfig(name="d", path="dd", split="train"), tmp_path)
    assert r.table.height == len(RECS) and not r.quarantine
    assert read_source(SourceConfig(name="d", path="dd", split="test"), tmp_path).table.height == 2
    with pytest.raises(ConfigError, match="DatasetDict with splits train, test: set `split`"):
        source_files(SourceConfig(name="d", path="dd"), tmp_path)
    with pytest.raises(ConfigError, match="no split 'dev'"):
        source_files(SourceConfig(name="d", path="dd", split="dev"), tmp_path)


def _shards(folder: Path) -> None:
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(RECS[:4]), folder / "data" / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(RECS[4:]), folder / "data" / "train-00001-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(RECS[:1]), folder / "data" / "test-00000-of-00001.parquet")
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# A dataset card\n")
    (folder / ".gitattributes").write_text("*.parquet filter=lfs\n")


def test_parquet_shard_folder_picks_the_split_by_file_name(tmp_path):
    _shards(tmp_path / "repo")
    r = read_source(SourceConfig(name="p", path="repo", split="train"), tmp_path)
    assert r.table.height == len(RECS) and not r.quarantine
    assert r.files == ["repo/data/train-00000-of-00002.parquet", "repo/data/train-00001-of-00002.parquet"]
    assert r.table["origin"].to_list()[4] == "repo/data/train-00001-of-00002.parquet:#0"
    assert read_source(SourceConfig(name="p", path="repo", split="test"), tmp_path).table.height == 1
    with pytest.raises(ConfigError, match="splits test, train: set `split`"):
        source_files(SourceConfig(name="p", path="repo"), tmp_path)


def test_parquet_streams_in_record_batches(tmp_path):
    pq.write_table(pa.Table.from_pylist(RECS * 10), tmp_path / "big.parquet", row_group_size=16)
    from curate.read.readers import iter_source

    batches = list(iter_source(SourceConfig(name="p", path="big.parquet"), tmp_path, batch_rows=8))
    assert len(batches) >= 9 and all(t.height <= 8 for t, _ in batches)
    assert pl.concat([t for t, _ in batches])["origin"].to_list() == [f"big.parquet:#{i}" for i in range(70)]


def _hub(cache: Path, org="acme", name="colours", commit="a" * 40, config=None) -> Path:
    repo = cache / f"datasets--{org}--{name}"
    snap = repo / "snapshots" / commit
    _shards(snap / config if config else snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir()
    return snap


def test_hub_cache_resolved_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    _hub(tmp_path / "hub")
    r = read_source(SourceConfig(name="h", path="hf://datasets/acme/colours", split="train"), tmp_path)
    assert r.table.height == len(RECS) and not r.quarantine
    assert r.table["origin"][0] == "hf://datasets/acme/colours:data/train-00000-of-00002.parquet:#0"
    pinned = read_source(SourceConfig(name="h", path="hf://datasets/acme/colours@" + "a" * 40, split="test"), tmp_path)
    assert pinned.table.height == 1


def test_hub_cache_config_and_hf_home(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    _hub(tmp_path / "home" / "hub", config="en")
    r = read_source(SourceConfig(name="h", path="hf://datasets/acme/colours/en", split="train"), tmp_path)
    assert r.table.height == len(RECS)
    with pytest.raises(ConfigError, match=r"config 'fr' not in snapshot aaaaaaaaaaaa \(folders there: en\)"):
        source_files(SourceConfig(name="h", path="hf://datasets/acme/colours/fr"), tmp_path)


def test_hub_cache_errors_name_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ConfigError, match="acme/nothing is not in the local hub cache"):
        source_files(SourceConfig(name="h", path="hf://datasets/acme/nothing"), tmp_path)
    _hub(tmp_path / "hub")
    with pytest.raises(ConfigError, match="revision 'v2' is not in the cache"):
        source_files(SourceConfig(name="h", path="hf://datasets/acme/colours@v2", split="train"), tmp_path)
    with pytest.raises(ConfigError, match="expected hf://datasets/ORG/NAME"):
        source_files(SourceConfig(name="h", path="hf://models/x"), tmp_path)


def test_validate_refuses_an_uncached_hub_dataset(tmp_path, monkeypatch):
    from curate.pipeline.config import load_config

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "pipeline.toml").write_text(
        '[run]\noutput_dir = "out"\n[[sources]]\nname = "h"\npath = "hf://datasets/acme/colours"\n')
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "pipeline.toml")
    assert err.value.key == "sources[0].path" and "not in the local hub cache" in str(err.value)
    _hub(tmp_path / "hub")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "pipeline.toml")
    assert err.value.key == "sources[0].split"


def test_metadata_json_not_counted_as_records(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "part.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECS))
    (d / "dataset_info.json").write_text(json.dumps({"description": "", "features": {}}))
    (d / "state.json").write_text(json.dumps({"_data_files": [{"filename": "part.jsonl"}]}))
    r = read_source(SourceConfig(name="d", path="d"), tmp_path)
    assert r.read == len(RECS) and not r.quarantine and r.files == ["d/part.jsonl"]
