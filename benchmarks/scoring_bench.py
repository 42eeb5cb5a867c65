"""IFD scoring: curate's batched, length-bucketed LM scorer against the per-example loop
of Cherry LLM's reference scoring script (one forward pass per example and per pass,
prompt+answer then answer alone), on the same model and the same texts. Prints the time
of each, the ratio, and the largest difference between their IFD values.

The "peer" is the reference method, not a package: Cherry LLM is a research repository
with no installable distribution, so its per-example computation is restated here with
the Hugging Face model's own `labels=` loss (no code taken from it). Needs only the main
venv. Run from the repository root:

    python benchmarks/scoring_bench.py --model ../shared/data/models/stories260K --examples 200

Fairness: both run on the CPU in this process with the same torch thread settings; both
tokenize prompt and answer separately and add one BOS; the answer-alone loss covers the
same tokens in both. Times include tokenization.
"""
from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from curate.stages.common import lm

WORDS = ("once upon a time there was a little girl named lily she liked to play in the park with her "
         "dog one day they found a big red ball and were very happy").split()


def texts(n: int, seed: int = 0):
    rng = random.Random(seed)
    prompts = [f"User: {' '.join(rng.choices(WORDS, k=rng.randint(5, 40)))}\nAssistant: " for _ in range(n)]
    answers = [" ".join(rng.choices(WORDS, k=rng.randint(5, 120))) for _ in range(n)]
    return prompts, answers


@torch.no_grad()
def per_example(model, tok, prompts, answers):
    out = []
    bos = [tok.bos_token_id]
    for p, a in zip(prompts, answers):
        pi = tok(p, add_special_tokens=False)["input_ids"]
        ai = tok(a, add_special_tokens=False)["input_ids"]
        cond = model(torch.tensor([bos + pi + ai]), labels=torch.tensor([[-100] * (1 + len(pi)) + ai])).loss.item()
        alone = model(torch.tensor([bos + ai]), labels=torch.tensor([[-100] + ai])).loss.item()
        out.append(math.exp(cond - alone))
    return np.array(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "models" / "stories260K"
    ap.add_argument("--model", default=str(default))
    ap.add_argument("--examples", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    if not (Path(args.model) / "config.json").is_file():
        raise SystemExit(f"no model at {args.model}")
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    prompts, answers = texts(args.examples)
    t0 = time.perf_counter()
    ours = lm.score(model, tok, prompts, answers, ifd=True, max_length=512, batch_size=args.batch_size)["ifd"]
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = per_example(model, tok, prompts, answers)
    t_ref = time.perf_counter() - t0
    print(f"{args.examples} examples, {Path(args.model).name}: curate batched {t_ours:.2f}s "
          f"({args.examples / t_ours:.1f} ex/s), per-example reference {t_ref:.2f}s "
          f"({args.examples / t_ref:.1f} ex/s), ratio x{t_ref / t_ours:.2f}; "
          f"max |IFD difference| {np.max(np.abs(ours - ref)):.1e}")


if __name__ == "__main__":
    main()
