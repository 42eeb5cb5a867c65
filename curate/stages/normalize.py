"""`normalize`: make conversations comparable and well-formed before anything judges them.

Per turn (column-wise over the exploded turns):
  - Unicode NFC, so the same text has one byte form (dedup and decontamination rely on it)
  - control characters stripped (keeping \\n and \\t), \\r\\n -> \\n, NBSP -> space
  - trailing spaces per line removed, runs of 3+ newlines squeezed to 2, ends stripped.
    Runs of inner spaces are kept: they are code indentation.
  - lines that only say "no input" (`<noinput>`, `N/A`, `none`, `-`, ...) removed from
    system and user turns; a turn that is nothing but such a placeholder becomes empty.
  - empty system and tool turns removed.
Per conversation (dropped with a reason):
  empty_prompt     a user turn is empty
  empty_answer     an assistant turn is empty (or only a placeholder)
  no_assistant_after_user   no assistant turn follows a user turn
  system_not_first a system turn after the first turn
  assistant_first  the first non-system turn is the assistant's (most chat templates
                   refuse it, and a reply to nothing teaches nothing)
  roles_not_alternating     two user (or two assistant) turns in a row, when required
Trailing turns after the last assistant turn are cut (they cannot be trained on), and
`id` is recomputed from the normalised conversation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import polars as pl

from curate.schema import recompute_ids
from curate.stages.base import REASON, Stage, StageResult

# Lower-cased spellings of "there is no input", seen in Alpaca, Dolly and their derivatives.
NO_INPUT = [
    "<noinput>", "<no input>", "<nooutput>", "no input", "noinput", "n/a", "na", "none", "null", "nan",
    "-", "--", ".", "empty", "<empty>", "(none)", "[none]", "no input.", "none.", "n/a.", "not applicable",
    "<no_input>", "no_input", "<blank>", "blank", "input:", "(empty)", "nil",
]
CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\ufeff]"


@dataclass
class Config:
    kind: Literal["normalize"] = "normalize"
    name: str | None = None
    unicode_form: Literal["NFC", "NFKC", "none"] = "NFC"
    strip_control: bool = True
    tidy_whitespace: bool = True
    placeholders: list[str] = field(default_factory=lambda: list(NO_INPUT))
    require_alternation: bool = True
    trim_trailing_turns: bool = True


class Normalize(Stage):
    kind = "normalize"
    Config = Config
    row_local = True

    def process(self, table: pl.DataFrame) -> StageResult:
        c = self.config
        if table.height == 0:
            return StageResult(kept=table, dropped=table.with_columns(pl.lit(None, pl.String).alias(REASON)))
        t = table.with_row_index("_row")
        turns = t.select("_row", pl.col("messages")).explode("messages").unnest("messages")
        turns = turns.with_columns(pl.int_range(pl.len()).over("_row").alias("_turn"))
        content = pl.col("content").fill_null("")
        if c.unicode_form != "none":
            content = content.str.normalize(c.unicode_form)
        if c.strip_control:
            content = content.str.replace_all(r"\r\n?", "\n").str.replace_all(CONTROL, "").str.replace_all("\u00a0", " ")
        if c.tidy_whitespace:
            content = (content.str.replace_all(r"[ \t]+\n", "\n").str.replace_all(r"\n{3,}", "\n\n")
                       .str.strip_chars())
        turns = turns.with_columns(content.alias("content"))
        # Placeholder lines: compare each line, lower-cased and trimmed, with the list.
        placeholders = sorted({p.strip().lower() for p in c.placeholders})
        lines = (turns.select("_row", "_turn", "role", pl.col("content").str.split("\n").alias("_line"))
                 .explode("_line")
                 .with_columns(pl.int_range(pl.len()).over("_row", "_turn").alias("_ln")))
        is_ph = pl.col("_line").str.strip_chars().str.to_lowercase().is_in(placeholders)
        prompt_role = pl.col("role").is_in(["system", "user"])
        whole_ph = (turns.with_columns(pl.col("content").str.strip_chars().str.to_lowercase().is_in(placeholders)
                                       .alias("_whole")).select("_row", "_turn", "_whole"))
        lines = lines.filter(~(prompt_role & is_ph))
        rebuilt = (lines.sort("_row", "_turn", "_ln").group_by("_row", "_turn", maintain_order=True)
                   .agg(pl.col("_line").str.join("\n").alias("_new")))
        turns = (turns.join(rebuilt, on=["_row", "_turn"], how="left").join(whole_ph, on=["_row", "_turn"], how="left")
                 .with_columns(pl.when(pl.col("_whole")).then(pl.lit(""))
                               .otherwise(pl.col("_new").fill_null("").str.strip_chars()).alias("content"))
                 .sort("_row", "_turn"))
        # Empty system/tool turns carry nothing: remove them.
        turns = turns.filter(~(pl.col("role").is_in(["system", "tool"]) & (pl.col("content") == "")))
        if c.trim_trailing_turns:
            last_asst = (turns.filter(pl.col("role") == "assistant").group_by("_row").agg(pl.col("_turn").max().alias("_last")))
            turns = turns.join(last_asst, on="_row", how="left").filter(
                pl.col("_last").is_null() | (pl.col("_turn") <= pl.col("_last"))).drop("_last")
        turns = turns.sort("_row", "_turn").with_columns(pl.int_range(pl.len()).over("_row").alias("_pos"))
        # Per-conversation checks, all as aggregations over the turns.
        role = pl.col("role")
        prev = role.shift(1).over("_row")
        checks = turns.group_by("_row").agg(
            ((role == "user") & (pl.col("content") == "")).any().alias("empty_prompt"),
            ((role == "assistant") & (pl.col("content") == "")).any().alias("empty_answer"),
            ((role == "system") & (pl.col("_pos") > 0)).any().alias("system_not_first"),
            (((role == "user") & (prev == "user")) | ((role == "assistant") & (prev == "assistant"))).any()
            .alias("roles_not_alternating"),
            pl.col("_pos").filter(role == "user").min().alias("_first_user"),
            pl.col("_pos").filter(role == "assistant").min().alias("_first_asst"),
            pl.col("_pos").filter(role == "assistant").max().alias("_last_asst"),
            pl.struct(role, pl.col("content")).alias("messages"),
        )
        no_pair = pl.col("_first_user").is_null() | pl.col("_last_asst").is_null() | (pl.col("_last_asst") < pl.col("_first_user"))
        reasons = [
            (no_pair, "no_assistant_after_user"),
            (pl.col("empty_prompt"), "empty_prompt"),
            (pl.col("empty_answer"), "empty_answer"),
            (pl.col("system_not_first"), "system_not_first"),
            (pl.col("_first_asst") < pl.col("_first_user"), "assistant_first"),
        ]
        if c.require_alternation:
            reasons.append((pl.col("roles_not_alternating"), "roles_not_alternating"))
        reason = pl.lit(None, pl.String)
        for cond, name in reversed(reasons):
            reason = pl.when(cond).then(pl.lit(name)).otherwise(reason)
        checks = checks.with_columns(reason.alias(REASON)).select("_row", "messages", REASON)
        out = t.drop("messages").join(checks, on="_row", how="left").sort("_row")
        # A conversation whose turns were all removed has no row in `checks`.
        out = out.with_columns(
            pl.col("messages").fill_null(pl.lit([], dtype=table.schema["messages"])),
            pl.when(pl.col("messages").is_null()).then(pl.lit("no_assistant_after_user")).otherwise(pl.col(REASON)).alias(REASON),
        ).select([*table.columns, REASON])
        out = out.with_columns(pl.col("messages").cast(table.schema["messages"]))
        kept = recompute_ids(out.filter(pl.col(REASON).is_null()).drop(REASON))
        dropped = table.with_row_index("_row").join(
            out.with_row_index("_row").select("_row", REASON), on="_row").filter(pl.col(REASON).is_not_null()).drop("_row")
        counts = dropped.group_by(REASON).len().sort(REASON)
        return StageResult(kept=kept, dropped=dropped, stats={"hits": {r: int(n) for r, n in counts.iter_rows()}})


STAGE = Normalize
