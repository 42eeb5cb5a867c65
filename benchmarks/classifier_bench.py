"""`curate classifier train` against plain fastText (`fasttext.train_supervised` with its
defaults) on the same train/held-out split, over several seeds. Prints each arm's held-out
ROC AUC and the ratio classifier / plain; for `judge` also the AUC of the label-generating
score itself (the bound: no classifier of the words beats it in expectation, the rest of
the label being noise), for `cut` the AUC of the answer's length alone (a reference only:
a cut answer is more than a short one, so a classifier can beat it).

Two proxies of the issue-18 measurement (the AlpaGasus labels are not on this machine):

* `judge` (the issue's shape): ~9,200 English Alpaca-like records built from the real
  records of sample_data/raw and ../shared/data/formats (each record once as it is, and
  once more with its answer cut to its first sentences, or a stock phrase before its
  instruction, so the pool reaches the issue's size). The label imitates an LLM judge: a
  few length/format/wording features plus heavy Gaussian noise, top 10% kept, the noise
  tuned so that the noiseless score's AUC is about 0.66. The label is a WEAK function of
  the words, as a judge's keep/drop is.
* `cut` (the previous helper's proxy): the 999 Alpaca demo records, a random half with
  the answer cut to a sixth of its characters (negatives), full answers positive,
  positives subsampled to 1:8. A STRONG function of the words.

    python benchmarks/classifier_bench.py                       # both proxies, 5 seeds
    python benchmarks/classifier_bench.py --proxy judge --seeds 2
    python benchmarks/classifier_bench.py --options epoch=10      # a fixed epoch count
      # --options: TrainOptions fields for the classifier arm

Fairness: both arms read the same prepared text lines (`read_texts`, the scorer's own
preparation) and the same held-out mask (`holdout_mask`, the one `curate classifier
train` uses); the plain arm's train file is the same records, shuffled (a user writes
records in data order, not class-sorted), without repetition; both are scored by the same
`positive_score`. Neither arm sees a held-out label. Each fit runs in a spawned process
with 1 thread.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curate.read.readers import read_source  # noqa: E402
from curate.read.sources import SourceConfig  # noqa: E402
from curate.stages.quality.classifier import (TrainOptions, holdout_mask, read_texts, roc_auc,  # noqa: E402
                                              train_classifier)
from curate.stages.quality.fasttext import NEGATIVE, POSITIVE, positive_score  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "formats"
REFERENCE = {"judge": "bound (the label's noiseless score)",
             "cut": "answer length alone (a reference, not a bound)"}
STOCK = ["Please ", "Could you help me? ", "I need this for class. ", "Quick question: ", "Task: "]


def english_pairs() -> list[tuple[str, str]]:
    """(instruction, answer) of every English single- or multi-turn record: first user turn
    and the first non-empty assistant turn."""
    files = sorted((ROOT / "sample_data" / "raw").iterdir())
    files += [p for p in sorted(SHARED.glob("*.json")) if "_zh" not in p.name] if SHARED.is_dir() else []
    pairs, seen = [], set()
    for f in files:
        t = read_source(SourceConfig(name=f.stem, path=str(f)), f.parent).table
        for msgs in t["messages"].to_list():
            user = next((m["content"] for m in msgs if m["role"] == "user" and m["content"]), None)
            ans = next((m["content"] for m in msgs if m["role"] == "assistant" and m["content"]), None)
            if user and ans and (user, ans) not in seen:
                seen.add((user, ans))
                pairs.append((user, ans))
    return pairs


def judge_pool(seed: int = 0) -> list[tuple[str, str]]:
    """The `judge` proxy's records: each real pair, plus one variant of it."""
    rng = random.Random(seed)
    base = english_pairs()
    out = list(base)
    for ins, ans in base:
        if len(out) >= 9229:
            break
        sents = re.split(r"(?<=[.!?])\s+", ans)
        if len(sents) > 1 and rng.random() < 0.6:
            out.append((ins, " ".join(sents[:rng.randint(1, len(sents) - 1)])))
        else:
            out.append((rng.choice(STOCK) + ins, ans))
    return out


