"""Language ID across cores: `langid.predict` with workers = 1 (one fastText call, as
before) and workers = N (this process + N - 1 spawned workers), side by side on the same
texts, printing texts/s, the ratio and whether the outputs are identical.

    python benchmarks/langid_bench.py --texts 400000 --workers 2

Texts: the turns of sample_data/raw/qa_alpaca.jsonl (and ../shared/data's Alpaca demo
when present), each made distinct with a case number as the stage sees only distinct
texts, cut to the stage's max_chars (2,000). The first parallel call also pays the
workers' start (spawn, import, model load): it is timed separately ("cold"), then the
warm call, which is what every later block of a run pays.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("CURATE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def texts(n: int) -> list[str]:
    pool = []
    for line in (ROOT / "sample_data" / "raw" / "qa_alpaca.jsonl").read_text(errors="replace").splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict):
            pool += [v for k in ("instruction", "output") if isinstance(v := r.get(k), str) and v.strip()]
    demo = SHARED / "formats" / "alpaca_llamafactory_demo.json"
    if demo.is_file():
        pool += [r[k] for r in json.loads(demo.read_text()) for k in ("instruction", "output") if r.get(k)]
    return [f"{pool[i % len(pool)][:1990]} ({i})" for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--texts", type=int, default=400_000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    from curate.stages.language import langid

    data = texts(args.texts)
    langid.load_model()
    rows = {}
    for label, w in (("1 process", 1), (f"{args.workers} processes, cold", args.workers),
                     (f"{args.workers} processes, warm", args.workers)):
        t0, c0 = time.perf_counter(), time.process_time()
        out = langid.predict(data, workers=w)
        rows[label] = (time.perf_counter() - t0, time.process_time() - c0, out)
        print(f"  {label:<22} {rows[label][0]:7.2f} s wall  {args.texts / rows[label][0]:>10,.0f} texts/s  "
              f"(this process's CPU {rows[label][1]:.1f} s)", flush=True)
    base = rows["1 process"]
    warm = rows[f"{args.workers} processes, warm"]
    cold = rows[f"{args.workers} processes, cold"]
    print(f"speed-up warm {base[0] / warm[0]:.2f}x, cold {base[0] / cold[0]:.2f}x; identical output: "
          f"{warm[2] == base[2] and cold[2] == base[2]}  ({langid.usable_cpus()} usable CPUs, "
          f"load average {os.getloadavg()[0]:.1f})")
    langid.shutdown_pools()


if __name__ == "__main__":
    main()
