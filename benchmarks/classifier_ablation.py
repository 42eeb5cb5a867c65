"""What made `curate classifier train`'s old defaults lose to plain fastText: one training
setup changed at a time, on the two proxies of benchmarks/classifier_bench.py, the same
held-out split (`holdout_mask`), each fit in a fresh spawned process with 1 thread, scored
by `positive_score` (and, in brackets, by fastText's own `predict` probabilities, with the
number of tied held-out scores, to show whether ties from saturated probabilities matter).

    python benchmarks/classifier_ablation.py judge 5            # every arm, 5 seeds
    python benchmarks/classifier_ablation.py cut 5 A,B,C,D      # some arms

Arms (rep = the minority repeated to balance the classes, as `--balance` does; sorted =
all positives, each beside its copies, then all negatives: the old training file;
shuffled = seeded random line order: the new one; eN = N epochs; ng2 = word bigrams,
dim 64, lr 0.1, bucket 200k = the classifier's settings; "plain" = fastText's defaults).
"""
from __future__ import annotations

import multiprocessing
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import classifier_bench as cb  # noqa: E402

from curate.stages.quality.classifier import holdout_mask, read_texts, roc_auc  # noqa: E402
from curate.stages.quality.fasttext import NEGATIVE, POSITIVE, positive_probability, positive_score  # noqa: E402

CLF = dict(wordNgrams=2, dim=64, lr=0.1, bucket=200000)
ARMS = {
    "A old defaults: rep sorted e10 ng2": dict(rep=True, order="sorted", kw=dict(epoch=10, **CLF)),
    "B rep shuffled e10 ng2": dict(rep=True, order="shuffle", kw=dict(epoch=10, **CLF)),
    "C no-rep shuffled e10 ng2": dict(rep=False, order="shuffle", kw=dict(epoch=10, **CLF)),
    "D plain fastText, shuffled": dict(rep=False, order="shuffle", kw=dict()),
    "E rep shuffled, fastText defaults": dict(rep=True, order="shuffle", kw=dict()),
    "I rep shuffled e5 ng2": dict(rep=True, order="shuffle", kw=dict(epoch=5, **CLF)),
    "M no-rep shuffled e5 ng2": dict(rep=False, order="shuffle", kw=dict(epoch=5, **CLF)),
    "N rep shuffled e5 ng1": dict(rep=True, order="shuffle", kw=dict(epoch=5, wordNgrams=1, dim=64, lr=0.1)),
    "P rep shuffled e2 ng2": dict(rep=True, order="shuffle", kw=dict(epoch=2, **CLF)),
    "Q rep shuffled e3 ng2": dict(rep=True, order="shuffle", kw=dict(epoch=3, **CLF)),
    "R rep shuffled e20 ng2": dict(rep=True, order="shuffle", kw=dict(epoch=20, **CLF)),
}


def fit(path: str, out: str, kw: dict) -> None:
    import fasttext

    fasttext.train_supervised(input=path, thread=1, verbose=0, **kw).save_model(out)


def main() -> None:
    import fasttext

    proxy, seeds = sys.argv[1], int(sys.argv[2])
    wanted = sys.argv[3].split(",") if len(sys.argv) > 3 else None
    arms = {k: v for k, v in ARMS.items() if not wanted or k.split()[0] in wanted}
    res: dict[str, list] = {}
    judge = cb.judge_pool() if proxy == "judge" else None
    for seed in range(seeds):
        if proxy == "judge":
            pool = judge
            labels, _ = cb.judge_labels(pool, seed)
        else:
            pool, labels, _ = cb.cut_proxy(seed)
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            pf, nf = cb.write_split(d, pool, labels)
            pos, neg = read_texts([pf], "conversation").to_list(), read_texts([nf], "conversation").to_list()
            texts = pos + neg
            lab = np.array([1] * len(pos) + [0] * len(neg))
            held = holdout_mask(texts, 0.2, seed)
            r = max(1, round(int(((lab == 0) & ~held).sum()) / int(((lab == 1) & ~held).sum())))
            idx = np.flatnonzero(held)
            ht = [texts[i] for i in idx]
            for name, a in arms.items():
                lines = []
                for t, y, h in zip(texts, lab, held):
                    if not h:
                        lines += [f"{POSITIVE if y else NEGATIVE} {t}\n"] * (r if (a["rep"] and y) else 1)
                if a["order"] == "shuffle":
                    random.Random(seed).shuffle(lines)
                (d / "t.txt").write_text("".join(lines))
                try:
                    with multiprocessing.get_context("spawn").Pool(1) as pc:
                        pc.apply(fit, (str(d / "t.txt"), str(d / "m.bin"), dict(seed=seed, **a["kw"])))
                except RuntimeError:
                    res.setdefault(name, []).append(float("nan"))
                    continue
                m = fasttext.load_model(str(d / "m.bin"))
                pp = positive_probability(m, ht)
                res.setdefault(name, []).append(roc_auc(positive_score(m, ht), lab[idx]))
                res.setdefault(name + " [predict]", []).append(roc_auc(pp, lab[idx]))
                res.setdefault(name + " [ties]", []).append(len(pp) - len(np.unique(pp)))
        print(seed, {k.split()[0]: round(v[-1], 3) for k, v in res.items() if "[" not in k}, flush=True)
    for k, v in res.items():
        print(f"{k:45s} {np.nanmean(v):.3f} ± {np.nanstd(v):.3f}  failed={int(np.isnan(v).sum())}")


if __name__ == "__main__":
    main()
