"""MinHash signatures for a whole column of texts at once, equal to datasketch's.

datasketch (2.x, its default "affine32" scheme) computes, for every shingle `s` of a
document and every permutation `k`:

    h   = fmix32(hashfunc(s))              # MurmurHash3 finaliser, a fixed bijection
    phv = a_k * h + b_k   (mod 2**32)      # a_k odd, so a bijection too
    sig[k] = min over shingles of phv

with `(a, b) = MinHash(num_perm, seed).permutations`. `signatures()` below runs exactly
that arithmetic in numpy over every shingle of a chunk of rows, and reduces per row with
`np.minimum.reduceat`, instead of one `MinHash.update` call (a Python call and a SHA-1)
per shingle. The permutations are taken from datasketch itself, so the signatures are
datasketch's; `tests/test_dedup_minhash.py` checks the equality bit for bit against
`datasketch.MinHash(hashfunc=shingle_hashfunc(...))`.

The shingle hash (`hashfunc`) is the one deliberate change from datasketch's default
(`sha1_hash32` of each shingle's bytes), and it is vectorised end to end:

* a token's hash (`string_hashes`) is a simple-tabulation hash of its UTF-8 bytes: the
  sum (mod 2**64) of fmix64(position << 8 | byte) over its bytes, mixed with its length
  by a last fmix64. Distinct strings of one length differ in some (position, byte) term,
  so they collide only when two sums of pseudo-random 64-bit values meet (odds about
  2**-64 per pair). It is numpy over the bytes of a chunk's distinct tokens (one
  `np.add.reduceat`), not a Python SHA-1 call per distinct token as before;
* a shingle's hash is a 64-bit polynomial mix of its tokens' 64-bit hashes, finalised
  with fmix64 and folded to 32 bits, plain numpy over all shingles of a chunk.

Both are fixed integer arithmetic, unlike polars' `hash()` stable across library versions
and machines, so signatures do not change between releases. `shingle_hashfunc` is the
same function for one shingle, to hand to datasketch, and the signatures test checks
datasketch's MinHash with it bit for bit. (The SHA-1 token hash of earlier versions gave
other signatures, hence other LSH candidates; verified results differ only where a pair's
candidacy did, and the estimate's accuracy is the same: `tests/test_dedup_minhash.py`.)

Normalisation of the text (Unicode NFKC, case, punctuation, whitespace) is a polars
expression shared with exact deduplication (`normalized`).
"""
from __future__ import annotations

import functools
import math
from typing import Iterable

import numpy as np
import polars as pl
import pyarrow as pa

# the normalisation steps (shared with consensus, which must group the same texts dedup does)
from curate.stages.common.text_norm import STEPS as NORMALIZE_STEPS, normalized  # noqa: E402,F401
# MinHash's default drops `punctuation`: turning punctuation and symbols into spaces merges texts
# that differ in them ("2+3" and "2*3", "52.5" and "52 5", code), which on a planted set
# cost removal precision (0.975 at 5-grams) for no recall (see docs/dedup.md).
DEFAULT_NORMALIZE = ("unicode", "case", "whitespace")

_M64 = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio multiplier (odd)
_SEED64 = np.uint64(0xCBF29CE484222325)  # FNV offset basis, a non-zero start value
_MAX32 = np.uint32(0xFFFFFFFF)


def _fmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def _fmix32(h: np.ndarray) -> np.ndarray:
    # Same constants as datasketch.minhash._FMIX_CONSTANTS[32].
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def string_hashes(strings: pl.Series) -> np.ndarray:
    """A stable 64-bit hash of each string's UTF-8 bytes, vectorised over the column (see
    the module docstring); null hashes like the empty string."""
    arr = strings.cast(pl.String).to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = arr.cast(pa.large_string())
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset:arr.offset + n + 1]
    lengths = np.diff(offsets)
    if arr.null_count:  # a null's offsets span no bytes, but make sure
        lengths = np.where(np.asarray(arr.is_null()), 0, lengths)
    out = np.zeros(n, dtype=np.uint64)
    nonempty = lengths > 0
    with np.errstate(over="ignore"):
        if nonempty.any():
            data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
            starts = offsets[:-1][nonempty]
            lens = lengths[nonempty]
            # the bytes of the non-empty strings, in order, and each byte's position in its string
            first = np.repeat(starts, lens)
            pos = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
            byte = data[first + pos].astype(np.uint64)
            term = _fmix64(((pos.astype(np.uint64) << np.uint64(8)) | byte) + _SEED64)
            out[nonempty] = np.add.reduceat(term, np.cumsum(lens) - lens)
        return _fmix64(out ^ ((lengths.astype(np.uint64) + np.uint64(1)) * _M64))


