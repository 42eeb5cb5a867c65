"""Embeddings of records for diversity-aware selection, L2-normalised float32 rows.

Three sources, a trade-off between cost and quality:
  ngram   signed hashed word uni+bigram counts (no model, column-wise in polars): cheap,
          catches near-verbatim and topical overlap, blind to paraphrase.
  model   mean of the last hidden state of a local model directory, over non-padding
          tokens: a causal LM (the scoring LM's own hidden state, as Deita uses) or a
          sentence-embedding encoder (e.g. a MiniLM directory; mean pooling is what
          sentence-transformers does for those). Cached by id in the stage's directory.
  column  a list<float> column some earlier stage already computed.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl


def normalize_rows(mat: np.ndarray) -> np.ndarray:
    mat = np.asarray(mat, dtype=np.float32)
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    return mat / np.where(norms == 0, 1.0, norms)


def _bucket(feature: str, dim: int) -> tuple[int, int]:
    d = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
    v = int.from_bytes(d, "big")
    return v % dim, 1 if (v >> 63) & 1 else -1


def ngram_embeddings(texts: pl.Series, dim: int = 512) -> np.ndarray:
    """Signed feature hashing of lowercased word unigrams and bigrams, sublinear counts.

    Tokenising, n-gram building and counting are polars expressions; only the distinct
    features are hashed in Python (hashlib is stable across versions, polars' hash is not),
    and the vocabulary is far smaller than the token stream."""
    n = len(texts)
    out = np.zeros((n, dim), dtype=np.float32)
    if n == 0:
        return out
    toks = (
        pl.DataFrame({"text": texts.fill_null("")})
        .with_row_index("row")
        .select("row", pl.col("text").str.to_lowercase().str.extract_all(r"\w+").alias("tok"))
        .explode("tok")
        .drop_nulls("tok")
    )
    bigrams = toks.with_columns(
        (pl.col("tok") + " " + pl.col("tok").shift(-1).over("row")).alias("tok")
    ).drop_nulls("tok")
    feats = pl.concat([toks, bigrams]).group_by("row", "tok").len()
    vocab = feats["tok"].unique().to_list()
    hashed = [_bucket(f, dim) for f in vocab]
    lut = pl.DataFrame(
        {"tok": vocab, "bucket": [b for b, _ in hashed], "sign": [s for _, s in hashed]},
        schema={"tok": pl.String, "bucket": pl.Int64, "sign": pl.Int8},
    )
    cells = (
        feats.join(lut, on="tok")
        .with_columns((pl.col("len").cast(pl.Float32).log1p() * pl.col("sign")).alias("v"))
        .group_by("row", "bucket")
        .agg(pl.col("v").sum())
    )
    np.add.at(out, (cells["row"].to_numpy(), cells["bucket"].to_numpy()), cells["v"].to_numpy())
    return normalize_rows(out)


def embed(
    table: pl.DataFrame,
    texts: pl.Series,
    source: str,
    *,
    dim: int = 512,
    model: Path | None = None,
    column: str | None = None,
    cache_dir: Path | None = None,
    batch_size: int = 32,
    max_length: int = 512,
    device: str = "cpu",
    trust_remote_code: bool = False,
    log: Callable[[str], None] | None = None,
) -> np.ndarray:
    """An (n, d) L2-normalised matrix, one row per row of `table`. A missing vector (null
    in an embedding column) becomes a zero row: it is far from everything, so kept."""
    if len(table) == 0:
        return np.zeros((0, dim), dtype=np.float32)
    if source == "ngram":
        return ngram_embeddings(texts, dim)
    if source == "column":
        if column not in table.columns:
            raise ValueError(f"embedding column {column!r} is not in the table")
        rows = table[column].to_list()
        width = max((len(r) for r in rows if r is not None), default=1)
        return normalize_rows(np.asarray([r if r is not None else [0.0] * width for r in rows], dtype=np.float32))
    if source == "model":
        from curate.stages.common import score_cache as cache_mod
        from curate.stages.common import lm  # torch lives there only

        fp = cache_mod.fingerprint({"kind": "embed", "max_length": max_length}, cache_mod.model_files(model))
        frame = pl.DataFrame({"id": table["id"], "text": texts})
        text_of = dict(zip(frame["id"].to_list(), frame["text"].to_list()))

        def compute(ids: list[str]) -> pl.DataFrame:
            if not ids:
                return pl.DataFrame(schema={"id": pl.String, "vec": pl.List(pl.Float32)})
            vecs = lm.embed_texts(model, [text_of[i] for i in ids], batch_size=batch_size, max_length=max_length,
                                  device=device, trust_remote_code=trust_remote_code)
            return pl.DataFrame({"id": ids, "vec": [v.tolist() for v in vecs]},
                                schema={"id": pl.String, "vec": pl.List(pl.Float32)})

        if cache_dir is None:
            got = compute(frame["id"].unique(maintain_order=True).to_list())
        else:
            got = cache_mod.cached(Path(cache_dir) / f"embeddings-{fp}.parquet", frame["id"], compute, log)
        vecs = frame.select("id").join(got, on="id", how="left", maintain_order="left")["vec"].to_list()
        return normalize_rows(np.asarray(vecs, dtype=np.float32).reshape(len(frame), -1))
    raise ValueError(f"unknown embedding source {source!r}")
