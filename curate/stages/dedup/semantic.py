"""Semantic dedup (`method = "semantic"`): rows whose sentence embeddings have a cosine of
at least `cosine_threshold` are one cluster; the dedup stage (curate/stages/dedup/
stage.py) then applies the same keep rule, marks and statistics as exact and MinHash.

Keys -> plan -> apply (curate/stages/base.py):
  keys   `embedding_column`: per row, the L2-normalised embedding of its text view from
         a local model directory (curate.stages.common.embeddings, mean-pooled last
         hidden state), as a list<f32> column beside exact's keys (hash, keep-rule keys,
         source). A list, not a fixed-width array: an empty part has no width to give.
  plan   `roots_from_keys`: every pair with cosine >= the threshold (`similar_pairs`,
         exhaustive), union-find components; the stage's keep rule over them.
  apply  the stage's join on the row (nothing semantic left to do).
`whole_table_roots` is the same clustering over a whole table's text (the reference the
planned path is tested against, and `process`'s fallback were the stage not planned).

Costs and trade-offs:
  - Keys memory: float32 x dim per row, plus exact's keys (~40 B). A 384-dim MiniLM is
    1.5 KiB/row: 15.4 GB at 10M rows (a 64-dim model such as stories260K: 2.6 GB); the
    plan also holds one (n, dim) float32 matrix built from the keys (another n x dim x 4
    bytes while the concatenated keys are alive). float16 would halve both but moves
    cosines by ~1e-3, which flips pairs near the threshold: not done, so the output is
    the whole-table path's.
  - The pair search is exhaustive, O(n^2 x dim) multiply-adds (blocks of `block` rows
    against the rows after them: block x n float32 at once, 8 GiB at 1M rows with the
    default block of 2048). That, not the keys, is what bounds semantic dedup to some
    hundred thousand rows on CPU; MinHash is the method for larger sets.
  - Embeddings are computed part by part (the model is loaded once per part, ~1 s for a
    small encoder) and cached by id in the stage directory (`embeddings-<fp>.parquet`,
    read and rewritten whole per part: quadratic in parts, small at the sizes above), so a
    rerun with another threshold, or a resumed stage, does no inference.
  - Under Ray, parts are keyed on workers at once, each reading and rewriting the one
    cache file: the last writer wins, so a vector another worker added may be lost (a
    later rerun recomputes it; the output does not depend on the cache). The cache's
    temp file (curate/stages/common/score_cache.py `_write_parquet_atomic`) has a fixed
    name, so two workers writing at the same instant can collide on it: it should take
    the per-process temp name of `curate.contract.atomic.atomic_path`.
  - A row's vector can differ in its last float bits with the batch it was computed in
    (which rows share its length bucket); only a pair within ~1e-6 of the threshold can
    decide differently between part sizes when nothing is cached.
"""
from __future__ import annotations

import numpy as np
import polars as pl

from curate.contract.views import text_view
from curate.stages.dedup.union_find import components

EMB = "__dedup_embedding"  # keys: the row's embedding (list<f32>, L2-normalised)


def embed(stage, frame: pl.DataFrame) -> np.ndarray:
    """(rows, dim) L2-normalised float32 embeddings of `frame`'s text view (the stage's
    `view`), from the stage's `model`, cached by id in its stage directory."""
    from curate.stages.common import embeddings

    cfg = stage.config
    texts = frame.select(text_view(cfg.view).alias("t")).to_series()
    return embeddings.embed(frame, texts, "model", model=stage.context.resolve(cfg.model),
                            cache_dir=stage.context.stage_dir, batch_size=cfg.batch_size,
                            max_length=cfg.max_length, log=stage.context.log)


def embedding_column(stage, part: pl.DataFrame) -> pl.Series:
    """The keys' embedding column of `part` (one list<f32> per row; no text)."""
    if part.height == 0:
        return pl.Series(EMB, [], dtype=pl.List(pl.Float32))
    emb = np.ascontiguousarray(embed(stage, part), dtype=np.float32)
    offsets = np.arange(0, emb.size + 1, emb.shape[1], dtype=np.int64)
    import pyarrow as pa

    arr = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(emb.reshape(-1), type=pa.float32()))
    return pl.Series(EMB, arr).cast(pl.List(pl.Float32))


def matrix_from_keys(keys: pl.DataFrame) -> np.ndarray:
    """The (rows, dim) float32 matrix of the keys' embedding column, checked: every row
    has a vector of the same width."""
    col = keys[EMB]
    widths = col.list.len()
    dim = int(widths[0]) if len(widths) else 0
    if len(widths) and (widths.null_count() or int(widths.min()) != dim or int(widths.max()) != dim):
        raise RuntimeError(f"semantic dedup keys: embeddings of differing widths ({widths.min()}..{widths.max()})")
    flat = col.explode().to_numpy() if len(col) else np.zeros(0, np.float32)
    return np.ascontiguousarray(flat, dtype=np.float32).reshape(len(col), dim)


def roots_from_keys(keys: pl.DataFrame, threshold: float) -> tuple[np.ndarray, dict]:
    """Each row's cluster root (its smallest member's position) and the pair statistics,
    from the keys' embeddings: what `whole_table_roots` finds from the text."""
    if keys.height == 0:
        return np.zeros(0, np.int64), {}
    emb = matrix_from_keys(keys)
    left, right = similar_pairs(emb, threshold)
    return components(keys.height, left, right), {"similar_pairs": int(len(left))}


def whole_table_roots(stage, table: pl.DataFrame) -> tuple[np.ndarray, dict]:
    """`roots_from_keys` from the whole table's text in one embedding call."""
    if table.height == 0:
        return np.zeros(0, np.int64), {}
    left, right = similar_pairs(embed(stage, table), stage.config.cosine_threshold)
    return components(table.height, left, right), {"similar_pairs": int(len(left))}


def similar_pairs(emb: np.ndarray, threshold: float, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """All (i < j) with cosine(emb[i], emb[j]) >= threshold; rows are L2-normalised.
    Blocks of rows against the rows after them bound memory to block * n floats."""
    emb = np.asarray(emb, dtype=np.float32)
    n = emb.shape[0]
    ls, rs = [], []
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        sim = emb[lo:hi] @ emb[lo:].T
        i, j = np.nonzero(sim >= threshold)
        j = j + lo
        upper = j > i + lo
        ls.append(i[upper] + lo)
        rs.append(j[upper])
    if not ls:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(ls).astype(np.int64), np.concatenate(rs).astype(np.int64)
