"""The Ray executor: the same stage code as the local executor, spread over a Ray cluster
with Ray Data, giving the same tables row for row (so the same shards and ledger).

What runs where (per stage kind):
  blocks   normalize; quality with the heuristic / fasttext / verifier scorers. The table
           is cut into Arrow blocks, `map_batches` runs `stage.process` on each block on
           a worker, the driver concatenates kept and dropped in block order
           (`preserve_order`) and merges the stats (counts summed; distribution
           summaries recomputed from the gathered table with the stage's own code).
  annotate filter, language, pii, decontaminate (FilterStage subclasses). Workers run
           `stage.annotate` per block (the expensive part: text statistics, fastText,
           regexes, n-gram joins); the driver runs the stage's own `process` on the
           concatenated annotations (`FilterStage.decide`), so the keep/drop decision
           and every statistic come from exactly the local code path. What `annotate`
           leaves on a worker's instance (hit counters, the redacted messages) comes
           back as `block_state()` and is merged on the driver by the stage's own
           `merge_block_states` (counters add, per-row columns concatenate, constants
           must agree). A costly read-only resource (decontamination's eval n-gram
           index: `shared_resource()`) is built once on the driver and broadcast
           through the object store.
  dedup    minhash: signatures and band hashes per block on workers
           (`DedupStage.minhash_block`), band buckets grouped through Ray Data's sort
           shuffle, then verification, union-find and the stage's own keep rule on the
           driver (`minhash_clusters`, `from_clusters`; curate/pipeline/ray_dedup.py).
  planned  select (without diversity), mix and exact dedup: PlannedStage's four steps.
           Workers compute per block only the key columns the decision needs (select:
           group, score, the (missing, key, id, row) order key; mix: group, task,
           units - token counts are per-row work - and the seeded order keys; exact
           dedup: the hash of the normalised text and the keep-rule keys); the driver
           concatenates them and plans with the stage's own code (select: each
           group's cutoff in that order, from its quota; mix: sizes -> `_plan` -> the
           walk -> the val rows -> the walk again, reduced to per-group and per-task
           cutoffs; exact dedup: the keep rule over the rows whose hash is shared ->
           hash -> kept row); the plan is broadcast and every block applies it to its
           own rows (select: keep at or before the cutoff; mix: copies, split; dedup:
           a join on the hash marks the dropped rows); the stage's `finish` builds
           kept, dropped and stats on the driver. `process` on a
           local executor is the same four steps over one block, so the output is
           identical by construction. select with thresholds only skips the keys pass.
  render   the renderer's per-row work (template, tokenization, masks) as blocks on
           workers (`render_blocks`); split, checks and stats on the driver.
  driver   everything else (semantic dedup, select with `diversity`, LM-scored
           quality, kinds this module does not know): the stage's own `process` on the
           whole table on the driver, logged as such. Output is identical by
           construction. select's diversity walk (Deita) is sequential by nature:
           each candidate is judged against the rows kept before it in its group, so
           it cannot be cut into blocks; semantic dedup needs every embedding of a
           cluster's neighbourhood at once (and a GPU model more than a CPU fleet).

Why the split is by kind and not only by `Stage.row_local`: row-locality makes the kept
and dropped rows block-decomposable, but not the stats (quantiles, top-k language
counts), and the manifest must be identical too. The stage APIs carry what is needed
(FilterStage's block_state / merge_block_states / decide, PlannedStage's four steps); a
stage without one runs on the driver rather than risk a different manifest.

Determinism does not depend on the number of blocks or workers: the block-wise paths rely
on `process(concat(parts)) == concat(process(part))` (blocks, annotate) or on a plan made
from all blocks' keys (planned), which tests/test_ray_executor.py checks end to end against
the local executor (shard sha256 and manifest) and tests/test_{select,mix,dedup}.py check
block by block without Ray.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import polars as pl
import pyarrow as pa
import ray  # at import time, so that make_executor reports a missing `ray` extra clearly
import ray.data

from curate.pipeline.blocks import assemble_annotations, assemble_blocks, decode_state, encode_state, merge_stats, part_mode
from curate.pipeline.ray_blocks import FAULT_ENV, from_ipc, maybe_fault, portable, to_ipc, worker_stage  # noqa: F401
from curate.stages.base import PlannedStage, Stage, StageResult

DEFAULT_BLOCK_ROWS = 50_000


def _planned_task(step: str, cls: type, config: Any, context: Any, plan_ref: Any) -> Callable[[pa.Table], pa.Table]:
    """map_batches function for a PlannedStage: `block_keys` ("keys") or `apply_plan`
    ("apply", with the plan broadcast through the object store) on one block."""

    def run(batch: pa.Table) -> pa.Table:
        maybe_fault()
        df = pl.from_arrow(batch)
        stage = worker_stage(cls, config, context)
        out = stage.block_keys(df) if step == "keys" else stage.apply_plan(df, ray.get(plan_ref))
        return pa.table({"rows": [df.height], "a": [to_ipc(out)]})

    return run


def _block_task(mode: str, cls: type, config: Any, context: Any, shared_ref: Any) -> Callable[[pa.Table], pa.Table]:
    """The map_batches function: one Arrow block in, one row out (the block's results as
    Arrow IPC bytes plus its JSON state), so any stage output schema travels unchanged."""

    def run(batch: pa.Table) -> pa.Table:
        maybe_fault()
        df = pl.from_arrow(batch)
        stage = worker_stage(cls, config, context)
        if mode == "annotate":
            if shared_ref is not None:
                stage.use_shared_resource(ray.get(shared_ref))
            out = stage.annotate(df)
            return pa.table({"rows": [df.height], "a": [to_ipc(out)], "b": [b""],
                             "state": [encode_state(stage.block_state())]})
        res = stage.process(df)
        return pa.table({"rows": [df.height], "a": [to_ipc(res.kept)], "b": [to_ipc(res.dropped)],
                         "state": [json.dumps(res.stats, default=str)]})

    return run


class RayExecutor:
    """Executor protocol (curate/pipeline/executor.py) over Ray Data.

    `address=None` starts a private local Ray instance (num_cpus from the machine, temp
    files under $RAY_TMPDIR when set); otherwise it joins that cluster ("auto", or
    "HOST:6379"). An already initialised Ray (a test fixture, a notebook) is reused and
    left running on close(). `block_rows` caps rows per block; by default the table is
    cut into about two blocks per cluster CPU, at most DEFAULT_BLOCK_ROWS rows each."""

    name = "ray"

    def __init__(self, address: str | None = None, seed: int = 0, block_rows: int | None = None,
                 num_cpus: int | None = None):
        self.seed = seed
        self.block_rows = block_rows
        self._owns = not ray.is_initialized()
        if self._owns:
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "warning",
                                      "log_to_driver": False}
            if address is None:
                kwargs["num_cpus"] = num_cpus
                if os.environ.get("RAY_TMPDIR"):
                    kwargs["_temp_dir"] = os.environ["RAY_TMPDIR"]
            ray.init(address=address, **kwargs)
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        # dedup's band buckets go through a sort shuffle: plain tasks, no aggregator
        # actors to reserve CPUs (those starved the map tasks on 1-CPU nodes).
        from ray.data.context import ShuffleStrategy

        ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
        self._ray = ray

    # ------------------------------------------------------------------ planning
    def plan(self, stage: Stage) -> str:
        """Where `stage` runs: "blocks", "annotate", "dedup" or "driver" (see module doc)."""
        kind = stage.kind
        mode = part_mode(stage)
        if mode is not None:
            return mode
        if kind == "dedup" and getattr(stage.config, "method", None) == "minhash":
            return "dedup"
        if isinstance(stage, PlannedStage) and stage.plannable():
            return "planned"
        return "driver"

    def cluster_cpus(self) -> int:
        try:
            return max(1, int(self._ray.cluster_resources().get("CPU", 1)))
        except Exception:  # noqa: BLE001 - only a sizing hint
            return 1

    def blocks(self, table: pl.DataFrame) -> list[pa.Table]:
        """Cut `table` into contiguous Arrow blocks (the row order is the output order)."""
        n = table.height
        size = self.block_rows or min(DEFAULT_BLOCK_ROWS, max(1, math.ceil(n / (2 * self.cluster_cpus()))))
        # oldest compat level: plain large_string/large_list Arrow types, which every
        # Ray Data operator handles; polars reads them back to the same dtypes.
        return [table.slice(lo, size).to_arrow(compat_level=pl.CompatLevel.oldest()) for lo in range(0, n, size)]

    def map_blocks(self, table: pl.DataFrame, fn: Callable[[pa.Table], pa.Table]) -> pa.Table:
        """Run `fn` on every block of `table` as Ray tasks, results in block order.
        Fault tolerance is Ray Data's: a map task whose worker dies is resubmitted
        (its tasks run with max_retries=-1 for system failures), and since a block's
        result depends only on the block, the retried result is the same."""
        ray = self._ray
        ds = ray.data.from_arrow(self.blocks(table))
        out = ds.map_batches(fn, batch_format="pyarrow", batch_size=None, zero_copy_batch=True)
        parts = ray.get(out.to_arrow_refs())
        return pa.concat_tables([p for p in parts if p.num_rows])

    def render_blocks(self, frame: pl.DataFrame, fn: Callable[[pa.Table], pa.Table]) -> pa.Table:
        """Rendering's per-row work (template, tokenizer, masks) as Ray tasks over blocks of
        the `messages` column, results in row order; the renderer keeps the split, the
        checks and the stats on the driver (curate.render.renderer.render_examples)."""
        if frame.height == 0:
            return fn(frame.to_arrow())
        return self.map_blocks(frame, fn)

    # ------------------------------------------------------------------ executor protocol
    def process(self, stage: Stage, table: pl.DataFrame) -> StageResult:
        where = self.plan(stage) if table.height else "driver"
        if where == "driver":
            if table.height:
                stage.context.log(f"[{stage.name}] ray: no distributed path for this stage; ran on the driver "
                                  "over the gathered table")
            return stage.process(table)
        if where == "dedup":
            from curate.pipeline.ray_dedup import ray_minhash_dedup

            return ray_minhash_dedup(self, stage, table)
        if where == "planned":
            return self._planned(stage, table)
        shared_ref = None
        if where == "annotate":
            shared = stage.shared_resource()
            if shared is not None:  # built once, broadcast: every worker reads the same object
                shared_ref = self._ray.put(shared)
        fn = _block_task(where, type(stage), stage.config, portable(stage.context), shared_ref)
        res = self.map_blocks(table, fn)
        rows = res.column("rows").to_pylist()
        if sum(rows) != table.height:
            raise RuntimeError(f"ray: stage {stage.name!r} saw {sum(rows)} of {table.height} rows")
        n_blocks = len(rows)
        a = [from_ipc(x) for x in res.column("a").to_pylist()]
        if where == "annotate":
            result = assemble_annotations(stage, table, a, [decode_state(x) for x in res.column("state").to_pylist()])
        else:
            dropped = [from_ipc(x) for x in res.column("b").to_pylist()]
            result = assemble_blocks(stage, a, dropped, [json.loads(x) for x in res.column("state").to_pylist()])
        stage.context.log(f"[{stage.name}] ray: {n_blocks} block(s) on workers ({where})")
        return result

    def _planned(self, stage: PlannedStage, table: pl.DataFrame) -> StageResult:
        """A PlannedStage: keys per block on workers, the plan on the driver from the
        concatenated keys, the plan broadcast and applied per block on workers, and the
        stage's own `finish` over the decided blocks (see PlannedStage)."""
        ctx = portable(stage.context)
        t = stage.number_rows(table)
        keys, n_blocks = None, 0
        if stage.needs_keys():
            res = self.map_blocks(t, _planned_task("keys", type(stage), stage.config, ctx, None))
            self._check_rows(stage, res, t.height)
            keys = pl.concat([from_ipc(x) for x in res.column("a").to_pylist()], how="vertical", rechunk=True)
        plan = stage.plan(keys)
        src = stage.with_keys(t, keys) if keys is not None else t
        res = self.map_blocks(src, _planned_task("apply", type(stage), stage.config, ctx, self._ray.put(plan)))
        n_blocks = self._check_rows(stage, res, t.height)
        decided = pl.concat([from_ipc(x) for x in res.column("a").to_pylist()], how="vertical", rechunk=True)
        result = stage.finish(decided, plan)
        passes = "keys, plan on the driver, apply" if keys is not None else "apply (row-local: no plan needed)"
        stage.context.log(f"[{stage.name}] ray: {n_blocks} block(s) on workers (planned: {passes})")
        return result

    @staticmethod
    def _check_rows(stage: Stage, res: pa.Table, n: int) -> int:
        rows = res.column("rows").to_pylist()
        if sum(rows) != n:
            raise RuntimeError(f"ray: stage {stage.name!r} saw {sum(rows)} of {n} rows")
        return len(rows)

    # ------------------------------------------------------------------ the parts path (issue #19)
    def map_items(self, items: list[dict], fn: Callable[[pa.Table], pa.Table]) -> list[dict]:
        """`fn` over `items` (small descriptors: part numbers, source indexes), one Ray Data
        task per item (`map_batches`, batch_size 1), results in item order. The items and
        the results are small; the data moves through the run directory, not the driver.
        A task whose worker dies is resubmitted by Ray Data (max_retries -1 for system
        failures); every write is atomic and a part's result depends only on the part, so
        the retried task rewrites the same bytes."""
        if not items:
            return []
        ds = self._ray.data.from_items(items, override_num_blocks=len(items))
        return ds.map_batches(fn, batch_size=1, batch_format="pyarrow").take_all()

    def read_parts(self, sources: list, base_dir: Path, folder: Path, batch_rows: int) -> tuple[list[dict], list[dict]]:
        """Every source read on workers (one task per source, `_read_task`) into the read
        dataset in `folder` (parts.py layout: part-IIIII.parquet, numbered in source order,
        then batch order); returns (part entries, per-source info with its quarantine
        entries: the inputs that could not be parsed, small previews, which the driver
        writes to quarantine.jsonl)."""
        from curate.contract.schema import empty_records
        from curate.pipeline.parts import part_file, write_part

        folder = Path(folder)
        got = sorted(self.map_items([{"source": i} for i in range(len(sources))],
                                    _read_task(sources, Path(base_dir), folder, batch_rows)), key=lambda r: r["source"])
        entries: list[dict] = []
        info = []
        for r in got:
            for e in json.loads(r["parts"]):  # the workers' temp names -> part numbers, in order
                os.replace(folder / "parts" / e["file"], folder / part_file(len(entries)))
                entries.append({**e, "file": part_file(len(entries))})
            cfg = sources[r["source"]]
            info.append({"name": cfg.name, "format": r["format"] or cfg.format, "files": json.loads(r["files"]),
                         "records": sum(e["rows"] for e in json.loads(r["parts"])),
                         "quarantine": json.loads(r["quarantine"])})
        if not entries:
            entries.append(write_part(folder, 0, empty_records()))
        if (folder / "parts").is_dir():
            (folder / "parts").rmdir()
        return entries, info

    def stage_parts(self, stage: Stage, src: Path, parts: list[dict], out: Path, rejects: Path,
                    part_rows: int = DEFAULT_BLOCK_ROWS) -> StageParts:
        """Run `stage` over the dataset `parts` in `src` (parts.py layout), writing its output
        dataset to `out` (part-IIIII.parquet; done.json is the caller's) and its rejects to
        the file `rejects` (see `parts_mode`). Row-local stages and the plan protocol keep
        one output part per input part, under the same number."""
        from curate.pipeline.parts import dataset_schema, offsets

        mode = parts_mode(stage)
        if mode == "gather":
            return self._gathered(stage, src, parts, out, rejects, part_rows)
        ctx = portable(stage.context)
        cls, cfg = type(stage), stage.config
        bounds = offsets(parts)
        rows_in = int(bounds[-1])
        # parts may type an all-null column Null where others type it: every worker casts
        # its part to the dataset's unified schema, as parts.iter_parts does locally
        schema = dataset_schema(src, parts) if len(parts) > 1 else None
        items = [{"i": i, "file": p["file"], "first_row": int(bounds[i])} for i, p in enumerate(parts)]
        stats_extra: dict | None = None
        if mode in ("annotate", "blocks"):
            ref = None
            if mode == "annotate":
                shared = stage.shared_resource()
                ref = self._ray.put(shared) if shared is not None else None
            res = self.map_items(items, _part_task(mode, cls, cfg, ctx, ref, src, out, schema))
        else:  # the plan protocol: keys per part -> plan on the driver -> apply per part
            keyed = self.map_items(items, _part_task("keys", cls, cfg, ctx, None, src, out, schema))
            self._check_part_rows(stage, keyed, rows_in)
            keys = pl.concat([from_ipc(r["keys"]) for r in keyed], how="vertical_relaxed", rechunk=True)
            plan = stage.plan(keys)
            del keys, keyed
            # a plan that asks for more of some rows (base.Refine: MinHash exact verification,
            # consensus): the asked parts read on the driver, one at a time
            from curate.pipeline.parts import read_part
            from curate.stages.base import complete_plan

            spans = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
            plan = complete_plan(stage, plan, spans, lambda i: read_part(src / parts[i]["file"]))
            order = getattr(plan, "order", None)
            if order is not None and order.height > 1 and not bool((order[PLAN_ROW].diff().drop_nulls() >= 0).all()):
                raise RuntimeError(f"ray: stage {stage.name!r} reorders rows across parts (Plan.order); "
                                   "the parts path writes parts in input order")
            res = self.map_items(items, _part_task("apply", cls, cfg, ctx, self._ray.put(plan), src, out, schema))
            # apply ran on copies of the plan: what it found for the report (dedup's example
            # texts) comes back in the parts' stats, merged by the stage's own rule
            merge = getattr(stage, "merge_part_stats", None)
            if callable(merge):
                merge(plan, [json.loads(r["state"]) for r in res])
            stats_extra = dict(getattr(plan, "stats", None) or {})
            del plan
        self._check_part_rows(stage, res, rows_in)
        dropped, records, copies, upsampled = {}, {}, 0, 0
        for r in res:
            dropped = _add(dropped, json.loads(r["dropped"]))
            records = _add(records, json.loads(r["records_dropped"]))
            copies += r["copies_dropped"]
            upsampled += r["upsampled"]
        if mode == "annotate":
            # the stage's own decision code over the text-free annotations of all parts,
            # with the parts' states merged: its statistics are the whole table's
            summary = pl.concat([from_ipc(r["summary"]) for r in res], how="vertical_relaxed", rechunk=True)
            stage.merge_block_states([decode_state(r["state"]) for r in res])
            stats = stage.decide(summary, summary).stats
            del summary
        elif mode == "blocks":
            kept = (pl.concat([from_ipc(r["summary"]) for r in res], how="vertical_relaxed", rechunk=True)
                    if stage.kind == "quality" else pl.DataFrame())
            stats = merge_stats(stage, kept, [json.loads(r["state"]) for r in res])
        else:
            stats = stats_extra or {}
            upsampled = int(stats.get("upsampled", upsampled) or 0)
        rej = self._merge_rejects(out, len(parts), rejects)
        stage.context.log(f"[{stage.name}] ray: {len(parts)} part(s) on workers ({mode}); "
                          "parts written by the workers")
        return StageParts(parts=[json.loads(r["part"]) for r in res], rejects=rej, rows_in=rows_in,
                          dropped=dropped, records_dropped=records, copies_dropped=copies,
                          upsampled=upsampled, stats=stats, mode=mode)

    def _merge_rejects(self, stage_dir: Path, n: int, target: Path) -> dict:
        """The parts' rejects (stage_dir/parts/rejects-IIIII.parquet) streamed into one file
        by a worker (parts.merge_parquet: fixed row groups, so the bytes do not depend on
        the parts), then the per-part files removed; returns {"file", "rows", "sha256"}."""
        from curate.pipeline.ray_blocks import rejects_part

        files = [str(rejects_part(stage_dir, i)) for i in range(n)]
        got = self.map_items([{"files": json.dumps(files)}], _merge_task(str(target)))[0]
        for f in files:
            os.unlink(f)
        (Path(stage_dir) / "parts").rmdir()
        return {"file": Path(target).name, "rows": int(got["rows"]), "sha256": got["sha256"]}

    def _gathered(self, stage: Stage, src: Path, parts: list[dict], out: Path, rejects: Path,
                  part_rows: int) -> StageParts:
        """A stage with no parts path (minhash/semantic dedup, consensus, select's diversity
        walk, LM-scored quality, a PlannedStage not yet on the keys -> plan -> apply
        protocol): the driver reads its input whole and runs the in-memory Ray path
        (`process`: MinHash signatures and planned keys still on workers), then writes the
        output in `part_rows` windows. Logged: this is where the driver holds a table."""
        from curate.contract.ledger import REASON, drop_counts, reason_counts
        from curate.pipeline.parts import read_dataset, write_part
        from curate.pipeline.ray_blocks import rejects_part, write_rejects_part

        table = read_dataset(src, parts)
        if table.height:
            stage.context.log(f"[{stage.name}] ray: no parts path for this stage; its input "
                              f"({table.height:,} rows) is gathered on the driver")
        result = self.process(stage, table)
        n = result.kept.height
        kept = [write_part(out, k, result.kept.slice(lo, part_rows))
                for k, lo in enumerate(range(0, max(n, 1), part_rows))]
        write_rejects_part(rejects_part(out, 0), stage.name, result.dropped)
        rej = self._merge_rejects(out, 1, rejects)
        records, copies = drop_counts(result.dropped, REASON)
        return StageParts(parts=kept, rejects=rej, rows_in=table.height, dropped=reason_counts(result.dropped),
                          records_dropped=records, copies_dropped=copies,
                          upsampled=int(result.stats.get("upsampled", 0) or 0), stats=result.stats, mode="gather")

    @staticmethod
    def _check_part_rows(stage: Stage, res: list[dict], n: int) -> None:
        got = sum(r["rows"] for r in res)
        if got != n:
            raise RuntimeError(f"ray: stage {stage.name!r} saw {got} of {n} rows")

    def close(self) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()


