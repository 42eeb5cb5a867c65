"""The word cache (curate/render/word_cache.py) gives the tokenizer's own ids, offsets and spans."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curate.render.renderer import span_tokens
from curate.render.word_cache import SPLIT_FAMILY, MetaspaceWordCache, WordCache
from test_render_tokenizers import CHAT_SPECIALS, CORPUS, bpe_tokenizer, byte_bpe_tokenizer, stories_tokenizer

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"


def sample_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ROOT / "sample_data" / "tokenizer"), local_files_only=True)


@functools.lru_cache(maxsize=None)
def split_family_tokenizer(family: str):
    """A byte-level BPE with Llama-3's or Qwen2's pre-tokenizer (a Split with the family's
    regex, then ByteLevel without its own; Qwen2 also normalises to NFC), trained here."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    if family == "qwen2":
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_FAMILY[family]), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<s>", "</s>", *CHAT_SPECIALS], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


@functools.lru_cache(maxsize=None)
def metaspace_tokenizer(prepend_scheme: str, split: bool):
    """A SentencePiece-style BPE (Metaspace pre-tokenizer, byte fallback), trained here on
    words (split) and then set to the given prepend scheme and split."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=True)
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", *CHAT_SPECIALS],
                                                        show_progress=False))
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab) + len(spec["added_tokens"]))
    spec["model"]["byte_fallback"] = True
    spec["pre_tokenizer"].update(prepend_scheme=prepend_scheme, split=split)
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token="<s>",
                                   eos_token="</s>")


def check_same(tok, cache: WordCache, texts: list[str], expect_fast: bool = True) -> list:
    """Every text the cache encodes has the tokenizer's ids, offsets and span mapping."""
    backend = tok.backend_tokenizer
    got = cache.encode(texts)
    ref = backend.encode_batch(texts, add_special_tokens=False)
    for text, g, r in zip(texts, got, ref):
        if g is None:
            assert not expect_fast, repr(text)
            continue
        assert g.ids.tolist() == r.ids, repr(text)
        offsets = np.asarray(r.offsets, dtype=np.int64).reshape(-1, 2)
        assert (g.offsets == offsets).all(), repr(text)
        ranges = [(a, b) for a in range(0, len(text) + 1, max(1, len(text) // 5))
                  for b in range(a + 1, len(text) + 1, max(1, len(text) // 4))]
        assert g.spans(ranges) == [span_tokens(r, a, b, len(r.ids)) for a, b in ranges], repr(text)
    return got


def test_accepts_byte_level_bpe_only():
    assert WordCache.for_tokenizer(sample_tokenizer()) is not None
    assert WordCache.for_tokenizer(byte_bpe_tokenizer()) is not None
    assert WordCache.for_tokenizer(bpe_tokenizer()) is None  # Metaspace + NFC normalizer, no byte fallback


@pytest.mark.parametrize("family", sorted(SPLIT_FAMILY))
def test_split_family_tokenizers_are_accepted_and_exact(family):
    tok = split_family_tokenizer(family)
    cache = WordCache.for_tokenizer(tok)
    assert cache is not None
    check_same(tok, cache, CORPUS + CORPUS_CORNERS, expect_fast=family == "llama-3")  # NFC changes some


@pytest.mark.parametrize("family", sorted(SPLIT_FAMILY))
def test_split_family_generated_texts_match_the_tokenizer(family):
    tok = split_family_tokenizer(family)
    cache = WordCache.for_tokenizer(tok)

    @settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(parts=st.lists(st.lists(ALPHABET, max_size=25).map("".join), min_size=1, max_size=6))
    def check(parts):
        check_same(tok, cache, parts, expect_fast=family == "llama-3")

    check()


def test_stories260k_sentencepiece_is_exact():
    tok = stories_tokenizer()
    cache = WordCache.for_tokenizer(tok)
    assert isinstance(cache, MetaspaceWordCache)
    got = check_same(tok, cache, CORPUS + CORPUS_CORNERS + ["a\u2581b"], expect_fast=False)
    assert got[-1] is None  # a literal "▁" is a space to the model: the tokenizer's path
    assert all(g is not None for g in got[:-1])

    @settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(parts=st.lists(st.lists(ALPHABET, max_size=25).map("".join), min_size=1, max_size=6))
    def check(parts):
        check_same(tok, cache, parts)

    check()


@pytest.mark.parametrize("scheme,split", [("first", False), ("always", False), ("first", True), ("always", True)])
def test_metaspace_tokenizers_are_exact(scheme, split):
    tok = metaspace_tokenizer(scheme, split)
    cache = WordCache.for_tokenizer(tok)
    assert isinstance(cache, MetaspaceWordCache)
    check_same(tok, cache, CORPUS + CORPUS_CORNERS)

    @settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(parts=st.lists(st.lists(ALPHABET, max_size=25).map("".join), min_size=1, max_size=6))
    def check(parts):
        check_same(tok, cache, parts)

    check()


def test_a_vocabulary_token_across_a_cut_refuses_the_cache():
    tok = metaspace_tokenizer("first", False)
    spec = json.loads(tok.backend_tokenizer.to_str())
    spec["model"]["vocab"]["a\u2581b"] = max(spec["model"]["vocab"].values()) + 100
    from tokenizers import Tokenizer

    assert WordCache.for_tokenizer(Tokenizer.from_str(json.dumps(spec))) is None


CORPUS_CORNERS = ["  's x", "a  b", "a \n\n b\n", "\t\tx  \u3000y", "x  'll  'd 're", "  \n", " ", "",
             "héllo wörld 日本語 ١٢٣ 🙂", "x<|im_start|>y  <|im_end|>  ", "<|im_end|><|im_end|>", "<s>  <s>\n",
             "don't  it's\n\n\n'S", "a\r\n\r\n b", "\u00a0\u00a0x \u2028y", "e\u0301\u0301 x\u0301",
             "x  \n", "x \n  y", "!\n\n  a", "12345 678\n\t\tz", "  \r\n\r  !!\n", "DON'T  'LL"]


def test_whitespace_and_contraction_corners():
    tok = sample_tokenizer()
    check_same(tok, WordCache.for_tokenizer(tok), CORPUS_CORNERS)


def test_marks_in_text_take_the_tokenizer_path():
    tok = sample_tokenizer()
    got = check_same(tok, WordCache.for_tokenizer(tok), ["a\x00b", "a\x02 b", "plain"], expect_fast=False)
    assert got[0] is None and got[1] is None and got[2] is not None


def test_a_character_classified_differently_takes_the_tokenizer_path():
    tok = sample_tokenizer()
    cache = WordCache.for_tokenizer(tok)
    cache.char_ok = {**cache.char_ok, "é": False}  # as if polars' Unicode tables disagreed with the tokenizer's
    got = cache.encode(["café au lait", "tea"])
    assert got[0] is None and got[1] is not None


def test_character_classes_agree_with_the_tokenizer():
    tok = sample_tokenizer()
    cache = WordCache.for_tokenizer(tok)
    chars = [chr(c) for c in range(0x80, 0x3000) if not 0xD800 <= c < 0xE000]
    cache._classify(chars)
    assert all(cache.char_ok[c] for c in chars), [c for c in chars if not cache.char_ok[c]][:20]


ALPHABET = st.sampled_from(list(" \n\t\r\u3000\u00a0'stdrevmlSTDL0123.,!?-_aZé日🙂\u0301\u00c5\u212b")
                           + ["<|im_start|>", "<|im_end|>", "<s>"])


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.lists(ALPHABET, max_size=25).map("".join), min_size=1, max_size=6))
def test_generated_texts_match_the_tokenizer(parts):
    tok = _SAMPLE[0] if _SAMPLE else _SAMPLE.append(sample_tokenizer()) or _SAMPLE[0]
    check_same(tok, WordCache.for_tokenizer(tok), parts)


_SAMPLE: list = []


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40), min_size=1, max_size=4))
def test_arbitrary_unicode_matches_the_tokenizer(parts):
    tok = byte_bpe_tokenizer()
    check_same(tok, WordCache.for_tokenizer(tok), parts, expect_fast=False)


