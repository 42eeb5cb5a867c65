"""The Ray executor: the local streaming runner's stages, spread over a Ray cluster, with
no driver that holds the table (issue #19). `curate run --executor ray` is the same runner
(curate/pipeline/runner.py) with this executor: the runner hands it one stage at a time
(`run_stage`, the hook the local executor has too) with the stage's input and output
folders in the run directory, and the same parts layout, done.json, rejects, ledger,
resume, `--limit`, export and report follow, written by the runner.

What runs where (per stage; the manifest entry's `memory` is the local executor's word):
  read      on workers (`read_sources`, curate/pipeline/ray_read.py): the driver plans
            pieces from file metadata and newline counts (curate/read/ranges.py), one
            task per piece parses and normalises it with the local reader's code and
            writes its records to RUN/read-work, then one task per part cuts exactly the
            local executor's parts (`part_rows` rows across pieces, files and sources);
            the driver writes quarantine.jsonl in input order from the pieces' results and
            applies `--limit`'s sample from 8-byte keys per record.
  parts     row-local stages (curate/pipeline/blocks.py `part_mode`: normalize, pii,
            filter, language, decontaminate, quality with a local scorer): one Ray task
            per input part runs `stage_steps.row_local_part` - the local executor's own
            per-part function - on a worker: it reads the part from the run directory,
            writes the output part, its rejects, its small columns (`light`: no
            `messages`/`meta`) and its record (parts.StageProgress). The driver gets a
            part record back (file names, sha256, the part's JSON stats or annotation
            state); then one more task, on a worker, runs `stage_steps.row_local_output`
            (the statistics by the stage's own code over the small columns of all parts,
            as locally) and returns the stage's output record and what the stage logged
            (replayed on the driver's log): the driver never holds a row's columns.
            Parts an earlier run finished (their records and files match) are not
            resubmitted: resume inside a stage works as with the local executor, across
            executors.
  keys      planned stages (`base.has_plan(refine=True)`: dedup (exact, MinHash either
            way of verifying, semantic), consensus, select without diversity, mix): `keys` per part
            on workers (the part read on the worker, `_row` added), each part's keys
            written by its worker to the stage's progress folder (Arrow IPC); then ONE
            task on a worker (`_plan_task`) takes them one part at a time through
            `stage_steps.hold_keys` - the local executor's own path: a stage with
            `spill_keys` (dedup) spills each part's keys to disk and plans from the spill
            in bounded steps; the others' keys (select: scores; mix: groups; semantic
            dedup: embeddings, which its plan needs at once) are concatenated, as locally
            - and makes one `plan`. A plan that asks for a second pass (base.Refine:
            MinHash's exact verification, consensus) gets each pass's `refine_keys` from
            further tasks, one per part holding an asked row, submitted by the plan's
            task (`_RefineOnWorkers`, through `complete_plan`'s own loop). The plan and
            the output positions stay in the object store: the driver passes their
            references to `apply` per part on workers (`stage_steps.apply_part`) and to
            one last task (`_finish_task`: `planned_output`, which merges what apply
            found, `merge_part_stats`, and, when the plan moves rows across parts, reads
            the output back in windows, as locally). The driver holds part records,
            references and the stage's statistics; never keys, a plan or a row.
  whole     any other stage (select's diversity walk, LM-scored quality):
            `stage_steps.run_whole`, the local fallback - the input read whole on the
            driver, logged, `memory = "whole-table"` - with `process` below (MinHash,
            should it come here: its signatures and band buckets on workers,
            curate/pipeline/ray_dedup.py; the others the stage's own `process`).
  render    pass 2 of the streamed render (curate/render/stream.py) one task per part
            (`render_parts`): the worker reads the part, renders and tokenizes its
            first-of-id rows, writes their token file into RUN/render-work and returns
            small per-row facts (32-bit counts); its render rejects, one task per part
            holding a dropped id. The split, first-of-id, packing plan and shard writing
            stay on the driver (global by nature) over compact per-row keys: the id
            string, source/task/split as UInt32 codes (stream.Codes), the facts; a shard
            gathers its members' tokens from the token files (one shard at a time: bounded,
            not growing with the input), never message text.
  rejects   `write_rejects`: a stage's rejects merged into one file in a worker task
            (`merge_rejects`, the runner's merge, same bytes); the runner calls it at its
            two merges (stage rejects, render rejects) where the executor has it.

Output identity with the local executor holds by construction: the per-part functions
are the local executor's, each part's result depends only on the part (and the plan), the
runner writes everything else. Parts, rejects, shards, ledger and manifest (but the
config's `run.executor`) are the same bytes (tests/test_ray_executor.py).

Workers write into the run directory, so it must be on a file system every node sees at
the same path (one machine: always; a cluster: NFS or the like). Every write is atomic
(temp file, fsync, rename): a task that Ray retries after its worker died rewrites the
same bytes, and a half-written part is never seen under its name.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl
import pyarrow as pa
import ray  # at import time, so that make_executor reports a missing `ray` extra clearly
import ray.data

from curate.contract.atomic import write_bytes
from curate.pipeline import parts as P
from curate.pipeline.blocks import part_mode
from curate.pipeline.stage_steps import (StageJob, StageOutput, apply_part, hold_keys, part_keys, plan_positions,
                                         planned_output, resumed_part, row_local_output, row_local_part, run_whole)
from curate.pipeline.ray_blocks import (FAULT_ENV, from_ipc, maybe_fault, portable, quiet, to_ipc,  # noqa: F401
                                         worker_stage)
from curate.stages.base import Refine, Stage, StageResult, complete_plan, has_plan

DEFAULT_BLOCK_ROWS = 50_000
KEYS_DIR = "keys"  # in a planned stage's progress folder: the workers' keys, one Arrow file a part


def _row_local_task(mode: str, cls: type, config: Any, context: Any, ref: Any, progress: P.StageProgress,
                    in_dir: Path) -> Callable[[pa.Table], pa.Table]:
    """map_batches function over part descriptors (i, file, rows): the local executor's
    `row_local_part` on a worker; returns the part's record as JSON."""

    def run(batch: pa.Table) -> pa.Table:
        out = []
        for d in batch.to_pylist():
            maybe_fault()
            worker = worker_stage(cls, config, context)
            if ref is not None:
                worker.use_shared_resource(ray.get(ref))
            # the fault hook again between the part's first write and its record: a worker
            # killed there leaves a partial part behind, which the retried task rewrites
            hit = row_local_part(worker, mode, progress, in_dir, d["i"], d, before_save=maybe_fault)
            out.append({"i": d["i"], "hit": json.dumps(hit)})
        return pa.Table.from_pylist(out)

    return run


