"""Maintained phrase lists for instruction-data noise, and the regex building they need.

The lists are the defaults of the `filter` stage; a pipeline replaces any of them
(`refusal_phrases = [...]`) or extends them (`extra_refusal_phrases = [...]`). Phrases are
matched case-insensitively after typographic apostrophes are folded to ASCII, at word
boundaries. They are deliberately specific (whole refusal clauses, not single words such
as "sorry" or "inappropriate"), trading a little recall for few false positives: the
aggressive ShareGPT-unfiltered lists also remove answers that merely discuss ethics.
"""
from __future__ import annotations

# Answers that are a placeholder, compared after lower-casing, folding `_`/`-` to spaces
# and stripping surrounding punctuation/brackets ("<noinput>" -> "noinput", "N/A" -> "n/a").
PLACEHOLDERS = (
    "", "n/a", "na", "none", "null", "nil", "nan", "undefined", "empty", "blank",
    "noinput", "no input", "nooutput", "no output", "no answer", "no response", "not applicable",
    "todo", "tbd", "tba", "output", "answer", "response", "insert answer here", "your answer here",
)

REFUSAL_PHRASES = (
    "i'm sorry, but i can't", "i'm sorry, but i cannot", "i am sorry, but i cannot", "i am sorry, but i can't",
    "i apologize, but i cannot", "i apologize, but i can't", "i'm sorry, i can't", "i'm sorry, i cannot",
    "i cannot fulfill", "i can't fulfill", "i cannot comply", "i can't comply",
    "i am unable to fulfill", "i'm unable to fulfill", "i am not able to fulfill", "i'm not able to fulfill",
    "i am unable to comply", "i'm unable to comply", "against my programming",
    "i cannot answer that", "i can't answer that", "i'm not able to answer that", "i am not able to answer that",
    "i cannot assist with", "i can't assist with", "i cannot help with", "i can't help with",
    "i'm unable to help", "i am unable to help", "i'm unable to assist", "i am unable to assist",
    "i'm not able to help", "i am not able to help", "i'm not able to provide", "i am not able to provide",
    "i'm unable to provide", "i am unable to provide", "i must decline", "i have to decline",
    "i won't be able to help", "it is not appropriate for me to", "it's not appropriate for me to",
    "i'm not comfortable", "i am not comfortable", "i cannot engage in", "i can't engage in",
    "i cannot create content", "i can't create content", "i cannot generate", "i can't generate",
    "i do not have access to the internet", "i don't have access to the internet",
    "i cannot browse", "i can't browse", "i'm not able to browse", "i am not able to browse",
    "i don't have real-time", "i do not have real-time",
)

DISCLAIMER_PHRASES = (
    "as an ai language model", "as a language model", "as an ai assistant", "as an ai model",
    "as an ai,", "as an ai i", "as an artificial intelligence", "as a large language model",
    "i am an ai", "i'm an ai", "i am just an ai", "i'm just an ai", "i'm only an ai", "i am only an ai",
    "i am a language model", "i'm a language model", "trained by openai", "developed by openai",
    "created by openai", "my knowledge cutoff", "my knowledge cut-off", "my training data",
    "i don't have personal opinions", "i do not have personal opinions",
    "i don't have personal feelings", "i do not have personal feelings",
    "i don't have personal experiences", "i do not have personal experiences",
    "i don't have feelings", "i do not have feelings", "i don't have emotions", "i do not have emotions",
    "i don't have personal beliefs", "i do not have personal beliefs",
)

_META = set("\\.^$|?*+()[]{}-&~#")


def escape(phrase: str) -> str:
    """Escape regex metacharacters (Rust `regex` syntax, which polars uses)."""
    return "".join("\\" + c if c in _META else c for c in phrase)


def phrase_pattern(phrases) -> str | None:
    """One case-insensitive alternation matching any phrase at a word boundary; the match
    itself is the phrase, so `str.extract` reports which one fired. Longest first, so a
    longer phrase wins over its prefix."""
    parts = sorted({p.strip().lower().replace("\u2019", "'") for p in phrases if p.strip()}, key=lambda p: (-len(p), p))
    if not parts:
        return None
    alts = "|".join((r"\b" if p[0].isalnum() else "") + escape(p) for p in parts)
    return f"({alts})"
