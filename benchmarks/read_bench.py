"""Reading throughput: column-wise JSONL parsing against the per-line `json.loads` path.

Baseline: the per-line path (one `json.loads`, one converter call, one `json.dumps` of
meta and one sha1 per record, then Arrow from Python lists) -- what the reader did for
every record before, and still does for lines the column-wise parser cannot vouch for.
Ours: `read_source` as shipped (polars parses blocks of lines, builds messages, meta and
the canonical id text column-wise; one sha1 per row remains). Same file, same process,
one arm after the other; the two tables are compared for equality before the ratio is
printed. Synthetic Alpaca records shaped like the real ones (instruction, input, output,
plus an `id` and a `source` key that go to meta), written once to a temporary file.

    python benchmarks/read_bench.py                 # 1,000,000 records
    python benchmarks/read_bench.py --records 200000 --format messages
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from curate.read import readers  # noqa: E402
from curate.read.sources import SourceConfig  # noqa: E402

WORDS = ("the of and to in is was for on that with as by it at from his an were are which this be or has "
         "had one their not but first new after also two who its into time may year more most other can "
         "about over such only years some these many three made used when between city world during").split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def write(path: Path, n: int, fmt: str, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for i in range(n):
            q, a = sentence(rng, rng.randint(6, 20)), sentence(rng, rng.randint(10, 60))
            if fmt == "alpaca":
                rec = {"id": f"r{i}", "instruction": q, "input": sentence(rng, 8) if i % 3 == 0 else "",
                       "output": a, "source": "synthetic"}
            else:
                rec = {"id": f"r{i}", "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            fh.write(json.dumps(rec) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--format", default="alpaca", choices=["alpaca", "messages"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.jsonl"
        write(path, args.records, args.format)
        cfg = SourceConfig(name="bench", path=str(path), format=args.format)
        size = path.stat().st_size
        print(f"{args.records:,} {args.format} records, {size / 1e6:.0f} MB")

        real = readers._fast_flat
        readers._fast_flat = lambda lines, *a: (None, list(range(len(lines))))
        t0 = time.perf_counter()
        base = readers.read_source(cfg, Path(tmp))
        t_base = time.perf_counter() - t0
        readers._fast_flat = real

        t0 = time.perf_counter()
        ours = readers.read_source(cfg, Path(tmp))
        t_ours = time.perf_counter() - t0
        assert ours.table.equals(base.table) and ours.quarantine == base.quarantine, "outputs differ"
        print(f"per-line json.loads : {t_base:7.2f} s  {args.records / t_base:10,.0f} records/s")
        print(f"column-wise (ours)  : {t_ours:7.2f} s  {args.records / t_ours:10,.0f} records/s")
        print(f"ratio: {t_base / t_ours:.2f}x  (identical tables: {ours.table.height:,} rows)")


if __name__ == "__main__":
    main()
