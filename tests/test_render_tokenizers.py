"""Tokenizers the render tests run against, built in-process (no hub): a word-level BPE
with the chat markers as special tokens, a byte-level BPE that splits every marker into
bytes, and (when ../shared/data is present) stories260K's real SentencePiece tokenizer.
Imported by the other test_render*/test_shards* files."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("CURATE_SHARED_DATA", Path(__file__).resolve().parent.parent.parent / "shared" / "data"))
STORIES = SHARED / "models" / "stories260K"

CORPUS = [
    "Hello! How can I help you today?",
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? Paris is the capital of France.",
    "Write a function that adds two numbers: def add(a, b): return a + b",
    "Summarize the text in one sentence, please.",
    "Translate to German: good morning -> Guten Morgen.",
    "Über die Brücke gehen; café, naïve, déjà vu.",
    "日本語のテキストと中文文本, 한국어 텍스트.",
    "Emoji 🙂🚀 and math ∑ x² ≤ ∞.",
    "### Instruction:\n### Response:\nUSER: ASSISTANT: [INST] [/INST]",
    '{"name": "get_weather", "arguments": {"city": "Paris"}} tool_response',
] * 4

CHAT_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
                 "<start_of_turn>", "<end_of_turn>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>",
                 "[INST]", "[/INST]"]


@functools.lru_cache(maxsize=None)
def _bpe_json() -> str:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", *CHAT_SPECIALS],
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return tok.to_str()


@functools.lru_cache(maxsize=None)
def _byte_bpe_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return tok.to_str()


def bpe_tokenizer():
    """Word-level BPE (Metaspace) whose chat markers are special tokens."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_bpe_json()), bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def byte_bpe_tokenizer():
    """Byte-level BPE: no chat markers in its vocabulary, every character representable."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_byte_bpe_json()), bos_token="<s>",
                                   eos_token="</s>")


def stories_tokenizer():
    if not (STORIES / "tokenizer.json").is_file():
        pytest.skip(f"shared data not present: {STORIES}")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(STORIES), local_files_only=True)


TOKENIZERS = {"bpe": bpe_tokenizer, "byte_bpe": byte_bpe_tokenizer, "stories260K": stories_tokenizer}


@functools.lru_cache(maxsize=None)
def get_tokenizer(name: str):
    return TOKENIZERS[name]()


def test_in_test_tokenizers_round_trip():
    for name in ("bpe", "byte_bpe"):
        tok = get_tokenizer(name)
        ids = tok("Hello! 🙂 日本語", add_special_tokens=False)["input_ids"]
        assert ids and tok.eos_token == "</s>"
    # the byte-level one must represent any character without <unk>
    tok = get_tokenizer("byte_bpe")
    text = "Zürich 🙂 ∑ 한국어"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