# ============================================================================ the parts path
# Issue #19: no driver that holds the table. Stage outputs are parts in the run directory
# (curate/pipeline/ray_blocks.py: `write_part`, one file per input part); a stage's workers
# read their input part from the run directory, write their output part and rejects part
# next to it, and send the driver only counts, part names, sha256, and - where the
# stage's statistics are over the whole table - the part's rows without their text
# (`without_text`: statistic columns, reasons, groups, scores; ~10-100 B a row, never
# messages, meta, origin or id). See docs/ray.md, "The parts path".

PLAN_ROW = "_row"  # the global input position the whole-table protocol's keys carry


def has_plan_protocol(stage: Stage) -> bool:
    """True for a stage with the keys -> plan -> apply protocol of curate/stages/base.py
    (`keys(part)`, `plan(keys) -> Plan`, `apply(part, plan, first_row)`) whose
    configuration can be decided from keys (`plannable()`). base.has_plan decides where
    it exists (the protocol's own rule); the older four-step PlannedStage (`block_keys`,
    `plan(keys)`, `apply_plan`, `finish`) has no `keys`/`apply` and is not on it."""
    from curate.stages import base

    rule = getattr(base, "has_plan", None)
    if callable(rule):
        return bool(rule(stage, refine=True))  # the parts path completes refined plans
    if not all(callable(getattr(stage, m, None)) for m in ("keys", "plan", "apply")):
        return False
    return bool(stage.plannable()) if callable(getattr(stage, "plannable", None)) else True


