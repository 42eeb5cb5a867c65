"""MinHash dedup on Ray: the dedup stage's building blocks, placed on a cluster.

  1. signatures per block (workers): the stage's own `DedupStage.minhash_block` (text
     normalisation, `curate.stages.dedup.minhash.signatures` / `band_hashes` with the stage's
     permutation seed), so every row gets the band hashes the local run computes;
  2. band-bucket grouping through Ray Data's shuffle: (bucket key, row) pairs are grouped
     by Ray Data's sort shuffle on the key (`sort`: range partitions), and each bucket of two or more rows emits its
     candidate pairs (all pairs up to `max_bucket` members, a star to the first member
     above it: the local rule);
  3. the driver: the stage's own `minhash_clusters` (exact or estimated Jaccard
     verification of the candidate pairs, connected components), then its
     `from_clusters`: keep rule, `duplicate_of` marks, cluster columns and stats.

Step 3 runs on the driver because verification needs the texts of the rows in candidate
pairs and the keep rule needs every cluster whole; both are small next to step 1 (pairs,
not rows). The per-row state that crosses the network is fixed-width: `bands` uint64 per
row (plus `num_perm` uint32 with verify_by = "estimate").

This is `DedupStage._minhash_roots` with its steps placed apart (each step is the stage's
public method; the bucket rule is `candidate_pairs`'); tests/test_ray_executor.py checks that the clusters,
kept rows and stats equal the local executor's.
"""
from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from curate.stages.base import Stage, StageResult
from curate.stages.dedup import minhash as mh
from curate.pipeline.ray_blocks import from_ipc, maybe_fault, portable, to_ipc, worker_stage


def _signature_task(cls, config, context, keep_sig: bool):
    def run(batch: pa.Table) -> pa.Table:
        maybe_fault()
        stage = worker_stage(cls, config, context)
        df = pl.from_arrow(batch)
        band, has, sig = stage.minhash_block(df)
        return pa.table({"rows": [df.height], "band": [band.tobytes()], "has": [has.tobytes()],
                         "sig": [sig.tobytes() if keep_sig else b""]})

    return run


def _bucket_pairs(max_bucket: int):
    """map_batches function over one hash partition of (bucket key, row) pairs: every
    bucket of the partition is whole in it, so its candidate pairs are found here, by the
    rule of `DedupStage.candidate_pairs`: all pairs for up to `max_bucket` distinct rows, a
    star to the first (smallest) row above that. Also returns the partition's distinct
    key count, so the driver can check that no bucket was split across batches."""

    def run(batch: pa.Table) -> pa.Table:
        long = pl.from_arrow(batch)
        members = (
            long.filter(pl.col("k").is_duplicated())
            .group_by("k").agg(pl.col("r").unique().sort())
            .filter(pl.col("r").list.len() > 1)
            .with_row_index("bucket")
        )
        size = pl.col("r").list.len()
        small = members.filter(size <= max_bucket).select("bucket", "r").explode("r")
        pairs = [small.join(small, on="bucket", suffix="_2").filter(pl.col("r") < pl.col("r_2"))
                 .select(pl.col("r").alias("l"), pl.col("r_2").alias("rr"))]
        big = members.filter(size > max_bucket)
        if big.height:
            pairs.append(big.select(pl.col("r").list.first().alias("l"), pl.col("r").list.slice(1).alias("rr"))
                         .explode("rr"))
        out = pl.concat(pairs).unique().select(pl.col("l").cast(pl.Int64), pl.col("rr").cast(pl.Int64))
        keys = long["k"].n_unique() if long.height else 0
        return pa.table({"pairs": [to_ipc(out)], "keys": [keys]})

    return run


def ray_minhash_dedup(executor, stage: Stage, table: pl.DataFrame) -> StageResult:
    import ray

    cfg = stage.config
    n = table.height
    bands, rows = cfg.lsh()
    # the signature (verify_by = "estimate") or the 1-byte sketch of the exact path's pre-check
    keep_sig = cfg.verify and (cfg.verify_by == "estimate" or cfg.prefilter)
    sig_dtype, sig_width = ((np.uint32, cfg.num_perm) if cfg.verify_by == "estimate"
                            else (np.uint8, min(cfg.num_perm, mh.SKETCH_VALUES)))
    res = executor.map_blocks(table, _signature_task(type(stage), cfg, portable(stage.context), keep_sig))
    if sum(res.column("rows").to_pylist()) != n:
        raise RuntimeError(f"ray: stage {stage.name!r} lost rows while computing signatures")
    band = np.concatenate([np.frombuffer(x, np.uint64).reshape(-1, bands) for x in res.column("band").to_pylist()])
    has = np.concatenate([np.frombuffer(x, bool) for x in res.column("has").to_pylist()])
    sig = (np.concatenate([np.frombuffer(x, sig_dtype).reshape(-1, sig_width) for x in res.column("sig").to_pylist()])
           if keep_sig else None)

    # ---- band buckets, grouped by Ray Data's hash shuffle
    idx = np.nonzero(has)[0].astype(np.int64)
    left = right = np.zeros(0, np.int64)
    if len(idx) >= 2:
        keys = pa.table({"k": pa.array(band[idx].ravel()), "r": pa.array(np.repeat(idx, bands))})
        parts_n = 2 * executor.cluster_cpus()
        step = max(1, -(-keys.num_rows // parts_n))
        ds = ray.data.from_arrow([keys.slice(lo, step) for lo in range(0, keys.num_rows, step)])
        # A range-partitioned sort on the bucket key (Ray Data's sort shuffle): rows with
        # the same key land in the same output block, so each block holds whole buckets.
        # (Key-based hash repartition would do too, but its aggregator actors hung on a
        # cluster of 1-CPU nodes; the sort shuffle runs on plain tasks.)
        shuffled = ds.sort("k")
        res_pairs = pa.concat_tables(ray.get(shuffled.map_batches(
            _bucket_pairs(cfg.max_bucket), batch_format="pyarrow", batch_size=None).to_arrow_refs()))
        distinct = pl.Series(band[idx].ravel()).n_unique()
        if sum(res_pairs.column("keys").to_pylist()) == distinct:
            allp = pl.concat([from_ipc(x) for x in res_pairs.column("pairs").to_pylist()]).unique().sort("l", "rr")
            left, right = allp["l"].to_numpy().astype(np.int64), allp["rr"].to_numpy().astype(np.int64)
        else:  # a bucket was split across batches: group on the driver, the stage's own way
            stage.context.log(f"[{stage.name}] ray: a band bucket spanned two blocks; grouped on the driver")
            left, right = stage.candidate_pairs(band, has)

    # ---- verification and components on the driver (the stage's own code)
    roots, stats = stage.minhash_clusters(table, band, has, sig, left, right)

    # The keep rule, marks and stats: the stage's own, fed the roots found above.
    result = stage.from_clusters(table, roots, stats)
    stage.context.log(f"[{stage.name}] ray: signatures on {res.num_rows} block(s), band buckets grouped by Ray "
                      "Data's shuffle, verification and clusters on the driver")
    return result
