"""Training the fastText quality classifier the `quality` stage's `fasttext` scorer uses.

    curate classifier train --positive good.jsonl --negative noisy.jsonl -o quality.bin

Positive and negative files are read by the project's readers (any supported file type and
instruction format, gzip/zstd), turned into one text view each, prepared exactly as the
scorer prepares them, split into train and a held-out part (stratified, a stable hash of
the text and seed, so the split does not depend on file order), and fitted with fastText.
Precision, recall, F1 and ROC AUC on the held-out part are printed and written next to the
model as `<model>.json`. The saved model is the one evaluated (trained on the train part).

With `balance` (default) the minority class's training lines are repeated to match the
majority: fastText has no class weights, and a 10:1 imbalance otherwise teaches it to call
everything the majority class.

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


@dataclass
class TrainOptions:
    view: str = "conversation"
    word_ngrams: int = 2
    epoch: int = 10
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


def _is_holdout(texts: list[str], fraction: float, seed: int) -> "np.ndarray":
    import numpy as np

    if fraction <= 0:
        return np.zeros(len(texts), dtype=bool)
    pre = f"{seed}\x00".encode()
    keys = [int.from_bytes(hashlib.blake2b(pre + t.encode(), digest_size=8).digest(), "big") for t in texts]
    return np.asarray(keys, dtype=np.float64) / 2.0 ** 64 < fraction


def train_classifier(positive: list, negative: list, output: str | Path, opts: TrainOptions,
                     log=click.echo) -> dict:
    import fasttext
    import numpy as np

    from curate.stages.quality.fasttext import NEGATIVE, POSITIVE, positive_probability

    pos = read_texts(positive, opts.view, opts.fmt).to_list()
    neg = read_texts(negative, opts.view, opts.fmt).to_list()
    if not pos or not neg:
        raise click.UsageError(f"need examples of both classes (positive: {len(pos)}, negative: {len(neg)})")
    texts = pos + neg
    labels = np.array([1] * len(pos) + [0] * len(neg), dtype=np.int64)
    held = _is_holdout(texts, opts.holdout, opts.seed)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.txt"
        n_pos = int(((labels == 1) & ~held).sum())
        n_neg = int(((labels == 0) & ~held).sum())
        # fastText has no class weights: repeat the minority class's lines instead
        reps = {1: 1, 0: 1}
        if opts.balance and n_pos and n_neg:
            reps = {1: max(1, round(n_neg / n_pos)), 0: max(1, round(n_pos / n_neg))}
        with open(train_file, "w", encoding="utf-8") as fh:
            for t, y, h in zip(texts, labels, held):
                if not h:
                    fh.write(f"{POSITIVE if y else NEGATIVE} {t}\n" * reps[int(y)])
        kwargs = dict(input=str(train_file), epoch=opts.epoch, lr=opts.lr, wordNgrams=opts.word_ngrams, dim=opts.dim,
                      minCount=opts.min_count, bucket=opts.bucket, loss="softmax", seed=opts.seed,
                      thread=opts.threads, verbose=0)
        tmp_model = output.with_name(output.name + ".tmp")
        try:
            _train_isolated(kwargs, tmp_model)
        except RuntimeError as exc:  # fastText diverged ("Encountered NaN")
            raise click.ClickException(f"fastText training failed ({exc}); try a lower --lr") from None
        model = fasttext.load_model(str(tmp_model))
        os.replace(tmp_model, output)
    report = {
        "model": str(output),
        "options": {k: v for k, v in vars(opts).items()},
        "train": {"positive": int(((labels == 1) & ~held).sum()), "negative": int(((labels == 0) & ~held).sum()),
                  "repeats": {"positive": reps[1], "negative": reps[0]}},
    }
    if held.any():
        idx = np.flatnonzero(held)
        scores = positive_probability(model, [texts[i] for i in idx])
        report["holdout"] = metrics(scores, labels[idx])
    train_idx = np.flatnonzero(~held)
    report["train_metrics"] = metrics(positive_probability(model, [texts[i] for i in train_idx]), labels[train_idx])
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