def _keys_task(cls: type, config: Any, context: Any, in_dir: Path, schema: dict | None,
               keys_dir: Path) -> Callable[[pa.Table], pa.Table]:
    """A planned stage's keys of each part (`part_keys`, `_row` set) written by the worker to
    `keys_dir` (Arrow IPC, atomic); the driver gets back the file's name and the row count."""
    def run(batch: pa.Table) -> pa.Table:
        out = []
        for d in batch.to_pylist():
            maybe_fault()
            part = _read(in_dir, d["file"], schema)
            keys = part_keys(worker_stage(cls, config, context), part, d["first_row"])
            name = f"keys-{d['i']:05d}.arrow"
            write_bytes(Path(keys_dir) / name, to_ipc(keys))
            out.append({"i": d["i"], "rows": part.height, "file": name})
        return pa.Table.from_pylist(out)

    return run


def _refine_part(cls: type, config: Any, context: Any, in_dir: Path, file: str, rows: bytes, first_row: int,
                 ask: str) -> bytes:
    """`refine_keys` of one part's asked rows on a worker (the part read there): what a
    plan's second pass needs (MinHash's shingle sets, consensus's word sets), not text."""
    maybe_fault()
    part = P.read_part(Path(in_dir) / file)
    want = np.frombuffer(rows, dtype=np.int64)
    return to_ipc(worker_stage(cls, config, context).refine_keys(part, want, first_row, ask))


