"""Running one stage part by part, the same way on every executor: which stages can be
cut into parts without changing a byte of their output, and how the parts' results are
put back together (the per-part steps themselves are curate/pipeline/stage_steps.py). The
Ray executor runs the parts on workers; the local executor runs them in turn; both keep
each finished part on disk, so a run killed inside a stage resumes from its last one.

  blocks    normalize; quality with the heuristic / fasttext / verifier scorers:
            `stage.process` per part; kept and dropped concatenated in part order, the
            stats merged (`merge_stats`: counts add, constants must agree, quality's
            score summary recomputed over the whole table by the stage's own code).
  annotate  FilterStage subclasses (filter, language, pii, decontaminate):
            `stage.annotate` per part (the expensive work); the parts' `block_state()`
            merged by the stage's own `merge_block_states`, then the stage's own
            `decide` over the concatenated annotations, so the decision and every
            statistic come from the local code path.
  None      every other stage (dedup, select, mix, LM-scored quality): whole table.

The parts are the stage's input parts on disk (curate/pipeline/parts.py); see
docs/pipeline.md, "Memory model".
"""
from __future__ import annotations

import json
from typing import Any

import polars as pl

from curate.pipeline.ray_blocks import from_ipc, to_ipc
from curate.stages.base import FilterStage, PartColumns, Stage

BLOCK_KINDS = {"normalize", "quality"}
LOCAL_SCORERS = {"heuristic", "fasttext", "verifier"}


def part_mode(stage: Stage) -> str | None:
    """"blocks", "annotate" or None (see the module doc)."""
    if isinstance(stage, FilterStage):
        return "annotate"
    if stage.kind == "normalize":
        return "blocks"
    if stage.kind == "quality" and getattr(stage.config, "scorer", None) in LOCAL_SCORERS:
        return "blocks"
    return None


def encode_state(state: dict) -> str:
    """A FilterStage's `block_state()` as JSON: polars Series travel as Arrow IPC (hex)."""
    out = {}
    for k, v in state.items():
        out[k] = {"series": to_ipc(v.to_frame()).hex()} if isinstance(v, pl.Series) else {"json": v}
    return json.dumps(out)


def decode_state(text: str) -> dict:
    return {k: from_ipc(bytes.fromhex(v["series"])).to_series() if "series" in v else v["json"]
            for k, v in json.loads(text).items()}


def sum_values(values: list) -> Any:
    if all(isinstance(v, dict) for v in values):
        out: dict = {}
        for v in values:
            for k, x in v.items():
                out[k] = sum_values([out[k], x]) if k in out else x
        return out
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return sum(values)
    raise TypeError(f"cannot sum {values!r}")


def same_values(values: list) -> Any:
    if any(v != values[0] for v in values):
        raise ValueError(f"per-block values differ: {values!r}")
    return values[0]


def merge_stats(stage: Stage, kept: "PartColumns | pl.DataFrame", parts: list[dict]) -> dict:
    """The stats of a "blocks" stage over the whole table, from its parts' stats and the
    small columns of its output (`kept`: base.PartColumns, read only for the columns a
    summary needs, or a frame of them)."""
    if stage.kind == "normalize":
        return {"hits": sum_values([p["hits"] for p in parts])}
    # quality: constants stay, error counts add up, and the score summary is
    # recomputed over the whole table by the stage's own summariser.
    out = {k: same_values([p[k] for p in parts]) for k in parts[0]
           if k not in ("errors", "scored", "unscored", "by_task", "signal")}
    if "errors" in parts[0]:
        out["errors"] = sum_values([p["errors"] for p in parts])
    col = stage.config.score_column
    if isinstance(kept, PartColumns):
        # what summary (task, the score) and signal (the score, a trusted label) read: 16-24
        # B a row, not the stage's ~100 B of small columns (its feature columns, id, source)
        # the task as a Categorical (4 B a row, a String is 16+), parts concatenated a
        # column at a time (`concat_freeing`): summary's groups and values are the same
        from curate.stages.common.concat import concat_freeing
        from curate.stages.common.signal import LABEL_COLUMNS

        frames = [df.with_columns(pl.col("task").cast(pl.Categorical)) if "task" in df.columns else df
                  for df in kept.iter([c for c in kept.columns if c in ("task", col, *LABEL_COLUMNS)])]
        kept = concat_freeing(frames) if len(frames) > 1 else frames[0]
    out.update(stage.summary(kept, col))
    if "signal" in parts[0]:  # the scorer's AUC over the whole table, not one block's
        out["signal"] = stage.signal(kept, col)
    return out
