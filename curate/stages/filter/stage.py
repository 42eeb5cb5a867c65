"""`filter`: heuristic quality filters and instruction-specific checks, computed column-wise.

Every statistic becomes a column (`<stage>_<stat>`) whether or not it drops anything, so a
run with `action = "flag"` shows the distributions; `<stage>_failed` lists every check a
row fails, `_reason` the first in a fixed order (instruction checks, then length bounds,
ratios, repetition).

Two families:
  * Generic text quality over the `on` view (Gopher/C4/FineWeb heuristics): length bounds
    (characters, words, tokens), mean word length, alphabetic/digit/symbol/non-ASCII
    ratios, URL density, and the Gopher repetition family.
  * Instruction checks, always over prompt vs answer: empty or placeholder answer, answer
    equal to / contained in the prompt, refusal and AI-disclaimer boilerplate, answer
    ending mid-sentence, unbalanced code fences, merged instructions, and answers to
    prompts whose only content is behind a URL the model could not have read.

Adapting web-document thresholds to instruction data (the defaults, see README.md, "Cleaning"):
ratios, mean word length and repetition are judged only on texts of at least
`ratio_min_words` words (Gopher's thresholds were fitted on documents of >= 50 words; on a
one-line answer such as "16 - 3 = 13" they are noise), and word-based statistics skip texts
written mostly in scripts without spaces (Chinese, Japanese, Thai), where a "word" is a
whole clause.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

from curate.stages.filter import phrases
from curate.stages.base import DETAIL, REASON, FilterStage, PartColumns, StageResult, sum_counts
from curate.stages.common.decisions import decide_checks
from curate.stages.common.text_stats import CODE_BLOCK_RE, URL_RE, basic_stats_frame, repetition_stats
from curate.contract.typed_config import ConfigError
from curate.contract.views import text_view

INSTRUCTION_CHECKS = (
    "empty_answer", "answer_repeats_prompt", "refusal", "ai_disclaimer", "merged_instructions",
    "unbalanced_code_fence", "truncated", "unverifiable_url",
)
THRESHOLDS = (
    "min_chars", "max_chars", "min_words", "max_words", "min_tokens", "max_tokens",
    "min_mean_word_length", "max_mean_word_length", "min_alpha_ratio", "max_digit_ratio",
    "max_symbol_ratio", "max_non_ascii_ratio", "max_url_ratio",
    "max_dup_line_frac", "max_dup_line_char_frac", "max_dup_para_frac", "max_dup_para_char_frac",
    "top_ngrams", "dup_ngrams",
)

# Answers that contain the scaffolding of another example: several tasks merged into one
# record, or a chat template leaking into the text.
MERGED_RE = (
    r"(?im)(^[ \t]*(?:#{1,4}[ \t]*)?(?:\d{1,2}[ \t]*[.)][ \t]*)?(?:new[ \t]+)?instruction[ \t]*\d*[ \t]*:"
    r"|^[ \t]*#{2,4}[ \t]*(?:input|response|human|assistant)[ \t]*:?[ \t]*$"
    r"|^[ \t]*(?:human|user)[ \t]*:[ \t]*\S"
    r"|<\|im_start\|>|<\|im_end\|>|\[/?INST\]|<\|user\|>|<\|assistant\|>)"
)
# ... or a numbered list of answers given to a question that wants one answer (answers to
# several records' instructions pasted under one prompt).
SINGLE_ANSWER_RE = (
    r"(?i)^\s*(?:what is|what's|who is|who was|who wrote|when did|when was|where is|which is|calculate|compute|"
    r"convert|multiply|divide|add|subtract|give a synonym|give an antonym|what is another word|is \d+|how much is|"
    r"how many|summari[sz]e|write a one-sentence|give a short summary|translate)\b"
)
LIST_CUE_RE = (
    r"(?i)\b(?:lists?|steps|ways|examples|ideas|tips|reasons|items|points|options|enumerate|outline|bullets?|"
    r"several|multiple|each|all|top \d+|\d+ (?:\w+ )?(?:things|words|examples|ways|reasons|facts|sentences))\b"
)
NUMBERED_RE = r"(?m)^\s*\d{1,2}[.)]\s+\S"
FENCE_RE = r"(?m)^[ \t]*```"
# An answer ending on a comma, an opening bracket or a word that cannot end a sentence.
DANGLING_RE = (
    r"(?i)(?:[,(\[{\u2013\u2014\uff0c\u3001\uff1b\uff08\u300a\u300c\u201c]|\s(?:and|or|but|nor|the|a|an|of|to|with|for|in|on|at|by|from|into|"
    r"that|which|who|whose|because|is|are|was|were|as|such as|including|than|then|so|if|when|while))$"
)
LIST_ITEM_RE = r"^\s*(?:[-*+\u2022]|\d{1,3}[.)]|[a-zA-Z][.)])\s"
# Prompts asking about the content behind a link.
READ_URL_RE = (
    r"(?i)\b(?:summari[sz]e|summary|read|article|according to|based on|review|watch|visit|explain|"
    r"what does|what is this|(?:this|the|that|following) (?:page|link|url|website|site|post|video|paper|blog|document|tweet))\b"
)
# ... unless the task is about the URL string itself.
ABOUT_URL_RE = r"(?i)\b(?:domain|hostname|subdomain|protocol|scheme|parse|validate|valid|shorten|format|regex|extract)\b|\burls?\b"
NO_ACCESS_RE = (
    r"(?i)(?:can(?:not|'t|\u2019t)|unable to|not able to|don't|do not|doesn't|does not) "
    r"(?:access|browse|open|visit|read|view|click|have (?:access|the ability))"
)


@dataclass
class Config:
    kind: Literal["filter"]
    name: str | None = None
    action: Literal["drop", "flag"] = "drop"
    # The text the generic statistics read (instruction checks always compare prompt and answer).
    on: Literal["user", "assistant", "all", "prompt", "response", "conversation", "last_user", "last_assistant"] = "assistant"
    # Length bounds; unset = no bound.
    min_chars: int | None = None
    max_chars: int | None = 100_000
    min_words: int | None = None
    max_words: int | None = None
    min_tokens: int | None = None
    max_tokens: int | None = None
    # tokenizer.json file or a directory holding one; without it tokens are regex word/punct runs.
    tokenizer: str | None = None
    # Ratios (of non-space characters) and mean word length, judged on texts of >= ratio_min_words.
    ratio_min_words: int = 20
    min_mean_word_length: float | None = 2.0
    max_mean_word_length: float | None = 12.0
    min_alpha_ratio: float | None = 0.25
    max_digit_ratio: float | None = 0.5
    max_symbol_ratio: float | None = 0.25
    max_non_ascii_ratio: float | None = None
    max_url_ratio: float | None = 0.5
    # Gopher repetition (lines/paragraphs: DataTrove's defaults), per turn, on turns of >= repetition_min_words.
    repetition_min_words: int = 20
    max_dup_line_frac: float | None = 0.3
    max_dup_line_char_frac: float | None = 0.2
    max_dup_para_frac: float | None = 0.3
    max_dup_para_char_frac: float | None = 0.2
    # n-gram thresholds: Gopher's x2. Instruction answers quote their prompt's items step by
    # step ("Height in: ... matches the information provided." x10); on the real sets the
    # legitimate ones reach ~0.33 dup-5-gram, copy-paste loops 0.5-0.7.
    top_ngrams: dict[str, float] = field(default_factory=lambda: {"2": 0.40, "3": 0.36, "4": 0.32})
    dup_ngrams: dict[str, float] = field(
        default_factory=lambda: {"5": 0.30, "6": 0.28, "7": 0.26, "8": 0.24, "9": 0.22, "10": 0.20}
    )
    # Instruction checks to run (all by default).
    checks: list[str] = field(default_factory=lambda: list(INSTRUCTION_CHECKS))
    placeholders: list[str] | None = None  # None = curate.stages.filter.phrases.PLACEHOLDERS
    refusal_phrases: list[str] | None = None  # None = curate.stages.filter.phrases.REFUSAL_PHRASES
    extra_refusal_phrases: list[str] = field(default_factory=list)
    disclaimer_phrases: list[str] | None = None  # None = curate.stages.filter.phrases.DISCLAIMER_PHRASES
    extra_disclaimer_phrases: list[str] = field(default_factory=list)
    # answer_repeats_prompt: an answer contained in the prompt counts when it is at least this
    # long and this fraction of the prompt (extraction tasks quote short spans legitimately).
    copy_min_chars: int = 20
    copy_min_fraction: float = 0.5
    # truncated: an unterminated last line counts when it is prose of at least this many words
    # (not applied to unspaced scripts); a dangling comma/connective always counts.
    truncation_min_words: int = 4
    # unverifiable_url: the prompt's text besides its URLs is at most this many words.
    url_prompt_max_words: int = 40
    # Names of thresholds or checks to switch off (TOML has no null to unset a default).
    disable: list[str] = field(default_factory=list)

    def validate(self) -> None:
        for c in self.checks:
            if c not in INSTRUCTION_CHECKS:
                raise ConfigError("checks", f"unknown check {c!r} (known: {', '.join(INSTRUCTION_CHECKS)})")
        for d in self.disable:
            if d not in INSTRUCTION_CHECKS and d not in THRESHOLDS:
                raise ConfigError("disable", f"unknown check or threshold {d!r} (known: {', '.join(INSTRUCTION_CHECKS + THRESHOLDS)})")
        for key in ("min_chars", "max_chars", "min_words", "max_words", "min_tokens", "max_tokens"):
            v = getattr(self, key)
            if v is not None and v < 0:
                raise ConfigError(key, f"must be >= 0, got {v}")
        for lo, hi in (("min_chars", "max_chars"), ("min_words", "max_words"), ("min_tokens", "max_tokens"),
                       ("min_mean_word_length", "max_mean_word_length")):
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and a > b:
                raise ConfigError(lo, f"{lo} = {a} is above {hi} = {b}")
        for key in ("min_alpha_ratio", "max_digit_ratio", "max_symbol_ratio", "max_non_ascii_ratio", "max_url_ratio",
                    "max_dup_line_frac", "max_dup_line_char_frac", "max_dup_para_frac", "max_dup_para_char_frac",
                    "copy_min_fraction"):
            v = getattr(self, key)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ConfigError(key, f"must be a fraction in [0, 1], got {v}")
        for key in ("top_ngrams", "dup_ngrams"):
            for n, v in getattr(self, key).items():
                if not n.isdigit() or not 1 <= int(n) <= 50:
                    raise ConfigError(f"{key}.{n}", "keys are n-gram sizes 1..50, e.g. { 2 = 0.2 }")
                if not 0.0 <= v <= 1.0:
                    raise ConfigError(f"{key}.{n}", f"must be a fraction in [0, 1], got {v}")
        for key in ("ratio_min_words", "repetition_min_words", "copy_min_chars", "truncation_min_words", "url_prompt_max_words"):
            if getattr(self, key) < 0:
                raise ConfigError(key, "must be >= 0")

    def check_paths(self, base_dir) -> None:
        if self.tokenizer is not None:
            _tokenizer_file(Path(base_dir), self.tokenizer)

    def enabled(self, key: str):
        """A threshold's value, or None when unset or disabled."""
        return None if key in self.disable else getattr(self, key)


