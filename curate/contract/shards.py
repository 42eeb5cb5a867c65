"""The shard contract: how token shards look on disk and the one module train/ reads them
through (import-light on purpose: numpy and pyarrow, no torch, no transformers, no polars).

    open_split(run_dir, split)              -> memory-mapped pyarrow Table of a split
    check_tokenizer(run_dir, tokenizer)     -> refuse shards made with another tokenizer
    check_examples(table, end_of_turn_ids)  -> the load-time checks (also run after rendering)
    position_ids(seq_lens)                  -> per-example positions of a packed row

Files are Arrow IPC *streams* (`.arrow`, the format Hugging Face `datasets` writes and
`Dataset.from_file` memory-maps; pyarrow maps them with `ipc.open_stream(memory_map(f))`),
uncompressed so that reading is zero-copy, one record batch of at most `shard_rows` rows
per file. The writer is curate/render/shards.py.

Packed rows: input_ids, labels (list<int32>, -100 = no loss), seq_lens (list<int32>), ids,
tasks, sources (list<string>). Unpacked rows: id, task, source, input_ids, labels, unpadded
(the trainer pads per batch).
"""
from __future__ import annotations

import hashlib
import json
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


def flat_values(col) -> np.ndarray:
    """A list column's values as one flat numpy array."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col.flatten().to_numpy(zero_copy_only=False)



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
    ids = flat_values(table["input_ids"]).astype(np.int64)
    sup = flat_values(table["labels"]) != IGNORE
    if "seq_lens" in table.column_names:
        lens = flat_values(table["seq_lens"]).astype(np.int64)
        tasks = flat_values(table["tasks"])
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
