"""The 1M-record curation pipeline (issue #20: "at least 1.6x faster, identical output
digest"), source trees side by side: each arm runs `python -m curate run PIPELINE
--no-train --fresh --quiet` with PYTHONPATH set to its tree, in rounds (A B C A B C ...,
interleaved so that a change of load hits every arm alike), on the same generated input
and pipeline as benchmarks/scale_bench.py (its generator and stages, imported from it).

    python benchmarks/pipeline_bench.py --records 1000000 --rounds 2 \\
        --arm base=/path/to/old/tree --arm main=/path/to/main --arm new=.

Per arm and round: wall seconds, CPU seconds (user + system of the run and every process
it waited for: the language stage's worker processes included) and the output digest
(scale_bench.digest: ledger, manifest stage entries, every stage's rows by value). The
summary takes each arm's median and prints its ratio to the first arm, CPU first: on a
shared machine the wall time moves with the load (the 1-minute load average is printed
with every run), the CPU time much less. Per-stage wall seconds come from each run's
timings.json.

`--stage-cpu` adds per-stage CPU seconds: the run's process tree (the language workers
included) is sampled every 0.25 s with psutil, and each stage's CPU is the tree's CPU
between the previous stage's `done.json` and its own (their modification times). Sampling
costs well under 1% of a core; the CPU total stays the `getrusage` figure above.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import scale_bench  # noqa: E402  (the generator, the stages and the digest)


def run_arm(tree: Path, pipeline: Path, out: Path, stage_cpu: bool = False) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    wall0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "curate", "run", str(pipeline), "--no-train", "--fresh", "--quiet",
                             "--out", str(out)], env=env, cwd=str(tree), stdout=subprocess.DEVNULL)
    samples = _sample_cpu(proc) if stage_cpu else []
    if proc.wait() != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    timings = json.loads((out / "timings.json").read_text())
    r = {"wall": wall, "cpu": cpu, "load": load, "digest": scale_bench.digest(out), "timings": timings}
    if samples:
        r["stage_cpu"] = _stage_cpu(samples, out, wall0, cpu)
    return r


def _sample_cpu(proc: subprocess.Popen, every: float = 0.25) -> list[tuple[float, float]]:
    """(time, CPU seconds of the process and every child seen so far) until it exits."""
    import psutil

    root, seen, samples = psutil.Process(proc.pid), {}, []
    while proc.poll() is None:
        try:
            own = sum(root.cpu_times()[:2])
            for c in root.children(recursive=True):
                try:
                    t = c.cpu_times()
                    seen[c.pid] = t[0] + t[1]
                except psutil.Error:
                    pass
            samples.append((time.time(), own + sum(seen.values())))
        except psutil.Error:
            break
        time.sleep(every)
    return samples


def _stage_cpu(samples: list[tuple[float, float]], out: Path, start: float, total: float) -> dict[str, float]:
    """CPU seconds per stage from the samples and the stages' done.json times; what comes
    after the last stage (rejects, report, manifest) is `after`."""
    ends = sorted((d / "done.json").stat().st_mtime for d in (out / "stages").iterdir() if (d / "done.json").exists())
    names = [d.name.split("-", 1)[1] for d in sorted((out / "stages").iterdir()) if (d / "done.json").exists()]
    times = [t for t, _ in samples]
    import bisect

    res, prev = {}, 0.0
    for name, t in zip(names, ends):
        i = bisect.bisect_right(times, t) - 1
        c = samples[i][1] if i >= 0 else 0.0
        res[name] = round(c - prev, 1)
        prev = c
    res["after"] = round(total - prev, 1)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--arm", action="append", required=True, help="NAME=TREE (a source tree to put on PYTHONPATH)")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--stage-cpu", action="store_true", help="per-stage CPU seconds (psutil sampling)")
    args = ap.parse_args()
    arms = [(a.split("=", 1)[0], Path(a.split("=", 1)[1])) for a in args.arm]
    work = args.work or Path(tempfile.mkdtemp(prefix="pipeline_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"records_{args.records}.jsonl"
    if not data.exists():
        scale_bench.generate(data, args.records)
    pipeline = work / f"pipeline_{args.records}.toml"
    pipeline.write_text(f'[run]\nseed = 0\n[[sources]]\nname = "gen"\npath = "{data}"\nformat = "alpaca"\n'
                        f'task = "qa"\n{scale_bench.STAGES}')
    rows: dict[str, list[dict]] = {name: [] for name, _ in arms}
    for rnd in range(args.rounds):
        for name, tree in arms:
            r = run_arm(tree, pipeline, work / f"run_{name}", args.stage_cpu)
            rows[name].append(r)
            print(json.dumps({"round": rnd, "arm": name, **{k: (round(v, 1) if isinstance(v, float) else v)
                                                            for k, v in r.items() if k not in ("timings", "stage_cpu")}}),
                  flush=True)
            print("   stages (wall s): " + ", ".join(f"{k} {v:.1f}" for k, v in r["timings"].items()), flush=True)
            if "stage_cpu" in r:
                print("   stages (CPU s):  " + ", ".join(f"{k} {v:.1f}" for k, v in r["stage_cpu"].items()), flush=True)
    first = arms[0][0]
    med = {n: (statistics.median(r["wall"] for r in rs), statistics.median(r["cpu"] for r in rs)) for n, rs in rows.items()}
    print(f"\n{args.records:,} records, {args.rounds} round(s), {os.cpu_count()} CPUs; medians; x = {first} / arm")
    print(f"{'arm':<8}{'CPU s':>9}{'x CPU':>8}{'wall s':>9}{'x wall':>8}  digest")
    for n, (w, c) in med.items():
        digests = sorted({r["digest"] for r in rows[n]})
        print(f"{n:<8}{c:>9.1f}{med[first][1] / c:>8.2f}{w:>9.1f}{med[first][0] / w:>8.2f}  {','.join(digests)}")
    print("identical output digest across arms:", len({r["digest"] for rs in rows.values() for r in rs}) == 1)


if __name__ == "__main__":
    main()
