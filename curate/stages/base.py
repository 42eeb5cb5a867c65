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
  PlannedStage a whole-table decision (dedup, select, mix) made from small per-row key
               columns: `keys(part)` -> `plan(keys) -> Plan` -> `apply(part, plan,
               first_row)`, so that a runner holds one part of rows at a time plus the
               keys of all rows (see PlannedStage and `run_planned`). Where keys are not
               enough (MinHash's exact verification, consensus's near-equal answers),
               `plan` returns a `Refine`: a bounded pass over the parts for the rows it
               names (`refine_keys`, `finish_plan`; the runner's loop is `complete_plan`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import numpy as np
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


class PartColumns:
    """The small columns (`light`: no `messages`/`meta`) of a row-local stage's output, one
    Parquet file per part, as an executor leaves them for the stage's statistics
    (curate/pipeline/stage_steps.py). Read a few columns at a time: a statistic that
    needs one column of every row holds that column only (8 B a row for a Float64), and
    counts are taken part by part. `read()` of every column at once is the old way (the
    small columns of every row, ~100-220 B a row on the scale benchmark's records: the
    largest per-row holder of a row-local stage, so avoid it where the statistic allows).

    `columns`: the columns every part has (parts written by an older version may be
    wider), in the first part's order."""

    def __init__(self, paths: list[Path]):
        import pyarrow.parquet as pq

        self.paths = [Path(p) for p in paths]
        files = [pq.ParquetFile(p) for p in self.paths]
        names = [f.schema_arrow.names for f in files]
        self.columns = [c for c in names[0] if all(c in n for n in names[1:])] if names else []
        self.rows = sum(f.metadata.num_rows for f in files)  # rows of all parts (from the footers)
        for f in files:
            f.close()

    def __len__(self) -> int:
        return len(self.paths)

    def part(self, i: int, columns: list[str] | None = None) -> pl.DataFrame:
        return pl.read_parquet(self.paths[i], columns=list(self.columns if columns is None else columns))

    def iter(self, columns: list[str] | None = None) -> Iterator[pl.DataFrame]:
        for i in range(len(self.paths)):
            yield self.part(i, columns)

    def read(self, columns: list[str] | None = None) -> pl.DataFrame:
        """`columns` (default: all) of every part, concatenated in part order (one chunk;
        a single part as read)."""
        from curate.stages.common.concat import concat_freeing

        frames = list(self.iter(columns))
        if not frames:
            return pl.DataFrame()
        return concat_freeing(frames) if len(frames) > 1 else frames[0]  # parts freed a column at a time

    def reason_counts(self) -> dict[str, int]:
        """Rows by `_reason` (non-null), sorted by reason: FilterStage.process's `hits`,
        counted part by part (counts over disjoint parts add up)."""
        total: dict[str, int] = {}
        for df in self.iter([REASON]):
            for r, n in df.filter(pl.col(REASON).is_not_null()).group_by(REASON).len().iter_rows():
                total[r] = total.get(r, 0) + int(n)
        return {r: total[r] for r in sorted(total)}

    def split_column(self, column: str, split: bool = True) -> pl.DataFrame:
        """`column` of every row in the order FilterStage.process concatenates kept and
        dropped rows: with `split` (action = "drop") the rows that pass (`_reason` null),
        then those that fail; without (action = "flag": nothing is dropped) all rows in
        order. Two chunks, as `pl.concat` of those two frames of `read()` gives, so that
        float sums over it are the same bits as over the whole table."""
        if len(self.paths) == 1:  # as read(): one part is not rechunked
            df = self.part(0, [column, REASON])
            fails = df[REASON].is_not_null()
            k, d = (df.filter(~fails), df.filter(fails)) if split else (df, df.clear())
            return pl.concat([k.select(column), d.select(column)], how="vertical_relaxed")
        kept, dropped = [], []
        for df in self.iter([column, REASON]):
            fails = df[REASON].is_not_null()
            one = df.select(column)
            kept.append(one.filter(~fails) if split else one)
            dropped.append(one.filter(fails) if split else one.clear())
        target = pl.concat([x.clear() for x in kept + dropped], how="vertical_relaxed").schema  # as read()'s
        k = pl.concat([x.cast(target) for x in kept], how="vertical", rechunk=True)
        d = pl.concat([x.cast(target) for x in dropped], how="vertical", rechunk=True)
        return pl.concat([k, d], how="vertical")


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

    def statistics(self, parts: PartColumns) -> dict:
        """`decide(table, annotated).stats` when the annotations are on disk, part by part
        (`parts`: their small columns; the block states already merged): what an
        executor that streams the stage reports. Default: `decide` over every small
        column of every row at once (memory: those columns of all rows, about three
        times while `process` splits and concatenates them). A stage whose statistics are
        counts or per-column summaries overrides it to read a column at a time (filter,
        language, pii), which must give the same stats (tests/test_memory_stats.py)."""
        lite = parts.read()
        return self.decide(lite, lite).stats

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


ROW_COL = "_row"  # the global input position the runner adds to the keys (UInt64)


@dataclass
class Plan:
    """What a whole-table stage decided, from the keys of every row (see PlannedStage).

    decisions  one row per input row that is dropped or gains columns, sorted by `_row`
               (UInt64, the row's global input position): `_reason` (String, null =
               kept), `_detail` (String), plus the columns the stage adds to kept rows
               (null for rows that are dropped). Rows absent are kept as they are, with
               the stage's own defaults for its added columns (dedup: a unique row is its
               own cluster of size 1). Only the stage's `apply` interprets the added
               columns; a runner may read `_row` and `_reason` (e.g. to count).
    stats      exactly what `process()` puts in StageResult.stats (the manifest entry).
    order      None: the output is the kept rows in input order, each once. Otherwise
               (mix: upsampling repeats rows) `_row` (UInt64) and `repeat` (Int32, 0 =
               the original row) for every output row, in output order. When `order` is
               sorted by (`_row`, `repeat`) - mix's case - the parts' `apply` outputs
               concatenated in part order are already in output order.
    """

    decisions: pl.DataFrame
    stats: dict
    order: pl.DataFrame | None = None


def has_plan(stage: Any, refine: bool = False) -> bool:
    """Whether a runner may run `stage` through keys -> plan -> apply: it has the three
    methods and this configuration can be decided from keys (`plannable()`, e.g. not
    select's sequential diversity walk). False: call `process(whole table)`.

    `refine`: the runner completes a plan that asks for a second pass over the parts
    (`Refine`, `complete_plan`). A stage whose configuration needs one (`needs_refine()`:
    MinHash with exact verification, consensus) is planned only by such a runner; for the
    others it stays a whole-table stage."""
    if not all(callable(getattr(stage, m, None)) for m in ("keys", "plan", "apply")):
        return False
    plannable = getattr(stage, "plannable", None)
    if callable(plannable) and not plannable():
        return False
    needs = getattr(stage, "needs_refine", None)
    if callable(needs) and needs():
        return bool(refine) and all(callable(getattr(stage, m, None)) for m in ("refine_keys", "finish_plan"))
    return True


@dataclass
class Refine:
    """What `plan` (or `finish_plan`) returns instead of a Plan when deciding needs more of
    some rows than their keys carry (MinHash's exact verification: the shingle sets of
    rows in candidate pairs; consensus: the word sets of distinct answers of contested
    prompts). The runner makes one more pass over the parts, reading only the parts that
    hold a requested row, calls `refine_keys(part, rows_in_part, first_row, ask)` on each and
    hands the frames, concatenated in row order, to `finish_plan(refine, extra)`, which
    returns the Plan or a further Refine (a stage bounds what one pass holds by asking in
    batches). `complete_plan` is that loop; `run_planned` runs it, so `process` does too.

    rows   sorted, distinct global rows (int64) whose `refine_keys` the stage needs
    ask    what is asked of those rows, a short string handed to `refine_keys` (so that a
           worker's copy of the stage needs nothing else to answer)
    state  what the stage continues from (its own; the runner does not read it)

    Memory: what the stage asks for in one pass (it bounds it), besides the keys.
    """

    rows: np.ndarray
    ask: str = ""
    state: Any = None


def complete_plan(stage: Any, plan: Any, bounds: list[tuple[int, int]],
                  read: Callable[[int], pl.DataFrame]) -> Plan:
    """`plan` completed: while it is a `Refine`, one pass over the parts that hold its
    rows (`read(i)` = part i, rows [bounds[i][0], bounds[i][1])): `refine_keys` per part,
    checked to give one row per requested row, `_row` set, then `finish_plan`."""
    while isinstance(plan, Refine):
        rows = np.asarray(plan.rows, dtype=np.int64)
        extra = []
        for i, (lo, hi) in enumerate(bounds):
            a, b = int(np.searchsorted(rows, lo, side="left")), int(np.searchsorted(rows, hi, side="left"))
            if b <= a:
                continue
            want = rows[a:b]
            k = stage.refine_keys(read(i), want, lo, plan.ask)
            if k.height != len(want):
                raise RuntimeError(f"stage {stage.name!r}: refine_keys() gave {k.height} rows for {len(want)} asked")
            extra.append(k.with_columns(pl.Series(ROW_COL, want, dtype=pl.UInt64)))
        frame = pl.concat(extra, how="vertical_relaxed", rechunk=True) if extra else None
        del extra  # the parts' frames, copied into `frame`: not held while finish_plan runs
        plan = stage.finish_plan(plan, frame)
    return plan


def part_bounds(n: int, part_rows: int) -> list[tuple[int, int]]:
    """[lo, hi) of consecutive parts of at most `part_rows` rows (one empty part for n = 0)."""
    step = max(1, int(part_rows))
    return [(lo, min(n, lo + step)) for lo in range(0, n, step)] or [(0, 0)]


def run_planned(stage: Any, table: pl.DataFrame, part_rows: int) -> StageResult:
    """The whole-table stage `stage` over `table` cut into parts of `part_rows` rows, as a
    streaming runner runs it: `keys` per part (checked: one row per input row), the keys
    concatenated in order with `_row` added, one `plan`, `apply` per part, and the kept
    and dropped rows reassembled (kept in `plan.order` when given). The reference every
    runner's streaming path must equal; `process()` of the planned stages is this with
    one part."""
    bounds = part_bounds(table.height, part_rows)
    keys = []
    for lo, hi in bounds:
        k = stage.keys(table.slice(lo, hi - lo))
        if k.height != hi - lo:
            raise RuntimeError(f"stage {stage.name!r}: keys() gave {k.height} rows for a part of {hi - lo}")
        keys.append(k.with_columns(pl.int_range(lo, hi, dtype=pl.UInt64).alias(ROW_COL)))
    plan = stage.plan(pl.concat(keys, how="vertical", rechunk=True))
    plan = complete_plan(stage, plan, bounds, lambda i: table.slice(bounds[i][0], bounds[i][1] - bounds[i][0]))
    results = [stage.apply(table.slice(lo, hi - lo), plan, lo) for lo, hi in bounds]
    return assemble(results, bounds, plan)


def assemble(results: list[StageResult], bounds: list[tuple[int, int]], plan: Plan) -> StageResult:
    """The stage's result from its parts' `apply` results ([lo, hi) of each part, in
    part order): dropped rows concatenated, kept rows concatenated (in `plan.order` when
    given) and the plan's stats."""
    kept = [r.kept for r in results]
    if plan.order is not None:
        kept = [_in_order(k, plan.order, lo, hi) for k, (lo, hi) in zip(kept, bounds)]
    kept_all = pl.concat(kept, how="vertical")
    if plan.order is not None:
        kept_all = kept_all.sort("__out_pos").drop("__out_pos")
    return StageResult(kept=kept_all, dropped=pl.concat([r.dropped for r in results], how="vertical"),
                       stats=plan.stats)


def _in_order(kept: pl.DataFrame, order: pl.DataFrame, lo: int, hi: int) -> pl.DataFrame:
    """A part's kept rows (in the sequence `order` has them) with their output position."""
    pos = (order.with_row_index("__out_pos")
           .filter((pl.col(ROW_COL) >= lo) & (pl.col(ROW_COL) < hi))["__out_pos"])
    if len(pos) != kept.height:
        raise RuntimeError(f"apply() kept {kept.height} rows of part [{lo}, {hi}), the plan's order has {len(pos)}")
    return kept.with_columns(pos)


def decided_part(part: pl.DataFrame, plan: Plan, first_row: int) -> pl.DataFrame:
    """`part` with its `_row` and the plan's decision columns joined on (null where the
    plan has no row for it), plus `__decided` (the plan has a row for it). Reads only the
    slice of `plan.decisions` that falls in the part (decisions are sorted by `_row`)."""
    n = part.height
    d = plan.decisions
    rows = d[ROW_COL]
    a = int(rows.search_sorted(first_row, side="left")) if d.height else 0
    b = int(rows.search_sorted(first_row + n, side="left")) if d.height else 0
    d = d.slice(a, b - a).with_columns(pl.lit(True).alias("__decided"))
    p = part.with_columns(pl.int_range(first_row, first_row + n, dtype=pl.UInt64).alias(ROW_COL))
    return p.join(d, on=ROW_COL, how="left", maintain_order="left").with_columns(pl.col("__decided").fill_null(False))


def split_decided(joined: pl.DataFrame, drop: list[str] | tuple = ()) -> StageResult:
    """Kept rows (`_reason` null, without `_reason`, `_detail` and the helper columns) and
    dropped rows (with `_reason`, `_detail`) of a `decided_part` frame; `drop` names
    further columns to remove from both."""
    internal = [ROW_COL, "__decided", *drop]
    dropped = joined.filter(pl.col(REASON).is_not_null()).drop(internal)
    kept = joined.filter(pl.col(REASON).is_null()).drop(internal + [REASON, DETAIL])
    return StageResult(kept=kept, dropped=dropped)


class PlannedStage(Stage):
    """A whole-table decision (dedup, select, mix) made from small per-row key columns,
    so that a runner holds one part of the rows at a time, plus the keys of every row:

      keys(part) -> pl.DataFrame       row-local: one row per input row, same order; only
                                       small columns (hashes, MinHash band keys and
                                       sketches, scores, group, task, token counts,
                                       ids), never message text
      plan(keys) -> Plan               once, over every part's keys concatenated in order,
                                       with `_row` (UInt64, global input position) added
                                       by the runner: the decisions and the stats
      apply(part, plan, first_row)     row-local given the plan: the part's kept rows
        -> StageResult                 (input columns + added ones, repeats included) and
                                       dropped rows (`_reason`, `_detail`); first_row =
                                       the global position of the part's first row

    `process(table)` is `run_planned(self, table, len(table))`: one code path, so the
    streaming result equals the whole-table one by construction (tests pin it for
    small and large parts). `plannable()` false: this configuration cannot be decided
    from keys (select's diversity walk); `process` runs it whole and
    `has_plan` says so to the runner.

    Memory: the keys of all rows meet in `plan` (bytes per row: docs/pipeline.md, "Whole-
    table stages from keys"); `decisions` holds only the rows that are dropped or gain
    columns, `order` one small row per output row.

    Executors call the three directly (curate/pipeline/stage_steps.py: `part_keys`,
    `apply_part`, `planned_output`); a worker applies on its own copy of the plan and
    its findings come back through `merge_part_stats`."""

    def plannable(self) -> bool:
        return True

    def needs_refine(self) -> bool:
        """Whether `plan` may return a `Refine` (a second pass over the parts) for this
        configuration; such a stage implements `refine_keys` and `finish_plan`."""
        return False

    def keys(self, part: pl.DataFrame) -> pl.DataFrame:  # pragma: no cover - interface
        raise NotImplementedError

    def plan(self, keys: pl.DataFrame) -> Plan:  # pragma: no cover - interface
        raise NotImplementedError

    def apply(self, part: pl.DataFrame, plan: Plan, first_row: int) -> StageResult:  # pragma: no cover - interface
        raise NotImplementedError

    def process_planned(self, table: pl.DataFrame) -> StageResult:
        return run_planned(self, table, max(1, table.height))

    def merge_part_stats(self, plan: Plan, part_stats: list[dict]) -> None:
        """What `apply` found that `plan.stats` reports (dedup: the texts of the report's
        example members), from the parts' StageResult.stats, when they were applied on
        copies of the plan (workers). `apply` also writes it into the `plan.stats` it was
        given, so a runner that applies in-process needs no call. Default: nothing."""



# A canonical record id (20 lower-case hex digits, what `conversation_id` gives) as two
# integers whose order is the strings' order: hi (its first 16 digits, UInt64) and lo (its
# last 4, UInt16); any other id stays a string (issue #19: 10 B a row, no string sort).
HEX_ID = "^[0-9a-f]{20}$"


def id_key_exprs(hi: str, lo: str, other: str) -> list[pl.Expr]:
    """The id column as (hi, lo) where it is canonical (null elsewhere) and as a string in
    `other` where it is not (null for canonical ids)."""
    ident = pl.col("id")
    canonical = ident.str.contains(HEX_ID).fill_null(False)
    return [pl.when(canonical).then(ident.str.slice(0, 16).str.to_integer(base=16, dtype=pl.UInt64, strict=False))
            .alias(hi),
            pl.when(canonical).then(ident.str.slice(16, 4).str.to_integer(base=16, dtype=pl.UInt16, strict=False))
            .alias(lo),
            pl.when(canonical).then(pl.lit(None, pl.String)).otherwise(ident).alias(other)]


def id_strings(hi, lo) -> pl.Series:
    """The canonical id strings of integer keys (hi, lo), vectorised (no Python loop per
    row); null where hi is null."""
    hi_s, lo_s = pl.Series(hi), pl.Series(lo)
    null = hi_s.is_null().to_numpy()
    h = hi_s.fill_null(0).to_numpy().astype(">u8")
    l_ = lo_s.fill_null(0).to_numpy().astype(">u2")
    if not len(h):
        return pl.Series("id", [], dtype=pl.String)
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    b = np.concatenate([h.view(np.uint8).reshape(-1, 8), l_.view(np.uint8).reshape(-1, 2)], axis=1)
    out = np.empty((len(h), 20), dtype=np.uint8)
    out[:, 0::2], out[:, 1::2] = digits[b >> 4], digits[b & 15]
    strs = pl.Series("id", np.char.decode(out.view("S20").ravel(), "ascii").tolist(), dtype=pl.String)
    return strs if not null.any() else strs.zip_with(pl.Series(~null), pl.Series([None] * len(h), dtype=pl.String))


def group_codes(col: pl.Series) -> tuple[np.ndarray, list[str]]:
    """Dense int32 codes (0..k-1, in the names' sorted order) of a Categorical (or String)
    column, and the code -> name table: a plan's groups as integers, never per-row strings
    (mix's walks, select's cutoffs)."""
    if col.dtype != pl.Categorical:
        col = col.cast(pl.Categorical)
    uniq = col.unique()
    names = uniq.cast(pl.String).to_list()
    phys = uniq.to_physical().to_numpy().astype(np.int64)
    order = sorted(range(len(names)), key=lambda i: names[i])
    lut = np.zeros(int(phys.max()) + 1 if len(phys) else 1, dtype=np.int32)
    lut[phys[order]] = np.arange(len(order), dtype=np.int32)
    return lut[col.to_physical().to_numpy()], [names[i] for i in order]