def _mix_step(h: np.ndarray, tok: np.ndarray) -> np.ndarray:
    return (h ^ tok.astype(np.uint64, copy=False)) * _M64


def _finish(h: np.ndarray) -> np.ndarray:
    return (_fmix64(h) >> np.uint64(32)).astype(np.uint32)


def shingle_hashfunc(shingle: Iterable[str]) -> int:
    """The shingle hash for one shingle (a tuple of tokens), for
    `datasketch.MinHash(hashfunc=shingle_hashfunc)`; identical to the vectorised one."""
    toks = string_hashes(pl.Series(list(shingle), dtype=pl.String))
    with np.errstate(over="ignore"):
        h = np.array([_SEED64], dtype=np.uint64)
        for tok in toks:
            h = _mix_step(h, np.array([tok], dtype=np.uint64))
        return int(_finish(h)[0])


def tokens_expr(text: pl.Expr, unit: str) -> pl.Expr:
    """A list<str> of tokens: whitespace-separated words, or Unicode characters."""
    if unit == "word":
        return text.str.split(" ").list.eval(pl.element().filter(pl.element().str.len_bytes() > 0))
    if unit == "char":
        return text.str.split("")
    raise ValueError(f"unknown shingle unit {unit!r}")


def token_hashes(lists: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """Flatten a list<str> column into (token hashes uint64, per-row token counts).
    `string_hashes` runs once per distinct token of the column (the vocabulary, whose
    bytes are far fewer than the text's). Occurrences find
    their token's hash through polars' own 64-bit string hash, used only as a key inside
    this call (its values never leave it, so its instability across polars versions does
    not matter; two distinct tokens of one chunk colliding has odds about vocab^2 / 2^64)."""
    lengths = lists.list.len().fill_null(0).to_numpy().astype(np.int64)
    flat = lists.explode().drop_nulls()
    if len(flat) != int(lengths.sum()):  # polars' explode of an empty list changed across versions
        flat = lists.list.eval(pl.element()).explode().drop_nulls()
    if len(flat) == 0:
        return np.zeros(0, dtype=np.uint64), lengths
    keys = flat.hash(seed=0)
    firsts = pl.DataFrame({"k": keys, "t": flat}).unique(subset="k", keep="first", maintain_order=True)
    codes = pl.Series("c", string_hashes(firsts["t"]), dtype=pl.UInt64)
    hashed = keys.replace_strict(firsts["k"], codes, return_dtype=pl.UInt64)
    return hashed.to_numpy(), lengths


def shingle_hashes(tok: np.ndarray, lengths: np.ndarray, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every contiguous `ngram`-token shingle, row after row, and the number
    of shingles per row. A non-empty row shorter than `ngram` tokens is one shingle of
    all its tokens (so short prompts still get a signature); an empty row has none."""
    lengths = lengths.astype(np.int64)
    counts = np.where(lengths >= ngram, lengths - ngram + 1, np.minimum(lengths, 1))
    total_tokens = int(lengths.sum())
    if int(counts.sum()) == 0:
        return np.zeros(0, dtype=np.uint32), counts
    offsets = np.cumsum(lengths) - lengths
    pos = np.arange(total_tokens, dtype=np.int64) - np.repeat(offsets, lengths)
    row_len = np.repeat(lengths, lengths)
    # a shingle starts at every position with ngram-1 tokens after it in its row, and
    # at position 0 of a row shorter than ngram
    starts = np.flatnonzero((pos <= row_len - ngram) | ((pos == 0) & (row_len < ngram)))
    length_at = row_len[starts]
    short = bool((length_at < ngram).any())
    with np.errstate(over="ignore"):
        h = np.full(len(starts), _SEED64, dtype=np.uint64)
        for k in range(ngram):
            idx = starts + k
            if short:
                np.minimum(idx, total_tokens - 1, out=idx)
                h = np.where(k < length_at, _mix_step(h, tok[idx]), h)
            else:
                h = _mix_step(h, tok[idx])
        return _finish(h), counts


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's permutation parameters (a, b) for (num_perm, seed), uint32."""
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=seed, scheme="affine32")
    a, b = m.permutations
    return np.asarray(a, dtype=np.uint32), np.asarray(b, dtype=np.uint32)


# Permutations are split over threads when a chunk has at least this many shingles (numpy
# releases the GIL in the multiply, add and reduceat loops). Measured on the 2-core machine
# under load ~1.5 (200k rows, 12M shingles, 128 permutations): 1.45 s one thread, 0.89 s two
# (1.6x), at 1.2x the CPU time. Smaller chunks stay in one thread (start-up beats the gain).
THREADS_MIN_SHINGLES = 1_000_000
MAX_THREADS = 4  # at most this many threads, and never more than the usable CPUs


def _usable_cpus() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def signatures_from_shingles(sh: np.ndarray, counts: np.ndarray, a: np.ndarray, b: np.ndarray,
                             threads: int | None = None) -> np.ndarray:
    """(rows, num_perm) uint32 signatures: `signatures_by_perm` transposed."""
    return np.ascontiguousarray(signatures_by_perm(sh, counts, a, b, threads).T)


def signatures_by_perm(sh: np.ndarray, counts: np.ndarray, a: np.ndarray, b: np.ndarray,
                       threads: int | None = None) -> np.ndarray:
    """(num_perm, rows) uint32 signatures, one permutation's values of every row
    contiguous (the layout they are computed in, and the one `band_hashes_by_perm` reads:
    the stage skips two transposes of the whole block a chunk); rows without shingles
    stay all-max (empty MinHash). One permutation at a time over the contiguous shingle vector, reduced per
    row with `np.minimum.reduceat`: memory is one uint32 per shingle (per thread), and
    contiguous 1-D reductions are several times faster than a (shingles, perms) block.

    `threads` (None: the usable CPUs, at most MAX_THREADS, for chunks of at least
    THREADS_MIN_SHINGLES shingles, else 1) share the permutations: each thread fills its
    own rows of the (perms, rows) result, so the values are identical for any count.
    Trade-off: where each executor worker already owns a core (Ray), two threads per
    worker time-slice instead of running side by side; the result is the same."""
    n, p = len(counts), len(a)
    out = np.full((p, n), _MAX32, dtype=np.uint32)
    nonempty = counts > 0
    if not nonempty.any():
        return out
    hv = _fmix32(sh.astype(np.uint32))
    seg = (np.cumsum(counts) - counts)[nonempty]
    dense = bool(nonempty.all())

    def fill(ks) -> None:
        tmp = np.empty_like(hv)
        with np.errstate(over="ignore"):
            for k in ks:
                np.multiply(hv, a[k], out=tmp)
                tmp += b[k]
                if dense:
                    out[k] = np.minimum.reduceat(tmp, seg)
                else:
                    out[k, nonempty] = np.minimum.reduceat(tmp, seg)

    if threads is None:
        threads = min(MAX_THREADS, _usable_cpus()) if len(hv) >= THREADS_MIN_SHINGLES else 1
    threads = max(1, min(int(threads), p))
    if threads == 1:
        fill(range(p))
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:
            for f in [pool.submit(fill, range(t, p, threads)) for t in range(threads)]:
                f.result()
    return out


def signatures(texts: pl.Series, num_perm: int, seed: int, ngram: int, unit: str,
               perms: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Signatures of already-normalised texts: ((rows, num_perm) uint32, shingles per row)."""
    sig, counts = signatures_t(texts, num_perm, seed, ngram, unit, perms)
    return np.ascontiguousarray(sig.T), counts


def signatures_t(texts: pl.Series, num_perm: int, seed: int, ngram: int, unit: str,
                 perms: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`signatures` in the (num_perm, rows) layout (`signatures_by_perm`)."""
    a, b = perms if perms is not None else permutations(num_perm, seed)
    lists = texts.to_frame("t").select(tokens_expr(pl.col("t"), unit)).to_series()
    tok, lengths = token_hashes(lists)
    sh, counts = shingle_hashes(tok, lengths, ngram)
    return signatures_by_perm(sh, counts, a, b), counts


def shingle_sets(texts: pl.Series, ngram: int, unit: str) -> pl.Series:
    """Each text's set of shingle hashes as a sorted, de-duplicated list<u32> (for exact
    Jaccard verification of candidate pairs)."""
    lists = texts.to_frame("t").select(tokens_expr(pl.col("t"), unit)).to_series()
    tok, lengths = token_hashes(lists)
    sh, counts = shingle_hashes(tok, lengths, ngram)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    values = pl.Series(sh, dtype=pl.UInt32)
    arr = pl.Series(pa.LargeListArray.from_arrays(pa.array(offsets), values.to_arrow()))
    return arr.list.unique().list.sort()


@functools.lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int, fp_weight: float = 0.05, fn_weight: float = 0.95) -> tuple[int, int]:
    """(bands, rows) from datasketch's own optimiser. Weighted towards recall (0.05/0.95,
    not datasketch's 0.5/0.5) because every candidate pair is verified afterwards: a
    false positive of the banding costs a cheap vectorised check, a false negative is a
    lost duplicate. For threshold 0.8 and 128 permutations this gives 16 bands of 8 rows:
    a pair at Jaccard 0.8 becomes a candidate with probability 0.95 (0.40 with 0.5/0.5),
    one at 0.5 with 0.06. Cached: the optimiser integrates over every (bands, rows) split
    (about 0.1 s a call, plus datasketch's import), and the stage asks once per part."""
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, fp_weight, fn_weight)


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64: a 64-bit hash of each band's `rows` signature values (`sig`:
    (n, num_perm)). Two rows share a bucket when a band's values hash alike; collisions
    only add candidates, which verification removes. `band_hashes_by_perm` of the
    transposed signatures."""
    return np.ascontiguousarray(band_hashes_by_perm(np.ascontiguousarray(sig[:, :bands * rows].T), bands, rows).T)


def band_hashes_by_perm(sig_t: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(bands, n) uint64 band hashes of (num_perm, n) signatures (`signatures_by_perm`):
    per band, the values' polynomial mix (`_mix_step`) and `_fmix64`, in place in the
    band's own contiguous row (no strided column reads, casts or temporaries per value;
    tests/test_dedup_speed.py checks the values against the per-column reference)."""
    n = sig_t.shape[1]
    out = np.empty((bands, n), dtype=np.uint64)
    tmp = np.empty(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(bands):
            h = out[j]
            h.fill(_SEED64 ^ np.uint64(j))
            for k in range(j * rows, (j + 1) * rows):
                np.bitwise_xor(h, sig_t[k], out=h)
                np.multiply(h, _M64, out=h)
            for mult in (np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53), None):  # _fmix64
                np.right_shift(h, np.uint64(33), out=tmp)
                h ^= tmp
                if mult is not None:
                    h *= mult
    return out