class _RefineOnWorkers:
    """The stage as `base.complete_plan` sees it, with each pass's `refine_keys` computed
    beforehand on workers, one task per part that holds an asked row: complete_plan's own
    loop (its checks, `_row`, `finish_plan`, the next pass) runs unchanged in the plan's
    task (`_plan_task`), which holds one pass's answers (the stage bounds a pass), never a
    part."""

    def __init__(self, stage: Stage, fetch: Callable[[Refine], dict[int, pl.DataFrame]]):
        self.stage, self.fetch, self.got = stage, fetch, {}
        self.name = stage.name

    def prefetch(self, plan: Any) -> Any:
        if isinstance(plan, Refine):
            self.got = self.fetch(plan)
        return plan

    def refine_keys(self, i: int, rows: np.ndarray, first_row: int, ask: str = "") -> pl.DataFrame:
        return self.got.pop(i)  # complete_plan's `read(i)` is the part's number here

    def finish_plan(self, refine: Refine, extra: pl.DataFrame | None) -> Any:
        return self.prefetch(self.stage.finish_plan(refine, extra))


def _refine_on_workers(cls: type, config: Any, context: Any, job: StageJob, bounds: np.ndarray,
                       passes: list[int]) -> Callable[[Refine], dict[int, pl.DataFrame]]:
    """A plan's second pass (base.Refine) as Ray tasks, one per part that holds an asked
    row, submitted from the plan's task (its CPU is lent back while it waits in ray.get);
    each part's answers kept as they arrive, in part order."""
    task = ray.remote(num_cpus=1, max_retries=-1)(_refine_part)

    def fetch(refine: Refine) -> dict[int, pl.DataFrame]:
        rows = np.asarray(refine.rows, dtype=np.int64)
        cuts = np.searchsorted(rows, np.asarray(bounds, dtype=np.int64), side="left")
        refs = {i: task.remote(cls, config, context, job.in_dir, job.in_entries[i]["file"],
                               rows[cuts[i]:cuts[i + 1]].tobytes(), int(bounds[i]), refine.ask)
                for i in range(len(job.in_entries)) if cuts[i + 1] > cuts[i]}
        passes.append(len(rows))
        return {i: from_ipc(ray.get(ref)) for i, ref in refs.items()}

    return fetch


def _plan_task(cls: type, config: Any, context: Any, job: StageJob, keyed: list[str]) -> tuple[Any, Any, dict]:
    """A planned stage's plan on a worker, from the key files its keys tasks wrote: the
    local executor's own steps (`hold_keys`: dedup spills each part's keys and plans from
    the spill; `plan`; `complete_plan`'s loop with each pass's `refine_keys` on further
    workers; `plan_positions`). Returned as three objects the driver only passes on by
    reference (the plan, the output positions, a small record: where applied parts go,
    what the stage logged, the passes' sizes), so the driver never holds the keys nor the
    plan: its memory stays flat in the rows. The price: the plan's memory is a worker's
    (one process, as locally; the task runs with max_calls=1, so the process exits and
    gives it back), and a pass's tasks are submitted from that worker."""
    logs: list[str] = []
    stage = worker_stage(cls, config, replace(context, log=logs.append))
    keys_dir = job.progress.folder / KEYS_DIR
    keys = hold_keys(stage, job, (pl.read_ipc(keys_dir / f) for f in keyed))
    shutil.rmtree(keys_dir)
    plan = stage.plan(keys)
    del keys
    bounds = P.offsets(job.in_entries)
    spans = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
    passes: list[int] = []
    proxy = _RefineOnWorkers(stage, _refine_on_workers(cls, config, context, job, bounds, passes))
    plan = complete_plan(proxy, proxy.prefetch(plan), spans, lambda i: i)
    positions, target = plan_positions(plan, job)
    return plan, positions, {"target": str(target), "logs": logs, "passes": passes}


def _finish_task(cls: type, config: Any, context: Any, plan: Any, job: StageJob, entries: list[dict],
                 part_stats: list[dict], target: str) -> tuple[StageOutput, list[str]]:
    """`planned_output` on a worker: the parts' stats merged into the plan's, and rows a
    plan moved across parts read back in output order (text: never on the driver)."""
    logs: list[str] = []
    stage = worker_stage(cls, config, replace(context, log=logs.append))
    return planned_output(stage, plan, job, entries, part_stats, Path(target)), logs


