"""MinHash near-duplicate detection: curate's dedup stage against datatrove's MinHash
pipeline and text-dedup's MinHash, side by side in one process, on the same records with
the same num_perm, n-gram size, threshold and LSH bands x rows. Prints records/s, the
ratio to ours, and each tool's precision and recall of duplicate pairs against exact
(brute-force) Jaccard on a subsample.

Peers go in their own venv (they pin their own dependencies), with curate's few
runtime needs:

    python3.11 -m venv /work/venv-bench-dedup
    /work/venv-bench-dedup/bin/pip install datatrove text-dedup tokenizers "xxhash<4" polars pyarrow datasketch numpy

(datatrove 0.10.1 imports `tokenizers` from its dedup package and hashes `str` shingles
with xxhash, which xxhash 4.x refuses: hence the two extra pins.)

Run (from the repository root; curate is imported from the checkout):

    /work/venv-bench-dedup/bin/python benchmarks/dedup_bench.py --records 100000
    /work/venv-bench-dedup/bin/python benchmarks/dedup_bench.py --million   # ours only: time + peak memory

A peer that is not installed is skipped with a message; the script still runs ours.

Corpus (`--corpus`): `real` (default) is real instruction-data sentences with their
punctuation, digits and code, recombined into texts and given planted variants (word
edits, upper-cased words, doubled spaces); the ground truth is exact Jaccard of word
n-grams of the lower-cased, whitespace-split text (punctuation kept: "2+3" is not "2*3").
`words` is the earlier corpus: lowercase, punctuation-free word sequences, where every
normalisation agrees.

Fairness notes:
  * Every tool sees the same raw texts and its own default normalisation (curate's
    default; text-dedup lower-cases and splits on non-alphanumerics; datatrove's
    default simplification); datatrove is given a whitespace word tokenizer (its
    English default is NLTK's, which needs a download). `--normalize` sets curate's.
  * Memory: each tool's peak RSS above the process's RSS just before it (sampled every
    20 ms), so what an earlier tool left allocated is not counted against the next.
  * datatrove's four steps run in this process as one task (its executor parallelises
    over tasks/files); text-dedup runs its own CLI entry point with --num_proc 1 (it
    forks, which is unsafe next to polars' thread pool). Ours is one process whose
    polars group-bys use the machine's cores; numpy parts are single-threaded.
  * Peers keep their default hash functions (datatrove: xxhash 64-bit; text-dedup: sha1).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get("CURATE_SHARED_DATA", ROOT.parent / "shared" / "data"))


# ---- data ----------------------------------------------------------------------------------

def vocabulary(seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Real English word frequencies from ../shared/data when present (Zipf-like, so
    unrelated documents share common n-grams as real ones do), else a synthetic Zipf
    vocabulary."""
    import re

    counts: dict[str, int] = defaultdict(int)
    files = [SHARED / "formats" / "alpaca_llamafactory_demo.json", SHARED / "evalsets" / "gsm8k_test.jsonl",
             SHARED / "formats" / "messages_llamafactory_kto_demo.json"]
    for f in files:
        if f.is_file():
            for w in re.findall(r"[a-z]+", f.read_text(encoding="utf-8").lower()):
                counts[w] += 1
    if len(counts) > 2000:
        words = sorted(counts, key=lambda w: (-counts[w], w))
        freq = np.array([counts[w] for w in words], dtype=np.float64)
        origin = f"word frequencies of {sum(f.is_file() for f in files)} real files in {SHARED}"
    else:
        rng = np.random.default_rng(seed)
        words = sorted({"".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(2, 10))) for _ in range(20000)})
        freq = 1.0 / np.arange(1, len(words) + 1)
        origin = "synthetic Zipf vocabulary (../shared/data absent)"
    return np.array(words, dtype=object), freq / freq.sum(), origin


