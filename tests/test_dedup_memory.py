"""Near dedup's plan holds bounded working sets (issue #19, the h1j round): the exact
Jaccard of a verification batch is built a chunk of shingles at a time, candidate pairs
are checked in runs of at most a budget of pairs, and the spilled plan with every budget
made tiny (many chunks, runs, windows and verification batches) decides as `process` on
the whole table. Structural checks only: what each step is handed is bounded, and the
results equal a reference."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

import curate.stages.dedup.spill as SP
import curate.stages.dedup.stage as S
from curate.contract.typed_config import load_dataclass
from curate.stages.dedup.stage import Config as DedupConfig, DedupStage
from test_planned import _ctx, _executor_planned, handmade


def _reference_jaccard(sets, p, q):
    out = []
    for a, b in zip(p, q):
        A, B = sets[a], sets[b]
        u = len(A | B)
        out.append(len(A & B) / u if u else 0.0)
    return np.array(out)


@pytest.mark.parametrize("chunk,step", [(7, 5), (1 << 21, 1 << 21), (1, 1)])
def test_pair_jaccard_equals_sets_for_any_chunking(monkeypatch, chunk, step):
    """`_pair_jaccard` (chunked keys, stepped intersections) gives each pair the Jaccard of
    its two rows' shingle sets (repeated shingles and empty rows included), and with a
    threshold the same verdicts, however small the chunks and steps."""
    monkeypatch.setattr(S, "SET_CHUNK", chunk)
    monkeypatch.setattr(S, "QUERY_STEP", step)
    rng = np.random.default_rng(4)
    n = 60
    counts = rng.integers(0, 30, n)
    counts[[3, 17]] = 0
    sh = rng.integers(0, 40, int(counts.sum())).astype(np.uint32)  # small alphabet: overlaps and repeats
    ends = np.cumsum(counts)
    sets = [set(sh[e - c:e].tolist()) for e, c in zip(ends, counts)]
    p = rng.integers(0, n, 500)
    q = rng.integers(0, n, 500)
    p, q = np.minimum(p, q), np.maximum(p, q)
    order = np.lexsort((q, p))
    p, q = p[order], q[order]
    want = _reference_jaccard(sets, p, q)
    got = S._pair_jaccard(sh, counts, p, q)
    assert np.allclose(got, want, rtol=0, atol=1e-12)
    bounded = S._pair_jaccard(sh, counts, p, q, threshold=0.4)
    assert np.array_equal(bounded >= 0.4, want >= 0.4)
    assert np.allclose(bounded[want >= 0.4], want[want >= 0.4], rtol=0, atol=1e-12)


def test_shingle_sets_hold_one_chunk_of_temporaries(monkeypatch):
    """`_shingle_sets` sorts at most one chunk of whole rows at a time (the sort is handed
    no more than SET_CHUNK shingles unless one row alone has more)."""
    monkeypatch.setattr(S, "SET_CHUNK", 50)
    sizes = []
    real_sort = np.sort

    def sort(a, *args, **kw):
        sizes.append(len(a))
        return real_sort(a, *args, **kw)

    monkeypatch.setattr(S.np, "sort", sort)
    counts = np.array([10, 20, 30, 5, 80, 1, 0, 12] * 5)
    sh = np.arange(int(counts.sum()), dtype=np.uint32) % 13
    key, size_of = S._shingle_sets(sh, counts)
    assert len(sizes) > 5 and max(sizes) <= max(50, int(counts.max()))
    ends = np.cumsum(counts)
    assert size_of.tolist() == [len(set(sh[e - c:e].tolist())) for e, c in zip(ends, counts)]
    assert np.all(key[1:] > key[:-1])  # sorted, each (row, shingle) once


def _spill_with_parts(tmp_path, sizes):
    import polars as pl

    sp = SP.KeySpill(tmp_path / "spill")
    first = 0
    for n in sizes:
        sp.add(first, pl.DataFrame({"_row": np.arange(first, first + n, dtype=np.uint64)}))
        first += n
    return sp, first


def test_pair_runs_in_runs_of_a_pair_budget_equal_one_run(tmp_path, monkeypatch):
    """Candidate pairs filed per small window and checked in runs of at most `max_pairs`
    filed pairs give the same kept pairs, in the same order, and the same count of
    distinct candidates as windows of every row; every run sorts at most the budget (or
    one window's pairs)."""
    sp, n = _spill_with_parts(tmp_path, [37] * 12)
    rng = np.random.default_rng(1)
    left = rng.integers(0, n - 1, 5000)
    right = left + 1 + rng.integers(0, 50, 5000) % (n - 1 - left)
    codes = (left.astype(np.uint64) << np.uint64(32)) | right.astype(np.uint64)
    chunks = lambda: iter(np.array_split(np.concatenate([codes, codes[:700]]), 9))  # noqa: E731 (repeats)
    keep = lambda l, r: (l + r) % 3 != 0  # noqa: E731
    whole, total = sp.pair_runs(chunks(), n + 1, keep)
    want = whole.slice(0, len(whole))  # read now: the next call writes its files in the same folder
    sorted_sizes = []
    real = SP.sorted_unique
    monkeypatch.setattr(SP, "sorted_unique", lambda a: (sorted_sizes.append(len(a)), real(a))[1])
    runs, total_runs = sp.pair_runs(chunks(), 37, keep, max_pairs=600)
    assert total_runs == total == len(np.unique(codes))
    assert len(runs) == len(want[0]) and len(runs.files) > 3
    assert all(np.array_equal(a, b) for a, b in zip(runs.slice(0, len(runs)), want))
    filed_per_window = np.bincount(np.concatenate([left, left[:700]]) // 37)
    assert max(sorted_sizes) <= max(600, int(filed_per_window.max()))


def test_spilled_plan_with_tiny_budgets_equals_process(tmp_path, monkeypatch):
    """The local executor's spilled plan with every working set made tiny - key chunks,
    intersection steps, pair windows and runs, sketch windows, band-entry runs and
    verification batches - on a table of many clusters (exact copies, near copies,
    copies with other answers, crossing every part) decides as `process` on the whole
    table: same kept rows, rejects and stats. Its exact verification makes ONE pass over
    the parts (one Refine, `refine_keys` once per part holding a paired row, each
    asked row once), then verifies 4+ batches from the filed shingles."""
    table = handmade(n=400, seed=11)
    cfg = {"kind": "dedup", "method": "minhash", "view": "user", "threshold": 0.5}
    whole = DedupStage(load_dataclass(DedupConfig, cfg, "s"), _ctx(tmp_path)).process(table)
    assert whole.dropped.height > 50
    for name, value in (("SET_CHUNK", 40), ("QUERY_STEP", 16), ("SPILL_PAIR_ROWS", 8), ("SPILL_PAIRS", 64),
                        ("SPILL_WINDOW_BYTES", 32 * 128), ("SPILL_BUCKET_ENTRIES", 200)):
        monkeypatch.setattr(S, name, value)
    refines, calls, taken = [], [], []
    real_finish, real_refine, real_take = DedupStage.finish_plan, DedupStage.refine_keys, SP.ShingleStore.take
    monkeypatch.setattr(DedupStage, "finish_plan",
                        lambda self, r, e: (refines.append(r.rows.copy()), real_finish(self, r, e))[1])
    monkeypatch.setattr(DedupStage, "refine_keys",
                        lambda self, part, rows, first, ask="": (calls.append((first, rows.copy(), ask)),
                                                                 real_refine(self, part, rows, first, ask))[1])
    monkeypatch.setattr(SP.ShingleStore, "take", lambda self, b: (taken.append(b.copy()), real_take(self, b))[1])
    st = DedupStage(load_dataclass(DedupConfig, {**cfg, "verify_shingles": 300}, "s"), _ctx(tmp_path))
    kept, dropped, stats, spill, reject_frame = _executor_planned(tmp_path, st, table, 50, "tiny")
    # one pass over the parts, then an empty Refine (no part read) that lets the runner free it
    assert [len(r) > 0 for r in refines] == [True, False]
    firsts = [f for f, _, _ in calls]
    assert len(firsts) == len(set(firsts)) > 3  # each part at most once
    asked = np.concatenate([r for _, r, _ in calls])
    assert np.array_equal(asked, refines[0])  # each paired row asked once, in row order
    assert all(a.startswith(S.STORE_ASK) for _, _, a in calls)
    assert len(taken) > 3  # the batches, read from the filed shingles
    assert set(np.concatenate(taken).tolist()) == set(refines[0].tolist())
    assert kept.equals(whole.kept)
    assert dropped.equals(reject_frame(st.name, whole.dropped))
    assert stats == json.loads(json.dumps(whole.stats, default=str))
    assert not spill.exists()


def test_shingle_store_reads_what_was_filed_and_refuses_a_mismatch(tmp_path):
    """`write_shingles` per part then `ShingleStore.take` of any sorted subset gives each
    row's own shingles in row order; files that do not match the asked rows or counts
    (a stale or missing part) are an error, not a silent miss."""
    rng = np.random.default_rng(2)
    rows = np.sort(rng.choice(1000, 120, replace=False)).astype(np.int64)
    counts = rng.integers(0, 9, len(rows))
    counts[5] = 0
    sh = rng.integers(0, 1 << 32, int(counts.sum()), dtype=np.uint64).astype(np.uint32)
    ends = np.cumsum(counts)
    own = {int(r): sh[e - c:e] for r, e, c in zip(rows, ends, counts)}
    folder = tmp_path / "sh"
    for lo in range(0, 1000, 300):  # parts of 300 rows
        sel = (rows >= lo) & (rows < lo + 300)
        part_rows = rows[sel]
        SP.write_shingles(folder, lo, part_rows, np.concatenate([own[int(r)] for r in part_rows] or [np.zeros(0, np.uint32)]),
                          counts[sel])
    store = SP.ShingleStore(folder, rows, counts)
    for batch in (rows, rows[::7], rows[40:41], rows[:0]):
        got, cnt = store.take(batch)
        assert cnt.tolist() == [len(own[int(r)]) for r in batch]
        assert got.tolist() == [int(x) for r in batch for x in own[int(r)]]
    with pytest.raises(RuntimeError, match="does not match"):
        SP.ShingleStore(folder, rows, counts + 1)
    with pytest.raises(RuntimeError, match="rows filed"):
        SP.ShingleStore(folder, np.concatenate([rows, [2000]]), np.concatenate([counts, [1]]))
    store.remove()
    assert not list(folder.glob("*.npy"))
