"""Faster paths of dedup that replace slower ones, each checked equal to the code it
replaced (kept here as the reference): `sorted_unique` for `np.unique`, `band_hashes`
in place for the per-column mix, the cached `lsh_params`, and `keys` computing the
normalised view once for the hash, the keep rule's length and the signatures."""
from __future__ import annotations

import random
import string

import numpy as np
import polars as pl
from hypothesis import given, settings, strategies as st

from curate.contract.schema import POLARS_SCHEMA, conversation_id
from curate.contract.typed_config import load_dataclass
from curate.stages.base import StageContext
from curate.stages.dedup import minhash as mh
from curate.stages.dedup.spill import sorted_unique
from curate.stages.dedup.stage import Config, DedupStage


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), max_size=300), st.sampled_from([np.uint64, np.int64]))
def test_sorted_unique_is_np_unique(values, dtype):
    a = np.array([v if dtype is np.uint64 else v - 2**63 for v in values], dtype=dtype)
    got, want = sorted_unique(a), np.unique(a)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_sorted_unique_large_repeats():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 5000, 200_000).astype(np.uint64)
    np.testing.assert_array_equal(sorted_unique(a), np.unique(a))
    assert len(sorted_unique(np.zeros(0, np.int64))) == 0


def _band_hashes_reference(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """The per-column band mix `band_hashes` replaced."""
    n = sig.shape[0]
    out = np.empty((n, bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(bands):
            h = np.full(n, mh._SEED64 ^ np.uint64(j), dtype=np.uint64)
            for k in range(j * rows, (j + 1) * rows):
                h = mh._mix_step(h, sig[:, k])
            out[:, j] = mh._fmix64(h)
    return out


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 50), st.integers(1, 8), st.integers(1, 8), st.integers(0, 5), st.integers(0, 2**31))
def test_band_hashes_equal_reference(n, bands, rows, spare, seed):
    sig = np.random.default_rng(seed).integers(0, 2**32, (n, bands * rows + spare), dtype=np.uint32)
    got = mh.band_hashes(sig, bands, rows)
    assert got.shape == (n, bands) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, _band_hashes_reference(sig, bands, rows))


def test_band_hashes_of_real_signatures_and_f_order():
    texts = pl.Series(["the cat sat on the mat", "a dog ran far away today", "", "x"] * 50)
    s, _ = mh.signatures(texts, 128, 0, 3, "word")
    for bands, rows in ((21, 6), (16, 8)):
        np.testing.assert_array_equal(mh.band_hashes(s, bands, rows), _band_hashes_reference(s, bands, rows))
        np.testing.assert_array_equal(mh.band_hashes(np.asfortranarray(s), bands, rows),
                                      _band_hashes_reference(s, bands, rows))


def test_lsh_params_cached_equals_optimiser():
    from datasketch.lsh import _optimal_param

    for t, p in ((0.7, 128), (0.8, 128), (0.5, 64)):
        assert mh.lsh_params(t, p) == _optimal_param(t, p, 0.05, 0.95)
        assert mh.lsh_params(t, p) == mh.lsh_params(t, p)


def _table(n: int, seed: int) -> pl.DataFrame:
    rng = random.Random(seed)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 7))) for _ in range(300)]
    rows = []
    for i in range(n):
        p = " ".join(rng.choices(words, k=rng.randint(0, 12))) + rng.choice(["", "?", " Ünïcödé ﬁ", "  \t"])
        a = " ".join(rng.choices(words, k=rng.randint(1, 20)))
        if i and rng.random() < 0.2:  # copies and near copies
            prev = rows[rng.randrange(len(rows))]["messages"]
            p, a = prev[0]["content"].upper(), prev[1]["content"] + rng.choice(["", " more"])
        msgs = [{"role": "user", "content": p}, {"role": "assistant", "content": a}]
        rows.append({"id": conversation_id(msgs), "source": rng.choice("ab"), "task": "t", "messages": msgs,
                     "meta": "{}", "origin": f"s:{i}", "heuristic": rng.random()})
    return pl.DataFrame(rows, schema={**POLARS_SCHEMA, "heuristic": pl.Float64})


def _stage(tmp_path, **cfg) -> DedupStage:
    config = load_dataclass(Config, {"kind": "dedup", **cfg}, "stages[0]")
    ctx = StageContext(run_dir=tmp_path, config_dir=tmp_path, seed=0, stage_dir=tmp_path / "s", log=lambda m: None)
    return DedupStage(config, ctx)


