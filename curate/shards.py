"""The shard contract: what curation writes and the one module train/ reads it through.

    write_shards(examples, shards_dir, cfg) -> {"train": [shard...], "val": [shard...]}
    token_counts(examples)                  -> the manifest's `tokens` section
    open_split(run_dir, split)              -> memory-mapped pyarrow Table of a split
    check_tokenizer(run_dir, tokenizer)     -> refuse shards made with another tokenizer
    check_examples(table, end_of_turn_ids)  -> the load-time checks (also run after rendering)
    position_ids(seq_lens)                  -> per-example positions of a packed row

Files are Arrow IPC *streams* (`.arrow`, the format Hugging Face `datasets` writes and
`Dataset.from_file` memory-maps; pyarrow maps them with `ipc.open_stream(memory_map(f))`),
uncompressed so that reading is zero-copy, one record batch of at most `shard_rows` rows
per file. Written atomically (tmp, fsync, rename); same rows, same bytes.

Packed rows: input_ids, labels (list<int32>, -100 = no loss), seq_lens (list<int32>), ids,
tasks, sources (list<string>). Unpacked rows: id, task, source, input_ids, labels, unpadded
(the trainer pads per batch). Import-light on purpose (numpy, pyarrow; no torch, no
transformers, no polars at import time): train/ imports it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

IGNORE = -100
SPLITS = ("train", "val")
I32 = pa.list_(pa.int32())
STR = pa.list_(pa.string())
PACKED_SCHEMA = pa.schema([("input_ids", I32), ("labels", I32), ("seq_lens", I32), ("ids", STR),
                           ("tasks", STR), ("sources", STR)])
UNPACKED_SCHEMA = pa.schema([("id", pa.string()), ("task", pa.string()), ("source", pa.string()),
                             ("input_ids", I32), ("labels", I32)])


class ShardError(ValueError):
    """Shards missing, corrupt, or made for another tokenizer."""


# --------------------------------------------------------------------------- fingerprints


def tokenizer_fingerprint(tokenizer) -> dict:
    """{fingerprint, vocab_size, special_tokens} of a transformers tokenizer: sha256 over its
    vocabulary (token -> id, added tokens included) and its special tokens. The trainer calls
    this on its model's tokenizer and compares with the manifest. Trade-off: merges and
    normalizers are not hashed (a tokenizer JSON also carries run-time settings such as
    truncation that would change the hash without changing ids)."""
    vocab = tokenizer.get_vocab()
    specials = {k: v for k, v in sorted((getattr(tokenizer, "special_tokens_map", None) or {}).items())}
    payload = json.dumps({"vocab": sorted(vocab.items(), key=lambda kv: (kv[1], kv[0])), "special": specials},
                         ensure_ascii=False, separators=(",", ":"), default=str)
    return {"fingerprint": hashlib.sha256(payload.encode("utf-8")).hexdigest(), "vocab_size": len(vocab),
            "special_tokens": specials}


def read_manifest(run_dir: str | Path) -> dict:
    p = Path(run_dir) / "manifest.json"
    if not p.is_file():
        raise ShardError(f"no manifest at {p}")
    return json.loads(p.read_text(encoding="utf-8"))


def manifest_tokenizer_fingerprint(run_dir: str | Path) -> dict:
    """The manifest's render.tokenizer: {path, fingerprint, vocab_size, special_tokens}."""
    render = read_manifest(run_dir).get("render") or {}
    if "tokenizer" not in render:
        raise ShardError(f"manifest in {run_dir} records no tokenizer fingerprint")
    return render["tokenizer"]


def check_tokenizer(run_dir: str | Path, tokenizer) -> dict:
    """Refuse shards made with another tokenizer than `tokenizer` (ShardError); returns the fingerprint."""
    want = manifest_tokenizer_fingerprint(run_dir)
    have = tokenizer_fingerprint(tokenizer)
    if want.get("fingerprint") != have["fingerprint"]:
        raise ShardError(
            f"shards in {run_dir} were made with tokenizer {want.get('path')!r} (fingerprint "
            f"{str(want.get('fingerprint'))[:12]}, vocab {want.get('vocab_size')}), not this model's "
            f"(fingerprint {have['fingerprint'][:12]}, vocab {have['vocab_size']}): re-render with the model's tokenizer")
    return have


