"""Heuristic filter chain: curate's `filter` stage against DataTrove's Gopher quality and
Gopher repetition filters, in one process, on the same records. Prints records/s of each
and the ratio (floor: 5x).

The peer goes in its own venv with curate's few runtime needs (DataTrove's English word
tokenizer is spaCy's, its text utilities need `regex`):

    python3.11 -m venv /work/venv-bench-filter
    /work/venv-bench-filter/bin/pip install datatrove regex spacy polars pyarrow numpy

Run from the repository root (curate is imported from the checkout):

    /work/venv-bench-filter/bin/python benchmarks/filter_bench.py --records 20000

Without DataTrove installed the script times ours alone and says so.

Records: the assistant turns of the real instruction files in ../shared/data/formats
(2,788 conversations), cycled up to --records; without that folder, generated text.

Fairness notes (printed too):
  * DataTrove runs as its pipeline would: a record the quality filter drops never reaches
    the repetition filter. Ours computes every statistic for every record (they are kept
    as columns) and, in the "full" run, also the eight instruction checks, which DataTrove
    does not have. The "gopher-only" run switches the instruction checks off.
  * DataTrove is single-threaded per task (its executor parallelises over files/tasks);
    ours is one process whose polars expressions use the machine's cores. The core count
    is printed; POLARS_MAX_THREADS=1 gives the single-core comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402

from curate.contract.schema import POLARS_SCHEMA  # noqa: E402
from curate.stages.base import StageContext  # noqa: E402
from curate.stages.filter.stage import STAGE, Config  # noqa: E402
from curate.contract.typed_config import load_dataclass  # noqa: E402

FORMATS = ROOT.parent / "shared" / "data" / "formats"


def real_conversations() -> list[list[dict]]:
    """(user, assistant) turns of the shared real files, read with plain json."""
    convs = []
    for f in sorted(FORMATS.glob("*.json")):
        for rec in json.loads(f.read_text(encoding="utf-8")):
            if "instruction" in rec:
                user = rec["instruction"] + ("\n\n" + rec["input"] if rec.get("input") else "")
                convs.append([{"role": "user", "content": user}, {"role": "assistant", "content": rec["output"]}])
            elif "messages" in rec:
                convs.append([{"role": m["role"], "content": m["content"]} for m in rec["messages"]])
            elif "conversations" in rec:
                role = {"human": "user", "gpt": "assistant", "function_call": "assistant", "observation": "tool", "system": "system"}
                convs.append([{"role": role.get(m["from"], "user"), "content": m["value"]} for m in rec["conversations"]])
    return convs


def generated_conversations(n: int) -> list[list[dict]]:
    import random

    rng = random.Random(0)
    vocab = "the of and to in is was for on that with as by at from it this be are or an have not which".split() + [
        f"w{i}" for i in range(3000)]
    out = []
    for i in range(n):
        words = [rng.choice(vocab) for _ in range(rng.randint(5, 400))]
        if i % 10 == 0:
            words = words[:20] * 8
        text = ". ".join(" ".join(words[j:j + 12]) for j in range(0, len(words), 12)) + "."
        out.append([{"role": "user", "content": "Write something."}, {"role": "assistant", "content": text}])
    return out


def build(records: int):
    base = real_conversations() if FORMATS.is_dir() else []
    source = "real files in ../shared/data/formats" if base else "generated text (../shared/data absent)"
    if not base:
        base = generated_conversations(2000)
    convs = [base[i % len(base)] for i in range(records)]
    table = pl.DataFrame(
        {"id": [f"r{i}" for i in range(records)], "source": "bench", "task": "bench", "messages": convs,
         "meta": "{}", "origin": [f"bench:{i}" for i in range(records)]},
        schema=POLARS_SCHEMA,
    )
    answers = ["\n".join(m["content"] for m in c if m["role"] == "assistant") for c in convs]
    return table, answers, source


def time_ours(table: pl.DataFrame, checks: bool, warm: bool = True) -> tuple[float, dict]:
    cfg = {"kind": "filter", "action": "drop"}
    if not checks:
        cfg["checks"] = []
    stage = STAGE(load_dataclass(Config, cfg), StageContext(Path("."), Path("."), 0, Path(".")))
    if warm:
        stage.process(table.head(200))  # warm-up: regex compilation, thread pool
    t0 = time.perf_counter()
    res = stage.process(table)
    return time.perf_counter() - t0, res.stats["hits"]


def time_datatrove(answers: list[str], warm: bool = True):
    try:
        from datatrove.data import Document
        from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    except ImportError as exc:
        return None, f"DataTrove not installed ({exc}); pip install datatrove regex spacy"
    quality, repetition = GopherQualityFilter(), GopherRepetitionFilter()
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(answers)]
    if warm:
        for d in docs[:200]:  # warm-up: loads the spaCy tokenizer
            quality.filter(d)
    dropped = {}
    t0 = time.perf_counter()
    for d in docs:
        for f in (quality, repetition):
            r = f.filter(d)
            ok, why = (r, f.name) if isinstance(r, bool) else r
            if not ok:
                dropped[why] = dropped.get(why, 0) + 1
                break
    return time.perf_counter() - t0, dropped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=2, help="alternate the tools this many times; best time of each")
    args = ap.parse_args()
    table, answers, source = build(args.records)
    n = table.height
    print(f"records: {n} ({source}); cores: {os.cpu_count()}; POLARS_MAX_THREADS={os.environ.get('POLARS_MAX_THREADS', 'default')}; "
          f"load average: {os.getloadavg()[0]:.1f}; rounds: {args.rounds} (tools alternate, best time kept)")
    t_full = t_gopher = t_dt = float("inf")
    dt_info = None
    for r in range(args.rounds):  # alternating evens out load that drifts during the run
        t, hits_full = time_ours(table, checks=True, warm=r == 0)
        t_full = min(t_full, t)
        t, _ = time_ours(table, checks=False, warm=r == 0)
        t_gopher = min(t_gopher, t)
        t, dt_info = time_datatrove(answers, warm=r == 0)
        if t is None:
            t_dt = None
            continue
        t_dt = min(t_dt, t)
    rows = [("curate filter (full: stats + instruction checks)", t_full), ("curate filter (gopher-only: no instruction checks)", t_gopher)]
    if t_dt is not None:
        rows.append(("datatrove GopherQuality + GopherRepetition", t_dt))
    print(f"{'tool':55s} {'seconds':>9s} {'records/s':>11s}")
    for name, t in rows:
        print(f"{name:55s} {t:9.2f} {n / t:11.0f}")
    print(f"curate drops (full): {dict(sorted(hits_full.items()))}")
    if t_dt is None:
        print(dt_info)
        return
    print(f"datatrove drops: {dict(sorted(dt_info.items()))}")
    print(f"ratio full/datatrove: {t_dt / t_full:.1f}x   gopher-only/datatrove: {t_dt / t_gopher:.1f}x   (floor 5x)")


if __name__ == "__main__":
    main()