def corpus(n: int, seed: int) -> tuple[list[str], np.ndarray, str]:
    """n texts of 20-80 words; 30% of base texts get 1-3 planted variants with 0-8 edits
    (substitutions, deletions, insertions), so similarities span the threshold.
    Returns texts, a group id per text (its base), and where the words came from."""
    words, p, origin = vocabulary(seed)
    rng = np.random.default_rng(seed)
    lengths = rng.integers(20, 81, size=n)
    pool = rng.choice(len(words), size=int(lengths.sum()), p=p)
    offs = np.concatenate([[0], np.cumsum(lengths)])
    docs: list[np.ndarray] = []
    groups: list[int] = []
    cdf = p.cumsum()
    cdf /= cdf[-1]

    def draw() -> int:  # what rng.choice(len(words), p=p) does, without rebuilding the cdf per call
        return int(cdf.searchsorted(rng.random(), side="right"))

    g = 0
    i = 0
    while len(docs) < n:
        base = pool[offs[i]:offs[i + 1]]
        i += 1
        docs.append(base)
        groups.append(g)
        if rng.random() < 0.3:
            for _ in range(rng.integers(1, 4)):
                if len(docs) >= n:
                    break
                v = list(base)
                for _ in range(rng.integers(0, 9)):
                    op, pos = rng.random(), rng.integers(len(v))
                    if op < 0.6:
                        v[pos] = draw()
                    elif op < 0.8 and len(v) > 10:
                        del v[pos]
                    else:
                        v.insert(pos, draw())
                docs.append(np.array(v))
                groups.append(g)
        g += 1
    order = rng.permutation(n)  # copies are not next to their originals
    texts = [" ".join(words[docs[k]]) for k in order]
    return texts, np.asarray(groups)[order], origin


def real_pool() -> tuple[list[str], str]:
    """Real instruction-data texts with their punctuation, digits and code: every prompt,
    input and answer of sample_data/raw/qa_alpaca.jsonl and, when present, ../shared/data's
    Alpaca and messages demos and GSM8K (math: "48/2 = 24", where punctuation carries the
    meaning), split into sentences."""
    import re

    texts: list[str] = []
    for line in (ROOT / "sample_data" / "raw" / "qa_alpaca.jsonl").read_text(errors="replace").splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict):
            texts += [v for k in ("instruction", "input", "output") if isinstance(v := r.get(k), str)]
    used = ["sample_data/raw/qa_alpaca.jsonl"]
    for name in ("formats/alpaca_llamafactory_demo.json", "formats/messages_llamafactory_kto_demo.json"):
        f = SHARED / name
        if f.is_file():
            used.append(name)
            for r in json.loads(f.read_text(encoding="utf-8")):
                texts += [r[k] for k in ("instruction", "input", "output") if isinstance(r.get(k), str)]
                texts += [m["content"] for m in r.get("messages", []) if isinstance(m.get("content"), str)]
    f = SHARED / "evalsets" / "gsm8k_test.jsonl"
    if f.is_file():
        used.append("evalsets/gsm8k_test.jsonl")
        for line in f.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            texts += [r["question"], r["answer"]]
    sentences = sorted({s.strip() for t in texts for s in re.split(r"(?<=[.!?])\s+|\n+", t) if len(s.split()) >= 4})
    return sentences, f"{len(sentences):,} distinct sentences of {', '.join(used)}"


def real_corpus(n: int, seed: int) -> tuple[list[str], np.ndarray, str]:
    """n texts of 2-6 real sentences each (so unrelated texts share whole sentences, as
    real instruction sets do), 30% of base texts with 1-3 planted variants: 0-8 word edits
    (substitutions, deletions, insertions of words of the pool), random upper-casing of
    words and doubled spaces (which case and whitespace normalisation undo)."""
    sentences, origin = real_pool()
    words = np.array(sorted({w for s in sentences for w in s.split()}), dtype=object)
    rng = np.random.default_rng(seed)
    docs: list[list[str]] = []
    groups: list[int] = []
    g = 0
    while len(docs) < n:
        base = " ".join(sentences[i] for i in rng.integers(0, len(sentences), rng.integers(2, 7))).split()
        docs.append(base)
        groups.append(g)
        if rng.random() < 0.3:
            for _ in range(rng.integers(1, 4)):
                if len(docs) >= n:
                    break
                v = list(base)
                for _ in range(rng.integers(0, 9)):
                    op, pos = rng.random(), int(rng.integers(len(v)))
                    if op < 0.6:
                        v[pos] = str(words[rng.integers(len(words))])
                    elif op < 0.8 and len(v) > 10:
                        del v[pos]
                    else:
                        v.insert(pos, str(words[rng.integers(len(words))]))
                for _ in range(rng.integers(0, 3)):
                    pos = int(rng.integers(len(v)))
                    v[pos] = v[pos].upper()
                docs.append(v)
                groups.append(g)
        g += 1
    order = rng.permutation(n)
    texts = []
    for k in order:
        d = docs[k]
        sep = ["  " if rng.random() < 0.02 else " " for _ in d]
        texts.append("".join(w + s for w, s in zip(d, sep)).strip())
    return texts, np.asarray(groups)[order], origin


def truth_text(text: str) -> str:
    """The text the ground truth is computed on: lower case, whitespace-separated words
    with their punctuation (what makes two texts near-duplicates is their words, digits
    and operators, not their case or spacing)."""
    return " ".join(text.lower().split())


