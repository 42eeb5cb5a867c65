"""Exact, column-wise tokenization for BPE tokenizers that cut text into words: a corpus-level
word cache.

A byte-level BPE tokenizer (the `tokenizers` pipeline of GPT-2, Llama-3, Qwen2 and their
descendants: the ByteLevel pre-tokenizer with GPT-2's regex, or a Split with Llama-3's or
Qwen2's regex then ByteLevel; a BPE model) computes ids(text) as: split out the added tokens
-> cut each remaining segment into words with the regex -> BPE each word on its own ->
concatenate. BPE never crosses a word, so a text's ids are the concatenation of its words'
ids, and a word's ids do not depend on where it occurs. SentencePiece-style BPE (Metaspace)
is the same after its own cut (MetaspaceWordCache).

`WordCache.encode` does the cutting for a whole batch at once with polars (Rust regex,
multi-threaded), runs the tokenizer's own BPE on each *distinct* word once (2,000 real
conversations hold ~390k words but ~24k distinct ones), and gathers the ids back with numpy.
The per-text work the tokenizer repeats for every occurrence — regex, byte mapping, cache
lookups, offsets, one Encoding object per text — is what this saves; the ids are the
tokenizer's, by construction, and are checked:

- The word regex is the tokenizer's without its one lookahead (`\\s+(?!\\S)`: Rust's regex
  has none); a mark put where the lookahead cuts stands in for it (see the pattern notes).
- Unicode classes (letter, number, whitespace) may differ between polars' regex and the
  tokenizer's (Oniguruma) for code points whose Unicode version they disagree on: every
  non-ASCII character of a batch is first classified by the tokenizer's own pre-tokenizer
  (each character once per WordCache); a text holding one that disagrees takes the tokenizer path.
- Per text, the tokens' bytes must add up to the text's UTF-8 length, else the tokenizer path.

An NFC normalizer (Qwen2's) is accepted: texts that NFC changes take the tokenizer path.
`WordCache.for_tokenizer` returns None for any other pipeline (other normalizers or split
regexes, Metaspace without byte fallback, BPE dropout, added tokens that strip whitespace,
no added token at all): those are tokenized by the tokenizer itself. Token positions are
kept in UTF-8 bytes (a token is whole bytes), which is all masking needs (`_Batch.spans`).
"""
from __future__ import annotations

import json
import re

import numpy as np
import polars as pl

# The word regexes are Oniguruma patterns with one lookahead, `\s+(?!\S)`, which Rust's regex
# (polars) lacks. What it does: a run of 2+ whitespace characters before a non-space is cut
# before its last character (which then starts the next word: " x", or stands alone: "\n").
# A BOUNDARY_MARK put exactly there, and the pattern without the lookahead (never matching a
# mark), find the same words. Where the cut falls depends on the pattern's other alternatives,
# so each supported family has its own rule (tested against tokenizers built with each).
SEGMENT_MARK = "\x00"   # wraps each added token (the tokenizer splits them out first)
BOUNDARY_MARK = "\x02"  # the lookahead's cut
LOOKAHEAD = r"\s+(?!\S)|"

# GPT-2 (tokenizers' ByteLevel pre-tokenizer with use_regex): any whitespace run.
GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
GPT2_BOUNDARY = r"(\s)(\s[^\s\x00])"
# Llama-3 and Qwen2 (a Split pre-tokenizer, then ByteLevel without its regex): `\s*[\r\n]+`
# comes first and takes a run up to its last newline, so the cut falls in the run's
# newline-free tail only.
SPLIT_FAMILY = {
    "llama-3": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}
SPLIT_BOUNDARY = r"([^\S\r\n])([^\S\r\n][^\s\x00])"


def marked_pattern(pattern: str) -> str:
    """`pattern` for text carrying marks: the lookahead alternative dropped, marks excluded from
    every negated class, and an added token wrapped in SEGMENT_MARKs matched whole."""
    assert pattern.count(LOOKAHEAD) == 1
    return r"\x00[^\x00]*\x00|" + pattern.replace(LOOKAHEAD, "").replace("[^", r"[^\x00\x02")


