"""Plan-time memory of mix, select and consensus (issue #19), this tree vs another (e.g.
main), side by side: N generated rows (canonical 20-hex ids, 20 tasks of skewed sizes, a
score with ties), made part by part (100k rows) as the local executor does, each part
reduced to the stage's keys (`keys(part)`), the keys concatenated in one chunk (as
`hold_keys`) and written to a Parquet file; then, in a fresh process (so that what making
the keys freed is not there for the plan to reuse), the keys read back and one
`plan(keys)`. Per arm and size: the keys' bytes a row (`estimated_size`) and the RSS they
take once read ("keys RSS"), the RSS the plan adds above the keys (sampled every 5 ms
while it runs: polars/Arrow memory, which tracemalloc does not see) in MiB and bytes a
row, "keys+plan" (the step's high-water mark above the process before the keys were
read, bytes a row: what the issue's "a few tens of bytes per input row" bounds) and the
plan's CPU seconds. The arms must decide the same: the digest of the decisions (row,
reason / split, copies) is printed.

    python benchmarks/keys_plan_memory.py --sizes 1000000,4000000 --base /work/main [--stages mix,select,consensus]

The configs are the scale benchmark's (`select`: top_fraction 0.9 by task; `mix`: by task,
temperature 2.0, val_fraction 0.05), here with 20 tasks so that mix downsamples.
`consensus` (defaults: near-equal answers at Jaccard 0.8, 8 examples): rows whose prompt
is one of n/4 prompts (zipf-sized groups, so about half the rows share a prompt with
another) and whose answer is one of 4 per prompt (skewed, some near-equal), so there are
majorities, minorities and ties; its plan is completed as a runner does (`complete_plan`:
the Refine passes read the parts again, from Parquet files written while keying), and its
RSS includes those passes. Its digest is of the applied parts (every row's consensus columns, reason and
detail), so it does not depend on how a tree lays out its decisions.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"mix": {"kind": "mix", "by": "task", "temperature": 2.0, "val_fraction": 0.05},
           "select": {"kind": "select", "column": "heuristic", "top_fraction": 0.9},
           "consensus": {"kind": "consensus"}}


def part(lo: int, hi: int):
    import numpy as np
    import polars as pl

    i = np.arange(lo, hi)
    rng = np.random.default_rng(lo)
    return pl.DataFrame({
        "id": [hashlib.sha1(str(x).encode()).hexdigest()[:20] for x in i.tolist()],
        "source": "gen",
        "task": [f"task{t:02d}" for t in (rng.zipf(1.5, hi - lo) % 20).tolist()],
        "heuristic": np.round(rng.random(hi - lo), 3),
    })


def consensus_part(lo: int, hi: int, n: int):
    """Rows [lo, hi) of the consensus table: prompt and answer texts built column-wise."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(lo + 1)
    m = hi - lo
    prompts = max(1, n // 4)
    p = np.where(rng.random(m) < 0.5, rng.zipf(1.3, m) % prompts, rng.integers(0, prompts, m))  # about half in groups
    a = np.minimum(rng.geometric(0.55, m) - 1, 3)  # answer 0 most often
    base = pl.DataFrame({"p": p, "a": a}).select(
        pl.format("Question {} : what is it?", "p").alias("q"),
        pl.when(pl.col("a") == 3).then(pl.format("the answer to {} is 000 indeed", "p"))  # near-equal to answer 0
        .otherwise(pl.format("the answer to {} is {}{}{}", "p", "a", "a", "a")).alias("r"),
        (pl.col("p") % 20).alias("t"))
    ids = [hashlib.sha1(f"{x}".encode()).hexdigest()[:20] for x in range(lo, hi)]
    return base.select(
        pl.Series("id", ids), pl.lit("gen").alias("source"), pl.format("task{}", "t").alias("task"),
        pl.concat_list(pl.struct(pl.lit("user").alias("role"), pl.col("q").alias("content")),
                       pl.struct(pl.lit("assistant").alias("role"), pl.col("r").alias("content"))).alias("messages"),
        pl.lit("{}").alias("meta"))


def consensus_digest(st, plan, bounds, tmp) -> tuple[str, int]:
    """sha256 of every row's consensus columns, reason and detail, over the applied parts."""
    import polars as pl

    h = hashlib.sha256()
    dropped = 0
    cols = st.config.output_columns()
    for i, (lo, hi) in enumerate(bounds):
        r = st.apply(pl.read_parquet(tmp / f"part-{i:05d}.parquet"), plan, lo)
        dropped += r.dropped.height
        h.update(r.kept.select("id", *cols).write_csv().encode())
        h.update(r.dropped.select("id", *cols, "_reason", "_detail").write_csv().encode())
    h.update(json.dumps(plan.stats, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16], dropped


def child(stage_kind: str, n: int, part_rows: int) -> None:
    import polars as pl
    import psutil

    from curate.contract.typed_config import load_dataclass
    from curate.stages.base import ROW_COL, StageContext

    if stage_kind == "mix":
        from curate.stages.mix import Config, MixStage as Stage
    elif stage_kind == "consensus":
        from curate.stages.consensus.stage import Config, ConsensusStage as Stage
    else:
        from curate.stages.select import Config, SelectStage as Stage
    tmp = Path(tempfile.mkdtemp())
    st = Stage(load_dataclass(Config, CONFIGS[stage_kind]), StageContext(tmp, tmp, 0, tmp / "s", log=lambda m: None))
    from curate.stages.base import complete_plan, part_bounds

    make = (lambda lo, hi: consensus_part(lo, hi, n)) if stage_kind == "consensus" else part
    bounds = part_bounds(n, part_rows)
    keys = []
    for i, (lo, hi) in enumerate(bounds):
        p = make(lo, hi)
        if stage_kind == "consensus":  # its passes read the parts again, as a runner reads them: from Parquet
            p.write_parquet(tmp / f"part-{i:05d}.parquet")
        keys.append(st.keys(p).with_columns(pl.int_range(lo, hi, dtype=pl.UInt64).alias(ROW_COL)))
        del p
    keys = pl.concat(keys, how="vertical_relaxed", rechunk=True)  # as stage_steps.hold_keys
    keys.write_parquet(tmp / "keys.parquet", row_group_size=max(1, n))
    del keys
    # the plan in a fresh process: what the keys' making freed is not there for the plan to reuse
    out = subprocess.run([sys.executable, __file__, "--plan-child", stage_kind, str(n), str(part_rows), str(tmp)],
                         env=os.environ, check=True, capture_output=True, text=True).stdout
    print(out.strip().splitlines()[-1])


def plan_child(stage_kind: str, n: int, part_rows: int, tmp: Path) -> None:
    """Read the keys (as the executor holds them: one chunk), then plan, sampling RSS: the
    plan's RSS above the keys, and the step's whole high-water mark above the process
    before the keys were read (keys + plan)."""
    import polars as pl
    import psutil

    from curate.contract.typed_config import load_dataclass
    from curate.stages.base import ROW_COL, StageContext, complete_plan, part_bounds

    if stage_kind == "mix":
        from curate.stages.mix import Config, MixStage as Stage
    elif stage_kind == "consensus":
        from curate.stages.consensus.stage import Config, ConsensusStage as Stage
    else:
        from curate.stages.select import Config, SelectStage as Stage
    st = Stage(load_dataclass(Config, CONFIGS[stage_kind]), StageContext(tmp, tmp, 0, tmp / "s", log=lambda m: None))
    bounds = part_bounds(n, part_rows)
    proc = psutil.Process()
    pl.DataFrame({"x": [1]}).write_csv()  # polars' pools started before the baseline
    start = proc.memory_info().rss
    keys = pl.read_parquet(tmp / "keys.parquet").rechunk()
    key_bytes = keys.estimated_size() / n
    base = proc.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    c0 = time.process_time()
    plan = st.plan(keys)
    if stage_kind == "consensus":  # the Refine passes, as a runner makes them (parts read again)
        plan = complete_plan(st, plan, bounds, lambda i: pl.read_parquet(tmp / f"part-{i:05d}.parquet"))
    cpu = time.process_time() - c0
    stop.set()
    th.join()
    mem = {"keys_B_row": key_bytes, "keys_rss_B_row": (base - start) / n, "plan_mib": (peak[0] - base) / 2**20,
           "plan_B_row": (peak[0] - base) / n, "total_B_row": (peak[0] - start) / n, "cpu_s": cpu}
    d = plan.decisions
    if stage_kind == "consensus":
        del keys
        dig, dropped = consensus_digest(st, plan, bounds, tmp)
        print(json.dumps({**mem, "decisions": dropped, "digest": dig}))
        return
    if stage_kind == "mix":  # main: every row with split/copies; now: the rows that are not train x1
        cols = [c for c in d.columns if c in ("split", "__mix_code")]
        code = pl.col(cols[0]).cast(pl.String).replace({"train": "0", "val": "1"}) if cols[0] == "split" else pl.col(cols[0])
        d = (d.select(ROW_COL, code.cast(pl.String).fill_null("drop").alias("c"), pl.col("__mix_copies").cast(pl.Int64))
             .with_columns(pl.when(pl.col("c").is_in(["2", "3"])).then(pl.lit("drop")).otherwise(pl.col("c")).alias("c"))
             .filter((pl.col("c") != "0") | (pl.col("__mix_copies") != 1)))
    else:
        d = d.select(ROW_COL, "_reason", "_detail")
    dig = hashlib.sha256(d.sort(ROW_COL).write_csv().encode()).hexdigest()[:16]
    print(json.dumps({**mem, "decisions": d.height, "digest": dig}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000000,4000000")
    ap.add_argument("--base", type=Path, default=None, help="another source tree (e.g. /work/main) as arm 'base'")
    ap.add_argument("--stages", default="mix,select,consensus")
    ap.add_argument("--part-rows", type=int, default=100_000)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--plan-child", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.plan_child:
        return plan_child(a.plan_child[0], int(a.plan_child[1]), int(a.plan_child[2]), Path(a.plan_child[3]))
    if a.child:
        return child(a.child[0], int(a.child[1]), int(a.child[2]))
    arms = [("this", ROOT)] + ([("base", a.base)] if a.base else [])
    rows = []
    for n in [int(x) for x in a.sizes.split(",")]:
        for kind in a.stages.split(","):
            for name, tree in arms:  # interleaved: same size and stage, one arm after the other
                out = subprocess.run([sys.executable, __file__, "--child", kind, str(n), str(a.part_rows)],
                                     env={**os.environ, "PYTHONPATH": str(tree)}, check=True, capture_output=True,
                                     text=True).stdout
                r = {"rows": n, "stage": kind, "arm": name, **json.loads(out.strip().splitlines()[-1])}
                rows.append(r)
                print(json.dumps(r), flush=True)
    print(f"\n{'rows':>10} {'stage':<10}{'arm':<6}{'keys B/row':>11}{'keys RSS':>9}{'plan MiB':>10}{'plan B/row':>11}"
          f"{'keys+plan':>10}{'CPU s':>8}{'decisions':>11}  digest")
    for r in rows:
        print(f"{r['rows']:>10,} {r['stage']:<10}{r['arm']:<6}{r['keys_B_row']:>11.1f}{r['keys_rss_B_row']:>9.1f}"
              f"{r['plan_mib']:>10.1f}{r['plan_B_row']:>11.1f}{r['total_B_row']:>10.1f}{r['cpu_s']:>8.1f}"
              f"{r['decisions']:>11,}  {r['digest']}")
    if a.base:
        for r in rows:
            if r["arm"] == "this":
                b = next(x for x in rows if x["arm"] == "base" and x["rows"] == r["rows"] and x["stage"] == r["stage"])
                print(f"{r['rows']:>10,} {r['stage']:<10} plan memory this/base {r['plan_mib'] / max(b['plan_mib'], 1e-9):.2f}"
                      f", keys+plan this/base {r['total_B_row'] / max(b['total_B_row'], 1e-9):.2f}"
                      f", same decisions: {r['digest'] == b['digest']}")


if __name__ == "__main__":
    main()