def judge_features(pool: list[tuple[str, str]]) -> np.ndarray:
    """What an LLM judge is (weakly) swayed by: answer length, structure, a few words."""
    f = []
    for ins, ans in pool:
        words = ans.split()
        low = ans.lower()
        f.append([math.log1p(len(words)),
                  float(bool(re.search(r"(^|\n)\s*(\d+[.)]|[-*•])\s", ans))),
                  float(any(w in low for w in ("for example", "because", "however", "such as"))),
                  float(ans.rstrip().endswith((".", "!", "?"))),
                  len(set(words)) / max(1, len(words)),
                  -float(any(w in low for w in ("sorry", "as an ai", "i cannot", "i can't")))])
    x = np.asarray(f, dtype=np.float64)
    return (x - x.mean(0)) / (x.std(0) + 1e-9)


def judge_labels(pool, seed: int, target_bound: float = 0.66, positive_share: float = 0.10):
    """Top `positive_share` by (latent + noise); the noise scale is bisected so that the
    latent score's AUC against the labels is `target_bound`."""
    latent = judge_features(pool) @ np.array([1.0, 0.6, 0.5, 0.3, 0.3, 0.8])
    latent = (latent - latent.mean()) / latent.std()
    z = np.random.default_rng(seed).standard_normal(len(pool))

    def labels_for(sigma):
        s = latent + sigma * z
        return (s >= np.quantile(s, 1 - positive_share)).astype(np.int64)

    lo, hi = 0.0, 20.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if roc_auc(latent, labels_for(mid)) > target_bound:
            lo = mid
        else:
            hi = mid
    return labels_for(hi), latent