def parts_mode(stage: Stage) -> str:
    """How a stage runs on parts: "annotate" / "blocks" (row-local: one task per part,
    statistics merged on the driver from the text-free rows), "plan" (keys per part on
    workers, the plan on the driver, apply per part on workers) or "gather" (the driver
    reads the stage's input whole and runs the in-memory Ray path: `process`)."""
    mode = part_mode(stage)
    if mode is not None:
        return mode
    return "plan" if has_plan_protocol(stage) else "gather"


def _read_task(sources: list, base_dir: Path, folder: Path, batch_rows: int) -> Callable[[pa.Table], pa.Table]:
    """map_batches function: one row per source index; the worker streams the source
    (`iter_source`, at most `batch_rows` input rows held) and writes each batch to
    `folder/parts/read-SSS-BBBBB.parquet`; the driver renames them to part numbers. One
    task per source: a source's files are read in order by one task, because auto
    format detection and a task template's record index carry over from file to file."""
    from curate.contract.atomic import sha256_file, write_parquet
    from curate.read.readers import iter_source

    def run(batch: pa.Table) -> pa.Table:
        out = []
        for si in batch.column("source").to_pylist():
            maybe_fault()
            stream = iter_source(sources[si], base_dir, batch_rows)
            parts, quarantine = [], []
            for table, q in stream:
                quarantine += q
                if table.height:
                    path = folder / "parts" / f"read-{si:03d}-{len(parts):05d}.parquet"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_parquet(path, table)
                    parts.append({"file": path.name, "rows": table.height, "sha256": sha256_file(path)})
            out.append({"source": si, "parts": json.dumps(parts), "format": stream.format or "",
                        "files": json.dumps(stream.files),
                        "quarantine": json.dumps(quarantine, ensure_ascii=False, default=str)})
        return pa.Table.from_pylist(out)

    return run


