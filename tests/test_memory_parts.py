"""#19: the default part size is capped whatever the machine's RAM (curate/pipeline/memory.py
MAX_PART_BYTES, MAX_PART_ROWS), so that the default run's peak is bounded by parts."""
from __future__ import annotations

from curate.pipeline.memory import MAX_PART_BYTES, MAX_PART_ROWS, MIN_PART_ROWS, ROW_COPIES, part_rows_for


def test_part_size_is_capped_whatever_the_budget():
    big = 64 << 30  # half of a 128 GiB machine
    n = part_rows_for(big, 400.0)
    assert n == MAX_PART_BYTES // (ROW_COPIES * 400)  # the copies of one part fit the cap, not the budget
    assert n * ROW_COPIES * 400 <= MAX_PART_BYTES
    assert part_rows_for(big, 400.0) == part_rows_for(4 * big, 400.0)
    assert part_rows_for(big, 8.0) == MAX_PART_ROWS  # tiny records: the row cap
    assert part_rows_for(big, None) == MAX_PART_ROWS  # nothing measured


def test_small_budgets_still_size_parts():
    assert part_rows_for(64 << 20, 400.0) == (64 << 20) // (ROW_COPIES * 400)
    assert part_rows_for(1 << 20, 10_000.0) == MIN_PART_ROWS


def test_row_local_statistics_keep_only_what_the_stage_added_or_names():
    """A row-local part keeps, for the stage's statistics, the columns the stage added, the
    columns its config names, the group columns and trusted labels; not the statistic
    columns of earlier stages, `origin`, nor message text."""
    from dataclasses import dataclass

    import polars as pl

    from curate.pipeline.stage_steps import stats_columns

    @dataclass
    class Cfg:
        kind: str = "quality"
        score_column: str = "heuristic"

    class St:
        config = Cfg()

    inputs = ["id", "source", "task", "messages", "meta", "origin", "filter_chars", "trusted", "heuristic"]
    out = pl.DataFrame({c: [1] for c in [*inputs, "heuristic_length", "_reason"]})
    kept = stats_columns(St(), out, inputs).columns
    assert kept == ["id", "source", "task", "trusted", "heuristic", "heuristic_length", "_reason"]
