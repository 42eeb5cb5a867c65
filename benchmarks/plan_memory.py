"""Peak memory of a whole-table stage decided from keys vs the same stage on the whole
table: near dedup (MinHash, 128 permutations, keep = "best", verify_by = "exact" - the
default - or "estimate") on a synthetic table of N records (default 1M) with planted
near-duplicates.

Arms, each in a fresh subprocess (peak RSS = ru_maxrss, minus the RSS after imports):
  process   the whole table generated in memory, decided on it whole: the whole-table path
            (`_minhash_roots` over the table's text + `from_clusters`, what the Ray
            executor's in-memory dedup runs); `process()` itself is now the planned path
  planned   the table generated part by part (as a streaming runner reads it), `keys(part)`
            per part, then one `plan(keys of all parts)`, completed (verify_by = "exact") by
            passes that regenerate the asked parts (`base.complete_plan`): what a runner
            holds besides one part
  spilled   as `planned`, but each part's keys handed to `spill_keys` as they are made (what the
            local executor does, curate/stages/dedup/spill.py): the keys of all rows never
            meet in memory; the plan reads them back from disk step by step
All arms are checked to decide the same (duplicate count, and for planned and spilled the
same decisions).

    python benchmarks/plan_memory.py [--rows 1000000] [--part-rows 100000] [--repeat 1] [--verify exact]
        [--arms planned,spilled,process]

Prints one line per arm (peak RSS above baseline, wall and CPU seconds) and the ratio
process / planned. Numbers depend on the machine's load: run the arms side by side.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

WORDS = ("the a of to and in is for on with as by at from that this which be are was it an or not "
         "river mountain city table chair apple orange music window garden winter summer letter paper "
         "engine bridge forest planet signal number answer question simple quick bright").split()


def _words(rows, seed: int):
    """20 word indices per row, a hash of (seed, row, position): row i's words depend on i only."""
    import numpy as np

    x = (rows.astype(np.uint64)[:, None] * np.uint64(0x9E3779B97F4A7C15)
         + np.arange(20, dtype=np.uint64)[None, :] * np.uint64(0xBF58476D1CE4E5B9) + np.uint64(seed))
    x ^= x >> np.uint64(31)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(29)
    return (x % np.uint64(len(WORDS))).astype(np.int64)


def part(lo: int, hi: int, seed: int = 0):
    """Rows [lo, hi) of the synthetic table: ~20-word prompts, every 5th row a near copy
    (one word changed) of a row up to 50,000 rows earlier (so clusters cross parts)."""
    import numpy as np
    import polars as pl

    from curate.contract.schema import POLARS_SCHEMA

    n = hi - lo
    rows = np.arange(lo, hi)
    src = np.where(rows % 5 == 4, np.maximum(rows - 1 - (rows * 7919) % 50_000, 0), rows)
    words = _words(src, seed)
    words[rows % 5 == 4, (rows[rows % 5 == 4] % 20)] = (rows[rows % 5 == 4] % len(WORDS))
    vocab = np.array(WORDS, dtype=object)
    prompts = [" ".join(w) for w in vocab[words]]
    msgs = [[{"role": "user", "content": p}, {"role": "assistant", "content": "ok"}] for p in prompts]
    return pl.DataFrame({"id": [f"r{i:09d}" for i in rows], "source": ["syn"] * n, "task": ["qa"] * n,
                         "messages": msgs, "meta": ["{}"] * n, "origin": [f"syn:{i}" for i in rows],
                         "heuristic": (rows % 7).astype(float)},
                        schema={**POLARS_SCHEMA, "heuristic": pl.Float64})


def stage(verify: str = "exact"):
    import tempfile

    from curate.contract.typed_config import load_dataclass
    from curate.stages.base import StageContext
    from curate.stages.dedup.stage import Config, DedupStage

    d = Path(tempfile.mkdtemp())
    cfg = load_dataclass(Config, {"kind": "dedup", "method": "minhash", "num_perm": 128, "threshold": 0.7,
                                  "verify_by": verify, "keep": "best", "score_column": "heuristic",
                                  "view": "user", "examples": 0}, "stages[0]")
    return DedupStage(cfg, StageContext(run_dir=d, config_dir=d, seed=0, stage_dir=d / "s", log=lambda m: None))


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def arm(name: str, rows: int, part_rows: int, verify: str = "exact") -> dict:
    import polars as pl

    from curate.stages.base import ROW_COL, complete_plan, part_bounds

    st = stage(verify)
    part(0, 10)  # warm imports before the baseline
    base = rss_mib()
    t0, c0 = time.perf_counter(), time.process_time()
    if name == "process":
        table = part(0, rows)
        res = st.from_clusters(table, *st._minhash_roots(table))
        dups, decided = res.stats["duplicates"], None
    else:
        import tempfile

        keys, key_bytes = [], 0
        spill = Path(tempfile.mkdtemp()) / "spill" if name == "spilled" else None
        for lo, hi in part_bounds(rows, part_rows):
            k = st.keys(part(lo, hi))
            k = k.with_columns(pl.int_range(lo, hi, dtype=pl.UInt64).alias(ROW_COL))
            key_bytes += k.estimated_size()
            keys.append(st.spill_keys(k, spill) if spill is not None else k)
        keys = pl.concat(keys, how="vertical", rechunk=True)  # one chunk: plan's rechunk is then free
        plan = st.plan(keys)
        bounds = part_bounds(rows, part_rows)
        plan = complete_plan(st, plan, bounds, lambda i: part(*bounds[i]))
        dups, decided = plan.stats["duplicates"], plan.decisions.height
        decided = (decided, int(plan.decisions.hash_rows(seed=0).sum()))
    out = {"arm": name, "rows": rows, "peak_mib": round(rss_mib() - base, 1), "wall_s": round(time.perf_counter() - t0, 1),
           "cpu_s": round(time.process_time() - c0, 1), "duplicates": dups}
    if name != "process":
        out.update(decisions=decided[0], decisions_hash=decided[1], key_bytes_per_row=round(key_bytes / max(rows, 1), 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--part-rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--verify", choices=["exact", "estimate"], default="exact")
    ap.add_argument("--arms", default="planned,spilled,process")
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.arm:
        print(json.dumps(arm(a.arm, a.rows, a.part_rows, a.verify)))
        return
    arms = [x for x in a.arms.split(",") if x]
    results: dict[str, list[dict]] = {x: [] for x in arms}
    for _ in range(a.repeat):
        for name in arms:  # interleaved
            cmd = [sys.executable, __file__, "--arm", name, "--rows", str(a.rows), "--part-rows", str(a.part_rows),
                   "--verify", a.verify]
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            results[name].append(r)
            print(json.dumps(r), flush=True)
    med = {k: sorted(x["peak_mib"] for x in v)[len(v) // 2] for k, v in results.items()}
    if len({v[0]["duplicates"] for v in results.values()}) != 1 or len(
            {v[0]["decisions_hash"] for k, v in results.items() if k != "process"}) > 1:
        raise SystemExit("the arms decided differently")
    cpu = {k: sorted(x["cpu_s"] for x in v)[len(v) // 2] for k, v in results.items()}
    print(f"near dedup, {a.rows:,} rows, parts of {a.part_rows:,}, 128 permutations, verify_by = {a.verify}: "
          f"peak RSS above imports (MiB) " + ", ".join(f"{k} {med[k]} (CPU {cpu[k]} s)" for k in arms))
    if "planned" in med and "spilled" in med:
        print(f"ratio planned / spilled peak = {med['planned'] / max(med['spilled'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