def _merge_task(target: str) -> Callable[[pa.Table], pa.Table]:
    def run(batch: pa.Table) -> pa.Table:
        from curate.pipeline.parts import merge_parquet

        got = merge_parquet([Path(f) for f in json.loads(batch.column("files")[0].as_py())], Path(target))
        return pa.table({"rows": [got["rows"]], "sha256": [got["sha256"]]})

    return run


def _part_task(mode: str, cls: type, config: Any, context: Any, ref: Any, src: Path, out: Path,
               schema: dict | None) -> Callable[[pa.Table], pa.Table]:
    """map_batches function over part descriptors (i, file, first_row): read the part from
    the run directory, run the stage's row-local step on it, write the output part and
    the rejects part, return counts, sha256 and the text-free summary the driver needs."""
    from curate.contract.ledger import REASON, drop_counts, reason_counts
    from curate.pipeline.parts import read_part, write_part
    from curate.pipeline.ray_blocks import rejects_part, state_without_rows, without_text, write_rejects_part

    def run(batch: pa.Table) -> pa.Table:
        rows = []
        for d in batch.to_pylist():
            maybe_fault()
            part = read_part(src / d["file"])
            if schema is not None and dict(part.schema) != schema:
                part = part.cast(schema)
            stage = worker_stage(cls, config, context)
            summary, state = b"", ""
            if mode == "annotate":
                if ref is not None:
                    stage.use_shared_resource(ray.get(ref))
                annotated = stage.annotate(part)
                state = encode_state(state_without_rows(stage.block_state()))
                res = stage.decide(part, annotated)  # row-local: this part's kept and dropped
                summary = to_ipc(without_text(annotated))
            elif mode == "blocks":
                res = stage.process(part)
                state = json.dumps(res.stats, default=str)
                if stage.kind == "quality":  # its score summary is over the whole table
                    summary = to_ipc(without_text(res.kept))
            elif mode == "keys":
                keys = stage.keys(part)
                if keys.height != part.height:
                    raise RuntimeError(f"stage {stage.name!r}: keys() gave {keys.height} rows for a part of "
                                       f"{part.height}")
                # `_row` added last, as base.run_planned does (the local reference)
                keys = keys.with_columns(pl.int_range(d["first_row"], d["first_row"] + part.height,
                                                      dtype=pl.UInt64).alias(PLAN_ROW))
                rows.append({"i": d["i"], "rows": part.height, "keys": to_ipc(keys)})
                continue
            else:  # "apply"
                res = stage.apply(part, ray.get(ref), d["first_row"])
                state = json.dumps(res.stats or {}, default=str)  # for merge_part_stats
            entry = write_part(out, d["i"], res.kept)
            write_rejects_part(rejects_part(out, d["i"]), stage.name, res.dropped)
            records, copies = drop_counts(res.dropped, REASON)
            rows.append({"i": d["i"], "rows": part.height, "part": json.dumps(entry),
                         "dropped": json.dumps(reason_counts(res.dropped)), "records_dropped": json.dumps(records),
                         "copies_dropped": copies, "state": state, "summary": summary,
                         "upsampled": int((res.stats or {}).get("upsampled", 0) or 0)})
        return pa.Table.from_pylist(rows)

    return run


