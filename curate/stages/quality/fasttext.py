"""Scoring with a supervised fastText classifier (trained by `curate classifier train`).

Texts are prepared the same way for training and scoring: one line each (fastText reads
a newline as the end of an example), lowercased, punctuation split from words (fastText
splits on whitespace only, so "good." and "good" would otherwise be different words).
The score is the classifier's probability of the positive label.

fastText's `.bin` is its own binary format, read by its C++ loader; no pickle is involved.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

POSITIVE = "__label__hq"
NEGATIVE = "__label__lq"


def prepare(text: pl.Expr) -> pl.Expr:
    return (
        text.fill_null("")
        .str.to_lowercase()
        .str.replace_all(r"([^\w\s])", " $1 ")
        .str.replace_all(r"\s+", " ")
        .str.strip_chars()
    )


def load(path: str | Path):
    import fasttext

    return fasttext.load_model(str(path))


def positive_score(model, texts: list[str], label: str = POSITIVE) -> np.ndarray:
    """P(label) per text, computed in float64 from the model's logits (output matrix x the
    text's averaged input vector, a softmax over the labels).

    Not `model.predict`'s probabilities: fastText returns exp(log(p + 1e-5)) in float32,
    so texts the model is very sure about score exactly 1e-5 or 1.0 and rank as ties; the
    logits keep their order. (Checked while looking for issue 18's gap: on its proxies the
    held-out AUC was the same either way, so this was not the cause.) Same ranking as
    `positive_probability` otherwise; a quantized model (no dense output matrix) falls back
    to it."""
    if label not in model.get_labels():
        raise ValueError(f"fastText model has no label {label!r} (labels: {', '.join(model.get_labels())})")
    try:
        out_m = np.asarray(model.get_output_matrix(), dtype=np.float64)
    except ValueError:  # quantized
        return positive_probability(model, texts, label)
    if not texts:
        return np.zeros(0, dtype=np.float64)
    hidden = np.stack([model.get_sentence_vector(t) for t in texts]).astype(np.float64)
    logits = hidden @ out_m.T
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e[:, model.get_labels().index(label)] / e.sum(axis=1)


def positive_probability(model, texts: list[str], label: str = POSITIVE, batch_size: int = 20000) -> np.ndarray:
    """P(label) per text; fastText's batch predict over a list (k=-1: every label)."""
    if label not in model.get_labels():
        raise ValueError(f"fastText model has no label {label!r} (labels: {', '.join(model.get_labels())})")
    out = np.zeros(len(texts), dtype=np.float64)
    for start in range(0, len(texts), batch_size):
        labels, probs = model.predict(texts[start:start + batch_size], k=-1, threshold=0.0)
        for i, (ls, ps) in enumerate(zip(labels, probs)):
            for lab, p in zip(ls, ps):
                if lab == label:
                    out[start + i] = min(float(p), 1.0)
                    break
    return out
