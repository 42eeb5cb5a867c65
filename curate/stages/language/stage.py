"""`language`: fastText language ID per role, a keep-list, a confidence floor, and a
prompt/answer language-mismatch check.

Columns: `<stage>_<role>` (language code, null when the text is too short to judge) and
`<stage>_<role>_score` (fastText probability). Before prediction, fenced code and URLs are
removed (fastText calls Python "English" with random confidence), whitespace is collapsed
and each text is cut to `max_chars` (language is settled long before that; it bounds the
cost of very long turns). Only distinct texts are sent to fastText, in one batched call
per chunk: the one per-record library call this stage cannot avoid.

Reasons: `wrong_language` (confident, not in `keep`), `uncertain_language` (below
`min_score` while a `keep` list is set, only with `drop_uncertain = true`), `language_mismatch` (user and assistant both
confident and different), `wrong_target_language` (a translation prompt names a target
language, "into French", and the answer is confidently in a third language, neither the
target nor the prompt's own). Translation prompts are
exempt from the keep-list and mismatch checks: mixing languages is their point. Besides
fenced code, lines that look like code (indented blocks, statements, braces) are left out
before prediction: code is not prose in any language.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

from curate.stages.language import langid
from curate.stages.base import FilterStage, PartColumns, StageResult, sum_counts
from curate.stages.common.decisions import decide_checks
from curate.stages.common.text_stats import CODE_BLOCK_RE, URL_RE, weighted_letters
from curate.contract.typed_config import ConfigError
from curate.contract.views import text_view

ROLE_VIEWS = {"user": "user", "assistant": "assistant", "all": "all", "last_user": "last_user",
              "last_assistant": "last_assistant"}
# Prompts that ask for another language: a mismatch is the point of the task.
TRANSLATION_RE = r"(?i)translat|traduc|tradu[iz]|übersetz|перевед|перевод|翻译|翻譯|翻訳|번역|\bin (?:english|french|spanish|german|chinese|japanese|korean|italian|portuguese|russian|arabic|hindi)\b"


# Target language named in a translation prompt ("into French", "to German", "in English",
# "Give the Spanish translation"): the answer must be in it.
LANGUAGE_NAMES = {
    "english": "en", "french": "fr", "german": "de", "spanish": "es", "italian": "it", "portuguese": "pt",
    "dutch": "nl", "russian": "ru", "chinese": "zh", "japanese": "ja", "korean": "ko", "arabic": "ar",
    "hindi": "hi", "turkish": "tr", "polish": "pl", "swedish": "sv", "greek": "el", "vietnamese": "vi",
    "marathi": "mr", "persian": "fa", "farsi": "fa", "bengali": "bn", "urdu": "ur", "tamil": "ta", "telugu": "te",
    "gujarati": "gu", "punjabi": "pa", "indonesian": "id", "thai": "th", "hebrew": "he", "czech": "cs",
    "romanian": "ro", "hungarian": "hu", "finnish": "fi", "danish": "da", "norwegian": "no", "ukrainian": "uk",
    "malayalam": "ml", "kannada": "kn", "catalan": "ca", "galician": "gl", "basque": "eu",
}
_NAMES = "|".join(LANGUAGE_NAMES)
# most specific first: "into/to X", then "X translation", then "in X" ("a sentence in
# Japanese ... into Polish" names the source with "in")
TARGET_RES = (
    rf"(?i)\b(?:into|to)\s+(?:the\s+)?({_NAMES})\b",
    rf"(?i)\b({_NAMES})\s+(?:translation|version|equivalent)\b",
    rf"(?i)\bin\s+({_NAMES})\b",
)
# Lines that are code, not prose: indented blocks, statements, braces, markup.
CODE_LINE_RE = (
    r"(?m)^(?:[ \t]{2,}\S.*|\s*(?:def|class|return|import|from|for|while|if|elif|else|try|except|with|print|"
    r"const|let|var|function|public|private|static|#include|SELECT|INSERT|UPDATE)\b.*|.*[{};]\s*|\s*[<\[{}\]>].*)$"
)


@dataclass
class Config:
    kind: Literal["language"]
    name: str | None = None
    action: Literal["drop", "flag"] = "drop"
    # Roles to identify: user, assistant, all, last_user, last_assistant.
    on: list[str] = field(default_factory=lambda: ["user", "assistant"])
    keep: list[str] = field(default_factory=list)  # e.g. ["en"]; empty = any language
    min_score: float = 0.5
    # Below min_score a prediction is not a verdict: short prompts ("Convert 89.1 inches to
    # centimetres.") score 0.2-0.5 in their true language. Set true to drop them anyway
    # (DataTrove's LanguageFilter behaviour).
    drop_uncertain: bool = False
    # Texts with fewer letters than this are not judged (fastText guesses on "OK", "42").
    min_chars: int = 20
    # In min_chars, one character of a script written without spaces (Chinese, Japanese,
    # Thai...) counts as this many letters: "今天你吃饭了吗？" (7 characters) is judged.
    unspaced_weight: int = 4
    max_chars: int = 2000
    check_mismatch: bool = True
    mismatch_exempt_pattern: str = TRANSLATION_RE
    model: str | None = None  # a fastText .bin/.ftz; default: the bundled lid.176.ftz
    # Processes sharing fastText prediction (this one + workers - 1 spawned once), for 20,000+
    # distinct texts; output is identical for any value. None: the usable CPUs, at most 8.
    # Set 1 where each executor worker already has a core of its own (Ray).
    workers: int | None = None

    def validate(self) -> None:
        for r in self.on:
            if r not in ROLE_VIEWS:
                raise ConfigError("on", f"unknown role {r!r} (known: {', '.join(ROLE_VIEWS)})")
        if not self.on:
            raise ConfigError("on", "name at least one role")
        if len(set(self.on)) != len(self.on):
            raise ConfigError("on", "a role is listed twice")
        if not 0.0 <= self.min_score <= 1.0:
            raise ConfigError("min_score", f"must be in [0, 1], got {self.min_score}")
        if self.min_chars < 0 or self.max_chars < 1:
            raise ConfigError("max_chars", "min_chars must be >= 0 and max_chars >= 1")
        if self.workers is not None and self.workers < 1:
            raise ConfigError("workers", f"must be >= 1, got {self.workers}")
        if self.unspaced_weight < 1:
            raise ConfigError("unspaced_weight", f"must be >= 1, got {self.unspaced_weight}")
        if self.model is None:  # the bundled model's labels are known without a path
            known = langid.labels()
            bad = [k for k in self.keep if k not in known]
            if bad:
                raise ConfigError("keep", f"unknown language code(s) {bad} for lid.176 (e.g. en, zh, fr, de, es, ja)")

    def check_paths(self, base_dir) -> None:
        if self.model is not None:
            p = Path(self.model).expanduser()
            p = p if p.is_absolute() else Path(base_dir) / p
            if not p.is_file():
                raise ConfigError("model", f"no fastText model at {p}")


# Whitespace runs that are not one plain space: replaced by " ", the same as every run.
COLLAPSE_WS_RE = r"\s{2,}|[^\S ]"


def _clean(text: pl.Expr, max_chars: int) -> pl.Expr:
    """The prose of a turn: fenced code, code-looking lines and URLs removed."""
    return (
        text.str.replace_all(CODE_BLOCK_RE, " ")
        .str.replace_all(CODE_LINE_RE, " ")
        .str.replace_all(URL_RE, " ")
        # = replace_all(r"\s+", " "), several times faster: single plain spaces, most of
        # the whitespace, are not matched and so not rewritten
        .str.replace_all(COLLAPSE_WS_RE, " ")
        .str.strip_chars()
        .str.slice(0, max_chars)
    )


class LanguageStage(FilterStage):
    kind = "language"
    Config = Config

    def _model_path(self):
        return None if self.config.model is None else str(self.context.resolve(self.config.model))

    def annotate(self, table: pl.DataFrame) -> pl.DataFrame:
        cfg = self.config
        frame = table.with_columns([_clean(text_view(ROLE_VIEWS[r]), cfg.max_chars).alias(f"__lt_{r}") for r in cfg.on])
        # judged once, as a column: every use below reads it instead of recounting letters
        frame = frame.with_columns([(weighted_letters(pl.col(f"__lt_{r}"), cfg.unspaced_weight) >= cfg.min_chars)
                                    .alias(f"__judged_{r}") for r in cfg.on])
        judged = {r: pl.col(f"__judged_{r}") for r in cfg.on}
        texts = pl.concat([frame.filter(judged[r]).select(pl.col(f"__lt_{r}").alias("t")) for r in cfg.on]).unique(maintain_order=True)
        workers = cfg.workers if cfg.workers is not None else min(8, langid.usable_cpus())
        langs, scores = langid.predict_series(texts["t"], self._model_path(), workers=workers)
        lut = texts.with_columns(langs.alias("lang"), pl.Series("score", scores, dtype=pl.Float64))
        for r in cfg.on:
            lang, score = f"{self.name}_{r}", f"{self.name}_{r}_score"
            frame = frame.join(lut.rename({"t": f"__lt_{r}", "lang": lang, "score": score}), on=f"__lt_{r}",
                               how="left", maintain_order="left")
            frame = frame.with_columns(
                pl.when(judged[r]).then(pl.col(lang)).alias(lang),
                pl.when(judged[r]).then(pl.col(score)).alias(score),
            )
        checks = []
        # A translation prompt is meant to mix languages: no keep-list or mismatch verdict on
        # it, but its answer must be in the language the prompt asks for.
        # the prompt's view, exemption and target as columns, once: several checks read them
        frame = frame.with_columns(text_view("last_user").alias("__prompt"))
        prompt = pl.col("__prompt")
        target = pl.coalesce([prompt.str.extract(r, 1) for r in TARGET_RES]).str.to_lowercase()
        frame = frame.with_columns(prompt.str.contains(cfg.mismatch_exempt_pattern).alias("__translation"),
                                   target.replace_strict(LANGUAGE_NAMES, default=None, return_dtype=pl.String)
                                   .alias("__target"))
        translation, target = pl.col("__translation"), pl.col("__target")
        if cfg.keep:
            for r in cfg.on:
                lang, score = pl.col(f"{self.name}_{r}"), pl.col(f"{self.name}_{r}_score")
                detail = pl.format(f"{r}={{}} ({{}})", lang, score.round(2).cast(pl.String))
                checks.append(("wrong_language", (lang.is_not_null() & (score >= cfg.min_score) & ~lang.is_in(cfg.keep) & ~translation), detail))
                if cfg.drop_uncertain:
                    checks.append(("uncertain_language", (lang.is_not_null() & (score < cfg.min_score) & ~translation), detail))
        if "assistant" in cfg.on or "last_assistant" in cfg.on:
            r = "last_assistant" if "last_assistant" in cfg.on else "assistant"
            a, a_s = pl.col(f"{self.name}_{r}"), pl.col(f"{self.name}_{r}_score")
            fail = translation & target.is_not_null() & a.is_not_null() & (a_s >= cfg.min_score) & (a != target)
            if "user" in cfg.on:
                # an answer in the prompt's own language is often a wrapper around a short
                # translated phrase ("In Spanish, that is ..."): only a third language is wrong
                fail = fail & (a != pl.col(f"{self.name}_user")).fill_null(True)
            checks.append(("wrong_target_language", fail, pl.format("asked for {}, answer is {}", target, a)))
        if cfg.check_mismatch and "user" in cfg.on and "assistant" in cfg.on:
            u, a = pl.col(f"{self.name}_user"), pl.col(f"{self.name}_assistant")
            us, as_ = pl.col(f"{self.name}_user_score"), pl.col(f"{self.name}_assistant_score")
            fail = (u != a) & (us >= cfg.min_score) & (as_ >= cfg.min_score) & ~translation
            checks.append(("language_mismatch", fail, pl.format("user={} assistant={}", u, a)))
        # each check evaluated once; details only on the rows that fail (common/decisions.py)
        out, fails = decide_checks(frame, [(r, r, f, d) for r, f, d in checks])
        # rows failing each reason (any role), for the manifest
        by_reason: dict[str, pl.Expr] = {}
        for (r, _, _), name in zip(checks, fails.columns):
            by_reason[r] = by_reason[r] | pl.col(name) if r in by_reason else pl.col(name)
        self._hits = (
            {k: int(v) for k, v in fails.select([e.sum().alias(k) for k, e in by_reason.items()]).row(0, named=True).items()}
            if by_reason else {}
        )
        return out.drop([c for c in out.columns if c.startswith("__")])

    def block_state(self) -> dict:
        return {"hits": dict(self._hits)}

    def merge_block_states(self, states: list[dict]) -> None:
        # rows failing each check: counts over disjoint blocks add up
        self._hits = sum_counts([s["hits"] for s in states])

    def process(self, table: pl.DataFrame) -> StageResult:
        result = super().process(table)
        result.stats["checks"] = dict(self._hits)
        both = pl.concat([result.kept.select(pl.col(f"{self.name}_{r}") for r in self.config.on),
                          result.dropped.select(pl.col(f"{self.name}_{r}") for r in self.config.on)])
        result.stats["languages"] = {r: self._top(both.group_by(f"{self.name}_{r}").len(), r) for r in self.config.on}
        return result

    def statistics(self, parts: PartColumns) -> dict:
        """`process`'s stats from the parts' small columns, counted part by part (the
        counts of disjoint parts add up): nothing held per row."""
        stats = {"hits": parts.reason_counts(), "checks": dict(self._hits), "languages": {}}
        for r in self.config.on:
            c = f"{self.name}_{r}"
            counts = pl.concat([df.group_by(c).len() for df in parts.iter([c])], how="vertical_relaxed")
            stats["languages"][r] = self._top(counts.group_by(c).agg(pl.col("len").sum()), r)
        return stats

    def _top(self, counts: pl.DataFrame, role: str) -> dict:
        """The 20 most frequent languages of `role` (ties by name; the null group takes a
        place but is not listed) from (language, len) counts."""
        c = f"{self.name}_{role}"
        top = counts.sort(["len", c], descending=[True, False], nulls_last=True).head(20)
        return {k: int(v) for k, v in top.iter_rows() if k is not None}


STAGE = LanguageStage