def _tokenizer_file(base_dir: Path, path: str) -> Path:
    p = Path(path).expanduser()
    p = p if p.is_absolute() else base_dir / p
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise ConfigError("tokenizer", f"no tokenizer.json at {p}")
    return p


def _norm(text: pl.Expr) -> pl.Expr:
    """Lower-cased, whitespace-collapsed, edge punctuation stripped: for equality/containment."""
    return (
        text.str.to_lowercase()
        .str.replace_all(r"\s{2,}|[^\S ]", " ")  # = r"\s+" -> " ", without rewriting single spaces
        .str.strip_chars(" \t\n\r.,;:!?\"'`*()[]{}<>")
    )


def _placeholder_norm(text: pl.Expr) -> pl.Expr:
    return (
        text.str.to_lowercase()
        .str.replace_all(r"[_\-]+", " ")
        .str.replace_all(r"\s+", " ")
        .str.strip_chars(" \t\n\r.,;:!?\"'`*()[]{}<>#|~")
    )


def _fmt(value: pl.Expr, digits: int = 3) -> pl.Expr:
    return value.round(digits).cast(pl.String) if digits else value.cast(pl.String)


class HeuristicFilter(FilterStage):
    """Statistics first (columns), decisions second (one boolean per check)."""

    kind = "filter"
    Config = Config

    def _col(self, stat: str) -> str:
        return f"{self.name}_{stat}"

    def annotate(self, table: pl.DataFrame) -> pl.DataFrame:
        frame, checks = self._evaluate(table)
        # each check evaluated once; details only on the rows that fail (common/decisions.py)
        out, fails = decide_checks(frame, checks, self._col("failed"))
        self._check_hits = {key: int(v) for (key, _, _, _), v in zip(checks, fails.sum().row(0))} if checks else {}
        return out.drop([c for c in out.columns if c.startswith("__")])

    def block_state(self) -> dict:
        return {"check_hits": dict(self._check_hits)}

    def merge_block_states(self, states: list[dict]) -> None:
        # rows failing each check: counts over disjoint blocks add up
        self._check_hits = sum_counts([s["check_hits"] for s in states])

    def process(self, table: pl.DataFrame) -> StageResult:
        result = super().process(table)
        result.stats["checks"] = dict(self._check_hits)
        stat_cols = self._stat_columns(result.kept.columns)
        both = pl.concat([result.kept.select(stat_cols), result.dropped.select(stat_cols)]) if stat_cols else None
        if both is not None and both.height:
            result.stats["summary"] = {c[len(self.name) + 1:]: _summary(both, c) for c in stat_cols}
        return result

    def statistics(self, parts: PartColumns) -> dict:
        """`process`'s stats from the parts' small columns, a column at a time: the hits
        counted part by part, each statistic's summary over that one column of every row
        (in `process`'s order: kept rows, then dropped ones), so the ~30 statistic
        columns of every row are never held together (8 B a row at a time instead of
        ~220 B, about three times)."""
        stats = {"hits": parts.reason_counts(), "checks": dict(self._check_hits)}
        # the columns process() would see in `kept`: without _reason/_detail (drop) or with
        # them renamed to <name>_flag/_flag_detail (flag): the same statistic columns
        stat_cols = self._stat_columns([c for c in parts.columns if c not in (REASON, DETAIL)])
        split = getattr(self.config, "action", "drop") != "flag"
        if stat_cols and parts.rows:
            stats["summary"] = {c[len(self.name) + 1:]: _summary(parts.split_column(c, split), c) for c in stat_cols}
        return stats

    def _stat_columns(self, columns: list[str]) -> list[str]:
        return [c for c in columns if c.startswith(f"{self.name}_")
                and c not in (self._col("failed"), self._col("flag"), self._col("flag_detail"))]

    # ------------------------------------------------------------------ statistics + checks

    def _evaluate(self, table: pl.DataFrame):
        cfg = self.config
        col = self._col
        frame = table.with_columns(text_view(cfg.on).alias("__text"))
        frame = frame.with_columns(pl.col("__text").str.replace_all(CODE_BLOCK_RE, " ").alias("__prose"))
        frame = frame.with_columns(pl.col("__prose").str.count_matches(r"\S+").alias("__prose_words"))
        stats = basic_stats_frame(frame["__text"], frame["__prose"])  # = basic_stats, eagerly and faster
        frame = frame.with_columns([stats[k].alias(col(k)) for k in stats.columns if k != "unspaced_ratio"]
                                   + [stats["unspaced_ratio"].alias("__unspaced")])
        if cfg.tokenizer is not None:
            frame = frame.with_columns(pl.Series(col("tokens"), self._token_counts(frame["__text"]), dtype=pl.Int64))
        top = {int(n): v for n, v in cfg.top_ngrams.items()} if "top_ngrams" not in cfg.disable else {}
        dup = {int(n): v for n, v in cfg.dup_ngrams.items()} if "dup_ngrams" not in cfg.disable else {}
        frame = frame.hstack([s.alias(col(s.name)) for s in self._repetition(frame, top, dup).get_columns()])

        checks: list[tuple[str, str, pl.Expr, pl.Expr]] = []
        enabled_checks = [c for c in cfg.checks if c not in cfg.disable]
        if enabled_checks:
            frame, instr = self._instruction_checks(frame, enabled_checks)
            checks.extend(instr)

        def bound(key, stat, reason, op, digits=0, gate=None):
            v = cfg.enabled(key)
            if v is None:
                return
            c = pl.col(col(stat))
            fail = (c < v) if op == "<" else (c > v)
            if gate is not None:
                fail = fail & gate
            detail = pl.format(f"{stat}={{}} {op} {key}={v}", _fmt(c, digits))
            checks.append((key, reason, fail.fill_null(False), detail))

        # ratios are over the prose (fenced code removed), so judge them when the prose is long
        long_enough = pl.col("__prose_words") >= cfg.ratio_min_words
        spaced = long_enough & (pl.col("__unspaced") < 0.1)
        bound("min_chars", "chars", "too_short", "<")
        bound("max_chars", "chars", "too_long", ">")
        bound("min_words", "words", "too_short", "<", gate=pl.col("__unspaced") < 0.1)
        bound("max_words", "words", "too_long", ">")
        bound("min_tokens", "tokens", "too_short", "<")
        bound("max_tokens", "tokens", "too_long", ">")
        bound("min_mean_word_length", "mean_word_length", "mean_word_length", "<", 2, spaced)
        bound("max_mean_word_length", "mean_word_length", "mean_word_length", ">", 2, spaced)
        bound("min_alpha_ratio", "alpha_ratio", "low_alpha_ratio", "<", 3, long_enough)
        bound("max_digit_ratio", "digit_ratio", "high_digit_ratio", ">", 3, long_enough)
        bound("max_symbol_ratio", "symbol_ratio", "high_symbol_ratio", ">", 3, long_enough)
        bound("max_non_ascii_ratio", "non_ascii_ratio", "high_non_ascii_ratio", ">", 3, long_enough)
        bound("max_url_ratio", "url_ratio", "high_url_ratio", ">", 3)
        bound("max_dup_line_frac", "dup_line_frac", "duplicate_lines", ">", 3, None)
        bound("max_dup_line_char_frac", "dup_line_char_frac", "duplicate_lines", ">", 3, None)
        bound("max_dup_para_frac", "dup_para_frac", "duplicate_paragraphs", ">", 3, None)
        bound("max_dup_para_char_frac", "dup_para_char_frac", "duplicate_paragraphs", ">", 3, None)
        for n, v in sorted(top.items()):
            c = pl.col(col(f"top_{n}gram_frac"))
            checks.append((f"top_ngrams.{n}", "top_ngram", (c > v).fill_null(False),
                           pl.format(f"top_{n}gram_frac={{}} > {v}", _fmt(c))))
        for n, v in sorted(dup.items()):
            c = pl.col(col(f"dup_{n}gram_frac"))
            checks.append((f"dup_ngrams.{n}", "duplicate_ngrams", (c > v).fill_null(False),
                           pl.format(f"dup_{n}gram_frac={{}} > {v}", _fmt(c))))
        return frame, checks

    def _repetition(self, frame: pl.DataFrame, top: dict, dup: dict) -> pl.DataFrame:
        """Gopher repetition per turn, the maximum over the view's turns: in a multi-turn chat,
        answers to similar questions repeat each other legitimately; one answer repeating
        itself is the defect. Fenced code is left out (code repeats lines by nature), and
        turns shorter than `repetition_min_words` score 0 (the Gopher thresholds were fitted
        on documents of >= 50 words; on a 30-word answer one repeated 4-gram exceeds them)."""
        cfg = self.config
        n = frame.height
        if cfg.on in ("last_user", "last_assistant"):
            turns = frame.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"), text_view(cfg.on).alias("_t"))
        else:
            roles = {"user": ["user"], "assistant": ["assistant"], "response": ["assistant"],
                     "prompt": ["system", "user", "tool"]}.get(cfg.on)
            turns = (
                frame.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"), "messages")
                .explode("messages")
                .filter(pl.col("messages").is_not_null())
                .select("_row", pl.col("messages").struct.field("role").alias("_r"),
                        pl.col("messages").struct.field("content").alias("_t"))
            )
            if roles is not None:
                turns = turns.filter(pl.col("_r").is_in(roles))
        turns = turns.with_columns(pl.col("_t").fill_null("").str.replace_all(CODE_BLOCK_RE, "\n"))
        turns = turns.filter(pl.col("_t").str.count_matches(r"\S+") >= cfg.repetition_min_words)
        stats = repetition_stats(turns["_t"], top_ngrams=top, dup_ngrams=dup)
        per_row = pl.concat([turns.select("_row"), stats], how="horizontal").group_by("_row").max()
        full = pl.DataFrame({"_row": pl.int_range(0, n, dtype=pl.UInt32, eager=True)}).join(
            per_row, on="_row", how="left", maintain_order="left")
        return full.drop("_row").fill_null(0.0) if stats.width else pl.DataFrame()

    def _token_counts(self, texts: pl.Series) -> list[int]:
        """Token counts with the configured tokenizer: one batched call per chunk."""
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(_tokenizer_file(self.context.config_dir, self.config.tokenizer)))
        counts: list[int] = []
        values = texts.fill_null("").to_list()
        for i in range(0, len(values), 4096):
            counts.extend(len(e.ids) for e in tok.encode_batch(values[i:i + 4096], add_special_tokens=False))
        return counts

    def _instruction_checks(self, frame: pl.DataFrame, enabled: list[str]):
        """Each check's expensive part runs only on the rows a cheap test leaves possible
        (answers of <= 40 characters for placeholders, a URL in the prompt, a fence in the
        answer, ...), computed on that subset and joined back by row index."""
        cfg = self.config
        el = pl.element()
        # A turn that only calls tools (content "", its calls in `extra`) is not an answer to judge.
        calls_only = (el.struct.field("content") == "") & el.struct.field("extra").str.json_path_match("$.tool_calls").is_not_null()
        is_asst = (el.struct.field("role") == "assistant") & ~calls_only.fill_null(False)
        answers = pl.col("messages").list.eval(pl.when(is_asst).then(el.struct.field("content"))).list.drop_nulls()
        # the answers' view is the statistics' text when `on` is that view: not built twice
        same_view = cfg.on in ("assistant", "response") and "__text" in frame.columns
        frame = frame.with_row_index("__i").with_columns(
            text_view("user").alias("__user"),
            pl.col("__text").alias("__resp") if same_view else text_view("assistant").alias("__resp"),
            text_view("last_assistant").str.strip_chars().alias("__last"),
            answers.alias("__answers"),
        )
        checks = []

        def subset(mask: pl.Expr, key: str, fail: pl.Expr, detail: pl.Expr):
            nonlocal frame
            # lazy, so that only the columns the check reads are gathered for the subset
            sub = frame.lazy().filter(mask).select("__i", fail.fill_null(False).alias(f"__f_{key}"),
                                                   detail.alias(f"__d_{key}")).collect()
            frame = frame.join(sub, on="__i", how="left", maintain_order="left")
            checks.append((key, key, pl.col(f"__f_{key}").fill_null(False), pl.col(f"__d_{key}")))

        if "empty_answer" in enabled:
            ph = sorted(set(_lit_norm(p) for p in (cfg.placeholders if cfg.placeholders is not None else phrases.PLACEHOLDERS)))
            longest = max([len(p) for p in ph] + [0]) + 20
            n_ans = pl.col("__answers").list.len()
            short = pl.col("__answers").list.eval(el.str.len_chars() <= longest).list.any()
            hit = pl.col("__answers").list.eval(pl.when(_placeholder_norm(el).is_in(ph)).then(el)).list.drop_nulls()
            subset(
                (n_ans == 0) | short, "empty_answer",
                (n_ans == 0) | (hit.list.len() > 0),
                pl.when(n_ans == 0).then(pl.lit("no assistant turn"))
                .otherwise(pl.format("answer is '{}'", hit.list.first().str.slice(0, 40))),
            )

        if "answer_repeats_prompt" in enabled:
            p, r = _norm(pl.col("__user")), _norm(pl.col("__resp"))
            equal = (r == p) & (r.str.len_chars() > 0)
            contained = (
                (r.str.len_chars() >= cfg.copy_min_chars)
                & (r.str.len_chars() >= cfg.copy_min_fraction * p.str.len_chars())
                & p.str.contains(r, literal=True)
            )
            # after normalisation an answer inside the prompt is not longer than it
            possible = pl.col("__resp").str.len_chars() <= pl.col("__user").str.len_chars() * 1.2 + 10
            subset(possible, "answer_repeats_prompt", equal | contained,
                   pl.when(equal).then(pl.lit("answer equals prompt")).otherwise(pl.lit("answer is copied from prompt")))

        patterns = []
        for key, default, extra, custom in (
            ("refusal", phrases.REFUSAL_PHRASES, cfg.extra_refusal_phrases, cfg.refusal_phrases),
            ("ai_disclaimer", phrases.DISCLAIMER_PHRASES, cfg.extra_disclaimer_phrases, cfg.disclaimer_phrases),
        ):
            pattern = phrases.phrase_pattern(list(custom if custom is not None else default) + list(extra))
            if key in enabled and pattern is not None:
                patterns.append((key, pattern))
        if patterns:
            lc = pl.col("__resp").str.to_lowercase().str.replace_all("[\u2019\u2018`]", "'")
            frame = frame.with_columns(lc.alias("__resp_lc"))
            for key, pattern in patterns:
                m = pl.col("__resp_lc").str.extract(pattern, 1)
                checks.append((key, key, m.is_not_null(), pl.format("matched '{}'", m)))

        if "merged_instructions" in enabled:
            m = pl.col("__resp").str.extract(MERGED_RE, 1).str.strip_chars()
            last_user = text_view("last_user")
            numbered = (
                (pl.col("__last").str.count_matches(NUMBERED_RE) >= 3)
                & last_user.str.contains(SINGLE_ANSWER_RE)
                & ~last_user.str.contains(LIST_CUE_RE)
            )
            # the prompt's view and its regexes only for answers that open a numbered list
            opens_list = pl.col("__last").str.contains(r"^\s*1[.)]\s").fill_null(False)
            sub = frame.lazy().filter(opens_list).select("__i", numbered.fill_null(False).alias("__numbered")).collect()
            frame = frame.join(sub, on="__i", how="left", maintain_order="left")
            numbered = pl.col("__numbered").fill_null(False)
            checks.append(("merged_instructions", "merged_instructions", m.is_not_null() | numbered,
                           pl.when(m.is_not_null()).then(pl.format("marker '{}'", m))
                           .otherwise(pl.lit("numbered answers to a one-answer question"))))

        if "unbalanced_code_fence" in enabled:
            odd = pl.col("__answers").list.eval(el.str.count_matches(FENCE_RE) % 2 == 1).list.any()
            subset(pl.col("__resp").str.contains("```", literal=True), "unbalanced_code_fence", odd,
                   pl.lit("odd number of ``` fences in an answer"))

        if "truncated" in enabled:
            # only the end of the answer matters: regexes anchored at `$` still scan from the start
            last = pl.col("__last").str.slice(-400)
            last_line = last.str.extract(r"([^\n]*)$", 1).str.strip_chars()
            unspaced = last_line.str.count_matches(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}]") > last_line.str.len_chars() // 2
            raw_line = last.str.extract(r"([^\n]*)$", 1)
            dangling = (
                last.str.contains(DANGLING_RE)
                & (pl.col("__last").str.count_matches(r"\S+") >= 3)
                # `return a`, `x = b +`: an indented or operator-bearing last line is code
                & ~raw_line.str.contains(r"^(?:\s{2,}|\t)|[=;{}<>]|\breturn\b")
            )
            # Scripts without spaces often end answers without a full stop (oasst zh does), so
            # only the dangling-punctuation rule applies to them.
            prose = (
                ~unspaced
                & ~pl.col("__last").str.contains("```", literal=True)
                & ~last_line.str.contains(LIST_ITEM_RE)
                & ~last_line.str.contains(r"^\s*[|#>]")
                & (last_line.str.count_matches(r"\S+") >= cfg.truncation_min_words)
                # the last word is lower-case prose: not a name, hashtag, code identifier or unit
                & last_line.str.contains(r"(?:^|\s)\p{Ll}+$")
            )
            # a complete sentence ends in punctuation or a closing mark: cheap test first
            possible = ~pl.col("__last").str.slice(-1).is_in(list(".!?\u3002\uff01\uff1f\"')]}>*`\u201d\u2019:;"))
            subset(possible, "truncated", dangling | prose, pl.format("ends with '{}'", pl.col("__last").str.slice(-30)))

        if "unverifiable_url" in enabled:
            user = pl.col("__user")
            url = user.str.extract(URL_RE, 0)
            rest = user.str.replace_all(URL_RE, " ")
            fail = (
                url.is_not_null()
                & (rest.str.count_matches(r"\S+") <= cfg.url_prompt_max_words)
                & rest.str.contains(READ_URL_RE)
                & ~rest.str.contains(ABOUT_URL_RE)
                & ~pl.col("__resp").str.contains(NO_ACCESS_RE)
                & (pl.col("__answers").list.len() > 0)
            )
            has_url = user.str.contains("://", literal=True) | user.str.contains("www.", literal=True)
            subset(has_url, "unverifiable_url", fail, pl.format("answers about unread {}", url))
        return frame, checks


def _summary(frame: pl.DataFrame, c: str) -> dict:
    """Mean, 5th/50th/95th percentile of column `c` (rounded to 4 places; None for no value)."""
    row = frame.select(
        pl.col(c).mean().alias("mean"), pl.col(c).quantile(0.05).alias("p5"),
        pl.col(c).median().alias("p50"), pl.col(c).quantile(0.95).alias("p95"),
    ).row(0, named=True)
    return {q: (round(float(v), 4) if v is not None else None) for q, v in row.items()}


def _lit_norm(s: str) -> str:
    return pl.select(_placeholder_norm(pl.lit(s))).item()


STAGE = HeuristicFilter