def cut_proxy(seed: int):
    """The `cut` proxy: (pool, labels, latent) with latent = answer length (the label's cause)."""
    rng = random.Random(seed)
    t = read_source(SourceConfig(name="a", path=str(SHARED / "alpaca_llamafactory_demo.json")), SHARED).table
    pairs = []
    for msgs in t["messages"].to_list():
        user = next(m["content"] for m in msgs if m["role"] == "user")
        ans = next(m["content"] for m in msgs if m["role"] == "assistant")
        pairs.append((user, ans))
    rng.shuffle(pairs)
    half = len(pairs) // 2
    neg = [(u, a[:max(1, len(a) // 6)]) for u, a in pairs[:half]]
    pos = pairs[half:][:max(1, half // 8)]
    pool = pos + neg
    labels = np.array([1] * len(pos) + [0] * len(neg), dtype=np.int64)
    latent = np.array([math.log1p(len(a)) for _, a in pool])
    return pool, labels, latent


def write_split(d: Path, pool, labels) -> tuple[Path, Path]:
    pos, neg = d / "pos.jsonl", d / "neg.jsonl"
    with open(pos, "w") as fp, open(neg, "w") as fn:
        for (ins, ans), y in zip(pool, labels):
            (fp if y else fn).write(json.dumps({"instruction": ins, "input": "", "output": ans}) + "\n")
    return pos, neg


def _plain_fit(train_file: str, model_path: str, seed: int) -> None:
    import fasttext

    fasttext.train_supervised(input=train_file, seed=seed, thread=1, verbose=0).save_model(model_path)


def plain_fasttext(d: Path, pos_file: Path, neg_file: Path, opts: TrainOptions) -> tuple[float, float]:
    """Plain fastText on the classifier's own split: held-out AUC and fit seconds (the fit
    in a fresh spawned process, as the classifier's: in a reused process fastText's
    defaults were seen to fail with "Encountered NaN", in a fresh one never)."""
    import fasttext

    pos = read_texts([pos_file], opts.view).to_list()
    neg = read_texts([neg_file], opts.view).to_list()
    texts = pos + neg
    labels = np.array([1] * len(pos) + [0] * len(neg))
    held = holdout_mask(texts, opts.holdout, opts.seed)
    lines = [f"{POSITIVE if y else NEGATIVE} {t}\n" for t, y, h in zip(texts, labels, held) if not h]
    random.Random(opts.seed).shuffle(lines)
    (d / "plain.txt").write_text("".join(lines))
    t0 = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(1) as pool_ctx:
        pool_ctx.apply(_plain_fit, (str(d / "plain.txt"), str(d / "plain.bin"), opts.seed))
    secs = time.perf_counter() - t0
    model = fasttext.load_model(str(d / "plain.bin"))
    idx = np.flatnonzero(held)
    return roc_auc(positive_score(model, [texts[i] for i in idx]), labels[idx]), secs


def bound_auc(pool, labels, latent, opts: TrainOptions, pos_file, neg_file) -> float:
    """The label-generating score's AUC on the held-out records."""
    pos = read_texts([pos_file], opts.view).to_list()
    neg = read_texts([neg_file], opts.view).to_list()
    held = holdout_mask(pos + neg, opts.holdout, opts.seed)
    order = np.r_[np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)]
    if len(order) != len(held):  # an empty prepared text was dropped: no bound for this seed
        return float("nan")
    return roc_auc(latent[order][held], labels[order][held])


def parse_options(s: str) -> dict:
    out = {}
    for kv in filter(None, s.split(",")):
        k, v = kv.split("=", 1)
        cur = getattr(TrainOptions(), k)
        out[k] = v.lower() == "true" if isinstance(cur, bool) else type(cur)(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--proxy", choices=["judge", "cut", "both"], default="both")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--options", default="", help="TrainOptions for the classifier arm, k=v,k=v")
    args = ap.parse_args()
    extra = parse_options(args.options)
    proxies = ["judge", "cut"] if args.proxy == "both" else [args.proxy]
    judge = judge_pool() if "judge" in proxies else None
    for proxy in proxies:
        rows = []
        for seed in range(args.seeds):
            if proxy == "judge":
                pool = judge
                labels, latent = judge_labels(pool, seed)
            else:
                pool, labels, latent = cut_proxy(seed)
            opts = TrainOptions(seed=seed, **extra)
            with tempfile.TemporaryDirectory() as tmp:
                d = Path(tmp)
                pos_file, neg_file = write_split(d, pool, labels)
                t0 = time.perf_counter()
                rep = train_classifier([pos_file], [neg_file], d / "clf.bin", opts, log=lambda *a, **k: None)
                c_secs = time.perf_counter() - t0
                c_auc = rep["holdout"]["auc"]
                p_auc, p_secs = plain_fasttext(d, pos_file, neg_file, opts)
                b_auc = bound_auc(pool, labels, latent, opts, pos_file, neg_file)
            rows.append((c_auc, p_auc, b_auc))
            chosen = rep.get("epoch_choice", {}).get("chosen")
            print(f"{proxy} seed {seed}: n={len(pool)} positives={int(labels.sum())} held-out n={rep['holdout']['n']} "
                  f"({rep['holdout']['positives']} pos)  classifier AUC {c_auc:.3f} ({c_secs:.1f}s"
                  f"{f', {chosen} epochs' if chosen else ''})  plain fastText {p_auc:.3f} "
                  f"({p_secs:.1f}s)  {REFERENCE[proxy]} {b_auc:.3f}", flush=True)
        c, p, b = (np.array(x) for x in zip(*rows))
        print(f"{proxy}: classifier {c.mean():.3f} ± {c.std():.3f}   plain fastText {p.mean():.3f} ± {p.std():.3f}   "
              f"ratio {statistics.median(c / p):.3f} (median over seeds)   {REFERENCE[proxy]} {np.nanmean(b):.3f}   "
              f"classifier >= plain on {int((c >= p).sum())}/{len(c)} seeds", flush=True)


if __name__ == "__main__":
    main()
