"""Scale benchmark: N generated records (default one million) through the curation
pipeline (no render, no train) with the local executor and with the Ray executor; wall
time and peak memory of each, side by side, and whether their outputs are identical.

    /work/venv/bin/python benchmarks/scale_bench.py --records 1000000 [--work DIR] [--ray-cpus 2]
    /work/venv/bin/python benchmarks/scale_bench.py --sizes 25000,100000,400000 --executors local
    /work/venv/bin/python benchmarks/scale_bench.py --dedup-only 250000,1000000,2000000
    /work/venv/bin/python benchmarks/scale_bench.py --sizes 100000,400000 --executors local --render --light \
        --part-rows 25000 --base /work/wt/h1e-base

`--render` adds a `[render]` section (the sample tokenizer, chatml, max_length 512, packed)
so that rendering and shard writing are measured too; the digest then covers the shards'
rows by value (not their bytes: before #19 a split of several shards carried padding bytes
of the next shard). `--light` runs only normalize, exact dedup and mix (every one of them
streamed), so that the peak is not MinHash's keys.

`--sizes` runs every size and prints peak RSS, wall and CPU per size, with each size's ratio
to the smallest, the three steps with the highest RSS while they ran, and, when 1M was
run, the largest size's ratios to 1M (issue #19's floor: 10M within 1.5x of 1M's peak):
how memory and time grow with the input (docs/pipeline.md, "Memory model";
docs/performance.md, "Memory at scale").
The dedup-only mode runs the pipeline's two dedup stages (same settings) on the same
generated records, built in memory, one fresh process per size, and prints near_dedup's
time per record at each size and its ratio to the smallest size (issue #20: linear in
records means that ratio stays near 1).

Needs the `ray` extra for the Ray half (pip install '.[ray]'); without it only the local
executor runs, with a message. Each executor runs in its own child process; peak memory
is the largest summed RSS of that process and all its descendants (for Ray: the driver,
raylet, GCS, object store and the workers), sampled every 0.2 s.

The records: instructions and answers recombined from sample_data/raw/qa_alpaca.jsonl
with a per-record case number (so most records are distinct), 5% exact copies of earlier
records and 5% near copies (one word changed), so that every stage has work to do.
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

# curate before polars, as under `python -m curate`: its allocator setting must precede
# polars' first allocation (curate/pipeline/allocator.py), so that the child measures a
# run as the CLI makes it
import curate  # noqa: F401, I001

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
RENDER = f"""
[render]
template = "chatml"
tokenizer = "{ROOT / 'sample_data' / 'tokenizer'}"
max_length = 512
pack = true
"""
LIGHT = """
[[stages]]
kind = "normalize"
[[stages]]
kind = "dedup"
name = "exact_dedup"
method = "exact"
view = "conversation"
[[stages]]
kind = "mix"
by = "task"
temperature = 2.0
val_fraction = 0.05
"""
NEAR_ONLY = """
[[stages]]
kind = "normalize"
[[stages]]
kind = "dedup"
name = "exact_dedup"
method = "exact"
view = "conversation"
[[stages]]
kind = "dedup"
name = "near_dedup"
method = "minhash"
view = "conversation"
threshold = 0.7
"""
STAGES = """
[[stages]]
kind = "normalize"
[[stages]]
kind = "pii"
action = "redact"
[[stages]]
kind = "filter"
on = "assistant"
[[stages]]
kind = "language"
keep = ["en"]
[[stages]]
kind = "quality"
scorer = "heuristic"
[[stages]]
kind = "dedup"
name = "exact_dedup"
method = "exact"
view = "conversation"
[[stages]]
kind = "dedup"
name = "near_dedup"
method = "minhash"
view = "conversation"
threshold = 0.7
[[stages]]
kind = "select"
column = "heuristic"
top_fraction = 0.9
[[stages]]
kind = "mix"
by = "task"
temperature = 2.0
"""


def generate(path: Path, n: int, seed: int = 0) -> None:
    records(n, seed).write_ndjson(path)


def records(n: int, seed: int = 0) -> pl.DataFrame:
    """The generated records as an Alpaca frame (instruction, input, output)."""
    recs = []
    for line in (ROOT / "sample_data" / "raw" / "qa_alpaca.jsonl").read_text(errors="replace").splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue  # the sample's planted malformed lines
        if isinstance(r, dict) and isinstance(r.get("instruction"), str) and isinstance(r.get("output"), str):
            recs.append({"instruction": r["instruction"], "output": r["output"]})
    pool = pl.DataFrame(recs).filter(pl.col("output").str.len_chars() > 20)
    rng = np.random.default_rng(seed)
    ins, out = pool["instruction"], pool["output"]
    a, b, c = (rng.integers(0, pool.height, n) for _ in range(3))
    df = pl.DataFrame({
        "instruction": ins.gather(a) + pl.Series([f" (case {i})" for i in range(n)]),
        "input": pl.Series([""] * n),
        "output": out.gather(b) + " " + out.gather(c),
    })
    copies = rng.random(n) < 0.05
    near = (rng.random(n) < 0.05) & ~copies
    src = np.maximum(np.arange(n) - rng.integers(1, 1000, n), 0)
    df = df.with_columns(
        pl.when(pl.Series(copies | near)).then(pl.col("instruction").gather(src)).otherwise(pl.col("instruction")),
        pl.when(pl.Series(copies)).then(pl.col("output").gather(src))
        .when(pl.Series(near)).then(pl.col("output").gather(src) + " indeed")
        .otherwise(pl.col("output")),
    )
    return df


def child(executor: str, pipeline: Path, out: Path, ray_cpus: int) -> None:
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run_pipeline

    cfg = load_config(pipeline)
    profile = os.environ.get("SCALE_BENCH_PROFILE")
    if profile:  # RSS per sub-step (benchmarks/rss_phases.py), written beside the run
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import rss_phases

        rss_phases.install()
    if executor == "ray":
        from curate.pipeline.ray_executor import RayExecutor

        ex = RayExecutor(num_cpus=ray_cpus)
    else:
        from curate.pipeline.executor import LocalExecutor

        ex = LocalExecutor()
    t0, c0 = time.perf_counter(), time.process_time()
    run_pipeline(cfg, out, fresh=True, executor=ex)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    ex.close()
    if profile:
        Path(profile).write_text(json.dumps(rss_phases.report(), indent=1))
    print(json.dumps({"wall": wall, "cpu": cpu}))


def canonical(df: pl.DataFrame) -> pl.DataFrame:
    """The generated Alpaca frame as canonical records (user = instruction, assistant =
    output), built column-wise: the dedup-only mode skips reading and the row stages."""
    n = df.height
    return df.select(
        pl.format("r{}", pl.int_range(n).cast(pl.String).str.zfill(9)).alias("id"),
        pl.lit("gen").alias("source"),
        pl.lit("qa").alias("task"),
        pl.concat_list(
            pl.struct(pl.lit("user").alias("role"), pl.col("instruction").alias("content")),
            pl.struct(pl.lit("assistant").alias("role"), pl.col("output").alias("content")),
        ).alias("messages"),
        pl.lit("{}").alias("meta"),
        pl.format("gen:{}", pl.int_range(n)).alias("origin"),
    )


def dedup_child(n: int) -> None:
    """One size of the dedup-only mode, in its own process: the pipeline's two dedup
    stages (same config as STAGES) on n generated records; near_dedup timed alone."""
    import resource

    from curate.stages.base import StageContext
    from curate.stages.dedup.stage import Config, DedupStage

    table = canonical(records(n))
    with tempfile.TemporaryDirectory() as tmp:
        ctx = StageContext(run_dir=Path(tmp), config_dir=Path(tmp), seed=0, stage_dir=Path(tmp), log=lambda m: None)
        t0 = time.perf_counter()
        exact = DedupStage(Config(kind="dedup", name="exact_dedup", method="exact", view="conversation"), ctx)
        table = exact.process(table).kept.select("id", "source", "task", "messages", "meta", "origin")
        t_exact = time.perf_counter() - t0
        near = DedupStage(Config(kind="dedup", name="near_dedup", method="minhash", view="conversation",
                                 threshold=0.7), ctx)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0, c0 = time.perf_counter(), time.process_time()
        res = near.process(table)
        t_near, c_near = time.perf_counter() - t0, time.process_time() - c0
    st = res.stats
    print(json.dumps({"records": n, "after_exact": table.height, "exact_s": t_exact, "near_s": t_near, "near_cpu_s": c_near,
                      "candidate_pairs": st.get("candidate_pairs"), "prefiltered_pairs": st.get("pairs_after_prefilter"),
                      "verified_pairs": st.get("verified_pairs"), "dropped": res.dropped.height,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_mib": rss0,
                      "dropped_digest": hashlib.sha256("\n".join(sorted(res.dropped["id"].to_list())).encode()).hexdigest()[:16]}))


def dedup_only(sizes: list[int]) -> None:
    """Dedup time per record across sizes (issue #20: within 1.3x from 250k to 2M)."""
    rows = []
    for n in sizes:
        out = subprocess.run([sys.executable, __file__, "--dedup-child", str(n)], check=True, capture_output=True,
                             text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        rows.append(r)
        print(json.dumps(r), flush=True)
    print(f"\n{'records':>10}{'near_dedup s':>14}{'CPU s':>8}{'us/record':>11}{'candidates':>12}{'prefiltered':>12}"
          f"{'verified':>10}{'dropped':>9}{'peak MiB':>10}")
    for r in rows:
        print(f"{r['records']:>10,}{r['near_s']:>14.1f}{r['near_cpu_s']:>8.1f}{1e6 * r['near_s'] / r['after_exact']:>11.1f}"
              f"{r['candidate_pairs']:>12,}{r['prefiltered_pairs'] or 0:>12,}{r['verified_pairs']:>10,}"
              f"{r['dropped']:>9,}{r['peak_rss_mib']:>10.0f}")
    base = rows[0]["near_s"] / rows[0]["after_exact"]
    for r in rows[1:]:
        cpu = (r["near_cpu_s"] / r["after_exact"]) / (rows[0]["near_cpu_s"] / rows[0]["after_exact"])
        print(f"time per record at {r['records']:,} / at {rows[0]['records']:,}: "
              f"{r['near_s'] / r['after_exact'] / base:.2f}x wall, {cpu:.2f}x CPU")


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(executor: str, pipeline: Path, out: Path, ray_cpus: int, env: dict) -> dict:
    """Wall, peak RSS of the child's process tree, and the stage running at the peak
    (from timings.json: the stages' durations laid end to end after the child's start-up,
    so approximate to a sampling period and the time between stages)."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", executor, "--pipeline", str(pipeline),
                             "--out", str(out), "--ray-cpus", str(ray_cpus)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    peak, at = [0], [0.0]
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    start = time.perf_counter()

    def sample():
        while not stop.is_set():
            rss = _tree_rss(proc.pid)
            samples.append((time.perf_counter() - start, rss))
            if rss > peak[0]:
                peak[0], at[0] = rss, time.perf_counter() - start
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    stdout, _ = proc.communicate()
    total = time.perf_counter() - t0
    stop.set()
    t.join()
    if proc.returncode:
        raise SystemExit(f"{executor} run failed (rc {proc.returncode})")
    res = json.loads(stdout.strip().splitlines()[-1])
    by_stage: dict[str, float] = {}  # peak RSS while each step ran (GiB; same approximate attribution)
    for t_, rss in samples:
        name = _stage_at(out, t_ - (total - res["wall"]))
        by_stage[name] = max(by_stage.get(name, 0.0), round(rss / 2**30, 3))
    return {"pipeline_s": res["wall"], "cpu_s": res.get("cpu"), "process_s": total, "peak_rss_gib": peak[0] / 2**30,
            "peak_stage": _stage_at(out, at[0] - (total - res["wall"])), "peak_by_stage": by_stage}


def _stage_at(run: Path, t: float) -> str:
    """The step running `t` seconds into the pipeline: timings.json's durations laid end to
    end in run order (read, the manifest's stages, render, shards; timings.json itself is
    written with sorted keys)."""
    try:
        timings = json.loads((run / "timings.json").read_text())
        stages = [s["name"] for s in json.loads((run / "manifest.json").read_text())["stages"]]
    except (OSError, ValueError, KeyError):
        return "?"
    end = 0.0
    for name in ["read", *stages, "render", "shards"]:
        if name not in timings:
            continue
        end += timings[name]
        if t <= end:
            return name
    return "after the stages"


def digest(run: Path) -> str:
    """The ledger, every stage's manifest entry (less `memory`: how the rows were held)
    and every stage's rows by value, whatever the layout (one data.parquet before #19,
    part-*.parquet after), so that runs of the trees before and after compare."""
    m = json.loads((run / "manifest.json").read_text())
    stages = [{k: v for k, v in s.items() if k != "memory"} for s in m["stages"]]
    h = hashlib.sha256(json.dumps([m["ledger"], stages], sort_keys=True).encode())
    for d in sorted(p for p in (run / "stages").iterdir() if p.is_dir()):
        files = sorted(d.glob("part-*.parquet")) or [d / "data.parquet"]
        df = pl.concat([pl.read_parquet(f) for f in files], how="vertical_relaxed")
        h.update(f"{d.name}:{df.height}:{df.columns}:{int(df.hash_rows(seed=0).sum())}".encode())
    if "shards" in m:
        import pyarrow as pa

        h.update(json.dumps([m["tokens"], {k: [(e["rows"], e["tokens"]) for e in v] for k, v in m["shards"].items()}],
                            sort_keys=True).encode())
        for split, entries in sorted(m["shards"].items()):
            for e in entries:
                t = pl.from_arrow(pa.ipc.open_stream(pa.memory_map(str(run / e["file"]))).read_all())
                h.update(f"{e['file']}:{int(t.hash_rows(seed=0).sum())}".encode())
    return h.hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--sizes", default=None, help="comma-separated record counts: a growth table over sizes")
    ap.add_argument("--executors", default="local,ray", help="which executors to measure (ray only if installed)")
    ap.add_argument("--part-rows", default=None,
                    help="with --sizes: comma-separated [run] part_rows values, each measured side by side")
    ap.add_argument("--base", type=Path, default=None,
                    help="with --sizes: also run this source tree (e.g. a worktree of main) as arm 'base', "
                         "interleaved with the local executor, same inputs")
    ap.add_argument("--near-verify", choices=["exact", "estimate"], default="exact",
                    help="near_dedup's verify_by: exact (the default; a whole-table stage) or estimate "
                         "(planned from keys: every stage of the pipeline then streams)")
    ap.add_argument("--render", action="store_true", help="add a [render] section: rendering and shards measured too")
    ap.add_argument("--light", action="store_true", help="only normalize, exact dedup and mix (all streamed)")
    ap.add_argument("--near-only", action="store_true",
                    help="only normalize, exact dedup and near dedup (the dedup stages through the runner)")
    ap.add_argument("--profile", action="store_true",
                    help="local executor: RSS per sub-step of each run (benchmarks/rss_phases.py), printed as a table "
                         "and kept as WORK/phases_N.json")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--ray-cpus", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--child", choices=["local", "ray"])
    ap.add_argument("--pipeline", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--dedup-only", default=None, metavar="SIZES",
                    help="comma list of record counts (e.g. 250000,1000000,2000000): time the dedup stages alone")
    ap.add_argument("--dedup-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    global STAGES
    if args.light:
        STAGES = LIGHT
    if args.near_only:
        STAGES = NEAR_ONLY
    if args.render:
        STAGES = STAGES + RENDER
    if args.near_verify != "exact":
        STAGES = STAGES.replace('threshold = 0.7\n', f'threshold = 0.7\nverify_by = "{args.near_verify}"\n', 1)
    if args.dedup_child:
        return dedup_child(args.dedup_child)
    if args.dedup_only:
        return dedup_only([int(x) for x in args.dedup_only.split(",")])
    if args.child:
        return child(args.child, args.pipeline, args.out, args.ray_cpus)

    work = args.work or Path(tempfile.mkdtemp(prefix="scale_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    wanted = [e for e in args.executors.split(",") if e]
    if args.sizes:
        parts = [int(x) for x in args.part_rows.split(",")] if args.part_rows else [None]
        return growth(work, [int(x) for x in args.sizes.split(",")], wanted, args.ray_cpus, parts, args.base,
                      args.profile)
    data = work / f"records_{args.records}.jsonl"
    if not data.exists():
        t0 = time.perf_counter()
        generate(data, args.records)
        print(f"generated {args.records:,} records in {time.perf_counter() - t0:.1f}s -> {data}")
    pipeline = work / "pipeline.toml"
    pipeline.write_text(f'[run]\nseed = 0\n[[sources]]\nname = "gen"\npath = "{data}"\nformat = "alpaca"\n'
                        f'task = "qa"\n{STAGES}')
    # Ray writes its session files, and anything else, under the work dir.
    env = {**os.environ, "RAY_TMPDIR": str(work / "r"), "TMPDIR": str(work / "tmp")}
    for k in ("RAY_TMPDIR", "TMPDIR"):
        Path(env[k]).mkdir(exist_ok=True)
    executors = _available(wanted)
    rows = {}
    for ex in executors:
        rows[ex] = measure(ex, pipeline, work / f"run_{ex}", args.ray_cpus, env)
        rows[ex]["digest"] = digest(work / f"run_{ex}")
        print(f"{ex}: {rows[ex]}", flush=True)
    print(f"\n{args.records:,} records, {os.cpu_count()} CPUs, ray num_cpus={args.ray_cpus}")
    print(f"{'executor':<10}{'pipeline s':>12}{'process s':>12}{'peak RSS GiB':>14}  output digest")
    for ex, r in rows.items():
        print(f"{ex:<10}{r['pipeline_s']:>12.1f}{r['process_s']:>12.1f}{r['peak_rss_gib']:>14.2f}  {r['digest']}")
    if len(rows) == 2:
        l, r = rows["local"], rows["ray"]
        print(f"ray/local wall ratio {r['pipeline_s'] / l['pipeline_s']:.2f}, peak memory ratio "
              f"{r['peak_rss_gib'] / l['peak_rss_gib']:.2f}, identical output: {l['digest'] == r['digest']}")


def _available(wanted: list[str]) -> list[str]:
    if "ray" in wanted:
        try:
            import ray  # noqa: F401
        except ImportError:
            print("ray is not installed (pip install '.[ray]'): measuring the local executor only")
            wanted = [e for e in wanted if e != "ray"]
    return wanted


def growth(work: Path, sizes: list[int], wanted: list[str], ray_cpus: int, part_rows: list[int | None],
           base: Path | None = None, profile: bool = False) -> None:
    """Peak RSS and wall per size, executor and part size, and each size's ratio to the
    smallest; every part size must give the same output digest."""
    env = {**os.environ, "RAY_TMPDIR": str(work / "r"), "TMPDIR": str(work / "tmp")}
    for k in ("RAY_TMPDIR", "TMPDIR"):
        Path(env[k]).mkdir(exist_ok=True)
    executors = _available(wanted)
    rows = []
    for n in sorted(sizes):
        data = work / f"records_{n}.jsonl"
        if not data.exists():
            generate(data, n)
        for pr in part_rows:
            pipeline = work / f"pipeline_{n}_{pr}.toml"
            extra = f"part_rows = {pr}\n" if pr else ""
            pipeline.write_text(f'[run]\nseed = 0\n{extra}[[sources]]\nname = "gen"\npath = "{data}"\n'
                                f'format = "alpaca"\ntask = "qa"\n{STAGES}')
            arms = ([("base", "local", {**env, "PYTHONPATH": str(base)})] if base else []) + \
                [(ex, ex, {**env, "PYTHONPATH": str(ROOT)}) for ex in executors]
            for name, ex, arm_env in arms:
                label = name if pr is None else f"{name}/{pr}"
                run = work / f"run_{name}_{n}_{pr}"
                if profile and ex == "local":
                    arm_env = {**arm_env, "SCALE_BENCH_PROFILE": str(work / f"phases_{name}_{n}_{pr}.json")}
                r = measure(ex, pipeline, run, ray_cpus, arm_env)
                if profile and ex == "local":
                    print_phases(json.loads(Path(arm_env["SCALE_BENCH_PROFILE"]).read_text()), f"{n:,} {label}")
                rows.append({"records": n, "executor": label, **r, "digest": digest(run), "memory": stage_memory(run)})
                print(f"{n:,} {label}: {r}", flush=True)
                (work / "growth.json").write_text(json.dumps(rows, indent=1))  # so far (a long run may be cut)
    print(f"\n{os.cpu_count()} CPUs; peak RSS = the child process tree; x = ratio to the smallest size (wall is noisy under load: read CPU s too)")
    print(f"{'records':>10} {'executor':<18}{'pipeline s':>11}{'x':>6}{'CPU s':>8}{'x':>6}{'peak RSS GiB':>14}{'x':>6}"
          f"{'KiB/record':>12}  {'peak in':<14}digest")
    first = {}
    for r in rows:
        f = first.setdefault(r["executor"], r)
        cpu, cpu0 = r.get("cpu_s") or float("nan"), f.get("cpu_s") or float("nan")
        print(f"{r['records']:>10,} {r['executor']:<18}{r['pipeline_s']:>11.1f}{r['pipeline_s'] / f['pipeline_s']:>6.2f}"
              f"{cpu:>8.1f}{cpu / cpu0:>6.2f}"
              f"{r['peak_rss_gib']:>14.2f}{r['peak_rss_gib'] / f['peak_rss_gib']:>6.2f}"
              f"{r['peak_rss_gib'] * 2**20 / r['records']:>12.2f}  {r['peak_stage']:<14}{r['digest']}  {r['memory']}")
    print("peak RSS GiB while each step ran (the three highest; approximate attribution):")
    for r in rows:
        top = sorted((r.get("peak_by_stage") or {}).items(), key=lambda kv: -kv[1])[:3]
        print(f"  {r['records']:>10,} {r['executor']:<18}" + ", ".join(f"{k} {v:.2f}" for k, v in top))
    for arm in dict.fromkeys(r["executor"] for r in rows):
        rs = {r["records"]: r for r in rows if r["executor"] == arm}
        ref = rs.get(1_000_000)
        big = rs[max(rs)]
        if ref is not None and big is not ref:  # the floor: peak at 10M <= 1.5x peak at 1M
            k = big["records"] / 1e6
            print(f"{arm}: {big['records']:,} / 1,000,000 records: peak RSS {big['peak_rss_gib'] / ref['peak_rss_gib']:.2f}x, "
                  f"wall {big['pipeline_s'] / ref['pipeline_s']:.2f}x, CPU {(big.get('cpu_s') or 0) / (ref.get('cpu_s') or 1):.2f}x "
                  f"(records {k:.0f}x)")
    for n in sorted(sizes):
        d = {r["executor"]: r["digest"] for r in rows if r["records"] == n}
        if len(d) > 1:
            print(f"{n:,}: outputs identical across {', '.join(d)}: {len(set(d.values())) == 1}")
    write_chart(work, rows)


def print_phases(phases: list[dict], title: str) -> None:
    """benchmarks/rss_phases.py's report: per sub-step (a stack of calls), calls, seconds,
    RSS when first entered and the highest RSS sampled while it ran (MiB)."""
    print(f"RSS per sub-step, {title} (MiB; peak = highest sample while the step ran):")
    print(f"  {'calls':>6}{'s':>8}{'RSS in':>9}{'peak':>9}  step")
    for p in phases:
        if p["phase"] == "(outside)" or p["phase"].startswith("stage "):
            print(f"  {p['calls']:>6}{p['seconds']:>8.1f}{p['rss_in']:>9.0f}{p['peak']:>9.0f}  {p['phase']}")
        elif "near_dedup" in p["phase"] or "exact_dedup" in p["phase"]:
            print(f"  {p['calls']:>6}{p['seconds']:>8.1f}{p['rss_in']:>9.0f}{p['peak']:>9.0f}  {p['phase']}")
    by = {p["phase"]: p for p in phases}
    calls = lambda k: by.get(k, {}).get("calls", 0)  # noqa: E731
    if "stage near_dedup > refine" in by:  # passes over the parts = finish_plan calls (one per Refine)
        print(f"  near_dedup: {calls('stage near_dedup > refine > finish_plan')} finish_plan call(s) (passes, plus one empty Refine from spilled keys), "
              f"{calls('stage near_dedup > refine > read_part')} part reads, "
              f"{calls('stage near_dedup > refine > finish_plan > verify_stored > pair_jaccard') or calls('stage near_dedup > refine > finish_plan > pair_jaccard')} "
              f"verification batches, refine {by['stage near_dedup > refine']['seconds']:.1f} s")


def stage_memory(run: Path) -> str:
    """How each stage held its rows (the manifest's `memory`), e.g. "parts x6, keys x4"."""
    try:
        modes = [s.get("memory", "?") for s in json.loads((run / "manifest.json").read_text())["stages"]]
    except (OSError, ValueError, KeyError):
        return "?"
    return ", ".join(f"{m} x{modes.count(m)}" for m in dict.fromkeys(modes))


def write_chart(work: Path, rows: list[dict]) -> None:
    """The growth rows as JSON and an SVG of peak RSS and wall time against records, one
    line per arm (curate/look/charts.py `lines`)."""
    from curate.look.charts import lines

    (work / "growth.json").write_text(json.dumps(rows, indent=1))
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    arms = list(dict.fromkeys(r["executor"] for r in rows))
    def series(key):
        out = []
        for i, a in enumerate(arms):
            rs = [r for r in rows if r["executor"] == a]
            out.append((a, [r["records"] / 1e6 for r in rs], [r[key] for r in rs], colors[i % len(colors)]))
        return out
    svg = [lines(series("peak_rss_gib"), title="Peak RSS (GiB) by records", x_label="records (millions)"),
           lines(series("pipeline_s"), title="Pipeline wall time (s) by records", x_label="records (millions)")]
    (work / "growth.svg").write_text("<div>" + "".join(svg) + "</div>\n")
    html = "<!doctype html><meta charset='utf-8'><title>scale benchmark</title>" + "".join(svg)
    (work / "growth.html").write_text(html)
    print(f"chart: {work / 'growth.html'} (data: {work / 'growth.json'})")


if __name__ == "__main__":
    main()
