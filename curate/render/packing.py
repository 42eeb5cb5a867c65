"""Best-fit-decreasing packing of tokenized examples into rows of at most `capacity` tokens.

Examples are taken longest first (ties by their order in the input, so the result is
deterministic) and each goes into the open row whose free space is the smallest that still
fits it; a new row is opened when none fits. Free space is indexed by a segment tree over
0..capacity, so finding the best row is O(log capacity) (TRL's `bfd` strategy does the
same). The loop is per example because the algorithm is sequential; everything around it
(lengths, concatenation of the packed lists) is columnar.
"""
from __future__ import annotations

import numpy as np
import polars as pl


def best_fit_decreasing(lengths, capacity: int) -> list[list[int]]:
    """Rows as lists of example indices (rows in the order opened, examples longest first)."""
    order, members = best_fit_decreasing_arrays(lengths, capacity)
    cuts = np.cumsum(members)[:-1]
    return [m.tolist() for m in np.split(order, cuts)] if len(members) else []


def best_fit_decreasing_arrays(lengths, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """best_fit_decreasing's rows as two arrays: `order`, the example indices of every row,
    row after row (each row's examples in the order they went in), and `members`, the
    number of examples in each row. The loop keeps one int32 row number per example, not
    a Python list per row (issue #19: the streamed render packs every example of a split
    on the driver; the lists took ~50 bytes an example)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and (lengths.max() > capacity or lengths.min() < 1):
        raise ValueError(f"every length must be in 1..{capacity}")
    order = np.argsort(-lengths, kind="stable")
    size = 1
    while size < capacity + 1:
        size *= 2
    tree = [0] * (2 * size)  # tree[i]: number of rows whose free space lies under node i
    buckets: dict[int, list[int]] = {}  # free space -> open rows with it
    row_of = np.empty(len(lengths), dtype=np.int32)  # in `order`'s sequence
    rows = 0

    def add(free: int, delta: int) -> None:
        i = free + size
        while i:
            tree[i] += delta
            i >>= 1

    def smallest_free_at_least(need: int) -> int:
        i = need + size
        while tree[i] == 0:
            while i & 1:
                i >>= 1
            if i == 0:
                return -1
            i += 1
        while i < size:
            i = 2 * i if tree[2 * i] else 2 * i + 1
        return i - size

    step = 1 << 16  # the sorted lengths as Python ints a slice at a time
    for lo in range(0, len(order), step):
        for j, n in enumerate(lengths[order[lo: lo + step]].tolist(), lo):
            free = smallest_free_at_least(n)
            if free < 0:
                b = rows
                rows += 1
                left = capacity - n
            else:
                b = buckets[free].pop()
                add(free, -1)
                left = free - n
            row_of[j] = b
            if left > 0:
                buckets.setdefault(left, []).append(b)
                add(left, 1)
    # stable by row: within a row, the examples in the order they went in (longest first)
    by_row = np.argsort(row_of, kind="stable")
    return order[by_row], np.bincount(row_of, minlength=rows).astype(np.int64)


def pack_examples(examples: pl.DataFrame, capacity: int) -> pl.DataFrame:
    """Packed rows: input_ids, labels (concatenated), seq_lens, ids, tasks, sources. The
    examples are put in (row, position) order once; each output column is then that order's
    values cut at row boundaries (Arrow list offsets), without a group-by."""
    import pyarrow as pa

    lengths = examples["input_ids"].list.len().to_numpy().astype(np.int64)
    bins = best_fit_decreasing(lengths, capacity)
    order = np.fromiter((i for members in bins for i in members), dtype=np.int64, count=len(lengths))
    members = np.fromiter((len(m) for m in bins), dtype=np.int64, count=len(bins))
    ordered = examples[order]
    lens = lengths[order]
    first_member = np.concatenate(([0], np.cumsum(members)))
    row_tokens = np.add.reduceat(lens, first_member[:-1]) if len(bins) else np.zeros(0, dtype=np.int64)
    member_offsets = pa.array(first_member, pa.int32())
    token_offsets = pa.array(np.concatenate(([0], np.cumsum(row_tokens))), pa.int32())

    def tokens(col: str) -> pa.Array:
        flat = ordered[col].explode().cast(pl.Int32).to_arrow()
        return pa.ListArray.from_arrays(token_offsets, flat)

    def per_member(values: pa.Array) -> pa.Array:
        return pa.ListArray.from_arrays(member_offsets, values)

    table = pa.table({
        "input_ids": tokens("input_ids"),
        "labels": tokens("labels"),
        "seq_lens": per_member(pa.array(lens.astype(np.int32))),
        "ids": per_member(ordered["id"].cast(pl.String).to_arrow()),
        "tasks": per_member(ordered["task"].cast(pl.String).to_arrow()),
        "sources": per_member(ordered["source"].cast(pl.String).to_arrow()),
    })
    return pl.from_arrow(table)