# --------------------------------------------------------------------------- writing


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass


def _ipc_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=max(table.num_rows, 1)):
            writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _supervised_count(labels: pa.ChunkedArray | pa.Array) -> int:
    flat = _flat(labels)
    return int((flat != IGNORE).sum())


def _flat(col) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col.flatten().to_numpy(zero_copy_only=False)


def write_shards(examples, shards_dir: str | Path, cfg) -> dict:
    """Write `examples` (render_examples' polars DataFrame) as shards/{train,val}/NNNNN.arrow.
    Returns {"train": [{file, rows, examples, tokens, supervised_tokens, sha256}], "val": [...]},
    `file` relative to the run directory (shards_dir's parent)."""
    import polars as pl

    from curate.packing import pack_examples

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
        table = table.replace_schema_metadata({"curate.layout": "packed" if cfg.pack else "unpacked",
                                               "curate.max_length": str(cfg.max_length)})
        split_dir = shards_dir / split
        split_dir.mkdir(parents=True, exist_ok=True)
        entries = []
        for k, start in enumerate(range(0, table.num_rows, cfg.shard_rows)):
            part = table.slice(start, cfg.shard_rows)
            data = _ipc_bytes(part)
            path = split_dir / f"{k:05d}.arrow"
            _atomic_write(path, data)
            n_examples = int(_flat(part["seq_lens"]).size) if cfg.pack else part.num_rows
            entries.append({
                "file": path.relative_to(run_dir).as_posix(),
                "rows": part.num_rows,
                "examples": n_examples,
                "tokens": int(_flat(part["input_ids"]).size),
                "supervised_tokens": _supervised_count(part["labels"]),
                "sha256": hashlib.sha256(data).hexdigest(),
            })
        # Files from an earlier, larger run in the same folder would otherwise be read as ours.
        names = {Path(e["file"]).name for e in entries}
        for stale in split_dir.glob("*.arrow"):
            if stale.name not in names:
                stale.unlink()
        out[split] = entries
    return out


def token_counts(examples) -> dict:
    """The manifest's `tokens` section: {by_task, by_source, by_split}: {name: {examples, tokens,
    supervised_tokens}}, over all splits for by_task and by_source."""
    import polars as pl

    counted = examples.select(
        "task", "source", "split",
        pl.col("input_ids").list.len().alias("tokens"),
        pl.col("labels").list.eval(pl.element() != IGNORE).list.sum().alias("supervised_tokens"),
    )

    def by(col: str) -> dict:
        g = counted.group_by(col).agg(pl.len().alias("examples"), pl.col("tokens").sum(),
                                      pl.col("supervised_tokens").sum()).sort(col)
        return {r[col]: {"examples": int(r["examples"]), "tokens": int(r["tokens"]),
                         "supervised_tokens": int(r["supervised_tokens"])} for r in g.iter_rows(named=True)}

    return {"by_task": by("task"), "by_source": by("source"), "by_split": by("split")}


# --------------------------------------------------------------------------- reading


def _read_arrow(path: Path) -> pa.Table:
    source = pa.memory_map(str(path), "r")
    if source.read(6) == b"ARROW1":  # IPC file format also accepted
        source.seek(0)
        return pa.ipc.open_file(source).read_all()
    source.seek(0)
    return pa.ipc.open_stream(source).read_all()


def shard_files(run_dir: str | Path, split: str) -> list[dict]:
    """The manifest's shard entries for `split` (or, without a manifest, the files on disk)."""
    run_dir = Path(run_dir)
    if split not in SPLITS:
        raise ShardError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    if (run_dir / "manifest.json").is_file():
        return list((read_manifest(run_dir).get("shards") or {}).get(split, []))
    return [{"file": p.relative_to(run_dir).as_posix()} for p in sorted((run_dir / "shards" / split).glob("*.arrow"))]


