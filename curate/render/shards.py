"""Writing the token shards (the layout and the reader: curate/contract/shards.py).

    write_shards(examples, shards_dir, cfg) -> {"train": [shard...], "val": [shard...]}
    token_counts(examples)                  -> the manifest's `tokens` section

Written atomically (tmp, fsync, rename); same rows, same bytes.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa

from curate.contract.atomic import write_bytes
from curate.contract.shards import IGNORE, PACKED_SCHEMA, SPLITS, UNPACKED_SCHEMA, flat_values


def _ipc_bytes(table: pa.Table) -> pa.Buffer:
    """The shard file's bytes (a pyarrow Buffer: written and hashed without a copy)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=max(table.num_rows, 1)):
            writer.write_batch(batch)
    return sink.getvalue()


def compact(table: pa.Table) -> pa.Table:
    """`table` with buffers holding exactly its rows. Arrow's IPC writer writes a sliced
    buffer up to a padded length, so a slice of a larger table carries up to 64 bytes of
    the rows after it into its file (so, until #19, a shard's bytes depended on the next
    shard's data when a split had several shards); from compact buffers a shard's bytes
    depend on its own rows only, and the whole-table writer and the streamed one
    (curate.render.stream) write the same. A split of one shard is written as before."""
    import numpy as np

    return table.take(pa.array(np.arange(table.num_rows, dtype=np.int64))).combine_chunks()


def _supervised_count(labels: pa.ChunkedArray | pa.Array) -> int:
    flat = flat_values(labels)
    return int((flat != IGNORE).sum())


def shard_metadata(cfg) -> dict:
    return {"curate.layout": "packed" if cfg.pack else "unpacked", "curate.max_length": str(cfg.max_length)}


def write_split(split_dir: Path, run_dir: Path, tables, cfg, compacted: bool = False) -> list[dict]:
    """Write each table of `tables` (an iterable of pyarrow Tables of at most
    cfg.shard_rows rows, cast to the shard schema) as split_dir/NNNNN.arrow, in order;
    returns their entries and removes files an earlier, larger run left there.
    `compacted`: the tables already hold exactly their rows (see `compact`)."""
    split_dir.mkdir(parents=True, exist_ok=True)
    entries = [write_shard(split_dir, run_dir, k, part, cfg, compacted) for k, part in enumerate(tables)]
    remove_stale(split_dir, entries)
    return entries


def write_shard(split_dir: Path, run_dir: Path, k: int, part: pa.Table, cfg, compacted: bool = False) -> dict:
    """One shard, split_dir/KKKKK.arrow (atomic), and its entry (write_split's; also what a
    Ray worker writing shard `k` returns: curate.render.stream.ShardPart)."""
    if not compacted:
        part = compact(part)
    data = _ipc_bytes(part)
    path = Path(split_dir) / f"{k:05d}.arrow"
    write_bytes(path, data)
    n_examples = int(flat_values(part["seq_lens"]).size) if cfg.pack else part.num_rows
    return {
        "file": path.relative_to(run_dir).as_posix(),
        "rows": part.num_rows,
        "examples": n_examples,
        "tokens": int(flat_values(part["input_ids"]).size),
        "supervised_tokens": _supervised_count(part["labels"]),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def remove_stale(split_dir: Path, entries: list[dict]) -> None:
    """Files from an earlier, larger run in the same folder would otherwise be read as ours."""
    names = {Path(e["file"]).name for e in entries}
    for stale in Path(split_dir).glob("*.arrow"):
        if stale.name not in names:
            stale.unlink()


def write_shards(examples, shards_dir: str | Path, cfg) -> dict:
    """Write `examples` (render_examples' polars DataFrame) as shards/{train,val}/NNNNN.arrow.
    Returns {"train": [{file, rows, examples, tokens, supervised_tokens, sha256}], "val": [...]},
    `file` relative to the run directory (shards_dir's parent). The whole-table path; the
    runner streams the same bytes through curate.render.stream.write_shards_streamed."""
    import polars as pl

    from curate.render.packing import pack_examples

    shards_dir = Path(shards_dir)
    run_dir = shards_dir.parent
    out: dict = {}
    for split in SPLITS:
        sub = examples.filter(pl.col("split") == split).sort("id", maintain_order=True)
        if cfg.pack and sub.height:
            rows = pack_examples(sub, cfg.max_length)
            schema = PACKED_SCHEMA
        else:
            rows = sub.select("id", "task", "source", "input_ids", "labels")
            schema = PACKED_SCHEMA if cfg.pack else UNPACKED_SCHEMA
        table = rows.to_arrow().cast(schema) if rows.height else schema.empty_table()
        table = table.replace_schema_metadata(shard_metadata(cfg))
        slices = (table.slice(start, cfg.shard_rows) for start in range(0, table.num_rows, cfg.shard_rows))
        out[split] = write_split(shards_dir / split, run_dir, slices, cfg)
    return out


def token_counts(examples) -> dict:
    """The manifest's `tokens` section: {by_task, by_source, by_split}: {name: {examples, tokens,
    supervised_tokens}}, over all splits for by_task and by_source."""
    import polars as pl

    return counts_by_group(examples.select(
        "task", "source", "split",
        pl.col("input_ids").list.len().alias("tokens"),
        pl.col("labels").list.eval(pl.element() != IGNORE).list.sum().alias("supervised_tokens"),
    ))


def counts_by_group(counted) -> dict:
    """token_counts from a frame of one row per example: task, source, split, tokens,
    supervised_tokens (what the streamed render keeps instead of the token lists)."""
    import polars as pl

    def by(col: str) -> dict:
        g = counted.group_by(col).agg(pl.len().alias("examples"), pl.col("tokens").sum(),
                                      pl.col("supervised_tokens").sum()).sort(col)
        return {r[col]: {"examples": int(r["examples"]), "tokens": int(r["tokens"]),
                         "supervised_tokens": int(r["supervised_tokens"])} for r in g.iter_rows(named=True)}

    return {"by_task": by("task"), "by_source": by("source"), "by_split": by("split")}
