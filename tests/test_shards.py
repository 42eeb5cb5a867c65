"""Shards: layout, determinism, size bound, memory-mapped reading, manifest checks, the
tokenizer fingerprint, and the load-time checks."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from curate.render.config import RenderConfig
from curate.render.renderer import render_examples
from curate.contract.shards import (ShardError, check_examples, check_tokenizer, manifest_tokenizer_fingerprint,
                                    open_split, tokenizer_fingerprint)
from curate.render.shards import token_counts, write_shards
from helpers import pair, records
from test_render_tokenizers import get_tokenizer


def convs(n: int) -> pl.DataFrame:
    return records([pair(f"Question {i}: " + "why " * (i % 7), f"Answer {i}: " + "because " * (1 + i % 11))
                    for i in range(n)], source=lambda i: f"s{i % 2}", task=lambda i: f"t{i % 3}", origin="f")


@pytest.fixture(scope="module")
def rendered():
    tok = get_tokenizer("bpe")
    cfg = RenderConfig(tokenizer="x", max_length=128, val_fraction=0.2)
    return render_examples(convs(60), cfg, Path("."), 0, tokenizer=tok), tok


def write(run: Path, out, **kw):
    cfg = RenderConfig(tokenizer="x", max_length=128, **kw)
    shards = write_shards(out.examples, run / "shards", cfg)
    manifest = {"render": {"tokenizer": out.fingerprints["tokenizer"]}, "shards": shards,
                "tokens": token_counts(out.examples)}
    (run / "manifest.json").write_text(json.dumps(manifest))
    return shards


def test_packed_shards_round_trip(rendered, tmp_path):
    out, _ = rendered
    shards = write(tmp_path, out, pack=True, shard_rows=5)
    train = out.examples.filter(pl.col("split") == "train")
    assert [e["file"] for e in shards["train"]][:2] == ["shards/train/00000.arrow", "shards/train/00001.arrow"]
    assert all(e["rows"] <= 5 for e in shards["train"] + shards["val"])
    assert sum(e["examples"] for e in shards["train"]) == train.height
    table = open_split(tmp_path, "train", verify=True)
    assert table.schema.names == ["input_ids", "labels", "seq_lens", "ids", "tasks", "sources"]
    assert table.schema.field("input_ids").type == pa.list_(pa.int32())
    lens = [sum(r) for r in table["seq_lens"].to_pylist()]
    assert lens == [len(r) for r in table["input_ids"].to_pylist()] and max(lens) <= 128
    # every example is in exactly one row, its tokens intact
    by_id = {r["id"]: r for r in train.iter_rows(named=True)}
    seen = []
    for row in table.to_pylist():
        start = 0
        for eid, n in zip(row["ids"], row["seq_lens"]):
            assert row["input_ids"][start:start + n] == by_id[eid]["input_ids"]
            assert row["labels"][start:start + n] == by_id[eid]["labels"]
            start += n
            seen.append(eid)
    assert sorted(seen) == sorted(by_id)
    assert sum(e["tokens"] for e in shards["train"]) == sum(len(r["input_ids"]) for r in by_id.values())
    checks = check_examples(table, out.fingerprints["end_of_turn"]["ids"])
    assert checks["zero_supervised"] == 0 and checks["runs_without_end_of_turn"] == 0
    assert checks["examples"] == train.height
    # shard sha256 is the file's
    f = tmp_path / shards["val"][0]["file"]
    assert hashlib.sha256(f.read_bytes()).hexdigest() == shards["val"][0]["sha256"]
    assert not list(tmp_path.rglob(".*.tmp"))


def test_unpacked_shards_and_determinism(rendered, tmp_path):
    out, _ = rendered
    a = write(tmp_path / "a", out, pack=False, shard_rows=1000)
    b = write(tmp_path / "b", out, pack=False, shard_rows=1000)
    assert a == b  # same rows, same bytes (sha256 and all)
    t = open_split(tmp_path / "a", "val")
    assert t.schema.names == ["id", "task", "source", "input_ids", "labels"]
    val = out.examples.filter(pl.col("split") == "val")
    assert t["id"].to_pylist() == val["id"].to_list()
    assert t["input_ids"].to_pylist() == val["input_ids"].to_list()  # not padded


def test_stale_shards_are_removed(rendered, tmp_path):
    out, _ = rendered
    write(tmp_path, out, pack=True, shard_rows=2)
    many = len(list((tmp_path / "shards" / "train").glob("*.arrow")))
    shards = write(tmp_path, out, pack=True, shard_rows=1000)
    assert many > 1 and len(list((tmp_path / "shards" / "train").glob("*.arrow"))) == len(shards["train"]) == 1


def test_verify_and_missing(rendered, tmp_path):
    out, _ = rendered
    shards = write(tmp_path, out, pack=True)
    f = tmp_path / shards["train"][0]["file"]
    data = bytearray(f.read_bytes())
    data[-20] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="sha256"):
        open_split(tmp_path, "train", verify=True)
    f.unlink()
    with pytest.raises(ShardError, match="missing"):
        open_split(tmp_path, "train")
    with pytest.raises(ShardError, match="unknown split"):
        open_split(tmp_path, "test")


def test_tokenizer_fingerprint_and_refusal(rendered, tmp_path):
    out, tok = rendered
    write(tmp_path, out, pack=True)
    fp = tokenizer_fingerprint(tok)
    assert fp == tokenizer_fingerprint(get_tokenizer("bpe"))
    assert manifest_tokenizer_fingerprint(tmp_path)["fingerprint"] == fp["fingerprint"]
    assert check_tokenizer(tmp_path, tok)["vocab_size"] == len(tok.get_vocab())
    with pytest.raises(ShardError, match="re-render"):
        check_tokenizer(tmp_path, get_tokenizer("byte_bpe"))


def test_readable_by_hf_datasets(rendered, tmp_path):
    datasets = pytest.importorskip("datasets")
    out, _ = rendered
    shards = write(tmp_path, out, pack=True)
    ds = datasets.Dataset.from_file(str(tmp_path / shards["train"][0]["file"]))
    assert ds.num_rows == shards["train"][0]["rows"]
    assert ds[0]["seq_lens"] == open_split(tmp_path, "train")["seq_lens"][0].as_py()


def test_memory_mapped(rendered, tmp_path):
    out, _ = rendered
    write(tmp_path, out, pack=True, shard_rows=1000)
    before = pa.total_allocated_bytes()
    t = open_split(tmp_path, "train")
    # zero-copy: the table's buffers point into the mapped file, nothing is allocated for them
    assert t.nbytes > 1000 and pa.total_allocated_bytes() - before < t.nbytes // 10


def test_checks_catch_broken_masks():
    table = pa.table({"id": ["a", "b"], "task": ["x", "y"], "source": ["s", "s"],
                      "input_ids": pa.array([[1, 5, 9, 7], [1, 5, 6, 7]], pa.list_(pa.int32())),
                      "labels": pa.array([[-100, -100, 9, 7], [-100, -100, 6, -100]], pa.list_(pa.int32()))})
    c = check_examples(table, [7])
    assert c["runs_without_end_of_turn"] == 1 and c["zero_supervised"] == 0
    assert c["supervised_fraction"] == {"x": 0.5, "y": 0.25}
    table2 = table.set_column(4, "labels", pa.array([[-100] * 4, [-100, -100, 6, 7]], pa.list_(pa.int32())))
    c2 = check_examples(table2, [7])
    assert c2["zero_supervised"] == 1 and c2["runs_without_end_of_turn"] == 0
    # a multi-token end of turn
    assert check_examples(table2, [6, 7])["runs_without_end_of_turn"] == 0
    assert check_examples(table2, [5, 7])["runs_without_end_of_turn"] == 1


def test_token_counts(rendered):
    out, _ = rendered
    tc = token_counts(out.examples)
    assert set(tc) == {"by_task", "by_source", "by_split"}
    assert sum(v["examples"] for v in tc["by_task"].values()) == out.examples.height
    assert sum(v["tokens"] for v in tc["by_source"].values()) == out.stats["tokens"]
