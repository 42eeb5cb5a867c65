"""Training the fastText quality classifier the `quality` stage's `fasttext` scorer uses.

    curate classifier train --positive good.jsonl --negative noisy.jsonl -o quality.bin

Positive and negative files are read by the project's readers (any supported file type and
instruction format, gzip/zstd), turned into one text view each, prepared exactly as the
scorer prepares them, split into train and a held-out part (a stable hash of the text and
seed, so the split does not depend on file order; each class loses about `holdout` of its
rows), and fitted with fastText.
Precision, recall, F1 and ROC AUC on the held-out part are printed and written next to the
model as `<model>.json`. The saved model is the one evaluated (trained on the train part).

With `balance` (default) the minority class's training lines are repeated to match the
majority: fastText has no class weights, and a 10:1 imbalance otherwise teaches it to call
everything the majority class. The training lines are written in a seeded random order
(fastText reads its file in order and does not shuffle).

Epochs (`epoch = 0`, default): chosen among 3, 5, 10 and 20 by the AUC on a validation
slice carved from the training part (`choose_epoch`), then the model is refitted on the
whole training part. The earlier fixed 10 epochs over a class-sorted file reproduce issue
18's gap on a proxy of its data (held-out AUC 0.51 on AlpaGasus labels where plain
fastText reached 0.59-0.63; the labels themselves are not available here): on a label that
is a weak function of the words the 9x-repeated positives are memorised, while on a
strong one more epochs keep helping (benchmarks/classifier_bench.py; the numbers are in
docs/curation-efficacy.md).

The held-out AUC is computed from the model's logits (`fasttext.positive_score`), the
probability of the positive label `__label__hq`, ties counted half; the held-out rows
(`holdout_mask`) are never written to any training file, repeated or not.

The default `bucket` (200k, not fastText's 2M) keeps the model small (about 50 MB at
dim 64) for the few thousand to few hundred thousand examples a quality classifier sees.

Determinism: fastText trains with `thread = 1` by default, because its Hogwild threads
make multi-threaded training order-dependent; `--threads N` trades that for speed.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # numpy/polars load inside functions, so `curate --help` stays instant
    import numpy as np
    import polars as pl


EPOCH_CANDIDATES = (3, 5, 10, 20)
INNER_FRACTION = 0.2  # of the training part, for choosing the epochs
MIN_VALIDATION = 5  # examples of each class the validation slice needs for a choice


@dataclass
class TrainOptions:
    view: str = "conversation"
    word_ngrams: int = 2
    epoch: int = 0  # 0: chosen among EPOCH_CANDIDATES on an inner validation slice (choose_epoch)
    dim: int = 64
    lr: float = 0.1
    min_count: int = 1
    bucket: int = 200_000
    balance: bool = True
    holdout: float = 0.2
    seed: int = 0
    threads: int = 1
    fmt: str = "auto"


def read_texts(files: list[str | Path], view: str, fmt: str = "auto") -> "pl.Series":
    """Every record of `files` as one prepared line of text (empty texts left out)."""
    import polars as pl

    from curate.stages.quality.fasttext import prepare
    from curate.contract.views import text_view
    from curate.read.sources import SourceConfig
    from curate.read.readers import read_source

    parts = []
    for i, f in enumerate(files):
        p = Path(f).resolve()
        if not p.is_file():
            raise click.UsageError(f"no such file: {f}")
        read = read_source(SourceConfig(name=f"input{i}", path=str(p), format=fmt), p.parent)
        if read.quarantine:
            click.echo(f"  {f}: {len(read.quarantine)} unreadable record(s) skipped", err=True)
        parts.append(read.table.select(prepare(text_view(view)).alias("t"))["t"])
    texts = pl.concat(parts) if parts else pl.Series("t", [], dtype=pl.String)
    return texts.filter(texts.str.len_chars() > 0)


def roc_auc(scores: "np.ndarray", labels: "np.ndarray") -> float:
    """Mann-Whitney U form of the ROC AUC, ties counted half."""
    import polars as pl
    pos, neg = int(labels.sum()), int((1 - labels).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = pl.Series(scores).rank("average").to_numpy()
    return float((ranks[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def metrics(scores: "np.ndarray", labels: "np.ndarray", threshold: float = 0.5) -> dict:
    pred = scores >= threshold
    tp = int((pred & (labels == 1)).sum())
    fp = int((pred & (labels == 0)).sum())
    fn = int((~pred & (labels == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"n": int(len(labels)), "positives": int(labels.sum()), "precision": round(precision, 4),
            "recall": round(recall, 4), "f1": round(f1, 4),
            "accuracy": round(float((pred == (labels == 1)).mean()) if len(labels) else 0.0, 4),
            "auc": round(roc_auc(scores, labels), 4)}


def holdout_mask(texts: list[str], fraction: float, seed: int, salt: str = "") -> "np.ndarray":
    """True for the rows held out: a stable hash of (seed, salt, text) below `fraction`. Not
    stratified, but each class loses about `fraction` of its rows; equal texts fall on the
    same side, so no copy of a held-out line is trained on (repetition for balance copies
    training lines only)."""
    import numpy as np

    if fraction <= 0:
        return np.zeros(len(texts), dtype=bool)
    pre = f"{seed}\x00{salt}\x00".encode() if salt else f"{seed}\x00".encode()
    keys = [int.from_bytes(hashlib.blake2b(pre + t.encode(), digest_size=8).digest(), "big") for t in texts]
    return np.asarray(keys, dtype=np.float64) / 2.0 ** 64 < fraction


def _write_train_file(path: Path, texts: list[str], labels: "np.ndarray", mask: "np.ndarray", balance: bool,
                      seed: int) -> dict[int, int]:
    """The fastText training file of the rows in `mask`, in a seeded random order; with
    `balance` the minority class's lines are repeated (fastText has no class weights).
    Returns the repeat count of each class.

    The order matters: fastText does not shuffle, and with one thread it reads the file
    front to back every epoch with a learning rate that decays over the run, so a
    class-sorted file (all positives, each repeat beside its copies, then all negatives)
    ends every epoch on one class and makes several consecutive steps on the same line."""
    import random

    import numpy as np

    from curate.stages.quality.fasttext import NEGATIVE, POSITIVE

    n_pos = int(((labels == 1) & mask).sum())
    n_neg = int(((labels == 0) & mask).sum())
    reps = {1: 1, 0: 1}
    if balance and n_pos and n_neg:
        reps = {1: max(1, round(n_neg / n_pos)), 0: max(1, round(n_pos / n_neg))}
    lines = []
    for i in np.flatnonzero(mask):
        y = int(labels[i])
        lines.extend([f"{POSITIVE if y else NEGATIVE} {texts[i]}\n"] * reps[y])
    random.Random(seed).shuffle(lines)
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(lines)
    return reps


def _fit_kwargs(opts: TrainOptions, train_file: Path, epoch: int) -> dict:
    return dict(input=str(train_file), epoch=epoch, lr=opts.lr, wordNgrams=opts.word_ngrams, dim=opts.dim,
                minCount=opts.min_count, bucket=opts.bucket, loss="softmax", seed=opts.seed,
                thread=opts.threads, verbose=0)


def _fit(kwargs: dict, path: Path):
    import fasttext

    try:
        _train_isolated(kwargs, path)
    except RuntimeError as exc:  # fastText diverged ("Encountered NaN")
        raise click.ClickException(f"fastText training failed ({exc}); try a lower --lr") from None
    return fasttext.load_model(str(path))


def choose_epoch(texts: list[str], labels: "np.ndarray", train: "np.ndarray", opts: TrainOptions, tmp: Path,
                 log=click.echo) -> dict:
    """Pick the number of epochs on an inner validation slice of the training part (never
    the held-out part): fit each of `EPOCH_CANDIDATES` on the rest, take the AUC on the
    slice, and keep the best. Returns {"chosen", "validation": {epochs: AUC}, ...}.

    Why: the right amount of training depends on how well the words predict the label. On
    labels that are a strong function of the text (answers cut short), held-out AUC rose
    from 0.74 at 3 epochs to 0.87 at 20; on an LLM-judge-like label (a weak, noisy function
    of the text) it peaked at 3-5 epochs and fell to 0.59 at 20, below plain fastText: the
    minority class, repeated ~9x for balance, is memorised. No fixed count is right for
    both (benchmarks/classifier_ablation.py). Cost: the candidates' epochs summed (38) plus
    the final fit, about 5x one 10-epoch fit. With too few examples of a class in the
    slice (< `MIN_VALIDATION`) the choice is noise: the middle candidate is used instead."""
    import numpy as np

    from curate.stages.quality.fasttext import positive_score

    inner = holdout_mask(texts, INNER_FRACTION, opts.seed, salt="inner") & train
    fit = train & ~inner
    n_pos, n_neg = int(labels[inner].sum()), int((1 - labels[inner]).sum())
    out = {"candidates": list(EPOCH_CANDIDATES), "validation_n": int(inner.sum()), "validation_positives": n_pos}
    if min(n_pos, n_neg) < MIN_VALIDATION or not labels[fit].sum() or labels[fit].all():
        out["chosen"] = EPOCH_CANDIDATES[len(EPOCH_CANDIDATES) // 2]
        out["reason"] = f"validation slice too small ({n_pos} positive, {n_neg} negative)"
        return out
    train_file = tmp / "inner.txt"
    _write_train_file(train_file, texts, labels, fit, opts.balance, opts.seed)
    idx = np.flatnonzero(inner)
    vtexts = [texts[i] for i in idx]
    aucs = {}
    for e in EPOCH_CANDIDATES:
        model = _fit(_fit_kwargs(opts, train_file, e), tmp / f"inner-{e}.bin")
        aucs[e] = round(roc_auc(positive_score(model, vtexts), labels[idx]), 4)
    best = max(EPOCH_CANDIDATES, key=lambda e: (aucs[e], -e))  # ties: fewer epochs
    out.update(chosen=best, validation={str(e): a for e, a in aucs.items()})
    log(f"  epochs chosen on {len(idx)} validation rows ({n_pos} positive): {best} "
        f"(AUC {', '.join(f'{e}: {a:.3f}' for e, a in aucs.items())})")
    return out


def train_classifier(positive: list, negative: list, output: str | Path, opts: TrainOptions,
                     log=click.echo) -> dict:
    import numpy as np

    from curate.stages.quality.fasttext import positive_score

    pos = read_texts(positive, opts.view, opts.fmt).to_list()
    neg = read_texts(negative, opts.view, opts.fmt).to_list()
    if not pos or not neg:
        raise click.UsageError(f"need examples of both classes (positive: {len(pos)}, negative: {len(neg)})")
    texts = pos + neg
    labels = np.array([1] * len(pos) + [0] * len(neg), dtype=np.int64)
    held = holdout_mask(texts, opts.holdout, opts.seed)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    report = {"model": str(output), "options": {k: v for k, v in vars(opts).items()}}
    with tempfile.TemporaryDirectory() as tmp:
        epoch = opts.epoch
        if epoch <= 0:
            report["epoch_choice"] = choose_epoch(texts, labels, ~held, opts, Path(tmp), log)
            epoch = report["epoch_choice"]["chosen"]
        train_file = Path(tmp) / "train.txt"
        reps = _write_train_file(train_file, texts, labels, ~held, opts.balance, opts.seed)
        tmp_model = output.with_name(output.name + ".tmp")
        model = _fit(_fit_kwargs(opts, train_file, epoch), tmp_model)
        os.replace(tmp_model, output)
    report["train"] = {"positive": int(((labels == 1) & ~held).sum()), "negative": int(((labels == 0) & ~held).sum()),
                       "repeats": {"positive": reps[1], "negative": reps[0]}, "epoch": epoch}
    if held.any():
        idx = np.flatnonzero(held)
        report["holdout"] = metrics(positive_score(model, [texts[i] for i in idx]), labels[idx])
    train_idx = np.flatnonzero(~held)
    report["train_metrics"] = metrics(positive_score(model, [texts[i] for i in train_idx]), labels[train_idx])
    (output.with_name(output.name + ".json")).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report


def _fit_and_save(kwargs: dict, path: str) -> None:
    import fasttext

    fasttext.train_supervised(**kwargs).save_model(path)


def _train_isolated(kwargs: dict, path: Path) -> None:
    """Train in a fresh (spawned) process. fastText's training was seen to diverge
    ("Encountered NaN") in a process where other native libraries had run before (torch,
    the language-ID model), while the same call with the same seed succeeds in a clean
    process; a spawned process makes the result depend only on the inputs."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pool.apply(_fit_and_save, (kwargs, str(path)))
