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

From keys (curate/stages/base.py, keys -> plan -> apply; `process` is the same path over
one part): keys are 64-bit hashes of the normalised prompt and answer, the id and the task
(no text); the plan groups on the hashes (two different texts sharing a hash, odds about
n^2 / 2^64, would count as one), then asks the runner for what hashes cannot do, in passes
over the parts (`Refine`): the normalised text of one row per distinct answer of every
prompt with 2..max_answers distinct answers (the word-set Jaccard), and afterwards the
texts of the report's examples. Memory: the keys (~40 B a row + the id), the decisions
(one row per record whose prompt is repeated) and those answers' texts: contested prompts'
distinct answers, not the table.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import polars as pl

from curate.contract.typed_config import ConfigError
from curate.contract.views import text_view
from curate.stages.base import DETAIL, REASON, ROW_COL, Plan, Refine, Stage, StageResult, decided_part, run_planned
from curate.stages.common.text_norm import STEPS, normalized

REASON_MINORITY = "minority_answer"
REASON_TIE = "tied_answers"
_P, _A, _AID = "__cons_prompt", "__cons_answer", "__cons_aid"  # prompt / answer hashes (u64), answer number
_EMPTY, _AT, _PT, _RT = "__cons_empty", "__cons_answer_text", "__cons_raw_prompt", "__cons_raw_answer"


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
    """keys -> plan -> apply (see the module doc); `process(table)` is `run_planned` over
    one part, so the streaming runner's result equals it by construction."""

    kind = "consensus"
    Config = Config

    def plannable(self) -> bool:
        return True

    def needs_refine(self) -> bool:
        """The plan asks for texts (near-equal answers, the report's examples) unless
        answers compare exactly and no examples are shown."""
        return self.config.answer_similarity < 1.0 or self.config.examples > 0

    # ---- keys ------------------------------------------------------------------------------
    def _normalized_texts(self, part: pl.DataFrame) -> pl.DataFrame:
        c = self.config
        t = part.select(text_view(c.prompt_view).alias(_P), text_view(c.answer_view).alias(_A))
        return t.with_columns(normalized(pl.col(_P), c.normalize), normalized(pl.col(_A), c.normalize))

    def keys(self, part: pl.DataFrame) -> pl.DataFrame:
        """Per row, no text: the hashes of the normalised prompt and answer, whether the
        prompt is empty (such a record is its own group), the id and the task."""
        t = self._normalized_texts(part)
        return pl.DataFrame([
            t[_P].hash(seed=0).alias(_P), t[_A].hash(seed=0).alias(_A),
            (t[_P].str.len_chars() == 0).alias(_EMPTY), part["id"], part["task"]])

    def refine_keys(self, part: pl.DataFrame, rows: np.ndarray, first_row: int, ask: str = "") -> pl.DataFrame:
        """The asked rows' normalised answer (`ask` = "answers"), plus their raw prompt and
        answer (`ask` = "examples", the report's examples)."""
        sub = part[pl.Series(np.asarray(rows, dtype=np.int64) - int(first_row))]
        t = self._normalized_texts(sub).select(pl.col(_A).alias(_AT))
        if ask == "examples":
            c = self.config
            t = t.with_columns(sub.select(text_view(c.prompt_view).alias(_PT), text_view(c.answer_view).alias(_RT)))
        return t

    # ---- plan ------------------------------------------------------------------------------
    def plan(self, keys: pl.DataFrame) -> Plan | Refine:
        """Groups and distinct answers from the hashes; the near-equal comparison needs the
        normalised text of one row (the first) of each distinct answer of the prompts with
        2..max_answers of them: asked for (`Refine`), then `_decide`."""
        c = self.config
        k = keys.rechunk().select(
            ROW_COL, "id", "task", _A,
            pl.when(pl.col(_EMPTY)).then(pl.col(ROW_COL).hash(seed=1)).otherwise(pl.col(_P)).alias(_P))
        answers = (k.group_by(_P, _A).agg(pl.len().cast(pl.Int64).alias("n"), pl.col(ROW_COL).min().alias("rep"))
                   .sort(_P, _A).with_row_index(_AID))
        if c.answer_similarity < 1.0:
            d = pl.len().over(_P)
            cand = answers.filter((d > 1) & (d <= c.max_answers)).select(_P, _AID, "n", "rep")
            if cand.height:
                cand = cand.sort("rep")
                return Refine(rows=cand["rep"].to_numpy().astype(np.int64), ask="answers",
                              state={"k": k, "answers": answers, "cand": cand})
        return self._decide(k, answers, None)

    def finish_plan(self, refine: Refine, extra: pl.DataFrame | None) -> Plan | Refine:
        st = refine.state
        if extra is None or extra.height != len(refine.rows):
            raise RuntimeError(f"stage {self.name!r}: asked for {len(refine.rows)} rows' texts, "
                               f"got {0 if extra is None else extra.height}")
        if refine.ask == "answers":
            cand = st["cand"].with_columns(extra[_AT])
            return self._decide(st["k"], st["answers"], cand)
        return self._finish(st, extra)

    def _near(self, answers: pl.DataFrame, cand: pl.DataFrame | None) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Per distinct (prompt, answer): its support (the counts of every answer of the
        same prompt that agrees with it, its own included); and the pairs of distinct
        answers that are near-equal (`_AID`, `_AID_b`), by word-set Jaccard of the
        normalised answers `cand` carries (`_AT`)."""
        c = self.config
        sup = answers.select(_AID, pl.col("n").alias("support"))
        near = pl.DataFrame(schema={_AID: pl.UInt32, f"{_AID}_b": pl.UInt32})
        if cand is not None and cand.height:
            cand = cand.with_columns(pl.col(_AT).str.split(" ").list.unique().alias("w")).select(_P, _AID, "n", "w")
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

    def _decide(self, k: pl.DataFrame, answers: pl.DataFrame, cand: pl.DataFrame | None) -> Plan | Refine:
        """Support, conflicts, ties and majorities per distinct answer, every row's columns
        and drop decision, and the stats; the examples' texts are asked for next."""
        c = self.config
        answers, near = self._near(answers, cand)
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
        group_first = k.group_by(_P).agg(pl.col("id").min().alias("group"))
        majority_id = (k.join(answers.filter(pl.col("support") == pl.col("best")).select(_P, _A), on=[_P, _A])
                       .group_by(_P).agg(pl.col("id").min().alias("majority_id")))
        per = (k.join(answers.select(_P, _A, "support", "size", "n_answers", "best", "conflict", "tie", "with_top"),
                      on=[_P, _A], how="left", maintain_order="left")
               .join(group_first, on=_P, how="left", maintain_order="left")
               .join(majority_id, on=_P, how="left", maintain_order="left")
               .sort(ROW_COL))
        if c.drop == "minority":
            minority = ((per["size"] >= c.min_group) & (per["support"] < per["best"]) & ~per["with_top"]
                        & (per["best"] > c.majority * per["size"])).alias("m")
        else:
            minority = pl.Series("m", [False] * per.height, dtype=pl.Boolean)
        tied = pl.Series("t", [False] * per.height, dtype=pl.Boolean)
        if c.drop == "minority" and c.ties == "drop":  # a contested prompt with no winner: none of its answers
            tied = ((per["size"] >= c.min_group) & per["tie"] & ~minority).alias("t")
        gone = minority | tied
        n = self.name
        # decisions: the rows whose prompt is repeated (the others are alone: defaults in `apply`)
        decisions = per.with_columns(gone.alias("__gone"), tied.alias("__tied")).filter(pl.col("size") > 1).select(
            ROW_COL,
            pl.when(pl.col("__gone")).then(
                pl.when(pl.col("__tied")).then(pl.lit(REASON_TIE)).otherwise(pl.lit(REASON_MINORITY)))
            .otherwise(pl.lit(None, pl.String)).alias(REASON),
            pl.when(pl.col("__gone")).then(pl.format("{}/{} agree; the majority answer has {}/{} (e.g. {})", "support",
                                                     "size", "best", "size", "majority_id")).alias(DETAIL),
            (pl.col("support") / pl.col("size")).cast(pl.Float64).alias(n),
            pl.col("group").alias(f"{n}_group"),
            pl.col("size").cast(pl.UInt32).alias(f"{n}_group_size"),
            pl.col("support").cast(pl.UInt32).alias(f"{n}_support"),
            pl.col("n_answers").cast(pl.UInt32).alias(f"{n}_answers"),
            pl.col("conflict").alias(f"{n}_conflict"),
            (pl.col("support") == pl.col("best")).alias(f"{n}_majority"),
            pl.col("tie").alias(f"{n}_tie"))
        stats = self._stats(per, answers, minority)
        stats["ties"], stats["dropped_tied"] = c.ties, int(tied.sum())
        st = {"decisions": decisions, "stats": stats}
        ask = self._example_rows(k, per, answers, stats.pop("__conf"))
        if ask is None:
            return self._finish(st, None)
        st["shown"] = ask
        rows = np.unique(np.concatenate([ask["rep"].to_numpy(), ask["prompt_row"].to_numpy()])).astype(np.int64)
        return Refine(rows=rows, ask="examples", state=st)

    def _stats(self, per, answers, minority) -> dict:
        c = self.config
        groups = answers.group_by(_P).agg(pl.col("size").first(), pl.col("conflict").first(),
                                          pl.col("tie").first(), pl.len().alias("d"))
        multi = groups.filter(pl.col("size") > 1)
        conf = groups.filter(pl.col("conflict"))
        stats = {
            "prompt_view": c.prompt_view, "answer_view": c.answer_view, "answer_similarity": c.answer_similarity,
            "drop": c.drop, "min_group": c.min_group, "majority": c.majority, "rows_in": per.height,
            "groups": groups.height, "groups_repeated": multi.height,
            "rows_in_repeated_groups": int(multi["size"].sum() or 0),
            "conflict_groups": conf.height, "rows_in_conflict_groups": int(conf["size"].sum() or 0),
            "tie_groups": int(groups["tie"].sum() or 0), "dropped_minority": int(minority.sum()),
            "largest_group": int(groups["size"].max() or 0) if groups.height else 0,
        }
        by_task = (per.select("task").with_columns(per["conflict"].alias("c"), minority.alias("m"))
                   .group_by("task").agg(pl.len().alias("rows"), pl.col("c").sum().alias("in_conflict"),
                                         pl.col("m").sum().alias("dropped")).sort("task"))
        stats["by_task"] = {r["task"]: {"rows": int(r["rows"]), "in_conflict": int(r["in_conflict"]),
                                        "dropped": int(r["dropped"])} for r in by_task.iter_rows(named=True)}
        stats["examples"] = []
        stats["__conf"] = conf
        return stats

    def _example_rows(self, k, per, answers, conf) -> pl.DataFrame | None:
        """The report's examples, chosen from keys: the largest conflicting groups (ties by
        group name) and, per group, the answers that can be among its 6 shown (most
        supported first, then most frequent, then by normalised text: every answer tied
        with the 6th by (support, count) is a candidate until its text is known). One row
        per candidate answer: its first row by id (`rep`: its texts) and the group's first
        row by id (`prompt_row`: the prompt shown). None: no example."""
        c = self.config
        if not c.examples or not conf.height:
            return None
        named = per.select(_P, "group", "size").unique(_P).join(conf.select(_P), on=_P)
        top = named.sort(["size", "group"], descending=[True, False]).head(c.examples).with_row_index("__ex")
        first_row = (k.join(top.select(_P), on=_P).sort("id", ROW_COL)
                     .group_by(_P, _A, maintain_order=True).agg(pl.col(ROW_COL).first().alias("rep"),
                                                                pl.col("id").first().alias("rep_id")))
        g_first = (k.join(top.select(_P), on=_P).sort("id", ROW_COL).group_by(_P, maintain_order=True)
                   .agg(pl.col(ROW_COL).first().alias("prompt_row")))
        ans = (answers.join(top.select(_P, "__ex", "group", "size"), on=_P)
               .select(_P, _A, "__ex", "group", "size", "n", "support", "n_answers")
               .sort("__ex", "support", "n", descending=[False, True, True]))
        ranked = ans.with_columns(pl.int_range(pl.len()).over("__ex").alias("__rank"))
        sixth = ranked.filter(pl.col("__rank") == 5).select("__ex", pl.col("support").alias("s6"), pl.col("n").alias("n6"))
        cand = (ranked.join(sixth, on="__ex", how="left")
                .filter(pl.col("s6").is_null() | (pl.col("support") > pl.col("s6"))
                        | ((pl.col("support") == pl.col("s6")) & (pl.col("n") >= pl.col("n6"))))
                .drop("__rank", "s6", "n6"))
        return (cand.join(first_row, on=[_P, _A], how="left").join(g_first, on=_P, how="left")
                .with_columns(pl.col("rep").cast(pl.UInt64), pl.col("prompt_row").cast(pl.UInt64)))

    def _finish(self, st: dict, extra: pl.DataFrame | None) -> Plan:
        """The examples from the fetched texts (if any), the log lines, the plan."""
        stats = st["stats"]
        if extra is not None:
            stats["examples"] = self._examples(st["shown"], extra)
        per_row = st["decisions"]
        if stats["dropped_minority"]:
            per_task = ", ".join(f"{t} {v['dropped']}" for t, v in stats["by_task"].items() if v["dropped"])
            self.context.log(f"{self.name}: dropped {stats['dropped_minority']:,} outvoted answers ({per_task}); "
                             "on open-ended tasks (code, writing) an outvoted answer may be a valid alternative: "
                             "drop = \"none\" keeps them and only adds the columns")
        if stats["dropped_tied"]:
            self.context.log(f"{self.name}: dropped {stats['dropped_tied']:,} records of prompts whose top answers "
                             "tie (ties = \"drop\"); on open-ended tasks every answer differs and ties: keep them there")
        return Plan(decisions=per_row, stats=stats)

    def _examples(self, shown: pl.DataFrame, extra: pl.DataFrame) -> list[dict]:
        """Per example group: the prompt and each distinct answer with its count and
        support (most supported first, then most frequent, then by normalised answer)."""
        texts = extra.select(pl.col(ROW_COL).cast(pl.UInt64), _AT, _PT, _RT)
        shown = (shown.join(texts.select(pl.col(ROW_COL).alias("rep"), _AT, _RT), on="rep", how="left")
                 .join(texts.select(pl.col(ROW_COL).alias("prompt_row"), _PT), on="prompt_row", how="left"))
        out = []
        for ex in shown.partition_by("__ex", maintain_order=True):
            ex = ex.sort(["support", "n", _AT], descending=[True, True, False]).head(6)
            first = ex.row(0, named=True)
            out.append({"group": first["group"], "size": int(first["size"]), "prompt": _short(first[_PT]),
                        "answers": int(first["n_answers"]),
                        "top": [{"answer": _short(r[_RT]), "count": int(r["n"]), "support": int(r["support"]),
                                 "id": r["rep_id"]} for r in ex.iter_rows(named=True)]})
        return out

    # ---- apply / process -------------------------------------------------------------------
    def apply(self, part: pl.DataFrame, plan: Plan, first_row: int) -> StageResult:
        """A join on the row: the plan's columns for records whose prompt is repeated, a
        record alone with its prompt gets support 1 of 1 (its own group, its own majority);
        the outvoted (and, with ties = "drop", the tied) records dropped."""
        n = self.name
        j = decided_part(part, plan, first_row).with_columns(
            pl.col(n).fill_null(1.0).cast(pl.Float64),
            pl.coalesce(pl.col(f"{n}_group"), pl.col("id")).alias(f"{n}_group"),
            *[pl.col(f"{n}_{s}").fill_null(1).cast(pl.UInt32) for s in ("group_size", "support", "answers")],
            pl.col(f"{n}_conflict").fill_null(False).cast(pl.Boolean),
            pl.col(f"{n}_majority").fill_null(True).cast(pl.Boolean),
            pl.col(f"{n}_tie").fill_null(False).cast(pl.Boolean))
        cols = [*part.columns, *self.config.output_columns()]
        kept = j.filter(pl.col(REASON).is_null()).select(cols)
        dropped = j.filter(pl.col(REASON).is_not_null()).select(*cols, REASON, DETAIL)
        return StageResult(kept=kept, dropped=dropped)

    def process(self, table: pl.DataFrame) -> StageResult:
        return run_planned(self, table, max(1, table.height))


STAGE = ConsensusStage
