"""What a stage is: its config, and a function from a record table to the rows it keeps
plus the rows it drops, each with a reason. The runner, not the stage, keeps the ledger
and writes rejects (DataTrove's split: a filter implements only its decision).

Two shapes:
  Stage        implement `process(table) -> StageResult` (dedup, select, mix, ...)
  FilterStage  implement `annotate(table)`, returning the table with statistic columns
               added and a `_reason` String column (null = passes). The base class
               applies `action = "drop" | "flag"`: flag keeps every row and only adds the
               columns (plus `<stage>_flag` with the reason and `<stage>_flag_detail`),
               drop moves failing rows out.
               Computing a statistic stays separate from deciding on it (Data-Juicer).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import polars as pl

REASON = "_reason"
DETAIL = "_detail"


@dataclass
class StageContext:
    """What a stage may know of the run: where things are, the seed, a logger."""

    run_dir: Path
    config_dir: Path  # relative paths in the config are relative to the toml file
    seed: int
    stage_dir: Path  # private scratch/cache space for this stage (kept for resume)
    log: Callable[[str], None] = print
    render: Any = None  # the [render] config, for stages that count tokens

    def resolve(self, path: str | Path) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.config_dir / p)


@dataclass
class StageResult:
    kept: pl.DataFrame
    # Same columns as the input (plus any added), with `_reason` (String, non-null) and
    # optionally `_detail` (String: e.g. the id a duplicate was kept in favour of).
    dropped: pl.DataFrame
    stats: dict = field(default_factory=dict)  # goes into the manifest under this stage


class Stage:
    kind: ClassVar[str] = ""
    # True when process() on any split of the table, concatenated in order, equals
    # process() on the whole table (per-row decisions). The Ray executor runs such stages
    # block by block (map_batches); the others (dedup, select, mix) need the whole table.
    row_local: ClassVar[bool] = False

    def __init__(self, config: Any, context: StageContext):
        self.config = config
        self.context = context

    @property
    def name(self) -> str:
        return getattr(self.config, "name", None) or self.kind

    def process(self, table: pl.DataFrame) -> StageResult:  # pragma: no cover - interface
        raise NotImplementedError


class FilterStage(Stage):
    row_local = True
    def annotate(self, table: pl.DataFrame) -> pl.DataFrame:  # pragma: no cover - interface
        raise NotImplementedError

    def process(self, table: pl.DataFrame) -> StageResult:
        annotated = self.annotate(table)
        if REASON not in annotated.columns:
            raise RuntimeError(f"stage {self.name!r}: annotate() must add a {REASON!r} column")
        fails = pl.col(REASON).is_not_null()
        counts = annotated.filter(fails).group_by(REASON).len().sort(REASON)
        stats = {"hits": {r: int(n) for r, n in counts.iter_rows()}}
        action = getattr(self.config, "action", "drop")
        if action == "flag":
            flag_col = f"{self.name}_flag"
            renames = {REASON: flag_col}
            if DETAIL in annotated.columns:
                renames[DETAIL] = f"{self.name}_flag_detail"  # why it would have been dropped
            kept = annotated.rename(renames)
            return StageResult(kept=kept, dropped=annotated.clear(), stats=stats)
        kept = annotated.filter(~fails).drop([c for c in (REASON, DETAIL) if c in annotated.columns])
        dropped = annotated.filter(fails)
        return StageResult(kept=kept, dropped=dropped, stats=stats)
