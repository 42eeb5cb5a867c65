"""One frame from many parts, built a column at a time so that the parts are freed as it
goes (issue #19).

`pl.concat(frames, rechunk=True)` holds every part and the whole result at its end: two
copies of every row's keys at the peak of select's, mix's and consensus's planning
(stage_steps.hold_keys) and of a row-local stage's statistics columns (base.PartColumns).
`concat_freeing` concatenates one column of every part, then drops that column from the
parts (the caller's list is emptied in place), so the peak is every row once plus one
column twice. Same frame as `pl.concat(frames, how="vertical_relaxed", rechunk=True)`:
the same per-column supertype rule, one chunk per column
(tests/test_memory_concat.py)."""
from __future__ import annotations

import polars as pl


def concat_freeing(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """The parts `frames` (same column names, in order) concatenated in order, one chunk
    a column; `frames` is left empty (the parts' columns are dropped as they are copied,
    so hold no other reference to them if the memory is to be freed)."""
    if len(frames) < 2 or any(f.columns != frames[0].columns for f in frames):
        out = pl.concat(frames, how="vertical_relaxed", rechunk=True)  # (and its errors) as before
        frames.clear()
        return out
    columns: list[pl.Series] = []
    for name in list(frames[0].columns):
        columns.append(pl.concat([f.select(name) for f in frames], how="vertical_relaxed", rechunk=True).to_series())
        for i, f in enumerate(frames):
            frames[i] = f.drop(name)  # the part's copy of this column is freed here
    frames.clear()
    return pl.DataFrame(columns)
