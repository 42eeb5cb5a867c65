"""Shards -> training batches. The trainer's one meeting point with curation: the manifest
and the Arrow shards (through `curate.contract.shards.open_split` when present).

A split is loaded into flat numpy arrays (token ids, labels) plus an example table
(start, length, task) and a row table (which examples share one packed row). Packed and
unpacked shards end up in the same form: an unpacked row is a row of one example.

Batches never use an attention mask. Every example (and the padding at a row's end) gets
its own `position_ids` run starting at 0; transformers (>= 4.53) turns position-id
restarts into a block-diagonal causal mask when `attention_mask is None` and no cache is
used, so packed examples never attend to each other, and padding is just one more
isolated segment whose labels are -100. The cost: padding is computed, not skipped; the
benefit: one code path, no cross-contamination, and the same loss packed or unpacked.

Trade-off: the token arrays are copied out of the memory-mapped shards into one
contiguous int32 array per split (4 bytes a token); random access then costs no Arrow
chunk lookups. A billion-token split would want per-shard views instead."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from curate.contract.shards import ShardError, check_examples, open_split
from curate.contract.shards import tokenizer_fingerprint as _contract_fingerprint

IGNORE = -100


class DataError(ValueError):
    """Shards the trainer refuses, with the reason (which check, which shard, which row)."""


def read_manifest(run_dir: Path) -> dict:
    path = Path(run_dir) / "manifest.json"
    if not path.is_file():
        raise DataError(f"no manifest at {path}: run `curate run` first (the trainer reads its shards)")
    return json.loads(path.read_text(encoding="utf-8"))


def _open_split_table(run_dir: Path, split: str, manifest: dict) -> tuple[pa.Table, list[tuple[str, int]]]:
    """The split as one memory-mapped Arrow table, and (file, rows) per shard for messages."""
    files = [(e["file"], int(e.get("rows", 0))) for e in manifest.get("shards", {}).get(split, [])]
    try:
        return open_split(Path(run_dir), split), files
    except ShardError as exc:
        raise DataError(str(exc)) from exc


def _shard_path(run_dir: Path, split: str, file: str) -> Path:
    path = Path(run_dir) / file
    if not path.is_file():
        raise DataError(f"shard {file!r} of split {split!r} listed in the manifest is missing under {run_dir}")
    return path


def shard_hashes(run_dir: Path, manifest: dict, verify: bool = True) -> dict:
    """sha256 of every shard, checked against the manifest (a changed shard is refused)."""
    from curate.contract.atomic import sha256_file

    out = {}
    for split, entries in manifest.get("shards", {}).items():
        for e in entries:
            path = _shard_path(run_dir, split, e["file"])
            digest = sha256_file(path)
            if verify and e.get("sha256") and e["sha256"] != digest:
                raise DataError(f"shard {path} does not match its manifest sha256 (changed after `curate run`?)")
            out[f"{split}/{Path(e['file']).name}"] = digest
    return out


def _flat(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """list<int32> column -> (values, offsets) numpy arrays."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if isinstance(arr, pa.ChunkedArray):  # empty
        arr = pa.array([], arr.type)
    offsets = np.asarray(arr.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
    values = np.asarray(arr.values.to_numpy(zero_copy_only=False))
    start = offsets[0]
    return values[start : offsets[-1]], offsets - start


@dataclass
class Split:
    """One split in flat form. Example e spans tokens[ex_start[e] : ex_start[e] + ex_len[e]];
    row r holds examples row_ex[row_ptr[r] : row_ptr[r + 1]] (one or more, packed)."""

    tokens: np.ndarray  # int32
    labels: np.ndarray  # int32, IGNORE where no loss
    ex_start: np.ndarray  # int64
    ex_len: np.ndarray  # int64
    ex_task: np.ndarray  # int32, index into `tasks`
    ex_id: list[str]
    tasks: list[str]
    row_ptr: np.ndarray  # int64
    row_ex: np.ndarray  # int64
    packed: bool

    @property
    def n_rows(self) -> int:
        return len(self.row_ptr) - 1

    def row_lengths(self) -> np.ndarray:
        per_ex = self.ex_len[self.row_ex]
        return np.add.reduceat(per_ex, self.row_ptr[:-1]) if len(per_ex) else np.zeros(0, np.int64)

    def supervised_per_example(self) -> np.ndarray:
        sup = np.concatenate([[0], np.cumsum(self.labels != IGNORE)])
        return sup[self.ex_start + self.ex_len] - sup[self.ex_start]

    def select_examples(self, keep: np.ndarray, max_row_tokens: int) -> "Split":
        """A split of the chosen examples, re-packed in order (first fit, up to
        `max_row_tokens` per row). Used for per-task adapters: one task's examples from
        rows it shared with other tasks."""
        idx = np.flatnonzero(keep)
        rows, cur, used = [0], 0, 0
        for n in self.ex_len[idx]:
            if cur and used + n > max_row_tokens:
                rows.append(cur)
                used = 0
            used += int(n)
            cur += 1
        if cur and rows[-1] != cur:
            rows.append(cur)
        return Split(self.tokens, self.labels, self.ex_start, self.ex_len, self.ex_task, self.ex_id, self.tasks,
                     np.asarray(rows, np.int64), idx.astype(np.int64), self.packed)


def load_split(run_dir: Path, split: str, manifest: dict, vocab_size: int | None = None) -> Split:
    """Read and check one split. Refuses (DataError, naming the shard, row and check) rows
    whose labels are not the input ids or -100, whose lengths disagree, whose `seq_lens`
    do not sum to the row, or whose token ids fall outside the vocabulary."""
    table, files = _open_split_table(run_dir, split, manifest)
    names = set(table.column_names)
    for col in ("input_ids", "labels"):
        if col not in names:
            raise DataError(f"{split} shards have no `{col}` column")
    ids, id_off = _flat(table.column("input_ids"))
    labels, lab_off = _flat(table.column("labels"))

    def where(row: int) -> str:
        acc = 0
        for f, n in files:
            if row < acc + n:
                return f"{split} shard {f}, row {row - acc}"
            acc += n
        return f"{split} row {row}"

    bad = np.flatnonzero(np.diff(id_off) != np.diff(lab_off))
    if len(bad):
        raise DataError(f"mask check failed: `labels` and `input_ids` differ in length at {where(int(bad[0]))}")
    wrong = (labels != IGNORE) & (labels != ids)
    if wrong.any():
        row = int(np.searchsorted(id_off, np.flatnonzero(wrong)[0], side="right") - 1)
        raise DataError(f"mask check failed: a label is neither -100 nor the input token at {where(row)}")
    if vocab_size is not None and len(ids) and (ids.min() < 0 or ids.max() >= vocab_size):
        pos = np.flatnonzero((ids < 0) | (ids >= vocab_size))[0]
        row = int(np.searchsorted(id_off, pos, side="right") - 1)
        raise DataError(f"token id {int(ids[pos])} outside the model's vocabulary ({vocab_size}) at {where(row)}")

    n_rows = len(id_off) - 1
    packed = "seq_lens" in names
    if n_rows:
        try:
            render = manifest.get("render") or {}
            eot_ids = list((render.get("end_of_turn") or {}).get("ids") or [])
            checks = check_examples(table, eot_ids, expect_end_of_turn=bool(eot_ids) and render.get("train_on") != "all")
        except ShardError as exc:
            raise DataError(f"mask check failed on the {split} split: {exc}") from exc
        # `[render] overflow = "truncate"` cuts an answer at max_length on purpose: that cut span has
        # no end-of-turn, and the renderer counts such examples in render.stats.truncated (both
        # splits together). More spans without one than that is a broken mask.
        truncated = int((render.get("stats") or {}).get("truncated") or 0)
        if checks["runs_without_end_of_turn"] > truncated:
            eot = (render.get("end_of_turn") or {}).get("text")
            also = f" (only {truncated} answer(s) were cut at max_length)" if truncated else ""
            raise DataError(f"mask check failed: {checks['runs_without_end_of_turn']} supervised span(s) of the {split} "
                            f"split do not end with the end-of-turn {eot!r} (ids {eot_ids}){also}: the model would "
                            f"never learn to stop; re-render the shards with `curate run`")
        if checks["zero_supervised"]:
            raise DataError(f"mask check failed: {checks['zero_supervised']} {split} example(s) have no supervised "
                            f"token (labels all -100); re-render the shards")
    if packed:
        seq, seq_off = _flat(table.column("seq_lens"))
        seq = seq.astype(np.int64)
        sums = np.add.reduceat(seq, seq_off[:-1]) if len(seq) else np.zeros(0, np.int64)
        sums = np.where(np.diff(seq_off) > 0, sums, 0)
        bad = np.flatnonzero((sums != np.diff(id_off)) | (np.diff(seq_off) == 0))
        if len(bad) or (seq <= 0).any():
            r = int(bad[0]) if len(bad) else int(np.searchsorted(seq_off, np.flatnonzero(seq <= 0)[0], side="right") - 1)
            raise DataError(f"mask check failed: `seq_lens` do not add up to the row length at {where(r)}")
        ex_len = seq
        ex_start = np.repeat(id_off[:-1], np.diff(seq_off)) + _within(seq, seq_off)
        row_ptr = seq_off.astype(np.int64)
        task_col = "tasks" if "tasks" in names else None
        id_col = "ids" if "ids" in names else None
        ex_tasks = table.column(task_col).combine_chunks().flatten().to_pylist() if task_col else ["all"] * len(seq)
        ex_ids = table.column(id_col).combine_chunks().flatten().to_pylist() if id_col else [str(i) for i in range(len(seq))]
        if len(ex_tasks) != len(seq) or len(ex_ids) != len(seq):
            raise DataError(f"{split} shards: `tasks`/`ids` lists do not match `seq_lens`")
    else:
        ex_len = np.diff(id_off).astype(np.int64)
        ex_start = id_off[:-1].astype(np.int64)
        row_ptr = np.arange(n_rows + 1, dtype=np.int64)
        ex_tasks = table.column("task").to_pylist() if "task" in names else ["all"] * n_rows
        ex_ids = table.column("id").to_pylist() if "id" in names else [str(i) for i in range(n_rows)]
    tasks = sorted(set(ex_tasks))
    lookup = {t: i for i, t in enumerate(tasks)}
    ex_task = np.fromiter((lookup[t] for t in ex_tasks), np.int32, len(ex_tasks))
    return Split(ids.astype(np.int32, copy=False), labels.astype(np.int32, copy=False), ex_start, ex_len, ex_task,
                 [str(x) for x in ex_ids], tasks, row_ptr, np.arange(len(ex_len), dtype=np.int64), packed)


def _within(lens: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Offset of each segment inside its row: cumulative sum of lengths, restarting per row."""
    if not len(lens):
        return np.zeros(0, np.int64)
    cum = np.cumsum(lens) - lens
    row_first = np.repeat(cum[np.minimum(offsets[:-1], len(lens) - 1)], np.diff(offsets))
    return cum - row_first


# --- batching ---------------------------------------------------------------------------


def plan_epoch(split: Split, batch_tokens: int, micro_batch_tokens: int, seed: int, epoch: int,
               bucket: int = 64) -> list[list[np.ndarray]]:
    """The epoch's steps, each a list of micro-batches (arrays of row indices).

    Rows are shuffled (seeded by seed and epoch, so a resumed run sees the same order),
    then sorted by length within buckets of `bucket` rows so a micro-batch pads little,
    then cut into micro-batches of at most `micro_batch_tokens` padded tokens. The
    micro-batch order is shuffled again so steps do not run from short to long, then
    micro-batches are grouped greedily into steps of at most `batch_tokens` real tokens: a
    step closes when the next micro-batch would exceed it, and always holds at least one
    micro-batch (so a step exceeds `batch_tokens` only when one micro-batch alone does).
    Trade-off: steps then hold somewhat fewer than `batch_tokens` tokens on average (never
    more), rather than somewhat more."""
    rng = np.random.default_rng([seed, epoch])
    lengths = split.row_lengths()
    order = rng.permutation(split.n_rows)
    micro: list[np.ndarray] = []
    for b in range(0, len(order), bucket):
        chunk = order[b : b + bucket]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        cur: list[int] = []
        for r in chunk:
            width = max(int(lengths[r]), int(lengths[cur[0]]) if cur else 0)
            if cur and width * (len(cur) + 1) > micro_batch_tokens:
                micro.append(np.asarray(cur))
                cur = []
            cur.append(int(r))
        if cur:
            micro.append(np.asarray(cur))
    micro = [micro[i] for i in rng.permutation(len(micro))]
    steps, cur_step, tok = [], [], 0
    for mb in micro:
        n = int(lengths[mb].sum())
        # close the step before it would exceed batch_tokens (closing only once it reaches
        # batch_tokens took one micro-batch too many: batch == micro-batch meant 2 per step)
        if cur_step and tok + n > batch_tokens:
            steps.append(cur_step)
            cur_step, tok = [], 0
        cur_step.append(mb)
        tok += n
    if cur_step:
        steps.append(cur_step)
    return steps


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, L]
    position_ids: torch.Tensor  # [B, L], restarting at 0 for every example and for padding
    keep: torch.Tensor  # [B, L] bool: positions whose next token is supervised
    targets: torch.Tensor  # [n] the supervised next tokens, in `keep` order
    target_task: torch.Tensor  # [n] task index of each target
    n_tokens: int  # real (non-padding) tokens
    ids: list[str]  # example ids, for error messages
    segments: tuple = ()  # (row, start, length) of every example, for train/attention.py

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device), self.position_ids.to(device), self.keep.to(device),
                     self.targets.to(device), self.target_task.to(device), self.n_tokens, self.ids, self.segments)


def make_batch(split: Split, rows: np.ndarray, pad_id: int = 0) -> Batch:
    """Rows -> tensors, vectorised. The next-token target at position t is label[t + 1],
    kept only when it is supervised and t + 1 starts no new example (a packed row's
    boundary is never a prediction target)."""
    rows = np.asarray(rows)
    ex_lists = [split.row_ex[split.row_ptr[r] : split.row_ptr[r + 1]] for r in rows]
    lens = [split.ex_len[e] for e in ex_lists]
    row_len = np.array([int(x.sum()) for x in lens], np.int64)
    width = int(row_len.max())
    pad = width - row_len
    seg_len = np.concatenate([np.append(x, p) for x, p in zip(lens, pad)])
    seg_ex = np.concatenate([np.append(e, -1) for e in ex_lists])
    seg_src = np.where(seg_ex >= 0, split.ex_start[np.maximum(seg_ex, 0)], 0)
    total = int(seg_len.sum())  # == B * width
    seg_first = np.cumsum(seg_len) - seg_len
    within = np.arange(total) - np.repeat(seg_first, seg_len)
    is_pad = np.repeat(seg_ex < 0, seg_len)
    src = np.repeat(seg_src, seg_len) + within
    tok = np.where(is_pad, pad_id, split.tokens[np.where(is_pad, 0, src)]).reshape(len(rows), width)
    lab = np.where(is_pad, IGNORE, split.labels[np.where(is_pad, 0, src)]).reshape(len(rows), width)
    pos = within.reshape(len(rows), width)
    task = np.repeat(np.where(seg_ex >= 0, split.ex_task[np.maximum(seg_ex, 0)], -1), seg_len).reshape(len(rows), width)
    keep = np.zeros_like(lab, dtype=bool)
    keep[:, :-1] = (lab[:, 1:] != IGNORE) & (pos[:, 1:] != 0)
    targets = lab[:, 1:][keep[:, :-1]]
    ttask = task[:, 1:][keep[:, :-1]]
    ids = [split.ex_id[e] for e in np.concatenate(ex_lists)]
    seg_row = np.repeat(np.arange(len(rows)), [len(e) + 1 for e in ex_lists])
    real = (seg_ex >= 0) & (seg_len > 0)
    segments = tuple(zip(seg_row[real].tolist(), (seg_first - seg_row * width)[real].tolist(), seg_len[real].tolist()))
    return Batch(torch.from_numpy(tok.astype(np.int64)), torch.from_numpy(pos.astype(np.int64)),
                 torch.from_numpy(keep), torch.from_numpy(targets.astype(np.int64)),
                 torch.from_numpy(ttask.astype(np.int64)), int(row_len.sum()), ids, segments)


def eval_batches(split: Split, micro_batch_tokens: int, rank: int = 0, world: int = 1) -> list[Batch]:
    """Fixed micro-batches over a whole split for evaluation (longest rows first, so the
    padding is small), every `world`-th one for this rank."""
    lengths = split.row_lengths()
    order = np.argsort(-lengths, kind="stable")
    groups, cur = [], []
    for r in order:
        if cur and int(lengths[cur[0]]) * (len(cur) + 1) > micro_batch_tokens:
            groups.append(cur)
            cur = []
        cur.append(int(r))
    if cur:
        groups.append(cur)
    return [make_batch(split, np.asarray(rows)) for i, rows in enumerate(groups) if i % world == rank]


def tokenizer_fingerprint(tokenizer) -> str:
    """The shard contract's fingerprint of a tokenizer (curate/render/shards.py defines it)."""
    return _contract_fingerprint(tokenizer)["fingerprint"]