def _stats_task(cls: type, config: Any, context: Any, mode: str, progress: P.StageProgress,
                hits: list[dict]) -> tuple[StageOutput, list[str]]:
    """A row-local stage's statistics (`row_local_output`: the stage's own code over every
    part's small columns) on a worker, with what the stage logged while computing them."""
    logs: list[str] = []
    worker = worker_stage(cls, config, replace(context, log=logs.append))
    return row_local_output(worker, mode, progress, hits), logs


def _apply_task(cls: type, config: Any, context: Any, plan_ref: Any, pos_ref: Any, in_dir: Path,
                schema: dict | None, progress: P.StageProgress, target: Path) -> Callable[[pa.Table], pa.Table]:
    def run(batch: pa.Table) -> pa.Table:
        out = []
        plan = ray.get(plan_ref)
        positions = ray.get(pos_ref) if pos_ref is not None else None
        for d in batch.to_pylist():
            maybe_fault()
            part = _read(in_dir, d["file"], schema)
            entry, st = apply_part(worker_stage(cls, config, context), plan, part, d["first_row"], d["i"],
                                   progress, target, positions)
            out.append({"i": d["i"], "rows": part.height, "entry": json.dumps(entry),
                        "stats": json.dumps(st) if st is not None else ""})
        return pa.Table.from_pylist(out)

    return run


# the runner's merge of a stage's rejects (same bytes), run by `write_rejects` in a worker task
merge_rejects = P.merge_rejects


def _read(in_dir: Path, file: str, schema: dict | None) -> pl.DataFrame:
    """One input part, cast to the dataset's unified schema (as parts.iter_parts does)."""
    df = P.read_part(Path(in_dir) / file)
    return df.cast(schema) if schema is not None and dict(df.schema) != schema else df