def open_split(run_dir: str | Path, split: str, verify: bool = False) -> pa.Table:
    """All shards of a split as one memory-mapped pyarrow Table (zero-copy). With verify=True,
    each file's sha256 is checked against the manifest first (reads every byte once)."""
    run_dir = Path(run_dir)
    tables = []
    for entry in shard_files(run_dir, split):
        path = run_dir / entry["file"]
        if not path.is_file():
            raise ShardError(f"shard {entry['file']} listed for {split} is missing in {run_dir}")
        if verify and "sha256" in entry:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != entry["sha256"]:
                raise ShardError(f"shard {entry['file']} does not match its sha256 in the manifest")
        tables.append(_read_arrow(path))
    if not tables:
        return PACKED_SCHEMA.empty_table()
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def position_ids(seq_lens) -> np.ndarray:
    """0..len-1 for each packed example, concatenated: what keeps packed examples apart in
    attention (transformers builds a block-diagonal mask from position resets when no
    attention_mask is given)."""
    seq_lens = np.asarray(seq_lens, dtype=np.int64)
    total = int(seq_lens.sum())
    starts = np.repeat(np.cumsum(seq_lens) - seq_lens, seq_lens)
    return np.arange(total, dtype=np.int64) - starts


# --------------------------------------------------------------------------- checks


def check_examples(table, end_of_turn_ids: list[int] | None = None, expect_end_of_turn: bool = True) -> dict:
    """Load-time checks on a split (packed or not; pyarrow Table or polars DataFrame):
    tokens and supervised tokens, supervised fraction per task, examples with no supervised
    token, and supervised stretches that do not end with the end-of-turn token(s) (an
    assistant turn whose terminator is not trained). Columnar, over all rows at once."""
    if not isinstance(table, (pa.Table, pa.RecordBatch)):
        table = table.to_arrow()
    ids = _flat(table["input_ids"]).astype(np.int64)
    sup = _flat(table["labels"]) != IGNORE
    if "seq_lens" in table.column_names:
        lens = _flat(table["seq_lens"]).astype(np.int64)
        tasks = _flat(table["tasks"])
    else:
        lens = pc.list_value_length(table["input_ids"]).to_numpy(zero_copy_only=False).astype(np.int64)
        tasks = np.asarray(table["task"].to_pylist(), dtype=object)
    result = {"examples": int(len(lens)), "tokens": int(len(ids)), "supervised_tokens": int(sup.sum())}
    if int(lens.sum()) != len(ids):
        raise ShardError("seq_lens do not add up to the row lengths")
    if len(lens) == 0:
        result.update(zero_supervised=0, supervised_runs=0, runs_without_end_of_turn=0, supervised_fraction={})
        return result
    starts = np.cumsum(lens) - lens
    nonempty = lens > 0
    per_example = np.zeros(len(lens), dtype=np.int64)
    per_example[nonempty] = np.add.reduceat(sup.astype(np.int64), starts[nonempty])
    result["zero_supervised"] = int((per_example == 0).sum())
    # A supervised run ends at i when i is supervised and i+1 is not, or i ends its example.
    is_last = np.zeros(len(ids), dtype=bool)
    is_last[(starts + lens - 1)[nonempty]] = True
    nxt = np.append(sup[1:], False)
    ends = np.flatnonzero(sup & (~nxt | is_last))
    result["supervised_runs"] = int(len(ends))
    bad = 0
    if expect_end_of_turn and end_of_turn_ids:
        eot = np.asarray(end_of_turn_ids, dtype=np.int64)
        example_of = np.repeat(np.arange(len(lens)), lens)
        ok = np.ones(len(ends), dtype=bool)
        for k in range(len(eot)):
            pos = ends - k
            inside = (pos >= 0) & (example_of[np.maximum(pos, 0)] == example_of[ends])
            ok &= inside & (ids[np.maximum(pos, 0)] == eot[len(eot) - 1 - k])
        bad = int((~ok).sum())
    result["runs_without_end_of_turn"] = bad
    # per task: supervised tokens / tokens, summed over its examples
    names, task_of = np.unique(tasks.astype(str), return_inverse=True)
    sup_per_task = np.bincount(task_of, weights=per_example, minlength=len(names))
    tok_per_task = np.bincount(task_of, weights=lens, minlength=len(names))
    result["supervised_fraction"] = {
        str(t): round(float(s / n) if n else 0.0, 4) for t, s, n in zip(names, sup_per_task, tok_per_task)}
    return result