def test_real_instruction_files_match_the_tokenizer():
    formats = SHARED / "formats"
    if not formats.is_dir():
        pytest.skip(f"shared data not present: {formats}")
    texts = []
    for f in sorted(formats.glob("*.json")):
        try:
            data = json.loads(f.read_text())
        except ValueError:
            continue
        texts += [json.dumps(r, ensure_ascii=False) for r in data[:300]] if isinstance(data, list) else []
    assert texts
    tok = sample_tokenizer()
    got = check_same(tok, WordCache.for_tokenizer(tok), texts, expect_fast=False)
    assert sum(g is not None for g in got) >= 0.99 * len(texts)


def test_word_table_is_kept_across_batches_and_restarted_when_full(monkeypatch):
    import curate.render.word_cache as wc

    tok = sample_tokenizer()
    cache = WordCache.for_tokenizer(tok)
    check_same(tok, cache, CORPUS)
    size = cache._vocab.height
    check_same(tok, cache, CORPUS)  # nothing new to learn
    assert cache._vocab.height == size
    monkeypatch.setattr(wc, "MAX_WORDS", 5)
    check_same(tok, cache, CORPUS_CORNERS + CORPUS)  # starts afresh, still exact
    assert cache._vocab.height < size + len(CORPUS_CORNERS) * 10


def test_stories260k_cuts_at_barrier_characters_and_stays_exact_on_real_text():
    """stories260K's 165 merges join 35 characters: every other character (CJK, digits,
    newlines, most punctuation) is a word of its own, and the ids stay the tokenizer's."""
    tok = stories_tokenizer()
    cache = WordCache.for_tokenizer(tok)
    assert cache.joinable is not None
    import polars as pl

    words = pl.DataFrame({"text": ["你好世界，12\n<|im_start|>"]}).select(
        cache._marked().str.extract_all(cache.word_re)).to_series()[0].to_list()
    assert words[:8] == ["\x03", "你", "好", "世", "界", "，", "1", "2"]  # "\x03": the prepended "▁"
    assert words[8] == "\n"
    f = SHARED / "formats" / "alpaca_history_oasst_zh.json"
    if not f.is_file():
        pytest.skip(f"shared data not present: {f}")
    texts = [r["instruction"] + "\n" + r["output"] for r in json.loads(f.read_text())[:200]]
    got = check_same(tok, cache, texts, expect_fast=False)
    assert sum(g is not None for g in got) >= 0.99 * len(texts)


def test_a_merge_of_byte_tokens_turns_barriers_off():
    assert MetaspaceWordCache.joinable_class({"ab": 5, "a": 1, "b": 2}, [["a", "b"]]) == r"\x{61}-\x{62}"
    assert MetaspaceWordCache.joinable_class({"ab": 5}, [["<0xE4>", "<0xB8>"]]) is None
    assert MetaspaceWordCache.joinable_class({"ab": 5}, ["<0xE4> <0xB8>"]) is None