# ---- pre-verification on signature agreement --------------------------------------------
SKETCH_VALUES = 128  # signature values kept per row for pre-verification (1 byte each)


def sketch_by_perm(sig_t: np.ndarray) -> np.ndarray:
    """`sketch` of (num_perm, rows) signatures: the bytes cast before the transpose."""
    return np.ascontiguousarray(sig_t[:SKETCH_VALUES].astype(np.uint8).T)


def sketch(sig: np.ndarray) -> np.ndarray:
    """(rows, min(num_perm, SKETCH_VALUES)) uint8: the low byte of each of the first
    signature values (b-bit MinHash, Li & König 2010, with b = 8). Two rows agree on a
    value with probability J + (1 - J) / 256 (equal minima, or unequal ones whose low
    bytes meet), so the share of agreeing bytes still estimates Jaccard, at 1/4 of the
    signature's memory when num_perm = 128 (128 bytes a row, as much as 16 band keys)."""
    return np.ascontiguousarray(sig[:, :SKETCH_VALUES].astype(np.uint8))


def agreement_floor(values: int, threshold: float, miss: float = 1e-6) -> int:
    """The fewest agreeing sketch bytes a pair at Jaccard `threshold` shows except with
    probability <= `miss`: the largest c with P(Binomial(values, threshold) < c) <= miss.
    A pair at Jaccard >= threshold agrees on each byte with probability >= threshold
    (independent per permutation), so rejecting pairs below c loses a true pair with
    probability <= miss, and a pair far below the threshold is rejected before its exact
    Jaccard is computed. 0 when `values` is too small to reject anything safely."""
    t = min(max(float(threshold), 0.0), 1.0)
    if t >= 1.0:
        return values
    if t <= 0.0:
        return 0
    cdf = 0.0  # P(X < c), accumulated c = 0, 1, ...
    for c in range(values + 1):
        pmf = math.exp(math.lgamma(values + 1) - math.lgamma(c + 1) - math.lgamma(values - c + 1)
                       + c * math.log(t) + (values - c) * math.log1p(-t))
        if cdf + pmf > miss:
            return c
        cdf += pmf
    return values


def sketch_agreement(sk: np.ndarray, left: np.ndarray, right: np.ndarray, step: int = 1 << 20) -> np.ndarray:
    """Number of equal sketch bytes of each (left, right) pair, vectorised in steps."""
    out = np.empty(len(left), dtype=np.int32)
    for lo in range(0, len(left), step):
        out[lo:lo + step] = (sk[left[lo:lo + step]] == sk[right[lo:lo + step]]).sum(axis=1, dtype=np.int32)
    return out
