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
  - Keys memory: float32 x dim per row + 8 B of list offsets, plus exact's keys (hash,
    keep keys, id, source: ~50 B); measured 313 B/row with stories260K (64-dim, 264 B of
    it the vector). A 384-dim MiniLM is 1.5 KiB/row: 15.4 GB at 10M rows (stories260K:
    3.1 GB); the plan also holds one (n, dim) float32 matrix built from the keys
    (another n x dim x 4 bytes while the concatenated keys are alive). float16 would
    halve both but moves cosines by ~1e-3, which flips pairs near the threshold: not
    done, so the output is the whole-table path's.
  - The pair search is exhaustive, O(n^2 x dim) multiply-adds (blocks of `block` rows
    against the rows after them: block x n float32 at once, 8 GiB at 1M rows with the
    default block of 2048). That, not the keys, is what bounds semantic dedup to some
    hundred thousand rows on CPU; MinHash is the method for larger sets.
  - Embeddings are computed part by part (the model is loaded once per part, ~1 s for a
    small encoder) and cached by id in the stage directory (`cache_dir`): each call that
    computes vectors writes them as a new file of its own (atomic), and every call reads
    the ids it needs from all the files (a filtered scan: the reads grow with parts x
    files, small at the sizes above). No file is rewritten, so Ray workers keying parts
    at once never write the same file, and a rerun with another threshold or a resumed
    stage does no inference. (The cache of
    curate.stages.common.embeddings, one file rewritten whole per call, is not used: with
    parts it is rewritten once per part, and two workers writing it at once collide on its
    fixed temp name, `score_cache._write_parquet_atomic`.)
  - A row's vector can differ in its last float bits with the batch it was computed in
    (which rows share its length bucket: ~1e-7 with stories260K) and with torch's thread
    count (~2e-6: a Ray worker runs with one thread, a local run with all cores); only a
    pair that close to the threshold can decide differently between part sizes or
    executors when nothing is cached. The whole-table path had the same dependence on
    the thread count.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import polars as pl

from curate.contract.views import text_view
from curate.stages.dedup.union_find import components

EMB = "__dedup_embedding"  # keys: the row's embedding (list<f32>, L2-normalised)


def embed(stage, frame: pl.DataFrame) -> np.ndarray:
    """(rows, dim) L2-normalised float32 embeddings of `frame`'s text view (the stage's
    `view`) from the stage's `model`: the vectors of ids already in the cache (`cache_dir`),
    the others computed (curate.stages.common.embeddings) and stored as one new cache file."""
    from curate.contract.atomic import write_parquet
    from curate.stages.common import embeddings

    if frame.height == 0:
        return np.zeros((0, 0), dtype=np.float32)
    cfg = stage.config
    folder = cache_dir(stage)
    ids = frame["id"].cast(pl.String).fill_null("")
    want = ids.unique(maintain_order=True)
    files = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
    have = (pl.scan_parquet(files).filter(pl.col("id").is_in(want.implode())).collect()
            .unique("id", keep="first", maintain_order=True) if files else pl.DataFrame(schema=CACHE_SCHEMA))
    todo = frame.with_columns(ids.alias("id")).filter(~pl.col("id").is_in(have["id"].implode()))
    todo = todo.unique("id", keep="first", maintain_order=True)
    if todo.height:
        texts = todo.select(text_view(cfg.view).alias("t")).to_series()
        vecs = embeddings.embed(todo, texts, "model", model=stage.context.resolve(cfg.model), cache_dir=None,
                                batch_size=cfg.batch_size, max_length=cfg.max_length)
        new = pl.DataFrame({"id": todo["id"], "vec": _lists(vecs)}, schema=CACHE_SCHEMA)
        name = hashlib.sha256("\n".join(new["id"].to_list()).encode("utf-8")).hexdigest()[:20]
        write_parquet(folder / f"part-{name}.parquet", new)
        have = pl.concat([have, new], how="vertical")
    stage.context.log(f"[{stage.name}] embeddings: {want.len() - todo.height} cached, {todo.height} computed")
    got = pl.DataFrame({"id": ids}).join(have, on="id", how="left", maintain_order="left")["vec"]
    return matrix(got)


def cache_dir(stage) -> Path:
    """Where the stage keeps its vectors: `STAGE_DIR/embeddings-<fingerprint>/part-*.parquet`,
    one file per `embed` call that computed something (id, vec). The fingerprint covers the
    model's files, the view and max_length, so changing any of them starts a new cache."""
    from curate.stages.common import score_cache

    cfg = stage.config
    model = stage.context.resolve(cfg.model)
    fp = score_cache.fingerprint({"kind": "semantic-dedup", "view": cfg.view, "max_length": cfg.max_length},
                                 score_cache.model_files(model))
    return Path(stage.context.stage_dir) / f"embeddings-{fp}"


CACHE_SCHEMA = {"id": pl.String, "vec": pl.List(pl.Float32)}


def _lists(mat: np.ndarray) -> pl.Series:
    """A (rows, dim) float32 matrix as a list<f32> Series (one list per row), built from
    the flat buffer and offsets (no Python loop over rows)."""
    import pyarrow as pa

    mat = np.ascontiguousarray(mat, dtype=np.float32)
    offsets = np.arange(0, mat.size + 1, max(1, mat.shape[1]), dtype=np.int64)[:mat.shape[0] + 1]
    arr = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(mat.reshape(-1), type=pa.float32()))
    return pl.Series(arr).cast(pl.List(pl.Float32))


def embedding_column(stage, part: pl.DataFrame) -> pl.Series:
    """The keys' embedding column of `part` (one list<f32> per row; no text)."""
    if part.height == 0:
        return pl.Series(EMB, [], dtype=pl.List(pl.Float32))
    return _lists(embed(stage, part)).alias(EMB)


def matrix_from_keys(keys: pl.DataFrame) -> np.ndarray:
    """The (rows, dim) float32 matrix of the keys' embedding column."""
    return matrix(keys[EMB])


def matrix(col: pl.Series) -> np.ndarray:
    """The (rows, dim) float32 matrix of a list<f32> column, checked: every row has a
    vector of the same width."""
    widths = col.list.len()
    dim = int(widths[0]) if len(widths) and widths[0] is not None else 0
    if len(widths) and (widths.null_count() or int(widths.min()) != dim or int(widths.max()) != dim):
        raise RuntimeError(f"semantic dedup: embeddings of differing widths ({widths.min()}..{widths.max()})")
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