class RayExecutor:
    """Executor protocol (curate/pipeline/executor.py) over Ray (see the module doc).

    `address=None` starts a private local Ray instance (num_cpus from the machine, temp
    files under $RAY_TMPDIR when set); otherwise it joins that cluster ("auto", or
    "HOST:6379"). An already initialised Ray (a test fixture, a notebook) is reused and
    left running on close(). `block_rows` caps rows per block of the in-memory paths
    (MinHash signatures; `render_blocks`, for render_examples: the runner's render uses
    `render_parts`); by default about two blocks per cluster CPU, at most
    DEFAULT_BLOCK_ROWS rows each."""

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
        # Ray Data logs every dataset's start and end at INFO: one pair per stage and pass
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        # dedup's band buckets go through a sort shuffle: plain tasks, no aggregator
        # actors to reserve CPUs (those starved the map tasks on 1-CPU nodes).
        from ray.data.context import ShuffleStrategy

        ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
        self._ray = ray

    def cluster_cpus(self) -> int:
        try:
            return max(1, int(self._ray.cluster_resources().get("CPU", 1)))
        except Exception:  # noqa: BLE001 - only a sizing hint
            return 1

    # ------------------------------------------------------------------ in-memory blocks
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
        ds = self._ray.data.from_arrow(self.blocks(table))
        out = ds.map_batches(fn, batch_format="pyarrow", batch_size=None, zero_copy_batch=True)
        parts = self._ray.get(out.to_arrow_refs())
        return pa.concat_tables([p for p in parts if p.num_rows])

    def render_blocks(self, frame: pl.DataFrame, fn: Callable[[pa.Table], pa.Table]) -> pa.Table:
        """Rendering's per-row work (template, tokenization, masks) as Ray tasks over blocks of
        the `messages` column, results in row order; the renderer keeps the split, the
        checks and the stats on the driver (curate.render.renderer.render_examples)."""
        if frame.height == 0:
            return fn(frame.to_arrow())
        return self.map_blocks(frame, fn)

    def render_parts(self, parts: Any, fn: Callable, args: list[tuple[int, Any]]) -> list[Any]:
        """`fn(k, part k, arg)` for each `(k, arg)`, one Ray task each, results in order
        (curate/render/stream.py `_render_on_workers`): the worker reads part `k` from the
        run directory (`parts.read(k)`); render's pass 2 (RenderPart: tokens written into
        the run's render work folder, small per-row facts back) and its rejects
        (RejectPart). The runner's render calls `render_streamed` instead, whose actor uses
        the same tasks (ray_render.map_parts)."""
        from curate.pipeline.ray_render import map_parts

        return map_parts(parts, fn, args)

    def render_streamed(self, parts: Any, columns: list[str], cfg, base_dir, seed: int, work_dir: Path,
                        reject_dir: Path) -> Any:
        """The runner's render with its per-row state (keys, split, facts, examples, packing
        plans) in one actor on the cluster and the per-part and per-shard work in tasks
        (curate/pipeline/ray_render.py): returns what the runner reads of it."""
        from curate.pipeline.ray_render import RemoteRender

        return RemoteRender(parts, columns, cfg, base_dir, seed, work_dir, reject_dir)

    def map_items(self, items: list[dict], fn: Callable[[pa.Table], pa.Table],
                  convert: Callable[[dict], dict] | None = None) -> list[dict]:
        """`fn` over `items` (small descriptors: part numbers and files), one Ray Data task
        per item (`map_batches`, batch_size 1), results in item order, each passed through
        `convert` as it arrives (the results stream in a block at a time: the driver holds
        the converted results and one block, not every block beside them). The items and
        the results are small; the data moves through the run directory, not the driver. A
        task whose worker dies is resubmitted by Ray Data (max_retries -1 for system
        failures); every write is atomic and a part's result depends only on the part,
        so the retried task rewrites the same bytes."""
        if not items:
            return []
        ds = self._ray.data.from_items(items, override_num_blocks=len(items))
        got = [convert(dict(r)) if convert is not None else dict(r)
               for r in ds.map_batches(fn, batch_size=1, batch_format="pyarrow").iter_rows()]
        return sorted(got, key=lambda r: r["i"])

    # ------------------------------------------------------------------ the runner's hooks
    def write_rejects(self, target: Path, items: list) -> dict:
        """`merge_rejects(target, items)` in one Ray task on a worker (the files are in the
        run directory, the few frames - a part's empty rejects, the schema - go with the
        task): the merged rejects file and its {"rows", "sha256"}; no rejected row's text
        passes through the driver. Retried on a worker's death (the write is atomic)."""
        task = self._ray.remote(num_cpus=1, max_retries=-1)(merge_rejects)
        return self._ray.get(task.remote(Path(target), list(items)))

    def read_sources(self, cfg, folder: Path, work: Path, qf, part_rows: int, limit: int | None, log) -> dict:
        """The runner's read on workers: the local read's parts, quarantine, names and counts
        (curate/pipeline/ray_read.py)."""
        from curate.pipeline.ray_read import read_on_workers

        return read_on_workers(self, cfg, folder, work, qf, part_rows, limit, log)

    def run_stage(self, stage: Stage, job: StageJob) -> StageOutput:
        """One stage of the streaming runner on the cluster (see the module doc): row-local
        stages and planned stages on parts, on workers; any other stage the local
        whole-table fallback, with `process` below."""
        mode = part_mode(stage)
        if mode is not None:
            return self._row_local(stage, job, mode)
        if has_plan(stage, refine=True):
            return self._planned(stage, job)
        return run_whole(self, stage, job)

    def _row_local(self, stage: Stage, job: StageJob, mode: str) -> StageOutput:
        hits: dict[int, dict] = {}
        todo = []
        for i, e in enumerate(job.in_entries):
            hit = resumed_part(job.progress, i, e)
            if hit is not None:
                hits[i] = hit
            else:
                todo.append({"i": i, "file": e["file"], "rows": int(e["rows"])})
        ref = None
        if mode == "annotate" and todo:
            shared = stage.shared_resource()  # built once on the driver, broadcast
            ref = self._ray.put(shared) if shared is not None else None
        fn = _row_local_task(mode, type(stage), stage.config, portable(stage.context), ref, job.progress, job.in_dir)
        for r in self.map_items(todo, fn):
            hits[r["i"]] = json.loads(r["hit"])
        if sorted(hits) != list(range(len(job.in_entries))):
            raise RuntimeError(f"ray: stage {stage.name!r} finished {len(hits)} of {len(job.in_entries)} parts")
        resumed = len(job.in_entries) - len(todo)
        job.log(f"[{stage.name}] ray: {len(todo)} part(s) on workers ({mode})"
                + (f", {resumed} resumed" if resumed else ""))
        # the statistics over every row's small columns on a worker, not the driver
        task = self._ray.remote(num_cpus=1, max_retries=-1)(_stats_task)
        out, logs = self._ray.get(task.remote(type(stage), stage.config, portable(stage.context), mode, job.progress,
                                              [hits[i] for i in range(len(job.in_entries))]))
        self._replay(stage, logs)
        return out

    def _planned(self, stage: Stage, job: StageJob) -> StageOutput:
        ctx, cls, cfg = portable(stage.context), type(stage), stage.config
        bounds = P.offsets(job.in_entries)
        rows_in = int(bounds[-1])
        schema = P.dataset_schema(job.in_dir, job.in_entries) if len(job.in_entries) > 1 else None
        items = [{"i": i, "file": e["file"], "first_row": int(bounds[i])} for i, e in enumerate(job.in_entries)]
        keys_dir = job.progress.folder / KEYS_DIR  # the workers' keys, one file a part, until planned
        if keys_dir.exists():
            shutil.rmtree(keys_dir)
        keyed = self.map_items(items, _keys_task(cls, cfg, ctx, job.in_dir, schema, keys_dir))
        self._check_rows(stage, keyed, rows_in)
        # keys -> plan (and its second passes) -> positions on one worker: the driver keeps
        # the references only (see _plan_task)
        remote = replace(job, log=quiet)  # the driver's logger does not travel
        plan_task = self._ray.remote(num_cpus=1, max_retries=-1, max_calls=1, num_returns=3)(_plan_task)
        plan_ref, pos_ref, meta_ref = plan_task.remote(cls, cfg, ctx, remote, [r["file"] for r in keyed])
        meta = self._ray.get(meta_ref)
        self._replay(stage, meta["logs"])
        res = self.map_items(items, _apply_task(cls, cfg, ctx, plan_ref, pos_ref, job.in_dir, schema,
                                                job.progress, Path(meta["target"])))
        del pos_ref
        self._check_rows(stage, res, rows_in)
        entries = [json.loads(r["entry"]) for r in res]
        part_stats = [json.loads(r["stats"]) for r in res if r["stats"]]
        passes = meta["passes"]
        job.log(f"[{stage.name}] ray: {len(entries)} part(s) on workers (planned: keys written by workers, "
                f"plan on a worker from {rows_in:,} rows' keys"
                + (f", {len(passes)} second pass(es) over {sum(passes):,} asked rows" if passes else "")
                + ", apply)")
        finish = self._ray.remote(num_cpus=1, max_retries=-1)(_finish_task)
        out, logs = self._ray.get(finish.remote(cls, cfg, ctx, plan_ref, remote, entries, part_stats, meta["target"]))
        self._replay(stage, logs)
        return out

    @staticmethod
    def _replay(stage: Stage, logs: list[str]) -> None:
        """What a stage logged in a worker task, on the driver's log, in order."""
        for line in logs:
            stage.context.log(line)

    @staticmethod
    def _check_rows(stage: Stage, res: list[dict], n: int) -> None:
        got = sum(r["rows"] for r in res)
        if got != n:
            raise RuntimeError(f"ray: stage {stage.name!r} saw {got} of {n} rows")

    # ------------------------------------------------------------------ whole-table fallback
    def process(self, stage: Stage, table: pl.DataFrame) -> StageResult:
        """A stage with no parts path, over its whole input (`stage_steps.run_whole`, which
        logs it): MinHash dedup with its signatures and band buckets on workers
        (curate/pipeline/ray_dedup.py); any other stage its own `process` here."""
        if table.height and stage.kind == "dedup" and getattr(stage.config, "method", None) == "minhash":
            from curate.pipeline.ray_dedup import ray_minhash_dedup

            return ray_minhash_dedup(self, stage, table)
        if table.height:
            stage.context.log(f"[{stage.name}] ray: no distributed path for this stage; ran on the driver")
        return stage.process(table)

    def close(self) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