MAX_WORDS = 2_000_000  # distinct words the table keeps across batches before it starts afresh
ENCODE_CHUNKS = 64  # distinct words are BPE-encoded in this many joined strings (Rust threads)
L, N, WS, OTHER = 0, 1, 2, 3
_CHAR_OK: dict[str, dict[str, bool]] = {}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (what ByteLevel vocab strings are made of)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


BYTE_TO_CHAR = _bytes_to_unicode()


class TokenizedText:
    """One text's ids and, per token, where it ends in the text's UTF-8 bytes."""

    __slots__ = ("ids", "ends", "widths", "text", "_ascii")

    def __init__(self, ids: np.ndarray, ends: np.ndarray, widths: np.ndarray, text: str):
        self.ids, self.ends, self.widths, self.text = ids, ends, widths, text
        self._ascii = text.isascii()

    def __len__(self) -> int:
        return len(self.ids)

    def spans(self, ranges: list[tuple[int, int]]) -> list[tuple[int, int] | None]:
        """Per character range [start, end): (first, last) token overlapping it, or None."""
        return _Batch.of_one(self).spans([list(ranges)])[0]

    @property
    def offsets(self) -> np.ndarray:
        """Character offsets per token, (n, 2) (a token inside a multi-byte character
        covers that character)."""
        raw = np.frombuffer(self.text.encode("utf-8"), dtype=np.uint8)
        char_of = np.cumsum((raw & 0xC0) != 0x80) - 1
        if not len(self.ends):
            return np.zeros((0, 2), dtype=np.int64)
        starts = self.ends - self.widths
        return np.stack([char_of[starts], char_of[self.ends - 1] + 1], axis=1)


