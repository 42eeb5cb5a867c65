"""Dedup keys spilled to disk as parts are keyed, so that the plan holds a budget, not rows.

The streaming runner (curate/pipeline/executor.py, `LocalExecutor._planned`) hands each
part's keys to `DedupStage.spill_keys`, which writes them here (`KeySpill.add`) instead of
returning them; `plan` then reads back only what each step needs:

  keys-IIIII.parquet   the part's small key columns (hash, keep-rule keys, id, source,
                       has-a-shingle, shingle count, `_row`): read a column at a time
                       (the exact hash: 8 B a row), or only the rows of clusters of 2+
                       (`rows`) for the keep rule
  bands-IIIII.npy      MinHash band keys (u64) of the part's rows that have a shingle,
  brows-IIIII.npy      with each one's global row (u32), ordered by the key's top byte
  boffs-IIIII.npy      (one of SLICES = 256 slices; 257 offsets): `band_slices` yields
                       the (key, row) entries of a run of consecutive slices over all
                       parts, at most `entries` at a time (a bucket lies in one slice)
  sig-IIIII.npy        the 1-byte sketch (verify_by = "exact") or the signature
                       ("estimate") of each row: `pair_values` reads it in windows of
                       consecutive parts, two windows at a time
  shingles/sh{v,o,r}-RRRRRRRRRRRR.npy
                       exact verification: the shingle hashes (u32), offsets (i64) and
                       global rows (i64) of the rows of a part (named by its first row)
                       that are in some candidate pair, written by `refine_keys` in the
                       plan's one pass over the parts (`write_shingles`); each
                       verification batch reads its rows' shingles (`ShingleStore.take`)

What is held at once: one run of slices (entries x ~60 B while sorted and paired), two
sketch windows (`window_bytes` each), and per row only fixed-width arrays the plan needs
whole (has-a-shingle 1 B, shingle count 4 B, exact hash 8 B), plus the candidate pairs
(8 B each, 16 B while verified) and the rows of clusters of 2+. Files are plain .npy (read
with `allow_pickle=False`) and Parquet, under the stage's folder in the run directory;
the runner removes the folder when the stage is done and starts a fresh one when a killed
run left one (keys are recomputed: resume is at stage granularity for planned stages).

Trade-off: the paired rows' shingles go to disk once (4 B a shingle) so that the
verification's batches need no pass over the parts each (before issue #19's h1k round: a
pass per batch, quadratic in the input on records that share text); every run of slices
opens every part's band files (parts x runs reads of a
slice range each, through a memory map released after the copy), and a pair whose rows
lie in windows far apart costs a window load: I/O grows with (windows)^2 in the worst
case, against memory that no longer grows with rows x bands.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import polars as pl

SLICES = 256  # band keys are filed by their top byte


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """`np.unique(a)` (sorted distinct values) for integer arrays, by a sort and one
    compare with the neighbour. numpy 2.3+ answers `np.unique` on integers through a hash
    table that is far slower on large arrays (measured on numpy 2.4, 30M uint64 codes:
    44 s against 2.4 s CPU for this); the values are identical (tests/test_dedup_speed.py)."""
    s = np.sort(np.asarray(a).ravel())
    if len(s) < 2:
        return s
    keep = np.empty(len(s), dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def _load(path: Path, lo: int | None = None, hi: int | None = None) -> np.ndarray:
    """Rows [lo, hi) of an .npy file, copied out of a memory map that is then released
    (mapped pages would count in the process's RSS while mapped)."""
    m = np.load(path, mmap_mode="r", allow_pickle=False)
    out = np.array(m[lo:hi]) if lo is not None else np.array(m)
    del m
    return out


class KeySpill:
    """The spilled keys of one dedup stage run (see the module doc)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.parts: list[dict] = []  # {"first", "rows", "bands": bool, "sig": bool}

    @property
    def rows(self) -> int:
        return sum(p["rows"] for p in self.parts)

    def _path(self, stem: str, i: int, ext: str = "npy") -> Path:
        return self.folder / f"{stem}-{i:05d}.{ext}"

    def add(self, first: int, frame: pl.DataFrame, band: np.ndarray | None = None, has: np.ndarray | None = None,
            sig: np.ndarray | None = None) -> None:
        """Part `len(parts)`: its key columns `frame` (global rows from `first`, in order),
        and for MinHash its band keys (rows x bands, only rows where `has` are filed) and
        its sketch or signature."""
        i, n = len(self.parts), frame.height
        if self.parts and first != self.parts[-1]["first"] + self.parts[-1]["rows"]:
            raise ValueError(f"spilled keys out of order: part {i} starts at row {first}")
        if first + n > 1 << 32:
            raise ValueError("minhash dedup packs row numbers in 32 bits: at most 4,294,967,296 rows")
        frame.write_parquet(self._path("keys", i, "parquet"), compression="lz4", statistics=False)
        if band is not None:
            sel = np.flatnonzero(has) if has is not None else np.arange(n)
            k = np.ascontiguousarray(band[sel]).ravel()  # (row, band) row after row
            r = np.repeat((sel + first).astype(np.uint32), band.shape[1])
            top = (k >> np.uint64(56)).astype(np.uint8)
            order = np.argsort(top, kind="stable")
            np.save(self._path("bands", i), k[order], allow_pickle=False)
            np.save(self._path("brows", i), r[order], allow_pickle=False)
            offs = np.concatenate([[0], np.cumsum(np.bincount(top, minlength=SLICES))]).astype(np.int64)
            np.save(self._path("boffs", i), offs, allow_pickle=False)
        if sig is not None:
            np.save(self._path("sig", i), np.ascontiguousarray(sig), allow_pickle=False)
        self.parts.append({"first": int(first), "rows": int(n), "bands": band is not None, "sig": sig is not None})

    # ---- key columns -------------------------------------------------------------------
    def schema(self) -> list[str]:
        return list(pl.read_parquet_schema(self._path("keys", 0, "parquet"))) if self.parts else []

    def column(self, name: str) -> pl.Series:
        """One key column over every row, in row order."""
        cols = [pl.read_parquet(self._path("keys", i, "parquet"), columns=[name]).to_series()
                for i in range(len(self.parts))]
        return pl.concat(cols, rechunk=True) if len(cols) > 1 else cols[0]

    def rows_of(self, columns: list[str], rows: np.ndarray) -> pl.DataFrame:
        """The key `columns` of the global `rows` (sorted, distinct), in that order: one
        part's columns at a time, then only the asked rows are kept."""
        rows = np.asarray(rows, dtype=np.int64)
        out = []
        for i, p in enumerate(self.parts):
            a = int(np.searchsorted(rows, p["first"], side="left"))
            b = int(np.searchsorted(rows, p["first"] + p["rows"], side="left"))
            if b <= a and out:
                continue
            df = pl.read_parquet(self._path("keys", i, "parquet"), columns=columns)
            out.append(df[pl.Series(rows[a:b] - p["first"])] if b > a else df.clear())
        if not out:
            return pl.DataFrame(schema={c: pl.Null for c in columns})
        return pl.concat(out, how="vertical_relaxed", rechunk=True)

    # ---- band keys ---------------------------------------------------------------------
    def band_slices(self, entries: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(keys u64, rows int64) of runs of consecutive slices over all parts, each run at
        most `entries` entries (at least one slice): every entry of a key is in its run."""
        filed = [i for i, p in enumerate(self.parts) if p["bands"]]
        if not filed:
            return
        offs = [_load(self._path("boffs", i)) for i in filed]
        per_slice = np.sum([np.diff(o) for o in offs], axis=0)
        lo = 0
        while lo < SLICES:
            hi, total = lo + 1, int(per_slice[lo])
            while hi < SLICES and total + int(per_slice[hi]) <= entries:
                total += int(per_slice[hi])
                hi += 1
            if total:
                ks, rs = [], []
                for i, o in zip(filed, offs):
                    a, b = int(o[lo]), int(o[hi])
                    if b > a:
                        ks.append(_load(self._path("bands", i), a, b))
                        rs.append(_load(self._path("brows", i), a, b).astype(np.int64))
                yield np.concatenate(ks), np.concatenate(rs)
                del ks, rs
            lo = hi

    # ---- candidate pairs: sorted runs on disk, by the left row's window -----------------
    def windows(self, rows: int) -> np.ndarray:
        """First global row of each window of consecutive parts of about `rows` rows (at
        least one part each), plus the total rows at the end."""
        starts, acc = [], 0
        for p in self.parts:
            if not starts or (acc and acc + p["rows"] > rows):
                starts.append(p["first"])
                acc = 0
            acc += p["rows"]
        return np.array((starts or [0]) + [self.rows], dtype=np.int64)

    def pair_runs(self, codes: Iterator[np.ndarray], window_rows: int, keep=None,
                  max_pairs: int | None = None) -> tuple["PairSeq", int]:
        """Candidate pairs (left << 32 | right, from `codes`, repeats allowed) filed on disk by
        the window of `window_rows` rows that holds their left row, then per run of
        consecutive windows of at most `max_pairs` filed pairs (at least one window; None:
        one window per run): sorted and de-duplicated, counted, and filtered by
        `keep(left, right) -> bool mask` when given. Returns the kept pairs (on disk, in
        the order of one global sort by (left, right): `PairSeq`) and the number of
        distinct candidates. Holds one run's pairs (8 B each, twice while sorted, plus
        what `keep` takes: ~50 B a pair for the sketch pre-check).

        Trade-off: candidates grow faster than rows where many rows share a part of their
        text (the scale benchmark's records: 4.4 a row at 1M, 6.4 at 2M), so a window of
        fixed rows would hold more pairs the larger the input; runs of at most `max_pairs`
        keep it flat, for more files (one per window) and more runs (each `keep` call loads
        the sketch windows its pairs touch)."""
        bounds = self.windows(window_rows)
        nw = len(bounds) - 1
        files = [self.folder / f"pairs-{w:05d}.u64" for w in range(nw)]
        for f in files:
            f.write_bytes(b"")
        for code in codes:
            w = np.searchsorted(bounds, (code >> np.uint64(32)).astype(np.int64), side="right") - 1
            order = np.argsort(w, kind="stable")
            cuts = np.searchsorted(w[order], np.arange(nw + 1))
            code = code[order]
            for x in range(nw):
                if cuts[x + 1] > cuts[x]:
                    with open(files[x], "ab") as fh:
                        code[cuts[x]:cuts[x + 1]].tofile(fh)
            del code, order, w
        filed = [f.stat().st_size // 8 for f in files]
        seq, total, w = PairSeq(), 0, 0
        while w < nw:
            end, n = w + 1, filed[w]
            while max_pairs is not None and end < nw and n + filed[end] <= max_pairs:
                n += filed[end]
                end += 1
            if max_pairs is None:
                end = w + 1
            raw = [np.fromfile(f, dtype=np.uint64) for f in files[w:end]]
            c = sorted_unique(np.concatenate(raw) if len(raw) > 1 else raw[0])
            del raw
            for f in files[w:end]:
                f.unlink()
            total += len(c)
            if keep is not None and len(c):
                c = c[keep((c >> np.uint64(32)).astype(np.int64), (c & np.uint64(0xFFFFFFFF)).astype(np.int64))]
            out = self.folder / f"kept-{w:05d}.u64"
            c.tofile(out)
            seq.add(out, len(c))
            del c
            w = end
        return seq, total

    # ---- sketches / signatures ----------------------------------------------------------
    def has_sig(self) -> bool:
        return bool(self.parts) and all(p["sig"] for p in self.parts)

    def pair_values(self, left: np.ndarray, right: np.ndarray, fn, window_bytes: int) -> np.ndarray:
        """`fn(sig, l, r)` for the pairs (left[i], right[i]), with `sig` the rows of at most
        two windows of consecutive parts (each window up to `window_bytes` of sketch, at
        least one part) and l, r the pairs' positions in it: the same values as
        `fn(sig of every row, left, right)`, holding two windows."""
        if not len(left):
            return fn(np.zeros((0, 1), np.uint8), left, right)
        m = np.load(self._path("sig", 0), mmap_mode="r", allow_pickle=False)
        width = m.dtype.itemsize * int(np.prod(m.shape[1:]))  # bytes a row
        del m
        starts, acc = [0], 0
        for i, p in enumerate(self.parts):  # windows of parts
            if acc and (acc + p["rows"]) * width > window_bytes:
                starts.append(i)
                acc = 0
            acc += p["rows"]
        firsts = np.array([self.parts[s]["first"] for s in starts] + [self.rows], dtype=np.int64)
        # one int32 (left window, right window) code a pair, sorted stably (the order of a
        # lexsort by (left window, right window)): ~12 B a pair here instead of ~40
        nwin = len(starts)
        code = (np.searchsorted(firsts, left, side="right") - 1).astype(np.int64 if nwin * nwin >= 1 << 31 else np.int32)
        code *= nwin
        code += (np.searchsorted(firsts, right, side="right") - 1).astype(code.dtype)
        order = np.argsort(code, kind="stable")
        key = code[order]
        del code
        cuts = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1], [True]]))
        wins = key[cuts[:-1]].astype(np.int64)
        del key
        out = None
        cache: dict[int, np.ndarray] = {}

        def window(w: int) -> np.ndarray:
            if w not in cache:
                if len(cache) >= 2:
                    cache.pop(next(iter(cache)))
                end = starts[w + 1] if w + 1 < len(starts) else len(self.parts)
                cache[w] = np.concatenate([_load(self._path("sig", i)) for i in range(starts[w], end)])
            return cache[w]

        for g, (a, b) in enumerate(zip(cuts[:-1].tolist(), cuts[1:].tolist())):
            sel = order[a:b]
            x, y = divmod(int(wins[g]), nwin)
            if x == y:
                sig, l, r = window(x), left[sel] - firsts[x], right[sel] - firsts[x]
            else:
                wa = window(x)
                sig = np.concatenate([wa, window(y)])
                l, r = left[sel] - firsts[x], right[sel] - firsts[y] + len(wa)
            v = fn(sig, l, r)
            del sig
            if out is None:
                out = np.empty(len(left), dtype=v.dtype)
            out[sel] = v
        return out


class PairSeq:
    """A sequence of pairs (left << 32 | right codes) in files of consecutive runs, read by
    position range: what verification walks batch by batch without holding every pair."""

    def __init__(self):
        self.files: list[Path] = []
        self.starts = [0]

    def add(self, path: Path, count: int) -> None:
        self.files.append(Path(path))
        self.starts.append(self.starts[-1] + int(count))

    def __len__(self) -> int:
        return self.starts[-1]

    def slice(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(left, right) int64 of pairs [a, b)."""
        b = min(b, len(self))
        parts = []
        for i, f in enumerate(self.files):
            lo, hi = self.starts[i], self.starts[i + 1]
            x, y = max(a, lo), min(b, hi)
            if y > x:
                parts.append(np.fromfile(f, dtype=np.uint64, count=y - x, offset=(x - lo) * 8))
        c = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
        return (c >> np.uint64(32)).astype(np.int64), (c & np.uint64(0xFFFFFFFF)).astype(np.int64)


# ---- shingle sets of the rows in verified candidate pairs, fetched once ------------------
SHINGLE_DIR = "shingles"  # under the KeySpill folder: one file triple per part that holds an asked row


def write_shingles(folder: Path, first_row: int, rows: np.ndarray, sh: np.ndarray, counts: np.ndarray) -> None:
    """Write one part's asked rows' shingle hashes (`sh`, u32 row after row, `counts` per
    row) under `folder` as three .npy files named by the part's first global row:
    values (u32), offsets (i64, rows + 1) and the global rows (i64). Each file is written
    under a temporary name and renamed, the rows last, so a file triple with its rows
    present is whole (a worker that dies mid-write and is retried rewrites it)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    for stem, arr in (("shv", np.asarray(sh, dtype=np.uint32)), ("sho", offsets),
                      ("shr", np.asarray(rows, dtype=np.int64))):
        final = folder / f"{stem}-{int(first_row):012d}.npy"
        tmp = folder / f".{stem}-{int(first_row):012d}.{os.getpid()}.tmp.npy"
        np.save(tmp, arr, allow_pickle=False)
        os.replace(tmp, final)


class ShingleStore:
    """The shingle hashes `write_shingles` filed for the sorted, distinct global `rows`
    (every asked row, each once, across the part files): `take(batch)` reads a batch's
    rows' shingles out of memory maps (copied, then the map released: mapped pages count
    in RSS while mapped). Holds `rows` as u32 (4 B a row in some pair) and per file its
    first position in them.

    Checked on opening: the files' rows are exactly `rows`, in order, and their shingle
    counts are `counts` (what `refine_keys` answered), so a missing, stale or partial
    file is an error, not a silent miss."""

    def __init__(self, folder: Path, rows: np.ndarray, counts: np.ndarray):
        self.folder = Path(folder)
        rows = np.asarray(rows, dtype=np.int64)
        counts = np.asarray(counts, dtype=np.int64)
        self.stems = sorted(p.name[4:-4] for p in self.folder.glob("shr-*.npy"))
        starts, pos = [], 0
        for stem in self.stems:
            r = _load(self.folder / f"shr-{stem}.npy")
            o = _load(self.folder / f"sho-{stem}.npy")
            if (pos + len(r) > len(rows) or not np.array_equal(r, rows[pos:pos + len(r)])
                    or len(o) != len(r) + 1 or not np.array_equal(np.diff(o), counts[pos:pos + len(r)])):
                raise RuntimeError(f"dedup shingle store {self.folder}: file shr-{stem}.npy does not match "
                                   f"the rows asked (a stale or partial file)")
            starts.append(pos)
            pos += len(r)
        if pos != len(rows):
            raise RuntimeError(f"dedup shingle store {self.folder}: {pos} rows filed for {len(rows)} asked")
        self.starts = np.array(starts + [pos], dtype=np.int64)
        self.rows = rows.astype(np.uint32)  # global rows < 2**32 (KeySpill.add): 4 B a row held

    def take(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shingle hashes u32 row after row, counts i64) of the sorted, distinct global rows
        `batch` (all in the store), in that order."""
        batch = np.asarray(batch, dtype=np.int64)
        pos = np.searchsorted(self.rows, batch.astype(np.uint32))
        if len(batch) and (pos[-1] >= len(self.rows) or not np.array_equal(self.rows[np.minimum(pos, len(self.rows) - 1)], batch)):
            raise RuntimeError(f"dedup shingle store {self.folder}: a row was not filed")
        f = np.searchsorted(self.starts, pos, side="right") - 1
        cuts = np.flatnonzero(np.concatenate([[True], f[1:] != f[:-1], [True]])) if len(f) else np.zeros(1, np.int64)
        shs, cnts = [], []
        for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
            stem = self.stems[int(f[a])]
            local = pos[a:b] - self.starts[f[a]]
            o = np.load(self.folder / f"sho-{stem}.npy", mmap_mode="r", allow_pickle=False)
            lo, hi = np.array(o[local]), np.array(o[local + 1])
            del o
            cnt = hi - lo
            total = int(cnt.sum())
            idx = np.arange(total, dtype=np.int64) + np.repeat(lo - (np.cumsum(cnt) - cnt), cnt)
            v = np.load(self.folder / f"shv-{stem}.npy", mmap_mode="r", allow_pickle=False)
            out = np.empty(total, dtype=np.uint32)
            np.take(v, idx, out=out)
            del v, idx
            shs.append(out)
            cnts.append(cnt)
        sh = np.concatenate(shs) if shs else np.zeros(0, np.uint32)
        return sh, (np.concatenate(cnts) if cnts else np.zeros(0, np.int64))

    def remove(self) -> None:
        """The store's files gone (the runner removes the whole spill folder later too)."""
        for p in self.folder.glob("sh?-*.npy"):
            p.unlink()
