"""Rendering and shard writing part by part: the same shards, manifest sections and render
rejects as `render_examples` + `write_shards` on the whole table, with memory bounded by
one part plus small per-row keys.

    render_parts(parts, columns, cfg, base_dir, seed, work_dir, reject_dir) -> StreamedRender
    write_shards_streamed(rendered, shards_dir, cfg)                         -> {"train": [...], "val": [...]}

`parts(columns)` yields the rows after the last stage as polars frames, part by part, in
order (the runner's parts, trusted hold-out applied); every call must yield the same rows
in the same parts. Three passes:

1. keys: `id`, `source`, `task` (and a `split` column when a mix stage made one) of every
   row, in memory (tens of bytes a row): the train/val split (`assign_split`, global by
   nature: stratified ranks per task) and which row is the first of its id.
2. tokens: per part, the rows that are the first of their id (a mix stage's upsampled
   copies share their id and get the same tokens, as in render_examples) are rendered and
   tokenized (`tokenize_aligned`, or the executor's `map_blocks`), their token lists
   written to `work_dir/tokens-NNNNN.arrow` (Arrow IPC files, uncompressed: memory-mapped
   for random access), and what the shards and the manifest need is kept per id: length,
   supervised tokens, supervised runs, runs without end-of-turn, double BOS, and where its
   tokens lie (file, row). The part's dropped rows (all columns, every copy) go to
   `reject_dir/render-NNNNN.parquet` in the rejects layout, for the runner to merge.
3. shards (`write_shards_streamed`): per split, the examples in render_examples' order
   (sorted by id, split, task, source); packed: best-fit-decreasing over their lengths
   (only lengths are global), then each shard of `shard_rows` packed rows is built by
   gathering its members' tokens from the token files; unpacked: `shard_rows` examples at
   a time. The shard files are the same bytes as the whole-table writer's
   (tests/test_render_streaming.py).

Memory: one part (all columns) and its token lists, the per-row keys of pass 1 (the id
string, source/task/split as UInt32 codes of the sorted names: `Codes`), the per-id facts
of pass 2 (32-bit counts, ~60 bytes an id with its id), the ids and reasons of dropped rows,
and one shard's tokens (with its gathered pieces, about twice). The examples table (keys
joined with facts, sorted: ~75 bytes a row) is built with at most two row-sized frames
alive; the split's hash takes Python strings of 100k ids at a time; the packing plan is
two integer arrays (packing.best_fit_decreasing_arrays). Not bounded by the budget: the
per-row keys grow with the rows (by design: the split and the packing plan are global).

Trade-offs: the tokens are written to disk once more than before (the token files are
as large as the shards; the runner removes them when the shards are written); a shard
gathers its members from every token file that holds one (a packed shard's members are
spread over all of them: longest first), so writing the shards reads the token files
about once per shard through the page cache, touching only the members' pages. The
render rejects file is merged from per-part files (curate.pipeline.parts.RowGroupWriter,
fixed row groups, like every stage's rejects): the same rows as before, other bytes than
polars' single write of the whole frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from curate.contract.atomic import atomic_path, write_parquet
from curate.contract.ledger import REASON, drop_counts, reject_frame
from curate.contract.shards import IGNORE, PACKED_SCHEMA, SPLITS, UNPACKED_SCHEMA, flat_values
from curate.render.renderer import (DETAIL_COL, REASON_COL, TRUNCATED_COL, RenderBlock, RenderSetup, assign_split,
                                    decoded_samples, tokenize_aligned, tools_column)

I32 = pa.list_(pa.int32())
TOKEN_SCHEMA = pa.schema([("input_ids", I32), ("labels", I32)])
# per example (one row per first-of-id row): 32-bit counts (a length is at most
# max_length, a token file holds one part's rows), summed as int64
FACTS = {"length": pl.Int32, "supervised": pl.Int32, "runs": pl.Int32, "bad_runs": pl.Int32, "bos2": pl.Boolean,
         "rpart": pl.Int32, "rrow": pl.Int32}


class Codes:
    """A string column of every row (source, task, split) as UInt32 codes: `encode` each
    part (codes in first-seen order, the names so far an Enum), `finish` the parts' codes
    as ranks of the sorted names (nulls stay null): sorting or grouping by the codes is
    sorting or grouping by the strings (polars compares strings by their UTF-8 bytes,
    Python's sorted by code points: the same order), at 4 bytes a row instead of a string
    view's 16 (issue #19: the render keys of every row are on the driver)."""

    def __init__(self):
        self.seen: dict[str, int] = {}
        self.names: list[str] = []

    def encode(self, s: pl.Series) -> pl.Series:
        s = s.cast(pl.String)
        for name in s.unique().drop_nulls().to_list():
            self.seen.setdefault(name, len(self.seen))
        return s.cast(pl.Enum(list(self.seen))).to_physical().cast(pl.UInt32)

    def finish(self, parts: list[pl.Series]) -> pl.Series:
        self.names = sorted(self.seen)
        rank = np.empty(len(self.seen), dtype=np.uint32)
        rank[[self.seen[n] for n in self.names]] = np.arange(len(self.names), dtype=np.uint32)
        got = pl.concat(parts, rechunk=True) if parts else pl.Series([], dtype=pl.UInt32)
        return pl.Series(rank, dtype=pl.UInt32).gather(got) if len(got) else got

    def decode(self, codes: pl.Series) -> pl.Series:
        return pl.Series(codes.name, self.names, dtype=pl.String).gather(codes)


def write_tokens(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, TOKEN_SCHEMA) as w:
            w.write_table(table.cast(TOKEN_SCHEMA).combine_chunks())


class TokenStore:
    """Token lists of rendered examples in Arrow IPC files under `folder`, read back by
    (file, row) through memory maps."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.files: list[Path] = []

    def add(self, table: pa.Table) -> int:
        """Write `table` (input_ids, labels) as the next file; returns its number."""
        path = self.folder / f"tokens-{len(self.files):05d}.arrow"
        write_tokens(path, table)
        return self.register(path)

    def register(self, path: Path) -> int:
        """A token file written elsewhere (a worker: `write_tokens`) as the next file."""
        self.files.append(Path(path))
        return len(self.files) - 1

    def take(self, rpart: np.ndarray, rrow: np.ndarray) -> tuple[pa.ListArray, pa.ListArray]:
        """(input_ids, labels) of the examples at (file, row) pairs, in the order given."""
        rpart, rrow = np.asarray(rpart, dtype=np.int64), np.asarray(rrow, dtype=np.int64)
        if len(rpart) == 0:
            empty = pa.array([], I32)
            return empty, empty
        order = np.argsort(rpart, kind="stable")
        bounds = np.flatnonzero(np.diff(rpart[order])) + 1
        pieces = []
        for sel in np.split(order, bounds):
            source = pa.memory_map(str(self.files[int(rpart[sel[0]])]), "r")
            try:
                pieces.append(pa.ipc.open_file(source).read_all().take(pa.array(rrow[sel])))
            finally:
                source.close()
        back = np.empty(len(order), dtype=np.int64)
        back[order] = np.arange(len(order))
        back = pa.array(back)
        # taken across the pieces (a chunked array) straight into the order asked for: one
        # copy of the tokens beside the pieces, not two
        return tuple(pa.chunked_array([p.column(c).combine_chunks() for p in pieces], I32).take(back).combine_chunks()
                     for c in ("input_ids", "labels"))


def example_facts(ids_list, labels_list, end_of_turn_ids: list[int] | None, expect_end_of_turn: bool,
                  bos_id: int | None) -> dict[str, np.ndarray]:
    """Per example, what curate.contract.shards.check_examples sums over a split (tokens,
    supervised tokens, supervised runs, runs not ending with the end-of-turn tokens) and
    whether it starts with two BOS tokens: the same rules, kept per example so that the
    checks of any set of rows (upsampled copies included) are sums."""
    lens = pc.list_value_length(ids_list).to_numpy(zero_copy_only=False).astype(np.int64)
    n = len(lens)
    ids = flat_values(ids_list).astype(np.int64)
    sup = flat_values(labels_list) != IGNORE
    starts = np.cumsum(lens) - lens
    nonempty = lens > 0
    per_sup = np.zeros(n, dtype=np.int64)
    if nonempty.any():
        per_sup[nonempty] = np.add.reduceat(sup.astype(np.int64), starts[nonempty])
    is_last = np.zeros(len(ids), dtype=bool)
    is_last[(starts + lens - 1)[nonempty]] = True
    nxt = np.append(sup[1:], False)
    ends = np.flatnonzero(sup & (~nxt | is_last))
    example_of = np.repeat(np.arange(n), lens)
    runs = np.bincount(example_of[ends], minlength=n).astype(np.int64)
    bad = np.zeros(n, dtype=np.int64)
    if expect_end_of_turn and end_of_turn_ids and len(ends):
        eot = np.asarray(end_of_turn_ids, dtype=np.int64)
        ok = np.ones(len(ends), dtype=bool)
        for k in range(len(eot)):
            pos = ends - k
            inside = (pos >= 0) & (example_of[np.maximum(pos, 0)] == example_of[ends])
            ok &= inside & (ids[np.maximum(pos, 0)] == eot[len(eot) - 1 - k])
        bad = np.bincount(example_of[ends[~ok]], minlength=n).astype(np.int64)
    bos2 = np.zeros(n, dtype=bool)
    if bos_id is not None:
        two = lens >= 2
        bos2[two] = (ids[starts[two]] == bos_id) & (ids[starts[two] + 1] == bos_id)
    return {"length": lens, "supervised": per_sup, "runs": runs, "bad_runs": bad, "bos2": bos2}


def split_aligned(aligned, ids: pl.Series):
    """One rendered part's outcome, shared by the local loop and the Ray part task:
    (the kept rows' tokens, their ids, the dropped ids with reason and detail or None,
    the truncated ids or None)."""
    reasons = aligned.column(REASON_COL)
    kept = pc.is_null(reasons)
    kept_np = kept.to_numpy(zero_copy_only=False)
    tokens = aligned.select(["input_ids", "labels"]).filter(kept)
    dropped = None
    if not kept_np.all():
        dropped = pl.DataFrame({
            "id": ids.filter(pl.Series(~kept_np)),
            REASON: pl.from_arrow(reasons.filter(pc.invert(kept))).cast(pl.String),
            "_detail": pl.from_arrow(aligned.column(DETAIL_COL).filter(pc.invert(kept))).cast(pl.String)})
    trunc = aligned.column(TRUNCATED_COL).to_numpy(zero_copy_only=False)
    truncated = ids.filter(pl.Series(trunc)) if trunc.any() else None
    return tokens, ids.filter(pl.Series(kept_np)), dropped, truncated


def checks_of(examples: pl.DataFrame, task_names: list[str] | None = None) -> dict:
    """check_examples' result (plus double_bos) from per-example facts: the same numbers.
    `task_names`: the examples' `task` is codes into these sorted names (StreamedRender)."""
    lens = examples["length"].to_numpy().astype(np.int64)
    sup = examples["supervised"].to_numpy().astype(np.int64)
    result = {"examples": int(len(lens)), "tokens": int(lens.sum()), "supervised_tokens": int(sup.sum())}
    if len(lens) == 0:
        result.update(zero_supervised=0, supervised_runs=0, runs_without_end_of_turn=0, supervised_fraction={})
    else:
        result["zero_supervised"] = int((sup == 0).sum())
        result["supervised_runs"] = int(examples["runs"].sum())
        result["runs_without_end_of_turn"] = int(examples["bad_runs"].sum())
        if task_names is None:
            names, task_of = np.unique(np.asarray(examples["task"].to_list(), dtype=object).astype(str),
                                       return_inverse=True)
            sup_per_task = np.bincount(task_of, weights=sup, minlength=len(names))
            tok_per_task = np.bincount(task_of, weights=lens, minlength=len(names))
        else:  # codes of the sorted names: counted by code, the tasks present kept in code (sorted) order
            codes = examples["task"].to_numpy().astype(np.int64)
            present = np.flatnonzero(np.bincount(codes, minlength=len(task_names)))
            names = [task_names[int(c)] for c in present]
            sup_per_task = np.bincount(codes, weights=sup, minlength=len(task_names))[present]
            tok_per_task = np.bincount(codes, weights=lens, minlength=len(task_names))[present]
        result["supervised_fraction"] = {
            str(t): round(float(s / n) if n else 0.0, 4) for t, s, n in zip(names, sup_per_task, tok_per_task)}
    result["double_bos"] = int(examples["bos2"].sum()) if len(lens) else 0
    return result


@dataclass
class StreamedRender:
    """What the streamed render keeps: one row per example (shard order: id, source, task,
    split, then its facts and where its tokens are), the token files, the part reject
    files, the drop counts, and the manifest's stats and fingerprints."""

    examples: pl.DataFrame
    store: TokenStore
    rejects: list  # per part: a Parquet file of dropped rows, or an empty frame (the schema)
    rows_in: int = 0
    dropped: dict = field(default_factory=dict)  # rows by reason (copies included)
    records_dropped: dict = field(default_factory=dict)  # records by reason (the ledger's)
    copies_dropped: int = 0
    dropped_ids: pl.Series = None
    stats: dict = field(default_factory=dict)
    fingerprints: dict = field(default_factory=dict)
    tokenizer: object = None
    names: dict = field(default_factory=dict)  # source/task/split: the sorted names the examples' codes index
    map_parts: object = None  # the executor's map_parts the render ran with: the shards are written with it too

    def code(self, col: str, name: str) -> int:
        """The code of `name` in the examples' column `col` (-1 when no row has it)."""
        names = self.names[col]
        return names.index(name) if name in names else -1

    def has(self, col: str, name: str) -> pl.Expr:
        """Rows whose column `col` holds `name` (none when no row has it: the code -1 would
        not fit the unsigned code column)."""
        code = self.code(col, name)
        return pl.col(col) == code if code >= 0 else pl.repeat(False, pl.len())

    def decoded(self, frame: pl.DataFrame, *cols: str) -> pl.DataFrame:
        """`frame` (rows of `examples`) with its code columns `cols` as the strings."""
        return frame.with_columns(pl.Series(c, self.names[c], dtype=pl.String).gather(frame[c]) for c in cols)

    # what the runner calls after the render (the Ray executor's RemoteRender has the same two)
    def write_shards(self, shards_dir: str | Path, cfg) -> dict:
        return write_shards_streamed(self, shards_dir, cfg)

    def token_counts(self) -> dict:
        from curate.render.shards import counts_by_group

        return counts_by_group(token_facts(self))


def _add_counts(into: dict, more: dict) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + int(v)


def render_parts(parts: Callable[[list[str] | None], Iterator[pl.DataFrame]], columns: list[str], cfg, base_dir,
                 seed: int, work_dir: Path, reject_dir: Path, tokenizer=None, map_blocks=None,
                 map_parts=None) -> StreamedRender:
    """Render the rows `parts` yields (see the module doc); `columns`: the names of their
    columns. `map_blocks(frame, fn)` as in render_examples (the Ray executor's).
    `map_parts(parts, fn, [(k, arg)])` -> [fn(k, part k, arg)]: pass 2 on workers, one task
    per part (the Ray executor's `render_parts`; `parts` must then also have `read(k,
    columns)` and `schema()`): see `_render_on_workers`."""
    base_dir = Path(base_dir)
    setup = RenderSetup.open(cfg, base_dir, tokenizer)
    cfg, renderer = setup.cfg, setup.renderer
    reject_dir = Path(reject_dir)
    reject_dir.mkdir(parents=True, exist_ok=True)

    # pass 1: the keys of every row: the id, and source / task / split as codes (Codes)
    key_cols = ["id", "source", "task"] + (["split"] if "split" in columns else [])
    codes = {c: Codes() for c in ("source", "task", "split")}
    ids, coded, given, sizes = [], {"source": [], "task": []}, [], []
    for p in parts(key_cols):
        ids.append(p["id"].cast(pl.String))
        for c in coded:
            coded[c].append(codes[c].encode(p[c]))
        if "split" in columns:
            given.append(p["split"].cast(pl.String).fill_null("train"))
        sizes.append(p.height)
    keys = pl.DataFrame({"id": pl.concat(ids, rechunk=True) if ids else pl.Series("id", [], dtype=pl.String),
                         **{c: codes[c].finish(coded[c]) for c in coded}})
    del ids, coded
    if "split" in columns:
        split = codes["split"].finish([codes["split"].encode(g) for g in given])
        del given
    else:  # assign_split over (id, task code): the task only partitions the ranks
        split = codes["split"].finish([codes["split"].encode(assign_split(keys, cfg.val_fraction, seed))])
    keys = keys.with_columns(split.alias("split"))
    del split
    first = keys["id"].is_first_distinct().to_numpy()

    # pass 2: tokens of each id's first row, part by part
    store = TokenStore(work_dir)
    expect = cfg.train_on != "all"
    facts, truncated, rejects = [], [], []
    why = pl.DataFrame(schema={"id": pl.String, REASON: pl.String, "_detail": pl.String})
    out = StreamedRender(examples=None, store=store, rejects=rejects, tokenizer=setup.tokenizer, map_parts=map_parts)
    with_tools, off = 0, 0
    if map_parts is not None:
        why, with_tools = _render_on_workers(parts, map_parts, first, sizes, cfg, base_dir, renderer, expect, store,
                                             facts, why, truncated, rejects, reject_dir, out)
    for k, part in enumerate(parts(None) if map_parts is None else ()):
        n = part.height
        if n != sizes[k]:
            raise RuntimeError(f"render: part {k} gave {n} rows, {sizes[k]} before")
        out.rows_in += n
        uniq = part.filter(pl.Series(first[off: off + n])).select(
            "id", "messages", *(["meta"] if "meta" in part.columns else []))
        off += n
        if uniq.height:
            tools = tools_column(uniq)
            has_tools = tools.null_count() < tools.len()
            with_tools += int(tools.len() - tools.null_count())
            if map_blocks is None:
                aligned = tokenize_aligned(renderer, uniq["messages"], cfg.batch_size, tools if has_tools else None)
            else:
                frame = uniq.select("messages").with_columns(tools) if has_tools else uniq.select("messages")
                aligned = map_blocks(frame, RenderBlock(cfg, str(base_dir)))
            tokens, kept_ids, dropped_now, trunc_ids = split_aligned(aligned, uniq["id"].cast(pl.String))
            if tokens.num_rows:
                rpart = store.add(tokens)
                f = example_facts(tokens.column("input_ids"), tokens.column("labels"), renderer.end_of_turn_ids,
                                  expect, renderer.bos_id)
                f["rpart"] = np.full(tokens.num_rows, rpart, dtype=np.int32)
                f["rrow"] = np.arange(tokens.num_rows, dtype=np.int32)
                facts.append(pl.DataFrame({"id": kept_ids,
                                           **{c: pl.Series(c, f[c], dtype=t) for c, t in FACTS.items()}}))
            if dropped_now is not None:
                why = pl.concat([why, dropped_now], how="vertical_relaxed")
            if trunc_ids is not None:
                truncated.append(trunc_ids)
            del aligned, tokens
        # every row (copies too) of an id dropped so far: this part's render rejects
        dropped = part.join(why, on="id", how="inner", maintain_order="left")
        if dropped.height:
            _add_counts(out.dropped, {str(r): c for r, c in dropped[REASON].value_counts().iter_rows()})
            records, copies = drop_counts(dropped, REASON)
            _add_counts(out.records_dropped, records)
            out.copies_dropped += copies
            path = reject_dir / f"render-{k:05d}.parquet"
            write_parquet(path, reject_frame("render", dropped))
            rejects.append(path)
        else:
            rejects.append(reject_frame("render", dropped))
        del part, dropped, uniq
    out.dropped = dict(sorted(out.dropped.items()))
    out.records_dropped = dict(sorted(out.records_dropped.items()))
    out.dropped_ids = why["id"]

    # the examples: every row whose id rendered, with its id's facts, in render_examples' order
    # (the codes are ranks of the sorted names, nulls first: the same order as the strings)
    fact_table = pl.concat(facts, how="vertical") if facts else pl.DataFrame(schema={"id": pl.String, **FACTS})
    del facts
    trunc_ids = pl.concat(truncated) if truncated else pl.Series("id", [], dtype=pl.String)
    n_truncated = int(keys.select(pl.col("id").is_in(trunc_ids.implode()).sum()).item()) if trunc_ids.len() else 0
    joined = keys.join(fact_table, on="id", how="inner", maintain_order="left")
    del keys, fact_table  # before the sort's copy: at most two row-sized frames at once
    examples = joined.sort("id", "split", "task", "source", maintain_order=True)
    del joined
    out.examples = examples
    out.names = {c: codes[c].names for c in codes}
    checks = checks_of(examples, out.names["task"])
    head = out.decoded(examples.filter(out.has("split", "train")).head(3), "task")
    sample_ids, sample_labels = store.take(head["rpart"].to_numpy(), head["rrow"].to_numpy())
    sample_rows = head.select("id", "task").with_columns(
        pl.from_arrow(sample_ids).alias("input_ids"), pl.from_arrow(sample_labels).alias("labels")) \
        if head.height else pl.DataFrame(schema={"id": pl.String, "task": pl.String,
                                                 "input_ids": pl.List(pl.Int32), "labels": pl.List(pl.Int32)})
    out.stats = {
        "examples": examples.height,
        "dropped": dict(out.dropped),
        "truncated": n_truncated,
        "splits": {s: int(examples.select(out.has("split", s).sum()).item()) for s in ("train", "val")},
        "tokens": checks["tokens"],
        "supervised_tokens": checks["supervised_tokens"],
        "mask_source": setup.mask_source(),
        "with_tools": with_tools,
        "notes": setup.notes(),
        "checks": checks,
        "samples": decoded_samples(setup.tokenizer, sample_rows),
    }
    out.fingerprints = setup.fingerprints(base_dir)
    return out


class RenderPart:
    """Pass 2 for one part on a worker, `fn(k, part, first)` -> a dict of small results:
    the part's first-of-id rows rendered and tokenized (RenderBlock: tokenizer and template
    loaded once per worker process), their tokens written to `work_dir/tokens-KKKKK.arrow`,
    their facts, the ids dropped with reason and detail, the truncated ids, the tools count."""

    def __init__(self, cfg, base_dir: str, work_dir: str, end_of_turn_ids, expect: bool, bos_id):
        self.cfg, self.base_dir, self.work_dir = cfg, base_dir, work_dir
        self.end_of_turn_ids, self.expect, self.bos_id = end_of_turn_ids, expect, bos_id

    def __call__(self, k: int, part: pl.DataFrame, first: np.ndarray) -> dict:
        res = {"k": k, "rows": part.height, "with_tools": 0, "file": None, "facts": None,
               "dropped": None, "truncated": None}
        uniq = part.filter(pl.Series(first)).select("id", "messages", *(["meta"] if "meta" in part.columns else []))
        if not uniq.height:
            return res
        tools = tools_column(uniq)
        has_tools = tools.null_count() < tools.len()
        res["with_tools"] = int(tools.len() - tools.null_count())
        frame = uniq.select("messages").with_columns(tools) if has_tools else uniq.select("messages")
        aligned = RenderBlock(self.cfg, self.base_dir)(frame.to_arrow(compat_level=pl.CompatLevel.oldest()))
        tokens, kept_ids, res["dropped"], res["truncated"] = split_aligned(aligned, uniq["id"].cast(pl.String))
        if tokens.num_rows:
            path = Path(self.work_dir) / f"tokens-{k:05d}.arrow"
            write_tokens(path, tokens)
            f = example_facts(tokens.column("input_ids"), tokens.column("labels"), self.end_of_turn_ids,
                              self.expect, self.bos_id)
            res["file"] = str(path)
            res["facts"] = pl.DataFrame({"id": kept_ids, **{c: pl.Series(c, f[c], dtype=FACTS[c]) for c in f}})
        return res


class RejectPart:
    """One part's render rejects on a worker, `fn(k, part, None)`: its rows whose id is among
    the dropped ids `why` (every copy), written to `reject_dir/render-KKKKK.parquet`, and
    their counts by reason; or, with none, the empty rejects frame (the schema)."""

    def __init__(self, reject_dir: str, why: pl.DataFrame):
        self.reject_dir, self.why = reject_dir, why

    def __call__(self, k: int, part: pl.DataFrame, _arg) -> dict:
        dropped = part.join(self.why, on="id", how="inner", maintain_order="left")
        if not dropped.height:
            return {"path": None, "empty": reject_frame("render", dropped)}
        records, copies = drop_counts(dropped, REASON)
        path = Path(self.reject_dir) / f"render-{k:05d}.parquet"
        write_parquet(path, reject_frame("render", dropped))
        return {"path": str(path), "dropped": {str(r): c for r, c in dropped[REASON].value_counts().iter_rows()},
                "records": records, "copies": copies}


def _render_on_workers(parts, map_parts, first, sizes, cfg, base_dir, renderer, expect, store, facts, why,
                       truncated, rejects, reject_dir, out) -> tuple[pl.DataFrame, int]:
    """Pass 2 with the per-part work on workers (RenderPart, one task per part, in parallel),
    then, on the driver, what the serial loop does with its results, in part order: the
    token files registered, the facts, the dropped ids. Every copy of a dropped id is in a
    part at or after the part of its first row, so each part's render rejects are its rows
    whose id is among all dropped ids: the parts holding one (found from their id column)
    write their rejects on workers (RejectPart, one task each); the others get the empty
    frame of the parts' schema, as serially. The driver reads no message text.
    Same examples, stats, rejects and token order as the serial loop; the token files
    are named by part (a part without tokens leaves a gap in the names, not in the store).
    Returns (the dropped ids with reason and detail, examples with tools)."""
    bounds = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    fn = RenderPart(cfg, str(base_dir), str(store.folder), renderer.end_of_turn_ids, expect, renderer.bos_id)
    results = map_parts(parts, fn, [(k, first[bounds[k]: bounds[k + 1]]) for k in range(len(sizes))])
    with_tools = 0
    dropped_frames = [why]
    for k, r in enumerate(results):
        if r["rows"] != sizes[k]:
            raise RuntimeError(f"render: part {k} gave {r['rows']} rows, {sizes[k]} before")
        out.rows_in += r["rows"]
        with_tools += r["with_tools"]
        if r["file"] is not None:
            rpart = store.register(Path(r["file"]))
            n = r["facts"].height
            facts.append(r["facts"].with_columns(pl.Series("rpart", np.full(n, rpart, dtype=np.int32)),
                                                 pl.Series("rrow", np.arange(n, dtype=np.int32)))
                         .select("id", *FACTS))
        if r["dropped"] is not None:
            dropped_frames.append(r["dropped"])
        if r["truncated"] is not None:
            truncated.append(r["truncated"])
    why = pl.concat(dropped_frames, how="vertical_relaxed")
    empty = reject_frame("render", pl.DataFrame(schema=parts.schema()).join(why, on="id", how="inner"))
    # which parts hold a dropped id (their id column only); their rejects are written on workers
    todo = [k for k in range(len(sizes)) if why.height and
            parts.read(k, ["id"])["id"].cast(pl.String).is_in(why["id"].implode()).any()]
    done = dict(zip(todo, map_parts(parts, RejectPart(str(reject_dir), why), [(k, None) for k in todo]))) if todo else {}
    for k in range(len(sizes)):
        r = done.get(k)
        if r is None or r["path"] is None:
            rejects.append(r["empty"] if r is not None else empty)
            continue
        _add_counts(out.dropped, r["dropped"])
        _add_counts(out.records_dropped, r["records"])
        out.copies_dropped += r["copies"]
        rejects.append(Path(r["path"]))
    return why, with_tools


def token_facts(rendered: StreamedRender) -> pl.DataFrame:
    """task, source, split, tokens, supervised_tokens per example (curate.render.shards.counts_by_group)."""
    return rendered.decoded(rendered.examples.select(
        "task", "source", "split", pl.col("length").cast(pl.Int64).alias("tokens"),
        pl.col("supervised").cast(pl.Int64).alias("supervised_tokens")), "task", "source", "split")


def _pack_plan(sub: pl.DataFrame, cfg) -> tuple[np.ndarray, np.ndarray]:
    """The split's packed rows (best-fit-decreasing over the lengths, the only global
    part): `order`, the examples row after row, and `first_member`, where each row starts
    in it (len rows + 1)."""
    from curate.render.packing import best_fit_decreasing_arrays

    order, members = best_fit_decreasing_arrays(sub["length"].to_numpy().astype(np.int64), cfg.max_length)
    return order, np.concatenate(([0], np.cumsum(members))).astype(np.int64)


def _packed_shard(chunk: pl.DataFrame, member_offsets: np.ndarray, store: TokenStore, names: dict) -> pa.Table:
    """One packed shard from its examples in packed order (`chunk`: id, task and source
    codes, length, rpart, rrow) and where each packed row starts among them."""
    toks, labels = store.take(chunk["rpart"].to_numpy(), chunk["rrow"].to_numpy())
    lens = chunk["length"].to_numpy().astype(np.int64)
    row_tokens = np.add.reduceat(lens, member_offsets[:-1])
    token_offsets = pa.array(np.concatenate(([0], np.cumsum(row_tokens))), pa.int32())
    moff = pa.array(member_offsets, pa.int32())
    tasks, sources = (pl.Series(names[c], dtype=pl.String).gather(chunk[c]) for c in ("task", "source"))
    table = pa.table({
        "input_ids": pa.ListArray.from_arrays(token_offsets, toks.flatten()),
        "labels": pa.ListArray.from_arrays(token_offsets, labels.flatten()),
        "seq_lens": pa.ListArray.from_arrays(moff, pa.array(lens.astype(np.int32))),
        "ids": pa.ListArray.from_arrays(moff, chunk["id"].to_arrow().cast(pa.string())),
        "tasks": pa.ListArray.from_arrays(moff, tasks.to_arrow().cast(pa.string())),
        "sources": pa.ListArray.from_arrays(moff, sources.to_arrow().cast(pa.string())),
    })
    return table.cast(PACKED_SCHEMA)


def _unpacked_shard(chunk: pl.DataFrame, store: TokenStore, names: dict) -> pa.Table:
    toks, labels = store.take(chunk["rpart"].to_numpy(), chunk["rrow"].to_numpy())
    chunk = chunk.with_columns(pl.Series(c, names[c], dtype=pl.String).gather(chunk[c]) for c in ("task", "source"))
    table = pa.table({"id": chunk["id"].to_arrow().cast(pa.string()),
                      "task": chunk["task"].to_arrow().cast(pa.string()),
                      "source": chunk["source"].to_arrow().cast(pa.string()),
                      "input_ids": toks, "labels": labels})
    return table.cast(UNPACKED_SCHEMA)


def _shard_ranges(n: int, cfg, first_member: np.ndarray | None) -> list[tuple[int, int]]:
    """Each shard's (lo, hi): packed rows [lo, hi) of the plan, or examples [lo, hi)."""
    total = len(first_member) - 1 if first_member is not None else n
    return [(lo, min(lo + cfg.shard_rows, total)) for lo in range(0, total, cfg.shard_rows)]


def _shard_table(sub: pl.DataFrame, store: TokenStore, names: dict, plan, lo: int, hi: int) -> pa.Table:
    """Shard [lo, hi) of the split `sub` (its examples in shard order), packed by `plan`
    (order, first_member) or, without one, unpacked."""
    if plan is None:
        return _unpacked_shard(sub.slice(lo, hi - lo), store, names)
    order, first_member = plan
    sel = np.asarray(order[first_member[lo]: first_member[hi]])
    return _packed_shard(sub.select(pl.all().gather(pl.Series(sel))),
                         np.asarray(first_member[lo: hi + 1]) - first_member[lo], store, names)


SHARD_COLS = ["id", "task", "source", "length", "rpart", "rrow"]


class _NoPart:
    """`parts` for map_parts when a task reads no part (ShardPart): `read` gives None."""

    def read(self, k: int, columns=None):
        return None


class ShardPart:
    """One shard on a worker, `fn(j, None, (split, k, lo, hi))` -> its entry: the split's
    examples (SHARD_COLS) and packing plan memory-mapped from the files the driver wrote
    into the render work folder, the shard's members gathered from the token files, the
    shard written (shards.write_shard): the bytes the driver would write. Trade-off: every
    task loads the split's whole plan (`order`, `first_member`: 16 B an example, .npz
    cannot be memory-mapped) and maps the whole keys file, taking only its members' rows;
    the driver writes both files once per split (~40 B an example)."""

    def __init__(self, plan_dir: str, token_files: list[str], names: dict, shards_dir: str, cfg):
        self.plan_dir, self.token_files, self.names, self.shards_dir, self.cfg = \
            plan_dir, token_files, names, shards_dir, cfg

    def __call__(self, _j: int, _part, arg) -> dict:
        from curate.render.shards import shard_metadata, write_shard

        split, k, lo, hi = arg
        store = TokenStore.__new__(TokenStore)  # the driver's token files, read-only here
        store.folder, store.files = Path(self.plan_dir), [Path(f) for f in self.token_files]
        source = pa.memory_map(str(Path(self.plan_dir) / f"examples-{split}.arrow"), "r")
        try:
            every = pa.ipc.open_file(source).read_all()
            if self.cfg.pack:  # the shard's members, taken from the mapped file in packed order
                got = np.load(Path(self.plan_dir) / f"plan-{split}.npz")
                first_member = got["first_member"]
                sel = got["order"][first_member[lo]: first_member[hi]]
                chunk = pl.from_arrow(every.take(pa.array(sel)))
                table = _packed_shard(chunk, first_member[lo: hi + 1] - first_member[lo], store, self.names)
            else:
                table = _unpacked_shard(pl.from_arrow(every.slice(lo, hi - lo)), store, self.names)
            del every
        finally:
            source.close()
        table = table.replace_schema_metadata(shard_metadata(self.cfg))
        shards_dir = Path(self.shards_dir)
        return write_shard(shards_dir / split, shards_dir.parent, k, table, self.cfg, compacted=True)


def write_shards_streamed(rendered: StreamedRender, shards_dir: str | Path, cfg) -> dict:
    """curate.render.shards.write_shards' files and entries from a StreamedRender, one shard
    in memory at a time. When the render ran its parts on workers (`map_parts`), the shards
    are written there too, one task per shard (ShardPart): the driver writes each split's
    shard keys (SHARD_COLS) and packing plan into the render work folder and gets back the
    entries; no token passes through it."""
    from curate.render.shards import remove_stale, shard_metadata, write_shard

    shards_dir = Path(shards_dir)
    meta = shard_metadata(cfg)
    out: dict = {}
    plan_dir = rendered.store.folder.parent / "shard-plan"
    jobs = []
    for split in SPLITS:
        sub = rendered.examples.filter(rendered.has("split", split)).select(SHARD_COLS)
        (shards_dir / split).mkdir(parents=True, exist_ok=True)
        plan = _pack_plan(sub, cfg) if cfg.pack and sub.height else None
        ranges = _shard_ranges(sub.height, cfg, plan[1] if plan is not None else None) if sub.height else []
        if rendered.map_parts is None:
            out[split] = [write_shard(shards_dir / split, shards_dir.parent, k,
                                      _shard_table(sub, rendered.store, rendered.names, plan, lo, hi)
                                      .replace_schema_metadata(meta), cfg, compacted=True)
                          for k, (lo, hi) in enumerate(ranges)]
        else:
            plan_dir.mkdir(parents=True, exist_ok=True)
            write_tokens_like(plan_dir / f"examples-{split}.arrow", sub.to_arrow(compat_level=pl.CompatLevel.oldest()))
            if plan is not None:
                with atomic_path(plan_dir / f"plan-{split}.npz") as tmp:
                    with open(tmp, "wb") as fh:
                        np.savez(fh, order=plan[0], first_member=plan[1])
            jobs += [(split, k, lo, hi) for k, (lo, hi) in enumerate(ranges)]
            out[split] = []
        del sub, plan
    if jobs:
        fn = ShardPart(str(plan_dir), [str(f) for f in rendered.store.files], rendered.names, str(shards_dir), cfg)
        for (split, _k, _lo, _hi), entry in zip(jobs, rendered.map_parts(_NoPart(), fn, list(enumerate(jobs)))):
            out[split].append(entry)
    for split in SPLITS:
        remove_stale(shards_dir / split, out[split])
    return out


def write_tokens_like(path: Path, table: pa.Table) -> None:
    """`table` as an Arrow IPC file (atomic), for workers to memory-map."""
    with atomic_path(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table.combine_chunks())