def records_table(texts: list[str]):
    """The canonical record table (user prompt = text), built column-wise."""
    import polars as pl

    n = len(texts)
    return pl.DataFrame({"prompt": texts}).select(
        pl.format("r{}", pl.int_range(n).cast(pl.String).str.zfill(8)).alias("id"),
        pl.lit("bench").alias("source"),
        pl.lit("t").alias("task"),
        pl.concat_list(
            pl.struct(pl.lit("user").alias("role"), pl.col("prompt").alias("content")),
            pl.struct(pl.lit("assistant").alias("role"), pl.lit("ok").alias("content")),
        ).alias("messages"),
        pl.lit("{}").alias("meta"),
        pl.format("bench:{}", pl.int_range(n)).alias("origin"),
    )


class RssSampler:
    """Highest resident set size seen while the `with` block runs (polled every 20 ms),
    so the stage's own peak is measured, not whatever built its input."""

    def __enter__(self):
        import threading

        self.peak = current_rss_mib()
        self._stop = threading.Event()

        def poll():
            while not self._stop.wait(0.02):
                self.peak = max(self.peak, current_rss_mib())

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_mib())


# ---- ground truth ----------------------------------------------------------------------------

def subsample(groups: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Half the subsample from groups with planted duplicates (whole groups), half random."""
    rng = np.random.default_rng(seed)
    uniq, counts = np.unique(groups, return_counts=True)
    multi = rng.permutation(uniq[counts > 1])
    by_group = defaultdict(list)
    for i, gid in enumerate(groups):
        by_group[gid].append(i)
    picked: list[int] = []
    for gid in multi:
        if len(picked) >= size // 2:
            break
        picked.extend(by_group[gid])
    rest = np.setdiff1d(np.arange(len(groups)), picked)
    picked.extend(rng.choice(rest, size=min(size - len(picked), len(rest)), replace=False).tolist())
    return np.array(sorted(set(picked)))


def shingles(text: str, n: int) -> set:
    toks = truth_text(text).split()
    return {tuple(toks[i:i + n]) for i in range(max(len(toks) - n + 1, 1))}


def true_pairs(texts: list[str], idx: np.ndarray, n: int, threshold: float) -> set:
    """Exact Jaccard of every pair in the subsample: pairs sharing no shingle have 0, so
    an inverted index enumerates exactly the pairs with a non-zero intersection."""
    sets = {int(i): shingles(texts[i], n) for i in idx}
    post = defaultdict(list)
    for i, s in sets.items():
        for sh in s:
            post[sh].append(i)
    inter: dict[tuple[int, int], int] = defaultdict(int)
    for docs in post.values():
        for a in range(len(docs)):
            for b in range(a + 1, len(docs)):
                inter[(docs[a], docs[b]) if docs[a] < docs[b] else (docs[b], docs[a])] += 1
    return {p for p, k in inter.items() if k / (len(sets[p[0]]) + len(sets[p[1]]) - k) >= threshold}


def found_pairs(labels: np.ndarray, idx: np.ndarray) -> set:
    by = defaultdict(list)
    for i in idx:
        by[labels[i]].append(int(i))
    return {(m[a], m[b]) for m in by.values() for a in range(len(m)) for b in range(a + 1, len(m))}


def removal_pr(texts: list[str], labels: np.ndarray, removed: np.ndarray, idx: np.ndarray, truth: set,
               n: int, threshold: float) -> tuple[float, float]:
    """Removal precision and recall over the subsample. A removed row is right when some
    other member of the cluster the tool put it in is a true near-duplicate of it (exact
    Jaccard >= threshold, computed here for every removed row of the subsample). Of each
    group of subsample rows joined by true pairs, all but one should be removed."""
    members = defaultdict(list)
    for i, lab in enumerate(labels):
        members[lab].append(i)
    gone = [int(i) for i in idx if removed[i]]
    right = 0
    for i in gone:
        a = shingles(texts[i], n)
        for j in members[labels[i]]:
            if j != i:
                b = shingles(texts[j], n)
                if len(a & b) / len(a | b) >= threshold:
                    right += 1
                    break
    dup_rows = {i for p in truth for i in p}
    parent = {i: i for i in dup_rows}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in truth:
        parent[find(a)] = find(b)
    should = len(dup_rows) - len({find(i) for i in dup_rows})
    found = len(set(gone) & dup_rows)
    return (right / len(gone) if gone else 1.0), (min(1.0, found / should) if should else 1.0)


def pr(found: set, truth: set) -> tuple[float, float]:
    tp = len(found & truth)
    return (tp / len(found) if found else 1.0), (tp / len(truth) if truth else 1.0)


# ---- tools -----------------------------------------------------------------------------------

def run_ours(texts, args, bands, rows, table=None):
    from curate.stages.base import StageContext
    from curate.stages.dedup.stage import Config, DedupStage

    table = records_table(texts) if table is None else table
    extra = {"normalize": args.normalize.split(",")} if args.normalize else {}
    cfg = Config(kind="dedup", method="minhash", threshold=args.threshold, num_perm=args.num_perm, ngram=args.ngram,
                 bands=bands, rows=rows, seed=1, **extra)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = StageContext(run_dir=Path(tmp), config_dir=Path(tmp), seed=1, stage_dir=Path(tmp), log=lambda m: None)
        t0 = time.perf_counter()
        res = DedupStage(cfg, ctx).process(table)
        dt = time.perf_counter() - t0
    pos = {rid: i for i, rid in enumerate(table["id"].to_list())}
    labels = np.arange(table.height)
    for rid, kept in zip(res.dropped["id"].to_list(), res.dropped["_detail"].to_list()):
        labels[pos[rid]] = pos[kept]
    return dt, labels, res.dropped.height, labels != np.arange(table.height)


def run_datatrove(texts, args, bands, rows):
    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.utils.word_tokenizers import WordTokenizer

    class Whitespace(WordTokenizer):
        def word_tokenize(self, text):
            return text.split()

        def sent_tokenize(self, text):
            return [text]

        def span_tokenize(self, text):
            raise NotImplementedError

    docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
    cfg = MinhashConfig(n_grams=args.ngram, num_buckets=bands, hashes_per_bucket=rows, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        MinhashDedupSignature(output_folder=f"{tmp}/sigs", config=cfg, language=Whitespace()).run(iter(docs), 0, 1)
        step2 = MinhashDedupBuckets(input_folder=f"{tmp}/sigs", output_folder=f"{tmp}/buckets", config=cfg)
        for b in range(bands):
            out = step2.run(None, b, bands)
            if out is not None:
                for _ in out:
                    pass
        MinhashDedupCluster(input_folder=f"{tmp}/buckets", output_folder=f"{tmp}/remove", config=cfg,
                            save_cluster_id=True).run(None, 0, 1)
        kept = list(MinhashDedupFilter(input_folder=f"{tmp}/remove", load_cluster_ids=True).run(iter(docs), 0, 1))
        dt = time.perf_counter() - t0
    labels = np.arange(len(texts))
    cid = np.array([d.metadata.get("minhash_cluster_id", -1) for d in docs])
    dup = cid >= 0
    labels[dup] = len(texts) + cid[dup]
    removed = np.ones(len(texts), dtype=bool)
    removed[[int(d.id) for d in kept]] = False
    return dt, labels, len(texts) - len(kept), removed


def run_text_dedup(texts, args, bands, rows):
    import datasets
    import text_dedup.minhash as tdm

    with tempfile.TemporaryDirectory() as tmp:
        datasets.Dataset.from_dict({"text": texts}).save_to_disk(f"{tmp}/in")
        argv = ["--path", f"{tmp}/in", "--local", "--output", f"{tmp}/out", "--column", "text",
                "--num_perm", str(args.num_perm), "--threshold", str(args.threshold), "--ngram", str(args.ngram),
                "--b", str(bands), "--r", str(rows), "--num_proc", "1", "--cache_dir", f"{tmp}/cache"]
        t0 = time.perf_counter()
        tdm.main.main(args=argv, standalone_mode=False)
        dt = time.perf_counter() - t0
        kept = len(datasets.load_from_disk(f"{tmp}/out"))
    labels = np.array([tdm.uf.find(i) for i in range(len(texts))])
    return dt, labels, len(texts) - kept, labels != np.arange(len(texts))


# ---- main ------------------------------------------------------------------------------------

def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def ours_only(args) -> dict:
    """One process: build the record table, then time the stage and sample its memory."""
    from curate.stages.dedup import minhash as mh

    texts, _, origin = make_corpus(args)
    table = records_table(texts)
    del texts
    gc.collect()
    bands, rows = mh.lsh_params(args.threshold, args.num_perm)
    before = current_rss_mib()
    cpu0 = time.process_time()
    with RssSampler() as rss:
        dt, _, dropped, _ = run_ours(None, args, bands, rows, table=table)
    cpu = time.process_time() - cpu0  # all threads; on a shared machine wall time also counts waiting
    return {"records": args.records, "seconds": round(dt, 2), "records_per_s": round(args.records / dt),
            "cpu_seconds": round(cpu, 1),
            "dropped": dropped, "table_mib": round(table.estimated_size() / 2**20),
            "rss_before_mib": round(before), "stage_peak_rss_mib": round(rss.peak), "words": origin}


def make_corpus(args):
    return (real_corpus if args.corpus == "real" else corpus)(args.records, args.seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--ngram", type=int, default=3)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--subsample", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--corpus", choices=["real", "words"], default="real",
                    help="real: sentences of real instruction data with punctuation (default); words: "
                         "lowercase punctuation-free word sequences")
    ap.add_argument("--normalize", default="", help="curate's normalize steps, comma list; empty: the default")
    ap.add_argument("--peers", default="datatrove,text-dedup", help="comma list; empty for ours only")
    ap.add_argument("--million", action="store_true", help="time ours on 1,000,000 records in a fresh process")
    ap.add_argument("--ours-only-json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.ours_only_json:
        print(json.dumps(ours_only(args)))
        return
    if args.million:
        cmd = [sys.executable, __file__, "--ours-only-json", "--records", "1000000", "--num-perm", str(args.num_perm),
               "--ngram", str(args.ngram), "--threshold", str(args.threshold), "--seed", str(args.seed),
               "--corpus", args.corpus, "--normalize", args.normalize]
        out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        print(f"curate dedup, 1,000,000 records (num_perm {args.num_perm}, {args.ngram}-gram words, "
              f"threshold {args.threshold}): {out['seconds']} s wall ({out['cpu_seconds']} s CPU), "
              f"{out['records_per_s']:,} records/s, "
              f"{out['dropped']:,} dropped; record table {out['table_mib']} MiB, process RSS "
              f"{out['rss_before_mib']} MiB before the stage, peak {out['stage_peak_rss_mib']} MiB during it "
              f"(+{out['stage_peak_rss_mib'] - out['rss_before_mib']} MiB)")
        return

    from curate.stages.dedup import minhash as mh

    bands, rows = mh.lsh_params(args.threshold, args.num_perm)
    texts, groups, origin = make_corpus(args)
    sub = subsample(groups, args.subsample, args.seed)
    truth = true_pairs(texts, sub, args.ngram, args.threshold)
    print(f"{args.records:,} records ({origin}); curate normalize "
          f"{args.normalize or 'default'}; num_perm {args.num_perm}, {args.ngram}-gram words, threshold "
          f"{args.threshold}, LSH {bands} bands x {rows} rows for every tool")
    print(f"ground truth: exact Jaccard over all pairs of a {len(sub):,}-record subsample: {len(truth):,} pairs >= "
          f"{args.threshold}")

    tools = [("curate", run_ours)]
    peers = [p for p in args.peers.split(",") if p]
    if "datatrove" in peers:
        try:
            import datatrove  # noqa: F401
            tools.append((f"datatrove {datatrove.__version__ if hasattr(datatrove, '__version__') else ''}".strip(),
                          run_datatrove))
        except ImportError:
            print("SKIP datatrove: not installed (pip install datatrove)")
    if "text-dedup" in peers:
        try:
            import text_dedup.minhash  # noqa: F401
            tools.append(("text-dedup", run_text_dedup))
        except ImportError as exc:
            print(f"SKIP text-dedup: not importable ({exc}); pip install text-dedup")
    results = {}
    for name, fn in tools:
        gc.collect()
        before = current_rss_mib()
        c0 = time.process_time()
        with RssSampler() as rss:
            dt, labels, dropped, removed = fn(texts, args, bands, rows)
        cpu = time.process_time() - c0
        mem = rss.peak - before
        p, r = removal_pr(texts, labels, removed, sub, truth, args.ngram, args.threshold)
        pp, prr = pr(found_pairs(labels, sub), truth)
        results[name] = (dt, p, r, dropped, mem, cpu)
        print(f"  {name:<16} {dt:8.1f} s ({cpu:6.1f} s CPU) {args.records / dt:>10,.0f} records/s  dropped {dropped:>7,}  "
              f"removal precision {p:.3f} recall {r:.3f}  (cluster pairs: {pp:.3f} / {prr:.3f})  "
              f"peak +{mem:,.0f} MiB", flush=True)
    ours = results["curate"]
    print("ratios (curate / peer):")
    for name, (dt, p, r, _, mem, cpu) in results.items():
        if name != "curate":
            print(f"  vs {name:<14} speed {dt / ours[0]:5.1f}x (CPU {cpu / ours[5]:4.1f}x)   memory {ours[4] / max(mem, 1):4.2f}x   "
                  f"removal recall {ours[2]:.3f} vs {r:.3f}   precision {ours[1]:.3f} vs {p:.3f}")
    print(f"peak RSS of this process: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
