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

from curate.contract.ledger import DETAIL, REASON  # noqa: F401  (stages name these columns)


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


def sum_counts(values: list[dict]) -> dict:
    """Per-block counter dicts added up key by key (nested dicts recursively); the merge
    rule of every hit counter."""
    out: dict = {}
    for v in values:
        for k, x in v.items():
            if k not in out:
                out[k] = x
            elif isinstance(x, dict):
                out[k] = sum_counts([out[k], x])
            else:
                out[k] = out[k] + x
    return out


def unknown_group_names(given, valid: list[str], what: str, key: str) -> str | None:
    """A one-line message for the names in `given` (other than "*") that are not in `valid`
    (the groups the data has), with the closest valid name; None when all exist. For a
    Config's `check_data` (curate/pipeline/checks.py runs it after reading)."""
    import difflib

    bad = [g for g in given if g != "*" and g not in valid]
    if not bad:
        return None
    parts = []
    for b in bad:
        close = difflib.get_close_matches(b, valid, n=1)
        parts.append(f"{b!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return (f"{key} names {what}(s) the data does not have: {', '.join(parts)}; "
            f"the {what}s read are: {', '.join(valid) or '(none)'}")


def same_value(values: list, what: str = "value") -> Any:
    """The one value every block reports (a constant of the stage, e.g. eval index size)."""
    if any(v != values[0] for v in values):
        raise ValueError(f"per-block {what} differ: {values!r}")
    return values[0]


class FilterStage(Stage):
    """A per-row decision (see the module doc). Executors that run `annotate` block by
    block on workers (curate/pipeline/ray_executor.py) carry what `annotate` left on each worker's
    instance back through the pair `block_state` / `merge_block_states`, then call
    `process` on the driver with the gathered annotations (`decide`), so the decision and
    every statistic come from the same code as a local run."""

    row_local = True

    def annotate(self, table: pl.DataFrame) -> pl.DataFrame:  # pragma: no cover - interface
        raise NotImplementedError

    def shared_resource(self) -> Any:
        """A read-only object `annotate` needs that is costly to build (an eval n-gram
        index): built once on the driver and handed to every worker's instance through
        `use_shared_resource`, instead of rebuilt per block. None: nothing to share."""
        return None

    def use_shared_resource(self, resource: Any) -> None:
        """Use `resource` (from another instance's `shared_resource`) in `annotate`."""

    def block_state(self) -> dict:
        """What the last `annotate` call left on this instance that `process` reads (hit
        counters, rewritten columns), as a dict of JSON-able values or polars Series.
        Default: nothing."""
        return {}

    def merge_block_states(self, states: list[dict]) -> None:
        """Set this instance's state to what one `annotate` over the concatenation of the
        blocks would have left, from the blocks' `block_state()`s in block order. Each
        subclass says its rule (counters add up, per-row columns concatenate, constants
        must agree)."""

    def decide(self, table: pl.DataFrame, annotated: pl.DataFrame) -> StageResult:
        """`process(table)` given `annotate(table)` computed elsewhere (block by block on
        workers, state already merged): the same decision and statistics code."""
        self._given = annotated
        try:
            return self.process(table)
        finally:
            del self._given

    def _annotated(self, table: pl.DataFrame) -> pl.DataFrame:
        """`annotate(table)`, or the annotations handed to `decide`."""
        given = getattr(self, "_given", None)
        return given if given is not None else self.annotate(table)

    def process(self, table: pl.DataFrame) -> StageResult:
        annotated = self._annotated(table)
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


class PlannedStage(Stage):
    """A whole-table decision made from aggregated statistics (select's per-group cutoffs,
    mix's per-group walk): four steps, so that a distributed executor runs the per-row
    work block by block and only the small key columns meet on the driver.

      block_keys(block)        per block: the key columns the plan needs (group, score,
                               tie-break key, units, ...): no message text
      plan(keys)               once, over all blocks' keys concatenated in row order: a
                               small, picklable plan (per-group cutoffs, sizes)
      apply_plan(block, plan)  per block: the block with its decision (`_reason`,
                               `_detail`, and any rows it repeats), in row order
      finish(decided, plan)    once, over all decided blocks concatenated: kept,
                               dropped and stats

    `process` is exactly these four over one block (the whole table), so the local and the
    distributed results are the same by construction. Rows carry their position in the
    whole table in column ROW (`number_rows`, done once before the table is cut into
    blocks): the stable tie-break. When `keys_per_row`, `block_keys` returns one row per
    input row and its columns are attached to the block before `apply_plan` (they are
    computed once: counting tokens is per-row work). `plannable()` false: this
    configuration cannot be decided from keys (e.g. select's diversity walk); `process`
    runs its own way and an executor runs it whole."""

    ROW: ClassVar[str] = "__row"
    keys_per_row: ClassVar[bool] = False

    def plannable(self) -> bool:
        return True

    def needs_keys(self) -> bool:
        """False when `plan` needs no keys at all (a row-local configuration): the
        executor then skips the keys pass and calls `plan(None)`."""
        return True

    def number_rows(self, table: pl.DataFrame) -> pl.DataFrame:
        return table if self.ROW in table.columns else table.with_row_index(self.ROW)

    def block_keys(self, block: pl.DataFrame) -> pl.DataFrame:  # pragma: no cover - interface
        raise NotImplementedError

    def plan(self, keys: pl.DataFrame | None) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def apply_plan(self, block: pl.DataFrame, plan: Any) -> pl.DataFrame:  # pragma: no cover - interface
        raise NotImplementedError

    def finish(self, decided: pl.DataFrame, plan: Any) -> StageResult:  # pragma: no cover - interface
        raise NotImplementedError

    def with_keys(self, block: pl.DataFrame, keys: pl.DataFrame) -> pl.DataFrame:
        """The block with its per-row key columns attached (when `keys_per_row`)."""
        if not self.keys_per_row:
            return block
        return block.hstack(keys.select([c for c in keys.columns if c not in block.columns]))

    def process_planned(self, table: pl.DataFrame) -> StageResult:
        t = self.number_rows(table)
        keys = self.block_keys(t) if self.needs_keys() else None
        plan = self.plan(keys)
        return self.finish(self.apply_plan(self.with_keys(t, keys) if keys is not None else t, plan), plan)
