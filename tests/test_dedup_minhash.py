"""The column-wise MinHash equals datasketch's, and the vectorised union-find equals a
textbook one."""
from __future__ import annotations

import random

import numpy as np
import polars as pl
import pytest
from datasketch import LeanMinHash, MinHash

from curate.stages.dedup import minhash as mh
from curate.stages.dedup.union_find import components


def _python_shingles(text: str, n: int, unit: str) -> list[tuple[str, ...]]:
    toks = [t for t in text.split(" ") if t] if unit == "word" else list(text)
    if not toks:
        return []
    if len(toks) < n:
        return [tuple(toks)]
    return [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]


TEXTS = [
    "the quick brown fox jumps over the lazy dog and the quick brown fox sleeps",
    "",
    "one",
    "two words",
    "héllo wörld 你好 世界 naïve café résumé",
    "repeat repeat repeat repeat repeat repeat",
    "请 把 这 句 话 翻译 成 英文",
]


@pytest.mark.parametrize("unit,ngram,num_perm,seed", [("word", 3, 128, 1), ("word", 1, 64, 7),
                                                     ("word", 5, 32, 42), ("char", 4, 128, 3)])
def test_signatures_equal_datasketch(unit, ngram, num_perm, seed):
    sig, counts = mh.signatures(pl.Series(TEXTS), num_perm, seed, ngram, unit)
    assert sig.dtype == np.uint32 and sig.shape == (len(TEXTS), num_perm)
    for i, text in enumerate(TEXTS):
        shingles = _python_shingles(text, ngram, unit)
        assert counts[i] == len(shingles)
        ref = MinHash(num_perm=num_perm, seed=seed, hashfunc=mh.shingle_hashfunc)
        for s in shingles:
            ref.update(s)
        np.testing.assert_array_equal(sig[i], ref.hashvalues, err_msg=f"row {i} {text!r}")
        # and the bulk path users would reach for gives the same
        (bulk,) = MinHash.bulk([shingles], num_perm=num_perm, seed=seed, hashfunc=mh.shingle_hashfunc)
        np.testing.assert_array_equal(LeanMinHash(bulk).hashvalues, sig[i])


def test_signatures_chunk_and_block_independent():
    rng = random.Random(5)
    words = [f"w{i}" for i in range(300)]
    texts = pl.Series([" ".join(rng.choices(words, k=rng.randint(0, 40))) for _ in range(200)])
    a, b = mh.permutations(64, 9)
    whole, _ = mh.signatures(texts, 64, 9, 3, "word", (a, b))
    parts = np.vstack([mh.signatures(texts.slice(lo, 17), 64, 9, 3, "word", (a, b))[0] for lo in range(0, 200, 17)])
    np.testing.assert_array_equal(whole, parts)
    lists = texts.to_frame("t").select(mh.tokens_expr(pl.col("t"), "word")).to_series()
    tok, lengths = mh.token_hashes(lists)
    sh, counts = mh.shingle_hashes(tok, lengths, 3)
    np.testing.assert_array_equal(whole, mh.signatures_from_shingles(sh, counts, a, b))


def test_estimated_jaccard_tracks_true_jaccard():
    rng = random.Random(0)
    words = [f"x{i}" for i in range(5000)]
    base = rng.sample(words, 200)
    other = base[:150] + rng.sample(words, 50)
    sig, _ = mh.signatures(pl.Series([" ".join(base), " ".join(other)]), 256, 1, 1, "word")
    true = len(set(base) & set(other)) / len(set(base) | set(other))
    est = float((sig[0] == sig[1]).mean())
    assert abs(est - true) < 0.1, (est, true)


def test_shingle_sets_match_python():
    sets = mh.shingle_sets(pl.Series(TEXTS), 2, "word").to_list()
    for text, got in zip(TEXTS, sets):
        want = sorted({mh.shingle_hashfunc(s) for s in _python_shingles(text, 2, "word")})
        assert got == want


def test_lsh_params_favour_recall():
    bands, rows = mh.lsh_params(0.8, 128)
    assert bands * rows <= 128
    p = 1 - (1 - 0.8 ** rows) ** bands
    assert p >= 0.9, (bands, rows, p)


def test_normalized_expression():
    s = pl.Series(["  Ｈello,\tWORLD!!  ", "hello world", "Ｃａｆé…"])
    out = s.to_frame("t").select(mh.normalized(pl.col("t"))).to_series().to_list()
    assert out[0] == out[1] == "hello world"
    assert out[2] == "café"
    raw = s.to_frame("t").select(mh.normalized(pl.col("t"), [])).to_series().to_list()
    assert raw == s.to_list()


def _reference_components(n, edges):
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [find(x) for x in range(n)]


@pytest.mark.parametrize("seed", range(5))
def test_union_find_equals_reference(seed):
    rng = random.Random(seed)
    n = 300
    edges = [(rng.randrange(n), rng.randrange(n)) for _ in range(rng.randint(0, 400))]
    # a long chain, the worst case for label propagation
    edges += [(i, i + 1) for i in range(200, 260)]
    rng.shuffle(edges)
    left = np.array([a for a, _ in edges], dtype=np.int64)
    right = np.array([b for _, b in edges], dtype=np.int64)
    got = components(n, left, right)
    ref = _reference_components(n, edges)
    # same partition, and every root is its component's smallest member
    assert got.tolist() == ref


