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
texts of the report's examples.

Memory (issue #19): the keys are ~38 B a row and hold no per-row string (two u64 hashes,
a canonical id as u64 + u16, the task as a Categorical; an id that is not canonical stays
a string, and the plan then ranks every id as a string: the fallback costs the strings).
The plan works on numpy arrays: the prompt hashes sorted once to find the repeated
prompts, then only those rows sorted by (prompt, answer); through the passes it holds a
u32 row, a distinct answer and a task code per row of a repeated prompt (~10 B) and a few
integers per distinct answer and per group. The near-equal comparison joins each
contested prompt's answers with themselves in batches of groups (NEAR_BATCH_PAIRS pairs),
so its word lists are bounded by the batch, not by the table. `decisions`: a row and a
distinct answer (12 B) per record whose prompt is repeated; `apply` looks the columns up
in the plan's per-answer and per-group tables and formats the detail of the dropped rows
only. Besides: the contested prompts' distinct answers' texts, while they are compared.
Trade-off: a hash collision between two different prompts (or answers) merges them (odds
about n^2 / 2^65 for n distinct texts: ~3e-6 at 10M); ids are exact (no hash).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import polars as pl

from curate.contract.typed_config import ConfigError
from curate.contract.views import text_view
from curate.stages.base import (DETAIL, REASON, ROW_COL, Plan, Refine, Stage, StageResult, decided_part, group_codes,
                                 id_key_exprs, id_strings, run_planned)
from curate.stages.common.text_norm import STEPS, normalized

