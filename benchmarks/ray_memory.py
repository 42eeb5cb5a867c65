"""Peak driver RSS and total RSS under Ray: the parts path (`run_on_parts`, issue #19:
sources read on workers, stages on parts in the run directory) against the runner with
the Ray executor from another checkout (default /work/main: the driver holds the table),
same generated records (benchmarks/scale_bench.py's generator and stages), one process
per arm, arms interleaved when repeated.

    python benchmarks/ray_memory.py --records 100000,400000 --ray-cpus 2 [--baseline /work/main]

Printed per size and arm: pipeline wall s, peak RSS of the driver process alone, peak RSS
of the driver's process tree (driver + raylet + GCS + object store + workers: a private
local Ray instance is the driver's child), and the ledger digest (same records kept).
The driver peak of the parts path still includes every stage that gathers its input
(`parts_mode` "gather": the stages not yet on the keys -> plan -> apply protocol) and
render's global step: see docs/ray.md.
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
sys.path.insert(0, str(ROOT / "benchmarks"))


def child(arm: str, pipeline: Path, out: Path, ray_cpus: int, part_rows: int) -> None:
    from curate.pipeline.config import load_config
    from curate.pipeline.ray_executor import RayExecutor

    cfg = load_config(pipeline)
    ex = RayExecutor(num_cpus=ray_cpus)
    t0 = time.perf_counter()
    if arm == "parts":
        from curate.pipeline.ray_executor import run_on_parts

        m = run_on_parts(cfg, out, ex, fresh=True, part_rows=part_rows)
    else:
        from curate.pipeline.runner import run_pipeline

        m = run_pipeline(cfg, out, fresh=True, executor=ex)
    wall = time.perf_counter() - t0
    ex.close()
    ledger = m["ledger"] if isinstance(m, dict) and "ledger" in m else json.loads((out / "manifest.json").read_text())["ledger"]
    print(json.dumps({"wall": wall, "ledger": hashlib.sha256(json.dumps(ledger, sort_keys=True).encode())
                      .hexdigest()[:12], "kept": ledger["kept"]}))


def _rss(pid: int) -> tuple[int, int]:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
        own = p.memory_info().rss
    except psutil.Error:
        return 0, 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return own, total


def measure(arm: str, pythonpath: str, pipeline: Path, out: Path, ray_cpus: int, part_rows: int, base: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": pythonpath, "HOME": str(base), "TMPDIR": str(base), "RAY_TMPDIR": str(base)}
    proc = subprocess.Popen([sys.executable, __file__, "--child", arm, "--pipeline", str(pipeline), "--out", str(out),
                             "--ray-cpus", str(ray_cpus), "--part-rows", str(part_rows)],
                            stdout=subprocess.PIPE, stderr=open(str(out) + ".stderr", "w"), env=env, text=True)
    peak = [0, 0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            own, total = _rss(proc.pid)
            peak[0], peak[1] = max(peak[0], own), max(peak[1], total)
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    stdout, _ = proc.communicate()
    stop.set()
    t.join()
    if proc.returncode:
        raise SystemExit(f"{arm} run failed (rc {proc.returncode}); see {out}.stderr")
    res = json.loads(stdout.strip().splitlines()[-1])
    return {**res, "driver_gib": peak[0] / 2**30, "total_gib": peak[1] / 2**30}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", default="100000")
    ap.add_argument("--ray-cpus", type=int, default=2)
    ap.add_argument("--part-rows", type=int, default=50_000)
    ap.add_argument("--baseline", default="/work/main", help="checkout whose runner + Ray executor is the baseline")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--child", choices=["parts", "runner"])
    ap.add_argument("--pipeline", type=Path)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.pipeline, a.out, a.ray_cpus, a.part_rows)
        return
    from scale_bench import STAGES, generate

    work = Path(tempfile.mkdtemp(prefix="ray_memory_"))
    print("records  arm               wall_s  driver_peak_GiB  total_peak_GiB  kept  ledger")
    for n in [int(x) for x in a.records.split(",")]:
        data = work / f"in-{n}.jsonl"
        generate(data, n)
        pipe = work / f"p-{n}.toml"
        pipe.write_text(f'[run]\nseed = 0\n[[sources]]\nname = "gen"\npath = "{data}"\nformat = "alpaca"\n'
                        f'task = "qa"\n{STAGES}')
        arms = [("runner (baseline)", "runner", a.baseline), ("parts (this tree)", "parts", str(ROOT))]
        for rep in range(a.repeat):
            for label, arm, path in (arms if rep % 2 == 0 else arms[::-1]):
                r = measure(arm, path, pipe, work / f"run-{n}-{arm}", a.ray_cpus, a.part_rows, work)
                print(f"{n:>7}  {label:<16} {r['wall']:7.1f}  {r['driver_gib']:15.2f}  {r['total_gib']:14.2f}  "
                      f"{r['kept']:>5}  {r['ledger']}", flush=True)


if __name__ == "__main__":
    main()
