"""Render + tokenize + mask (+ pack) throughput against the usual baseline.

Baseline (what most fine-tuning scripts do): per conversation,
`tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
return_assistant_tokens_mask=True)`, then labels = ids where the mask is set. Ours:
`curate.render.renderer.render_examples` (the word cache for byte-level BPE and SentencePiece-style
Metaspace tokenizers, else batched
Rust tokenization; numpy masks, checks) followed by best-fit-decreasing packing of the train
split. Same records, same template, same
tokenizer, same process; the tokenizer is loaded before either clock starts. Both outputs
are compared token for token before the ratio is printed.

No peer install needed: the baseline is transformers, a curate dependency.

    python benchmarks/render_bench.py                      # every real conversation in ../shared/data, once
    python benchmarks/render_bench.py --records 20000 --template llama-3
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from curate.render.config import RenderConfig  # noqa: E402
from curate.render.packing import pack_examples  # noqa: E402
from curate.render.renderer import IGNORE, render_examples  # noqa: E402
from curate.contract.schema import POLARS_SCHEMA, conversation_id  # noqa: E402

SHARED = Path(os.environ.get("CURATE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def real_conversations() -> list[list[dict]]:
    """Conversations from the real instruction files in ../shared/data/formats (if present)."""
    out = []
    f = SHARED / "formats" / "sharegpt_fastchat_dummy.json"
    if f.is_file():
        for r in json.loads(f.read_text()):
            out.append([{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]}
                        for t in r["conversations"]])
    f = SHARED / "formats" / "alpaca_llamafactory_demo.json"
    if f.is_file():
        for r in json.loads(f.read_text()):
            prompt = r["instruction"] + (("\n\n" + r["input"]) if r.get("input") else "")
            out.append([{"role": "user", "content": prompt}, {"role": "assistant", "content": r["output"]}])
    f = SHARED / "formats" / "messages_llamafactory_kto_demo.json"
    if f.is_file():
        for r in json.loads(f.read_text()):
            out.append([{"role": m["role"], "content": m["content"]} for m in r["messages"]])
    f = SHARED / "formats" / "alpaca_history_oasst_zh.json"  # multi-turn, Chinese
    if f.is_file():
        for r in json.loads(f.read_text()):
            turns = [*(r.get("history") or []), [r["instruction"] + (("\n\n" + r["input"]) if r.get("input") else ""),
                                               r["output"]]]
            out.append([m for q, a in turns for m in ({"role": "user", "content": q},
                                                      {"role": "assistant", "content": a})])
    return out


def synthetic_conversations(n: int) -> list[list[dict]]:
    rng = np.random.default_rng(0)
    words = "the a model data answer question because which how many when where what is are".split()
    out = []
    for i in range(n):
        msgs = [{"role": "system", "content": "You are helpful."}] if i % 3 == 0 else []
        for t in range(1 + i % 3):
            msgs.append({"role": "user", "content": " ".join(rng.choice(words, 10 + i % 40))})
            msgs.append({"role": "assistant", "content": " ".join(rng.choice(words, 20 + i % 80))})
        out.append(msgs)
    return out


def load_tokenizer(path: str | None = None):
    """--tokenizer PATH, else sample_data/tokenizer (the byte-level BPE the sample pipeline
    uses), else stories260K's SentencePiece tokenizer, else one trained here."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    candidates = [Path(path)] if path else [ROOT / "sample_data" / "tokenizer", SHARED / "models" / "stories260K"]
    for c in candidates:
        if (c / "tokenizer.json").is_file():
            return AutoTokenizer.from_pretrained(str(c), local_files_only=True), str(c.relative_to(c.parent.parent))
    if path:
        raise SystemExit(f"no tokenizer.json under {path}")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [m["content"] for c in synthetic_conversations(500) for m in c]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=2000, special_tokens=["<s>", "</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>"), "in-process byte-level BPE"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=None,
                    help="records to render (default: every real conversation once; more repeats them)")
    ap.add_argument("--template", default="chatml")
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--tokenizer", default=None, help="local tokenizer directory")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best time of each side counts")
    args = ap.parse_args()

    convs = real_conversations() or synthetic_conversations(2000)
    source = "real (../shared/data/formats)" if (SHARED / "formats").is_dir() else "synthetic"
    records = args.records or len(convs)
    distinct = min(records, len(convs))
    convs = (convs * (records // len(convs) + 1))[:records]
    # distinct ids so nothing is deduplicated away by accident
    rows = [{"id": f"{i:07d}-{conversation_id(m)}", "source": "bench", "task": f"t{i % 4}", "messages": m,
             "meta": "{}", "origin": f"bench:{i}"} for i, m in enumerate(convs)]
    table = pl.DataFrame(rows, schema=POLARS_SCHEMA)
    tok, tok_name = load_tokenizer(args.tokenizer)
    cfg = RenderConfig(template=args.template, tokenizer="bench", max_length=args.max_length, val_fraction=0.0)
    from curate.render.templates import builtin_text

    tok.chat_template = builtin_text(args.template)
    tok.apply_chat_template(convs[0], tokenize=True, return_dict=True, return_assistant_tokens_mask=True)  # warm

    def baseline():
        ids_out, labels_out = [], []
        for m in convs:
            out = tok.apply_chat_template(m, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
            ids = np.asarray(out["input_ids"], dtype=np.int32)
            ids_out.append(ids)
            labels_out.append(np.where(np.asarray(out["assistant_masks"], dtype=bool), ids, IGNORE))
        return ids_out, labels_out

    def ours():
        r = render_examples(table, cfg, ROOT, seed=0, tokenizer=tok)
        return r, pack_examples(r.examples, args.max_length)

    # Interleaved rounds, best of each: the machine is shared, and load that drifts during
    # one side's run would otherwise land on that side only.
    t_base = t_ours = c_base = c_ours = float("inf")
    for _ in range(args.rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        base_ids, base_labels = baseline()
        t_base, c_base = min(t_base, time.perf_counter() - t0), min(c_base, time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        rendered, packed = ours()
        t_ours, c_ours = min(t_ours, time.perf_counter() - t0), min(c_ours, time.process_time() - c0)

    # same tokens and masks (ours also never trains the first token; compare from token 1)
    by_id = dict(zip(rendered.examples["id"].to_list(), range(rendered.examples.height)))
    ids_col, lab_col = rendered.examples["input_ids"].to_list(), rendered.examples["labels"].to_list()
    kept = mismatched = 0
    for r, bi, bl in zip(rows, base_ids, base_labels):
        j = by_id.get(r["id"])
        if j is None:
            continue
        kept += 1
        if ids_col[j] != bi.tolist() or lab_col[j][1:] != bl[1:].tolist():
            mismatched += 1

    n = len(convs)
    print(f"best of {args.rounds} interleaved rounds; records: {n} ({distinct} distinct, {source}), template {args.template}, tokenizer {tok_name}, max_length {args.max_length}")
    print(f"rendered {rendered.examples.height}, dropped {rendered.dropped.height} "
          f"{rendered.stats['dropped']}, packed into {packed.height} rows; "
          f"{kept - mismatched}/{kept} identical to apply_chat_template")
    print(f"{'baseline (per-example apply_chat_template + mask)':<52} {n / t_base:>10.0f} records/s  "
          f"({t_base:.2f} s wall, {c_base:.2f} s CPU)")
    print(f"{'curate (render + tokenize + mask + checks + pack)':<52} {n / t_ours:>10.0f} records/s  "
          f"({t_ours:.2f} s wall, {c_ours:.2f} s CPU, all threads)")
    print(f"CPU-time ratio: {c_base / c_ours:.2f}x  (work done, insensitive to other load on the machine)")
    ratio = t_base / t_ours
    print(f"ratio: {ratio:.2f}x  (floor 3x: {'PASS' if ratio >= 3 else 'FAIL'})")


if __name__ == "__main__":
    main()
