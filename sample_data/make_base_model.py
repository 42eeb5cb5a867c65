#!/usr/bin/env python3
"""Pretrain the sample base model: a small LlamaForCausalLM on general English text of its own.

    python sample_data/make_base_model.py                  # writes sample_data/base_model/
    python sample_data/make_base_model.py --minutes 1 --out /tmp/bm

Why pretrain at all: the trainer's forgetting monitor measures how far fine-tuning moves the
model away from what it knew (KL to base, loss on general text before and after). On a
randomly initialised model that number means nothing; on a model that has learned simple
English it is the real effect. The text is generated here (short stories and plain facts from
a small grammar, seeded), so nothing is downloaded and the model can be rebuilt anywhere.

The model uses the sample tokenizer (sample_data/tokenizer), so shards rendered by the sample
pipeline fit it. Output: config.json + model.safetensors + tokenizer files (loadable offline
with AutoModelForCausalLM / AutoTokenizer.from_pretrained) and reference.txt, held-out text
of the same kind for the forgetting monitor (`[train.forgetting] reference`).

Training is time-boxed (`--minutes`, default 4 on 2 CPU cores), so the weights depend on the
machine's speed; the text, the seed and the architecture do not.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

NAMES = ["Lily", "Tom", "Mia", "Ben", "Sara", "Max", "Anna", "Leo", "Zoe", "Sam", "Emma", "Jack"]
ANIMALS = ["dog", "cat", "bird", "rabbit", "fox", "frog", "duck", "bear", "mouse", "horse"]
OBJECTS = ["ball", "kite", "book", "hat", "box", "cake", "toy car", "flower", "shell", "key"]
COLORS = ["red", "blue", "green", "yellow", "big", "small", "shiny", "old", "soft", "pretty"]
PLACES = ["park", "garden", "forest", "beach", "school", "kitchen", "farm", "river", "town", "hill"]
FEELINGS = ["happy", "sad", "scared", "excited", "tired", "proud", "surprised", "angry", "calm"]
VERBS = ["played with", "looked at", "found", "lost", "shared", "carried", "painted", "hid"]
WEATHER = ["sunny", "rainy", "windy", "cold", "warm", "snowy"]
FACTS = [
    "The sun rises in the east and sets in the west.",
    "Water freezes when it is very cold and turns into ice.",
    "Plants need water and light to grow.",
    "A week has seven days.",
    "Birds can fly because they have wings.",
    "Fish live in water and breathe with gills.",
    "The moon goes around the earth.",
    "Bees make honey from flowers.",
    "Snow is cold and white.",
    "Cows give milk and eat grass.",
    "Trees lose their leaves in autumn.",
    "People sleep at night and wake up in the morning.",
]


def story(rng: random.Random) -> str:
    """One short story from a small grammar: a character, a thing, a place, a turn, an end."""
    a, b = rng.sample(NAMES, 2)
    pet, obj, col = rng.choice(ANIMALS), rng.choice(OBJECTS), rng.choice(COLORS)
    place, feel, verb = rng.choice(PLACES), rng.choice(FEELINGS), rng.choice(VERBS)
    day = rng.choice(WEATHER)
    s = [rng.choice([f"Once upon a time, there was a little girl named {a}.",
                     f"One {day} day, {a} went to the {place}.",
                     f"{a} had a {col} {obj}.",
                     f"There was a {pet} who lived near the {place}."])]
    s.append(rng.choice([f"{a} {verb} a {col} {obj} in the {place}.",
                         f"{a} saw a {pet} and said hello.",
                         f"{a} and {b} {verb} the {obj} together."]))
    s.append(rng.choice([f"{a} felt {feel}.", f"The {pet} was {feel}.",
                         f"\"Look!\" said {b}. \"The {obj} is {col}!\""]))
    s.append(rng.choice([f"Then {b} came and they played all day.",
                         f"But the {obj} fell into the {rng.choice(['river', 'mud', 'grass'])}.",
                         f"The {pet} ran away with the {obj}.",
                         "It started to rain, so they went home."]))
    s.append(rng.choice([f"In the end, {a} and {b} were good friends.",
                         f"{a} learned to share with {b}.",
                         f"They were {rng.choice(FEELINGS)} and went to sleep.",
                         f"The {pet} came back and everyone was happy."]))
    if rng.random() < 0.3:
        s.insert(2, rng.choice(FACTS))
    return " ".join(s)


def corpus(n: int, seed: str) -> list[str]:
    rng = random.Random(seed)
    return [story(rng) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "base_model")
    ap.add_argument("--tokenizer", type=Path, default=HERE / "tokenizer")
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--max-steps", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    train_text, ref_text = corpus(20000, "curate-base-train"), corpus(200, "curate-base-reference")

    seq = 128
    ids = tok(train_text, add_special_tokens=False).input_ids
    stream = []
    for x in ids:  # documents joined with BOS/EOS, cut into fixed windows (standard LM pretraining)
        stream += [tok.bos_token_id, *x, tok.eos_token_id]
    data = torch.tensor(stream[: len(stream) // seq * seq]).view(-1, seq)

    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, rope_theta=10000.0)
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, betas=(0.9, 0.95))
    batch, steps, warm = 16, args.max_steps, 50
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    g = torch.Generator().manual_seed(0)
    start, step = time.time(), 0
    model.train()
    while step < steps and time.time() - start < args.minutes * 60:
        rows = data[torch.randint(len(data), (batch,), generator=g)]
        loss = model(input_ids=rows, labels=rows, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        step += 1
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.3f} ({time.time() - start:.0f}s)", flush=True)

    model.eval()
    ref_ids = tok(ref_text, return_tensors=None, add_special_tokens=False).input_ids
    with torch.no_grad():
        nll = [model(input_ids=torch.tensor([[tok.bos_token_id, *x]]), labels=torch.tensor([[tok.bos_token_id, *x]])).loss.item() for x in ref_ids[:50]]
    ref_loss = sum(nll) / len(nll)
    print(f"trained {step} steps in {time.time() - start:.0f}s; reference loss {ref_loss:.3f}")

    args.out.mkdir(parents=True, exist_ok=True)
    model.generation_config.do_sample = False
    model.save_pretrained(args.out, safe_serialization=True)
    tok.save_pretrained(args.out)
    (args.out / "reference.txt").write_text("\n\n".join(ref_text) + "\n", encoding="utf-8")
    (args.out / "pretraining.json").write_text(json.dumps(
        {"steps": step, "seq_len": seq, "batch": batch, "reference_loss": round(ref_loss, 4),
         "train_documents": len(train_text), "text": "generated by make_base_model.py (seed curate-base-train)"},
        indent=2) + "\n")


if __name__ == "__main__":
    main()