REASON_MINORITY = "minority_answer"
REASON_TIE = "tied_answers"
_P, _A, _AID = "__cons_prompt", "__cons_answer", "__cons_aid"  # prompt / answer hashes (u64), answer number
_EMPTY, _AT, _PT, _RT = "__cons_empty", "__cons_answer_text", "__cons_raw_prompt", "__cons_raw_answer"
_IHI, _ILO, _ISTR, _TASK = "__cons_id_hi", "__cons_id_lo", "__cons_id_str", "__cons_task"  # keys: id, task
_KEPT, _MINORITY, _TIED = 0, 1, 2  # an answer's verdict (UInt8)
NEAR_BATCH_PAIRS = 10_000  # answer pairs compared at once (near-equal answers, `_near`)


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
        """Per row, no text and no per-row string: the hashes of the normalised prompt and
        answer, whether the prompt is empty (such a record is its own group), the id as
        two integers when it is canonical (`__cons_id_hi` u64 + `__cons_id_lo` u16, the
        strings' order; any other id stays a string in `__cons_id_str`, null otherwise)
        and the task (Categorical: 4 B)."""
        t = self._normalized_texts(part)
        ids = part.select(
            *id_key_exprs(_IHI, _ILO, _ISTR),
            pl.col("task").cast(pl.String).cast(pl.Categorical).alias(_TASK))
        return pl.DataFrame([t[_P].hash(seed=0).alias(_P), t[_A].hash(seed=0).alias(_A),
                             (t[_P].str.len_chars() == 0).alias(_EMPTY)]).hstack(ids)

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
        """Groups and distinct answers from the hashes, on numpy arrays (issue #19): the
        prompts' hashes sorted once to find the repeated ones (a record alone with its
        prompt, or with an empty prompt, has no decision: `apply`'s defaults), then only
        the rows of repeated prompts sorted by (prompt, answer, row) into distinct answers.
        What is kept for the rest of the plan is a few integers per repeated row (its row,
        group, answer, task code and id keys) and per distinct answer / group; the keys
        themselves are not held past `plan`. The near-equal comparison needs the
        normalised text of one row (the first) of each distinct answer of the prompts with
        2..max_answers of them: asked for (`Refine`), then `_decide`."""
        c = self.config
        n = keys.height
        rows_all = keys[ROW_COL].to_numpy()
        if n and not bool(keys[ROW_COL].is_sorted()):
            raise RuntimeError(f"stage {self.name!r}: keys must come in row order")
        P = keys[_P].to_numpy()
        empty = keys[_EMPTY].fill_null(False).to_numpy()
        n_empty = int(empty.sum())
        ps = np.sort(P[~empty] if n_empty else P)
        first = np.r_[True, ps[1:] != ps[:-1]] if len(ps) else np.zeros(0, dtype=bool)
        starts = np.flatnonzero(first)
        del first
        counts = np.diff(np.r_[starts, len(ps)])
        repeated = ps[starts[counts > 1]]  # the hashes of prompts asked twice or more, sorted
        n_groups = len(starts) + n_empty
        largest = max(int(counts.max()) if len(counts) else 0, 1 if n_empty else 0)
        del ps, starts, counts
        if len(repeated):
            gid = np.searchsorted(repeated, P)
            gid[gid == len(repeated)] = 0
            ri = np.flatnonzero((repeated[gid] == P) & ~empty)  # positions of the rows of repeated prompts
            gid = gid[ri].astype(np.int32)
        else:
            ri, gid = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32)
        del P, empty
        ar = keys[_A].to_numpy()[ri]
        perm = np.lexsort((ar, gid))  # stable: within an answer, rows in order
        gs, as_ = gid[perm], ar[perm]
        del gid
        del ar
        new = np.r_[True, (gs[1:] != gs[:-1]) | (as_[1:] != as_[:-1])] if len(perm) else np.zeros(0, dtype=bool)
        del as_
        a_start = np.flatnonzero(new)
        aid = np.empty(len(perm), dtype=np.int32)
        aid[perm] = np.cumsum(new, dtype=np.int64) - 1  # each repeated row's distinct answer
        del new
        ans_g = gs[a_start]  # the answer's group (answers are in group order)
        ans_n = np.diff(np.r_[a_start, len(perm)]).astype(np.int64)
        ans_rep = ri[perm[a_start]]  # position of the answer's first row
        del gs, perm, a_start
        G = len(repeated)
        # what the ids decide, per answer and per group (no id kept per row): an answer's
        # first row by (id, row) (the examples' `rep`), a group's (its name, its prompt row)
        ids = _Ids.of(keys)
        ids_r = ids.take(ri)
        by = np.lexsort((*ids_r.order_keys(), aid)) if len(aid) else np.zeros(0, dtype=np.int64)
        a_sorted = aid[by]
        first = by[np.flatnonzero(np.r_[True, a_sorted[1:] != a_sorted[:-1]])] if len(by) else by
        del by, a_sorted
        ans_ids = ids_r.take(first)
        ans_first = rows_all[ri[first]]
        del ids_r, first
        g_by = np.lexsort((ans_first, *ans_ids.order_keys(), ans_g)) if len(ans_g) else np.zeros(0, dtype=np.int64)
        g_first = g_by[np.flatnonzero(np.r_[True, ans_g[g_by][1:] != ans_g[g_by][:-1]])] if len(g_by) else g_by
        del g_by
        tcodes, tnames = self._task_codes(keys[_TASK])
        narrow = np.uint32 if not n or int(rows_all[-1]) < 2**32 else np.uint64  # rows held as u32 where they fit
        st = {"n": n, "n_groups": n_groups, "largest": largest, "G": G,
              "rows": rows_all[ri].astype(narrow), "aid": aid, "task": tcodes[ri].astype(np.min_scalar_type(len(tnames))),
              "tnames": tnames, "task_rows": np.bincount(tcodes, minlength=len(tnames) + 1),
              "ans_g": ans_g, "ans_n": ans_n, "ans_rep": rows_all[ans_rep].astype(narrow),
              "ans_ids": ans_ids, "ans_first": ans_first.astype(narrow),
              "g_name": ans_ids.take(g_first), "g_row": ans_first[g_first].astype(narrow)}
        del tcodes, ri, ids, ans_ids
        if c.answer_similarity < 1.0 and G:
            d = np.bincount(ans_g, minlength=G)
            cand = np.flatnonzero((d[ans_g] > 1) & (d[ans_g] <= c.max_answers))
            if len(cand):
                cand = cand[np.argsort(st["ans_rep"][cand], kind="stable")]
                st["cand"] = cand
                return Refine(rows=st["ans_rep"][cand].astype(np.int64), ask="answers", state=st)
        return self._decide(st, None)

    @staticmethod
    def _task_codes(task: pl.Series) -> tuple[np.ndarray, list[str]]:
        """Dense int32 codes of the task (sorted names), null as the last code."""
        null = task.is_null().to_numpy()
        codes, names = group_codes(task.fill_null(""))
        if null.any():
            if "" not in task.drop_nulls().cast(pl.String).to_list():
                # "" came only from the nulls: renumber so that "" is not a name
                keep = [x for x in names if x != ""]
                lut = np.asarray([keep.index(x) if x != "" else -1 for x in names], dtype=np.int32)
                codes, names = lut[codes], keep
            codes = np.where(null, len(names), codes).astype(np.int32)
        return codes, names

    def finish_plan(self, refine: Refine, extra: pl.DataFrame | None) -> Plan | Refine:
        st = refine.state
        if extra is None or extra.height != len(refine.rows):
            raise RuntimeError(f"stage {self.name!r}: asked for {len(refine.rows)} rows' texts, "
                               f"got {0 if extra is None else extra.height}")
        if refine.ask == "answers":
            cand = pl.DataFrame({"g": st["ans_g"][st["cand"]], _AID: st["cand"].astype(np.int64),
                                 "n": st["ans_n"][st["cand"]]}).with_columns(extra[_AT])
            del st["cand"]
            return self._decide(st, cand)
        return self._finish(st, extra)

    def _near(self, st: dict, cand: pl.DataFrame | None) -> tuple[np.ndarray, np.ndarray]:
        """Per distinct answer: its support (the counts of every answer of the same prompt
        that agrees with it, its own included); and the pairs of distinct answers that are
        near-equal (two int64 arrays), by word-set Jaccard of the normalised answers `cand`
        carries (`_AT`: the contested prompts' distinct answers only)."""
        c = self.config
        support = st["ans_n"].copy()
        na = nb = np.zeros(0, dtype=np.int64)
        if cand is not None and cand.height:
            cand = cand.sort("g", maintain_order=True)
            g = cand["g"].to_numpy()
            starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
            d = np.diff(np.r_[starts, len(g)])
            # groups batched by their pairs (d^2 / 2 each): what one batch's self-join holds
            # (two word lists a pair) is bounded by NEAR_BATCH_PAIRS, not by the table
            batch = np.cumsum(d * (d - 1) // 2) // NEAR_BATCH_PAIRS
            cuts = np.r_[starts[np.flatnonzero(np.r_[True, batch[1:] != batch[:-1]])], len(g)]
            found_a, found_b = [], []
            for lo, hi in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
                sub = cand.slice(lo, hi - lo)
                sub = sub.with_columns(pl.col(_AT).str.split(" ").list.unique().alias("w")).select("g", _AID, "n", "w")
                pairs = sub.join(sub, on="g", suffix="_b").filter(pl.col(_AID) < pl.col(f"{_AID}_b"))
                inter = pl.col("w").list.set_intersection(pl.col("w_b")).list.len()
                union = pl.col("w").list.set_union(pl.col("w_b")).list.len()
                pn = pairs.filter(inter >= c.answer_similarity * union.clip(lower_bound=1)).select(_AID, f"{_AID}_b")
                del pairs, sub
                found_a.append(pn[_AID].to_numpy().astype(np.int64))
                found_b.append(pn[f"{_AID}_b"].to_numpy().astype(np.int64))
            na, nb = np.concatenate(found_a), np.concatenate(found_b)
            n0 = st["ans_n"]
            np.add.at(support, na, n0[nb])
            np.add.at(support, nb, n0[na])
        return support, (na, nb)

    def _decide(self, st: dict, cand: pl.DataFrame | None) -> Plan | Refine:
        """Support, conflicts, ties and majorities per distinct answer and per group (numpy,
        over the answers of repeated prompts), each answer's verdict, the decisions (per
        repeated row: its row and its answer) and the stats; the examples' texts are asked
        for next."""
        c = self.config
        G, ans_g, ans_n = st["G"], st["ans_g"], st["ans_n"]
        support, (na, nb) = self._near(st, cand)
        size = np.zeros(G, dtype=np.int64)
        np.add.at(size, ans_g, ans_n)
        n_answers = np.bincount(ans_g, minlength=G).astype(np.int64)
        best = np.zeros(G, dtype=np.int64)
        np.maximum.at(best, ans_g, support)
        conflict = np.bincount(ans_g[support < size[ans_g]], minlength=G) > 0
        is_best = support == best[ans_g]
        n_best = np.bincount(ans_g[is_best], minlength=G)
        n_best_rows = np.zeros(G, dtype=np.int64)
        np.add.at(n_best_rows, ans_g[is_best], ans_n[is_best])
        # a tie: several answers share the highest support and not all of them agree
        # (answers that all agree each count the others' records in their support)
        tie = (n_best > 1) & (n_best_rows > best)
        # an answer near-equal to a top answer is a variant of the majority, not outvoted
        with_top = is_best.copy()
        with_top[na[is_best[nb]]] = True
        with_top[nb[is_best[na]]] = True
        sz = size[ans_g]
        if c.drop == "minority":
            minority = (sz >= c.min_group) & (support < best[ans_g]) & ~with_top & (best[ans_g] > c.majority * sz)
        else:
            minority = np.zeros(len(ans_g), dtype=bool)
        tied = np.zeros(len(ans_g), dtype=bool)
        if c.drop == "minority" and c.ties == "drop":  # a contested prompt with no winner: none of its answers
            tied = (sz >= c.min_group) & tie[ans_g] & ~minority
        del sz
        verdict = np.where(minority, _MINORITY, np.where(tied, _TIED, _KEPT)).astype(np.uint8)
        # one majority record's id: the smallest id of the group's top answers (each answer's
        # smallest id is known); the group's name is its smallest id
        aid = st["aid"]
        top = np.flatnonzero(is_best)
        ans_ids = st["ans_ids"]
        t_by = top[np.lexsort((*ans_ids.take(top).order_keys(), ans_g[top]))] if len(top) else top
        tg = ans_g[t_by]
        m_first = t_by[np.flatnonzero(np.r_[True, tg[1:] != tg[:-1]])] if len(t_by) else t_by
        del top, t_by, tg
        groups = {"size": size, "n_answers": n_answers, "best": best, "conflict": conflict, "tie": tie,
                  "name": st["g_name"], "majority_id": ans_ids.take(m_first)}
        answers = {"g": ans_g.astype(np.int32), "support": support, "is_best": is_best, "verdict": verdict}
        decisions = pl.DataFrame({ROW_COL: pl.Series(ROW_COL, st["rows"].astype(np.uint64), dtype=pl.UInt64),
                                  _AID: pl.Series(_AID, aid, dtype=pl.UInt32)})
        row_min = minority[aid]
        row_conf = conflict[ans_g[aid]]
        stats = self._stats(st, groups, row_min, row_conf)
        stats["ties"], stats["dropped_tied"] = c.ties, int(tied[aid].sum())
        out = {"decisions": decisions, "stats": stats, "groups": groups, "answers": answers}
        ask = self._example_rows(st, groups, answers)
        if ask is None:
            return self._finish(out, None)
        out["shown"] = ask
        rows = np.unique(np.concatenate([ask["rep"].to_numpy(), ask["prompt_row"].to_numpy()])).astype(np.int64)
        return Refine(rows=rows, ask="examples", state=out)

    def _stats(self, st: dict, groups: dict, row_min: np.ndarray, row_conf: np.ndarray) -> dict:
        c = self.config
        size, conflict = groups["size"], groups["conflict"]
        task_rows, tnames, tcodes = st["task_rows"], st["tnames"], st["task"]
        k = len(tnames) + 1
        in_conf = np.bincount(tcodes[row_conf], minlength=k)
        dropped = np.bincount(tcodes[row_min], minlength=k)
        stats = {
            "prompt_view": c.prompt_view, "answer_view": c.answer_view, "answer_similarity": c.answer_similarity,
            "drop": c.drop, "min_group": c.min_group, "majority": c.majority, "rows_in": st["n"],
            "groups": st["n_groups"], "groups_repeated": st["G"],
            "rows_in_repeated_groups": int(size.sum()),
            "conflict_groups": int(conflict.sum()), "rows_in_conflict_groups": int(size[conflict].sum()),
            "tie_groups": int(groups["tie"].sum()), "dropped_minority": int(row_min.sum()),
            "largest_group": st["largest"],
        }
        order = ([len(tnames)] if task_rows[len(tnames)] else []) + list(range(len(tnames)))  # null first, as polars sorts
        stats["by_task"] = {(tnames[i] if i < len(tnames) else None): {
            "rows": int(task_rows[i]), "in_conflict": int(in_conf[i]), "dropped": int(dropped[i])}
            for i in order if task_rows[i]}
        stats["examples"] = []
        return stats

    def _example_rows(self, st: dict, groups: dict, answers: dict) -> pl.DataFrame | None:
        """The report's examples, chosen from keys: the largest conflicting groups (ties by
        group name) and, per group, the answers that can be among its 6 shown (most
        supported first, then most frequent, then by normalised text: every answer tied
        with the 6th by (support, count) is a candidate until its text is known). One row
        per candidate answer: its first row by id (`rep`: its texts) and the group's first
        row by id (`prompt_row`: the prompt shown). None: no example."""
        c = self.config
        conf = np.flatnonzero(groups["conflict"])
        if not c.examples or not len(conf):
            return None
        names = groups["name"].take(conf)
        top = conf[np.lexsort((*names.order_keys(), -groups["size"][conf]))[: c.examples]]
        ex_of = np.full(st["G"], -1, dtype=np.int64)
        ex_of[top] = np.arange(len(top))
        ag = answers["g"]
        sel = np.flatnonzero(ex_of[ag] >= 0)
        g = ag[sel]
        ans = pl.DataFrame({
            _AID: sel.astype(np.int64), "__ex": ex_of[g].astype(np.uint32),
            "group": groups["name"].take(g).strings(),
            "size": groups["size"][g], "n": st["ans_n"][sel], "support": answers["support"][sel],
            "n_answers": groups["n_answers"][g], "rep": st["ans_first"][sel].astype(np.uint64),
            "rep_id": st["ans_ids"].take(sel).strings(), "prompt_row": st["g_row"][g].astype(np.uint64),
        }).sort("__ex", "support", "n", descending=[False, True, True])
        ranked = ans.with_columns(pl.int_range(pl.len()).over("__ex").alias("__rank"))
        sixth = ranked.filter(pl.col("__rank") == 5).select("__ex", pl.col("support").alias("s6"), pl.col("n").alias("n6"))
        cand = (ranked.join(sixth, on="__ex", how="left")
                .filter(pl.col("s6").is_null() | (pl.col("support") > pl.col("s6"))
                        | ((pl.col("support") == pl.col("s6")) & (pl.col("n") >= pl.col("n6"))))
                .drop("__rank", "s6", "n6"))
        return cand

    def _finish(self, st: dict, extra: pl.DataFrame | None) -> Plan:
        """The examples from the fetched texts (if any), the log lines, the plan."""
        stats = st["stats"]
        if extra is not None:
            stats["examples"] = self._examples(st["shown"], extra)
        if stats["dropped_minority"]:
            per_task = ", ".join(f"{t} {v['dropped']}" for t, v in stats["by_task"].items() if v["dropped"])
            self.context.log(f"{self.name}: dropped {stats['dropped_minority']:,} outvoted answers ({per_task}); "
                             "on open-ended tasks (code, writing) an outvoted answer may be a valid alternative: "
                             "drop = \"none\" keeps them and only adds the columns")
        if stats["dropped_tied"]:
            self.context.log(f"{self.name}: dropped {stats['dropped_tied']:,} records of prompts whose top answers "
                             "tie (ties = \"drop\"); on open-ended tasks every answer differs and ties: keep them there")
        return ConsensusPlan(decisions=st["decisions"], stats=stats, groups=st["groups"], answers=st["answers"])

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
        """A join on the row, then each decided row's columns looked up from its answer and
        group (ConsensusPlan); a record alone with its prompt gets support 1 of 1 (its own
        group, its own majority); the outvoted (and, with ties = "drop", the tied) records
        dropped, their detail formatted for them only."""
        n = self.name
        j = decided_part(part, plan, first_row)
        has = j["__decided"].to_numpy()
        a = j[_AID].fill_null(0).to_numpy().astype(np.int64)
        ans, grp = plan.answers, plan.groups
        g = ans["g"][a] if len(ans["g"]) else np.zeros(len(a), dtype=np.int32)
        one = np.ones(len(a), dtype=np.int64)

        def per(values, default):
            return np.where(has, values[g] if len(values) else default, default)

        support = np.where(has, ans["support"][a] if len(ans["support"]) else 1, 1)
        size = per(grp["size"], 1)
        idx = np.flatnonzero(has)
        names = grp["name"].take(g[idx]).strings()
        group = j["id"].scatter(idx, names) if len(idx) else j["id"]
        verdict = np.where(has, ans["verdict"][a] if len(ans["verdict"]) else _KEPT, _KEPT)
        cols = [pl.Series(n, support / size * one, dtype=pl.Float64),
                group.alias(f"{n}_group"),
                pl.Series(f"{n}_group_size", size, dtype=pl.UInt32),
                pl.Series(f"{n}_support", support, dtype=pl.UInt32),
                pl.Series(f"{n}_answers", per(grp["n_answers"], 1), dtype=pl.UInt32),
                pl.Series(f"{n}_conflict", per(grp["conflict"], False), dtype=pl.Boolean),
                pl.Series(f"{n}_majority", np.where(has, ans["is_best"][a] if len(a) and len(ans["is_best"]) else True,
                                                    True), dtype=pl.Boolean),
                pl.Series(f"{n}_tie", per(grp["tie"], False), dtype=pl.Boolean)]
        out = part.with_columns(cols)
        gone = verdict != _KEPT
        out_cols = [*part.columns, *self.config.output_columns()]
        kept = out.filter(pl.Series(~gone)).select(out_cols)
        di = np.flatnonzero(gone)
        if not len(di):
            return StageResult(kept=kept, dropped=out.clear().select(out_cols).with_columns(
                pl.lit(None, pl.String).alias(REASON), pl.lit(None, pl.String).alias(DETAIL)))
        dg = g[di]
        facts = pl.DataFrame({"s": support[di], "z": size[di], "b": grp["best"][dg],
                              "m": grp["majority_id"].take(dg).strings()})
        detail = facts.select(pl.format("{}/{} agree; the majority answer has {}/{} (e.g. {})", "s", "z", "b", "z", "m"))
        reason = np.where(verdict[di] == _TIED, REASON_TIE, REASON_MINORITY)
        dropped = out[pl.Series(di)].select(out_cols).with_columns(pl.Series(REASON, reason, dtype=pl.String),
                                                                  detail.to_series().alias(DETAIL))
        return StageResult(kept=kept, dropped=dropped)

    def process(self, table: pl.DataFrame) -> StageResult:
        return run_planned(self, table, max(1, table.height))


class ConsensusPlan(Plan):
    """consensus's Plan: `decisions` holds, for every row whose prompt is repeated, its row
    (UInt64) and its distinct answer (UInt32, `__cons_aid`), 12 B a row; what `apply` adds
    to it comes from two small tables, per distinct answer (`answers`: its group, support,
    whether it is a top answer, its verdict) and per repeated prompt (`groups`: size,
    distinct answers, top support, conflict, tie, its name and one majority record's id,
    as id integers (`_Ids`)): numpy arrays, never a per-row string."""

    def __init__(self, decisions: pl.DataFrame, stats: dict, groups: dict, answers: dict):
        super().__init__(decisions=decisions, stats=stats, order=None)
        self.groups = groups
        self.answers = answers


class _Ids:
    """Record ids as the plan keeps them: a canonical id (20 lower-case hex digits) as two
    integers (hi: its first 16 digits, lo: its last 4), whose order is the strings' order;
    when some id is not canonical, every id's dense rank among the strings (hi, lo = 0)
    plus the strings themselves (`strs`, for the ids a plan names)."""

    def __init__(self, hi: np.ndarray, lo: np.ndarray, strs: pl.Series | None = None):
        self.hi, self.lo, self.strs = hi, lo, strs

    @classmethod
    def of(cls, keys: pl.DataFrame) -> "_Ids":
        if not keys[_IHI].null_count():
            return cls(keys[_IHI].to_numpy(), keys[_ILO].to_numpy())
        s = id_strings(keys[_IHI].fill_null(0), keys[_ILO].fill_null(0))
        s = pl.select(pl.coalesce(keys[_ISTR], s)).to_series()
        rank = s.rank("dense").fill_null(0).to_numpy().astype(np.uint64)
        return cls(rank, np.zeros(len(rank), dtype=np.uint16), s)

    def take(self, idx: np.ndarray) -> "_Ids":
        idx = np.asarray(idx, dtype=np.int64)
        return _Ids(self.hi[idx], self.lo[idx], None if self.strs is None else self.strs.gather(idx))

    def order_keys(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi): np.lexsort's keys, the last one primary."""
        return self.lo, self.hi

    def strings(self) -> pl.Series:
        if self.strs is not None:
            return self.strs.alias("id")
        return id_strings(self.hi, self.lo)



STAGE = ConsensusStage