def _keys_reference(stage: DedupStage, part: pl.DataFrame) -> pl.DataFrame:
    """`keys` as it was: the normalised view computed again by the keep rule and by the
    signatures."""
    norm = pl.concat([t for _, t in stage.normalized_chunks(part)])
    kk = stage._keep_keys(part)
    if "__dedup_score" in kk.columns:
        kk = kk.rename({"__dedup_score": f"__dedup_score:{stage._score_column(part)}"})
    out = pl.DataFrame([norm.hash(seed=0).alias("__dedup_hash")]).hstack(kk).with_columns(
        part["source"].alias("__dedup_source"))
    if stage.config.method == "minhash":
        band, has, sig, nsh = stage._minhash_arrays(part)
        out = out.with_columns(pl.Series("__dedup_bands", band, dtype=pl.Array(pl.UInt64, band.shape[1])),
                               pl.Series("__dedup_has", has, dtype=pl.Boolean))
        if sig is not None:
            dt = pl.UInt8 if sig.dtype == np.uint8 else pl.UInt32
            out = out.with_columns(pl.Series("__dedup_sig", sig, dtype=pl.Array(dt, sig.shape[1])))
        if stage.needs_refine():
            out = out.with_columns(pl.Series("__dedup_shingle_count", nsh, dtype=pl.UInt32))
    return out


def test_keys_equal_reference(tmp_path):
    part = _table(400, 7)
    for cfg in ({"method": "exact", "view": "conversation"},
                {"method": "minhash", "view": "conversation", "threshold": 0.7, "chunk_size": 37},
                {"method": "minhash", "view": "user", "verify_by": "estimate", "chunk_size": 64},
                {"method": "minhash", "keep": "first"}):
        stage = _stage(tmp_path, **cfg)
        got, want = stage.keys(part), _keys_reference(stage, part)
        assert got.columns == want.columns, cfg
        assert got.equals(want), cfg
    empty = _table(0, 1)
    assert _stage(tmp_path, method="minhash").keys(empty).height == 0


def test_by_perm_layout_equals_rows_layout():
    texts = pl.Series(["the cat sat on the mat", "a dog ran far away today", "", "x", "ünï cödé ﬁ x y"] * 40)
    for p in (128, 200, 16):
        a, b = mh.permutations(p, 1)
        s, c = mh.signatures(texts, p, 1, 3, "word", (a, b))
        st_, c2 = mh.signatures_t(texts, p, 1, 3, "word", (a, b))
        np.testing.assert_array_equal(st_.T, s)
        np.testing.assert_array_equal(c, c2)
        np.testing.assert_array_equal(mh.sketch_by_perm(st_), mh.sketch(s))
        bands, rows = (16, 8) if p >= 128 else (4, 4)
        np.testing.assert_array_equal(mh.band_hashes_by_perm(st_, bands, rows).T, _band_hashes_reference(s, bands, rows))


def test_minhash_arrays_equal_rows_layout_reference(tmp_path):
    part = _table(300, 11)
    for cfg in ({"method": "minhash", "view": "conversation", "threshold": 0.7, "chunk_size": 53},
                {"method": "minhash", "verify_by": "estimate", "chunk_size": 100},
                {"method": "minhash", "prefilter": False, "num_perm": 64}):
        stage = _stage(tmp_path, **cfg)
        band, has, sig, nsh = stage._minhash_arrays(part)
        c = stage.config
        bands, rows = c.lsh()
        wb, wh, ws, wn = [], [], [], []
        for _, texts in stage.normalized_chunks(part):  # the old path: (rows, perms) signatures
            s, counts = mh.signatures(texts, c.num_perm, stage.minhash_seed(), c.ngram, c.ngram_unit)
            wb.append(_band_hashes_reference(s, bands, rows))
            wh.append(counts > 0)
            wn.append(counts)
            ws.append(s if c.verify_by == "estimate" else mh.sketch(s))
        np.testing.assert_array_equal(band, np.concatenate(wb))
        np.testing.assert_array_equal(has, np.concatenate(wh))
        np.testing.assert_array_equal(nsh, np.concatenate(wn))
        if c.prefilter or c.verify_by == "estimate":
            np.testing.assert_array_equal(sig, np.concatenate(ws))
        else:
            assert sig is None
