"""`consensus`: do the records that ask the same question give the same answer?

    [[stages]]
    kind = "consensus"          # before dedup: copies are votes, dedup would delete them

General, no task knowledge: records whose prompt is the same after normalisation (case,
punctuation, Unicode forms, whitespace: `curate.stages.common.text_norm`) form a group;
within a group their answers are compared, exactly after the same normalisation and, for
different answers, by word-set Jaccard similarity (`answer_similarity`; 1.0 = exact only).
Each record's *support* is the number of group members whose answer agrees with its own
(itself included); its score is support / group size.

Columns (prefix = the stage's name, default `consensus`):
  consensus              support share in (0, 1] (1.0 for a record alone with its prompt)
  consensus_group        the smallest id of the record's prompt group (names the group)
  consensus_group_size   records with this prompt
  consensus_support      members agreeing with this record's answer, itself included
  consensus_answers      distinct normalised answers in the group
  consensus_conflict     the group has two members whose answers do not agree
  consensus_majority     this record's support is the group's highest (ties: all of them)
  consensus_tie          the group's highest support is shared by disagreeing answers

With `drop = "minority"` (default) a record is dropped (`minority_answer`, detail: its
support, the majority's, and one majority record's id) when its group has at least
`min_group` records, the group's top answer has more than `majority` (default half) of
the group's support, its answer's support is below the top's, and its answer is
not near-equal to a most-supported answer (a variant of the majority answer stays:
agreement by near-equality is not transitive, so "2 of 4 agree" may still agree with the
top answer). Ties are kept
(there is no majority to follow) unless `ties = "drop"`, which drops every record of such a
group (`tied_answers`): a prompt asked `min_group`+ times whose answers never converge has
no answer to trust (on a fixed table in the efficacy benchmark: a key asked 8 times with 8
different answers, 7 of them wrong). Trade-off: on open-ended prompts, where every answer
differs, it drops them all: keep the default there; groups smaller than `min_group` are kept (two records
that disagree are a tie, not a vote). `drop = "none"` only adds the columns, for `select
column = "consensus"` or for reading the conflicts in the report.

Why before dedup: an exact dedup on the conversation keeps one copy of every distinct
(prompt, answer) pair, so a prompt answered 1,000 times right and 500 times wrong leaves
one right and one wrong record: the vote is gone. Run consensus first; dedup then keeps
the majority answer's representative.

When it fails: a prompt whose answers legitimately differ (open questions, "write a poem")
is a conflict with no wrong side: near-equal matching (Jaccard on word sets) does not make
two good poems agree. Such groups are usually all different answers (support 1 each), a tie,
so nothing is dropped; a minority answer is dropped only when some answer is repeated more
often. When wrong answers are the majority (a systematically wrong source copied many
times) the vote follows them. Near-same prompts (paraphrases) are not grouped: only the
same prompt after normalisation.

Cost: column-wise polars: one group-by on the normalised prompt, one on (prompt, answer);
the near-equal comparison is pairwise over a group's distinct answers (d^2 / 2 pairs), for
groups of at most `max_answers` distinct answers (larger groups compare exactly only).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import polars as pl

from curate.contract.typed_config import ConfigError
from curate.contract.views import text_view
from curate.stages.base import DETAIL, REASON, Stage, StageResult
from curate.stages.common.text_norm import STEPS, normalized

REASON_MINORITY = "minority_answer"
REASON_TIE = "tied_answers"
_ROW, _P, _A, _AID = "__cons_row", "__cons_prompt", "__cons_answer", "__cons_aid"


@dataclass
class Config:
    kind: Literal["consensus"]
    name: str | None = None  # column prefix and stage name; default "consensus"
    # which text makes two records "the same question": the system + user (+ tool) turns
    prompt_view: Literal["prompt", "user", "last_user"] = "prompt"
    answer_view: Literal["response", "last_assistant"] = "response"  # the answer compared
    normalize: list[str] = field(default_factory=lambda: list(STEPS))  # steps applied before comparing
    # word-set Jaccard at or above which two different answers agree; 1.0 = exact only
    answer_similarity: float = 0.8
    max_answers: int = 200  # groups with more distinct answers compare them exactly only
    # "minority": drop records outvoted within their prompt group; "none": columns only
    drop: Literal["minority", "none"] = "minority"
    min_group: int = 3  # groups smaller than this never drop a record
    # drop only where the top answer's support share exceeds this (0.5: a true majority)
    majority: float = 0.5
    # "drop": also drop every record of a group (>= min_group) whose top answers tie ("tied_answers")
    ties: Literal["keep", "drop"] = "keep"
    examples: int = 8  # conflicting groups shown in the report

    def validate(self) -> None:
        bad = [s for s in self.normalize if s not in STEPS]
        if bad:
            raise ConfigError("normalize", f"unknown step(s) {bad}; known: {', '.join(STEPS)}")
        if not 0.0 < self.answer_similarity <= 1.0:
            raise ConfigError("answer_similarity", f"must be in (0, 1], got {self.answer_similarity}")
        if self.max_answers < 2:
            raise ConfigError("max_answers", "must be at least 2")
        if not 0.0 <= self.majority < 1.0:
            raise ConfigError("majority", f"must be in [0, 1), got {self.majority}")
        if self.min_group < 2:
            raise ConfigError("min_group", "must be at least 2")
        if self.examples < 0:
            raise ConfigError("examples", "must be >= 0")

    def output_columns(self) -> list[str]:
        n = self.name or "consensus"
        return [n] + [f"{n}_{s}" for s in ("group", "group_size", "support", "answers", "conflict", "majority", "tie")]


def _short(text: str | None, limit: int = 160) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ConsensusStage(Stage):
    kind = "consensus"
    Config = Config

    def keys(self, table: pl.DataFrame) -> pl.DataFrame:
        """Per row: position, id, normalised prompt (a record with an empty prompt is its
        own group) and normalised answer."""
        c = self.config
        t = table.select(pl.col("id"), text_view(c.prompt_view).alias(_P), text_view(c.answer_view).alias(_A))
        t = t.with_columns(normalized(pl.col(_P), c.normalize), normalized(pl.col(_A), c.normalize))
        own = pl.lit("\x00") + pl.col("id") + pl.lit("\x00") + pl.int_range(pl.len()).cast(pl.String)
        return t.with_row_index(_ROW).with_columns(
            pl.when(pl.col(_P).str.len_chars() > 0).then(pl.col(_P)).otherwise(own).alias(_P))

    def support(self, keys: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Per distinct (prompt, answer): its count and its support (the counts of every
        answer of the same prompt that agrees with it, its own included); and the pairs
        of distinct answers that are near-equal (`_AID`, `_AID_b`)."""
        c = self.config
        answers = keys.group_by(_P, _A).agg(pl.len().cast(pl.Int64).alias("n")).sort(_P, _A).with_row_index(_AID)
        sup = answers.select(_AID, pl.col("n").alias("support"))
        near = pl.DataFrame(schema={_AID: pl.UInt32, f"{_AID}_b": pl.UInt32})
        if c.answer_similarity < 1.0:
            d = pl.len().over(_P)
            cand = answers.filter((d > 1) & (d <= c.max_answers)).with_columns(
                pl.col(_A).str.split(" ").list.unique().alias("w")).select(_P, _AID, "n", "w")
            if cand.height:
                pairs = cand.join(cand, on=_P, suffix="_b").filter(pl.col(_AID) < pl.col(f"{_AID}_b"))
                inter = pl.col("w").list.set_intersection(pl.col("w_b")).list.len()
                union = pl.col("w").list.set_union(pl.col("w_b")).list.len()
                pn = pairs.filter(inter >= c.answer_similarity * union.clip(lower_bound=1)).select(_AID, "n", f"{_AID}_b", "n_b")
                gain = pl.concat([pn.select(pl.col(_AID), pl.col("n_b").alias("g")),
                                  pn.select(pl.col(f"{_AID}_b").alias(_AID), pl.col("n").alias("g"))])
                gain = gain.group_by(_AID).agg(pl.col("g").sum())
                sup = sup.join(gain, on=_AID, how="left").select(_AID, pl.col("support") + pl.col("g").fill_null(0))
                near = pn.select(_AID, f"{_AID}_b")
        return answers.join(sup, on=_AID).sort(_AID), near

    def process(self, table: pl.DataFrame) -> StageResult:
        c = self.config
        n = self.name
        keys = self.keys(table)
        answers, near = self.support(keys)
        answers = answers.with_columns(
            pl.col("n").sum().over(_P).alias("size"),
            pl.len().over(_P).alias("n_answers"),
            pl.col("support").max().over(_P).alias("best"),
        ).with_columns(
            (pl.col("support") < pl.col("size")).any().over(_P).alias("conflict"),
            # a tie: several answers share the highest support and not all of them agree
            # (answers that all agree each count the others' records in their support)
            (((pl.col("support") == pl.col("best")).sum().over(_P) > 1)
             & (pl.col("n").filter(pl.col("support") == pl.col("best")).sum().over(_P) > pl.col("best"))).alias("tie"),
        )
        # an answer near-equal to a top answer is a variant of the majority, not outvoted
        top = answers.filter(pl.col("support") == pl.col("best")).select(_AID)
        near_top = pl.concat([near.join(top, left_on=f"{_AID}_b", right_on=_AID).select(_AID),
                              near.join(top, on=_AID).select(pl.col(f"{_AID}_b").alias(_AID)), top]).unique()
        answers = answers.with_columns(pl.col(_AID).is_in(near_top[_AID].implode()).alias("with_top"))
        group_first = keys.group_by(_P).agg(pl.col("id").min().alias("group"))
        majority_id = (keys.join(answers.filter(pl.col("support") == pl.col("best")).select(_P, _A), on=[_P, _A])
                       .group_by(_P).agg(pl.col("id").min().alias("majority_id")))
        per = (keys.join(answers.select(_P, _A, "support", "size", "n_answers", "best", "conflict", "tie", "with_top"),
                         on=[_P, _A], how="left", maintain_order="left")
               .join(group_first, on=_P, how="left", maintain_order="left")
               .join(majority_id, on=_P, how="left", maintain_order="left")
               .sort(_ROW))
        cols = [
            (per["support"] / per["size"]).cast(pl.Float64).alias(n),
            per["group"].alias(f"{n}_group"),
            per["size"].cast(pl.UInt32).alias(f"{n}_group_size"),
            per["support"].cast(pl.UInt32).alias(f"{n}_support"),
            per["n_answers"].cast(pl.UInt32).alias(f"{n}_answers"),
            per["conflict"].alias(f"{n}_conflict"),
            (per["support"] == per["best"]).alias(f"{n}_majority"),
            per["tie"].alias(f"{n}_tie"),
        ]
        out = table.with_columns(cols)
        if c.drop == "minority":
            minority = ((per["size"] >= c.min_group) & (per["support"] < per["best"]) & ~per["with_top"]
                        & (per["best"] > c.majority * per["size"])).alias("m")
        else:
            minority = pl.Series("m", [False] * table.height, dtype=pl.Boolean)
        tied = pl.Series("t", [False] * table.height, dtype=pl.Boolean)
        if c.drop == "minority" and c.ties == "drop":  # a contested prompt with no winner: none of its answers
            tied = ((per["size"] >= c.min_group) & per["tie"] & ~minority).alias("t")
        detail = per.select(pl.format("{}/{} agree; the majority answer has {}/{} (e.g. {})", "support", "size",
                                      "best", "size", "majority_id")).to_series()
        gone = minority | tied
        kept = out.filter(~gone)
        dropped = out.filter(gone).with_columns(
            pl.when(tied.filter(gone)).then(pl.lit(REASON_TIE)).otherwise(pl.lit(REASON_MINORITY)).alias(REASON),
            detail.filter(gone).alias(DETAIL))
        stats = self._stats(keys, per, answers, table, minority)
        stats["ties"], stats["dropped_tied"] = c.ties, int(tied.sum())
        if stats["dropped_minority"]:
            per_task = ", ".join(f"{t} {v['dropped']}" for t, v in stats["by_task"].items() if v["dropped"])
            self.context.log(f"{self.name}: dropped {stats['dropped_minority']:,} outvoted answers ({per_task}); "
                             "on open-ended tasks (code, writing) an outvoted answer may be a valid alternative: "
                             "drop = \"none\" keeps them and only adds the columns")
        if stats["dropped_tied"]:
            self.context.log(f"{self.name}: dropped {stats['dropped_tied']:,} records of prompts whose top answers "
                             "tie (ties = \"drop\"); on open-ended tasks every answer differs and ties: keep them there")
        return StageResult(kept=kept, dropped=dropped, stats=stats)

    def _stats(self, keys, per, answers, table, minority) -> dict:
        c = self.config
        groups = answers.group_by(_P).agg(pl.col("size").first(), pl.col("conflict").first(),
                                          pl.col("tie").first(), pl.len().alias("d"))
        multi = groups.filter(pl.col("size") > 1)
        conf = groups.filter(pl.col("conflict"))
        stats = {
            "prompt_view": c.prompt_view, "answer_view": c.answer_view, "answer_similarity": c.answer_similarity,
            "drop": c.drop, "min_group": c.min_group, "majority": c.majority, "rows_in": table.height,
            "groups": groups.height, "groups_repeated": multi.height,
            "rows_in_repeated_groups": int(multi["size"].sum() or 0),
            "conflict_groups": conf.height, "rows_in_conflict_groups": int(conf["size"].sum() or 0),
            "tie_groups": int(groups["tie"].sum() or 0), "dropped_minority": int(minority.sum()),
            "largest_group": int(groups["size"].max() or 0) if groups.height else 0,
        }
        by_task = (table.select("task").with_columns(per["conflict"].alias("c"), minority.alias("m"))
                   .group_by("task").agg(pl.len().alias("rows"), pl.col("c").sum().alias("in_conflict"),
                                         pl.col("m").sum().alias("dropped")).sort("task"))
        stats["by_task"] = {r["task"]: {"rows": int(r["rows"]), "in_conflict": int(r["in_conflict"]),
                                        "dropped": int(r["dropped"])} for r in by_task.iter_rows(named=True)}
        stats["examples"] = self._examples(keys, per, answers, table, conf)
        return stats

    def _examples(self, keys, per, answers, table, conf) -> list[dict]:
        """The largest conflicting groups (ties by group name): the prompt and each
        distinct answer with its count and support, most supported first."""
        c = self.config
        if not c.examples or not conf.height:
            return []
        named = per.select(_P, "group", "size").unique(_P).join(conf.select(_P), on=_P)
        top = named.sort(["size", "group"], descending=[True, False]).head(c.examples)
        raw = table.select(text_view(c.prompt_view).alias("p"), text_view(c.answer_view).alias("a"), "id")
        raw = raw.with_columns(keys[_P], keys[_A])
        out = []
        for p, group, size in top.iter_rows():
            rows = raw.filter(pl.col(_P) == p)
            ans = answers.filter(pl.col(_P) == p).sort(["support", "n", _A], descending=[True, True, False]).head(6)
            shown = []
            for a, cnt, sup in ans.select(_A, "n", "support").iter_rows():
                r = rows.filter(pl.col(_A) == a).sort("id").row(0, named=True)
                shown.append({"answer": _short(r["a"]), "count": int(cnt), "support": int(sup), "id": r["id"]})
            out.append({"group": group, "size": int(size), "prompt": _short(rows.sort("id")["p"][0]),
                        "answers": int(answers.filter(pl.col(_P) == p).height), "top": shown})
        return out


STAGE = ConsensusStage
