"""Text statistics as polars expressions and column-wise table operations: lengths, character
class ratios, URL density, and the Gopher repetition family (Rae et al. 2021, "Scaling
Language Models", table A1), all computed for a whole column at once.

The repetition family needs per-document line, paragraph and n-gram counts. Instead of a
Python `Counter` per document (DataTrove's GopherRepetitionFilter), the texts are exploded
into one long table of (row, position, word) and every statistic is a hash, a shift, a
group-by or a rolling window over that table. n-grams are keyed by a rolling polynomial of
64-bit word hashes (wrapping arithmetic): collisions are possible in principle and
negligible in practice (2^-64 per pair), and the key never leaves the process.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterable

import numpy as np
import polars as pl
import pyarrow as pa

# Scripts written without spaces between words (Chinese, Japanese kana, Thai, Lao, Khmer,
# Myanmar, Tibetan): counting whitespace-separated runs makes a whole sentence one "word".
UNSPACED_CLASS = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\p{Tibetan}"
# Words for length statistics: whitespace-separated runs (what "words" means in Gopher/C4),
# except that each character of an unspaced script counts as one word. For Chinese that is
# an upper bound (its words average about 1.5 characters), so a `max_words` bound applies to
# it as it does to English, and a short Chinese answer is not one enormous "word".
WORD_RE = rf"[{UNSPACED_CLASS}]|[^\s{UNSPACED_CLASS}]+"
# Tokens when no tokenizer is configured: word runs and single punctuation marks; a cheap
# stand-in that tracks subword-tokenizer counts within a small factor for Latin script.
TOKEN_RE = r"\w+|[^\w\s]"
# Words for repetition n-grams: alphanumeric runs, punctuation dropped (as DataTrove does).
NGRAM_WORD_RE = r"\w+"
URL_RE = r"(?i)\b(?:https?://|ftp://|www\.)[^\s<>\"'()\[\]{}]+"
# One character of an unspaced script: word-based ratio statistics do not apply to them.
UNSPACED_SCRIPT_RE = rf"[{UNSPACED_CLASS}]"
# "Symbols": neither letter, digit, whitespace nor ordinary prose punctuation. Markup, code
# operators, emoji and decorative runs count; commas, quotes and full stops do not.
SYMBOL_RE = r"[^\p{L}\p{M}\p{N}\s.,;:!?'\"()\-\u2018\u2019\u201c\u201d\u3001\u3002\uff0c\uff1f\uff01\uff1a\uff1b]"

_POLY = 0x100000001B3  # FNV-64 prime: an odd multiplier for the rolling n-gram key
_MASK64 = (1 << 64) - 1


def _ratio(num: pl.Expr, den: pl.Expr) -> pl.Expr:
    """num / den as Float64, 0.0 where den is 0 (an empty text has no bad ratio)."""
    return pl.when(den > 0).then(num.cast(pl.Float64) / den.cast(pl.Float64)).otherwise(0.0)


CODE_BLOCK_RE = r"(?s)```.*?(?:```|$)"


def word_count(text: pl.Expr) -> pl.Expr:
    """Words of a String expression by WORD_RE: whitespace-separated runs, one per
    character of an unspaced script ("今天你吃饭了吗？" is 8: 7 characters and the mark)."""
    return text.str.count_matches(WORD_RE)


def weighted_letters(text: pl.Expr, unspaced_weight: int) -> pl.Expr:
    """Letters of a String expression, each character of an unspaced script counted as
    `unspaced_weight` letters: a length that means about the same amount of text in
    every script (one Chinese character carries about as much as a short English word),
    for rules such as "too short to judge"."""
    spaced = text.str.count_matches(rf"[\p{{L}}--[{UNSPACED_CLASS}]]")
    return spaced + text.str.count_matches(UNSPACED_SCRIPT_RE) * unspaced_weight


def basic_stats(text: pl.Expr, prose: pl.Expr | None = None) -> dict[str, pl.Expr]:
    """Length and character-class statistics of a String expression, by name. Character
    ratios are taken over `prose` when given (e.g. the text without fenced code, whose
    braces and operators are not noise)."""
    chars = text.str.len_chars()
    nonspace = chars - text.str.count_matches(r"\s")
    words = word_count(text)
    prose = text if prose is None else prose
    p_nonspace = prose.str.len_chars() - prose.str.count_matches(r"\s")
    url_chars = text.str.extract_all(URL_RE).list.eval(pl.element().str.len_chars()).list.sum()
    return {
        "chars": chars.cast(pl.Int64),
        "words": words.cast(pl.Int64),
        "tokens": text.str.count_matches(TOKEN_RE).cast(pl.Int64),
        "mean_word_length": _ratio(nonspace, words),
        "alpha_ratio": _ratio(prose.str.count_matches(r"[\p{L}\p{M}]"), p_nonspace),
        "digit_ratio": _ratio(prose.str.count_matches(r"\p{N}"), p_nonspace),
        "symbol_ratio": _ratio(prose.str.count_matches(SYMBOL_RE), p_nonspace),
        "non_ascii_ratio": _ratio(text.str.count_matches(r"[^\x00-\x7F]"), nonspace),
        "unspaced_ratio": _ratio(text.str.count_matches(UNSPACED_SCRIPT_RE), nonspace),
        "url_ratio": _ratio(url_chars.fill_null(0), chars),
    }


# ---------------------------------------------------------------- basic_stats, eagerly

# The character-class counts basic_stats takes, by name: (pattern, over the prose?).
_CLASS_COUNTS = {
    "space": (r"\s", False), "words": (WORD_RE, False), "tokens": (TOKEN_RE, False),
    "p_space": (r"\s", True), "alpha": (r"[\p{L}\p{M}]", True), "digit": (r"\p{N}", True),
    "symbol": (SYMBOL_RE, True), "non_ascii": (r"[^\x00-\x7F]", False), "unspaced": (UNSPACED_SCRIPT_RE, False),
}


@lru_cache(maxsize=1)
def _ascii_tables() -> dict[str, np.ndarray]:
    """Per ASCII byte, whether it is whitespace, a letter, a digit, a symbol, a word
    character (`\\w`), derived from the very patterns the regex path uses (polars' regex
    on each of the 128 characters), so the two paths cannot disagree."""
    chars = pl.Series([chr(i) for i in range(128)])
    table = {}
    for name, pattern in (("space", r"\s"), ("alpha", r"[\p{L}\p{M}]"), ("digit", r"\p{N}"),
                          ("symbol", SYMBOL_RE), ("word", r"\w")):
        hit = chars.str.count_matches(pattern).to_numpy() == 1
        table[name] = np.concatenate([hit, np.zeros(128, dtype=bool)])  # bytes >= 128 never occur here
    return table


# Bits of the per-byte class code (`_ascii_codes`).
_SPACE, _ALPHA, _DIGIT, _SYMBOL, _WORD = 1, 2, 4, 8, 16
_LOOKUP_CHUNK = 1 << 22  # bytes classified per table lookup (numpy indexes with intp: 8 bytes of index each)


@lru_cache(maxsize=1)
def _ascii_codes() -> np.ndarray:
    """One byte per byte value: the classes of `_ascii_tables` as bits, so that one table
    lookup classifies a byte for every class at once."""
    t = _ascii_tables()
    code = np.zeros(256, dtype=np.uint8)
    for bit, name in ((_SPACE, "space"), (_ALPHA, "alpha"), (_DIGIT, "digit"), (_SYMBOL, "symbol"), (_WORD, "word")):
        code |= t[name].astype(np.uint8) * np.uint8(bit)
    return code


def _ascii_counts(texts: pl.Series) -> dict[str, np.ndarray]:
    """The counts of `_CLASS_COUNTS` (text ones) for non-null pure-ASCII texts, from
    their bytes: one table lookup gives every byte its class bits (`_ascii_codes`, in
    chunks of `_LOOKUP_CHUNK` bytes, which bounds numpy's index copy), each class is a
    bit mask of that code, and run starts are a shift; per-text sums are one
    `np.add.reduceat` per count. On ASCII, WORD_RE is a run of non-space, TOKEN_RE a run
    of word characters or one character that is neither word nor space."""
    arr = texts.rechunk().to_arrow().cast(pa.large_string())
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset:arr.offset + n + 1]
    data = arr.buffers()[2]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, dtype=np.uint8)
    lo, hi = offsets[0], offsets[-1]
    b = data[lo:hi]
    starts = offsets[:-1] - lo
    lut = _ascii_codes()
    code = np.empty(len(b), dtype=np.uint8)
    for i in range(0, len(b), _LOOKUP_CHUNK):
        np.take(lut, b[i:i + _LOOKUP_CHUNK], out=code[i:i + _LOOKUP_CHUNK])

    sizes = offsets[1:] - offsets[:-1]
    nonempty = sizes > 0
    first = starts[nonempty]
    # per-text sums in one pass (np.add.reduceat; empty texts sum to 0, which reduceat
    # would not give them); a 32-bit accumulator is exact below 2 GiB per text
    acc = np.int32 if len(sizes) == 0 or sizes.max() < 2**31 else np.int64

    def per_text(flags: np.ndarray) -> np.ndarray:
        out = np.zeros(n, dtype=np.uint32)
        if len(first):
            out[nonempty] = np.add.reduceat(flags.view(np.uint8), first, dtype=acc)
        return out

    def bit(mask: int) -> np.ndarray:
        return (code & np.uint8(mask)).astype(bool)

    def run_starts(flags: np.ndarray) -> np.ndarray:
        prev = np.empty_like(flags)
        if len(flags):
            prev[0] = False
            prev[1:] = flags[:-1]
            prev[starts[starts < len(flags)]] = False  # a run never continues into the next text
        return flags & ~prev

    space, word = bit(_SPACE), bit(_WORD)
    return {
        "space": per_text(space), "alpha": per_text(bit(_ALPHA)), "digit": per_text(bit(_DIGIT)),
        "symbol": per_text(bit(_SYMBOL)), "words": per_text(run_starts(~space)),
        "tokens": per_text(run_starts(word)) + per_text(~(word | space)),
    }


def basic_stats_frame(text: pl.Series, prose: pl.Series | None = None) -> pl.DataFrame:
    """`basic_stats` computed eagerly on Series: the same columns with the same values
    (the same final expressions over the same counts), faster. Texts that are pure ASCII
    (len_bytes == len_chars, text and prose; most English) have their character-class
    counts taken from their bytes with numpy (`_ascii_counts`); the others, and nulls, by
    the regexes as in `basic_stats`. The prose's counts are taken only for the texts
    whose prose differs (most have no fenced code: their prose is the text). The trade:
    an ASCII copy of the text bytes (one Arrow buffer) and one byte of class code per
    byte against about ten regex passes over every character."""
    prose = text if prose is None else prose
    df = pl.DataFrame({"t": text, "p": prose})
    n = df.height
    fast = df.select((pl.col("t").is_not_null() & pl.col("p").is_not_null()
                      & (pl.col("t").str.len_bytes() == pl.col("t").str.len_chars())
                      & (pl.col("p").str.len_bytes() == pl.col("p").str.len_chars())).alias("f"))["f"]
    slow_rows = (~fast).arg_true()
    fast_rows = fast.arg_true()
    counts: dict[str, pl.Series] = {}
    slow = df[slow_rows].select([pl.col("p" if on_prose else "t").str.count_matches(pattern).alias(name)
                                 for name, (pattern, on_prose) in _CLASS_COUNTS.items()])
    if len(fast_rows):
        t_fast = df["t"].gather(fast_rows)
        t_counts = _ascii_counts(t_fast)
        p_counts = t_counts
        if prose is not text:  # the prose's own counts only where it differs from the text
            p_fast = df["p"].gather(fast_rows)
            differs = (p_fast != t_fast).arg_true()
            if len(differs):
                sub = _ascii_counts(p_fast.gather(differs))
                at = differs.to_numpy()
                p_counts = {k: t_counts[k].copy() for k in ("space", "alpha", "digit", "symbol")}
                for k, v in p_counts.items():
                    v[at] = sub[k]
        zeros = np.zeros(len(fast_rows), dtype=np.uint32)
        fast_counts = {"space": t_counts["space"], "words": t_counts["words"], "tokens": t_counts["tokens"],
                       "p_space": p_counts["space"], "alpha": p_counts["alpha"], "digit": p_counts["digit"],
                       "symbol": p_counts["symbol"], "non_ascii": zeros, "unspaced": zeros}
    for name in _CLASS_COUNTS:
        full = pl.Series(name, np.zeros(n, dtype=np.uint32))
        if len(fast_rows):
            full = full.scatter(fast_rows, pl.Series(fast_counts[name], dtype=pl.UInt32))
        counts[name] = full.scatter(slow_rows, slow[name]) if len(slow_rows) else full
    frame = df.with_columns(**counts)
    chars, p_chars = pl.col("t").str.len_chars(), pl.col("p").str.len_chars()
    nonspace = chars - pl.col("space")
    p_nonspace = p_chars - pl.col("p_space")
    url_chars = pl.col("t").str.extract_all(URL_RE).list.eval(pl.element().str.len_chars()).list.sum()
    return frame.select(
        chars.cast(pl.Int64).alias("chars"),
        pl.col("words").cast(pl.Int64).alias("words"),
        pl.col("tokens").cast(pl.Int64).alias("tokens"),
        _ratio(nonspace, pl.col("words")).alias("mean_word_length"),
        _ratio(pl.col("alpha"), p_nonspace).alias("alpha_ratio"),
        _ratio(pl.col("digit"), p_nonspace).alias("digit_ratio"),
        _ratio(pl.col("symbol"), p_nonspace).alias("symbol_ratio"),
        _ratio(pl.col("non_ascii"), nonspace).alias("non_ascii_ratio"),
        _ratio(pl.col("unspaced"), nonspace).alias("unspaced_ratio"),
        _ratio(url_chars.fill_null(0), chars).alias("url_ratio"),
    )


_MIX = 0x9E3779B97F4A7C15  # golden-ratio multiplier: spreads row ids over 64 bits


def _row_key(key: pl.Expr) -> pl.Expr:
    """A key made unique per row by mixing in the row id: one u64 column hashes and
    compares much faster than a struct of (row, key)."""
    return key ^ (pl.col("_row").cast(pl.UInt64) * pl.lit(_MIX, dtype=pl.UInt64))


def _split_units(df: pl.DataFrame, text_col: str, unit: str) -> pl.DataFrame:
    """(row, unit_text) for every non-blank line or paragraph. Units with no letter or digit
    ("}", "---", "") are left out: a closing brace repeated in code is not copy-paste."""
    text = pl.col(text_col)
    if unit == "paragraph":
        text = text.str.replace_all(r"\n[ \t]*\n\s*", "\x1e")
        sep = "\x1e"
    else:
        sep = "\n"
    return (
        df.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"), text.str.split(sep).alias("_u"))
        .explode("_u")
        .with_columns(pl.col("_u").str.strip_chars())
        .filter(pl.col("_u").str.contains(r"[\p{L}\p{N}]"))
    )


def _unit_dups(units: pl.DataFrame, n_rows: int, name: str) -> pl.DataFrame:
    """Per row: fraction of units that repeat an earlier unit, and their share of characters."""
    flagged = units.with_columns(
        (~_row_key(pl.col("_u").hash(seed=5)).is_first_distinct()).alias("_dup"),
        pl.col("_u").str.len_chars().alias("_len"),
    )
    agg = flagged.group_by("_row").agg(
        pl.len().alias("_n"),
        pl.col("_dup").sum().alias("_ndup"),
        pl.col("_len").filter(pl.col("_dup")).sum().alias("_cdup"),
    )
    full = pl.DataFrame({"_row": pl.int_range(0, n_rows, dtype=pl.UInt32, eager=True)}).join(
        agg, on="_row", how="left", maintain_order="left"
    )
    return full.select(
        _ratio(pl.col("_ndup").fill_null(0), pl.col("_n").fill_null(0)).alias(f"dup_{name}_frac"),
        pl.col("_cdup").fill_null(0).alias(f"_dup_{name}_chars"),
    )


def repetition_stats(
    texts: pl.Series,
    top_ngrams: Iterable[int] = (2, 3, 4),
    dup_ngrams: Iterable[int] = (5, 6, 7, 8, 9, 10),
) -> pl.DataFrame:
    """The Gopher repetition statistics of every text, one row per input text:

    dup_line_frac, dup_line_char_frac, dup_para_frac, dup_para_char_frac,
    top_{n}gram_frac     characters of the most frequent n-gram (x its count) / characters;
                         0 when no n-gram occurs twice (a short answer is not "repetitive"
                         merely because its only bigram is the whole text)
    dup_{n}gram_frac     characters of words covered by n-grams that repeat an earlier
                         n-gram of the same text / characters (overlaps counted once)

    Character counts of n-grams are the words' characters without spaces, the denominator
    the whole text's characters, as in DataTrove's implementation of Gopher.
    """
    top_ngrams, dup_ngrams = sorted(set(top_ngrams)), sorted(set(dup_ngrams))
    n_rows = texts.len()
    df = pl.DataFrame({"_t": texts.fill_null("")})
    chars = df.select(pl.col("_t").str.len_chars().alias("c"))["c"]
    out = {}
    for unit in ("line", "paragraph"):
        name = "line" if unit == "line" else "para"
        d = _unit_dups(_split_units(df, "_t", unit), n_rows, name)
        out[f"dup_{name}_frac"] = d[f"dup_{name}_frac"]
        out[f"dup_{name}_char_frac"] = pl.select(_ratio(pl.lit(d[f"_dup_{name}_chars"]), pl.lit(chars))).to_series()

    max_n = max(top_ngrams + dup_ngrams, default=0)
    if max_n:
        lists = df.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"), pl.col("_t").str.extract_all(NGRAM_WORD_RE).alias("_w"))
        nw = lists.select(pl.col("_w").list.len().cast(pl.Int64))["_w"]
        offsets = nw.cum_sum() - nw  # index of each row's first word in the exploded table
        words = (
            lists.with_columns(nw.alias("_nw"), offsets.alias("_off"))
            .explode("_w")
            .filter(pl.col("_w").is_not_null())
            .with_columns(
                (pl.int_range(pl.len(), dtype=pl.Int64) - pl.col("_off")).alias("_pos"),
                pl.col("_w").hash(seed=7).alias("_h"),
                pl.col("_w").str.len_chars().cast(pl.Int64).alias("_wl"),
            )
            .drop("_w")
        )
        words = words.with_columns(pl.col("_wl").cum_sum().alias("_cs"))
        ends = (offsets + nw - 1).filter(nw > 0)
        has_words = nw > 0
        n_words = words.height
        h_full, cs_full, wl_full = words["_h"], words["_cs"], words["_wl"]
        # Candidates: positions whose n-gram might occur twice in its row. A repeated n-gram
        # has a repeated (n-1)-gram at each of its occurrences, so after each size only the
        # positions whose n-gram is duplicated stay candidates; on ordinary text the set
        # shrinks to a few percent after two sizes, and sizes 5-10 cost almost nothing.
        cand = words.select(
            pl.int_range(pl.len(), dtype=pl.Int64).alias("_i"), "_row", "_pos", "_nw", pl.col("_h").alias("_key"))
        for n in range(1, max_n + 1):
            cand = cand.filter((pl.col("_pos") + n) <= pl.col("_nw"))
            if n > 1:  # size n from size n-1: one multiply-add per candidate
                nxt = h_full.gather(cand["_i"] + (n - 1))
                cand = cand.with_columns((pl.col("_key") * pl.lit(_POLY, dtype=pl.UInt64) + pl.lit(nxt)).alias("_key"))
            cand = cand.with_columns(_row_key(pl.col("_key")).alias("_k"))
            cand = cand.filter(pl.col("_k").is_duplicated())
            if n in top_ngrams:
                gc = cs_full.gather(cand["_i"] + (n - 1)) - cs_full.gather(cand["_i"]) + wl_full.gather(cand["_i"])
                top = (
                    cand.select("_row", "_k", pl.lit(gc).alias("_gc"))
                    .group_by("_k")
                    .agg(pl.len().alias("_cnt"), pl.col("_row").first(), pl.col("_gc").first())
                    .group_by("_row")
                    .agg((pl.col("_cnt") * pl.col("_gc")).sort_by(["_cnt", "_gc"]).last().alias("_top"))
                )
                col = _per_row(top, "_top", n_rows)
                out[f"top_{n}gram_frac"] = pl.select(_ratio(pl.lit(col), pl.lit(chars))).to_series()
            if n in dup_ngrams:
                starts = cand.filter(~pl.col("_k").is_first_distinct())["_i"]
                dup_start = pl.zeros(n_words, dtype=pl.Int8, eager=True).scatter(starts, 1) if n_words else pl.Series([], dtype=pl.Int8)
                # a word is covered when a duplicate n-gram starts within n-1 words before it;
                # such starts are always in the same row (they are valid n-grams). Per-row sums
                # are differences of one cumulative sum at the rows' last words: no group-by.
                covered = pl.select((wl_full * dup_start.rolling_max(n, min_samples=1)).cum_sum().alias("c"))["c"] if n_words else wl_full
                at_end = covered.gather(ends)
                per_row = at_end - at_end.shift(1, fill_value=0)
                col = pl.Series([0] * n_rows, dtype=pl.Int64).scatter(has_words.arg_true(), per_row)
                out[f"dup_{n}gram_frac"] = pl.select(_ratio(pl.lit(col), pl.lit(chars))).to_series()
    return pl.DataFrame({k: v.alias(k) for k, v in out.items()})


def _per_row(agg: pl.DataFrame, col: str, n_rows: int) -> pl.Series:
    full = pl.DataFrame({"_row": pl.int_range(0, n_rows, dtype=pl.UInt32, eager=True)})
    return full.join(agg.select("_row", col), on="_row", how="left", maintain_order="left")[col].fill_null(0).cast(pl.Int64)
