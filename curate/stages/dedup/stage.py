"""Deduplication: exact (hash of the normalised text view) or MinHash near-duplicates
(LSH band buckets -> candidate pairs -> a signature-sketch pre-check and an exact upper
bound of the Jaccard -> exact Jaccard -> union-find clusters), optionally
semantic (sentence embeddings, cosine threshold). One row per cluster is kept by a rule
(`keep`), the others are dropped with `_reason = "duplicate_of"` and `_detail` = the id
of the row kept in their place. Every row gets `<name>_cluster` (the kept id of its
cluster, its own id when unique), `<name>_cluster_size` and `<name>_cluster_agreement`
(the share of the cluster whose normalised answer equals the kept row's: 1.0 when every
copy said the same; low when the prompt was asked with different answers). What dedup
removes stays as information on the representative: a user view dedup (`view = "user"`)
with agreement 0.3 kept one answer among disagreeing ones. Run `consensus` before dedup to
decide by the vote; dedup after it only removes the copies.

Keep rule (`keep = "best"`): the highest `score_column` first, then the SHORTER
normalised text of the view, then the smallest id. Shorter, not longer: among copies of
equal score the extra characters are padding ("just How do I make an omelette..."), a
repeated sentence, a trailing signature, far more often than useful content.

Everything per row is column-wise: normalisation is a polars expression, signatures are
numpy over all shingles of a chunk (`curate.stages.dedup.minhash`), band buckets are a polars
group-by, verification is vectorised over candidate pairs, and clustering is a
vectorised union-find (`curate.stages.dedup.union_find`). Memory: the only per-row state kept across
chunks is fixed-width (a uint64 key for exact; num_perm uint32 + bands uint64 for
MinHash), so it grows linearly and small with the input.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from curate.stages.dedup import minhash as mh
from curate.stages.dedup import semantic
from curate.stages.base import DETAIL, REASON, ROW_COL, Plan, PlannedStage, Refine, StageResult, decided_part
from curate.contract.typed_config import ConfigError
from curate.stages.dedup.spill import SHINGLE_DIR, ShingleStore, sorted_unique, write_shingles
from curate.stages.dedup.union_find import components
from curate.contract.views import text_view

REASON_DUPLICATE = "duplicate_of"
_IDX = "__dedup_idx"
ROW = "__dedup_row"
HASH = "__dedup_hash"
_KEEPER = "__dedup_keeper"
PRIO, SCORE, LEN = "__dedup_prio", "__dedup_score", "__dedup_len"  # keep-rule keys (not to meet user columns)
SRC, BANDS, HAS, SIG = "__dedup_source", "__dedup_bands", "__dedup_has", "__dedup_sig"  # keys (planned)
NSH, SHINGLES = "__dedup_shingle_count", "__dedup_shingles"  # keys / refine_keys (exact verification)
STORE_ASK = "shingles>"  # refine_keys: file the shingles under the folder that follows (spilled keys)
# rows shingled at once in `refine_keys`: the normalisation's and tokens' temporaries follow
# it (one part of 95k conversation rows of the scale benchmark: +277 MiB at 50,000 rows a
# chunk, +98 at 10,000, +83 at 4,096, the same CPU), the shingles themselves do not
REFINE_ROWS = 8192
EX = "__dedup_example"  # decisions: "i:j" = member j of the report's example i
EXAMPLE_TEXTS = "example_texts"  # an apply result's stats: the example texts it found
ANS = "__dedup_answer"  # hash of the normalised answer: the cluster's answer agreement


HIGHER_IS_BETTER = ("heuristic", "fasttext", "verifier")
PREFILTER_MISS = 1e-4  # chance that the sketch pre-check rejects a pair exactly at the threshold
# Spilled keys (`spill_keys`, curate/stages/dedup/spill.py): what the plan holds at once.
SPILL_BUCKET_ENTRIES = 2_000_000  # (band key, row) entries sorted into buckets at once (~60 B each)
SPILL_WINDOW_BYTES = 32 << 20  # sketch / signature bytes of one window of rows (two are held)
SPILL_PAIR_ROWS = 1 << 16  # candidate pairs are filed on disk per window of this many left rows
SPILL_PAIRS = 1 << 21  # ... and de-duplicated and pre-checked in runs of windows of at most this many


@dataclass
class Config:
    kind: Literal["dedup"]
    name: str | None = None
    method: Literal["exact", "minhash", "semantic"] = "minhash"
    # Which text a duplicate is judged on. Default `user` (the user turns): the same
    # question asked twice, whose best answer is kept. `prompt` adds system and tool turns;
    # a system prompt shared by a whole source (SourceConfig.system) then makes unrelated
    # short questions look alike, which is why it is not the default.
    view: Literal["user", "prompt", "response", "conversation"] = "user"
    # Text normalisation before hashing, in this fixed order: unicode (NFKC), case, punctuation
    # (to spaces), whitespace. Default: all four for exact (punctuation-only copies are
    # copies); minhash without punctuation, which merges "2+3" with "2*3" (docs/dedup.md).
    normalize: list[str] | None = None
    # --- minhash ---
    threshold: float = 0.8  # Jaccard similarity of shingle sets
    num_perm: int = 128
    ngram: int = 3  # shingle length; 3 words suits short prompts (5 is common for web pages)
    ngram_unit: Literal["word", "char"] = "word"  # char for text without spaces (Chinese, Japanese)
    seed: int | None = None  # MinHash permutation seed; None: the run's seed
    bands: int | None = None  # LSH bands and rows per band; derived from threshold when absent
    rows: int | None = None
    verify: bool = True  # check every candidate pair's Jaccard before merging clusters
    verify_by: Literal["exact", "estimate"] = "exact"  # exact shingle-set Jaccard, or the signature estimate
    # verify_by = "exact": first reject candidate pairs whose signature agreement (a 1-byte
    # sketch of 128 values per row) is far below the threshold; a pair exactly at the
    # threshold is lost with probability <= 1e-4 (at threshold + 0.05: <= 2e-7). Keeps
    # verification cheap when many rows share a part of their text.
    prefilter: bool = True
    # verify_by = "exact" from keys (the streaming runner): the most shingles (~50 B each at
    # a batch's peak: ~0.2 GB at the default) one pass over the parts fetches for the
    # candidate pairs' rows; more pairs take more passes. Results do not depend on it.
    verify_shingles: int = 4_000_000
    max_bucket: int = 64  # a bucket larger than this links its members to its first one only
    chunk_size: int = 50_000  # rows per chunk while computing signatures
    # --- semantic ---
    model: str | None = None  # local sentence-embedding model directory (transformers)
    cosine_threshold: float = 0.92
    batch_size: int = 64
    max_length: int = 256
    # --- which member of a cluster is kept ---
    keep: Literal["best", "first", "source_priority"] = "best"
    score_column: str | None = None  # keep="best": default the first of heuristic, fasttext, verifier, quality_*
    sources: list[str] = field(default_factory=list)  # keep="source_priority": most trusted first
    examples: int = 5  # clusters shown in the report

    def output_columns(self) -> list[str]:
        n = self.name or "dedup"
        return [f"{n}_cluster", f"{n}_cluster_size", f"{n}_cluster_agreement"]

    def column_refs(self) -> list[tuple[str, str]]:
        return [("score_column", self.score_column)] if self.score_column and self.keep != "first" else []

    def validate(self) -> None:
        bad = [s for s in (self.normalize or []) if s not in mh.NORMALIZE_STEPS]
        if bad:
            raise ConfigError("normalize", f"unknown step(s) {bad}; known: {', '.join(mh.NORMALIZE_STEPS)}")
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError("threshold", f"must be in (0, 1], got {self.threshold}")
        if self.num_perm < 2:
            raise ConfigError("num_perm", f"must be at least 2, got {self.num_perm}")
        if self.ngram < 1:
            raise ConfigError("ngram", f"must be at least 1, got {self.ngram}")
        if (self.bands is None) != (self.rows is None):
            raise ConfigError("bands" if self.bands is None else "rows", "give both `bands` and `rows`, or neither")
        if self.bands is not None:
            if self.bands < 1 or self.rows < 1:
                raise ConfigError("bands", "bands and rows must be positive")
            if self.bands * self.rows > self.num_perm:
                raise ConfigError("bands", f"bands * rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        if self.max_bucket < 2:
            raise ConfigError("max_bucket", "must be at least 2")
        if self.chunk_size < 1:
            raise ConfigError("chunk_size", "must be positive")
        if self.verify_shingles < 1:
            raise ConfigError("verify_shingles", "must be positive")
        if self.keep == "source_priority" and not self.sources:
            raise ConfigError("sources", 'keep = "source_priority" needs the ordered list of `sources`')
        if self.sources and self.keep != "source_priority":
            raise ConfigError("sources", 'only used with keep = "source_priority"')
        if self.method == "semantic":
            if not self.model:
                raise ConfigError("model", 'method = "semantic" needs a local sentence-embedding model directory')
            if not -1.0 <= self.cosine_threshold <= 1.0:
                raise ConfigError("cosine_threshold", f"must be in [-1, 1], got {self.cosine_threshold}")
        elif self.model is not None:
            raise ConfigError("model", 'only used with method = "semantic"')
        if self.examples < 0:
            raise ConfigError("examples", "must be >= 0")

    def check_paths(self, base_dir) -> None:
        if self.method == "semantic" and self.model:
            p = Path(self.model).expanduser()
            p = p if p.is_absolute() else Path(base_dir) / p
            if not p.is_dir():
                raise ConfigError("model", f"no model directory at {p}")

    def normalize_steps(self) -> list[str]:
        if self.normalize is not None:
            return list(self.normalize)
        return list(mh.NORMALIZE_STEPS if self.method == "exact" else mh.DEFAULT_NORMALIZE)

    def lsh(self) -> tuple[int, int]:
        if self.bands is not None:
            return self.bands, self.rows
        return mh.lsh_params(self.threshold, self.num_perm)


class DedupStage(PlannedStage):
    """Exact dedup is a PlannedStage: per block, the hash of each row's normalised text
    and its keep-rule keys; on the driver, the keep rule over the rows whose hash occurs
    more than once (`plan`: hash -> kept row, kept id, cluster size); per block, a join
    on the hash marks the dropped rows. MinHash and semantic dedup cluster the whole
    table (`roots`), then share the keep rule and output with exact (`from_clusters`)."""

    kind = "dedup"
    Config = Config
    ROW = ROW
    keys_per_row = True

    def plannable(self) -> bool:
        """Every method. MinHash with verify_by = "exact" (the default) needs the
        shingle sets of the candidate pairs' rows, which keys do not carry: its plan asks
        for them in passes over the parts (`needs_refine`, `refine_keys`, `finish_plan`),
        so only a runner that makes those passes plans it. Semantic dedup: the keys carry
        each row's embedding (curate/stages/dedup/semantic.py)."""
        return self.config.method in ("exact", "minhash", "semantic")

    def needs_refine(self) -> bool:
        cfg = self.config
        return cfg.method == "minhash" and cfg.verify and cfg.verify_by == "exact"

    # ---- text ----------------------------------------------------------------------
    def _normalized(self, frame: pl.DataFrame) -> pl.Series:
        """The normalised text view of `frame`'s rows. The view is materialised first so
        that the normalisation's branches do not each recompute it."""
        view = frame.select(text_view(self.config.view).alias("t"))
        return view.select(mh.normalized(pl.col("t"), self.config.normalize_steps())).to_series()

    def normalized_chunks(self, table: pl.DataFrame, norm: pl.Series | None = None):
        """(first row, normalised texts) per chunk of `chunk_size` rows; `norm`, when
        given, is the whole table's normalised view already computed (`keys` computes it
        once for the hash, the keep rule's length and the signatures), and is sliced."""
        for lo in range(0, table.height, self.config.chunk_size):
            yield lo, (self._normalized(table.slice(lo, self.config.chunk_size)) if norm is None
                       else norm.slice(lo, self.config.chunk_size))

    def minhash_seed(self) -> int:
        return self.config.seed if self.config.seed is not None else int(self.context.seed)

    # ---- clustering: each returns (root per row, pair stats) -----------------------------
    def _minhash_roots(self, table: pl.DataFrame) -> tuple[np.ndarray, dict]:
        band, has, sig = self.minhash_block(table)
        left, right = self.candidate_pairs(band, has)
        return self.minhash_clusters(table, band, has, sig, left, right)

    # MinHash's steps, public so that a distributed executor runs the same code
    # (curate/pipeline/ray_dedup.py): minhash_block per block on workers, candidate_pairs' rule per
    # shuffled bucket partition, minhash_clusters on the driver.
    def minhash_block(self, table: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Per row of `table`: band hashes (n x bands uint64), whether its text has any
        shingle, and its signature (n x num_perm uint32) when verify_by = "estimate"
        needs it, or its 1-byte sketch (`mh.sketch`, n x min(num_perm, 128) uint8) for the
        pre-verification of verify_by = "exact", else None. Row-local: blocks give the
        rows of the whole table's arrays."""
        return self._minhash_arrays(table)[:3]

    def _minhash_arrays(self, table: pl.DataFrame, norm: pl.Series | None = None):
        """`minhash_block`'s three arrays plus each row's shingle count (uint32); `norm`:
        the table's normalised view when already computed (`normalized_chunks`)."""
        cfg = self.config
        n = table.height
        bands, rows = cfg.lsh()
        a, b = mh.permutations(cfg.num_perm, self.minhash_seed())
        keep_sig = cfg.verify and cfg.verify_by == "estimate"
        keep_sketch = cfg.verify and cfg.verify_by == "exact" and cfg.prefilter
        sig = (np.empty((n, cfg.num_perm), dtype=np.uint32) if keep_sig
               else np.empty((n, min(cfg.num_perm, mh.SKETCH_VALUES)), dtype=np.uint8) if keep_sketch else None)
        band = np.empty((n, bands), dtype=np.uint64)
        has = np.empty(n, dtype=bool)
        nsh = np.empty(n, dtype=np.uint32)
        for lo, texts in self.normalized_chunks(table, norm):
            # (num_perm, rows) layout: band keys and sketch read it without a transpose
            s, counts = mh.signatures_t(texts, cfg.num_perm, self.minhash_seed(), cfg.ngram, cfg.ngram_unit, (a, b))
            hi = lo + len(texts)
            band[lo:hi] = mh.band_hashes_by_perm(s, bands, rows).T
            has[lo:hi] = counts > 0
            nsh[lo:hi] = np.minimum(counts, np.iinfo(np.uint32).max)
            if keep_sig:
                sig[lo:hi] = s.T
            elif keep_sketch:
                sig[lo:hi] = mh.sketch_by_perm(s)
        return band, has, sig, nsh

    def minhash_clusters(self, table: pl.DataFrame, band: np.ndarray, has: np.ndarray, sig: np.ndarray | None,
                         left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, dict]:
        """Candidate pairs -> verified pairs (exact shingle Jaccard or the signature
        estimate) -> the cluster root of every row, and the pair statistics.

        With verify_by = "exact", `sig` may be the rows' 1-byte sketch (`minhash_block`):
        candidates whose sketch agreement is below `mh.agreement_floor` are rejected
        before the exact Jaccard (vectorised byte compares, about 1/100 of an exact
        check's cost). Banding makes candidates of every pair that shares one band, and
        when many rows share a part of their text (a common answer, a template) those
        pairs grow with the square of the rows while few of them verify; the
        pre-verification keeps the exact step's work proportional to the pairs near the
        threshold. The trade-off: a pair at the threshold is rejected with probability
        <= PREFILTER_MISS = 1e-4 (a binomial tail; at threshold + 0.05 <= 2e-7 for 128
        values), so results equal exact verification of every candidate except with that
        probability per true pair (and a row stays in its cluster through any other
        verified edge). A miss of 1e-6 kept 1.75x more pairs (J = 0.5-0.6 at a threshold
        of 0.7, scale benchmark, 250k records) for the exact step. Survivors then meet an
        exact upper bound of their Jaccard (`_exact_jaccard` with a threshold) before the
        join. `sig` None (a caller that ships no sketch): every candidate goes to the exact
        step."""
        cfg = self.config
        bands, rows = cfg.lsh()
        stats = {"bands": bands, "rows": rows, "candidate_pairs": int(len(left)), "empty_texts": int((~has).sum())}
        if cfg.verify and len(left):
            if cfg.verify_by == "estimate":
                sim = _estimated_jaccard(sig, left, right)
            else:
                left, right = self._prefiltered(sig, left, right, stats)
                sim = self._exact_jaccard(table, left, right, cfg.threshold) if len(left) else np.zeros(0)
            ok = sim >= cfg.threshold
            left, right = left[ok], right[ok]
        stats["verified_pairs"] = int(len(left))
        return components(table.height, left, right), stats

    def _prefiltered(self, sig: np.ndarray | None, left: np.ndarray, right: np.ndarray,
                     stats: dict) -> tuple[np.ndarray, np.ndarray]:
        """The candidate pairs that pass the sketch pre-check (all of them without a
        1-byte sketch); records `pairs_after_prefilter` in `stats`."""
        if sig is not None and sig.dtype == np.uint8:
            floor = mh.agreement_floor(sig.shape[1], self.config.threshold, miss=PREFILTER_MISS)
            near = mh.sketch_agreement(sig, left, right) >= floor
            left, right = left[near], right[near]
            stats["pairs_after_prefilter"] = int(len(left))
        return left, right

    def candidate_pairs(self, band: np.ndarray, has: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Candidate pairs from band buckets: every pair of a bucket of up to
        `max_bucket` distinct rows, a star from the first (smallest) row to the others
        above that. A band's hash is seeded with the band's index, so one u64 column is
        the bucket key: rows in singleton buckets are filtered out first by polars (most
        of them), the rest sorted by (key, row); the pairs of every bucket are then laid
        out by index arithmetic in numpy (no self-join), each pair packed in one u64
        (left << 32 | right) so that pairs found by several bands are merged by one
        unique. Returns (left, right) sorted, left < right."""
        return bucket_pairs(band, has, self.config.max_bucket)

    def _exact_jaccard(self, table: pl.DataFrame, left: np.ndarray, right: np.ndarray,
                       threshold: float | None = None) -> np.ndarray:
        """Exact Jaccard of the shingle sets of each candidate pair. Shingles are rebuilt
        only for rows in some candidate pair (memory follows the candidates, not the
        input); intersections are counted by a binary search of each pair's keys in the sorted
        (row, shingle) array.

        With `threshold`, a pair is first checked against an upper bound of its Jaccard
        that costs 256 byte compares instead of a join: each row's shingles are counted
        in 256 hash buckets, and |A & B| <= sum over buckets of min(count_A, count_B), so
        J <= bound / (|A| + |B| - bound). A pair whose bound is below the threshold cannot
        verify and is not joined (its value returned is that bound, below the threshold);
        the others get their exact Jaccard. The bound never rejects a true pair, so the
        verified pairs are exactly those of the full check; it is tight for pairs that
        share about half their shingles (the pairs that many rows sharing one part of
        their text make by the million), loose only for very short texts. Rows with 255+
        shingles in one bucket (texts of ~60,000+ words) skip the bound."""
        cfg = self.config
        involved = sorted_unique(np.concatenate([left, right]))
        shs, cnts = [], []
        for lo in range(0, len(involved), cfg.chunk_size):
            sh, counts = self._shingles(self._normalized(table[pl.Series(involved[lo:lo + cfg.chunk_size])]))
            shs.append(sh)
            cnts.append(counts)
        return _pair_jaccard(np.concatenate(shs), np.concatenate(cnts), np.searchsorted(involved, left),
                             np.searchsorted(involved, right), threshold)

    def _shingles(self, texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
        """Shingle hashes (uint32, row after row) and shingles per row of normalised texts."""
        cfg = self.config
        lists = texts.to_frame("t").select(mh.tokens_expr(pl.col("t"), cfg.ngram_unit)).to_series()
        return mh.shingle_hashes(*mh.token_hashes(lists), cfg.ngram)

    # ---- keep rule -----------------------------------------------------------------------
    def _score_column(self, table: pl.DataFrame) -> str | None:
        cfg = self.config
        if cfg.score_column is not None:
            if cfg.score_column not in table.columns:
                raise ValueError(f"stage {self.name!r}: score_column {cfg.score_column!r} is not a column "
                                 f"(columns: {', '.join(table.columns)})")
            if not table.schema[cfg.score_column].is_numeric():
                raise ValueError(f"stage {self.name!r}: score_column {cfg.score_column!r} is not numeric")
            return cfg.score_column
        # The quality stage names its column after its scorer; these three rank higher = better
        # (perplexity and ifd do not, so they are only used when named in `score_column`).
        for c in table.columns:
            if (c.startswith("quality_") or c in HIGHER_IS_BETTER) and table.schema[c].is_numeric():
                return c
        return None

    def _keep_keys(self, table: pl.DataFrame, norm: pl.Series | None = None) -> pl.DataFrame:
        """Per row, the keep rule's sort keys after the cluster: source priority, score
        (higher first), normalised text length of the view (shorter first), the id
        (row-local: computed per block; the id is always there: it also names the
        cluster), and the hash of the normalised answer (for the agreement column).
        `norm`: the table's normalised view when the caller has it already."""
        cfg = self.config
        cols = []
        if cfg.keep == "source_priority":
            order = {s: i for i, s in enumerate(cfg.sources)}
            cols.append(pl.col("source").replace_strict(order, default=len(order), return_dtype=pl.Int64).alias(PRIO))
        if cfg.keep in ("best", "source_priority"):
            score = self._score_column(table)
            if score is not None:
                cols.append(pl.col(score).cast(pl.Float64).fill_nan(None).alias(SCORE))
            cols.append((self._normalized(table) if norm is None else norm).str.len_chars().alias(LEN) if table.height
                        else pl.lit(None, pl.UInt32).alias(LEN))
        cols.append(pl.col("id"))
        cols.append(self._answer_hash(table).alias(ANS) if table.height else pl.lit(None, pl.UInt64).alias(ANS))
        return table.select(cols)

    def _answer_hash(self, table: pl.DataFrame) -> pl.Series:
        view = table.select(text_view("response").alias("t"))
        return view.select(mh.normalized(pl.col("t"), self.config.normalize_steps())).to_series().hash(seed=0)

    def _rank_keepers(self, clusters: pl.DataFrame) -> pl.DataFrame:
        """The keep rule: within each `root` group, the first row by the keep keys, then
        `_IDX` (the row's position). `clusters` has root, _IDX and `_keep_keys`'
        columns; returns root -> keeper (that row's _IDX)."""
        keys, desc = ["root"], [False]
        order = [(PRIO, False), (SCORE, True), (LEN, False), ("id", False)] if self.config.keep != "first" else []
        for c, d in order:
            if c in clusters.columns:
                keys.append(c)
                desc.append(d)
        keys.append(_IDX)
        desc.append(False)
        ranked = clusters.sort(keys, descending=desc, nulls_last=True)
        return ranked.unique(subset="root", keep="first", maintain_order=True).select("root", pl.col(_IDX).alias("keeper"))

    def _keepers(self, table: pl.DataFrame, roots: np.ndarray) -> tuple[np.ndarray, str | None]:
        """Index of the kept row of each row's cluster."""
        score = self._score_column(table) if self.config.keep != "first" else None
        clusters = pl.DataFrame([pl.Series("root", roots), pl.Series(_IDX, np.arange(table.height, dtype=np.int64))])
        clusters = clusters.hstack(self._keep_keys(table))
        first = self._rank_keepers(clusters)
        keeper = pl.DataFrame({"root": roots}).join(first, on="root", how="left", maintain_order="left")["keeper"]
        return keeper.to_numpy().astype(np.int64), score

    # ---- stage -----------------------------------------------------------------------------
    def process(self, table: pl.DataFrame) -> StageResult:
        cfg = self.config
        n = table.height
        if self.plannable():
            return self.process_planned(table)
        if cfg.method == "minhash":
            roots, pair_stats = self._minhash_roots(table) if n else (np.zeros(0, np.int64), {})
        else:
            roots, pair_stats = semantic.whole_table_roots(self, table)
        return self.from_clusters(table, roots, pair_stats)

    def from_clusters(self, table: pl.DataFrame, roots: np.ndarray, pair_stats: dict) -> StageResult:
        """The keep rule, the `duplicate_of` marks, the cluster columns and the stats,
        given each row's cluster root (found locally, or on a cluster: curate/pipeline/ray_dedup.py)."""
        n = table.height
        keeper, score = self._keepers(table, roots) if n else (np.zeros(0, np.int64), None)
        return self._result(table, keeper, score, pair_stats)

    def _result(self, table: pl.DataFrame, keeper: np.ndarray, score: str | None, pair_stats: dict) -> StageResult:
        n = table.height
        ids = table["id"]
        size = pl.DataFrame({"k": keeper}).select(pl.len().over("k")).to_series().cast(pl.UInt32)
        if n:
            ans = self._answer_hash(table)
            agree = (pl.DataFrame({"k": keeper, "same": ans == ans.gather(keeper)})
                     .select(pl.col("same").cast(pl.Float64).mean().over("k")).to_series())
        out = table.with_columns(
            ids.gather(keeper).alias(f"{self.name}_cluster") if n else pl.lit(None, pl.String).alias(f"{self.name}_cluster"),
            size.alias(f"{self.name}_cluster_size") if n else pl.lit(None, pl.UInt32).alias(f"{self.name}_cluster_size"),
            agree.alias(f"{self.name}_cluster_agreement") if n
            else pl.lit(None, pl.Float64).alias(f"{self.name}_cluster_agreement"),
        )
        is_kept = pl.Series(keeper == np.arange(n))
        kept = out.filter(is_kept)
        dropped = out.filter(~is_kept).with_columns(
            pl.lit(REASON_DUPLICATE).alias(REASON), pl.col(f"{self.name}_cluster").alias(DETAIL)
        )
        stats = self._stats(out, keeper, is_kept, score, pair_stats)
        return StageResult(kept=kept, dropped=dropped, stats=stats)

    # ---- keys -> plan -> apply (PlannedStage) ------------------------------------------------
    def keys(self, part: pl.DataFrame) -> pl.DataFrame:
        """Per row, no text: the hash of the normalised view (exact's cluster key; for
        MinHash it tells exact copies from near ones in the stats), the keep-rule keys
        (`_keep_keys`; the score column's name rides in the column name
        `__dedup_score:<name>`), the source (for the report's examples) and, for MinHash,
        the band keys (bands x u64), whether the text has a shingle and, with
        verify_by = "estimate", the signature (num_perm x u32); with verify_by = "exact"
        the 1-byte sketch (`mh.sketch`, when `prefilter`) and the shingle count (u32, to
        size the verification's passes over the parts); for semantic, the embedding
        (`semantic.embedding_column`)."""
        cfg = self.config
        n = part.height
        norm = pl.concat([t for _, t in self.normalized_chunks(part)]) if n else pl.Series([], dtype=pl.String)
        cols = [norm.hash(seed=0).alias(HASH)]
        kk = self._keep_keys(part, norm)
        if SCORE in kk.columns:
            kk = kk.rename({SCORE: f"{SCORE}:{self._score_column(part)}"})
        out = pl.DataFrame(cols).hstack(kk)
        if cfg.examples:
            out = out.with_columns(part["source"].alias(SRC))
        if cfg.method == "minhash":
            band, has, sig, nsh = self._minhash_arrays(part, norm)
            bands = band.shape[1]
            out = out.with_columns(pl.Series(BANDS, band, dtype=pl.Array(pl.UInt64, bands)),
                                   pl.Series(HAS, has, dtype=pl.Boolean))
            if sig is not None:
                dt = pl.UInt8 if sig.dtype == np.uint8 else pl.UInt32
                out = out.with_columns(pl.Series(SIG, sig, dtype=pl.Array(dt, sig.shape[1])))
            if self.needs_refine():
                out = out.with_columns(pl.Series(NSH, nsh, dtype=pl.UInt32))
        elif cfg.method == "semantic":
            out = out.with_columns(semantic.embedding_column(self, part))
        return out

    def plan(self, keys: pl.DataFrame) -> Plan:
        """Each row's cluster root (exact: its hash; MinHash: union-find over the verified
        candidate pairs, by the same `candidate_pairs` and `minhash_clusters` as
        `process`), the keep rule (`_rank_keepers`, tie-break = global row), then the
        decisions for the rows of clusters of 2+ (a unique row is its own cluster of size
        1 with agreement 1.0: absent from `decisions`) and the stats."""
        cfg = self.config
        if getattr(self, "_spill", None) is not None:
            return self._plan_spilled()
        keys = keys.rechunk()  # one chunk: nothing may depend on how the rows were parted
        n = keys.height
        score_col = next((c for c in keys.columns if c.startswith(SCORE + ":")), None)
        score = score_col.split(":", 1)[1] if score_col is not None else None
        if score_col is not None:
            keys = keys.rename({score_col: SCORE})
        pair_stats: dict = {}
        if cfg.method == "exact":
            roots = keys[HASH].rank("dense").cast(pl.Int64).to_numpy() if n else np.zeros(0, np.int64)
        elif cfg.method == "semantic":
            roots, pair_stats = semantic.roots_from_keys(keys, cfg.cosine_threshold)
            keys = keys.drop(semantic.EMB)  # done with the vectors: free them before the keep rule
        elif n:
            band = keys[BANDS].to_numpy() if n else None
            has = keys[HAS].to_numpy()
            sig = keys[SIG].to_numpy() if SIG in keys.columns else None
            left, right = self.candidate_pairs(np.ascontiguousarray(band, dtype=np.uint64), has)
            if self.needs_refine():
                del band
                return self._verify_batch(self._start_verify(keys, sig, has, left, right, score))
            roots, pair_stats = self.minhash_clusters(keys, band, has, sig, left, right)
        else:
            roots = np.zeros(0, np.int64)
        return self._plan_from_roots(keys, roots, pair_stats, score)

    # ---- spilled keys (curate/stages/dedup/spill.py) -----------------------------------------
    def spill_keys(self, keys: pl.DataFrame, folder: Path) -> pl.DataFrame:
        """An optional hook of the streaming runner (`LocalExecutor._planned`): one part's
        `keys` (with `_row`, parts in order) written under `folder` (in the run directory)
        instead of held; returns what the runner should keep of them (no rows: `plan`
        then reads the spilled keys back, step by step, and ignores the keys it is
        given). The first call of a run starts a fresh spill in `folder`. A runner that
        never calls it (Ray, `process`) plans from the keys in memory, to the same plan."""
        from curate.stages.dedup.spill import KeySpill

        if self.config.method == "semantic":  # its plan needs every embedding at once (semantic.py)
            return keys
        sp = getattr(self, "_spill", None)
        first = int(keys[ROW_COL][0]) if keys.height else (sp.rows if sp is not None else 0)
        if sp is None or sp.folder != Path(folder) or (keys.height and first == 0):
            sp = self._spill = KeySpill(folder)
        band = has = sig = None
        if self.config.method == "exact":  # the hash filed by its top byte too: duplicates found slice by slice
            band = keys[HASH].to_numpy().astype(np.uint64).reshape(-1, 1) if keys.height else np.zeros((0, 1), np.uint64)
        if self.config.method == "minhash":
            band = keys[BANDS].to_numpy() if keys.height else np.zeros((0, self.config.lsh()[0]), np.uint64)
            band = np.ascontiguousarray(band, dtype=np.uint64)
            has = keys[HAS].to_numpy()
            if SIG in keys.columns:
                sig = keys[SIG].to_numpy() if keys.height else None
                if sig is None:
                    dt = np.uint8 if keys.schema[SIG].inner == pl.UInt8 else np.uint32
                    sig = np.zeros((0, keys.schema[SIG].size), dt)
        sp.add(first, keys.drop([c for c in (BANDS, SIG) if c in keys.columns]), band, has, sig)
        return keys.select(ROW_COL).clear()

    def _plan_spilled(self) -> Plan | Refine:
        """`plan` from spilled keys: the same candidate pairs, pre-check, verification and
        keep rule as from keys in memory, holding what spill.py's module doc lists."""
        cfg = self.config
        sp = self._spill
        n = sp.rows
        names = sp.schema()
        score_col = next((c for c in names if c.startswith(SCORE + ":")), None)
        score = score_col.split(":", 1)[1] if score_col is not None else None
        if n == 0:
            return self._plan_subset(np.zeros(0, np.int64), np.zeros(0, np.int64), {}, score, n)
        if cfg.method == "exact":
            # the rows whose hash repeats, a run of hash slices at a time (no column of every
            # row's hash, no hash table over all rows); a cluster's root is its first row
            found = [_duplicated_rows(k, r) for k, r in sp.band_slices(SPILL_BUCKET_ENTRIES)]
            rows = np.concatenate([a for a, _ in found]) if found else np.zeros(0, np.int64)
            roots = np.concatenate([b for _, b in found]) if found else np.zeros(0, np.int64)
            order = np.argsort(rows, kind="stable")
            return self._plan_subset(rows[order], roots[order], {}, score, n)
        has = sp.column(HAS).to_numpy()
        bands, brows = cfg.lsh()
        stats = {"bands": bands, "rows": brows, "empty_texts": int((~has).sum())}
        del has
        codes = (c for c in (_bucket_codes(k, r, cfg.max_bucket) for k, r in sp.band_slices(SPILL_BUCKET_ENTRIES))
                 if c is not None)
        keep, exact = None, cfg.verify and cfg.verify_by == "exact"
        floor = None
        if cfg.verify and sp.has_sig():
            if cfg.verify_by == "estimate":
                keep = lambda l, r: sp.pair_values(l, r, _estimated_jaccard, SPILL_WINDOW_BYTES) >= cfg.threshold  # noqa: E731
            elif cfg.prefilter:
                w = mh.SKETCH_VALUES if cfg.num_perm >= mh.SKETCH_VALUES else cfg.num_perm
                floor = mh.agreement_floor(w, cfg.threshold, miss=PREFILTER_MISS)
                keep = lambda l, r: sp.pair_values(  # noqa: E731
                    l, r, lambda s, a, b: mh.sketch_agreement(s, a, b, step=1 << 17), SPILL_WINDOW_BYTES) >= floor
        pairs, total = sp.pair_runs(codes, SPILL_PAIR_ROWS, keep, SPILL_PAIRS)
        stats = {"bands": bands, "rows": brows, "candidate_pairs": total, "empty_texts": stats["empty_texts"]}
        if exact:
            if floor is not None and total:
                stats["pairs_after_prefilter"] = len(pairs)
            nsh = sp.column(NSH).to_numpy()
            # pairs stay on disk (`spill.PairSeq`): a batch is read when it is verified, and
            # only the verified pairs are kept. ONE pass over the parts files the shingles of
            # every row in some pair under the spill folder (`refine_keys` with a STORE_ASK);
            # `finish_plan` then verifies the batches from those files (`spill.ShingleStore`)
            st = {"spill": True, "nsh": nsh, "n": n, "score": score, "stats": stats,
                  "pairs": pairs, "pos": 0, "end": 0, "ok": []}
            rows = _rows_in_pairs(pairs, n)
            if not len(rows):
                return self._verify_batch(st)
            folder = sp.folder / SHINGLE_DIR
            st["stored"] = str(folder)
            return Refine(rows=rows, ask=STORE_ASK + str(folder), state=st)
        left, right = pairs.slice(0, len(pairs))
        stats["verified_pairs"] = int(len(left))
        return self._plan_pairs(left, right, stats, score, n)

    def _plan_pairs(self, left: np.ndarray, right: np.ndarray, stats: dict, score: str | None, n: int) -> Plan:
        """Spilled keys: the clusters of the verified pairs by union-find over the rows in
        some pair only (the root of a component is its smallest row, as over all rows),
        then the keep rule over those rows."""
        rows = sorted_unique(np.concatenate([left, right])).astype(np.int64)
        comp = components(len(rows), np.searchsorted(rows, left), np.searchsorted(rows, right))
        return self._plan_subset(rows, rows[comp], stats, score, n)

    def _plan_subset(self, rows: np.ndarray, roots: np.ndarray, stats: dict, score: str | None, n: int) -> Plan:
        """The plan from the spilled keys of the rows of clusters of 2+ (`rows`, sorted)."""
        sp = self._spill
        names = sp.schema()
        want = [c for c in names if c in (PRIO, LEN, "id", ANS, HASH, SRC) or c.startswith(SCORE + ":")]
        keys = sp.rows_of(want, rows) if names else pl.DataFrame()
        sc = next((c for c in keys.columns if c.startswith(SCORE + ":")), None)
        if sc is not None:
            keys = keys.rename({sc: SCORE})
        if not keys.columns:
            keys = pl.DataFrame(schema={HASH: pl.UInt64, "id": pl.String, ANS: pl.UInt64,
                                        **({SRC: pl.String} if self.config.examples else {})})
        self._spill = None  # the next run of keys starts a fresh spill
        return self._plan_from_roots(keys, roots, stats, score, rows=rows, rows_in=n)

    # ---- exact verification from keys: passes over the parts (Refine) ----------------------
    def _start_verify(self, keys: pl.DataFrame, sig, has: np.ndarray, left: np.ndarray, right: np.ndarray,
                      score: str | None) -> dict:
        """The state of exact verification from keys: `minhash_clusters`' statistics and
        sketch pre-check, then the surviving pairs to verify in batches."""
        bands, rows = self.config.lsh()
        stats = {"bands": bands, "rows": rows, "candidate_pairs": int(len(left)), "empty_texts": int((~has).sum())}
        if len(left):
            left, right = self._prefiltered(sig, left, right, stats)
        keys = keys.drop([c for c in (BANDS, SIG, HAS) if c in keys.columns])  # done with: free them
        return {"keys": keys, "score": score, "stats": stats, "left": left, "right": right, "pos": 0, "end": 0,
                "ok": []}

    def _verify_batch(self, st: dict) -> Plan | Refine:
        """The next batch of pairs, from `pos`: consecutive pairs (in blocks of up to
        65,536, fewer for a small budget) while the shingles of their rows not already in
        the batch stay within `verify_shingles` (at least one block); a Refine for those
        rows. Keys in memory (`process`, `run_planned`, Ray without a spill): a pass over
        the parts per batch. Trade-off: pairs come sorted by row, not by cluster, so a row
        paired in several batches is fetched (and shingled) once per batch, which is why
        spilled keys take one pass instead (`_verify_stored`). No pairs left: the clusters
        of the verified pairs and the plan."""
        rows = self._batch_rows(st)
        if rows is None:
            return self._verified_plan(st)
        return Refine(rows=rows, ask="shingles", state=st)

    def _verified_plan(self, st: dict) -> Plan:
        """The clusters of the verified pairs (every batch done) and the plan."""
        if st.get("spill"):  # `ok` holds the verified pairs themselves
            l = np.concatenate([x for x, _ in st["ok"]]) if st["ok"] else np.zeros(0, np.int64)
            r = np.concatenate([y for _, y in st["ok"]]) if st["ok"] else np.zeros(0, np.int64)
            st["stats"]["verified_pairs"] = int(len(l))
            return self._plan_pairs(l, r, st["stats"], st["score"], st["n"])
        ok = np.concatenate(st["ok"]) if st["ok"] else np.zeros(0, dtype=bool)
        l, r = st["left"][ok], st["right"][ok]
        st["stats"]["verified_pairs"] = int(len(l))
        keys = st["keys"]
        roots = components(keys.height, l, r)
        return self._plan_from_roots(keys, roots, st["stats"], st["score"])

    def _batch_rows(self, st: dict) -> np.ndarray | None:
        """The rows (sorted, distinct) of the next batch of pairs from `pos` (sets `end`; see
        `_verify_batch`), or None when every pair is verified."""
        pos, count = st["pos"], _pair_count(st)
        if pos >= count:
            return None
        nsh = st["nsh"] if st.get("spill") else st["keys"][NSH].to_numpy()
        mark = np.zeros(len(nsh), dtype=bool)
        budget, total, end = int(self.config.verify_shingles), 0, pos
        block = int(min(65_536, max(1, budget // 64)))  # 2 x block rows of ~32 shingles fit the budget
        while end < count:
            rows = sorted_unique(np.concatenate(_pairs_at(st, end, end + block)))
            new = rows[~mark[rows]]
            add = int(nsh[new].sum(dtype=np.int64))
            if end > pos and total + add > budget:
                break
            mark[new] = True
            total += add
            end = min(count, end + block)
        st["end"] = end
        return np.flatnonzero(mark).astype(np.int64)

    def refine_keys(self, part: pl.DataFrame, rows: np.ndarray, first_row: int, ask: str = "") -> pl.DataFrame:
        """The shingle hashes (list<u32>, as `minhash.shingle_hashes` gives them) of the
        asked rows of `part` (global positions `rows`), for exact verification. With
        `ask` = STORE_ASK + a folder (spilled keys: the folder is in the run directory, so
        a worker's fresh copy of the stage answers it too) they are written there instead
        (`spill.write_shingles`, one file triple per part) and only each row's shingle
        count comes back."""
        step = max(1, min(self.config.chunk_size, REFINE_ROWS))
        local = np.asarray(rows, dtype=np.int64) - int(first_row)
        shs, cnts = [], []
        for lo in range(0, len(local), step):
            sh, counts = self._shingles(self._normalized(part[pl.Series(local[lo:lo + step])]))
            shs.append(sh)
            cnts.append(counts)
        sh = np.concatenate(shs) if shs else np.zeros(0, np.uint32)
        counts = np.concatenate(cnts) if cnts else np.zeros(0, np.int64)
        if ask.startswith(STORE_ASK):  # spilled keys: filed under the spill folder, a count per row returned
            write_shingles(Path(ask[len(STORE_ASK):]), first_row, np.asarray(rows, dtype=np.int64), sh, counts)
            return pl.DataFrame({NSH: pl.Series(NSH, counts, dtype=pl.UInt32)})
        import pyarrow as pa

        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        arr = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(sh.astype(np.uint32), type=pa.uint32()))
        return pl.DataFrame({SHINGLES: pl.Series(arr)})

    def finish_plan(self, refine: Refine, extra: pl.DataFrame | None) -> Plan | Refine:
        """The batch's pairs verified on the fetched shingle sets (`_pair_jaccard`, with the
        same upper-bound shortcut as `_exact_jaccard`), then the next batch or the plan."""
        st = refine.state
        if st.get("store") is not None:  # the empty Refine `_open_store` returned: verify now
            return self._verify_stored(st)
        rows = np.asarray(refine.rows, dtype=np.int64)
        if extra is None or extra.height != len(rows):
            raise RuntimeError(f"stage {self.name!r}: verification asked for {len(rows)} rows' shingles, "
                               f"got {0 if extra is None else extra.height}")
        if st.get("stored"):
            return self._open_store(st, rows, extra)
        lists = extra[SHINGLES]
        counts = lists.list.len().to_numpy().astype(np.int64)
        # the list's values as they lie (4 B a shingle, one copy), not explode + drop_nulls + astype
        arr = lists.to_arrow()
        arr = arr.combine_chunks() if hasattr(arr, "combine_chunks") else arr
        sh = (np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.uint32) if int(counts.sum())
              else np.zeros(0, np.uint32))
        del arr, lists
        if len(sh) != int(counts.sum()):
            raise RuntimeError(f"stage {self.name!r}: shingle lists do not add up")
        l, r = _pairs_at(st, st["pos"], st["end"])
        sim = _pair_jaccard(sh, counts, np.searchsorted(rows, l), np.searchsorted(rows, r), self.config.threshold)
        ok = sim >= self.config.threshold
        st["ok"].append((l[ok], r[ok]) if st.get("spill") else ok)
        st["pos"] = st["end"]
        return self._verify_batch(st)

    def _open_store(self, st: dict, rows: np.ndarray, extra: pl.DataFrame) -> Refine:
        """After the one pass: the filed shingles checked against the asked rows and their
        counts (`spill.ShingleStore`, which keeps the rows as u32), then an empty Refine (no
        part is read for it) so that the runner lets go of this pass's rows and frame (20 B
        a paired row: ~60 MB at 4M records) before the batches are verified."""
        st["store"] = ShingleStore(Path(st["stored"]), rows, extra[NSH].to_numpy())
        return Refine(rows=np.zeros(0, dtype=np.int64), ask="", state=st)

    def _verify_stored(self, st: dict) -> Plan:
        """Spilled keys, after the one pass that filed every paired row's shingles
        (`refine_keys` with STORE_ASK, `spill.write_shingles`): the pairs verified in the
        same batches as `_verify_batch` makes (pairs and shingles within `verify_shingles`),
        each batch's rows' shingles read from the files (`spill.ShingleStore`), with the
        same `_pair_jaccard` and threshold: the same verified pairs and plan as a pass per
        batch gave.

        Trade-off: the paired rows' shingles are written once to disk (4 B a shingle plus
        16 B a row; ~0.5 GB at 4M records of the scale benchmark) and a row paired in
        several batches is read again from the page cache instead of re-read from its part
        and re-shingled: part reads are the parts once, not once per batch, so the time is
        linear in the input where the passes were not (issue #19, the h1k round)."""
        store = st.pop("store")
        thr = self.config.threshold
        while True:
            batch = self._batch_rows(st)
            if batch is None:
                break
            sh, counts = store.take(batch)
            l, r = _pairs_at(st, st["pos"], st["end"])
            sim = _pair_jaccard(sh, counts, np.searchsorted(batch, l), np.searchsorted(batch, r), thr)
            del sh, counts
            ok = sim >= thr
            st["ok"].append((l[ok], r[ok]))
            st["pos"] = st["end"]
        store.remove()
        return self._verified_plan(st)

    def _plan_from_roots(self, keys: pl.DataFrame, roots: np.ndarray, pair_stats: dict, score: str | None,
                         rows: np.ndarray | None = None, rows_in: int | None = None) -> Plan:
        """The keep rule over each row's cluster root, the decisions and the stats. `keys`
        are every row's (`rows` None), or only those of the global `rows` (sorted), which
        must then be every row of every cluster of 2+ (spilled keys), of `rows_in` rows."""
        n = keys.height
        rows = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        clusters = pl.DataFrame([pl.Series("root", roots, dtype=pl.Int64),
                                 pl.Series(_IDX, rows)]).hstack(
            keys.select([c for c in (PRIO, SCORE, LEN, "id") if c in keys.columns]))
        first = self._rank_keepers(clusters)
        keeper = (clusters.select("root").join(first, on="root", how="left", maintain_order="left")["keeper"]
                  .to_numpy().astype(np.int64))  # the kept row's global position
        at = np.searchsorted(rows, keeper)  # ... and its position in `keys`
        if self.config.keep == "first":
            score = None
        k = pl.DataFrame({"k": keeper}).with_columns(pl.len().over("k").cast(pl.UInt32).alias("__size"))
        ans = keys[ANS]
        t = keys.select(HASH, "id", *([SRC] if SRC in keys.columns else [])).with_columns(
            pl.Series("k", keeper), k["__size"],
            pl.Series(ROW_COL, rows, dtype=pl.UInt64),
            keys["id"].gather(at).alias("__cluster") if n else pl.lit(None, pl.String).alias("__cluster"),
            (ans == ans.gather(at)).cast(pl.Float64).alias("__same") if n else pl.lit(None, pl.Float64).alias("__same"),
        ).with_columns(pl.col("__same").mean().over("k").alias("__agree"))
        is_kept = pl.Series(keeper == rows)
        stats = self._plan_stats(t, keeper, is_kept, score, pair_stats, at, rows_in)
        multi = t.filter(pl.col("__size") > 1).with_columns(
            pl.when(pl.col("k") != pl.col(ROW_COL).cast(pl.Int64)).then(pl.lit(REASON_DUPLICATE))
            .otherwise(pl.lit(None, pl.String)).alias(REASON))
        decisions = multi.select(
            ROW_COL, REASON, pl.when(pl.col(REASON).is_not_null()).then(pl.col("__cluster")).alias(DETAIL),
            pl.col("__cluster").alias(f"{self.name}_cluster"), pl.col("__size").alias(f"{self.name}_cluster_size"),
            pl.col("__agree").alias(f"{self.name}_cluster_agreement"))
        ex = self._example_rows(stats)
        if ex:
            decisions = decisions.join(pl.DataFrame({ROW_COL: [r for r, _ in ex], EX: [e for _, e in ex]},
                                                    schema={ROW_COL: pl.UInt64, EX: pl.String}),
                                       on=ROW_COL, how="left", maintain_order="left")
        else:
            decisions = decisions.with_columns(pl.lit(None, pl.String).alias(EX))
        return Plan(decisions=decisions, stats=stats)

    def apply(self, part: pl.DataFrame, plan: Plan, first_row: int) -> StageResult:
        """A join on the row: each row's cluster columns (its own id, size 1 and agreement
        1.0 when the plan has no row for it), the duplicates out with `duplicate_of` and
        the kept id. The report's example members in this part get their short text in
        `plan.stats["examples"]` (the only text the stats carry; see `merge_part_stats`)."""
        j = decided_part(part, plan, first_row)
        name = self.name
        j = j.with_columns(
            pl.coalesce(pl.col(f"{name}_cluster"), pl.col("id")).alias(f"{name}_cluster"),
            pl.col(f"{name}_cluster_size").fill_null(1).cast(pl.UInt32),
            pl.col(f"{name}_cluster_agreement").fill_null(1.0).cast(pl.Float64))
        texts = self._fill_example_texts(j, plan.stats)
        cols = [*part.columns, f"{name}_cluster", f"{name}_cluster_size", f"{name}_cluster_agreement"]
        kept = j.filter(pl.col(REASON).is_null()).select(cols)
        dropped = j.filter(pl.col(REASON).is_not_null()).select(*cols, REASON, DETAIL)
        return StageResult(kept=kept, dropped=dropped, stats={EXAMPLE_TEXTS: texts} if texts else {})

    def merge_part_stats(self, plan: Plan, part_stats: list[dict]) -> None:
        """Put the example texts the parts' `apply` found (returned in their stats, e.g.
        from workers whose copy of the plan is not the driver's) into `plan.stats`."""
        for s in part_stats:
            for key, text in (s or {}).get(EXAMPLE_TEXTS, {}).items():
                i, j = (int(x) for x in key.split(":"))
                plan.stats["examples"][i]["members"][j]["text"] = text

    def _fill_example_texts(self, j: pl.DataFrame, stats: dict) -> dict:
        if EX not in j.columns:
            return {}
        ex = j.filter(pl.col(EX).is_not_null())
        if not ex.height:
            return {}
        texts = ex.select(text_view(self.config.view).alias("t"))["t"].to_list()
        found = {key: _short(t) for key, t in zip(ex[EX].to_list(), texts)}
        self.merge_part_stats(Plan(decisions=j.clear(), stats=stats), [{EXAMPLE_TEXTS: found}])
        return found

    def _example_rows(self, stats: dict) -> list[tuple[int, str]]:
        return [(m.pop("__row"), f"{i}:{jx}") for i, e in enumerate(stats.get("examples", []))
                for jx, m in enumerate(e["members"])]

    def _plan_stats(self, t: pl.DataFrame, keeper: np.ndarray, is_kept: pl.Series, score, pair_stats: dict,
                    at: np.ndarray | None = None, rows_in: int | None = None) -> dict:
        """`_stats` from keys: exact copies are told from near ones by the hash of the
        normalised view (a 64-bit hash: a collision would count a near copy as exact, with
        odds ~n / 2**64), the examples' members by id and source, their texts left to
        `apply` (None here)."""
        cfg = self.config
        out = t.select(pl.col("__agree").alias(f"{self.name}_cluster_agreement")) if t.height else pl.DataFrame()
        stats = self._stats(out if t.height else pl.DataFrame({f"{self.name}_cluster_agreement": []}),
                            keeper, is_kept, score, pair_stats, examples=False, rows_in=rows_in)
        at = keeper if at is None else at
        if t.height and stats["duplicates"]:
            drop_idx = np.nonzero(~is_kept.to_numpy())[0]
            h = t[HASH]
            exact = int((h.gather(drop_idx) == h.gather(at[drop_idx])).sum())
            stats.update({"dropped_exact": exact, "dropped_near": int(len(drop_idx) - exact)})
            stats["examples"] = self._examples_from_keys(t)
        else:
            stats["examples"] = []
        return stats

    def _examples_from_keys(self, t: pl.DataFrame) -> list[dict]:
        """`_examples`' choice (near clusters first, largest first, ties by kept id; kept
        member first, then by id; at most 5 members) from the keys; "text" None until
        `apply` fills it, "__row" the member's row (taken out by `plan`)."""
        cfg = self.config
        members = t.filter(pl.col("__size") > 1)
        if cfg.examples == 0 or members.height == 0:
            return []
        members = members.with_columns(pl.col(HASH).n_unique().over("k").alias("variants"))
        picked = (members.group_by("__cluster").agg(pl.col("__size").first(), pl.col("variants").first())
                  .sort(pl.col("variants") > 1, "__size", "__cluster", descending=[True, True, False])
                  .head(cfg.examples))
        examples = []
        for kept_id, size, variants in picked.iter_rows():
            rows = (members.filter(pl.col("__cluster") == kept_id)
                    .sort(pl.col("id") != kept_id, "id").head(5))
            examples.append({"kept": kept_id, "size": int(size), "exact": bool(variants == 1), "members": [
                {"id": r["id"], "source": r[SRC], "kept": r["id"] == kept_id, "text": None, "__row": int(r[ROW_COL])}
                for r in rows.select("id", SRC, ROW_COL).iter_rows(named=True)]})
        return examples

    def _stats(self, out: pl.DataFrame, keeper: np.ndarray, is_kept: pl.Series, score, pair_stats: dict,
               examples: bool = True, rows_in: int | None = None) -> dict:
        """The stage's stats. `out`, `keeper`, `is_kept` may be only the rows of clusters of
        2+ (spilled keys: `rows_in` then gives the stage's rows; the others are kept alone)."""
        cfg = self.config
        stats: dict = {"method": cfg.method, "view": cfg.view, "normalize": cfg.normalize_steps(), "keep": cfg.keep,
                       "rows_in": out.height if rows_in is None else int(rows_in),
                       "duplicates": int(out.height - int(is_kept.sum()))}
        if cfg.keep != "first":
            stats["score_column"] = score
        if cfg.method == "minhash":
            stats.update({"threshold": cfg.threshold, "num_perm": cfg.num_perm, "ngram": cfg.ngram,
                          "ngram_unit": cfg.ngram_unit, "seed": self.minhash_seed(),
                          "verify": (cfg.verify_by if cfg.verify else "off")})
        elif cfg.method == "semantic":
            stats["cosine_threshold"] = cfg.cosine_threshold
        stats.update(pair_stats)
        sizes = pl.DataFrame({"k": keeper}).group_by("k").len().filter(pl.col("len") > 1)
        hist = sizes.group_by("len").agg(pl.len().alias("n")).sort("len")
        stats["clusters"] = {
            "count": sizes.height,
            "size_histogram": {str(s): int(c) for s, c in hist.iter_rows()},
            "largest": int(sizes["len"].max()) if sizes.height else 0,
            # clusters whose kept row's answer is shared by less than half of the cluster
            "kept_minority_answer": int(out.filter(pl.Series(is_kept)
                                                   & (pl.col(f"{self.name}_cluster_agreement") < 0.5)).height)
            if out.height else 0,
        }
        if not examples:
            return stats
        if out.height and stats["duplicates"]:
            stats.update(self._exact_near_split(out, keeper))
            stats["examples"] = self._examples(out, keeper, sizes)
        else:
            stats["examples"] = []
        return stats

    def _exact_near_split(self, out: pl.DataFrame, keeper: np.ndarray) -> dict:
        """How many dropped rows are exact copies (same normalised text as their kept row)
        and how many are near-duplicates, for the report."""
        drop_idx = np.nonzero(keeper != np.arange(len(keeper)))[0]
        a = self._normalized(out[pl.Series(drop_idx)])
        b = self._normalized(out[pl.Series(keeper[drop_idx])])
        exact = int((a == b).sum())
        return {"dropped_exact": exact, "dropped_near": int(len(drop_idx) - exact)}

    def _examples(self, out: pl.DataFrame, keeper: np.ndarray, sizes: pl.DataFrame) -> list[dict]:
        """A few clusters for the report: near-duplicate clusters first (they show what
        the threshold does), largest first, ties by kept id; members' ids and short texts."""
        cfg = self.config
        if cfg.examples == 0 or sizes.height == 0:
            return []
        # only rows of clusters with 2+ members: the report never needs the others
        members = out.with_columns(pl.Series("k", keeper)).join(sizes.rename({"len": "size"}), on="k",
                                                                maintain_order="left")
        members = members.with_columns(
            text_view(cfg.view).alias("text"), self._normalized(members).alias("norm")
        ).with_columns(pl.col("norm").n_unique().over("k").alias("variants"))
        members = members.with_columns(out["id"].gather(members["k"]).alias("kept_id"))
        picked = (
            members.group_by("kept_id")
            .agg(pl.col("size").first(), pl.col("variants").first())
            .sort(pl.col("variants") > 1, "size", "kept_id", descending=[True, True, False])
            .head(cfg.examples)
        )
        examples = []
        for kept_id, size, variants in picked.iter_rows():
            rows = members.filter(pl.col("kept_id") == kept_id).sort(pl.col("id") != kept_id, "id").head(5)
            examples.append({
                "kept": kept_id,
                "size": int(size),
                "exact": bool(variants == 1),
                "members": [
                    {"id": r["id"], "source": r["source"], "kept": r["id"] == kept_id, "text": _short(r["text"])}
                    for r in rows.select("id", "source", "text").iter_rows(named=True)
                ],
            })
        return examples


def bucket_pairs(band: np.ndarray, has: np.ndarray, max_bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """The rule of `DedupStage.candidate_pairs` (see there), over the key space in slices.

    Every (key, row) of every band belongs to slice key % S (S = the number of bands, so
    a slice holds about one band's worth of entries); a key's whole bucket lies in one
    slice, so slice by slice gives the pairs of one pass over all keys, while the sorted
    frame is rows x 16 B instead of rows x bands x 16 B (at 10M rows and 21 bands, ~200 MB
    instead of 3.4 GB). Per slice, one sort of (key, row), then numpy keeps the keys seen
    more than once, each (key, row) once (a row whose key repeats across its bands), and
    lays out each bucket's pairs. Pairs found by several bands are merged by a `unique`
    whenever the pending ones outgrow the merged ones. Cost: S passes over a 1-byte slice
    number per (row, band)."""
    empty = np.zeros(0, np.int64), np.zeros(0, np.int64)
    idx = np.nonzero(has)[0].astype(np.int64)
    if len(idx) < 2:
        return empty
    if int(idx[-1]) >= 1 << 32:
        raise ValueError("minhash dedup packs row numbers in 32 bits: at most 4,294,967,296 rows")
    keys = band if len(idx) == band.shape[0] else band[idx]
    slices = max(1, min(keys.shape[1], 255))
    slice_of = (keys % np.uint64(slices)).astype(np.uint8)
    merged = np.zeros(0, np.uint64)
    pending: list[np.ndarray] = []
    pending_n = 0
    for s_ in range(slices):
        ks, rs = [], []
        for j in range(keys.shape[1]):
            m = slice_of[:, j] == s_
            ks.append(keys[m, j])
            rs.append(idx[m])
        code = _bucket_codes(np.concatenate(ks), np.concatenate(rs), max_bucket)
        del ks, rs
        if code is None:
            continue
        pending.append(code)
        pending_n += len(code)
        if pending_n > max(len(merged), 1 << 22):
            merged = pl.Series(np.concatenate([merged, *pending])).unique().sort().to_numpy()
            pending, pending_n = [], 0
    if pending:
        merged = pl.Series(np.concatenate([merged, *pending])).unique().sort().to_numpy()
    if not len(merged):
        return empty
    return (merged >> np.uint64(32)).astype(np.int64), (merged & np.uint64(0xFFFFFFFF)).astype(np.int64)


def _bucket_codes(keys: np.ndarray, rows: np.ndarray, max_bucket: int) -> np.ndarray | None:
    """The candidate pairs (left << 32 | right, unsorted, maybe repeated) of the buckets of
    the (key, row) entries given (every entry of each key present)."""
    ordered = pl.DataFrame({"k": keys, "r": rows}).sort("k", "r")
    k = ordered["k"].to_numpy()
    r = ordered["r"].to_numpy().astype(np.int64)
    del ordered
    same = k[1:] == k[:-1]
    shared = np.zeros(len(k), dtype=bool)
    shared[1:] = same
    shared[:-1] |= same
    shared[1:] &= ~(same & (r[1:] == r[:-1]))  # a row whose key repeats across its bands: once
    k, r = k[shared], r[shared]
    if len(k) < 2:
        return None
    start = np.flatnonzero(np.concatenate([[True], k[1:] != k[:-1]]))
    size = np.diff(np.append(start, len(k)))
    multi = size > 1
    start, size = start[multi], size[multi]
    codes = []
    small = size <= max_bucket
    if small.any():
        s0, sz = start[small], size[small]
        # each member at offset i of a bucket of size s pairs with the s-1-i members after it
        member = np.repeat(s0, sz) + (np.arange(int(sz.sum()), dtype=np.int64) - np.repeat(np.cumsum(sz) - sz, sz))
        after = np.repeat(s0 + sz, sz) - member - 1
        left = np.repeat(member, after)
        right = left + 1 + (np.arange(int(after.sum()), dtype=np.int64) - np.repeat(np.cumsum(after) - after, after))
        codes.append((r[left].astype(np.uint64) << np.uint64(32)) | r[right].astype(np.uint64))
    if (~small).any():
        # Large buckets are nearly always copies of one text: a star to the first member
        # keeps the pair count linear; the trade-off is a member unlike the first missed.
        s0, sz = start[~small], size[~small]
        first = np.repeat(s0, sz - 1)
        others = first + 1 + (np.arange(int((sz - 1).sum()), dtype=np.int64) - np.repeat(np.cumsum(sz - 1) - (sz - 1), sz - 1))
        codes.append((r[first].astype(np.uint64) << np.uint64(32)) | r[others].astype(np.uint64))
    return np.concatenate(codes) if codes else None


def _duplicated_rows(keys: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, root) of the (key, row) entries whose key occurs more than once (every entry
    of each key present), root = the smallest row of its key: exact dedup's clusters of 2+
    from one run of hash slices."""
    order = np.lexsort((rows, keys))
    k, r = keys[order], rows[order]
    del order
    if len(k) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    start = np.concatenate([[True], k[1:] != k[:-1]])
    run = np.cumsum(start) - 1
    size = np.bincount(run)
    dup = size[run] > 1
    root = r[np.flatnonzero(start)][run]
    return r[dup].astype(np.int64), root[dup].astype(np.int64)


def _rows_in_pairs(pairs, n: int, step: int = 1 << 20) -> np.ndarray:
    """The sorted global rows of `n` that are in some pair of `pairs` (`spill.PairSeq`),
    marked a byte a row while the pairs are read `step` at a time."""
    mark = np.zeros(n, dtype=bool)
    for a in range(0, len(pairs), step):
        l, r = pairs.slice(a, a + step)
        mark[l] = True
        mark[r] = True
        del l, r
    return np.flatnonzero(mark).astype(np.int64)


def _pair_count(st: dict) -> int:
    """Pairs of a verification state: in memory (`left`, `right`) or spilled (`pairs`)."""
    return len(st["pairs"]) if "pairs" in st else len(st["left"])


def _pairs_at(st: dict, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) of the state's pairs [a, b)."""
    if "pairs" in st:
        return st["pairs"].slice(a, b)
    return st["left"][a:b], st["right"][a:b]


def _short(text: str | None, limit: int = 160) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


SET_CHUNK = 1 << 19  # shingles turned into sorted (row, shingle) keys at once (`_shingle_sets`)
QUERY_STEP = 1 << 19  # right-row shingles looked up at once in `_pair_jaccard`'s intersections


def _shingle_sets(sh: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(key, size_of): each row's distinct shingles as u64 keys (row << 32 | hash), sorted
    (row by row, then by hash), and the number of distinct shingles of each row. Built a
    chunk of about SET_CHUNK shingles (whole rows) at a time into one array: the
    temporaries (row numbers, the sort's copy) are a chunk's, not every shingle's, so
    what is held is 8 B a shingle (the keys) beside the caller's 4 B (`sh`)."""
    n_rows = len(counts)
    counts = np.asarray(counts, dtype=np.int64)
    ends = np.cumsum(counts)
    key = np.empty(int(ends[-1]) if n_rows else 0, dtype=np.uint64)
    size_of = np.zeros(n_rows, dtype=np.int64)
    filled, a = 0, 0
    while a < n_rows:
        lo = int(ends[a - 1]) if a else 0
        b = max(a + 1, int(np.searchsorted(ends, lo + SET_CHUNK, side="right")))
        b = min(b, n_rows)
        hi = int(ends[b - 1])
        pos = np.repeat(np.arange(a, b, dtype=np.uint64), counts[a:b])
        k = np.sort((pos << np.uint64(32)) | sh[lo:hi].astype(np.uint64))  # sets: each (row, shingle) once
        del pos
        if len(k):
            k = k[np.concatenate([[True], k[1:] != k[:-1]])]  # (sort + diff beats np.unique's hash path)
            size_of[a:b] = np.bincount((k >> np.uint64(32)).astype(np.int64) - a, minlength=b - a)
        key[filled:filled + len(k)] = k
        filled += len(k)
        del k
        a = b
    return key[:filled], size_of


def _pair_jaccard(sh: np.ndarray, counts: np.ndarray, p_all: np.ndarray, q_all: np.ndarray,
                  threshold: float | None = None) -> np.ndarray:
    """Exact Jaccard of the shingle sets of pairs of rows (p_all[i], q_all[i]), given every
    involved row's shingle hashes `sh` (uint32, row after row, `counts` per row; rows
    numbered 0.. in that order). With `threshold`, pairs whose upper bound is below it get
    that bound instead (see `DedupStage._exact_jaccard`). Each pair's value depends only
    on its two rows' shingles, never on which other rows or pairs are passed along.

    Memory: the keys (8 B a shingle, `_shingle_sets`), the bounds' counts (256 B a row)
    and one step of at most QUERY_STEP looked-up shingles (~40 B each) or 100,000 pairs:
    it follows the batch's shingles, with no per-shingle temporaries (before #19's h1j
    round: ~40 B a shingle, row numbers, the sort's copy, hash and bucket columns of every
    shingle at once, and steps of 100,000 pairs whatever their shingles)."""
    n_rows = len(counts)
    key, size_of = _shingle_sets(sh, counts)
    start_of = np.concatenate([[0], np.cumsum(size_of)[:-1]]).astype(np.int64) if n_rows else np.zeros(0, np.int64)
    out = np.zeros(len(p_all), dtype=np.float64)
    todo = np.arange(len(p_all))
    if threshold is not None and len(p_all):
        bound = _jaccard_bounds(key, start_of, size_of, p_all, q_all)
        out[:] = bound
        todo = np.flatnonzero(bound >= threshold - 1e-9)
        del bound
    # Intersections by binary search: for each pair, the keys (left << 32 | h) for every
    # shingle h of the right row, looked up in `key`. Candidates come sorted by left and
    # each row's shingles are sorted, so the queries of a step are ascending: the
    # searches walk `key` in order (cache-friendly), about 4x faster than the earlier
    # polars join of pairs with the (row, shingle) table on the same pairs, and exact.
    qs = np.cumsum(size_of[q_all[todo]]) if len(todo) else np.zeros(0, np.int64)  # queries up to each pair
    lo = 0
    while lo < len(todo):
        base = int(qs[lo - 1]) if lo else 0
        hi = int(np.searchsorted(qs, base + QUERY_STEP, side="right"))
        hi = min(max(hi, lo + 1), lo + 100_000, len(todo))
        sel = todo[lo:hi]
        lo = hi
        pl_, pr_ = p_all[sel], q_all[sel]
        sz = size_of[pr_]
        first = np.cumsum(sz) - sz
        idx = np.repeat(start_of[pr_], sz) + (np.arange(int(sz.sum()), dtype=np.int64) - np.repeat(first, sz))
        query = (np.repeat(pl_.astype(np.uint64), sz) << np.uint64(32)) | (key[idx] & np.uint64(0xFFFFFFFF))
        del idx
        at = np.minimum(np.searchsorted(key, query), len(key) - 1)
        hit = (key[at] == query).astype(np.int64)
        del at, query
        common = np.zeros(len(pl_), dtype=np.float64)
        nz = sz > 0
        if nz.any():
            common[nz] = np.add.reduceat(hit, first[nz]) if len(hit) else 0
        union = size_of[pl_] + size_of[pr_] - common
        out[sel] = np.divide(common, union, out=np.zeros_like(common), where=union > 0)
    return out


def _jaccard_bounds(key: np.ndarray, start_of: np.ndarray, size_of: np.ndarray, p: np.ndarray, q: np.ndarray,
                    buckets: int = 256, rows_per_step: int = 50_000, step: int = 200_000) -> np.ndarray:
    """Upper bounds of the Jaccard of pairs (p[i], q[i]) of rows whose distinct shingles are
    `key` (row << 32 | hash, sorted, unique; row r's are key[start_of[r]:][:size_of[r]]):
    with c_X[k] the number of X's shingles in hash bucket k, |A & B| <= sum_k
    min(c_A[k], c_B[k]). Counts are uint8 (256 bytes a row); a row with a count >= 255
    gets bound 1 for its pairs."""
    n = len(size_of)
    counts = np.empty((n, buckets), dtype=np.uint8)
    saturated = np.zeros(n, dtype=bool)
    for lo in range(0, n, rows_per_step):
        hi = min(n, lo + rows_per_step)
        a = int(start_of[lo])
        b = int(start_of[hi - 1] + size_of[hi - 1])
        k = key[a:b]
        bucket = ((k & np.uint64(0xFFFFFFFF)) >> np.uint64(24)).astype(np.int64)  # top byte of the 32-bit hash
        c = np.bincount(((k >> np.uint64(32)).astype(np.int64) - lo) * buckets + bucket, minlength=(hi - lo) * buckets)
        c = c.reshape(hi - lo, buckets)
        saturated[lo:hi] = c.max(axis=1) >= 255
        counts[lo:hi] = np.minimum(c, 255)
    out = np.empty(len(p), dtype=np.float64)
    for lo in range(0, len(p), step):
        pp, qq = p[lo:lo + step], q[lo:lo + step]
        inter = np.minimum(counts[pp], counts[qq]).sum(axis=1, dtype=np.int64).astype(np.float64)
        union = size_of[pp] + size_of[qq] - inter
        bound = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        bound[saturated[pp] | saturated[qq] | (union <= 0)] = 1.0
        out[lo:lo + step] = bound
    return out


def _estimated_jaccard(sig: np.ndarray, left: np.ndarray, right: np.ndarray, step: int = 100_000) -> np.ndarray:
    """Share of equal signature values per pair: MinHash's unbiased Jaccard estimate."""
    out = np.empty(len(left), dtype=np.float64)
    for lo in range(0, len(left), step):
        out[lo:lo + step] = (sig[left[lo:lo + step]] == sig[right[lo:lo + step]]).mean(axis=1)
    return out


STAGE = DedupStage
