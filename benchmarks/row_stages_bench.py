"""CPU per row-local stage (read, normalize, pii, filter, language, quality) on
benchmarks/scale_bench.py's records and stages, each stage run in this process on the
previous stage's kept rows, as the local executor does with one part. Prints wall and CPU
seconds per stage (CPU: this process and its children, the language stage's fastText
workers included) and a digest of every stage's kept and dropped rows and statistics, so
that two source trees can be compared stage by stage:

    PYTHONPATH=/path/to/main python benchmarks/row_stages_bench.py --records 250000
    PYTHONPATH=$PWD python benchmarks/row_stages_bench.py --records 250000

Run from any directory; the tree on PYTHONPATH is the one measured. On a shared machine
read the CPU column: the wall time follows the load.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import polars as pl
    import psutil
    import scale_bench

    from curate.pipeline.config import load_config
    from curate.read.readers import read_source
    from curate.stages import stage_class
    from curate.stages.base import StageContext

    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=250_000)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="row_stages_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"records_{args.records}.jsonl"
    if not data.exists():
        scale_bench.generate(data, args.records)
    pipeline = work / "pipeline.toml"
    pipeline.write_text(f'[run]\nseed = 0\n[[sources]]\nname = "gen"\npath = "{data}"\nformat = "alpaca"\n'
                        f'task = "qa"\n{scale_bench.STAGES}')
    cfg = load_config(pipeline)
    me = psutil.Process()

    def tick() -> tuple[float, float]:
        t = me.cpu_times()
        kids = sum(p.cpu_times().user + p.cpu_times().system for p in me.children(recursive=True))
        return time.perf_counter(), t.user + t.system + kids

    def h(df: pl.DataFrame) -> int:
        return int(df.hash_rows(seed=0).sum())

    rows = {}
    w0, c0 = tick()
    table = read_source(cfg.sources[0], cfg.base_dir).table
    w1, c1 = tick()
    rows["read"] = (w1 - w0, c1 - c0)
    digest = hashlib.sha256(str(h(table)).encode())
    scratch = work / "scratch"
    scratch.mkdir(exist_ok=True)
    for sc in cfg.stages:
        if sc.kind not in ("normalize", "pii", "filter", "language", "quality"):
            break
        name = sc.name or sc.kind
        ctx = StageContext(run_dir=scratch, config_dir=scratch, seed=0, stage_dir=scratch, log=lambda m: None)
        stage = stage_class(sc.kind)(sc, ctx)
        w0, c0 = tick()
        res = stage.process(table)
        w1, c1 = tick()
        rows[name] = (w1 - w0, c1 - c0)
        digest.update(f"{name}:{h(res.kept)}:{h(res.dropped)}:{json.dumps(res.stats, sort_keys=True, default=str)}"
                      .encode())
        table = res.kept
    print(f"{args.records:,} records; {'stage':<12}{'wall s':>9}{'CPU s':>9}")
    for name, (w, c) in rows.items():
        print(f"{'':>{len(f'{args.records:,} records; ')}}{name:<12}{w:>9.2f}{c:>9.2f}")
    total = sum(c for _, c in rows.values())
    print(f"total CPU s {total:.2f}; digest {digest.hexdigest()[:16]}")


if __name__ == "__main__":
    main()