@dataclass
class StageParts:
    """One finished stage on parts, as the driver knows it: the parts (in order) with rows
    and sha256, the rejects parts, the drop counts and the stage's statistics."""

    parts: list[dict]        # parts.py PART_ENTRY: file, rows, sha256
    rejects: dict            # the merged rejects file: file, rows, sha256
    rows_in: int
    dropped: dict            # reason -> rows (copies included), as done.json records it
    records_dropped: dict    # reason -> records (upsampled copies not counted)
    copies_dropped: int
    upsampled: int
    stats: dict
    mode: str

    @property
    def rows_out(self) -> int:
        return sum(p["rows"] for p in self.parts)


def _add(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out


def run_on_parts(cfg: Any, out_dir: Path, executor: "RayExecutor", fresh: bool = False, progress: Any = None,
                 part_rows: int | None = None) -> dict:
    """The curation pipeline of `cfg` on Ray with no driver that holds the table: sources
    read on workers into parts, every stage on parts (`RayExecutor.stage_parts`), each
    stage's `done.json` listing its parts (curate/pipeline/parts.py layout); then render
    and shards. Returns the manifest (ledger, stage reports, shards), also written to
    RUN/manifest.json.

    What still goes through the driver: the quarantine entries; per stage, the text-free
    rows of row-local stages whose statistics are over the whole table (filter,
    language, pii, decontaminate, quality) and the keys of the plan protocol; the whole
    input of a stage with no parts path (`parts_mode` "gather"); and the final stage's
    output for render, whose split, per-id de-duplication, sort, packing and shard
    writing are global (curate.render.renderer.render_examples; tokenization is on the
    workers). Not here: stage resume (fingerprints, part-level resume: the streaming
    runner's), `--limit`, export and the report. This is the executor half of issue #19:
    the streaming runner (curate/pipeline/runner.py) is meant to call `read_parts` and
    `stage_parts` in place of its own per-part loop when the executor is Ray."""
    from curate.contract.atomic import write_json, write_text
    from curate.contract.ledger import Ledger
    from curate.contract.progress import Progress
    from curate.pipeline.checks import check_names
    from curate.pipeline.config import pipeline_inputs, source_roots
    from curate.pipeline.parts import read_dataset
    from curate.pipeline.rundir import RunDir, check_output_dir
    from curate.stages import stage_class
    from curate.stages.base import StageContext

    progress = progress or Progress(enabled=False)
    part_rows = part_rows or cfg.run.part_rows
    out = check_output_dir(cfg.output_dir(out_dir), pipeline_inputs(cfg), source_roots(cfg))
    rd = RunDir.open(out, fresh=fresh, log=progress.log)

    def fresh_path(rel: str) -> Path:
        if rd.owns(rel) and ((out / rel).exists() or (out / rel).is_symlink()):
            rd.remove(rel)
        return rd.own(rel)

    ledger = Ledger()
    read_dir = fresh_path("stages/00-read")
    read_dir.mkdir(parents=True, exist_ok=True)
    parts, reads = executor.read_parts(cfg.sources, cfg.base_dir, read_dir, part_rows)
    quarantine = [q for r in reads for q in r.pop("quarantine")]
    write_text(rd.own("quarantine.jsonl"),
               "".join(json.dumps(q, ensure_ascii=False, sort_keys=True) + "\n" for q in quarantine))
    rows = sum(p["rows"] for p in parts)
    write_json(read_dir / "done.json", {"rows_out": rows, "quarantined": len(quarantine), "parts": parts,
                                        "sources": reads})
    ledger.read, ledger.quarantined = rows + len(quarantine), len(quarantine)
    groups = read_dataset(read_dir, parts, columns=["task", "source"])  # two short columns, for config checks
    check_names(cfg.stages, {c: sorted(groups[c].drop_nulls().unique().to_list()) for c in ("task", "source")},
                progress.log)
    del groups

    src, reports = read_dir, []
    for index, stage_cfg in enumerate(cfg.stages, start=1):
        name = getattr(stage_cfg, "name", None) or stage_cfg.kind
        dirname = f"{index:02d}-{name}"
        sdir, rpath = fresh_path(f"stages/{dirname}"), fresh_path(f"rejects/{dirname}.parquet")
        sdir.mkdir(parents=True, exist_ok=True)
        context = StageContext(run_dir=out, config_dir=cfg.base_dir, seed=cfg.run.seed, stage_dir=sdir,
                               log=progress.log, render=cfg.render)
        stage = stage_class(stage_cfg.kind)(stage_cfg, context)
        res = executor.stage_parts(stage, src, parts, sdir, rpath, part_rows)
        if res.rows_in + res.upsampled != res.rows_out + sum(res.dropped.values()):
            raise RuntimeError(f"stage {name!r}: {res.rows_in} rows in, {res.upsampled} added by upsampling, but "
                               f"{res.rows_out} kept + {sum(res.dropped.values())} dropped")
        stats = json.loads(json.dumps(res.stats, default=str))
        write_json(sdir / "done.json", {"name": name, "kind": stage_cfg.kind, "rows_in": res.rows_in,
                                        "rows_out": res.rows_out, "dropped": res.dropped,
                                        "upsampled": res.upsampled, "stats": stats, "parts": res.parts,
                                        "rejects": res.rejects, "ray": res.mode})
        added = res.rows_out - res.rows_in + sum(res.records_dropped.values()) + res.copies_dropped
        ledger.drop(name, res.records_dropped)
        if added:
            ledger.upsampled[name] = added
        if res.copies_dropped:
            ledger.copies_dropped[name] = res.copies_dropped
        reports.append({"index": index, "name": name, "kind": stage_cfg.kind, "rows_in": res.rows_in,
                        "rows_out": res.rows_out, "dropped": res.dropped, "upsampled": res.upsampled,
                        "stats": stats, "output": f"stages/{dirname}", "rejects": f"rejects/{dirname}.parquet",
                        # the runner's words: "parts" = row-local, "keys" = planned from keys, "whole-table" = gathered
                        "memory": {"gather": "whole-table", "plan": "keys"}.get(res.mode, "parts")})
        src, parts = sdir, res.parts

    manifest: dict[str, Any] = {"seed": cfg.run.seed, "sources": reads, "stages": reports,
                                "quarantine": {"file": "quarantine.jsonl", "rows": ledger.quarantined}}
    final_rows = sum(p["rows"] for p in parts)
    if cfg.render is not None:
        from curate.contract.ledger import REASON, drop_counts, reason_counts, write_rejects
        from curate.render.renderer import render_examples
        from curate.render.shards import token_counts, write_shards

        table = read_dataset(src, parts)  # render is global: see the docstring
        rendered = render_examples(table, cfg.render, cfg.base_dir, cfg.run.seed, map_blocks=executor.render_blocks)
        del table
        write_rejects(fresh_path("rejects/render.parquet"), "render", rendered.dropped)
        records, copies = drop_counts(rendered.dropped, REASON)
        ledger.drop("render", records)
        if copies:
            ledger.copies_dropped["render"] = copies
        shards = write_shards(rendered.examples, fresh_path("shards"), cfg.render)
        manifest["shards"] = {k: v for k, v in shards.items() if k in ("train", "val")}
        manifest["tokens"] = token_counts(rendered.examples)
        manifest["render"] = {"dropped": reason_counts(rendered.dropped), "stats": rendered.stats}
        final_rows = rendered.examples.height
    ledger.kept = final_rows - ledger.copies_kept
    manifest["ledger"] = ledger.as_dict()
    if not ledger.reconciles():
        raise RuntimeError(f"ledger does not reconcile: {manifest['ledger']}")
    write_json(rd.own("manifest.json"), manifest)
    return manifest