def test_union_find_no_edges():
    assert components(4, np.zeros(0), np.zeros(0)).tolist() == [0, 1, 2, 3]


def _reference_bucket_pairs(band, has, max_bucket):
    """The candidate rule written plainly: a dict of buckets, all pairs or a star."""
    buckets: dict[int, set[int]] = {}
    for i in np.nonzero(has)[0]:
        for key in band[i]:
            buckets.setdefault(int(key), set()).add(int(i))
    pairs = set()
    for members in buckets.values():
        m = sorted(members)
        if len(m) < 2:
            continue
        if len(m) <= max_bucket:
            pairs.update((a, b) for x, a in enumerate(m) for b in m[x + 1:])
        else:
            pairs.update((m[0], b) for b in m[1:])
    return sorted(pairs)


@pytest.mark.parametrize("seed,max_bucket", [(0, 64), (1, 3), (2, 2)])
def test_bucket_pairs_equal_plain_rule(seed, max_bucket):
    from curate.stages.dedup.stage import bucket_pairs

    rng = np.random.default_rng(seed)
    n, bands = 400, 6
    # few distinct keys per band, so buckets of every size occur (1 to ~40 rows)
    band = (rng.integers(0, 60, size=(n, bands)) + np.arange(bands) * 1000).astype(np.uint64)
    has = rng.random(n) > 0.1
    left, right = bucket_pairs(band, has, max_bucket)
    assert list(zip(left.tolist(), right.tolist())) == _reference_bucket_pairs(band, has, max_bucket)


@pytest.mark.parametrize("seed,max_bucket,all_have", [(3, 64, True), (4, 3, False), (5, 1, True)])
def test_bucket_pairs_keys_shared_across_bands(seed, max_bucket, all_have):
    """Keys not offset per band: a row often holds one key in several of its bands (it
    must count once in that bucket), and every row having text takes the no-copy path."""
    from curate.stages.dedup.stage import bucket_pairs

    rng = np.random.default_rng(seed)
    n, bands = 300, 5
    band = rng.integers(0, 40, size=(n, bands)).astype(np.uint64)
    has = np.ones(n, dtype=bool) if all_have else rng.random(n) > 0.2
    left, right = bucket_pairs(band, has, max_bucket)
    assert list(zip(left.tolist(), right.tolist())) == _reference_bucket_pairs(band, has, max_bucket)
    # a key held by one row only (in several of its bands) makes no pair
    lone = np.array([[7, 7, 7], [8, 9, 10]], dtype=np.uint64)
    assert [a.tolist() for a in bucket_pairs(lone, np.ones(2, bool), max_bucket)] == [[], []]


def test_agreement_floor_is_a_binomial_tail():
    from scipy.stats import binom

    for values, t in [(128, 0.7), (128, 0.8), (64, 0.5), (16, 0.9)]:
        c = mh.agreement_floor(values, t, miss=1e-6)
        assert binom.cdf(c - 1, values, t) <= 1e-6 < binom.cdf(c, values, t)
    assert mh.agreement_floor(2, 0.8) == 0  # too few values to reject anything safely


def test_string_hashes_stable_and_distinct():
    vals = ["", "a", "b", "ab", "ba", "héllo", "你好", "a" * 1000, "a" * 999 + "b"]
    h = mh.string_hashes(pl.Series(vals))
    assert len(set(h.tolist())) == len(vals)
    # fixed integer arithmetic: these values must never change between releases (they
    # decide signatures, hence which rows are candidates)
    assert mh.string_hashes(pl.Series(["a", "你好"])).tolist() == [1717907392117157463, 17006824895508781379]
    assert h[[1, 6]].tolist() == [1717907392117157463, 17006824895508781379]
    again = mh.string_hashes(pl.Series(["x", "héllo", None]).slice(1, 1))  # sliced Arrow offsets
    assert again.tolist() == [h[5]]


@pytest.mark.parametrize("width", [128, 64, 13])
def test_sketch_agreement_counts_equal_bytes(width):
    rng = np.random.default_rng(width)
    sk = rng.integers(0, 4, size=(300, width)).astype(np.uint8)  # many equal bytes, some zero
    left, right = rng.integers(0, 300, 5000), rng.integers(0, 300, 5000)
    want = (sk[left] == sk[right]).sum(axis=1)
    np.testing.assert_array_equal(mh.sketch_agreement(sk, left, right, step=777), want)


@pytest.mark.parametrize("threads", [2, 3, 200])
def test_signatures_identical_for_any_thread_count(threads):
    rng = np.random.default_rng(threads)
    counts = rng.integers(0, 30, 500)
    counts[::9] = 0  # rows without shingles stay all-max
    sh = rng.integers(0, 2**32, int(counts.sum()), dtype=np.uint64).astype(np.uint32)
    a, b = mh.permutations(64, 1)
    one = mh.signatures_from_shingles(sh, counts, a, b, threads=1)
    np.testing.assert_array_equal(mh.signatures_from_shingles(sh, counts, a, b, threads=threads), one)
    assert (one[counts == 0] == 0xFFFFFFFF).all() and (one[counts > 0] < 0xFFFFFFFF).any()
