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
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and (lengths.max() > capacity or lengths.min() < 1):
        raise ValueError(f"every length must be in 1..{capacity}")
    order = np.argsort(-lengths, kind="stable")
    size = 1
    while size < capacity + 1:
        size *= 2
    tree = [0] * (2 * size)  # tree[i]: number of rows whose free space lies under node i
    buckets: dict[int, list[int]] = {}
    bins: list[list[int]] = []

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

    for idx in order.tolist():
        n = int(lengths[idx])
        free = smallest_free_at_least(n)
        if free < 0:
            b = len(bins)
            bins.append([idx])
            left = capacity - n
        else:
            b = buckets[free].pop()
            add(free, -1)
            bins[b].append(idx)
            left = free - n
        if left > 0:
            buckets.setdefault(left, []).append(b)
            add(left, 1)
    return bins


def pack_examples(examples: pl.DataFrame, capacity: int) -> pl.DataFrame:
    """Packed rows: input_ids, labels (concatenated), seq_lens, ids, tasks, sources."""
    lengths = examples["input_ids"].list.len().to_numpy()
    bins = best_fit_decreasing(lengths, capacity)
    row_of = np.empty(len(lengths), dtype=np.int64)
    pos_of = np.empty(len(lengths), dtype=np.int64)
    for r, members in enumerate(bins):
        row_of[members] = r
        pos_of[members] = np.arange(len(members))
    return (
        examples.with_columns(pl.Series("_row", row_of), pl.Series("_pos", pos_of))
        .sort("_row", "_pos")
        .group_by("_row", maintain_order=True)
        .agg(
            pl.col("input_ids").explode().cast(pl.Int32),
            pl.col("labels").explode().cast(pl.Int32),
            pl.col("input_ids").list.len().cast(pl.Int32).alias("seq_lens"),
            pl.col("id").alias("ids"),
            pl.col("task").alias("tasks"),
            pl.col("source").alias("sources"),
        )
        .drop("_row")
    )
