"""Render's global state off the Ray driver (issue #19): the streamed render
(curate/render/stream.py `render_parts`: the per-row keys, the split, first-of-id, the
per-example facts, the examples' sort) and its shards (`write_shards_streamed`: each
split's packing plan and shard keys) run in one Ray actor, which submits the per-part
work (RenderPart, RejectPart, ShardPart) as Ray tasks, one per part or shard (`map_parts`).
The driver gets back what the runner writes into the ledger and the manifest (counts,
stats, fingerprints, the rejects' file list, the dropped ids, the shards' entries, the
token counts): no per-row state, so its memory does not grow with the examples.

Trade-off: the render's global state is held by one process, as it was by the driver:
the actor's memory is what the driver's was (~75 B an example, docs/ray.md), now on a
worker, given back when the actor ends (after the shards). The actor reserves no CPU
(num_cpus=0) so that its tasks get every CPU while it waits for them; it is not
restarted if its process dies (the run fails, as it did when the driver held this
state); the tasks it submits are retried like every other task (max_retries=-1).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from curate.pipeline.ray_blocks import maybe_fault


def _part_task(parts: Any, fn: Callable, k: int, arg: Any) -> Any:
    maybe_fault()
    return fn(k, parts.read(k), arg)


def map_parts(parts: Any, fn: Callable, args: list[tuple[int, Any]]) -> list[Any]:
    """`fn(k, parts.read(k), arg)` for each `(k, arg)` as Ray tasks (all submitted, the
    cluster runs as many at once as it has CPUs), results in order, each fetched as the
    previous is taken: the caller holds the results, not their serialized copies.
    `parts` and `fn` go to the object store once. A task whose worker dies is retried;
    every write of the render's tasks is atomic and a result depends only on its part."""
    if not args:
        return []
    task = ray.remote(num_cpus=1, max_retries=-1)(_part_task)
    parts_ref, fn_ref = ray.put(parts), ray.put(fn)
    refs = [task.remote(parts_ref, fn_ref, k, arg) for k, arg in args]
    out = []
    for i, ref in enumerate(refs):
        out.append(ray.get(ref))
        refs[i] = None  # its object can go as soon as it is taken
    return out


class _Render:
    """The actor: `render` keeps the StreamedRender, `finish` writes the shards and counts
    the tokens from it, then drops it."""

    def __init__(self):
        self.rendered = None

    def render(self, parts, columns, cfg, base_dir, seed, work_dir, reject_dir) -> dict:
        from curate.render.stream import render_parts

        r = self.rendered = render_parts(parts, columns, cfg, base_dir, seed, work_dir, reject_dir,
                                         map_parts=map_parts)
        return {"rows_in": r.rows_in, "dropped": r.dropped, "records_dropped": r.records_dropped,
                "copies_dropped": r.copies_dropped, "dropped_ids": r.dropped_ids, "rejects": r.rejects,
                "stats": r.stats, "fingerprints": r.fingerprints}

    def finish(self, shards_dir, cfg) -> tuple[dict, Any]:
        shards = self.rendered.write_shards(shards_dir, cfg)
        counts = self.rendered.token_counts()
        self.rendered = None
        return shards, counts


class RemoteRender:
    """What the runner reads of a render (StreamedRender's small attributes and its
    `write_shards` / `token_counts`), with the per-row state in the actor."""

    def __init__(self, parts, columns, cfg, base_dir, seed, work_dir: Path, reject_dir: Path):
        self._actor = ray.remote(num_cpus=0, max_restarts=0)(_Render).remote()
        got = ray.get(self._actor.render.remote(parts, columns, cfg, base_dir, seed, work_dir, reject_dir))
        self.rows_in, self.dropped, self.records_dropped = got["rows_in"], got["dropped"], got["records_dropped"]
        self.copies_dropped, self.dropped_ids, self.rejects = got["copies_dropped"], got["dropped_ids"], got["rejects"]
        self.stats, self.fingerprints = got["stats"], got["fingerprints"]
        self._counts = None

    def write_shards(self, shards_dir, cfg) -> dict:
        """The shards written from the actor's examples (one task per shard); the actor then
        ends (its memory given back), keeping the token counts for `token_counts`."""
        shards, self._counts = ray.get(self._actor.finish.remote(shards_dir, cfg))
        ray.kill(self._actor)
        self._actor = None
        return shards

    def token_counts(self):
        if self._counts is None:
            raise RuntimeError("RemoteRender.token_counts: write_shards first (the actor ends there)")
        return self._counts
