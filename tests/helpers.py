"""Small builders shared by the stage tests."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import polars as pl

from curate.contract.schema import POLARS_SCHEMA, conversation_id


def load_script(path: Path, name: str, search_path: bool = False):
    """Import a script that is not a package module (a benchmark, a data generator) by its
    path, registered under `name` (dataclasses and pickling need it in sys.modules).
    `search_path` puts the script's folder first on sys.path, for its sibling imports."""
    if search_path and str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def pair(user: str, assistant: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def records(conversations, source="t", task="t", origin="t") -> pl.DataFrame:
    """Canonical rows from message lists: content-hash ids, origins `origin:i`; `source` and
    `task` are one value for all rows or a function of the row index."""
    def value(v, i):
        return v(i) if callable(v) else v

    rows = [{"id": conversation_id(m), "source": value(source, i), "task": value(task, i), "messages": m,
             "meta": "{}", "origin": f"{origin}:{i}"} for i, m in enumerate(conversations)]
    return pl.DataFrame(rows, schema=POLARS_SCHEMA)


def planned_on_copies(stage, table: pl.DataFrame, part_rows: int):
    """A planned stage run the way a distributed executor runs it (curate/pipeline/
    stage_steps.py): `keys` per part with `_row`, one `plan` over their concatenation
    (completed with `complete_plan` when it asks for a second pass), `apply` per part on
    its own deep copy of the plan (as a worker holds one), the parts' stats sent back
    through JSON and merged with `merge_part_stats`, and the parts reassembled
    (`base.assemble`). Differs from `base.run_planned` only in applying on copies."""
    import copy
    import json

    from curate.stages.base import ROW_COL, assemble, complete_plan, part_bounds

    bounds = part_bounds(table.height, part_rows)
    keys = [stage.keys(table.slice(lo, hi - lo)).with_columns(pl.int_range(lo, hi, dtype=pl.UInt64).alias(ROW_COL))
            for lo, hi in bounds]
    plan = stage.plan(pl.concat(keys, how="vertical", rechunk=True))
    plan = complete_plan(stage, plan, bounds, lambda i: table.slice(bounds[i][0], bounds[i][1] - bounds[i][0]))
    results, part_stats = [], []
    for lo, hi in bounds:
        mine = copy.deepcopy(plan)
        res = stage.apply(table.slice(lo, hi - lo), mine, lo)
        part_stats.append(json.loads(json.dumps(res.stats if res.stats is not mine.stats else {}, default=str)))
        results.append(res)
    stage.merge_part_stats(plan, part_stats)
    return assemble(results, bounds, plan)


EXACT_DEDUP_STAGES = """
[[stages]]
kind = "normalize"
[[stages]]
kind = "filter"
on = "assistant"
[[stages]]
kind = "dedup"
name = "exact_dedup"
method = "exact"
"""  # normalize, the assistant filter, exact dedup: row-local stages, then a planned one


def exact_dedup_pipeline(raw, part_rows: int) -> str:
    """A small pipeline.toml: the sample's qa_alpaca source (in folder `raw`) through
    EXACT_DEDUP_STAGES in parts of `part_rows` rows: the run the executor comparisons
    (local vs Ray, one node or two) make twice."""
    return f"""
[run]
seed = 0
part_rows = {int(part_rows)}
[[sources]]
name = "qa_alpaca"
path = "{raw}/qa_alpaca.jsonl"
format = "alpaca"
task = "qa"
""" + EXACT_DEDUP_STAGES


def run_digests(run, shards: bool = True) -> dict[str, str]:
    """sha256 of every file of the run that must be the same bytes whichever executor
    wrote it: stages/ (parts, done.json), rejects/, quarantine.jsonl and, with `shards`,
    shards/ (not the manifest, timings or report), keyed by path in the run."""
    import hashlib
    from pathlib import Path

    run = Path(run)
    pats = ("stages/**/*", "rejects/*", *(("shards/**/*",) if shards else ()), "quarantine.jsonl")
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for pat in pats for p in sorted(run.glob(pat)) if p.is_file()}