class WordCache:
    """Batch tokenizer for one byte-level BPE tokenizer (see the module docstring)."""

    # whether a batch's non-ASCII characters are first classified by the tokenizer's own
    # pre-tokenizer (a regex split on letters/numbers/spaces needs it; a cut at "▁" does not)
    CHECK_CHARACTER_CLASSES = True

    def __init__(self, backend, added: dict[str, int], byte_len: np.ndarray, word_re: str, boundary_re: str | None,
                 nfc: bool = False, pre_key: str = ""):
        """`word_re`: the word regex over marked text (see `marked_pattern`); `boundary_re`:
        where to put the lookahead's mark (None: no mark)."""
        self.backend = backend
        self.word_re, self.boundary_re, self.nfc = word_re, boundary_re, nfc
        self.added = added
        self.byte_len = byte_len
        self.added_re = "|".join(re.escape(a) for a in sorted(added, key=len, reverse=True))
        self.sep, self.sep_id = next(iter(sorted(added.items(), key=lambda kv: kv[1])), (None, None))
        # whether polars and the tokenizer agree on a character's class: a property of the
        # pre-tokenizer, shared by every WordCache over the same one in this process
        self.char_ok: dict[str, bool] = _CHAR_OK.setdefault(pre_key, {})
        self._vocab: pl.DataFrame | None = None  # the word table (see _learn)

    # ------------------------------------------------------------------ set-up
    @classmethod
    def for_tokenizer(cls, tokenizer) -> "WordCache | None":
        """A WordCache when `tokenizer` (transformers fast tokenizer or tokenizers.Tokenizer)
        is a pipeline this module reproduces exactly, else None."""
        backend = getattr(tokenizer, "backend_tokenizer", None) or tokenizer
        try:
            spec = json.loads(backend.to_str())
        except Exception:  # noqa: BLE001 - not a tokenizers pipeline
            return None
        pre, model, norm = spec.get("pre_tokenizer") or {}, spec.get("model") or {}, spec.get("normalizer")
        if getattr(backend, "encode_special_tokens", False):
            return None
        if pre.get("type") == "Metaspace":
            return MetaspaceWordCache.for_spec(backend, spec)
        if norm not in (None, {"type": "NFC"}):
            return None
        if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
            pattern, boundary = GPT2_RE, GPT2_BOUNDARY
        elif pre.get("type") == "Sequence" and len(pre.get("pretokenizers", [])) == 2:
            split, byte_level = pre["pretokenizers"]
            pattern = (split.get("pattern") or {}).get("Regex")
            if split.get("type") != "Split" or pattern not in SPLIT_FAMILY.values() or split.get("invert") \
                    or split.get("behavior") != "Isolated" or byte_level.get("type") != "ByteLevel" \
                    or byte_level.get("use_regex", True) or byte_level.get("add_prefix_space"):
                return None
            boundary = SPLIT_BOUNDARY
        else:
            return None
        if model.get("type") != "BPE" or model.get("dropout") or model.get("continuing_subword_prefix") \
                or model.get("end_of_word_suffix"):
            return None
        added: dict[str, int] = {}
        for tid, tok in backend.get_added_tokens_decoder().items():
            if tok.lstrip or tok.rstrip or tok.single_word or not tok.content or "\x00" in tok.content \
                    or re.search(boundary, tok.content):
                return None  # whitespace-stripping tokens; contents the marks would cut
            added[tok.content] = int(tid)
        if not added:
            return None  # the joined-words encoding (_bpe) needs an added token as separator
        alphabet = set(BYTE_TO_CHAR.values())
        vocab = backend.get_vocab(with_added_tokens=False)
        size = max([*vocab.values(), *added.values()]) + 1
        byte_len = np.zeros(size, dtype=np.int64)
        for token, tid in vocab.items():
            if not set(token) <= alphabet:
                return None
            byte_len[tid] = len(token)
        for content, tid in added.items():
            byte_len[tid] = len(content.encode("utf-8"))
        return cls(backend, added, byte_len, marked_pattern(pattern), boundary, nfc=norm is not None,
                   pre_key=json.dumps(pre, sort_keys=True))

    # ------------------------------------------------------------------ character classes
    def _classify(self, chars: list[str]) -> None:
        """Record, for each new non-ASCII character, whether polars' regex and the
        tokenizer's pre-tokenizer put it in the same class (letter/number/space/other)."""
        new = [c for c in chars if c not in self.char_ok]
        if not new:
            return
        # The tokenizer's view, from the word that starts each probe: "a"+c holds c iff c is a
        # letter, "!!"+c iff c is neither letter, number nor whitespace, "\t"+c+"\t\t\t" iff
        # whitespace (asked in that order); else a number.
        heads = ("a", "!!", "\t")
        tails = ("\n", "\nz", "\t\t\ta\n")  # each probe's first word starts at its head
        probe, starts = [], []
        pos = 0
        for c in new:
            for head, tail in zip(heads, tails):
                starts.append((pos, pos + len(head)))
                probe.append(head + c + tail)
                pos += len(head) + 1 + len(tail)
        pieces = {a: b for _, (a, b) in self.backend.pre_tokenizer.pre_tokenize_str("".join(probe))}
        merged = np.array([pieces.get(p, p) > at for p, at in starts]).reshape(-1, 3)
        theirs = np.where(merged[:, 0], L, np.where(merged[:, 1], OTHER, np.where(merged[:, 2], WS, N)))
        s = pl.Series(new)
        ours = np.select([s.str.contains(r"^\p{L}$").to_numpy(), s.str.contains(r"^\p{N}$").to_numpy(),
                          s.str.contains(r"^\s$").to_numpy()], [L, N, WS], OTHER)
        for c, a, b in zip(new, ours, theirs):
            self.char_ok[c] = bool(a == b)

    # ------------------------------------------------------------------ encoding
    def _bpe(self, words: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The tokenizer's ids of each distinct word: flat ids and per-word offsets. Words are
        joined with an added token before, between and after them (the tokenizer splits there
        before anything else, so each word is encoded on its own, and none starts the text)
        into a few strings: one Rust call."""
        if not words:
            return np.zeros(0, dtype=np.int32), np.zeros(1, dtype=np.int64)
        k = max(1, -(-len(words) // ENCODE_CHUNKS))
        chunks = [words[i: i + k] for i in range(0, len(words), k)]
        encs = self.backend.encode_batch_fast([self.sep + self.sep.join(c) + self.sep for c in chunks],
                                              add_special_tokens=False)
        flats, lens = [], []
        for chunk, enc in zip(chunks, encs):
            ids = np.asarray(enc.ids, dtype=np.int32)
            cuts = np.flatnonzero(ids == self.sep_id)
            if len(cuts) != len(chunk) + 1:  # cannot happen for the pipelines accepted; checked anyway
                return self._bpe_one_by_one(words)
            flats.append(ids[ids != self.sep_id])
            lens.append(np.diff(cuts) - 1)
        return np.concatenate(flats), np.concatenate(([0], np.cumsum(np.concatenate(lens))))

    def _bpe_one_by_one(self, words: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = [[t.id for t in self.backend.model.tokenize(self._model_text(w))] for w in words]
        lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter((i for x in ids for i in x), dtype=np.int32, count=int(lens.sum()))
        return flat, np.concatenate(([0], np.cumsum(lens)))

    def _model_text(self, word: str) -> str:
        """What the BPE model sees for a word (ByteLevel maps bytes to printable characters)."""
        table = BYTE_TO_CHAR
        return "".join(table[b] for b in word.encode("utf-8"))

    def encode(self, texts: list[str]) -> list[TokenizedText | None]:
        """Per text, its TokenizedText; None where the text must go to the tokenizer itself."""
        batch = self._encode(texts)
        return [None if i is None else TokenizedText(*i) for i in batch.views()]

    def encode_with_spans(self, texts: list[str], ranges: list[list[tuple[int, int]]]) -> list:
        """Per text, (TokenizedText, the token span of each of its character `ranges`) or
        None (the tokenizer's path). All spans of the batch are found in one numpy call."""
        batch = self._encode(texts)
        spans = batch.spans(ranges)
        return [None if v is None else (TokenizedText(*v), sp) for v, sp in zip(batch.views(), spans)]

    # The steps a pipeline family may change (MetaspaceWordCache overrides them).
    OPEN, CLOSE = SEGMENT_MARK, SEGMENT_MARK  # around each added token in the marked text
    MARKS_RE = r"[\x00\x02]"  # texts holding a mark character go to the tokenizer

    def _fallback(self, s: pl.Series) -> pl.Series:
        """True for texts the tokenizer must encode itself."""
        fallback = s.str.contains(self.MARKS_RE)
        if self.nfc:  # the tokenizer normalises to NFC: texts already in NFC are unchanged by it
            fallback = fallback | (s.str.normalize("NFC") != s)
        return fallback

    def _marked(self) -> pl.Expr:
        """The text with added tokens wrapped in marks and the lookahead's cut marked (see the
        pattern notes above): no word pattern matches a mark, so marks end the words on both
        sides, as the tokenizer's split at added tokens and its lookahead do."""
        return (pl.col("text").str.replace_all(self.added_re, self.OPEN + "$0" + self.CLOSE)
                .str.replace_all(self.boundary_re, "${1}" + BOUNDARY_MARK + "${2}"))

    def _encode(self, texts: list[str]) -> "_Batch":
        n = len(texts)
        s = pl.Series("text", texts, dtype=pl.String)
        if n == 0:
            return _Batch(texts, s, np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int32), self.byte_len,
                          np.zeros(1, dtype=np.int64))
        fallback = self._fallback(s)
        bad_chars: list[str] = []
        if self.CHECK_CHARACTER_CLASSES:
            nonascii = s.str.extract_all(r"[^\x00-\x7F]").explode().drop_nulls().unique().to_list()
            self._classify(nonascii)
            bad_chars = [c for c in nonascii if not self.char_ok[c]]
        if bad_chars:
            fallback = fallback | s.str.contains("|".join(re.escape(c) for c in bad_chars))
        fast = ~fallback.to_numpy()

        docs = pl.DataFrame({"doc": np.arange(n, dtype=np.int64), "text": s}).filter(pl.Series(fast))
        # One lazy query per slice of texts, run together (a string column is worked on by one
        # thread per query; slices keep every core busy).
        size = max(1, -(-docs.height // max(1, pl.thread_pool_size())))
        parts = [docs.slice(i, size).lazy() for i in range(0, max(docs.height, 1), size)]
        words_parts = pl.collect_all([p.select("doc", self._marked().str.extract_all(self.word_re).alias("w"))
                                      .explode("w").drop_nulls("w") for p in parts])
        distinct = pl.concat(pl.collect_all([w.lazy().filter(~pl.col("w").str.starts_with(self.OPEN))
                                             .select(pl.col("w").unique()) for w in words_parts])).unique()
        vocab, table_ids, table_offs = self._learn(distinct)
        occ = pl.concat(pl.collect_all([w.lazy().join(vocab.lazy(), on="w", how="left", maintain_order="left")
                                        for w in words_parts]))
        if occ["wid"].null_count():  # a word the table lacks: cannot happen; its texts go to the tokenizer
            fast[occ.filter(pl.col("wid").is_null())["doc"].unique().to_numpy()] = False
        wid, doc_of = occ["wid"].fill_null(0).to_numpy(), occ["doc"].to_numpy()
        # gather each occurrence's ids from the table (a concatenation of index ranges)
        n_tok = table_offs[wid + 1] - table_offs[wid]
        occ_start = np.cumsum(n_tok) - n_tok
        ids = table_ids[np.repeat(table_offs[wid] - occ_start, n_tok) + np.arange(int(n_tok.sum()))]
        per_doc = np.bincount(doc_of, weights=n_tok, minlength=n).astype(np.int64)
        bounds = np.concatenate(([0], np.cumsum(per_doc)))
        phantoms = self._phantoms(occ, occ_start, n_tok)
        return _Batch(texts, s, fast, ids, self.byte_len, bounds, phantoms)

    def _learn(self, distinct: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
        """The word table, extended with the words of `distinct` it lacks (BPE-encoded now):
        a frame word -> wid, and every word's ids as flat ids + offsets. Kept across batches
        (a run's chunks share most words), started afresh past MAX_WORDS."""
        if self._vocab is None or self._vocab.height > MAX_WORDS:
            added = [self.OPEN + a + self.CLOSE for a in self.added]
            self._vocab = pl.DataFrame({"w": pl.Series(added, dtype=pl.String),
                                        "wid": np.arange(len(added), dtype=np.int64)})
            self._ids = np.array(list(self.added.values()), dtype=np.int32)
            self._offs = np.arange(len(added) + 1, dtype=np.int64)
        new = distinct.join(self._vocab, on="w", how="anti")["w"]
        if new.len():
            flat, offs = self._bpe(new.to_list())
            start = self._vocab.height
            self._vocab = pl.concat([self._vocab, pl.DataFrame({"w": new, "wid": np.arange(start, start + new.len())})])
            self._offs = np.concatenate((self._offs, self._offs[-1] + offs[1:]))
            self._ids = np.concatenate((self._ids, flat))
        return self._vocab, self._ids, self._offs

    def _phantoms(self, occ: pl.DataFrame, occ_start: np.ndarray, n_tok: np.ndarray) -> np.ndarray | None:
        """Tokens that begin with a character the pipeline inserted (none here)."""
        return None


class MetaspaceWordCache(WordCache):
    """SentencePiece-style BPE (tokenizers' Metaspace pre-tokenizer: spaces become "▁", a "▁"
    is prepended to the text's first segment ("first") or to every segment ("always"), and
    the segment is one word (split = false) or cut before each "▁" (split = true); a BPE
    model with byte fallback).

    With split = false the tokenizer runs BPE over a whole segment, but a merge joins two
    adjacent symbols into a vocabulary token, so where no vocabulary token holds "▁" after
    another character (checked at load), no merge ever crosses the place before a "▁" that
    follows another character: cutting there gives the same tokens. The prepended "▁" is
    marked PHANTOM in the text (it has no bytes of its own; a token that is only that "▁"
    covers the next character, as the tokenizer's offsets say).

    Barrier characters. BPE only ever joins two adjacent symbols into a vocabulary token, so a
    character that occurs in no vocabulary token of two or more characters (and that no merge
    of byte-fallback tokens could absorb) is never joined with a neighbour: it is its own word,
    and the text on each side of it is encoded as if it stood alone. The cut is made at every
    such character (`joinable_class` lists the others). A small SentencePiece vocabulary
    (stories260K: 512 tokens, 165 merges, 35 joinable characters) leaves digits, most
    punctuation, newlines and every CJK character as barriers, so a Chinese paragraph — one
    "word" between spaces, distinct every time — becomes single characters, each encoded
    once per table, and chat markers written as text (`<|im_start|>`) stop gluing the
    neighbouring words into distinct ones. A large vocabulary (32k, every common character
    in some merge) has few barriers, and the cut changes little there. Trade-off: more word
    occurrences to cut and join in polars (for stories260K about 2.5x as many) against far
    fewer distinct words for the tokenizer's BPE (which dominated: ~75% of the encode time)."""

    OPEN, CLOSE = SEGMENT_MARK, "\x01"
    CHECK_CHARACTER_CLASSES = False  # words are cut at "▁" only
    MARKS_RE = "[\x00\x01\x02\x03\u2581]"  # a literal "▁" would be a space to the model
    PHANTOM = "\x03"

    def __init__(self, backend, added, byte_len, prepend_all: bool, split: bool, joinable: str | None = None):
        """`joinable`: a regex class body of the characters other than "▁" that BPE may join
        with a neighbour (see `joinable_class`); None: every character may."""
        rest = "[^\u2581\x00\x01\x03]" if joinable is None else f"[{joinable}]"
        body = f"[\u2581\x03]{rest}*" if split else f"[\u2581\x03]+{rest}*"
        # a barrier (any other character but a mark or "▁") is a word of its own
        single = "" if joinable is None else "|[^\u2581\x00\x01\x03]"
        super().__init__(backend, added, byte_len, r"\x00[^\x01]*\x01|" + body + f"|{rest}+" + single, None)
        self.prepend_all = prepend_all
        self.joinable = joinable

    @staticmethod
    def joinable_class(vocab: dict[str, int], merges: list) -> str | None:
        """The characters BPE may join with a neighbour, as a regex class body (code points
        as \\x{..} ranges), "▁" and the mark characters left out: every character of every
        vocabulary token of two or more characters (a merge makes only vocabulary tokens, and
        this also covers a model that looks whole words up in its vocabulary first). None
        (no barriers) when a merge takes a byte-fallback token: then a character the
        vocabulary lacks could be joined through its bytes."""
        byte_token = re.compile(r"^<0x[0-9A-F]{2}>$")
        for m in merges:
            pair = m.split(" ", 1) if isinstance(m, str) else m
            if any(byte_token.match(x) for x in pair):
                return None
        chars = {c for t in vocab if len(t) > 1 and not byte_token.match(t) for c in t}
        points = sorted(ord(c) for c in chars - {"\u2581", "\x00", "\x01", "\x02", "\x03"})
        if not points:
            return None
        ranges, start, prev = [], points[0], points[0]
        for p in points[1:] + [-1]:
            if p != prev + 1:
                ranges.append(f"\\x{{{start:X}}}" if start == prev else f"\\x{{{start:X}}}-\\x{{{prev:X}}}")
                start = p
            prev = p
        return "".join(ranges)

    @classmethod
    def for_spec(cls, backend, spec: dict) -> "MetaspaceWordCache | None":
        pre, model = spec.get("pre_tokenizer") or {}, spec.get("model") or {}
        if spec.get("normalizer") is not None or pre.get("replacement") != "\u2581" \
                or pre.get("prepend_scheme") not in ("first", "always"):
            return None
        # ignore_merges looks a whole pre-token up in the vocabulary first: a word cut out of
        # one could be found whole where the pre-token is merged, so that model is not cut
        if model.get("type") != "BPE" or model.get("dropout") or not model.get("byte_fallback") \
                or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") \
                or model.get("ignore_merges"):
            return None
        vocab = backend.get_vocab(with_added_tokens=False)
        byte_tokens = {f"<0x{b:02X}>" for b in range(256)}
        if not byte_tokens <= set(vocab):
            return None
        split = bool(pre.get("split", True))
        if not split and any(re.search("[^\u2581]\u2581", t) for t in vocab):
            return None  # a token that could join across a cut
        added: dict[str, int] = {}
        for tid, tok in backend.get_added_tokens_decoder().items():
            if tok.lstrip or tok.rstrip or tok.single_word or not tok.content or re.search(cls.MARKS_RE + "| ", tok.content):
                return None
            added[tok.content] = int(tid)
        if not added:
            return None  # the joined-words encoding (_bpe) needs an added token as separator
        size = max([*vocab.values(), *added.values()]) + 1
        byte_len = np.zeros(size, dtype=np.int64)
        for token, tid in vocab.items():
            byte_len[tid] = 1 if token in byte_tokens else len(token.replace("\u2581", " ").encode("utf-8"))
        for content, tid in added.items():
            byte_len[tid] = len(content.encode("utf-8"))
        # Barrier cuts make words that start without "▁"; `_bpe` encodes each word as a
        # segment between added tokens, which "always" would prefix with a "▁": barriers under
        # "first" only (the scheme of Llama-2-style SentencePiece tokenizers and stories260K).
        always = pre["prepend_scheme"] == "always"
        return cls(backend, added, byte_len, always, split,
                   None if always else cls.joinable_class(vocab, model.get("merges") or []))

    def _marked(self) -> pl.Expr:
        marked = (pl.col("text").str.replace_all(self.added_re, self.OPEN + "$0" + self.CLOSE)
                  .str.replace_all(" ", "\u2581", literal=True))
        # the prepended "▁": where a segment starts without one (the text's start, or after
        # each added token with "always"), and a segment follows
        at = r"(^|\x01)([^\x00\u2581])" if self.prepend_all else r"(^)([^\x00\u2581])"
        return marked.str.replace_all(at, "${1}" + self.PHANTOM + "${2}")

    def _bpe(self, words: list[str]) -> tuple[np.ndarray, np.ndarray]:
        # The inserted "▁" is a real one to the model. Every word then starts with "▁" or
        # follows a "▁"-less segment start only under "first", where the leading separator
        # keeps the tokenizer from prepending one (no text segment at offset 0).
        return super()._bpe([w.replace(self.PHANTOM, "\u2581") for w in words])

    def _model_text(self, word: str) -> str:
        return word.replace(self.PHANTOM, "\u2581")

    def _phantoms(self, occ, occ_start, n_tok):
        starts = occ["w"].str.starts_with(self.PHANTOM).to_numpy()
        return occ_start[starts & (n_tok > 0)]


class _Batch:
    """A batch's tokens in flat arrays: ids, byte widths, cumulative byte ends (over the whole
    batch), and each text's token range [bounds[i], bounds[i+1])."""

    def __init__(self, texts, series: pl.Series, fast: np.ndarray, ids: np.ndarray, byte_len: np.ndarray,
                 bounds: np.ndarray, phantoms: np.ndarray | None = None):
        self.texts, self.ids, self.bounds = texts, ids, bounds
        self.widths = byte_len[ids]
        if phantoms is not None and len(phantoms):
            self.widths[phantoms] -= 1  # the inserted "▁" has no bytes in the text
        self.ends = np.cumsum(self.widths)
        ends0 = np.concatenate(([0], self.ends))
        self.base = ends0[bounds[:-1]]  # bytes before each text
        self.series = series
        n_bytes = series.str.len_bytes().to_numpy().astype(np.int64)
        self.ascii = n_bytes == series.str.len_chars().to_numpy()
        # a text whose tokens' bytes do not add up to its own goes to the tokenizer (never seen)
        self.fast = fast & (ends0[bounds[1:]] - self.base == n_bytes)
        if phantoms is not None and len(phantoms):
            # a token that is only the inserted "▁" covers the next character (the tokenizer's offsets)
            for k in phantoms[self.widths[phantoms] == 0].tolist():
                doc = int(np.searchsorted(bounds, k, side="right")) - 1
                at = int(self.ends[k] - self.base[doc])
                lead = self.texts[doc].encode("utf-8")[at: at + 1]
                n = 1 if not lead or lead[0] < 0xC0 else 2 if lead[0] < 0xE0 else 3 if lead[0] < 0xF0 else 4
                self.widths[k] = n
                self.ends[k] += n

    @classmethod
    def of_one(cls, t: TokenizedText) -> "_Batch":
        one = cls.__new__(cls)
        one.texts, one.ids, one.widths, one.ends = [t.text], t.ids, t.widths, t.ends
        one.series = pl.Series([t.text], dtype=pl.String)
        one.bounds, one.base = np.array([0, len(t.ids)]), np.zeros(1, dtype=np.int64)
        one.ascii, one.fast = np.array([t.text.isascii()]), np.array([True])
        return one

    def views(self) -> list:
        out: list = [None] * len(self.texts)
        for i in np.flatnonzero(self.fast).tolist():
            a, b = self.bounds[i], self.bounds[i + 1]
            out[i] = (self.ids[a:b], self.ends[a:b] - self.base[i], self.widths[a:b], self.texts[i])
        return out

    def spans(self, ranges: list[list[tuple[int, int]]]) -> list[list]:
        """Token spans of character ranges, per text: (first, last) token overlapping the
        range, or None. The rule transformers' assistant mask uses, in bytes: a token
        overlaps a character range exactly when its bytes overlap the range's bytes."""
        counts = np.fromiter((len(r) for r in ranges), dtype=np.int64, count=len(ranges))
        doc = np.repeat(np.arange(len(ranges)), counts)
        r = np.array([p for rs in ranges for p in rs], dtype=np.int64).reshape(-1, 2)
        todo = np.flatnonzero(~self.ascii[doc] & self.fast[doc] & (r[:, 1] > r[:, 0]))
        if len(todo):  # characters -> bytes in non-ASCII texts: the bytes of each prefix
            prefixes = pl.DataFrame({"t": self.series.gather(np.repeat(doc[todo], 2)), "n": r[todo].ravel()})
            r[todo] = prefixes.select(pl.col("t").str.slice(0, pl.col("n")).str.len_bytes()).to_series() \
                .to_numpy().astype(np.int64).reshape(-1, 2)
        g = r + self.base[doc][:, None]
        first = np.searchsorted(self.ends, g[:, 0], side="right")
        last = np.searchsorted(self.ends - self.widths, g[:, 1], side="left") - 1
        ok = (r[:, 1] > r[:, 0]) & (first <= last)
        rel = self.bounds[doc]
        first, last = (first - rel).tolist(), (last - rel).tolist()
        flat = [(f, l) if k else None for f, l, k in zip(first, last, ok.tolist())]
        cuts = np.cumsum(counts).tolist()
        return [flat[a:b] for a, b in zip([0] + cuts[:-1], cuts)]
