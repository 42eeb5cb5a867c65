"""`curate run --limit N`: try a pipeline on a seeded sample of N records per source.

The sample is taken after reading (so the readers' quarantine of broken lines is the same as a
full run's), as the N records of each source with the smallest seeded hash of their origin
(file:line): the same N for the same seed and files, spread over the whole source rather than
its first lines, kept in reading order. The run's ledger counts the sample as what was read
(read = sample + quarantined), and the manifest records the limit and each source's full
count. A limited run writes to its own directory (`<output_dir>-limit-N`), so it never mixes
with or resumes from the full run.
"""
from __future__ import annotations

import numpy as np
import polars as pl

from curate.contract.schema import stable_keys


def limit_keys(table: pl.DataFrame, seed: int) -> np.ndarray:
    """Each row's seeded `--limit` key, from its origin (the Ray read computes them on workers)."""
    return np.asarray(stable_keys(table["origin"].cast(pl.String).fill_null("").to_list(), seed, "limit"),
                      dtype=np.uint64)


def sample_records(table: pl.DataFrame, n: int, seed: int) -> pl.DataFrame:
    """The n rows of `table` with the smallest seeded key of their origin, in table order."""
    if table.height <= n:
        return table
    keys = limit_keys(table, seed)
    keep = np.zeros(table.height, dtype=bool)
    keep[np.argsort(keys, kind="stable")[:n]] = True
    return table.filter(pl.Series(keep))
