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
from typing import Any, Callable

import polars as pl
import pyarrow as pa
import ray  # at import time, so that make_executor reports a missing `ray` extra clearly
import ray.data

from curate.pipeline.blocks import assemble_annotations, assemble_blocks, decode_state, encode_state, part_mode
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

    def close(self) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
